//! CPU facts the OS exposes beyond what sysinfo reads: caches, frequency limits, governor.

use super::Cache;
use std::path::Path;

const CPU0: &str = "/sys/devices/system/cpu/cpu0";

/// Cache sizes of cpu0 from sysfs, per instance (L1d and L2 per core, L3 shared).
pub fn caches() -> Cache {
    caches_from(Path::new(CPU0))
}

fn caches_from(cpu_dir: &Path) -> Cache {
    let mut cache = Cache::default();
    let Ok(entries) = std::fs::read_dir(cpu_dir.join("cache")) else {
        return cache;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let read = |name: &str| read_trimmed(&dir.join(name));
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
        else {
            continue;
        };
        let Some(kib) = parse_cache_size_kib(&size) else {
            continue;
        };
        match (level.as_str(), kind.as_str()) {
            ("1", "Data") => cache.l1d_kib = Some(kib),
            ("2", "Unified") | ("2", "Data") => cache.l2_kib = Some(kib),
            ("3", "Unified") => cache.l3_kib = Some(kib),
            _ => {}
        }
    }
    cache
}

/// sysfs writes "32K", "1024K" or "32M".
fn parse_cache_size_kib(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Some(k) = text.strip_suffix('K') {
        k.parse().ok()
    } else if let Some(m) = text.strip_suffix('M') {
        m.parse::<u64>().ok().map(|m| m * 1024)
    } else {
        text.parse::<u64>().ok().map(|bytes| bytes / 1024)
    }
}

/// The highest frequency cpufreq allows, in MHz.
pub fn max_freq_mhz() -> Option<u64> {
    read_trimmed(&Path::new(CPU0).join("cpufreq/cpuinfo_max_freq"))
        .and_then(|khz| khz.parse::<u64>().ok())
        .map(|khz| khz / 1000)
}

/// The cpufreq governor ("ondemand" on a stock Pi, "performance" for benchmarking).
pub fn governor() -> Option<String> {
    read_trimmed(&Path::new(CPU0).join("cpufreq/scaling_governor"))
}

pub(super) fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!text.is_empty()).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sizes_parse_in_sysfs_units() {
        assert_eq!(parse_cache_size_kib("48K"), Some(48));
        assert_eq!(parse_cache_size_kib("32M\n"), Some(32 * 1024));
        assert_eq!(parse_cache_size_kib("weird"), None);
    }

    #[test]
    fn caches_are_read_from_a_sysfs_tree() {
        let dir = tempfile::tempdir().unwrap();
        let write = |index: &str, level: &str, kind: &str, size: &str| {
            let d = dir.path().join("cache").join(index);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("level"), level).unwrap();
            std::fs::write(d.join("type"), kind).unwrap();
            std::fs::write(d.join("size"), size).unwrap();
        };
        write("index0", "1", "Data", "32K\n");
        write("index1", "1", "Instruction", "64K\n");
        write("index2", "2", "Unified", "1024K\n");
        write("index3", "3", "Unified", "32M\n");
        let cache = caches_from(dir.path());
        assert_eq!(cache.l1d_kib, Some(32));
        assert_eq!(cache.l2_kib, Some(1024));
        assert_eq!(cache.l3_kib, Some(32 * 1024));
    }
}
