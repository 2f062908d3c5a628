//! The one `ProxyHttp` implementation. Each phase is a few lines that call the
//! modules that own the work.
//!
//! Everything happens in `request_filter`: the route, the body (read whole,
//! bounded), the model's pool, and the exchange with a worker
//! ([`crate::forward`] explains why the gateway drives the upstream side
//! itself). It always answers and returns `Ok(true)`, so Pingora's own
//! upstream phases never run; `logging` then records metrics and the access
//! line exactly once per request, whatever happened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::admission;
use crate::error::GatewayError;
use crate::forward::{self, ExchangeReport, UpstreamRequest};
use crate::metering::{AnswerMeter, Metered};
use crate::metrics::{status_class, UNKNOWN_MODEL};
use crate::state::{InFlight, Shared, Snapshot};

/// The gateway's public-listener application.
pub struct Gateway {
    shared: Arc<Shared>,
    /// Unix time the gateway started: the `created` of its `/v1/models` entries.
    started_unix: u64,
}

impl Gateway {
    pub fn new(shared: Arc<Shared>) -> Gateway {
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Gateway {
            shared,
            started_unix,
        }
    }
}

/// The public API's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Models,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Models => "models",
        }
    }

    fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Models => "/v1/models",
        }
    }

    fn from_path(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/v1/chat/completions" => Endpoint::ChatCompletions,
            "/v1/completions" => Endpoint::Completions,
            "/v1/embeddings" => Endpoint::Embeddings,
            "/v1/models" => Endpoint::Models,
            _ => return None,
        })
    }

    fn method(self) -> &'static str {
        match self {
            Endpoint::Models => "GET",
            _ => "POST",
        }
    }
}

/// Per-request state, read by `logging`.
pub struct RequestCtx {
    started: Instant,
    request_id: Arc<str>,
    endpoint: Option<Endpoint>,
    /// A configured model name, or [`UNKNOWN_MODEL`].
    model: Arc<str>,
    /// Status the gateway answered with itself (0 = see the exchange report).
    own_status: u16,
    error_kind: Option<&'static str>,
    limit_note: Option<&'static str>,
    usage: Option<Metered>,
    report: ExchangeReport,
    _in_flight: Option<InFlight>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            request_id: Arc::from(""),
            endpoint: None,
            model: Arc::from(UNKNOWN_MODEL),
            own_status: 0,
            error_kind: None,
            limit_note: None,
            usage: None,
            report: ExchangeReport::default(),
            _in_flight: None,
        }
    }

    /// No downstream modules: the gateway never compresses (SSE must not be
    /// buffered by a compressor, pingora.md §5) and skips their per-write cost.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    /// Never reached: `request_filter` always answers (see the module docs).
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Error::e_explain(
            ErrorType::InternalError,
            "request_filter answers every request",
        )
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora_error::Result<bool> {
        ctx._in_flight = Some(self.shared.drain.enter());
        let snapshot = self.shared.snapshot();
        ctx.request_id = request_id(session);
        if self.shared.drain.is_draining() {
            // Finish this request, but let the client take its next one to
            // a replica that is not going away.
            session.set_keepalive(None);
        }
        if let Err(e) = self.handle(session, ctx, &snapshot).await {
            respond_error(session, ctx, &e).await;
        }
        Ok(true)
    }

    async fn logging(&self, _session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = ctx.final_status(e);
        let endpoint = ctx.endpoint.map_or("other", Endpoint::label);
        let m = &self.shared.metrics;
        m.requests
            .with_label_values(&[&*ctx.model, endpoint, status_class(status)])
            .inc();
        let elapsed = ctx.started.elapsed();
        m.request_duration
            .with_label_values(&[&*ctx.model, endpoint])
            .observe(elapsed.as_secs_f64());
        let ttft = ctx
            .report
            .first_token
            .map(|t| t.duration_since(ctx.started));
        if let Some(ttft) = ttft {
            m.time_to_first_token
                .with_label_values(&[&*ctx.model])
                .observe(ttft.as_secs_f64());
        }
        for kind in &ctx.report.upstream_errors {
            m.upstream_errors
                .with_label_values(&[&*ctx.model, kind])
                .inc();
        }
        if ctx.report.client_gone {
            m.client_disconnects.with_label_values(&[&*ctx.model]).inc();
        }
        for reason in &ctx.report.picks {
            m.routing_decisions
                .with_label_values(&[&*ctx.model, reason.label()])
                .inc();
        }
        if ctx.report.retries > 0 {
            m.retries
                .with_label_values(&[&*ctx.model])
                .inc_by(u64::from(ctx.report.retries));
        }
        tracing::info!(
            target: "access",
            request_id = %ctx.request_id,
            endpoint,
            model = %ctx.model,
            worker = ctx.report.worker.as_deref().unwrap_or("-"),
            routing = ctx.report.picks.first().map_or("-", |r| r.label()),
            status,
            duration_ms = ms(elapsed),
            ttft_ms = ttft.map(ms),
            attempts = ctx.report.attempts,
            retries = ctx.report.retries,
            client_gone = ctx.report.client_gone,
            prompt_tokens = ctx.usage.map(|u| u.prompt_tokens),
            completion_tokens = ctx.usage.map(|u| u.completion_tokens),
            usage_exact = ctx.usage.map(|u| u.exact),
            limit = ctx.limit_note,
            error = ctx.error_kind.or(ctx.report.failed_mid_answer),
        );
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // Every request already gets one access line; Pingora's own error
        // lines would only repeat it (and log routine client disconnects at
        // ERROR).
        true
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // Only reached when a phase returned Err, which request_filter never
        // does; still answer OpenAI-shaped if the client can hear it.
        if session.response_written().is_none() && !matches!(e.etype(), ErrorType::ConnectionClosed)
        {
            respond_error(session, ctx, &GatewayError::Internal).await;
        }
        FailToProxy {
            error_code: ctx.final_status(Some(e)),
            can_reuse_downstream: false,
        }
    }
}

impl RequestCtx {
    fn final_status(&self, e: Option<&Error>) -> u16 {
        if self.report.client_gone && self.report.status == 0 {
            return 499;
        }
        if self.own_status != 0 {
            return self.own_status;
        }
        if self.report.status != 0 {
            return self.report.status;
        }
        if e.is_some() {
            500
        } else {
            499
        }
    }
}

impl Gateway {
    async fn handle(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snapshot: &Snapshot,
    ) -> Result<(), GatewayError> {
        let (method, path) = {
            let h = session.req_header();
            (h.method.as_str().to_string(), h.uri.path().to_string())
        };
        let Some(endpoint) = Endpoint::from_path(&path) else {
            return Err(GatewayError::RouteNotFound {
                method: truncate(&method, 16),
                path: truncate(&path, 256),
            });
        };
        ctx.endpoint = Some(endpoint);
        if method != endpoint.method() {
            return Err(GatewayError::MethodNotAllowed {
                method: truncate(&method, 16),
                path,
            });
        }
        if endpoint == Endpoint::Models {
            return self.list_models(session, ctx, snapshot).await;
        }

        check_content_type(session)?;
        let server = &snapshot.config.server;
        let body = read_body(session, server.max_body_bytes, server.body_read_timeout).await?;
        let admitted = match endpoint {
            Endpoint::ChatCompletions => admission::chat(&self.shared, snapshot, body).await?,
            Endpoint::Completions => admission::other(snapshot, body, true)?,
            _ => admission::other(snapshot, body, false)?,
        };
        ctx.model = Arc::clone(&admitted.pool.model);
        ctx.limit_note = admitted.limit_note;
        let req = UpstreamRequest {
            path: endpoint.upstream_path(),
            body: admitted.body.clone(),
            stream: admitted.stream,
            request_id: Arc::clone(&ctx.request_id),
            prefix_key: admitted.prefix_key,
        };
        let mut meter = AnswerMeter::new(admitted.strip_usage);
        let result = forward::exchange(
            session,
            &self.shared.connector,
            &admitted.pool,
            &req,
            &mut meter,
            &mut ctx.report,
            ctx.started,
        )
        .await;
        if ctx.report.status != 0 {
            ctx.usage = Some(meter.settle(admitted.prompt_estimate));
        }
        result
    }

    async fn list_models(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snapshot: &Snapshot,
    ) -> Result<(), GatewayError> {
        let data: Vec<serde_json::Value> = snapshot
            .pools()
            .map(|pool| {
                let mut entry = serde_json::json!({
                    "id": &*pool.model,
                    "object": "model",
                    "created": self.started_unix,
                    "owned_by": "vllm-gateway",
                });
                if let Some(len) = pool.reported_max_model_len() {
                    entry["max_model_len"] = len.into();
                }
                entry
            })
            .collect();
        let body = serde_json::json!({"object": "list", "data": data});
        let body = serde_json::to_vec(&body).map_err(|_| GatewayError::Internal)?;
        ctx.own_status = 200;
        write_json(session, ctx, 200, Bytes::from(body)).await;
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The client's `x-request-id` when it is a sane token, else a fresh one.
/// Client ids are echoed into logs and forwarded to vLLM, so they are
/// bounded and restricted to a safe alphabet.
fn request_id(session: &Session) -> Arc<str> {
    if let Some(v) = session.req_header().headers.get("x-request-id") {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
        {
            if let Ok(s) = std::str::from_utf8(b) {
                return Arc::from(s);
            }
        }
    }
    Arc::from(format!("{:032x}", fastrand::u128(..)).as_str())
}

/// vLLM accepts only `application/json` (parameters allowed) and answers
/// anything else with 400 (../shared/reference/vllm.md §1).
fn check_content_type(session: &Session) -> Result<(), GatewayError> {
    let ok = session
        .req_header()
        .headers
        .get("content-type")
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

/// Read the whole request body, refusing more than `limit` bytes (Pingora has
/// no body limit of its own, pingora.md §6) and more than `timeout` in total,
/// so a slow client cannot hold a request open byte by byte.
async fn read_body(
    session: &mut Session,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, GatewayError> {
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
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
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(GatewayError::BodyTimeout {
            seconds: timeout.as_secs(),
        }),
    }
}

async fn respond_error(session: &mut Session, ctx: &mut RequestCtx, e: &GatewayError) {
    ctx.error_kind = Some(e.kind());
    if !e.keeps_connection() {
        session.set_keepalive(None);
    }
    let status = e.status();
    ctx.own_status = status;
    write_json(session, ctx, status, e.body()).await;
}

async fn write_json(session: &mut Session, ctx: &RequestCtx, status: u16, body: Bytes) {
    let Ok(mut resp) = ResponseHeader::build_no_case(status, Some(3)) else {
        return;
    };
    let ok = resp
        .insert_header("content-type", "application/json")
        .is_ok()
        && resp
            .insert_header("content-length", body.len().to_string())
            .is_ok()
        && resp.insert_header("x-request-id", &*ctx.request_id).is_ok();
    if !ok {
        return;
    }
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_ok()
    {
        let _ = session.write_response_body(Some(body), true).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_char_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
