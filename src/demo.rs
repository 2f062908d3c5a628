//! `vllm-gateway demo`: the embedded default. Two simulated vLLM workers on
//! loopback and the gateway in front of them, in one process, so a newcomer
//! can `curl` it at once with no GPU and no configuration file.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::gateway::{self, StartOptions};
use crate::sim::{SimConfig, Simulator};

/// The model the demo serves.
pub const DEMO_MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Public listener of the demo gateway.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin listener (/metrics, /healthz, /readyz).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
}

/// The demo's configuration: every key not named here takes its default.
pub fn demo_config(args: &DemoArgs, workers: &[String]) -> Result<Config, String> {
    let list = workers
        .iter()
        .map(|w| format!("{w:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"
[server]
listen = "{}"
admin_listen = "{}"
shutdown_grace = "5s"

[[models]]
name = "{DEMO_MODEL}"
workers = [{list}]
"#,
        args.listen, args.admin_listen
    );
    Config::parse(&text).map_err(|e| e.to_string())
}

pub fn run(args: &DemoArgs) -> ExitCode {
    let mut sims = Vec::new();
    for _ in 0..2 {
        let cfg = SimConfig {
            models: vec![DEMO_MODEL.to_string()],
            ttft: Duration::from_millis(80),
            itl: Duration::from_millis(25),
            max_model_len: 8192,
            ..SimConfig::default()
        };
        match Simulator::start(cfg) {
            Ok(s) => sims.push(s),
            Err(e) => {
                eprintln!("cannot start a simulated worker: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let workers: Vec<String> = sims.iter().map(|s| s.url()).collect();
    let config = match demo_config(args, &workers) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo configuration invalid: {e}");
            return ExitCode::from(1);
        }
    };
    let handle = match gateway::start(config, StartOptions::process()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("cannot start the demo gateway: {e}\n(try --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:19090)");
            return ExitCode::from(1);
        }
    };
    let url = handle.url();
    println!(
        "\nvllm-gateway demo: gateway on {url}, admin on {admin}, simulated workers {workers}\n\n\
         Try it:\n\n  \
         curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\\n    \
         -d '{{\"model\":\"{DEMO_MODEL}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'\n\n\
         Streaming:\n\n  \
         curl -sN {url}/v1/chat/completions -H 'content-type: application/json' \\\n    \
         -d '{{\"model\":\"{DEMO_MODEL}\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'\n\n\
         Metrics: curl -s {admin}/metrics | grep vllm_gateway_\n\n\
         Ctrl-C stops the demo.\n",
        admin = handle.admin_url(),
        workers = workers.join(", "),
    );
    handle.wait();
    drop(sims);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_is_valid() {
        let args = DemoArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
        };
        let c = demo_config(
            &args,
            &["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
        )
        .unwrap();
        assert_eq!(c.models[0].name, DEMO_MODEL);
        assert_eq!(c.models[0].workers.len(), 2);
    }
}
