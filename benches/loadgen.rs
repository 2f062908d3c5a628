//! A closed-loop HTTP/1.1 load generator for `benches/load.sh`.
//!
//! Why not `wrk` or reqwest: the comparison needs per-request time to first byte, time to
//! first SSE event and the gap between SSE events, which `wrk` does not measure, and a
//! general-purpose client (reqwest/hyper) costs more CPU per request than the proxies under
//! test on this 2-core box. So this is a small raw client: tokio + `httparse`, keep-alive,
//! one current-thread runtime per OS thread (as `wrk` does), no locks and no allocation per
//! request, latencies in HDR histograms.
//!
//! Subcommands (see `benches/README.md`):
//! - `run`: closed-loop load for a duration after a warm-up; one JSON line of results.
//! - `streams`: N connections, each holding one long streaming request, ramped up at a rate.
//! - `report`: reads the JSON lines of a whole `load.sh` run and prints the markdown tables.
//! - `free-ports N`: prints N loopback ports that were free a moment ago.
//!
//! `cargo bench` and `cargo test --all-targets` run every bench target with their own
//! arguments (`--bench`, filters) or none: without one of the subcommands first, this binary
//! does nothing and exits 0.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "loadgen/report.rs"]
mod report;
#[path = "loadgen/upstream.rs"]
mod upstream;

const SUBCOMMANDS: &[&str] = &[
    "run",
    "streams",
    "report",
    "free-ports",
    "self-test",
    "upstream",
    "help",
    "--help",
    "-h",
];

fn main() -> ExitCode {
    let first = std::env::args().nth(1);
    if !first.as_deref().is_some_and(|a| SUBCOMMANDS.contains(&a)) {
        // Started by `cargo bench` / `cargo test --all-targets`: not ours to run.
        println!("loadgen: no subcommand given; nothing to do (run `bash benches/load.sh`)");
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Streams(a) => streams(a),
        Cmd::Report(a) => report::main(&a),
        Cmd::FreePorts { n } => free_ports(n),
        Cmd::SelfTest => self_test(),
        Cmd::Upstream(a) => upstream::main(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Closed-loop HTTP/1.1 load for benches/load.sh"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Closed-loop load for a fixed duration; prints one JSON line.
    Run(RunArgs),
    /// Many long streams at once, one per connection; prints one JSON line.
    Streams(StreamsArgs),
    /// Markdown tables (medians, ratios, targets) from the JSON lines of a load.sh run.
    Report(report::ReportArgs),
    /// Print N loopback TCP ports that were free a moment ago.
    FreePorts { n: usize },
    /// Check the HTTP/SSE decoders (fast; load.sh runs it first).
    SelfTest,
    /// A minimal worker whose SSE events carry their send time (for added-latency runs).
    Upstream(upstream::UpstreamArgs),
}

/// What every request looks like and where it goes.
#[derive(Args, Clone)]
struct Target {
    /// Endpoint URL (http://HOST:PORT/PATH); repeat to spread connections round-robin.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// The request's "model".
    #[arg(long, default_value = "bench-fast")]
    model: String,
    /// The request's "max_tokens".
    #[arg(long, default_value_t = 16)]
    max_tokens: u32,
    /// Sent as `Authorization: Bearer KEY` (to every target alike).
    #[arg(long)]
    api_key: Option<String>,
    /// Per-request timeout (connect excluded).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Initial read buffer per connection, bytes (grows for large heads).
    #[arg(long, default_value_t = 16 * 1024)]
    buf: usize,
    /// OS threads, each with its own single-threaded runtime and share of the connections.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// `key=value` copied into the output's "labels" (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

/// Processes whose memory, descriptors and sockets are sampled during the run.
#[derive(Args, Clone)]
struct WatchArgs {
    /// PID to sample (repeat to sum several processes, e.g. nginx master + workers).
    #[arg(long = "watch-pid")]
    pids: Vec<u32>,
    /// Sampling period.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    sample_every: Duration,
    /// Also count the watched processes' TCP sockets in CLOSE_WAIT (reads /proc/net/tcp*).
    #[arg(long)]
    count_close_wait: bool,
    /// Keep every sample in the output (soak); otherwise only peaks are reported.
    #[arg(long)]
    keep_samples: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    watch: WatchArgs,
    /// Concurrent connections, each with one request in flight (closed loop).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured time, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before measuring starts (not counted).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Share of requests that ask for a stream (0 = all JSON, 1 = all SSE).
    #[arg(long, default_value_t = 0.0)]
    stream_fraction: f64,
    /// Share of streaming requests the client abandons after the first event (closing the
    /// connection), as a user pressing stop does.
    #[arg(long, default_value_t = 0.0)]
    abort_fraction: f64,
    /// Share of requests sent with `Connection: close` (connection churn).
    #[arg(long, default_value_t = 0.0)]
    close_fraction: f64,
    /// After the load stops, wait this long and sample the watched processes once more.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    settle: Duration,
}

#[derive(Args)]
struct StreamsArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    watch: WatchArgs,
    /// Streams to hold open at once, one connection each.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 1000.0)]
    connect_rate: f64,
    /// After every stream has its response head, wait this long, then sample memory.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    open_settle: Duration,
    /// After every stream has ended, wait this long and sample once more (0 = do not).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    settle: Duration,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got `{s}`"))
}

fn free_ports(n: usize) -> Result<ExitCode, String> {
    // Hold all of them at once so the N ports differ.
    let socks: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<_>>()
        .map_err(|e| format!("free-ports: {e}"))?;
    for s in &socks {
        let port = s.local_addr().map_err(|e| e.to_string())?.port();
        println!("{port}");
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// Requests

/// One endpoint with its four pre-built requests (stream or not, keep-alive or close).
struct Endpoint {
    addr: SocketAddr,
    /// Indexed by `stream as usize * 2 + close as usize`.
    requests: [Vec<u8>; 4],
}

impl Endpoint {
    fn request(&self, stream: bool, close: bool) -> &[u8] {
        &self.requests[usize::from(stream) * 2 + usize::from(close)]
    }
}

fn endpoints(t: &Target) -> Result<Vec<Endpoint>, String> {
    t.urls.iter().map(|u| endpoint(t, u)).collect()
}

fn endpoint(t: &Target, url: &str) -> Result<Endpoint, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    let build = |stream: bool, close: bool| {
        let body = format!(
            concat!(
                r#"{{"model":"{}","messages":[{{"role":"user","content":"#,
                r#""Explain in one paragraph why a reverse proxy keeps upstream connections open."}}],"#,
                r#""max_tokens":{}{}}}"#
            ),
            t.model,
            t.max_tokens,
            if stream { r#","stream":true"# } else { "" }
        );
        let mut r = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
             Accept: {}\r\nContent-Length: {}\r\n",
            if stream {
                "text/event-stream"
            } else {
                "application/json"
            },
            body.len()
        );
        if let Some(k) = &t.api_key {
            r.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        if close {
            r.push_str("Connection: close\r\n");
        }
        r.push_str("\r\n");
        r.push_str(&body);
        r.into_bytes()
    };
    Ok(Endpoint {
        addr,
        requests: [
            build(false, false),
            build(false, true),
            build(true, false),
            build(true, true),
        ],
    })
}

// ---------------------------------------------------------------------------------------------
// The client side of one exchange

/// Why an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fail {
    Connect,
    /// Write or read error (reset).
    Io,
    /// The server closed the connection before the response was complete.
    Eof,
    /// Unparseable head or chunk framing.
    Protocol,
    /// A complete response whose status was not 200.
    Status(u16),
    /// A 200 stream that ended without `data: [DONE]`.
    NoDone,
    Timeout,
}

impl Fail {
    fn label(self) -> String {
        match self {
            Fail::Connect => "connect".into(),
            Fail::Io => "io".into(),
            Fail::Eof => "eof".into(),
            Fail::Protocol => "protocol".into(),
            Fail::Status(s) => format!("status_{s}"),
            Fail::NoDone => "stream_without_done".into(),
            Fail::Timeout => "timeout".into(),
        }
    }
}

/// A complete exchange.
struct Done {
    ttfb: Duration,
    /// First SSE event (streams only).
    ttft: Option<Duration>,
    total: Duration,
    keep_alive: bool,
    events: u32,
}

enum Outcome {
    Done(Done),
    /// The client abandoned the stream on purpose (`--abort-fraction`).
    Aborted,
    /// `streams` mode: the head arrived (the stream is open); reading goes on via `finish`.
    Opened,
}

/// A client connection with its read buffer (`buf[start..end]` not yet consumed).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

const MAX_HEAD: usize = 1 << 20;

impl Conn {
    async fn open(addr: SocketAddr, buf: usize) -> Result<Conn, Fail> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| Fail::Connect)?
            .map_err(|_| Fail::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: vec![0; buf.max(512)],
            start: 0,
            end: 0,
        })
    }

    /// Reads more bytes; `Ok(0)` at EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_HEAD {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            } else {
                return Err(io::Error::other("response head too large"));
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}

/// What the head said about the body.
struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
    event_stream: bool,
}

enum Framing {
    Length(u64),
    Chunked(Chunked),
    UntilEof,
}

fn parse_head(bytes: &[u8]) -> Result<Option<(usize, Head)>, Fail> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let len = match r.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Fail::Protocol),
    };
    let status = r.code.unwrap_or(0);
    let mut keep_alive = r.version == Some(1);
    let mut length = None;
    let mut chunked = false;
    let mut event_stream = false;
    for h in r.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| Fail::Protocol)?;
            length = Some(v.trim().parse::<u64>().map_err(|_| Fail::Protocol)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = contains_ci(h.value, b"chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            if contains_ci(h.value, b"close") {
                keep_alive = false;
            } else if contains_ci(h.value, b"keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            event_stream = contains_ci(h.value, b"text/event-stream");
        }
    }
    let framing = if chunked {
        Framing::Chunked(Chunked::Size {
            value: 0,
            digits: 0,
        })
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if status == 204 || status == 304 {
        Framing::Length(0)
    } else {
        keep_alive = false;
        Framing::UntilEof
    };
    Ok(Some((
        len,
        Head {
            status,
            framing,
            keep_alive,
            event_stream,
        },
    )))
}

/// The decimal number at the start of `b`, if there is one.
fn parse_digits(b: &[u8]) -> Option<u64> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&b[..n]).ok()?.parse().ok()
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Incremental decoder of `Transfer-Encoding: chunked`.
#[derive(Debug)]
enum Chunked {
    Size { value: u64, digits: u32 },
    SizeExt { value: u64 },
    Data(u64),
    DataEnd,
    Trailer { line_start: bool },
    Done,
}

impl Chunked {
    /// Decodes from `data`, handing chunk payload to `out`; returns the bytes consumed and
    /// whether the body is complete.
    fn feed(&mut self, data: &[u8], mut out: impl FnMut(&[u8])) -> Result<(usize, bool), Fail> {
        let mut i = 0;
        while i < data.len() {
            match self {
                Chunked::Size { value, digits } => {
                    let b = data[i];
                    i += 1;
                    match b {
                        b'\n' if *digits > 0 => {
                            *self = if *value == 0 {
                                Chunked::Trailer { line_start: true }
                            } else {
                                Chunked::Data(*value)
                            };
                        }
                        b'\r' | b' ' | b'\t' => {}
                        b';' if *digits > 0 => *self = Chunked::SizeExt { value: *value },
                        _ => {
                            let d = (b as char).to_digit(16).ok_or(Fail::Protocol)?;
                            if *digits >= 15 {
                                return Err(Fail::Protocol);
                            }
                            *value = *value * 16 + u64::from(d);
                            *digits += 1;
                        }
                    }
                }
                Chunked::SizeExt { value } => {
                    // Extensions are skipped up to the end of the size line.
                    let b = data[i];
                    i += 1;
                    if b == b'\n' {
                        *self = if *value == 0 {
                            Chunked::Trailer { line_start: true }
                        } else {
                            Chunked::Data(*value)
                        };
                    }
                }
                Chunked::Data(rem) => {
                    let n = (*rem).min((data.len() - i) as u64) as usize;
                    out(&data[i..i + n]);
                    i += n;
                    *rem -= n as u64;
                    if *rem == 0 {
                        *self = Chunked::DataEnd;
                    }
                }
                Chunked::DataEnd => {
                    let b = data[i];
                    i += 1;
                    match b {
                        b'\r' => {}
                        b'\n' => {
                            *self = Chunked::Size {
                                value: 0,
                                digits: 0,
                            }
                        }
                        _ => return Err(Fail::Protocol),
                    }
                }
                Chunked::Trailer { line_start } => {
                    let b = data[i];
                    i += 1;
                    match b {
                        b'\n' if *line_start => {
                            *self = Chunked::Done;
                            return Ok((i, true));
                        }
                        b'\n' => *line_start = true,
                        b'\r' => {}
                        _ => *line_start = false,
                    }
                }
                Chunked::Done => return Ok((i, true)),
            }
        }
        Ok((i, matches!(self, Chunked::Done)))
    }
}

/// Per-response event timings, in ns, reused from request to request.
#[derive(Default)]
struct Scratch {
    /// Between consecutive events' arrivals.
    gaps: Vec<u64>,
    /// Arrival minus send time, for events stamped by `loadgen upstream`.
    delays: Vec<u64>,
    /// How much longer a gap arrived than it was sent (delay_k - delay_k-1, when positive).
    stretch: Vec<u64>,
}

/// Current wall-clock time in ns since the Unix epoch: the clock `loadgen upstream` stamps
/// events with (another process on the same machine, so the same clock).
fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, nanos)
}

/// Finds SSE events (blank-line terminated, `\n\n` as vLLM and the simulator send them) in
/// the decoded body and times their arrival.
struct SseClock<'a> {
    line_start: bool,
    event_bytes: usize,
    head: [u8; 40],
    head_len: usize,
    events: u32,
    first: Option<Instant>,
    last: Option<Instant>,
    last_delay: Option<u64>,
    done: bool,
    out: &'a mut Scratch,
}

const DONE_EVENT: &[u8] = b"data: [DONE]";
const STAMP: &[u8] = br#"data: {"t":"#;

impl<'a> SseClock<'a> {
    fn new(out: &'a mut Scratch) -> Self {
        out.gaps.clear();
        out.delays.clear();
        out.stretch.clear();
        SseClock {
            line_start: true,
            event_bytes: 0,
            head: [0; 40],
            head_len: 0,
            events: 0,
            first: None,
            last: None,
            last_delay: None,
            done: false,
            out,
        }
    }

    /// `now` and `wall` are the arrival time of the read that brought `data`.
    fn feed(&mut self, mut data: &[u8], now: Instant, wall: u64) {
        while !data.is_empty() {
            let (line, nl) = match memchr::memchr(b'\n', data) {
                Some(p) => (&data[..p], true),
                None => (data, false),
            };
            if !line.is_empty() {
                self.line_start = false;
                self.event_bytes += line.len();
                let room = self.head.len() - self.head_len;
                let n = room.min(line.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&line[..n]);
                self.head_len += n;
            }
            if nl {
                if self.line_start && self.event_bytes > 0 {
                    self.event(now, wall);
                } else {
                    self.line_start = true;
                }
                data = &data[line.len() + 1..];
            } else {
                data = &[];
            }
        }
    }

    fn event(&mut self, now: Instant, wall: u64) {
        self.events += 1;
        if let Some(last) = self.last {
            self.out.gaps.push(nanos(now.duration_since(last)));
        } else {
            self.first = Some(now);
        }
        self.last = Some(now);
        let head = &self.head[..self.head_len];
        if head == DONE_EVENT {
            self.done = true;
        } else if let Some(sent) = head.strip_prefix(STAMP).and_then(parse_digits) {
            let delay = wall.saturating_sub(sent);
            self.out.delays.push(delay);
            if let Some(prev) = self.last_delay {
                self.out.stretch.push(delay.saturating_sub(prev));
            }
            self.last_delay = Some(delay);
        }
        self.event_bytes = 0;
        self.head_len = 0;
    }
}

/// Sends `req` and reads the whole response (or, with `stop_after_head`, only its head).
async fn exchange(
    c: &mut Conn,
    req: &[u8],
    abort_after_first_event: bool,
    stop_after_head: bool,
    scratch: &mut Scratch,
) -> Result<(Outcome, Option<BodyState>), Fail> {
    if c.start != c.end {
        return Err(Fail::Protocol); // bytes nobody asked for
    }
    let t0 = Instant::now();
    c.stream.write_all(req).await.map_err(|_| Fail::Io)?;
    let mut ttfb = None;
    let (head, head_at) = loop {
        let n = c.fill().await.map_err(|_| Fail::Io)?;
        let now = Instant::now();
        if n == 0 {
            return Err(Fail::Eof);
        }
        ttfb.get_or_insert(now - t0);
        if let Some((len, head)) = parse_head(&c.buf[c.start..c.end])? {
            c.start += len;
            break (head, now);
        }
    };
    let state = BodyState {
        t0,
        ttfb: ttfb.unwrap_or_default(),
        head,
        head_at,
    };
    if stop_after_head {
        return Ok((Outcome::Opened, Some(state)));
    }
    read_body(c, state, abort_after_first_event, scratch, || {})
        .await
        .map(|o| (o, None))
}

/// An exchange whose head has been read.
struct BodyState {
    t0: Instant,
    ttfb: Duration,
    head: Head,
    head_at: Instant,
}

/// Reads the body after `st`'s head; `on_first_event` runs once, when the first SSE event
/// arrives; with `abort_after_first_event` the exchange stops there.
async fn read_body(
    c: &mut Conn,
    st: BodyState,
    abort_after_first_event: bool,
    scratch: &mut Scratch,
    mut on_first_event: impl FnMut(),
) -> Result<Outcome, Fail> {
    let BodyState {
        t0,
        ttfb,
        mut head,
        head_at,
    } = st;
    let event_stream = head.event_stream;
    let mut sse = SseClock::new(scratch);
    let mut now = head_at;
    let mut wall = wall_ns();
    let mut first_seen = false;
    loop {
        let data = &c.buf[c.start..c.end];
        let (used, complete) = match &mut head.framing {
            Framing::Length(rem) => {
                let n = (*rem).min(data.len() as u64);
                if event_stream {
                    sse.feed(&data[..n as usize], now, wall);
                }
                *rem -= n;
                (n as usize, *rem == 0)
            }
            Framing::Chunked(ch) => ch.feed(data, |d| {
                if event_stream {
                    sse.feed(d, now, wall);
                }
            })?,
            Framing::UntilEof => {
                if event_stream {
                    sse.feed(data, now, wall);
                }
                (data.len(), false)
            }
        };
        c.start += used;
        if sse.events > 0 && !first_seen {
            first_seen = true;
            on_first_event();
            if abort_after_first_event && !complete {
                return Ok(Outcome::Aborted);
            }
        }
        if complete {
            break;
        }
        let n = c.fill().await.map_err(|_| Fail::Io)?;
        now = Instant::now();
        if event_stream {
            wall = wall_ns();
        }
        if n == 0 {
            if matches!(head.framing, Framing::UntilEof) {
                break;
            }
            return Err(Fail::Eof);
        }
    }
    let total = now - t0;
    if head.status != 200 {
        return Err(Fail::Status(head.status));
    }
    if event_stream && !sse.done {
        return Err(Fail::NoDone);
    }
    Ok(Outcome::Done(Done {
        ttfb,
        ttft: sse.first.map(|f| f - t0),
        total,
        keep_alive: head.keep_alive,
        events: sse.events,
    }))
}

// ---------------------------------------------------------------------------------------------
// Statistics

fn histogram() -> Histogram<u64> {
    // Nanoseconds with 3 significant digits, from 1 µs to 10 minutes.
    Histogram::new_with_bounds(1_000, 600_000_000_000, 3).expect("valid histogram bounds")
}

/// One thread's (or, merged, the whole run's) numbers.
struct Stats {
    latency: Histogram<u64>,
    ttfb: Histogram<u64>,
    ttft: Histogram<u64>,
    gap: Histogram<u64>,
    delay: Histogram<u64>,
    stretch: Histogram<u64>,
    ok: u64,
    ok_streams: u64,
    events: u64,
    aborted: u64,
    connects: u64,
    errors: BTreeMap<Fail, u64>,
    warmup_ok: u64,
    warmup_errors: u64,
    late_ok: u64,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            latency: histogram(),
            ttfb: histogram(),
            ttft: histogram(),
            gap: histogram(),
            delay: histogram(),
            stretch: histogram(),
            ok: 0,
            ok_streams: 0,
            events: 0,
            aborted: 0,
            connects: 0,
            errors: BTreeMap::new(),
            warmup_ok: 0,
            warmup_errors: 0,
            late_ok: 0,
        }
    }

    fn record_ok(&mut self, d: &Done, t: &Scratch) {
        self.ok += 1;
        self.latency.saturating_record(nanos(d.total));
        self.ttfb.saturating_record(nanos(d.ttfb));
        if let Some(t) = d.ttft {
            self.ok_streams += 1;
            self.ttft.saturating_record(nanos(t));
            self.events += u64::from(d.events);
        }
        for &g in &t.gaps {
            self.gap.saturating_record(g);
        }
        for &x in &t.delays {
            self.delay.saturating_record(x);
        }
        for &x in &t.stretch {
            self.stretch.saturating_record(x);
        }
    }

    fn merge(&mut self, o: &Stats) {
        // Same bounds everywhere, so adding cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.ttfb.add(&o.ttfb);
        let _ = self.ttft.add(&o.ttft);
        let _ = self.gap.add(&o.gap);
        let _ = self.delay.add(&o.delay);
        let _ = self.stretch.add(&o.stretch);
        self.ok += o.ok;
        self.ok_streams += o.ok_streams;
        self.events += o.events;
        self.aborted += o.aborted;
        self.connects += o.connects;
        for (k, v) in &o.errors {
            *self.errors.entry(*k).or_default() += v;
        }
        self.warmup_ok += o.warmup_ok;
        self.warmup_errors += o.warmup_errors;
        self.late_ok += o.late_ok;
    }

    fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    fn json(&self, seconds: f64) -> Value {
        let errors: serde_json::Map<String, Value> = self
            .errors
            .iter()
            .map(|(k, v)| (k.label(), json!(v)))
            .collect();
        json!({
            "ok": self.ok,
            "rps": round1(self.ok as f64 / seconds.max(1e-9)),
            "errors": self.error_total(),
            "error_kinds": errors,
            "aborted": self.aborted,
            "connects": self.connects,
            "warmup_ok": self.warmup_ok,
            "warmup_errors": self.warmup_errors,
            "late_ok": self.late_ok,
            "events_per_stream": if self.ok_streams > 0 {
                json!(round1(self.events as f64 / self.ok_streams as f64))
            } else { Value::Null },
            "latency_us": hist_json(&self.latency),
            "ttfb_us": hist_json(&self.ttfb),
            "ttft_us": hist_json(&self.ttft),
            "gap_us": hist_json(&self.gap),
            "event_delay_us": hist_json(&self.delay),
            "gap_stretch_us": hist_json(&self.stretch),
        })
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn hist_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let us = |ns: u64| round1(ns as f64 / 1000.0);
    json!({
        "n": h.len(),
        "mean": round1(h.mean() / 1000.0),
        "p50": us(h.value_at_quantile(0.50)),
        "p90": us(h.value_at_quantile(0.90)),
        "p99": us(h.value_at_quantile(0.99)),
        "p999": us(h.value_at_quantile(0.999)),
        "max": us(h.max()),
    })
}

// ---------------------------------------------------------------------------------------------
// Watching the server processes

#[derive(Clone, Copy, Default)]
struct Sample {
    /// Seconds since measuring started (negative during the warm-up).
    t: f64,
    rss_kb: u64,
    fds: u64,
    close_wait: Option<u64>,
}

impl Sample {
    fn json(&self) -> Value {
        json!({"t": round1(self.t), "rss_kb": self.rss_kb, "fds": self.fds,
               "close_wait": self.close_wait})
    }
}

fn sample(pids: &[u32], close_wait: bool, t0: Instant, now: Instant) -> Sample {
    let t = if now >= t0 {
        (now - t0).as_secs_f64()
    } else {
        -(t0 - now).as_secs_f64()
    };
    let mut s = Sample {
        t,
        ..Sample::default()
    };
    let mut inodes = HashSet::new();
    for &pid in pids {
        s.rss_kb += rss_kb(pid).unwrap_or(0);
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for e in dir.flatten() {
                s.fds += 1;
                if close_wait {
                    if let Some(ino) = std::fs::read_link(e.path())
                        .ok()
                        .and_then(|l| socket_inode(&l.to_string_lossy()))
                    {
                        inodes.insert(ino);
                    }
                }
            }
        }
    }
    if close_wait {
        s.close_wait = Some(count_close_wait(&inodes));
    }
    s
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// TCP sockets among `inodes` in state CLOSE_WAIT (08 in /proc/net/tcp).
fn count_close_wait(inodes: &HashSet<u64>) -> u64 {
    let mut n = 0;
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "08" {
                if let Ok(ino) = cols[9].parse::<u64>() {
                    n += u64::from(inodes.contains(&ino));
                }
            }
        }
    }
    n
}

/// Samples the watched processes on its own thread until told to stop.
struct Sampler {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(w: &WatchArgs, t0: Instant) -> Option<Sampler> {
        if w.pids.is_empty() {
            return None;
        }
        let (stop, rx) = mpsc::channel::<()>();
        let pids = w.pids.clone();
        let every = w.sample_every;
        let cw = w.count_close_wait;
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            loop {
                out.push(sample(&pids, cw, t0, Instant::now()));
                match rx.recv_timeout(every) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => {
                        // The last word: the state when the caller stopped watching.
                        out.push(sample(&pids, cw, t0, Instant::now()));
                        break;
                    }
                }
            }
            out
        });
        Some(Sampler { stop, thread })
    }

    fn finish(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or_default()
    }
}

fn watch_json(w: &WatchArgs, samples: &[Sample], from: f64, to: f64, extra: Value) -> Value {
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t >= from && s.t <= to)
        .collect();
    let peak = during.iter().map(|s| s.rss_kb).max();
    let mut v = json!({
        "pids": w.pids,
        "peak_rss_kb": peak,
        "max_fds": during.iter().map(|s| s.fds).max(),
        "max_close_wait": during.iter().filter_map(|s| s.close_wait).max(),
        "first": during.first().map(|s| s.json()),
        "last": during.last().map(|s| s.json()),
        "before": samples.first().map(|s| s.json()),
    });
    if w.keep_samples {
        v["samples"] = Value::Array(samples.iter().map(Sample::json).collect());
    }
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
        m.extend(e);
    }
    v
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    proc_cpu_seconds("self")
}

/// CPU seconds (user + system) process `pid` ("self" or a number) has used, from
/// /proc/PID/stat; 0 if it cannot be read.
fn proc_cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Field 14 is index 11 after the state (field 3 is index 0); clock ticks are 100 Hz on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds the watched processes use between `from` and `to` (the measured window).
fn server_cpu_thread(
    pids: &[u32],
    from: Instant,
    to: Instant,
) -> Option<std::thread::JoinHandle<f64>> {
    if pids.is_empty() {
        return None;
    }
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    Some(std::thread::spawn(move || {
        let total = |pids: &[String]| pids.iter().map(|p| proc_cpu_seconds(p)).sum::<f64>();
        std::thread::sleep(from.saturating_duration_since(Instant::now()));
        let c0 = total(&pids);
        std::thread::sleep(to.saturating_duration_since(Instant::now()));
        total(&pids) - c0
    }))
}

fn labels_json(t: &Target) -> Value {
    Value::Object(
        t.labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect(),
    )
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

// ---------------------------------------------------------------------------------------------
// `run`: closed loop

struct RunPlan {
    endpoints: Vec<Endpoint>,
    measure_from: Instant,
    end: Instant,
    timeout: Duration,
    buf: usize,
    stream_fraction: f64,
    abort_fraction: f64,
    close_fraction: f64,
}

fn run(a: RunArgs) -> Result<ExitCode, String> {
    endpoints(&a.target)?; // fail on a bad URL before starting threads
    let threads = a.target.threads.clamp(1, a.connections.max(1));
    let start = Instant::now();
    let measure_from = start + a.warmup;
    let end = measure_from + a.duration;
    let sampler = Sampler::start(&a.watch, measure_from);
    let server_cpu = server_cpu_thread(&a.watch.pids, measure_from, end);
    let cpu0 = cpu_seconds();

    let mut handles = Vec::new();
    for th in 0..threads {
        let conns: Vec<usize> = (th..a.connections).step_by(threads).collect();
        let plan = RunPlan {
            endpoints: endpoints(&a.target)?,
            measure_from,
            end,
            timeout: a.target.timeout,
            buf: a.target.buf,
            stream_fraction: a.stream_fraction,
            abort_fraction: a.abort_fraction,
            close_fraction: a.close_fraction,
        };
        handles.push(std::thread::spawn(move || run_thread(plan, conns)));
    }
    let mut stats = Stats::new();
    for h in handles {
        let s = h
            .join()
            .map_err(|_| "a load thread panicked".to_string())??;
        stats.merge(&s);
    }
    let cpu = cpu_seconds() - cpu0;
    if !a.settle.is_zero() {
        std::thread::sleep(a.settle);
    }
    let samples = sampler.map(Sampler::finish).unwrap_or_default();
    let seconds = a.duration.as_secs_f64();
    let mut out = json!({
        "kind": "run",
        "labels": labels_json(&a.target),
        "urls": a.target.urls,
        "model": a.target.model,
        "connections": a.connections,
        "threads": threads,
        "duration_s": seconds,
        "warmup_s": a.warmup.as_secs_f64(),
        "stream_fraction": a.stream_fraction,
        "abort_fraction": a.abort_fraction,
        "close_fraction": a.close_fraction,
        "loadgen_cpu_s": round1(cpu * 10.0) / 10.0,
        "loadgen_cpu_us_per_req": if stats.ok > 0 {
            json!(round1(cpu * 1e6 / (stats.ok + stats.warmup_ok + stats.late_ok) as f64))
        } else { Value::Null },
    });
    merge_into(&mut out, stats.json(seconds));
    if let Some(cpu) = server_cpu.and_then(|h| h.join().ok()) {
        out["server_cpu_s"] = json!(round1(cpu * 100.0) / 100.0);
        out["server_cpu_us_per_req"] = if stats.ok > 0 {
            json!(round1(cpu * 1e6 / stats.ok as f64))
        } else {
            Value::Null
        };
        out["server_cores_busy"] = json!(round1(cpu / seconds * 100.0) / 100.0);
    }
    if !a.watch.pids.is_empty() {
        let after = if a.settle.is_zero() {
            Value::Null
        } else {
            samples.last().map_or(Value::Null, Sample::json)
        };
        out["watch"] = watch_json(
            &a.watch,
            &samples,
            0.0,
            seconds,
            json!({ "after_settle": after }),
        );
    }
    eprintln!("{}", one_line_summary(&out));
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn merge_into(a: &mut Value, b: Value) {
    if let (Value::Object(m), Value::Object(e)) = (a, b) {
        m.extend(e);
    }
}

fn one_line_summary(v: &Value) -> String {
    let p = |k: &str, q: &str| {
        v[k][q]
            .as_f64()
            .map_or("-".to_string(), |x| format!("{x:.0}µs"))
    };
    format!(
        "{} ok={} rps={} err={} lat p50={} p99={} ttfb p99={} gap p99={} rss_peak={}",
        v["labels"],
        v["ok"],
        v["rps"],
        v["errors"],
        p("latency_us", "p50"),
        p("latency_us", "p99"),
        p("ttfb_us", "p99"),
        p("gap_us", "p99"),
        v["watch"]["peak_rss_kb"],
    )
}

fn run_thread(plan: RunPlan, conns: Vec<usize>) -> Result<Stats, String> {
    let rt = runtime().map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    let plan = Rc::new(plan);
    let stats = Rc::new(RefCell::new(Stats::new()));
    local.block_on(&rt, async {
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|id| tokio::task::spawn_local(conn_loop(id, Rc::clone(&plan), Rc::clone(&stats))))
            .collect();
        // Requests still running at the end get their own timeout; past that, give up.
        let hard_stop = plan.end + plan.timeout + Duration::from_secs(5);
        for t in tasks {
            let left = hard_stop.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, t).await.is_err() {
                break;
            }
        }
    });
    drop(local);
    Rc::try_unwrap(stats)
        .map(RefCell::into_inner)
        .map_err(|_| "stats still shared".to_string())
}

async fn conn_loop(id: usize, plan: Rc<RunPlan>, stats: Rc<RefCell<Stats>>) {
    let ep = &plan.endpoints[id % plan.endpoints.len()];
    let mut rng = fastrand::Rng::with_seed(0x9e37_79b9 ^ id as u64);
    let mut conn: Option<Conn> = None;
    let mut scratch = Scratch::default();
    loop {
        let now = Instant::now();
        if now >= plan.end {
            break;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(ep.addr, plan.buf).await {
                Ok(c) => {
                    stats.borrow_mut().connects += 1;
                    conn.insert(c)
                }
                Err(f) => {
                    record_fail(&plan, &mut stats.borrow_mut(), f);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let stream = rng.f64() < plan.stream_fraction;
        let abort = stream && rng.f64() < plan.abort_fraction;
        let close = rng.f64() < plan.close_fraction;
        let req = ep.request(stream, close);
        let r = tokio::time::timeout(plan.timeout, exchange(c, req, abort, false, &mut scratch))
            .await
            .unwrap_or(Err(Fail::Timeout));
        let done_at = Instant::now();
        let mut st = stats.borrow_mut();
        match r {
            Ok((Outcome::Done(d), _)) => {
                if !d.keep_alive || close {
                    conn = None;
                }
                if done_at < plan.measure_from {
                    st.warmup_ok += 1;
                } else if done_at > plan.end {
                    st.late_ok += 1;
                } else {
                    st.record_ok(&d, &scratch);
                }
            }
            Ok((Outcome::Aborted | Outcome::Opened, _)) => {
                conn = None;
                st.aborted += 1;
            }
            Err(f) => {
                // Keep the connection only after a complete non-200 answer.
                if !matches!(f, Fail::Status(_)) {
                    conn = None;
                }
                record_fail(&plan, &mut st, f);
            }
        }
    }
}

fn record_fail(plan: &RunPlan, st: &mut Stats, f: Fail) {
    let now = Instant::now();
    if now < plan.measure_from {
        st.warmup_errors += 1;
    } else if now <= plan.end {
        *st.errors.entry(f).or_default() += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// `streams`: many long streams at once

#[derive(Default)]
struct StreamsState {
    started: usize,
    opened: usize,
    first_event: usize,
    finished: usize,
    failed: usize,
}

fn streams(a: StreamsArgs) -> Result<ExitCode, String> {
    let ep = Rc::new(endpoint(&a.target, &a.target.urls[0])?);
    let rt = runtime().map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    let start = Instant::now();
    let sampler = Sampler::start(&a.watch, start);
    let state = Rc::new(RefCell::new(StreamsState::default()));
    let stats = Rc::new(RefCell::new(Stats::new()));
    let n = a.connections;
    let timeout = a.target.timeout;
    let buf = a.target.buf;
    let mut all_open: Option<(f64, Sample)> = None;

    local.block_on(&rt, async {
        for i in 0..n {
            let at = start + Duration::from_secs_f64(i as f64 / a.connect_rate.max(1.0));
            let (ep, state, stats) = (Rc::clone(&ep), Rc::clone(&state), Rc::clone(&stats));
            tokio::task::spawn_local(async move {
                tokio::time::sleep_until(at.into()).await;
                state.borrow_mut().started += 1;
                let r = tokio::time::timeout(timeout, one_stream(&ep, buf, &state)).await;
                let mut st = state.borrow_mut();
                let mut stats = stats.borrow_mut();
                match r.unwrap_or(Err(Fail::Timeout)) {
                    Ok((d, scratch)) => {
                        st.finished += 1;
                        stats.record_ok(&d, &scratch);
                    }
                    Err(f) => {
                        st.failed += 1;
                        *stats.errors.entry(f).or_default() += 1;
                    }
                }
            });
        }
        let deadline = start + Duration::from_secs_f64(n as f64 / a.connect_rate.max(1.0)) + timeout;
        let mut last_print = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = Instant::now();
            let (opened, first, finished, failed) = {
                let s = state.borrow();
                (s.opened, s.first_event, s.finished, s.failed)
            };
            if all_open.is_none() && opened + failed >= n {
                // Let the proxy settle (every upstream connection made, a token through).
                tokio::time::sleep(a.open_settle).await;
                let s = sample(&a.watch.pids, a.watch.count_close_wait, start, Instant::now());
                eprintln!(
                    "streams: all {n} answered with a head at {:.1}s ({failed} failed); rss={} kB fds={}",
                    (now - start).as_secs_f64(),
                    s.rss_kb,
                    s.fds
                );
                all_open = Some(((now - start).as_secs_f64(), s));
            }
            if now - last_print >= Duration::from_secs(2) {
                last_print = now;
                eprintln!(
                    "streams: t={:.0}s opened={opened} first_event={first} finished={finished} failed={failed}",
                    (now - start).as_secs_f64()
                );
            }
            if finished + failed >= n || now > deadline + Duration::from_secs(5) {
                break;
            }
        }
    });
    drop(local);
    let after = if a.settle.is_zero() || a.watch.pids.is_empty() {
        Value::Null
    } else {
        std::thread::sleep(a.settle);
        sample(&a.watch.pids, true, start, Instant::now()).json()
    };
    let samples = sampler.map(Sampler::finish).unwrap_or_default();
    let st = state.borrow();
    let stats = stats.borrow();
    let elapsed = start.elapsed().as_secs_f64();
    let mut out = json!({
        "kind": "streams",
        "labels": labels_json(&a.target),
        "urls": a.target.urls,
        "connections": n,
        "connect_rate": a.connect_rate,
        "started": st.started,
        "opened": st.opened,
        "first_event": st.first_event,
        "finished": st.finished,
        "failed": st.failed,
        "elapsed_s": round1(elapsed),
        "all_open_at_s": all_open.as_ref().map(|(t, _)| round1(*t)),
        "at_all_open": all_open.as_ref().map(|(_, s)| s.json()),
    });
    merge_into(&mut out, stats.json(elapsed));
    if !a.watch.pids.is_empty() {
        out["watch"] = watch_json(
            &a.watch,
            &samples,
            f64::MIN,
            f64::MAX,
            json!({ "after_settle": after }),
        );
    }
    eprintln!(
        "streams: {} finished, {} failed {}",
        st.finished, st.failed, out["error_kinds"]
    );
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

async fn one_stream(
    ep: &Endpoint,
    buf: usize,
    state: &RefCell<StreamsState>,
) -> Result<(Done, Scratch), Fail> {
    let mut c = Conn::open(ep.addr, buf).await?;
    let mut scratch = Scratch::default();
    let (_, st) = exchange(&mut c, ep.request(true, false), false, true, &mut scratch).await?;
    let st = st.ok_or(Fail::Protocol)?;
    state.borrow_mut().opened += 1;
    let out = read_body(&mut c, st, false, &mut scratch, || {
        state.borrow_mut().first_event += 1;
    })
    .await?;
    match out {
        Outcome::Done(d) => Ok((d, scratch)),
        _ => Err(Fail::Protocol),
    }
}

/// `self-test`: the framing decoders against a body split at every byte (load.sh runs it
/// first; a `harness = false` target never runs `#[test]`s).
fn self_test() -> Result<ExitCode, String> {
    // Chunk boundaries fall inside events, inside "\n\n" and inside "[DONE]"; one chunk
    // carries an extension.
    let pieces: [&[u8]; 5] = [
        b"data: {\"t\":1000000,\"a\":1}\n\ndata: {\"b\"",
        b":2}\n",
        b"\ndata: [DO",
        b"NE]\n\n",
        b"",
    ];
    let mut body = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let ext = if i == 1 { ";x=y" } else { "" };
        body.extend_from_slice(format!("{:x}{ext}\r\n", p.len()).as_bytes());
        body.extend_from_slice(p);
        if !p.is_empty() {
            body.extend_from_slice(b"\r\n");
        }
    }
    body.extend_from_slice(b"\r\n");
    let body = &body[..];
    for split in 0..=body.len() {
        let mut ch = Chunked::Size {
            value: 0,
            digits: 0,
        };
        let mut scratch = Scratch::default();
        let mut sse = SseClock::new(&mut scratch);
        let now = Instant::now();
        let (a, _) = ch
            .feed(&body[..split], |d| sse.feed(d, now, 1_000_500))
            .map_err(|f| format!("split {split}: {f:?}"))?;
        let (b, done) = ch
            .feed(&body[split..], |d| sse.feed(d, now, 1_000_900))
            .map_err(|f| format!("split {split}: {f:?}"))?;
        let (events, done_seen) = (sse.events, sse.done);
        let stamped_ok = scratch.delays.len() == 1 && scratch.delays[0] >= 500;
        if a + b != body.len()
            || !done
            || events != 3
            || !done_seen
            || scratch.gaps.len() != 2
            || !stamped_ok
        {
            return Err(format!(
                "self-test failed at split {split}: consumed {} of {}, done={done}, events={}, [DONE]={}",
                a + b,
                body.len(),
                events,
                done_seen
            ));
        }
    }
    let head =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    match parse_head(head) {
        Ok(Some((n, h)))
            if n == head.len()
                && h.status == 200
                && h.keep_alive
                && h.event_stream
                && matches!(h.framing, Framing::Chunked(_)) => {}
        _ => return Err("self-test failed: head parsing".into()),
    }
    println!("loadgen self-test: ok");
    Ok(ExitCode::SUCCESS)
}
