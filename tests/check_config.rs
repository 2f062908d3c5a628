//! `vllm-gateway check-config`: exit 0 on a good file, non-zero naming the
//! bad key otherwise (like `nginx -t`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn check(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vllm-gateway"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_reference_config_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"))
        .unwrap();
    let (ok, stdout, stderr) = check(&text);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn a_bad_worker_url_is_named_by_its_key() {
    let (ok, _, stderr) = check(
        r#"
        [[models]]
        name = "a"
        workers = ["http://127.0.0.1:8000"]
        [[models]]
        name = "b"
        workers = ["not a url"]
        "#,
    );
    assert!(!ok);
    assert!(
        stderr.contains("models[1].workers[0]: not a URL"),
        "{stderr}"
    );
}

#[test]
fn unknown_keys_and_bad_values_are_all_reported() {
    let (ok, _, stderr) = check(
        r#"
        [server]
        max_body_bytes = 0
        shutdown_grace = "forever"
        [[models]]
        name = "a"
        workers = ["http://127.0.0.1:8000"]
        "#,
    );
    assert!(!ok);
    assert!(stderr.contains("server.max_body_bytes"), "{stderr}");
    assert!(stderr.contains("server.shutdown_grace"), "{stderr}");

    let (ok, _, stderr) = check("[server]\nlisten_port = 80\n");
    assert!(!ok);
    assert!(stderr.contains("listen_port"), "{stderr}");
}

#[test]
fn a_missing_file_is_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_vllm-gateway"))
        .args(["check-config", "/nonexistent/gateway.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
