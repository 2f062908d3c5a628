//! config/gateway.toml is the operator's reference: every key is in it, and
//! every default it shows is the one the code uses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use vllm_gateway::config::Config;

const REFERENCE: &str = include_str!("../config/gateway.toml");

#[test]
fn the_defaults_it_shows_are_the_code_defaults() {
    let shown = Config::parse(REFERENCE).unwrap();
    let model = &shown.models[0];
    let minimal = Config::parse(&format!(
        "[[models]]\nname = {:?}\nworkers = [{}]\n",
        model.name,
        model
            .workers
            .iter()
            .map(|w| format!("{:?}", w.url))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .unwrap();
    let m = &minimal.models[0];
    assert_eq!(
        format!("{:?}", shown.server),
        format!("{:?}", minimal.server)
    );
    assert_eq!(model.timeouts, m.timeouts);
    assert_eq!(model.pool, m.pool);
    assert_eq!(model.health, m.health);
    assert_eq!(model.limits, m.limits);
    assert_eq!(model.validation, m.validation);
    assert_eq!(model.discovery, m.discovery);
    assert_eq!(shown.rate_limit, minimal.rate_limit);
}

/// Field names of the `pub` fields of every struct in a source file.
fn fields(source: &str) -> Vec<String> {
    source
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("pub "))
        .filter(|l| !l.starts_with("struct") && !l.starts_with("enum") && !l.starts_with("use"))
        .filter_map(|l| l.split(':').next())
        .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(String::from)
        .collect()
}

#[test]
fn every_key_is_documented() {
    let mut keys = fields(include_str!("../src/config/raw.rs"));
    keys.extend(
        fields(include_str!("../src/request/validate.rs"))
            .into_iter()
            // Set from affinity_prefix_bytes, not a key of its own.
            .filter(|k| k != "prefix_window_bytes"),
    );
    assert!(keys.len() > 40, "{keys:?}");
    for key in keys {
        // Tables are headings, not `key =` lines.
        if ["server", "models", "validation", "api_keys", "rate_limit"].contains(&key.as_str()) {
            continue;
        }
        let documented = REFERENCE.lines().any(|l| {
            let l = l.trim_start_matches(['#', ' ']);
            l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}="))
        });
        assert!(
            documented,
            "config key `{key}` is missing from config/gateway.toml"
        );
    }
}
