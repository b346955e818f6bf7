//! GPUs: NVIDIA through NVML (loaded at run time, so a box without the driver just has none),
//! and Apple Silicon's unified-memory GPU.

use super::Gpu;
use nvml_wrapper::enum_wrappers::device::Clock;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

/// The GPUs found, and a note when NVML could not be used.
pub fn probe(ram_total_bytes: u64) -> (Vec<Gpu>, Option<String>) {
    let mut gpus = Vec::new();
    let note = match nvidia(&mut gpus) {
        Ok(()) if gpus.is_empty() => Some("NVML: the NVIDIA driver reports 0 devices".into()),
        Ok(()) => None,
        Err(NvmlError::LibloadingError(_)) => {
            Some("NVML: libnvidia-ml could not be loaded (no NVIDIA driver installed)".into())
        }
        Err(err) => Some(format!("NVML: {err}")),
    };
    if let Some(apple) = apple_silicon(ram_total_bytes) {
        gpus.push(apple);
    }
    (gpus, note)
}

fn nvidia(gpus: &mut Vec<Gpu>) -> Result<(), NvmlError> {
    let nvml = Nvml::init()?;
    let driver = nvml.sys_driver_version().ok();
    for index in 0..nvml.device_count()? {
        let device = nvml.device_by_index(index)?;
        let memory = device.memory_info()?;
        let compute_capability = device
            .cuda_compute_capability()
            .ok()
            .map(|cc| format!("{}.{}", cc.major, cc.minor));
        // Peak = bus width × memory clock × 2 (NVML reports the DDR base clock).
        let bandwidth_gbs = match (
            device.memory_bus_width(),
            device.max_clock_info(Clock::Memory),
        ) {
            (Ok(bits), Ok(mhz)) if bits > 0 && mhz > 0 => {
                Some(f64::from(bits) / 8.0 * f64::from(mhz) * 2.0 / 1000.0)
            }
            _ => None,
        };
        let fp32_tflops = match (device.num_cores(), device.max_clock_info(Clock::SM)) {
            (Ok(cores), Ok(mhz)) if cores > 0 && mhz > 0 => {
                Some(f64::from(cores) * f64::from(mhz) * 2.0 / 1e6)
            }
            _ => None,
        };
        gpus.push(Gpu {
            vendor: "nvidia".into(),
            name: device.name()?,
            vram_total_bytes: memory.total,
            vram_free_bytes: memory.free,
            driver: driver.clone(),
            compute_capability,
            bandwidth_gbs,
            fp32_tflops,
            unified_memory: false,
        });
    }
    Ok(())
}

/// On Apple Silicon the GPU shares RAM; Metal lets a process use about 75% of it by default
/// (`recommendedMaxWorkingSetSize`), which is what the estimator must plan with.
fn apple_silicon(ram_total_bytes: u64) -> Option<Gpu> {
    if !(cfg!(target_os = "macos") && cfg!(target_arch = "aarch64")) {
        return None;
    }
    let usable = ram_total_bytes / 4 * 3;
    Some(Gpu {
        vendor: "apple".into(),
        name: "Apple Silicon GPU (Metal)".into(),
        vram_total_bytes: usable,
        vram_free_bytes: usable,
        driver: None,
        compute_capability: None,
        bandwidth_gbs: None,
        fp32_tflops: None,
        unified_memory: true,
    })
}
