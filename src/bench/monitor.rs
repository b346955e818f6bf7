//! What the box is doing while it is measured: memory, heat, clocks and energy. Everything
//! here is best effort: a reading the OS does not offer is None, never an error.

use std::path::Path;

/// Peak resident memory of this process so far (Linux VmHWM).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The hottest CPU-ish sensor, °C.
pub fn cpu_temperature() -> Option<f32> {
    let components = sysinfo::Components::new_with_refreshed_list();
    components
        .iter()
        .filter_map(|c| c.temperature())
        .filter(|t| t.is_finite() && *t > 0.0)
        .reduce(f32::max)
}

/// Current frequency of cpu0, MHz (cpufreq; absent in most VMs).
pub fn cpu_frequency_mhz() -> Option<u64> {
    let khz =
        std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq").ok()?;
    khz.trim().parse::<u64>().ok().map(|k| k / 1000)
}

/// Package energy counter from Intel/AMD RAPL, microjoules; readable as root on most x86
/// Linux boxes.
pub fn energy_microjoules() -> Option<u64> {
    let text = std::fs::read_to_string("/sys/class/powercap/intel-rapl:0/energy_uj").ok()?;
    text.trim().parse().ok()
}

/// Share of `path` already in the page cache: near 1.0 means a warm load.
pub fn page_cache_share(path: &Path) -> Option<f64> {
    use std::os::unix::io::AsRawFd;
    let file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len() as usize;
    if len == 0 {
        return Some(1.0);
    }
    let page = 4096usize;
    let pages = len.div_ceil(page);
    // SAFETY: a read-only private mapping of a file we hold open, unmapped before returning;
    // mincore only writes one byte per page into `residency`, which has exactly that many.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        );
        if addr == libc::MAP_FAILED {
            return None;
        }
        let mut residency = vec![0u8; pages];
        let ok = libc::mincore(addr, len, residency.as_mut_ptr().cast()) == 0;
        libc::munmap(addr, len);
        ok.then(|| residency.iter().filter(|b| *b & 1 == 1).count() as f64 / pages as f64)
    }
}

/// Readings taken around one test.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    pub temp_start_c: Option<f32>,
    pub temp_max_c: Option<f32>,
    pub freq_start_mhz: Option<u64>,
    pub freq_min_mhz: Option<u64>,
    energy_start_uj: Option<u64>,
    pub energy_j: Option<f64>,
    /// A Raspberry Pi's firmware reported throttling or a frequency cap during the test.
    pub firmware_throttled: bool,
}

impl Watch {
    pub fn start() -> Watch {
        let temp = cpu_temperature();
        let freq = cpu_frequency_mhz();
        Watch {
            temp_start_c: temp,
            temp_max_c: temp,
            freq_start_mhz: freq,
            freq_min_mhz: freq,
            energy_start_uj: energy_microjoules(),
            energy_j: None,
            firmware_throttled: false,
        }
    }

    /// Called between repetitions: keeps the hottest temperature and the lowest clock.
    pub fn sample(&mut self) {
        if let Some(t) = cpu_temperature() {
            self.temp_max_c = Some(self.temp_max_c.map_or(t, |m| m.max(t)));
        }
        if let Some(f) = cpu_frequency_mhz() {
            self.freq_min_mhz = Some(self.freq_min_mhz.map_or(f, |m| m.min(f)));
        }
    }

    pub fn finish(&mut self) {
        self.sample();
        if let (Some(start), Some(end)) = (self.energy_start_uj, energy_microjoules()) {
            // The counter wraps; a wrapped reading is dropped rather than guessed.
            self.energy_j = end.checked_sub(start).map(|uj| uj as f64 / 1e6);
        }
        self.firmware_throttled = crate::probe::vcgencmd_throttled()
            .is_some_and(|value| crate::probe::throttled_now(&value));
    }

    /// Throttled: the CPU got hot (≥ 80 °C), its clock fell more than 10% during the test,
    /// or a Pi's firmware says so.
    pub fn throttled(&self) -> bool {
        let hot = self.temp_max_c.is_some_and(|t| t >= 80.0);
        let slowed = match (self.freq_start_mhz, self.freq_min_mhz) {
            (Some(start), Some(min)) => (min as f64) < 0.9 * start as f64,
            _ => false,
        };
        hot || slowed || self.firmware_throttled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_peak_rss() {
        let rss = peak_rss_bytes().expect("Linux reports VmHWM");
        assert!(rss > 1 << 20, "{rss}");
    }

    #[test]
    fn a_file_just_written_is_in_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warm");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let share = page_cache_share(&path).unwrap();
        assert!(share > 0.9, "{share}");
    }

    #[test]
    fn a_clock_drop_or_heat_flags_throttling() {
        let mut w = Watch {
            freq_start_mhz: Some(1800),
            freq_min_mhz: Some(1800),
            ..Watch::default()
        };
        assert!(!w.throttled());
        w.freq_min_mhz = Some(1200);
        assert!(w.throttled());
        let hot = Watch {
            temp_max_c: Some(82.0),
            ..Watch::default()
        };
        assert!(hot.throttled());
    }
}
