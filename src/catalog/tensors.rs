//! The tensors a catalog model has in a GGUF file, with llama.cpp's names and ggml shapes
//! ([row length, rows, experts]). The estimator sizes weights from this list; the synthetic
//! weights writer will write exactly these tensors.

use super::ModelSpec;

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    pub name: String,
    pub dims: Vec<u64>,
    /// The block this tensor belongs to; None for embeddings, output and final norm.
    pub layer: Option<u64>,
    /// True for the matrix that produces logits: `output.weight`, or the token embedding
    /// when the model ties them. llama.cpp gives it more bits.
    pub is_output_matrix: bool,
}

impl PlannedTensor {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The part of the name after `blk.N.`, e.g. `attn_v.weight`.
    pub fn role(&self) -> &str {
        match self.layer {
            Some(_) => self.name.splitn(3, '.').nth(2).unwrap_or(&self.name),
            None => &self.name,
        }
    }
}

pub fn tensor_plan(m: &ModelSpec) -> Vec<PlannedTensor> {
    let arch = m.architecture.as_str();
    let (h, ffn, vocab) = (m.hidden_size, m.ffn_size, m.vocab_size);
    let q_dim = m.heads * m.head_dim;
    let kv_dim = m.kv_heads * m.head_dim;
    let mut plan = Vec::new();
    let mut global = |name: &str, dims: Vec<u64>, is_output_matrix: bool| {
        plan.push(PlannedTensor {
            name: name.to_string(),
            dims,
            layer: None,
            is_output_matrix,
        })
    };
    global("token_embd.weight", vec![h, vocab], m.tied_embeddings);
    global("output_norm.weight", vec![h], false);
    if arch == "stablelm" {
        global("output_norm.bias", vec![h], false);
    }
    if !m.tied_embeddings {
        global("output.weight", vec![h, vocab], true);
    }

    for layer in 0..m.layers {
        let mut add = |role: &str, dims: Vec<u64>| {
            plan.push(PlannedTensor {
                name: format!("blk.{layer}.{role}"),
                dims,
                layer: Some(layer),
                is_output_matrix: false,
            })
        };
        add("attn_norm.weight", vec![h]);
        if arch == "phi3" {
            add("attn_qkv.weight", vec![h, q_dim + 2 * kv_dim]);
        } else {
            add("attn_q.weight", vec![h, q_dim]);
            add("attn_k.weight", vec![h, kv_dim]);
            add("attn_v.weight", vec![h, kv_dim]);
        }
        add("attn_output.weight", vec![q_dim, h]);
        match arch {
            "qwen2" => {
                add("attn_q.bias", vec![q_dim]);
                add("attn_k.bias", vec![kv_dim]);
                add("attn_v.bias", vec![kv_dim]);
            }
            "qwen3" | "gemma3" => {
                add("attn_q_norm.weight", vec![m.head_dim]);
                add("attn_k_norm.weight", vec![m.head_dim]);
            }
            "stablelm" => {
                add("attn_norm.bias", vec![h]);
                add("ffn_norm.bias", vec![h]);
            }
            _ => {}
        }
        if matches!(arch, "gemma2" | "gemma3") {
            add("post_attention_norm.weight", vec![h]);
            add("post_ffw_norm.weight", vec![h]);
        }
        if arch.starts_with("bitnet") {
            add("attn_sub_norm.weight", vec![h]);
            add("ffn_sub_norm.weight", vec![ffn]);
        }
        add("ffn_norm.weight", vec![h]);
        if m.is_moe() {
            let e = m.experts_total;
            add("ffn_gate_inp.weight", vec![h, e]);
            add("ffn_gate_exps.weight", vec![h, ffn, e]);
            add("ffn_up_exps.weight", vec![h, ffn, e]);
            add("ffn_down_exps.weight", vec![ffn, h, e]);
        } else if arch == "phi3" {
            add("ffn_up.weight", vec![h, 2 * ffn]);
            add("ffn_down.weight", vec![ffn, h]);
        } else {
            add("ffn_gate.weight", vec![h, ffn]);
            add("ffn_up.weight", vec![h, ffn]);
            add("ffn_down.weight", vec![ffn, h]);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{find, models};

    #[test]
    fn planned_parameters_match_each_published_count() {
        for m in models() {
            let planned: u64 = tensor_plan(m).iter().map(PlannedTensor::elements).sum();
            let ratio = planned as f64 / m.params as f64;
            assert!(
                (0.98..1.02).contains(&ratio),
                "{}: planned {planned}, published {}",
                m.id,
                m.params
            );
        }
    }

    #[test]
    fn smollm2_plan_has_the_real_files_shapes() {
        // From the tensor table of SmolLM2-135M-Instruct.Q4_1.gguf.
        let plan = tensor_plan(find("smollm2-135m").unwrap());
        let shape = |name: &str| plan.iter().find(|t| t.name == name).map(|t| t.dims.clone());
        assert_eq!(shape("token_embd.weight"), Some(vec![576, 49152]));
        assert_eq!(shape("blk.0.attn_k.weight"), Some(vec![576, 192]));
        assert_eq!(shape("blk.29.ffn_down.weight"), Some(vec![1536, 576]));
        assert_eq!(shape("output.weight"), None, "tied embeddings");
        assert_eq!(plan.len(), 2 + 30 * 9);
        assert_eq!(plan[4].role(), "attn_k.weight");
    }
}
