//! Quantized matrix products for the GGML 32-value block formats Q4_0, Q4_1, Q5_0 and Q5_1.
//! candle 0.11 runs Q4_1 and Q5_1 with scalar code on x86 (87% of a SmolLM2 Q4_1 prompt pass
//! is its `vec_dot_unopt`, by perf), and none of them batches prompt rows. Activations are quantized to 8 bits once per row, exactly as
//! candle's Q8_1 does. On x86 with AVX2 (detected at run time) a block's 32 products are one
//! `maddubs`; elsewhere (a Pi, an old x86) plain integer loops that the compiler vectorizes.
//! Output rows are split across candle's own thread pool, so the two never compete.

use candle_core::quantized::GgmlDType;
use half::f16;

/// Values per block in every format here.
pub const BLOCK: usize = 32;

/// A weight format these kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
}

impl Format {
    pub fn of(dtype: GgmlDType) -> Option<Format> {
        match dtype {
            GgmlDType::Q4_0 => Some(Format::Q4_0),
            GgmlDType::Q4_1 => Some(Format::Q4_1),
            GgmlDType::Q5_0 => Some(Format::Q5_0),
            GgmlDType::Q5_1 => Some(Format::Q5_1),
            _ => None,
        }
    }

    pub fn dtype(self) -> GgmlDType {
        match self {
            Format::Q4_0 => GgmlDType::Q4_0,
            Format::Q4_1 => GgmlDType::Q4_1,
            Format::Q5_0 => GgmlDType::Q5_0,
            Format::Q5_1 => GgmlDType::Q5_1,
        }
    }

    /// Bytes of one block of 32 weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q5_0 => 22,
            Format::Q5_1 => 24,
        }
    }
}

/// 32 activations as 8-bit integers: value ≈ d × q; `s` = d × Σq, for the formats with an
/// offset. The rounding matches candle's `BlockQ8_1::from_float`, f16 scales included.
#[derive(Debug, Clone, Copy)]
pub struct Activations {
    d: f32,
    s: f32,
    /// Σq, for Q5_0's offset of 16.
    sum: i32,
    q: [i8; BLOCK],
}

pub fn quantize_row(x: &[f32], out: &mut Vec<Activations>) {
    out.clear();
    for block in x.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut q = [0i8; BLOCK];
        let mut sum = 0i32;
        for (q, v) in q.iter_mut().zip(block) {
            *q = (v * inverse).round() as i8;
            sum += i32::from(*q);
        }
        let d = f16::from_f32(d);
        out.push(Activations {
            d: d.to_f32(),
            s: (f16::from_f32(sum as f32) * d).to_f32(),
            sum,
            q,
        });
    }
}

fn scale(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// Σ x·y over one block of 4-bit values in `nibbles` (low halves are values 0..16, high
/// halves 16..32), each with a fifth bit from `high_bits` when there is one.
#[inline(always)]
fn block_dot(nibbles: &[u8], high_bits: u32, a: &[i8; BLOCK]) -> i32 {
    let mut sum = 0i32;
    for j in 0..16 {
        let low = i32::from(nibbles[j] & 0x0f) | (((high_bits >> j) & 1) << 4) as i32;
        let high = i32::from(nibbles[j] >> 4) | (((high_bits >> (j + 16)) & 1) << 4) as i32;
        sum += low * i32::from(a[j]) + high * i32::from(a[j + 16]);
    }
    sum
}

/// The dot product of one weight row with one quantized activation row.
pub fn dot(format: Format, row: &[u8], activations: &[Activations]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        return unsafe { x86::dot(format, row, activations) };
    }
    portable_dot(format, row, activations)
}

fn portable_dot(format: Format, row: &[u8], activations: &[Activations]) -> f32 {
    let mut total = 0f32;
    for (block, a) in row.chunks_exact(format.block_bytes()).zip(activations) {
        total += match format {
            // Values are stored +8: subtract 8 × Σq once per block.
            Format::Q4_0 => {
                scale(block, 0) * a.d * (block_dot(&block[2..18], 0, &a.q) - 8 * a.sum) as f32
            }
            Format::Q4_1 => {
                let (d, m) = (scale(block, 0), scale(block, 2));
                d * a.d * block_dot(&block[4..20], 0, &a.q) as f32 + m * a.s
            }
            Format::Q5_0 => {
                let high = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                // Values are stored +16: subtract 16 × Σq once per block.
                scale(block, 0) * a.d * (block_dot(&block[6..22], high, &a.q) - 16 * a.sum) as f32
            }
            Format::Q5_1 => {
                let (d, m) = (scale(block, 0), scale(block, 2));
                let high = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
                d * a.d * block_dot(&block[8..24], high, &a.q) as f32 + m * a.s
            }
        };
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{scale, Activations, Format};
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE
            .get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    /// 32 bytes: the 16 low nibbles of `qs` (values 0..16), then the 16 high ones.
    #[target_feature(enable = "avx2")]
    unsafe fn nibbles(qs: *const u8) -> __m256i {
        let packed = _mm_loadu_si128(qs as *const __m128i);
        let mask = _mm_set1_epi8(0x0f);
        let low = _mm_and_si128(packed, mask);
        let high = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
        _mm256_set_m128i(high, low)
    }

    /// 0x10 in byte j where bit j of `bits` is set: the fifth bit of value j.
    #[target_feature(enable = "avx2")]
    unsafe fn fifth_bits(bits: u32) -> __m256i {
        // Byte j takes byte j/8 of `bits`, then tests its bit j%8.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits as i32),
            _mm256_set_epi64x(
                0x0303030303030303,
                0x0202020202020202,
                0x0101010101010101,
                0x0000000000000000,
            ),
        );
        let select = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }

    /// Σ x·q over a block as 8 i32 lanes, x unsigned (0..32), q signed.
    #[target_feature(enable = "avx2")]
    unsafe fn products(x: __m256i, q: &[i8; 32]) -> __m256 {
        let q = _mm256_loadu_si256(q.as_ptr() as *const __m256i);
        let pairs = _mm256_maddubs_epi16(x, q);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// A weight block as 32 unsigned bytes (Q4_0's still +8, Q5_0's +16), its scale and its
    /// offset.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn block(format: Format, block: &[u8]) -> (__m256i, f32, f32) {
        let p = block.as_ptr();
        match format {
            Format::Q4_0 => (nibbles(p.add(2)), scale(block, 0), 0.0),
            Format::Q4_1 => (nibbles(p.add(4)), scale(block, 0), scale(block, 2)),
            Format::Q5_0 => {
                let high = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                (
                    _mm256_or_si256(nibbles(p.add(6)), fifth_bits(high)),
                    scale(block, 0),
                    0.0,
                )
            }
            Format::Q5_1 => {
                let high = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
                (
                    _mm256_or_si256(nibbles(p.add(8)), fifth_bits(high)),
                    scale(block, 0),
                    scale(block, 2),
                )
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn sum(acc: __m256) -> f32 {
        let halves = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
    }

    /// One weight row against `N` activation rows: each weight block is decoded once. Each
    /// row sums into `C` independent accumulators (by block), so the adds do not wait on
    /// each other's latency: with one chain a block costs an FMA's full latency, which caps a
    /// single row at about 15 GB/s here.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_rows<const N: usize, const C: usize>(
        format: Format,
        row: &[u8],
        activations: [&[Activations]; N],
    ) -> [f32; N] {
        let mut acc = [[_mm256_setzero_ps(); C]; N];
        let mut offsets = [[0f32; C]; N];
        let bias = match format {
            Format::Q4_0 => Some(8),
            Format::Q5_0 => Some(16),
            Format::Q4_1 | Format::Q5_1 => None,
        };
        for (b, bytes) in row.chunks_exact(format.block_bytes()).enumerate() {
            let chain = b % C;
            let (x, d, m) = block(format, bytes);
            match bias {
                // These store value + bias: make the bytes signed rather than correct the sum.
                Some(bias) => {
                    let x = _mm256_sub_epi8(x, _mm256_set1_epi8(bias));
                    for r in 0..N {
                        let a = &activations[r][b];
                        let p = signed_products(x, &a.q);
                        acc[r][chain] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), p, acc[r][chain]);
                    }
                }
                None => {
                    for r in 0..N {
                        let a = &activations[r][b];
                        offsets[r][chain] += m * a.s;
                        let p = products(x, &a.q);
                        acc[r][chain] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), p, acc[r][chain]);
                    }
                }
            }
        }
        let mut out = [0f32; N];
        for r in 0..N {
            let total = acc[r][1..]
                .iter()
                .fold(acc[r][0], |t, a| _mm256_add_ps(t, *a));
            out[r] = sum(total) + offsets[r].iter().sum::<f32>();
        }
        out
    }

    pub fn vnni_available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            available()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
        })
    }

    /// `dot_rows::<N, 1>` with AVX-512 VNNI: two blocks per `dpbusd` (64 products in one
    /// instruction), the formats with a bias corrected by Σq per block.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub unsafe fn dot_rows_vnni<const N: usize>(
        format: Format,
        row: &[u8],
        activations: [&[Activations]; N],
    ) -> [f32; N] {
        let size = format.block_bytes();
        let blocks = row.len() / size;
        let bias = match format {
            Format::Q4_0 => 8.0,
            Format::Q5_0 => 16.0,
            Format::Q4_1 | Format::Q5_1 => 0.0,
        };
        let mut acc = [_mm512_setzero_ps(); N];
        let mut offsets = [0f32; N];
        let mut b = 0;
        while b + 2 <= blocks {
            let (x0, d0, m0) = block(format, &row[b * size..(b + 1) * size]);
            let (x1, d1, m1) = block(format, &row[(b + 1) * size..(b + 2) * size]);
            let x = _mm512_inserti64x4(_mm512_castsi256_si512(x0), x1, 1);
            for r in 0..N {
                let (a0, a1) = (&activations[r][b], &activations[r][b + 1]);
                let q0 = _mm256_loadu_si256(a0.q.as_ptr() as *const __m256i);
                let q1 = _mm256_loadu_si256(a1.q.as_ptr() as *const __m256i);
                let q = _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1);
                let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), x, q);
                let scale = _mm512_mask_blend_ps(
                    0xff00,
                    _mm512_set1_ps(d0 * a0.d),
                    _mm512_set1_ps(d1 * a1.d),
                );
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, acc[r]);
                offsets[r] += if bias != 0.0 {
                    -bias * (d0 * a0.d * a0.sum as f32 + d1 * a1.d * a1.sum as f32)
                } else {
                    m0 * a0.s + m1 * a1.s
                };
            }
            b += 2;
        }
        let mut out = [0f32; N];
        for r in 0..N {
            out[r] = _mm512_reduce_add_ps(acc[r]) + offsets[r];
        }
        if b < blocks {
            let tail: [&[Activations]; N] = std::array::from_fn(|r| &activations[r][b..]);
            let rest = dot_rows::<N, 1>(format, &row[b * size..], tail);
            for r in 0..N {
                out[r] += rest[r];
            }
        }
        out
    }

    /// Σ x·q as 8 float lanes with both signed: maddubs needs its first operand unsigned,
    /// so it takes |x| and q with x's sign.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn signed_products(x: __m256i, q: &[i8; 32]) -> __m256 {
        let q = _mm256_loadu_si256(q.as_ptr() as *const __m256i);
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(q, x));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(format: Format, row: &[u8], activations: &[Activations]) -> f32 {
        dot_rows::<1, 4>(format, row, [activations])[0]
    }
}

/// One weight row against every activation row: eight at a time with AVX-512 VNNI, four with
/// AVX2, one by one elsewhere.
fn dot_all(format: Format, row: &[u8], activations: &[Vec<Activations>], outputs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        let done = if x86::vnni_available() {
            let mut done = 0;
            for (group, out) in activations.chunks_exact(8).zip(outputs.chunks_exact_mut(8)) {
                let rows: [&[Activations]; 8] = std::array::from_fn(|r| &group[r][..]);
                // SAFETY: the CPU has AVX-512 F, BW and VNNI (checked at run time).
                out.copy_from_slice(&unsafe { x86::dot_rows_vnni::<8>(format, row, rows) });
                done += 8;
            }
            done
        } else {
            0
        };
        let mut groups = activations[done..].chunks_exact(4);
        let mut outs = outputs[done..].chunks_exact_mut(4);
        for (group, out) in (&mut groups).zip(&mut outs) {
            let rows: [&[Activations]; 4] = std::array::from_fn(|r| &group[r][..]);
            // SAFETY: the CPU has AVX2 and FMA (checked at run time).
            out.copy_from_slice(&unsafe { x86::dot_rows::<4, 1>(format, row, rows) });
        }
        for (a, o) in groups.remainder().iter().zip(outs.into_remainder()) {
            *o = dot(format, row, a);
        }
        return;
    }
    for (a, o) in activations.iter().zip(outputs) {
        *o = dot(format, row, a);
    }
}

/// `x` (m × k, row-major) times the transpose of `weights` (n rows of k values in `format`):
/// the m × n result, row-major.
pub fn matmul(format: Format, weights: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    let row_bytes = k / BLOCK * format.block_bytes();
    let mut activations = Vec::with_capacity(m);
    let mut buffer = Vec::new();
    for row in x.chunks_exact(k).take(m) {
        quantize_row(row, &mut buffer);
        activations.push(buffer.clone());
    }
    // Work items are weight rows; each writes its outputs for every activation row, so a
    // weight row is read once per matmul, while it is in cache.
    let mut transposed = vec![0f32; n * m];
    let out = transposed.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(n, |rows| {
        for r in rows {
            // SAFETY: item r writes only transposed[r*m..(r+1)*m]; items are disjoint and
            // `transposed` outlives the pool call, which returns when every item is done.
            let outputs =
                unsafe { std::slice::from_raw_parts_mut((out as *mut f32).add(r * m), m) };
            dot_all(
                format,
                &weights[r * row_bytes..(r + 1) * row_bytes],
                &activations,
                outputs,
            );
        }
    });
    if m == 1 {
        return transposed;
    }
    let mut result = vec![0f32; m * n];
    for (j, column) in transposed.chunks_exact(m).enumerate() {
        for (i, v) in column.iter().enumerate() {
            result[i * n + j] = *v;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{QStorage, QTensor};
    use candle_core::{Device, Result, Tensor};
    use std::borrow::Cow;

    /// Random bytes are valid blocks for these formats once the f16 scales are tamed.
    fn random_weights(format: Format, rows: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut bytes: Vec<u8> = (0..rows * k / BLOCK * format.block_bytes())
            .map(|_| next() as u8)
            .collect();
        for block in bytes.chunks_exact_mut(format.block_bytes()) {
            let d = f16::from_f32((next() % 1000) as f32 / 20_000.0 + 0.001);
            block[0..2].copy_from_slice(&d.to_le_bytes());
            if matches!(format, Format::Q4_1 | Format::Q5_1) {
                let m = f16::from_f32((next() % 1000) as f32 / 10_000.0 - 0.05);
                block[2..4].copy_from_slice(&m.to_le_bytes());
            }
        }
        bytes
    }

    fn quantized(format: Format, weights: &[u8], n: usize, k: usize) -> Result<QTensor> {
        let storage = QStorage::from_data(Cow::Borrowed(weights), &Device::Cpu, format.dtype())?;
        QTensor::new(storage, (n, k))
    }

    /// candle's reference: dequantize the weights, then an f32 matmul.
    fn reference(
        format: Format,
        weights: &[u8],
        n: usize,
        k: usize,
        x: &Tensor,
    ) -> Result<Vec<f32>> {
        let w = quantized(format, weights, n, k)?.dequantize(&Device::Cpu)?;
        x.matmul(&w.t()?)?.flatten_all()?.to_vec1()
    }

    /// candle's own quantized matmul quantizes activations the same way: the two agree to
    /// float-summation noise.
    #[test]
    fn every_format_matches_candles_quantized_matmul() -> Result<()> {
        use candle_core::quantized::QMatMul;
        use candle_core::Module;
        let (n, k) = (64, 256);
        for format in [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q5_1] {
            for m in [1, 5] {
                let weights = random_weights(format, n, k, 3);
                let q = QMatMul::from_qtensor(quantized(format, &weights, n, k)?)?;
                let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
                let candle: Vec<f32> = q.forward(&x)?.flatten_all()?.to_vec1()?;
                let ours = matmul(format, &weights, n, k, &x.flatten_all()?.to_vec1()?, m);
                let worst = candle
                    .iter()
                    .zip(&ours)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                let scale = candle.iter().fold(0f32, |a, v| a.max(v.abs()));
                assert!(
                    worst <= 1e-5 * scale.max(1.0),
                    "{format:?} m={m}: {worst} of {scale}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn every_format_matches_dequantize_then_matmul() -> Result<()> {
        let (n, k) = (50, 256);
        for format in [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q5_1] {
            for (m, seed) in [(1, 7), (5, 11), (33, 13)] {
                let weights = random_weights(format, n, k, seed);
                let x_values: Vec<f32> =
                    Tensor::randn(0f32, 1.0, (m * k,), &Device::Cpu)?.to_vec1()?;
                // The reference sees the same 8-bit activations, so only the order of the
                // float sums differs.
                let mut seen = Vec::new();
                let mut blocks = Vec::new();
                for row in x_values.chunks_exact(k) {
                    quantize_row(row, &mut blocks);
                    seen.extend(
                        blocks
                            .iter()
                            .flat_map(|b| b.q.iter().map(move |&q| b.d * f32::from(q))),
                    );
                }
                let x = Tensor::from_vec(seen, (m, k), &Device::Cpu)?;
                let expected = reference(format, &weights, n, k, &x)?;
                let got = matmul(format, &weights, n, k, &x_values, m);
                assert_eq!(got.len(), m * n);
                let scale = expected.iter().fold(0f32, |a, v| a.max(v.abs()));
                for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                    assert!(
                        (g - e).abs() <= 1e-3 * scale,
                        "{format:?} m={m} [{i}]: {g} vs {e} (scale {scale})"
                    );
                }
                // The portable path (what a Pi runs) gives the same sums.
                let row_bytes = k / BLOCK * format.block_bytes();
                let mut activations = Vec::new();
                quantize_row(&x_values[..k], &mut activations);
                for r in 0..n {
                    let portable = portable_dot(
                        format,
                        &weights[r * row_bytes..(r + 1) * row_bytes],
                        &activations,
                    );
                    assert!(
                        (portable - got[r]).abs() <= 1e-4 * scale.max(1.0),
                        "{format:?} row {r}: {portable} vs {}",
                        got[r]
                    );
                }
            }
        }
        Ok(())
    }
}
