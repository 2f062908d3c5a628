//! Helpers for the pool tests (routing, health, retries, timeouts,
//! discovery, endpoints): held requests, metric look-ups by labels, and a
//! view of the gateway's own worker state.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use vllm_gateway::gateway::{self, GatewayHandle, StartOptions};
use vllm_gateway::pool::Worker;
use vllm_gateway::sim::SimHandle;

use super::common::*;

/// Start a gateway with explicit options (a resolver of the test's own).
pub fn start_with(text: &str, options: StartOptions) -> GatewayHandle {
    vllm_gateway::telemetry::init(vllm_gateway::telemetry::LogFormat::Text);
    let config = vllm_gateway::config::Config::parse(text)
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{text}"));
    gateway::start(config, options).expect("gateway starts")
}

/// A gateway over `sims` with extra model keys, ready to serve.
pub async fn gateway_with(sims: &[&SimHandle], model_keys: &str) -> GatewayHandle {
    let urls: Vec<String> = sims.iter().map(|s| s.url()).collect();
    let gw = start(&config_text(&urls, model_keys, ""));
    wait_ready(&gw).await;
    gw
}

/// The gateway's workers for `MODEL`, in pool order.
pub fn workers(gw: &GatewayHandle) -> Vec<Arc<Worker>> {
    gw.shared()
        .snapshot()
        .pool(MODEL)
        .map(|p| p.members.iter().map(|m| Arc::clone(&m.worker)).collect())
        .unwrap_or_default()
}

/// The gateway's worker for `url`.
pub fn worker(gw: &GatewayHandle, url: &str) -> Arc<Worker> {
    workers(gw)
        .into_iter()
        .find(|w| &*w.url == url)
        .unwrap_or_else(|| panic!("{url} is not in the pool"))
}

/// A counter or gauge sample by its full `name{labels}` (labels in the
/// alphabetical order Prometheus' encoder writes); 0 when absent.
pub async fn metric(gw: &GatewayHandle, series: &str) -> f64 {
    metric_value(&metrics_text(gw).await, &format!("{series} ")).unwrap_or(0.0)
}

pub fn decisions(reason: &str) -> String {
    format!("vllm_gateway_routing_decisions_total{{model=\"{MODEL}\",reason=\"{reason}\"}}")
}

pub fn retries() -> String {
    format!("vllm_gateway_retries_total{{model=\"{MODEL}\"}}")
}

pub fn upstream_errors(kind: &str) -> String {
    format!("vllm_gateway_upstream_errors_total{{kind=\"{kind}\",model=\"{MODEL}\"}}")
}

/// The state `/metrics` reports for a worker of `MODEL` (the one whose
/// `vllm_gateway_worker_state` sample is 1), or None if it is not listed.
pub async fn reported_state(gw: &GatewayHandle, url: &str) -> Option<String> {
    reported_state_in(&metrics_text(gw).await, MODEL, url)
}

pub fn reported_state_in(text: &str, model: &str, url: &str) -> Option<String> {
    let mut listed = false;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("vllm_gateway_worker_state{") else {
            continue;
        };
        if !rest.contains(&format!("model=\"{model}\""))
            || !rest.contains(&format!("worker=\"{url}\""))
        {
            continue;
        }
        listed = true;
        if line.ends_with(" 1") {
            let state = rest.split("state=\"").nth(1)?.split('"').next()?;
            return Some(state.to_string());
        }
    }
    listed.then(|| "none".to_string())
}

/// Wait until `/metrics` reports `state` for `url`.
pub async fn wait_state(gw: &GatewayHandle, url: &str, state: &str, limit: Duration) {
    let got = wait_until(limit, || async {
        reported_state(gw, url).await.as_deref() == Some(state)
    })
    .await;
    if got.is_err() {
        panic!(
            "{url} never reached state {state}; now {:?}",
            reported_state(gw, url).await
        );
    }
}

/// Send a request and hold its answer open (reading whatever arrives) until
/// the task is aborted: a client that is still waiting.
pub fn hold(
    url: String,
    body: serde_json::Value,
    headers: &[(&'static str, &'static str)],
) -> tokio::task::JoinHandle<()> {
    let headers: Vec<(&'static str, &'static str)> = headers.to_vec();
    tokio::spawn(async move {
        let mut req = client().post(url).json(&body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Ok(r) = req.send().await {
            let mut s = r.bytes_stream();
            while let Some(Ok(_)) = s.next().await {}
        }
        std::future::pending::<()>().await;
    })
}

/// Generation requests each simulator received so far.
pub fn requests_of(sims: &[&SimHandle]) -> Vec<u64> {
    sims.iter().map(|s| s.stats().requests).collect()
}

/// The `error` object of an OpenAI error body.
pub fn openai_error(body: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    let e = v["error"].clone();
    assert!(e.is_object(), "not an OpenAI error: {body}");
    for key in ["message", "type", "param", "code"] {
        assert!(e.get(key).is_some(), "error without `{key}`: {body}");
    }
    e
}

/// A chat body with a system prompt (the prefix) and a user turn.
pub fn tenant_chat(system: &str, user: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut body = chat_body(extra);
    body["messages"] = serde_json::json!([
        {"role": "system", "content": system},
        {"role": "user", "content": user},
    ]);
    body
}

/// A deterministic system prompt of about `bytes` bytes for tenant `t`.
pub fn system_prompt(t: usize, bytes: usize) -> String {
    let mut s = format!("You are assistant number {t} of tenant {t}. ");
    let words = [
        "policy", "refund", "invoice", "shipping", "account", "warranty", "support", "billing",
        "contract", "delivery", "schedule", "priority",
    ];
    let mut i = t * 7 + 3;
    while s.len() < bytes {
        s.push_str(words[i % words.len()]);
        s.push(' ');
        i = i.wrapping_mul(31).wrapping_add(t + 11);
    }
    s
}

/// Assert that a series reaches `expected`. Counters are updated in the
/// logging phase, just after the answer's last byte, so a client can read
/// `/metrics` a moment before its own request is counted: poll briefly.
pub async fn assert_metric(gw: &GatewayHandle, series: &str, expected: f64) {
    let reached = wait_until(Duration::from_secs(5), || async {
        metric(gw, series).await == expected
    })
    .await;
    if reached.is_err() {
        panic!(
            "{series} is {}, expected {expected}",
            metric(gw, series).await
        );
    }
}

/// A worker address that refuses connections: a bound socket that never
/// listens. It keeps the port for as long as it lives, so no simulator
/// another test starts in parallel can take it over (a stopped simulator's
/// port can be handed out again at once).
pub struct DeadWorker {
    _socket: socket2::Socket,
    pub url: String,
}

pub fn dead_worker() -> DeadWorker {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    DeadWorker {
        _socket: socket,
        url: format!("http://{addr}"),
    }
}
