//! One connection's life and request dispatch; the small endpoints live here too.
//!
//! Generation endpoints first meet the request-level faults (`garbage`, `stall`, `fail_rate`),
//! then vLLM's checks (Content-Type, schema, model, limits), then `generation.rs` runs them.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::error::ApiError;
use super::faults::FaultPlan;
use super::generation::{run_embedding, run_generation, Exchange, Flow, JSON};
use super::http::{Conn, Request};
use super::openai;
use super::{metrics, ReceivedRequest, Shared, SIMULATED_VLLM_VERSION};

/// Bytes sent by the `garbage` fault: not an HTTP response by any reading.
const GARBAGE: &[u8] = b"\x00\x17\xfe\xffSSH-2.0-definitely-not-http\r\n\x8f\x00garbage\r\n\r\n";

/// Keeps `open_connections` right however the task ends (including when aborted).
struct OpenConnection<'a>(&'a Shared);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0
            .engine
            .counters
            .open_connections
            .fetch_sub(1, Relaxed);
    }
}

/// Serves one accepted connection until the peer leaves or a response ends it.
pub(crate) async fn serve_connection(stream: TcpStream, sh: Arc<Shared>) {
    sh.engine.counters.open_connections.fetch_add(1, Relaxed);
    let _open = OpenConnection(&sh);
    let mut conn = Conn::new(stream);
    loop {
        let req = match conn.read_request().await {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) => {
                if let Some(status) = e.status() {
                    let headers = [("content-type", "text/plain; charset=utf-8")];
                    let _ = conn
                        .send(status, &headers, b"Invalid HTTP request received.", false)
                        .await;
                    conn.close().await;
                }
                return;
            }
        };
        sh.record(ReceivedRequest {
            method: req.method.clone(),
            path: req.target.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
        });
        match dispatch(&mut conn, &sh, &req).await {
            Flow::KeepAlive => {}
            Flow::Close => {
                conn.close().await;
                return;
            }
            Flow::Reset => {
                conn.reset();
                return;
            }
            Flow::Gone => return,
        }
    }
}

/// A fresh request id: 32 hex digits, like vLLM's `uuid4().hex`.
fn fresh_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

#[derive(Clone, Copy)]
enum Generation {
    Chat,
    Completion,
    Embedding,
}

async fn dispatch(conn: &mut Conn, sh: &Shared, req: &Request) -> Flow {
    let rid = req
        .header("x-request-id")
        .map_or_else(fresh_id, str::to_string);
    let faults = sh.faults.load_full();
    let mut x = Exchange {
        sh,
        conn,
        rid: &rid,
        keep_alive: req.keep_alive,
        faults: &faults,
    };
    let method = req.method.as_str();
    let (allowed, route): (&[&str], Option<Generation>) = match req.path() {
        "/v1/chat/completions" => (&["POST"], Some(Generation::Chat)),
        "/v1/completions" => (&["POST"], Some(Generation::Completion)),
        "/v1/embeddings" => (&["POST"], Some(Generation::Embedding)),
        "/tokenize" => (&["POST"], None),
        "/health" | "/v1/models" | "/version" | "/metrics" | "/sim/stats" => (&["GET"], None),
        "/ping" => (&["GET", "POST"], None),
        _ => return x.send_json(404, br#"{"detail":"Not Found"}"#).await,
    };
    if !allowed.contains(&method) {
        return x
            .send_json(405, br#"{"detail":"Method Not Allowed"}"#)
            .await;
    }
    if let Some(which) = route {
        return generation(&mut x, req, which).await;
    }
    match req.path() {
        "/health" | "/ping" => {
            let status = if faults.unhealthy { 503 } else { 200 };
            let headers = [("x-request-id", rid.as_str())];
            match x.conn.send(status, &headers, b"", x.keep_alive).await {
                Ok(()) if x.keep_alive => Flow::KeepAlive,
                Ok(()) => Flow::Close,
                Err(_) => Flow::Gone,
            }
        }
        "/v1/models" => x.send_json(200, &openai::models_body(sh)).await,
        "/version" => {
            let body = serde_json::json!({ "version": SIMULATED_VLLM_VERSION });
            x.send_json(200, body.to_string().as_bytes()).await
        }
        "/metrics" => {
            let text = metrics::render(&sh.engine, sh.base_model());
            let headers = [
                ("content-type", "text/plain; version=0.0.4; charset=utf-8"),
                ("x-request-id", rid.as_str()),
            ];
            match x
                .conn
                .send(200, &headers, text.as_bytes(), x.keep_alive)
                .await
            {
                Ok(()) if x.keep_alive => Flow::KeepAlive,
                Ok(()) => Flow::Close,
                Err(_) => Flow::Gone,
            }
        }
        "/sim/stats" => {
            let body = serde_json::to_vec(&sh.engine.counters.snapshot()).unwrap_or_default();
            x.send_json(200, &body).await
        }
        "/tokenize" => {
            if let Err(e) = check_content_type(req) {
                return x.send_error(&e).await;
            }
            match openai::tokenize(sh, &req.body) {
                Ok(body) => x.send_json(200, &body).await,
                Err(e) => x.send_error(&e).await,
            }
        }
        _ => x.send_json(404, br#"{"detail":"Not Found"}"#).await,
    }
}

async fn generation(x: &mut Exchange<'_>, req: &Request, which: Generation) -> Flow {
    let sh = x.sh;
    sh.engine.counters.requests.fetch_add(1, Relaxed);
    // A per-request `x-sim-fault` header is laid over the worker's plan.
    let merged: FaultPlan;
    let faults: &FaultPlan = match req.header("x-sim-fault") {
        None => x.faults,
        Some(spec) => {
            let mut plan = x.faults.clone();
            if let Err(e) = plan.apply_spec(spec) {
                let e = ApiError::bad_request(
                    format!("invalid x-sim-fault header: {e}"),
                    Some("x-sim-fault"),
                );
                return x.send_error(&e).await;
            }
            merged = plan;
            &merged
        }
    };
    let mut x = Exchange {
        sh,
        conn: &mut *x.conn,
        rid: x.rid,
        keep_alive: x.keep_alive,
        faults,
    };
    if faults.garbage {
        sh.engine.counters.fault();
        let _ = x.conn.write_all(GARBAGE).await;
        return Flow::Close;
    }
    if faults.stall {
        sh.engine.counters.fault();
        let _request = sh.engine.track(1);
        x.conn.until_gone().await;
        return Flow::Gone;
    }
    if faults.fail_rate > 0.0 && fastrand::f64() < faults.fail_rate {
        sh.engine.counters.fault();
        let tracker = sh.engine.track(1);
        if let Some(d) = faults.slow_headers {
            let sleep = tokio::time::sleep(d);
            if x.conn.watch(sleep).await.is_err() {
                return Flow::Gone;
            }
        }
        let flow = x.send_error(&ApiError::injected(faults.fail_status)).await;
        tracker.finish(super::engine::Outcome::Faulted);
        return flow;
    }
    if let Err(e) = check_content_type(req) {
        return x.send_error(&e).await;
    }
    match which {
        Generation::Chat | Generation::Completion => {
            let plan = match which {
                Generation::Chat => openai::plan_chat(sh, &req.body, x.rid),
                _ => openai::plan_completion(sh, &req.body, x.rid),
            };
            match plan {
                Ok(plan) => run_generation(&mut x, plan).await,
                Err(e) => x.send_error(&e).await,
            }
        }
        Generation::Embedding => match openai::plan_embedding(sh, &req.body, x.rid) {
            Ok(plan) => run_embedding(&mut x, plan).await,
            Err(e) => x.send_error(&e).await,
        },
    }
}

/// vLLM only takes `application/json` bodies (parameters after `;` allowed); anything else is
/// a 400 (../shared/reference/vllm.md §1).
fn check_content_type(req: &Request) -> Result<(), ApiError> {
    let ok = req
        .header("content-type")
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(JSON));
    if ok {
        Ok(())
    } else {
        Err(ApiError::schema(
            "Unsupported Media Type: Only 'application/json' is allowed",
            None,
        ))
    }
}
