//! Request parameters and vLLM 0.33's rules for them.
//!
//! Parsing is field by field from the JSON object (unknown fields are ignored, as vLLM does,
//! ../shared/reference/vllm.md §1) so that each schema error can name its field. The checks run
//! in vLLM's order: schema and model validators first (`stream_options`), then the model
//! lookup (caller), then the context-length rules of §3 ([`resolve_max_tokens`]), then the
//! sampling checks ([`Common::check_sampling`]).

use serde_json::{Map, Value};

use super::error::ApiError;

/// Most stop strings (`VLLM_MAX_STOP_STRINGS`, §2).
const MAX_STOP_STRINGS: usize = 4;
/// Largest `n` (`VLLM_MAX_N_SEQUENCES`, §2).
const MAX_N: i64 = 16384;
/// Temperatures below this are greedy decoding (§2).
const GREEDY_EPSILON: f64 = 1e-5;

/// Fields shared by chat and completions requests, type-checked but not yet range-checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub min_tokens: i64,
    pub n: i64,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// `-1` is "unset", as in vLLM.
    pub seed: Option<i64>,
    pub stream: bool,
    pub include_usage: bool,
    pub continuous_usage: bool,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub include_stop_str_in_output: bool,
    pub cache_salt: Option<String>,
    /// Beam search takes its own path in vLLM, where the greedy `n` check does not apply.
    pub(crate) use_beam_search: bool,
}

impl Common {
    /// Reads the shared fields. `default_max_tokens` is what an absent `max_tokens` means
    /// (vLLM: none for chat, 16 for completions).
    pub(crate) fn parse(
        obj: &Map<String, Value>,
        default_max_tokens: Option<i64>,
    ) -> Result<Self, ApiError> {
        let stream = opt_bool(obj, "stream")?.unwrap_or(false);
        let stream_options = obj.get("stream_options").filter(|v| truthy(v));
        if stream_options.is_some() && !stream {
            return Err(ApiError::bad_request(
                "Stream options can only be defined when `stream=True`.",
                Some("stream_options"),
            ));
        }
        let (include_usage, continuous_usage) = match stream_options {
            Some(Value::Object(so)) => (
                opt_bool(so, "include_usage")?.unwrap_or(false),
                opt_bool(so, "continuous_usage_stats")?.unwrap_or(false),
            ),
            Some(_) => {
                return Err(schema_type("stream_options", "a valid dictionary"));
            }
            None => (false, false),
        };
        let max_tokens = if obj.contains_key("max_tokens") {
            opt_int(obj, "max_tokens")?
        } else {
            default_max_tokens
        };
        Ok(Self {
            model: opt_str(obj, "model")?,
            max_tokens,
            max_completion_tokens: opt_int(obj, "max_completion_tokens")?,
            min_tokens: opt_int(obj, "min_tokens")?.unwrap_or(0),
            n: opt_int(obj, "n")?.unwrap_or(1),
            temperature: opt_f64(obj, "temperature")?,
            top_p: opt_f64(obj, "top_p")?,
            seed: opt_int(obj, "seed")?.filter(|&s| s != -1),
            stream,
            include_usage,
            continuous_usage: include_usage && continuous_usage,
            stop: parse_stop(obj.get("stop"))?,
            ignore_eos: opt_bool(obj, "ignore_eos")?.unwrap_or(false),
            include_stop_str_in_output: opt_bool(obj, "include_stop_str_in_output")?
                .unwrap_or(false),
            cache_salt: opt_str(obj, "cache_salt")?,
            use_beam_search: opt_bool(obj, "use_beam_search")?.unwrap_or(false),
        })
    }

    /// True for greedy decoding (temperature below 1e-5).
    pub(crate) fn greedy(&self) -> bool {
        self.temperature.is_some_and(|t| t < GREEDY_EPSILON)
    }

    /// `SamplingParams` checks, after `max_tokens` is resolved (§2, §3).
    pub(crate) fn check_sampling(&self, max_tokens: i64) -> Result<(), ApiError> {
        if self.n < 1 || self.n > MAX_N {
            let msg = if self.n < 1 {
                format!("n must be at least 1, got {}.", self.n)
            } else {
                format!("n must be at most {MAX_N}, got {}.", self.n)
            };
            return Err(ApiError::validation(msg, "n", self.n));
        }
        if let Some(t) = self.temperature {
            if !t.is_finite() || !(0.0..=2.0).contains(&t) {
                return Err(ApiError::validation(
                    format!("temperature must be in [0, 2], got {t}."),
                    "temperature",
                    t,
                ));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ApiError::validation(
                    format!("top_p must be in (0, 1], got {p}."),
                    "top_p",
                    p,
                ));
            }
        }
        if max_tokens < 1 {
            return Err(ApiError::validation(
                format!("max_tokens must be at least 1, got {max_tokens}."),
                "max_tokens",
                max_tokens,
            ));
        }
        if self.min_tokens < 0 {
            return Err(ApiError::validation(
                format!(
                    "min_tokens must be greater than or equal to 0, got {}.",
                    self.min_tokens
                ),
                "min_tokens",
                self.min_tokens,
            ));
        }
        if self.min_tokens > max_tokens {
            return Err(ApiError::validation(
                format!(
                    "min_tokens must be less than or equal to max_tokens={max_tokens}, got {}.",
                    self.min_tokens
                ),
                "min_tokens",
                self.min_tokens,
            ));
        }
        if self.greedy() && self.n > 1 && !self.use_beam_search {
            return Err(ApiError::validation(
                format!("n must be 1 when using greedy sampling, got {}.", self.n),
                "n",
                self.n,
            ));
        }
        Ok(())
    }
}

/// vLLM 0.33's `max_tokens` resolution (../shared/reference/vllm.md §3). Returns the effective
/// limit, which may still be < 1 (then [`Common::check_sampling`] rejects it, as vLLM does).
pub(crate) fn resolve_max_tokens(
    prompt_tokens: u32,
    max_model_len: u32,
    common: &Common,
) -> Result<i64, ApiError> {
    // `max_completion_tokens` wins whenever it is not null, even when it is 0.
    let (requested, field) = match common.max_completion_tokens {
        Some(v) => (Some(v), "max_completion_tokens"),
        None => (common.max_tokens, "max_tokens"),
    };
    let mml = i64::from(max_model_len);
    if let Some(r) = requested {
        if r > mml {
            return Err(ApiError::validation(
                format!(
                    "max_tokens={r} cannot be greater than max_model_len={mml}. \
                     Please request fewer output tokens."
                ),
                field,
                r,
            ));
        }
    }
    let prompt = i64::from(prompt_tokens);
    if prompt >= mml {
        return Err(ApiError::validation(
            format!(
                "This model's maximum context length is {mml} tokens. However, your prompt \
                 contains {prompt} input tokens, which exceeds this limit even without any \
                 output tokens. Please reduce the length of the input prompt."
            ),
            "input_tokens",
            prompt,
        ));
    }
    let remaining = mml - prompt;
    // Too large for what is left: silently clamped (0.33; 0.11 answered 400 here).
    Ok(requested.map_or(remaining, |r| r.min(remaining)))
}

/// A prompt as completions and embeddings accept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
}

/// Token ids must be inside the vocabulary (Llama-3 sized).
pub(crate) const VOCAB_SIZE: u64 = 128_256;

/// Parses `prompt` / `input`: a string, a list of strings, a list of token ids, or a list of
/// lists of token ids. A list of several prompts is a batch.
pub(crate) fn parse_prompts(v: Option<&Value>, field: &str) -> Result<Vec<PromptInput>, ApiError> {
    let invalid = || schema_type(field, "a string, a list of strings or a list of token ids");
    let v = v.ok_or_else(|| missing(field))?;
    let out = match v {
        Value::String(s) => vec![PromptInput::Text(s.clone())],
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::bad_request(
                format!("`{field}` cannot be empty."),
                Some(field),
            ));
        }
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .iter()
                .map(|i| i.as_str().map(|s| PromptInput::Text(s.to_string())))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(invalid)?,
            Value::Number(_) => vec![PromptInput::Ids(token_ids(items, field)?)],
            Value::Array(_) => items
                .iter()
                .map(|i| match i {
                    Value::Array(ids) => token_ids(ids, field).map(PromptInput::Ids),
                    _ => Err(invalid()),
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(invalid()),
        },
        _ => return Err(invalid()),
    };
    Ok(out)
}

fn token_ids(items: &[Value], field: &str) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .map(|i| {
            let id = i
                .as_u64()
                .ok_or_else(|| schema_type(field, "a list of non-negative integers"))?;
            if id >= VOCAB_SIZE {
                return Err(ApiError::bad_request(
                    format!("Token id {id} is out of vocabulary"),
                    Some(field),
                ));
            }
            Ok(u32::try_from(id).unwrap_or(0))
        })
        .collect()
}

fn parse_stop(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let stops = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| schema_type("stop", "a string or a list of strings"))?,
        Some(_) => return Err(schema_type("stop", "a string or a list of strings")),
    };
    if stops.len() > MAX_STOP_STRINGS {
        return Err(ApiError::schema(
            format!(
                "1 validation error:\n  stop: List should have at most {MAX_STOP_STRINGS} items \
                 after validation, not {}",
                stops.len()
            ),
            Some("stop"),
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::validation(
            "stop cannot contain an empty string.",
            "stop",
            "",
        ));
    }
    Ok(stops)
}

/// Python truthiness, which vLLM's `stream_options` check uses.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

pub(crate) fn schema_type(field: &str, expected: &str) -> ApiError {
    ApiError::schema(
        format!("1 validation error:\n  {field}: Input should be {expected}"),
        Some(field),
    )
}

pub(crate) fn missing(field: &str) -> ApiError {
    ApiError::schema(
        format!("1 validation error:\n  {field}: Field required"),
        Some(field),
    )
}

fn opt_int(obj: &Map<String, Value>, key: &str) -> Result<Option<i64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                return Ok(Some(i));
            }
            // pydantic accepts floats with no fractional part as ints.
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(Some(f as i64)),
                _ => Err(schema_type(key, "a valid integer")),
            }
        }
        Some(_) => Err(schema_type(key, "a valid integer")),
    }
}

fn opt_f64(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(schema_type(key, "a valid number")),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(schema_type(key, "a valid boolean")),
    }
}

pub(crate) fn opt_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(schema_type(key, "a valid string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn common(v: Value) -> Result<Common, ApiError> {
        Common::parse(v.as_object().unwrap(), None)
    }

    #[test]
    fn max_tokens_resolution_follows_vllm_033() {
        let c = |v| common(v).unwrap();
        // max_completion_tokens wins when not null, even 0.
        let r = resolve_max_tokens(
            10,
            100,
            &c(json!({"max_tokens": 50, "max_completion_tokens": 0})),
        );
        assert_eq!(r.unwrap(), 0);
        let r = resolve_max_tokens(
            10,
            100,
            &c(json!({"max_tokens": 50, "max_completion_tokens": null})),
        );
        assert_eq!(r.unwrap(), 50);
        // requested > max_model_len -> 400 naming the field used.
        let e = resolve_max_tokens(10, 100, &c(json!({"max_completion_tokens": 101}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_completion_tokens"));
        assert!(e
            .message
            .starts_with("max_tokens=101 cannot be greater than max_model_len=100."));
        // prompt >= max_model_len -> 400.
        let e = resolve_max_tokens(100, 100, &c(json!({}))).unwrap_err();
        assert!(e
            .message
            .starts_with("This model's maximum context length is 100 tokens."));
        assert!(resolve_max_tokens(99, 100, &c(json!({}))).is_ok());
        // prompt + requested > max_model_len -> clamp.
        assert_eq!(
            resolve_max_tokens(90, 100, &c(json!({"max_tokens": 50}))).unwrap(),
            10
        );
        // neither set -> remaining context.
        assert_eq!(resolve_max_tokens(30, 100, &c(json!({}))).unwrap(), 70);
        // negative passes through to the sampling check.
        assert_eq!(
            resolve_max_tokens(30, 100, &c(json!({"max_tokens": -5}))).unwrap(),
            -5
        );
    }

    #[test]
    fn sampling_checks() {
        let e = common(json!({"min_tokens": 5}))
            .unwrap()
            .check_sampling(0)
            .unwrap_err();
        assert!(e
            .message
            .starts_with("max_tokens must be at least 1, got 0."));
        let e = common(json!({"min_tokens": 5}))
            .unwrap()
            .check_sampling(4)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("min_tokens"));
        let e = common(json!({"temperature": 0, "n": 2}))
            .unwrap()
            .check_sampling(4)
            .unwrap_err();
        assert!(e
            .message
            .starts_with("n must be 1 when using greedy sampling, got 2."));
        assert!(common(json!({"temperature": 0.5, "n": 2}))
            .unwrap()
            .check_sampling(4)
            .is_ok());
        assert!(common(json!({"top_p": 0}))
            .unwrap()
            .check_sampling(4)
            .is_err());
        assert!(common(json!({"n": 0})).unwrap().check_sampling(4).is_err());
    }

    #[test]
    fn stream_options_need_stream() {
        let e = common(json!({"stream_options": {"include_usage": true}})).unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.param.as_deref(), Some("stream_options"));
        // An empty dict is falsy in Python: accepted.
        assert!(common(json!({"stream_options": {}})).is_ok());
        let c = common(json!({"stream": true, "stream_options": {"continuous_usage_stats": true}}))
            .unwrap();
        assert!(!c.continuous_usage, "continuous usage needs include_usage");
    }

    #[test]
    fn types_and_stops() {
        assert!(common(json!({"max_tokens": "ten"})).is_err());
        assert_eq!(
            common(json!({"max_tokens": 10.0})).unwrap().max_tokens,
            Some(10)
        );
        assert_eq!(common(json!({"seed": -1})).unwrap().seed, None);
        assert_eq!(common(json!({"stop": "x"})).unwrap().stop, vec!["x"]);
        assert!(common(json!({"stop": ["a", "b", "c", "d", "e"]})).is_err());
        assert!(common(json!({"stop": [""]})).is_err());
        assert_eq!(
            Common::parse(json!({}).as_object().unwrap(), Some(16))
                .unwrap()
                .max_tokens,
            Some(16)
        );
        assert_eq!(
            Common::parse(json!({"max_tokens": null}).as_object().unwrap(), Some(16))
                .unwrap()
                .max_tokens,
            None
        );
    }

    #[test]
    fn prompts() {
        assert_eq!(
            parse_prompts(Some(&json!("hi")), "prompt").unwrap(),
            vec![PromptInput::Text("hi".into())]
        );
        assert_eq!(
            parse_prompts(Some(&json!(["a", "b"])), "prompt")
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            parse_prompts(Some(&json!([1, 2, 3])), "prompt").unwrap(),
            vec![PromptInput::Ids(vec![1, 2, 3])]
        );
        assert_eq!(
            parse_prompts(Some(&json!([[1], [2]])), "prompt")
                .unwrap()
                .len(),
            2
        );
        assert!(parse_prompts(Some(&json!([])), "prompt").is_err());
        assert!(parse_prompts(Some(&json!([999_999_999])), "prompt").is_err());
        assert!(parse_prompts(Some(&json!(["a", 1])), "prompt").is_err());
        assert!(parse_prompts(None, "prompt").is_err());
    }
}
