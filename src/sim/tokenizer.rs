//! The simulator's deterministic stand-in for a model tokenizer.
//!
//! A real vLLM worker counts prompt tokens with the model's BPE tokenizer. The simulator needs
//! something cheap, deterministic and documented instead, so that the gateway (and its tests)
//! can reason about token counts exactly:
//!
//! * a **piece** is a maximal run of ASCII alphanumerics cut into chunks of at most 4 bytes, or
//!   any single other non-whitespace character (a multi-byte UTF-8 character is one piece);
//! * whitespace is free (it separates pieces and costs nothing);
//! * a chat prompt costs, per message, 4 pieces of structure plus the pieces of every text in its
//!   `content` (a string, or the `text` of text parts; any other part costs a fixed 16), plus 2
//!   pieces for the generation prompt.
//!
//! **Property the gateway relies on:** `count_text_tokens(t) <= t.len()` (bytes), because every
//! piece consumes at least one byte. A gateway that estimates one token per byte therefore never
//! under-counts against this worker.
//!
//! Each piece also gets a token id (for `/tokenize`) and the id sequence is cut into blocks of
//! [`BLOCK_TOKENS`] whose chained hashes key the prefix cache (`prefix_cache.rs`).

use serde_json::Value;

/// Tokens per prefix-cache block, as vLLM's default `--block-size 16`.
pub const BLOCK_TOKENS: usize = 16;
/// Pieces charged for the generation prompt that ends a chat prompt.
const GENERATION_PROMPT: u32 = 2;
/// Pieces charged for a non-text content part (image, audio, file ...).
const NON_TEXT_PART: u32 = 16;
/// Text-piece ids live in `[TEXT_ID_BASE, TEXT_ID_BASE + TEXT_ID_SPAN)`; ids below are "special".
const TEXT_ID_BASE: u32 = 256;
const TEXT_ID_SPAN: u64 = 128_000;

/// Number of pieces in `text` (see the module docs). Never more than `text.len()`.
pub fn count_text_tokens(text: &str) -> u32 {
    let mut n = 0u32;
    for_each_piece(text, |_| n = n.saturating_add(1));
    n
}

/// Number of prompt tokens of a chat `messages` array (see the module docs for the formula).
/// A value that is not an array counts as an empty conversation (just the generation prompt).
pub fn count_prompt_tokens(messages: &Value) -> u32 {
    let mut n = 0u32;
    walk_chat(messages, &mut |_| n = n.saturating_add(1));
    n
}

/// Calls `f` with the bytes of each piece of `text`, in order.
fn for_each_piece(text: &str, mut f: impl FnMut(&[u8])) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_alphanumeric() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
                i += 1;
            }
            for chunk in bytes[start..i].chunks(4) {
                f(chunk);
            }
        } else if b.is_ascii() {
            if !b.is_ascii_whitespace() {
                f(&bytes[i..i + 1]);
            }
            i += 1;
        } else {
            // A multi-byte character: `text` is valid UTF-8, so its length comes from the
            // leading byte; Unicode whitespace is free like ASCII whitespace.
            let len = utf8_len(b);
            let end = (i + len).min(bytes.len());
            let is_space = text
                .get(i..end)
                .and_then(|s| s.chars().next())
                .is_some_and(char::is_whitespace);
            if !is_space {
                f(&bytes[i..end]);
            }
            i = end;
        }
    }
}

fn utf8_len(lead: u8) -> usize {
    match lead {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Feeds the token ids of a chat prompt to `f`: per message 4 structure ids (start, role, end of
/// header, end of message) around its content pieces, then 2 generation-prompt ids.
fn walk_chat(messages: &Value, f: &mut dyn FnMut(u32)) {
    if let Some(list) = messages.as_array() {
        for msg in list {
            let role = msg.get("role").and_then(Value::as_str).unwrap_or("");
            let role_id = special_id(role.as_bytes());
            f(1); // start of message
            f(role_id);
            f(2); // end of header
            walk_content(msg.get("content"), f);
            f(3); // end of message
        }
    }
    for id in 4..4 + GENERATION_PROMPT {
        f(id);
    }
}

fn walk_content(content: Option<&Value>, f: &mut dyn FnMut(u32)) {
    match content {
        Some(Value::String(s)) => text_ids(s, f),
        Some(Value::Array(parts)) => {
            for part in parts {
                let kind = part.get("type").and_then(Value::as_str);
                let text = part.get("text").and_then(Value::as_str);
                match (kind, text) {
                    (Some("text") | None, Some(t)) => text_ids(t, f),
                    _ => {
                        // Non-text parts cost a fixed amount; their ids come from the part's own
                        // JSON so that two different images do not share cache blocks.
                        let seed = hash_bytes(part.to_string().as_bytes());
                        for k in 0..NON_TEXT_PART {
                            f(text_id(mix(seed, u64::from(k))));
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

fn text_ids(text: &str, f: &mut dyn FnMut(u32)) {
    for_each_piece(text, |piece| f(text_id(hash_bytes(piece))));
}

fn text_id(h: u64) -> u32 {
    // The modulo keeps the value below TEXT_ID_SPAN, which fits in u32.
    TEXT_ID_BASE + u32::try_from(h % TEXT_ID_SPAN).unwrap_or(0)
}

fn special_id(role: &[u8]) -> u32 {
    // Ids 8..256 are reserved for roles; 1..8 for fixed structure.
    8 + u32::try_from(hash_bytes(role) % 248).unwrap_or(0)
}

/// FNV-1a: tiny and good enough to tell pieces apart.
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Mixes `v` into `h` (splitmix64 finaliser): used to chain block hashes.
pub(crate) fn mix(h: u64, v: u64) -> u64 {
    let mut z = h ^ v.wrapping_add(0x9e37_79b9_7f4a_7c15).wrapping_add(h << 6);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What the engine needs to know about one prompt: its length, the chained hash of each full
/// block (for the prefix cache) and a hash of the whole prompt (greedy decoding is a function of
/// the prompt, so the simulator seeds greedy requests with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PromptDigest {
    pub tokens: u32,
    pub block_hashes: Vec<u64>,
    pub full_hash: u64,
}

/// Builds a [`PromptDigest`] from token ids as they are produced, without keeping them.
struct DigestBuilder {
    tokens: u32,
    chain: u64,
    block: u64,
    in_block: usize,
    blocks: Vec<u64>,
    full: u64,
}

impl DigestBuilder {
    /// `salt` separates caches the way vLLM does: different models (LoRA adapters) and
    /// `cache_salt` values never share blocks.
    fn new(salt: u64) -> Self {
        Self {
            tokens: 0,
            chain: salt,
            block: salt,
            in_block: 0,
            blocks: Vec::new(),
            full: salt,
        }
    }

    fn push(&mut self, id: u32) {
        self.tokens = self.tokens.saturating_add(1);
        self.full = mix(self.full, u64::from(id));
        self.block = mix(self.block, u64::from(id));
        self.in_block += 1;
        if self.in_block == BLOCK_TOKENS {
            // Chaining makes a block's identity depend on everything before it, as in vLLM.
            self.chain = mix(self.chain, self.block);
            self.blocks.push(self.chain);
            self.block = self.chain;
            self.in_block = 0;
        }
    }

    fn finish(self) -> PromptDigest {
        PromptDigest {
            tokens: self.tokens,
            block_hashes: self.blocks,
            full_hash: self.full,
        }
    }
}

/// Digest of a chat prompt; `tokens` equals [`count_prompt_tokens`].
pub(crate) fn digest_chat(messages: &Value, salt: u64) -> PromptDigest {
    let mut b = DigestBuilder::new(salt);
    walk_chat(messages, &mut |id| b.push(id));
    b.finish()
}

/// Digest of a plain-text prompt (completions); `tokens` equals [`count_text_tokens`].
pub(crate) fn digest_text(text: &str, salt: u64) -> PromptDigest {
    let mut b = DigestBuilder::new(salt);
    text_ids(text, &mut |id| b.push(id));
    b.finish()
}

/// Digest of a prompt given as token ids (completions and embeddings accept those).
pub(crate) fn digest_ids(ids: &[u32], salt: u64) -> PromptDigest {
    let mut b = DigestBuilder::new(salt);
    for &id in ids {
        b.push(id);
    }
    b.finish()
}

/// Token ids of a chat prompt, for `/tokenize`.
pub(crate) fn chat_token_ids(messages: &Value) -> Vec<u32> {
    let mut out = Vec::new();
    walk_chat(messages, &mut |id| out.push(id));
    out
}

/// Token ids of a text prompt, for `/tokenize`.
pub(crate) fn text_token_ids(text: &str) -> Vec<u32> {
    let mut out = Vec::with_capacity(text.len() / 3);
    text_ids(text, &mut |id| out.push(id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn pieces_follow_the_documented_rules() {
        assert_eq!(count_text_tokens(""), 0);
        assert_eq!(count_text_tokens("   \n\t"), 0);
        assert_eq!(count_text_tokens("abcd"), 1);
        assert_eq!(count_text_tokens("abcde"), 2);
        assert_eq!(count_text_tokens("abcdefgh"), 2);
        assert_eq!(count_text_tokens("hello, world!"), 6); // hell o , worl d !
        assert_eq!(count_text_tokens("a1b2c3"), 2);
        assert_eq!(count_text_tokens("é"), 1);
        assert_eq!(count_text_tokens("日本語"), 3);
        assert_eq!(count_text_tokens("a\u{3000}b"), 2); // ideographic space is free
        assert_eq!(count_text_tokens("🦀🦀"), 2);
    }

    #[test]
    fn chat_formula() {
        let m = json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "hi there"},
                {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": []}
        ]);
        // (4 + be|brie|f) + (4 + hi|ther|e + 16) + (4 + 0) + 2
        assert_eq!(count_prompt_tokens(&m), 36);
        assert_eq!(count_prompt_tokens(&json!([])), 2);
        assert_eq!(count_prompt_tokens(&json!("nonsense")), 2);
    }

    #[test]
    fn digest_agrees_with_count_and_ids() {
        let m = json!([{"role": "user", "content": "one two three four five six seven"}]);
        let d = digest_chat(&m, 7);
        assert_eq!(d.tokens, count_prompt_tokens(&m));
        assert_eq!(chat_token_ids(&m).len(), d.tokens as usize);
        let text = "x ".repeat(40);
        let d = digest_text(&text, 0);
        assert_eq!(d.tokens, 40);
        assert_eq!(d.block_hashes.len(), 2);
        assert_eq!(digest_ids(&text_token_ids(&text), 0), d);
    }

    #[test]
    fn block_hashes_are_chained_and_salted() {
        let a = digest_text(&"a b c d ".repeat(8), 1);
        let b = digest_text(
            &format!("{}{}", "a b c d ".repeat(4), "z y x w ".repeat(4)),
            1,
        );
        assert_eq!(a.block_hashes[0], b.block_hashes[0]);
        assert_ne!(a.block_hashes[1], b.block_hashes[1]);
        let salted = digest_text(&"a b c d ".repeat(8), 2);
        assert_ne!(a.block_hashes[0], salted.block_hashes[0]);
    }

    proptest! {
        #[test]
        fn pieces_never_exceed_bytes(s in any::<String>()) {
            prop_assert!(count_text_tokens(&s) as usize <= s.len());
        }

        #[test]
        fn whitespace_separates_and_is_free(a in "[a-z0-9,.!é ]{0,40}", b in "[a-z0-9,.!é ]{0,40}") {
            let joined = format!("{a} {b}");
            prop_assert_eq!(count_text_tokens(&joined), count_text_tokens(&a) + count_text_tokens(&b));
        }

        #[test]
        fn token_ids_match_count(s in any::<String>()) {
            prop_assert_eq!(text_token_ids(&s).len(), count_text_tokens(&s) as usize);
        }
    }
}
