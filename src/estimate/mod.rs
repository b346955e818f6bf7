//! Estimate: will a model fit on a box, where, and how fast. Pure arithmetic over a
//! `Footprint` and a `Hardware`; every term is kept so `--json` readers can check it.
//! The rules and their sources are in docs/estimates.md.

mod calibration;
mod footprint;
mod speed;

pub use calibration::{calibrate, load_results};
pub use footprint::Footprint;
pub use speed::{Efficiencies, Speed};

use crate::probe::{Gpu, Hardware};
use serde::Serialize;

const MIB: u64 = 1024 * 1024;
/// The largest batch a prompt is processed in (llama.cpp's default n_ubatch).
pub const DEFAULT_UBATCH: u64 = 512;
/// Process, runtime and tokenizer memory besides weights, KV cache and compute buffers.
const RUNTIME_OVERHEAD: u64 = 64 * MIB;
/// What is left for the OS and other programs: 5% of RAM, at least 128 MiB.
fn ram_headroom(total: u64) -> u64 {
    (total / 20).max(128 * MIB)
}
/// The CUDA context and cuBLAS workspace: 5% of VRAM, at least 300 MiB.
fn vram_reserve(total: u64) -> u64 {
    (total / 20).max(300 * MIB)
}

/// The context a user really runs: 4096, or less when the model cannot take that.
pub fn default_context(max_context: u64) -> u64 {
    4096.min(max_context.max(1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KvType {
    #[default]
    F16,
    Q8_0,
}

impl KvType {
    pub fn parse(text: &str) -> Option<KvType> {
        match text.to_ascii_lowercase().as_str() {
            "f16" => Some(KvType::F16),
            "q8_0" => Some(KvType::Q8_0),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }

    fn bytes_per_element(self) -> f64 {
        match self {
            KvType::F16 => 2.0,
            KvType::Q8_0 => 34.0 / 32.0,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct EstimateOptions {
    /// Context length; `default_context` when None.
    pub context: Option<u64>,
    pub kv_type: KvType,
    /// Prompt batch size the runtime reserves buffers for; DEFAULT_UBATCH when None.
    pub ubatch: Option<u64>,
    /// Plan for the CPU even when a GPU is present.
    pub cpu_only: bool,
    pub efficiencies: Efficiencies,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryTerms {
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    pub compute_bytes: u64,
    pub overhead_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    FitsInVram,
    PartialOffload,
    FitsInRam,
    NeedsSwap,
    DoesNotFit,
}

impl Fit {
    pub fn runs(self) -> bool {
        matches!(self, Fit::FitsInVram | Fit::PartialOffload | Fit::FitsInRam)
    }

    pub fn label(self) -> &'static str {
        match self {
            Fit::FitsInVram => "fits in VRAM",
            Fit::PartialOffload => "partial offload",
            Fit::FitsInRam => "fits in RAM",
            Fit::NeedsSwap => "fits only with swap",
            Fit::DoesNotFit => "does not fit",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    pub fit: Fit,
    /// cpu, cuda or metal.
    pub backend: &'static str,
    pub gpu_layers: u64,
    pub total_layers: u64,
    pub gpu_bytes: u64,
    pub ram_bytes: u64,
    pub ram_budget_bytes: u64,
    pub vram_budget_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub model: String,
    pub architecture: String,
    pub quant: String,
    pub params: u64,
    pub active_params: u64,
    pub context: u64,
    pub ubatch: u64,
    pub kv_type: KvType,
    pub memory: MemoryTerms,
    pub placement: Placement,
    pub speed: Speed,
    /// What a person reads: "runs well", "runs slowly (~1 tok/s)", "needs swap: don't"...
    pub verdict: String,
}

/// Generation below this many tokens per second reads slower than a person does.
pub const SLOW_TPS: f64 = 5.0;

pub fn estimate(footprint: &Footprint, hardware: &Hardware, options: &EstimateOptions) -> Estimate {
    // A context beyond the model's own cannot be used, so it is not planned for either.
    let context = options
        .context
        .unwrap_or_else(|| default_context(footprint.max_context))
        .clamp(1, footprint.max_context.max(1));
    let ubatch = options.ubatch.unwrap_or(DEFAULT_UBATCH).clamp(1, context);
    let memory = memory_terms(footprint, context, ubatch, options.kv_type);
    let placement = place(footprint, &memory, hardware, options.cpu_only);
    let speed = speed::predict(footprint, &placement, hardware, &options.efficiencies);
    let verdict = verdict(placement.fit, speed.tg_tps);
    Estimate {
        model: footprint.model.clone(),
        architecture: footprint.architecture.clone(),
        quant: footprint.quant.clone(),
        params: footprint.params,
        active_params: footprint.active_params,
        context,
        ubatch,
        kv_type: options.kv_type,
        memory,
        placement,
        speed,
        verdict,
    }
}

pub fn memory_terms(
    footprint: &Footprint,
    context: u64,
    ubatch: u64,
    kv_type: KvType,
) -> MemoryTerms {
    let kv_cache_bytes = kv_cache_bytes(footprint, context, kv_type);
    // llama.cpp reserves its compute graph for a full ubatch with flash attention: logits plus
    // a few hidden- and FFN-sized activations per token, in f32.
    let ffn = footprint.ffn_size * footprint.experts_active.max(1);
    let compute_bytes = 4 * ubatch * (footprint.vocab_size + 4 * footprint.hidden_size + 2 * ffn);
    let total_bytes = footprint.weights_bytes + kv_cache_bytes + compute_bytes + RUNTIME_OVERHEAD;
    MemoryTerms {
        weights_bytes: footprint.weights_bytes,
        kv_cache_bytes,
        compute_bytes,
        overhead_bytes: RUNTIME_OVERHEAD,
        total_bytes,
    }
}

/// K and V for every layer: sliding-window layers keep only their window.
fn kv_cache_bytes(f: &Footprint, context: u64, kv_type: KvType) -> u64 {
    let per_position = 2.0 * f.kv_heads as f64 * f.head_dim as f64 * kv_type.bytes_per_element();
    let local = f.sliding_window_layers.min(f.layers);
    let window = if f.sliding_window > 0 {
        f.sliding_window.min(context)
    } else {
        context
    };
    let positions = (f.layers - local) as f64 * context as f64 + local as f64 * window as f64;
    // `as` saturates at u64::MAX for absurd shapes, which then "does not fit".
    (per_position * positions) as u64
}

fn place(f: &Footprint, memory: &MemoryTerms, hw: &Hardware, cpu_only: bool) -> Placement {
    let ram_budget = hw
        .memory
        .available_bytes
        .saturating_sub(ram_headroom(hw.memory.total_bytes));
    let swap_free = hw
        .memory
        .swap_total_bytes
        .saturating_sub(hw.memory.swap_used_bytes);
    let on_cpu = |fit| Placement {
        fit,
        backend: "cpu",
        gpu_layers: 0,
        total_layers: f.layers,
        gpu_bytes: 0,
        ram_bytes: memory.total_bytes,
        ram_budget_bytes: ram_budget,
        vram_budget_bytes: 0,
    };
    let cpu_placement = || {
        if memory.total_bytes <= ram_budget {
            on_cpu(Fit::FitsInRam)
        } else if memory.total_bytes <= ram_budget.saturating_add(swap_free) {
            on_cpu(Fit::NeedsSwap)
        } else {
            on_cpu(Fit::DoesNotFit)
        }
    };
    let gpu = if cpu_only { None } else { best_gpu(hw) };
    let Some(gpu) = gpu else {
        return cpu_placement();
    };

    if gpu.unified_memory {
        // Apple Silicon and Jetson: the GPU works in system RAM, up to its own limit.
        let budget = gpu.vram_total_bytes.min(ram_budget);
        if memory.total_bytes <= budget {
            return Placement {
                fit: Fit::FitsInVram,
                backend: gpu_backend(gpu),
                gpu_layers: f.layers,
                total_layers: f.layers,
                gpu_bytes: memory.total_bytes,
                ram_bytes: memory.total_bytes,
                ram_budget_bytes: ram_budget,
                vram_budget_bytes: budget,
            };
        }
        return cpu_placement();
    }

    let vram_budget = gpu
        .vram_free_bytes
        .saturating_sub(vram_reserve(gpu.vram_total_bytes));
    let on_gpu = memory
        .weights_bytes
        .saturating_add(memory.kv_cache_bytes)
        .saturating_add(memory.compute_bytes);
    if on_gpu <= vram_budget && memory.overhead_bytes <= ram_budget {
        return Placement {
            fit: Fit::FitsInVram,
            backend: gpu_backend(gpu),
            gpu_layers: f.layers,
            total_layers: f.layers,
            gpu_bytes: on_gpu,
            ram_bytes: memory.overhead_bytes,
            ram_budget_bytes: ram_budget,
            vram_budget_bytes: vram_budget,
        };
    }
    // Partial offload: whole layers (weights and their KV cache) go to the GPU; embeddings,
    // output and the rest stay in RAM, as with llama.cpp's -ngl below the layer count.
    let layer_weights = f.weights_bytes.saturating_sub(f.embedding_and_output_bytes);
    let per_layer = layer_weights.saturating_add(memory.kv_cache_bytes) / f.layers.max(1);
    let room = vram_budget.saturating_sub(memory.compute_bytes);
    let gpu_layers = room
        .checked_div(per_layer)
        .unwrap_or(0)
        .min(f.layers.saturating_sub(1));
    let gpu_bytes = (gpu_layers * per_layer).saturating_add(memory.compute_bytes);
    let ram_bytes = memory.total_bytes.saturating_sub(gpu_layers * per_layer);
    if gpu_layers > 0 && ram_bytes <= ram_budget {
        return Placement {
            fit: Fit::PartialOffload,
            backend: gpu_backend(gpu),
            gpu_layers,
            total_layers: f.layers,
            gpu_bytes,
            ram_bytes,
            ram_budget_bytes: ram_budget,
            vram_budget_bytes: vram_budget,
        };
    }
    cpu_placement()
}

/// The GPU with the most free memory.
pub(super) fn best_gpu(hw: &Hardware) -> Option<&Gpu> {
    hw.gpus.iter().max_by_key(|g| g.vram_free_bytes)
}

fn gpu_backend(gpu: &Gpu) -> &'static str {
    if gpu.vendor == "apple" {
        "metal"
    } else {
        "cuda"
    }
}

fn verdict(fit: Fit, tg_tps: f64) -> String {
    match fit {
        Fit::NeedsSwap => "needs swap: don't".into(),
        Fit::DoesNotFit => "does not fit".into(),
        _ if tg_tps < SLOW_TPS => format!("runs slowly (~{})", format_tps(tg_tps)),
        _ => "runs well".into(),
    }
}

/// Two significant figures at most: an estimate is not more precise than that.
pub fn format_tps(tps: f64) -> String {
    if tps >= 10.0 {
        format!("{:.0} tok/s", tps)
    } else if tps >= 1.0 {
        format!("{:.1} tok/s", tps)
    } else {
        format!("{:.2} tok/s", tps)
    }
}
