//! Load checks of the simulator itself (ignored by default: they take seconds and many file
//! descriptors). Run them with
//! `cargo test --release --test sim_load -- --ignored --nocapture --test-threads 1`.
//! `SIM_LOAD_STREAMS` sets the number of concurrent streams (default 9000: with the client's
//! sockets in the same process that needs about twice as many file descriptors).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sim_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sim_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vllm_gateway::sim::SimConfig;

/// CPU time (user + system) used so far by this process's threads named `name`, from
/// /proc (Linux); `None` elsewhere.
fn thread_cpu(name: &str) -> Option<Duration> {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    let mut found = false;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = entry.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        total += fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?;
        found = true;
    }
    found.then(|| Duration::from_secs_f64(total as f64 / tick))
}

/// Reads one response off a keep-alive connection; returns the number of content events.
async fn read_one_response(s: &mut TcpStream, buf: &mut Vec<u8>, streaming: bool) -> usize {
    let mut tmp = [0u8; 16 * 1024];
    loop {
        // The simulator writes `[DONE]` and the last chunk together, so a finished stream's
        // bytes end with them; checking the tail keeps the client cheap.
        let done = if streaming {
            buf.ends_with(b"data: [DONE]\n\n\r\n0\r\n\r\n")
        } else {
            complete_length_response(buf)
        };
        if done {
            let events = buf.windows(12).filter(|w| w == b"\"content\":\" ").count();
            buf.clear();
            return events;
        }
        let n = s.read(&mut tmp).await.unwrap();
        assert!(n > 0, "connection closed early");
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn complete_length_response(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap();
    buf.len() >= end + 4 + len
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "load check: run with --ignored --release"]
async fn many_concurrent_slow_streams() {
    let n: usize = std::env::var("SIM_LOAD_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9000);
    let tokens = 20u32;
    let itl = Duration::from_millis(100);
    let sim = start(SimConfig {
        ttft: Duration::from_millis(50),
        itl,
        output_tokens: (tokens, tokens),
        max_num_seqs: 16384,
        kv_cache_tokens: 10_000_000,
        ..SimConfig::default()
    });
    let addr = sim.addr();
    let req = post_bytes(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hold the line"}], "stream": true}),
        "",
    );
    let req = Arc::new(req);
    let done = Arc::new(AtomicU64::new(0));
    let cpu_before = thread_cpu("vllm-sim");
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let req = Arc::clone(&req);
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let sent = Instant::now();
            s.write_all(&req).await.unwrap();
            let mut buf = Vec::with_capacity(4096);
            let events = read_one_response(&mut s, &mut buf, true).await;
            assert_eq!(events, tokens as usize);
            done.fetch_add(1, Ordering::Relaxed);
            sent.elapsed()
        }));
    }
    let mut peak = 0;
    while done.load(Ordering::Relaxed) < n as u64 {
        peak = peak.max(sim.stats().running);
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "stalled: {:?}",
            sim.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut durations = Vec::with_capacity(n);
    for t in tasks {
        durations.push(t.await.unwrap());
    }
    durations.sort();
    let wall = started.elapsed();
    let sim_cpu = thread_cpu("vllm-sim")
        .zip(cpu_before)
        .map(|(a, b)| a.saturating_sub(b));
    let ideal = Duration::from_millis(50) + itl * (tokens - 1);
    let peak_rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(str::to_string)
        });
    println!("process (simulator + {n} clients) {peak_rss:?}");
    println!(
        "{n} streams x {tokens} tokens: wall {wall:?}; per stream (ideal {ideal:?}) p50 {:?} p99 {:?} max {:?}; peak running {peak}; simulator CPU {sim_cpu:?}",
        durations[n / 2],
        durations[n * 99 / 100],
        durations[n - 1],
    );
    assert_eq!(sim.stats().completed, n as u64);
    assert!(
        peak as usize > n / 2,
        "streams ran concurrently (peak {peak})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "load check: run with --ignored --release"]
async fn keep_alive_request_throughput() {
    let sim = start(SimConfig {
        ttft: Duration::ZERO,
        itl: Duration::ZERO,
        ..SimConfig::default()
    });
    let addr = sim.addr();
    for streaming in [false, true] {
        let cpu_before = thread_cpu("vllm-sim");
        let body = json!({"messages": [{"role": "user", "content": "fast"}], "stream": streaming});
        let req = Arc::new(post_bytes("/v1/chat/completions", &body, ""));
        let count = Arc::new(AtomicU64::new(0));
        let run_for = Duration::from_secs(3);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let req = Arc::clone(&req);
            let count = Arc::clone(&count);
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.set_nodelay(true).unwrap();
                let mut buf = Vec::with_capacity(8192);
                while started.elapsed() < run_for {
                    s.write_all(&req).await.unwrap();
                    read_one_response(&mut s, &mut buf, streaming).await;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let rate = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        let sim_cpu = thread_cpu("vllm-sim")
            .zip(cpu_before)
            .map(|(a, b)| a.saturating_sub(b));
        println!("keep-alive, 32 connections, stream={streaming}: {rate:.0} req/s; simulator CPU {sim_cpu:?} over {run_for:?}");
        assert!(rate > 500.0, "{rate:.0} req/s");
    }
}
