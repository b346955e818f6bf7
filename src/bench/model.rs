//! The model runner: candle-transformers' quantized models behind one enum, as thin as
//! candle's own examples. Everything a benchmark needs is `forward` and `clear`.

use super::layers::Tensors;
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::{
    quantized_gemma3, quantized_llama, quantized_phi, quantized_phi3, quantized_qwen2,
    quantized_qwen3,
};
use std::path::Path;

/// GGUF architectures fitbench can run, and what runs them.
pub const SUPPORTED: &[(&str, &str)] = &[
    (
        "llama",
        "TinyLlama, SmolLM2, Llama 2/3.x, Mistral, Mixtral (MoE), MobileLLM shapes",
    ),
    ("qwen2", "Qwen2, Qwen2.5, Qwen2.5-Coder, QwQ"),
    ("qwen3", "Qwen3"),
    ("phi3", "Phi-3 mini, Phi-4-mini, Phi-4"),
    ("phi2", "Phi-2"),
    ("gemma3", "Gemma 3"),
];

/// Prompt tokens run through the model at a time: llama.cpp's default micro-batch
/// (llama-bench's `-ub 512`). In one batch, a 2048-token TinyLlama prompt took 260 MB more
/// than a 512-token one; llama.cpp's took 37 MB more.
pub const UBATCH: usize = 512;

pub enum Model {
    /// fitbench's own llama, on the CPU.
    Llama(super::llama::Llama),
    /// candle's, on a GPU or for mixture-of-experts files.
    LlamaCandle(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
    Qwen3(quantized_qwen3::ModelWeights),
    Phi3(quantized_phi3::ModelWeights),
    Phi2(quantized_phi::ModelWeights),
    /// fitbench's own lean Gemma 3, on the CPU.
    Gemma3(super::gemma3::Gemma3),
    /// candle's, on a GPU.
    Gemma3Gpu(quantized_gemma3::ModelWeights),
}

pub fn unsupported_message(arch: &str) -> String {
    let names: Vec<String> = SUPPORTED
        .iter()
        .map(|(a, models)| format!("{a} ({models})"))
        .collect();
    format!(
        "architecture `{arch}` cannot be benchmarked yet; fitbench runs {}",
        names.join(", ")
    )
}

fn cannot_load(path: &Path, arch: &str, err: candle_core::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: candle cannot load this {arch} model: {err}\nhint: the file may use a layout candle's {arch} loader does not know (e.g. Phi-4-mini's tied output matrix)",
        path.display()
    )
}

impl Model {
    /// Loads every tensor of `path` onto `device`, for runs of up to `positions` tokens.
    pub fn load(path: &Path, device: &Device, positions: usize) -> anyhow::Result<Model> {
        let mut file =
            std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        // Buffered: the header is read a value at a time (262,144 vocabulary strings for
        // Gemma 3), one system call each without a buffer.
        let content = gguf_file::Content::read(&mut std::io::BufReader::new(&mut file))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let cannot_load = |err| cannot_load(path, &arch, err);
        let loaded = match arch.as_str() {
            "llama" if device.is_cpu() && !content.metadata.contains_key("llama.expert_count") => {
                let tensors = Tensors::map(&file, content).map_err(cannot_load)?;
                Model::Llama(
                    super::llama::Llama::from_gguf(&tensors, positions).map_err(cannot_load)?,
                )
            }
            "llama" => Model::LlamaCandle(
                quantized_llama::ModelWeights::from_gguf(content, &mut file, device)
                    .map_err(cannot_load)?,
            ),
            "qwen2" => Model::Qwen2(
                quantized_qwen2::ModelWeights::from_gguf(content, &mut file, device)
                    .map_err(cannot_load)?,
            ),
            "qwen3" => Model::Qwen3(
                quantized_qwen3::ModelWeights::from_gguf(content, &mut file, device)
                    .map_err(cannot_load)?,
            ),
            "phi3" => Model::Phi3(
                quantized_phi3::ModelWeights::from_gguf(false, content, &mut file, device)
                    .map_err(cannot_load)?,
            ),
            "phi2" => Model::Phi2(
                quantized_phi::ModelWeights::from_gguf(content, &mut file, device)
                    .map_err(cannot_load)?,
            ),
            "gemma3" if device.is_cpu() => {
                let tensors = Tensors::map(&file, content).map_err(cannot_load)?;
                Model::Gemma3(
                    super::gemma3::Gemma3::from_gguf(&tensors, positions).map_err(cannot_load)?,
                )
            }
            "gemma3" => Model::Gemma3Gpu(
                quantized_gemma3::ModelWeights::from_gguf(content, &mut file, device)
                    .map_err(cannot_load)?,
            ),
            other => anyhow::bail!("{}: {}", path.display(), unsupported_message(other)),
        };
        Ok(loaded)
    }

    /// Runs `tokens` at positions `pos..`, returning the last position's logits.
    pub fn forward(&mut self, tokens: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        match self {
            Model::Llama(m) => m.forward(tokens, pos),
            Model::LlamaCandle(m) => m.forward(tokens, pos),
            Model::Qwen2(m) => m.forward(tokens, pos),
            Model::Qwen3(m) => m.forward(tokens, pos),
            Model::Phi3(m) => m.forward(tokens, pos),
            Model::Phi2(m) => m.forward(tokens, pos),
            Model::Gemma3(m) => m.forward(tokens, pos),
            Model::Gemma3Gpu(m) => m.forward(tokens, pos),
        }
    }

    /// Runs `tokens` at positions `pos..`, `ubatch` at a time (llama.cpp's micro-batches,
    /// [`UBATCH`] in a run), and returns the last position's logits: a prompt's activations
    /// then take the same memory however long it is.
    pub fn prefill(
        &mut self,
        tokens: &[u32],
        pos: usize,
        ubatch: usize,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let ubatch = ubatch.max(1);
        let mut logits = None;
        for (i, chunk) in tokens.chunks(ubatch).enumerate() {
            let ids = Tensor::new(chunk, device)?.unsqueeze(0)?;
            logits = Some(self.forward(&ids, pos + i * ubatch)?);
        }
        logits.ok_or_else(|| candle_core::Error::Msg("a prompt needs at least one token".into()))
    }

    /// Empties the KV cache, so the next test starts from position 0.
    pub fn clear(&mut self) {
        match self {
            Model::Llama(m) => m.clear(),
            Model::LlamaCandle(m) => m.clear_kv_cache(),
            Model::Qwen2(m) => m.clear_kv_cache(),
            Model::Qwen3(m) => m.clear_kv_cache(),
            // These reset their cache when a forward starts at position 0.
            Model::Phi3(_) | Model::Phi2(_) | Model::Gemma3(_) | Model::Gemma3Gpu(_) => {}
        }
    }
}
