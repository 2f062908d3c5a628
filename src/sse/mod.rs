//! The SSE scanner run inline on every streamed answer.
//!
//! It sits in Pingora's synchronous `response_body_filter` (pingora.md §5): each upstream body
//! chunk goes through [`SseScanner::feed`] and the returned bytes go downstream; at the end of the
//! body [`SseScanner::finish`] returns whatever was still held back. Along the way it learns the
//! usage, whether `[DONE]` came, in-band errors and how many events carried text.
//!
//! Framing follows the event-stream rules summarised in chat-completions.md §5: a line ends at
//! CRLF, LF or a lone CR; an empty line ends an event. Chunk boundaries fall anywhere, including
//! between the CR and LF of one line end, so the framing state carries over between chunks.
//!
//! The stream is never re-serialized. In [`UsageMode::Observe`] the scanner only reads and hands
//! back the very `Bytes` it was given. In [`UsageMode::StripUsageChunk`] it forwards every byte as
//! received except the usage-only chunk, and holds back only an incomplete tail event until its end
//! is seen (so that chunk can be dropped whole).

mod error;
mod event;

use bytes::{Bytes, BytesMut};
use memchr::memchr2;

pub use error::{in_band_error_event, InBandError};

use crate::usage::Usage;
use event::StreamFacts;

/// How the scanner treats the usage-only chunk (`"choices":[]` plus `usage`, sent just before
/// `[DONE]` when `stream_options.include_usage` is on: chat-completions.md §4, vllm.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageMode {
    /// The client asked for usage itself: pass everything through, only read.
    Observe,
    /// The gateway injected `include_usage` to count tokens: remove the usage-only chunk from what
    /// the client sees. Cumulative usage on regular chunks (`continuous_usage_stats`) is left as is,
    /// since removing it would mean rewriting those chunks.
    StripUsageChunk,
}

/// Events longer than this are not buffered or inspected: a broken worker must not make the
/// gateway's memory grow. vLLM's chunks are a few hundred bytes; even a tool call's arguments
/// arrive as many small deltas.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// UTF-8 byte order mark, ignored at the very start of an event stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Scans one SSE response body. One per streamed request; not shared between threads.
#[derive(Debug)]
pub struct SseScanner {
    mode: UsageMode,
    max_event: usize,
    // Framing state, carried across chunks.
    /// The previous byte ended a line (or nothing has been seen yet).
    at_line_start: bool,
    /// The previous chunk ended with a CR line end: an LF opening this chunk belongs to it.
    after_cr: bool,
    /// ... and that CR ended the event that was just dropped, so the LF goes too.
    drop_next_lf: bool,
    /// A line with content has been seen since the last event ended.
    in_event: bool,
    /// The current event outgrew `max_event`: it flows through unbuffered and uninspected.
    oversized: bool,
    /// The current event starts at stream offset 0, where a BOM is ignored.
    at_stream_start: bool,
    /// Bytes of the stream before the current chunk.
    stream_pos: u64,
    /// The part of the current event seen in earlier chunks (in Strip mode: not yet forwarded).
    /// Reused: it only allocates while a split event is longer than any before it.
    carry: BytesMut,
    /// Joins the lines of a multi-line `data` event; reused.
    scratch: Vec<u8>,
    facts: StreamFacts,
}

impl SseScanner {
    pub fn new(mode: UsageMode) -> Self {
        Self::with_max_event_bytes(mode, MAX_EVENT_BYTES)
    }

    /// Like [`SseScanner::new`] with another per-event bound (tests use a small one).
    pub fn with_max_event_bytes(mode: UsageMode, max_event_bytes: usize) -> Self {
        Self {
            mode,
            max_event: max_event_bytes,
            at_line_start: true,
            after_cr: false,
            drop_next_lf: false,
            in_event: false,
            oversized: false,
            at_stream_start: false,
            stream_pos: 0,
            carry: BytesMut::new(),
            scratch: Vec::new(),
            facts: StreamFacts::default(),
        }
    }

    /// Feeds one upstream body chunk; returns the bytes to forward downstream now.
    ///
    /// Observe mode returns `chunk` itself (zero-copy). Strip mode returns every complete event
    /// at once, minus the usage-only one, and holds back only an incomplete tail event; the result
    /// is a slice of `chunk` unless bytes had to be joined or cut out. It may be empty.
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        match self.mode {
            UsageMode::Observe => {
                self.scan(&chunk, &mut Out::Discard);
                chunk
            }
            UsageMode::StripUsageChunk => {
                let mut out = Out::Empty;
                self.scan(&chunk, &mut out);
                out.into_bytes(&chunk)
            }
        }
    }

    /// End of the upstream body: returns the bytes still held back (Strip mode), if any.
    ///
    /// A stream that ends inside an event (no closing blank line) is malformed: clients discard
    /// such an event (chat-completions.md §5), so it is not counted, but its bytes are forwarded.
    pub fn finish(&mut self) -> Bytes {
        let held = std::mem::take(&mut self.carry);
        if self.in_event {
            self.facts.malformed = true;
        }
        self.in_event = false;
        self.oversized = false;
        self.at_line_start = true;
        self.after_cr = false;
        self.drop_next_lf = false;
        match self.mode {
            UsageMode::StripUsageChunk => held.freeze(),
            UsageMode::Observe => Bytes::new(),
        }
    }

    /// The request's usage: the usage-only chunk's, else the last cumulative one
    /// (`continuous_usage_stats`, vllm.md §5), which is parsed here on first call, not per event.
    pub fn usage(&mut self) -> Option<Usage> {
        if let Some(u) = self.facts.final_usage {
            return Some(u);
        }
        match self.facts.running_usage.get() {
            Ok(u) => u,
            Err(()) => {
                self.facts.malformed = true;
                None
            }
        }
    }

    /// `data: [DONE]` was seen. False at the end of the body means the stream was cut short.
    pub fn saw_done(&self) -> bool {
        self.facts.done
    }

    /// The first in-band `{"error": …}` event, if any.
    pub fn error(&self) -> Option<&InBandError> {
        self.facts.error.as_ref()
    }

    /// Events with data seen (`[DONE]` and error events included; comments and keep-alives not).
    pub fn events(&self) -> u64 {
        self.facts.events
    }

    /// Events that delivered generated text (non-empty `content`, `reasoning`/`reasoning_content`,
    /// tool-call `arguments`, or completions `text`): the completion-token estimate when no usage
    /// arrives (pingora.md §5). With `n > 1`, choices interleave and each event counts once.
    pub fn content_events(&self) -> u64 {
        self.facts.content_events
    }

    /// Some event has delivered text. Check it after each `feed`: the first `feed` after which it
    /// turns true carried the first token (time to first token).
    pub fn first_content_seen(&self) -> bool {
        self.facts.content_events > 0
    }

    /// Something in the stream was not valid SSE carrying OpenAI chunks: a data value that is not a
    /// JSON object or `[DONE]`, an unparsable usage or error event, an event over the size bound,
    /// or a body that ended inside an event. Bytes keep flowing regardless.
    pub fn malformed(&self) -> bool {
        self.facts.malformed
    }

    /// Bytes currently buffered (the incomplete tail event); never more than the event bound.
    pub fn buffered(&self) -> usize {
        self.carry.len()
    }

    /// The framing pass over one chunk. Events that end in it are inspected (and in Strip mode
    /// possibly dropped); a tail event that does not end is carried to the next chunk.
    fn scan(&mut self, chunk: &[u8], out: &mut Out) {
        if chunk.is_empty() {
            // Nothing to see, and the CR-then-LF state must survive until a byte arrives.
            return;
        }
        let len = chunk.len();
        let mut i = 0;
        // Bytes of `chunk` before `emit_from` are already in `out`, dropped, or held.
        let mut emit_from = 0;
        // Start of the current event in this chunk; `None` while it began in an earlier one.
        let mut ev_start: Option<usize> = None;

        if self.after_cr {
            self.after_cr = false;
            if chunk.first() == Some(&b'\n') {
                i = 1;
                if self.drop_next_lf {
                    emit_from = 1;
                }
            }
        }
        self.drop_next_lf = false;

        while i < len {
            if self.at_line_start {
                let b = chunk[i];
                if b == b'\n' || b == b'\r' {
                    // An empty line: it ends the current event, if there is one. The event is
                    // complete at `i + 1`, even if an LF (maybe in the next chunk) follows a CR.
                    let complete_at = i + 1;
                    i = self.skip_line_end(chunk, i);
                    if self.in_event {
                        self.end_event(chunk, ev_start, complete_at, i, out, &mut emit_from);
                        ev_start = None;
                    }
                    continue;
                }
                if !self.in_event {
                    self.in_event = true;
                    self.at_stream_start = self.stream_pos == 0 && i == 0;
                    ev_start = Some(i);
                }
                self.at_line_start = false;
            }
            // Inside a line: jump to its end.
            match memchr2(b'\n', b'\r', &chunk[i..]) {
                None => i = len,
                Some(off) => {
                    i = self.skip_line_end(chunk, i + off);
                    self.at_line_start = true;
                }
            }
        }

        if self.in_event && !self.oversized {
            // Carry the incomplete tail event to the next chunk.
            let start = ev_start.unwrap_or(0);
            let tail = &chunk[start..];
            if self.carry.len() + tail.len() > self.max_event {
                self.overflow(chunk, out);
            } else {
                out.push(chunk, emit_from, start);
                self.carry.extend_from_slice(tail);
                emit_from = len;
            }
        }
        out.push(chunk, emit_from, len);
        self.stream_pos += len as u64;
    }

    /// `chunk[at]` is CR or LF; returns the index past that line end (CRLF counts as one). A CR
    /// that ends the chunk leaves `after_cr` set, for an LF that may open the next chunk.
    fn skip_line_end(&mut self, chunk: &[u8], at: usize) -> usize {
        let next = at + 1;
        if chunk.get(at) == Some(&b'\r') {
            match chunk.get(next) {
                Some(b'\n') => return next + 1,
                None => self.after_cr = true,
                Some(_) => {}
            }
        }
        next
    }

    /// The current event is complete at `complete_at` and ends just before `end` (its closing
    /// blank line included; `end` is one more when the LF of a CRLF is in this chunk). The size
    /// bound is judged at `complete_at`, so the verdict does not depend on where chunks split.
    fn end_event(
        &mut self,
        chunk: &[u8],
        ev_start: Option<usize>,
        complete_at: usize,
        end: usize,
        out: &mut Out,
        emit_from: &mut usize,
    ) {
        self.in_event = false;
        if self.oversized {
            // Already flagged and flowing through.
            self.oversized = false;
            return;
        }
        let strip = self.mode == UsageMode::StripUsageChunk;
        let dropped = match ev_start {
            Some(start) => {
                let event = &chunk[start..end];
                if complete_at - start > self.max_event {
                    // Same verdict as when the event is split over chunks (see `overflow`).
                    self.facts.malformed = true;
                    false
                } else {
                    let event = self.without_bom(event);
                    let drop = self.facts.on_event(event, &mut self.scratch) && strip;
                    if drop {
                        out.push(chunk, *emit_from, start);
                        *emit_from = end;
                    }
                    drop
                }
            }
            None => {
                // It began in an earlier chunk: its head is in `carry`.
                if self.carry.len() + complete_at > self.max_event {
                    // Over the bound once complete: not inspected, held head released; the rest
                    // flows from `emit_from` (still 0). Same verdict as for an unsplit event.
                    self.facts.malformed = true;
                    out.push_held(chunk, &self.carry);
                    self.carry.clear();
                    return;
                }
                self.carry.extend_from_slice(&chunk[..end]);
                let event = if self.at_stream_start {
                    self.carry.strip_prefix(BOM).unwrap_or(&self.carry)
                } else {
                    &self.carry
                };
                let drop = self.facts.on_event(event, &mut self.scratch) && strip;
                if !drop {
                    out.push_held(chunk, &self.carry);
                }
                self.carry.clear();
                *emit_from = end;
                drop
            }
        };
        if dropped && self.after_cr {
            self.drop_next_lf = true;
        }
    }

    /// The current event is over the bound: flag it, release what was held, stop buffering it.
    /// The rest of the chunk then flows through from `emit_from`, which still points at the
    /// event's first byte in this chunk (or at 0 when it began earlier).
    fn overflow(&mut self, chunk: &[u8], out: &mut Out) {
        self.facts.malformed = true;
        self.oversized = true;
        out.push_held(chunk, &self.carry);
        self.carry.clear();
    }

    fn without_bom<'a>(&self, event: &'a [u8]) -> &'a [u8] {
        if self.at_stream_start {
            event.strip_prefix(BOM).unwrap_or(event)
        } else {
            event
        }
    }
}

/// The bytes `feed` returns in Strip mode, built without copying while they are one run of the
/// input chunk. When bytes must be joined, the buffer is sized for the whole chunk up front (an
/// upper bound on what can still follow), so a `feed` allocates at most once.
enum Out {
    /// Observe mode: nothing is collected.
    Discard,
    Empty,
    /// `chunk[start..end]`
    Run(usize, usize),
    Joined(BytesMut),
}

impl Out {
    /// Appends `chunk[from..to]`.
    fn push(&mut self, chunk: &[u8], from: usize, to: usize) {
        let Some(bytes) = chunk.get(from..to).filter(|b| !b.is_empty()) else {
            return;
        };
        match self {
            Out::Discard => {}
            Out::Empty => *self = Out::Run(from, to),
            Out::Run(_, end) if *end == from => *end = to,
            Out::Run(start, end) => {
                let mut joined = BytesMut::with_capacity(chunk.len());
                joined.extend_from_slice(chunk.get(*start..*end).unwrap_or_default());
                joined.extend_from_slice(bytes);
                *self = Out::Joined(joined);
            }
            Out::Joined(joined) => joined.extend_from_slice(bytes),
        }
    }

    /// Appends bytes from outside the chunk (the held-back head of an event).
    fn push_held(&mut self, chunk: &[u8], held: &[u8]) {
        if held.is_empty() {
            return;
        }
        match self {
            Out::Discard => {}
            Out::Empty => {
                let mut joined = BytesMut::with_capacity(held.len() + chunk.len());
                joined.extend_from_slice(held);
                *self = Out::Joined(joined);
            }
            Out::Run(start, end) => {
                let mut joined = BytesMut::with_capacity(held.len() + chunk.len());
                joined.extend_from_slice(chunk.get(*start..*end).unwrap_or_default());
                joined.extend_from_slice(held);
                *self = Out::Joined(joined);
            }
            Out::Joined(joined) => joined.extend_from_slice(held),
        }
    }

    fn into_bytes(self, chunk: &Bytes) -> Bytes {
        match self {
            Out::Discard | Out::Empty => Bytes::new(),
            Out::Run(start, end) => chunk.slice(start..end),
            Out::Joined(joined) => joined.freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTENT: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
    const USAGE: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"total_tokens\":5,\"completion_tokens\":2}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    /// The request's future holds the scanner across awaits, and Pingora's
    /// `HttpServerApp` futures must be `Send`.
    #[test]
    fn scanner_can_live_in_the_request_context() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<SseScanner>();
    }

    #[test]
    fn observe_returns_the_same_bytes() {
        let mut s = SseScanner::new(UsageMode::Observe);
        let chunk = Bytes::from(format!("{CONTENT}{USAGE}{DONE}"));
        let out = s.feed(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert_eq!(out.len(), chunk.len());
        assert!(s.finish().is_empty());
        assert_eq!((s.events(), s.content_events(), s.saw_done()), (3, 1, true));
        assert_eq!(s.usage().map(|u| u.total_tokens), Some(5));
    }

    #[test]
    fn strip_forwards_complete_events_at_once() {
        let mut s = SseScanner::new(UsageMode::StripUsageChunk);
        let chunk = Bytes::from(CONTENT);
        let out = s.feed(chunk.clone());
        assert_eq!(out, chunk);
        assert_eq!(
            out.as_ptr(),
            chunk.as_ptr(),
            "a whole event is passed without copying"
        );
        assert!(s.feed(Bytes::from(USAGE)).is_empty());
        assert_eq!(s.feed(Bytes::from(DONE)), DONE.as_bytes());
        assert!(s.finish().is_empty());
        assert_eq!(s.usage().map(|u| u.prompt_tokens), Some(3));
    }

    #[test]
    fn strip_holds_only_the_incomplete_tail() {
        let mut s = SseScanner::new(UsageMode::StripUsageChunk);
        let stream = format!("{CONTENT}{USAGE}{DONE}");
        let cut = CONTENT.len() + 10;
        assert_eq!(
            s.feed(Bytes::from(stream[..cut].to_string())),
            CONTENT.as_bytes()
        );
        assert_eq!(s.buffered(), 10);
        assert_eq!(
            s.feed(Bytes::from(stream[cut..].to_string())),
            DONE.as_bytes()
        );
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn dropped_event_takes_its_crlf_across_chunks() {
        let mut s = SseScanner::new(UsageMode::StripUsageChunk);
        let usage = USAGE.replace('\n', "\r\n");
        let done = DONE.replace('\n', "\r\n");
        // the chunk ends between the CR and LF of the usage event's blank line
        assert!(s
            .feed(Bytes::from(usage[..usage.len() - 1].to_string()))
            .is_empty());
        assert_eq!(s.feed(Bytes::from(format!("\n{done}"))), done.as_bytes());
    }

    #[test]
    fn empty_chunks_keep_the_framing_state() {
        let mut s = SseScanner::new(UsageMode::StripUsageChunk);
        let usage = USAGE.replace('\n', "\r\n");
        let mut out = s
            .feed(Bytes::from(usage[..usage.len() - 1].to_string()))
            .to_vec();
        out.extend_from_slice(&s.feed(Bytes::new()));
        out.extend_from_slice(&s.feed(Bytes::from("\ndata: [DONE]\r\n")));
        out.extend_from_slice(&s.feed(Bytes::new()));
        out.extend_from_slice(&s.feed(Bytes::from("\r\n")));
        assert_eq!(out, b"data: [DONE]\r\n\r\n");
        assert_eq!((s.events(), s.saw_done()), (2, true));
    }

    #[test]
    fn bom_at_stream_start_is_ignored() {
        let mut s = SseScanner::new(UsageMode::Observe);
        s.feed(Bytes::from(format!("\u{feff}{CONTENT}{DONE}")));
        assert_eq!(
            (s.events(), s.content_events(), s.malformed()),
            (2, 1, false)
        );
    }

    #[test]
    fn oversized_event_flows_through_and_is_flagged() {
        let mut s = SseScanner::with_max_event_bytes(UsageMode::StripUsageChunk, 256);
        let mut forwarded = Vec::new();
        let big = format!("data: {{\"x\":\"{}\"}}\n\n", "a".repeat(600));
        for piece in big.as_bytes().chunks(16) {
            forwarded.extend_from_slice(&s.feed(Bytes::copy_from_slice(piece)));
            assert!(s.buffered() <= 256);
        }
        forwarded.extend_from_slice(&s.feed(Bytes::from(USAGE)));
        forwarded.extend_from_slice(&s.finish());
        assert_eq!(forwarded, big.as_bytes());
        assert!(s.malformed());
        // the event after the oversized one is inspected again (and dropped)
        assert_eq!(s.usage().map(|u| u.total_tokens), Some(5));
    }
}
