//! f16 weight matrices, used where they lie: rows of the memory-mapped file, neither copied
//! nor repacked, as llama.cpp uses them (candle dequantizes them to f32, doubling their
//! memory; repacking them cost a load 20 times llama.cpp's). Each kernel step converts 16
//! positions of 4 rows once (F16C) and multiplies them with up to 4 activation rows.

use super::panel::{Panel, PANEL_ROWS};
use super::{check_input, in_chunks, widen_half, Kernel, Repacked, RowProduct};
use candle_core::Result;
use half::f16;
use std::sync::Arc;

/// Bytes shared with whoever else reads them: the file's mapping, or a buffer.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Rows computed together.
const ROWS: usize = 4;
/// Rows whose weights stay in cache while every activation row passes over them: 32 rows
/// of 5632 f16 values are 352 KiB.
const ROW_BLOCK: usize = 32;
/// Activation rows from which a product goes through panels.
const PANELS_FROM: usize = 16;

pub struct HalfRows {
    bytes: SharedBytes,
    start: usize,
    rows: usize,
    k: usize,
}

impl HalfRows {
    pub fn fit(rows: usize, k: usize) -> bool {
        rows.is_multiple_of(ROWS) && rows > 0 && k > 0
    }

    /// The rows × k f16 matrix (little-endian) at `start` of `bytes`.
    pub fn new(bytes: SharedBytes, start: usize, rows: usize, k: usize) -> Result<HalfRows> {
        let available = (*bytes).as_ref().len().saturating_sub(start);
        let needed = rows.checked_mul(k).and_then(|n| n.checked_mul(2));
        if !HalfRows::fit(rows, k) || needed.is_none_or(|n| n > available) {
            candle_core::bail!(
                "{available} bytes cannot hold a {rows}×{k} f16 matrix of whole {ROWS}-row groups"
            );
        }
        Ok(HalfRows {
            bytes,
            start,
            rows,
            k,
        })
    }

    fn row(&self, row: usize) -> &[u8] {
        &(*self.bytes).as_ref()[self.start + row * self.k * 2..][..self.k * 2]
    }

    /// Rows `first..first + 4` against C activation rows: out[c][r].
    fn rows_pass<const C: usize>(
        &self,
        kernel: Kernel,
        first: usize,
        x: [&[f32]; C],
    ) -> [[f32; ROWS]; C] {
        let w: [&[u8]; ROWS] = std::array::from_fn(|r| self.row(first + r));
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `matmul_with` runs only kernels this CPU has; every row of w has 2k
            // bytes and every row of x k values (checked in `new` and `matmul_with`).
            Kernel::Avx512Vnni => unsafe { x86::rows_avx512(w, x, self.k) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Kernel::Avx2 => unsafe { x86::rows_avx2(w, x, self.k) },
            _ => portable_rows(w, x),
        }
    }
}

impl HalfRows {
    /// x (m × k) times these rows, for prompts: each block of 32 rows converted to f32 once,
    /// position-major (a panel: position i holds the 32 rows' values side by side), then the
    /// activation rows pass over it as a register-blocked outer product (AVX-512: 12 rows at
    /// a time, 24 multiply-adds per 2 loads and 12 broadcasts; AVX2: 16 weight rows × 6),
    /// with nothing to convert or reduce per step (the 4 × 4 dot products of
    /// [`HalfRows::rows_pass`] convert 4 registers and load 4 per 16 multiply-adds, and sum
    /// each result across lanes at the end).
    fn panels(&self, kernel: Kernel, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let (n, k) = (self.rows, self.k);
        let columns: Vec<&[f32]> = x.chunks_exact(k).collect();
        let mut result = vec![0f32; m * n];
        let out = result.as_mut_ptr() as usize;
        let failure = std::sync::Mutex::new(None);
        in_chunks(n.div_ceil(PANEL_ROWS), 8, |blocks| {
            let mut panel = Panel::new(k);
            for block in blocks {
                let first = block * PANEL_ROWS;
                let rows: Vec<&[u8]> = (first..n.min(first + PANEL_ROWS))
                    .map(|r| self.row(r))
                    .collect();
                // SAFETY: this block writes columns first..first + rows.len() of each result
                // row, which no other block writes, and `result` outlives the pool call.
                let done = panel.fill_f16(kernel, &rows).and_then(|()| unsafe {
                    panel.multiply(kernel, &columns, (out as *mut f32).add(first), n)
                });
                if let Err(error) = done {
                    if let Ok(mut failure) = failure.lock() {
                        *failure = Some(error);
                    }
                    return;
                }
            }
        });
        match failure.into_inner() {
            Ok(Some(error)) => Err(error),
            _ => Ok(result),
        }
    }
}

/// Each row's 16 values at a time widened once (with no call per value where the CPU has no
/// conversion instruction) and multiplied into 16 running sums per activation row, which
/// the compiler keeps in vector lanes.
fn portable_rows<const C: usize>(w: [&[u8]; ROWS], x: [&[f32]; C]) -> [[f32; ROWS]; C] {
    const LANES: usize = 16;
    let k = x.iter().map(|x| x.len()).min().unwrap_or(0);
    let whole = k / LANES * LANES;
    let mut out = [[0f32; ROWS]; C];
    for (r, w) in w.iter().enumerate() {
        let mut lanes = [[0f32; LANES]; C];
        for at in (0..whole).step_by(LANES) {
            // A slice of exactly the 16 values: indexing the whole row kept the bounds checks.
            let bytes = &w[2 * at..2 * (at + LANES)];
            let values: [f32; LANES] = std::array::from_fn(|i| value_at(bytes, i));
            for (lanes, x) in lanes.iter_mut().zip(x) {
                for ((lane, v), x) in lanes.iter_mut().zip(values).zip(&x[at..at + LANES]) {
                    *lane += v * x;
                }
            }
        }
        for (c, x) in x.iter().enumerate() {
            let tail: f32 = (whole..k).map(|i| value_at(w, i) * x[i]).sum();
            out[c][r] = lanes[c].iter().sum::<f32>() + tail;
        }
    }
    out
}

/// The f16 value at `i` of little-endian bytes, as f32.
#[inline(always)]
fn value_at(bytes: &[u8], i: usize) -> f32 {
    widen_half(f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]))
}

impl Repacked for HalfRows {
    fn rows(&self) -> usize {
        self.rows
    }

    fn k(&self) -> usize {
        self.k
    }

    fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<()> {
        self.check_row(row, out)?;
        for (o, pair) in out.iter_mut().zip(self.row(row).chunks_exact(2)) {
            *o = f16::from_le_bytes([pair[0], pair[1]]).to_f32();
        }
        Ok(())
    }

    fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize) -> Result<Vec<f32>> {
        check_input(x, m, self.k)?;
        let kernel = kernel.or_portable();
        if m >= PANELS_FROM {
            return self.panels(kernel, x, m);
        }
        if m == 1 {
            return self.one_row(kernel, x);
        }
        let columns: Vec<&[f32]> = x.chunks_exact(self.k).collect();
        let n = self.rows;
        let mut result = vec![0f32; m * n];
        let out = result.as_mut_ptr() as usize;
        let work = |blocks: std::ops::Range<usize>| {
            let rows = blocks.start * ROW_BLOCK..(blocks.end * ROW_BLOCK).min(n);
            let write = |first_column: usize, first_row: usize, values: &[[f32; ROWS]]| {
                for (c, values) in values.iter().enumerate() {
                    // SAFETY: this chunk writes only its own rows of each result row; chunks
                    // are disjoint, and `result` outlives the pool call, which returns when
                    // every chunk is done.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            values.as_ptr(),
                            (out as *mut f32).add((first_column + c) * n + first_row),
                            ROWS,
                        )
                    }
                }
            };
            let mut done = 0;
            while done < m {
                let at = |c: usize| columns[done + c];
                let step = if m - done >= 4 && kernel != Kernel::Avx2 {
                    4
                } else if m - done >= 2 {
                    2
                } else {
                    1
                };
                for first in rows.clone().step_by(ROWS) {
                    match step {
                        4 => write(
                            done,
                            first,
                            &self.rows_pass::<4>(kernel, first, std::array::from_fn(at)),
                        ),
                        2 => write(
                            done,
                            first,
                            &self.rows_pass::<2>(kernel, first, std::array::from_fn(at)),
                        ),
                        _ => write(
                            done,
                            first,
                            &self.rows_pass::<1>(kernel, first, std::array::from_fn(at)),
                        ),
                    }
                }
                done += step;
            }
        };
        in_chunks(n.div_ceil(ROW_BLOCK), 8, work);
        Ok(result)
    }

    fn prepare_with<'a>(&'a self, kernel: Kernel, x: &[f32]) -> Result<Box<dyn RowProduct + 'a>> {
        check_input(x, 1, self.k)?;
        Ok(Box::new(HalfRow {
            matrix: self,
            kernel: kernel.or_portable(),
            x: x.to_vec(),
        }))
    }
}

/// One activation row against f16 rows, 4 at a time.
struct HalfRow<'a> {
    matrix: &'a HalfRows,
    kernel: Kernel,
    x: Vec<f32>,
}

impl RowProduct for HalfRow<'_> {
    fn rows(&self) -> usize {
        self.matrix.rows
    }

    fn unit(&self) -> usize {
        ROWS
    }

    fn run(&self, rows: std::ops::Range<usize>, out: &mut [f32]) {
        for (first, out) in rows.step_by(ROWS).zip(out.chunks_exact_mut(ROWS)) {
            let [values] = self.matrix.rows_pass::<1>(self.kernel, first, [&self.x]);
            out.copy_from_slice(&values);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::x86::PREFETCH;
    use super::ROWS;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn scalar(w: &[u8], i: usize) -> f32 {
        half::f16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32()
    }

    #[target_feature(enable = "avx512f,f16c,fma")]
    pub unsafe fn rows_avx512<const C: usize>(
        w: [&[u8]; ROWS],
        x: [&[f32]; C],
        k: usize,
    ) -> [[f32; ROWS]; C] {
        let mut out = [[0f32; ROWS]; C];
        let whole = k / 16 * 16;
        if C == 1 {
            // Generation streams the weights: one row after the other is one sequential
            // stream (4 rows side by side were 4, each a new page every row), fetched ahead
            // across page boundaries, which the hardware prefetcher does not cross.
            let at = x[0].as_ptr();
            for r in 0..ROWS {
                let row = w[r].as_ptr();
                // A cache line (32 values) a step, its prefetch and two accumulators in
                // registers: one picked by `i / 16 % 4` was kept in memory (on AVX2 the same
                // change took generation from 0.74× llama.cpp's to 1.41×).
                let lines = whole / 32 * 32;
                let mut acc = [_mm512_setzero_ps(); 2];
                for i in (0..lines).step_by(32) {
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(2 * i + PREFETCH) as *const i8);
                    acc = [
                        half_term_512(row, at, i, acc[0]),
                        half_term_512(row, at, i + 16, acc[1]),
                    ];
                }
                if lines < whole {
                    acc[0] = half_term_512(row, at, lines, acc[0]);
                }
                out[0][r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
                    + (whole..k).map(|i| scalar(w[r], i) * x[0][i]).sum::<f32>();
            }
            return out;
        }
        let mut acc = [[_mm512_setzero_ps(); ROWS]; C];
        for i in (0..whole).step_by(16) {
            // A loop, not `array::from_fn`: a closure would not inherit the target features.
            let mut weights = [_mm512_setzero_ps(); ROWS];
            for r in 0..ROWS {
                weights[r] = _mm512_cvtph_ps(_mm256_loadu_si256(
                    w[r].as_ptr().add(2 * i) as *const __m256i
                ));
            }
            for c in 0..C {
                let v = _mm512_loadu_ps(x[c].as_ptr().add(i));
                for r in 0..ROWS {
                    acc[c][r] = _mm512_fmadd_ps(weights[r], v, acc[c][r]);
                }
            }
        }
        for c in 0..C {
            for r in 0..ROWS {
                out[c][r] = _mm512_reduce_add_ps(acc[c][r])
                    + (whole..k).map(|i| scalar(w[r], i) * x[c][i]).sum::<f32>();
            }
        }
        out
    }

    /// `acc` + the 16 f16 weights at `i` of `row` times the 16 values at `i` of `x`.
    #[inline(always)]
    unsafe fn half_term_512(row: *const u8, x: *const f32, i: usize, acc: __m512) -> __m512 {
        let weights = _mm512_cvtph_ps(_mm256_loadu_si256(row.add(2 * i) as *const __m256i));
        _mm512_fmadd_ps(weights, _mm512_loadu_ps(x.add(i)), acc)
    }

    /// `acc` + the 8 f16 weights at `i` of `row` times the 8 values at `i` of `x`.
    #[inline(always)]
    unsafe fn half_term(row: *const u8, x: *const f32, i: usize, acc: __m256) -> __m256 {
        let weights = _mm256_cvtph_ps(_mm_loadu_si128(row.add(2 * i) as *const __m128i));
        _mm256_fmadd_ps(weights, _mm256_loadu_ps(x.add(i)), acc)
    }

    /// [`rows_avx512`] at 8 lanes, for up to 2 activation rows (16 registers).
    #[target_feature(enable = "avx2,f16c,fma")]
    pub unsafe fn rows_avx2<const C: usize>(
        w: [&[u8]; ROWS],
        x: [&[f32]; C],
        k: usize,
    ) -> [[f32; ROWS]; C] {
        let whole = k / 8 * 8;
        if C == 1 {
            // As with AVX-512: one row after the other, fetched ahead, the accumulators in
            // registers (4 rows side by side, not fetched ahead, ran generation at 0.74×
            // llama.cpp's).
            let mut out = [[0f32; ROWS]; C];
            let x = x[0];
            for r in 0..ROWS {
                let row = w[r].as_ptr();
                let at = x.as_ptr();
                // A cache line (32 values) a step, four accumulators in registers.
                let lines = whole / 32 * 32;
                let mut acc = [_mm256_setzero_ps(); 4];
                for i in (0..lines).step_by(32) {
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(2 * i + PREFETCH) as *const i8);
                    acc = [
                        half_term(row, at, i, acc[0]),
                        half_term(row, at, i + 8, acc[1]),
                        half_term(row, at, i + 16, acc[2]),
                        half_term(row, at, i + 24, acc[3]),
                    ];
                }
                for i in (lines..whole).step_by(8) {
                    acc[0] = half_term(row, at, i, acc[0]);
                }
                let sum =
                    _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
                out[0][r] = lanes.iter().sum::<f32>()
                    + (whole..k).map(|i| scalar(w[r], i) * x[i]).sum::<f32>();
            }
            return out;
        }
        let mut acc = [[_mm256_setzero_ps(); ROWS]; C];
        for i in (0..whole).step_by(8) {
            let mut weights = [_mm256_setzero_ps(); ROWS];
            for r in 0..ROWS {
                weights[r] =
                    _mm256_cvtph_ps(_mm_loadu_si128(w[r].as_ptr().add(2 * i) as *const __m128i));
            }
            for c in 0..C {
                let v = _mm256_loadu_ps(x[c].as_ptr().add(i));
                for r in 0..ROWS {
                    acc[c][r] = _mm256_fmadd_ps(weights[r], v, acc[c][r]);
                }
            }
        }
        let mut out = [[0f32; ROWS]; C];
        for c in 0..C {
            for r in 0..ROWS {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[c][r]);
                out[c][r] = lanes.iter().sum::<f32>()
                    + (whole..k).map(|i| scalar(w[r], i) * x[c][i]).sum::<f32>();
            }
        }
        out
    }
}
