//! What each subcommand does, kept out of `main.rs` so it stays wiring only.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::gateway::{self, StartOptions};
use crate::sim::{SimArgs, Simulator};

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
    let options = StartOptions {
        config_path: Some(path.to_path_buf()),
        ..StartOptions::process()
    };
    let handle = match gateway::start(config, options) {
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
            for w in &c.warnings {
                eprintln!("{}: warning: {w}", path.display());
            }
            let workers: usize = c.models.iter().map(|m| m.workers.len()).sum();
            println!(
                "{}: ok ({} models, {} static workers, {} API keys{})",
                path.display(),
                c.models.len(),
                workers,
                c.api_keys.len(),
                if c.api_keys.is_empty() {
                    ": open to anyone"
                } else {
                    ""
                }
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

/// `vllm-gateway simulate --listen ADDR --model NAME [...]`: one simulated
/// vLLM worker in the foreground until Ctrl-C.
pub fn simulate(args: SimArgs) -> ExitCode {
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid simulator options: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let listen = cfg.listen;
    let result = runtime.block_on(async move {
        let addr = listen.unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8000)));
        let listener = Simulator::bind(addr)?;
        tracing::info!(
            listen = %listener.local_addr()?,
            models = ?cfg.models,
            "simulated vLLM worker serving"
        );
        Simulator::run(listener, cfg).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simulator failed: {e}");
            ExitCode::from(1)
        }
    }
}
