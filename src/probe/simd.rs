//! SIMD extensions: what the CPU has (run-time detection) and what this binary was built to use.

/// The widest instructions fitbench's kernels may use, as `FITBENCH_KERNEL` caps them: what
/// a box without AVX-512 (or without SIMD kernels) would run, measured on one that has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelCap {
    Portable,
    Avx2,
}

impl KernelCap {
    pub fn name(self) -> &'static str {
        match self {
            KernelCap::Portable => "portable loops",
            KernelCap::Avx2 => "AVX2",
        }
    }
}

/// `FITBENCH_KERNEL`'s cap, if it sets one.
pub fn kernel_cap() -> anyhow::Result<Option<KernelCap>> {
    let Ok(value) = std::env::var("FITBENCH_KERNEL") else {
        return Ok(None);
    };
    match value.trim() {
        "" | "best" => Ok(None),
        "avx2" => Ok(Some(KernelCap::Avx2)),
        "portable" => Ok(Some(KernelCap::Portable)),
        other => anyhow::bail!(
            "FITBENCH_KERNEL={other} names no kernel: use avx2 or portable to cap the kernels, \
             or unset it for the fastest this CPU runs"
        ),
    }
}

/// `detected` without the extensions `cap` leaves the kernels: what the runs used.
pub fn capped(detected: Vec<String>, cap: KernelCap) -> Vec<String> {
    let kept = |name: &str| match cap {
        KernelCap::Avx2 => !name.starts_with("avx512") && name != "avxvnni" && name != "amx",
        KernelCap::Portable => !name.starts_with("avx") && name != "fma" && name != "amx",
    };
    detected.into_iter().filter(|name| kept(name)).collect()
}

/// Extensions the CPU reports at run time, in a fixed order so output is stable.
pub fn detected() -> Vec<String> {
    detected_by_arch()
}

#[cfg(target_arch = "x86_64")]
fn detected_by_arch() -> Vec<String> {
    use std::arch::is_x86_feature_detected as has;
    let amx = has_amx_tile();
    [
        ("sse4.2", has!("sse4.2")),
        ("avx", has!("avx")),
        ("avx2", has!("avx2")),
        ("fma", has!("fma")),
        ("f16c", has!("f16c")),
        ("avx512f", has!("avx512f")),
        ("avx512bw", has!("avx512bw")),
        ("avx512vl", has!("avx512vl")),
        ("avx512vnni", has!("avx512vnni")),
        ("avxvnni", has!("avxvnni")),
        ("amx", amx),
    ]
    .into_iter()
    .filter(|(_, present)| *present)
    .map(|(name, _)| name.to_string())
    .collect()
}

#[cfg(target_arch = "aarch64")]
fn detected_by_arch() -> Vec<String> {
    use std::arch::is_aarch64_feature_detected as has;
    [
        ("neon", has!("neon")),
        ("dotprod", has!("dotprod")),
        ("i8mm", has!("i8mm")),
        ("sve", has!("sve")),
        ("fp16", has!("fp16")),
    ]
    .into_iter()
    .filter(|(_, present)| *present)
    .map(|(name, _)| name.to_string())
    .collect()
}

/// AMX detection is still unstable in `is_x86_feature_detected!`, so read CPUID leaf 7
/// (EDX bit 24, AMX-TILE) directly.
#[cfg(target_arch = "x86_64")]
fn has_amx_tile() -> bool {
    #[allow(unused_unsafe)] // `__cpuid_count` is safe on newer toolchains
    let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
    leaf7.edx & (1 << 24) != 0
}

/// 32-bit ARM (a Pi 3B on a 32-bit OS) has no stable detection macro, so read what the kernel says.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detected_by_arch() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    from_cpuinfo_features(&cpuinfo)
}

/// Maps the `Features` line of an ARM /proc/cpuinfo to fitbench's names.
#[cfg_attr(any(target_arch = "x86_64", target_arch = "aarch64"), allow(dead_code))]
fn from_cpuinfo_features(cpuinfo: &str) -> Vec<String> {
    let Some(line) = cpuinfo.lines().find(|l| l.starts_with("Features")) else {
        return Vec::new();
    };
    let flags: Vec<&str> = line
        .split(':')
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    [
        ("neon", &["neon", "asimd"][..]),
        ("dotprod", &["asimddp"][..]),
        ("i8mm", &["i8mm"][..]),
        ("sve", &["sve"][..]),
        ("fp16", &["fphp", "asimdhp"][..]),
    ]
    .into_iter()
    .filter(|(_, kernel_names)| kernel_names.iter().any(|k| flags.contains(k)))
    .map(|(name, _)| name.to_string())
    .collect()
}

/// Extensions the compiler was allowed to emit for this binary (`-C target-cpu`/`target-feature`).
pub fn compiled() -> Vec<String> {
    let features: &[(&str, bool)] = &[
        ("sse2", cfg!(target_feature = "sse2")),
        ("sse4.2", cfg!(target_feature = "sse4.2")),
        ("avx", cfg!(target_feature = "avx")),
        ("avx2", cfg!(target_feature = "avx2")),
        ("fma", cfg!(target_feature = "fma")),
        ("f16c", cfg!(target_feature = "f16c")),
        ("avx512f", cfg!(target_feature = "avx512f")),
        ("avx512bw", cfg!(target_feature = "avx512bw")),
        ("avx512vl", cfg!(target_feature = "avx512vl")),
        ("avx512vnni", cfg!(target_feature = "avx512vnni")),
        ("avxvnni", cfg!(target_feature = "avxvnni")),
        ("neon", cfg!(target_feature = "neon")),
        ("dotprod", cfg!(target_feature = "dotprod")),
        ("i8mm", cfg!(target_feature = "i8mm")),
        ("sve", cfg!(target_feature = "sve")),
        ("fp16", cfg!(target_feature = "fp16")),
    ];
    features
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| name.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_leaves_only_what_its_kernels_use() {
        let detected: Vec<String> = ["sse4.2", "avx", "avx2", "fma", "f16c", "avx512f"]
            .into_iter()
            .chain(["avx512vnni", "avxvnni", "amx"])
            .map(String::from)
            .collect();
        assert_eq!(
            capped(detected.clone(), KernelCap::Avx2),
            ["sse4.2", "avx", "avx2", "fma", "f16c"]
        );
        assert_eq!(capped(detected, KernelCap::Portable), ["sse4.2", "f16c"]);
    }

    #[test]
    fn compiled_features_are_a_subset_of_detected_ones() {
        // A binary built for AVX2 would have crashed before this point on a CPU without it.
        let detected = detected();
        for feature in compiled() {
            // SSE2 is the x86-64 baseline, so detection does not list it.
            if feature == "sse2" {
                continue;
            }
            assert!(
                detected.contains(&feature),
                "{feature} compiled in but not detected"
            );
        }
    }

    #[test]
    fn arm_cpuinfo_features_map_to_fitbench_names() {
        let pi5 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n";
        assert_eq!(from_cpuinfo_features(pi5), ["neon", "dotprod", "fp16"]);
        let pi3_32bit = "Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32\n";
        assert_eq!(from_cpuinfo_features(pi3_32bit), ["neon"]);
        assert!(from_cpuinfo_features("model name: x").is_empty());
    }
}
