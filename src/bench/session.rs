//! A bench session: checks the model will fit, then runs one worker process per thread count
//! and turns what they measured into result records, each beside its estimate.

use super::{TestSpec, WorkerReport, WorkerSpec};
use crate::estimate::{self, EstimateOptions, Fit, Footprint};
use crate::gguf::GgufFile;
use crate::output::format_bytes;
use crate::probe::Hardware;
use crate::results::{rfc3339, BenchRecord, SCHEMA_VERSION};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Everything a session needs besides the box.
#[derive(Debug, Clone)]
pub struct SessionPlan {
    pub model_path: PathBuf,
    pub synthetic: bool,
    pub tests: Vec<TestSpec>,
    pub threads: Vec<usize>,
    pub repetitions: usize,
    pub max_repetitions: usize,
    pub target_ci: Option<f64>,
    pub warmup: usize,
    pub seed: u64,
    pub device: String,
    /// Run even when the estimate says the model would not fit.
    pub force: bool,
}

/// The estimate checked before loading, and the file facts every record carries.
pub struct Prepared {
    file: GgufFile,
    footprint: Footprint,
    sha256: String,
    pub peak_estimate_bytes: u64,
}

/// Reads the header, checks the architecture, and refuses what would swap.
pub fn prepare(plan: &SessionPlan, hw: &Hardware) -> anyhow::Result<Prepared> {
    let file = GgufFile::open(&plan.model_path)?;
    let arch = file.architecture().unwrap_or("unknown").to_string();
    if !super::model::SUPPORTED.iter().any(|(a, _)| *a == arch) {
        anyhow::bail!(
            "{}: {}",
            plan.model_path.display(),
            super::model::unsupported_message(&arch)
        );
    }
    let footprint = Footprint::from_gguf(&file)
        .map_err(|p| anyhow::anyhow!("{}: {p}", plan.model_path.display()))?;
    // candle runs the whole prompt as one batch, so the batch is the longest prompt.
    let context = plan
        .tests
        .iter()
        .map(TestSpec::context)
        .max()
        .unwrap_or(1)
        .max(1);
    let ubatch = plan
        .tests
        .iter()
        .map(|t| t.n_prompt)
        .max()
        .unwrap_or(1)
        .max(1);
    let estimate = estimate::estimate(
        &footprint,
        hw,
        &EstimateOptions {
            context: Some(context as u64),
            ubatch: Some(ubatch as u64),
            cpu_only: plan.device == "cpu",
            ..EstimateOptions::default()
        },
    );
    if !matches!(estimate.placement.fit, Fit::FitsInRam | Fit::FitsInVram) && !plan.force {
        anyhow::bail!(
            "{}: refusing to load: it needs about {} at {} tokens of context, and {} is available without swapping\nhint: pick a smaller quantization or model, shorten -p/-n/-d, or pass --force to run anyway",
            plan.model_path.display(),
            format_bytes(estimate.memory.total_bytes),
            context,
            format_bytes(estimate.placement.ram_budget_bytes)
        );
    }
    Ok(Prepared {
        sha256: sha256_of(&plan.model_path)?,
        peak_estimate_bytes: estimate.memory.total_bytes,
        file,
        footprint,
    })
}

fn sha256_of(path: &std::path::Path) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Runs the worker for `threads`, calling `progress` with each line it reports.
pub fn run_threads(
    plan: &SessionPlan,
    prepared: &Prepared,
    threads: usize,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<WorkerReport> {
    let spec = WorkerSpec {
        model_path: plan.model_path.clone(),
        vocab_size: prepared.footprint.vocab_size.clamp(1, u64::from(u32::MAX)) as u32,
        tests: plan.tests.clone(),
        threads,
        repetitions: plan.repetitions,
        max_repetitions: plan.max_repetitions.max(plan.repetitions),
        target_ci: plan.target_ci,
        warmup: plan.warmup,
        seed: plan.seed,
        device: plan.device.clone(),
    };
    let mut child = Command::new(std::env::current_exe()?)
        .arg("bench-worker")
        .env("CANDLE_NUM_THREADS", threads.to_string())
        .env("RAYON_NUM_THREADS", threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(serde_json::to_string(&spec)?.as_bytes())?;
    }
    let mut errors = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            match line.strip_prefix("@progress ") {
                Some(message) => progress(message),
                None => errors.push(line),
            }
        }
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        anyhow::bail!(
            "the benchmark worker ({threads} threads) failed: {}",
            errors.join("\n")
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// One record per test of a worker's report.
pub fn records(
    plan: &SessionPlan,
    prepared: &Prepared,
    hw: &Hardware,
    report: &WorkerReport,
) -> Vec<BenchRecord> {
    let f = &prepared.footprint;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    report
        .tests
        .iter()
        .map(|run| {
            let t = &run.test;
            let summary = super::stats::summarize(&run.samples_ts);
            let estimate = estimate::estimate(
                f,
                hw,
                &EstimateOptions {
                    context: Some(t.context().max(1) as u64),
                    ubatch: Some(t.n_prompt.max(1) as u64),
                    cpu_only: plan.device == "cpu",
                    ..EstimateOptions::default()
                },
            );
            // A pg test is a prompt pass plus generation: add their times.
            let predicted = t.tokens() as f64
                / (t.n_prompt as f64 / estimate.speed.pp_tps
                    + t.n_gen as f64 / estimate.speed.tg_tps);
            BenchRecord {
                schema_version: SCHEMA_VERSION,
                timestamp: rfc3339(now),
                host: hw.name.clone(),
                cpu_model: hw.cpu.model.clone(),
                cpu_arch: hw.cpu.arch.clone(),
                cpu_simd: hw.cpu.simd.join(" "),
                gpu: hw
                    .gpus
                    .iter()
                    .map(|g| g.name.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
                ram_total_bytes: hw.memory.total_bytes,
                fitbench_version: env!("CARGO_PKG_VERSION").into(),
                fitbench_commit: option_env!("FITBENCH_COMMIT").unwrap_or("unknown").into(),
                candle_version: option_env!("FITBENCH_CANDLE_VERSION")
                    .unwrap_or("unknown")
                    .into(),
                backend: plan.device.split(':').next().unwrap_or("cpu").into(),
                model_filename: plan
                    .model_path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                model_sha256: prepared.sha256.clone(),
                model_type: f.architecture.clone(),
                model_size: prepared.file.tensor_bytes(),
                model_n_params: prepared.file.parameters(),
                quant: f.quant.clone(),
                synthetic: plan.synthetic,
                test: t.name(),
                n_prompt: t.n_prompt,
                n_gen: t.n_gen,
                n_depth: t.n_depth,
                n_threads: report.threads,
                repetitions: run.samples_ts.len(),
                warmup: plan.warmup,
                seed: plan.seed,
                avg_ts: summary.mean,
                stddev_ts: summary.stddev,
                median_ts: summary.median,
                ci95_halfwidth_ts: summary.ci95_halfwidth,
                samples_ts: run
                    .samples_ts
                    .iter()
                    .map(|s| format!("{s:.3}"))
                    .collect::<Vec<_>>()
                    .join(";"),
                outliers: summary.outliers,
                ttft_ms: run.ttft_ms,
                itl_p50_ms: run.itl_p50_ms,
                itl_p95_ms: run.itl_p95_ms,
                load_ms: report.load_seconds * 1000.0,
                load_cache: report.load_cache.clone(),
                peak_rss_bytes: report.peak_rss_bytes,
                temp_start_c: run.temp_start_c,
                temp_max_c: run.temp_max_c,
                freq_start_mhz: run.freq_start_mhz,
                freq_min_mhz: run.freq_min_mhz,
                throttled: run.throttled,
                energy_j: run.energy_j,
                predicted_ts: predicted,
                predicted_memory_bytes: estimate.memory.total_bytes,
                measured_over_predicted: summary.mean / predicted,
            }
        })
        .collect()
}
