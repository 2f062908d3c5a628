//! The `vllm-gateway` command line. It only wires arguments to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc: when it was chosen an open stream cost about 42 kB of resident
/// memory with it against 104 kB with mimalloc (`load.sh --parts streams`,
/// 2,000 streams; 27.5 kB with jemalloc since), and
/// unlike glibc's malloc it hands memory back once streams close rather than
/// ratcheting up under waves of them.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options. Freed pages go back to the system within a
/// second, from a background thread, so a gateway that just served a wave of
/// streams and then sits idle does not keep their memory (the default decay
/// is 10 s, and only runs when something allocates).
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: ConfString =
    ConfString(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// jemalloc reads its options through a `const char *` symbol.
#[repr(transparent)]
pub struct ConfString(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable C string literal.
unsafe impl Sync for ConfString {}

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
