//! The exchange with a worker: connect, send the (possibly rewritten) body,
//! wait for the answer, stream it back to the client.
//!
//! Why the gateway drives the upstream exchange itself instead of returning
//! a peer to Pingora's proxy loop (`pingora_proxy`'s `upstream_peer`)
//! (../shared/reference/pingora.md §3):
//! - Routing needs `model`, which is inside the body, so the whole body is read
//!   before a worker can be chosen. Pingora only replays a pre-read body from
//!   its 64 KiB retry buffer (§3.1), so larger chat bodies would hang; the
//!   subrequest workaround (§3.3) stops watching the client while the worker
//!   computes the first token, so a client that leaves during a long prefill
//!   would keep a GPU busy. Here one code path serves every body size.
//! - While waiting for the worker, the exchange keeps polling the client's
//!   socket (`read_body_or_idle`, §6): a client that disconnects at any point
//!   (queued, prefill, mid-stream) makes the gateway drop the upstream
//!   connection at once, so vLLM aborts the request and frees the GPU
//!   (vllm.md §5).
//! - Retries replay the buffered body on another worker, whatever its size,
//!   and never after the first byte went to the client.
//! - Each timeout (connect, first token, idle between events, total) is its
//!   own deadline, and a failure after the answer started is reported in-band
//!   as an SSE error event, the way vLLM reports in-stream errors.
//!
//! The client side is Pingora's HTTP/1 session; the worker side is
//! [`crate::upstream::http1`] over connections from [`crate::upstream`].

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora_core::protocols::http::ServerSession as Session;
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::io::AsyncWriteExt;

use crate::config::StreamHead;
use crate::deadline::{sleep_until, Idle, Stall};
use crate::error::GatewayError;
use crate::listener::FlushHold;
use crate::pool::{PickReason, Reservation, WorkerPool};
use crate::reply;
use crate::upstream;
use crate::upstream::http1::{encode_request, Head, WorkerResponse};

/// What the exchange sends upstream.
pub struct UpstreamRequest {
    /// Path on the worker, e.g. `/v1/chat/completions`.
    pub path: &'static str,
    pub body: Bytes,
    /// The client asked for an SSE stream.
    pub stream: bool,
    pub request_id: Arc<str>,
    /// Hash of the prompt's leading part, for prefix-affinity routing.
    pub prefix_key: Option<u64>,
    /// Headers added to the answer (the key's `x-ratelimit-*`).
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// Where the gaps between streamed pieces are observed.
    pub gap_histogram: Option<prometheus::Histogram>,
    /// Lets the last piece of a stream leave with the end of the body.
    pub flush_hold: Option<Arc<FlushHold>>,
}

/// Sees every body chunk of the answer on its way to the client and decides
/// what is forwarded (the SSE scanner counts usage and may drop the usage
/// chunk the gateway asked for on the client's behalf).
pub trait ResponseTap: Send {
    /// Called once with the worker's status and whether the answer is SSE.
    fn on_head(&mut self, _status: u16, _is_sse: bool) {}
    /// One upstream body chunk in; the bytes to forward out.
    fn on_chunk(&mut self, chunk: Bytes) -> Bytes {
        chunk
    }
    /// End of the upstream body; anything still held back.
    fn on_end(&mut self) -> Bytes {
        Bytes::new()
    }
    /// The bytes carried the first generated token (time to first token).
    fn first_token_seen(&self) -> bool {
        true
    }
    /// The stream broke its framing (an event that is neither JSON nor
    /// `[DONE]`, an oversized event): it is ended with an in-band error
    /// rather than passed on for the client's parser to choke on.
    fn malformed(&self) -> bool {
        false
    }
}

/// Forwards every byte untouched.
pub struct PassThrough;
impl ResponseTap for PassThrough {}

/// How an exchange ended, for metrics and the access log.
#[derive(Debug, Default)]
pub struct ExchangeReport {
    /// Status sent to the client (0 if nothing was sent).
    pub status: u16,
    pub worker: Option<Arc<str>>,
    pub attempts: u32,
    pub retries: u32,
    pub first_byte: Option<Instant>,
    pub first_token: Option<Instant>,
    pub client_gone: bool,
    /// A failure after the answer head was sent (reported in-band or by
    /// closing the connection).
    pub failed_mid_answer: Option<&'static str>,
    /// Kinds of upstream failures met along the way (connect, timeout, ...).
    pub upstream_errors: Vec<&'static str>,
    /// Why each attempt's worker was chosen.
    pub picks: Vec<PickReason>,
    /// Time spent in the response tap (stream scanning): gateway overhead.
    pub tap_time: std::time::Duration,
    /// When the previous piece of the answer went to the client (gaps).
    last_write: Option<Instant>,
    pub is_sse: bool,
}

impl ExchangeReport {
    /// The client has the answer's head.
    pub fn head_sent(&self) -> bool {
        self.first_byte.is_some()
    }
}

/// A worker's answer, as [`attempt`] hands it over for relaying: nothing of
/// its body went to the client yet (its head may have, see
/// [`ExchangeReport::head_sent`]).
struct Answer {
    up: WorkerResponse,
    /// A stream's first body bytes, read before the client sees anything so
    /// that the first-token timeout covers them (see [`attempt`]).
    first: Option<Bytes>,
    /// Nothing more comes from the worker (already so for a stream answer
    /// with an empty body).
    ended: bool,
}

/// What waiting for the next piece of a worker's answer body gave.
enum Piece {
    /// Body bytes, and when they arrived (`None` for bytes read with the
    /// head, handed out from memory: a stream takes the time when it relays
    /// them, and a whole answer never needs it).
    Chunk(Bytes, Option<Instant>),
    /// The body is complete.
    End,
    ClientGone,
    /// The worker's connection broke, or its framing did.
    Broken,
    Stalled(Stall),
}

impl Answer {
    /// Nothing of the answer is left to hand out: the piece just taken was
    /// the last.
    fn complete(&self) -> bool {
        self.first.is_none() && (self.ended || self.up.body_complete())
    }

    /// The next piece of the answer's body: first what was read with the
    /// head, then what the worker sends, while watching for the client
    /// leaving (`read_body_or_idle`, ../shared/reference/pingora.md §6) and
    /// for the idle and request limits (`stall`, armed once per answer).
    async fn next_piece(
        &mut self,
        session: &mut Session,
        idle: &Idle,
        stall: Pin<&mut impl Future<Output = Stall>>,
    ) -> Piece {
        if let Some(first) = self.first.take() {
            return Piece::Chunk(first, None);
        }
        if self.ended {
            return Piece::End;
        }
        tokio::select! {
            biased;
            read = self.up.read_body() => match read {
                Ok(Some(chunk)) => Piece::Chunk(chunk, Some(idle.touch())),
                Ok(None) => {
                    self.ended = true;
                    Piece::End
                }
                Err(_) => Piece::Broken,
            },
            // `Ok` would mean more request bytes (not expected); anything
            // here is the client going away.
            _ = session.read_body_or_idle(true) => Piece::ClientGone,
            why = stall => Piece::Stalled(why),
        }
    }
}

/// Errors of a single attempt, sorted by whether another worker may be tried.
enum AttemptError {
    /// Nothing reached a worker's model (connect failed, stale pooled
    /// connection, reset before the head, 503 admission refusal): safe to
    /// replay on another worker.
    Retryable(&'static str),
    /// Give up with this answer to the client.
    Fatal(GatewayError, Option<&'static str>),
    ClientGone,
}

/// Bodies up to this size are copied behind the request head so both leave
/// in one write; larger ones are written after it without the copy.
const COALESCE_BODY: usize = 64 * 1024;

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), and are
/// never copied from one side to the other.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request headers the gateway sets itself or must not pass on.
const REQUEST_DROP: &[&str] = &[
    "host",
    "content-length",
    "expect",
    "x-request-id",
    // Client credentials are for the gateway, never for the worker.
    "authorization",
    "api-key",
];

/// Run the exchange. `Err` means nothing was written to the client and the
/// caller answers with that error; `Ok` means the answer (or what could be
/// sent of it) went out, with the details in the report.
pub async fn exchange(
    session: &mut Session,
    pool: &WorkerPool,
    req: &UpstreamRequest,
    tap: &mut dyn ResponseTap,
    report: &mut ExchangeReport,
    started: Instant,
) -> Result<(), GatewayError> {
    let t = pool.timeouts;
    let deadline = started + t.request;
    let mut tried: Vec<usize> = Vec::new();
    let picked = loop {
        let Some((reservation, reason)) = pool.pick(&tried, req.prefix_key) else {
            break Err(if report.attempts == 0 {
                GatewayError::NoHealthyWorker {
                    model: pool.model.to_string(),
                }
            } else {
                GatewayError::UpstreamUnavailable {
                    model: pool.model.to_string(),
                }
            });
        };
        // A retry is counted once it has a worker to go to, not when the
        // previous attempt failed: with nowhere left to go there is none.
        if report.attempts > 0 {
            report.retries += 1;
        }
        report.attempts += 1;
        report.picks.push(reason);
        report.worker = Some(Arc::clone(&reservation.worker.url));
        let mut outcome = attempt(session, pool, req, &reservation, report, deadline).await;
        if let Err(AttemptError::Retryable("stale_connection")) = outcome {
            // A pooled connection the worker had already closed says nothing
            // about the worker: try it once more on its next connection,
            // outside the retry budget. Failing again, it is the worker's
            // failure like any other (a worker that resets every request
            // must not pass as stale and use up the retries on itself).
            report.upstream_errors.push("stale_connection");
            outcome = attempt(session, pool, req, &reservation, report, deadline).await;
            if let Err(AttemptError::Retryable("stale_connection")) = outcome {
                outcome = Err(AttemptError::Retryable("reset"));
            }
        }
        match outcome {
            Ok(answer) => break Ok((answer, reservation)),
            Err(AttemptError::ClientGone) => {
                report.client_gone = true;
                return Ok(());
            }
            Err(AttemptError::Fatal(e, kind)) => {
                if let Some(kind) = kind {
                    report.upstream_errors.push(kind);
                    reservation.worker.record_failure(&pool.policy.breaker);
                }
                break Err(e);
            }
            Err(AttemptError::Retryable(kind)) => {
                // Passive health: the failure counts against the worker, and
                // the request moves on to another one.
                report.upstream_errors.push(kind);
                reservation.worker.record_failure(&pool.policy.breaker);
                tried.push(reservation.index);
                if report.retries >= pool.policy.max_retries {
                    break Err(GatewayError::UpstreamUnavailable {
                        model: pool.model.to_string(),
                    });
                }
            }
        }
    };
    let (answer, reservation) = match picked {
        Ok(picked) => picked,
        // The client already has a stream's head (`stream_head =
        // "immediate"`) from a worker that failed before its first event,
        // and no other worker took over: the error can only go in-band.
        Err(e) if report.head_sent() => {
            report.failed_mid_answer = Some(e.kind());
            end_with_error(session, tap, report, &e.to_string()).await;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let Some(head) = answer.up.head() else {
        return Err(GatewayError::UpstreamProtocol {
            model: pool.model.to_string(),
        });
    };
    let is_sse = head.is_sse;
    report.is_sse = is_sse;
    let relay = Relay {
        session,
        pool,
        req,
        tap,
        report,
        reservation: &reservation,
        deadline,
    };
    let relayed = if is_sse {
        stream_answer(relay, answer).await
    } else {
        whole_answer(relay, answer).await
    };
    let upstream = match relayed {
        Ok(Some(up)) => up,
        Ok(None) => return Ok(()),
        Err(e) => return Err(e),
    };
    // The worker sent its whole answer: it is done with this request, so its
    // slot is given back now, and its connection can serve the next request.
    let worker = Arc::clone(&reservation.worker);
    drop(reservation);
    if let Some(stream) = upstream.into_reusable() {
        worker.connections.put(stream);
    }
    Ok(())
}

/// What relaying one worker's answer to the client works with.
struct Relay<'a> {
    session: &'a mut Session,
    pool: &'a WorkerPool,
    req: &'a UpstreamRequest,
    tap: &'a mut dyn ResponseTap,
    report: &'a mut ExchangeReport,
    reservation: &'a Reservation,
    deadline: Instant,
}

/// A JSON answer is read whole before any of it goes out (answers are
/// small, and vLLM sends them in one piece when generation ends), so a worker
/// that breaks, stalls or sends too much still gets its client a clean
/// OpenAI error, a worker's own error is rewritten into OpenAI's shape, and
/// head and body leave in one write. Returns the upstream session to pool
/// when it was read to its end; `Err` when nothing was sent.
async fn whole_answer(
    relay: Relay<'_>,
    mut answer: Answer,
) -> Result<Option<WorkerResponse>, GatewayError> {
    let Relay {
        session,
        pool,
        req,
        tap,
        report,
        reservation,
        deadline,
    } = relay;
    let limit = pool.policy.max_response_bytes;
    let model = || pool.model.to_string();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    let idle = Idle::new(pool.timeouts.idle);
    let mut stall = pin!(idle.stalled(deadline));
    loop {
        let chunk = match answer.next_piece(session, &idle, stall.as_mut()).await {
            // The end may come later than the last chunk, so the tap's
            // time is taken below rather than from the arrival.
            Piece::Chunk(chunk, _) => chunk,
            Piece::End => break,
            Piece::ClientGone => {
                report.client_gone = true;
                return Ok(None);
            }
            Piece::Broken => {
                report.upstream_errors.push("reset");
                reservation.worker.record_failure(&pool.policy.breaker);
                return Err(GatewayError::UpstreamProtocol { model: model() });
            }
            Piece::Stalled(why) => {
                report.upstream_errors.push("timeout");
                let phase = match why {
                    Stall::Silent => {
                        reservation.worker.record_failure(&pool.policy.breaker);
                        "idle"
                    }
                    Stall::Overdue => "request timeout",
                };
                return Err(GatewayError::UpstreamTimeout {
                    model: model(),
                    phase,
                });
            }
        };
        total += chunk.len();
        if total > limit {
            report.upstream_errors.push("response_too_large");
            reservation.worker.record_failure(&pool.policy.breaker);
            return Err(GatewayError::ResponseTooLarge {
                model: model(),
                limit,
            });
        }
        chunks.push(chunk);
    }
    let upstream = answer.up;
    let Some(head) = upstream.head() else {
        return Err(GatewayError::UpstreamProtocol { model: model() });
    };
    let status = head.status;
    let body = join(chunks, total);
    if status >= 400 {
        // The worker refused or failed: answer in OpenAI's shape
        // (vLLM's own error bodies carry an integer `code`, vllm.md §6).
        let worker = worker_error(&body);
        let e = if status >= 500 || status == 401 || status == 403 {
            report.upstream_errors.push("status_5xx");
            if status >= 500 {
                reservation.worker.record_failure(&pool.policy.breaker);
            }
            GatewayError::UpstreamFailed {
                model: model(),
                status,
                message: worker.message,
            }
        } else {
            reservation.worker.record_success();
            GatewayError::WorkerRejected {
                status,
                message: worker.message,
                param: worker.param,
            }
        };
        return Err(e);
    }
    reservation.worker.record_success();
    tap.on_head(status, false);
    let tapping = Instant::now();
    let out = tap.on_chunk(body);
    let scanned = Instant::now();
    report.tap_time += scanned - tapping;
    let http11 = session.req_header().version == http::Version::HTTP_11;
    let client_head = client_response_head(head, req, Some(out.len()), http11)?;
    if session
        .write_response_header(Box::new(client_head))
        .await
        .is_err()
    {
        report.client_gone = true;
        return Ok(Some(upstream));
    }
    report.status = status;
    // The answer was whole and ready at `scanned`; building and writing its
    // head adds a microsecond, not worth another clock read.
    report.first_byte = Some(scanned);
    report.first_token = report.first_byte;
    if session.write_response_body(out, true).await.is_err() {
        report.client_gone = true;
    }
    Ok(Some(upstream))
}

fn join(chunks: Vec<Bytes>, total: usize) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.into_iter().next().unwrap_or_default(),
        _ => {
            let mut all = bytes::BytesMut::with_capacity(total);
            for c in chunks {
                all.extend_from_slice(&c);
            }
            all.freeze()
        }
    }
}

/// What a worker said in its error body: vLLM's `{"error":{"message",
/// "param",...}}`, FastAPI's `{"detail": ...}`, or plain text.
struct WorkerError {
    message: String,
    param: Option<String>,
}

fn worker_error(body: &[u8]) -> WorkerError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let message = error
        .and_then(|e| e.get("message").or(Some(e)))
        .and_then(|m| m.as_str())
        .or_else(|| {
            parsed
                .as_ref()
                .and_then(|v| v.get("detail"))
                .and_then(|d| d.as_str())
        })
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    let param = error
        .and_then(|e| e.get("param"))
        .and_then(|p| p.as_str())
        .map(str::to_string);
    WorkerError {
        message: crate::proxy::truncate(message.trim(), 500),
        param,
    }
}

/// A stream goes to the client event by event, as the worker writes it.
/// Returns the upstream session to pool when it was read to its end.
async fn stream_answer(
    relay: Relay<'_>,
    mut answer: Answer,
) -> Result<Option<WorkerResponse>, GatewayError> {
    let Relay {
        session,
        pool,
        req,
        tap,
        report,
        reservation,
        deadline,
    } = relay;
    let Some(head) = answer.up.head() else {
        return Err(GatewayError::UpstreamProtocol {
            model: pool.model.to_string(),
        });
    };
    let status = head.status;
    tap.on_head(status, true);
    if !report.head_sent() && !send_stream_head(session, head, req, report).await? {
        return Ok(None);
    }
    if status >= 500 {
        report.upstream_errors.push("status_5xx");
        reservation.worker.record_failure(&pool.policy.breaker);
    }
    let limit = pool.policy.max_response_bytes;
    let mut total = 0usize;
    let idle = Idle::new(pool.timeouts.idle);
    let mut stall = pin!(idle.stalled(deadline));
    // What broke the answer: the error kind, the client's message, and
    // whether it counts against the worker's breaker.
    let broken = loop {
        let (chunk, arrived) = match answer.next_piece(session, &idle, stall.as_mut()).await {
            Piece::Chunk(chunk, at) => (chunk, at.unwrap_or_else(Instant::now)),
            Piece::End => break None,
            Piece::ClientGone => {
                report.client_gone = true;
                return Ok(None);
            }
            Piece::Broken => break Some(("reset", CUT_SHORT, true)),
            Piece::Stalled(Stall::Silent) => break Some(("timeout", WENT_SILENT, true)),
            Piece::Stalled(Stall::Overdue) => break Some(("timeout", OVERDUE, false)),
        };
        total += chunk.len();
        if total > limit {
            break Some(("response_too_large", TOO_LARGE, true));
        }
        // The end of the body is written right after this piece.
        let end_follows = answer.complete();
        match relay_chunk(session, req, tap, report, chunk, arrived, end_follows).await {
            Relayed::Sent => {}
            Relayed::ClientGone => return Ok(None),
            Relayed::Malformed => break Some(("malformed", MALFORMED, true)),
        }
    };
    if let Some((kind, message, worker_at_fault)) = broken {
        if worker_at_fault {
            reservation.worker.record_failure(&pool.policy.breaker);
        }
        fail_mid_answer(session, tap, report, kind, message).await;
        return Ok(None);
    }
    let upstream = answer.up;
    // The worker's whole answer arrived; the breaker hears that it
    // answered, whatever happens on the client's side.
    if status < 500 {
        reservation.worker.record_success();
    }
    let rest = tap.on_end();
    let finished = if rest.is_empty() {
        session.write_response_body(Bytes::new(), true).await
    } else {
        session.write_response_body(rest, true).await
    };
    if finished.is_err() {
        report.client_gone = true;
    }
    Ok(Some(upstream))
}

const MALFORMED: &str = "The worker sent a malformed event stream.";
const CUT_SHORT: &str = "The worker stopped sending the answer before it was complete.";
const WENT_SILENT: &str = "The worker went silent in the middle of the answer.";
const OVERDUE: &str = "The answer took longer than the gateway's request timeout.";
const TOO_LARGE: &str = "The worker's answer grew larger than the gateway accepts.";

/// What happened to one chunk of a stream.
enum Relayed {
    Sent,
    ClientGone,
    /// The chunk broke the stream's framing; nothing of it was sent.
    Malformed,
}

async fn relay_chunk(
    session: &mut Session,
    req: &UpstreamRequest,
    tap: &mut dyn ResponseTap,
    report: &mut ExchangeReport,
    chunk: Bytes,
    arrived: Instant,
    end_follows: bool,
) -> Relayed {
    let out = tap.on_chunk(chunk);
    let scanned = Instant::now();
    report.tap_time += scanned.saturating_duration_since(arrived);
    if tap.malformed() {
        return Relayed::Malformed;
    }
    if report.first_token.is_none() && tap.first_token_seen() {
        report.first_token = Some(scanned);
    }
    if out.is_empty() {
        return Relayed::Sent;
    }
    if let (Some(h), Some(prev), Some(_)) =
        (&req.gap_histogram, report.last_write, report.first_token)
    {
        h.observe(scanned.duration_since(prev).as_secs_f64());
    }
    report.last_write = Some(scanned);
    // The last piece waits in the client stream for the end of the body,
    // which is written next (nothing from the worker is waited for in
    // between), and leaves with it.
    let hold = req.flush_hold.as_deref().filter(|_| end_follows);
    if let Some(h) = hold {
        h.hold_next();
    }
    let written = session.write_response_body(out, false).await;
    if let Some(h) = hold {
        h.clear();
    }
    if written.is_err() {
        report.client_gone = true;
        return Relayed::ClientGone;
    }
    Relayed::Sent
}

/// One try on one worker: connect, send, wait for the head and, for a
/// stream, its first event.
///
/// vLLM sends a stream's head as soon as it accepts the request, before the
/// request even leaves its queue (a Starlette `StreamingResponse`,
/// vllm.md §5); the first event comes with the first token. So the
/// first-token timeout must cover the first body bytes, not only the head,
/// and those bytes are read here, before any of the body goes to the client:
/// a worker that breaks before its first event can still be replaced, and
/// one that stays silent past the timeout is a clean 504 (with `stream_head =
/// "first_event"`; otherwise the client already has the head, which this
/// sends as soon as the worker's arrives).
async fn attempt(
    session: &mut Session,
    pool: &WorkerPool,
    req: &UpstreamRequest,
    reservation: &Reservation,
    report: &mut ExchangeReport,
    deadline: Instant,
) -> Result<Answer, AttemptError> {
    let t = pool.timeouts;
    let worker = &reservation.worker;
    let model = || pool.model.to_string();

    let (mut stream, reused) = match worker.connections.take(t.keepalive_idle) {
        Some(s) => (s, true),
        None => {
            let connected = tokio::select! {
                biased;
                r = upstream::connect(worker.addr, t.connect) => r,
                _ = session.read_body_or_idle(true) => return Err(AttemptError::ClientGone),
                () = sleep_until(deadline) => return Err(AttemptError::Fatal(
                    GatewayError::UpstreamTimeout { model: model(), phase: "request timeout" }, Some("timeout"))),
            };
            match connected {
                Ok(s) => (s, false),
                Err(_) => return Err(AttemptError::Retryable("connect")),
            }
        }
    };

    // Head and body leave in one write (one segment for a typical request)
    // rather than a write and a flush each.
    let coalesce = req.body.len() <= COALESCE_BODY;
    let wire = upstream_request(session.req_header(), req, &worker.url, coalesce);
    let sent = async {
        if coalesce {
            stream.write_all(&wire).await.ok()?;
        } else {
            stream.write_all(&wire).await.ok()?;
            stream.write_all(&req.body).await.ok()?;
        }
        stream.flush().await.ok()?;
        Some(())
    };
    let sent = tokio::select! {
        biased;
        r = sent => r,
        _ = session.read_body_or_idle(true) => return Err(AttemptError::ClientGone),
        () = sleep_until(deadline) => return Err(AttemptError::Fatal(
            GatewayError::UpstreamTimeout { model: model(), phase: "request timeout" }, Some("timeout"))),
    };
    if sent.is_none() {
        // A pooled connection the worker closed meanwhile, or a worker that
        // died after accepting: the request never reached the model.
        return Err(AttemptError::Retryable(if reused {
            "stale_connection"
        } else {
            "reset"
        }));
    }
    let mut up = WorkerResponse::new(stream);

    // Non-streaming answers have no head before generation ends, so only the
    // total deadline bounds them; a stream's head and first event must come
    // within the first-token timeout.
    let head_deadline = if req.stream {
        deadline.min(Instant::now() + t.first_token)
    } else {
        deadline
    };
    let timed_out = || {
        AttemptError::Fatal(
            GatewayError::UpstreamTimeout {
                model: model(),
                phase: if req.stream && head_deadline < deadline {
                    "first token"
                } else {
                    "request timeout"
                },
            },
            Some("timeout"),
        )
    };
    let head = tokio::select! {
        biased;
        r = up.read_head() => r.map(|h| h.status),
        _ = session.read_body_or_idle(true) => return Err(AttemptError::ClientGone),
        () = sleep_until(head_deadline) => return Err(timed_out()),
    };
    let Ok(status) = head else {
        // Reset before the response head: nothing was answered, so another
        // worker may take the request.
        return Err(AttemptError::Retryable(if reused {
            "stale_connection"
        } else {
            "reset"
        }));
    };
    if status == 503 {
        // vLLM's admission limit answers 503 precisely so that a balancer
        // retries elsewhere (vllm.md §8).
        return Err(AttemptError::Retryable("status_503"));
    }
    if !req.stream {
        return Ok(Answer {
            up,
            first: None,
            ended: false,
        });
    }
    if pool.policy.stream_head == StreamHead::Immediate {
        if let Some(head) = up.head() {
            let streams = head.is_sse && (200..300).contains(&status);
            if report.head_sent() {
                // The client holds the head of a stream that an earlier
                // worker failed to start: only another stream continues it.
                if !streams {
                    return Err(AttemptError::Retryable(match status {
                        500.. => "status_5xx",
                        400..500 => "status_4xx",
                        _ => "malformed",
                    }));
                }
            } else if streams {
                // The head goes out now, as vLLM sends it (vllm.md §5); until
                // the first event the request can still move to another
                // worker, the client none the wiser.
                match send_stream_head(session, head, req, report).await {
                    Ok(true) => {}
                    Ok(false) => return Err(AttemptError::ClientGone),
                    Err(e) => return Err(AttemptError::Fatal(e, None)),
                }
            }
        }
    }
    let first = tokio::select! {
        biased;
        r = up.read_body() => r,
        _ = session.read_body_or_idle(true) => return Err(AttemptError::ClientGone),
        () = sleep_until(head_deadline) => return Err(timed_out()),
    };
    match first {
        Ok(Some(chunk)) => Ok(Answer {
            up,
            first: Some(chunk),
            ended: false,
        }),
        Ok(None) => Ok(Answer {
            up,
            first: None,
            ended: true,
        }),
        // The worker broke off before its first event: nothing reached the
        // client, so another worker may take the request.
        Err(_) => Err(AttemptError::Retryable("reset")),
    }
}

/// The request as the worker gets it: the client's end-to-end headers minus
/// credentials and the ones the gateway sets, then the body if `with_body`.
fn upstream_request(
    client: &RequestHeader,
    req: &UpstreamRequest,
    worker_url: &str,
    with_body: bool,
) -> BytesMut {
    let host = worker_url.strip_prefix("http://").unwrap_or(worker_url);
    let passed = client
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .filter(|(n, _)| !HOP_BY_HOP.contains(n) && !REQUEST_DROP.contains(n))
        .chain(std::iter::once(("x-request-id", req.request_id.as_bytes())));
    encode_request("POST", req.path, host, passed, &req.body, with_body)
}

/// Answer headers never relayed besides the hop-by-hop ones, as nginx does
/// by default (`proxy_hide_header`): the gateway writes its own `Date` and
/// `X-Request-Id`; the worker's `Server` says nothing the client needs; an
/// `X-Accel-*` header is an instruction to a proxy in front of the gateway
/// (`X-Accel-Redirect` would make an nginx there serve a file the worker
/// named), never for the worker to give.
fn relayed(name: &str) -> bool {
    // The length is the gateway's to state: a stream's is unknown, and a
    // whole answer's is that of the bytes the client gets.
    !(HOP_BY_HOP.contains(&name)
        || matches!(name, "x-request-id" | "date" | "server" | "content-length")
        || name.starts_with("x-accel-"))
}

/// The head the client gets: for a whole answer of `body_len` bytes, or a
/// stream when that is `None`. An answer of unknown length (a stream) is sent
/// chunked to an HTTP/1.1 client: without `Transfer-Encoding` Pingora frames
/// it by closing the connection while the head still says keep-alive, so the
/// connection could never be reused and a stream cut short by a failure
/// looked exactly like a complete one. Chunked, a clean end is the
/// terminating chunk.
///
/// Pingora keeps the head for as long as the connection serves the answer,
/// so its map is sized for exactly the headers it will hold: for a stream
/// to a key with limits that is twelve, the most a map's first allocation
/// holds (1.2 kB; one more doubles it, for every open stream).
///
/// The headers stay typed all the way ([`reply::response_head`]).
fn client_response_head(
    upstream: &Head,
    req: &UpstreamRequest,
    body_len: Option<usize>,
    http11: bool,
) -> Result<ResponseHeader, GatewayError> {
    let is_sse = body_len.is_none();
    let kept = upstream
        .headers
        .iter()
        .filter(|(name, _)| relayed(name.as_str()))
        .count();
    // + x-request-id, the key's limits, the framing header, x-accel-buffering,
    // and the Date and Connection that Pingora adds.
    let capacity = kept + 1 + req.extra_headers.len() + 2 + 2;
    let mut map = HeaderMap::try_with_capacity(capacity).map_err(|_| GatewayError::Internal)?;
    let full = |_| GatewayError::Internal;
    for (name, value) in &upstream.headers {
        if relayed(name.as_str()) {
            map.try_append(name.clone(), value.clone()).map_err(full)?;
        }
    }
    let id = HeaderValue::from_str(&req.request_id).map_err(|_| GatewayError::Internal)?;
    map.try_insert(X_REQUEST_ID, id).map_err(full)?;
    for (name, value) in &req.extra_headers {
        map.try_insert(name.clone(), value.clone()).map_err(full)?;
    }
    match body_len {
        Some(n) => {
            map.try_insert(CONTENT_LENGTH, HeaderValue::from(n))
                .map_err(full)?;
        }
        None if http11 => {
            map.try_insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"))
                .map_err(full)?;
        }
        None => {}
    }
    if is_sse {
        // Tell any proxy in front of us (nginx honours this) not to buffer
        // the stream either; each event must reach the client as it is made.
        // (No `Cache-Control`: the answer to a POST is not cached anyway.)
        map.try_insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"))
            .map_err(full)?;
    }
    reply::response_head(upstream.status, map).ok_or(GatewayError::Internal)
}

/// The gateway's request id, on the worker's request and on every answer.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Sends a stream's head to the client; `false` if the client is gone.
async fn send_stream_head(
    session: &mut Session,
    head: &Head,
    req: &UpstreamRequest,
    report: &mut ExchangeReport,
) -> Result<bool, GatewayError> {
    let http11 = session.req_header().version == http::Version::HTTP_11;
    let client_head = client_response_head(head, req, None, http11)?;
    if session
        .write_response_header(Box::new(client_head))
        .await
        .is_err()
    {
        report.client_gone = true;
        return Ok(false);
    }
    report.status = head.status;
    report.first_byte = Some(Instant::now());
    Ok(true)
}

/// A stream broke after its head went out: the client gets an in-band error
/// event and `[DONE]`, the way vLLM reports in-stream errors, which the
/// official SDKs raise as an `APIError` (chat-completions.md §4, vllm.md §5).
async fn fail_mid_answer(
    session: &mut Session,
    tap: &mut dyn ResponseTap,
    report: &mut ExchangeReport,
    kind: &'static str,
    message: &str,
) {
    report.failed_mid_answer = Some(kind);
    report.upstream_errors.push(kind);
    end_with_error(session, tap, report, message).await;
}

/// Ends a stream whose head went out with an in-band error event.
async fn end_with_error(
    session: &mut Session,
    tap: &mut dyn ResponseTap,
    report: &ExchangeReport,
    message: &str,
) {
    session.set_keepalive(None);
    // Events the scanner held back are complete ones; a malformed or cut
    // tail was never forwarded.
    let held = if report.failed_mid_answer == Some("malformed") {
        Bytes::new()
    } else {
        tap.on_end()
    };
    let mut out = Vec::with_capacity(held.len() + 160);
    out.extend_from_slice(&held);
    out.extend_from_slice(&in_band_error(message));
    let _ = session.write_response_body(Bytes::from(out), true).await;
}

/// `data: {"error":{...}}` then `data: [DONE]`.
fn in_band_error(message: &str) -> Vec<u8> {
    let body = crate::error::render(message, "server_error", None, Some("upstream_error"));
    let mut out = Vec::with_capacity(body.len() + 24);
    // A blank line first ends any event the worker left half-written.
    out.extend_from_slice(b"\n\ndata: ");
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
    out
}
