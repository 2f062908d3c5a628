//! What each subcommand does, kept out of `main.rs` so it stays wiring only.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::gateway::{self, StartOptions};

/// `vllm-gateway serve --config PATH`
pub fn serve(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: invalid configuration:\n{e}", path.display());
            return ExitCode::from(2);
        }
    };
    let models: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
    let handle = match gateway::start(config, StartOptions::process()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        listen = %handle.public_addr,
        admin = %handle.admin_addr,
        config = %path.display(),
        ?models,
        "vllm-gateway serving"
    );
    handle.wait();
    ExitCode::SUCCESS
}

/// `vllm-gateway check-config PATH`: like `nginx -t`.
pub fn check_config(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            let workers: usize = c.models.iter().map(|m| m.workers.len()).sum();
            println!(
                "{}: ok ({} models, {} workers)",
                path.display(),
                c.models.len(),
                workers
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for issue in e.issues() {
                eprintln!("{}: {issue}", path.display());
            }
            ExitCode::from(1)
        }
    }
}
