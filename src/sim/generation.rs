//! Runs an accepted generation request on the wire: admission, time to first token, one token
//! per `itl`, streaming or a full answer, and the token-level faults.
//!
//! Timing: the first token comes `ttft + prefill_per_token × uncached prompt tokens` after the
//! request leaves the queue; token `k` comes `k × itl` after the first. All choices of a request
//! advance together. Deadlines are absolute, so a slow write does not shift later tokens.
//!
//! While it waits (queued, prefilling, between tokens) the connection watches its socket: a
//! client that leaves aborts the request at once and frees its slot (vLLM.md §5).

use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::engine::{Outcome, Running, Tracker};
use super::error::ApiError;
use super::faults::FaultPlan;
use super::http::{write_head, Conn, Framing, Gone, LAST_CHUNK};
use super::openai::{embedding_body, EmbedPlan, GenPlan};
use super::text::Finish;
use super::tokenizer::PromptDigest;
use super::wire::{full_response, padded_response_parts, Api, ChunkWriter, Usage};
use super::Shared;

pub(crate) const JSON: &str = "application/json";
const SSE: &str = "text/event-stream; charset=utf-8";
/// The payload of the event that ends every stream, also after an error (vllm.md §5).
const DONE_PAYLOAD: &[u8] = b"[DONE]";
/// Size of each write of a `huge_body_bytes` answer.
const HUGE_BODY_PIECE: usize = 64 * 1024;

/// What the connection does after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Read the next request.
    KeepAlive,
    /// Close politely (FIN).
    Close,
    /// Reset the connection (RST): an abrupt failure.
    Reset,
    /// The client is gone; just drop the socket.
    Gone,
}

/// One request being answered on one connection.
pub(crate) struct Exchange<'a> {
    pub sh: &'a Shared,
    pub conn: &'a mut Conn,
    /// Request id: from `X-Request-Id`, or fresh; echoed in `x-request-id`.
    pub rid: &'a str,
    pub keep_alive: bool,
    pub faults: &'a FaultPlan,
}

impl Exchange<'_> {
    fn done(&self) -> Flow {
        if self.keep_alive {
            Flow::KeepAlive
        } else {
            Flow::Close
        }
    }

    fn fault(&self) {
        self.sh.engine.counters.fault();
    }

    /// Sleeps until `at` unless the client leaves first.
    async fn wait_until(&mut self, at: Instant) -> Result<(), Gone> {
        if at > Instant::now() {
            self.conn.watch(sleep_until(at)).await?;
        }
        Ok(())
    }

    /// The `slow_headers` fault: a pause before the response head.
    async fn slow_headers(&mut self) -> Result<(), Gone> {
        if let Some(d) = self.faults.slow_headers {
            self.fault();
            self.wait_until(after(Instant::now(), d)).await?;
        }
        Ok(())
    }

    /// Sends a JSON response.
    pub(crate) async fn send_json(&mut self, status: u16, body: &[u8]) -> Flow {
        let headers = [("content-type", JSON), ("x-request-id", self.rid)];
        match self
            .conn
            .send(status, &headers, body, self.keep_alive)
            .await
        {
            Ok(()) => self.done(),
            Err(Gone) => Flow::Gone,
        }
    }

    /// The `close_after_headers` fault for a JSON answer: the head announcing `len` bytes, and
    /// nothing after it.
    async fn head_only(&mut self, len: usize) -> Result<(), Gone> {
        let mut head = Vec::with_capacity(192);
        let headers = [("content-type", JSON), ("x-request-id", self.rid)];
        write_head(
            &mut head,
            200,
            &headers,
            Framing::Length(len as u64),
            self.keep_alive,
        );
        self.conn.write_all(&head).await
    }

    pub(crate) async fn send_error(&mut self, e: &ApiError) -> Flow {
        self.send_json(e.status, &e.body()).await
    }

    /// Time of the first token for a prompt with `uncached` tokens to compute.
    fn first_token_at(&self, uncached: u32) -> Instant {
        let cfg = &self.sh.cfg;
        let prefill = cfg
            .prefill_per_token
            .checked_mul(uncached)
            .unwrap_or(FAR_FUTURE);
        after(Instant::now(), cfg.ttft.saturating_add(prefill))
    }

    /// Time of token `k` (0-based) given the first token's time.
    fn token_at(&self, first: Instant, k: u32) -> Instant {
        token_at(first, self.sh.cfg.itl, k)
    }
}

fn token_at(first: Instant, itl: Duration, k: u32) -> Instant {
    after(first, itl.checked_mul(k).unwrap_or(FAR_FUTURE))
}

const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);

fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(FAR_FUTURE)).unwrap_or(t)
}

/// Runs a chat or completions request.
pub(crate) async fn run_generation(x: &mut Exchange<'_>, plan: GenPlan) -> Flow {
    let seqs = u32::try_from(plan.answers.len()).unwrap_or(u32::MAX);
    let tracker = x.sh.engine.track(seqs);
    let result = if plan.stream {
        stream(x, &plan, tracker).await
    } else {
        full(x, &plan, tracker).await
    };
    result.unwrap_or(Flow::Gone)
}

/// How a token-level fault ended the stream.
enum StreamEnd {
    /// The error event and `[DONE]` were sent: the HTTP exchange ended properly.
    InBand,
    /// The connection must be reset.
    Cut,
}

/// Applies the token faults due after `sent` content tokens.
async fn token_faults(
    x: &mut Exchange<'_>,
    w: &mut ChunkWriter,
    sent: u32,
) -> Result<Option<StreamEnd>, Gone> {
    let f = x.faults;
    if f.malformed_after_tokens == Some(sent) {
        x.fault();
        x.conn.write_all(w.malformed()).await?;
    }
    if f.in_band_error_after_tokens == Some(sent) {
        x.fault();
        let err = ApiError::generation_failed();
        x.conn.write_all(w.event(&err.body())).await?;
        let mut tail = w.event(DONE_PAYLOAD).to_vec();
        tail.extend_from_slice(LAST_CHUNK);
        x.conn.write_all(&tail).await?;
        return Ok(Some(StreamEnd::InBand));
    }
    if f.cut_after_tokens == Some(sent) {
        x.fault();
        return Ok(Some(StreamEnd::Cut));
    }
    if f.stall_after_tokens == Some(sent) {
        x.fault();
        return Err(x.conn.until_gone().await);
    }
    Ok(None)
}

/// Queues the request for running slots (watching the client) and returns its claim and the
/// time its first token is due.
async fn admit<'s>(x: &mut Exchange<'s>, plan: &GenPlan) -> Result<(Running<'s>, Instant), Gone> {
    let seqs = u32::try_from(plan.answers.len()).unwrap_or(u32::MAX);
    let prompts: Vec<&PromptDigest> = plan.prompts.iter().collect();
    let sh = x.sh;
    let running = sh
        .engine
        .admit(x.conn, seqs, plan.kv_tokens(), &prompts)
        .await?;
    let first = x.first_token_at(plan.prompt_tokens.saturating_sub(running.cached_tokens));
    Ok((running, first))
}

async fn stream(x: &mut Exchange<'_>, plan: &GenPlan, tracker: Tracker<'_>) -> Result<Flow, Gone> {
    x.slow_headers().await?;
    let mut head = Vec::with_capacity(192);
    let headers = [("content-type", SSE), ("x-request-id", x.rid)];
    write_head(&mut head, 200, &headers, Framing::Chunked, x.keep_alive);
    x.conn.write_all(&head).await?;
    if x.faults.close_after_headers {
        x.fault();
        tracker.finish(Outcome::Faulted);
        return Ok(Flow::Close);
    }

    let (running, first) = admit(x, plan).await?;
    let cached_report =
        x.sh.engine
            .prefix_cache_enabled()
            .then_some(running.cached_tokens);

    let mut w = ChunkWriter::new(plan.api, &plan.id, plan.created, &plan.model);
    let longest = plan.answers.iter().map(|a| a.tokens()).max().unwrap_or(0);
    let mut per_choice = vec![0u64; plan.answers.len()];
    let mut sent = 0u32;
    let mut finishes = Vec::with_capacity(plan.answers.len());
    let per_prompt = plan.answers.len() / plan.prompts.len().max(1);

    macro_rules! check_faults {
        () => {
            match token_faults(x, &mut w, sent).await? {
                None => {}
                Some(StreamEnd::InBand) => {
                    tracker.finish(Outcome::Faulted);
                    return Ok(x.done());
                }
                Some(StreamEnd::Cut) => {
                    tracker.finish(Outcome::Faulted);
                    return Ok(Flow::Reset);
                }
            }
        };
    }

    for k in 0..longest {
        x.wait_until(x.token_at(first, k)).await?;
        if k == 0 {
            if plan.api == Api::Chat {
                for i in 0..plan.answers.len() {
                    let usage = plan.continuous_usage.then_some(Usage {
                        prompt: plan.prompt_tokens,
                        completion: 0,
                        cached: None,
                    });
                    x.conn.write_all(w.role(i, usage.as_ref())).await?;
                }
            }
            check_faults!();
        }
        for (i, a) in plan.answers.iter().enumerate() {
            if k >= a.tokens() {
                continue;
            }
            per_choice[i] += 1;
            let last = k + 1 == a.tokens();
            let finish = last.then_some((a.finish, a.stop_reason.as_deref()));
            if last {
                finishes.push(a.finish);
            }
            // vLLM's continuous usage is per choice: its prompt and its tokens so far.
            let usage = plan.continuous_usage.then(|| Usage {
                prompt: plan
                    .prompts
                    .get(i / per_prompt.max(1))
                    .map_or(0, |p| p.tokens),
                completion: per_choice[i],
                cached: None,
            });
            let frame = w.token(i, a.delta(k as usize), finish, usage.as_ref());
            x.conn.write_all(frame).await?;
            sent += 1;
            check_faults!();
        }
    }

    let completion: u64 = per_choice.iter().sum();
    let mut tail = Vec::with_capacity(512);
    if plan.include_usage {
        let usage = Usage {
            prompt: plan.prompt_tokens,
            completion,
            cached: cached_report,
        };
        x.conn.write_all(w.usage(&usage)).await?;
    }
    tail.extend_from_slice(w.event(DONE_PAYLOAD));
    tail.extend_from_slice(LAST_CHUNK);
    // Generation is over: the request counts as completed before its last
    // bytes go out, as vLLM counts it when the engine finishes it. Counted
    // after the write, a client could read the whole answer and still see
    // `completed` without it for a moment.
    drop(running);
    tracker.finish(Outcome::Completed {
        finishes: &finishes,
        prompt_tokens: plan.prompt_tokens,
        completion_tokens: completion,
    });
    x.conn.write_all(&tail).await?;
    Ok(x.done())
}

async fn full(x: &mut Exchange<'_>, plan: &GenPlan, tracker: Tracker<'_>) -> Result<Flow, Gone> {
    let sh = x.sh;
    let f = x.faults;
    let (running, first) = admit(x, plan).await?;
    let cached = running.cached_tokens;
    let total: u32 = plan.answers.iter().map(|a| a.tokens()).sum();
    let longest = plan.answers.iter().map(|a| a.tokens()).max().unwrap_or(0);
    let n = u32::try_from(plan.answers.len()).unwrap_or(1).max(1);
    // Choices advance together, so the n-th content token overall exists after
    // ceil(n / choices) steps.
    let itl = sh.cfg.itl;
    let when = |tokens: u32| token_at(first, itl, tokens.div_ceil(n).saturating_sub(1));

    if let Some(at) = f.cut_after_tokens.filter(|&t| t <= total) {
        x.wait_until(when(at)).await?;
        x.fault();
        tracker.finish(Outcome::Faulted);
        return Ok(Flow::Reset);
    }
    if let Some(at) = f.stall_after_tokens.filter(|&t| t <= total) {
        x.wait_until(when(at)).await?;
        x.fault();
        return Err(x.conn.until_gone().await);
    }
    if let Some(at) = f.in_band_error_after_tokens.filter(|&t| t <= total) {
        // Without a stream, a generation error is an HTTP 500 (vllm.md §5).
        x.wait_until(when(at)).await?;
        x.fault();
        drop(running);
        tracker.finish(Outcome::Faulted);
        return Ok(x.send_error(&ApiError::generation_failed()).await);
    }
    x.wait_until(x.token_at(first, longest.saturating_sub(1)))
        .await?;
    drop(running);
    x.slow_headers().await?;

    let completion = u64::from(total);
    let usage = Usage {
        prompt: plan.prompt_tokens,
        completion,
        cached: sh.engine.prefix_cache_enabled().then_some(cached),
    };
    if let Some(size) = f.huge_body_bytes {
        x.fault();
        huge_body(x, plan, &usage, size).await?;
        tracker.finish(Outcome::Faulted);
        return Ok(x.done());
    }
    let mut body = full_response(
        plan.api,
        &plan.id,
        plan.created,
        &plan.model,
        &plan.answers,
        &usage,
    );
    if f.close_after_headers {
        x.fault();
        x.head_only(body.len()).await?;
        tracker.finish(Outcome::Faulted);
        return Ok(Flow::Close);
    }
    if f.malformed_after_tokens.is_some_and(|t| t <= total) {
        // The non-streaming counterpart of a broken event: a body that is not valid JSON.
        x.fault();
        body.truncate(body.len() / 2);
        let flow = x.send_json(200, &body).await;
        tracker.finish(Outcome::Faulted);
        return Ok(flow);
    }
    // Completed before the answer goes out (see `stream`).
    let finishes: Vec<Finish> = plan.answers.iter().map(|a| a.finish).collect();
    tracker.finish(Outcome::Completed {
        finishes: &finishes,
        prompt_tokens: plan.prompt_tokens,
        completion_tokens: completion,
    });
    let flow = x.send_json(200, &body).await;
    if flow == Flow::Gone {
        return Err(Gone);
    }
    Ok(flow)
}

/// Streams out a valid-looking full response of `size` bytes (at least the size of the
/// response skeleton), in pieces, as a worker answering with an enormous body would.
async fn huge_body(
    x: &mut Exchange<'_>,
    plan: &GenPlan,
    usage: &Usage,
    size: u64,
) -> Result<(), Gone> {
    let (front, back) = padded_response_parts(plan.api, &plan.id, plan.created, &plan.model, usage);
    let skeleton = (front.len() + back.len()) as u64;
    let total = size.max(skeleton);
    let mut head = Vec::with_capacity(192 + front.len());
    let headers = [("content-type", JSON), ("x-request-id", x.rid)];
    write_head(
        &mut head,
        200,
        &headers,
        Framing::Length(total),
        x.keep_alive,
    );
    head.extend_from_slice(&front);
    x.conn.write_all(&head).await?;
    let filler = vec![b'a'; HUGE_BODY_PIECE];
    let mut left = total - skeleton;
    while left > 0 {
        let n = left.min(HUGE_BODY_PIECE as u64) as usize;
        x.conn.write_all(&filler[..n]).await?;
        left -= n as u64;
    }
    x.conn.write_all(&back).await
}

/// Runs an embeddings request: queue, prefill time, one answer.
pub(crate) async fn run_embedding(x: &mut Exchange<'_>, plan: EmbedPlan) -> Flow {
    let seqs = u32::try_from(plan.inputs).unwrap_or(u32::MAX);
    let tracker = x.sh.engine.track(seqs);
    let result = async {
        let running =
            x.sh.engine
                .admit(x.conn, seqs, u64::from(plan.prompt_tokens), &[])
                .await?;
        x.wait_until(x.first_token_at(plan.prompt_tokens)).await?;
        drop(running);
        x.slow_headers().await?;
        let body = embedding_body(&plan);
        if x.faults.close_after_headers {
            x.fault();
            x.head_only(body.len()).await?;
            tracker.finish(Outcome::Faulted);
            return Ok::<_, Gone>(Flow::Close);
        }
        // Completed before the answer goes out (see `stream`).
        tracker.finish(Outcome::Completed {
            finishes: &[],
            prompt_tokens: plan.prompt_tokens,
            completion_tokens: 0,
        });
        let flow = x.send_json(200, &body).await;
        if flow == Flow::Gone {
            return Err(Gone);
        }
        Ok(flow)
    }
    .await;
    result.unwrap_or(Flow::Gone)
}
