//! The output-token limit the gateway enforces, and the 400s that decision can produce.
//!
//! vLLM resolves the limit differently by version (../shared/reference/vllm.md §3): 0.33
//! takes `max_completion_tokens` when not null, else `max_tokens`, and silently clamps to
//! the remaining context; 0.11 takes `max_completion_tokens or max_tokens` and rejects
//! what does not fit. The gateway decides the limit itself and writes exactly one field
//! (the other removed), so every worker version sees the same request.

use serde::Deserialize;

use crate::request::invalid::{codes, Invalid};
use crate::request::splice::RewritePlan;
use crate::request::ChatFacts;

/// What to do when a client asks for more output than the cap or the context allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExceed {
    /// Lower the limit to what is allowed (vLLM 0.33's behaviour for the context).
    #[default]
    Clamp,
    /// Answer 400 (vLLM 0.11's behaviour for the context).
    Reject,
}

/// The field the gateway writes into the forwarded body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitField {
    /// `max_tokens`: what most clients send, honoured by every vLLM version.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`: OpenAI's current name, honoured first by vLLM 0.33.
    MaxCompletionTokens,
}

impl LimitField {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitField::MaxTokens => "max_tokens",
            LimitField::MaxCompletionTokens => "max_completion_tokens",
        }
    }

    pub fn other(self) -> LimitField {
        match self {
            LimitField::MaxTokens => LimitField::MaxCompletionTokens,
            LimitField::MaxCompletionTokens => LimitField::MaxTokens,
        }
    }
}

/// Per-model limit settings (config). A `0` in `default_max_tokens` or `max_tokens_cap`
/// means "not set": a zero-token completion is never useful and vLLM refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitPolicy {
    /// Limit for requests that set none. Unset: the remaining context, as vLLM does.
    pub default_max_tokens: Option<u64>,
    /// Most output tokens any request may get.
    pub max_tokens_cap: Option<u64>,
    pub on_exceed: OnExceed,
    pub limit_field: LimitField,
    /// The worker's context length (from `/v1/models`, vllm.md §7).
    pub max_model_len: Option<u64>,
}

/// Why the limit is lower than what was asked or defaulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClampReason {
    /// Lowered to `max_tokens_cap`.
    Cap,
    /// Lowered to `max_model_len − prompt tokens`.
    Context,
}

/// Where the limit came from before any clamping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// The client's own field (`max_completion_tokens` wins over `max_tokens`).
    Client(LimitField),
    /// `LimitPolicy::default_max_tokens`.
    Default,
    /// No request value and no default: the remaining context.
    Context,
    /// Nothing else known: the cap itself.
    Cap,
}

/// The limit to enforce and the field that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitDecision {
    pub limit: u64,
    /// The field to write (`LimitPolicy::limit_field`); the other is removed.
    pub field: LimitField,
    pub clamped_by: Option<ClampReason>,
    pub source: LimitSource,
}

impl LimitDecision {
    /// The body edit that makes the worker see exactly this limit. `rewrite_body` returns
    /// the body unchanged when it already says exactly that.
    pub fn rewrite_plan(&self) -> RewritePlan {
        RewritePlan {
            limit: Some((self.field, self.limit)),
            include_usage: false,
        }
    }
}

/// A limit decision that ends in a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The prompt alone fills the context, leaving no room for one output token (vLLM §3:
    /// a prompt of exactly `max_model_len` tokens is refused too).
    #[error("This model's maximum context length is {max_model_len} tokens. However, your messages resulted in {prompt_tokens} tokens. Please reduce the length of the messages.")]
    PromptTooLong {
        max_model_len: u64,
        prompt_tokens: u64,
    },
    /// Prompt plus requested output exceed the context, under `OnExceed::Reject`.
    #[error("This model's maximum context length is {max_model_len} tokens. However, you requested {} tokens ({prompt_tokens} in the messages, {completion_tokens} in the completion). Please reduce the length of the messages or completion.", prompt_tokens.saturating_add(*completion_tokens))]
    ContextExceeded {
        max_model_len: u64,
        prompt_tokens: u64,
        completion_tokens: u64,
    },
    /// The requested output leaves no room for a prompt (prompt size unknown), under
    /// `OnExceed::Reject` (vLLM 0.33 refuses this case itself, vLLM §3).
    #[error("'{}' is {requested}, which leaves no room for the prompt in this model's maximum context length of {max_model_len} tokens. Please request fewer output tokens.", field.as_str())]
    AboveModelLen {
        field: LimitField,
        requested: u64,
        max_model_len: u64,
    },
    /// The client asked for more than `max_tokens_cap`, under `OnExceed::Reject`.
    #[error("Invalid '{}': integer above maximum value. Expected a value <= {cap}, but got {requested} instead.", field.as_str())]
    AboveCap {
        field: LimitField,
        requested: u64,
        cap: u64,
    },
    /// `min_tokens` above the final limit (vLLM §3).
    #[error("Invalid value for 'min_tokens': must be less than or equal to the output limit {limit}, got {min_tokens}.")]
    MinTokensAboveLimit { min_tokens: u64, limit: u64 },
    /// `truncate_prompt_tokens` above `max_model_len − limit` (vLLM §3: "must not exceed
    /// the allowed input size").
    #[error("Invalid value for 'truncate_prompt_tokens': must be at most {max_input_tokens} (max_model_len minus the output limit), got {truncate_prompt_tokens}.")]
    TruncationTooLarge {
        truncate_prompt_tokens: u64,
        max_input_tokens: u64,
    },
}

impl LimitError {
    /// The field the client must change. Context errors name `messages`, as OpenAI does
    /// (CC §7.1); the others the field the client used.
    pub fn param(&self) -> &'static str {
        match self {
            LimitError::PromptTooLong { .. } | LimitError::ContextExceeded { .. } => "messages",
            LimitError::AboveModelLen { field, .. } | LimitError::AboveCap { field, .. } => {
                field.as_str()
            }
            LimitError::MinTokensAboveLimit { .. } => "min_tokens",
            LimitError::TruncationTooLarge { .. } => "truncate_prompt_tokens",
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            LimitError::PromptTooLong { .. } | LimitError::ContextExceeded { .. } => {
                codes::CONTEXT_LENGTH_EXCEEDED
            }
            LimitError::AboveModelLen { .. } | LimitError::AboveCap { .. } => {
                codes::INTEGER_ABOVE_MAX
            }
            LimitError::MinTokensAboveLimit { .. } | LimitError::TruncationTooLarge { .. } => {
                codes::INVALID_VALUE
            }
        }
    }

    /// The same 400 as a validation failure, for the gateway's one error renderer.
    pub fn to_invalid(&self) -> Invalid {
        Invalid::new(self.param(), self.code(), self.to_string())
    }
}

/// Decide the output limit for a valid request.
///
/// `prompt_tokens` must be an exact count (or `None`): it decides both clamping and the
/// `context_length_exceeded` rejection, and an over-estimate would refuse prompts that fit.
/// With `None`, the prompt is taken as one token (the least any chat template renders), so
/// the limit stays below `max_model_len`.
///
/// Steps:
/// 1. requested = `max_completion_tokens` if set, else `max_tokens` (vLLM 0.33, §3);
/// 2. without one: `default_max_tokens`, else the remaining context, else the cap, else
///    `Ok(None)`: nothing to enforce, forward the body as it is;
/// 3. above `max_tokens_cap`: clamp, or under `Reject` refuse a value the client chose;
/// 4. prompt ≥ `max_model_len`: `PromptTooLong`; prompt + limit above it: clamp to what is
///    left, or under `Reject` refuse a value the client chose (an unknown prompt counts as
///    one token);
/// 5. `min_tokens` above the final limit, or `truncate_prompt_tokens` above
///    `max_model_len − limit`: refuse (vLLM would).
///
/// `truncate_prompt_tokens` (vLLM §3) changes the prompt first: `k ≥ 0` keeps at most `k`
/// tokens; `−1` keeps as many as fit, so the prompt is treated as unknown.
pub fn resolve_limit(
    facts: &ChatFacts,
    policy: &LimitPolicy,
    prompt_tokens: Option<u64>,
) -> Result<Option<LimitDecision>, LimitError> {
    let client = match (facts.max_completion_tokens, facts.max_tokens) {
        (Some(v), _) => Some((LimitField::MaxCompletionTokens, v)),
        (None, Some(v)) => Some((LimitField::MaxTokens, v)),
        (None, None) => None,
    };
    let default = policy.default_max_tokens.filter(|d| *d > 0);
    let cap = policy.max_tokens_cap.filter(|c| *c > 0);
    let truncate = facts.truncate_prompt_tokens;

    let prompt = match truncate {
        Some(-1) => None,
        Some(k) => match (prompt_tokens, u64::try_from(k)) {
            (Some(p), Ok(k)) => Some(p.min(k)),
            (p, _) => p,
        },
        None => prompt_tokens,
    };
    let remaining = match (policy.max_model_len, prompt) {
        (Some(mml), Some(p)) => {
            if p >= mml {
                return Err(LimitError::PromptTooLong {
                    max_model_len: mml,
                    prompt_tokens: p,
                });
            }
            Some(mml - p)
        }
        // Unknown prompt: it still renders to at least one token, and vLLM refuses an output
        // limit that leaves the prompt no room (vllm.md §3).
        (Some(mml), None) => Some(mml.saturating_sub(1)),
        (None, _) => None,
    };

    let (mut limit, source) = match (client, default, remaining, cap) {
        (Some((field, v)), ..) => (v, LimitSource::Client(field)),
        (None, Some(d), ..) => (d, LimitSource::Default),
        (None, None, Some(r), _) => (r, LimitSource::Context),
        (None, None, None, Some(c)) => (c, LimitSource::Cap),
        (None, None, None, None) => return Ok(None),
    };
    let chosen_by_client = match source {
        LimitSource::Client(f) => Some(f),
        _ => None,
    };
    let reject = policy.on_exceed == OnExceed::Reject;
    let mut clamped_by = None;

    if let Some(c) = cap {
        if limit > c {
            if let (true, Some(field)) = (reject, chosen_by_client) {
                return Err(LimitError::AboveCap {
                    field,
                    requested: limit,
                    cap: c,
                });
            }
            limit = c;
            clamped_by = Some(ClampReason::Cap);
        }
    }
    if let (Some(r), Some(mml)) = (remaining, policy.max_model_len) {
        if limit > r {
            if let (true, Some(field)) = (reject, chosen_by_client) {
                return Err(match prompt {
                    Some(p) => LimitError::ContextExceeded {
                        max_model_len: mml,
                        prompt_tokens: p,
                        completion_tokens: limit,
                    },
                    None => LimitError::AboveModelLen {
                        field,
                        requested: limit,
                        max_model_len: mml,
                    },
                });
            }
            limit = r;
            clamped_by = Some(ClampReason::Context);
        }
    }

    if let Some(min) = facts.min_tokens {
        if min > limit {
            return Err(LimitError::MinTokensAboveLimit {
                min_tokens: min,
                limit,
            });
        }
    }
    if let (Some(Ok(k)), Some(mml)) = (truncate.map(u64::try_from), policy.max_model_len) {
        let max_input = mml.saturating_sub(limit);
        if k > max_input {
            return Err(LimitError::TruncationTooLarge {
                truncate_prompt_tokens: k,
                max_input_tokens: max_input,
            });
        }
    }
    Ok(Some(LimitDecision {
        limit,
        field: policy.limit_field,
        clamped_by,
        source,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{parse_body, validate_chat, JsonLimits, ValidationPolicy};

    fn facts(extra: &str) -> ChatFacts {
        let body =
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
        let v = parse_body(body.as_bytes(), &JsonLimits::default()).unwrap();
        validate_chat(&v, &ValidationPolicy::default()).unwrap()
    }

    fn policy(
        default: Option<u64>,
        cap: Option<u64>,
        on_exceed: OnExceed,
        mml: Option<u64>,
    ) -> LimitPolicy {
        LimitPolicy {
            default_max_tokens: default,
            max_tokens_cap: cap,
            on_exceed,
            limit_field: LimitField::MaxTokens,
            max_model_len: mml,
        }
    }

    #[test]
    fn nothing_known_means_nothing_to_enforce() {
        let d = resolve_limit(&facts(""), &LimitPolicy::default(), None).unwrap();
        assert_eq!(d, None);
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let f = facts(r#","max_tokens":50,"max_completion_tokens":70"#);
        let d = resolve_limit(&f, &LimitPolicy::default(), None)
            .unwrap()
            .unwrap();
        assert_eq!(d.limit, 70);
        assert_eq!(
            d.source,
            LimitSource::Client(LimitField::MaxCompletionTokens)
        );
        assert_eq!(d.clamped_by, None);
    }

    #[test]
    fn default_then_context_then_cap_fill_in_for_a_missing_limit() {
        let p = policy(Some(256), None, OnExceed::Clamp, None);
        let d = resolve_limit(&facts(""), &p, None).unwrap().unwrap();
        assert_eq!((d.limit, d.source), (256, LimitSource::Default));

        let p = policy(None, None, OnExceed::Clamp, Some(4096));
        let d = resolve_limit(&facts(""), &p, Some(96)).unwrap().unwrap();
        assert_eq!((d.limit, d.source), (4000, LimitSource::Context));

        let p = policy(None, Some(1000), OnExceed::Reject, Some(4096));
        let d = resolve_limit(&facts(""), &p, Some(96)).unwrap().unwrap();
        // Not the client's value: clamped even under Reject.
        assert_eq!((d.limit, d.clamped_by), (1000, Some(ClampReason::Cap)));

        let p = policy(None, Some(1000), OnExceed::Clamp, None);
        let d = resolve_limit(&facts(""), &p, None).unwrap().unwrap();
        assert_eq!((d.limit, d.source), (1000, LimitSource::Cap));
    }

    #[test]
    fn the_cap_clamps_or_rejects_naming_the_clients_field() {
        let f = facts(r#","max_completion_tokens":5000"#);
        let clamp = policy(None, Some(1000), OnExceed::Clamp, None);
        let d = resolve_limit(&f, &clamp, None).unwrap().unwrap();
        assert_eq!((d.limit, d.clamped_by), (1000, Some(ClampReason::Cap)));

        let reject = policy(None, Some(1000), OnExceed::Reject, None);
        let e = resolve_limit(&f, &reject, None).unwrap_err();
        assert_eq!(e.param(), "max_completion_tokens");
        assert_eq!(e.code(), "integer_above_max_value");
        // At the cap exactly: fine.
        let f = facts(r#","max_completion_tokens":1000"#);
        assert_eq!(
            resolve_limit(&f, &reject, None).unwrap().unwrap().limit,
            1000
        );
    }

    #[test]
    fn the_context_clamps_or_rejects_like_openai() {
        let f = facts(r#","max_tokens":1000"#);
        let clamp = policy(None, None, OnExceed::Clamp, Some(4096));
        let d = resolve_limit(&f, &clamp, Some(3500)).unwrap().unwrap();
        assert_eq!((d.limit, d.clamped_by), (596, Some(ClampReason::Context)));
        // Exactly fitting is not clamped.
        let d = resolve_limit(&f, &clamp, Some(3096)).unwrap().unwrap();
        assert_eq!((d.limit, d.clamped_by), (1000, None));

        let reject = policy(None, None, OnExceed::Reject, Some(4096));
        let e = resolve_limit(&f, &reject, Some(3500)).unwrap_err();
        assert_eq!(e.param(), "messages");
        assert_eq!(e.code(), "context_length_exceeded");
        assert!(e
            .to_string()
            .contains("4500 tokens (3500 in the messages, 1000 in the completion)"));

        let e = resolve_limit(&facts(r#","max_tokens":5000"#), &reject, None).unwrap_err();
        assert_eq!(e.param(), "max_tokens");
        // Prompt unknown: the limit must leave room for at least one prompt token.
        let e = resolve_limit(&facts(r#","max_tokens":4096"#), &reject, None).unwrap_err();
        assert_eq!(e.param(), "max_tokens");
        let d = resolve_limit(&facts(r#","max_tokens":4096"#), &clamp, None)
            .unwrap()
            .unwrap();
        assert_eq!((d.limit, d.clamped_by), (4095, Some(ClampReason::Context)));
        let d = resolve_limit(&facts(r#","max_tokens":4095"#), &reject, None)
            .unwrap()
            .unwrap();
        assert_eq!(d.limit, 4095);
    }

    #[test]
    fn a_prompt_that_fills_the_context_is_refused() {
        let p = policy(None, None, OnExceed::Clamp, Some(4096));
        let e = resolve_limit(&facts(""), &p, Some(4096)).unwrap_err();
        assert_eq!(e.param(), "messages");
        assert_eq!(e.code(), "context_length_exceeded");
        assert!(resolve_limit(&facts(""), &p, Some(4095)).unwrap().is_some());
    }

    #[test]
    fn min_tokens_is_checked_against_the_final_limit() {
        let f = facts(r#","max_tokens":1000,"min_tokens":800"#);
        let p = policy(None, Some(500), OnExceed::Clamp, None);
        let e = resolve_limit(&f, &p, None).unwrap_err();
        assert_eq!(e.param(), "min_tokens");
        let p = policy(None, Some(800), OnExceed::Clamp, None);
        assert_eq!(resolve_limit(&f, &p, None).unwrap().unwrap().limit, 800);
    }

    #[test]
    fn truncation_shrinks_the_prompt_and_must_leave_room_for_the_output() {
        let p = policy(None, None, OnExceed::Clamp, Some(4096));
        let f = facts(r#","max_tokens":1000,"truncate_prompt_tokens":2000"#);
        // A 10k-token prompt is cut to 2000 by vLLM: it fits.
        let d = resolve_limit(&f, &p, Some(10_000)).unwrap().unwrap();
        assert_eq!((d.limit, d.clamped_by), (1000, None));

        let f = facts(r#","max_tokens":1000,"truncate_prompt_tokens":3500"#);
        let e = resolve_limit(&f, &p, Some(100)).unwrap_err();
        assert_eq!(e.param(), "truncate_prompt_tokens");

        let f = facts(r#","max_tokens":1000,"truncate_prompt_tokens":-1"#);
        let d = resolve_limit(&f, &p, Some(10_000)).unwrap().unwrap();
        assert_eq!(d.limit, 1000);
    }

    #[test]
    fn errors_render_as_invalid() {
        let p = policy(None, None, OnExceed::Clamp, Some(100));
        let inv = resolve_limit(&facts(""), &p, Some(150))
            .unwrap_err()
            .to_invalid();
        assert_eq!(inv.param, "messages");
        assert_eq!(inv.code, "context_length_exceeded");
        assert!(inv
            .message
            .starts_with("This model's maximum context length is 100 tokens."));
    }

    #[test]
    fn policy_enums_use_snake_case_names() {
        #[derive(Deserialize)]
        struct W {
            p: LimitPolicy,
        }
        let w: W = serde_json::from_str(
            r#"{"p":{"on_exceed":"reject","limit_field":"max_completion_tokens","max_tokens_cap":10}}"#,
        )
        .unwrap();
        assert_eq!(w.p.on_exceed, OnExceed::Reject);
        assert_eq!(w.p.limit_field, LimitField::MaxCompletionTokens);
        assert!(serde_json::from_str::<W>(r#"{"p":{"cap":1}}"#).is_err());
    }
}
