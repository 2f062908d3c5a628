//! Where workers come from: the static `workers` list, or DNS.
//!
//! With `discovery = "dns"` a model's pool follows a name (a Kubernetes
//! headless Service resolves to one address per ready pod): it is
//! re-resolved every `dns_interval`; new addresses join after they pass a
//! health check, and vanished ones leave the pool while the requests already
//! on them finish (each holds its own reference to the worker).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;

use crate::config::{DiscoverySource, WorkerSpec};
use crate::state::Shared;

/// Resolves names to addresses. The system resolver in production; tests
/// plug in one they control.
#[async_trait]
pub trait Resolver: Send + Sync {
    async fn resolve(&self, name: &str) -> std::io::Result<Vec<IpAddr>>;
}

/// The system resolver (getaddrinfo, on tokio's blocking pool).
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, name: &str) -> std::io::Result<Vec<IpAddr>> {
        let addrs = tokio::net::lookup_host((name, 0)).await?;
        Ok(addrs.map(|a| a.ip()).collect())
    }
}

/// The workers behind a set of addresses, sorted so that equal sets compare
/// equal whatever order the resolver returned.
pub fn workers_for(ips: &[IpAddr], port: u16) -> Vec<WorkerSpec> {
    let mut specs: Vec<WorkerSpec> = ips
        .iter()
        .map(|ip| {
            let addr = SocketAddr::new(*ip, port);
            let url = match ip {
                IpAddr::V4(v4) => format!("http://{v4}:{port}"),
                IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
            };
            WorkerSpec { url, addr }
        })
        .collect();
    specs.sort_by(|a, b| a.url.cmp(&b.url));
    specs.dedup_by(|a, b| a.url == b.url);
    specs
}

/// Re-resolve every DNS-discovered pool on its interval until shutdown.
pub async fn run(shared: Arc<Shared>, resolver: Arc<dyn Resolver>, mut shutdown: ShutdownWatch) {
    let mut due: HashMap<String, Instant> = HashMap::new();
    loop {
        let snapshot = shared.snapshot();
        let now = Instant::now();
        for model in &snapshot.config.models {
            let DiscoverySource::Dns {
                name,
                port,
                interval,
            } = &model.discovery
            else {
                continue;
            };
            if due.get(&model.name).is_some_and(|t| *t > now) {
                continue;
            }
            due.insert(model.name.clone(), now + *interval);
            match tokio::time::timeout(Duration::from_secs(5), resolver.resolve(name)).await {
                Ok(Ok(ips)) => {
                    let workers = workers_for(&ips, *port);
                    if shared.set_discovered(&model.name, workers.clone()) {
                        tracing::info!(
                            model = %model.name,
                            dns_name = %name,
                            workers = ?workers.iter().map(|w| &w.url).collect::<Vec<_>>(),
                            "discovered workers changed"
                        );
                    }
                }
                // Keep the last known workers: a resolver hiccup must not
                // empty a pool that is serving.
                Ok(Err(e)) => {
                    tracing::warn!(model = %model.name, dns_name = %name, error = %e, "DNS lookup failed; keeping the last known workers")
                }
                Err(_) => {
                    tracing::warn!(model = %model.name, dns_name = %name, "DNS lookup timed out; keeping the last known workers")
                }
            }
        }
        due.retain(|m, _| snapshot.config.model(m).is_some());
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_sets_are_normalized() {
        let a = workers_for(
            &[
                "10.0.0.2".parse().unwrap(),
                "10.0.0.1".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
            ],
            8000,
        );
        let b = workers_for(
            &["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
            8000,
        );
        assert_eq!(a, b);
        assert_eq!(a[0].url, "http://10.0.0.1:8000");
        let v6 = workers_for(&["::1".parse().unwrap()], 80);
        assert_eq!(v6[0].url, "http://[::1]:80");
    }
}
