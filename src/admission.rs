//! Turning a client's body into the request a worker gets: parse once,
//! find the model's pool, validate (chat), decide the output limit, and
//! rewrite the body as a splice of the original bytes.
//!
//! Every request that leaves here is one vLLM will accept
//! (../shared/reference/vllm.md §1–§4); everything else is answered with a
//! 400 that names the offending field.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::ServerSession as Session;
use serde_json::Value;

use crate::config::ModelConfig;
use crate::error::GatewayError;
use crate::pool::{health, WorkerPool};
use crate::request::{
    parse_body, resolve_limit, rewrite_bytes, tokens, validate_chat, BodyError, ChatFacts,
    ClampReason, Invalid, LimitDecision, LimitError, LimitPolicy, LimitSource, RewritePlan,
};
use crate::state::Snapshot;

/// How long the gateway waits for a worker's exact prompt count before it
/// falls back to letting the worker judge the context itself.
const TOKENIZE_TIMEOUT: Duration = Duration::from_secs(2);

/// Characters per token for estimates (token budgets, usage of cut streams).
/// English text under common tokenizers averages about four.
pub const CHARS_PER_TOKEN: f64 = 4.0;

/// A request ready for its worker.
pub struct Admitted {
    pub pool: Arc<WorkerPool>,
    pub body: Bytes,
    pub stream: bool,
    /// The gateway asked the worker for usage on the client's behalf; the
    /// usage-only chunk is removed from what the client sees.
    pub strip_usage: bool,
    pub prefix_key: Option<u64>,
    /// Estimated prompt tokens (token budgets, estimated usage).
    pub prompt_estimate: u64,
    /// The most output tokens the request can produce, when known.
    pub max_output: Option<u64>,
    /// How the output limit was decided, for the access log.
    pub limit_note: Option<&'static str>,
}

impl From<BodyError> for GatewayError {
    fn from(e: BodyError) -> GatewayError {
        GatewayError::MalformedJson {
            offset: e.offset,
            message: e.client_message(),
            code: e.kind.code(),
        }
    }
}

impl From<Invalid> for GatewayError {
    fn from(e: Invalid) -> GatewayError {
        GatewayError::InvalidRequest {
            message: e.message,
            param: Some(e.param),
            code: e.code,
        }
    }
}

impl From<LimitError> for GatewayError {
    fn from(e: LimitError) -> GatewayError {
        e.to_invalid().into()
    }
}

/// The pool for the body's `model`.
fn pool_for<'s>(
    snapshot: &'s Snapshot,
    body: &Value,
) -> Result<(Arc<WorkerPool>, &'s ModelConfig), GatewayError> {
    let name = match body.get("model") {
        Some(Value::String(m)) => m.as_str(),
        Some(_) => {
            return Err(GatewayError::InvalidRequest {
                message: "`model` must be a string.".into(),
                param: Some("model".into()),
                code: "invalid_type",
            })
        }
        None => {
            // vLLM serves its one model when `model` is absent (vllm.md §1);
            // the gateway follows only when it has a single model whose
            // validation policy allows it.
            match snapshot.config.models.as_slice() {
                [only] if only.validation.allow_missing_model => only.name.as_str(),
                _ => {
                    return Err(GatewayError::InvalidRequest {
                        message: "you must provide a model parameter".into(),
                        param: Some("model".into()),
                        code: "missing_required_parameter",
                    })
                }
            }
        }
    };
    match (snapshot.pool(name), snapshot.config.model(name)) {
        (Some(p), Some(c)) => Ok((Arc::clone(p), c)),
        _ => Err(GatewayError::ModelNotFound {
            model: crate::proxy::truncate(name, 256),
        }),
    }
}

/// Admit a `/v1/chat/completions` body.
pub async fn chat(snapshot: &Snapshot, body: Bytes) -> Result<Admitted, GatewayError> {
    let value = parse_body(&body, &snapshot.config.server.json)?;
    let (pool, model) = pool_for(snapshot, &value)?;
    let facts = validate_chat(&value, &model.validation)?;

    let mut policy = model.limits;
    policy.max_model_len = policy
        .max_model_len
        .or_else(|| pool.reported_max_model_len());
    let (decision, note) = decide_limit(&pool, &facts, &policy, &value).await?;

    let estimate = tokens::estimate(&facts, CHARS_PER_TOKEN);
    let max_output = decision
        .map(|d| d.limit)
        .or_else(|| policy.max_model_len.map(|m| m.saturating_sub(estimate)));
    // The limit is written unless it is merely "the rest of the context",
    // which vLLM computes itself from the exact prompt (vllm.md §3).
    let write = decision
        .filter(|d| d.source != LimitSource::Context || d.clamped_by == Some(ClampReason::Cap));
    let strip_usage = facts.stream && facts.include_usage != Some(true);
    let plan = RewritePlan {
        limit: write.map(|d| (d.field, d.limit)),
        // Ask for usage on every stream so tokens are counted exactly.
        include_usage: strip_usage,
    };
    let body = rewrite_bytes(&body, &plan).map_err(|_| GatewayError::Internal)?;
    Ok(Admitted {
        prefix_key: Some(facts.prefix_key(model.pool.affinity_prefix_bytes)),
        pool,
        body,
        stream: facts.stream,
        strip_usage,
        prompt_estimate: estimate,
        max_output,
        limit_note: note,
    })
}

/// Decide the output limit. The bound on prompt tokens (every token covers
/// at least one byte, plus template overhead) settles most requests at no
/// cost: if even that bound fits the context, the real prompt does. Only a
/// request near the context edge asks a worker's `/tokenize` for the exact
/// count, because clamping or refusing on an estimate would be wrong one way
/// or the other.
async fn decide_limit(
    pool: &WorkerPool,
    facts: &ChatFacts,
    policy: &LimitPolicy,
    body: &Value,
) -> Result<(Option<LimitDecision>, Option<&'static str>), GatewayError> {
    if policy.max_model_len.is_none() {
        return Ok((resolve_limit(facts, policy, None)?, None));
    }
    let bound = tokens::upper_bound(facts);
    if facts.non_text_parts == 0 {
        if let Ok(d) = resolve_limit(facts, policy, Some(bound)) {
            // Clamped to the context: how far depends on the exact prompt.
            if d.map(|d| d.clamped_by) != Some(Some(ClampReason::Context)) {
                return Ok((d, None));
            }
        }
    }
    match exact_prompt_tokens(pool, body).await {
        Some(exact) => Ok((
            resolve_limit(facts, policy, Some(exact))?,
            Some("exact_prompt_count"),
        )),
        // No exact count: leave the context check to the worker, which
        // refuses what does not fit with its own 400.
        None => Ok((
            resolve_limit(facts, policy, None)?,
            Some("prompt_count_unavailable"),
        )),
    }
}

/// The prompt's exact token count from a worker's `/tokenize` (vllm.md §7).
async fn exact_prompt_tokens(pool: &WorkerPool, body: &Value) -> Option<u64> {
    let member = pool.members.iter().find(|m| m.worker.is_available())?;
    let mut req = serde_json::json!({
        "model": &*pool.model,
        "messages": body.get("messages")?,
        "add_generation_prompt": true,
    });
    for key in [
        "tools",
        "chat_template",
        "chat_template_kwargs",
        "add_generation_prompt",
        "continue_final_message",
        "documents",
    ] {
        if let Some(v) = body.get(key) {
            req[key] = v.clone();
        }
    }
    let bytes = serde_json::to_vec(&req).ok()?;
    let (status, answer) = health::call(
        &member.worker,
        "POST",
        "/tokenize",
        Some(&bytes),
        TOKENIZE_TIMEOUT,
    )
    .await?;
    if status != 200 {
        return None;
    }
    serde_json::from_slice::<Value>(&answer)
        .ok()?
        .get("count")?
        .as_u64()
}

/// Admit a `/v1/completions` or `/v1/embeddings` body: routed by `model` with
/// the same pools, size limits and JSON checks; the chat rules do not apply.
pub fn other(snapshot: &Snapshot, body: Bytes, streams: bool) -> Result<Admitted, GatewayError> {
    let value = parse_body(&body, &snapshot.config.server.json)?;
    let (pool, model) = pool_for(snapshot, &value)?;
    let stream = streams && value.get("stream") == Some(&Value::Bool(true));
    let include = value
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool);
    let strip_usage = stream && include != Some(true);
    let body = if strip_usage {
        rewrite_bytes(
            &body,
            &RewritePlan {
                limit: None,
                include_usage: true,
            },
        )
        .map_err(|_| GatewayError::Internal)?
    } else {
        body
    };
    // Without a validated shape, estimate from the body size: it bounds the
    // prompt text from above.
    let estimate = (body.len() as f64 / CHARS_PER_TOKEN).ceil() as u64;
    let max_output = value
        .get("max_tokens")
        .and_then(Value::as_u64)
        .or(model.limits.default_max_tokens);
    Ok(Admitted {
        prefix_key: None,
        pool,
        body,
        stream,
        strip_usage,
        prompt_estimate: estimate,
        max_output,
        limit_note: None,
    })
}

/// vLLM accepts only `application/json` (parameters allowed) and answers
/// anything else with 400 (../shared/reference/vllm.md §1).
pub fn check_content_type(session: &Session) -> Result<(), GatewayError> {
    let ok = session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(GatewayError::UnsupportedMediaType)
    }
}

/// `Expect: 100-continue` on an HTTP/1.1 request (RFC 9110 §10.1.1: an
/// HTTP/1.0 client cannot understand a 100).
fn expects_continue(session: &Session) -> bool {
    let h = session.req_header();
    h.version == http::Version::HTTP_11
        && h.headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Read the whole request body, refusing more than `limit` bytes (Pingora has
/// no body limit of its own, pingora.md §6) and more than `timeout` in total,
/// so a slow client cannot hold a request open byte by byte.
pub async fn read_body(
    session: &mut Session,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, GatewayError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    if expects_continue(session) {
        // The client holds its body back until told to send it (curl does
        // for large bodies, waiting a second; some clients wait longer).
        // Pingora never sends the 100 itself. A 100 is not "an answer before
        // the body was read", so keep-alive must survive it.
        session.set_close_on_response_before_downstream_finish(false);
        let sent = session.write_continue_response().await;
        session.set_close_on_response_before_downstream_finish(true);
        sent.map_err(|e| GatewayError::BodyRead {
            reason: e.etype().as_str().to_string(),
        })?;
    }
    let capacity = declared.map_or(16 * 1024, |n| n as usize);
    let read = async {
        let mut first: Option<Bytes> = None;
        let mut buf: Option<BytesMut> = None;
        let mut total = 0usize;
        while let Some(chunk) =
            session
                .read_request_body()
                .await
                .map_err(|e| GatewayError::BodyRead {
                    reason: e.etype().as_str().to_string(),
                })?
        {
            total += chunk.len();
            if total > limit {
                return Err(GatewayError::BodyTooLarge { limit });
            }
            // The common case is one chunk: keep it without copying.
            match (&mut first, &mut buf) {
                (None, None) => first = Some(chunk),
                (Some(f), None) => {
                    let mut b = BytesMut::with_capacity(capacity.max(total));
                    b.extend_from_slice(f);
                    b.extend_from_slice(&chunk);
                    first = None;
                    buf = Some(b);
                }
                (_, Some(b)) => b.extend_from_slice(&chunk),
            }
        }
        Ok(match (first, buf) {
            (_, Some(b)) => b.freeze(),
            (Some(f), None) => f,
            (None, None) => Bytes::new(),
        })
    };
    match crate::deadline::within(timeout, read).await {
        Some(r) => r,
        None => Err(GatewayError::BodyTimeout { timeout }),
    }
}
