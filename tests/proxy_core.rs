//! The core proxy path against real simulators: non-streaming and streaming
//! answers, inline SSE delivery, request ids, errors the gateway makes itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::raw::{request, RawConn};
use common::*;
use futures_util::StreamExt;
use serde_json::json;

#[tokio::test]
async fn non_streaming_passes_the_answer_through() {
    let s = sim();
    let gw = gateway_for(&[&s]).await;
    let (status, headers, body) = post_chat(&gw, &chat_body(json!({"seed": 7}))).await;
    assert_eq!(status, 200, "{body}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert!(!v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(s.stats().requests, 1);
}

#[tokio::test]
async fn stream_assembles_to_the_same_text_and_ends_with_done() {
    let s = sim();
    let gw = gateway_for(&[&s]).await;
    let (_, _, plain) = post_chat(&gw, &chat_body(json!({"seed": 42}))).await;
    let plain: serde_json::Value = serde_json::from_str(&plain).unwrap();
    let (status, headers, streamed) =
        post_chat(&gw, &chat_body(json!({"seed": 42, "stream": true}))).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(headers.get("content-length").is_none());
    let events = sse_data(&streamed);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{streamed}"
    );
    assert_eq!(
        sse_content(&streamed),
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

#[tokio::test]
async fn back_to_back_streams_on_one_connection_each_end_whole() {
    // A stream's last piece is held in the client stream to leave with the
    // end of the body: streams of every length, with and without the usage
    // chunk, on one kept-alive connection, each arrive whole and alone.
    // (A piece held in the middle of a stream is what
    // `tokens_reach_the_client_as_they_are_made` catches.)
    let s = sim_with(|c| c.output_tokens = (1, 5));
    let gw = gateway_for(&[&s]).await;
    let mut conn = common::raw::RawConn::connect(gw.public_addr).await;
    for i in 0..20 {
        let body = chat_body(json!({
            "stream": true,
            "seed": i,
            "stream_options": {"include_usage": i % 2 == 0},
        }));
        conn.send(&common::raw::chat_request(body.to_string().as_bytes()))
            .await
            .unwrap();
        let r = conn
            .response(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("stream {i} did not end whole: {e:?}"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        let events = sse_data(&r.text());
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{i}");
        assert_eq!(
            events.iter().filter(|e| e.contains("\"usage\":{")).count(),
            usize::from(i % 2 == 0),
            "stream {i}: the usage chunk exactly when asked for"
        );
    }
}

#[tokio::test]
async fn tokens_reach_the_client_as_they_are_made() {
    // 6 tokens, 150 ms apart: the first must arrive long before the last is
    // even produced, or the gateway is buffering the stream.
    let s = sim_with(|c| {
        c.itl = Duration::from_millis(150);
        c.output_tokens = (6, 6);
    });
    let gw = gateway_for(&[&s]).await;
    let started = Instant::now();
    let resp = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(&chat_body(json!({"stream": true, "seed": 1})))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        let content_events = sse_data(&text)
            .iter()
            .filter(|d| d.contains("\"content\":\"") && !d.contains("\"content\":\"\""))
            .count();
        while arrivals.len() < content_events {
            arrivals.push(started.elapsed());
        }
    }
    assert!(arrivals.len() >= 6, "{text}");
    let first = arrivals[0];
    let last = *arrivals.last().unwrap();
    // The last token is produced ~750 ms after the first.
    assert!(
        last - first >= Duration::from_millis(600),
        "tokens arrived bunched together: {arrivals:?}"
    );
    for pair in arrivals.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(50),
            "{arrivals:?}"
        );
    }
}

#[tokio::test]
async fn request_id_is_kept_or_generated_and_reaches_the_worker() {
    let s = sim();
    let gw = gateway_for(&[&s]).await;
    let r = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .header("x-request-id", "client-chosen-id-1")
        .json(&chat_body(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-chosen-id-1");
    let v: serde_json::Value = r.json().await.unwrap();
    // vLLM builds its answer id from the X-Request-Id it receives (vllm.md §9).
    assert_eq!(v["id"], "chatcmpl-client-chosen-id-1");
    let sent = last_chat(&s);
    assert!(sent
        .headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("x-request-id") && v == "client-chosen-id-1"));

    let (_, headers, _) = post_chat(&gw, &chat_body(json!({}))).await;
    let generated = headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 32);
    // An id with characters that do not belong in a log line is replaced.
    let r = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .header("x-request-id", "bad id with spaces")
        .json(&chat_body(json!({})))
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "bad id with spaces");
}

#[tokio::test]
async fn unknown_model_is_an_openai_404() {
    let s = sim();
    let gw = gateway_for(&[&s]).await;
    let (status, _, body) = post_chat(&gw, &chat_body(json!({"model": "no-such-model"}))).await;
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["param"], "model");
    assert_eq!(s.stats().requests, 0, "nothing may reach a worker");
}

#[tokio::test]
async fn too_large_body_is_413_and_never_reaches_a_worker() {
    let s = sim();
    let urls = vec![s.url()];
    let gw = start(&config_text(&urls, "", "max_body_bytes = 1000"));
    wait_ready(&gw).await;
    let big = "x".repeat(2000);
    let (status, _, body) = post_chat(
        &gw,
        &chat_body(json!({"messages": [{"role": "user", "content": big}]})),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");
    // A chunked body (no Content-Length) is cut off the same way.
    let chunks = futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 200]))),
    );
    let r = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(s.stats().requests, 0);
}

#[tokio::test]
async fn worker_down_is_a_prompt_openai_error() {
    let s = sim();
    let url = s.url();
    s.stop();
    let gw = start(&config_text(&[url], "", ""));
    let started = Instant::now();
    let (status, _, body) = post_chat(&gw, &chat_body(json!({}))).await;
    assert!(status == 502 || status == 503, "{status} {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "server_error");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn models_lists_configured_models_with_context_length() {
    let s = sim_with(|c| c.max_model_len = 8192);
    let gw = gateway_for(&[&s]).await;
    // max_model_len is learned from the worker's /v1/models by the health check.
    let c = client();
    let url = format!("{}/v1/models", gw.url());
    wait_until(Duration::from_secs(10), || {
        let c = c.clone();
        let url = url.clone();
        async move {
            let v: serde_json::Value = c.get(&url).send().await.unwrap().json().await.unwrap();
            v["data"][0]["max_model_len"] == 8192
        }
    })
    .await
    .expect("max_model_len learned");
    let v: serde_json::Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["object"], "model");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_openai_errors() {
    let s = sim();
    let gw = gateway_for(&[&s]).await;
    let r = client()
        .get(format!("{}/metrics", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "/metrics must not be on the public listener"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unknown_url");
    let r = client()
        .get(format!("{}/v1/chat/completions", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unsupported_media_type");
}

#[tokio::test]
async fn metrics_count_requests_and_latency() {
    let s = sim();
    let gw = gateway_for(&[&s]).await;
    for _ in 0..3 {
        post_chat(&gw, &chat_body(json!({}))).await;
    }
    post_chat(&gw, &chat_body(json!({"model": "nope"}))).await;
    // Counters move in the logging phase, just after the last byte.
    let unknown = "vllm_gateway_requests_total{endpoint=\"chat_completions\",key=\"-\",model=\"unknown\",status=\"4xx\"}";
    wait_logged(&gw, 3.0).await;
    wait_until(Duration::from_secs(5), || async {
        metric_value(&metrics_text(&gw).await, unknown).is_some()
    })
    .await
    .expect("the 404 is counted");
    let text = metrics_text(&gw).await;
    let ok = format!(
        "vllm_gateway_requests_total{{endpoint=\"chat_completions\",key=\"-\",model=\"{MODEL}\",status=\"2xx\"}}"
    );
    assert_eq!(metric_value(&text, &ok), Some(3.0), "{text}");
    assert_eq!(metric_value(&text, unknown), Some(1.0));
    let count = format!(
        "vllm_gateway_request_duration_seconds_count{{endpoint=\"chat_completions\",model=\"{MODEL}\"}}"
    );
    assert_eq!(metric_value(&text, &count), Some(3.0));
    let healthz = client()
        .get(format!("{}/healthz", gw.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
}

#[tokio::test]
async fn readyz_fails_while_a_model_has_no_healthy_worker() {
    let s = sim();
    let gw = start(&config_text(
        &[s.url()],
        "health_interval = \"50ms\"\nunhealthy_after = 1\nhealthy_after = 1",
        "",
    ));
    wait_ready(&gw).await;
    let c = client();
    let url = format!("{}/readyz", gw.admin_url());
    let addr = s.addr();
    s.stop();
    wait_until(Duration::from_secs(5), || {
        let c = c.clone();
        let url = url.clone();
        async move { c.get(&url).send().await.unwrap().status() == 503 }
    })
    .await
    .expect("readyz fails once the only worker is down");
    let r = c.get(&url).send().await.unwrap();
    assert!(r.text().await.unwrap().contains(MODEL));
    // The worker comes back on the same port: ready again.
    let _back = sim_with(|c| c.listen = Some(addr));
    wait_until(Duration::from_secs(5), || {
        let c = c.clone();
        let url = url.clone();
        async move { c.get(&url).send().await.unwrap().status() == 200 }
    })
    .await
    .expect("ready again after the worker returns");
}

/// A worker that answers every request (health checks included) with the
/// same JSON and the headers a real one might add: uvicorn's `server` and
/// `date`, and an `X-Accel-Redirect` that an nginx in front of the gateway
/// would obey. `chunked`: the body comes chunked, without a length.
async fn worker_with_headers(chunked: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let body = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"test-model","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
                let framing = if chunked {
                    // Two chunks, so the answer also arrives in pieces.
                    let (a, b) = body.split_at(body.len() / 2);
                    format!(
                        "transfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                        a.len(),
                        b.len()
                    )
                } else {
                    format!("content-length: {}\r\n\r\n{body}", body.len())
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nserver: uvicorn\r\n\
                     date: Thu, 01 Jan 1970 00:00:00 GMT\r\nx-accel-redirect: /internal/secrets\r\n\
                     x-request-id: the-workers-own\r\nx-worker-note: kept\r\n{framing}"
                );
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: its head, then its Content-Length of body.
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < end + 4 + len {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + len);
                    if conn.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn proxy_instructions_and_the_workers_identity_are_not_relayed() {
    let worker = worker_with_headers(false).await;
    let gw = start(&config_text(&[worker], "", ""));
    wait_ready(&gw).await;
    let r = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .header("x-request-id", "client-chosen-id")
        .json(&chat_body(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert!(h.get("x-accel-redirect").is_none(), "{h:?}");
    assert!(h.get("server").is_none(), "{h:?}");
    assert_eq!(h.get_all("date").iter().count(), 1, "{h:?}");
    assert_ne!(h["date"], "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(h["x-request-id"], "client-chosen-id");
    assert_eq!(h["x-worker-note"], "kept");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "hi");
}

/// A whole answer the worker sent chunked goes to the client with its
/// length, on a connection that stays open for the next request.
#[tokio::test]
async fn a_chunked_whole_answer_is_sent_with_its_length() {
    let worker = worker_with_headers(true).await;
    let gw = start(&config_text(&[worker], "", ""));
    wait_ready(&gw).await;
    let body = serde_json::to_vec(&chat_body(json!({}))).unwrap();
    let mut conn = RawConn::connect(gw.public_addr).await;
    for _ in 0..2 {
        conn.send(&common::raw::chat_request(&body)).await.unwrap();
        let r = conn.response(Duration::from_secs(5)).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("transfer-encoding"), None, "{:?}", r.headers);
        let len = r
            .header("content-length")
            .map(|v| v.parse::<usize>().unwrap());
        assert_eq!(len, Some(r.body.len()), "{:?}", r.headers);
        assert!(!r.closes(), "{:?}", r.headers);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "hi");
    }
}

/// Draining closes keep-alive connections that wait for their next request
/// at once (a load balancer's pooled connections move to other replicas),
/// while a stream in flight runs to its end.
#[tokio::test]
async fn draining_closes_idle_connections_and_finishes_streams() {
    let s = sim_with(|c| {
        c.itl = Duration::from_millis(100);
        c.output_tokens = (8, 8);
    });
    let gw = gateway_for(&[&s]).await;
    let mut idle = RawConn::connect(gw.public_addr).await;
    idle.send(&request("GET", "/v1/models", &[], b""))
        .await
        .unwrap();
    let r = idle.response(Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.closes(), "{:?}", r.headers);

    let url = format!("{}/v1/chat/completions", gw.url());
    let streaming = tokio::spawn(async move {
        let resp = client()
            .post(url)
            .json(&chat_body(json!({"stream": true})))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    });
    wait_until(Duration::from_secs(5), || async {
        s.received()
            .iter()
            .any(|r| r.path == "/v1/chat/completions")
    })
    .await
    .expect("the stream reached the worker");

    gw.begin_drain();
    let rest = idle
        .closed_within(Duration::from_secs(3))
        .await
        .expect("the idle connection closes when the gateway drains");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // It did not wait for the stream (8 tokens, 100 ms apart) to end.
    assert!(!streaming.is_finished());
    let body = streaming.await.unwrap();
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert!(!sse_content(&body).is_empty(), "{body}");
}
