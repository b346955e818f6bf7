//! The views of results rows the charts and tables are drawn from.

use crate::results::BenchRecord;
use std::collections::BTreeMap;

/// The kind of test a row measured, by llama-bench's test name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TestKind {
    Prompt,
    Generation,
    PromptThenGeneration,
}

impl TestKind {
    pub fn of(test: &str) -> TestKind {
        if test.contains('+') {
            TestKind::PromptThenGeneration
        } else if test.starts_with("tg") {
            TestKind::Generation
        } else {
            TestKind::Prompt
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            TestKind::Prompt => "prompt processing",
            TestKind::Generation => "generation",
            TestKind::PromptThenGeneration => "prompt + generation",
        }
    }
}

/// The model's name without its quantization: `SmolLM2-135M-Instruct.Q4_1.gguf` and
/// `smollm2-135m-Q4_0.gguf` become `SmolLM2-135M-Instruct` and `smollm2-135m`.
pub fn model_base(record: &BenchRecord) -> String {
    let stem = record
        .model_filename
        .strip_suffix(".gguf")
        .unwrap_or(&record.model_filename);
    let lower = stem.to_ascii_lowercase();
    let quant = record.quant.to_ascii_lowercase();
    let base = match lower.rfind(&quant).filter(|_| !quant.is_empty()) {
        Some(at) => format!("{}{}", &stem[..at], &stem[at + quant.len()..]),
        None => stem.to_string(),
    };
    let base = base.trim_matches(|c| matches!(c, '.' | '-' | '_' | ' '));
    if base.is_empty() {
        record.model_type.clone()
    } else {
        base.to_string()
    }
}

/// What a chart calls one model file: base name, quantization, whether it is a twin, and
/// the backend when it is not the CPU (a GPU row must not stand in for a CPU one).
pub fn model_label(record: &BenchRecord) -> String {
    let twin = if record.synthetic { " (synthetic)" } else { "" };
    let backend = match record.backend.as_str() {
        "" | "cpu" => String::new(),
        other => format!(" [{other}]"),
    };
    format!("{} {}{twin}{backend}", model_base(record), record.quant)
}

/// One box, summarised from the rows it wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxSummary {
    pub host: String,
    pub cpu_model: String,
    pub cpu_arch: String,
    pub cpu_simd: String,
    pub gpu: String,
    pub ram_total_bytes: u64,
    pub vram_total_bytes: u64,
    pub backends: Vec<String>,
    pub fitbench_versions: Vec<String>,
    pub rows: usize,
    pub throttled_rows: usize,
}

/// Boxes in the order their first row appears.
pub fn boxes(records: &[BenchRecord]) -> Vec<BoxSummary> {
    let mut boxes: Vec<BoxSummary> = Vec::new();
    for r in records {
        let i = match boxes.iter().position(|b| b.host == r.host) {
            Some(i) => i,
            None => {
                boxes.push(BoxSummary {
                    host: r.host.clone(),
                    cpu_model: r.cpu_model.clone(),
                    cpu_arch: r.cpu_arch.clone(),
                    cpu_simd: r.cpu_simd.clone(),
                    gpu: r.gpu.clone(),
                    ram_total_bytes: r.ram_total_bytes,
                    vram_total_bytes: r.vram_total_bytes,
                    backends: Vec::new(),
                    fitbench_versions: Vec::new(),
                    rows: 0,
                    throttled_rows: 0,
                });
                boxes.len() - 1
            }
        };
        let b = &mut boxes[i];
        b.rows += 1;
        b.throttled_rows += usize::from(r.throttled);
        push_unique(&mut b.backends, &r.backend);
        push_unique(
            &mut b.fitbench_versions,
            &format!("{} ({})", r.fitbench_version, r.fitbench_commit),
        );
    }
    boxes
}

fn push_unique(list: &mut Vec<String>, value: &str) {
    if !list.iter().any(|v| v == value) {
        list.push(value.to_string());
    }
}

/// Where one model file ran one test on one box.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigKey {
    pub host: String,
    pub model: String,
    pub test: String,
}

/// For each box × model × test, the row of its fastest thread count: what the box can do.
/// A configuration measured more than once (two files, a rerun) is also represented by its
/// fastest row.
pub fn best_rows(records: &[BenchRecord]) -> BTreeMap<ConfigKey, &BenchRecord> {
    let mut best: BTreeMap<ConfigKey, &BenchRecord> = BTreeMap::new();
    for r in records {
        let key = ConfigKey {
            host: r.host.clone(),
            model: model_label(r),
            test: r.test.clone(),
        };
        match best.get(&key) {
            Some(kept) if kept.avg_ts > r.avg_ts => {}
            _ => {
                best.insert(key, r);
            }
        }
    }
    best
}

/// A configuration measured at two or more thread counts: (threads, mean, stddev) by
/// thread count.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadSweep {
    pub key: ConfigKey,
    pub points: Vec<(usize, f64, f64)>,
}

pub fn thread_sweeps(records: &[BenchRecord]) -> Vec<ThreadSweep> {
    let mut by_key: BTreeMap<ConfigKey, BTreeMap<usize, (f64, f64)>> = BTreeMap::new();
    for r in records {
        let key = ConfigKey {
            host: r.host.clone(),
            model: model_label(r),
            test: r.test.clone(),
        };
        by_key
            .entry(key)
            .or_default()
            .insert(r.n_threads, (r.avg_ts, r.stddev_ts));
    }
    by_key
        .into_iter()
        .filter(|(_, points)| points.len() >= 2)
        .map(|(key, points)| ThreadSweep {
            key,
            points: points.into_iter().map(|(t, (m, s))| (t, m, s)).collect(),
        })
        .collect()
}

/// A model's file size at each quantization measured, largest first.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantSizes {
    pub model: String,
    pub sizes: Vec<(String, u64)>,
}

/// Models seen at two or more quantizations.
pub fn quant_sizes(records: &[BenchRecord]) -> Vec<QuantSizes> {
    let mut by_model: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.model_size > 0) {
        by_model
            .entry(model_base(r))
            .or_default()
            .insert(r.quant.clone(), r.model_size);
    }
    by_model
        .into_iter()
        .filter(|(_, sizes)| sizes.len() >= 2)
        .map(|(model, sizes)| {
            let mut sizes: Vec<(String, u64)> = sizes.into_iter().collect();
            sizes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            QuantSizes { model, sizes }
        })
        .collect()
}

/// Model × test configurations measured on two or more boxes, with each box's best row.
pub fn shared_configs(
    best: &BTreeMap<ConfigKey, &BenchRecord>,
) -> BTreeMap<(String, String), BTreeMap<String, f64>> {
    let mut shared: BTreeMap<(String, String), BTreeMap<String, f64>> = BTreeMap::new();
    for (key, r) in best {
        shared
            .entry((key.model.clone(), key.test.clone()))
            .or_default()
            .insert(key.host.clone(), r.avg_ts);
    }
    shared.retain(|_, hosts| hosts.len() >= 2);
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        host: &str,
        file: &str,
        quant: &str,
        test: &str,
        threads: usize,
        ts: f64,
    ) -> BenchRecord {
        BenchRecord {
            host: host.into(),
            model_filename: file.into(),
            quant: quant.into(),
            test: test.into(),
            n_threads: threads,
            avg_ts: ts,
            model_size: 1000,
            ..BenchRecord::default()
        }
    }

    #[test]
    fn the_quantization_is_cut_out_of_the_file_name() {
        let cases = [
            (
                "SmolLM2-135M-Instruct.Q4_1.gguf",
                "Q4_1",
                "SmolLM2-135M-Instruct",
            ),
            ("gemma-3-270m-q4_k_m.gguf", "Q4_K_M", "gemma-3-270m"),
            ("smollm2-135m-Q8_0.gguf", "Q8_0", "smollm2-135m"),
            ("model.gguf", "F16", "model"),
        ];
        for (file, quant, base) in cases {
            assert_eq!(
                model_base(&row("h", file, quant, "tg8", 1, 1.0)),
                base,
                "{file}"
            );
        }
    }

    #[test]
    fn test_kinds_follow_llama_bench_names() {
        assert_eq!(TestKind::of("pp512"), TestKind::Prompt);
        assert_eq!(TestKind::of("tg128 @ d1024"), TestKind::Generation);
        assert_eq!(TestKind::of("pp512+tg128"), TestKind::PromptThenGeneration);
    }

    #[test]
    fn the_fastest_thread_count_stands_for_a_configuration() {
        let rows = [
            row("a", "m-Q4_0.gguf", "Q4_0", "tg8", 1, 10.0),
            row("a", "m-Q4_0.gguf", "Q4_0", "tg8", 2, 18.0),
            row("a", "m-Q4_0.gguf", "Q4_0", "tg8", 4, 15.0),
            row("b", "m-Q4_0.gguf", "Q4_0", "tg8", 4, 5.0),
        ];
        let best = best_rows(&rows);
        assert_eq!(best.len(), 2);
        let a = best.values().next().unwrap();
        assert_eq!((a.host.as_str(), a.n_threads), ("a", 2));
        let sweeps = thread_sweeps(&rows);
        assert_eq!(sweeps.len(), 1, "box b ran one thread count");
        assert_eq!(
            sweeps[0].points.iter().map(|p| p.0).collect::<Vec<_>>(),
            [1, 2, 4]
        );
        let shared = shared_configs(&best);
        let hosts = &shared[&("m Q4_0".to_string(), "tg8".to_string())];
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts["b"], 5.0);
    }

    #[test]
    fn sizes_are_listed_for_models_seen_at_two_quantizations() {
        let mut q8 = row("a", "m-Q8_0.gguf", "Q8_0", "tg8", 1, 1.0);
        q8.model_size = 2000;
        let rows = [
            row("a", "m-Q4_0.gguf", "Q4_0", "tg8", 1, 1.0),
            q8,
            row("a", "other-Q4_0.gguf", "Q4_0", "tg8", 1, 1.0),
        ];
        let sizes = quant_sizes(&rows);
        assert_eq!(sizes.len(), 1);
        assert_eq!(sizes[0].model, "m");
        assert_eq!(
            sizes[0].sizes,
            [("Q8_0".to_string(), 2000), ("Q4_0".to_string(), 1000)]
        );
    }
}
