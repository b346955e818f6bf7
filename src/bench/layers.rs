//! The pieces fitbench's own CPU models share: linear layers that use fitbench's kernels
//! where candle's are scalar, an embedding that stays quantized, and RoPE tables sized to
//! the run instead of the model's maximum context.

use super::kernels::{self, Format};
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_transformers::utils::repeat_kv;
use std::borrow::Cow;
use std::sync::Arc;

/// A quantized weight matrix (out × in) applied to the last dimension of its input.
pub enum Linear {
    Own {
        format: Format,
        weights: Arc<QTensor>,
        out_features: usize,
        in_features: usize,
    },
    Candle(QMatMul),
}

impl Linear {
    pub fn new(weights: Arc<QTensor>) -> Result<Linear> {
        let (out_features, in_features) = weights.shape().dims2()?;
        match Format::of(weights.dtype()) {
            Some(format) if in_features % kernels::BLOCK == 0 && weights.device().is_cpu() => {
                Ok(Linear::Own {
                    format,
                    weights,
                    out_features,
                    in_features,
                })
            }
            _ => Ok(Linear::Candle(QMatMul::from_arc(weights)?)),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Candle(m) => m.forward(x),
            Linear::Own {
                format,
                weights,
                out_features,
                in_features,
            } => {
                let dims = x.dims();
                if dims.last() != Some(in_features) {
                    candle_core::bail!(
                        "a {out_features}×{in_features} matrix cannot multiply an input of shape {dims:?}"
                    );
                }
                let m = x.elem_count() / in_features;
                let values = x.flatten_all()?.to_vec1::<f32>()?;
                let out = kernels::matmul(
                    *format,
                    &weights.data()?,
                    *out_features,
                    *in_features,
                    &values,
                    m,
                );
                let mut shape = dims.to_vec();
                if let Some(last) = shape.last_mut() {
                    *last = *out_features;
                }
                Tensor::from_vec(out, shape, x.device())
            }
        }
    }
}

/// The token embedding, kept in its quantized form: rows are dequantized as tokens are
/// looked up, instead of holding vocab × width f32 values (2.1 GB for Llama 3 8B).
pub struct Embedding {
    table: Arc<QTensor>,
    dtype: GgmlDType,
    vocab: usize,
    pub width: usize,
    row_bytes: usize,
}

impl Embedding {
    pub fn new(table: Arc<QTensor>) -> Result<Embedding> {
        let (vocab, width) = table.shape().dims2()?;
        let dtype = table.dtype();
        if width % dtype.block_size() != 0 {
            candle_core::bail!("token_embd.weight: a row of {width} is not whole {dtype:?} blocks");
        }
        let row_bytes = width / dtype.block_size() * dtype.type_size();
        Ok(Embedding {
            table,
            dtype,
            vocab,
            width,
            row_bytes,
        })
    }

    /// The rows of `ids`, dequantized: (batch, seq, width).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (batch, seq_len) = ids.dims2()?;
        let data = self.table.data()?;
        let mut rows = Vec::with_capacity(batch * seq_len);
        for id in ids.flatten_all()?.to_vec1::<u32>()? {
            let id = id as usize;
            if id >= self.vocab {
                candle_core::bail!(
                    "token id {id} is outside the {} token vocabulary",
                    self.vocab
                );
            }
            let bytes = &data[id * self.row_bytes..(id + 1) * self.row_bytes];
            let row = QTensor::new(
                QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, self.dtype)?,
                (1, self.width),
            )?;
            rows.push(row.dequantize(&Device::Cpu)?);
        }
        Tensor::cat(&rows, 0)?.reshape((batch, seq_len, self.width))
    }
}

/// cos and sin for positions 0..positions at one base frequency.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// Pairs (2i, 2i+1), as llama writes its GGUFs; otherwise (i, i + d/2).
    interleaved: bool,
}

impl Rope {
    pub fn new(
        dim: usize,
        frequency: f32,
        positions: usize,
        interleaved: bool,
        device: &Device,
    ) -> Result<Rope> {
        let theta: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1f32 / frequency.powf(i as f32 / dim as f32))
            .collect();
        let theta = Tensor::new(theta.as_slice(), device)?;
        let positions = positions.max(1);
        let angles = Tensor::arange(0, positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((positions, 1))?
            .matmul(&theta.reshape((1, theta.elem_count()))?)?;
        Ok(Rope {
            cos: angles.cos()?,
            sin: angles.sin()?,
            interleaved,
        })
    }

    /// Rotates `x` (batch, heads, seq, dim) for positions `pos..`.
    pub fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let seq_len = x.dim(2)?;
        if pos + seq_len > self.cos.dim(0)? {
            candle_core::bail!(
                "position {} is past the {} positions this model was loaded for",
                pos + seq_len,
                self.cos.dim(0)?
            );
        }
        let cos = self.cos.narrow(0, pos, seq_len)?;
        let sin = self.sin.narrow(0, pos, seq_len)?;
        let x = x.contiguous()?;
        if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x, &cos, &sin)
        } else {
            candle_nn::rotary_emb::rope(&x, &cos, &sin)
        }
    }
}

/// One attention layer's head layout and KV cache: what llama and Gemma 3 share.
pub struct SelfAttention {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    kv_cache: Option<(Tensor, Tensor)>,
}

impl SelfAttention {
    pub fn new(n_head: usize, n_kv_head: usize, head_dim: usize) -> SelfAttention {
        SelfAttention {
            n_head,
            n_kv_head,
            head_dim,
            kv_cache: None,
        }
    }

    /// (batch, seq, n × head_dim) → (batch, n, seq, head_dim).
    pub fn heads(&self, projected: Tensor, n: usize) -> Result<Tensor> {
        let (b, seq_len, _) = projected.dims3()?;
        projected
            .reshape((b, seq_len, n, self.head_dim))?
            .transpose(1, 2)
    }

    /// Appends `k` and `v` (at positions `pos..`) to the cache, then softmax(q·kᵀ/√d)·v with
    /// the positions `mask` marks with 1 hidden; the heads merged back: (batch, seq, width).
    pub fn attend(
        &mut self,
        q: &Tensor,
        k: Tensor,
        v: Tensor,
        pos: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, _, seq_len, _) = q.dims4()?;
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
                Tensor::new(f32::NEG_INFINITY, q.device())?.broadcast_as(scores.shape())?;
            scores = mask.where_cond(&neg_inf, &scores)?;
        }
        candle_nn::ops::softmax_last_dim(&scores)?
            .matmul(&v.contiguous()?)?
            .transpose(1, 2)?
            .reshape((b, seq_len, self.n_head * self.head_dim))
    }

    pub fn clear(&mut self) {
        self.kv_cache = None;
    }
}

/// A GGUF metadata value for `arch.key`, with the key named when it is missing.
pub fn metadata<'a>(
    content: &'a gguf_file::Content,
    arch: &str,
    key: &str,
) -> Result<&'a gguf_file::Value> {
    content
        .metadata
        .get(&format!("{arch}.{key}"))
        .ok_or_else(|| candle_core::Error::Msg(format!("cannot find {arch}.{key} in metadata")))
}
