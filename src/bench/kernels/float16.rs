//! f16 weight matrices. candle dequantizes them to f32 for its matmul, doubling their
//! memory. Here they stay f16, repacked into tiles of 16 rows stored position by position
//! ([tile][k][row in tile]): one 32-byte load is one input position for 16 rows, converted
//! once (F16C) and multiplied with every activation row of the pass.

use super::{check_input, run_tiles, Kernel, Repacked, TilePass, TILE};
use candle_core::Result;
use half::f16;

pub struct HalfTiles {
    rows: usize,
    k: usize,
    /// f16 bits, [tile][position][row in tile].
    values: Vec<u16>,
}

impl HalfTiles {
    pub fn fit(rows: usize, k: usize) -> bool {
        rows.is_multiple_of(TILE) && rows > 0 && k > 0
    }

    /// Repacks `bytes`, the file's rows × k f16 matrix (little-endian).
    pub fn new(bytes: &[u8], rows: usize, k: usize) -> Result<HalfTiles> {
        if !HalfTiles::fit(rows, k) || bytes.len() != rows * k * 2 {
            candle_core::bail!(
                "{} bytes are not a {rows}×{k} f16 matrix of whole {TILE}-row tiles",
                bytes.len()
            );
        }
        let mut values = vec![0u16; rows * k];
        let tile_values = TILE * k;
        let threads = candle_core::utils::get_num_threads().clamp(1, rows / TILE);
        let per_thread = (rows / TILE).div_ceil(threads) * tile_values;
        std::thread::scope(|scope| {
            for (out, bytes) in values
                .chunks_mut(per_thread)
                .zip(bytes.chunks(per_thread * 2))
            {
                scope.spawn(move || {
                    for (tile, rows) in out
                        .chunks_exact_mut(tile_values)
                        .zip(bytes.chunks_exact(tile_values * 2))
                    {
                        for (r, row) in rows.chunks_exact(k * 2).enumerate() {
                            for (i, pair) in row.chunks_exact(2).enumerate() {
                                tile[i * TILE + r] = u16::from_le_bytes([pair[0], pair[1]]);
                            }
                        }
                    }
                });
            }
        });
        Ok(HalfTiles { rows, k, values })
    }
}

impl TilePass for HalfTiles {
    type Row = [f32];

    fn pass<const C: usize>(&self, kernel: Kernel, t: usize, x: [&[f32]; C]) -> [[f32; TILE]; C] {
        let tile = &self.values[t * TILE * self.k..][..TILE * self.k];
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `run_tiles` runs only kernels this CPU has; every row of x has k
            // values and the tile k × 16 (both checked there and in `new`).
            Kernel::Avx512Vnni => unsafe { x86::pass_avx512(tile, x) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Kernel::Avx2 => unsafe { x86::pass_avx2(tile, x) },
            _ => {
                let mut acc = [[0f32; TILE]; C];
                for (i, values) in tile.chunks_exact(TILE).enumerate() {
                    let w: [f32; TILE] =
                        std::array::from_fn(|r| f16::from_bits(values[r]).to_f32());
                    for (acc, x) in acc.iter_mut().zip(&x) {
                        for (a, w) in acc.iter_mut().zip(w) {
                            *a += w * x[i];
                        }
                    }
                }
                acc
            }
        }
    }
}

impl Repacked for HalfTiles {
    fn rows(&self) -> usize {
        self.rows
    }

    fn k(&self) -> usize {
        self.k
    }

    fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<()> {
        self.check_row(row, out)?;
        let (t, r) = (row / TILE, row % TILE);
        let tile = &self.values[t * TILE * self.k..][..TILE * self.k];
        for (o, values) in out.iter_mut().zip(tile.chunks_exact(TILE)) {
            *o = f16::from_bits(values[r]).to_f32();
        }
        Ok(())
    }

    fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize) -> Result<Vec<f32>> {
        check_input(x, m, self.k)?;
        let rows: Vec<&[f32]> = x.chunks_exact(self.k).collect();
        Ok(run_tiles(self, kernel, self.rows, &rows))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::TILE;
    use std::arch::x86_64::*;

    /// Each position's 16 weights converted once, then one multiply-add per activation row;
    /// a single row spreads over 4 accumulators so the adds do not wait on each other.
    #[target_feature(enable = "avx512f,f16c,fma")]
    pub unsafe fn pass_avx512<const C: usize>(tile: &[u16], x: [&[f32]; C]) -> [[f32; TILE]; C] {
        let mut out = [[0f32; TILE]; C];
        let positions = tile.len() / TILE;
        if C == 1 {
            let mut acc = [_mm512_setzero_ps(); 4];
            for i in 0..positions {
                let w = _mm512_cvtph_ps(_mm256_loadu_si256(
                    tile.as_ptr().add(i * TILE) as *const __m256i
                ));
                acc[i % 4] = _mm512_fmadd_ps(w, _mm512_set1_ps(*x[0].get_unchecked(i)), acc[i % 4]);
            }
            let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
            _mm512_storeu_ps(out[0].as_mut_ptr(), sum);
            return out;
        }
        let mut acc = [_mm512_setzero_ps(); C];
        for i in 0..positions {
            let w = _mm512_cvtph_ps(_mm256_loadu_si256(
                tile.as_ptr().add(i * TILE) as *const __m256i
            ));
            for c in 0..C {
                acc[c] = _mm512_fmadd_ps(w, _mm512_set1_ps(*x[c].get_unchecked(i)), acc[c]);
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            _mm512_storeu_ps(o.as_mut_ptr(), acc);
        }
        out
    }

    /// [`pass_avx512`] as two halves of 8 rows.
    #[target_feature(enable = "avx2,f16c,fma")]
    pub unsafe fn pass_avx2<const C: usize>(tile: &[u16], x: [&[f32]; C]) -> [[f32; TILE]; C] {
        let mut acc = [[_mm256_setzero_ps(); 2]; C];
        for i in 0..tile.len() / TILE {
            let at = tile.as_ptr().add(i * TILE);
            let low = _mm256_cvtph_ps(_mm_loadu_si128(at as *const __m128i));
            let high = _mm256_cvtph_ps(_mm_loadu_si128(at.add(8) as *const __m128i));
            for c in 0..C {
                let v = _mm256_set1_ps(*x[c].get_unchecked(i));
                acc[c][0] = _mm256_fmadd_ps(low, v, acc[c][0]);
                acc[c][1] = _mm256_fmadd_ps(high, v, acc[c][1]);
            }
        }
        let mut out = [[0f32; TILE]; C];
        for (o, acc) in out.iter_mut().zip(acc) {
            _mm256_storeu_ps(o.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(o.as_mut_ptr().add(8), acc[1]);
        }
        out
    }
}
