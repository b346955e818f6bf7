//! Probe: what this box has. The `Hardware` type is also what a profile saves.

mod bandwidth;
mod bandwidth_cache;
mod cpu;
mod gpu;
pub mod simd;
mod system;

use serde::{Deserialize, Serialize};

pub use bandwidth::measure_read_bandwidth;
pub use system::{throttled_now, vcgencmd_throttled};

/// Bumped when a field is renamed or removed; adding an optional field keeps it.
pub const HARDWARE_SCHEMA_VERSION: u32 = 1;

/// A box: the one fitbench runs on (from `probe`) or one described by a profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    pub schema_version: u32,
    /// Host name for a probed box, profile name for a saved one.
    pub name: String,
    /// Where the numbers come from: "probe" or the spec sheets behind a hand-written profile.
    pub origin: String,
    #[serde(default)]
    pub description: String,
    pub os: Os,
    /// Board model as the device tree names it (Raspberry Pi, Jetson); absent on PCs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board: Option<String>,
    pub cpu: Cpu,
    pub memory: Memory,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    #[serde(default)]
    pub thermal: Thermal,
    /// What the probe could not read, and why (no NVML, no vcgencmd...).
    #[serde(default)]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Os {
    pub name: String,
    pub kernel: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    pub model: String,
    /// Rust's name for the architecture: x86_64, aarch64, arm...
    pub arch: String,
    pub logical_cores: u32,
    pub physical_cores: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freq_mhz: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_freq_mhz: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governor: Option<String>,
    #[serde(default)]
    pub cache: Cache,
    /// SIMD extensions this CPU has, detected at run time.
    pub simd: Vec<String>,
    /// SIMD extensions this fitbench binary was compiled to use; empty for a profile.
    #[serde(default)]
    pub compiled_simd: Vec<String>,
}

/// Per-core L1d/L2 and the shared L3, as the OS reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l1d_kib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2_kib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l3_kib: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    pub total_bytes: u64,
    /// What a new process can use without swapping (MemAvailable on Linux).
    pub available_bytes: u64,
    #[serde(default)]
    pub swap_total_bytes: u64,
    #[serde(default)]
    pub swap_used_bytes: u64,
    /// Theoretical peak: transfer rate × bus width. Profiles cite the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_gbs: Option<f64>,
    /// Measured by `probe --bandwidth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<MeasuredBandwidth>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasuredBandwidth {
    /// Streaming read, GB/s (10^9 bytes per second), one thread.
    pub single_thread_gbs: f64,
    /// Streaming read, GB/s, `threads` threads.
    pub all_threads_gbs: f64,
    pub threads: u32,
    pub buffer_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// "nvidia", "apple", ...
    pub vendor: String,
    pub name: String,
    pub vram_total_bytes: u64,
    pub vram_free_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// CUDA compute capability, "8.6".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_gbs: Option<f64>,
    /// Peak FP32 throughput: shader cores × boost clock × 2. Prompt processing scales with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp32_tflops: Option<f64>,
    /// True when the GPU shares system RAM (Apple Silicon, Jetson): VRAM is not extra memory.
    #[serde(default)]
    pub unified_memory: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thermal {
    #[serde(default)]
    pub sensors: Vec<TemperatureSensor>,
    /// Raw `vcgencmd get_throttled` value on a Raspberry Pi, e.g. "0x50005".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemperatureSensor {
    pub label: String,
    pub celsius: f32,
}

/// Whether `probe` measures memory bandwidth, which takes about 1.5 s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BandwidthMode {
    /// Report only the instant facts.
    #[default]
    Skip,
    /// Use this box's cached measurement, measuring (and caching) once when there is none.
    Cached,
    /// Measure now and refresh the cache.
    Measure,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ProbeOptions {
    pub bandwidth: BandwidthMode,
}

/// Reads everything the OS tells about this box.
pub fn probe(options: ProbeOptions) -> anyhow::Result<Hardware> {
    use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

    let system = System::new_with_specifics(
        RefreshKind::nothing()
            .with_memory(MemoryRefreshKind::everything())
            .with_cpu(CpuRefreshKind::nothing().with_frequency()),
    );
    let mut notes = Vec::new();
    let logical_cores = system.cpus().len().max(1) as u32;
    let cache = cpu::caches();
    let board = system::board();
    let is_raspberry_pi = board.as_deref().is_some_and(|b| b.contains("Raspberry Pi"));
    let total_bytes = system.total_memory();
    let mut available_bytes = system.available_memory();
    // Lets tests and cautious users plan as if less memory were free.
    if let Some(limit) = std::env::var("FITBENCH_MEMORY_LIMIT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        available_bytes = available_bytes.min(limit);
        notes.push(format!(
            "available memory capped at {limit} bytes by FITBENCH_MEMORY_LIMIT"
        ));
    }

    let mut simd = simd::detected();
    if let Some(cap) = simd::kernel_cap()? {
        simd = simd::capped(simd, cap);
        notes.push(format!(
            "kernels capped at {} by FITBENCH_KERNEL: the SIMD list is what they use",
            cap.name()
        ));
    }

    let cpu_model = system
        .cpus()
        .first()
        .map(|c| c.brand().trim().to_string())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "unknown".into());
    // Fleets name their boxes ("pi4-kitchen"); results and calibration key on this name.
    let host = std::env::var("FITBENCH_HOST")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(System::host_name)
        .unwrap_or_else(|| "this-box".into());
    let cache_key = format!("{host}|{cpu_model}|{total_bytes}");
    let measure = || {
        let llc_kib = cache.l3_kib.or(cache.l2_kib);
        measure_read_bandwidth(
            available_bytes,
            llc_kib.map(|kib| kib * 1024),
            logical_cores as usize,
        )
    };
    let measured = match options.bandwidth {
        BandwidthMode::Skip => None,
        BandwidthMode::Measure => {
            let measured = measure()?;
            bandwidth_cache::store(&cache_key, &measured);
            Some(measured)
        }
        BandwidthMode::Cached => match bandwidth_cache::load(&cache_key) {
            Some(cached) => Some(cached),
            None => {
                let measured = measure()?;
                bandwidth_cache::store(&cache_key, &measured);
                Some(measured)
            }
        },
    };
    let (gpus, gpu_note) = gpu::probe(total_bytes);
    notes.extend(gpu_note);

    Ok(Hardware {
        schema_version: HARDWARE_SCHEMA_VERSION,
        name: host,
        origin: "probe".into(),
        description: String::new(),
        os: system::os(),
        cpu: Cpu {
            model: cpu_model,
            arch: std::env::consts::ARCH.into(),
            logical_cores,
            physical_cores: System::physical_core_count()
                .map(|n| n as u32)
                .unwrap_or(logical_cores),
            freq_mhz: system
                .cpus()
                .first()
                .map(|c| c.frequency())
                .filter(|f| *f > 0),
            max_freq_mhz: cpu::max_freq_mhz(),
            governor: cpu::governor(),
            cache,
            simd,
            compiled_simd: simd::compiled(),
        },
        memory: Memory {
            total_bytes,
            available_bytes,
            swap_total_bytes: system.total_swap(),
            swap_used_bytes: system.used_swap(),
            bandwidth_gbs: None,
            measured,
        },
        gpus,
        thermal: system::thermal(&mut notes, is_raspberry_pi),
        board,
        notes,
    })
}
