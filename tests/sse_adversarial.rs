//! The SSE scanner against broken or hostile bodies: it must not panic, must keep its buffer
//! bounded, must keep forwarding, and must say the same thing however the body is chunked.
//! Framing is also checked against a plain line-by-line reading of the event-stream rules
//! (chat-completions.md §5).

use bytes::Bytes;
use proptest::prelude::*;
use vllm_gateway::sse::{SseScanner, UsageMode, MAX_EVENT_BYTES};

/// Everything the scanner reports, for comparing runs.
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
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        let chunk = Bytes::copy_from_slice(&stream[from..cut]);
        let forwarded = scanner.feed(chunk.clone());
        if mode == UsageMode::Observe {
            assert_eq!(forwarded, chunk);
        }
        out.extend_from_slice(&forwarded);
        assert!(
            scanner.buffered() <= max_event,
            "buffer over the bound: {}",
            scanner.buffered()
        );
        from = cut;
    }
    out.extend_from_slice(&scanner.finish());
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

/// Data values of the events a conforming client dispatches, read the slow, obvious way.
fn reference_events(stream: &[u8]) -> Vec<Vec<u8>> {
    let stream = stream.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(stream);
    let mut lines = Vec::new();
    let mut line = Vec::new();
    let mut i = 0;
    while i < stream.len() {
        match stream[i] {
            b'\r' => {
                lines.push(std::mem::take(&mut line));
                if stream.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => lines.push(std::mem::take(&mut line)),
            b => line.push(b),
        }
        i += 1;
    }
    // an unfinished last line (and the event it belongs to) is never dispatched
    let mut events = Vec::new();
    let mut data: Option<Vec<u8>> = None;
    for line in lines {
        if line.is_empty() {
            if let Some(d) = data.take() {
                events.push(d);
            }
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (&line[..], &b""[..]),
        };
        if name == b"data" {
            match &mut data {
                Some(d) => {
                    d.push(b'\n');
                    d.extend_from_slice(value);
                }
                None => data = Some(value.to_vec()),
            }
        }
    }
    events
}

fn arb_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"data: [DONE]".to_vec()),
        Just(b"data:[DONE]".to_vec()),
        Just(br#"data: {"choices":[{"index":0,"delta":{"content":"x"}}]}"#.to_vec()),
        Just(br#"data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#.to_vec()),
        Just(br#"data: {"error":{"message":"m","type":"t","param":null,"code":500}}"#.to_vec()),
        Just(br#"data: {"choices":[],"usage":{"prompt_tokens":1,"#.to_vec()),
        Just(b"data".to_vec()),
        Just(b"data:".to_vec()),
        Just(b": keep-alive".to_vec()),
        Just(b"event: x".to_vec()),
        Just(b"id: 7".to_vec()),
        Just(Vec::new()),
        Just(Vec::new()),
        // anything without a line end, NUL and invalid UTF-8 included
        prop::collection::vec(any::<u8>().prop_filter("no line end", |b| *b != b'\r' && *b != b'\n'), 0..40),
    ]
}

fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            arb_line(),
            prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..]), Just(&b"\r"[..])],
        ),
        0..40,
    )
    .prop_map(|lines| {
        lines
            .into_iter()
            .flat_map(|(mut l, end)| {
                l.extend_from_slice(end);
                l
            })
            .collect()
    })
}

fn cuts_for(len: usize, raw: &[prop::sample::Index]) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw.iter().map(|i| i.index(len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

/// Half of the bytes become the ones the scanner reacts to (cheaper to generate than a
/// weighted choice per byte).
fn weighted_bytes(raw: Vec<u8>) -> Vec<u8> {
    const SPECIAL: &[u8] = b"\r\n\r\n:{\"\0\xffdata";
    raw.into_iter()
        .map(|b| {
            if b < 128 {
                SPECIAL[usize::from(b) % SPECIAL.len()]
            } else {
                b
            }
        })
        .collect()
}

const MODES: [UsageMode; 2] = [UsageMode::Observe, UsageMode::StripUsageChunk];

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Framing agrees with the reference reading, whatever the chunking.
    #[test]
    fn framing_matches_reference(stream in arb_stream(), raw in prop::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        let reference = reference_events(&stream);
        let cuts = cuts_for(stream.len(), &raw);
        for mode in MODES {
            let whole = run(&stream, &[], mode, MAX_EVENT_BYTES);
            prop_assert_eq!(whole.events, reference.len() as u64);
            prop_assert_eq!(whole.done, reference.iter().any(|d| d.starts_with(b"[DONE]")));
            let split = run(&stream, &cuts, mode, MAX_EVENT_BYTES);
            prop_assert_eq!(&split, &whole);
            if mode == UsageMode::Observe {
                prop_assert_eq!(&whole.out, &stream);
            }
        }
    }

    /// Random bytes (weighted towards the ones that matter), a tiny event bound so it is hit often.
    #[test]
    fn garbage_never_panics_and_stays_bounded(
        stream in prop::collection::vec(any::<u8>(), 0..2000).prop_map(weighted_bytes),
        raw in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        max_event in 1usize..300,
    ) {
        let cuts = cuts_for(stream.len(), &raw);
        for mode in MODES {
            let whole = run(&stream, &[], mode, max_event);
            let split = run(&stream, &cuts, mode, max_event);
            prop_assert_eq!(&split, &whole);
            // nothing is dropped from garbage (nothing in it is a valid usage-only chunk)
            prop_assert_eq!(&whole.out, &stream);
        }
    }

    /// With the bound hit by real events, output and facts still do not depend on chunking.
    #[test]
    fn oversized_events_are_split_independent(stream in arb_stream(), raw in prop::collection::vec(any::<prop::sample::Index>(), 0..12), max_event in 1usize..120) {
        let cuts = cuts_for(stream.len(), &raw);
        for mode in MODES {
            prop_assert_eq!(run(&stream, &cuts, mode, max_event), run(&stream, &[], mode, max_event));
        }
    }
}

#[test]
fn huge_event_is_not_buffered_whole() {
    let usage_chunk: &[u8] = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n";
    let mut stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec();
    stream.extend(std::iter::repeat_n(b'x', 3 * MAX_EVENT_BYTES));
    stream.extend_from_slice(b"\"}}]}\n\n");
    stream.extend_from_slice(usage_chunk);
    stream.extend_from_slice(b"data: [DONE]\n\n");
    let cuts: Vec<usize> = (1..stream.len() / 65536 + 1).map(|k| k * 65536).collect();
    let strip = run(&stream, &cuts, UsageMode::StripUsageChunk, MAX_EVENT_BYTES);
    assert!(strip.malformed);
    // the huge event went through; the usage chunk after it was still recognised and removed
    assert_eq!(strip.out.len(), stream.len() - usage_chunk.len());
    assert_eq!(strip.usage.map(|u| u.total_tokens), Some(3));
    assert!(strip.done);
    assert_eq!(strip.events, 2, "the oversized event is not inspected");
    let whole = run(&stream, &[], UsageMode::StripUsageChunk, MAX_EVENT_BYTES);
    assert_eq!(whole, strip);
}

#[test]
fn endless_line_without_line_end() {
    let stream = vec![b'a'; 4 * MAX_EVENT_BYTES];
    let cuts: Vec<usize> = (1..64).map(|k| k * 65536).collect();
    for mode in MODES {
        let r = run(&stream, &cuts, mode, MAX_EVENT_BYTES);
        assert_eq!(r.out, stream);
        assert!(r.malformed);
        assert_eq!(r.events, 0);
    }
}

#[test]
fn blank_line_flood_buffers_nothing() {
    let stream = b"\r\n\n\r".repeat(100_000);
    let r = run(&stream, &[1, 2, 3, 99_999], UsageMode::StripUsageChunk, 16);
    assert_eq!(r.out, stream);
    assert!(!r.malformed);
    assert_eq!(r.events, 0);
}

#[test]
fn lone_cr_framing() {
    let content: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\r";
    let usage: &[u8] = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\r\r";
    let done: &[u8] = b"data: [DONE]\r\r";
    let stream = [content, usage, done].concat();
    let (c, u) = (content.len(), usage.len());
    for cuts in [
        vec![],
        vec![c - 1],
        vec![c],
        vec![c + u - 1],
        vec![c + 1, c + u],
        vec![c - 1, c + u - 1],
    ] {
        let r = run(&stream, &cuts, UsageMode::StripUsageChunk, MAX_EVENT_BYTES);
        assert_eq!(
            (r.events, r.content_events, r.done, r.malformed),
            (3, 1, true, false),
            "{cuts:?}"
        );
        assert_eq!(r.out, [content, done].concat(), "{cuts:?}");
    }
}

#[test]
fn nul_and_invalid_utf8_inside_events() {
    let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"\xff\xfe\x00\"}}]}\n\ndata: \x00\xc3\x28\n\n\x00\n\ndata: [DONE]\n\n";
    let r = run(
        stream,
        &[3, 41],
        UsageMode::StripUsageChunk,
        MAX_EVENT_BYTES,
    );
    assert_eq!(r.out, stream);
    assert_eq!(r.content_events, 1);
    assert_eq!(r.events, 3);
    assert!(r.done);
    assert!(r.malformed, "a data value that is not JSON is flagged");
}

#[test]
fn broken_usage_chunk_is_flagged_and_forwarded() {
    let stream = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,}}\n\ndata: [DONE]\n\n";
    let r = run(stream, &[], UsageMode::StripUsageChunk, MAX_EVENT_BYTES);
    assert_eq!(r.out, stream);
    assert!(r.malformed);
    assert_eq!(r.usage, None);
}

#[test]
fn broken_cumulative_usage_is_flagged_when_read() {
    let stream = b"data: {\"choices\":[{\"index\":0}],\"usage\":{\"prompt_tokens\":\"1\"}}\n\n";
    let r = run(stream, &[], UsageMode::Observe, MAX_EVENT_BYTES);
    assert_eq!(r.usage, None);
    assert!(r.malformed);
}
