//! A raw HTTP/1 client for hostile-client tests: writes exact bytes, reads
//! exact answers with deadlines, and tells "answered", "closed" and "hung"
//! apart. Nothing here trusts the server: every read has a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// One parsed answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body had neither a length nor chunks: it ended with the
    /// connection, whatever `Connection` said.
    pub close_delimited: bool,
}

impl RawResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The connection ends with this answer: announced, or implied by a
    /// close-delimited body.
    pub fn closes(&self) -> bool {
        self.close_delimited
            || self
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The OpenAI error `code`, if the body is an OpenAI error.
    pub fn error_code(&self) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()?
            .pointer("/error/code")?
            .as_str()
            .map(String::from)
    }
}

/// Why no (complete) answer was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    /// The server closed (FIN or reset); the bytes it sent before, if any.
    Closed(Vec<u8>),
    /// Nothing conclusive before the deadline: the server hangs.
    TimedOut(Vec<u8>),
    /// Bytes that are not an HTTP/1 answer.
    Garbage(Vec<u8>),
}

/// How a trickle ended, and after how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trickled {
    /// Every byte was written and the connection is still open.
    Sent(Duration),
    /// The server closed the connection before the last byte.
    Closed(Duration),
}

pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Write all of `bytes`; an error means the server closed already.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Write `bytes` `step` bytes at a time, `gap` apart, watching the
    /// socket meanwhile: an answer that arrives is kept for [`Self::response`];
    /// a close ends the trickle.
    pub async fn trickle(&mut self, bytes: &[u8], step: usize, gap: Duration) -> Trickled {
        let start = Instant::now();
        for piece in bytes.chunks(step.max(1)) {
            if self.stream.write_all(piece).await.is_err() {
                return Trickled::Closed(start.elapsed());
            }
            let deadline = Instant::now() + gap;
            loop {
                match self.fill(deadline).await {
                    None => break,
                    Some(Ok(0)) | Some(Err(_)) => return Trickled::Closed(start.elapsed()),
                    Some(Ok(_)) => {}
                }
            }
        }
        Trickled::Sent(start.elapsed())
    }

    /// Close the write half (the server reads EOF), keep reading.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Read more bytes; Ok(0) at EOF, Err on reset, None at the deadline.
    async fn fill(&mut self, deadline: Instant) -> Option<std::io::Result<usize>> {
        let mut chunk = [0u8; 16 * 1024];
        match timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(Ok(n))
            }
            Ok(Err(e)) => Some(Err(e)),
            Err(_) => None,
        }
    }

    /// Read one whole answer (Content-Length, chunked, or close-delimited).
    pub async fn response(&mut self, within: Duration) -> Result<RawResponse, NoAnswer> {
        self.response_to(false, within).await
    }

    /// Read one whole answer; `to_head`: the request was HEAD, so the answer
    /// has no body whatever its headers say.
    pub async fn response_to(
        &mut self,
        to_head: bool,
        within: Duration,
    ) -> Result<RawResponse, NoAnswer> {
        let deadline = Instant::now() + within;
        loop {
            match parse(&self.buf, to_head) {
                Parsed::Done(resp, used) => {
                    self.buf.drain(..used);
                    return Ok(resp);
                }
                Parsed::Garbage => return Err(NoAnswer::Garbage(std::mem::take(&mut self.buf))),
                Parsed::Partial { close_delimited } => match self.fill(deadline).await {
                    Some(Ok(0)) | Some(Err(_)) => {
                        if close_delimited {
                            if let Parsed::Done(resp, _) = parse_to_close(&self.buf) {
                                self.buf.clear();
                                return Ok(resp);
                            }
                        }
                        return Err(NoAnswer::Closed(std::mem::take(&mut self.buf)));
                    }
                    Some(Ok(_)) => {}
                    None => return Err(NoAnswer::TimedOut(std::mem::take(&mut self.buf))),
                },
            }
        }
    }

    /// Wait until the server closes the connection; returns what it sent
    /// before. Err(bytes) if it is still open at the deadline.
    pub async fn closed_within(&mut self, within: Duration) -> Result<Vec<u8>, Vec<u8>> {
        let deadline = Instant::now() + within;
        loop {
            match self.fill(deadline).await {
                Some(Ok(0)) | Some(Err(_)) => return Ok(std::mem::take(&mut self.buf)),
                Some(Ok(_)) => {}
                None => return Err(std::mem::take(&mut self.buf)),
            }
        }
    }

    /// Nothing arrives and the connection stays open for `d`.
    pub async fn stays_quiet(&mut self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        self.fill(deadline).await.is_none() && self.buf.is_empty()
    }
}

enum Parsed {
    Done(RawResponse, usize),
    Partial { close_delimited: bool },
    Garbage,
}

/// A parsed answer head: status, headers, and its length in bytes.
type Head = (u16, Vec<(String, String)>, usize);

fn head(buf: &[u8]) -> Result<Option<Head>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let hs = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            Ok(Some((r.code.unwrap_or(0), hs, n)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(()),
    }
}

fn parse(buf: &[u8], to_head: bool) -> Parsed {
    let (status, headers, n) = match head(buf) {
        Ok(Some(h)) => h,
        Ok(None) => {
            return Parsed::Partial {
                close_delimited: false,
            }
        }
        Err(()) => return Parsed::Garbage,
    };
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    let rest = &buf[n..];
    if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Parsed::Done(
            RawResponse {
                status,
                headers,
                body: Vec::new(),
                close_delimited: false,
            },
            n,
        );
    }
    if get("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
        return match dechunk(rest) {
            Some((body, used)) => Parsed::Done(
                RawResponse {
                    status,
                    headers,
                    body,
                    close_delimited: false,
                },
                n + used,
            ),
            None => Parsed::Partial {
                close_delimited: false,
            },
        };
    }
    if let Some(len) = get("content-length") {
        let Ok(len) = len.parse::<usize>() else {
            return Parsed::Garbage;
        };
        if rest.len() >= len {
            return Parsed::Done(
                RawResponse {
                    status,
                    headers,
                    body: rest[..len].to_vec(),
                    close_delimited: false,
                },
                n + len,
            );
        }
        return Parsed::Partial {
            close_delimited: false,
        };
    }
    Parsed::Partial {
        close_delimited: true,
    }
}

fn parse_to_close(buf: &[u8]) -> Parsed {
    match head(buf) {
        Ok(Some((status, headers, n))) => Parsed::Done(
            RawResponse {
                status,
                headers,
                body: buf[n..].to_vec(),
                close_delimited: true,
            },
            buf.len(),
        ),
        _ => Parsed::Garbage,
    }
}

/// Decode a complete chunked body; None while incomplete.
fn dechunk(mut b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let total = b.len();
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            let end = b.windows(2).position(|w| w == b"\r\n")?;
            b = &b[end + 2..];
            return Some((out, total - b.len()));
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A request with a body and exact headers (`Host` and `Content-Length`
/// added unless `headers` already frames the body).
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: gateway.test\r\n").into_bytes();
    let framed = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if !framed && (!body.is_empty() || method == "POST") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A JSON POST to `/v1/chat/completions`.
pub fn chat_request(body: &[u8]) -> Vec<u8> {
    request(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body,
    )
}

/// `body` as one chunked body (chunks of `size` bytes).
pub fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(size.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}
