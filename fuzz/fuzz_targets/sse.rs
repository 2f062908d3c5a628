//! The SSE scanner on arbitrary worker output, cut into arbitrary chunks, in
//! both modes. Nothing may panic, and:
//! - Observe mode forwards every chunk as it came (the same bytes, at once);
//! - Strip mode forwards a subsequence of the input, and all of it when the
//!   stream cannot spell `usage` at all;
//! - buffering never exceeds the per-event bound;
//! - what the scanner learns (events, usage, `[DONE]`, errors, malformed) and
//!   what Strip mode forwards do not depend on where the chunks split: the
//!   fuzzed chunking gives the same answers as one single chunk.
//!
//! Input layout: one knob byte (event bound), one byte per cut position
//! count, the cut offsets, then the stream.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use vllm_gateway::sse::{SseScanner, UsageMode};

#[derive(Debug, PartialEq)]
struct Report {
    out: Vec<u8>,
    events: u64,
    content_events: u64,
    done: bool,
    malformed: bool,
    usage: Option<vllm_gateway::usage::Usage>,
    error: Option<String>,
}

fn run(stream: &[u8], cuts: &[usize], mode: UsageMode, max_event: usize) -> Report {
    let mut scanner = SseScanner::with_max_event_bytes(mode, max_event);
    let mut out = Vec::with_capacity(stream.len());
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        let chunk = Bytes::copy_from_slice(&stream[from..cut]);
        let forwarded = scanner.feed(chunk.clone());
        if mode == UsageMode::Observe {
            assert_eq!(forwarded, chunk, "Observe mode changed a chunk");
        }
        out.extend_from_slice(&forwarded);
        assert!(
            scanner.buffered() <= max_event,
            "buffered {} over the bound {max_event}",
            scanner.buffered()
        );
        from = cut;
    }
    out.extend_from_slice(&scanner.finish());
    assert_eq!(scanner.buffered(), 0, "bytes held after finish");
    Report {
        out,
        events: scanner.events(),
        content_events: scanner.content_events(),
        done: scanner.saw_done(),
        usage: scanner.usage(),
        malformed: scanner.malformed(),
        error: scanner.error().map(|e| e.message.clone()),
    }
}

fn is_subsequence(small: &[u8], big: &[u8]) -> bool {
    let mut it = big.iter();
    small.iter().all(|b| it.any(|c| c == b))
}

fuzz_target!(|data: &[u8]| {
    let [knob, ncuts, rest @ ..] = data else {
        return;
    };
    // Small bounds reach the oversized-event paths; 0 means the real one.
    let max_event = match knob % 8 {
        0 => vllm_gateway::sse::MAX_EVENT_BYTES,
        k => 8usize << (2 * usize::from(k)),
    };
    let ncuts = usize::from(*ncuts % 32);
    let (cut_bytes, stream) = rest.split_at((ncuts * 2).min(rest.len()));
    let mut cuts: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| usize::from(c[0]) << 8 | usize::from(*c.get(1).unwrap_or(&0)))
        .map(|c| c % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();

    let observe = run(stream, &cuts, UsageMode::Observe, max_event);
    assert_eq!(observe.out, stream, "Observe mode lost or added bytes");
    let whole = run(stream, &[], UsageMode::Observe, max_event);
    assert_eq!(observe, whole, "Observe facts depend on the chunking");

    let strip = run(stream, &cuts, UsageMode::StripUsageChunk, max_event);
    assert!(
        is_subsequence(&strip.out, stream),
        "Strip mode forwarded bytes that were not in the stream"
    );
    // Without the word (and without escapes that could spell it), no usage
    // chunk can be recognised, so nothing may be dropped.
    if memchr::memmem::find(stream, b"usage").is_none() && !stream.contains(&b'\\') {
        assert_eq!(
            strip.out, stream,
            "Strip mode dropped bytes without a usage chunk"
        );
    }
    let strip_whole = run(stream, &[], UsageMode::StripUsageChunk, max_event);
    assert_eq!(strip, strip_whole, "Strip mode depends on the chunking");
    // Both modes read the stream the same way.
    assert_eq!(
        (
            strip.events,
            strip.content_events,
            strip.done,
            strip.usage,
            &strip.error
        ),
        (
            observe.events,
            observe.content_events,
            observe.done,
            observe.usage,
            &observe.error
        ),
        "the modes disagree about the stream"
    );
});
