//! The embedded model catalog: data (data/catalog.toml), not code.

mod quant;
mod tensors;

pub use quant::{Quant, QUANTS};
pub use tensors::{tensor_plan, PlannedTensor};

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

const CATALOG_TOML: &str = include_str!("../../data/catalog.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub id: String,
    pub name: String,
    pub family: String,
    /// As GGUF's `general.architecture` names it.
    pub architecture: String,
    /// Total parameters; for MoE all experts.
    pub params: u64,
    pub layers: u64,
    pub hidden_size: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    /// Per expert for MoE.
    pub ffn_size: u64,
    pub vocab_size: u64,
    pub tied_embeddings: bool,
    pub max_context: u64,
    #[serde(default)]
    pub sliding_window: u64,
    #[serde(default)]
    pub sliding_window_layers: u64,
    pub experts_total: u64,
    pub experts_active: u64,
    pub license: String,
    pub license_permissive: bool,
    pub languages: Vec<String>,
    pub strengths: Vec<String>,
    pub config_source: String,
    pub gguf_repos: Vec<String>,
    #[serde(default)]
    pub quality: Vec<QualityScore>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityScore {
    pub benchmark: String,
    /// Percent.
    pub score: f64,
    pub source: String,
}

#[derive(Deserialize)]
struct CatalogFile {
    model: Vec<ModelSpec>,
}

/// Every catalog model, in file order. The catalog is compiled in; a unit test proves it parses.
pub fn models() -> &'static [ModelSpec] {
    static MODELS: OnceLock<Vec<ModelSpec>> = OnceLock::new();
    MODELS.get_or_init(|| {
        toml::from_str::<CatalogFile>(CATALOG_TOML)
            .map(|c| c.model)
            .unwrap_or_default()
    })
}

#[derive(Debug, thiserror::Error)]
#[error("no model `{id}` in the catalog{}\nhint: `fitbench models` lists every id", suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
pub struct UnknownModel {
    pub id: String,
    pub suggestion: Option<String>,
}

/// Looks a model up by id, in any case.
pub fn find(id: &str) -> Result<&'static ModelSpec, UnknownModel> {
    let wanted = id.to_ascii_lowercase();
    models().iter().find(|m| m.id == wanted).ok_or_else(|| {
        let suggestion = models()
            .iter()
            .find(|m| m.id.starts_with(&wanted) || wanted.starts_with(&m.id))
            .or_else(|| models().iter().find(|m| m.id.contains(&wanted)))
            .map(|m| m.id.clone());
        UnknownModel {
            id: id.to_string(),
            suggestion,
        }
    })
}

impl ModelSpec {
    pub fn is_moe(&self) -> bool {
        self.experts_total > 1
    }

    /// The users' first scheme: Tiny < 500M, Small 0.5–1B, Micro 1–3B, Medium 3–10B,
    /// Large 10–30B, XL 30B+.
    pub fn size_class(&self) -> &'static str {
        size_class(self.params)
    }

    /// The SLM scheme: micro 100M–1.4B, small 1.5–13.9B, medium 14–30B.
    pub fn slm_class(&self) -> &'static str {
        slm_class(self.params)
    }

    /// The best published score for `benchmark`, if any.
    pub fn score(&self, benchmark: &str) -> Option<f64> {
        self.quality
            .iter()
            .filter(|q| q.benchmark.eq_ignore_ascii_case(benchmark))
            .map(|q| q.score)
            .reduce(f64::max)
    }
}

pub fn size_class(params: u64) -> &'static str {
    match params {
        p if p < 500_000_000 => "Tiny",
        p if p < 1_000_000_000 => "Small",
        p if p < 3_000_000_000 => "Micro",
        p if p < 10_000_000_000 => "Medium",
        p if p < 30_000_000_000 => "Large",
        _ => "XL",
    }
}

/// Boundaries round as the users' document does: "1.4B" covers up to 1.45B.
pub fn slm_class(params: u64) -> &'static str {
    match params {
        p if p < 100_000_000 => "below SLM",
        p if p < 1_450_000_000 => "micro",
        p if p < 13_950_000_000 => "small",
        p if p <= 30_500_000_000 => "medium",
        _ => "above SLM",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_parses_and_ids_are_unique_and_lowercase() {
        let all = models();
        assert!(all.len() >= 37, "{} models", all.len());
        let mut ids: Vec<&str> = all.iter().map(|m| m.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all.len(), "duplicate ids");
        for m in all {
            assert_eq!(m.id, m.id.to_ascii_lowercase());
            assert!(
                m.config_source.starts_with("https://"),
                "{}: cite the config",
                m.id
            );
            assert!(
                m.heads % m.kv_heads == 0,
                "{}: heads not a multiple of kv heads",
                m.id
            );
            assert!(m.experts_active <= m.experts_total, "{}", m.id);
            assert!(m.sliding_window_layers <= m.layers, "{}", m.id);
        }
    }

    #[test]
    fn every_model_the_users_name_is_present() {
        for id in [
            "phi-3-mini",
            "phi-4-mini",
            "gemma-2b",
            "gemma-3-270m",
            "gemma-3-1b",
            "gemma-3-4b",
            "tinyllama-1.1b",
            "qwen2-0.5b",
            "qwen2-1.5b",
            "qwen2-7b",
            "qwen2.5-0.5b",
            "qwen2.5-1.5b",
            "qwen2.5-3b",
            "qwen2.5-7b",
            "qwen3-0.6b",
            "qwen3-1.7b",
            "qwen3-4b",
            "qwen3-8b",
            "stablelm-zephyr-3b",
            "mobilellm-125m",
            "mobilellm-350m",
            "llama-3-8b",
            "llama-3.2-1b",
            "llama-3.2-3b",
            "bitnet-b1.58-2b",
            "mixtral-8x7b",
            "llama-3-70b",
            "qwen2.5-coder-14b",
            "qwen2.5-coder-32b",
            "deepseek-coder-33b",
            "phi-4",
            "qwq-32b",
            "smollm2-135m",
            "smollm2-360m",
            "smollm2-1.7b",
            "mistral-7b",
        ] {
            assert!(find(id).is_ok(), "{id} missing");
        }
    }

    #[test]
    fn lookup_ignores_case_and_suggests() {
        assert_eq!(find("TinyLlama-1.1B").unwrap().id, "tinyllama-1.1b");
        let err = find("qwen3-0.6").unwrap_err();
        assert_eq!(err.suggestion.as_deref(), Some("qwen3-0.6b"));
        assert!(err.to_string().contains("fitbench models"));
    }

    #[test]
    fn size_classes_follow_both_schemes() {
        let class = |id: &str| {
            let m = find(id).unwrap();
            (m.size_class(), m.slm_class())
        };
        assert_eq!(class("smollm2-135m"), ("Tiny", "micro"));
        assert_eq!(class("qwen2-0.5b"), ("Tiny", "micro"));
        assert_eq!(class("gemma-3-1b"), ("Small", "micro"));
        assert_eq!(class("tinyllama-1.1b"), ("Micro", "micro"));
        assert_eq!(class("phi-3-mini"), ("Medium", "small"));
        assert_eq!(class("phi-4"), ("Large", "medium"));
        assert_eq!(class("llama-3-70b"), ("XL", "above SLM"));
    }

    #[test]
    fn moe_speed_counts_only_active_experts() {
        use crate::estimate::Footprint;
        let q4 = Quant::parse("Q4_K_M").unwrap();
        // Mixtral: 46.7B total, about 12.9B active.
        let mixtral = Footprint::from_catalog(find("mixtral-8x7b").unwrap(), q4);
        let active = mixtral.active_params as f64 / 1e9;
        assert!((12.5..13.2).contains(&active), "{active}");
        // Dense: everything but the embedding table is active.
        let dense = Footprint::from_catalog(find("llama-3-8b").unwrap(), q4);
        let embedding = 4096 * 128_256;
        assert_eq!(dense.active_params, dense.params - embedding);
    }
}
