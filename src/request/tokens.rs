//! Prompt-size figures from `ChatFacts`, without a tokenizer.
//!
//! `upper_bound` answers "does this request certainly fit the context?"; `estimate` feeds
//! token rate limits. Neither is an exact count: the gateway has no tokenizer and no chat
//! template.
//!
//! Why bytes bound tokens: byte-level BPE and SentencePiece-with-byte-fallback vocabularies
//! never produce a text token covering less than one byte, so a text of B bytes is at most
//! B tokens. On top of the text come the template's own tokens: for ChatML-like templates
//! `<|im_start|>` + role + newline before and `<|im_end|>` + newline after each message
//! (the role name itself is already in `prompt_text_bytes`), i.e. at most 4 per message,
//! and 2 for the generation prompt.
//!
//! Where the bound is not one: a template that injects text of its own (a default system
//! prompt, today's date) adds tokens no request byte accounts for; and a non-text part
//! (image, audio) expands into as many placeholder tokens as the model's processor decides,
//! hundreds to thousands for an image. `PER_NON_TEXT_PART` is a token allowance, not a
//! bound: for multimodal models call `upper_bound_with` with the model's real per-item
//! figure, or treat requests with `non_text_parts > 0` as "not certain to fit".

use crate::request::ChatFacts;

/// Template tokens per message (ChatML: start marker, newline, end marker, newline).
pub const PER_MESSAGE: u64 = 4;
/// Template tokens per request (the generation prompt's start marker and newline).
pub const PER_REQUEST: u64 = 2;
/// Allowance per non-text content part (see the module doc: not a bound).
pub const PER_NON_TEXT_PART: u64 = 16;

/// At most this many prompt tokens, for text under a ChatML-like template:
/// `prompt_text_bytes + 4·messages + 2 + 16·non_text_parts`.
pub fn upper_bound(facts: &ChatFacts) -> u64 {
    upper_bound_with(facts, PER_NON_TEXT_PART)
}

/// `upper_bound` with a caller-supplied token count per non-text part.
pub fn upper_bound_with(facts: &ChatFacts, per_non_text_part: u64) -> u64 {
    to_u64(facts.prompt_text_bytes).saturating_add(overhead(facts, per_non_text_part))
}

/// A typical prompt token count: `ceil(prompt_text_bytes / chars_per_token)` plus the same
/// template overhead as `upper_bound`. English text averages about 4 bytes per token on
/// GPT-style vocabularies. A `chars_per_token` below 1, NaN or infinite is treated as 1,
/// which makes the estimate equal to the upper bound.
pub fn estimate(facts: &ChatFacts, chars_per_token: f64) -> u64 {
    let cpt = if chars_per_token.is_finite() && chars_per_token >= 1.0 {
        chars_per_token
    } else {
        1.0
    };
    let text = (facts.prompt_text_bytes as f64 / cpt).ceil();
    // The quotient of a usize by a value >= 1 fits u64; the `as` saturates regardless.
    (text as u64).saturating_add(overhead(facts, PER_NON_TEXT_PART))
}

fn overhead(facts: &ChatFacts, per_non_text_part: u64) -> u64 {
    PER_MESSAGE
        .saturating_mul(to_u64(facts.message_count))
        .saturating_add(PER_REQUEST)
        .saturating_add(per_non_text_part.saturating_mul(to_u64(facts.non_text_parts)))
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{parse_body, validate_chat, JsonLimits, ValidationPolicy};

    fn facts(body: &str) -> ChatFacts {
        let v = parse_body(body.as_bytes(), &JsonLimits::default()).unwrap();
        validate_chat(&v, &ValidationPolicy::default()).unwrap()
    }

    #[test]
    fn the_bound_is_bytes_plus_template_overhead() {
        let f = facts(
            r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"héllo"}]}"#,
        );
        // role names count as text: "system"(6)+"Be brief."(9)+"user"(4)+"héllo"(6) = 25
        assert_eq!(f.prompt_text_bytes, 25);
        assert_eq!(upper_bound(&f), 25 + 4 * 2 + 2);
        assert_eq!(estimate(&f, 4.0), 7 + 4 * 2 + 2);
        assert_eq!(estimate(&f, 0.0), upper_bound(&f));
        assert_eq!(estimate(&f, f64::NAN), upper_bound(&f));
    }

    #[test]
    fn non_text_parts_get_their_allowance() {
        let f = facts(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"what is this"},{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#,
        );
        assert_eq!(f.non_text_parts, 1);
        assert_eq!(f.prompt_text_bytes, 4 + 12);
        assert_eq!(upper_bound(&f), 16 + 4 + 2 + 16);
        assert_eq!(upper_bound_with(&f, 1000), 16 + 4 + 2 + 1000);
    }

    #[test]
    fn tool_definitions_count_as_prompt_text() {
        let without = facts(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#);
        let with = facts(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"Weather now","parameters":{"type":"object"}}}]}"#,
        );
        let schema = r#"{"type": "object"}"#.len();
        assert_eq!(
            with.prompt_text_bytes - without.prompt_text_bytes,
            "get_weather".len() + "Weather now".len() + schema
        );
    }
}
