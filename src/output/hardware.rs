//! Tables for `probe` and `profiles`.

use super::{format_bytes, new_table};
use crate::probe::Hardware;
use crate::profiles::Profile;

/// One row per fact, grouped the way people ask: memory, CPU, GPU, board and heat.
pub fn hardware_table(hw: &Hardware) -> String {
    let mut table = new_table();
    table.set_header(vec![hw.name.as_str(), hw.origin.as_str()]);
    let mut row = |key: &str, value: String| {
        table.add_row(vec![key.to_string(), value]);
    };
    let mem = &hw.memory;
    row(
        "RAM",
        format!(
            "{} total, {} available",
            format_bytes(mem.total_bytes),
            format_bytes(mem.available_bytes)
        ),
    );
    row(
        "swap",
        if mem.swap_total_bytes == 0 {
            "none".into()
        } else {
            format!(
                "{} total, {} used",
                format_bytes(mem.swap_total_bytes),
                format_bytes(mem.swap_used_bytes)
            )
        },
    );
    if let Some(peak) = mem.bandwidth_gbs {
        row("memory bandwidth", format!("{peak:.1} GB/s theoretical"));
    }
    if let Some(m) = &mem.measured {
        row(
            "read bandwidth",
            format!(
                "{:.1} GB/s with 1 thread, {:.1} GB/s with {} threads ({} MiB buffer)",
                m.single_thread_gbs, m.all_threads_gbs, m.threads, m.buffer_mib
            ),
        );
    }

    let cpu = &hw.cpu;
    row("CPU", format!("{} ({})", cpu.model, cpu.arch));
    row(
        "cores",
        format!(
            "{} physical, {} logical",
            cpu.physical_cores, cpu.logical_cores
        ),
    );
    let freq = match (cpu.freq_mhz, cpu.max_freq_mhz) {
        (Some(now), Some(max)) => Some(format!("{now} MHz now, {max} MHz max")),
        (None, Some(max)) => Some(format!("{max} MHz max")),
        (Some(now), None) => Some(format!("{now} MHz")),
        (None, None) => None,
    };
    if let Some(freq) = freq {
        let governor = cpu
            .governor
            .as_deref()
            .map(|g| format!(", governor {g}"))
            .unwrap_or_default();
        row("frequency", format!("{freq}{governor}"));
    }
    let caches: Vec<String> = [
        ("L1d", cpu.cache.l1d_kib),
        ("L2", cpu.cache.l2_kib),
        ("L3", cpu.cache.l3_kib),
    ]
    .iter()
    .filter_map(|(level, kib)| kib.map(|k| format!("{level} {}", format_bytes(k * 1024))))
    .collect();
    if !caches.is_empty() {
        row("caches", caches.join(", "));
    }
    row("SIMD", list_or_none(&cpu.simd));
    if hw.origin == "probe" {
        let unused: Vec<&str> = ["avx2", "avx512f", "dotprod", "i8mm"]
            .into_iter()
            .filter(|f| {
                cpu.simd.iter().any(|s| s == f) && !cpu.compiled_simd.iter().any(|c| c == f)
            })
            .collect();
        let mut compiled = list_or_none(&cpu.compiled_simd);
        if !unused.is_empty() {
            compiled.push_str(&format!(
                " (this binary cannot use {}: rebuild with RUSTFLAGS=\"-C target-cpu=native\")",
                unused.join(", ")
            ));
        }
        row("compiled for", compiled);
    }

    if hw.gpus.is_empty() {
        row("GPU", "no NVIDIA GPU found".into());
    }
    for gpu in &hw.gpus {
        let mut detail = format!(
            "{}: {} total, {} free",
            gpu.name,
            format_bytes(gpu.vram_total_bytes),
            format_bytes(gpu.vram_free_bytes)
        );
        if gpu.unified_memory {
            detail.push_str(" (shared with RAM)");
        }
        if let Some(cc) = &gpu.compute_capability {
            detail.push_str(&format!(", compute {cc}"));
        }
        if let Some(driver) = &gpu.driver {
            detail.push_str(&format!(", driver {driver}"));
        }
        if let Some(bw) = gpu.bandwidth_gbs {
            detail.push_str(&format!(", {bw:.0} GB/s"));
        }
        row("GPU", detail);
    }

    if let Some(board) = &hw.board {
        row("board", board.clone());
    }
    row("OS", format!("{}, kernel {}", hw.os.name, hw.os.kernel));
    if !hw.thermal.sensors.is_empty() {
        let hottest = hw
            .thermal
            .sensors
            .iter()
            .max_by(|a, b| a.celsius.total_cmp(&b.celsius));
        if let Some(s) = hottest {
            row(
                "temperature",
                format!(
                    "{:.0} °C ({}; {} sensors)",
                    s.celsius,
                    s.label,
                    hw.thermal.sensors.len()
                ),
            );
        }
    }
    if let Some(throttled) = &hw.thermal.throttled {
        let state = if throttled == "0x0" {
            "never throttled since boot".to_string()
        } else {
            format!("{throttled} (non-zero: under-voltage or throttling)")
        };
        row("throttled", state);
    }
    for note in &hw.notes {
        row("note", note.clone());
    }
    table.to_string()
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(" ")
    }
}

pub fn profiles_table(profiles: &[Profile]) -> String {
    let mut table = new_table();
    table.set_header(vec!["name", "RAM", "CPU", "GPU", "bandwidth", "source"]);
    for profile in profiles {
        let hw = &profile.hardware;
        let gpu = hw
            .gpus
            .iter()
            .map(|g| format!("{} {}", g.name, format_bytes(g.vram_total_bytes)))
            .collect::<Vec<_>>()
            .join(", ");
        table.add_row(vec![
            hw.name.clone(),
            format_bytes(hw.memory.total_bytes),
            format!("{} × {}", hw.cpu.logical_cores, hw.cpu.model),
            if gpu.is_empty() { "-".into() } else { gpu },
            hw.memory
                .bandwidth_gbs
                .map(|b| format!("{b:.1} GB/s"))
                .unwrap_or_else(|| "-".into()),
            profile.source.to_string(),
        ]);
    }
    table.to_string()
}
