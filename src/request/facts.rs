//! `ChatFacts`: what the gateway needs to know about a request after validation, collected
//! in the same walk (no second pass over the body).

/// Facts about a valid chat request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatFacts {
    /// `model`, when given (vLLM treats absent as "the served model", vllm.md §1).
    pub model: Option<String>,
    /// `stream: true`.
    pub stream: bool,
    /// The client's `stream_options.include_usage`, if it set one.
    pub include_usage: Option<bool>,
    /// Choices requested (`n`, default 1).
    pub n: u32,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    /// vLLM's `min_tokens` when above 0 (vllm.md §4).
    pub min_tokens: Option<u64>,
    /// vLLM's `truncate_prompt_tokens` (−1 = "as many as fit"), vllm.md §3.
    pub truncate_prompt_tokens: Option<i64>,
    pub message_count: usize,
    /// UTF-8 bytes of all text the chat template will tokenize: message text and refusal
    /// parts, names, tool-call ids/names/arguments, reasoning, tool definitions (as JSON),
    /// RAG documents. Not counted: base64 media, template text itself.
    pub prompt_text_bytes: usize,
    /// Content parts that are not text (images, audio, files, embeddings …).
    pub non_text_parts: usize,
    pub(crate) prefix: PrefixKeys,
}

impl ChatFacts {
    /// The limit the client asked for, as vLLM 0.33 resolves it: `max_completion_tokens`
    /// when set, else `max_tokens` (vllm.md §3).
    pub fn requested_limit(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// A 64-bit key for prefix-affinity routing: requests whose prompts start with the same
    /// bytes get the same key, so they can land on the worker whose KV cache holds that
    /// prefix.
    ///
    /// What is hashed: the stream, in message order, of each message's role, name, text
    /// (string content, text and refusal parts), the identity of non-text parts (type and
    /// URL/data/file id) and assistant tool calls (name, arguments), in that fixed order
    /// whatever the order of keys in the JSON, with separator bytes between fields and
    /// messages. A string and a single text part with the same text hash alike. Tool definitions are not hashed (templates place them
    /// differently; requests that vary only tools share a key, costing cache hits, never
    /// correctness).
    ///
    /// `max_bytes` is how much of that stream to use. When the stream is longer, it is
    /// rounded down to a multiple of 256 (at least 256) and capped by
    /// `ValidationPolicy::prefix_window_bytes`; a shorter stream is hashed whole.
    pub fn prefix_key(&self, max_bytes: usize) -> u64 {
        self.prefix.key(max_bytes)
    }

    /// Bytes of the prefix stream that `prefix_key` can see (at most the window).
    pub fn prefix_bytes(&self) -> usize {
        self.prefix.total
    }
}

/// Bytes per prefix checkpoint.
pub(crate) const PREFIX_BLOCK: usize = 256;

/// Hash states at every `PREFIX_BLOCK` bytes of the prefix stream, plus the state at its end.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct PrefixKeys {
    checkpoints: Vec<u64>,
    tail: u64,
    total: usize,
}

impl PrefixKeys {
    fn key(&self, max_bytes: usize) -> u64 {
        if max_bytes >= self.total {
            return finish(self.tail, self.total);
        }
        let blocks = (max_bytes / PREFIX_BLOCK).max(1);
        match self.checkpoints.get(blocks - 1) {
            Some(state) => finish(*state, blocks * PREFIX_BLOCK),
            None => finish(self.tail, self.total),
        }
    }
}

/// Streams bytes into 256-byte blocks, hashing each block 8 bytes at a time.
///
/// Not a cryptographic hash: a key only picks a worker. Fixed constants (no per-process
/// seed), so every gateway replica maps the same prompt to the same key.
pub(crate) struct PrefixHasher {
    block: [u8; PREFIX_BLOCK],
    fill: usize,
    state: u64,
    total: usize,
    window: usize,
    checkpoints: Vec<u64>,
}

const SEED: u64 = 0x243f_6a88_85a3_08d3;
const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix_block(mut state: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        state = (state ^ u64::from_le_bytes(w))
            .wrapping_mul(MUL)
            .rotate_left(31);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        state = (state ^ u64::from_le_bytes(w))
            .wrapping_mul(MUL)
            .rotate_left(31);
    }
    state
}

/// murmur3's fmix64 over the state and the length, so prefixes of different lengths that
/// pad to the same words still differ.
fn finish(state: u64, len: usize) -> u64 {
    let mut h = state ^ (len as u64).wrapping_mul(MUL);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl PrefixHasher {
    pub(crate) fn new(window: usize) -> Self {
        PrefixHasher {
            block: [0; PREFIX_BLOCK],
            fill: 0,
            state: SEED,
            total: 0,
            window,
            checkpoints: Vec::new(),
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.total >= self.window
    }

    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        let room = self.window.saturating_sub(self.total);
        let mut bytes = bytes.get(..bytes.len().min(room)).unwrap_or_default();
        while !bytes.is_empty() {
            let take = (PREFIX_BLOCK - self.fill).min(bytes.len());
            let (head, rest) = bytes.split_at(take);
            if let Some(dst) = self.block.get_mut(self.fill..self.fill + take) {
                dst.copy_from_slice(head);
            }
            self.fill += take;
            self.total += take;
            bytes = rest;
            if self.fill == PREFIX_BLOCK {
                self.state = mix_block(self.state, &self.block);
                self.checkpoints.push(self.state);
                self.fill = 0;
            }
        }
    }

    pub(crate) fn finish(self) -> PrefixKeys {
        let tail = mix_block(self.state, self.block.get(..self.fill).unwrap_or_default());
        PrefixKeys {
            checkpoints: self.checkpoints,
            tail,
            total: self.total,
        }
    }
}

/// Separators in the prefix stream (ASCII record/unit separators never appear in roles).
pub(crate) const SEP_FIELD: &[u8] = b"\x1f";
pub(crate) const SEP_ROLE: &[u8] = b"\x1e";
pub(crate) const SEP_MESSAGE: &[u8] = b"\x1d";

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(parts: &[&[u8]], window: usize) -> PrefixKeys {
        let mut h = PrefixHasher::new(window);
        for p in parts {
            h.feed(p);
        }
        h.finish()
    }

    #[test]
    fn the_key_depends_only_on_the_bytes_not_how_they_were_fed() {
        let data: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
        let whole = keys(&[&data], 8192);
        let split = keys(&[&data[..7], &data[7..300], &data[300..]], 8192);
        assert_eq!(whole, split);
        for max in [0, 1, 255, 256, 300, 1024, 5000] {
            assert_eq!(whole.key(max), split.key(max));
        }
    }

    #[test]
    fn shared_prefixes_share_keys_up_to_where_they_differ() {
        let a = vec![b'a'; 3000];
        let mut b = a.clone();
        b[2000] = b'b';
        let (ka, kb) = (keys(&[&a], 8192), keys(&[&b], 8192));
        assert_eq!(ka.key(1024), kb.key(1024));
        assert_eq!(ka.key(2000), kb.key(2000)); // rounded down to 1792
        assert_ne!(ka.key(2048), kb.key(2048));
        assert_ne!(ka.key(usize::MAX), kb.key(usize::MAX));
    }

    #[test]
    fn short_streams_are_hashed_whole_and_lengths_matter() {
        let k1 = keys(&[b"abc"], 8192);
        let k2 = keys(&[b"abc\0"], 8192);
        assert_ne!(k1.key(4096), k2.key(4096));
        assert_eq!(k1.key(4096), k1.key(3));
    }

    #[test]
    fn the_window_caps_what_is_hashed() {
        let a = vec![b'x'; 10_000];
        let mut b = a.clone();
        b[9000] = b'y';
        let (ka, kb) = (keys(&[&a], 4096), keys(&[&b], 4096));
        assert_eq!(ka.total, 4096);
        assert_eq!(ka.key(usize::MAX), kb.key(usize::MAX));
    }
}
