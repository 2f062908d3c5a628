//! The simulator's HTTP API: shapes, validation (vLLM 0.33 rules) and the small endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sim_common;

use serde_json::{json, Value};
use sim_common::*;
use vllm_gateway::sim::{count_prompt_tokens, count_text_tokens, SimConfig};

#[tokio::test]
async fn non_streaming_chat_shape() {
    let sim = start(fast());
    let resp = client()
        .post(format!("{}/v1/chat/completions", sim.url()))
        .header("x-request-id", "abc123")
        .json(&json!({"model": "sim-model", "messages": [{"role": "user", "content": "hello there"}], "seed": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "abc123");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["id"], "chatcmpl-abc123");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "sim-model");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap();
    let words = content.split_whitespace().count() as u64;
    assert!(content.starts_with(' '));
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice["stop_reason"].is_null());
    assert!(choice["logprobs"].is_null());
    let usage = &v["usage"];
    let prompt = u64::from(count_prompt_tokens(
        &json!([{"role": "user", "content": "hello there"}]),
    ));
    assert_eq!(usage["prompt_tokens"], prompt);
    assert_eq!(usage["completion_tokens"], words);
    assert!((16..=32).contains(&words));
    assert_eq!(usage["total_tokens"], prompt + words);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);

    // Same seed, same answer; the worker recorded what it received.
    let again: Value = post_for_json(
        format!("{}/v1/chat/completions", sim.url()),
        &json!({"messages": [{"role": "user", "content": "hello there"}], "seed": 7}),
    )
    .await;
    assert_eq!(again["choices"][0]["message"]["content"], content);
    assert_eq!(again["model"], "sim-model", "absent model = base model");
    let id = again["id"].as_str().unwrap();
    assert!(
        id.starts_with("chatcmpl-") && id.len() == "chatcmpl-".len() + 32,
        "{id}"
    );
    let got = sim.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path, "/v1/chat/completions");
    assert_eq!(got[0].header("X-Request-Id"), Some("abc123"));
    assert_eq!(got[0].json().unwrap()["seed"], 7);
    sim.clear_received();
    assert!(sim.received().is_empty());
    let s = sim.stats();
    assert_eq!((s.requests, s.completed, s.aborted), (2, 2, 0));
}

#[tokio::test]
async fn unknown_model_is_404_not_found_error() {
    let sim = start(SimConfig {
        models: vec!["base".into(), "adapter".into()],
        ..fast()
    });
    let resp = post(
        format!("{}/v1/chat/completions", sim.url()),
        &json!({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "NotFoundError");
    assert_eq!(v["error"]["param"], "model");
    assert_eq!(v["error"]["code"], 404);
    assert!(v["error"]["message"].as_str().unwrap().contains("`gpt-4`"));
    // A LoRA adapter is a model too, and is echoed back.
    let v: Value = post_for_json(
        format!("{}/v1/chat/completions", sim.url()),
        &json!({"model": "adapter", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(v["model"], "adapter");
}

#[tokio::test]
async fn content_type_must_be_json() {
    let sim = start(fast());
    let body = chat("hi").to_string();
    for ct in [None, Some("text/plain")] {
        let mut req = client()
            .post(format!("{}/v1/chat/completions", sim.url()))
            .body(body.clone());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 400, "content-type {ct:?}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], 400);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Unsupported Media Type"));
    }
    let resp = client()
        .post(format!("{}/v1/chat/completions", sim.url()))
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

async fn post_chat(url: &str, body: Value) -> (u16, Value) {
    let resp = post(format!("{url}/v1/chat/completions"), &body).await;
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn msgs(content: &str) -> Value {
    json!([{"role": "user", "content": content}])
}

#[tokio::test]
async fn max_model_len_rules_of_vllm_033() {
    let sim = start(SimConfig {
        max_model_len: 100,
        output_tokens: (500, 500), // natural answers longer than any limit: limits show
        ..fast()
    });
    let url = sim.url();
    let m = msgs("x");
    let prompt = u64::from(count_prompt_tokens(&m)); // 7

    // Requested > max_model_len -> 400 naming the field used.
    let (st, v) = post_chat(&url, json!({"messages": m, "max_completion_tokens": 101})).await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["type"], "BadRequestError");
    assert_eq!(v["error"]["param"], "max_completion_tokens");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("max_tokens=101 cannot be greater than max_model_len=100."));

    // Prompt >= max_model_len -> 400 (exactly max_model_len leaves no room).
    let long = msgs(&"a ".repeat(95)); // 95 pieces + 4 + 2 = 101 tokens
    assert_eq!(count_prompt_tokens(&long), 101);
    let (st, v) = post_chat(&url, json!({"messages": long})).await;
    assert_eq!(st, 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("This model's maximum context length is 100 tokens. However, your prompt contains 101 input tokens"));
    let exact = msgs(&"a ".repeat(94));
    assert_eq!(count_prompt_tokens(&exact), 100);
    assert_eq!(post_chat(&url, json!({"messages": exact})).await.0, 400);

    // prompt + requested > max_model_len -> silently clamped to the remaining context.
    let (st, v) = post_chat(&url, json!({"messages": m, "max_tokens": 100})).await;
    assert_eq!(st, 200);
    assert_eq!(v["usage"]["completion_tokens"], 100 - prompt);
    assert_eq!(v["choices"][0]["finish_reason"], "length");

    // Neither set -> remaining context.
    let (st, v) = post_chat(&url, json!({"messages": m})).await;
    assert_eq!(st, 200);
    assert_eq!(v["usage"]["completion_tokens"], 100 - prompt);

    // max_completion_tokens wins over max_tokens when not null.
    let (_, v) = post_chat(
        &url,
        json!({"messages": m, "max_tokens": 50, "max_completion_tokens": 5}),
    )
    .await;
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let (_, v) = post_chat(
        &url,
        json!({"messages": m, "max_tokens": 6, "max_completion_tokens": null}),
    )
    .await;
    assert_eq!(v["usage"]["completion_tokens"], 6);

    // Value < 1 -> 400, including a 0 in max_completion_tokens.
    for (field, n) in [("max_completion_tokens", 0), ("max_tokens", -3)] {
        let (st, v) = post_chat(&url, json!({"messages": m, field: n})).await;
        assert_eq!(st, 400);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("max_tokens must be at least 1, got {n}.")),
            "{v}"
        );
    }

    // min_tokens above the limit -> 400.
    let (st, v) = post_chat(
        &url,
        json!({"messages": m, "max_tokens": 5, "min_tokens": 6}),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["param"], "min_tokens");
}

#[tokio::test]
async fn other_validation_rules() {
    let sim = start(fast());
    let url = sim.url();
    let m = msgs("x");
    let (st, v) = post_chat(
        &url,
        json!({"messages": m, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(
        v["error"]["message"],
        "Stream options can only be defined when `stream=True`."
    );
    let (st, v) = post_chat(&url, json!({"messages": m, "temperature": 0, "n": 2})).await;
    assert_eq!(st, 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("n must be 1 when using greedy sampling"));
    let (st, _) = post_chat(&url, json!({"messages": m, "temperature": 0.7, "n": 2})).await;
    assert_eq!(st, 200);
    let (st, v) = post_chat(&url, json!({"messages": m, "max_tokens": "many"})).await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["param"], "max_tokens");
    let (st, _) = post_chat(&url, json!({"model": "sim-model"})).await;
    assert_eq!(st, 400);
    let resp = client()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Unknown fields are accepted and ignored, as vLLM does.
    let (st, _) = post_chat(&url, json!({"messages": m, "frobnicate": true, "top_k": 5})).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn models_health_version_endpoints() {
    let sim = start(SimConfig {
        models: vec!["base-model".into(), "lora-1".into()],
        max_model_len: 2048,
        ..fast()
    });
    let c = client();
    let v: Value = c
        .get(format!("{}/v1/models", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["id"], "base-model");
    assert_eq!(data[0]["object"], "model");
    assert_eq!(data[0]["owned_by"], "vllm");
    assert_eq!(data[0]["root"], "base-model");
    assert!(data[0]["parent"].is_null());
    assert_eq!(data[0]["max_model_len"], 2048);
    assert_eq!(data[0]["permission"], json!([]));
    assert_eq!(data[1]["id"], "lora-1");
    assert_eq!(data[1]["parent"], "base-model");
    assert!(data[1].get("max_model_len").is_none());

    let resp = c.get(format!("{}/health", sim.url())).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().is_empty());
    let v: Value = c
        .get(format!("{}/version", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["version"], "0.33.0");
    let resp = c.get(format!("{}/nope", sim.url())).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let resp = c
        .get(format!("{}/v1/chat/completions", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let s: Value = c
        .get(format!("{}/sim/stats", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["requests"], 0);
    assert_eq!(s["connections_accepted"], 1);
}

/// Parses `name{labels} value` lines into (name, labels, value).
fn metric_lines(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = series.split_once('{').unwrap();
            (
                name.to_string(),
                labels.trim_end_matches('}').to_string(),
                value.parse().unwrap(),
            )
        })
        .collect()
}

fn metric(lines: &[(String, String, f64)], name: &str, label: &str) -> f64 {
    lines
        .iter()
        .find(|(n, l, _)| n == name && l.contains(label))
        .unwrap_or_else(|| panic!("no {name} with {label}"))
        .2
}

#[tokio::test]
async fn metrics_page() {
    let sim = start(fast());
    let c = client();
    let m = json!({"messages": msgs(&"word ".repeat(50)), "max_tokens": 3});
    for _ in 0..2 {
        let r = c
            .post(format!("{}/v1/chat/completions", sim.url()))
            .json(&m)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let resp = c
        .get(format!("{}/metrics", sim.url()))
        .send()
        .await
        .unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
    ] {
        assert!(text.contains(&format!("# TYPE {name} gauge")), "{name}");
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
    }
    for name in [
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:request_success_total",
        "vllm:num_preemptions_total",
    ] {
        assert!(text.contains(&format!("# TYPE {name} counter")), "{name}");
    }
    let lines = metric_lines(&text);
    let labels = "engine=\"0\",model_name=\"sim-model\"";
    assert_eq!(metric(&lines, "vllm:num_requests_running", labels), 0.0);
    assert_eq!(metric(&lines, "vllm:num_requests_waiting", labels), 0.0);
    assert_eq!(metric(&lines, "vllm:kv_cache_usage_perc", labels), 0.0);
    let prompt = f64::from(count_prompt_tokens(&msgs(&"word ".repeat(50))));
    assert_eq!(
        metric(&lines, "vllm:prefix_cache_queries_total", labels),
        2.0 * prompt
    );
    // 56 prompt tokens = 3 full blocks; the second identical prompt hits all of them.
    assert_eq!(metric(&lines, "vllm:prefix_cache_hits_total", labels), 48.0);
    assert_eq!(
        metric(
            &lines,
            "vllm:request_success_total",
            "finished_reason=\"length\""
        ),
        2.0
    );
    assert_eq!(
        metric(
            &lines,
            "vllm:request_success_total",
            "finished_reason=\"abort\""
        ),
        0.0
    );
}

#[tokio::test]
async fn tokenize_counts_like_the_worker() {
    let sim = start(SimConfig {
        max_model_len: 321,
        ..fast()
    });
    let m = json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "héllo, wörld"}]}]);
    let v: Value = post_for_json(
        format!("{}/tokenize", sim.url()),
        &json!({"model": "sim-model", "messages": m}),
    )
    .await;
    assert_eq!(v["count"], count_prompt_tokens(&m));
    assert_eq!(v["max_model_len"], 321);
    assert_eq!(
        v["tokens"].as_array().unwrap().len() as u64,
        v["count"].as_u64().unwrap()
    );
    // The chat endpoint counts the same prompt the same way.
    let c: Value = post_for_json(
        format!("{}/v1/chat/completions", sim.url()),
        &json!({"messages": m, "max_tokens": 1}),
    )
    .await;
    assert_eq!(c["usage"]["prompt_tokens"], v["count"]);
    let v: Value = post_for_json(
        format!("{}/tokenize", sim.url()),
        &json!({"prompt": "abcdefgh !"}),
    )
    .await;
    assert_eq!(v["count"], 3);
    let resp = post(
        format!("{}/tokenize", sim.url()),
        &json!({"model": "other", "prompt": "x"}),
    )
    .await;
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn completions_and_embeddings() {
    let sim = start(fast());
    let c = client();
    let v: Value = c
        .post(format!("{}/v1/completions", sim.url()))
        .header("x-request-id", "r9")
        .json(&json!({"prompt": ["one two", "three"], "seed": 3, "n": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["id"], "cmpl-r9");
    assert_eq!(v["object"], "text_completion");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for (i, ch) in choices.iter().enumerate() {
        assert_eq!(ch["index"], i);
        assert!(!ch["text"].as_str().unwrap().is_empty());
    }
    // vLLM's completions default max_tokens is 16.
    assert!(choices
        .iter()
        .all(|c| c["text"].as_str().unwrap().split_whitespace().count() <= 16));
    assert_eq!(
        v["usage"]["prompt_tokens"],
        count_text_tokens("one two") + count_text_tokens("three")
    );

    let v: Value = c
        .post(format!("{}/v1/embeddings", sim.url()))
        .json(&json!({"input": ["alpha beta", "gamma"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["object"], "embedding");
    let e0: Vec<f64> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(e0.len(), 32);
    let norm: f64 = e0.iter().map(|x| x * x).sum();
    assert!((norm - 1.0).abs() < 1e-3);
    let tokens = count_text_tokens("alpha beta") + count_text_tokens("gamma");
    assert_eq!(tokens, 5); // alph|a beta gamm|a
    assert_eq!(v["usage"]["prompt_tokens"], tokens);
    assert_eq!(v["usage"]["total_tokens"], tokens);
    // Deterministic per input.
    let again: Value = c
        .post(format!("{}/v1/embeddings", sim.url()))
        .json(&json!({"input": "alpha beta", "encoding_format": "float"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["data"][0]["embedding"], data[0]["embedding"]);
    let b64: Value = c
        .post(format!("{}/v1/embeddings", sim.url()))
        .json(&json!({"input": "alpha beta", "encoding_format": "base64"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // 32 little-endian f32s = 128 bytes = 172 base64 characters.
    assert_eq!(b64["data"][0]["embedding"].as_str().unwrap().len(), 172);
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let sim = start(fast());
    let c = client();
    for i in 0..5 {
        let stream = i % 2 == 1;
        let mut body = chat("again");
        body["stream"] = json!(stream);
        let r = c
            .post(format!("{}/v1/chat/completions", sim.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        let r = c.get(format!("{}/health", sim.url())).send().await.unwrap();
        r.bytes().await.unwrap();
    }
    let s = sim.stats();
    assert_eq!(s.connections_accepted, 1, "{s:?}");
    assert_eq!(s.completed, 5);
}

#[tokio::test]
async fn chunked_request_body_and_malformed_requests() {
    let sim = start(fast());
    let body = chat("chunked body").to_string();
    let (a, b) = body.split_at(10);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let r = raw_exchange(sim.addr(), req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["object"], "chat.completion");

    let r = raw_exchange(sim.addr(), b"THIS IS NOT HTTP\r\n\x01\x02\r\n\r\n").await;
    assert_eq!(r.status, 400);
    let r = raw_exchange(
        sim.addr(),
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);
    let r = raw_exchange(
        sim.addr(),
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 413);
    let huge_header = format!(
        "GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let r = raw_exchange(sim.addr(), huge_header.as_bytes()).await;
    assert_eq!(r.status, 431);
    // The server survives all of it.
    let r = client()
        .get(format!("{}/health", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
