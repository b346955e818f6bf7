//! Llama-architecture models (TinyLlama, SmolLM2, Llama 3.x, Mistral) for the CPU runner,
//! with the arithmetic of candle-transformers' `quantized_llama` (its reference, checked
//! token for token in the tests) and less memory and time: the embedding stays quantized
//! (candle expands it to f32), RoPE covers the run's context, and Q4_1/Q5_0/Q5_1 matrices
//! use fitbench's kernels (candle's are scalar on x86). Mixture-of-experts files keep
//! candle's model.

use super::layers::{metadata, Embedding, Linear, Rope};
use candle_core::quantized::gguf_file;
use candle_core::{Device, IndexOp, Module, Result, Tensor};
use candle_transformers::quantized_nn::RmsNorm;
use candle_transformers::utils::{build_causal_mask, repeat_kv};
use std::sync::Arc;

struct Layer {
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    attention_norm: RmsNorm,
    ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    kv_cache: Option<(Tensor, Tensor)>,
}

impl Layer {
    fn attention(
        &mut self,
        x: &Tensor,
        rope: &Rope,
        mask: Option<&Tensor>,
        pos: usize,
    ) -> Result<Tensor> {
        let (b, seq_len, width) = x.dims3()?;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            t.reshape((b, seq_len, n, self.head_dim))?.transpose(1, 2)
        };
        let q = rope.apply(&heads(self.wq.forward(x)?, self.n_head)?, pos)?;
        let k = rope.apply(&heads(self.wk.forward(x)?, self.n_kv_head)?, pos)?;
        let v = heads(self.wv.forward(x)?, self.n_kv_head)?.contiguous()?;
        let (k, v) = match &self.kv_cache {
            Some((k_cache, v_cache)) if pos > 0 => (
                Tensor::cat(&[k_cache, &k], 2)?,
                Tensor::cat(&[v_cache, &v], 2)?,
            ),
            _ => (k, v),
        };
        self.kv_cache = Some((k.clone(), v.clone()));
        let k = repeat_kv(k, self.n_head / self.n_kv_head)?;
        let v = repeat_kv(v, self.n_head / self.n_kv_head)?;
        let mut scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        if let Some(mask) = mask {
            let mask = mask.broadcast_as(scores.shape())?;
            let neg_inf =
                Tensor::new(f32::NEG_INFINITY, x.device())?.broadcast_as(scores.shape())?;
            scores = mask.where_cond(&neg_inf, &scores)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = weights
            .matmul(&v.contiguous()?)?
            .transpose(1, 2)?
            .reshape((b, seq_len, width))?;
        self.wo.forward(&out)
    }
}

pub struct Llama {
    embedding: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: Linear,
    rope: Rope,
}

impl Llama {
    /// Loads a llama GGUF onto the CPU, with RoPE for `positions` positions.
    pub fn from_gguf<R: std::io::Seek + std::io::Read>(
        content: &gguf_file::Content,
        reader: &mut R,
        positions: usize,
    ) -> Result<Llama> {
        let get = |key: &str| metadata(content, "llama", key);
        let n_head = get("attention.head_count")?.to_u32()? as usize;
        let n_kv_head = get("attention.head_count_kv")?.to_u32()? as usize;
        let block_count = get("block_count")?.to_u32()? as usize;
        let width = get("embedding_length")?.to_u32()? as usize;
        let rope_dim = get("rope.dimension_count")?.to_u32()? as usize;
        let eps = get("attention.layer_norm_rms_epsilon")?.to_f32()? as f64;
        let frequency = get("rope.freq_base")
            .and_then(|v| v.to_f32())
            .unwrap_or(10_000.);
        if n_head == 0
            || n_kv_head == 0
            || !n_head.is_multiple_of(n_kv_head)
            || !width.is_multiple_of(n_head)
        {
            candle_core::bail!("llama: {n_head} heads, {n_kv_head} key-value heads and width {width} do not fit together");
        }
        let device = &Device::Cpu;
        let mut tensor = |name: &str| content.tensor(reader, name, device);
        let embedding_table = Arc::new(tensor("token_embd.weight")?);
        let output = match tensor("output.weight") {
            Ok(t) => Linear::new(Arc::new(t))?,
            // Tied embeddings (Llama 3.2, SmolLM2): the output projection is the embedding.
            Err(_) => Linear::new(embedding_table.clone())?,
        };
        let norm = RmsNorm::from_qtensor(tensor("output_norm.weight")?, eps)?;
        let mut layers = Vec::with_capacity(block_count);
        for i in 0..block_count {
            let mut linear =
                |name: &str| Linear::new(Arc::new(tensor(&format!("blk.{i}.{name}.weight"))?));
            let (wq, wk, wv, wo) = (
                linear("attn_q")?,
                linear("attn_k")?,
                linear("attn_v")?,
                linear("attn_output")?,
            );
            let (gate, down, up) = (linear("ffn_gate")?, linear("ffn_down")?, linear("ffn_up")?);
            let mut norm =
                |name: &str| RmsNorm::from_qtensor(tensor(&format!("blk.{i}.{name}.weight"))?, eps);
            layers.push(Layer {
                wq,
                wk,
                wv,
                wo,
                attention_norm: norm("attn_norm")?,
                ffn_norm: norm("ffn_norm")?,
                gate,
                up,
                down,
                n_head,
                n_kv_head,
                head_dim: width / n_head,
                kv_cache: None,
            });
        }
        Ok(Llama {
            embedding: Embedding::new(embedding_table)?,
            layers,
            norm,
            output,
            // llama GGUFs pair dimensions (2i, 2i+1), as llama.cpp's LLAMA_ROPE_TYPE_NORM.
            rope: Rope::new(rope_dim, frequency, positions, true, device)?,
        })
    }

    /// Runs `ids` (batch, seq) at positions `pos..`; the last position's logits.
    pub fn forward(&mut self, ids: &Tensor, pos: usize) -> Result<Tensor> {
        let seq_len = ids.dim(1)?;
        let mask = if seq_len > 1 {
            Some(build_causal_mask(seq_len, pos, ids.device())?)
        } else {
            None
        };
        let mut x = self.embedding.forward(ids)?;
        for layer in &mut self.layers {
            let attended = layer.attention(
                &layer.attention_norm.forward(&x)?,
                &self.rope,
                mask.as_ref(),
                pos,
            )?;
            let x1 = (attended + &x)?;
            let normed = layer.ffn_norm.forward(&x1)?;
            let gated = (candle_nn::ops::silu(&layer.gate.forward(&normed)?)?
                * layer.up.forward(&normed)?)?;
            x = (layer.down.forward(&gated)? + x1)?;
        }
        let last = self.norm.forward(&x)?.i((.., seq_len - 1, ..))?;
        self.output.forward(&last)
    }

    pub fn clear(&mut self) {
        for layer in &mut self.layers {
            layer.kv_cache = None;
        }
    }
}
