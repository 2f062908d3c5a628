//! End to end with the official `openai` Python client (installed by
//! `tests/run.sh` into target/e2e-venv).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::openai::run_client;
use common::*;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_raises_an_in_band_stream_error() {
    let s = sim();
    let gw = gateway_for(&[&s]).await;
    let out = run_client(&gw.url(), "stream_error", None).await;
    assert_eq!(out["raised"], "APIError", "{out}");
    assert_eq!(out["chunks_before_error"], 0, "{out}");
    assert!(
        out["message"].as_str().unwrap().contains("test-model"),
        "{out}"
    );
}
