//! Streaming: vLLM's SSE framing, usage reporting, n > 1, stop strings, token timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sim_common;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use sim_common::*;
use vllm_gateway::sim::SimConfig;

async fn post_json(url: &str, path: &str, body: &Value) -> Value {
    let resp = post(format!("{url}{path}"), body).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn post_stream(url: &str, path: &str, body: &Value) -> Vec<Value> {
    let resp = post(format!("{url}{path}"), body).await;
    assert_eq!(resp.status(), 200);
    sse_chunks(&resp.text().await.unwrap())
}

#[tokio::test]
async fn stream_framing_is_exactly_vllms() {
    let sim = start(fast());
    let body =
        json!({"messages": [{"role": "user", "content": "frame me"}], "seed": 11, "stream": true});
    let req = post_bytes(
        "/v1/chat/completions",
        &body,
        "X-Request-Id: frame-1\r\nConnection: close\r\n",
    );
    let r = raw_exchange(sim.addr(), &req).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(r.header("transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(r.header("x-request-id").as_deref(), Some("frame-1"));
    assert!(r.complete, "the chunked body is terminated");
    // Each event travels in its own HTTP chunk (one write each).
    for c in &r.chunks {
        let s = std::str::from_utf8(c).unwrap();
        assert!(s.starts_with("data: ") && s.ends_with("\n\n"), "{s:?}");
        assert_eq!(s.matches("\n\n").count(), 1, "{s:?}");
    }
    let payloads = sse_payloads(&r.text());
    assert_eq!(payloads.len(), r.chunks.len());
    let chunks = sse_chunks(&r.text());

    let role = &chunks[0];
    assert_eq!(role["id"], "chatcmpl-frame-1");
    assert_eq!(role["object"], "chat.completion.chunk");
    assert_eq!(role["model"], "sim-model");
    assert_eq!(
        role["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert!(role["choices"][0]["finish_reason"].is_null());
    let created = &role["created"];
    for c in &chunks {
        assert_eq!(&c["created"], created);
        assert_eq!(c["id"], "chatcmpl-frame-1");
        assert!(
            c.get("usage").is_none(),
            "no usage key without include_usage: {c}"
        );
        assert_eq!(c["choices"].as_array().unwrap().len(), 1);
    }
    let content = &chunks[1..];
    let (last, middle) = content.split_last().unwrap();
    for c in middle {
        let ch = &c["choices"][0];
        assert_eq!(
            ch["delta"].as_object().unwrap().len(),
            1,
            "only content: {c}"
        );
        assert!(ch["delta"]["content"].as_str().unwrap().starts_with(' '));
        assert!(ch["finish_reason"].is_null());
        assert!(ch.get("stop_reason").is_none());
    }
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(last["choices"][0]["stop_reason"].is_null());
    assert!(last["choices"][0].get("stop_reason").is_some());

    let full = post_json(
        &sim.url(),
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "frame me"}], "seed": 11}),
    )
    .await;
    assert_eq!(
        content.len() as u64,
        full["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        assembled(&chunks, 0),
        full["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

#[tokio::test]
async fn streamed_content_equals_non_streaming() {
    let sim = start(fast());
    let url = sim.url();
    for (seed, extra) in [
        (1, json!({})),
        (2, json!({"max_tokens": 5})),
        (3, json!({"max_completion_tokens": 40, "min_tokens": 35})),
        (4, json!({"stop": [" the", " a"]})),
        (5, json!({"ignore_eos": true, "max_tokens": 50})),
    ] {
        let mut body = json!({"messages": [{"role": "user", "content": "same"}], "seed": seed});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let full = post_json(&url, "/v1/chat/completions", &body).await;
        body["stream"] = json!(true);
        let chunks = post_stream(&url, "/v1/chat/completions", &body).await;
        let text = full["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(assembled(&chunks, 0), text, "seed {seed} {extra}");
        let last = chunks.last().unwrap();
        assert_eq!(
            last["choices"][0]["finish_reason"],
            full["choices"][0]["finish_reason"]
        );
        assert_eq!(
            last["choices"][0]["stop_reason"],
            full["choices"][0]["stop_reason"]
        );
        assert_eq!(
            (chunks.len() - 1) as u64,
            full["usage"]["completion_tokens"].as_u64().unwrap()
        );
    }
    // Different seeds give different answers.
    let a = post_json(
        &url,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "x"}], "seed": 100}),
    )
    .await;
    let b = post_json(
        &url,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "x"}], "seed": 101}),
    )
    .await;
    assert_ne!(
        a["choices"][0]["message"]["content"],
        b["choices"][0]["message"]["content"]
    );
}

#[tokio::test]
async fn include_usage_adds_a_final_usage_chunk() {
    let sim = start(fast());
    let body = json!({"messages": [{"role": "user", "content": "count me"}], "stream": true, "seed": 3,
        "stream_options": {"include_usage": true}});
    let chunks = post_stream(&sim.url(), "/v1/chat/completions", &body).await;
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["object"], "chat.completion.chunk");
    let u = &usage_chunk["usage"];
    let content_chunks = (rest.len() - 1) as u64;
    assert_eq!(u["completion_tokens"], content_chunks);
    assert_eq!(u["prompt_tokens"], 4 + 3 + 2); // coun|t me
    assert_eq!(u["total_tokens"], 9 + content_chunks);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
    assert!(rest.iter().all(|c| c.get("usage").is_none()));
    assert!(rest.last().unwrap()["choices"][0]["finish_reason"].is_string());

    // Without the prefix cache there are no prompt_tokens_details.
    let sim = start(SimConfig {
        prefix_cache_blocks: 0,
        ..fast()
    });
    let chunks = post_stream(&sim.url(), "/v1/chat/completions", &body).await;
    assert!(chunks.last().unwrap()["usage"]
        .get("prompt_tokens_details")
        .is_none());
}

#[tokio::test]
async fn continuous_usage_stats_on_every_chunk() {
    let sim = start(fast());
    let body = json!({"messages": [{"role": "user", "content": "count me"}], "stream": true, "seed": 3,
        "stream_options": {"include_usage": true, "continuous_usage_stats": true}});
    let chunks = post_stream(&sim.url(), "/v1/chat/completions", &body).await;
    for (i, c) in chunks.iter().enumerate() {
        let u = &c["usage"];
        assert_eq!(u["prompt_tokens"], 9, "{c}");
        let expected = if i == chunks.len() - 1 {
            i as u64 - 1
        } else {
            i as u64
        };
        assert_eq!(u["completion_tokens"], expected, "chunk {i}: {c}");
        assert_eq!(u["total_tokens"], 9 + expected);
    }
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
}

#[tokio::test]
async fn n_choices_interleave_by_index() {
    let sim = start(SimConfig {
        output_tokens: (4, 12),
        ..fast()
    });
    let mut body = json!({"messages": [{"role": "user", "content": "three ways"}], "seed": 21, "n": 3,
        "stream_options": {"include_usage": true}});
    body["stream"] = json!(false);
    body.as_object_mut().unwrap().remove("stream_options");
    let full = post_json(&sim.url(), "/v1/chat/completions", &body).await;
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let chunks = post_stream(&sim.url(), "/v1/chat/completions", &body).await;
    let indexes: Vec<u64> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).map(|ch| ch["index"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        &indexes[..3],
        &[0, 1, 2],
        "role chunks first, one per choice"
    );
    for i in 0..3u64 {
        assert_eq!(
            chunks[i as usize]["choices"][0]["delta"]["role"],
            "assistant"
        );
        let text = assembled(&chunks, i);
        assert_eq!(
            text,
            full["choices"][i as usize]["message"]["content"]
                .as_str()
                .unwrap()
        );
        let finishes = chunks
            .iter()
            .filter(|c| {
                c["choices"]
                    .get(0)
                    .is_some_and(|ch| ch["index"] == i && !ch["finish_reason"].is_null())
            })
            .count();
        assert_eq!(finishes, 1, "choice {i}");
    }
    // Interleaved: choice 1's first content token comes before choice 0's second.
    let pos = |idx: u64, nth: usize| {
        chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                c["choices"]
                    .get(0)
                    .is_some_and(|ch| ch["index"] == idx && ch["delta"].get("role").is_none())
            })
            .nth(nth)
            .map(|(p, _)| p)
            .unwrap()
    };
    assert!(pos(1, 0) < pos(0, 1));
    let texts: Vec<&str> = (0..3)
        .map(|i| full["choices"][i]["message"]["content"].as_str().unwrap())
        .collect();
    assert!(
        texts[0] != texts[1] || texts[1] != texts[2],
        "choices differ (seed + index)"
    );
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        usage["completion_tokens"],
        full["usage"]["completion_tokens"]
    );
}

#[tokio::test]
async fn stop_strings_cut_the_text() {
    let sim = start(SimConfig {
        output_tokens: (40, 40),
        ..fast()
    });
    let url = sim.url();
    let base = json!({"messages": [{"role": "user", "content": "stop test"}], "seed": 77});
    let full = post_json(&url, "/v1/chat/completions", &base).await;
    let text = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    // Use the 10th and 11th words together as a stop string spanning two tokens.
    let words: Vec<&str> = text.split(' ').skip(1).collect();
    let stop = format!("{} {}", words[9], words[10]);
    let cut = text.find(&stop).unwrap();
    let mut body = base.clone();
    body["stop"] = json!(stop);
    let v = post_json(&url, "/v1/chat/completions", &body).await;
    assert_eq!(v["choices"][0]["message"]["content"], text[..cut]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["stop_reason"], stop);
    body["stream"] = json!(true);
    let chunks = post_stream(&url, "/v1/chat/completions", &body).await;
    assert_eq!(assembled(&chunks, 0), text[..cut]);
    let last = &chunks.last().unwrap()["choices"][0];
    assert_eq!(last["finish_reason"], "stop");
    assert_eq!(last["stop_reason"], stop);
    // include_stop_str_in_output keeps the stop string.
    body["stream"] = json!(false);
    body["include_stop_str_in_output"] = json!(true);
    let v = post_json(&url, "/v1/chat/completions", &body).await;
    assert_eq!(
        v["choices"][0]["message"]["content"],
        text[..cut + stop.len()]
    );
}

#[tokio::test]
async fn completions_stream_shape() {
    let sim = start(fast());
    let body = json!({"prompt": "once upon", "seed": 5, "max_tokens": 12});
    let full = post_json(&sim.url(), "/v1/completions", &body).await;
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let chunks = post_stream(&sim.url(), "/v1/completions", &sbody).await;
    let (usage, content) = chunks.split_last().unwrap();
    for c in content {
        assert_eq!(c["object"], "text_completion");
        assert!(c["choices"][0]["delta"].is_null(), "no chat delta: {c}");
        assert!(c.get("usage").is_some() && c["usage"].is_null());
    }
    assert_eq!(
        assembled(content, 0),
        full["choices"][0]["text"].as_str().unwrap()
    );
    assert_eq!(
        content.last().unwrap()["choices"][0]["finish_reason"],
        full["choices"][0]["finish_reason"]
    );
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"]["completion_tokens"],
        full["usage"]["completion_tokens"]
    );
}

/// Receives a stream, recording when each content event arrived.
async fn timed_stream(url: &str, body: &Value) -> (Instant, Vec<(Instant, Value)>) {
    let sent = Instant::now();
    let resp = post(format!("{url}/v1/chat/completions"), body).await;
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    while let Some(bytes) = stream.next().await {
        let now = Instant::now();
        buf.push_str(std::str::from_utf8(&bytes.unwrap()).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event = buf[..end].to_string();
            buf.drain(..end + 2);
            let payload = event.strip_prefix("data: ").unwrap();
            if payload != "[DONE]" {
                events.push((now, serde_json::from_str(payload).unwrap()));
            }
        }
    }
    (sent, events)
}

#[tokio::test]
async fn tokens_arrive_one_per_itl() {
    let ttft = Duration::from_millis(40);
    let itl = Duration::from_millis(60);
    let sim = start(SimConfig {
        ttft,
        itl,
        output_tokens: (8, 8),
        ..SimConfig::default()
    });
    let body = json!({"messages": [{"role": "user", "content": "slow"}], "stream": true});
    let (sent, events) = timed_stream(&sim.url(), &body).await;
    let content: Vec<&(Instant, Value)> = events
        .iter()
        .filter(|(_, v)| v["choices"][0]["delta"].get("role").is_none())
        .collect();
    assert_eq!(content.len(), 8);
    let first = content[0].0;
    let last = content[7].0;
    // Lower bounds only: the server cannot be early; it may be late on a busy machine.
    assert!(first - sent >= ttft, "first token after {:?}", first - sent);
    assert!(
        last - first >= itl * 7 - Duration::from_millis(30),
        "8 tokens spread over {:?}",
        last - first
    );
    // Tokens come one at a time: every gap is close to itl, none bunch at the end.
    let gaps: Vec<Duration> = content.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let bunched = gaps.iter().filter(|g| **g < itl / 4).count();
    assert!(bunched <= 1, "gaps {gaps:?}");
}
