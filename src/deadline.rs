//! Timers on the request path: header and body read deadlines, the first
//! token, the gap between events, the whole request.
//!
//! They run on Pingora's coarse timer wheel (`pingora_timeout::fast_timeout`,
//! 10 ms resolution) rather than tokio's timer. Registering a tokio timer
//! that becomes its runtime's earliest wakes the runtime's driver, an
//! eventfd write and another trip through epoll: a profile of the gateway at
//! 64 connections showed 1.25 such writes per request, from the five or so
//! deadlines each request arms and re-arms. A fast timer goes into a
//! per-thread tree shared by every timer due in the same 10 ms, and costs a
//! wake-up only if it fires, which a deadline almost never does. Every
//! timeout the gateway has is tens of milliseconds or more, so 10 ms of
//! resolution is plenty.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pingora_timeout::fast_timeout::{fast_sleep, fast_timeout};

/// Resolves once `at` has passed (at once if it already has).
pub async fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        fast_sleep(at - now).await;
    }
}

/// Resolves after `d`.
pub async fn sleep(d: Duration) {
    fast_sleep(d).await;
}

/// `fut`'s output, or `None` when `d` passed first.
pub async fn within<F: Future>(d: Duration, fut: F) -> Option<F::Output> {
    fast_timeout(d, fut).await.ok()
}

/// A silence limit that every arrival restarts, without re-arming a timer
/// per arrival: [`Idle::touch`] only records the time, and [`Idle::expired`]
/// sleeps again for whatever remains when its timer fires early.
#[derive(Debug)]
pub struct Idle {
    base: Instant,
    /// Nanoseconds from `base` to the last arrival.
    last: AtomicU64,
    limit: Duration,
}

impl Idle {
    pub fn new(limit: Duration) -> Idle {
        Idle {
            base: Instant::now(),
            last: AtomicU64::new(0),
            limit,
        }
    }

    /// Something arrived: the silence starts over.
    pub fn touch(&self) {
        let since = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(since, Ordering::Relaxed);
    }

    /// Resolves once nothing has arrived for the whole limit.
    pub async fn expired(&self) {
        loop {
            let due =
                self.base + Duration::from_nanos(self.last.load(Ordering::Relaxed)) + self.limit;
            let now = Instant::now();
            if now >= due {
                return;
            }
            fast_sleep(due - now).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_the_whole_silence_after_the_last_touch() {
        let idle = Idle::new(Duration::from_millis(60));
        let started = Instant::now();
        let expired = idle.expired();
        let touches = async {
            for _ in 0..4 {
                sleep(Duration::from_millis(30)).await;
                idle.touch();
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = expired => {}
            () = touches => unreachable!(),
        }
        // Four touches 30 ms apart, then 60 ms of silence; the wheel's
        // resolution is 10 ms.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(175), "{took:?}");
        assert!(took < Duration::from_millis(400), "{took:?}");
    }

    #[tokio::test]
    async fn sleep_until_the_past_is_immediate_and_within_times_out() {
        let started = Instant::now();
        sleep_until(
            started
                .checked_sub(Duration::from_secs(1))
                .unwrap_or(started),
        )
        .await;
        assert!(started.elapsed() < Duration::from_millis(5));
        assert_eq!(
            within(Duration::from_millis(500), async { 7 }).await,
            Some(7)
        );
        let never = within(Duration::from_millis(20), std::future::pending::<()>()).await;
        assert_eq!(never, None);
    }
}
