//! Turns a chat / completions / embeddings request body into a plan: validated parameters,
//! prompt digests and the precomputed answers. Pure apart from the random seed used when the
//! request has none, so every rule here is testable without a socket.

use serde_json::{Map, Value};

use super::error::ApiError;
use super::params::{self, parse_prompts, resolve_max_tokens, Common, PromptInput};
use super::text::{self, Answer, GenParams};
use super::tokenizer::{self, mix, PromptDigest};
use super::wire::Api;
use super::{unix_now, Shared};

/// An accepted chat or completions request, ready to run.
#[derive(Debug)]
pub(crate) struct GenPlan {
    pub api: Api,
    /// Response id (`chatcmpl-<request id>` / `cmpl-<request id>`).
    pub id: String,
    /// Model name echoed in the response (the one requested, or the base model).
    pub model: String,
    pub created: u64,
    pub prompts: Vec<PromptDigest>,
    /// Sum over prompts.
    pub prompt_tokens: u32,
    /// One per choice, in index order.
    pub answers: Vec<Answer>,
    pub stream: bool,
    pub include_usage: bool,
    pub continuous_usage: bool,
}

impl GenPlan {
    /// KV tokens the request holds while running: each choice's prompt and answer.
    pub(crate) fn kv_tokens(&self) -> u64 {
        let n = self.answers.len() / self.prompts.len().max(1);
        let mut total = 0u64;
        for (i, a) in self.answers.iter().enumerate() {
            let prompt = self
                .prompts
                .get(i / n.max(1))
                .map_or(0, |p| u64::from(p.tokens));
            total += prompt + u64::from(a.tokens());
        }
        total
    }
}

/// An accepted embeddings request.
#[derive(Debug)]
pub(crate) struct EmbedPlan {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub prompt_tokens: u32,
    pub inputs: usize,
    pub vectors: Vec<Vec<f32>>,
    pub base64: bool,
}

/// Dimension of the simulated embeddings.
const EMBEDDING_DIM: usize = 32;

/// Parses the body as a JSON object (vLLM answers a broken body with a 400 validation error).
pub(crate) fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(params::schema_type("body", "a valid dictionary")),
        Err(e) => Err(ApiError::schema(
            format!("1 validation error:\n  body: JSON decode error: {e}"),
            Some("body"),
        )),
    }
}

/// Resolves `model` (absent = the base model); unknown names are 404 (§1). Returns the name to
/// echo and the prefix-cache salt (different adapters and `cache_salt`s never share blocks).
pub(crate) fn resolve_model(
    sh: &Shared,
    model: Option<&str>,
    cache_salt: Option<&str>,
) -> Result<(String, u64), ApiError> {
    let name = match model {
        None => sh.base_model(),
        Some(m) if sh.cfg.models.iter().any(|x| x == m) => m,
        Some(m) => return Err(ApiError::model_not_found(m)),
    };
    let mut salt = tokenizer::hash_bytes(name.as_bytes());
    if let Some(s) = cache_salt {
        salt = mix(salt, tokenizer::hash_bytes(s.as_bytes()));
    }
    Ok((name.to_string(), salt))
}

pub(crate) fn plan_chat(sh: &Shared, body: &[u8], request_id: &str) -> Result<GenPlan, ApiError> {
    let obj = json_object(body)?;
    let messages = match obj.get("messages") {
        None => return Err(params::missing("messages")),
        Some(Value::Array(list)) => {
            if list.iter().any(|m| !m.is_object()) {
                return Err(params::schema_type("messages", "a list of message objects"));
            }
            &obj["messages"]
        }
        Some(_) => return Err(params::schema_type("messages", "a valid list")),
    };
    let common = Common::parse(&obj, None)?;
    let (model, salt) = resolve_model(sh, common.model.as_deref(), common.cache_salt.as_deref())?;
    let digest = tokenizer::digest_chat(messages, salt);
    plan_generation(sh, Api::Chat, request_id, model, vec![digest], &common)
}

pub(crate) fn plan_completion(
    sh: &Shared,
    body: &[u8],
    request_id: &str,
) -> Result<GenPlan, ApiError> {
    let obj = json_object(body)?;
    let prompts = parse_prompts(obj.get("prompt"), "prompt")?;
    // vLLM's CompletionRequest defaults `max_tokens` to 16.
    let common = Common::parse(&obj, Some(16))?;
    let (model, salt) = resolve_model(sh, common.model.as_deref(), common.cache_salt.as_deref())?;
    let digests = prompts.iter().map(|p| digest(p, salt)).collect();
    plan_generation(sh, Api::Completion, request_id, model, digests, &common)
}

fn digest(p: &PromptInput, salt: u64) -> PromptDigest {
    match p {
        PromptInput::Text(t) => tokenizer::digest_text(t, salt),
        PromptInput::Ids(ids) => tokenizer::digest_ids(ids, salt),
    }
}

/// The shared part: §3 limits per prompt, sampling checks, then every choice's answer.
fn plan_generation(
    sh: &Shared,
    api: Api,
    request_id: &str,
    model: String,
    prompts: Vec<PromptDigest>,
    common: &Common,
) -> Result<GenPlan, ApiError> {
    let mut limits = Vec::with_capacity(prompts.len());
    for p in &prompts {
        let max_tokens = resolve_max_tokens(p.tokens, sh.cfg.max_model_len, common)?;
        common.check_sampling(max_tokens)?;
        limits.push(u32::try_from(max_tokens).unwrap_or(u32::MAX));
    }
    let n = u32::try_from(common.n).unwrap_or(1);
    let min_tokens = u32::try_from(common.min_tokens).unwrap_or(0);
    let random_base = fastrand::u64(..);
    let mut answers = Vec::with_capacity(prompts.len() * n as usize);
    for (p, &max_tokens) in prompts.iter().zip(&limits) {
        // Seeded: reproducible. Greedy: a function of the prompt, as a real model's argmax is.
        let base = match common.seed {
            Some(s) => s as u64,
            None if common.greedy() => p.full_hash,
            None => random_base,
        };
        for _ in 0..n {
            let index = answers.len() as u64;
            answers.push(text::generate(&GenParams {
                seed: base.wrapping_add(index),
                natural: sh.cfg.output_tokens,
                max_tokens,
                min_tokens,
                ignore_eos: common.ignore_eos,
                stop: &common.stop,
                include_stop_str_in_output: common.include_stop_str_in_output,
            }));
        }
    }
    let prompt_tokens = prompts
        .iter()
        .map(|p| p.tokens)
        .fold(0u32, u32::saturating_add);
    Ok(GenPlan {
        api,
        id: format!("{}{request_id}", api.id_prefix()),
        model,
        created: unix_now(),
        prompts,
        prompt_tokens,
        answers,
        stream: common.stream,
        include_usage: common.include_usage,
        continuous_usage: common.continuous_usage,
    })
}

pub(crate) fn plan_embedding(
    sh: &Shared,
    body: &[u8],
    request_id: &str,
) -> Result<EmbedPlan, ApiError> {
    let obj = json_object(body)?;
    let inputs = parse_prompts(obj.get("input"), "input")?;
    let base64 = match params::opt_str(&obj, "encoding_format")?.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(params::schema_type(
                "encoding_format",
                &format!("'float' or 'base64', not '{other}'"),
            ))
        }
    };
    let model = params::opt_str(&obj, "model")?;
    let (model, salt) = resolve_model(sh, model.as_deref(), None)?;
    let mut prompt_tokens = 0u32;
    let mut vectors = Vec::with_capacity(inputs.len());
    for input in &inputs {
        let d = digest(input, salt);
        // Embeddings need no output tokens, so a prompt may fill the whole context.
        if d.tokens > sh.cfg.max_model_len {
            return Err(ApiError::validation(
                format!(
                    "This model's maximum context length is {} tokens. However, you requested \
                     {} tokens in the input for embedding generation. Please reduce the length \
                     of the input.",
                    sh.cfg.max_model_len, d.tokens
                ),
                "input_tokens",
                d.tokens,
            ));
        }
        prompt_tokens = prompt_tokens.saturating_add(d.tokens);
        vectors.push(text::embedding(d.full_hash, EMBEDDING_DIM));
    }
    Ok(EmbedPlan {
        id: format!("embd-{request_id}"),
        model,
        created: unix_now(),
        prompt_tokens,
        inputs: inputs.len(),
        vectors,
        base64,
    })
}

/// The embeddings response body.
pub(crate) fn embedding_body(plan: &EmbedPlan) -> Vec<u8> {
    let data: Vec<Value> = plan
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if plan.base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64(&bytes))
            } else {
                Value::from(v.clone())
            };
            serde_json::json!({"index": index, "object": "embedding", "embedding": embedding})
        })
        .collect();
    let body = serde_json::json!({
        "id": plan.id,
        "object": "list",
        "created": plan.created,
        "model": plan.model,
        "data": data,
        "usage": {
            "prompt_tokens": plan.prompt_tokens,
            "total_tokens": plan.prompt_tokens,
            "completion_tokens": 0,
            "prompt_tokens_details": null
        }
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Standard base64 with padding (vLLM's `encoding_format: "base64"`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `POST /tokenize` (vLLM: `{"prompt"}` or `{"messages"}`): `{count, max_model_len, tokens}`.
pub(crate) fn tokenize(sh: &Shared, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let obj = json_object(body)?;
    let model = params::opt_str(&obj, "model")?;
    resolve_model(sh, model.as_deref(), None)?;
    let tokens = match (obj.get("messages"), obj.get("prompt")) {
        (Some(m @ Value::Array(_)), _) => tokenizer::chat_token_ids(m),
        (Some(_), _) => return Err(params::schema_type("messages", "a valid list")),
        (None, Some(Value::String(p))) => tokenizer::text_token_ids(p),
        (None, Some(_)) => return Err(params::schema_type("prompt", "a valid string")),
        (None, None) => return Err(params::missing("prompt")),
    };
    let body = serde_json::json!({
        "count": tokens.len(),
        "max_model_len": sh.cfg.max_model_len,
        "tokens": tokens,
        "token_strs": null,
    });
    Ok(serde_json::to_vec(&body).unwrap_or_default())
}

/// `GET /v1/models` (§7): the base model with `max_model_len`, LoRA adapters with `parent`.
pub(crate) fn models_body(sh: &Shared) -> Vec<u8> {
    let base = sh.base_model();
    let data: Vec<Value> = sh
        .cfg
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut card = serde_json::json!({
                "id": m,
                "object": "model",
                "created": sh.started,
                "owned_by": "vllm",
                "root": m,
                "parent": if i == 0 { Value::Null } else { Value::from(base) },
                "permission": [],
            });
            if i == 0 {
                card["max_model_len"] = Value::from(sh.cfg.max_model_len);
            }
            card
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"object": "list", "data": data})).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimConfig;
    use serde_json::json;

    fn shared() -> Shared {
        Shared::new(SimConfig {
            models: vec!["base".into(), "lora-a".into()],
            max_model_len: 100,
            ..SimConfig::default()
        })
    }

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn chat_plan_is_deterministic_with_seed() {
        let sh = shared();
        let b = body(json!({"messages": [{"role": "user", "content": "hi"}], "seed": 5, "n": 2}));
        let a = plan_chat(&sh, &b, "r1").unwrap();
        let c = plan_chat(&sh, &b, "r2").unwrap();
        assert_eq!(a.id, "chatcmpl-r1");
        assert_eq!(a.model, "base");
        assert_eq!(a.answers, c.answers);
        assert_ne!(a.answers[0].text, a.answers[1].text);
        assert_eq!(a.prompt_tokens, 4 + 1 + 2);
    }

    #[test]
    fn chat_errors() {
        let sh = shared();
        let e = plan_chat(&sh, &body(json!({"model": "nope", "messages": []})), "r").unwrap_err();
        assert_eq!(e.status, 404);
        assert!(plan_chat(&sh, &body(json!({"model": "lora-a", "messages": []})), "r").is_ok());
        assert_eq!(plan_chat(&sh, b"{", "r").unwrap_err().status, 400);
        assert_eq!(
            plan_chat(&sh, &body(json!({})), "r").unwrap_err().status,
            400
        );
        let e = plan_chat(&sh, &body(json!({"messages": "x"})), "r").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
    }

    #[test]
    fn completions_batch_and_default_limit() {
        let sh = shared();
        let p = plan_completion(&sh, &body(json!({"prompt": ["a b", "c"], "n": 2})), "x").unwrap();
        assert_eq!(p.answers.len(), 4);
        assert_eq!(p.prompt_tokens, 3);
        assert!(p.answers.iter().all(|a| a.tokens() <= 16));
        assert_eq!(
            p.kv_tokens(),
            2 * 2 + 2 + p.answers.iter().map(|a| u64::from(a.tokens())).sum::<u64>()
        );
    }

    #[test]
    fn greedy_without_seed_depends_on_prompt_only() {
        let sh = shared();
        let b = body(json!({"prompt": "same prompt", "temperature": 0}));
        let a = plan_completion(&sh, &b, "1").unwrap();
        let c = plan_completion(&sh, &b, "2").unwrap();
        assert_eq!(a.answers, c.answers);
    }

    #[test]
    fn tokenize_and_models() {
        let sh = shared();
        let v: Value = serde_json::from_slice(
            &tokenize(
                &sh,
                &body(json!({"messages": [{"role": "user", "content": "hi"}]})),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(v["count"], 7);
        assert_eq!(v["max_model_len"], 100);
        assert_eq!(v["tokens"].as_array().unwrap().len(), 7);
        let v: Value = serde_json::from_slice(&models_body(&sh)).unwrap();
        assert_eq!(v["data"][0]["max_model_len"], 100);
        assert!(v["data"][1].get("max_model_len").is_none());
        assert_eq!(v["data"][1]["parent"], "base");
    }

    #[test]
    fn base64_encoding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
