//! The `vllm-gateway` command line. It only wires arguments to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vllm_gateway::cli;
use vllm_gateway::telemetry::LogFormat;

#[derive(Parser)]
#[command(
    name = "vllm-gateway",
    version,
    about = "An OpenAI-compatible gateway for pools of vLLM workers"
)]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
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
}

fn main() -> ExitCode {
    let args = Cli::parse();
    vllm_gateway::telemetry::init(args.log_format);
    match args.command {
        Command::Serve { config } => cli::serve(&config),
        Command::CheckConfig { path } => cli::check_config(&path),
    }
}
