//! Shape-exact synthetic weights: a GGUF with random values in exactly the tensors, shapes,
//! types and metadata of a catalog model at a quantization. Speed does not depend on weight
//! values, so a model can be measured before anyone downloads it.

use crate::catalog::{tensor_plan, ModelSpec, Quant};
use crate::gguf::GgmlType;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::path::Path;

/// The GGML types candle can quantize to.
fn candle_dtype(t: GgmlType) -> Option<GgmlDType> {
    Some(match t.name() {
        "F32" => GgmlDType::F32,
        "F16" => GgmlDType::F16,
        "BF16" => GgmlDType::BF16,
        "Q4_0" => GgmlDType::Q4_0,
        "Q4_1" => GgmlDType::Q4_1,
        "Q5_0" => GgmlDType::Q5_0,
        "Q5_1" => GgmlDType::Q5_1,
        "Q8_0" => GgmlDType::Q8_0,
        "Q2_K" => GgmlDType::Q2K,
        "Q3_K" => GgmlDType::Q3K,
        "Q4_K" => GgmlDType::Q4K,
        "Q5_K" => GgmlDType::Q5K,
        "Q6_K" => GgmlDType::Q6K,
        _ => return None,
    })
}

/// The metadata candle's loaders and llama.cpp read for the architecture.
fn metadata(spec: &ModelSpec, quant: Quant) -> Vec<(String, Value)> {
    let arch = spec.architecture.as_str();
    let key = |k: &str| format!("{arch}.{k}");
    let u32v = |v: u64| Value::U32(v as u32);
    let mut md = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        (
            "general.name".to_string(),
            Value::String(format!("{} (synthetic)", spec.name)),
        ),
        ("general.quantization_version".to_string(), Value::U32(2)),
        (
            "general.file_type".to_string(),
            Value::U32(file_type(quant)),
        ),
        (key("context_length"), u32v(spec.max_context)),
        (key("embedding_length"), u32v(spec.hidden_size)),
        (key("block_count"), u32v(spec.layers)),
        (key("feed_forward_length"), u32v(spec.ffn_size)),
        (key("attention.head_count"), u32v(spec.heads)),
        (key("attention.head_count_kv"), u32v(spec.kv_heads)),
        (key("attention.key_length"), u32v(spec.head_dim)),
        (key("attention.value_length"), u32v(spec.head_dim)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (key("attention.layer_norm_epsilon"), Value::F32(1e-5)),
        (key("rope.dimension_count"), u32v(spec.head_dim)),
        (key("rope.freq_base"), Value::F32(10_000.0)),
        (key("vocab_size"), u32v(spec.vocab_size)),
        // llama.cpp loads a file without a vocabulary when told so; benchmarks need none.
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("no_vocab".into()),
        ),
        ("fitbench.synthetic".to_string(), Value::Bool(true)),
    ];
    if spec.is_moe() {
        md.push((key("expert_count"), u32v(spec.experts_total)));
        md.push((key("expert_used_count"), u32v(spec.experts_active)));
    }
    if spec.sliding_window > 0 {
        md.push((key("attention.sliding_window"), u32v(spec.sliding_window)));
    }
    md
}

/// llama_ftype of a scheme, so readers name the file's quantization as llama.cpp does.
fn file_type(quant: Quant) -> u32 {
    (0..64)
        .find(|ft| Quant::from_file_type(u64::from(*ft)).is_some_and(|q| q.name == quant.name))
        .unwrap_or(0)
}

/// Reproducible noise, small enough that activations stay finite for a few dozen layers.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
            })
            .collect()
    }
}

/// Writes the synthetic GGUF to `out`, calling `progress(done_bytes, total_bytes)`.
pub fn write(
    spec: &ModelSpec,
    quant: Quant,
    out: &Path,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<()> {
    let plan = tensor_plan(spec);
    let typed: Vec<(String, Vec<u64>, GgmlType)> = plan
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.dims.clone(),
                quant.tensor_type(t, spec.layers),
            )
        })
        .collect();
    if let Some((name, _, t)) = typed.iter().find(|(_, _, t)| candle_dtype(*t).is_none()) {
        anyhow::bail!(
            "{} {}: tensor `{name}` would be {t}, which candle cannot write; pick a Q4_0..Q8_0, K-quant or F16 scheme",
            spec.id,
            quant.name
        );
    }
    let total: u64 = typed
        .iter()
        .map(|(_, dims, _)| dims.iter().product::<u64>())
        .sum();
    let mut done = 0u64;
    let mut noise = Noise(0x5EED_F17B_E4C4);
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(typed.len());
    for (name, dims, ggml_type) in &typed {
        let elements: u64 = dims.iter().product();
        // candle's shapes list the slowest dimension first; ggml's the fastest.
        let shape: Vec<usize> = dims.iter().rev().map(|d| *d as usize).collect();
        let values = if dims.len() == 1 {
            vec![1.0f32; elements as usize]
        } else {
            noise.fill(elements as usize)
        };
        let tensor = Tensor::from_vec(values, shape, &Device::Cpu)?;
        let dtype = candle_dtype(*ggml_type).unwrap_or(GgmlDType::F32);
        tensors.push((name.clone(), QTensor::quantize(&tensor, dtype)?));
        done += elements;
        progress(done, total);
    }
    let metadata = metadata(spec, quant);
    let md_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Write beside and rename: an interrupted synth never leaves a file that looks finished.
    let partial = out.with_extension("gguf.partial");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&partial)?);
    gguf_file::write(&mut file, &md_refs, &tensor_refs)?;
    std::io::Write::flush(&mut file)?;
    drop(file);
    std::fs::rename(&partial, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::model::Model;

    /// A Mixtral-shaped model small enough to run in a test: 4 experts, 2 active.
    fn tiny_moe() -> ModelSpec {
        let mut spec = crate::catalog::find("mixtral-8x7b").unwrap().clone();
        spec.id = "tiny-moe".into();
        spec.layers = 2;
        spec.hidden_size = 64;
        spec.heads = 4;
        spec.kv_heads = 2;
        spec.head_dim = 16;
        spec.ffn_size = 128;
        spec.vocab_size = 256;
        spec.experts_total = 4;
        spec.experts_active = 2;
        spec
    }

    #[test]
    fn a_synthetic_moe_model_has_llama_cpps_merged_expert_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moe.gguf");
        let mut last = (0, 0);
        write(
            &tiny_moe(),
            Quant::parse("Q4_0").unwrap(),
            &path,
            |done, total| last = (done, total),
        )
        .unwrap();
        assert_eq!(last.0, last.1, "progress reaches the total");
        let file = crate::gguf::GgufFile::open(&path).unwrap();
        let experts = file
            .tensors
            .iter()
            .find(|t| t.name == "blk.1.ffn_down_exps.weight")
            .unwrap();
        assert_eq!(experts.dims, [128, 64, 4]);
        assert_eq!(file.arch_u64("expert_used_count"), Some(2));
        // candle 0.11 reads only the per-expert layout: the bench refuses before loading.
        let err = crate::bench::session::check_supported("moe.gguf", "llama", true).unwrap_err();
        assert!(err.to_string().contains("per-expert layout"), "{err}");
        let loaded = Model::load(&path, &candle_core::Device::Cpu, 64);
        assert!(
            loaded.is_err(),
            "candle learned the merged layout: update check_supported"
        );
    }

    #[test]
    fn schemes_candle_cannot_write_are_refused_with_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::catalog::find("bitnet-b1.58-2b").unwrap();
        let err = write(
            spec,
            Quant::parse("TQ1_0").unwrap(),
            &dir.path().join("x.gguf"),
            |_, _| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("candle cannot write"), "{err}");
        assert!(!dir.path().join("x.gguf").exists());
    }
}
