//! Helpers shared by the simulator's integration tests (`tests/sim_*.rs`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vllm_gateway::sim::{SimConfig, SimHandle, SimStats, Simulator};

/// A fast simulator config: tiny timings, so tests that do not measure time run quickly.
pub fn fast() -> SimConfig {
    SimConfig {
        ttft: Duration::from_millis(1),
        itl: Duration::from_millis(1),
        ..SimConfig::default()
    }
}

pub fn start(cfg: SimConfig) -> SimHandle {
    Simulator::start(cfg).expect("simulator starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub fn chat(content: &str) -> Value {
    json!({"model": "sim-model", "messages": [{"role": "user", "content": content}]})
}

/// Polls `cond` on the simulator's stats until it holds or `within` passes; returns the
/// elapsed time, or panics with the last stats seen.
pub async fn wait_stats(
    sim: &SimHandle,
    within: Duration,
    what: &str,
    cond: impl Fn(&SimStats) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let s = sim.stats();
        if cond(&s) {
            return start.elapsed();
        }
        if start.elapsed() > within {
            panic!("timed out after {within:?} waiting for {what}; last stats: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The `data:` payloads of an SSE body, in order. Panics on anything that is not a
/// `data: ...\n\n` event.
pub fn sse_payloads(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let end = rest
            .find("\n\n")
            .unwrap_or_else(|| panic!("unterminated event in {rest:?}"));
        let event = &rest[..end];
        let payload = event
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not a data event: {event:?}"));
        out.push(payload.to_string());
        rest = &rest[end + 2..];
    }
    out
}

/// JSON chunks of an SSE body; asserts the stream ends with exactly one `[DONE]`.
pub fn sse_chunks(body: &str) -> Vec<Value> {
    let payloads = sse_payloads(body);
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "stream: {body}"
    );
    payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap_or_else(|e| panic!("bad chunk {p}: {e}")))
        .collect()
}

/// Concatenated `delta.content` (chat) or `text` (completions) of choice `index`.
pub fn assembled(chunks: &[Value], index: u64) -> String {
    let mut s = String::new();
    for c in chunks {
        for ch in c["choices"].as_array().unwrap() {
            if ch["index"] == index {
                if let Some(t) = ch["delta"]["content"].as_str() {
                    s.push_str(t);
                }
                if let Some(t) = ch["text"].as_str() {
                    s.push_str(t);
                }
            }
        }
    }
    s
}

/// A raw HTTP/1.1 POST of a JSON body, built by hand.
pub fn post_bytes(path: &str, body: &Value, extra_headers: &str) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Opens a connection and sends `request`.
pub async fn send_raw(addr: SocketAddr, request: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    s
}

/// Reads until EOF (or error, e.g. a reset), with an overall timeout. Returns the bytes and
/// whether the read ended in an error.
pub async fn read_to_end(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!(
                "read timed out; got so far: {}",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0)) => return (out, false),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return (out, true),
        }
    }
}

/// Reads until `needle` has been received (or panics after `within`).
pub async fn read_until(s: &mut TcpStream, needle: &[u8], within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    while !out.windows(needle.len()).any(|w| w == needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            other => panic!(
                "did not receive {:?} ({other:?}); got: {}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&out)
            ),
        }
    }
    out
}

/// A response split into head and (de-chunked) body; `chunks` lists each HTTP chunk.
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
    pub chunks: Vec<Vec<u8>>,
    /// The chunked body ended with the terminating zero-size chunk.
    pub complete: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses one response from raw bytes (as far as they go).
pub fn parse_response(raw: &[u8]) -> RawResponse {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut r = RawResponse {
        status,
        head,
        body: Vec::new(),
        chunks: Vec::new(),
        complete: false,
    };
    let mut rest = &raw[end + 4..];
    if r.header("transfer-encoding").as_deref() == Some("chunked") {
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap(), 16).unwrap();
            if size == 0 {
                r.complete = true;
                break;
            }
            if rest.len() < nl + 2 + size + 2 {
                break;
            }
            let data = &rest[nl + 2..nl + 2 + size];
            r.body.extend_from_slice(data);
            r.chunks.push(data.to_vec());
            rest = &rest[nl + 2 + size + 2..];
        }
    } else {
        let len: usize = r
            .header("content-length")
            .map_or(rest.len(), |v| v.parse().unwrap());
        r.body = rest[..len.min(rest.len())].to_vec();
        r.complete = rest.len() >= len;
    }
    r
}

/// One request on a fresh connection that the server closes (`Connection: close`).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = send_raw(addr, request).await;
    let (bytes, _) = read_to_end(&mut s, Duration::from_secs(10)).await;
    parse_response(&bytes)
}

/// POSTs `body` as JSON to `url`.
pub async fn post(url: String, body: &Value) -> reqwest::Response {
    client().post(url).json(body).send().await.unwrap()
}

/// POSTs `body` as JSON to `url` and parses the answer as JSON (whatever its status).
pub async fn post_for_json(url: String, body: &Value) -> Value {
    post(url, body).await.json().await.unwrap()
}
