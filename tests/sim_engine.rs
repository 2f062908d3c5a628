//! The simulated engine: queueing beyond max_num_seqs, aborts on disconnect, the prefix cache,
//! KV gauge, and the life cycle (stop, restart on the same port).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sim_common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use sim_common::*;
use vllm_gateway::sim::{count_prompt_tokens, SimConfig};

/// Long enough that nothing finishes by itself during a test.
const FOREVER: Duration = Duration::from_secs(60);
/// How long an abort may take to show in the stats: far below every wait it interrupts.
const ABORT_WITHIN: Duration = Duration::from_secs(1);

fn stream_req(content: &str) -> Vec<u8> {
    let body = json!({"messages": [{"role": "user", "content": content}], "stream": true});
    post_bytes("/v1/chat/completions", &body, "")
}

async fn metrics_text(url: &str) -> String {
    client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test]
async fn requests_beyond_max_num_seqs_wait() {
    let sim = start(SimConfig {
        max_num_seqs: 2,
        ttft: FOREVER,
        kv_cache_tokens: 10_000,
        ..SimConfig::default()
    });
    let mut conns = Vec::new();
    for i in 0..5 {
        conns.push(send_raw(sim.addr(), &stream_req(&format!("req {i}"))).await);
    }
    wait_stats(&sim, Duration::from_secs(5), "2 running, 3 waiting", |s| {
        s.running == 2 && s.waiting == 3
    })
    .await;
    let text = metrics_text(&sim.url()).await;
    assert_eq!(gauge(&text, "vllm:num_requests_running"), 2.0);
    assert_eq!(gauge(&text, "vllm:num_requests_waiting"), 3.0);
    let kv = gauge(&text, "vllm:kv_cache_usage_perc");
    assert!(kv > 0.0 && kv < 1.0, "kv usage {kv}");
    drop(conns);
    wait_stats(&sim, ABORT_WITHIN, "all aborted", |s| {
        s.aborted == 5 && s.running == 0 && s.waiting == 0
    })
    .await;
    let text = metrics_text(&sim.url()).await;
    assert_eq!(gauge(&text, "vllm:kv_cache_usage_perc"), 0.0);
}

#[tokio::test]
async fn the_queue_is_fifo() {
    let sim = start(SimConfig {
        max_num_seqs: 1,
        ttft: Duration::from_millis(30),
        itl: Duration::from_millis(1),
        output_tokens: (2, 2),
        ..SimConfig::default()
    });
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..4u64 {
        let url = sim.url();
        let order = Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            let r = post(format!("{url}/v1/chat/completions"), &chat("fifo")).await;
            r.bytes().await.unwrap();
            order.lock().unwrap().push(i);
        }));
        // Each request is registered (running or waiting) before the next is sent.
        let want = i + 1;
        wait_stats(&sim, Duration::from_secs(5), "request registered", |s| {
            s.running + s.waiting + s.completed == want
        })
        .await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
}

#[tokio::test]
async fn disconnect_while_queued_aborts_at_once() {
    let sim = start(SimConfig {
        max_num_seqs: 1,
        ttft: FOREVER,
        ..SimConfig::default()
    });
    let running = send_raw(sim.addr(), &stream_req("first")).await;
    wait_stats(&sim, Duration::from_secs(5), "one running", |s| {
        s.running == 1
    })
    .await;
    let queued = send_raw(sim.addr(), &stream_req("second")).await;
    wait_stats(&sim, Duration::from_secs(5), "one waiting", |s| {
        s.waiting == 1
    })
    .await;
    drop(queued);
    let took = wait_stats(&sim, ABORT_WITHIN, "queued request aborted", |s| {
        s.aborted == 1 && s.waiting == 0
    })
    .await;
    assert_eq!(sim.stats().running, 1);
    drop(running);
    wait_stats(&sim, ABORT_WITHIN, "running request aborted", |s| {
        s.aborted == 2 && s.running == 0
    })
    .await;
    assert!(took < ABORT_WITHIN);
    let text = metrics_text(&sim.url()).await;
    assert!(text.contains("finished_reason=\"abort\"} 2.0"), "{text}");
}

#[tokio::test]
async fn disconnect_during_prefill_aborts_at_once() {
    let sim = start(SimConfig {
        ttft: FOREVER,
        ..SimConfig::default()
    });
    let mut s = send_raw(sim.addr(), &stream_req("prefill")).await;
    // The SSE head goes out at once; the first token would come only after ttft.
    read_until(&mut s, b"text/event-stream", Duration::from_secs(5)).await;
    wait_stats(&sim, Duration::from_secs(5), "running", |s| s.running == 1).await;
    drop(s);
    wait_stats(&sim, ABORT_WITHIN, "aborted during prefill", |s| {
        s.aborted == 1 && s.running == 0
    })
    .await;
    assert_eq!(sim.stats().completed, 0);
}

#[tokio::test]
async fn disconnect_mid_stream_aborts_before_the_next_token() {
    let sim = start(SimConfig {
        ttft: Duration::from_millis(1),
        itl: FOREVER,
        ..SimConfig::default()
    });
    let mut s = send_raw(sim.addr(), &stream_req("mid")).await;
    // Role chunk and first token arrive; the second token is a minute away.
    read_until(
        &mut s,
        b"\"delta\":{\"content\":\" ",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(sim.stats().running, 1);
    drop(s);
    wait_stats(&sim, ABORT_WITHIN, "aborted mid-stream", |s| {
        s.aborted == 1 && s.running == 0
    })
    .await;
}

#[tokio::test]
async fn disconnect_during_non_streaming_compute_aborts() {
    let sim = start(SimConfig {
        ttft: FOREVER,
        ..SimConfig::default()
    });
    let s = send_raw(
        sim.addr(),
        &post_bytes("/v1/chat/completions", &chat("batch"), ""),
    )
    .await;
    wait_stats(&sim, Duration::from_secs(5), "running", |s| s.running == 1).await;
    drop(s);
    wait_stats(&sim, ABORT_WITHIN, "aborted", |s| {
        s.aborted == 1 && s.running == 0
    })
    .await;
}

/// Time from sending a streaming request to its first content token, and the final usage.
async fn ttft_and_usage(url: &str, body: &Value) -> (Duration, Value) {
    let mut body = body.clone();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let sent = Instant::now();
    let resp = post(format!("{url}/v1/chat/completions"), &body).await;
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let mut first = None;
    while let Some(b) = stream.next().await {
        text.push_str(std::str::from_utf8(&b.unwrap()).unwrap());
        if first.is_none() && text.contains("\"delta\":{\"content\":\" ") {
            first = Some(sent.elapsed());
        }
    }
    let chunks = sse_chunks(&text);
    (first.unwrap(), chunks.last().unwrap()["usage"].clone())
}

#[tokio::test]
async fn prefix_cache_hits_report_cached_tokens_and_shorten_ttft() {
    let sim = start(SimConfig {
        models: vec!["base".into(), "lora".into()],
        ttft: Duration::from_millis(1),
        prefill_per_token: Duration::from_micros(400),
        ..SimConfig::default()
    });
    let url = sim.url();
    let system = "You are a careful assistant. ".repeat(60);
    let msgs =
        |q: &str| json!([{"role": "system", "content": system}, {"role": "user", "content": q}]);
    let body = json!({"model": "base", "messages": msgs("what is up?"), "max_tokens": 2});
    let prompt = count_prompt_tokens(&body["messages"]);
    assert!(prompt > 300, "{prompt}");

    let (cold, usage) = ttft_and_usage(&url, &body).await;
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    assert!(
        cold >= Duration::from_micros(400) * prompt,
        "cold TTFT {cold:?}"
    );

    let (warm, usage) = ttft_and_usage(&url, &body).await;
    let cached = (prompt - 1) / 16 * 16;
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], cached);
    assert!(warm < cold / 2, "warm {warm:?} vs cold {cold:?}");
    let s = sim.stats();
    assert_eq!(s.prefix_cache_queries, 2 * u64::from(prompt));
    assert_eq!(s.prefix_cache_hits, u64::from(cached));

    // A different (long) question after the same system prompt reuses only the leading blocks
    // they share.
    let other =
        json!({"model": "base", "messages": msgs(&"and now? ".repeat(20)), "max_tokens": 2});
    let other_full_blocks = (count_prompt_tokens(&other["messages"]) - 1) / 16 * 16;
    let (_, usage) = ttft_and_usage(&url, &other).await;
    let hit = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        hit > 0 && hit < u64::from(other_full_blocks),
        "partial hit {hit}"
    );
    assert!(
        hit <= u64::from(prompt) - 4,
        "no block past the shared prefix"
    );

    // Another adapter, or another cache_salt, never shares blocks.
    let lora = json!({"model": "lora", "messages": msgs("what is up?"), "max_tokens": 2});
    let (_, usage) = ttft_and_usage(&url, &lora).await;
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    let salted = json!({"model": "base", "messages": msgs("what is up?"), "max_tokens": 2, "cache_salt": "tenant-b"});
    let (_, usage) = ttft_and_usage(&url, &salted).await;
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);

    // Non-streaming answers report cached tokens too.
    let v: Value = post_for_json(format!("{url}/v1/chat/completions"), &body).await;
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], cached);
}

#[tokio::test]
async fn prefix_cache_is_an_lru_of_bounded_size() {
    let sim = start(SimConfig {
        prefix_cache_blocks: 4,
        ..fast()
    });
    let url = sim.url();
    let body = |w: &str| json!({"messages": [{"role": "user", "content": format!("{w} ").repeat(60)}], "max_tokens": 1});
    // 66 tokens = 4 blocks each; the second prompt evicts the first.
    for w in ["a", "b", "a"] {
        let v: Value = post_for_json(format!("{url}/v1/chat/completions"), &body(w)).await;
        assert_eq!(
            v["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
            "{w}"
        );
    }
    let v: Value = post_for_json(format!("{url}/v1/chat/completions"), &body("a")).await;
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 64);
}

#[tokio::test]
async fn stop_closes_everything_and_restart_reuses_the_port() {
    let sim = start(SimConfig {
        itl: FOREVER,
        ..fast()
    });
    let addr = sim.addr();
    assert_eq!(sim.url(), format!("http://{addr}"));
    let mut streaming = send_raw(addr, &stream_req("hold")).await;
    read_until(
        &mut streaming,
        b"\"delta\":{\"content\":\" ",
        Duration::from_secs(5),
    )
    .await;
    let mut idle = send_raw(addr, b"GET /health HTTP/1.1\r\nHost: s\r\n\r\n").await;
    read_until(&mut idle, b"\r\n\r\n", Duration::from_secs(5)).await;
    assert_eq!(sim.stats().open_connections, 2);

    let stopping = Instant::now();
    sim.stop();
    assert!(stopping.elapsed() < Duration::from_secs(2));
    let err = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // Both open connections were closed by the server (EOF or reset), not left hanging.
    let (_, _) = read_to_end(&mut streaming, Duration::from_secs(2)).await;
    let (_, _) = read_to_end(&mut idle, Duration::from_secs(2)).await;

    let again = start(SimConfig {
        listen: Some(addr),
        ..fast()
    });
    assert_eq!(again.addr(), addr);
    let r = client()
        .get(format!("{}/health", again.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(again.stats().requests, 0);
    let r = post(
        format!("{}/v1/chat/completions", again.url()),
        &chat("back"),
    )
    .await;
    assert_eq!(r.status(), 200);
    drop(again); // Drop stops it as well.
    let err = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn threads_setting_runs_a_multi_threaded_runtime() {
    let sim = start(SimConfig {
        threads: 2,
        ..fast()
    });
    let url = sim.url();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut body = chat(&format!("parallel {i}"));
            body["stream"] = json!(i % 2 == 0);
            let r = post(format!("{url}/v1/chat/completions"), &body).await;
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(sim.stats().completed, 20);
}

#[tokio::test]
async fn run_serves_on_the_callers_runtime_until_dropped() {
    let listener = vllm_gateway::sim::Simulator::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(vllm_gateway::sim::Simulator::run(listener, fast()));
    let r = post(format!("http://{addr}/v1/chat/completions"), &chat("fg")).await;
    assert_eq!(r.status(), 200);
    let mut idle = send_raw(addr, b"GET /health HTTP/1.1\r\nHost: s\r\n\r\n").await;
    read_until(&mut idle, b"\r\n\r\n", Duration::from_secs(5)).await;
    // Dropping the future closes the listener and every connection.
    server.abort();
    assert!(server.await.unwrap_err().is_cancelled());
    let (_, _) = read_to_end(&mut idle, Duration::from_secs(2)).await;
    let err = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // A bad configuration is refused up front.
    let listener = vllm_gateway::sim::Simulator::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let bad = SimConfig {
        models: vec![],
        ..fast()
    };
    let err = vllm_gateway::sim::Simulator::run(listener, bad)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn an_answer_the_client_has_is_already_counted_as_completed() {
    let sim = start(fast());
    let url = sim.url();
    for i in 0..30u64 {
        let mut body = chat(&format!("count {i}"));
        body["stream"] = json!(i % 2 == 0);
        let r = post(format!("{url}/v1/chat/completions"), &body).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        assert_eq!(sim.stats().completed, i + 1, "request {i}");
    }
    let r = post(
        format!("{url}/v1/embeddings"),
        &json!({"model": "sim-model", "input": "x"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    assert_eq!(sim.stats().completed, 31);
}
