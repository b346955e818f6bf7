//! Bench: real token throughput with candle, in llama-bench's vocabulary (pp, tg, pg, depth,
//! threads, repetitions), plus what its users ask for: TTFT, inter-token latency, load time,
//! peak RSS, heat and throttling, energy, adaptive repetitions, and the estimate beside it.
//!
//! candle sizes its CPU thread pool once per process, so each thread count runs in its own
//! worker process (`fitbench bench-worker`), which also gives each its own peak RSS.

pub mod gemma3;
pub mod kernels;
pub mod layers;
pub mod llama;
pub mod model;
pub mod monitor;
pub mod ops;
mod runner;
pub mod sample;
pub mod session;
pub mod stats;
pub mod synth;

pub use runner::{device, run_worker};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestKind {
    /// One batched prompt pass of n_prompt tokens.
    Pp,
    /// n_gen single-token steps with the KV cache.
    Tg,
    /// A prompt, then generation: what a chat turn costs.
    Pg,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestSpec {
    pub kind: TestKind,
    pub n_prompt: usize,
    pub n_gen: usize,
    /// Tokens already in the context, filled before the clock starts.
    pub n_depth: usize,
}

impl TestSpec {
    /// llama-bench's names: pp512, tg128, pp512+tg128, with @d512 for a depth.
    pub fn name(&self) -> String {
        let base = match self.kind {
            TestKind::Pp => format!("pp{}", self.n_prompt),
            TestKind::Tg => format!("tg{}", self.n_gen),
            TestKind::Pg => format!("pp{}+tg{}", self.n_prompt, self.n_gen),
        };
        if self.n_depth > 0 {
            format!("{base} @ d{}", self.n_depth)
        } else {
            base
        }
    }

    /// Tokens a repetition processes: the numerator of tok/s.
    pub fn tokens(&self) -> usize {
        self.n_prompt + self.n_gen
    }

    /// Context the test needs.
    pub fn context(&self) -> usize {
        self.n_depth + self.n_prompt + self.n_gen
    }
}

/// How to measure: the same for every thread count of a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSettings {
    pub tests: Vec<TestSpec>,
    pub repetitions: usize,
    /// Upper bound on repetitions while `target_ci` is not met.
    pub max_repetitions: usize,
    /// Stop repeating once the 95% CI half-width is below this share of the mean.
    pub target_ci: Option<f64>,
    pub warmup: usize,
    pub seed: u64,
    /// `cpu`, `cuda:N` or `metal:N`.
    pub device: String,
}

/// What one worker process measures: every test at one thread count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub model_path: PathBuf,
    pub vocab_size: u32,
    pub threads: usize,
    pub run: RunSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestRun {
    pub test: TestSpec,
    /// tok/s of each repetition.
    pub samples_ts: Vec<f64>,
    /// Median time to first token over repetitions (pg only).
    pub ttft_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
    pub itl_p95_ms: Option<f64>,
    pub temp_start_c: Option<f32>,
    pub temp_max_c: Option<f32>,
    pub freq_start_mhz: Option<u64>,
    pub freq_min_mhz: Option<u64>,
    pub throttled: bool,
    pub energy_j: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerReport {
    pub threads: usize,
    pub load_seconds: f64,
    /// "cold" or "warm": whether the file was in the page cache before loading.
    pub load_cache: String,
    pub peak_rss_bytes: u64,
    pub tests: Vec<TestRun>,
}

/// Parses llama-bench style lists: "1,2,4".
pub fn parse_list(text: &str, what: &str) -> anyhow::Result<Vec<usize>> {
    text.split(',')
        .map(|part| {
            part.trim().parse::<usize>().map_err(|_| {
                anyhow::anyhow!(
                    "{what} `{text}`: expected comma-separated whole numbers, e.g. 1,2,4"
                )
            })
        })
        .collect()
}

/// The cartesian product of the requested tests and depths, as llama-bench sweeps them.
pub fn test_matrix(
    n_prompt: &[usize],
    n_gen: &[usize],
    pg: &[(usize, usize)],
    depths: &[usize],
) -> Vec<TestSpec> {
    let mut tests = Vec::new();
    for &n_depth in depths {
        for &n in n_prompt.iter().filter(|n| **n > 0) {
            tests.push(TestSpec {
                kind: TestKind::Pp,
                n_prompt: n,
                n_gen: 0,
                n_depth,
            });
        }
        for &n in n_gen.iter().filter(|n| **n > 0) {
            tests.push(TestSpec {
                kind: TestKind::Tg,
                n_prompt: 0,
                n_gen: n,
                n_depth,
            });
        }
        // A pg test needs both parts; the others are plain pp or tg tests.
        for &(p, g) in pg.iter().filter(|(p, g)| *p > 0 && *g > 0) {
            tests.push(TestSpec {
                kind: TestKind::Pg,
                n_prompt: p,
                n_gen: g,
                n_depth,
            });
        }
    }
    tests
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_sweep_as_a_cartesian_product_with_llama_bench_names() {
        let tests = test_matrix(&[512], &[128], &[(512, 128)], &[0, 256]);
        let names: Vec<String> = tests.iter().map(TestSpec::name).collect();
        assert_eq!(
            names,
            [
                "pp512",
                "tg128",
                "pp512+tg128",
                "pp512 @ d256",
                "tg128 @ d256",
                "pp512+tg128 @ d256"
            ]
        );
        assert_eq!(tests[2].tokens(), 640);
        assert_eq!(tests[5].context(), 896);
    }

    #[test]
    fn lists_parse_or_say_what_is_expected() {
        assert_eq!(parse_list("1, 2,4", "-t").unwrap(), [1, 2, 4]);
        let err = parse_list("1,two", "-t").unwrap_err().to_string();
        assert!(
            err.contains("-t `1,two`") && err.contains("comma-separated"),
            "{err}"
        );
    }
}
