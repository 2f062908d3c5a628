//! `loadgen upstream`: a minimal OpenAI-compatible worker whose SSE events carry the wall-clock
//! time they were written (`data: {"t":<ns since the Unix epoch>,...}`).
//!
//! Why: the simulator paces tokens with tokio's 1 ms timer, and on a shared 2-core box its
//! gaps jitter by a millisecond or more, run to run; a proxy's added 100 µs cannot be seen in
//! the difference of two such p99s. With the send time in every event, the client measures each
//! event's delay (receive − send) and how much a gap was stretched (delay_k − delay_k-1), free of
//! the worker's own jitter. Client and worker run on one machine, so they read one clock.
//!
//! It answers what the gateway needs from a worker: `GET /health`, `GET /v1/models` (with
//! `max_model_len`), `GET /metrics` (vLLM's running/waiting gauges) and
//! `POST /v1/chat/completions` (streaming or not; `--tokens` tokens after `--ttft`, `--itl`
//! apart). Keep-alive; one write per event, as vLLM does.

use std::cell::Cell;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

#[derive(clap::Args)]
pub struct UpstreamArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Served model name.
    #[arg(long, default_value = "bench-stamped")]
    model: String,
    /// Tokens per answer (the stream has a role event, these, and `[DONE]`).
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    /// Time to the first token.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    ttft: Duration,
    /// Time between tokens.
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    itl: Duration,
}

struct Worker {
    model: String,
    tokens: u32,
    ttft: Duration,
    itl: Duration,
    running: Cell<u64>,
}

pub fn main(a: UpstreamArgs) -> Result<ExitCode, String> {
    let rt = super::runtime().map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    let w = Rc::new(Worker {
        model: a.model,
        tokens: a.tokens.max(1),
        ttft: a.ttft,
        itl: a.itl,
        running: Cell::new(0),
    });
    local.block_on(&rt, async move {
        let l = TcpListener::bind(a.listen)
            .await
            .map_err(|e| format!("{}: {e}", a.listen))?;
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    tokio::task::spawn_local(serve(s, Rc::clone(&w)));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
}

struct Req {
    get: bool,
    path: String,
    stream: bool,
    keep_alive: bool,
}

/// Reads one request (`Content-Length` bodies only); `None` at EOF or on garbage.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Req> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Request::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(head)) => {
                let mut len = 0usize;
                let mut keep_alive = r.version == Some(1);
                for h in r.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        len = std::str::from_utf8(h.value).ok()?.trim().parse().ok()?;
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        keep_alive = !super::contains_ci(h.value, b"close");
                    }
                }
                let get = r.method == Some("GET");
                let path = r.path.unwrap_or("").to_string();
                while buf.len() < head + len {
                    if read_more(s, buf).await? == 0 {
                        return None;
                    }
                }
                let body = &buf[head..head + len];
                let stream = memchr::memmem::find(body, b"\"stream\":true").is_some();
                buf.drain(..head + len);
                return Some(Req {
                    get,
                    path,
                    stream,
                    keep_alive,
                });
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > 64 * 1024 || read_more(s, buf).await? == 0 {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut tmp = [0u8; 4096];
    let n = s.read(&mut tmp).await.ok()?;
    buf.extend_from_slice(&tmp[..n]);
    Some(n)
}

async fn serve(mut s: TcpStream, w: Rc<Worker>) {
    let mut buf = Vec::with_capacity(4096);
    while let Some(req) = read_request(&mut s, &mut buf).await {
        let ok = match (req.get, req.path.as_str()) {
            (true, "/health") => respond(&mut s, 200, "text/plain", b"", req.keep_alive).await,
            (true, "/v1/models") => {
                let body = format!(
                    r#"{{"object":"list","data":[{{"id":"{}","object":"model","created":0,"owned_by":"loadgen","root":"{}","parent":null,"max_model_len":4096}}]}}"#,
                    w.model, w.model
                );
                respond(
                    &mut s,
                    200,
                    "application/json",
                    body.as_bytes(),
                    req.keep_alive,
                )
                .await
            }
            (true, "/metrics") => {
                let body = format!(
                    "vllm:num_requests_running{{model_name=\"{m}\"}} {}\n\
                     vllm:num_requests_waiting{{model_name=\"{m}\"}} 0\n\
                     vllm:kv_cache_usage_perc{{model_name=\"{m}\"}} 0\n",
                    w.running.get(),
                    m = w.model
                );
                respond(&mut s, 200, "text/plain", body.as_bytes(), req.keep_alive).await
            }
            (false, "/v1/chat/completions") => {
                w.running.set(w.running.get() + 1);
                let r = if req.stream {
                    stream(&mut s, &w, req.keep_alive).await
                } else {
                    full(&mut s, &w, req.keep_alive).await
                };
                w.running.set(w.running.get() - 1);
                r
            }
            _ => respond(&mut s, 404, "application/json", b"{}", req.keep_alive).await,
        };
        if !ok || !req.keep_alive {
            return;
        }
    }
}

async fn respond(s: &mut TcpStream, status: u16, ct: &str, body: &[u8], keep: bool) -> bool {
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {ct}\r\ncontent-length: {}\r\n{}\r\n",
        body.len(),
        if keep { "" } else { "connection: close\r\n" }
    )
    .into_bytes();
    out.extend_from_slice(body);
    s.write_all(&out).await.is_ok()
}

/// A chunk-framed SSE event stamped with the time it is handed to the kernel.
fn event(out: &mut Vec<u8>, model: &str, delta: &str, finish: Option<&str>) {
    let data = format!(
        r#"data: {{"t":{},"id":"chatcmpl-stamped","object":"chat.completion.chunk","created":0,"model":"{model}","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{}}}]}}"#,
        super::wall_ns(),
        finish.map_or("null".to_string(), |f| format!("\"{f}\""))
    );
    out.clear();
    out.extend_from_slice(format!("{:x}\r\n", data.len() + 2).as_bytes());
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n\r\n");
}

async fn stream(s: &mut TcpStream, w: &Worker, keep: bool) -> bool {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n{}\r\n",
        if keep { "" } else { "connection: close\r\n" }
    );
    if s.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    let first = Instant::now() + w.ttft;
    let mut out = Vec::with_capacity(512);
    for k in 0..w.tokens {
        tokio::time::sleep_until(first + w.itl * k).await;
        if k == 0 {
            event(
                &mut out,
                &w.model,
                r#"{"role":"assistant","content":""}"#,
                None,
            );
            if s.write_all(&out).await.is_err() {
                return false;
            }
        }
        let last = k + 1 == w.tokens;
        event(
            &mut out,
            &w.model,
            r#"{"content":" tok"}"#,
            last.then_some("stop"),
        );
        if s.write_all(&out).await.is_err() {
            return false;
        }
    }
    let done = b"data: [DONE]\n\n";
    let mut tail = format!("{:x}\r\n", done.len()).into_bytes();
    tail.extend_from_slice(done);
    tail.extend_from_slice(b"\r\n0\r\n\r\n");
    s.write_all(&tail).await.is_ok()
}

async fn full(s: &mut TcpStream, w: &Worker, keep: bool) -> bool {
    tokio::time::sleep(w.ttft + w.itl * (w.tokens - 1)).await;
    let content = " tok".repeat(w.tokens as usize);
    let body = format!(
        r#"{{"id":"chatcmpl-stamped","object":"chat.completion","created":0,"model":"{}","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":8,"completion_tokens":{},"total_tokens":{}}}}}"#,
        w.model,
        w.tokens,
        w.tokens + 8
    );
    respond(s, 200, "application/json", body.as_bytes(), keep).await
}
