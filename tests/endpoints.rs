//! The other vLLM endpoints: `/v1/completions` and `/v1/embeddings` go
//! through the same pools by `model`, with the same body checks; anything
//! else on the public listener is a 404 OpenAI error. Streams are framed so
//! the client connection can carry the next request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod pool_common;

use std::time::Duration;

use common::*;
use pool_common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vllm_gateway::sim::SimHandle;

fn received_on(
    sims: &[&SimHandle],
    path: &str,
) -> Vec<(usize, vllm_gateway::sim::ReceivedRequest)> {
    sims.iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.received()
                .into_iter()
                .filter(|r| r.path == path)
                .map(move |r| (i, r))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_are_routed_by_model_through_the_pool() {
    let (a, b) = (sim(), sim());
    let gw = gateway_with(&[&a, &b], "").await;
    let body = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 5, "seed": 3});
    let (status, headers, text) = post_json(&gw, "/v1/completions", &body).await;
    assert_eq!(status, 200, "{text}");
    assert!(headers.contains_key("x-request-id"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert!(!v["choices"][0]["text"].as_str().unwrap().is_empty());
    let got = received_on(&[&a, &b], "/v1/completions");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.json().unwrap(), body);

    let (status, headers, text) = post_json(
        &gw,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "Hi", "stream": true, "max_tokens": 4}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    // The gateway asked for usage to count tokens, and took the usage-only
    // chunk back out since the client did not ask for it.
    assert!(!text.contains("\"usage\":{"), "{text}");
    assert_eq!(received_on(&[&a, &b], "/v1/completions").len(), 2);
    wait_logged(&gw, 2.0).await;
    assert_metric(&gw, &decisions("least_loaded"), 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_routed_by_model_and_spread_over_the_pool() {
    let (a, b) = (sim(), sim());
    let gw = gateway_with(&[&a, &b], "").await;
    // Held embeddings count as load like chats: 8 split 4/4.
    let url = format!("{}/v1/embeddings", gw.url());
    let held: Vec<_> = (0..8)
        .map(|i| {
            hold(
                url.clone(),
                json!({"model": MODEL, "input": format!("text {i}")}),
                &[("x-sim-fault", "stall")],
            )
        })
        .collect();
    wait_until(Duration::from_secs(10), || async {
        workers(&gw).iter().map(|w| w.in_flight()).sum::<u32>() == 8
    })
    .await
    .expect("8 embeddings in flight");
    let loads: Vec<u32> = workers(&gw).iter().map(|w| w.in_flight()).collect();
    assert_eq!(loads, vec![4, 4], "{:?}", requests_of(&[&a, &b]));
    for h in held {
        h.abort();
    }

    // A batch passes through as sent. (It comes last: the worker counts a
    // batch of 2 as 2 running requests, which would read as another
    // replica's load at the next scrape; see Worker::foreign_load.)
    let body = json!({"model": MODEL, "input": ["first text", "second text"]});
    let (status, _, text) = post_json(&gw, "/v1/embeddings", &body).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let sent: Vec<_> = received_on(&[&a, &b], "/v1/embeddings")
        .into_iter()
        .filter(|(_, r)| r.header("x-sim-fault").is_none())
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.json().unwrap(), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_embeddings_bodies_are_checked_before_any_worker() {
    let s = sim();
    let urls = vec![s.url()];
    let gw = start(&config_text(&urls, "", "max_body_bytes = 2000"));
    wait_ready(&gw).await;
    for path in ["/v1/completions", "/v1/embeddings"] {
        let field = if path == "/v1/completions" {
            "prompt"
        } else {
            "input"
        };
        let (status, _, text) = post_json(&gw, path, &json!({field: "x"})).await;
        assert_eq!(status, 400, "{path}: {text}");
        let e = openai_error(&text);
        assert_eq!(e["param"], "model", "{text}");
        assert_eq!(e["code"], "missing_required_parameter");

        let (status, _, text) = post_json(&gw, path, &json!({"model": "nope", field: "x"})).await;
        assert_eq!(status, 404, "{path}: {text}");
        assert_eq!(openai_error(&text)["code"], "model_not_found");

        let (status, _, text) = post_json(&gw, path, &json!({"model": 7, field: "x"})).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert_eq!(openai_error(&text)["param"], "model");

        let (status, _, text) =
            post_json(&gw, path, &json!({"model": MODEL, field: "x".repeat(3000)})).await;
        assert_eq!(status, 413, "{path}: {text}");
        assert_eq!(openai_error(&text)["code"], "request_too_large");

        let r = client()
            .post(format!("{}{path}", gw.url()))
            .header("content-type", "application/json")
            .body("{\"model\": ")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        openai_error(&r.text().await.unwrap());
    }
    assert_eq!(s.stats().requests, 0, "nothing reached the worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_else_on_the_public_listener_is_a_404_openai_error() {
    let s = sim();
    let gw = gateway_for(&[&s]).await;
    let c = client();
    for (method, path) in [
        ("POST", "/v1/responses"),
        ("POST", "/tokenize"),
        ("GET", "/health"),
        ("GET", "/readyz"),
        ("GET", "/version"),
        ("GET", "/v1/models/test-model"),
        ("POST", "/v1/chat/completions/extra"),
        ("GET", "/"),
    ] {
        let r = c
            .request(method.parse().unwrap(), format!("{}{path}", gw.url()))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let e = openai_error(&r.text().await.unwrap());
        assert_eq!(e["code"], "unknown_url", "{method} {path}");
        assert_eq!(e["type"], "invalid_request_error");
    }
    assert_eq!(s.stats().requests, 0);
    let forwarded: Vec<String> = s
        .received()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p != "/health" && p != "/metrics" && p != "/v1/models")
        .collect();
    assert!(forwarded.is_empty(), "{forwarded:?}");
}

/// Read one chunked HTTP/1.1 response off `c`; returns it raw.
async fn read_chunked_response(c: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while !out.ends_with(b"\r\n0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "closed early:\n{}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_stream_leaves_the_client_connection_reusable() {
    let s = sim();
    let gw = gateway_for(&[&s]).await;
    let body = serde_json::to_vec(&chat_body(json!({"stream": true, "max_tokens": 3}))).unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
        body.len(),
        String::from_utf8(body).unwrap()
    );
    let mut c = tokio::net::TcpStream::connect(gw.public_addr)
        .await
        .unwrap();
    for _ in 0..2 {
        c.write_all(request.as_bytes()).await.unwrap();
        let raw = read_chunked_response(&mut c).await;
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        assert!(
            raw.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{raw}"
        );
        assert!(raw.contains("data: [DONE]"), "{raw}");
    }
    assert_eq!(s.stats().requests, 2);
}
