//! Gemma 3 for the CPU runner. It follows candle-transformers' `quantized_gemma3`, sized for
//! a benchmark rather than for 128K tokens, and gates as the model does:
//!
//! - the feed-forward gate is GELU (`gelu_pytorch_tanh`, as in the model's config and in
//!   llama.cpp); candle's quantized model uses SiLU there, which changes the answers;
//! - candle builds a 131,072-position RoPE table in each layer (18 × 134 MB for Gemma 3
//!   270M); here two tables (local and global frequency) cover the context the run needs and
//!   every layer shares them;
//! - candle expands the token embedding to f32 (671 MB for a 262,144 × 640 vocabulary); here it
//!   stays quantized, rows are dequantized as tokens are looked up, and the tied output
//!   projection multiplies by the same quantized tensor.
//!
//! The tests check it token for token against candle's f32 `gemma3` on the file's weights.

use super::layers::{add, metadata, Embedding, Linear, RmsNorm, Rope, SelfAttention, Tensors};
use super::ops::{gated_times, Gate, GatedTimes};
use candle_core::{Device, IndexOp, Result, Tensor};
use std::sync::Arc;

// The defaults candle's loader uses when the GGUF leaves a key out.
const DEFAULT_SLIDING_WINDOW_TYPE: usize = 6;
const DEFAULT_ROPE_FREQUENCY: f32 = 1_000_000.;
const DEFAULT_ROPE_FREQUENCY_SLIDING: f32 = 10_000.;

struct Layer {
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    attention_norm: RmsNorm,
    post_attention_norm: RmsNorm,
    ffn_norm: RmsNorm,
    post_ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    attention: SelfAttention,
    sliding_window: Option<usize>,
    rope: Arc<Rope>,
}

impl Layer {
    fn attention(&mut self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let a = &self.attention;
        let q = a.split(self.wq.forward(x)?, a.n_head)?;
        let k = a.split(self.wk.forward(x)?, a.n_kv_head)?;
        let v = a.split(self.wv.forward(x)?, a.n_kv_head)?;
        let q = self.rope.apply(&self.q_norm.forward(&q)?, pos)?;
        let k = self.rope.apply(&self.k_norm.forward(&k)?, pos)?;
        let out = self
            .attention
            .attend(&q, &k, &v, pos, self.sliding_window)?;
        self.wo.forward(&out)
    }

    fn forward(&mut self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let attended = self.attention(&self.attention_norm.forward(x)?, pos)?;
        let x = (self.post_attention_norm.forward(&attended)? + x)?;
        let normed = self.ffn_norm.forward(&x)?;
        let gated = self
            .gate
            .forward(&normed)?
            .apply_op2_no_bwd(&self.up.forward(&normed)?, &GatedTimes(Gate::GeluTanh))?;
        let mlp = self.down.forward(&gated)?;
        self.post_ffn_norm.forward(&mlp)? + x
    }

    /// One token through the layer on plain values, as [`Layer::forward`] on a tensor.
    fn step(&mut self, x: &mut [f32], pos: usize) -> Result<()> {
        let normed = self.attention_norm.apply(x)?;
        let dim = self.attention.head_dim;
        let [q, k, v] = Linear::apply_each([&self.wq, &self.wk, &self.wv], &normed)?;
        let (q, k) = (self.q_norm.apply(&q)?, self.k_norm.apply(&k)?);
        let (q, k) = (
            self.rope.rotate(&q, dim, pos)?,
            self.rope.rotate(&k, dim, pos)?,
        );
        let out = self
            .attention
            .attend_one((&q, &k, &v), pos, self.sliding_window)?;
        add(x, &self.post_attention_norm.apply(&self.wo.apply(&out)?)?)?;
        let normed = self.ffn_norm.apply(x)?;
        let [gate, up] = Linear::apply_each([&self.gate, &self.up], &normed)?;
        let mut gated = vec![0f32; gate.len()];
        gated_times(Gate::GeluTanh, &gate, &up, &mut gated);
        add(x, &self.post_ffn_norm.apply(&self.down.apply(&gated)?)?)
    }
}

pub struct Gemma3 {
    embedding: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: Linear,
}

impl Gemma3 {
    /// Loads a gemma3 GGUF onto the CPU, with RoPE tables for `positions` positions.
    pub fn from_gguf(tensors: &Tensors, positions: usize) -> Result<Gemma3> {
        let get = |key: &str| metadata(&tensors.content, "gemma3", key);
        let n_head = get("attention.head_count")?.to_u32()? as usize;
        let n_kv_head = get("attention.head_count_kv")?.to_u32()? as usize;
        let block_count = get("block_count")?.to_u32()? as usize;
        let head_dim = get("attention.key_length")?.to_u32()? as usize;
        let eps = get("attention.layer_norm_rms_epsilon")?.to_f32()? as f64;
        let window = get("attention.sliding_window")?.to_u32()? as usize;
        let window_type = get("attention.sliding_window_type")
            .and_then(|v| v.to_u32())
            .map_or(DEFAULT_SLIDING_WINDOW_TYPE, |v| v as usize)
            .max(1);
        let global_frequency = get("rope.freq_base")
            .and_then(|v| v.to_f32())
            .unwrap_or(DEFAULT_ROPE_FREQUENCY);
        let local_frequency = get("rope.local_freq_base")
            .and_then(|v| v.to_f32())
            .unwrap_or(DEFAULT_ROPE_FREQUENCY_SLIDING);
        if n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) {
            candle_core::bail!("gemma3: {n_head} heads cannot share {n_kv_head} key-value heads");
        }

        let positions = positions.max(1);
        let global_rope = Arc::new(Rope::new(head_dim, global_frequency, positions, false));
        let local_rope = Arc::new(Rope::new(head_dim, local_frequency, positions, false));
        let tensor = |name: &str| tensors.qtensor(name);
        let (embedding, output) =
            tensors.embedding_and_output("token_embd.weight", "output.weight")?;
        let norm = RmsNorm::from_qtensor(tensor("output_norm.weight")?, eps)?;
        let mut layers = Vec::with_capacity(block_count);
        for i in 0..block_count {
            let weight = |name: &str| tensor(&format!("blk.{i}.{name}.weight"));
            let matmul = |name: &str| tensors.linear(&format!("blk.{i}.{name}.weight"));
            let (wq, wk, wv, wo) = (
                matmul("attn_q")?,
                matmul("attn_k")?,
                matmul("attn_v")?,
                matmul("attn_output")?,
            );
            let (gate, up, down) = (matmul("ffn_gate")?, matmul("ffn_up")?, matmul("ffn_down")?);
            let norm = |name: &str| RmsNorm::from_qtensor(weight(name)?, eps);
            // Every window_type-th layer attends globally; the others see a sliding window.
            let sliding = (i + 1) % window_type > 0;
            layers.push(Layer {
                wq,
                wk,
                wv,
                wo,
                q_norm: norm("attn_q_norm")?,
                k_norm: norm("attn_k_norm")?,
                attention_norm: norm("attn_norm")?,
                post_attention_norm: norm("post_attention_norm")?,
                ffn_norm: norm("ffn_norm")?,
                post_ffn_norm: norm("post_ffw_norm")?,
                gate,
                up,
                down,
                attention: SelfAttention::new(n_head, n_kv_head, head_dim, positions),
                sliding_window: sliding.then_some(window),
                rope: if sliding {
                    local_rope.clone()
                } else {
                    global_rope.clone()
                },
            });
        }
        Ok(Gemma3 {
            embedding,
            layers,
            norm,
            output,
        })
    }

    /// Runs `ids` (batch, seq) at positions `pos..`; the last position's logits.
    pub fn forward(&mut self, ids: &Tensor, pos: usize) -> Result<Tensor> {
        let (batch, seq_len) = ids.dims2()?;
        if (batch, seq_len) == (1, 1) {
            return self.step(ids.flatten_all()?.to_vec1::<u32>()?[0], pos);
        }
        let mut x = (self.embedding.forward(ids)? * (self.embedding.width as f64).sqrt())?;
        for layer in &mut self.layers {
            x = layer.forward(&x, pos)?;
        }
        let last = self.norm.forward(&x.i((.., seq_len - 1, ..))?)?;
        self.output.forward(&last)
    }

    /// Generation's one token at `pos`, on plain values (see `Llama::step`).
    fn step(&mut self, id: u32, pos: usize) -> Result<Tensor> {
        let mut x = vec![0f32; self.embedding.width];
        self.embedding.row(id, &mut x)?;
        let scale = (self.embedding.width as f32).sqrt();
        x.iter_mut().for_each(|v| *v *= scale);
        for layer in &mut self.layers {
            layer.step(&mut x, pos)?;
        }
        let logits = self.output.apply(&self.norm.apply(&x)?)?;
        let vocab = logits.len();
        Tensor::from_vec(logits, (1, vocab), &Device::Cpu)
    }
}
