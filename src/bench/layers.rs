//! The pieces fitbench's own CPU models share: linear layers that use fitbench's kernels
//! where candle's are scalar, an embedding that stays quantized, and RoPE tables sized to
//! the run instead of the model's maximum context.

use super::kernels::{self, Format};
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
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
