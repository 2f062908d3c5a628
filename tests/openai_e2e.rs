//! End to end with the official `openai` Python client (installed by
//! `tests/run.sh` into target/e2e-venv).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

/// The interpreter with `openai` installed: `VLLM_GATEWAY_PYTHON`, or the
/// venv `tests/run.sh` creates.
fn python() -> String {
    if let Ok(p) = std::env::var("VLLM_GATEWAY_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/e2e-venv/bin/python");
    assert!(
        std::path::Path::new(venv).exists(),
        "the openai client is not installed: run `bash tests/run.sh` (it creates {venv})"
    );
    venv.to_string()
}

pub async fn run_client(base_url: &str, scenario: &str, key: Option<&str>) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/openai_client.py");
    let mut cmd = Command::new(python());
    cmd.arg(script).arg(base_url).arg(MODEL).arg(scenario);
    if let Some(k) = key {
        cmd.arg(k);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "openai client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_streaming_and_not() {
    let s = sim();
    let gw = gateway_for(&[&s]).await;
    let out = run_client(&gw.url(), "basic", None).await;
    let text = out["text"].as_str().unwrap();
    assert!(!text.is_empty());
    assert_eq!(out["stream_text"], text, "{out}");
    assert!(out["stream_chunks"].as_u64().unwrap() > 2);
    assert!(out["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(out["models"], serde_json::json!([MODEL]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_raises_the_right_errors() {
    let s = sim();
    let gw = gateway_for(&[&s]).await;
    let out = run_client(&gw.url(), "errors", None).await;
    assert_eq!(out["not_found"]["code"], "model_not_found", "{out}");
    // Validation errors come back as BadRequestError naming the field.
    assert_eq!(out["bad_request"]["param"], "temperature", "{out}");
    assert_eq!(out["bad_request"]["type"], "invalid_request_error", "{out}");
}
