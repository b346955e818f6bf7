//! Q8_0 matrices used where they lie in the mapped file, as llama.cpp uses them: loading them
//! costs nothing (repacking a 1.1 GB Q8_0 model took 355 ms against llama.cpp's 17).
//! Generation streams each row's 34-byte blocks straight from the mapping. Prompts repack
//! each tile of 16 rows, as its thread reaches it, into a scratch tile that stays in cache
//! while every activation row passes over it (copies of 4 bytes: Q8_0's quants are whole).

use super::{
    check_input, in_chunks, quantize_rows, run_tiles, Activations, Format, Kernel, Repacked,
    SharedBytes, TilePass, Tiles, BLOCK, TILE,
};
use candle_core::Result;
use half::f16;

const BLOCK_BYTES: usize = 34;

pub struct InPlace {
    bytes: SharedBytes,
    start: usize,
    rows: usize,
    k: usize,
}

impl InPlace {
    /// The rows × k Q8_0 matrix at `start` of `bytes`.
    pub fn new(bytes: SharedBytes, start: usize, rows: usize, k: usize) -> Result<InPlace> {
        let available = (*bytes).as_ref().len().saturating_sub(start);
        let needed = rows.checked_mul(k / BLOCK * BLOCK_BYTES);
        if !Tiles::fit(Format::Q8_0, rows, k) || needed.is_none_or(|n| n > available) {
            candle_core::bail!(
                "{available} bytes cannot hold a {rows}×{k} Q8_0 matrix of whole {TILE}-row tiles"
            );
        }
        Ok(InPlace {
            bytes,
            start,
            rows,
            k,
        })
    }

    fn row_bytes(&self) -> usize {
        self.k / BLOCK * BLOCK_BYTES
    }

    /// The file's bytes of rows first..first + count.
    fn rows_at(&self, first: usize, count: usize) -> &[u8] {
        let size = self.row_bytes();
        &(*self.bytes).as_ref()[self.start + first * size..][..count * size]
    }

    /// One activation row against every weight row: each thread streams one contiguous share.
    fn generate(&self, kernel: Kernel, x: &[Activations]) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        let pairs = match kernel {
            Kernel::Avx512Vnni => x86::pairs(x),
            _ => Vec::new(),
        };
        let mut result = vec![0f32; self.rows];
        let out = result.as_mut_ptr() as usize;
        in_chunks(self.rows, 1, |rows| {
            let weights = self.rows_at(rows.start, rows.len());
            for (row, bytes) in rows.zip(weights.chunks_exact(self.row_bytes())) {
                let value = match kernel {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: only kernels this CPU has get here; the row has one 34-byte
                    // block per activation block (checked in `new` and `check_input`), and
                    // `pairs` pairs them.
                    Kernel::Avx512Vnni => unsafe { x86::dot_vnni(bytes, &pairs, x) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    Kernel::Avx2 => unsafe { x86::dot(bytes, x) },
                    _ => portable_dot(bytes, x),
                };
                // SAFETY: each row is handed out once; `result` outlives the pool call,
                // which returns when every row is done.
                unsafe { *(out as *mut f32).add(row) = value };
            }
        });
        result
    }
}

fn scale(block: &[u8]) -> f32 {
    f16::from_le_bytes([block[0], block[1]]).to_f32()
}

/// Σ over blocks of d_w · d_x · Σ w·q, as candle's `vec_dot_q8_0_q8_0` sums it.
fn portable_dot(row: &[u8], x: &[Activations]) -> f32 {
    row.chunks_exact(BLOCK_BYTES)
        .zip(x)
        .map(|(block, a)| {
            let sum: i32 = block[2..]
                .iter()
                .zip(&a.q)
                .map(|(&w, &q)| i32::from(w as i8) * i32::from(q))
                .sum();
            sum as f32 * scale(block) * a.d
        })
        .sum()
}

/// The matrix's tiles, each repacked as its thread reaches it, with quantized activations.
struct OnTheFly<'a>(&'a InPlace);

impl TilePass for OnTheFly<'_> {
    type Row = [Activations];
    type Scratch = Option<Tiles>;

    fn prepare(&self, t: usize, scratch: &mut Option<Tiles>) {
        let matrix = self.0;
        scratch
            .get_or_insert_with(|| Tiles::one_tile(Format::Q8_0, matrix.k))
            .repack_tile(matrix.rows_at(t * TILE, TILE));
    }

    fn pass<const C: usize>(
        &self,
        kernel: Kernel,
        _: usize,
        scratch: &Option<Tiles>,
        rows: [&[Activations]; C],
    ) -> [[f32; TILE]; C] {
        match scratch {
            Some(tile) => super::Columns::pass(tile, kernel, 0, rows),
            // `prepare` always fills it first.
            None => [[0.0; TILE]; C],
        }
    }
}

impl Repacked for InPlace {
    fn rows(&self) -> usize {
        self.rows
    }

    fn k(&self) -> usize {
        self.k
    }

    fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<()> {
        self.check_row(row, out)?;
        for (values, block) in out
            .chunks_exact_mut(BLOCK)
            .zip(self.rows_at(row, 1).chunks_exact(BLOCK_BYTES))
        {
            let d = scale(block);
            for (v, &q) in values.iter_mut().zip(&block[2..]) {
                *v = d * f32::from(q as i8);
            }
        }
        Ok(())
    }

    fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize) -> Result<Vec<f32>> {
        check_input(x, m, self.k)?;
        let kernel = kernel.or_portable();
        let activations = quantize_rows::<Activations>(x, m, self.k);
        if m == 1 {
            return Ok(self.generate(kernel, &activations));
        }
        let rows: Vec<&[Activations]> = activations.chunks_exact(self.k / BLOCK).collect();
        Ok(run_tiles(&OnTheFly(self), kernel, self.rows, &rows))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Activations, BLOCK_BYTES};
    use std::arch::x86_64::*;

    /// Two activation blocks side by side, as one 512-bit `dpbusd` takes them.
    #[repr(C, align(64))]
    pub struct Pair {
        q: [i8; 64],
        /// -128 × Σq of each block, in the first lane of its half: `dpbusd` starts from it,
        /// which takes out the 128 added to make the weights unsigned.
        bias: [i32; 16],
        /// Each block's scale across its half.
        d: [f32; 16],
    }

    pub fn pairs(x: &[Activations]) -> Vec<Pair> {
        x.chunks_exact(2)
            .map(|two| {
                let mut pair = Pair {
                    q: [0; 64],
                    bias: [0; 16],
                    d: [0.0; 16],
                };
                for (half, a) in two.iter().enumerate() {
                    pair.q[32 * half..32 * (half + 1)].copy_from_slice(&a.q);
                    pair.bias[8 * half] = -128 * a.sum;
                    pair.d[8 * half..8 * (half + 1)].fill(a.d);
                }
                pair
            })
            .collect()
    }

    /// [`super::portable_dot`] two blocks at a time with AVX-512 VNNI: the weights made
    /// unsigned by adding 128 (taken out again by each pair's bias), then each block's 8 sums
    /// scaled in float. Generation is bound by this arithmetic as much as by memory: it does
    /// half the work of [`dot`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot_vnni(row: &[u8], pairs: &[Pair], x: &[Activations]) -> f32 {
        let flip = _mm512_set1_epi8(-128);
        let at = row.as_ptr();
        let mut acc = [_mm512_setzero_ps(); 2];
        for (i, pair) in pairs.iter().enumerate() {
            let block = at.add(2 * i * BLOCK_BYTES);
            _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH) as *const i8);
            let low = _mm256_loadu_si256(block.add(2) as *const __m256i);
            let high = _mm256_loadu_si256(block.add(BLOCK_BYTES + 2) as *const __m256i);
            let w = _mm512_xor_si512(
                _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1),
                flip,
            );
            let sums = _mm512_dpbusd_epi32(
                _mm512_load_si512(pair.bias.as_ptr() as *const _),
                w,
                _mm512_load_si512(pair.q.as_ptr() as *const _),
            );
            let scales = _mm512_cvtph_ps(_mm256_set_m128i(
                _mm_set1_epi16((block.add(BLOCK_BYTES) as *const i16).read_unaligned()),
                _mm_set1_epi16((block as *const i16).read_unaligned()),
            ));
            let scales = _mm512_mul_ps(scales, _mm512_load_ps(pair.d.as_ptr()));
            acc[i % 2] = _mm512_fmadd_ps(scales, _mm512_cvtepi32_ps(sums), acc[i % 2]);
        }
        let done = 2 * pairs.len();
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
            + super::portable_dot(&row[done * BLOCK_BYTES..], &x[done..])
    }

    /// How far ahead of the row being read its blocks are fetched into cache: the hardware
    /// prefetcher stops at each page.
    const PREFETCH: usize = 4096;

    /// [`super::portable_dot`] with AVX2: |w| times q with w's sign (`maddubs` takes unsigned
    /// times signed bytes), pairs summed to 32 bits, then each block's 8 sums scaled in
    /// float.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(row: &[u8], x: &[Activations]) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 2];
        for (b, (block, a)) in row.chunks_exact(BLOCK_BYTES).zip(x).enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(block.as_ptr().wrapping_add(PREFETCH) as *const i8);
            let w = _mm256_loadu_si256(block.as_ptr().add(2) as *const __m256i);
            let q = _mm256_loadu_si256(a.q.as_ptr() as *const __m256i);
            let products = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(q, w));
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(products, ones));
            let d = super::scale(block) * a.d;
            acc[b % 2] = _mm256_fmadd_ps(_mm256_set1_ps(d), sums, acc[b % 2]);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[0], acc[1]));
        lanes.iter().sum()
    }
}
