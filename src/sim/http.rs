//! A small HTTP/1.1 server connection on tokio + `httparse`.
//!
//! Hand-written rather than hyper because the simulator must control the wire: close after the
//! head, reset mid-body, send non-HTTP bytes, and notice at once when a client goes away while
//! a request is queued or computing ([`Conn::watch`]), as vLLM aborts such requests
//! (../shared/reference/vllm.md §5).
//!
//! Supported: keep-alive (HTTP/1.1 default, HTTP/1.0 opt-in), request bodies with
//! `Content-Length` or `Transfer-Encoding: chunked`, `Expect: 100-continue`, responses with
//! `Content-Length` or chunked. Bounded head and body; malformed requests get 400 and close.

use crate::upstream::http1::Dechunker;
use std::future::Future;
use std::io::Write as _;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request head (request line + headers).
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest request body.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 128;
/// While a request is being answered, bytes the client sends ahead (pipelining) are kept up to
/// this much; beyond it the connection stops reading until the answer is done.
const MAX_READ_AHEAD: usize = MAX_HEAD_BYTES;

/// A parsed request.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    /// Request target as sent (path and query).
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Whether the client wants the connection kept open after this exchange.
    pub keep_alive: bool,
}

impl Request {
    /// The path without the query string.
    pub(crate) fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// First value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request could not be read; each maps to the status sent before closing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request head too large")]
    HeadTooLarge,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("unsupported transfer encoding")]
    UnsupportedEncoding,
    #[error("connection closed mid-request")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ReadError {
    /// The status to answer with, or `None` when the peer is gone anyway.
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            ReadError::Malformed(_) => Some(400),
            ReadError::HeadTooLarge => Some(431),
            ReadError::BodyTooLarge => Some(413),
            ReadError::UnsupportedEncoding => Some(501),
            ReadError::Closed | ReadError::Io(_) => None,
        }
    }
}

/// The peer closed its side (or the socket failed) while a request was in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("client went away")]
pub(crate) struct Gone;

/// How the body of a response is framed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
}

/// One server-side connection.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    pub(crate) fn new(stream: TcpStream) -> Self {
        // Tokens are small writes that must leave at once: Nagle would hold them back.
        let _ = stream.set_nodelay(true);
        Self {
            stream,
            // Small to start: ten thousand idle or streaming connections must stay cheap; the
            // buffer grows for large requests.
            buf: BytesMut::with_capacity(2 * 1024),
        }
    }

    /// Reads the next request. `Ok(None)` when the client closed the connection cleanly
    /// between requests.
    pub(crate) async fn read_request(&mut self) -> Result<Option<Request>, ReadError> {
        let head = loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_head(&self.buf)? {
                    break head;
                }
                if self.buf.len() > MAX_HEAD_BYTES {
                    return Err(ReadError::HeadTooLarge);
                }
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.iter().all(u8::is_ascii_whitespace) {
                    Ok(None)
                } else {
                    Err(ReadError::Closed)
                };
            }
        };
        self.buf.advance(head.len);
        let body = match head.body {
            BodyKind::None => Bytes::new(),
            BodyKind::Length(n) => {
                if head.expect_continue && self.buf.len() < n {
                    self.stream
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await?;
                }
                while self.buf.len() < n {
                    self.buf.reserve(n - self.buf.len());
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        return Err(ReadError::Closed);
                    }
                }
                self.buf.split_to(n).freeze()
            }
            BodyKind::Chunked => {
                if head.expect_continue && self.buf.is_empty() {
                    self.stream
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await?;
                }
                let mut dec = Dechunker::new();
                let mut body = BytesMut::new();
                loop {
                    while let Some(piece) = dec
                        .decode(&mut self.buf)
                        .map_err(|_| ReadError::Malformed("bad chunked framing"))?
                    {
                        if body.len() + piece.len() > MAX_BODY_BYTES {
                            return Err(ReadError::BodyTooLarge);
                        }
                        body.extend_from_slice(&piece);
                    }
                    if dec.is_done() {
                        break body.freeze();
                    }
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        return Err(ReadError::Closed);
                    }
                }
            }
        };
        Ok(Some(Request {
            method: head.method,
            target: head.target,
            headers: head.headers,
            body,
            keep_alive: head.keep_alive,
        }))
    }

    /// Runs `fut` to completion unless the client goes away first.
    ///
    /// While waiting it reads the socket: EOF or a socket error means the client left, and the
    /// caller drops whatever it was doing (a queued or running request is aborted at once, not
    /// at the next write). Bytes that arrive meanwhile (a pipelined request) are kept.
    pub(crate) async fn watch<F: Future>(&mut self, fut: F) -> Result<F::Output, Gone> {
        tokio::pin!(fut);
        loop {
            let can_read = self.buf.len() < MAX_READ_AHEAD;
            tokio::select! {
                biased;
                out = &mut fut => return Ok(out),
                r = self.stream.read_buf(&mut self.buf), if can_read => match r {
                    Ok(0) | Err(_) => return Err(Gone),
                    Ok(_) => {}
                },
            }
        }
    }

    /// Waits until the client goes away (used to stall forever).
    pub(crate) async fn until_gone(&mut self) -> Gone {
        match self.watch(std::future::pending::<()>()).await {
            Ok(()) => Gone,
            Err(g) => g,
        }
    }

    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Gone> {
        self.stream.write_all(bytes).await.map_err(|_| Gone)
    }

    /// Resets the connection: the client sees ECONNRESET, not an orderly end.
    pub(crate) fn reset(self) {
        let _ = self.stream.set_zero_linger();
        drop(self.stream);
    }

    /// Sends a complete response with a `Content-Length` body in one write.
    pub(crate) async fn send(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
        keep_alive: bool,
    ) -> Result<(), Gone> {
        let mut out = Vec::with_capacity(256 + body.len());
        write_head(
            &mut out,
            status,
            headers,
            Framing::Length(body.len() as u64),
            keep_alive,
        );
        out.extend_from_slice(body);
        self.write_all(&out).await
    }

    /// Closes the write side politely after a response that ends the connection.
    pub(crate) async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// Writes a response head into `out`.
pub(crate) fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    framing: Framing,
    keep_alive: bool,
) {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    match framing {
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `data` as one HTTP chunk.
pub(crate) fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

enum BodyKind {
    None,
    Length(usize),
    Chunked,
}

struct Head {
    len: usize,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    keep_alive: bool,
    expect_continue: bool,
    body: BodyKind,
}

/// Parses a complete head at the start of `buf`; `Ok(None)` if more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, ReadError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ReadError::HeadTooLarge),
        Err(_) => return Err(ReadError::Malformed("bad request head")),
    };
    if len > MAX_HEAD_BYTES {
        return Err(ReadError::HeadTooLarge);
    }
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("").to_string();
    let version = req.version.unwrap_or(1);
    let mut headers = Vec::with_capacity(req.headers.len());
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut conn_close = false;
    let mut conn_keep = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| ReadError::Malformed("non-UTF-8 header value"))?
            .trim();
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value
                .parse()
                .map_err(|_| ReadError::Malformed("bad content-length"))?;
            let n = usize::try_from(n).map_err(|_| ReadError::BodyTooLarge)?;
            if content_length.is_some_and(|old| old != n) {
                return Err(ReadError::Malformed("conflicting content-length"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or("").trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(ReadError::UnsupportedEncoding);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for tok in value.split(',').map(str::trim) {
                conn_close |= tok.eq_ignore_ascii_case("close");
                conn_keep |= tok.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
        headers.push((name.to_string(), value.to_string()));
    }
    let body = match (chunked, content_length) {
        // Both framings at once is a request-smuggling shape: refuse it.
        (true, Some(_)) => return Err(ReadError::Malformed("content-length with chunked")),
        (true, None) => BodyKind::Chunked,
        (false, Some(n)) if n > MAX_BODY_BYTES => return Err(ReadError::BodyTooLarge),
        (false, Some(0)) | (false, None) => BodyKind::None,
        (false, Some(n)) => BodyKind::Length(n),
    };
    let keep_alive = if version >= 1 {
        !conn_close
    } else {
        conn_keep && !conn_close
    };
    Ok(Some(Head {
        len,
        method,
        target,
        headers,
        keep_alive,
        expect_continue,
        body,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_head_and_framing() {
        let h = parse_head(b"POST /v1/x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(h.method, "POST");
        assert_eq!(h.target, "/v1/x?y=1");
        assert!(h.keep_alive);
        assert!(matches!(h.body, BodyKind::Length(5)));
        let h = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n")
            .unwrap()
            .is_none());
    }

    #[test]
    fn rejects_bad_heads() {
        assert!(matches!(
            parse_head(b"\x00\x01 garbage\r\n\r\n"),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            parse_head(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(ReadError::UnsupportedEncoding)
        ));
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"),
            Err(ReadError::BodyTooLarge)
        ));
    }

    #[test]
    fn decodes_chunked_in_pieces() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let mut dec = Dechunker::new();
        let mut body = Vec::new();
        let mut buf = BytesMut::new();
        for b in wire.iter() {
            buf.extend_from_slice(&[*b]);
            while let Some(piece) = dec.decode(&mut buf).unwrap() {
                body.extend_from_slice(&piece);
            }
            if dec.is_done() {
                break;
            }
        }
        assert!(dec.is_done());
        assert_eq!(&body[..], b"hello world");
        assert!(buf.is_empty(), "the decoder stops at the end of the body");
        let mut dec = Dechunker::new();
        let mut buf = BytesMut::from(&b"3\r\nabcdef\r\n"[..]);
        assert!(dec
            .decode(&mut buf)
            .and_then(|_| dec.decode(&mut buf))
            .is_err());
    }

    #[test]
    fn head_writer() {
        let mut out = Vec::new();
        write_head(
            &mut out,
            200,
            &[("content-type", "application/json")],
            Framing::Length(2),
            false,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        push_chunk(&mut out, b"data: x\n\n");
        assert_eq!(out, b"9\r\ndata: x\n\n\r\n");
    }
}
