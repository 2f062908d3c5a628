//! The public listener's application: one request on a client connection,
//! from its head to its access line. The functions here are a few lines
//! each that call the modules that own the work.
//!
//! In order: route, key ([`crate::auth`]), request budget
//! ([`crate::ratelimit`]), body and admission ([`crate::admission`]: parse,
//! validate, limit, rewrite), the key's model allow-list, token budget, then
//! the exchange with a worker ([`crate::forward`] explains why the gateway
//! drives the upstream side itself) and the settling of the token budget
//! with the real usage. Every request is answered, and then recorded in the
//! metrics and the access line exactly once, whatever happened.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession as Session;
use pingora_core::server::ShutdownWatch;
use pingora_error::ErrorType;
use tokio::sync::Notify;

use crate::access::{self, AccessRecord};
use crate::admission::{self, Admitted};
use crate::auth::{AuthFailure, Caller};
use crate::error::GatewayError;
use crate::forward::{self, ExchangeReport, UpstreamRequest};
use crate::listener::{FlushHold, HeadSignal};
use crate::metering::{AnswerMeter, Metered};
use crate::metrics::{field_label, UNKNOWN_MODEL};
use crate::ratelimit::{LimitStatus, Verdict};
use crate::reply;
use crate::state::{InFlight, Shared, Snapshot};

/// Tokens reserved for the answer when nothing bounds it (no limit, no
/// known context length): a typical long answer.
const DEFAULT_OUTPUT_RESERVE: u64 = 1024;

/// Azure OpenAI's key header, which the OpenAI SDKs send in Azure mode.
/// Header lookups go by typed names: a `&str` name is parsed and checked
/// on every lookup.
const API_KEY: http::HeaderName = http::HeaderName::from_static("api-key");

/// The gateway's public-listener application.
pub struct Gateway {
    shared: Arc<Shared>,
    /// Unix time the gateway started: the `created` of its `/v1/models` entries.
    started_unix: u64,
    /// Set, and `close_idle` notified, when the listener stops accepting.
    closing: AtomicBool,
    close_idle: Notify,
}

impl Gateway {
    pub fn new(shared: Arc<Shared>) -> Gateway {
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Gateway {
            shared,
            started_unix,
            closing: AtomicBool::new(false),
            close_idle: Notify::new(),
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
    caller: Caller,
    /// The key's budgets after this request's decisions (response headers).
    limits: LimitStatus,
    /// The request body was read whole (else an early answer closes the
    /// connection, so unread bytes are never parsed as a next request).
    body_done: bool,
    /// Status the gateway answered with itself (0 = see the exchange report).
    own_status: u16,
    error_kind: Option<&'static str>,
    limit_note: Option<&'static str>,
    usage: Option<Metered>,
    /// Time spent in the gateway's own work so far.
    overhead: Duration,
    report: ExchangeReport,
    /// The connection's flush hold (from the listener's [`HeadSignal`]).
    flush_hold: Option<Arc<FlushHold>>,
    _in_flight: Option<InFlight>,
}

#[async_trait]
impl HttpServerApp for Gateway {
    /// One request on a client connection, head to access line. The
    /// gateway drives the whole exchange itself, so it serves Pingora's HTTP
    /// session directly rather than through `pingora_proxy`'s phases: that
    /// framework's request future (its upstream machinery and cache state
    /// included, none of which the gateway uses) was about 10 KB, copied
    /// into a box for every request, a tenth of the instructions per
    /// request in a callgrind profile.
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: Session,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let head = session.take_connection_user_context();
        let read = tokio::select! {
            // Biased: a request already buffered is served, not dropped.
            biased;
            r = session.read_request() => r,
            () = self.closing() => return None,
        };
        match read {
            Ok(true) => {}
            // The client closed an idle keep-alive connection.
            Ok(false) => return None,
            Err(e) => {
                // An unparsable head gets Pingora's empty 400; a broken
                // connection gets nothing. Either way it closes.
                if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
                    let _ = session.respond_error(400).await;
                }
                session.shutdown().await;
                return None;
            }
        }
        let mut ctx = RequestCtx::new();
        if let Some(head) = head.and_then(|h| h.downcast::<Arc<HeadSignal>>().ok()) {
            // The accept loop's header-read deadline stops counting.
            head.mark_read();
            ctx.flush_hold = Some(head.flush_hold());
        }
        if *shutdown.borrow() || session.req_header().method == http::Method::CONNECT {
            // Shutting down: no next request here. After a CONNECT head
            // the client's bytes are a tunnel, not a request (RFC 9110
            // §9.3.6), so the connection closes after the answer.
            session.set_keepalive(None);
        }
        self.serve(&mut session, &mut ctx).await;
        self.log(&ctx);
        let persistent = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, persistent)),
            _ => None,
        }
    }

    /// The listener stopped accepting (drain): connections waiting idle
    /// for their next request close now.
    async fn http_cleanup(&self) {
        self.closing.store(true, Ordering::Release);
        self.close_idle.notify_waiters();
    }
}

impl RequestCtx {
    fn new() -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            request_id: Arc::from(""),
            endpoint: None,
            model: Arc::from(UNKNOWN_MODEL),
            caller: Caller::Anonymous,
            limits: LimitStatus::default(),
            body_done: false,
            own_status: 0,
            error_kind: None,
            limit_note: None,
            usage: None,
            overhead: Duration::ZERO,
            report: ExchangeReport::default(),
            flush_hold: None,
            _in_flight: None,
        }
    }

    fn final_status(&self) -> u16 {
        if self.report.client_gone && self.report.status == 0 {
            return 499;
        }
        if self.own_status != 0 {
            return self.own_status;
        }
        if self.report.status != 0 {
            return self.report.status;
        }
        499
    }
}

impl Gateway {
    /// Resolves once the listener has stopped accepting.
    async fn closing(&self) {
        // Created before the flag is checked: a notification sent in
        // between still reaches it (tokio's `Notified` contract).
        let notified = self.close_idle.notified();
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    /// Answer the request, whatever happens: every path ends in a response
    /// written (or a client found gone).
    async fn serve(&self, session: &mut Session, ctx: &mut RequestCtx) {
        ctx._in_flight = Some(self.shared.drain.enter());
        let snapshot = self.shared.snapshot();
        ctx.request_id = request_id(session);
        if self.shared.drain.is_draining() {
            // Finish this request, but let the client take its next one to
            // a replica that is not going away.
            session.set_keepalive(None);
        }
        if let Err(e) = self.handle(session, ctx, &snapshot).await {
            self.respond_error(session, ctx, &e).await;
        }
        if ctx.report.client_gone {
            // The answer was cut short (or never written): whatever the
            // connection holds next is not the start of a request.
            session.set_keepalive(None);
        }
    }

    /// Metrics and the access line, exactly once per request.
    fn log(&self, ctx: &RequestCtx) {
        access::record(
            &self.shared.metrics,
            &AccessRecord {
                request_id: &ctx.request_id,
                key: ctx.caller.name(),
                endpoint: ctx.endpoint.map_or("other", Endpoint::label),
                model: &ctx.model,
                status: ctx.final_status(),
                started: ctx.started,
                report: &ctx.report,
                usage: ctx.usage,
                overhead: ctx.overhead + ctx.report.tap_time,
                limit_note: ctx.limit_note,
                error: ctx.error_kind,
            },
        );
    }
    async fn handle(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snapshot: &Snapshot,
    ) -> Result<(), GatewayError> {
        // The gateway's own work began when the head was read.
        let checks = ctx.started;
        check_head_size(session, &snapshot.config.server)?;
        let endpoint = route(session)?;
        ctx.endpoint = Some(endpoint);
        ctx.caller = self.authenticate(session, snapshot)?;
        if endpoint == Endpoint::Models {
            return self.list_models(session, ctx, snapshot).await;
        }
        admission::check_content_type(session)?;
        if let Some(key) = ctx.caller.key() {
            let verdict = snapshot
                .limits
                .admit_request(&key.limiter, &mut ctx.limits)
                .await;
            self.check_verdict(
                verdict,
                ctx,
                key.limiter.quotas.requests_per_minute.map(u64::from),
            )?;
        }
        ctx.overhead += checks.elapsed();

        let server = &snapshot.config.server;
        let body =
            admission::read_body(session, server.max_body_bytes, server.body_read_timeout).await?;
        ctx.body_done = true;

        let admitting = Instant::now();
        let admitted = match endpoint {
            Endpoint::ChatCompletions => admission::chat(snapshot, body).await,
            Endpoint::Completions => admission::other(snapshot, body, true),
            _ => admission::other(snapshot, body, false),
        };
        let admitted = admitted.inspect_err(|e| self.count_invalid(ctx, e))?;
        ctx.model = Arc::clone(&admitted.pool.model);
        ctx.limit_note = admitted.limit_note;
        if let Some(key) = ctx.caller.key() {
            // OpenAI answers a model the key may not use exactly like one
            // that does not exist, so keys cannot probe the model list.
            if !key.may_use(&admitted.pool.model) {
                return Err(GatewayError::ModelNotFound {
                    model: admitted.pool.model.to_string(),
                });
            }
        }
        let reserved = self.reserve_tokens(ctx, snapshot, &admitted).await?;
        ctx.overhead += admitting.elapsed();

        let req = UpstreamRequest {
            path: endpoint.upstream_path(),
            body: admitted.body.clone(),
            stream: admitted.stream,
            request_id: Arc::clone(&ctx.request_id),
            prefix_key: admitted.prefix_key,
            extra_headers: ctx.limits.headers(),
            gap_histogram: Some(self.shared.metrics.with_series(
                &admitted.pool.model,
                ctx.caller.name(),
                endpoint.label(),
                |s| s.gap(&self.shared.metrics).clone(),
            )),
            flush_hold: ctx.flush_hold.take(),
        };
        let mut meter = AnswerMeter::new(admitted.strip_usage);
        let result = forward::exchange(
            session,
            &admitted.pool,
            &req,
            &mut meter,
            &mut ctx.report,
            ctx.started,
        )
        .await;
        let usage = meter.settle(admitted.prompt_estimate);
        if ctx.report.status != 0 {
            ctx.usage = Some(usage);
        }
        if let Some(key) = ctx.caller.key() {
            // What the request really cost: the worker's usage; nothing if no
            // worker answered.
            let used = if ctx.report.status != 0 {
                usage.prompt_tokens + usage.completion_tokens
            } else {
                0
            };
            let delta =
                i64::try_from(used).unwrap_or(i64::MAX) - i64::try_from(reserved).unwrap_or(0);
            snapshot.limits.settle_tokens(&key.limiter, delta).await;
        }
        result
    }

    fn authenticate(&self, session: &Session, snapshot: &Snapshot) -> Result<Caller, GatewayError> {
        let h = &session.req_header().headers;
        match snapshot.keys.authenticate(
            h.get(http::header::AUTHORIZATION).map(|v| v.as_bytes()),
            h.get(&API_KEY).map(|v| v.as_bytes()),
        ) {
            Ok(c) => Ok(c),
            Err(f) => {
                let missing = f == AuthFailure::Missing;
                self.shared
                    .metrics
                    .auth_failures
                    .with_label_values(&[if missing { "missing" } else { "invalid" }])
                    .inc();
                Err(GatewayError::Unauthorized { missing })
            }
        }
    }

    fn check_verdict(
        &self,
        verdict: Verdict,
        ctx: &RequestCtx,
        limit: Option<u64>,
    ) -> Result<(), GatewayError> {
        match verdict {
            Verdict::Allowed => Ok(()),
            Verdict::StoreDown => Err(GatewayError::RateLimitUnavailable),
            Verdict::Limited { kind, retry_after } => {
                self.shared
                    .metrics
                    .rate_limited
                    .with_label_values(&[ctx.caller.name(), kind.label()])
                    .inc();
                Err(GatewayError::RateLimited {
                    kind,
                    limit: limit.unwrap_or(0),
                    retry_after,
                })
            }
        }
    }

    /// Reserve the prompt estimate plus the most the answer can produce from
    /// the key's token budget; returns what was reserved.
    async fn reserve_tokens(
        &self,
        ctx: &mut RequestCtx,
        snapshot: &Snapshot,
        admitted: &Admitted,
    ) -> Result<u64, GatewayError> {
        let Some(key) = ctx.caller.key().cloned() else {
            return Ok(0);
        };
        let Some(limit) = key.limiter.quotas.tokens_per_minute else {
            return Ok(0);
        };
        let want = admitted.prompt_estimate + admitted.max_output.unwrap_or(DEFAULT_OUTPUT_RESERVE);
        let (verdict, reserved) = snapshot
            .limits
            .reserve_tokens(&key.limiter, want, &mut ctx.limits)
            .await;
        self.check_verdict(verdict, ctx, Some(limit))?;
        Ok(reserved)
    }

    fn count_invalid(&self, ctx: &RequestCtx, e: &GatewayError) {
        if let GatewayError::InvalidRequest { param, code, .. } = e {
            let field = field_label(param.as_deref().unwrap_or(""), code);
            self.shared
                .metrics
                .validation_errors
                .with_label_values(&[&*ctx.model, &field])
                .inc();
        }
    }

    async fn respond_error(&self, session: &mut Session, ctx: &mut RequestCtx, e: &GatewayError) {
        ctx.error_kind = Some(e.kind());
        ctx.own_status = e.status();
        if !ctx.body_done && !session.is_body_empty() {
            // The body was not read: its bytes must not be taken for the
            // next request on this connection.
            session.set_keepalive(None);
        }
        reply::error(session, &ctx.request_id, &ctx.limits, e).await;
    }

    async fn list_models(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snapshot: &Snapshot,
    ) -> Result<(), GatewayError> {
        let data: Vec<serde_json::Value> = snapshot
            .pools()
            .filter(|pool| ctx.caller.key().is_none_or(|k| k.may_use(&pool.model)))
            .map(|pool| {
                let mut entry = serde_json::json!({
                    "id": &*pool.model,
                    "object": "model",
                    "created": self.started_unix,
                    "owned_by": "vllm-gateway",
                });
                let configured = snapshot
                    .config
                    .model(&pool.model)
                    .and_then(|m| m.limits.max_model_len);
                if let Some(len) = configured.or_else(|| pool.reported_max_model_len()) {
                    entry["max_model_len"] = len.into();
                }
                entry
            })
            .collect();
        let body = serde_json::json!({"object": "list", "data": data});
        let body = serde_json::to_vec(&body).map_err(|_| GatewayError::Internal)?;
        ctx.own_status = 200;
        reply::json(
            session,
            &ctx.request_id,
            &ctx.limits,
            &[],
            200,
            Bytes::from(body),
        )
        .await;
        Ok(())
    }
}

/// Bound the request head: Pingora accepts up to 1 MiB and 256 headers
/// (pingora.md §6), far more than any API client sends.
fn check_head_size(
    session: &Session,
    server: &crate::config::ServerConfig,
) -> Result<(), GatewayError> {
    let h = session.req_header();
    let bytes: usize = h
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + uri_len(&h.uri);
    if h.headers.len() > server.max_headers || bytes > server.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge {
            max_headers: server.max_headers,
            max_bytes: server.max_header_bytes,
        });
    }
    Ok(())
}

/// How long `uri` is as the client wrote it, without writing it out: an
/// origin-form target (`/v1/chat/completions?x`, what clients send) is its
/// path and query; anything else is measured by formatting it.
fn uri_len(uri: &http::Uri) -> usize {
    match (uri.scheme(), uri.authority(), uri.path_and_query()) {
        (None, None, Some(pq)) => pq.as_str().len(),
        _ => {
            struct Count(usize);
            impl std::fmt::Write for Count {
                fn write_str(&mut self, s: &str) -> std::fmt::Result {
                    self.0 += s.len();
                    Ok(())
                }
            }
            let mut n = Count(0);
            let _ = std::fmt::write(&mut n, format_args!("{uri}"));
            n.0
        }
    }
}

/// The endpoint for the request's method and path.
fn route(session: &Session) -> Result<Endpoint, GatewayError> {
    let h = session.req_header();
    let path = h.uri.path();
    let method = h.method.as_str();
    if h.method == http::Method::CONNECT {
        // A tunnel request, never an API call.
        return Err(GatewayError::MethodNotAllowed {
            method: truncate(method, 16),
            path: truncate(path, 256),
        });
    }
    let Some(endpoint) = Endpoint::from_path(path) else {
        return Err(GatewayError::RouteNotFound {
            method: truncate(method, 16),
            path: truncate(path, 256),
        });
    };
    if method != endpoint.method() {
        return Err(GatewayError::MethodNotAllowed {
            method: truncate(method, 16),
            path: path.to_string(),
        });
    }
    Ok(endpoint)
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
    if let Some(v) = session.req_header().headers.get(&forward::X_REQUEST_ID) {
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
    fresh_request_id()
}

/// 32 random lowercase hex digits.
fn fresh_request_id() -> Arc<str> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut id = [0u8; 32];
    for d in id.iter_mut().rev() {
        *d = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    // Every byte is an ASCII hex digit.
    Arc::from(std::str::from_utf8(&id).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_length_is_its_written_length() {
        for u in [
            "/v1/chat/completions",
            "/v1/models?limit=5&x=%20",
            "http://example.com:8080/v1/models?a=b",
            "*",
            "example.com:443",
        ] {
            let uri: http::Uri = u.parse().unwrap();
            assert_eq!(uri_len(&uri), uri.to_string().len(), "{u}");
        }
    }

    #[test]
    fn fresh_request_ids_are_32_hex_digits_and_differ() {
        let a = fresh_request_id();
        let b = fresh_request_id();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn truncates_on_char_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
