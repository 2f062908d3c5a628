//! Counting what an answer cost, exactly, on its way through.
//!
//! [`AnswerMeter`] is the [`ResponseTap`] the gateway puts on every answer:
//! for SSE it runs the [`SseScanner`] (which reads usage without re-serializing
//! the stream, and drops the usage-only chunk when the gateway asked for it on
//! the client's behalf); for JSON answers it keeps the chunks (reference
//! counted, no copy) and reads `usage` at the end. When no usage arrives (the
//! worker died, the client left), it falls back to counting the completion
//! events that were delivered, and says the figure is an estimate.

use bytes::Bytes;

use crate::forward::ResponseTap;
use crate::sse::{SseScanner, UsageMode};
use crate::usage::{usage_from_response, Usage};

/// JSON answers larger than this are passed through without looking for
/// `usage` (an embeddings answer can be megabytes; usage is then estimated).
const MAX_METERED_JSON: usize = 16 * 1024 * 1024;

/// Token counts of one answer and whether they are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metered {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: Option<u64>,
    /// The worker reported them (`usage`), rather than the gateway estimating.
    pub exact: bool,
}

#[derive(Debug)]
enum Body {
    /// Before the answer head.
    Unknown,
    Sse(Box<SseScanner>),
    Json {
        chunks: Vec<Bytes>,
        len: usize,
    },
    /// Too large to keep, or an error answer: usage is not read.
    Skipped,
}

/// The tap on one answer.
#[derive(Debug)]
pub struct AnswerMeter {
    /// Remove the usage-only SSE chunk (the gateway injected include_usage).
    strip_usage: bool,
    body: Body,
}

impl AnswerMeter {
    pub fn new(strip_usage: bool) -> AnswerMeter {
        AnswerMeter {
            strip_usage,
            body: Body::Unknown,
        }
    }

    /// The answer's usage if the worker reported it.
    pub fn reported_usage(&mut self) -> Option<Usage> {
        match &mut self.body {
            Body::Sse(scanner) => scanner.usage(),
            Body::Json { chunks, len } => {
                let joined;
                let body: &[u8] = match chunks.as_slice() {
                    [one] => one,
                    _ => {
                        let mut all = Vec::with_capacity(*len);
                        for c in chunks.iter() {
                            all.extend_from_slice(c);
                        }
                        joined = all;
                        &joined
                    }
                };
                usage_from_response(body)
            }
            Body::Unknown | Body::Skipped => None,
        }
    }

    /// Completion events delivered (SSE), for the estimate.
    pub fn content_events(&self) -> u64 {
        match &self.body {
            Body::Sse(scanner) => scanner.content_events(),
            _ => 0,
        }
    }

    /// Whether the stream ended with `[DONE]`.
    pub fn saw_done(&self) -> bool {
        matches!(&self.body, Body::Sse(s) if s.saw_done())
    }

    /// Token counts: the worker's usage when it came, else an estimate from
    /// `prompt_estimate` and the completion events delivered.
    pub fn settle(&mut self, prompt_estimate: u64) -> Metered {
        match self.reported_usage() {
            Some(u) => Metered {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                cached_tokens: u.cached_tokens,
                exact: true,
            },
            None => Metered {
                prompt_tokens: prompt_estimate,
                completion_tokens: self.content_events(),
                cached_tokens: None,
                exact: false,
            },
        }
    }
}

impl ResponseTap for AnswerMeter {
    fn on_head(&mut self, status: u16, is_sse: bool) {
        self.body = if is_sse {
            let mode = if self.strip_usage {
                UsageMode::StripUsageChunk
            } else {
                UsageMode::Observe
            };
            Body::Sse(Box::new(SseScanner::new(mode)))
        } else if status < 300 {
            Body::Json {
                chunks: Vec::new(),
                len: 0,
            }
        } else {
            Body::Skipped
        };
    }

    fn on_chunk(&mut self, chunk: Bytes) -> Bytes {
        match &mut self.body {
            Body::Sse(scanner) => scanner.feed(chunk),
            Body::Json { chunks, len } => {
                if *len + chunk.len() > MAX_METERED_JSON {
                    self.body = Body::Skipped;
                } else {
                    *len += chunk.len();
                    chunks.push(chunk.clone());
                }
                chunk
            }
            Body::Unknown | Body::Skipped => chunk,
        }
    }

    fn on_end(&mut self) -> Bytes {
        match &mut self.body {
            Body::Sse(scanner) => scanner.finish(),
            _ => Bytes::new(),
        }
    }

    fn first_token_seen(&self) -> bool {
        match &self.body {
            Body::Sse(scanner) => scanner.first_content_seen(),
            _ => true,
        }
    }

    fn malformed(&self) -> bool {
        matches!(&self.body, Body::Sse(scanner) if scanner.malformed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" a\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" b\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n",
        "data: [DONE]\n\n",
    );

    fn run(meter: &mut AnswerMeter, body: &str, cut: usize) -> String {
        meter.on_head(200, true);
        let mut out = Vec::new();
        out.extend_from_slice(&meter.on_chunk(Bytes::copy_from_slice(&body.as_bytes()[..cut])));
        out.extend_from_slice(&meter.on_chunk(Bytes::copy_from_slice(&body.as_bytes()[cut..])));
        out.extend_from_slice(&meter.on_end());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strips_the_injected_usage_chunk_and_keeps_the_count() {
        let mut m = AnswerMeter::new(true);
        let out = run(&mut m, STREAM, 100);
        assert!(!out.contains("usage"));
        assert!(out.ends_with("data: [DONE]\n\n"));
        let metered = m.settle(99);
        assert_eq!(
            (
                metered.prompt_tokens,
                metered.completion_tokens,
                metered.exact
            ),
            (7, 2, true)
        );
    }

    #[test]
    fn passes_usage_the_client_asked_for() {
        let mut m = AnswerMeter::new(false);
        let out = run(&mut m, STREAM, 37);
        assert_eq!(out, STREAM);
        assert!(m.settle(0).exact);
    }

    #[test]
    fn a_cut_stream_is_estimated() {
        let cut = STREAM
            .find("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[]")
            .unwrap();
        let mut m = AnswerMeter::new(true);
        let _ = run(&mut m, &STREAM[..cut], 10);
        let metered = m.settle(40);
        assert_eq!(
            (
                metered.prompt_tokens,
                metered.completion_tokens,
                metered.exact
            ),
            (40, 2, false)
        );
    }

    #[test]
    fn json_usage_is_read_across_chunks() {
        let body = r#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        let mut m = AnswerMeter::new(false);
        m.on_head(200, false);
        let a = m.on_chunk(Bytes::copy_from_slice(&body.as_bytes()[..20]));
        let b = m.on_chunk(Bytes::copy_from_slice(&body.as_bytes()[20..]));
        assert_eq!(a.len() + b.len(), body.len());
        let metered = m.settle(0);
        assert_eq!((metered.prompt_tokens, metered.completion_tokens), (3, 4));
        assert!(metered.exact);
    }
}
