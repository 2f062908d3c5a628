//! Shared by the integration tests: real gateways and real simulators on
//! ephemeral ports, in this process.
#![allow(dead_code)]

pub mod openai;
pub mod raw;

use std::time::{Duration, Instant};

use vllm_gateway::config::Config;
use vllm_gateway::gateway::{self, GatewayHandle, StartOptions};
use vllm_gateway::sim::{SimConfig, SimHandle, Simulator};

pub const MODEL: &str = "test-model";

/// Start a simulator serving `MODEL` with test-friendly timing.
pub fn sim() -> SimHandle {
    sim_with(|_| {})
}

pub fn sim_with(f: impl FnOnce(&mut SimConfig)) -> SimHandle {
    let mut cfg = SimConfig {
        models: vec![MODEL.to_string()],
        ttft: Duration::from_millis(5),
        itl: Duration::from_millis(1),
        ..SimConfig::default()
    };
    f(&mut cfg);
    Simulator::start(cfg).expect("simulator starts")
}

/// Gateway config text: public and admin on port 0, one model over `workers`.
pub fn config_text(workers: &[String], extra_model_keys: &str, extra_top: &str) -> String {
    let list = workers
        .iter()
        .map(|w| format!("{w:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
threads = 1
{extra_top}

[[models]]
name = "{MODEL}"
workers = [{list}]
{extra_model_keys}
"#
    )
}

/// Logs of in-process gateways go through libtest's capture: a passing
/// test stays quiet, a failing one shows what the gateway said. `RUST_LOG`
/// still picks the level.
pub fn init_test_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pingora_core=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .compact()
        .try_init();
}

pub fn start(text: &str) -> GatewayHandle {
    init_test_logs();
    let config =
        Config::parse(text).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{text}"));
    gateway::start(config, StartOptions::embedded()).expect("gateway starts")
}

/// A gateway in front of `sims`, ready to serve.
pub async fn gateway_for(sims: &[&SimHandle]) -> GatewayHandle {
    let urls: Vec<String> = sims.iter().map(|s| s.url()).collect();
    let gw = start(&config_text(&urls, "", ""));
    wait_ready(&gw).await;
    gw
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Poll `/readyz` until it answers 200, or fail after 10 s.
pub async fn wait_ready(gw: &GatewayHandle) {
    let c = client();
    let url = format!("{}/readyz", gw.admin_url());
    wait_until(Duration::from_secs(10), || {
        let c = c.clone();
        let url = url.clone();
        async move {
            c.get(&url)
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        }
    })
    .await
    .expect("gateway ready");
}

/// Poll `cond` every 5 ms until it holds; Err after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, mut cond: F) -> Result<Duration, ()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn chat_body(extra: serde_json::Value) -> serde_json::Value {
    let mut body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something."}],
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

/// POST a chat request; returns status, headers and body text.
pub async fn post_chat(
    gw: &GatewayHandle,
    body: &serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    post_json(gw, "/v1/chat/completions", body).await
}

/// POST a chat request with an optional (header, value) credential.
pub async fn chat_with(
    gw: &GatewayHandle,
    auth: Option<(&str, &str)>,
    body: &serde_json::Value,
) -> reqwest::Response {
    let mut r = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(body);
    if let Some((h, v)) = auth {
        r = r.header(h, v);
    }
    r.send().await.unwrap()
}

/// POST `body` to `path` on the gateway's public listener; returns status,
/// headers and body text.
pub async fn post_json(
    gw: &GatewayHandle,
    path: &str,
    body: &serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = client()
        .post(format!("{}{path}", gw.url()))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// Concatenated `delta.content` of choice 0 over an SSE body.
pub fn sse_content(body: &str) -> String {
    sse_data(body)
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["index"] == 0))
                .and_then(|c| c["delta"]["content"].as_str().map(String::from))
        })
        .collect()
}

pub async fn metrics_text(gw: &GatewayHandle) -> String {
    client()
        .get(format!("{}/metrics", gw.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Value of one sample line (`name{labels} value`) whose text starts with `prefix`.
pub fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The last chat request a simulator received (health checks and load polls
/// reach it too, so "the last request" is not enough).
pub fn last_chat(s: &SimHandle) -> vllm_gateway::sim::ReceivedRequest {
    s.received()
        .into_iter()
        .rev()
        .find(|r| r.method == "POST" && r.path == "/v1/chat/completions")
        .expect("the simulator received a chat request")
}

/// Requests of `MODEL` the gateway has finished logging (all endpoints and
/// statuses).
pub async fn logged_requests(gw: &GatewayHandle) -> f64 {
    metrics_text(gw)
        .await
        .lines()
        .filter(|l| {
            l.starts_with("vllm_gateway_requests_total{")
                && l.contains(&format!("model=\"{MODEL}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Wait until `n` requests are logged, so that counters that must stay at
/// 0 can be read without racing the logging phase (it updates every counter
/// of a request in one stretch without awaiting).
pub async fn wait_logged(gw: &GatewayHandle, n: f64) {
    let done = wait_until(Duration::from_secs(5), || async {
        logged_requests(gw).await >= n
    })
    .await;
    if done.is_err() {
        panic!(
            "only {} requests logged, expected {n}",
            logged_requests(gw).await
        );
    }
}
