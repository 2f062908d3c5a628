//! Active health checks: every worker is asked `GET /health` on an interval,
//! and `GET /v1/models` to learn each model's `max_model_len`
//! (../shared/reference/vllm.md §7).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::v1::Connector;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_http::RequestHeader;

use crate::pool::Worker;
use crate::state::Shared;

/// Largest `/health` or `/v1/models` answer read; a worker sending more is
/// treated as failing the check rather than growing the gateway's memory.
const MAX_PROBE_BODY: usize = 1024 * 1024;

/// One worker to probe: the worker, how to reach it, the models it serves.
type Probe = (Arc<Worker>, HttpPeer, Vec<Arc<str>>);

/// Probe every worker of the current configuration once.
pub async fn check_all(shared: &Shared, timeout: Duration) {
    let snapshot = shared.snapshot();
    // A worker shared by several models is probed once.
    let mut seen: HashMap<Arc<str>, Probe> = HashMap::new();
    for pool in snapshot.pools() {
        for m in &pool.members {
            seen.entry(Arc::clone(&m.worker.url))
                .or_insert_with(|| (Arc::clone(&m.worker), m.peer.clone(), Vec::new()))
                .2
                .push(Arc::clone(&pool.model));
        }
    }
    let probes = seen.into_values().map(|(worker, peer, models)| async move {
        let ok = probe_health(&shared.connector, &peer, timeout).await;
        if ok {
            if let Some(lens) = probe_models(&shared.connector, &peer, timeout).await {
                worker.set_max_model_lens(lens);
            }
        }
        if worker.set_healthy(ok) {
            tracing::warn!(
                worker = %worker.url,
                healthy = ok,
                "worker health changed"
            );
        }
        for model in models {
            shared
                .metrics
                .worker_healthy
                .with_label_values(&[&*model, &*worker.url])
                .set(i64::from(ok));
        }
    });
    futures_util::future::join_all(probes).await;
}

async fn probe_health(connector: &Connector, peer: &HttpPeer, timeout: Duration) -> bool {
    matches!(
        get(connector, peer, "/health", timeout).await,
        Some((200, _))
    )
}

async fn probe_models(
    connector: &Connector,
    peer: &HttpPeer,
    timeout: Duration,
) -> Option<HashMap<String, u64>> {
    let (status, body) = get(connector, peer, "/v1/models", timeout).await?;
    if status != 200 {
        return None;
    }
    Some(parse_model_lens(&body))
}

/// `max_model_len` per model id from a `/v1/models` answer; LoRA entries have
/// none and inherit their parent's.
pub fn parse_model_lens(body: &[u8]) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return out;
    };
    let Some(data) = v.get("data").and_then(|d| d.as_array()) else {
        return out;
    };
    for entry in data {
        if let (Some(id), Some(len)) = (
            entry.get("id").and_then(|i| i.as_str()),
            entry.get("max_model_len").and_then(|l| l.as_u64()),
        ) {
            out.insert(id.to_string(), len);
        }
    }
    for entry in data {
        if let (Some(id), Some(parent)) = (
            entry.get("id").and_then(|i| i.as_str()),
            entry.get("parent").and_then(|p| p.as_str()),
        ) {
            if let Some(len) = out.get(parent).copied() {
                out.entry(id.to_string()).or_insert(len);
            }
        }
    }
    out
}

/// A small GET over the shared connection pool, bounded in time and size.
pub async fn get(
    connector: &Connector,
    peer: &HttpPeer,
    path: &str,
    timeout: Duration,
) -> Option<(u16, Bytes)> {
    tokio::time::timeout(timeout, async {
        let (mut session, _reused) = connector.get_http_session(peer).await.ok()?;
        let mut req = RequestHeader::build("GET", path.as_bytes(), Some(2)).ok()?;
        req.insert_header("host", peer.address().to_string()).ok()?;
        session.write_request_header(Box::new(req)).await.ok()?;
        session.finish_body().await.ok()?;
        session.read_response().await.ok()?;
        let status = session.get_status()?.as_u16();
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_body_bytes().await.ok()? {
            if body.len() + chunk.len() > MAX_PROBE_BODY {
                return None;
            }
            body.extend_from_slice(&chunk);
        }
        connector
            .release_http_session(session, peer, peer.options.idle_timeout)
            .await;
        Some((status, body.freeze()))
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_lens_and_lora_inherits() {
        let lens = parse_model_lens(
            br#"{"object":"list","data":[
                {"id":"base","object":"model","max_model_len":8192,"parent":null},
                {"id":"lora1","object":"model","parent":"base"},
                {"id":"other","object":"model"}]}"#,
        );
        assert_eq!(lens.get("base"), Some(&8192));
        assert_eq!(lens.get("lora1"), Some(&8192));
        assert_eq!(lens.get("other"), None);
        assert!(parse_model_lens(b"garbage").is_empty());
    }
}
