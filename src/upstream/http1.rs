//! HTTP/1.1 on a worker connection: the request head written as bytes, and
//! the answer read back with its body framing (Content-Length, chunked, or
//! until close), decoded in the read buffer.
//!
//! Pingora's client session did this before; a profile and a heap profile
//! showed what it cost a gateway that only ever sends one POST and reads one
//! answer per connection turn: every answer head went into a `HeaderMap`
//! (hashed, then copied again into the client's head), every connection
//! carried a 4 KiB head buffer plus a 64 KiB body buffer, and a socket read
//! holding several SSE events came out one HTTP chunk per call. Here one
//! read takes what the socket holds into a buffer of just that size (see
//! `fill`), the head is parsed once (`httparse`) into the few facts the
//! exchange uses plus the headers to relay, and one call hands out every
//! body byte already read.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use pingora_core::protocols::Stream;
use tokio::io::AsyncReadExt;

/// A worker's answer head larger than this is refused: vLLM's are a few
/// hundred bytes.
const MAX_HEAD: usize = 32 * 1024;
/// Headers in a worker's answer head, at most.
const MAX_HEADERS: usize = 64;
/// A chunk-size line or a trailer section larger than this is refused.
const MAX_FRAMING: usize = 4 * 1024;
/// Largest single read while a body of known length arrives.
const MAX_READ: usize = 256 * 1024;

/// The part of a worker's answer head the exchange uses.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    /// `Content-Type: text/event-stream`.
    pub is_sse: bool,
    /// Headers to relay (hop-by-hop ones included; the relay filters).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// This many bytes remain.
    Length(u64),
    /// Chunked, at this point of a chunk.
    Chunked(ChunkState),
    /// Until the worker closes the connection.
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data remain.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty line.
    Trailers,
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// One answer being read from a worker connection.
pub struct WorkerResponse {
    stream: Stream,
    buf: BytesMut,
    head: Option<Head>,
    body: Body,
    /// The connection may carry another request once the body is done.
    keep_alive: bool,
}

impl WorkerResponse {
    pub fn new(stream: Stream) -> Self {
        WorkerResponse {
            stream,
            buf: BytesMut::new(),
            head: None,
            body: Body::Done,
            keep_alive: false,
        }
    }

    /// The head, once [`Self::read_head`] succeeded.
    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    /// Read up to the final answer head (informational 1xx heads are
    /// skipped). `Err` for a connection that closed or broke before it, or a
    /// head that is not HTTP/1.x.
    pub async fn read_head(&mut self) -> io::Result<&Head> {
        loop {
            if let Some((len, parsed)) = parse_head(&self.buf)? {
                self.buf.advance(len);
                let Some(parsed) = parsed else {
                    // 1xx: another head follows.
                    continue;
                };
                let (head, body, keep_alive) = parsed;
                self.body = body;
                self.keep_alive = keep_alive;
                return Ok(self.head.insert(head));
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(invalid("answer head too large"));
            }
            if self.fill(0).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before an answer head",
                ));
            }
        }
    }

    /// The next body bytes: everything already read and decoded, or, when
    /// there is nothing, what one socket read brings. `None` once the body
    /// is complete. A short read is handed out as it is (a stream's event
    /// must not wait for the next one).
    pub async fn read_body(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if let Some(out) = decode(&mut self.body, &mut self.buf)? {
                return Ok(Some(out));
            }
            if self.body == Body::Done {
                return Ok(None);
            }
            let want = match self.body {
                Body::Length(n) => usize::try_from(n).unwrap_or(MAX_READ).min(MAX_READ),
                _ => 0,
            };
            if self.fill(want).await? == 0 {
                if self.body == Body::UntilClose {
                    self.body = Body::Done;
                    self.keep_alive = false;
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of the answer body",
                ));
            }
        }
    }

    /// The whole body has been read (its framing says it ended).
    pub fn body_complete(&self) -> bool {
        self.body == Body::Done
    }

    /// The connection, when the answer was read to its end and the
    /// connection may carry another request.
    pub fn into_reusable(self) -> Option<Stream> {
        // Bytes after the end of the answer are not a valid start of the
        // next turn: nothing was asked yet.
        (self.head.is_some() && self.body == Body::Done && self.keep_alive && self.buf.is_empty())
            .then_some(self.stream)
    }

    /// Read once from the socket into the buffer; `want` is how much the
    /// caller expects (0: any). Returns the bytes read.
    ///
    /// A read of unknown size (a head, a stream's events) lands in the
    /// thread's scratch buffer and its bytes are copied into an exactly
    /// sized one: one read takes whatever the socket holds, however much
    /// that is, while a stream waiting for its next token holds no read
    /// buffer at all (ten thousand of them wait at once). Sized from a
    /// small buffer instead, a burst of events took one read (and one
    /// write to the client) per kilobyte: 2.5 times nginx's syscalls per
    /// stream. A body of known length is read straight into a buffer of
    /// that size.
    async fn fill(&mut self, want: usize) -> io::Result<usize> {
        if want > 0 {
            self.buf.reserve(want);
            return self.stream.read_buf(&mut self.buf).await;
        }
        if self.buf.is_empty() {
            // Let go of the last read's allocation before waiting: what was
            // handed out of it holds it only as long as it is needed.
            self.buf = BytesMut::new();
        }
        let (stream, buf) = (&mut self.stream, &mut self.buf);
        std::future::poll_fn(|cx| poll_read_via_scratch(stream, buf, cx)).await
    }
}

/// The scratch buffer socket reads of unknown size land in, one per thread.
/// Only ever borrowed inside one synchronous poll, so it is never held
/// across an await.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// One `poll_read` of `stream` into the thread's scratch buffer, the bytes
/// appended to `buf`.
fn poll_read_via_scratch(
    stream: &mut Stream,
    buf: &mut BytesMut,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<io::Result<usize>> {
    SCRATCH_BUF.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => poll_read_into(stream, buf, cx, &mut scratch),
        // Not reachable (nothing reads a worker from inside a read); a
        // buffer of its own does the same job.
        Err(_) => poll_read_into(stream, buf, cx, &mut vec![0u8; SCRATCH]),
    })
}

fn poll_read_into(
    stream: &mut Stream,
    buf: &mut BytesMut,
    cx: &mut std::task::Context<'_>,
    scratch: &mut [u8],
) -> std::task::Poll<io::Result<usize>> {
    use std::task::Poll;
    let mut read = tokio::io::ReadBuf::new(scratch);
    match tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut *stream), cx, &mut read) {
        Poll::Ready(Ok(())) => {
            let data = read.filled();
            buf.extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// Decode what the buffer holds of the body; `None` when it holds none.
fn decode(body: &mut Body, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
    match *body {
        Body::Done => Ok(None),
        Body::Length(remaining) => {
            if buf.is_empty() {
                return Ok(None);
            }
            let n = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let left = remaining - n as u64;
            *body = if left == 0 {
                Body::Done
            } else {
                Body::Length(left)
            };
            Ok(Some(buf.split_to(n).freeze()))
        }
        Body::UntilClose => {
            if buf.is_empty() {
                return Ok(None);
            }
            Ok(Some(buf.split().freeze()))
        }
        Body::Chunked(state) => decode_chunked(body, buf, state),
    }
}

/// Chunked framing is removed in place: data bytes are moved down over
/// the framing before them, so every chunk in the buffer comes out as one
/// piece without a copy into another buffer (and a single chunk, the
/// common case, without moving at all).
fn decode_chunked(
    body: &mut Body,
    buf: &mut BytesMut,
    mut state: ChunkState,
) -> io::Result<Option<Bytes>> {
    // Decoded data is buf[..out]; input not yet consumed starts at `at`.
    let mut out = 0usize;
    let mut at = 0usize;
    let mut done = false;
    loop {
        let input = &buf[at..];
        match state {
            ChunkState::Size => {
                let Some(lf) = memchr::memchr(b'\n', input) else {
                    if input.len() > MAX_FRAMING {
                        return Err(invalid("chunk size line too long"));
                    }
                    break;
                };
                let size = chunk_size(&input[..lf])?;
                at += lf + 1;
                state = if size == 0 {
                    ChunkState::Trailers
                } else {
                    ChunkState::Data(size)
                };
            }
            ChunkState::Data(remaining) => {
                if input.is_empty() {
                    break;
                }
                if out == 0 && at > 0 {
                    // Nothing decoded yet: drop the framing in front
                    // instead of moving the data over it.
                    buf.advance(at);
                    at = 0;
                }
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len() - at);
                if at != out {
                    buf.copy_within(at..at + n, out);
                }
                out += n;
                at += n;
                let left = remaining - n as u64;
                state = if left == 0 {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(left)
                };
            }
            // Lines end in CRLF; a bare LF is accepted too (RFC 9112 §2.2).
            ChunkState::DataEnd => {
                at += match input {
                    [b'\r', b'\n', ..] => 2,
                    [b'\n', ..] => 1,
                    [] | [b'\r'] => break,
                    _ => return Err(invalid("chunk data longer than its size")),
                };
                state = ChunkState::Size;
            }
            ChunkState::Trailers => {
                let Some(lf) = memchr::memchr(b'\n', input) else {
                    if input.len() > MAX_FRAMING {
                        return Err(invalid("trailer section too long"));
                    }
                    break;
                };
                at += lf + 1;
                if matches!(&input[..lf], b"" | b"\r") {
                    done = true;
                    break;
                }
            }
        }
    }
    *body = if done {
        Body::Done
    } else {
        Body::Chunked(state)
    };
    let data = buf.split_to(out).freeze();
    buf.advance(at - out);
    Ok((!data.is_empty()).then_some(data))
}

/// The size on a chunk-size line (without its LF): hex digits, then
/// optional extensions after `;`, which carry nothing the gateway uses.
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let hex = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    // Digits only: `from_str_radix` alone would take a sign.
    if hex.is_empty() || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(invalid("bad chunk size"));
    }
    std::str::from_utf8(hex)
        .ok()
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| invalid("bad chunk size"))
}

/// A chunked body taken out of a read buffer piece by piece: the workers'
/// answers here, and the chunked requests the simulator reads.
#[derive(Debug)]
pub(crate) struct Dechunker(Body);

impl Dechunker {
    pub(crate) fn new() -> Self {
        Dechunker(Body::Chunked(ChunkState::Size))
    }

    /// The body bytes `buf` holds, framing removed; `None` when it holds
    /// none (more must be read, or the body is complete).
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        decode(&mut self.0, buf)
    }

    /// The terminating chunk and the trailers were read.
    pub(crate) fn is_done(&self) -> bool {
        self.0 == Body::Done
    }
}

type Parsed = (Head, Body, bool);

/// Parse an answer head at the start of `buf`: `None` while incomplete;
/// `Some((len, None))` for an informational 1xx head to skip; else the head,
/// its body framing and whether the connection stays open after it
/// (RFC 9112 §6.3, §9.3).
fn parse_head(buf: &[u8]) -> io::Result<Option<(usize, Option<Parsed>)>> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut slots);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(invalid("too many answer headers")),
        Err(_) => return Err(invalid("malformed answer head")),
    };
    let status = res.code.unwrap_or(0);
    if (100..200).contains(&status) {
        if status == 101 {
            return Err(invalid("a worker may not switch protocols"));
        }
        return Ok(Some((len, None)));
    }
    let http11 = res.version == Some(1);
    let mut keep_alive = http11;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut length: Option<u64> = None;
    let mut is_sse = false;
    let mut headers = Vec::with_capacity(res.headers.len());
    for h in res.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| invalid("bad answer header name"))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|_| invalid("bad answer header value"))?;
        if name == http::header::CONTENT_LENGTH {
            let n = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| invalid("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid("conflicting Content-Length"));
            }
            length = Some(n);
        } else if name == http::header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // Only the last coding decides whether the body is chunked.
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == http::header::CONNECTION {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    keep_alive = true;
                }
            }
        } else if name == http::header::CONTENT_TYPE {
            is_sse = h
                .value
                .trim_ascii_start()
                .get(..17)
                .is_some_and(|ct| ct.eq_ignore_ascii_case(b"text/event-stream"));
        }
        headers.push((name, value));
    }
    let body = if status == 204 || status == 304 {
        Body::Done
    } else if transfer_encoding {
        // With both, Transfer-Encoding wins and the connection is not
        // trusted for another turn (RFC 9112 §6.3 item 3).
        if length.is_some() {
            keep_alive = false;
        }
        if chunked {
            Body::Chunked(ChunkState::Size)
        } else {
            keep_alive = false;
            Body::UntilClose
        }
    } else if let Some(n) = length {
        if n == 0 {
            Body::Done
        } else {
            Body::Length(n)
        }
    } else {
        keep_alive = false;
        Body::UntilClose
    };
    Ok(Some((
        len,
        Some((
            Head {
                status,
                is_sse,
                headers,
            },
            body,
            keep_alive,
        )),
    )))
}

/// A request head, with `body` behind it when `with_body` (a small body
/// leaves in the same write). Header names and values come from sources
/// already validated (Pingora's request parser, the gateway's own strings).
pub fn encode_request<'a>(
    method: &str,
    path: &str,
    host: &str,
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    body: &[u8],
    with_body: bool,
) -> BytesMut {
    use std::fmt::Write;
    let mut out = BytesMut::with_capacity(384 + if with_body { body.len() } else { 0 });
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    // Writing into a BytesMut cannot fail.
    let _ = write!(out, "\r\ncontent-length: {}\r\n", body.len());
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if with_body {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    fn head_of(text: &str) -> io::Result<Option<(usize, Option<Parsed>)>> {
        parse_head(text.as_bytes())
    }

    fn framing(text: &str) -> (Body, bool) {
        let (_, parsed) = head_of(text).unwrap().unwrap();
        let (_, body, keep_alive) = parsed.unwrap();
        (body, keep_alive)
    }

    #[test]
    fn heads_decide_framing_and_keep_alive() {
        let h = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        let (len, parsed) = head_of(h).unwrap().unwrap();
        assert_eq!(len, h.len() - 5);
        let (head, body, keep_alive) = parsed.unwrap();
        assert_eq!(
            (head.status, body, keep_alive),
            (200, Body::Length(5), true)
        );
        assert_eq!(head.headers.len(), 1);
        let chunked = Body::Chunked(ChunkState::Size);
        for (head, expected) in [
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                (chunked, true),
            ),
            // A coding other than chunked last: the body runs to the close.
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                (Body::UntilClose, false),
            ),
            // Both framings: chunked wins, the connection is not reused.
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
                (chunked, false),
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", (Body::UntilClose, false)),
            (
                "HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n",
                (Body::Done, false),
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
                (Body::Length(1), false),
            ),
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
                (Body::Length(1), true),
            ),
            (
                "HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n",
                (Body::Done, true),
            ),
            // The same length twice is fine; two lengths are not (below).
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n",
                (Body::Length(2), true),
            ),
        ] {
            assert_eq!(framing(head), expected, "{head:?}");
        }
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "SSH-2.0-OpenSSH_9.2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            assert!(head_of(bad).is_err(), "{bad:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert!(head_of(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).is_err());
        // Incomplete, and informational heads to skip.
        assert!(head_of("HTTP/1.1 200 OK\r\ncontent-le").unwrap().is_none());
        let (len, skipped) = head_of("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200")
            .unwrap()
            .unwrap();
        assert_eq!(len, 25);
        assert!(skipped.is_none());
        let sse = "HTTP/1.1 200 OK\r\nContent-Type:  Text/Event-Stream; charset=utf-8\r\n\r\n";
        assert!(head_of(sse).unwrap().unwrap().1.unwrap().0.is_sse);
        let json = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n";
        assert!(!head_of(json).unwrap().unwrap().1.unwrap().0.is_sse);
    }

    /// A response over a real loopback connection; the test writes the
    /// worker's side.
    async fn pair() -> (WorkerResponse, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = crate::upstream::connect(addr, Duration::from_secs(1))
            .await
            .unwrap();
        let (worker, _) = listener.accept().await.unwrap();
        (WorkerResponse::new(stream), worker)
    }

    /// Feed `pieces` to a chunked decoder one after another as if each were
    /// one socket read: everything it hands out, how many pieces that took,
    /// and the framing state and buffer it ends with.
    fn decode_pieces(pieces: &[&[u8]]) -> io::Result<(Vec<u8>, usize, Body, BytesMut)> {
        let mut body = Body::Chunked(ChunkState::Size);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut calls = 0;
        for piece in pieces {
            buf.extend_from_slice(piece);
            while let Some(data) = decode(&mut body, &mut buf)? {
                calls += 1;
                out.extend_from_slice(&data);
            }
        }
        Ok((out, calls, body, buf))
    }

    const CHUNKED: &[u8] =
        b"5\r\nhello\r\n7;ext=\"a\"\r\n, world\r\n1\r\n!\r\n0\r\nx-trailer: 1\r\n\r\n";

    #[test]
    fn chunked_bodies_decode_whatever_the_reads_are() {
        for i in 0..=CHUNKED.len() {
            for j in i..=CHUNKED.len() {
                let (data, _, body, rest) =
                    decode_pieces(&[&CHUNKED[..i], &CHUNKED[i..j], &CHUNKED[j..]]).unwrap();
                assert_eq!(data, b"hello, world!", "split at {i}, {j}");
                assert_eq!(body, Body::Done, "split at {i}, {j}");
                assert!(rest.is_empty());
            }
        }
        // Bare LF line ends, as RFC 9112 §2.2 lets a recipient accept.
        let (data, _, body, _) = decode_pieces(&[b"5\nhello\n0\n\n"]).unwrap();
        assert_eq!((data.as_slice(), body), (&b"hello"[..], Body::Done));
        // Everything already read comes out in one piece.
        let (data, calls, _, _) = decode_pieces(&[CHUNKED]).unwrap();
        assert_eq!((data.as_slice(), calls), (&b"hello, world!"[..], 1));
        // Bytes after the end stay in the buffer (so the connection is not
        // reused).
        let (_, _, _, rest) = decode_pieces(&[CHUNKED, b"HTTP/1.1 200"]).unwrap();
        assert_eq!(&rest[..], b"HTTP/1.1 200");
    }

    #[test]
    fn broken_chunked_framing_is_an_error() {
        for bad in [
            &b"zz\r\nhello\r\n"[..],
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"fffffffffffffffffffff\r\n",
            &[b'1'; MAX_FRAMING + 1],
        ] {
            assert!(decode_pieces(&[bad]).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Any chunk sizes, extensions and trailers, cut into reads
        /// anywhere: the data comes out whole and in order.
        #[test]
        fn chunked_framing_round_trips(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..300), 0..8),
            extension in proptest::bool::ANY,
            trailer in proptest::bool::ANY,
            cuts in proptest::collection::vec(0usize..4000, 0..6),
        ) {
            let mut wire = Vec::new();
            for c in &chunks {
                wire.extend_from_slice(format!("{:X}", c.len()).as_bytes());
                if extension {
                    wire.extend_from_slice(b";name=value");
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(c);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n");
            if trailer {
                wire.extend_from_slice(b"x-usage: 1\r\n");
            }
            wire.extend_from_slice(b"\r\n");
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for c in cuts.into_iter().chain([wire.len()]) {
                pieces.push(&wire[from..c]);
                from = c;
            }
            let (data, _, body, rest) = decode_pieces(&pieces).unwrap();
            proptest::prop_assert_eq!(data, chunks.concat());
            proptest::prop_assert_eq!(body, Body::Done);
            proptest::prop_assert!(rest.is_empty());
        }

        /// Arbitrary bytes from a worker are an answer, a wait for more, or
        /// an error: never a panic.
        #[test]
        fn arbitrary_worker_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_head(&bytes);
            let _ = decode_pieces(&[&bytes]);
            let mut body = Body::Length(7);
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = decode(&mut body, &mut buf);
        }
    }

    #[tokio::test]
    async fn reads_an_answer_off_the_socket_and_hands_the_connection_back() {
        let (mut r, mut worker) = pair().await;
        let write = tokio::spawn(async move {
            worker
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            worker
                .write_all(b"encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n5\r\nhel")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            worker.write_all(&CHUNKED[6..]).await.unwrap();
            worker
        });
        let head = r.read_head().await.unwrap();
        assert_eq!((head.status, head.is_sse), (200, true));
        assert_eq!(read_all(&mut r).await.unwrap(), b"hello, world!");
        let _worker = write.await.unwrap();
        assert!(r.into_reusable().is_some());
    }

    /// An answer from a worker that sends `bytes` and closes.
    async fn closed_after(bytes: &[u8]) -> WorkerResponse {
        let (r, mut worker) = pair().await;
        worker.write_all(bytes).await.unwrap();
        r
    }

    /// The rest of the body, piece by piece.
    async fn read_all(r: &mut WorkerResponse) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        while let Some(piece) = r.read_body().await? {
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_one_until_close_ends_cleanly() {
        let mut r = closed_after(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf").await;
        r.read_head().await.unwrap();
        assert_eq!(&r.read_body().await.unwrap().unwrap()[..], b"half");
        assert!(r.read_body().await.is_err());
        assert!(r.into_reusable().is_none());

        let mut r = closed_after(b"HTTP/1.1 200 OK\r\n\r\nall of it").await;
        r.read_head().await.unwrap();
        assert_eq!(read_all(&mut r).await.unwrap(), b"all of it");
        assert!(r.into_reusable().is_none());

        let mut r = closed_after(b"").await;
        assert!(r.read_head().await.is_err(), "closed before any head");
    }

    #[tokio::test]
    async fn a_long_body_of_known_length_arrives_whole() {
        let (mut r, mut worker) = pair().await;
        let body = vec![b'x'; 300 * 1024];
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
        let sent = body.clone();
        tokio::spawn(async move {
            worker.write_all(head.as_bytes()).await.unwrap();
            worker.write_all(&sent).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        r.read_head().await.unwrap();
        assert_eq!(read_all(&mut r).await.unwrap(), body);
        assert!(r.into_reusable().is_some());
    }

    #[tokio::test]
    async fn a_stream_between_events_holds_no_read_buffer() {
        // Ten thousand slow streams each wait minutes for their next token:
        // between two events a stream keeps at most what it read past the
        // last one (part of an event cut by a read), never a buffer sized
        // for a burst.
        let (mut r, mut worker) = pair().await;
        tokio::spawn(async move {
            worker
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let event = format!("data: {}\n\n", "x".repeat(180));
            for _ in 0..100 {
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                worker.write_all(chunk.as_bytes()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            worker.write_all(b"0\r\n\r\n").await.unwrap();
        });
        r.read_head().await.unwrap();
        let mut received = 0;
        while let Some(piece) = r.read_body().await.unwrap() {
            received += piece.len();
            assert!(r.buf.capacity() <= 256, "{}", r.buf.capacity());
        }
        assert_eq!(received, 100 * 188);
    }

    #[tokio::test]
    async fn a_burst_the_socket_holds_comes_out_in_one_piece() {
        // A worker that has produced many events before the gateway reads
        // (a fast model, a busy gateway): one read takes them all, so they
        // reach the client in one write, not one per kilobyte.
        let (mut r, mut worker) = pair().await;
        let event = format!("data: {}\n\n", "x".repeat(180));
        let mut burst = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..100 {
            burst.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
        }
        burst.extend_from_slice(b"0\r\n\r\n");
        worker.write_all(&burst).await.unwrap();
        r.read_head().await.unwrap();
        let piece = r.read_body().await.unwrap().unwrap();
        assert_eq!(piece.len(), 100 * 188, "the whole burst in one piece");
        assert!(r.read_body().await.unwrap().is_none());
        assert!(r.into_reusable().is_some());
    }

    #[test]
    fn requests_are_encoded_with_length_and_headers() {
        let wire = encode_request(
            "POST",
            "/v1/chat/completions",
            "10.0.0.5:8000",
            [("content-type", &b"application/json"[..])].into_iter(),
            b"{}",
            true,
        );
        assert_eq!(
            &wire[..],
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: 10.0.0.5:8000\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"
        );
        let head_only = encode_request("GET", "/health", "h", std::iter::empty(), b"{}", false);
        assert!(head_only.ends_with(b"content-length: 2\r\n\r\n"));
    }
}
