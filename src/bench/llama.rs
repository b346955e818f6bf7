//! Llama-architecture models (TinyLlama, SmolLM2, Llama 3.x, Mistral) for the CPU runner,
//! with the arithmetic of candle-transformers' `quantized_llama` (its reference, checked
//! token for token in the tests) and less memory and time: the embedding stays quantized
//! (candle expands it to f32), RoPE covers the run's context, and Q4_1/Q5_0/Q5_1 matrices
//! use fitbench's kernels (candle's are scalar on x86). Mixture-of-experts files keep
//! candle's model.

use super::layers::{add, metadata, Embedding, Linear, RmsNorm, Rope, SelfAttention, Tensors};
use candle_core::{Device, IndexOp, Result, Tensor};

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
    attention: SelfAttention,
}

impl Layer {
    fn attention(&mut self, x: &Tensor, rope: &Rope, pos: usize) -> Result<Tensor> {
        let a = &self.attention;
        let q = rope.apply(&a.split(self.wq.forward(x)?, a.n_head)?, pos)?;
        let k = rope.apply(&a.split(self.wk.forward(x)?, a.n_kv_head)?, pos)?;
        let v = a.split(self.wv.forward(x)?, a.n_kv_head)?;
        let out = self.attention.attend(&q, &k, &v, pos, None)?;
        self.wo.forward(&out)
    }

    /// One token through the layer on plain values: `x` (width values) gets the layer's
    /// attention and feed-forward added to it.
    fn step(&mut self, x: &mut [f32], rope: &Rope, pos: usize) -> Result<()> {
        let normed = self.attention_norm.apply(x)?;
        let dim = self.attention.head_dim;
        let [q, k, v] = Linear::apply_each([&self.wq, &self.wk, &self.wv], &normed)?;
        let (q, k) = (rope.rotate(&q, dim, pos)?, rope.rotate(&k, dim, pos)?);
        let out = self.attention.attend_one((&q, &k, &v), pos, None)?;
        add(x, &self.wo.apply(&out)?)?;
        let normed = self.ffn_norm.apply(x)?;
        let [gate, up] = Linear::apply_each([&self.gate, &self.up], &normed)?;
        let mut gated = vec![0f32; gate.len()];
        super::ops::gated_times(super::ops::Gate::Silu, &gate, &up, &mut gated);
        add(x, &self.down.apply(&gated)?)
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
    pub fn from_gguf(tensors: &Tensors, positions: usize) -> Result<Llama> {
        let get = |key: &str| metadata(&tensors.content, "llama", key);
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
        let tensor = |name: &str| tensors.qtensor(name);
        let (embedding, output) =
            tensors.embedding_and_output("token_embd.weight", "output.weight")?;
        let norm = RmsNorm::from_qtensor(tensor("output_norm.weight")?, eps)?;
        let mut layers = Vec::with_capacity(block_count);
        for i in 0..block_count {
            let linear = |name: &str| tensors.linear(&format!("blk.{i}.{name}.weight"));
            let (wq, wk, wv, wo) = (
                linear("attn_q")?,
                linear("attn_k")?,
                linear("attn_v")?,
                linear("attn_output")?,
            );
            let (gate, down, up) = (linear("ffn_gate")?, linear("ffn_down")?, linear("ffn_up")?);
            let norm =
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
                attention: SelfAttention::new(n_head, n_kv_head, width / n_head, positions),
            });
        }
        Ok(Llama {
            embedding,
            layers,
            norm,
            output,
            // llama GGUFs pair dimensions (2i, 2i+1), as llama.cpp's LLAMA_ROPE_TYPE_NORM.
            rope: Rope::new(rope_dim, frequency, positions, true),
        })
    }

    /// Runs `ids` (batch, seq) at positions `pos..`; the last position's logits.
    pub fn forward(&mut self, ids: &Tensor, pos: usize) -> Result<Tensor> {
        let (batch, seq_len) = ids.dims2()?;
        if (batch, seq_len) == (1, 1) {
            return self.step(ids.flatten_all()?.to_vec1::<u32>()?[0], pos);
        }
        let mut x = self.embedding.forward(ids)?;
        for layer in &mut self.layers {
            let attended = layer.attention(&layer.attention_norm.forward(&x)?, &self.rope, pos)?;
            let x1 = (attended + &x)?;
            let normed = layer.ffn_norm.forward(&x1)?;
            let gated = layer.gate.forward(&normed)?.apply_op2_no_bwd(
                &layer.up.forward(&normed)?,
                &super::ops::GatedTimes(super::ops::Gate::Silu),
            )?;
            x = (layer.down.forward(&gated)? + x1)?;
        }
        let last = self.norm.forward(&x)?.i((.., seq_len - 1, ..))?;
        self.output.forward(&last)
    }

    /// Generation's one token at `pos`, on plain values from the embedding to the logits:
    /// candle's tensor operations between the matmuls cost a token of TinyLlama 0.8 ms
    /// (7% of it at 71 GB/s), more than the arithmetic they did.
    fn step(&mut self, id: u32, pos: usize) -> Result<Tensor> {
        let mut x = vec![0f32; self.embedding.width];
        self.embedding.row(id, &mut x)?;
        for layer in &mut self.layers {
            layer.step(&mut x, &self.rope, pos)?;
        }
        let logits = self.output.apply(&self.norm.apply(&x)?)?;
        let vocab = logits.len();
        Tensor::from_vec(logits, (1, vocab), &Device::Cpu)
    }

    pub fn clear(&mut self) {
        for layer in &mut self.layers {
            layer.attention.clear();
        }
    }
}
