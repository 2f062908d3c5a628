//! What operators ship: the Kubernetes manifests (deploy/kubernetes/), the
//! Grafana dashboard (deploy/grafana/dashboard.json) and the Dockerfile.
//!
//! Every manifest is parsed and cross-checked against the configuration the
//! ConfigMap actually holds (ports, probe paths, DNS name, Redis URL, key
//! variables, grace periods), and that configuration serves: a real gateway
//! runs it against a simulator through a stand-in resolver, and follows a
//! kubelet-style ConfigMap update. Every metric the dashboard queries is
//! checked against a real gateway's /metrics, and every query against
//! promtool. The Dockerfile is linted for the basics, and built when a Docker
//! engine is available.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use serde_yaml::Value;
use vllm_gateway::config::raw::RawConfig;
use vllm_gateway::config::{Config, DiscoverySource, LimitStore};
use vllm_gateway::gateway::{self, GatewayHandle, StartOptions};
use vllm_gateway::pool::discovery::Resolver;
use vllm_gateway::sim::SimHandle;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ---------------------------------------------------------------------------
// Manifests: loading and walking YAML
// ---------------------------------------------------------------------------

/// One YAML document of deploy/kubernetes/ and the file it came from.
struct Doc {
    file: String,
    v: Value,
}

struct Manifests(Vec<Doc>);

/// Every document of every `.yaml` file in deploy/kubernetes/ (multi-document
/// files included); a file that does not parse fails the test naming it.
fn manifests() -> Manifests {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut docs = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for de in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(de).unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
            if !v.is_null() {
                docs.push(Doc {
                    file: file.clone(),
                    v,
                });
            }
        }
    }
    Manifests(docs)
}

impl Manifests {
    fn of_kind(&self, kind: &str) -> impl Iterator<Item = &Value> + '_ {
        let kind = kind.to_string();
        self.0
            .iter()
            .filter(move |d| d.v["kind"].as_str() == Some(kind.as_str()))
            .map(|d| &d.v)
    }

    fn find(&self, kind: &str, name: &str) -> &Value {
        let mut found = self.of_kind(kind).filter(|v| s(v, "metadata.name") == name);
        let first = found
            .next()
            .unwrap_or_else(|| panic!("no {kind} named {name:?} in deploy/kubernetes/"));
        assert!(found.next().is_none(), "two {kind}s named {name:?}");
        first
    }

    /// The gateway's Deployment and its one container.
    fn gateway(&self) -> (&Value, &Value) {
        let d = self.find("Deployment", "vllm-gateway");
        let containers = seq(d, "spec.template.spec.containers");
        assert_eq!(containers.len(), 1, "one container in the gateway pod");
        (d, &containers[0])
    }
}

/// The value at a dotted path (`spec.template.spec`); None if any step is missing.
fn opt<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    opt(v, path).unwrap_or_else(|| panic!("{path} missing in {}", describe(v)))
}

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string in {}", describe(v)))
}

fn int(v: &Value, path: &str) -> i64 {
    at(v, path)
        .as_i64()
        .unwrap_or_else(|| panic!("{path} is not an integer in {}", describe(v)))
}

fn seq<'a>(v: &'a Value, path: &str) -> &'a Vec<Value> {
    at(v, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("{path} is not a list in {}", describe(v)))
}

fn describe(v: &Value) -> String {
    match (
        v["kind"].as_str(),
        opt(v, "metadata.name").and_then(Value::as_str),
    ) {
        (Some(k), Some(n)) => format!("{k} {n}"),
        _ => format!("{v:?}").chars().take(200).collect(),
    }
}

/// A label map as strings.
fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.as_str().unwrap().to_string(),
                        v.as_str()
                            .unwrap_or_else(|| panic!("label {k:?} not a string"))
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a selector (`matchLabels` map) selects pods with these labels.
fn selects(selector: &Value, pod_labels: &BTreeMap<String, String>) -> bool {
    let sel = labels(selector);
    !sel.is_empty() && sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
}

/// The number a container port reference (a number or a port name) means.
fn port_number(container: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).unwrap();
    }
    let name = port.as_str().unwrap_or_else(|| panic!("port {port:?}"));
    let p = seq(container, "ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container port named {name:?}"));
    u16::try_from(int(p, "containerPort")).unwrap()
}

fn container_ports(container: &Value) -> BTreeSet<u16> {
    seq(container, "ports")
        .iter()
        .map(|p| u16::try_from(int(p, "containerPort")).unwrap())
        .collect()
}

/// Seconds from a duration the configuration holds.
fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap() + i64::from(d.subsec_nanos() > 0)
}

// ---------------------------------------------------------------------------
// The configuration the ConfigMap holds
// ---------------------------------------------------------------------------

/// (ConfigMap name, key, mount directory) of the gateway's config volume.
fn config_volume(m: &Manifests) -> (String, String, String) {
    let (d, c) = m.gateway();
    let pod = at(d, "spec.template.spec");
    let vol = seq(pod, "volumes")
        .iter()
        .find(|v| v.get("configMap").is_some())
        .expect("the gateway mounts a ConfigMap volume");
    let cm = s(vol, "configMap.name").to_string();
    // A volume either projects all keys or lists them; the file must be there
    // under its own name.
    let key = match opt(vol, "configMap.items") {
        Some(items) => {
            let items = items.as_sequence().unwrap();
            assert_eq!(items.len(), 1, "one item: gateway.toml");
            assert_eq!(
                s(&items[0], "key"),
                s(&items[0], "path"),
                "item keeps its name"
            );
            s(&items[0], "key").to_string()
        }
        None => "gateway.toml".to_string(),
    };
    let mount = seq(c, "volumeMounts")
        .iter()
        .find(|m| m["name"] == vol["name"])
        .expect("the config volume is mounted");
    assert!(
        mount.get("subPath").is_none() && mount.get("subPathExpr").is_none(),
        "a subPath mount never sees ConfigMap updates: mount the directory"
    );
    (
        cm,
        key,
        s(mount, "mountPath").trim_end_matches('/').to_string(),
    )
}

/// The gateway.toml text of the ConfigMap the gateway mounts.
fn configmap_toml(m: &Manifests) -> String {
    let (cm, key, _) = config_volume(m);
    let map = m.find("ConfigMap", &cm);
    // Not a dotted path: the key itself has a dot.
    at(map, "data")
        .get(key.as_str())
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("ConfigMap {cm} has no key {key}"))
        .to_string()
}

/// The environment variables the configuration reads keys from.
fn key_envs(text: &str) -> Vec<String> {
    let raw: RawConfig = toml::from_str(text).unwrap();
    raw.api_keys.into_iter().filter_map(|k| k.key_env).collect()
}

/// A stand-in for a key held in an environment variable.
fn test_key(var: &str) -> String {
    format!("sk-deploy-test-{}", var.to_lowercase())
}

/// The ConfigMap's configuration, validated as the gateway validates it.
///
/// `key_env` keys become the digests of [`test_key`] values instead of being
/// read from the process environment: setting variables in a test process
/// that runs other tests' threads is a data race for C code reading the
/// environment. The key_env path itself is checked, unchanged, by
/// `the_configmap_passes_check_config`, which runs the real binary with the
/// variables set.
fn configmap_config(text: &str) -> Config {
    let mut raw: RawConfig = toml::from_str(text).unwrap_or_else(|e| panic!("gateway.toml: {e}"));
    for k in &mut raw.api_keys {
        if let Some(var) = k.key_env.take() {
            k.key_sha256 = Some(hex::encode(vllm_gateway::auth::digest(
                test_key(&var).as_bytes(),
            )));
        }
    }
    Config::from_raw(raw).unwrap_or_else(|e| panic!("the ConfigMap's gateway.toml:\n{e}"))
}

// ---------------------------------------------------------------------------
// Manifests: the checks
// ---------------------------------------------------------------------------

#[test]
fn every_manifest_parses_and_names_its_namespace() {
    let m = manifests();
    let namespaces: Vec<&str> = m
        .of_kind("Namespace")
        .map(|n| s(n, "metadata.name"))
        .collect();
    assert_eq!(namespaces.len(), 1, "one Namespace");
    for d in &m.0 {
        let kind = d.v["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: a document without kind", d.file));
        assert!(
            d.v["apiVersion"].is_string(),
            "{}: {kind} without apiVersion",
            d.file
        );
        if kind == "Kustomization" {
            assert_eq!(s(&d.v, "namespace"), namespaces[0], "{}", d.file);
            continue;
        }
        let name = s(&d.v, "metadata.name");
        if kind != "Namespace" {
            assert_eq!(
                s(&d.v, "metadata.namespace"),
                namespaces[0],
                "{}: {kind} {name} in another namespace",
                d.file
            );
        }
    }
}

#[test]
fn kustomization_applies_everything_but_the_secret_placeholder() {
    let m = manifests();
    let k = m
        .of_kind("Kustomization")
        .next()
        .expect("kustomization.yaml");
    let listed: BTreeSet<&str> = seq(k, "resources")
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let files: BTreeSet<&str> =
        m.0.iter()
            .filter(|d| d.v["kind"].as_str() != Some("Kustomization"))
            .map(|d| d.file.as_str())
            .collect();
    for f in &files {
        let is_secret =
            m.0.iter()
                .any(|d| d.file == *f && d.v["kind"].as_str() == Some("Secret"));
        if is_secret {
            // Applying placeholders would overwrite the real keys.
            assert!(
                !listed.contains(f),
                "{f} holds a placeholder Secret: keep it out of kustomization.yaml"
            );
        } else {
            assert!(listed.contains(f), "{f} is not in kustomization.yaml");
        }
    }
    for l in &listed {
        assert!(
            files.contains(l),
            "kustomization.yaml lists {l}, which is not here"
        );
    }
    // The image kustomize rewrites is the one the Deployment uses.
    let (_, c) = m.gateway();
    let image = s(c, "image");
    let (repo, tag) = image.rsplit_once(':').expect("image has a tag");
    assert_ne!(tag, "latest", "pin the gateway image");
    assert!(
        seq(k, "images").iter().any(|i| s(i, "name") == repo),
        "kustomization.yaml images[] names {repo}"
    );
}

#[test]
fn the_configmap_holds_a_valid_gateway_config() {
    let m = manifests();
    let text = configmap_toml(&m);
    let config = configmap_config(&text);
    // Inside the pod both listeners bind every interface: the kubelet probes
    // the admin port and Prometheus scrapes it from outside the pod.
    assert!(
        config.server.listen.ip().is_unspecified(),
        "listen = 0.0.0.0:PORT"
    );
    assert!(
        config.server.admin_listen.ip().is_unspecified(),
        "admin_listen = 0.0.0.0:PORT"
    );
    assert_ne!(
        config.server.listen.port(),
        config.server.admin_listen.port()
    );
    assert!(
        !config.api_keys.is_empty(),
        "a production gateway requires keys"
    );
    assert_eq!(
        config.rate_limit.store,
        LimitStore::Redis,
        "replicas share budgets"
    );
    for model in &config.models {
        // A static host name would be resolved once, at load.
        assert!(
            matches!(model.discovery, DiscoverySource::Dns { .. }),
            "{}: use discovery = \"dns\" in a cluster",
            model.name
        );
    }
    // No plain keys in a ConfigMap.
    let raw: RawConfig = toml::from_str(&text).unwrap();
    assert!(
        raw.api_keys.iter().all(|k| k.key.is_none()),
        "plain `key` in the ConfigMap"
    );
}

#[test]
fn the_configmap_passes_check_config() {
    // The real binary, the unmodified file, the key variables set as the
    // Secret sets them: what an operator runs before applying a change.
    let m = manifests();
    let text = configmap_toml(&m);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vllm-gateway"));
    cmd.arg("check-config").arg(&path);
    for var in key_envs(&text) {
        cmd.env(&var, test_key(&var));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "check-config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And without them it refuses, naming the key: the pod would not start open.
    let mut bare = Command::new(env!("CARGO_BIN_EXE_vllm-gateway"));
    bare.arg("check-config").arg(&path);
    for var in key_envs(&text) {
        bare.env_remove(&var);
    }
    let out = bare.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("key_env"));
}

#[test]
fn the_deployment_matches_the_config() {
    let m = manifests();
    let config = configmap_config(&configmap_toml(&m));
    let (public, admin) = (
        config.server.listen.port(),
        config.server.admin_listen.port(),
    );
    let (d, c) = m.gateway();
    let pod = at(d, "spec.template.spec");

    assert_eq!(int(d, "spec.replicas"), 2);
    assert!(
        selects(
            at(d, "spec.selector.matchLabels"),
            &labels(at(d, "spec.template.metadata.labels"))
        ),
        "the Deployment selects its own pods"
    );
    assert_eq!(
        container_ports(c),
        BTreeSet::from([public, admin]),
        "container ports are the config's listen and admin_listen ports"
    );

    // The command line reads the mounted ConfigMap.
    let (_, key, mount) = config_volume(&m);
    let args: Vec<&str> = seq(c, "args").iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args, ["serve", "--config", &format!("{mount}/{key}")]);
    assert!(
        c.get("command").is_none(),
        "the image's ENTRYPOINT is the binary"
    );

    // Probes: readiness on /readyz, liveness on /healthz, both on the admin port.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let p = at(c, probe);
        assert_eq!(s(p, "httpGet.path"), path, "{probe}");
        assert_eq!(
            port_number(c, at(p, "httpGet.port")),
            admin,
            "{probe} on the admin port"
        );
    }

    // Shutdown: preStop sleep, then SIGTERM drains for shutdown_grace; the
    // kubelet's deadline must cover both.
    let pre_stop = int(c, "lifecycle.preStop.sleep.seconds");
    assert!(pre_stop >= 5, "preStop must outlast endpoint propagation");
    let grace = int(pod, "terminationGracePeriodSeconds");
    assert!(
        grace > pre_stop + secs(config.server.shutdown_grace),
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} + shutdown_grace {:?}",
        config.server.shutdown_grace
    );

    // Security.
    assert_eq!(
        at(pod, "securityContext.runAsNonRoot").as_bool(),
        Some(true)
    );
    assert!(int(pod, "securityContext.runAsUser") > 0);
    let sc = at(c, "securityContext");
    assert_eq!(at(sc, "readOnlyRootFilesystem").as_bool(), Some(true));
    assert_eq!(at(sc, "allowPrivilegeEscalation").as_bool(), Some(false));
    let dropped: Vec<&str> = seq(sc, "capabilities.drop")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(dropped, ["ALL"]);
    assert!(opt(sc, "capabilities.add").is_none());

    // Resources: requests and limits, and worker threads within the CPU limit.
    for r in [
        "requests.cpu",
        "requests.memory",
        "limits.cpu",
        "limits.memory",
    ] {
        assert!(opt(c, &format!("resources.{r}")).is_some(), "resources.{r}");
    }
    let cpu_limit = cpu_cores(s(c, "resources.limits.cpu"));
    assert!(
        config.server.threads as f64 <= cpu_limit.max(1.0),
        "server.threads {} above the CPU limit {cpu_limit}",
        config.server.threads
    );

    // Replicas on different nodes.
    let pod_labels = labels(at(d, "spec.template.metadata.labels"));
    let spread = opt(pod, "topologySpreadConstraints")
        .and_then(Value::as_sequence)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                s(c, "topologyKey") == "kubernetes.io/hostname"
                    && selects(at(c, "labelSelector.matchLabels"), &pod_labels)
            })
        });
    let anti = opt(pod, "affinity.podAntiAffinity").is_some();
    assert!(spread || anti, "spread the replicas across nodes");

    // A PodDisruptionBudget for these pods that leaves one serving.
    let pdb = m
        .of_kind("PodDisruptionBudget")
        .find(|p| selects(at(p, "spec.selector.matchLabels"), &pod_labels))
        .expect("a PodDisruptionBudget for the gateway");
    let keeps_one = match (
        opt(pdb, "spec.maxUnavailable"),
        opt(pdb, "spec.minAvailable"),
    ) {
        (Some(u), None) => u.as_i64().is_some_and(|u| u < 2),
        (None, Some(a)) => a.as_i64().is_some_and(|a| (1..2).contains(&a)),
        _ => false,
    };
    assert!(
        keeps_one,
        "the PDB must allow one disruption and keep one replica"
    );

    // Prometheus annotations name the admin port and /metrics.
    let ann = labels(at(d, "spec.template.metadata.annotations"));
    assert_eq!(ann.get("prometheus.io/port"), Some(&admin.to_string()));
    assert_eq!(
        ann.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );
}

/// Kubernetes CPU quantity ("2", "1500m") in cores.
fn cpu_cores(q: &str) -> f64 {
    match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().unwrap() / 1000.0,
        None => q.parse().unwrap(),
    }
}

#[test]
fn services_expose_the_public_port_and_never_the_admin_port() {
    let m = manifests();
    let config = configmap_config(&configmap_toml(&m));
    let (public, admin) = (
        config.server.listen.port(),
        config.server.admin_listen.port(),
    );
    let (d, c) = m.gateway();
    let pod_labels = labels(at(d, "spec.template.metadata.labels"));
    let gateway_services: Vec<&Value> = m
        .of_kind("Service")
        .filter(|svc| opt(svc, "spec.selector").is_some_and(|sel| selects(sel, &pod_labels)))
        .collect();
    let targets = |svc: &Value| -> BTreeSet<u16> {
        seq(svc, "spec.ports")
            .iter()
            .map(|p| port_number(c, p.get("targetPort").unwrap_or(&p["port"])))
            .collect()
    };
    let public_svc = m.find("Service", "vllm-gateway");
    assert_eq!(
        targets(public_svc),
        BTreeSet::from([public]),
        "the public Service targets only the public port"
    );
    for svc in &gateway_services {
        let t = targets(svc);
        if t.contains(&admin) {
            // The metrics Service: internal only, nothing else on it.
            assert_eq!(
                t,
                BTreeSet::from([admin]),
                "{}: admin port shares a Service",
                describe(svc)
            );
            assert_eq!(
                opt(svc, "spec.type")
                    .and_then(Value::as_str)
                    .unwrap_or("ClusterIP"),
                "ClusterIP",
                "{}: the admin port stays inside the cluster",
                describe(svc)
            );
            assert_eq!(
                opt(svc, "spec.publishNotReadyAddresses").and_then(Value::as_bool),
                Some(true),
                "unready replicas are the ones whose metrics matter"
            );
        }
    }
    assert!(gateway_services
        .iter()
        .any(|svc| std::ptr::eq(*svc, public_svc)));
}

#[test]
fn dns_discovery_names_the_headless_worker_service() {
    let m = manifests();
    let config = configmap_config(&configmap_toml(&m));
    let mut checked = 0;
    for model in &config.models {
        let DiscoverySource::Dns { name, port, .. } = &model.discovery else {
            continue;
        };
        let (svc_name, rest) = name.split_once('.').unwrap();
        let ns = rest
            .strip_suffix(".svc.cluster.local")
            .unwrap_or_else(|| panic!("{name}: use <service>.<namespace>.svc.cluster.local"));
        let svc = m.find("Service", svc_name);
        assert_eq!(s(svc, "metadata.namespace"), ns, "{name}: namespace");
        assert_eq!(
            s(svc, "spec.clusterIP"),
            "None",
            "{svc_name} must be headless"
        );
        assert_ne!(
            opt(svc, "spec.publishNotReadyAddresses").and_then(Value::as_bool),
            Some(true),
            "only ready workers belong in the DNS answer"
        );
        // With a headless Service clients connect to the pods directly: the
        // config's port is the pods' port.
        let svc_ports = seq(svc, "spec.ports");
        assert!(svc_ports.iter().any(|p| int(p, "port") == i64::from(*port)));
        // The worker pods it selects, if defined here, listen there and serve
        // the model under the configured name.
        for d in m.of_kind("Deployment") {
            if !selects(
                at(svc, "spec.selector"),
                &labels(at(d, "spec.template.metadata.labels")),
            ) {
                continue;
            }
            let c = &seq(d, "spec.template.spec.containers")[0];
            assert!(
                container_ports(c).contains(port),
                "{}: container port {port}",
                describe(d)
            );
            let args: Vec<&str> = seq(c, "args").iter().map(|a| a.as_str().unwrap()).collect();
            let served = args
                .iter()
                .position(|a| *a == "--served-model-name")
                .map(|i| args[i + 1])
                .unwrap_or(args[0]);
            assert_eq!(served, model.name, "{}: served model name", describe(d));
            assert!(
                opt(c, "resources.limits")
                    .and_then(|l| l.get("nvidia.com/gpu"))
                    .is_some(),
                "{}: a vLLM worker requests a GPU",
                describe(d)
            );
            assert_eq!(s(c, "readinessProbe.httpGet.path"), "/health");
        }
        checked += 1;
    }
    assert!(checked > 0, "the example uses DNS discovery");
}

#[test]
fn the_redis_url_names_the_redis_service() {
    let m = manifests();
    let config = configmap_config(&configmap_toml(&m));
    let url = config.rate_limit.redis_url.as_deref().expect("redis_url");
    let hostport = url.strip_prefix("redis://").expect("redis://");
    let hostport = hostport.split('/').next().unwrap();
    let (host, port) = hostport.rsplit_once(':').expect("redis_url names the port");
    let port: i64 = port.parse().unwrap();
    let mut parts = host.splitn(2, '.');
    let svc_name = parts.next().unwrap();
    let svc = m.find("Service", svc_name);
    let ns = s(svc, "metadata.namespace");
    assert!(
        [
            svc_name.to_string(),
            format!("{svc_name}.{ns}"),
            format!("{svc_name}.{ns}.svc"),
            format!("{svc_name}.{ns}.svc.cluster.local")
        ]
        .contains(&host.to_string()),
        "{host} is not the Service {svc_name} in {ns}"
    );
    let svc_port = seq(svc, "spec.ports")
        .iter()
        .find(|p| int(p, "port") == port)
        .unwrap_or_else(|| panic!("Service {svc_name} has no port {port}"));
    // And the Service reaches a Redis that listens there.
    let redis = m
        .of_kind("Deployment")
        .find(|d| {
            selects(
                at(svc, "spec.selector"),
                &labels(at(d, "spec.template.metadata.labels")),
            )
        })
        .expect("a Redis Deployment behind the Service");
    let c = &seq(redis, "spec.template.spec.containers")[0];
    let target = port_number(c, svc_port.get("targetPort").unwrap_or(&svc_port["port"]));
    assert!(container_ports(c).contains(&target));
    assert!(s(c, "image").starts_with("redis:") || s(c, "image").contains("valkey"));
    assert_eq!(
        at(redis, "spec.template.spec.securityContext.runAsNonRoot").as_bool(),
        Some(true)
    );
}

#[test]
fn every_key_env_comes_from_a_secret_that_holds_it() {
    let m = manifests();
    let text = configmap_toml(&m);
    let vars = key_envs(&text);
    assert!(!vars.is_empty(), "the example reads keys from a Secret");
    let (_, c) = m.gateway();
    let env = seq(c, "env");
    for var in &vars {
        let e = env
            .iter()
            .find(|e| e["name"].as_str() == Some(var.as_str()))
            .unwrap_or_else(|| panic!("key_env {var} is not in the gateway container's env"));
        let r = at(e, "valueFrom.secretKeyRef");
        assert_ne!(
            r.get("optional").and_then(Value::as_bool),
            Some(true),
            "{var}: a missing key must stop the pod, not start it without the key"
        );
        let secret = m.find("Secret", s(r, "name"));
        let key = s(r, "key");
        let value = opt(secret, &format!("stringData.{key}"))
            .or_else(|| opt(secret, &format!("data.{key}")))
            .unwrap_or_else(|| panic!("Secret {} has no key {key}", s(r, "name")));
        // Placeholders only: never a real key in the repository.
        assert!(
            value.as_str().unwrap().contains("REPLACE"),
            "Secret {}/{key} must hold a placeholder",
            s(r, "name")
        );
    }
}

// ---------------------------------------------------------------------------
// The ConfigMap's configuration, running
// ---------------------------------------------------------------------------

/// Answers for one name only: the headless Service's.
struct ServiceDns {
    name: String,
    ips: Vec<IpAddr>,
}

#[async_trait::async_trait]
impl Resolver for ServiceDns {
    async fn resolve(&self, name: &str) -> std::io::Result<Vec<IpAddr>> {
        if name == self.name {
            Ok(self.ips.clone())
        } else {
            Err(std::io::Error::other(format!("unexpected DNS name {name}")))
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The ConfigMap's text made runnable in a test: listeners on loopback port 0,
/// the worker port the simulator's, Redis a closed local port (the ConfigMap
/// says on_store_error = "allow", so requests pass), keys as test values.
/// Everything else is the file as shipped.
fn runnable(text: &str, worker_port: u16, redis_port: u16) -> String {
    let config = configmap_config(text);
    let DiscoverySource::Dns { port, .. } = &config.models[0].discovery else {
        panic!("dns discovery");
    };
    let mut out = text.to_string();
    let mut swap = |from: String, to: String| {
        assert_eq!(
            out.matches(&from).count(),
            1,
            "{from:?} once in the ConfigMap"
        );
        out = out.replace(&from, &to);
    };
    swap(
        format!("\nlisten = \"{}\"", config.server.listen),
        "\nlisten = \"127.0.0.1:0\"".into(),
    );
    swap(
        format!("admin_listen = \"{}\"", config.server.admin_listen),
        "admin_listen = \"127.0.0.1:0\"".into(),
    );
    swap(
        format!("port = {port}\n"),
        format!("port = {worker_port}\n"),
    );
    swap(
        config.rate_limit.redis_url.clone().unwrap(),
        format!("redis://127.0.0.1:{redis_port}"),
    );
    for var in key_envs(text) {
        swap(
            format!("key_env = \"{var}\""),
            format!("key = \"{}\"", test_key(&var)),
        );
    }
    out
}

/// A directory laid out as the kubelet lays out a ConfigMap volume:
/// `gateway.toml -> ..data/gateway.toml`, `..data -> ..<version>/`. Updates
/// write a new version directory and atomically rename a new `..data`
/// symlink over the old one (kubelet's AtomicWriter).
struct ConfigMapVolume {
    dir: tempfile::TempDir,
    version: u32,
}

impl ConfigMapVolume {
    fn new(text: &str) -> ConfigMapVolume {
        let mut v = ConfigMapVolume {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        v.update(text);
        std::os::unix::fs::symlink("..data/gateway.toml", v.path()).unwrap();
        v
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    fn update(&mut self, text: &str) {
        self.version += 1;
        let base = self.dir.path();
        let old = std::fs::read_link(base.join("..data")).ok();
        let version = format!("..2026_01_01_00_00_0{}.12345", self.version);
        std::fs::create_dir(base.join(&version)).unwrap();
        std::fs::write(base.join(&version).join("gateway.toml"), text).unwrap();
        std::os::unix::fs::symlink(&version, base.join("..data_tmp")).unwrap();
        std::fs::rename(base.join("..data_tmp"), base.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(base.join(old)).unwrap();
        }
    }
}

async fn post_with_key(gw: &GatewayHandle, key: &str, body: serde_json::Value) -> u16 {
    client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configmap_serves_and_hot_reloads_a_kubelet_style_update() {
    let m = manifests();
    let text = configmap_toml(&m);
    let config = configmap_config(&text);
    let model = config.models[0].name.clone();
    let DiscoverySource::Dns { name: dns_name, .. } = config.models[0].discovery.clone() else {
        panic!("dns discovery");
    };
    let sim = sim_with(|c| c.models = vec![model.clone()]);
    let (redis_port, sim_port) = (free_port(), sim.addr().port());
    let mut volume = ConfigMapVolume::new(&runnable(&text, sim_port, redis_port));

    init_test_logs();
    let gw = gateway::start(
        Config::load(&volume.path()).unwrap(),
        StartOptions {
            config_path: Some(volume.path()),
            resolver: Arc::new(ServiceDns {
                name: dns_name,
                ips: vec![sim.addr().ip()],
            }),
            ..StartOptions::embedded()
        },
    )
    .unwrap();
    // Workers come from DNS and join after a passed health check.
    let c = client();
    let readyz = format!("{}/readyz", gw.admin_url());
    wait_until(Duration::from_secs(30), || {
        let (c, u) = (c.clone(), readyz.clone());
        async move { c.get(u).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await
    .expect("ready once the discovered worker passes its health check");

    let vars = key_envs(&text);
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        post_with_key(&gw, &test_key(&vars[0]), body.clone()).await,
        200
    );
    assert_eq!(
        post_with_key(&gw, "sk-not-configured", body.clone()).await,
        401
    );

    // The operator adds a key by digest and applies the ConfigMap: the
    // kubelet swaps the volume's symlink, the gateway reloads by itself.
    let new_key = "sk-added-by-configmap-update";
    assert_eq!(post_with_key(&gw, new_key, body.clone()).await, 401);
    let added = format!(
        "{}\n[[api_keys]]\nname = \"added\"\nkey_sha256 = \"{}\"\n",
        runnable(&text, sim_port, redis_port),
        hex::encode(vllm_gateway::auth::digest(new_key.as_bytes()))
    );
    volume.update(&added);
    wait_until(Duration::from_secs(10), || {
        let body = body.clone();
        let gw = &gw;
        async move { post_with_key(gw, new_key, body).await == 200 }
    })
    .await
    .expect("the symlink swap is seen and the new key works without a restart");
    assert_eq!(
        post_with_key(&gw, &test_key(&vars[0]), body.clone()).await,
        200
    );
    let metrics = metrics_text(&gw).await;
    assert!(
        metric_value(&metrics, "vllm_gateway_config_reloads_total{result=\"ok\"}").unwrap() >= 1.0,
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------
// Grafana dashboard
// ---------------------------------------------------------------------------

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("deploy/grafana/dashboard.json")).expect("dashboard.json is JSON")
}

/// Every PromQL expression of the dashboard: panel targets and the selectors
/// inside the template variables' `label_values(...)`.
fn dashboard_queries(d: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
            .map(|(sel, _)| sel.trim())
            .unwrap_or_else(|| {
                panic!(
                    "variable {}: expected label_values(selector, label)",
                    v["name"]
                )
            });
        out.push(inner.to_string());
    }
    out
}

/// Metric families named in PromQL text: `vllm_gateway_*` identifiers, with
/// a histogram's `_bucket`/`_sum`/`_count` series mapped to its family.
fn families(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("vllm_gateway_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        out.insert(family.to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn dashboard_is_a_grafana_dashboard_with_the_panels_operators_need() {
    let d = dashboard();
    assert_eq!(d["uid"], "vllm-gateway");
    assert!(
        d["schemaVersion"].as_u64().unwrap() >= 36,
        "Grafana 10/11 schema"
    );
    assert!(d["id"].is_null(), "no instance id: importable anywhere");
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(ds["query"], "prometheus");
    let ds_ref = format!("${{{}}}", ds["name"].as_str().unwrap());
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(
            v["datasource"]["uid"],
            ds_ref.as_str(),
            "variable {}",
            v["name"]
        );
    }

    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "{title}: duplicate id"
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{title}: wider than the grid"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"],
            ds_ref.as_str(),
            "{title}: data source variable"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"],
                ds_ref.as_str(),
                "{title}: data source variable"
            );
            let expr = t["expr"].as_str().unwrap();
            if expr.contains("histogram_quantile") {
                assert!(
                    expr.contains("_bucket") && expr.contains("by (le"),
                    "{title}: {expr}"
                );
            }
            if expr.contains("rate(") {
                assert!(
                    expr.contains("[$__rate_interval]"),
                    "{title}: use $__rate_interval"
                );
            }
        }
    }
    let titles: Vec<String> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_lowercase())
        .collect();
    for wanted in [
        "request rate by model and status",
        "error ratio",
        "request latency p50 / p99",
        "time to first token p50 / p99",
        "inter-token gap p99",
        "gateway overhead p99",
        "tokens per key (exact vs estimated)",
        "worker health",
        "workers by state",
        "in-flight requests per worker",
        "rate-limited requests by key and kind",
        "routing decisions",
        "retries",
        "upstream errors by kind",
        "client disconnects",
        "config reloads",
        "rate-limit store errors",
    ] {
        assert!(titles.iter().any(|t| t == wanted), "no panel {wanted:?}");
    }
}

#[test]
fn dashboard_queries_are_valid_promql() {
    // promtool parses every expression as a recording rule, with Grafana's
    // variables given ordinary values.
    let exprs = dashboard_queries(&dashboard());
    let rules: Vec<serde_yaml::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e
                .replace("$__rate_interval", "5m")
                .replace("$job", ".*")
                .replace("$model", ".*")
                .replace("$key", ".*");
            serde_yaml::to_value(BTreeMap::from([
                ("record".to_string(), format!("dashboard:query_{i}")),
                ("expr".to_string(), e),
            ]))
            .unwrap()
        })
        .collect();
    let file = serde_yaml::to_string(&BTreeMap::from([(
        "groups",
        vec![serde_yaml::to_value(BTreeMap::from([
            ("name", serde_yaml::to_value("dashboard").unwrap()),
            ("rules", serde_yaml::to_value(rules).unwrap()),
        ]))
        .unwrap()],
    )]))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&path, file).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool is installed (bash tests/run.sh installs the prometheus package)");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Families the gateway's /metrics shows (`# TYPE` lines).
fn exported(text: &str, prefix: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|l| l.split(' ').next())
        .filter(|n| n.starts_with("vllm_gateway_"))
        .map(String::from)
        .collect()
}

/// A live and a dead worker, keys with room and without, every kind of
/// outcome, a reload: every metric family gets samples.
async fn varied_traffic() -> (String, Vec<SimHandle>) {
    let live = sim_with(|c| c.output_tokens = (6, 6));
    let dead = sim();
    let dead_url = dead.url();
    dead.stop();
    let keys =
        "[[api_keys]]\nname = \"team-a\"\nkey = \"sk-deploy-team-a\"\nrequests_per_minute = 1000\n\
                [[api_keys]]\nname = \"tiny\"\nkey = \"sk-deploy-tiny\"\nrequests_per_minute = 1\n";
    let text = format!(
        "{}\n{keys}",
        config_text(
            &[live.url(), dead_url],
            "unhealthy_after = 100\nfailures_to_eject = 100",
            ""
        )
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &text).unwrap();
    init_test_logs();
    let gw = gateway::start(
        Config::parse(&text).unwrap(),
        StartOptions {
            config_path: Some(path.clone()),
            ..StartOptions::embedded()
        },
    )
    .unwrap();
    wait_ready(&gw).await;
    let post = |key: &'static str, body: serde_json::Value, fault: Option<&'static str>| {
        let mut r = client()
            .post(format!("{}/v1/chat/completions", gw.url()))
            .bearer_auth(key)
            .json(&body);
        if let Some(f) = fault {
            r = r.header("x-sim-fault", f);
        }
        r.send()
    };
    let team = "sk-deploy-team-a";
    // Successes, plain and streamed, until the dead worker has cost a retry.
    for i in 0..40 {
        let stream = i % 2 == 1;
        post(team, chat_body(json!({"stream": stream})), None)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if i >= 4
            && metrics_text(&gw)
                .await
                .contains("vllm_gateway_retries_total{")
        {
            break;
        }
    }
    // A 400, a 401, two requests on a one-request budget (a 429).
    post(team, chat_body(json!({"temperature": 9})), None)
        .await
        .unwrap();
    post("sk-deploy-wrong", chat_body(json!({})), None)
        .await
        .unwrap();
    for _ in 0..2 {
        post("sk-deploy-tiny", chat_body(json!({})), None)
            .await
            .unwrap();
    }
    // A cut stream (estimated tokens) and a client that leaves mid-stream.
    post(
        team,
        chat_body(json!({"stream": true})),
        Some("cut_after_tokens=2"),
    )
    .await
    .unwrap()
    .text()
    .await
    .ok();
    let r = post(
        team,
        chat_body(json!({"stream": true})),
        Some("stall_after_tokens=1"),
    )
    .await
    .unwrap();
    let mut body = r.bytes_stream();
    body.next().await;
    drop(body);
    // A reload, to a shared store that is down: decisions then fail
    // (counted) and on_store_error lets the request through.
    let redis_down = format!(
        "{text}\n[rate_limit]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\non_store_error = \"allow\"\n",
        free_port()
    );
    std::fs::write(&path, redis_down).unwrap();
    gw.reload().await.unwrap();
    let status = post(team, chat_body(json!({})), None)
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "on_store_error = allow");

    // The disconnect is counted once the gateway notices it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_text(&gw).await;
        if text.contains("vllm_gateway_client_disconnects_total{")
            && text.contains("vllm_gateway_rate_limit_store_errors_total{")
        {
            return (text, vec![live]);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "disconnect and store error not counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    let d = dashboard();
    let queried: BTreeSet<String> = dashboard_queries(&d)
        .iter()
        .flat_map(|e| families(e))
        .collect();
    assert!(queried.len() >= 15, "{queried:?}");
    let (text, _sims) = varied_traffic().await;
    let types = exported(&text, "# TYPE ");
    let missing: Vec<&String> = queried.difference(&types).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the gateway does not export: {missing:?}\n{text}"
    );
    // And the other way: every family the gateway registers has a panel,
    // so a new metric is not silently left off the dashboard.
    let unused: Vec<String> = exported(&text, "# HELP ")
        .difference(&queried)
        .cloned()
        .collect();
    assert!(
        unused.is_empty(),
        "metrics with no dashboard panel: {unused:?}"
    );
}

// ---------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------

/// One Dockerfile instruction: the keyword (upper case) and its arguments,
/// continuation lines joined and comments dropped.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

/// The Dockerfile's stages, each a list of instructions starting with FROM.
fn dockerfile_stages() -> Vec<Vec<Instruction>> {
    let text = read("Dockerfile");
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for l in logical.into_iter().filter(|l| !l.trim().is_empty()) {
        let (keyword, args) = l.trim().split_once(char::is_whitespace).unwrap_or((&l, ""));
        let ins = Instruction {
            keyword: keyword.to_uppercase(),
            args: args.trim().to_string(),
        };
        if ins.keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push(ins);
    }
    stages
}

fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec (JSON) form: {args}: {e}"))
}

#[test]
fn dockerfile_builds_in_one_stage_and_runs_non_root_in_another() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "multi-stage");
    let builder = &stages[0];
    let from = &builder[0].args;
    assert!(
        from.starts_with("rust:"),
        "builder from a rust image: {from}"
    );
    let builder_name = from
        .split_whitespace()
        .skip_while(|w| !w.eq_ignore_ascii_case("as"))
        .nth(1)
        .expect("the builder stage is named");
    assert!(
        builder.iter().any(|i| i.keyword == "RUN"
            && i.args.contains("apt-get install")
            && i.args.contains("cmake")),
        "the builder installs cmake (Pingora's zlib-ng)"
    );
    assert!(builder
        .iter()
        .any(|i| i.keyword == "RUN" && i.args.contains("cargo build --release")));

    let runtime = stages.last().unwrap();
    let base = &runtime[0].args;
    assert!(
        base.starts_with("gcr.io/distroless/") || base.starts_with("debian:bookworm-slim"),
        "runtime base: {base}"
    );
    let of = |k: &'static str| runtime.iter().filter(move |i| i.keyword == k);

    // Non-root, numerically (Kubernetes' runAsNonRoot can only verify a
    // number), and the same user the Deployment runs as.
    let user = &of("USER")
        .next_back()
        .expect("USER in the final stage")
        .args;
    let uid = user.split(':').next().unwrap();
    let uid: i64 = uid
        .parse()
        .unwrap_or_else(|_| panic!("USER {user}: use a numeric uid"));
    assert!(uid > 0, "USER {user} is root");
    let m = manifests();
    let (d, c) = m.gateway();
    assert_eq!(int(d, "spec.template.spec.securityContext.runAsUser"), uid);

    // EXPOSE: the reference configuration's ports.
    let reference = Config::parse(&read("config/gateway.toml")).unwrap();
    let exposed: BTreeSet<u16> = of("EXPOSE")
        .flat_map(|i| {
            i.args
                .split_whitespace()
                .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
                .collect::<Vec<u16>>()
        })
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from([
            reference.server.listen.port(),
            reference.server.admin_listen.port()
        ])
    );

    // Only the binary and the reference configuration are copied in.
    let copies: Vec<Vec<&str>> = of("COPY")
        .map(|i| i.args.split_whitespace().collect())
        .collect();
    assert_eq!(copies.len(), 2, "{copies:?}");
    let binary = copies
        .iter()
        .find(|c| c[0] == format!("--from={builder_name}"))
        .expect("COPY --from=builder of the binary");
    let binary_dest = binary.last().unwrap().to_string();
    let config_copy = copies
        .iter()
        .find(|c| c[0] == "config/gateway.toml")
        .expect("COPY config/gateway.toml");
    let config_dest = config_copy[1].to_string();

    let entrypoint = exec_form(&of("ENTRYPOINT").next_back().expect("ENTRYPOINT").args);
    assert_eq!(
        entrypoint,
        std::slice::from_ref(&binary_dest),
        "ENTRYPOINT is the copied binary"
    );
    assert!(binary_dest.ends_with("/vllm-gateway"));
    let cmd = exec_form(&of("CMD").next_back().expect("CMD").args);
    assert_eq!(cmd, ["serve", "--config", &config_dest]);
    // The Deployment reads its ConfigMap at the same path.
    let args: Vec<String> = seq(c, "args")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        args, cmd,
        "the Deployment mounts its config where the image expects it"
    );

    let ignore = read(".dockerignore");
    assert!(
        ignore
            .lines()
            .map(str::trim)
            .any(|l| matches!(l, "target" | "target/" | "/target" | "/target/")),
        ".dockerignore keeps target/ out of the build context"
    );
}

#[test]
fn docker_image_builds_when_an_engine_is_available() {
    let engine = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine {
        println!("note: no Docker engine here (`docker info` failed); the Dockerfile was linted, not built");
        return;
    }
    let tag = "vllm-gateway:deploy-test";
    let build = Command::new("docker")
        .args(["build", "-t", tag, "."])
        .current_dir(root())
        .status()
        .unwrap();
    assert!(build.success(), "docker build");
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            tag,
            "check-config",
            "/etc/vllm-gateway/gateway.toml",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the image runs its binary on its configuration:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let user = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Config.User}}", tag])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "65532:65532");
}
