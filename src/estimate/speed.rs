//! Speed: generation is bound by memory bandwidth (every active weight is read once per
//! token), prompt processing by compute. The efficiencies are published measurements;
//! docs/estimates.md gives their sources. A bench run on a box will replace them for it.

use super::footprint::Footprint;
use super::Placement;
use crate::probe::Hardware;
use serde::Serialize;

/// Fractions of a peak that llama.cpp reaches, per backend.
#[derive(Debug, Clone, Serialize)]
pub struct Efficiencies {
    /// CPU generation, of the measured streaming-read bandwidth.
    pub cpu_tg_of_measured: f64,
    /// CPU generation, of the theoretical bandwidth (when nothing was measured).
    pub cpu_tg_of_theoretical: f64,
    /// CPU prompt processing, of peak int8 multiply-add throughput.
    pub cpu_pp_of_peak: f64,
    /// CPU generation can also be compute-bound (in-order Cortex-A53): of peak throughput.
    pub cpu_tg_of_peak: f64,
    pub cuda_tg_of_bandwidth: f64,
    /// CUDA prompt processing, of FP32 TFLOPS (int8 MMQ kernels beat FP32 peak).
    pub cuda_pp_of_fp32: f64,
    pub metal_tg_of_bandwidth: f64,
    pub metal_pp_of_fp32: f64,
    /// CPU threads synchronise after every layer: a fixed cost per layer and token, seconds.
    pub cpu_seconds_per_layer: f64,
    /// Host-to-GPU copy rate for weights left in RAM during a partial offload, GB/s.
    pub pcie_gbs: f64,
    /// Where these numbers come from: "published" or "calibrated from N runs".
    pub source: String,
}

impl Default for Efficiencies {
    fn default() -> Efficiencies {
        Efficiencies {
            cpu_tg_of_measured: 0.9,
            cpu_tg_of_theoretical: 0.6,
            cpu_pp_of_peak: 0.5,
            cpu_tg_of_peak: 0.25,
            cpu_seconds_per_layer: 50e-6,
            cuda_tg_of_bandwidth: 0.6,
            cuda_pp_of_fp32: 2.0,
            metal_tg_of_bandwidth: 0.74,
            metal_pp_of_fp32: 0.63,
            pcie_gbs: 12.0,
            source: "published".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Speed {
    /// Generation, tokens per second, at an empty context (llama-bench's tg128).
    pub tg_tps: f64,
    /// Prompt processing, tokens per second (llama-bench's pp512).
    pub pp_tps: f64,
    pub bytes_read_per_token: u64,
    /// The bandwidth generation was computed from, GB/s, before efficiency.
    pub bandwidth_gbs: f64,
    /// "measured", "theoretical" or "unknown".
    pub bandwidth_source: &'static str,
    /// "bandwidth" or "compute": which limit the generation figure hit.
    pub tg_bound: &'static str,
    /// Peak compute used for prompt processing, in 10^9 operations per second.
    pub compute_gops: f64,
    pub efficiencies_source: String,
}

pub fn predict(f: &Footprint, p: &Placement, hw: &Hardware, e: &Efficiencies) -> Speed {
    let flops_per_token = 2.0 * f.active_params.max(1) as f64;
    let bytes = f.bytes_read_per_token.max(1) as f64;
    let (cpu_bw, cpu_bw_source, cpu_tg_eff) = cpu_bandwidth(hw, e);
    let cpu_ops = cpu_peak_ops(hw);
    let layer_sync = f.layers as f64 * e.cpu_seconds_per_layer;
    let cpu_tg_bandwidth = 1.0 / (bytes / (cpu_bw * 1e9 * cpu_tg_eff) + layer_sync);
    let cpu_tg_compute = cpu_ops * e.cpu_tg_of_peak / flops_per_token;
    let cpu_pp = cpu_ops * e.cpu_pp_of_peak / flops_per_token;

    let (tg_tps, pp_tps, bandwidth_gbs, bandwidth_source, tg_bound, compute) =
        match (p.backend, super::best_gpu(hw)) {
            ("cuda" | "metal", Some(gpu)) => {
                let (tg_eff, pp_eff) = if p.backend == "metal" {
                    (e.metal_tg_of_bandwidth, e.metal_pp_of_fp32)
                } else {
                    (e.cuda_tg_of_bandwidth, e.cuda_pp_of_fp32)
                };
                let (gpu_bw, gpu_bw_source) = match gpu
                    .bandwidth_gbs
                    .or(hw.memory.bandwidth_gbs.filter(|_| gpu.unified_memory))
                {
                    Some(bw) => (bw, "theoretical"),
                    None => (cpu_bw, cpu_bw_source),
                };
                // Without a TFLOPS figure, assume prompts run 30× faster than generation,
                // the ratio llama.cpp's CUDA results show for 7B models.
                let gpu_ops = gpu.fp32_tflops.map(|t| t * 1e12 * pp_eff);
                // Time per token: the GPU's share at GPU bandwidth, the rest at CPU bandwidth.
                let gpu_share = p.gpu_layers as f64 / p.total_layers.max(1) as f64;
                let gpu_time = bytes * gpu_share / (gpu_bw * 1e9 * tg_eff);
                let cpu_time = bytes * (1.0 - gpu_share) / (cpu_bw * 1e9 * cpu_tg_eff);
                let tg = 1.0 / (gpu_time + cpu_time);
                let gpu_pp = gpu_ops.map_or(tg * 30.0, |ops| ops / flops_per_token);
                // A partial offload copies the RAM-resident layers to the GPU per batch.
                let ram_weights = (1.0 - gpu_share) * f.weights_bytes as f64;
                let batch_time = 512.0 / gpu_pp + ram_weights / (e.pcie_gbs * 1e9);
                (
                    tg,
                    512.0 / batch_time,
                    gpu_bw,
                    gpu_bw_source,
                    "bandwidth",
                    gpu_ops.unwrap_or(0.0) / 1e9,
                )
            }
            _ => {
                let (tg, bound) = if cpu_tg_compute < cpu_tg_bandwidth {
                    (cpu_tg_compute, "compute")
                } else {
                    (cpu_tg_bandwidth, "bandwidth")
                };
                (tg, cpu_pp, cpu_bw, cpu_bw_source, bound, cpu_ops / 1e9)
            }
        };
    Speed {
        tg_tps,
        pp_tps,
        bytes_read_per_token: f.bytes_read_per_token,
        bandwidth_gbs,
        bandwidth_source,
        tg_bound,
        compute_gops: compute,
        efficiencies_source: e.source.clone(),
    }
}

/// The bandwidth to plan with and the efficiency that goes with where it came from.
fn cpu_bandwidth(hw: &Hardware, e: &Efficiencies) -> (f64, &'static str, f64) {
    if let Some(m) = &hw.memory.measured {
        return (m.all_threads_gbs, "measured", e.cpu_tg_of_measured);
    }
    if let Some(peak) = hw.memory.bandwidth_gbs {
        return (peak, "theoretical", e.cpu_tg_of_theoretical);
    }
    // Single-channel DDR4-2400, the slowest PC memory still common.
    (19.2, "unknown", e.cpu_tg_of_theoretical)
}

/// Peak int8 multiply-add operations per second of all physical cores.
fn cpu_peak_ops(hw: &Hardware) -> f64 {
    let simd = |name: &str| hw.cpu.simd.iter().any(|s| s == name);
    let ops_per_cycle = if simd("avx512vnni") || simd("amx") {
        128.0
    } else if simd("avx2") || simd("i8mm") {
        64.0
    } else if simd("avx") || simd("dotprod") {
        32.0
    } else if simd("neon") {
        16.0
    } else {
        8.0
    };
    let mhz = hw.cpu.max_freq_mhz.or(hw.cpu.freq_mhz).unwrap_or(2000) as f64;
    hw.cpu.physical_cores.max(1) as f64 * mhz * 1e6 * ops_per_cycle
}
