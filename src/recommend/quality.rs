//! How good a model is for a task, from the published scores in the catalog. The rule is in
//! docs/recommend.md; it is deliberately simple so a reader can check a ranking by hand.

use crate::catalog::ModelSpec;
use serde::Serialize;

/// Long-context work needs at least this many tokens of context.
pub const LONG_CONTEXT: u64 = 32_768;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    #[default]
    Chat,
    Code,
    Math,
    Creative,
    Multilingual,
    LongContext,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Chat => "chat",
            Task::Code => "code",
            Task::Math => "math",
            Task::Creative => "creative",
            Task::Multilingual => "multilingual",
            Task::LongContext => "long-context",
        }
    }

    /// Benchmarks that measure the task directly, best first.
    fn benchmarks(self) -> &'static [&'static str] {
        match self {
            Task::Code => &["HumanEval"],
            Task::Math => &["GSM8K", "MATH"],
            _ => &[],
        }
    }
}

/// The task score (percent-like) and where it comes from.
pub fn task_score(spec: &ModelSpec, task: Task) -> (f64, String) {
    let direct = task
        .benchmarks()
        .iter()
        .find_map(|b| spec.score(b).map(|s| (s, format!("{b} {s:.1}"))));
    let (mut score, basis) = match (direct, spec.score("MMLU")) {
        (Some(direct), _) => direct,
        // A general score says less about code or math than a direct one.
        (None, Some(mmlu)) if !task.benchmarks().is_empty() => {
            (0.8 * mmlu, format!("MMLU {mmlu:.1} × 0.8"))
        }
        (None, Some(mmlu)) => (mmlu, format!("MMLU {mmlu:.1}")),
        (None, None) => {
            let prior = size_prior(spec.params);
            (prior, format!("size prior {prior:.0}"))
        }
    };
    if spec.strengths.iter().any(|s| s == task.name()) && task != Task::Chat {
        score += 5.0;
    }
    (score, basis)
}

/// Without a published score, bigger models know more: about MMLU 30 at 135M, 45 at 1B,
/// 59 at 7B, 76 at 70B (the catalog's scored models follow this within about 10 points).
fn size_prior(params: u64) -> f64 {
    28.0 + 17.0 * (params.max(1) as f64 / 1e8).log10()
}

/// The share of quality a quantization keeps. Users' documents claim 2–3% lost at 8 bits and
/// 5–8% at 4 bits; llama.cpp's perplexity tables show less at Q8_0 and Q6_K. These sit between.
pub fn retained(quant: &str, spec: &ModelSpec) -> f64 {
    if spec.architecture.starts_with("bitnet") {
        return 1.0;
    }
    match quant {
        "F32" | "F16" | "BF16" => 1.0,
        "Q8_0" => 0.99,
        "Q6_K" => 0.985,
        "Q5_K_M" => 0.975,
        "Q4_K_M" => 0.955,
        "Q4_0" => 0.93,
        _ => 0.9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::find;

    #[test]
    fn code_prefers_a_coder_model_with_a_direct_score() {
        let (coder, basis) = task_score(find("qwen2.5-coder-14b").unwrap(), Task::Code);
        assert!(basis.starts_with("HumanEval"), "{basis}");
        let (general, _) = task_score(find("llama-3-8b").unwrap(), Task::Code);
        assert!(coder > general);
    }

    #[test]
    fn the_size_prior_grows_with_parameters() {
        assert!((size_prior(135_000_000) - 30.2).abs() < 0.5);
        assert!(size_prior(7_000_000_000) > size_prior(1_000_000_000));
    }

    #[test]
    fn quantization_costs_quality_in_order() {
        let spec = find("qwen2.5-7b").unwrap();
        let order = ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q2_K"];
        for pair in order.windows(2) {
            assert!(
                retained(pair[0], spec) > retained(pair[1], spec),
                "{pair:?}"
            );
        }
    }
}
