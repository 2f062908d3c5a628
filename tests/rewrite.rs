//! The max-token rewrite, as the worker sees it: exactly one limit field,
//! per-model defaults and caps, clamp or reject, and the context length
//! (../shared/reference/vllm.md §3). Prompt sizes near the context edge are
//! counted exactly through the worker's /tokenize.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use vllm_gateway::gateway::GatewayHandle;
use vllm_gateway::sim::SimHandle;

const MML: u32 = 1000;

async fn setup(model_keys: &str) -> (SimHandle, GatewayHandle) {
    let s = sim_with(|c| c.max_model_len = MML);
    let gw = start(&config_text(&[s.url()], model_keys, ""));
    wait_ready(&gw).await;
    // The context length is learned from the worker's /v1/models.
    let c = client();
    let url = format!("{}/v1/models", gw.url());
    wait_until(Duration::from_secs(10), || {
        let c = c.clone();
        let url = url.clone();
        async move {
            let v: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
            v["data"][0]["max_model_len"].as_u64().is_some()
        }
    })
    .await
    .expect("context length learned");
    (s, gw)
}

/// Send `body`; returns (status, answer, what the worker received if anything).
async fn send(s: &SimHandle, gw: &GatewayHandle, body: &Value) -> (u16, Value, Option<Value>) {
    s.clear_received();
    let (status, _, text) = post_chat(gw, body).await;
    let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let got = s
        .received()
        .into_iter()
        .rev()
        .find(|r| r.path == "/v1/chat/completions")
        .map(|r| r.json().unwrap());
    (status, answer, got)
}

fn limits(v: &Value) -> (Option<u64>, Option<u64>) {
    (
        v["max_tokens"].as_u64(),
        v["max_completion_tokens"].as_u64(),
    )
}

fn long_prompt(words: usize) -> Value {
    let text = (0..words)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    json!([{"role": "user", "content": text}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_fields_become_one() {
    let (s, gw) = setup("").await;
    // Neither field, no default: the body is forwarded as received; vLLM
    // takes the rest of the context itself.
    let body = chat_body(json!({"seed": 1}));
    let (status, _, got) = send(&s, &gw, &body).await;
    assert_eq!(status, 200);
    assert_eq!(got.unwrap(), body);
    // max_tokens alone: already the one field; unchanged.
    let (_, _, got) = send(&s, &gw, &chat_body(json!({"max_tokens": 20}))).await;
    assert_eq!(limits(&got.unwrap()), (Some(20), None));
    // max_completion_tokens alone: written as max_tokens (the default limit_field).
    let (_, _, got) = send(&s, &gw, &chat_body(json!({"max_completion_tokens": 20}))).await;
    assert_eq!(limits(&got.unwrap()), (Some(20), None));
    // Both: max_completion_tokens wins (vLLM 0.33's order), the other is removed.
    let (_, _, got) = send(
        &s,
        &gw,
        &chat_body(json!({"max_completion_tokens": 20, "max_tokens": 30})),
    )
    .await;
    assert_eq!(limits(&got.unwrap()), (Some(20), None));
    // Everything else arrives untouched.
    let (_, _, got) = send(
        &s,
        &gw,
        &chat_body(json!({"max_completion_tokens": 5, "x_custom": {"k": [1, "two"]}, "top_k": 3})),
    )
    .await;
    let got = got.unwrap();
    assert_eq!(got["x_custom"], json!({"k": [1, "two"]}));
    assert_eq!(got["top_k"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_field_can_be_max_completion_tokens() {
    let (s, gw) = setup("limit_field = \"max_completion_tokens\"").await;
    let (_, _, got) = send(&s, &gw, &chat_body(json!({"max_tokens": 30}))).await;
    assert_eq!(limits(&got.unwrap()), (None, Some(30)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_and_cap_with_clamp() {
    let (s, gw) = setup("default_max_tokens = 50\nmax_tokens_cap = 100").await;
    let (_, _, got) = send(&s, &gw, &chat_body(json!({}))).await;
    assert_eq!(limits(&got.unwrap()), (Some(50), None));
    let (status, _, got) = send(&s, &gw, &chat_body(json!({"max_tokens": 500}))).await;
    assert_eq!(status, 200);
    assert_eq!(limits(&got.unwrap()), (Some(100), None));
    let (_, _, got) = send(&s, &gw, &chat_body(json!({"max_completion_tokens": 100}))).await;
    assert_eq!(limits(&got.unwrap()), (Some(100), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_with_reject_names_the_field_the_client_used() {
    let (s, gw) = setup("max_tokens_cap = 100\non_exceed = \"reject\"").await;
    let (status, answer, got) = send(&s, &gw, &chat_body(json!({"max_tokens": 101}))).await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["param"], "max_tokens");
    assert!(got.is_none());
    let (status, answer, _) =
        send(&s, &gw, &chat_body(json!({"max_completion_tokens": 101}))).await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["param"], "max_completion_tokens");
    let (status, _, got) = send(&s, &gw, &chat_body(json!({"max_tokens": 100}))).await;
    assert_eq!(status, 200);
    assert_eq!(limits(&got.unwrap()), (Some(100), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_overflow_is_clamped_to_what_is_left() {
    let (s, gw) = setup("").await;
    let messages = long_prompt(300);
    let prompt = u64::from(vllm_gateway::sim::count_prompt_tokens(&messages));
    assert!(prompt < u64::from(MML));
    let (status, answer, got) = send(
        &s,
        &gw,
        &chat_body(json!({"messages": messages, "max_tokens": 900})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    // Counted exactly, so the limit is exactly the rest of the context.
    assert_eq!(limits(&got.unwrap()), (Some(u64::from(MML) - prompt), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_overflow_with_reject_is_context_length_exceeded() {
    let (s, gw) = setup("on_exceed = \"reject\"").await;
    let messages = long_prompt(300);
    let (status, answer, got) = send(
        &s,
        &gw,
        &chat_body(json!({"messages": messages, "max_tokens": 900})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["code"], "context_length_exceeded");
    assert_eq!(answer["error"]["param"], "messages");
    assert!(got.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_that_fills_the_context_never_reaches_the_worker() {
    let (s, gw) = setup("").await;
    let messages = long_prompt(1200);
    let (status, answer, got) = send(&s, &gw, &chat_body(json!({"messages": messages}))).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "context_length_exceeded");
    assert!(
        got.is_none(),
        "vLLM would 400 it: it must not leave the gateway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_context_length_overrides_the_workers() {
    let (s, gw) = setup("max_model_len = 400").await;
    let messages = long_prompt(100);
    let prompt = u64::from(vllm_gateway::sim::count_prompt_tokens(&messages));
    let (status, _, got) = send(
        &s,
        &gw,
        &chat_body(json!({"messages": messages, "max_tokens": 390})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(limits(&got.unwrap()), (Some(400 - prompt), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_prompts_need_no_exact_count() {
    let (s, gw) = setup("").await;
    s.clear_received();
    let (status, _, _) = send(&s, &gw, &chat_body(json!({"max_tokens": 100}))).await;
    assert_eq!(status, 200);
    assert!(
        !s.received().iter().any(|r| r.path == "/tokenize"),
        "a prompt that certainly fits must not cost a /tokenize round trip"
    );
}
