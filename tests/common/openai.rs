//! Running the official `openai` Python client (tests/e2e/openai_client.py).

use std::process::Command;

use super::MODEL;

/// The interpreter with `openai` installed: `VLLM_GATEWAY_PYTHON`, or the
/// venv `tests/run.sh` creates.
fn python() -> String {
    if let Ok(p) = std::env::var("VLLM_GATEWAY_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/e2e-venv/bin/python");
    assert!(
        std::path::Path::new(venv).exists(),
        "the openai client is not installed: run `bash tests/run.sh` (it creates {venv})"
    );
    venv.to_string()
}

pub async fn run_client(base_url: &str, scenario: &str, key: Option<&str>) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/openai_client.py");
    let mut cmd = Command::new(python());
    cmd.arg(script).arg(base_url).arg(MODEL).arg(scenario);
    if let Some(k) = key {
        cmd.arg(k);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "openai client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
