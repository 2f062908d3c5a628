//! Every request rule of OpenAI's chat contract and of vLLM's server, checked in one walk
//! over the parsed body.
//!
//! References: ../shared/reference/chat-completions.md (OpenAI, cited "CC §n") and
//! ../shared/reference/vllm.md (vLLM, cited "vLLM §n").
//!
//! Decisions that hold throughout:
//! - Unknown **top-level** keys pass untouched: the gateway forwards the body byte for byte
//!   and vLLM ignores them (vLLM §1). Keys OpenAI defines and vLLM ignores (vLLM §2, "Not
//!   modelled") pass too, after their shape is checked.
//! - Inside typed objects (a message, a content part, a tool, `response_format` …) unknown
//!   keys are `unknown_parameter`: OpenAI's schemas are closed there.
//! - Where OpenAI and vLLM disagree (vLLM §2 "vs OpenAI"), the stricter rule wins, with a
//!   `ValidationPolicy` switch where an operator may need the looser one.
//! - `null` means "unset" where either spec marks the field nullable. For the few fields
//!   OpenAI does not mark nullable but vLLM accepts as null (`tools`, `tool_choice`,
//!   `response_format`, `parallel_tool_calls`, `user`, …), `null` is `invalid_type` unless
//!   `null_as_unset`. vLLM-only fields that vLLM types as non-nullable (`min_tokens`,
//!   `echo`, …) reject `null` always: the worker would.
//! - Order: top-level keys are checked in the body's key order as serde_json's `Map`
//!   iterates it (sorted, by default); then required keys (`model`, `messages`); then the
//!   cross-field rules in the order of `cross_field`. Inside a typed object the
//!   discriminator (`role`, `type`) comes first, then keys in map order, then missing keys.
//!   The first failure is reported.

mod check;
mod formats;
mod messages;
mod sampling;
mod tools;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::request::facts::{ChatFacts, PrefixHasher};
use crate::request::invalid::{self, codes, invalid_type, missing, Invalid, Path};

use check::VResult;

/// Switches an operator may set per model (`[models.validation]` in config). Defaults are
/// the strict reading of both references.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationPolicy {
    /// Most messages in one request. Default 2048. Neither spec has a cap; this one bounds
    /// the work a single request costs the gateway and the template.
    pub max_messages: usize,
    /// Largest `n`. Default 128 (CC §1; vLLM allows 16384, vLLM §2).
    pub max_n: u32,
    /// Most `stop` strings. Default 4 (CC §1; vLLM 0.33's `VLLM_MAX_STOP_STRINGS`).
    pub max_stop: usize,
    /// Largest `top_logprobs`/`prompt_logprobs`. Default 20 (CC §1 and vLLM's
    /// `--max-logprobs`). Set it to the worker's `--max-logprobs`; −1 = uncapped, which also
    /// allows −1 ("whole vocabulary") as a value (vLLM §2).
    pub max_logprobs: i64,
    /// Largest `temperature`. Default 2.0 (CC §1, vLLM 0.33). vLLM 0.11 has no bound.
    pub max_temperature: f64,
    /// Accept roles other than OpenAI's six (vLLM accepts any role string, vLLM §1).
    pub allow_custom_roles: bool,
    /// Accept vLLM's extra content parts (`audio_url`, `video_url`, `image_embeds`,
    /// `audio_embeds`, `video_embeds`, `prompt_embeds`, `thinking`, `tool_reference`, and
    /// the bare `{"image_url": "…"}` forms), in any role (vLLM §1).
    pub allow_vllm_content_parts: bool,
    /// Accept vLLM's extra message keys `reasoning`, `reasoning_content`, `tools`, `task`
    /// (vLLM §1): agent loops replaying a reasoning model's output send them back.
    pub allow_vllm_message_fields: bool,
    /// Accept `response_format: {"type": "structural_tag", …}` (vLLM §2).
    pub allow_structural_tag: bool,
    /// Accept `messages: []` (OpenAI: minItems 1, CC §1; vLLM: no minimum, vLLM §1).
    pub allow_empty_messages: bool,
    /// Accept a request without `model` (OpenAI requires it, CC §1; vLLM serves its model,
    /// vLLM §1). The gateway usually routes on it, so the default is to require it.
    pub allow_missing_model: bool,
    /// Accept any tool/function name (vLLM does no pattern check, vLLM §2) instead of
    /// `^[a-zA-Z0-9_-]{1,64}$` (CC §1.2).
    pub allow_any_tool_name: bool,
    /// Treat `null` as unset for fields OpenAI does not mark nullable (see module doc).
    pub null_as_unset: bool,
    /// Accept any finite `logit_bias` value and let vLLM clamp it to [−100, 100]
    /// (vLLM §2); by default out-of-range values are rejected like OpenAI does (CC §1).
    pub clamp_logit_bias: bool,
    /// How many bytes of the prompt stream `ChatFacts::prefix_key` can hash. Default 8192.
    /// Not a `[models.validation]` key: the gateway sets it from the model's
    /// `affinity_prefix_bytes`, so one setting governs prefix affinity.
    #[serde(skip)]
    pub prefix_window_bytes: usize,
}

impl Default for ValidationPolicy {
    fn default() -> Self {
        ValidationPolicy {
            max_messages: 2048,
            max_n: 128,
            max_stop: 4,
            max_logprobs: 20,
            max_temperature: 2.0,
            allow_custom_roles: false,
            allow_vllm_content_parts: false,
            allow_vllm_message_fields: false,
            allow_structural_tag: false,
            allow_empty_messages: false,
            allow_missing_model: false,
            allow_any_tool_name: false,
            null_as_unset: false,
            clamp_logit_bias: false,
            prefix_window_bytes: 8192,
        }
    }
}

/// Validate a parsed chat-completions body against both references and collect the facts
/// the gateway needs afterwards.
pub fn validate_chat(body: &Value, policy: &ValidationPolicy) -> Result<ChatFacts, Invalid> {
    let Some(obj) = body.as_object() else {
        return Err(Invalid::new(
            "",
            codes::INVALID_TYPE,
            "The request body must be a JSON object.",
        ));
    };
    let mut cx = Cx {
        policy,
        seen: Seen::default(),
        acc: Acc {
            text_bytes: 0,
            non_text_parts: 0,
            prefix: PrefixHasher::new(policy.prefix_window_bytes),
        },
    };
    let root = Path::ROOT;
    for (key, value) in obj {
        check_field(key, value, &root.key(key), &mut cx)?;
    }
    required_fields(obj, &cx)?;
    cross_field(&cx.seen, &root)?;

    let Cx { seen, acc, .. } = cx;
    Ok(ChatFacts {
        model: seen.model.map(str::to_owned),
        stream: seen.stream,
        include_usage: seen.include_usage,
        n: seen.n.unwrap_or(1),
        max_tokens: seen.max_tokens,
        max_completion_tokens: seen.max_completion_tokens,
        min_tokens: seen.min_tokens.filter(|m| *m > 0),
        truncate_prompt_tokens: seen.truncate_prompt_tokens,
        message_count: seen.message_count,
        prompt_text_bytes: acc.text_bytes,
        non_text_parts: acc.non_text_parts,
        prefix: acc.prefix.finish(),
    })
}

/// Everything a rule may need: the policy, values other rules depend on, and the facts
/// being accumulated.
pub(crate) struct Cx<'a> {
    pub(crate) policy: &'a ValidationPolicy,
    pub(crate) seen: Seen<'a>,
    pub(crate) acc: Acc,
}

/// Running totals for `ChatFacts`.
pub(crate) struct Acc {
    pub(crate) text_bytes: usize,
    pub(crate) non_text_parts: usize,
    pub(crate) prefix: PrefixHasher,
}

impl Acc {
    /// Text the template will tokenize.
    pub(crate) fn text(&mut self, s: &str) {
        self.text_bytes = self.text_bytes.saturating_add(s.len());
    }
}

/// Values of top-level fields that cross-field rules and `ChatFacts` need. `null` leaves a
/// field at its default here.
#[derive(Default)]
pub(crate) struct Seen<'a> {
    pub(crate) model: Option<&'a str>,
    pub(crate) has_messages: bool,
    pub(crate) message_count: usize,
    pub(crate) stream: bool,
    pub(crate) stream_options: bool,
    pub(crate) include_usage: Option<bool>,
    pub(crate) n: Option<u32>,
    pub(crate) temperature: Option<f64>,
    pub(crate) max_tokens: Option<u64>,
    pub(crate) max_completion_tokens: Option<u64>,
    pub(crate) min_tokens: Option<u64>,
    pub(crate) truncate_prompt_tokens: Option<i64>,
    pub(crate) logprobs: bool,
    pub(crate) top_logprobs: bool,
    pub(crate) prompt_logprobs: Option<i64>,
    pub(crate) logprob_token_ids: bool,
    pub(crate) use_beam_search: bool,
    pub(crate) tools: Option<&'a [Value]>,
    pub(crate) tool_choice: Option<&'a Value>,
    pub(crate) structured_outputs: Option<&'a Map<String, Value>>,
    pub(crate) response_format_type: Option<&'a str>,
    pub(crate) continue_final_message: bool,
    pub(crate) add_generation_prompt: bool,
    pub(crate) wants_audio: bool,
    pub(crate) has_audio: bool,
}

/// Dispatch one top-level key to its rule. Unknown keys pass (vLLM §1).
fn check_field<'a>(key: &str, v: &'a Value, p: &Path<'_>, cx: &mut Cx<'a>) -> VResult {
    match key {
        // Required (CC §1).
        "model" => {
            if v.is_null() && cx.policy.allow_missing_model {
                return Ok(());
            }
            cx.seen.model = Some(check::want_str(v, p)?);
            Ok(())
        }
        "messages" => messages::check_messages(v, p, cx),

        // OpenAI sampling and output controls (CC §1; vLLM §2).
        "max_completion_tokens" => {
            cx.seen.max_completion_tokens = sampling::max_tokens(v, p)?;
            Ok(())
        }
        "max_tokens" => {
            cx.seen.max_tokens = sampling::max_tokens(v, p)?;
            Ok(())
        }
        "temperature" => sampling::temperature(v, p, cx),
        "top_p" => sampling::top_p(v, p),
        "n" => sampling::n(v, p, cx),
        "stream" => {
            cx.seen.stream = nullable_bool(v, p)?.unwrap_or(false);
            Ok(())
        }
        "stream_options" => formats::stream_options(v, p, cx),
        "stop" => sampling::stop(v, p, cx.policy),
        "presence_penalty" | "frequency_penalty" => sampling::penalty(v, p),
        "logit_bias" => sampling::logit_bias(v, p, cx.policy),
        "logprobs" => {
            cx.seen.logprobs = nullable_bool(v, p)?.unwrap_or(false);
            Ok(())
        }
        "top_logprobs" => sampling::top_logprobs(v, p, cx),
        "seed" => sampling::seed(v, p),
        "response_format" => formats::response_format(v, p, cx),
        "tools" => tools::tools(v, p, cx),
        "tool_choice" => tools::tool_choice(v, p, cx),
        "parallel_tool_calls" => strict_nullable(v, p, cx, |v, p| check::want_bool(v, p).map(drop)),
        "user" => strict_nullable(v, p, cx, |v, p| check::want_str(v, p).map(drop)),
        // maxLength 64 (CC §1).
        "safety_identifier" => nullable(v, |v| check::str_max_chars(v, p, 64).map(drop)),
        "prompt_cache_key" => nullable(v, |v| check::want_str(v, p).map(drop)),
        "prompt_cache_retention" => {
            nullable(v, |v| check::one_of(v, p, &["in_memory", "24h"]).map(drop))
        }
        "prompt_cache_options" => strict_nullable(v, p, cx, formats::prompt_cache_options),
        "metadata" => nullable(v, |v| formats::metadata(v, p)),
        "store" => nullable_bool(v, p).map(drop),
        "modalities" => formats::modalities(v, p, cx),
        "audio" => formats::audio(v, p, cx),
        "reasoning_effort" => nullable(v, |v| {
            check::one_of(
                v,
                p,
                &["none", "minimal", "low", "medium", "high", "xhigh", "max"],
            )
            .map(drop)
        }),
        "verbosity" => nullable(v, |v| {
            check::one_of(v, p, &["low", "medium", "high"]).map(drop)
        }),
        "service_tier" => nullable(v, |v| {
            check::one_of(
                v,
                p,
                &["auto", "default", "flex", "scale", "priority", "fast"],
            )
            .map(drop)
        }),
        "prediction" => nullable(v, |v| formats::prediction(v, p)),
        "web_search_options" => strict_nullable(v, p, cx, formats::web_search_options),
        "moderation" => nullable(v, |v| formats::moderation(v, p)),
        "function_call" => strict_nullable(v, p, cx, tools::function_call),
        "functions" => {
            let policy = cx.policy;
            strict_nullable(v, p, cx, |v, p| tools::functions(v, p, policy))
        }

        // vLLM-only request fields (vLLM §4).
        "top_k" => nullable(v, |v| check::int_in(v, p, -1, I64_MAX).map(drop)),
        "min_p" => nullable(v, |v| {
            check::num_in(v, p, check::Bound::Incl(0.0), check::Bound::Incl(1.0)).map(drop)
        }),
        "repetition_penalty" => nullable(v, |v| {
            check::num_in(v, p, check::Bound::Excl(0.0), check::Bound::None).map(drop)
        }),
        "length_penalty" => check::want_number(v, p).map(drop),
        "use_beam_search" => {
            cx.seen.use_beam_search = check::want_bool(v, p)?;
            Ok(())
        }
        "min_tokens" => {
            let m = check::int_in(v, p, 0, I64_MAX)?;
            cx.seen.min_tokens = u64::try_from(m).ok();
            Ok(())
        }
        "ignore_eos"
        | "include_stop_str_in_output"
        | "skip_special_tokens"
        | "spaces_between_special_tokens"
        | "include_reasoning"
        | "echo"
        | "add_special_tokens" => check::want_bool(v, p).map(drop),
        "add_generation_prompt" => {
            cx.seen.add_generation_prompt = check::want_bool(v, p)?;
            Ok(())
        }
        "continue_final_message" => {
            cx.seen.continue_final_message = check::want_bool(v, p)?;
            Ok(())
        }
        // Token ids are vocabulary indices: never negative (vLLM §4, "inside the vocab").
        "stop_token_ids" => nullable(v, |v| check::int_array(v, p, 0, I64_MAX).map(drop)),
        "allowed_token_ids" => nullable(v, |v| sampling::allowed_token_ids(v, p)),
        "truncate_prompt_tokens" => nullable(v, |v| {
            let t = check::int_in(v, p, -1, I64_MAX)?;
            cx.seen.truncate_prompt_tokens = i64::try_from(t).ok();
            Ok(())
        }),
        "truncation_side" => nullable(v, |v| check::one_of(v, p, &["left", "right"]).map(drop)),
        "prompt_logprobs" => sampling::prompt_logprobs(v, p, cx),
        "logprob_token_ids" => sampling::logprob_token_ids(v, p, cx),
        "bad_words" => sampling::bad_words(v, p),
        "thinking_token_budget" => nullable(v, |v| sampling::thinking_token_budget(v, p)),
        "structured_outputs" => formats::structured_outputs(v, p, cx),
        "documents" => nullable(v, |v| formats::documents(v, p, cx)),
        "chat_template" | "session_id" => nullable(v, |v| check::want_str(v, p).map(drop)),
        "chat_template_kwargs"
        | "mm_processor_kwargs"
        | "kv_transfer_params"
        | "ec_transfer_params" => nullable(v, |v| check::want_object(v, p).map(drop)),
        "media_io_kwargs" => nullable(v, |v| formats::object_of_objects(v, p)),
        "priority" => check::int_in(v, p, I64_MIN, I64_MAX).map(drop),
        "request_id" => check::want_str(v, p).map(drop),
        "cache_salt" => nullable(v, |v| formats::cache_salt(v, p)),
        "return_tokens_as_token_ids" | "return_token_ids" | "return_prompt_text" => {
            nullable_bool(v, p).map(drop)
        }
        "vllm_xargs" => nullable(v, |v| formats::vllm_xargs(v, p)),
        "repetition_detection" => nullable(v, |v| formats::repetition_detection(v, p)),
        "stream_interval" => nullable(v, |v| check::int_in(v, p, 1, I64_MAX).map(drop)),
        _ => Ok(()),
    }
}

pub(crate) const I64_MAX: i128 = i64::MAX as i128;
pub(crate) const I64_MIN: i128 = i64::MIN as i128;

/// A nullable field: run `f` unless the value is `null`.
fn nullable<'v>(v: &'v Value, f: impl FnOnce(&'v Value) -> VResult) -> VResult {
    if v.is_null() {
        Ok(())
    } else {
        f(v)
    }
}

fn nullable_bool(v: &Value, p: &Path<'_>) -> VResult<Option<bool>> {
    if v.is_null() {
        Ok(None)
    } else {
        check::want_bool(v, p).map(Some)
    }
}

/// A field OpenAI does not mark nullable (CC §1): `null` is `invalid_type` unless the
/// policy says `null_as_unset`.
fn strict_nullable<'v>(
    v: &'v Value,
    p: &Path<'_>,
    cx: &Cx<'_>,
    f: impl FnOnce(&'v Value, &Path<'_>) -> VResult,
) -> VResult {
    if v.is_null() {
        if cx.policy.null_as_unset {
            return Ok(());
        }
        return Err(invalid_type(p, "a non-null value", v));
    }
    f(v, p)
}

/// `model` and `messages` are required (CC §1).
fn required_fields(obj: &Map<String, Value>, cx: &Cx<'_>) -> VResult {
    let root = Path::ROOT;
    if !obj.contains_key("model") && !cx.policy.allow_missing_model {
        return Err(missing(&root.key("model")));
    }
    if !cx.seen.has_messages {
        return Err(missing(&root.key("messages")));
    }
    Ok(())
}

/// Rules that involve more than one field. Each names the field the client should change.
fn cross_field(s: &Seen<'_>, root: &Path<'_>) -> VResult {
    // `top_logprobs` requires `logprobs: true` (CC §1). vLLM only insists for values > 0
    // or −1 (vLLM §2); OpenAI says "when used", so any non-null value needs it.
    if s.top_logprobs && !s.logprobs {
        return Err(invalid::invalid_value(
            &root.key("top_logprobs"),
            "'logprobs' must be set to true when 'top_logprobs' is used.",
        ));
    }
    // `stream_options` only with `stream: true` (CC §1 prose; vLLM §2 rejects a truthy
    // one). Stricter: any non-null `stream_options`, even `{}`.
    if s.stream_options && !s.stream {
        return Err(invalid::invalid_value(
            &root.key("stream_options"),
            "'stream_options' is only allowed when 'stream' is true.",
        ));
    }
    tools::cross_check(s, root)?;
    // Greedy sampling with several choices (vLLM §2: temperature < 1e-5 is greedy and then
    // n must be 1; OpenAI allows it). Beam search builds no SamplingParams, so it is exempt.
    // Param `n`: one greedy answer repeated n times is the client's mistake to fix.
    if let (Some(t), Some(n)) = (s.temperature, s.n) {
        if t < 1e-5 && n > 1 && !s.use_beam_search {
            return Err(invalid::invalid_value(
                &root.key("n"),
                format!("n must be 1 when using greedy sampling (temperature {t}), got {n}."),
            ));
        }
    }
    // `min_tokens` ≤ the request's own limit (vLLM §3). limits.rs checks it again against
    // the final limit once clamping is known.
    if let (Some(min), Some(limit)) = (s.min_tokens, s.max_completion_tokens.or(s.max_tokens)) {
        if min > limit {
            return Err(invalid::invalid_value(
                &root.key("min_tokens"),
                format!(
                    "min_tokens must be less than or equal to the output limit {limit}, got {min}."
                ),
            ));
        }
    }
    // `prompt_logprobs` cannot be streamed (vLLM §4; 0 is allowed, as vLLM does).
    if let Some(pl) = s.prompt_logprobs {
        if s.stream && (pl > 0 || pl == -1) {
            return Err(invalid::invalid_value(
                &root.key("prompt_logprobs"),
                "'prompt_logprobs' is not available when 'stream' is true.",
            ));
        }
    }
    // `logprob_token_ids` needs `logprobs: true` and no beam search (vLLM §4).
    if s.logprob_token_ids {
        if !s.logprobs {
            return Err(invalid::invalid_value(
                &root.key("logprob_token_ids"),
                "'logprobs' must be set to true when 'logprob_token_ids' is used.",
            ));
        }
        if s.use_beam_search {
            return Err(invalid::invalid_value(
                &root.key("logprob_token_ids"),
                "'logprob_token_ids' is not supported with beam search.",
            ));
        }
    }
    formats::structured_outputs_cross(s, root)?;
    // Both chat-template flags explicitly true (vLLM §4). Param `add_generation_prompt`:
    // `continue_final_message` states the intent (prefill), the other flag contradicts it.
    if s.continue_final_message && s.add_generation_prompt {
        return Err(invalid::invalid_value(
            &root.key("add_generation_prompt"),
            "cannot set both 'continue_final_message' and 'add_generation_prompt' to true.",
        ));
    }
    // Audio output needs the `audio` parameters (CC §1).
    if s.wants_audio && !s.has_audio {
        return Err(missing(&root.key("audio")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
