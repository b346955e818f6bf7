//! Register-blocked products against a panel: up to 32 weight rows in f32, position-major
//! (position i holds the rows' values side by side). A step loads the rows' values at one
//! position as whole registers and multiplies them by one broadcast activation each, an outer
//! product with nothing to convert or reduce in the loop: 24 multiply-adds per 2 loads and
//! 12 broadcasts with AVX-512. F16 prompts and prompt attention run on it.

use super::{widen_half, Kernel};
use candle_core::Result;
use half::f16;

/// Rows of a panel: two AVX-512 registers.
pub const PANEL_ROWS: usize = 32;

pub struct Panel {
    /// k × PANEL_ROWS values; the rows past `rows` are whatever they were (their sums are
    /// never written).
    values: Vec<f32>,
    k: usize,
    rows: usize,
}

impl Panel {
    /// An empty panel of rows of k values.
    pub fn new(k: usize) -> Panel {
        Panel {
            values: vec![0.0; k * PANEL_ROWS],
            k,
            rows: 0,
        }
    }

    /// Fills the panel with `rows` (up to 32, the rest ignored) of k little-endian f16 values
    /// each; a shorter row is refused.
    pub fn fill_f16(&mut self, kernel: Kernel, rows: &[&[u8]]) -> Result<()> {
        let rows = &rows[..rows.len().min(PANEL_ROWS)];
        if let Some(short) = rows.iter().find(|row| row.len() < 2 * self.k) {
            candle_core::bail!(
                "an f16 row of {} bytes is not {} values",
                short.len(),
                self.k
            );
        }
        self.rows = rows.len();
        #[cfg(target_arch = "x86_64")]
        if kernel != Kernel::Portable {
            // SAFETY: the SIMD kernels imply F16C (`Kernel::supported`), and every row holds
            // k values (checked above).
            unsafe { x86::fill_f16(rows, self.k, &mut self.values) };
            return Ok(());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = kernel;
        for (r, row) in rows.iter().enumerate() {
            for (i, pair) in row.chunks_exact(2).take(self.k).enumerate() {
                self.values[i * PANEL_ROWS + r] =
                    widen_half(f16::from_le_bytes([pair[0], pair[1]]));
            }
        }
        Ok(())
    }

    /// Fills the panel with `rows` rows (up to 32), value i of row r being `value(r, i)`.
    pub fn fill_with(&mut self, rows: usize, value: impl Fn(usize, usize) -> f32) {
        let rows = rows.min(PANEL_ROWS);
        self.rows = rows;
        for i in 0..self.k {
            for r in 0..rows {
                self.values[i * PANEL_ROWS + r] = value(r, i);
            }
        }
    }

    /// out[c·stride + r] = Σᵢ columns[c][i] · (value i of row r), for every column c and row
    /// r of the panel. A column shorter than k is refused.
    ///
    /// # Safety
    /// `out` must be valid for those writes, and nothing else may access those values
    /// meanwhile.
    pub unsafe fn multiply(
        &self,
        kernel: Kernel,
        columns: &[&[f32]],
        out: *mut f32,
        stride: usize,
    ) -> Result<()> {
        if let Some(short) = columns.iter().find(|c| c.len() < self.k) {
            candle_core::bail!(
                "a column of {} values cannot meet rows of {}",
                short.len(),
                self.k
            );
        }
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni if kernel.supported() => {
                x86::panel_pass(&self.values, columns, out, stride, self.rows)
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512Vnni if Kernel::Avx2.supported() => {
                x86::panel_pass_avx2(&self.values, columns, out, stride, self.rows)
            }
            _ => {
                let mut pairs = columns.chunks_exact(2);
                for (p, pair) in pairs.by_ref().enumerate() {
                    let sums = self.portable_pass([pair[0], pair[1]]);
                    for (c, sums) in sums.iter().enumerate() {
                        std::ptr::copy_nonoverlapping(
                            sums.as_ptr(),
                            out.add((2 * p + c) * stride),
                            self.rows,
                        );
                    }
                }
                if let [last] = pairs.remainder() {
                    let [sums] = self.portable_pass([*last]);
                    let c = columns.len() - 1;
                    std::ptr::copy_nonoverlapping(sums.as_ptr(), out.add(c * stride), self.rows);
                }
            }
        }
        Ok(())
    }

    /// C columns against every row of the panel, 32 running sums each, which the compiler
    /// keeps in vector registers: each position's values load once for the C columns.
    fn portable_pass<const C: usize>(&self, columns: [&[f32]; C]) -> [[f32; PANEL_ROWS]; C] {
        let mut sums = [[0f32; PANEL_ROWS]; C];
        for (i, position) in self.values.chunks_exact(PANEL_ROWS).enumerate() {
            for (sums, column) in sums.iter_mut().zip(columns) {
                let x = column[i];
                for (sum, &w) in sums.iter_mut().zip(position) {
                    *sum += w * x;
                }
            }
        }
        sums
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::PANEL_ROWS;
    use std::arch::x86_64::*;

    /// [`super::Panel::fill_f16`] with F16C: 8 rows at a time, 8 values of each converted,
    /// then turned position-major with an 8 × 8 transpose, so that each position takes one
    /// store of 8 rows (one store a value had taken 6% of an F16 prompt's time). Rows past
    /// the last 8, and values past the last 8, go one at a time.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn fill_f16(rows: &[&[u8]], k: usize, panel: &mut [f32]) {
        let whole = k / 8 * 8;
        let eights = rows.len() / 8 * 8;
        for (r0, eight) in rows[..eights]
            .chunks_exact(8)
            .enumerate()
            .map(|(i, e)| (8 * i, e))
        {
            for at in (0..whole).step_by(8) {
                let mut values = [_mm256_setzero_ps(); 8];
                for (values, row) in values.iter_mut().zip(eight) {
                    *values =
                        _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(2 * at) as *const _));
                }
                for (j, position) in transpose(values).into_iter().enumerate() {
                    _mm256_storeu_ps(panel.as_mut_ptr().add((at + j) * PANEL_ROWS + r0), position);
                }
            }
        }
        let value = |row: &[u8], i: usize| half::f16::from_le_bytes([row[2 * i], row[2 * i + 1]]);
        for (r, row) in rows.iter().enumerate() {
            let first = if r < eights { whole } else { 0 };
            for i in first..k {
                panel[i * PANEL_ROWS + r] = value(row, i).to_f32();
            }
        }
    }

    /// Rows of 8 values as columns.
    #[inline(always)]
    unsafe fn transpose(rows: [__m256; 8]) -> [__m256; 8] {
        let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
        let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
        let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
        let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
        let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
        let (u0, u1) = (
            _mm256_shuffle_ps::<0x44>(t0, t2),
            _mm256_shuffle_ps::<0xee>(t0, t2),
        );
        let (u2, u3) = (
            _mm256_shuffle_ps::<0x44>(t1, t3),
            _mm256_shuffle_ps::<0xee>(t1, t3),
        );
        let (u4, u5) = (
            _mm256_shuffle_ps::<0x44>(t4, t6),
            _mm256_shuffle_ps::<0xee>(t4, t6),
        );
        let (u6, u7) = (
            _mm256_shuffle_ps::<0x44>(t5, t7),
            _mm256_shuffle_ps::<0xee>(t5, t7),
        );
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// Every activation row against a panel of `count` rows: writes out[c·n..][..count].
    #[target_feature(enable = "avx512f,f16c,fma")]
    pub unsafe fn panel_pass(
        panel: &[f32],
        columns: &[&[f32]],
        out: *mut f32,
        n: usize,
        count: usize,
    ) {
        let mut done = 0;
        while done < columns.len() {
            let left = columns.len() - done;
            let at = |c: usize| columns[done + c];
            done += if left >= 12 {
                panel_step::<12>(panel, std::array::from_fn(at), out.add(done * n), n, count)
            } else if left >= 4 {
                panel_step::<4>(panel, std::array::from_fn(at), out.add(done * n), n, count)
            } else {
                panel_step::<1>(panel, std::array::from_fn(at), out.add(done * n), n, count)
            };
        }
    }

    /// C activation rows against a panel: 2 × C accumulators, no reduction.
    #[inline(always)]
    unsafe fn panel_step<const C: usize>(
        panel: &[f32],
        x: [&[f32]; C],
        out: *mut f32,
        n: usize,
        count: usize,
    ) -> usize {
        let mut low = [_mm512_setzero_ps(); C];
        let mut high = [_mm512_setzero_ps(); C];
        let k = panel.len() / PANEL_ROWS;
        let p = panel.as_ptr();
        for i in 0..k {
            let w0 = _mm512_loadu_ps(p.add(i * PANEL_ROWS));
            let w1 = _mm512_loadu_ps(p.add(i * PANEL_ROWS + 16));
            for c in 0..C {
                let a = _mm512_set1_ps(*x[c].get_unchecked(i));
                low[c] = _mm512_fmadd_ps(w0, a, low[c]);
                high[c] = _mm512_fmadd_ps(w1, a, high[c]);
            }
        }
        // The panel's rows past `count` are padding, not written.
        let mask = |rows: usize| ((1u32 << rows.min(16)) - 1) as u16;
        let (low_mask, high_mask) = (mask(count), mask(count.saturating_sub(16)));
        for c in 0..C {
            _mm512_mask_storeu_ps(out.add(c * n), low_mask, low[c]);
            _mm512_mask_storeu_ps(out.add(c * n + 16), high_mask, high[c]);
        }
        C
    }

    /// [`panel_pass`] with AVX2: each half of the panel (16 rows, 2 registers) against 6
    /// activation rows at a time, 12 accumulators.
    #[target_feature(enable = "avx2,f16c,fma")]
    pub unsafe fn panel_pass_avx2(
        panel: &[f32],
        columns: &[&[f32]],
        out: *mut f32,
        n: usize,
        count: usize,
    ) {
        for half in 0..2 {
            let rows = count.saturating_sub(16 * half).min(16);
            if rows == 0 {
                break;
            }
            let out = out.add(16 * half);
            let mut done = 0;
            while done < columns.len() {
                let at = |c: usize| columns[done + c];
                let out = out.add(done * n);
                // The last few take 2 or 3 at a time: one alone waits on its multiply-adds.
                done += match columns.len() - done {
                    6.. => panel_step_avx2::<6>(panel, half, std::array::from_fn(at), out, n, rows),
                    3..=5 => {
                        panel_step_avx2::<3>(panel, half, std::array::from_fn(at), out, n, rows)
                    }
                    2 => panel_step_avx2::<2>(panel, half, std::array::from_fn(at), out, n, rows),
                    _ => panel_step_avx2::<1>(panel, half, std::array::from_fn(at), out, n, rows),
                };
            }
        }
    }

    /// C activation rows against half a panel: 2 × C accumulators of 8 rows.
    #[inline(always)]
    unsafe fn panel_step_avx2<const C: usize>(
        panel: &[f32],
        half: usize,
        x: [&[f32]; C],
        out: *mut f32,
        n: usize,
        rows: usize,
    ) -> usize {
        let mut low = [_mm256_setzero_ps(); C];
        let mut high = [_mm256_setzero_ps(); C];
        let k = panel.len() / PANEL_ROWS;
        let p = panel.as_ptr().add(16 * half);
        for i in 0..k {
            let w0 = _mm256_loadu_ps(p.add(i * PANEL_ROWS));
            let w1 = _mm256_loadu_ps(p.add(i * PANEL_ROWS + 8));
            for c in 0..C {
                let a = _mm256_set1_ps(*x[c].get_unchecked(i));
                low[c] = _mm256_fmadd_ps(w0, a, low[c]);
                high[c] = _mm256_fmadd_ps(w1, a, high[c]);
            }
        }
        // Whole halves store straight: through a buffer, the copy of `rows` values was a
        // library call a step, 1-2% of an F16 prompt.
        if rows == 16 {
            for c in 0..C {
                _mm256_storeu_ps(out.add(c * n), low[c]);
                _mm256_storeu_ps(out.add(c * n + 8), high[c]);
            }
            return C;
        }
        let mut values = [0f32; 16];
        for c in 0..C {
            _mm256_storeu_ps(values.as_mut_ptr(), low[c]);
            _mm256_storeu_ps(values.as_mut_ptr().add(8), high[c]);
            // The panel's rows past `rows` are padding, not written.
            std::ptr::copy_nonoverlapping(values.as_ptr(), out.add(c * n), rows);
        }
        C
    }
}
