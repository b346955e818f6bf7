//! The decision tree, as data a reader takes in at a glance. It extends the users' seed tree:
//!
//! ```text
//! GPU (NVIDIA, ≥ 2 GiB VRAM)? ─ yes → offload: full, or partial with the layers that fit
//!                             └ no  → unified-memory GPU? ─ yes → Metal/CUDA in shared RAM
//!                                                          └ no  → CPU
//! RAM ≥ 16 GiB → up to 14B at 4–5 bit     RAM ≥ 4 GiB → up to ~4B at 4-bit (Phi-3 mini Q4)
//! RAM ≥ 1 GiB  → up to ~1.1B at 4-bit (TinyLlama; Qwen2-0.5B is faster)   else → MobileLLM 125M
//! ```
//!
//! The branch sets what the recommender plans for (placements, context, batch); the
//! candidates themselves come from estimating every catalog model on the box.

use crate::probe::Hardware;
use serde::Serialize;

const GIB: u64 = 1 << 30;

/// One decision: the question, this box's value, and the branch taken.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub question: String,
    pub value: String,
    pub branch: String,
}

/// Where the tree ends: what to plan for on this box.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub path: Vec<Step>,
    /// Consider GPU placements (full and partial offload).
    pub use_gpu: bool,
    /// The size class the branch expects, for the summary line.
    pub expectation: String,
    /// The seed tree's pick for this branch, a catalog id.
    pub seed_model: &'static str,
    /// The seed of the branch above: what more memory would run next.
    pub next_seed_model: Option<&'static str>,
    /// Context to plan with unless the user gives --ctx.
    pub context: u64,
    /// Prompt batch to plan with (llama.cpp -ub): small boxes cannot afford 512.
    pub ubatch: u64,
}

pub fn walk(hw: &Hardware, cpu_only: bool) -> Plan {
    let mut path = Vec::new();
    let gib = |bytes: u64| format!("{:.1} GiB", bytes as f64 / GIB as f64);
    let discrete = hw
        .gpus
        .iter()
        .filter(|g| !g.unified_memory)
        .max_by_key(|g| g.vram_total_bytes);
    let unified = hw.gpus.iter().find(|g| g.unified_memory);

    let use_gpu = match (cpu_only, discrete, unified) {
        (true, _, _) => {
            path.push(Step {
                question: "GPU?".into(),
                value: "--cpu-only".into(),
                branch: "CPU".into(),
            });
            false
        }
        (false, Some(gpu), _) if gpu.vram_total_bytes >= 2 * GIB => {
            path.push(Step {
                question: "GPU with ≥ 2 GiB VRAM?".into(),
                value: format!("{} with {}", gpu.name, gib(gpu.vram_total_bytes)),
                branch: "yes → full offload, or partial with the layers that fit".into(),
            });
            true
        }
        (false, _, Some(gpu)) => {
            path.push(Step {
                question: "GPU?".into(),
                value: format!("{} (shares RAM)", gpu.name),
                branch: "unified memory → GPU in RAM, sized by RAM".into(),
            });
            true
        }
        (false, small, None) => {
            path.push(Step {
                question: "GPU with ≥ 2 GiB VRAM?".into(),
                value: small.map_or("none".into(), |g| {
                    format!("{} with {}", g.name, gib(g.vram_total_bytes))
                }),
                branch: "no → CPU".into(),
            });
            false
        }
    };

    let ram = hw.memory.total_bytes;
    // Boxes are sold in GB but the OS sees less (a 1 GB Pi 3B reports about 0.9 GiB), so
    // each threshold allows for what firmware and the kernel keep.
    let (threshold, expectation, seed_model, next_seed_model, context, ubatch) =
        if ram >= 16 * GIB - GIB / 2 {
            (
                "≥ 16 GiB",
                "up to 14B at 4–5 bit on the CPU",
                "qwen2.5-7b",
                None,
                4096,
                512,
            )
        } else if ram >= 4 * GIB - GIB / 4 {
            (
                "≥ 4 GiB",
                "up to ~4B at 4-bit (seed: Phi-3 mini Q4)",
                "phi-3-mini",
                Some("qwen2.5-7b"),
                2048,
                256,
            )
        } else if ram >= GIB - GIB / 8 {
            (
                "≥ 1 GiB",
                "up to ~1.1B at 4-bit (seed: TinyLlama; Qwen2-0.5B is the faster pick)",
                "tinyllama-1.1b",
                Some("phi-3-mini"),
                2048,
                128,
            )
        } else {
            (
                "< 1 GiB",
                "the smallest models (seed: MobileLLM 125M)",
                "mobilellm-125m",
                Some("tinyllama-1.1b"),
                1024,
                64,
            )
        };
    path.push(Step {
        question: "RAM?".into(),
        value: format!(
            "{} total, {} available",
            gib(ram),
            gib(hw.memory.available_bytes)
        ),
        branch: format!("{threshold} → {expectation}; plan context {context}, batch {ubatch}"),
    });
    Plan {
        path,
        use_gpu,
        expectation: expectation.into(),
        seed_model,
        next_seed_model,
        context,
        ubatch,
    }
}
