//! `bench`, `synth` and the hidden worker: the commands that run models.

use super::args::{BenchArgs, SynthArgs};
use crate::bench::session::{self, SessionPlan};
use crate::bench::{self, parse_list, synth, test_matrix, RunSettings, WorkerSpec};
use crate::catalog::{self, Quant};
use crate::estimate::Footprint;
use crate::output;
use crate::probe::{self, BandwidthMode, ProbeOptions};
use crate::results::{BenchRecord, ResultsFile};
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

fn resolve_quant(name: &str) -> anyhow::Result<Quant> {
    Quant::parse(name).with_context(|| {
        format!(
            "--quant {name}: unknown quantization; use one of {}",
            Quant::names().join(", ")
        )
    })
}

/// The cached synthetic twin of a catalog model, written on first use.
pub(super) fn synthetic_path(model: &str, quant: Quant) -> anyhow::Result<PathBuf> {
    let dir = crate::cache::cache_dir().context("no cache folder: set FITBENCH_CACHE_DIR")?;
    Ok(dir
        .join("synthetic")
        .join(format!("{model}-{}.gguf", quant.name)))
}

pub(super) fn write_synthetic(
    model: &str,
    quant: Quant,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let spec = catalog::find(model)?;
    let bar = ProgressBar::new(spec.params);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {percent}% ({eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("synthesizing {} {}", spec.id, quant.name));
    synth::write(spec, quant, out, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    Ok(())
}

pub fn synth_command(args: SynthArgs) -> anyhow::Result<()> {
    let quant = resolve_quant(&args.quant)?;
    let spec = catalog::find(&args.model)?;
    let out = match args.output {
        Some(path) => path,
        None => synthetic_path(&spec.id, quant)?,
    };
    write_synthetic(&spec.id, quant, &out)?;
    println!("{}", out.display());
    Ok(())
}

fn percent(text: &str) -> anyhow::Result<f64> {
    let value: f64 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|_| anyhow::anyhow!("--target-ci {text}: give a percentage such as 5%"))?;
    if !(value > 0.0 && value < 100.0) {
        bail!("--target-ci {text}: give a percentage between 0 and 100");
    }
    Ok(value / 100.0)
}

pub fn bench_command(args: BenchArgs) -> anyhow::Result<()> {
    // Fail on an unusable device now, not in every worker.
    bench::device(&args.device)?;
    let hardware = probe::probe(ProbeOptions {
        bandwidth: BandwidthMode::Cached,
    })?;
    let threads = match &args.threads {
        Some(list) => parse_list(list, "-t")?,
        None => vec![hardware.cpu.physical_cores.max(1) as usize],
    };
    if threads.contains(&0) {
        bail!("-t: thread counts start at 1");
    }
    let pg = args
        .pg
        .iter()
        .map(|pair| match parse_list(pair, "--pg")?.as_slice() {
            [p, g] => Ok((*p, *g)),
            _ => bail!("--pg {pair}: give a prompt and a generation length, e.g. 512,128"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tests = test_matrix(
        &parse_list(&args.n_prompt, "-p")?,
        &parse_list(&args.n_gen, "-n")?,
        &pg,
        &parse_list(&args.n_depth, "-d")?,
    );
    if tests.is_empty() {
        bail!("no tests: give -p, -n or --pg a length above 0");
    }
    let repetitions = args.repetitions.max(1);
    let mut plan = SessionPlan {
        model_path: PathBuf::new(),
        threads,
        run: RunSettings {
            tests,
            repetitions,
            max_repetitions: args.max_repetitions.max(repetitions),
            target_ci: args.target_ci.as_deref().map(percent).transpose()?,
            warmup: args.warmup,
            seed: args.seed,
            device: args.device.clone(),
        },
        force: args.force,
    };
    match (&args.gguf, &args.model) {
        (Some(path), _) => {
            if !path.is_file() {
                bail!("{}: no such file", path.display());
            }
            plan.model_path = path.clone();
        }
        (None, Some(model)) => {
            let quant = resolve_quant(args.quant.as_deref().unwrap_or_default())?;
            let spec = catalog::find(model)?;
            let label = format!("{} {}", spec.id, quant.name);
            // Check before synthesizing: a twin of a model that cannot run is gigabytes wasted.
            session::check_supported(&label, &spec.architecture, spec.is_moe())?;
            session::check_fits(
                &label,
                &Footprint::from_catalog(spec, quant),
                &plan,
                &hardware,
            )?;
            plan.model_path = synthetic_path(&spec.id, quant)?;
            if !plan.model_path.is_file() {
                write_synthetic(&spec.id, quant, &plan.model_path)?;
            }
        }
        (None, None) => bail!("give --gguf FILE or --model ID --quant Q"),
    }
    let mut prepared = session::prepare(&plan, &hardware)?;
    if args.sample && prepared.is_synthetic() {
        bail!(
            "{}: --sample needs real weights: this synthetic twin only produces noise",
            plan.model_path.display()
        );
    }
    // Open the results file before the long work: a bad -o fails now, not after minutes.
    let mut results = ResultsFile::open(&args.output)?;
    prepared.hash(&plan.model_path)?;
    if args.sample {
        let (prompt, answer) = crate::bench::sample::answer(&plan.model_path, 24)?;
        if answer.is_empty() {
            bail!("--sample: the model produced no text for \"{prompt}\"");
        }
        eprintln!("sample: {prompt} → {answer}");
    }
    let mut records: Vec<BenchRecord> = Vec::new();
    for &threads in &plan.threads {
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        bar.set_message(format!("loading with {threads} thread(s)"));
        let report = session::run_threads(&plan, &prepared, threads, |m| {
            bar.set_message(m.to_string())
        })?;
        bar.finish_and_clear();
        for record in session::records(&plan, &prepared, &hardware, &report) {
            results.append(&record)?;
            records.push(record);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else if args.markdown {
        println!("{}", output::bench_markdown(&records));
    } else {
        println!("{}", output::bench_table(&records));
        eprintln!(
            "appended {} row(s) to {}",
            records.len(),
            args.output.display()
        );
        if records.iter().any(|r| r.throttled) {
            eprintln!("warning: the CPU throttled during a test; its numbers understate this box");
        }
    }
    Ok(())
}

/// The hidden worker: spec on stdin, report on stdout, progress on stderr.
pub fn bench_worker_command() -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let spec: WorkerSpec = serde_json::from_str(&input)?;
    let report = bench::run_worker(&spec)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
