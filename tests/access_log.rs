//! The access log names the worker each request went to and why it was
//! chosen. The test installs its own JSON subscriber for the whole process
//! (this file is its own test binary, so no other test's logging mixes in;
//! the gateway's own `telemetry::init` then finds a subscriber in place and
//! leaves it) and reads the `access` lines back by request id.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod pool_common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use pool_common::*;
use serde_json::{json, Value};
use vllm_gateway::sim::SimHandle;

#[derive(Clone)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process's log output, captured from the first call on.
fn captured() -> Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let c = Captured(Arc::new(Mutex::new(Vec::new())));
        let writer = c.clone();
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .init();
        c
    })
    .clone()
}

/// The access line of request `id`, once it is written.
async fn access_line(id: &str) -> Value {
    let logs = captured();
    let find = || {
        let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["target"] == "access" && v["request_id"] == id)
    };
    wait_until(Duration::from_secs(5), || async { find().is_some() })
        .await
        .unwrap_or_else(|_| panic!("no access line for {id}"));
    find().unwrap()
}

async fn send(gw: &vllm_gateway::gateway::GatewayHandle, id: &str, body: &Value) -> u16 {
    client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .header("x-request-id", id)
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The simulator that received request `id`.
fn receiver<'a>(sims: &[&'a SimHandle], id: &str) -> &'a SimHandle {
    let got: Vec<&SimHandle> = sims
        .iter()
        .copied()
        .filter(|s| {
            s.received()
                .iter()
                .any(|r| r.path == "/v1/chat/completions" && r.header("x-request-id") == Some(id))
        })
        .collect();
    assert_eq!(got.len(), 1, "{id} reached {} workers", got.len());
    got[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_line_names_the_worker_and_the_routing_reason() {
    captured();
    let (a, b) = (sim(), sim());
    let gw = gateway_with(&[&a, &b], "").await;
    for i in 0..4 {
        let id = format!("ll-{i}");
        assert_eq!(
            send(&gw, &id, &chat_body(json!({"max_tokens": 1}))).await,
            200
        );
        let line = access_line(&id).await;
        assert_eq!(
            line["worker"],
            receiver(&[&a, &b], &id).url().as_str(),
            "{line}"
        );
        assert_eq!(line["routing"], "least_loaded", "{line}");
        assert_eq!(line["status"], 200);
        assert_eq!(line["attempts"], 1);
        assert_eq!(line["model"], MODEL);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_line_shows_affinity_hits() {
    captured();
    let (a, b) = (sim(), sim());
    let gw = gateway_with(
        &[&a, &b],
        "routing = \"prefix_affinity\"\naffinity_prefix_bytes = 512",
    )
    .await;
    let prompt = system_prompt(5, 800);
    let mut workers_seen = Vec::new();
    for i in 0..3 {
        let id = format!("aff-{i}");
        let body = tenant_chat(&prompt, &format!("turn {i}"), json!({"max_tokens": 1}));
        assert_eq!(send(&gw, &id, &body).await, 200);
        let line = access_line(&id).await;
        assert_eq!(line["routing"], "affinity_hit", "{line}");
        assert_eq!(line["worker"], receiver(&[&a, &b], &id).url().as_str());
        workers_seen.push(line["worker"].as_str().unwrap().to_string());
    }
    workers_seen.dedup();
    assert_eq!(workers_seen.len(), 1, "one worker for one prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_logs_the_worker_that_answered() {
    captured();
    let live = sim();
    let dead_worker = dead_worker();
    let dead = dead_worker.url.clone();
    let gw = start(&config_text(
        &[dead.clone(), live.url()],
        "failures_to_eject = 1000\nhealth_interval = \"1h\"",
        "",
    ));
    wait_ready(&gw).await;
    for i in 0..40 {
        let id = format!("retry-{i}");
        assert_eq!(
            send(&gw, &id, &chat_body(json!({"max_tokens": 1}))).await,
            200
        );
        let line = access_line(&id).await;
        assert_eq!(line["worker"], live.url().as_str(), "{line}");
        if line["retries"] == 1 {
            assert_eq!(line["attempts"], 2, "{line}");
            // `routing` is why the worker that answered was chosen: the
            // retry that found the live worker.
            assert_eq!(line["routing"], "retry", "{line}");
            return;
        }
        assert_eq!(line["attempts"], 1, "{line}");
    }
    panic!("the dead worker was never picked");
}
