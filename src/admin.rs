//! The admin listener: `/metrics`, `/healthz`, `/readyz`.
//!
//! It listens on its own address (`server.admin_listen`, loopback by default)
//! and never on the public one: metrics name workers and keys, and readiness
//! is for the orchestrator, not for clients.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::listener::HeadSignal;
use crate::state::Shared;

pub struct AdminApp {
    shared: Arc<Shared>,
}

impl AdminApp {
    pub fn new(shared: Arc<Shared>) -> AdminApp {
        AdminApp { shared }
    }

    /// Why the gateway is not ready, if it is not: draining for shutdown, or
    /// a model without a healthy worker (a replica that cannot serve every
    /// model should not receive traffic).
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.shared.drain.is_draining() {
            return Some("draining for shutdown".into());
        }
        let snapshot = self.shared.snapshot();
        let missing: Vec<&str> = snapshot
            .pools()
            .filter(|p| !p.has_healthy_worker())
            .map(|p| &*p.model)
            .collect();
        if missing.is_empty() {
            None
        } else {
            Some(format!("no healthy worker for: {}", missing.join(", ")))
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // The head was read: stop the accept loop's header-read deadline
        // for this request (see listener.rs).
        if let Some(head) = session
            .take_connection_user_context()
            .and_then(|c| c.downcast::<Arc<HeadSignal>>().ok())
        {
            head.mark_read();
        }
        let (method, path) = {
            let h = session.req_header();
            (h.method.clone(), h.uri.path().to_string())
        };
        if method != http::Method::GET && method != http::Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match path.as_str() {
            "/metrics" => {
                self.shared.metrics.refresh_workers(&self.shared.snapshot());
                let body = self.shared.metrics.encode();
                build(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    body,
                )
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => match self.not_ready_reason() {
                None => text(StatusCode::OK, "ready\n"),
                Some(reason) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {reason}\n"),
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz, /readyz\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    build(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

fn build(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let len = body.len();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}
