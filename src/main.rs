//! The `vllm-gateway` command line. It only wires arguments to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc returns memory to the system as streams close; glibc's malloc
/// keeps ratcheting resident memory up under waves of thousands of streams.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use vllm_gateway::cli;
use vllm_gateway::telemetry::LogFormat;

#[derive(Parser)]
#[command(
    name = "vllm-gateway",
    version,
    about = "An OpenAI-compatible gateway for pools of vLLM workers"
)]
struct Cli {
    /// Log line format (default: json for `serve`, text otherwise).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file.
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Parse and validate a configuration file; print every problem, naming its key.
    CheckConfig {
        /// Configuration file.
        path: PathBuf,
    },
    /// Run one simulated vLLM worker (no GPU needed).
    Simulate(vllm_gateway::sim::SimArgs),
    /// The embedded default: two simulated workers and the gateway in front of them.
    Demo(vllm_gateway::demo::DemoArgs),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let default_format = match args.command {
        Command::Serve { .. } => LogFormat::Json,
        _ => LogFormat::Text,
    };
    vllm_gateway::telemetry::init(args.log_format.unwrap_or(default_format));
    let code = match args.command {
        Command::Serve { config } => cli::serve(&config),
        Command::CheckConfig { path } => cli::check_config(&path),
        Command::Simulate(args) => cli::simulate(args),
        Command::Demo(args) => vllm_gateway::demo::run(&args),
    };
    vllm_gateway::telemetry::flush();
    code
}
