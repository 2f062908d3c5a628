//! The request layer's cost per request: parse + validate + limit decision + rewrite.
//!
//! Bodies: a ~2 KB chat request with tools (the common case; target < 10 µs median) and
//! conversations of 50, 200 and 800 messages of ~1 KB each (the 200-message one is
//! ~200 KB) to show the cost grows linearly with size. Run: `cargo bench --bench validate`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Value};
use vllm_gateway::request::{
    parse_body, resolve_limit, rewrite_body, validate_chat, JsonLimits, LimitField, LimitPolicy,
    OnExceed, ValidationPolicy,
};

fn small_body() -> Vec<u8> {
    let body = json!({
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant for a travel company. Answer briefly, cite the tool results you used, and ask for missing details instead of guessing. Never invent prices."},
            {"role": "user", "content": "What's the weather in Paris tomorrow, and should I pack an umbrella for my trip?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"day\":\"tomorrow\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"forecast\":\"light rain\",\"high_c\":14,\"low_c\":8,\"precip_prob\":0.7}"},
            {"role": "assistant", "content": "Tomorrow in Paris: light rain, 8 to 14 degrees C, 70% chance of rain. Yes, pack an umbrella."},
            {"role": "user", "content": [
                {"type": "text", "text": "Thanks! Also book me a table for two near the Louvre at 8pm, somewhere quiet."}
            ]}
        ],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Current and forecast weather for a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "day": {"type": "string", "enum": ["today", "tomorrow"]}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "book_restaurant", "description": "Reserve a table at a restaurant near a landmark.",
                "parameters": {"type": "object", "properties": {"near": {"type": "string"}, "time": {"type": "string"}, "party_size": {"type": "integer", "minimum": 1}, "ambience": {"type": "string"}}, "required": ["near", "time", "party_size"]}}},
            {"type": "function", "function": {"name": "search_flights", "description": "Find flights between two airports on a date.",
                "parameters": {"type": "object", "properties": {"from": {"type": "string"}, "to": {"type": "string"}, "date": {"type": "string", "format": "date"}}, "required": ["from", "to", "date"]}}}
        ],
        "tool_choice": "auto",
        "temperature": 0.7,
        "top_p": 0.95,
        "max_completion_tokens": 512,
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "user-1234",
        "metadata": {"tenant": "acme", "trace": "abc123"}
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn conversation(messages: usize) -> Vec<u8> {
    let turn = "This is a longer conversational turn that repeats to reach about one kilobyte of text, with punctuation, numbers like 42 and 3.14, and \"quoted\" words. ".repeat(6);
    let mut msgs = vec![json!({"role": "system", "content": "You are a helpful assistant."})];
    for i in 1..messages {
        let role = if i % 2 == 1 { "user" } else { "assistant" };
        msgs.push(json!({"role": role, "content": format!("{i}: {turn}")}));
    }
    let body: Value =
        json!({"model": "m", "messages": msgs, "max_tokens": 8000, "temperature": 0.2});
    serde_json::to_vec(&body).unwrap_or_default()
}

fn policy() -> LimitPolicy {
    LimitPolicy {
        default_max_tokens: Some(1024),
        max_tokens_cap: Some(4096),
        on_exceed: OnExceed::Clamp,
        limit_field: LimitField::MaxTokens,
        // Large enough for the 800-message body's upper bound: the bench measures the
        // happy path, not a context_length_exceeded answer.
        max_model_len: Some(1 << 20),
    }
}

/// Everything the proxy does with a body before forwarding it.
fn full(bytes: &[u8], vp: &ValidationPolicy, lp: &LimitPolicy) -> usize {
    let Ok(value) = parse_body(bytes, &JsonLimits::default()) else {
        return 0;
    };
    let Ok(facts) = validate_chat(&value, vp) else {
        return 0;
    };
    let prompt = vllm_gateway::request::tokens::upper_bound(&facts);
    let Ok(Some(decision)) = resolve_limit(&facts, lp, Some(prompt)) else {
        return 0;
    };
    match rewrite_body(bytes, &decision.rewrite_plan()) {
        Ok(out) => out.len() + facts.prefix_key(4096) as usize % 2,
        Err(_) => 0,
    }
}

fn bench(c: &mut Criterion) {
    let vp = ValidationPolicy::default();
    let lp = policy();
    let small = small_body();
    assert!(full(&small, &vp, &lp) > 0, "the 2 KB body must pass");

    eprintln!("small body: {} bytes", small.len());

    let mut g = c.benchmark_group("small_2kb_with_tools");
    g.throughput(Throughput::Bytes(small.len() as u64));
    // serde_json's own Value parse, for comparison with parse_body's checks.
    g.bench_function("serde_json_value_baseline", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(&small)).map(|v| v.is_object()))
    });
    g.bench_function("parse", |b| {
        b.iter(|| parse_body(black_box(&small), &JsonLimits::default()))
    });
    let value = parse_body(&small, &JsonLimits::default()).unwrap_or_default();
    g.bench_function("validate", |b| {
        b.iter(|| validate_chat(black_box(&value), &vp))
    });
    let facts = validate_chat(&value, &vp).ok();
    if let Some(facts) = &facts {
        g.bench_function("resolve_and_rewrite", |b| {
            b.iter(|| {
                let d = resolve_limit(black_box(facts), &lp, Some(900));
                d.ok()
                    .flatten()
                    .map(|d| rewrite_body(black_box(&small), &d.rewrite_plan()).map(|o| o.len()))
            })
        });
    }
    g.bench_function("scan_members", |b| {
        b.iter(|| {
            vllm_gateway::request::splice::top_level_members(black_box(&small))
                .map(|s| s.members.len())
        })
    });
    g.bench_function("full", |b| b.iter(|| full(black_box(&small), &vp, &lp)));
    g.finish();

    let mut g = c.benchmark_group("conversation_full");
    g.sample_size(30);
    for n in [50usize, 200, 800] {
        let body = conversation(n);
        eprintln!("{n}-message body: {} bytes", body.len());
        assert!(full(&body, &vp, &lp) > 0, "the {n}-message body must pass");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("messages", n), &body, |b, body| {
            b.iter(|| full(black_box(body), &vp, &lp))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
