//! The built-in vLLM simulator: a stand-in for a vLLM 0.33 OpenAI-compatible worker, so the
//! gateway runs, demos, tests and benchmarks without a GPU.
//!
//! What it reproduces (see ../shared/reference/vllm.md for the behaviour it copies):
//! * the endpoints the gateway uses: `/v1/chat/completions`, `/v1/completions`,
//!   `/v1/embeddings`, `/tokenize`, `/v1/models`, `/health`, `/version`, `/metrics`, plus
//!   `/sim/stats` (the [`SimStats`] as JSON, for subprocess tests and the load script);
//! * request validation and error shapes (§3, §6), streaming framing (§5), request ids (§9);
//! * a scheduler with `max_num_seqs` running slots and a FIFO queue, TTFT/ITL timing, a prefix
//!   cache and KV-cache gauge (§8), and aborts when a client disconnects;
//! * injected faults ([`FaultPlan`]) for the gateway's reliability tests.
//!
//! Start one with [`Simulator::start`] (own thread and runtime; tests) or run it in the
//! foreground with [`Simulator::run`] (the `simulate` subcommand, configured by [`SimArgs`]).
//!
//! Layout: `http` (the wire), `routes` (dispatch and the small endpoints), `openai` (requests to
//! plans), `generation` (timing, streaming, faults), `wire` (response shapes), `params`
//! (validation), `engine` (scheduling and counters), `tokenizer`, `text`, `prefix_cache`,
//! `metrics`, `faults`, `cli`.

mod cli;
mod engine;
mod error;
mod faults;
mod generation;
mod http;
mod metrics;
mod openai;
mod params;
mod prefix_cache;
mod routes;
mod text;
pub mod tokenizer;
mod wire;

pub use cli::SimArgs;
pub use faults::{FaultError, FaultPlan};
pub use tokenizer::{count_prompt_tokens, count_text_tokens};

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use engine::Engine;

/// How many requests [`SimHandle::received`] keeps.
const RECEIVED_KEPT: usize = 256;
/// The version `/version` reports: the vLLM release whose behaviour is simulated.
pub const SIMULATED_VLLM_VERSION: &str = "0.33.0";

/// Everything a simulated worker does; [`Default`] suits tests (fast, small, no faults).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to listen on; `None` is `127.0.0.1:0` (a free port).
    pub listen: Option<SocketAddr>,
    /// Served models: the first is the base model, the others LoRA adapters on it.
    pub models: Vec<String>,
    /// Context length (prompt + output) in tokens.
    pub max_model_len: u32,
    /// Base time to first token, counted from admission (leaving the queue).
    pub ttft: Duration,
    /// Extra time to first token per prompt token not served from the prefix cache.
    pub prefill_per_token: Duration,
    /// Time between tokens.
    pub itl: Duration,
    /// Sequences that generate at once; more wait FIFO (`vllm:num_requests_waiting`).
    pub max_num_seqs: usize,
    /// Natural answer length range (inclusive, >= 1), drawn from the seed.
    pub output_tokens: (u32, u32),
    /// KV capacity in tokens, the denominator of `vllm:kv_cache_usage_perc`.
    pub kv_cache_tokens: u64,
    /// Prefix-cache capacity in blocks of 16 tokens; 0 disables the cache.
    pub prefix_cache_blocks: usize,
    /// Faults in force at start (change them later with [`SimHandle::set_faults`]).
    pub faults: FaultPlan,
    /// Tokio worker threads of the simulator's runtime ([`Simulator::start`] only).
    pub threads: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: None,
            models: vec!["sim-model".to_string()],
            max_model_len: 4096,
            ttft: Duration::from_millis(20),
            prefill_per_token: Duration::ZERO,
            itl: Duration::from_millis(5),
            max_num_seqs: 256,
            output_tokens: (16, 32),
            kv_cache_tokens: 131_072,
            prefix_cache_blocks: 1024,
            faults: FaultPlan::default(),
            threads: 1,
        }
    }
}

impl SimConfig {
    /// Rejects settings the simulator cannot honour.
    pub fn validate(&self) -> Result<(), String> {
        if self.models.is_empty() || self.models.iter().any(String::is_empty) {
            return Err("at least one non-empty model name is required".to_string());
        }
        if self.max_model_len == 0 {
            return Err("max_model_len must be at least 1".to_string());
        }
        if self.max_num_seqs == 0 {
            return Err("max_num_seqs must be at least 1".to_string());
        }
        let (lo, hi) = self.output_tokens;
        if lo == 0 || lo > hi {
            return Err(format!(
                "output_tokens must be a range MIN-MAX with 1 <= MIN <= MAX, got {lo}-{hi}"
            ));
        }
        if self.threads == 0 {
            return Err("threads must be at least 1".to_string());
        }
        Ok(())
    }
}

/// Counters of one simulated worker (also served as JSON at `GET /sim/stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Generation requests received (chat, completions, embeddings), valid or not.
    pub requests: u64,
    /// Generation requests answered in full (counted as the last bytes go
    /// out, so a client that has its whole answer also sees it counted).
    pub completed: u64,
    /// Generation requests whose client went away before the answer was complete.
    pub aborted: u64,
    /// Sequences generating now (a request with `n` choices is `n` sequences).
    pub running: u64,
    /// Sequences waiting for a running slot.
    pub waiting: u64,
    pub connections_accepted: u64,
    pub open_connections: u64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_cache_queries: u64,
    /// Prompt tokens found in the prefix cache.
    pub prefix_cache_hits: u64,
    /// Generation requests that a fault changed.
    pub errors_injected: u64,
}

/// A request as the simulator received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRequest {
    pub method: String,
    /// Request target as sent (path and query).
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl ReceivedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// State shared by every connection of one simulated worker.
pub(crate) struct Shared {
    pub cfg: SimConfig,
    pub faults: ArcSwap<FaultPlan>,
    pub engine: Engine,
    received: Mutex<VecDeque<ReceivedRequest>>,
    /// Unix time the worker started (`created` of `/v1/models`).
    pub started: u64,
}

impl Shared {
    fn new(cfg: SimConfig) -> Self {
        Self {
            faults: ArcSwap::from_pointee(cfg.faults.clone()),
            engine: Engine::new(
                cfg.max_num_seqs,
                cfg.kv_cache_tokens,
                cfg.prefix_cache_blocks,
            ),
            received: Mutex::new(VecDeque::with_capacity(RECEIVED_KEPT)),
            started: unix_now(),
            cfg,
        }
    }

    pub(crate) fn base_model(&self) -> &str {
        self.cfg.models.first().map(String::as_str).unwrap_or("")
    }

    fn with_received<T>(&self, f: impl FnOnce(&mut VecDeque<ReceivedRequest>) -> T) -> T {
        match self.received.lock() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub(crate) fn record(&self, r: ReceivedRequest) {
        self.with_received(|q| {
            if q.len() == RECEIVED_KEPT {
                q.pop_front();
            }
            q.push_back(r);
        });
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Entry points of the simulator.
pub struct Simulator;

impl Simulator {
    /// Binds (`listen`, or `127.0.0.1:0`), spawns its own thread and tokio runtime, and returns
    /// once the socket accepts connections.
    pub fn start(cfg: SimConfig) -> io::Result<SimHandle> {
        cfg.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listen = cfg.listen.unwrap_or((Ipv4Addr::LOCALHOST, 0).into());
        let threads = cfg.threads;
        let shared = Arc::new(Shared::new(cfg));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<SocketAddr>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let sh = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("vllm-sim".to_string())
            .spawn(move || {
                let rt = match build_runtime(threads) {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match Simulator::bind(listen) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(listener.local_addr());
                    serve(listener, sh, async {
                        let _ = stop_rx.await;
                    })
                    .await;
                });
                // Dropping the runtime drops every connection task and so closes its socket.
                drop(rt);
            })?;
        let addr = match ready_rx.recv() {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::other("simulator thread exited during start-up")),
        };
        Ok(SimHandle {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Foreground variant for the CLI: serves `listener` on the caller's runtime until the
    /// future is dropped (which closes every connection) or ctrl-c arrives.
    pub async fn run(listener: TcpListener, cfg: SimConfig) -> io::Result<()> {
        cfg.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let shared = Arc::new(Shared::new(cfg));
        serve(listener, shared, async {
            if tokio::signal::ctrl_c().await.is_err() {
                // No signal handling here: run until dropped.
                std::future::pending::<()>().await;
            }
        })
        .await;
        Ok(())
    }

    /// Binds a listener with `SO_REUSEADDR`, so a simulator can be restarted on the port of
    /// one that just stopped (its closed connections linger in TIME_WAIT).
    /// Must be called within a tokio runtime.
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(4096)
    }
}

fn build_runtime(threads: usize) -> io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("vllm-sim-worker")
            .enable_all()
            .build()
    }
}

/// Accepts connections until `shutdown` completes; then drops (aborts) every connection task.
async fn serve(listener: TcpListener, sh: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let c = &sh.engine.counters;
                    c.connections_accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tasks.spawn(routes::serve_connection(stream, Arc::clone(&sh)));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    tasks.shutdown().await;
}

/// A running simulator started by [`Simulator::start`]. Dropping it stops the simulator.
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, with no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> SimStats {
        self.shared.engine.counters.snapshot()
    }

    /// Replaces the fault plan; requests that arrive from now on see it.
    pub fn set_faults(&self, plan: FaultPlan) {
        self.shared.faults.store(Arc::new(plan));
    }

    /// The last 256 requests received (any endpoint), oldest first.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.shared.with_received(|q| q.iter().cloned().collect())
    }

    pub fn clear_received(&self) {
        self.shared.with_received(VecDeque::clear);
    }

    /// Closes the listener and every open connection, and waits until they are closed: the
    /// port refuses connections when this returns.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish()
    }
}
