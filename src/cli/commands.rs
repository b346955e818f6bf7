//! One function per subcommand: gather values from the modules, then print a table or JSON.

use super::args::{
    Cli, Command, CompareArgs, EstimateArgs, InspectArgs, MergeArgs, ModelsArgs, ProbeArgs,
    ProfilesArgs, RecommendArgs, ReportArgs, ScanArgs, TargetArgs,
};
use crate::catalog::{self, Quant};
use crate::estimate::{self, Efficiencies, EstimateOptions, Footprint, KvType};
use crate::gguf::GgufFile;
use crate::output;
use crate::probe::{self, BandwidthMode, Hardware, ProbeOptions};
use crate::profiles;
use crate::recommend::{self, RecommendOptions};
use crate::report;
use crate::scan;
use anyhow::bail;
use serde::Serialize;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => recommend_command(RecommendArgs::default()),
        Some(Command::Recommend(args)) => recommend_command(args),
        Some(Command::Probe(args)) => probe_command(args),
        Some(Command::Profiles(args)) => profiles_command(args),
        Some(Command::Models(args)) => models_command(args),
        Some(Command::Inspect(args)) => inspect_command(args),
        Some(Command::Estimate(args)) => estimate_command(args),
        Some(Command::Scan(args)) => scan_command(args),
        Some(Command::Bench(args)) => super::bench::bench_command(args),
        Some(Command::Synth(args)) => super::bench::synth_command(args),
        Some(Command::Run(args)) => super::run::run_command(args),
        Some(Command::Compare(args)) => compare_command(args),
        Some(Command::Merge(args)) => merge_command(args),
        Some(Command::Report(args)) => report_command(args),
        Some(Command::BenchWorker) => super::bench::bench_worker_command(),
    }
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn recommend_command(args: RecommendArgs) -> anyhow::Result<()> {
    if args.ctx == Some(0) {
        bail!("--ctx 0: the context must be at least 1 token");
    }
    if args.min_tps.is_nan() || args.min_tps < 0.0 {
        bail!(
            "--min-tps {}: give a speed of 0 or more tokens per second",
            args.min_tps
        );
    }
    let hardware = target_hardware(&TargetArgs {
        profile: args.profile.clone(),
        ..TargetArgs::default()
    })?;
    let recommendation = recommend::recommend(
        &hardware,
        &RecommendOptions {
            task: args.task,
            context: args.ctx,
            min_tps: args.min_tps,
            license: args.license,
            cpu_only: args.cpu_only,
            top: args.top,
            efficiencies: efficiencies_for(&hardware),
        },
    );
    if args.json {
        return print_json(&recommendation);
    }
    let text = if args.markdown {
        output::recommendation_markdown(&recommendation)
    } else {
        output::recommendation_text(&recommendation)
    };
    println!("{text}");
    Ok(())
}

fn probe_command(args: ProbeArgs) -> anyhow::Result<()> {
    if let Some(name) = &args.save {
        profiles::validate_name(name)?;
    }
    let bandwidth = if args.bandwidth {
        BandwidthMode::Measure
    } else {
        BandwidthMode::Skip
    };
    let mut hardware = probe::probe(ProbeOptions { bandwidth })?;
    if let Some(name) = args.save {
        hardware.origin = format!("probe of host {}", hardware.name);
        hardware.name = name;
        let path = profiles::save(&hardware, &profiles::profile_dir(), args.force)?;
        eprintln!("saved {}", path.display());
    }
    print_hardware(&hardware, args.json)
}

fn print_hardware(hardware: &Hardware, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(hardware)
    } else {
        println!("{}", output::hardware_table(hardware));
        Ok(())
    }
}

fn profiles_command(args: ProfilesArgs) -> anyhow::Result<()> {
    if let Some(name) = &args.name {
        return print_hardware(&profiles::resolve(name)?, args.json);
    }
    let all = profiles::list()?;
    if args.json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|p| {
                let mut value = serde_json::to_value(&p.hardware)?;
                value["source"] = p.source.to_string().into();
                Ok(value)
            })
            .collect::<serde_json::Result<_>>()?;
        print_json(&rows)
    } else {
        println!("{}", output::profiles_table(&all));
        Ok(())
    }
}

fn models_command(args: ModelsArgs) -> anyhow::Result<()> {
    match (args.quants, args.json) {
        (true, true) => print_json(&output::quant_rows()),
        (true, false) => {
            println!("{}", output::quants_table());
            Ok(())
        }
        (false, true) => print_json(&catalog::models()),
        (false, false) => {
            println!("{}", output::models_table(catalog::models()));
            Ok(())
        }
    }
}

/// The box to answer for: a profile, or this one with its (cached) memory bandwidth.
fn target_hardware(target: &TargetArgs) -> anyhow::Result<Hardware> {
    match &target.profile {
        Some(name) => Ok(profiles::resolve(name)?),
        None => probe::probe(ProbeOptions {
            bandwidth: BandwidthMode::Cached,
        }),
    }
}

/// Bench results in `results/` (or `$FITBENCH_RESULTS_DIR`) measured on this box replace
/// the published efficiencies.
fn efficiencies_for(hardware: &Hardware) -> Efficiencies {
    let dir = std::env::var_os("FITBENCH_RESULTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "results".into());
    let (records, problems) = estimate::load_results(&dir);
    for problem in problems {
        eprintln!("warning: not calibrating from {problem}");
    }
    estimate::calibrate(
        &records,
        &hardware.name,
        hardware.cpu.physical_cores as usize,
    )
    .unwrap_or_default()
}

fn estimate_options(target: &TargetArgs, hardware: &Hardware) -> anyhow::Result<EstimateOptions> {
    let Some(kv_type) = KvType::parse(&target.kv_type) else {
        bail!(
            "--kv-type {}: unknown KV cache type; use f16 or q8_0",
            target.kv_type
        );
    };
    if target.ctx == Some(0) || target.ubatch == Some(0) {
        bail!("--ctx and --ubatch must be at least 1 token");
    }
    Ok(EstimateOptions {
        context: target.ctx,
        ubatch: target.ubatch,
        kv_type,
        cpu_only: target.cpu_only,
        efficiencies: efficiencies_for(hardware),
    })
}

#[derive(Serialize)]
struct InspectReport<'a> {
    file: output::FileSummary,
    hardware: &'a str,
    estimate: estimate::Estimate,
    #[serde(skip_serializing_if = "Option::is_none")]
    tensors: Option<&'a [crate::gguf::TensorInfo]>,
}

fn inspect_command(args: InspectArgs) -> anyhow::Result<()> {
    let file = GgufFile::open(&args.file)?;
    let footprint = Footprint::from_gguf(&file).map_err(|problem| {
        anyhow::anyhow!(
            "{}: {problem}\nhint: fitbench sizes a model from its GGUF metadata; convert it again with a current llama.cpp",
            args.file.display()
        )
    })?;
    let hardware = target_hardware(&args.target)?;
    let options = estimate_options(&args.target, &hardware)?;
    let estimate = estimate::estimate(&footprint, &hardware, &options);
    if args.json {
        return print_json(&InspectReport {
            file: output::FileSummary::new(&file, &footprint),
            hardware: &hardware.name,
            estimate,
            tensors: args.tensors.then_some(file.tensors.as_slice()),
        });
    }
    println!("{}", output::inspect_table(&file, &footprint));
    if args.tensors {
        println!("{}", output::tensors_table(&file));
    }
    println!("{}", output::estimate_table(&estimate, &hardware));
    Ok(())
}

fn estimate_command(args: EstimateArgs) -> anyhow::Result<()> {
    let spec = catalog::find(&args.model)?;
    let Some(quant) = Quant::parse(&args.quant) else {
        bail!(
            "--quant {}: unknown quantization; use one of {}",
            args.quant,
            Quant::names().join(", ")
        );
    };
    let footprint = Footprint::from_catalog(spec, quant);
    let hardware = target_hardware(&args.target)?;
    let options = estimate_options(&args.target, &hardware)?;
    let estimate = estimate::estimate(&footprint, &hardware, &options);
    if args.json {
        return print_json(&estimate);
    }
    println!("{}", output::estimate_table(&estimate, &hardware));
    Ok(())
}

fn scan_command(args: ScanArgs) -> anyhow::Result<()> {
    for dir in &args.dirs {
        if !dir.exists() {
            bail!("{}: no such file or folder", dir.display());
        }
    }
    let stores = if args.no_default_stores {
        Vec::new()
    } else {
        scan::default_stores()
    };
    let hardware = target_hardware(&args.target)?;
    let options = estimate_options(&args.target, &hardware)?;
    let rows = scan::scan(&args.dirs, &stores, &hardware, &options);
    if args.json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        let searched: Vec<String> = args
            .dirs
            .iter()
            .chain(stores.iter().map(|(d, _)| d))
            .map(|d| d.display().to_string())
            .collect();
        println!(
            "no GGUF models found in {}\nhint: pass the folders that hold your .gguf files: fitbench scan DIR",
            if searched.is_empty() {
                "the default stores (none exist on this box)".to_string()
            } else {
                searched.join(", ")
            }
        );
        return Ok(());
    }
    println!("{}", output::scan_table(&rows, &hardware));
    Ok(())
}

fn report_command(args: ReportArgs) -> anyhow::Result<()> {
    let formats = args
        .format
        .split(',')
        .filter(|f| !f.trim().is_empty())
        .map(|f| {
            report::Format::parse(f).ok_or_else(|| {
                anyhow::anyhow!("--format {f}: unknown chart format; use png, svg or png,svg")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if formats.is_empty() {
        bail!("--format: name at least one chart format: png, svg or png,svg");
    }
    let out_dir = args.out.clone().unwrap_or_else(|| {
        let stem = args.inputs[0]
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "report".into());
        std::path::Path::new("reports").join(stem)
    });
    let written = report::generate(
        &args.inputs,
        &report::ReportOptions {
            out_dir,
            formats,
            title: args.title,
        },
    )?;
    for bad in &written.bad_rows {
        eprintln!("warning: row skipped: {bad}");
    }
    if args.json {
        return print_json(&written);
    }
    println!("{}", output::report_table(&written));
    Ok(())
}

fn compare_command(args: CompareArgs) -> anyhow::Result<()> {
    let read = |path: &std::path::Path,
                host: &Option<String>|
     -> anyhow::Result<Vec<crate::results::BenchRecord>> {
        let loaded = crate::results::load(path)?;
        for bad in &loaded.bad_rows {
            eprintln!("warning: row skipped: {bad}");
        }
        let rows: Vec<_> = loaded
            .records
            .into_iter()
            .filter(|r| host.as_ref().is_none_or(|h| &r.host == h))
            .collect();
        if rows.is_empty() {
            bail!(
                "{}: no rows{}",
                path.display(),
                host.as_ref()
                    .map(|h| format!(" from box `{h}`"))
                    .unwrap_or_default()
            );
        }
        Ok(rows)
    };
    let report = crate::compare::compare(
        &args.baseline.display().to_string(),
        &read(&args.baseline, &args.host_a)?,
        &args.candidate.display().to_string(),
        &read(&args.candidate, &args.host_b)?,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    if args.json {
        return print_json(&report);
    }
    if args.markdown {
        println!("{}", output::compare_markdown(&report));
    } else {
        println!("{}", output::compare_table(&report));
    }
    Ok(())
}

fn merge_command(args: MergeArgs) -> anyhow::Result<()> {
    let summary = crate::results::merge(&args.inputs, &args.output)?;
    eprintln!(
        "{}: {} row(s) written, {} duplicate(s) skipped, from {} row(s) read",
        args.output.display(),
        summary.rows_written,
        summary.duplicates,
        summary.rows_read
    );
    Ok(())
}
