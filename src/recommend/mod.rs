//! Recommend: walk the decision tree, estimate every catalog model × quantization ×
//! placement on the box, keep what fits with headroom at a usable speed, rank by quality for
//! the task, and explain the near-misses and what an upgrade would unlock.

mod quality;
mod tree;

pub use quality::Task;
pub use tree::{Plan, Step};

use crate::catalog::{self, ModelSpec, Quant};
use crate::estimate::{self, format_tps, Efficiencies, Estimate, EstimateOptions, Fit, Footprint};
use crate::output::format_bytes;
use crate::probe::{Gpu, Hardware};
use serde::Serialize;

/// Schemes worth recommending, best quality first: below Q4 quality drops fast, above Q8_0
/// the memory buys nothing measurable.
const QUANT_CHOICES: [&str; 5] = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0"];
/// BitNet's own ternary formats; it is trained for them, so they cost it no quality.
const BITNET_QUANTS: [&str; 2] = ["TQ2_0", "TQ1_0"];
/// Default speed floor: below 2 tok/s a chat answer takes minutes.
pub const DEFAULT_MIN_TPS: f64 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LicenseFilter {
    /// Apache-2.0, MIT and similar, without use restrictions.
    Permissive,
    #[default]
    Any,
}

#[derive(Debug, Clone)]
pub struct RecommendOptions {
    pub task: Task,
    /// Overrides the tree's context plan.
    pub context: Option<u64>,
    pub min_tps: f64,
    pub license: LicenseFilter,
    pub cpu_only: bool,
    pub top: usize,
    pub efficiencies: Efficiencies,
}

impl Default for RecommendOptions {
    fn default() -> RecommendOptions {
        RecommendOptions {
            task: Task::Chat,
            context: None,
            min_tps: DEFAULT_MIN_TPS,
            license: LicenseFilter::Any,
            cpu_only: false,
            top: 5,
            efficiencies: Efficiencies::default(),
        }
    }
}

/// A model at a quantization and placement, with its estimate and why it is there.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub model: String,
    pub name: String,
    pub quant: String,
    /// Task score × what the quantization keeps; what the ranking sorts by.
    pub quality: f64,
    /// Where the score comes from, e.g. "MMLU 68.8" or "size prior".
    pub quality_basis: String,
    pub estimate: Estimate,
    pub why: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NearMiss {
    pub model: String,
    pub quant: String,
    pub needs_bytes: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Upgrade {
    pub step: String,
    /// What the best pick becomes with it; None when it changes nothing.
    pub unlocks: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub hardware: String,
    pub task: Task,
    pub min_tps: f64,
    /// "published", or "calibrated from N runs on HOST" when bench results exist for the box.
    pub efficiencies_source: String,
    pub plan: Plan,
    pub picks: Vec<Candidate>,
    pub near_misses: Vec<NearMiss>,
    pub upgrades: Vec<Upgrade>,
    pub runtime_hint: Option<String>,
    /// Set when nothing fits: the closest candidate and what it would need.
    pub nothing_fits: Option<String>,
}

/// A model left out, with why; `beaten` when a lighter, better pick made it redundant.
struct Rejected {
    candidate: Candidate,
    reason: String,
    beaten: bool,
}

/// Every option of one model that was estimated, with the reason it was kept or not.
struct Evaluated {
    candidate: Candidate,
    rejection: Option<String>,
}

/// A catalog model sized at each quantization worth trying. Sizing is the costly part of an
/// estimate, and it does not depend on the box, so it is done once for all upgrade scenarios.
struct Sized {
    spec: &'static ModelSpec,
    options: Vec<(Quant, Footprint)>,
}

fn size_catalog(options: &RecommendOptions) -> Vec<Sized> {
    catalog::models()
        .iter()
        .filter(|spec| options.license == LicenseFilter::Any || spec.license_permissive)
        .filter(|spec| {
            options.task != Task::LongContext || spec.max_context >= quality::LONG_CONTEXT
        })
        .map(|spec| Sized {
            spec,
            options: quants_for(spec)
                .filter_map(Quant::parse)
                .map(|quant| (quant, Footprint::from_catalog(spec, quant)))
                .collect(),
        })
        .collect()
}

pub fn recommend(hw: &Hardware, options: &RecommendOptions) -> Recommendation {
    let plan = tree::walk(hw, options.cpu_only);
    let catalog = size_catalog(options);
    let (picks, near_misses, nothing_fits) = select(&catalog, hw, &plan, options);
    let upgrades = upgrades(&catalog, hw, options, picks.first());
    Recommendation {
        hardware: hw.name.clone(),
        task: options.task,
        min_tps: options.min_tps,
        efficiencies_source: options.efficiencies.source.clone(),
        runtime_hint: runtime_hint(hw, &plan),
        plan,
        picks,
        near_misses,
        upgrades,
        nothing_fits,
    }
}

type Selection = (Vec<Candidate>, Vec<NearMiss>, Option<String>);

fn select(catalog: &[Sized], hw: &Hardware, plan: &Plan, options: &RecommendOptions) -> Selection {
    let mut viable: Vec<Candidate> = Vec::new();
    let mut rejected: Vec<Rejected> = Vec::new();
    for model in catalog {
        let evaluated: Vec<Evaluated> = model
            .options
            .iter()
            .map(|(quant, footprint)| evaluate(model.spec, *quant, footprint, hw, plan, options))
            .collect();
        match choose_quant(&evaluated) {
            Some(chosen) => viable.push(chosen.clone()),
            // The option closest to working: the smallest that was tried.
            None => {
                if let Some(e) = evaluated
                    .into_iter()
                    .min_by_key(|e| e.candidate.estimate.memory.total_bytes)
                {
                    rejected.push(Rejected {
                        candidate: e.candidate,
                        reason: e.rejection.unwrap_or_default(),
                        beaten: false,
                    });
                }
            }
        }
    }
    viable.sort_by(|a, b| {
        b.quality
            .total_cmp(&a.quality)
            .then(b.estimate.speed.tg_tps.total_cmp(&a.estimate.speed.tg_tps))
    });
    let (viable, dominated) = drop_dominated(viable);
    // Only what would have made the list is worth explaining; lighter duplicates are not.
    let shown_dominated = options.top.max(1).saturating_add(3);
    rejected.extend(
        dominated
            .into_iter()
            .filter(|(rank, _, _)| *rank < shown_dominated)
            .map(|(_, candidate, reason)| Rejected {
                candidate,
                reason,
                beaten: true,
            }),
    );

    let mut picks: Vec<Candidate> = viable.into_iter().take(options.top.max(1)).collect();
    for (rank, pick) in picks.iter_mut().enumerate() {
        pick.why = why(pick, rank, options);
    }
    let near_misses = near_misses(&rejected, &picks, plan);
    let nothing_fits = picks.is_empty().then(|| {
        match rejected
            .iter()
            .min_by_key(|r| r.candidate.estimate.memory.total_bytes)
        {
            Some(Rejected { reason, .. }) => {
                format!("nothing in the catalog fits this box; the closest: {reason}")
            }
            None => "no catalog model matches these constraints (license or task)".into(),
        }
    });
    (picks, near_misses, nothing_fits)
}

/// The highest-quality quantization that still runs well; when none does, Q4_K_M (the
/// usual sweet spot), else the fastest that meets the floor.
fn choose_quant(evaluated: &[Evaluated]) -> Option<&Candidate> {
    let viable = || {
        evaluated
            .iter()
            .filter(|e| e.rejection.is_none())
            .map(|e| &e.candidate)
    };
    viable()
        .filter(|c| c.estimate.speed.tg_tps >= estimate::SLOW_TPS)
        .max_by(|a, b| a.quality.total_cmp(&b.quality))
        .or_else(|| viable().find(|c| c.quant == "Q4_K_M"))
        .or_else(|| {
            viable().max_by(|a, b| a.estimate.speed.tg_tps.total_cmp(&b.estimate.speed.tg_tps))
        })
}

/// What did not make it and is worth a line: the seed tree's picks for this branch and the
/// next one up (Phi-3 mini on a Pi 3B), the candidates a lighter pick beat, then the rest,
/// smallest first: the next things within reach.
fn near_misses(rejected: &[Rejected], picks: &[Candidate], plan: &Plan) -> Vec<NearMiss> {
    const SHOWN: usize = 8;
    let floor = picks.last().map_or(f64::MIN, |p| p.quality);
    let top_params = picks.first().map_or(0, |p| p.estimate.params);
    let mut ordered: Vec<&Rejected> = Vec::new();
    fn push<'a>(item: &'a Rejected, ordered: &mut Vec<&'a Rejected>) {
        if !ordered
            .iter()
            .any(|r| r.candidate.model == item.candidate.model)
        {
            ordered.push(item);
        }
    }
    for seed in [Some(plan.seed_model), plan.next_seed_model]
        .into_iter()
        .flatten()
    {
        if let Some(item) = rejected.iter().find(|r| r.candidate.model == seed) {
            push(item, &mut ordered);
        }
    }
    // At most three beaten candidates, best first, so bigger models still get their line.
    let mut beaten: Vec<&Rejected> = rejected.iter().filter(|r| r.beaten).collect();
    beaten.sort_by(|a, b| b.candidate.quality.total_cmp(&a.candidate.quality));
    for item in beaten.into_iter().take(3) {
        push(item, &mut ordered);
    }
    // Anything that would outscore the last pick, or is bigger than the first: "what about
    // a 32B?" deserves an answer.
    let mut rest: Vec<&Rejected> = rejected
        .iter()
        .filter(|r| !r.beaten)
        .filter(|r| r.candidate.quality > floor || r.candidate.estimate.params > top_params)
        .collect();
    rest.sort_by_key(|r| r.candidate.estimate.memory.total_bytes);
    for item in rest {
        push(item, &mut ordered);
    }
    ordered
        .into_iter()
        .take(SHOWN)
        .map(|r| NearMiss {
            model: r.candidate.model.clone(),
            quant: r.candidate.quant.clone(),
            needs_bytes: r.candidate.estimate.memory.total_bytes,
            reason: r.reason.clone(),
        })
        .collect()
}

fn quants_for(spec: &ModelSpec) -> impl Iterator<Item = &'static str> {
    let bitnet = spec.architecture.starts_with("bitnet");
    let choices: &'static [&'static str] = if bitnet {
        &BITNET_QUANTS
    } else {
        &QUANT_CHOICES
    };
    choices.iter().copied()
}

fn evaluate(
    spec: &ModelSpec,
    quant: Quant,
    footprint: &Footprint,
    hw: &Hardware,
    plan: &Plan,
    options: &RecommendOptions,
) -> Evaluated {
    let context = options
        .context
        .unwrap_or(plan.context)
        .min(spec.max_context);
    let estimate_with = |cpu_only| {
        estimate::estimate(
            footprint,
            hw,
            &EstimateOptions {
                context: Some(context),
                ubatch: Some(plan.ubatch),
                cpu_only,
                efficiencies: options.efficiencies.clone(),
                ..EstimateOptions::default()
            },
        )
    };
    let cpu = estimate_with(true);
    // With a GPU, take whichever placement runs faster (a tiny partial offload can lose).
    let estimate = if plan.use_gpu {
        let gpu = estimate_with(false);
        let gpu_better = gpu.placement.fit.runs()
            && (!cpu.placement.fit.runs() || gpu.speed.tg_tps >= cpu.speed.tg_tps);
        if gpu_better {
            gpu
        } else {
            cpu
        }
    } else {
        cpu
    };
    let (score, basis) = quality::task_score(spec, options.task);
    let quality = score * quality::retained(quant.name, spec);
    let needs = format_bytes(estimate.memory.total_bytes);
    let budget = format_bytes(estimate.placement.ram_budget_bytes);
    let label = format!("{} {}", spec.id, quant.name);
    let rejection = match estimate.placement.fit {
        Fit::DoesNotFit => Some(format!("{label} needs {needs}; {budget} is available")),
        Fit::NeedsSwap => Some(format!(
            "{label} needs {needs}: it fits only with swap ({budget} available)"
        )),
        _ if estimate.speed.tg_tps < options.min_tps => Some(format!(
            "{label} {}, below the {} floor (needs {needs})",
            estimate.verdict,
            format_tps(options.min_tps)
        )),
        _ => None,
    };
    Evaluated {
        candidate: Candidate {
            model: spec.id.clone(),
            name: spec.name.clone(),
            quant: quant.name.to_string(),
            quality,
            quality_basis: basis,
            estimate,
            why: String::new(),
        },
        rejection,
    }
}

/// A candidate is dominated when a better-scoring one needs less than half its memory and
/// runs at least 3/4 as fast: the users' Mixtral on a 64 GB desktop, beaten by a dense 14B.
/// Dominated candidates come back with the rank they had before.
fn drop_dominated(ranked: Vec<Candidate>) -> (Vec<Candidate>, Vec<(usize, Candidate, String)>) {
    let mut kept: Vec<Candidate> = Vec::new();
    let mut dominated = Vec::new();
    for (rank, candidate) in ranked.into_iter().enumerate() {
        let mem = candidate.estimate.memory.total_bytes;
        let tps = candidate.estimate.speed.tg_tps;
        let better = kept.iter().find(|k| {
            k.estimate.memory.total_bytes * 2 <= mem && k.estimate.speed.tg_tps >= 0.75 * tps
        });
        match better {
            Some(k) => {
                let reason = format!(
                    "{} {} needs {} for {}; {} {} scores higher ({} vs {}) in {} at {}",
                    candidate.model,
                    candidate.quant,
                    format_bytes(mem),
                    format_tps(tps),
                    k.model,
                    k.quant,
                    k.quality_basis,
                    candidate.quality_basis,
                    format_bytes(k.estimate.memory.total_bytes),
                    format_tps(k.estimate.speed.tg_tps)
                );
                dominated.push((rank, candidate, reason));
            }
            None => kept.push(candidate),
        }
    }
    (kept, dominated)
}

fn why(c: &Candidate, rank: usize, options: &RecommendOptions) -> String {
    let e = &c.estimate;
    let lead = if rank == 0 {
        format!("best {} score that fits", options.task.name())
    } else {
        "next best".to_string()
    };
    let spare = format_bytes(
        e.placement
            .ram_budget_bytes
            .saturating_sub(e.placement.ram_bytes),
    );
    format!(
        "{lead} ({}); {}; {spare} RAM to spare",
        c.quality_basis, e.verdict
    )
}

fn runtime_hint(hw: &Hardware, plan: &Plan) -> Option<String> {
    let board = hw.board.as_deref().unwrap_or("");
    if hw.gpus.iter().any(|g| g.vendor == "apple") {
        Some("Apple Silicon: MLX or llama.cpp's Metal build run these models faster than a CPU build.".into())
    } else if board.contains("Jetson") {
        Some(
            "Jetson: use JetPack's CUDA build of llama.cpp; the GPU shares the 8 GB with the CPU."
                .into(),
        )
    } else if plan.use_gpu && hw.gpus.iter().any(|g| g.vendor == "nvidia") {
        Some("NVIDIA GPU: use a CUDA build (llama.cpp with -ngl set to the GPU layers shown, or fitbench built with --features cuda).".into())
    } else {
        None
    }
}

/// The next steps up, in the order the users' documents advise: more RAM, then a GPU, then
/// a bigger one.
fn upgrades(
    catalog: &[Sized],
    hw: &Hardware,
    options: &RecommendOptions,
    top: Option<&Candidate>,
) -> Vec<Upgrade> {
    const GIB: u64 = 1 << 30;
    let mut steps: Vec<(String, Hardware)> = Vec::new();
    let mut more_ram = hw.clone();
    more_ram.memory.total_bytes = hw.memory.total_bytes.saturating_mul(2);
    more_ram.memory.available_bytes = hw
        .memory
        .available_bytes
        .saturating_add(hw.memory.total_bytes);
    steps.push((
        format!("2× the RAM ({})", format_bytes(more_ram.memory.total_bytes)),
        more_ram,
    ));
    let current_vram = hw
        .gpus
        .iter()
        .filter(|g| !g.unified_memory)
        .map(|g| g.vram_total_bytes)
        .max()
        .unwrap_or(0);
    let can_take_gpu = !hw.gpus.iter().any(|g| g.unified_memory) && hw.cpu.arch == "x86_64";
    for (gib, name, bandwidth, tflops) in [
        (8, "an 8 GiB GPU (RTX 4060 class)", 272.0, 15.1),
        (12, "a 12 GiB GPU (RTX 3060 class)", 360.0, 12.7),
        (24, "a 24 GiB GPU (RTX 3090 class)", 936.0, 35.6),
    ] {
        if !can_take_gpu || gib * GIB <= current_vram {
            continue;
        }
        let mut with_gpu = hw.clone();
        with_gpu.gpus = vec![Gpu {
            vendor: "nvidia".into(),
            name: name.into(),
            vram_total_bytes: gib * GIB,
            vram_free_bytes: gib * GIB - GIB / 4,
            driver: None,
            compute_capability: None,
            bandwidth_gbs: Some(bandwidth),
            fp32_tflops: Some(tflops),
            unified_memory: false,
        }];
        steps.push((name.to_string(), with_gpu));
    }
    let no_upgrades = RecommendOptions {
        top: 1,
        ..options.clone()
    };
    let mut upgrades: Vec<Upgrade> = steps
        .into_iter()
        .map(|(step, upgraded)| {
            let plan = tree::walk(&upgraded, options.cpu_only);
            let (picks, _, _) = select(catalog, &upgraded, &plan, &no_upgrades);
            let unlocks = picks.into_iter().next().filter(|p| {
                top.is_none_or(|t| {
                    p.model != t.model
                        || p.quant != t.quant
                        || p.estimate.speed.tg_tps > 1.5 * t.estimate.speed.tg_tps
                })
            });
            Upgrade {
                step,
                unlocks: unlocks.map(|p| {
                    format!(
                        "{} {} at {} ({})",
                        p.model,
                        p.quant,
                        format_tps(p.estimate.speed.tg_tps),
                        placement_summary(&p.estimate)
                    )
                }),
            }
        })
        .collect();
    upgrades.push(Upgrade {
        step: "beyond that".into(),
        unlocks: Some(
            "70B-class models need 40+ GiB of fast memory: a multi-GPU box or the cloud".into(),
        ),
    });
    upgrades
}

/// "CPU", "GPU", or "GPU 22/28 layers".
pub fn placement_summary(e: &Estimate) -> String {
    let p = &e.placement;
    match p.fit {
        Fit::PartialOffload => format!("{} {}/{} layers", p.backend, p.gpu_layers, p.total_layers),
        _ => p.backend.to_string(),
    }
}

#[cfg(test)]
mod tests;
