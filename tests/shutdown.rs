//! Signals on a real `vllm-gateway serve` process. SIGTERM: it stops
//! accepting at once, /readyz fails at once, streams in flight finish, and it
//! exits as soon as they have; streams longer than `shutdown_grace` are
//! closed then. SIGHUP: it reloads its file (tests/reload.rs covers what a
//! reload does; this proves the signal reaches it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Serve {
    child: Child,
    public: u16,
    admin: u16,
    _dir: tempfile::TempDir,
}

impl Serve {
    async fn start(worker: &str, grace: &str) -> Serve {
        let (public, admin) = (free_port(), free_port());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = \"127.0.0.1:{public}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nshutdown_grace = \"{grace}\"\n\
                 [[models]]\nname = \"{MODEL}\"\nworkers = [\"{worker}\"]\n"
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vllm-gateway"))
            .args(["serve", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Serve {
            child,
            public,
            admin,
            _dir: dir,
        };
        let c = client();
        let url = format!("http://127.0.0.1:{admin}/readyz");
        wait_until(Duration::from_secs(10), || {
            let c = c.clone();
            let url = url.clone();
            async move { c.get(url).send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await
        .expect("serve is ready");
        s
    }

    fn signal(&self, sig: &str) {
        assert!(Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }

    /// Wait for the process to exit; returns how long that took.
    fn wait_exit(&mut self, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                return start.elapsed();
            }
            assert!(start.elapsed() < within, "did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a stream and wait for its first bytes; returns the task that reads
/// the rest and reports whether the stream completed: its answer finished
/// (a `finish_reason`) and it ended with [DONE], with no error event.
async fn open_stream(public: u16) -> tokio::task::JoinHandle<bool> {
    let r = client()
        .post(format!("http://127.0.0.1:{public}/v1/chat/completions"))
        .json(&chat_body(json!({"stream": true})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    tokio::spawn(async move {
        let mut text = String::from_utf8_lossy(&first).into_owned();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
                Err(_) => return false,
            }
        }
        text.contains("data: [DONE]")
            && text.contains("\"finish_reason\":\"")
            && !text.contains("{\"error\"")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_streams_then_exits_at_once() {
    let s = sim_with(|c| {
        c.itl = Duration::from_millis(100);
        c.output_tokens = (15, 15);
    });
    let mut g = Serve::start(&s.url(), "30s").await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(open_stream(g.public).await);
    }
    let sent = Instant::now();
    g.signal("-TERM");
    // /readyz fails at once (the admin listener keeps answering).
    let c = client();
    let ready = format!("http://127.0.0.1:{}/readyz", g.admin);
    wait_until(Duration::from_millis(500), || {
        let c = c.clone();
        let ready = ready.clone();
        async move { c.get(ready).send().await.is_ok_and(|r| r.status() == 503) }
    })
    .await
    .expect("readyz fails at once");
    // New connections are refused.
    wait_until(Duration::from_millis(500), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", g.public))
            .await
            .is_err()
    })
    .await
    .expect("stops accepting at once");
    // Streams in flight finish whole.
    for t in streams {
        assert!(t.await.unwrap(), "a stream was cut by the drain");
    }
    let streams_done = sent.elapsed();
    // And the process exits as soon as they have: not 30 s later.
    let exit_after = g.wait_exit(Duration::from_secs(10));
    assert!(
        streams_done + exit_after < Duration::from_secs(10),
        "streams {streams_done:?}, exit {exit_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_longer_than_the_grace_period_are_closed() {
    let s = sim_with(|c| {
        c.itl = Duration::from_millis(200);
        c.output_tokens = (100, 100);
    });
    let mut g = Serve::start(&s.url(), "1s").await;
    let stream = open_stream(g.public).await;
    let sent = Instant::now();
    g.signal("-TERM");
    let took = g.wait_exit(Duration::from_secs(10));
    assert!(
        took >= Duration::from_millis(900),
        "exited before the grace period: {took:?}"
    );
    // Cut at the end of the grace period: the connection breaks, or the
    // client is told in-band that the answer stopped.
    assert!(
        !stream.await.unwrap(),
        "the 20 s stream cannot have completed"
    );
    assert!(sent.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateway_exits_at_once_on_sigterm_and_sigint() {
    let s = sim();
    for sig in ["-TERM", "-INT"] {
        let mut g = Serve::start(&s.url(), "30s").await;
        post_chat_url(g.public).await;
        g.signal(sig);
        let took = g.wait_exit(Duration::from_secs(5));
        assert!(took < Duration::from_secs(3), "{sig}: {took:?}");
    }
}

async fn post_chat_url(public: u16) {
    let r = client()
        .post(format!("http://127.0.0.1:{public}/v1/chat/completions"))
        .json(&chat_body(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// `config_reloads_total{result="ok"}` on the admin listener (0 while absent).
async fn reloads_ok(admin: u16) -> f64 {
    let text = client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_value(&text, "vllm_gateway_config_reloads_total{result=\"ok\"}").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_keeps_serving() {
    let sim = sim();
    let mut serve = Serve::start(&sim.url(), "5s").await;
    assert_eq!(reloads_ok(serve.admin).await, 0.0);
    // The file is unchanged, so its watcher stays quiet: only the signal
    // can cause this reload (SIGHUP reloads even an unchanged file).
    for n in 1..=2 {
        serve.signal("-HUP");
        wait_until(Duration::from_secs(5), || async {
            reloads_ok(serve.admin).await == f64::from(n)
        })
        .await
        .unwrap_or_else(|_| panic!("reload {n} counted"));
    }
    post_chat_url(serve.public).await;
    serve.signal("-TERM");
    serve.wait_exit(Duration::from_secs(10));
}
