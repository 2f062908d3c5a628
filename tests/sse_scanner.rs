//! The SSE scanner against canned vLLM streams (tests/fixtures/sse), under every line-ending
//! style and every way of splitting the body into chunks.
//!
//! For each stream the test knows where every event starts, where its blank line makes it
//! complete, and which one is the usage-only chunk. From that it states what must have come out
//! after any prefix of the body was fed: in Observe mode exactly that prefix; in Strip mode that
//! prefix minus the usage-only event and minus only the one event still incomplete.

use bytes::Bytes;
use proptest::prelude::*;
use vllm_gateway::sse::{in_band_error_event, SseScanner, UsageMode};
use vllm_gateway::usage::Usage;

struct Case {
    file: &'static str,
    events: u64,
    content_events: u64,
    usage: Option<Usage>,
    done: bool,
    error: Option<&'static str>,
}

fn usage(prompt: u64, completion: u64, cached: Option<u64>) -> Option<Usage> {
    Some(Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        cached_tokens: cached,
    })
}

/// Expected facts, counted independently when the fixtures were written.
fn cases() -> Vec<Case> {
    vec![
        Case {
            file: "chat_n1_usage.txt",
            events: 14,
            content_events: 10,
            usage: usage(21, 10, None),
            done: true,
            error: None,
        },
        Case {
            file: "chat_n1_plain.txt",
            events: 13,
            content_events: 10,
            usage: None,
            done: true,
            error: None,
        },
        Case {
            file: "chat_n2_usage.txt",
            events: 14,
            content_events: 8,
            usage: usage(15, 8, None),
            done: true,
            error: None,
        },
        Case {
            file: "chat_continuous_usage.txt",
            events: 10,
            content_events: 6,
            usage: usage(9, 6, None),
            done: true,
            error: None,
        },
        Case {
            file: "chat_continuous_cut.txt",
            events: 5,
            content_events: 4,
            usage: usage(9, 4, None),
            done: false,
            error: None,
        },
        Case {
            file: "chat_error.txt",
            events: 6,
            content_events: 3,
            usage: None,
            done: true,
            error: Some("The engine died: \"CUDA error: out of memory\""),
        },
        Case {
            file: "chat_keepalive.txt",
            events: 8,
            content_events: 4,
            usage: usage(30, 4, None),
            done: true,
            error: None,
        },
        Case {
            file: "chat_no_done.txt",
            events: 6,
            content_events: 5,
            usage: None,
            done: false,
            error: None,
        },
        Case {
            file: "chat_reasoning_tools.txt",
            events: 14,
            content_events: 9,
            usage: usage(120, 40, Some(96)),
            done: true,
            error: None,
        },
        Case {
            file: "completions_usage.txt",
            events: 8,
            content_events: 5,
            usage: usage(6, 5, None),
            done: true,
            error: None,
        },
        Case {
            file: "multiline.txt",
            events: 5,
            content_events: 2,
            usage: usage(4, 2, None),
            done: true,
            error: None,
        },
    ]
}

/// The fixture's events, each without its closing blank line; lines inside an event end with `\n`.
fn load(file: &str) -> Vec<String> {
    let path = format!("{}/tests/fixtures/sse/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Framing {
    Lf,
    CrLf,
    Cr,
    /// A different (line end, blank line) pair per event, plus stray blank lines between events.
    Mixed,
}

const FRAMINGS: [Framing; 4] = [Framing::Lf, Framing::CrLf, Framing::Cr, Framing::Mixed];

/// Where one event lies in a built stream.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    /// Just past its closing blank line.
    end: usize,
    /// The first prefix length at which the event is complete: the scanner may dispatch on the
    /// CR of a CRLF blank line before the LF arrives.
    complete_at: usize,
    usage_only: bool,
}

fn build(events: &[String], framing: Framing) -> (Vec<u8>, Vec<Span>) {
    // (line end, blank line); a lone CR is never followed by a line starting with LF.
    const MIXED: [(&str, &str); 6] = [
        ("\n", "\n"),
        ("\r\n", "\r\n"),
        ("\r", "\r"),
        ("\n", "\r\n"),
        ("\r\n", "\n"),
        ("\r", "\r\n"),
    ];
    let mut out = Vec::new();
    let mut spans = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let (line_end, blank) = match framing {
            Framing::Lf => ("\n", "\n"),
            Framing::CrLf => ("\r\n", "\r\n"),
            Framing::Cr => ("\r", "\r"),
            Framing::Mixed => MIXED[i % MIXED.len()],
        };
        if matches!(framing, Framing::Mixed) && i % 4 == 3 {
            // A stray blank line, of a kind that cannot merge with the previous line end.
            let stray = if out.last() == Some(&b'\r') {
                "\r"
            } else {
                "\n"
            };
            out.extend_from_slice(stray.as_bytes());
        }
        let start = out.len();
        out.extend_from_slice(event.replace('\n', line_end).as_bytes());
        out.extend_from_slice(line_end.as_bytes());
        out.extend_from_slice(blank.as_bytes());
        let end = out.len();
        let complete_at = if blank == "\r\n" { end - 1 } else { end };
        let usage_only = event.contains("\"choices\":[],") || event.contains("\"choices\":[]\n");
        spans.push(Span {
            start,
            end,
            complete_at,
            usage_only,
        });
    }
    (out, spans)
}

/// What the scanner must have forwarded after the first `p` bytes were fed.
fn expected_after(stream: &[u8], spans: &[Span], p: usize, mode: UsageMode) -> Vec<u8> {
    if mode == UsageMode::Observe {
        return stream[..p].to_vec();
    }
    let mut keep = vec![true; p];
    for s in spans {
        let removed = if s.usage_only {
            s.start..s.end.min(p)
        } else if s.start < p && p < s.complete_at {
            s.start..p // the incomplete tail event, held back
        } else {
            continue;
        };
        for k in removed {
            if k < p {
                keep[k] = false;
            }
        }
    }
    stream[..p]
        .iter()
        .zip(keep)
        .filter_map(|(b, k)| k.then_some(*b))
        .collect()
}

fn expected_total(stream: &[u8], spans: &[Span], mode: UsageMode) -> Vec<u8> {
    expected_after(stream, spans, stream.len(), mode)
}

/// Feeds `stream` cut at `cuts` (sorted); returns everything forwarded and the scanner.
fn run(stream: &[u8], cuts: &[usize], mode: UsageMode) -> (Vec<u8>, SseScanner) {
    let mut scanner = SseScanner::new(mode);
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        let chunk = Bytes::copy_from_slice(&stream[from..cut]);
        let forwarded = scanner.feed(chunk.clone());
        if mode == UsageMode::Observe {
            assert_eq!(
                forwarded.as_ptr(),
                chunk.as_ptr(),
                "Observe must hand back the same Bytes"
            );
        }
        out.extend_from_slice(&forwarded);
        from = cut;
    }
    out.extend_from_slice(&scanner.finish());
    (out, scanner)
}

fn check_facts(case: &Case, scanner: &mut SseScanner, ctx: &str) {
    assert_eq!(scanner.events(), case.events, "events {ctx}");
    assert_eq!(
        scanner.content_events(),
        case.content_events,
        "content events {ctx}"
    );
    assert_eq!(
        scanner.first_content_seen(),
        case.content_events > 0,
        "first content {ctx}"
    );
    assert_eq!(scanner.saw_done(), case.done, "done {ctx}");
    assert_eq!(
        scanner.error().map(|e| e.message.as_str()),
        case.error,
        "error {ctx}"
    );
    assert_eq!(scanner.usage(), case.usage, "usage {ctx}");
    assert!(!scanner.malformed(), "malformed {ctx}");
    assert_eq!(scanner.buffered(), 0, "buffered {ctx}");
}

const MODES: [UsageMode; 2] = [UsageMode::Observe, UsageMode::StripUsageChunk];

#[test]
fn whole_streams() {
    for case in cases() {
        let events = load(case.file);
        for framing in FRAMINGS {
            let (stream, spans) = build(&events, framing);
            for mode in MODES {
                let ctx = format!("{} {framing:?} {mode:?}", case.file);
                let (out, mut scanner) = run(&stream, &[], mode);
                assert_eq!(out, expected_total(&stream, &spans, mode), "{ctx}");
                check_facts(&case, &mut scanner, &ctx);
            }
        }
    }
}

/// Split in two at every byte position; after the first part, exactly the complete events
/// (and in-between bytes) must be out already.
#[test]
fn every_split_position() {
    for case in cases() {
        let events = load(case.file);
        for framing in FRAMINGS {
            let (stream, spans) = build(&events, framing);
            for mode in MODES {
                let total = expected_total(&stream, &spans, mode);
                for p in 0..=stream.len() {
                    let ctx = format!("{} {framing:?} {mode:?} split at {p}", case.file);
                    let mut scanner = SseScanner::new(mode);
                    let mut out = scanner.feed(Bytes::copy_from_slice(&stream[..p])).to_vec();
                    if out != expected_after(&stream, &spans, p, mode) {
                        panic!(
                            "inline delivery {ctx}: got {:?}",
                            String::from_utf8_lossy(&out)
                        );
                    }
                    out.extend_from_slice(&scanner.feed(Bytes::copy_from_slice(&stream[p..])));
                    out.extend_from_slice(&scanner.finish());
                    assert!(out == total, "output {ctx}");
                    check_facts(&case, &mut scanner, &ctx);
                }
            }
        }
    }
}

/// One byte per chunk: every boundary at once, and the output after every byte.
#[test]
fn byte_at_a_time() {
    for case in cases() {
        let events = load(case.file);
        for framing in FRAMINGS {
            let (stream, spans) = build(&events, framing);
            for mode in MODES {
                let ctx = format!("{} {framing:?} {mode:?}", case.file);
                let mut scanner = SseScanner::new(mode);
                let mut out = Vec::new();
                for p in 0..stream.len() {
                    out.extend_from_slice(&scanner.feed(Bytes::copy_from_slice(&stream[p..=p])));
                    assert!(
                        out == expected_after(&stream, &spans, p + 1, mode),
                        "{ctx} after byte {p}"
                    );
                }
                out.extend_from_slice(&scanner.finish());
                assert_eq!(out, expected_total(&stream, &spans, mode), "{ctx}");
                check_facts(&case, &mut scanner, &ctx);
            }
        }
    }
}

#[test]
fn strip_returns_each_complete_event_immediately() {
    let events = load("chat_n1_usage.txt");
    let mut scanner = SseScanner::new(UsageMode::StripUsageChunk);
    for event in &events {
        let bytes = Bytes::from(format!("{event}\n\n"));
        let out = scanner.feed(bytes.clone());
        if event.contains("\"choices\":[]") {
            assert!(out.is_empty(), "the usage-only chunk is removed");
        } else {
            assert_eq!(out, bytes, "a complete event is forwarded by the same feed");
            assert_eq!(out.as_ptr(), bytes.as_ptr(), "and without copying");
        }
        assert_eq!(scanner.buffered(), 0);
    }
    assert_eq!(scanner.usage().map(|u| u.total_tokens), Some(31));
}

#[test]
fn first_content_is_known_on_the_feed_that_completes_it() {
    let events = load("chat_n1_usage.txt");
    let mut scanner = SseScanner::new(UsageMode::Observe);
    // the role chunk carries no text
    scanner.feed(Bytes::from(format!("{}\n\n", events[0])));
    assert!(!scanner.first_content_seen());
    let first_text = format!("{}\n\n", events[1]);
    scanner.feed(Bytes::copy_from_slice(&first_text.as_bytes()[..20]));
    assert!(!scanner.first_content_seen());
    scanner.feed(Bytes::copy_from_slice(&first_text.as_bytes()[20..]));
    assert!(scanner.first_content_seen());
    assert_eq!(scanner.content_events(), 1);
}

#[test]
fn truncated_mid_event() {
    let events = load("chat_n1_usage.txt");
    let (stream, _) = build(&events, Framing::Lf);
    // cut inside the usage-only chunk: it never completed, so it is neither counted nor removed
    let cut = stream.len() - "data: [DONE]\n\n".len() - 30;
    for mode in MODES {
        let (out, mut scanner) = run(&stream[..cut], &[cut / 2], mode);
        assert_eq!(
            out,
            &stream[..cut],
            "{mode:?}: held bytes come back from finish()"
        );
        assert!(scanner.malformed());
        assert!(!scanner.saw_done());
        assert_eq!(scanner.events(), 12);
        assert_eq!(scanner.usage(), None);
    }
}

#[test]
fn gateway_error_event_is_read_back() {
    let events = load("chat_n1_plain.txt");
    let mut stream: Vec<u8> = events[..4]
        .iter()
        .flat_map(|e| format!("{e}\n\n").into_bytes())
        .collect();
    stream.extend_from_slice(&in_band_error_event(
        "upstream \"worker\" reset\n",
        "server_error",
        Some("upstream_reset"),
    ));
    let (out, scanner) = run(&stream, &[7, 300], UsageMode::StripUsageChunk);
    assert_eq!(out, stream);
    let err = scanner.error().unwrap();
    assert_eq!(err.message, "upstream \"worker\" reset\n");
    assert_eq!(err.error_type.as_deref(), Some("server_error"));
    assert_eq!(err.code.as_deref(), Some("upstream_reset"));
    assert!(scanner.saw_done());
    assert_eq!(scanner.events(), 6);
    assert!(!scanner.malformed());
}

#[test]
fn usage_only_event_is_dropped_whole_with_its_crlf() {
    let events = load("chat_n1_usage.txt");
    let (stream, spans) = build(&events, Framing::CrLf);
    let usage_span = spans.iter().find(|s| s.usage_only).unwrap();
    assert_eq!(&stream[usage_span.end - 4..usage_span.end], b"\r\n\r\n");
    let (out, _) = run(&stream, &[usage_span.end - 1], UsageMode::StripUsageChunk);
    let mut expected = stream[..usage_span.start].to_vec();
    expected.extend_from_slice(&stream[usage_span.end..]);
    assert_eq!(out, expected);
}

fn arb_case() -> impl Strategy<Value = (usize, usize)> {
    (0..cases().len(), 0..FRAMINGS.len())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random chunkings of every fixture: output and facts do not depend on where cuts fall.
    #[test]
    fn random_splits((case_ix, framing_ix) in arb_case(), raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40), strip in any::<bool>()) {
        let case = &cases()[case_ix];
        let (stream, spans) = build(&load(case.file), FRAMINGS[framing_ix]);
        let mut cuts: Vec<usize> = raw_cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mode = if strip { UsageMode::StripUsageChunk } else { UsageMode::Observe };
        let (out, mut scanner) = run(&stream, &cuts, mode);
        prop_assert!(out == expected_total(&stream, &spans, mode));
        check_facts(case, &mut scanner, &format!("{} cuts {cuts:?}", case.file));
    }
}
