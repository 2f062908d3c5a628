//! Command-line options of `vllm-gateway simulate` (main.rs flattens [`SimArgs`] into its
//! subcommand and calls [`SimArgs::into_config`]).

use std::net::SocketAddr;
use std::time::Duration;

use super::faults::FaultPlan;
use super::SimConfig;

/// Options of the built-in vLLM simulator.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on (vLLM's default port is 8000).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Served model name; repeat to add LoRA adapters on the first (base) model.
    #[arg(long = "model", value_name = "NAME", default_value = "sim-model")]
    pub models: Vec<String>,
    /// Context length (prompt + output tokens).
    #[arg(long, default_value_t = 4096)]
    pub max_model_len: u32,
    /// Base time to first token, in milliseconds (fractions allowed).
    #[arg(long, default_value_t = 20.0)]
    pub ttft_ms: f64,
    /// Inter-token latency, in milliseconds (fractions allowed).
    #[arg(long, default_value_t = 5.0)]
    pub itl_ms: f64,
    /// Extra time to first token per uncached prompt token, in microseconds.
    #[arg(long, default_value_t = 0.0)]
    pub prefill_us_per_token: f64,
    /// Sequences generating at once; more wait in a FIFO queue.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Natural answer length: "N" or "MIN-MAX" tokens.
    #[arg(long, default_value = "16-32")]
    pub output_tokens: String,
    /// KV-cache capacity in tokens (for vllm:kv_cache_usage_perc).
    #[arg(long, default_value_t = 131_072)]
    pub kv_cache_tokens: u64,
    /// Prefix-cache capacity in 16-token blocks; 0 disables it.
    #[arg(long, default_value_t = 1024)]
    pub prefix_cache_blocks: usize,
    /// Tokio worker threads (used when the simulator runs its own runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// A fault to inject, `name[=value]` (repeatable), e.g. `--fault cut_after_tokens=3`.
    #[arg(long = "fault", value_name = "SPEC")]
    pub faults: Vec<String>,
}

impl SimArgs {
    /// Validates the options and builds the simulator's configuration.
    pub fn into_config(self) -> Result<SimConfig, String> {
        let mut faults = FaultPlan::default();
        for spec in &self.faults {
            faults
                .apply_spec(spec)
                .map_err(|e| format!("--fault {spec}: {e}"))?;
        }
        let cfg = SimConfig {
            listen: Some(self.listen),
            models: self.models,
            max_model_len: self.max_model_len,
            ttft: millis("--ttft-ms", self.ttft_ms)?,
            prefill_per_token: millis(
                "--prefill-us-per-token",
                self.prefill_us_per_token / 1000.0,
            )?,
            itl: millis("--itl-ms", self.itl_ms)?,
            max_num_seqs: self.max_num_seqs,
            output_tokens: parse_range(&self.output_tokens)?,
            kv_cache_tokens: self.kv_cache_tokens,
            prefix_cache_blocks: self.prefix_cache_blocks,
            faults,
            threads: self.threads,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

fn millis(flag: &str, ms: f64) -> Result<Duration, String> {
    if !ms.is_finite() || !(0.0..=1e9).contains(&ms) {
        return Err(format!("{flag}: expected a non-negative number, got {ms}"));
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

/// `"16"` or `"8-64"`.
fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("--output-tokens: expected N or MIN-MAX, got `{s}`");
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (s.trim(), s.trim()),
    };
    let lo: u32 = lo.parse().map_err(|_| bad())?;
    let hi: u32 = hi.parse().map_err(|_| bad())?;
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn parse(args: &[&str]) -> Result<SimConfig, String> {
        let mut argv = vec!["simulate"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .sim
            .into_config()
    }

    #[test]
    fn defaults_match_sim_config() {
        let cfg = parse(&[]).unwrap();
        let d = SimConfig::default();
        assert_eq!(cfg.models, d.models);
        assert_eq!(cfg.ttft, d.ttft);
        assert_eq!(cfg.itl, d.itl);
        assert_eq!(cfg.output_tokens, d.output_tokens);
        assert_eq!(cfg.max_model_len, d.max_model_len);
        assert_eq!(cfg.listen, Some("127.0.0.1:8000".parse().unwrap()));
    }

    #[test]
    fn every_flag() {
        let cfg = parse(&[
            "--listen",
            "0.0.0.0:9000",
            "--model",
            "base",
            "--model",
            "lora",
            "--max-model-len",
            "2048",
            "--ttft-ms",
            "1.5",
            "--itl-ms",
            "0",
            "--prefill-us-per-token",
            "250",
            "--max-num-seqs",
            "8",
            "--output-tokens",
            "8-64",
            "--kv-cache-tokens",
            "1000",
            "--prefix-cache-blocks",
            "0",
            "--threads",
            "2",
            "--fault",
            "cut_after_tokens=3",
            "--fault",
            "slow_headers=10ms",
        ])
        .unwrap();
        assert_eq!(cfg.models, vec!["base", "lora"]);
        assert_eq!(cfg.max_model_len, 2048);
        assert_eq!(cfg.ttft, Duration::from_micros(1500));
        assert_eq!(cfg.itl, Duration::ZERO);
        assert_eq!(cfg.prefill_per_token, Duration::from_micros(250));
        assert_eq!(cfg.max_num_seqs, 8);
        assert_eq!(cfg.output_tokens, (8, 64));
        assert_eq!(cfg.kv_cache_tokens, 1000);
        assert_eq!(cfg.prefix_cache_blocks, 0);
        assert_eq!(cfg.threads, 2);
        assert_eq!(cfg.faults.cut_after_tokens, Some(3));
        assert_eq!(cfg.faults.slow_headers, Some(Duration::from_millis(10)));
        assert_eq!(
            parse(&["--output-tokens", "16"]).unwrap().output_tokens,
            (16, 16)
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["--output-tokens", "9-3"]).is_err());
        assert!(parse(&["--output-tokens", "0"]).is_err());
        assert!(parse(&["--output-tokens", "x"]).is_err());
        assert!(parse(&["--max-num-seqs", "0"]).is_err());
        assert!(parse(&["--ttft-ms", "-1"]).is_err());
        assert!(parse(&["--fault", "explode"]).is_err());
    }
}
