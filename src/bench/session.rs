//! A bench session: checks the model will fit, then runs one worker process per thread count
//! and turns what they measured into result records, each beside its estimate.

use super::{RunSettings, TestSpec, WorkerReport, WorkerSpec};
use crate::estimate::{self, EstimateOptions, Fit, Footprint};
use crate::gguf::GgufFile;
use crate::output::format_bytes;
use crate::probe::Hardware;
use crate::results::{rfc3339, BenchRecord, SCHEMA_VERSION};
use anyhow::Context;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Everything a session needs besides the box.
#[derive(Debug, Clone)]
pub struct SessionPlan {
    pub model_path: PathBuf,
    pub threads: Vec<usize>,
    pub run: RunSettings,
    /// Run even when the estimate says the model would not fit.
    pub force: bool,
}

/// The estimate checked before loading, and the file facts every record carries.
pub struct Prepared {
    file: GgufFile,
    footprint: Footprint,
    sha256: String,
}

/// Refuses an architecture the runner cannot load, listing those it can. `merged_experts`:
/// the model keeps its MoE experts in `ffn_*_exps` tensors, as llama.cpp has written them
/// since 2024; candle 0.11's llama loader reads only the older one-tensor-per-expert layout.
pub fn check_supported(label: &str, arch: &str, merged_experts: bool) -> anyhow::Result<()> {
    if !super::model::SUPPORTED.iter().any(|(a, _)| *a == arch) {
        anyhow::bail!("{label}: {}", super::model::unsupported_message(arch));
    }
    if merged_experts {
        anyhow::bail!(
            "{label}: this mixture-of-experts model stores its experts merged (ffn_*_exps tensors), which candle 0.11 cannot load; it reads only the older per-expert layout (blk.N.ffn_gate.E.weight)\nhint: measure this model with llama.cpp's llama-bench; fitbench's estimate for it is still available (`fitbench inspect`)"
        );
    }
    Ok(())
}

/// Refuses tests longer than the model runs, and a model that would not fit in memory
/// (RAM without swap, or VRAM on a GPU) unless the plan forces it.
pub fn check_fits(
    label: &str,
    footprint: &Footprint,
    plan: &SessionPlan,
    hw: &Hardware,
) -> anyhow::Result<()> {
    let arch = footprint.architecture.as_str();
    // candle runs the whole prompt as one batch, so the batch is the longest prompt.
    let context = plan
        .run
        .tests
        .iter()
        .map(TestSpec::context)
        .max()
        .unwrap_or(1)
        .max(1);
    let ubatch = plan
        .run
        .tests
        .iter()
        .map(|t| t.n_prompt)
        .max()
        .unwrap_or(1)
        .max(1);
    // candle's llama precomputes rotary embeddings for 4096 positions only.
    let limit = if arch == "llama" {
        footprint.max_context.min(4096)
    } else {
        footprint.max_context
    };
    if context as u64 > limit {
        anyhow::bail!(
            "{label}: a test needs {context} tokens of context (-d + -p + -n), and this {arch} model runs at most {limit} here\nhint: lower -d, -p or -n"
        );
    }
    let estimate = estimate::estimate(
        footprint,
        hw,
        &EstimateOptions {
            context: Some(context as u64),
            ubatch: Some(ubatch as u64),
            cpu_only: plan.run.device == "cpu",
            ..EstimateOptions::default()
        },
    );
    // candle puts the whole model on the device it runs on: a GPU run needs it all in VRAM.
    let (fits, budget, memory) = if plan.run.device != "cpu" {
        (
            estimate.placement.fit == Fit::FitsInVram,
            estimate.placement.vram_budget_bytes,
            "VRAM",
        )
    } else {
        (
            estimate.placement.fit == Fit::FitsInRam,
            estimate.placement.ram_budget_bytes,
            "RAM without swapping",
        )
    };
    if !fits && !plan.force {
        anyhow::bail!(
            "{label}: refusing to load: it needs about {} at {context} tokens of context, and {} of {memory} is available\nhint: pick a smaller quantization or model, shorten -p/-n/-d, or pass --force to run anyway",
            format_bytes(estimate.memory.total_bytes),
            format_bytes(budget)
        );
    }
    Ok(())
}

/// Reads the header and checks it can run here; `Prepared::hash` completes it.
pub fn prepare(plan: &SessionPlan, hw: &Hardware) -> anyhow::Result<Prepared> {
    let file = GgufFile::open(&plan.model_path)?;
    let label = plan.model_path.display().to_string();
    let arch = file.architecture().unwrap_or("unknown");
    let merged_experts = file.tensors.iter().any(|t| t.name.contains("_exps"));
    check_supported(&label, arch, merged_experts)?;
    let footprint = Footprint::from_gguf(&file).map_err(|p| anyhow::anyhow!("{label}: {p}"))?;
    check_fits(&label, &footprint, plan, hw)?;
    Ok(Prepared {
        sha256: String::new(),
        file,
        footprint,
    })
}

impl Prepared {
    /// Hashes the model file for the records; reads it whole, so it comes after the checks.
    pub fn hash(&mut self, path: &std::path::Path) -> anyhow::Result<()> {
        self.sha256 = sha256_of(path)?;
        Ok(())
    }

    /// Whether the file is a twin `fitbench synth` wrote, whatever path it was given by.
    pub fn is_synthetic(&self) -> bool {
        self.file.is_synthetic()
    }

    /// The memory and shape facts the checks used.
    pub fn footprint(&self) -> &Footprint {
        &self.footprint
    }

    /// Uses a hash already computed (a spec's sha256 check read the file once).
    pub fn set_hash(&mut self, sha256: String) {
        self.sha256 = sha256;
    }
}

pub fn sha256_of(path: &std::path::Path) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    std::io::copy(&mut file, &mut hasher).with_context(|| path.display().to_string())?;
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

        threads,
        run: plan.run.clone(),
    };
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("bench-worker")
        .env("CANDLE_NUM_THREADS", threads.to_string())
        .env("RAYON_NUM_THREADS", threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut command);
    let mut child = command.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(serde_json::to_string(&spec)?.as_bytes())?;
    }
    // stdout is drained on its own thread: a report larger than the pipe buffer must not
    // block the worker while this thread waits for stderr to close.
    let mut stdout = child.stdout.take().context("worker stdout")?;
    let reader = std::thread::spawn(move || {
        let mut report = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut report).map(|_| report)
    });
    let mut errors = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            match line.strip_prefix("@progress ") {
                Some(message) => progress(message),
                None => errors.push(line),
            }
        }
    }
    let status = child.wait()?;
    let report = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reading the worker's report failed"))??;
    if !status.success() {
        let why = if errors.is_empty() {
            format!("{status}; a worker killed without a message most often ran out of memory: try a smaller model or quantization")
        } else {
            errors.join("\n")
        };
        anyhow::bail!("the benchmark worker ({threads} threads) failed: {why}");
    }
    serde_json::from_slice(&report)
        .with_context(|| format!("the benchmark worker ({threads} threads) returned no report"))
}

/// A worker outliving a killed run would keep loading the CPU under the next run's
/// measurements.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

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
                    cpu_only: plan.run.device == "cpu",
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
                spec_name: String::new(),
                spec_hash: String::new(),
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
                vram_total_bytes: hw
                    .gpus
                    .iter()
                    .map(|g| g.vram_total_bytes)
                    .max()
                    .unwrap_or(0),
                fitbench_version: env!("CARGO_PKG_VERSION").into(),
                fitbench_commit: option_env!("FITBENCH_COMMIT").unwrap_or("unknown").into(),
                candle_version: option_env!("FITBENCH_CANDLE_VERSION")
                    .unwrap_or("unknown")
                    .into(),
                backend: plan.run.device.split(':').next().unwrap_or("cpu").into(),
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
                // From the file, so a twin benched by its path is marked as one by its id.
                synthetic: prepared.is_synthetic(),
                test: t.name(),
                n_prompt: t.n_prompt,
                n_gen: t.n_gen,
                n_depth: t.n_depth,
                n_threads: report.threads,
                repetitions: run.samples_ts.len(),
                warmup: plan.run.warmup,
                seed: plan.run.seed,
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
