//! The measuring loop, run inside a worker process that owns one thread count (candle sizes
//! its thread pool once per process, from CANDLE_NUM_THREADS).

use super::model::{Model, UBATCH};
use super::monitor::{self, Watch};
use super::stats::{percentile, summarize};
use super::{TestKind, TestRun, TestSpec, WorkerReport, WorkerSpec};
use candle_core::{Device, Tensor};
use std::io::Write;
use std::time::Instant;

/// A small, seeded generator: token ids must be random (as llama-bench's are, so MoE routing
/// is realistic) and reproducible from the recorded seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn tokens(&mut self, n: usize, vocab: u32) -> Vec<u32> {
        (0..n)
            .map(|_| (self.next() % u64::from(vocab.max(1))) as u32)
            .collect()
    }
}

/// Progress lines the parent turns into its progress bar.
fn progress(message: &str) {
    let _ = writeln!(std::io::stderr(), "@progress {message}");
}

/// `cpu`, `cuda:N` or `metal:N`; a GPU device needs a build with candle's backend for it.
pub fn device(name: &str) -> anyhow::Result<Device> {
    let ordinal = |prefix: &str| -> anyhow::Result<usize> {
        let rest = name
            .strip_prefix(prefix)
            .unwrap_or("")
            .trim_start_matches(':');
        if rest.is_empty() {
            Ok(0)
        } else {
            rest.parse().map_err(|_| {
                anyhow::anyhow!("--device {name}: expected {prefix}:N, e.g. {prefix}:0")
            })
        }
    };
    let (device, feature) = if name == "cpu" {
        return Ok(Device::Cpu);
    } else if name.starts_with("cuda") {
        (Device::new_cuda(ordinal("cuda")?), "cuda")
    } else if name.starts_with("metal") {
        (Device::new_metal(ordinal("metal")?), "metal")
    } else {
        anyhow::bail!("--device {name}: use cpu, cuda:N or metal:N");
    };
    device.map_err(|e| {
        anyhow::anyhow!("--device {name}: {e}\nhint: build fitbench with `cargo build --release --features {feature}` on a box with the {feature} toolkit")
    })
}

pub fn run_worker(spec: &WorkerSpec) -> anyhow::Result<WorkerReport> {
    keep_freed_memory();
    let device = device(&spec.run.device)?;
    let cache_share = monitor::page_cache_share(&spec.model_path);
    let started = Instant::now();
    let positions = spec
        .run
        .tests
        .iter()
        .map(TestSpec::context)
        .max()
        .unwrap_or(1);
    let mut model = Model::load(&spec.model_path, &device, positions)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let mut rng = SplitMix64(spec.run.seed);
    let mut tests = Vec::new();
    for test in &spec.run.tests {
        tests.push(run_test(&mut model, &device, test, spec, &mut rng)?);
    }
    Ok(WorkerReport {
        threads: spec.threads,
        load_seconds,
        load_cache: match cache_share {
            Some(share) if share >= 0.9 => "warm",
            Some(_) => "cold",
            None => "unknown",
        }
        .into(),
        peak_rss_bytes: monitor::peak_rss_bytes().unwrap_or(0),
        tests,
    })
}

/// Every op allocates its output afresh. glibc serves buffers of a few MB with their own
/// mmap and unmaps them when freed, so each op faulted its pages back in: a third of a
/// TinyLlama pp512 pass was page faults and page clearing (perf). Freed buffers stay with
/// the process instead (up to 32 MB each, and 1 GiB unreturned), as llama.cpp keeps one
/// compute buffer for the whole run. Peak RSS barely moves: the same buffers are reused.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before the model exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Timings of one repetition.
struct Rep {
    seconds: f64,
    ttft_seconds: Option<f64>,
    token_seconds: Vec<f64>,
}

fn run_test(
    model: &mut Model,
    device: &Device,
    test: &TestSpec,
    spec: &WorkerSpec,
    rng: &mut SplitMix64,
) -> anyhow::Result<TestRun> {
    let name = test.name();
    for i in 0..spec.run.warmup {
        progress(&format!(
            "{name} t{} warm-up {}/{}",
            spec.threads,
            i + 1,
            spec.run.warmup
        ));
        one_rep(model, device, test, spec.vocab_size, rng)?;
    }
    let mut watch = Watch::start();
    let mut reps: Vec<Rep> = Vec::new();
    let mut samples: Vec<f64> = Vec::new();
    loop {
        progress(&format!("{name} t{} rep {}", spec.threads, reps.len() + 1));
        let rep = one_rep(model, device, test, spec.vocab_size, rng)?;
        samples.push(test.tokens() as f64 / rep.seconds);
        reps.push(rep);
        watch.sample();
        let n = reps.len();
        let converged = match spec.run.target_ci {
            Some(target) => {
                let s = summarize(&samples);
                s.ci95_halfwidth <= target * s.mean
            }
            None => true,
        };
        if n >= spec.run.max_repetitions || (n >= spec.run.repetitions && converged) {
            break;
        }
    }
    watch.finish();
    let token_ms: Vec<f64> = reps
        .iter()
        .flat_map(|r| r.token_seconds.iter().map(|s| s * 1000.0))
        .collect();
    let ttft_ms: Vec<f64> = reps
        .iter()
        .filter_map(|r| r.ttft_seconds.map(|s| s * 1000.0))
        .collect();
    Ok(TestRun {
        test: test.clone(),
        samples_ts: samples,
        ttft_ms: (!ttft_ms.is_empty()).then(|| percentile(&ttft_ms, 50.0)),
        itl_p50_ms: (!token_ms.is_empty()).then(|| percentile(&token_ms, 50.0)),
        itl_p95_ms: (!token_ms.is_empty()).then(|| percentile(&token_ms, 95.0)),
        temp_start_c: watch.temp_start_c,
        temp_max_c: watch.temp_max_c,
        freq_start_mhz: watch.freq_start_mhz,
        freq_min_mhz: watch.freq_min_mhz,
        throttled: watch.throttled(),
        energy_j: watch.energy_j,
    })
}

fn one_rep(
    model: &mut Model,
    device: &Device,
    test: &TestSpec,
    vocab: u32,
    rng: &mut SplitMix64,
) -> anyhow::Result<Rep> {
    model.clear();
    // Fill the context to the depth first: not timed, as in llama-bench's -d.
    if test.n_depth > 0 {
        let fill = rng.tokens(test.n_depth, vocab);
        wait(&model.prefill(&fill, 0, UBATCH, device)?)?;
    }
    let mut pos = test.n_depth;
    let started = Instant::now();
    let mut ttft_seconds = None;
    if test.n_prompt > 0 {
        let prompt = rng.tokens(test.n_prompt, vocab);
        wait(&model.prefill(&prompt, pos, UBATCH, device)?)?;
        pos += test.n_prompt;
        if test.kind == TestKind::Pg {
            ttft_seconds = Some(started.elapsed().as_secs_f64());
        }
    }
    let mut token_seconds = Vec::with_capacity(test.n_gen);
    for _ in 0..test.n_gen {
        let token_start = Instant::now();
        let token = Tensor::new(rng.tokens(1, vocab), device)?.unsqueeze(0)?;
        wait(&model.forward(&token, pos)?)?;
        pos += 1;
        token_seconds.push(token_start.elapsed().as_secs_f64());
    }
    Ok(Rep {
        seconds: started.elapsed().as_secs_f64(),
        ttft_seconds,
        token_seconds,
    })
}

/// Reads the logits back, so asynchronous devices finish before the clock stops.
fn wait(logits: &Tensor) -> candle_core::Result<()> {
    logits.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(())
}
