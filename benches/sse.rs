//! Throughput of the SSE scanner on a realistic vLLM stream, and of usage extraction from
//! non-streaming answers.
//!
//! Stream: 500 events as vLLM 0.33 writes them for `n=1` with `include_usage`: role chunk, 496
//! text chunks of about 218–260 bytes (vLLM's fields alone take 217 with a 10-byte model name),
//! finish chunk, usage-only chunk, `[DONE]`. It is fed three ways: one event per chunk (vLLM writes
//! each event separately, and at token pace reads see them one by one), MTU-sized segments and
//! 4 KiB reads (events split across chunks, so the carry path is exercised). Each iteration scans
//! a whole stream with a fresh scanner, as the gateway does per request.
//!
//! Run: `cargo bench --bench sse`.

use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vllm_gateway::sse::{SseScanner, UsageMode};
use vllm_gateway::usage::usage_from_response;

const ID: &str = "chatcmpl-9f2c4e6a8b0d4f1e3a5c7e9b1d3f5a7c";
/// A typical `--served-model-name`.
const MODEL: &str = "qwen2.5-7b";

/// A small deterministic generator, so every run benches the same bytes.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn chunk(delta: &str, finish: &str) -> String {
    format!(
        r#"data: {{"id":"{ID}","object":"chat.completion.chunk","created":1731400000,"model":"{MODEL}","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}"#
    ) + "\n\n"
}

/// 500 events: role chunk, 496 text chunks, finish chunk, usage-only chunk, `[DONE]`.
fn vllm_stream() -> Vec<u8> {
    let mut rng = Lcg(7);
    let mut out = chunk(r#"{"role":"assistant","content":""}"#, "null");
    // vLLM's fields alone make an empty text chunk 217 bytes here (41-byte id, 10-byte model
    // name), so text events are drawn from 218..=250 bytes rather than from 150.
    let base = chunk(r#"{"content":""}"#, "null").len();
    let words = [
        " the",
        " model",
        " answers",
        ",",
        " \\\"quoted\\\"",
        " é",
        "\\n",
        " token",
    ];
    for _ in 0..496 {
        let target = base + 1 + (rng.next() % (250 - base as u64)) as usize;
        let mut text = String::new();
        while base + text.len() < target {
            text.push_str(words[(rng.next() % words.len() as u64) as usize]);
        }
        out.push_str(&chunk(&format!(r#"{{"content":"{text}"}}"#), "null"));
    }
    out.push_str(&chunk(r#"{"content":""}"#, r#""stop""#));
    out.push_str(&format!(
        "data: {{\"id\":\"{ID}\",\"object\":\"chat.completion.chunk\",\"created\":1731400000,\"model\":\"{MODEL}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":812,\"total_tokens\":1308,\"completion_tokens\":496}}}}\n\n"
    ));
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

fn per_event(stream: &[u8]) -> Vec<Bytes> {
    let text = std::str::from_utf8(stream).unwrap_or_default();
    text.split_inclusive("\n\n")
        .map(|e| Bytes::copy_from_slice(e.as_bytes()))
        .collect()
}

fn fixed(stream: &[u8], size: usize) -> Vec<Bytes> {
    stream.chunks(size).map(Bytes::copy_from_slice).collect()
}

fn scan(chunks: &[Bytes], mode: UsageMode) -> usize {
    let mut scanner = SseScanner::new(mode);
    let mut forwarded = 0;
    for c in chunks {
        forwarded += scanner.feed(c.clone()).len();
    }
    forwarded += scanner.finish().len();
    assert!(scanner.saw_done() && scanner.usage().is_some() && scanner.content_events() == 496);
    forwarded
}

fn bench_scanner(c: &mut Criterion) {
    let stream = vllm_stream();
    let sizes: Vec<usize> = per_event(&stream).iter().map(Bytes::len).collect();
    assert_eq!(sizes.len(), 500);
    eprintln!(
        "stream: {} bytes, 500 events, text events {}..={} bytes",
        stream.len(),
        sizes[1..497].iter().min().unwrap_or(&0),
        sizes[1..497].iter().max().unwrap_or(&0)
    );
    let mut group = c.benchmark_group("sse_scan");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    for (name, chunks) in [
        ("per_event", per_event(&stream)),
        ("1460B", fixed(&stream, 1460)),
        ("4KiB", fixed(&stream, 4096)),
    ] {
        for (mode_name, mode) in [
            ("observe", UsageMode::Observe),
            ("strip", UsageMode::StripUsageChunk),
        ] {
            group.bench_with_input(BenchmarkId::new(mode_name, name), &chunks, |b, chunks| {
                b.iter(|| scan(black_box(chunks), mode))
            });
        }
    }
    group.finish();
}

/// Usage extraction from non-streaming answers, against a serde_json parse of the whole body
/// into a struct that keeps only `usage` (the obvious alternative).
fn bench_usage(c: &mut Criterion) {
    #[derive(serde::Deserialize)]
    struct OnlyUsage {
        #[allow(dead_code)]
        usage: Option<serde_json::Value>,
    }
    let mut rng = Lcg(11);
    let embedding: Vec<String> = (0..4096)
        .map(|_| format!("{:.8}", (rng.next() % 2_000_000) as f64 / 1_000_000.0 - 1.0))
        .collect();
    let embeddings = format!(
        r#"{{"id":"embd-1","object":"list","created":1,"model":"e5","data":[{}],"usage":{{"prompt_tokens":512,"total_tokens":512,"completion_tokens":0}}}}"#,
        (0..32)
            .map(|i| format!(
                r#"{{"index":{i},"object":"embedding","embedding":[{}]}}"#,
                embedding.join(",")
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    let content = "The quick brown fox jumps over the lazy dog, \\\"twice\\\".\\n".repeat(60);
    let chat = format!(
        r#"{{"id":"{ID}","object":"chat.completion","created":1,"model":"{MODEL}","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}","refusal":null,"annotations":null,"audio":null,"function_call":null,"tool_calls":[],"reasoning":null}},"logprobs":null,"finish_reason":"stop","stop_reason":null,"token_ids":null}}],"service_tier":null,"system_fingerprint":null,"usage":{{"prompt_tokens":812,"total_tokens":1500,"completion_tokens":688,"prompt_tokens_details":null}},"prompt_logprobs":null,"prompt_token_ids":null,"kv_transfer_params":null}}"#
    );
    let mut group = c.benchmark_group("usage_from_response");
    for (name, body) in [
        ("chat_4KiB", chat.as_bytes()),
        ("embeddings_32x4096", embeddings.as_bytes()),
    ] {
        assert!(usage_from_response(body).is_some());
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("walker", name), body, |b, body| {
            b.iter(|| usage_from_response(black_box(body)))
        });
        group.bench_with_input(
            BenchmarkId::new("serde_full_parse", name),
            body,
            |b, body| b.iter(|| serde_json::from_slice::<OnlyUsage>(black_box(body)).ok()),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the machine is shared; the figures are stable well within this.
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_scanner, bench_usage
}
criterion_main!(benches);
