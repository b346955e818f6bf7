//! `fitbench run SPEC.toml`: a suite's matrix, one configuration per worker, each row
//! appended as soon as it is measured, so a killed run resumes where it stopped.

use super::args::RunArgs;
use super::bench::{synthetic_path, write_synthetic};
use crate::bench::session::{self, Prepared, SessionPlan};
use crate::bench::{self, monitor};
use crate::catalog;
use crate::estimate::Footprint;
use crate::output;
use crate::probe::{self, BandwidthMode, Hardware, ProbeOptions};
use crate::profiles;
use crate::results::{self, BenchRecord, ResultsFile};
use crate::spec::{Configuration, Cooldown, ModelSource, Suite};
use anyhow::{bail, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A suite model checked and ready to load.
struct ReadyModel {
    /// `SPEC: models[N]`, for errors.
    label: String,
    path: PathBuf,
    /// The twin to write before its first configuration, when it is not cached yet.
    to_synthesize: Option<(String, catalog::Quant)>,
    /// The header checks, done once; a twin not yet written is prepared when it is.
    prepared: Option<Prepared>,
}

fn plan_for(suite: &Suite, model: &ReadyModel, threads: &[usize], force: bool) -> SessionPlan {
    SessionPlan {
        model_path: model.path.clone(),
        threads: threads.to_vec(),
        run: suite.run.clone(),
        force,
    }
}

/// Every check that can fail, before anything runs: files, sha256, architecture, memory.
fn check_models(
    suite: &Suite,
    hardware: &Hardware,
    threads: &[usize],
    force: bool,
) -> anyhow::Result<Vec<ReadyModel>> {
    let spec = suite.path.display();
    // A suite must also fit the box it says it is sized for: otherwise the spec is wrong.
    let profile = match &suite.profile {
        Some(name) => Some((
            name,
            profiles::resolve(name).with_context(|| format!("{spec}: field `profile`"))?,
        )),
        None => None,
    };
    let check_profile = |label: &str, footprint: &Footprint, entry: &ReadyModel| match &profile {
        Some((name, sized_for)) => session::check_fits(
            &format!("{label} on profile {name}, the box this suite is sized for"),
            footprint,
            &plan_for(suite, entry, threads, force),
            sized_for,
        ),
        None => Ok(()),
    };
    let mut ready: Vec<ReadyModel> = Vec::new();
    for model in &suite.models {
        let field = &model.field;
        let entry = match &model.source {
            ModelSource::Twin { id, quant } => {
                let catalog_model = catalog::find(id)?;
                let label = format!("{spec}: {field}: {id} {}", quant.name);
                session::check_supported(
                    &label,
                    &catalog_model.architecture,
                    catalog_model.is_moe(),
                )?;
                let path = synthetic_path(id, *quant)?;
                let entry = ReadyModel {
                    label: format!("{spec}: {field}"),
                    to_synthesize: (!path.is_file()).then(|| (id.clone(), *quant)),
                    path,
                    prepared: None,
                };
                let footprint = Footprint::from_catalog(catalog_model, *quant);
                session::check_fits(
                    &label,
                    &footprint,
                    &plan_for(suite, &entry, threads, force),
                    hardware,
                )?;
                check_profile(&label, &footprint, &entry)?;
                entry
            }
            ModelSource::Gguf { path, sha256 } => {
                if !path.is_file() {
                    bail!(
                        "{spec}: {field}.gguf: {}: no such file\nhint: fix the path, or fetch the model first",
                        path.display()
                    );
                }
                let mut entry = ReadyModel {
                    label: format!("{spec}: {field}"),
                    path: path.clone(),
                    to_synthesize: None,
                    prepared: None,
                };
                let mut ready =
                    session::prepare(&plan_for(suite, &entry, threads, force), hardware)
                        .with_context(|| format!("{spec}: {field}"))?;
                let actual = session::sha256_of(path)?;
                if let Some(expected) = sha256.as_ref().filter(|e| **e != actual) {
                    bail!(
                        "{spec}: {field}.sha256: {} has sha256 {actual}, the spec expects {expected}\nhint: the file changed or is another download; fetch the file the spec names, or update its sha256",
                        path.display()
                    );
                }
                ready.set_hash(actual);
                check_profile(&format!("{spec}: {field}"), ready.footprint(), &entry)?;
                entry.prepared = Some(ready);
                entry
            }
        };
        let name = entry.path.file_name().map(|n| n.to_os_string());
        if ready.iter().any(|r| r.path.file_name() == name.as_deref()) {
            bail!(
                "{spec}: {field}: another model has the file name {}; results rows are matched by file name\nhint: list each model once",
                entry.path.display()
            );
        }
        ready.push(entry);
    }
    Ok(ready)
}

/// What identifies a finished configuration in the results file.
fn config_key(file_name: &str, test: &str, n_threads: usize) -> (String, String, usize) {
    (file_name.to_string(), test.to_string(), n_threads)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn cool_down(cooldown: &Cooldown, bar: &ProgressBar) {
    if cooldown.seconds > 0.0 {
        bar.set_message(format!("cooling down {:.0} s", cooldown.seconds));
        std::thread::sleep(Duration::from_secs_f64(cooldown.seconds));
    }
    let Some(limit) = cooldown.below_c else {
        return;
    };
    let start = Instant::now();
    while let Some(temp) = monitor::cpu_temperature() {
        if temp < limit || start.elapsed().as_secs_f64() >= cooldown.max_wait_seconds {
            break;
        }
        bar.set_message(format!(
            "cooling down: {temp:.0} °C, waiting for {limit:.0} °C"
        ));
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub fn run_command(args: RunArgs) -> anyhow::Result<()> {
    let suite = Suite::load(&args.spec)?;
    bench::device(&suite.run.device)
        .with_context(|| format!("{}: field `device`", args.spec.display()))?;
    let hardware = probe::probe(ProbeOptions {
        bandwidth: BandwidthMode::Cached,
    })?;
    let threads = suite.threads_for(hardware.cpu.physical_cores);
    let mut models = check_models(&suite, &hardware, &threads, args.force)?;
    let output_path = args
        .output
        .clone()
        .unwrap_or_else(|| Path::new("results").join(format!("{}.csv", suite.name)));

    let earlier = if output_path.exists() {
        results::read(&output_path)?
    } else {
        Vec::new()
    };
    // Only this box's rows count: a shared or merged file may hold other boxes' runs.
    let done: HashSet<(String, String, usize)> = earlier
        .iter()
        .filter(|r| r.spec_hash == suite.hash && r.host == hardware.name)
        .map(|r| config_key(&r.model_filename, &r.test, r.n_threads))
        .collect();
    if args.resume && done.is_empty() {
        bail!(
            "--resume: {} holds no rows of spec `{}` as it is now (sha256 {}) from this box ({})\nhint: run without --resume to start it, or give the -o file the earlier run wrote",
            output_path.display(),
            suite.name,
            suite.hash.get(..12).unwrap_or(&suite.hash),
            hardware.name
        );
    }
    let mut results_file = ResultsFile::open(&output_path)?;
    let changed = earlier
        .iter()
        .filter(|r| {
            r.spec_name == suite.name && r.spec_hash != suite.hash && r.host == hardware.name
        })
        .count();
    if changed > 0 {
        eprintln!(
            "note: {changed} row(s) in {} come from an earlier version of spec `{}`; they are kept, and the changed spec is measured anew",
            output_path.display(),
            suite.name
        );
    }

    eprintln!(
        "spec `{}`{}{}",
        suite.name,
        suite
            .profile
            .as_ref()
            .map(|p| format!(" (sized for profile {p})"))
            .unwrap_or_default(),
        if suite.description.is_empty() {
            String::new()
        } else {
            format!(": {}", suite.description)
        }
    );
    let configurations = suite.configurations(&threads);
    let pending: Vec<&Configuration> = configurations
        .iter()
        .filter(|c| {
            !done.contains(&config_key(
                &file_name(&models[c.model].path),
                &c.test.name(),
                c.n_threads,
            ))
        })
        .collect();
    let skipped = configurations.len() - pending.len();
    if skipped > 0 {
        eprintln!(
            "resuming spec `{}`: {skipped} of {} configurations already in {}",
            suite.name,
            configurations.len(),
            output_path.display()
        );
    }

    let bars = MultiProgress::new();
    let matrix = bars.add(ProgressBar::new(configurations.len() as u64));
    matrix.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} configurations, {elapsed} ({eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    matrix.set_prefix(suite.name.clone());
    matrix.set_position(skipped as u64);
    // Resumed configurations took no time here: the ETA counts only this run's pace.
    matrix.reset_eta();
    let current = bars.add(ProgressBar::new_spinner());
    current.enable_steady_tick(Duration::from_millis(120));

    let mut rows: Vec<BenchRecord> = Vec::new();
    for (n, config) in pending.iter().enumerate() {
        if n > 0 {
            cool_down(&suite.cooldown, &current);
        }
        let model = &mut models[config.model];
        if model.prepared.is_none() {
            if let Some((id, quant)) = &model.to_synthesize {
                if !model.path.is_file() {
                    current.set_message(format!("synthesizing {id} {}", quant.name));
                    bars.suspend(|| write_synthetic(id, *quant, &model.path))
                        .with_context(|| model.label.clone())?;
                }
            }
            let plan = plan_for(&suite, model, &threads, args.force);
            let mut ready =
                session::prepare(&plan, &hardware).with_context(|| model.label.clone())?;
            current.set_message(format!("hashing {}", file_name(&model.path)));
            ready.hash(&model.path)?;
            model.prepared = Some(ready);
        }
        let model = &models[config.model];
        let ready = model
            .prepared
            .as_ref()
            .context("internal error: a model was not prepared before its run")?;
        let mut plan = plan_for(&suite, model, &[config.n_threads], args.force);
        plan.run.tests = vec![config.test.clone()];
        let label = format!(
            "{} {} at {} thread(s)",
            file_name(&model.path),
            config.test.name(),
            config.n_threads
        );
        current.set_message(label.clone());
        let report = session::run_threads(&plan, ready, config.n_threads, |m| {
            current.set_message(format!("{label}: {m}"))
        })
        .with_context(|| format!("{}: {label}", model.label))?;
        for mut record in session::records(&plan, ready, &hardware, &report) {
            record.spec_name = suite.name.clone();
            record.spec_hash = suite.hash.clone();
            results_file.append(&record)?;
            rows.push(record);
        }
        matrix.inc(1);
    }
    current.finish_and_clear();
    matrix.finish_and_clear();

    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        eprintln!(
            "spec `{}`: every configuration is already in {}; nothing to run",
            suite.name,
            output_path.display()
        );
        return Ok(());
    }
    println!("{}", output::bench_table(&rows));
    eprintln!(
        "spec `{}`: ran {} configuration(s), {} were already done; appended to {}",
        suite.name,
        rows.len(),
        skipped,
        output_path.display()
    );
    if rows.iter().any(|r| r.throttled) {
        eprintln!("warning: the CPU throttled during a test; its numbers understate this box");
    }
    Ok(())
}
