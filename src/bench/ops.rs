//! The CPU work between the matmuls that candle does one value at a time, on its rayon pool:
//! rotary position embedding and the scaled, causally masked softmax of attention. Together
//! they were a sixth of a TinyLlama prompt pass. Here the loops vectorize, run on candle's
//! own thread pool, and the softmax skips the masked half of the scores.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// The contiguous f32 values of a CPU tensor, or an error naming `op`.
fn values<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(all) = storage else {
        candle_core::bail!("{op} takes f32 values");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&all[start..end]),
        None => candle_core::bail!("{op} takes a contiguous tensor"),
    }
}

/// `fill(row, output row)` for each `width`-value row of a new buffer, the rows split across
/// candle's thread pool when there are enough of them to be worth it.
fn rows_in_parallel(
    rows: usize,
    width: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * width];
    if rows * width < 1 << 15 {
        for (row, values) in out.chunks_exact_mut(width).enumerate() {
            fill(row, values);
        }
        return out;
    }
    let base = out.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(rows, |range| {
        for row in range {
            // SAFETY: each row index is handed out once, so the slices are disjoint; `out`
            // outlives the pool call, which returns when every row is done.
            let values = unsafe {
                std::slice::from_raw_parts_mut((base as *mut f32).add(row * width), width)
            };
            fill(row, values);
        }
    });
    out
}

/// Rotates (batch, seq, heads, dim) values for positions `pos..` with the tables' cos and sin
/// (positions × dim/2). Each pair is rotated as candle's `rope`/`rope_i` rotates it.
pub struct Rotate<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub pos: usize,
    /// Pairs (2i, 2i+1) as llama writes its GGUFs; otherwise (i, i + dim/2).
    pub interleaved: bool,
}

impl CustomOp1 for Rotate<'_> {
    fn name(&self) -> &'static str {
        "rotary-embedding"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values(self.name(), storage, layout)?;
        let (_, seq_len, heads, dim) = layout.shape().dims4()?;
        let half = dim / 2;
        if dim % 2 != 0
            || self.cos.len() != self.sin.len()
            || (self.pos + seq_len) * half > self.cos.len()
        {
            candle_core::bail!(
                "cannot rotate {dim}-value heads at positions {}..{} with {} table values",
                self.pos,
                self.pos + seq_len,
                self.cos.len()
            );
        }
        let out = rows_in_parallel(x.len() / dim, dim, |row, out| {
            let at = (self.pos + row / heads % seq_len) * half;
            let (cos, sin) = (&self.cos[at..at + half], &self.sin[at..at + half]);
            rotate_head(
                &x[row * dim..(row + 1) * dim],
                (cos, sin),
                self.interleaved,
                out,
            );
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// One head's `x` rotated into `out` by one position's `cos` and `sin` (dim/2 each): pairs
/// (2i, 2i+1) when `interleaved`, else (i, i + dim/2).
pub fn rotate_head(x: &[f32], (cos, sin): (&[f32], &[f32]), interleaved: bool, out: &mut [f32]) {
    if interleaved {
        for (((out, x), &c), &s) in out
            .chunks_exact_mut(2)
            .zip(x.chunks_exact(2))
            .zip(cos)
            .zip(sin)
        {
            out[0] = x[0] * c - x[1] * s;
            out[1] = x[0] * s + x[1] * c;
        }
    } else {
        let half = x.len() / 2;
        let (out_low, out_high) = out.split_at_mut(half);
        let (low, high) = x.split_at(half);
        for (i, (&c, &s)) in cos.iter().zip(sin).enumerate().take(half) {
            out_low[i] = low[i] * c - high[i] * s;
            out_high[i] = low[i] * s + high[i] * c;
        }
    }
}

/// softmax(scale × scores) over each row of (batch, kv heads, group × seq, kv_len) scores,
/// where query i of the seq (at position pos + i) sees keys pos + i - window ..= pos + i; the
/// others get 0, as a mask of -∞ gives them.
pub struct CausalSoftmax {
    pub scale: f32,
    pub seq_len: usize,
    pub pos: usize,
    pub window: Option<usize>,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let scores = values(self.name(), storage, layout)?;
        let kv_len = layout.shape().dims().last().copied().unwrap_or(0);
        if kv_len != self.pos + self.seq_len || self.seq_len == 0 {
            candle_core::bail!(
                "{kv_len} keys do not follow {} earlier positions and {} queries",
                self.pos,
                self.seq_len
            );
        }
        let out = rows_in_parallel(scores.len() / kv_len, kv_len, |row, out| {
            let last = self.pos + row % self.seq_len;
            let first = self.window.map_or(0, |w| last.saturating_sub(w));
            softmax(
                self.scale,
                &scores[row * kv_len..][first..=last],
                &mut out[first..=last],
            );
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// The activation a feed-forward layer gates with: llama's SiLU or Gemma's tanh-approximated
/// GELU (`gelu_pytorch_tanh`, ggml's `gelu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Silu,
    GeluTanh,
}

/// act(gate) × up, value by value, for gate and up of one shape: a feed-forward layer's
/// gating in one pass over the pool, with the vectorized [`exp`] (candle's activation then
/// `mul` are two passes, the first a library `expf` or `tanhf` call per value).
pub struct GatedTimes(pub Gate);

impl CustomOp2 for GatedTimes {
    fn name(&self) -> &'static str {
        "gated-times"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (gate_values, up_values) = (
            values(self.name(), gate, gate_layout)?,
            values(self.name(), up, up_layout)?,
        );
        let shape = gate_layout.shape();
        if shape != up_layout.shape() {
            candle_core::bail!("gate {shape:?} and up {:?} differ", up_layout.shape());
        }
        let width = shape.dims().last().copied().unwrap_or(1).max(1);
        let out = rows_in_parallel(gate_values.len() / width, width, |row, out| {
            let gate = &gate_values[row * width..][..width];
            let up = &up_values[row * width..][..width];
            gated_times(self.0, gate, up, out);
        });
        Ok((CpuStorage::F32(out), shape.clone()))
    }
}

/// act(gate) × up into `out`, value by value.
pub fn gated_times(activation: Gate, gate: &[f32], up: &[f32], out: &mut [f32]) {
    // Both activations are x·σ(z): z = x for SiLU, and for the tanh GELU
    // 0.5·x·(1 + tanh(u)) = x·σ(2u), with u = √(2/π)·(x + 0.044715·x³).
    const TWO_SQRT_TWO_OVER_PI: f32 = 2.0 * 0.797_884_6;
    let values = out.iter_mut().zip(gate).zip(up);
    match activation {
        Gate::Silu => values.for_each(|((o, &g), &u)| *o = times_sigmoid(g, g) * u),
        Gate::GeluTanh => values.for_each(|((o, &g), &u)| {
            let z = TWO_SQRT_TWO_OVER_PI * g * (1.0 + 0.044_715 * g * g);
            *o = times_sigmoid(g, z) * u;
        }),
    }
}

/// x·σ(z) = x / (1 + e^-z), from e^-|z| only, which [`exp`] takes: for z < 0 it is
/// x·e^z / (1 + e^z).
#[inline(always)]
fn times_sigmoid(x: f32, z: f32) -> f32 {
    let t = exp(-z.abs());
    let numerator = if z >= 0.0 { x } else { x * t };
    numerator / (1.0 + t)
}

/// Calls `f` on every 8 values: eight running results vectorize where one does not.
pub(super) fn lanes(values: &[f32], start: f32, f: impl Fn(f32, f32) -> f32) -> [f32; 8] {
    let mut lanes = [start; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = f(*lane, v);
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(rest) {
        *lane = f(*lane, v);
    }
    lanes
}

pub(super) fn softmax(scale: f32, scores: &[f32], out: &mut [f32]) {
    let max = lanes(scores, f32::NEG_INFINITY, f32::max)
        .into_iter()
        .fold(f32::NEG_INFINITY, f32::max)
        * scale;
    for (o, &s) in out.iter_mut().zip(scores) {
        *o = exp(s * scale - max);
    }
    let sum: f32 = lanes(out, 0.0, |a, b| a + b).iter().sum();
    let inverse = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inverse;
    }
}

/// e^x for x ≤ 0 (within 2 ulp; below -87 it gives about 1e-38 rather than 0). Cephes' expf:
/// x = n ln 2 + r with |r| ≤ ln2/2, a degree-6 polynomial for e^r, and 2^n put straight into
/// the exponent bits. Unlike `f32::exp`, a library call per value, it vectorizes.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Adding and taking away 1.5 × 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // n also sits in the low bits of `shifted`: read there, it needs no conversion, which
    // (saturating in Rust) kept this from vectorizing.
    let exponent = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    e_r * f32::from_bits(exponent << 23)
}

/// Applies `op` to `x`, made contiguous first.
pub fn apply(x: &Tensor, op: &impl CustomOp1) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp, D};

    fn random(shape: &[usize]) -> Result<Tensor> {
        Tensor::rand(-4f32, 4f32, shape, &Device::Cpu)
    }

    #[test]
    fn gated_times_equals_candles_activation_then_mul() -> Result<()> {
        let mut gate = Tensor::rand(-30f32, 30f32, (3, 40_000), &Device::Cpu)?;
        let special = Tensor::new(
            &[[0f32, -0.0, 1e-30, -1e-30, 88.0, -88.0, -200.0, 200.0]],
            &Device::Cpu,
        )?;
        gate = Tensor::cat(
            &[gate.narrow(1, 0, 39_992)?, special.broadcast_as((3, 8))?],
            1,
        )?;
        let up = random(&[3, 40_000])?;
        let cases = [
            (Gate::Silu, candle_nn::ops::silu(&gate)?),
            (Gate::GeluTanh, gate.gelu()?),
        ];
        for (activation, candles) in cases {
            let ours: Vec<f32> = gate
                .apply_op2_no_bwd(&up, &GatedTimes(activation))?
                .flatten_all()?
                .to_vec1()?;
            let expected: Vec<f32> = (candles * &up)?.flatten_all()?.to_vec1()?;
            for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{activation:?}, value {i}: {a} against {b}"
                );
            }
            assert!(gate
                .apply_op2_no_bwd(&up.narrow(1, 0, 10)?, &GatedTimes(activation))
                .is_err());
        }
        Ok(())
    }

    /// The two activations at points worked out by hand (x·σ(x), and 0.5·x·(1 + tanh(u))):
    /// GELU passes almost nothing of a gate of −3, where SiLU still lets −0.142 through.
    #[test]
    fn gelu_and_silu_gates_differ() {
        let mut out = [0f32; 2];
        gated_times(Gate::Silu, &[-3.0, 1.0], &[1.0, 1.0], &mut out);
        assert!((out[0] + 0.142_26).abs() < 1e-4 && (out[1] - 0.731_06).abs() < 1e-4);
        gated_times(Gate::GeluTanh, &[-3.0, 1.0], &[1.0, 1.0], &mut out);
        assert!((out[0] + 0.003_64).abs() < 1e-4 && (out[1] - 0.841_19).abs() < 1e-4);
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_library_exp() {
        let mut x = 0f32;
        while x > -87.0 {
            let (ours, exact) = (exp(x), x.exp());
            let ulps = (ours.to_bits() as i64 - exact.to_bits() as i64).abs();
            assert!(ulps <= 2, "exp({x}) = {ours}, not {exact}");
            x -= 0.000_731;
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn rotation_equals_candles_rope_for_both_pairings() -> Result<()> {
        let (positions, dim, heads, seq, pos) = (40, 16, 3, 5, 7);
        let angles = random(&[positions, dim / 2])?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let x = random(&[2, seq, heads, dim])?;
        for interleaved in [true, false] {
            let op = Rotate {
                cos: &cos.flatten_all()?.to_vec1::<f32>()?,
                sin: &sin.flatten_all()?.to_vec1::<f32>()?,
                pos,
                interleaved,
            };
            let ours = apply(&x, &op)?.transpose(1, 2)?;
            let heads_first = x.transpose(1, 2)?.contiguous()?;
            let (c, s) = (cos.narrow(0, pos, seq)?, sin.narrow(0, pos, seq)?);
            let candle = if interleaved {
                candle_nn::rotary_emb::rope_i(&heads_first, &c, &s)
            } else {
                candle_nn::rotary_emb::rope(&heads_first, &c, &s)
            }?;
            let difference = (ours - candle)?.abs()?.max_all()?;
            assert_eq!(
                difference.to_scalar::<f32>()?,
                0.0,
                "interleaved {interleaved}"
            );
        }
        let past_the_table = Rotate {
            cos: &[0.0; 8],
            sin: &[0.0; 8],
            pos: 0,
            interleaved: true,
        };
        assert!(apply(&x, &past_the_table).is_err());
        Ok(())
    }

    #[test]
    fn causal_softmax_equals_masking_then_candles_softmax() -> Result<()> {
        let (seq, pos, kv_heads, group) = (6, 4, 2, 3);
        let kv_len = pos + seq;
        let scores = random(&[1, kv_heads, group * seq, kv_len])?;
        for window in [None, Some(3)] {
            let op = CausalSoftmax {
                scale: 0.125,
                seq_len: seq,
                pos,
                window,
            };
            let ours = apply(&scores, &op)?;
            let hidden: Vec<f32> = (0..group * seq)
                .flat_map(|r| {
                    let i = pos + r % seq;
                    (0..kv_len).map(move |j| {
                        let seen = j <= i && window.is_none_or(|w| j + w >= i);
                        if seen {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(hidden, (group * seq, kv_len), &Device::Cpu)?;
            let masked = ((scores.clone() * 0.125)?.broadcast_add(&mask))?;
            let reference = candle_nn::ops::softmax_last_dim(&masked)?;
            let difference = (&ours - reference)?.abs()?.max_all()?;
            assert!(difference.to_scalar::<f32>()? < 1e-6, "window {window:?}");
            let row_sums = ours.sum(D::Minus1)?.flatten_all()?;
            for total in row_sums.to_vec1::<f32>()? {
                assert!((total - 1.0).abs() < 1e-5);
            }
            let first_query = ours.i((0, 0, 0))?.to_vec1::<f32>()?;
            assert!(first_query[pos + 1..].iter().all(|&p| p == 0.0));
        }
        let too_few_keys = CausalSoftmax {
            scale: 1.0,
            seq_len: seq + 1,
            pos,
            window: None,
        };
        assert!(apply(&scores, &too_few_keys).is_err());
        Ok(())
    }
}
