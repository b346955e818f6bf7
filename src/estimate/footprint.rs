//! What the estimator needs to know about a model, from the catalog or from a GGUF header.

use crate::catalog::{tensor_plan, ModelSpec, Quant};
use crate::gguf::{bytes_by_type, GgmlType, GgufFile};
use serde::Serialize;

/// Architecture numbers and weight bytes of one model at one quantization.
#[derive(Debug, Clone, Serialize)]
pub struct Footprint {
    pub model: String,
    pub architecture: String,
    pub quant: String,
    pub params: u64,
    pub layers: u64,
    pub hidden_size: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    /// Per expert for MoE.
    pub ffn_size: u64,
    pub vocab_size: u64,
    pub max_context: u64,
    pub sliding_window: u64,
    pub sliding_window_layers: u64,
    pub experts_total: u64,
    pub experts_active: u64,
    pub weights_bytes: u64,
    /// Token embedding and output matrix: on the GPU only with a full offload.
    pub embedding_and_output_bytes: u64,
    /// Weights one generated token reads: all but the embedding table (one row of it), and
    /// only the active experts of an MoE layer.
    pub bytes_read_per_token: u64,
    /// Parameters one token multiplies through.
    pub active_params: u64,
    pub bytes_by_type: Vec<(GgmlType, u64)>,
}

/// One tensor as the footprint needs it.
struct SizedTensor<'a> {
    name: &'a str,
    elements: u64,
    bytes: u64,
}

impl Footprint {
    /// A catalog model at a scheme, sized with llama.cpp's per-tensor rule.
    pub fn from_catalog(spec: &ModelSpec, quant: Quant) -> Footprint {
        let plan = tensor_plan(spec);
        let typed: Vec<(String, u64, GgmlType)> = plan
            .iter()
            .map(|t| {
                let ggml_type = quant.tensor_type(t, spec.layers);
                (t.name.clone(), t.elements(), ggml_type)
            })
            .collect();
        let sized: Vec<SizedTensor> = typed
            .iter()
            .map(|(name, elements, ggml_type)| SizedTensor {
                name,
                elements: *elements,
                // Whole blocks are guaranteed by the per-tensor rule's row fallback.
                bytes: (*elements as f64 * ggml_type.bits_per_weight() / 8.0).ceil() as u64,
            })
            .collect();
        let mut footprint = Footprint {
            model: spec.id.clone(),
            architecture: spec.architecture.clone(),
            quant: quant.name.to_string(),
            params: spec.params,
            layers: spec.layers,
            hidden_size: spec.hidden_size,
            heads: spec.heads,
            kv_heads: spec.kv_heads,
            head_dim: spec.head_dim,
            ffn_size: spec.ffn_size,
            vocab_size: spec.vocab_size,
            max_context: spec.max_context,
            sliding_window: spec.sliding_window,
            sliding_window_layers: spec.sliding_window_layers,
            experts_total: spec.experts_total,
            experts_active: spec.experts_active,
            weights_bytes: 0,
            embedding_and_output_bytes: 0,
            bytes_read_per_token: 0,
            active_params: 0,
            bytes_by_type: Vec::new(),
        };
        footprint.add_weights(&sized, spec.tied_embeddings);
        footprint.bytes_by_type =
            bytes_by_type(typed.iter().zip(&sized).map(|((_, _, t), s)| (*t, s.bytes)));
        footprint
    }

    /// A GGUF file: exact weight bytes from its tensor table, shapes from its metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Footprint, String> {
        let arch = file
            .architecture()
            .ok_or("metadata has no general.architecture")?
            .to_string();
        let need = |key: &str| {
            file.arch_u64(key)
                .ok_or_else(|| format!("metadata has no {arch}.{key}"))
        };
        let layers = need("block_count")?;
        let hidden_size = need("embedding_length")?;
        let heads = need("attention.head_count")?.max(1);
        let kv_heads = file.arch_u64("attention.head_count_kv").unwrap_or(heads);
        let head_dim = file
            .arch_u64("attention.key_length")
            .unwrap_or(hidden_size / heads);
        let vocab_size = file
            .arch_u64("vocab_size")
            .or_else(|| {
                file.get("tokenizer.ggml.tokens")
                    .and_then(|t| t.array_len())
            })
            .or_else(|| {
                file.tensors
                    .iter()
                    .find(|t| t.name == "token_embd.weight")
                    .and_then(|t| t.dims.get(1).copied())
            })
            .unwrap_or(0);
        let sliding_window = file.arch_u64("attention.sliding_window").unwrap_or(0);
        // Gemma 2 alternates local and global layers; Gemma 3 has five local per global.
        let sliding_window_layers = match (sliding_window, arch.as_str()) {
            (0, _) => 0,
            (_, "gemma2") => layers / 2,
            (_, "gemma3") => layers - layers / 6,
            _ => layers,
        };
        let quant = file
            .get("general.file_type")
            .and_then(|v| v.as_u64())
            .and_then(Quant::from_file_type)
            .map(|q| q.name.to_string())
            .unwrap_or_else(|| {
                file.bytes_by_type()
                    .first()
                    .map(|(t, _)| t.name().to_string())
                    .unwrap_or_default()
            });
        let name = file
            .get("general.name")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                file.path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        let sized: Vec<SizedTensor> = file
            .tensors
            .iter()
            .map(|t| SizedTensor {
                name: &t.name,
                elements: t.elements,
                bytes: t.bytes,
            })
            .collect();
        let tied = !file.tensors.iter().any(|t| t.name == "output.weight");
        let mut footprint = Footprint {
            model: name,
            architecture: arch,
            quant,
            params: file.parameters(),
            layers,
            hidden_size,
            heads,
            kv_heads,
            head_dim,
            ffn_size: file.arch_u64("feed_forward_length").unwrap_or(0),
            vocab_size,
            max_context: file.arch_u64("context_length").unwrap_or(2048),
            sliding_window,
            sliding_window_layers,
            experts_total: file.arch_u64("expert_count").unwrap_or(0),
            experts_active: file.arch_u64("expert_used_count").unwrap_or(0),
            weights_bytes: 0,
            embedding_and_output_bytes: 0,
            bytes_read_per_token: 0,
            active_params: 0,
            bytes_by_type: file.bytes_by_type(),
        };
        footprint.add_weights(&sized, tied);
        Ok(footprint)
    }

    fn add_weights(&mut self, tensors: &[SizedTensor], tied: bool) {
        let expert_share = if self.experts_total > 1 {
            self.experts_active as f64 / self.experts_total as f64
        } else {
            1.0
        };
        let mut per_token = 0.0;
        let mut active = 0.0;
        for t in tensors {
            self.weights_bytes += t.bytes;
            let is_embedding = t.name == "token_embd.weight";
            if is_embedding || t.name == "output.weight" {
                self.embedding_and_output_bytes += t.bytes;
            }
            let share = if t.name.contains("_exps") {
                expert_share
            } else {
                1.0
            };
            // The embedding table is looked up, one row per token, unless it is also the output.
            if !is_embedding || tied {
                per_token += t.bytes as f64 * share;
                active += t.elements as f64 * share;
            }
        }
        self.bytes_read_per_token = per_token as u64;
        self.active_params = active as u64;
    }
}
