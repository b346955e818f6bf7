//! Quantization schemes as llama.cpp's `llama-quantize` names them, and the per-tensor rule
//! that turns a scheme (Q4_K_M) into one GGML type per tensor. The rule is a simplification of
//! `llama_tensor_get_type` in llama.cpp's src/llama-quant.cpp; docs/estimates.md states it.

use super::PlannedTensor;
use crate::gguf::GgmlType;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Quant {
    pub name: &'static str,
    /// The type most tensors get.
    #[serde(rename = "base_type")]
    pub base: GgmlType,
    #[serde(skip)]
    mix: Mix,
}

/// Which tensors a scheme gives more bits than its base type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mix {
    /// Every 2-D tensor in the base type; the output matrix in Q6_K if the base is smaller.
    Uniform,
    /// _M: attn_v and ffn_down of the "more bits" layers in Q6_K.
    Medium,
    /// Q4_K_S: attn_v of the first 4 layers and ffn_down of the first 1/8 in Q5_K.
    Small,
    /// Q3_K_M: attn_v Q5_K in the first 2 layers else Q4_K; ffn_down Q5_K in the first 1/16,
    /// Q4_K in the "more bits" layers; attn_output Q4_K.
    Q3Medium,
    /// Q3_K_L: attn_v, ffn_down and attn_output in Q5_K.
    Q3Large,
    /// Q2_K: attn_v, ffn_down and attn_output in Q3_K.
    Q2,
}

const fn quant(name: &'static str, base: GgmlType, mix: Mix) -> Quant {
    Quant { name, base, mix }
}

/// From largest to smallest.
pub const QUANTS: &[Quant] = &[
    quant("F32", GgmlType::F32, Mix::Uniform),
    quant("F16", GgmlType::F16, Mix::Uniform),
    quant("BF16", GgmlType::BF16, Mix::Uniform),
    quant("Q8_0", GgmlType::Q8_0, Mix::Uniform),
    quant("Q6_K", GgmlType::Q6_K, Mix::Uniform),
    quant("Q5_K_M", GgmlType::Q5_K, Mix::Medium),
    quant("Q5_K_S", GgmlType::Q5_K, Mix::Uniform),
    quant("Q5_1", GgmlType::Q5_1, Mix::Uniform),
    quant("Q5_0", GgmlType::Q5_0, Mix::Uniform),
    quant("Q4_K_M", GgmlType::Q4_K, Mix::Medium),
    quant("Q4_K_S", GgmlType::Q4_K, Mix::Small),
    quant("Q4_1", GgmlType::Q4_1, Mix::Uniform),
    quant("Q4_0", GgmlType::Q4_0, Mix::Uniform),
    quant("Q3_K_L", GgmlType::Q3_K, Mix::Q3Large),
    quant("Q3_K_M", GgmlType::Q3_K, Mix::Q3Medium),
    quant("Q3_K_S", GgmlType::Q3_K, Mix::Uniform),
    quant("Q2_K", GgmlType::Q2_K, Mix::Q2),
    quant("TQ2_0", GgmlType::TQ2_0, Mix::Uniform),
    quant("TQ1_0", GgmlType::TQ1_0, Mix::Uniform),
];

impl Quant {
    /// Case-insensitive: `q4_k_m` = `Q4_K_M`.
    pub fn parse(name: &str) -> Option<Quant> {
        QUANTS
            .iter()
            .copied()
            .find(|q| q.name.eq_ignore_ascii_case(name))
    }

    /// The scheme a GGUF's `general.file_type` (llama_ftype) declares.
    pub fn from_file_type(file_type: u64) -> Option<Quant> {
        let name = match file_type {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            7 => "Q8_0",
            8 => "Q5_0",
            9 => "Q5_1",
            10 => "Q2_K",
            11 => "Q3_K_S",
            12 => "Q3_K_M",
            13 => "Q3_K_L",
            14 => "Q4_K_S",
            15 => "Q4_K_M",
            16 => "Q5_K_S",
            17 => "Q5_K_M",
            18 => "Q6_K",
            32 => "BF16",
            36 => "TQ1_0",
            37 => "TQ2_0",
            _ => return None,
        };
        Quant::parse(name)
    }

    pub fn names() -> Vec<&'static str> {
        QUANTS.iter().map(|q| q.name).collect()
    }

    /// The GGML type llama-quantize would give `tensor` in a model of `layers` blocks.
    pub fn tensor_type(&self, tensor: &PlannedTensor, layers: u64) -> GgmlType {
        let role = tensor.role();
        // Norms, biases and the MoE router stay in F32 in every scheme.
        if tensor.dims.len() == 1 || role == "ffn_gate_inp.weight" {
            return GgmlType::F32;
        }
        let wanted = if tensor.is_output_matrix {
            if self.base.bits_per_weight() >= GgmlType::Q6_K.bits_per_weight() {
                self.base
            } else {
                GgmlType::Q6_K
            }
        } else {
            self.mixed_type(role, tensor.layer.unwrap_or(0), layers)
        };
        fit_row(wanted, tensor.dims[0])
    }

    fn mixed_type(&self, role: &str, layer: u64, layers: u64) -> GgmlType {
        let attn_v = role == "attn_v.weight";
        let ffn_down = role.starts_with("ffn_down");
        let attn_output = role == "attn_output.weight";
        match self.mix {
            Mix::Uniform => self.base,
            Mix::Medium if (attn_v || ffn_down) && more_bits(layer, layers) => GgmlType::Q6_K,
            Mix::Small if attn_v && layer < 4 => GgmlType::Q5_K,
            Mix::Small if ffn_down && layer < layers / 8 => GgmlType::Q5_K,
            Mix::Q3Medium if attn_v => {
                if layer < 2 {
                    GgmlType::Q5_K
                } else {
                    GgmlType::Q4_K
                }
            }
            Mix::Q3Medium if ffn_down && layer < layers / 16 => GgmlType::Q5_K,
            Mix::Q3Medium if ffn_down && more_bits(layer, layers) => GgmlType::Q4_K,
            Mix::Q3Medium if attn_output => GgmlType::Q4_K,
            Mix::Q3Large if attn_v || ffn_down || attn_output => GgmlType::Q5_K,
            Mix::Q2 if attn_v || ffn_down || attn_output => GgmlType::Q3_K,
            _ => self.base,
        }
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third
/// layer between them.
fn more_bits(layer: u64, layers: u64) -> bool {
    let eighth = layers / 8;
    layer < eighth || layer >= 7 * layers / 8 || (layer - eighth) % 3 == 2
}

/// K-quants need rows that are a multiple of 256; llama.cpp falls back to a 32-block type of
/// about the same size (a 640-wide Gemma 3 270M gets Q5_0 where Q4_K was asked for).
fn fit_row(wanted: GgmlType, row: u64) -> GgmlType {
    if row.is_multiple_of(wanted.block_size()) {
        return wanted;
    }
    let fallback = match wanted {
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::from_name("IQ4_NL").unwrap_or(GgmlType::Q4_0),
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        _ => GgmlType::Q8_0,
    };
    if row.is_multiple_of(fallback.block_size()) {
        fallback
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{find, tensor_plan};

    fn types_of(model: &str, quant: &str) -> Vec<(String, GgmlType)> {
        let spec = find(model).unwrap();
        let q = Quant::parse(quant).unwrap();
        tensor_plan(spec)
            .iter()
            .map(|t| (t.name.clone(), q.tensor_type(t, spec.layers)))
            .collect()
    }

    fn type_of(types: &[(String, GgmlType)], name: &str) -> GgmlType {
        types.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn gemma3_270m_q4_k_m_gets_the_types_of_the_real_file() {
        // From the tensor table of gemma-3-270m-q4_k_m.gguf: 640-wide rows cannot hold
        // K-quant blocks, so llama.cpp fell back.
        let t = types_of("gemma-3-270m", "q4_k_m");
        assert_eq!(type_of(&t, "token_embd.weight"), GgmlType::Q8_0);
        assert_eq!(type_of(&t, "blk.0.attn_q.weight"), GgmlType::Q5_0);
        assert_eq!(type_of(&t, "blk.0.attn_v.weight"), GgmlType::Q8_0);
        assert_eq!(type_of(&t, "blk.0.attn_output.weight"), GgmlType::Q4_K);
        assert_eq!(type_of(&t, "blk.0.ffn_down.weight"), GgmlType::Q6_K);
        assert_eq!(type_of(&t, "blk.0.attn_norm.weight"), GgmlType::F32);
    }

    #[test]
    fn medium_mixes_give_more_bits_to_a_third_of_the_middle_layers() {
        let t = types_of("llama-3-8b", "Q4_K_M");
        assert_eq!(type_of(&t, "output.weight"), GgmlType::Q6_K);
        assert_eq!(type_of(&t, "token_embd.weight"), GgmlType::Q4_K);
        assert_eq!(type_of(&t, "blk.0.ffn_down.weight"), GgmlType::Q6_K);
        assert_eq!(type_of(&t, "blk.4.ffn_down.weight"), GgmlType::Q4_K);
        assert_eq!(type_of(&t, "blk.6.ffn_down.weight"), GgmlType::Q6_K);
        assert_eq!(type_of(&t, "blk.31.attn_v.weight"), GgmlType::Q6_K);
        assert_eq!(type_of(&t, "blk.10.attn_q.weight"), GgmlType::Q4_K);
    }

    #[test]
    fn file_types_map_to_schemes() {
        assert_eq!(Quant::from_file_type(15).unwrap().name, "Q4_K_M");
        assert_eq!(Quant::from_file_type(3).unwrap().name, "Q4_1");
        assert!(Quant::from_file_type(999).is_none());
        assert_eq!(Quant::parse("q5_k_m").unwrap().name, "Q5_K_M");
    }
}
