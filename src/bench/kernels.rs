//! Quantized matrix products for the GGML 32-value block formats Q4_0, Q4_1, Q5_0, Q5_1 and
//! Q8_0. candle 0.11 runs the first four with scalar code on x86 (87% of a SmolLM2 Q4_1 prompt
//! pass was its `vec_dot_unopt`, by perf), batches no prompt rows, and keeps a second,
//! repacked copy of Q8_0 weights.
//!
//! Weights are repacked once, at load, into tiles of 16 rows ([`Tiles`]): for each block,
//! 4 quant bytes of each of the 16 rows sit side by side, so one 64-byte load feeds 16 rows
//! and one AVX-512 VNNI `dpbusd` does 4 multiply-adds for each. The repacked weights replace
//! the file's bytes (same size), so nothing is held twice. Activations are quantized to 8 bits
//! once per row, exactly as candle's Q8_0/Q8_1 do, and every block's sum stays an exact
//! integer, as in candle. Three kernels, chosen at run time: AVX-512 VNNI, AVX2, and a
//! portable one (the Pi's path) that the compiler vectorizes. Tiles are split across candle's
//! own thread pool, so the two never compete.

use candle_core::quantized::GgmlDType;
use candle_core::Result;
use half::f16;

/// Values per block in every format here.
pub const BLOCK: usize = 32;
/// Weight rows interleaved in one tile: an AVX-512 register holds 4 quants of each.
pub const TILE: usize = 16;
/// 4-value groups per block.
const GROUPS: usize = BLOCK / 4;

/// A weight format these kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Q4_0,
        Format::Q4_1,
        Format::Q5_0,
        Format::Q5_1,
        Format::Q8_0,
    ];

    pub fn of(dtype: GgmlDType) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.dtype() == dtype)
    }

    pub fn dtype(self) -> GgmlDType {
        match self {
            Format::Q4_0 => GgmlDType::Q4_0,
            Format::Q4_1 => GgmlDType::Q4_1,
            Format::Q5_0 => GgmlDType::Q5_0,
            Format::Q5_1 => GgmlDType::Q5_1,
            Format::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// Bytes of one block of 32 weights in the file.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q5_0 => 22,
            Format::Q5_1 => 24,
            Format::Q8_0 => 34,
        }
    }

    /// Bytes of quants in a block: 16 of nibble pairs, or 32 signed bytes.
    fn quant_bytes(self) -> usize {
        match self {
            Format::Q8_0 => 32,
            _ => 16,
        }
    }

    /// Where a block's quants start, after its f16 scale, minimum and fifth bits.
    fn quants_at(self) -> usize {
        match self {
            Format::Q4_0 | Format::Q8_0 => 2,
            Format::Q4_1 => 4,
            Format::Q5_0 => 6,
            Format::Q5_1 => 8,
        }
    }

    fn has_min(self) -> bool {
        matches!(self, Format::Q4_1 | Format::Q5_1)
    }

    fn has_fifth_bit(self) -> bool {
        matches!(self, Format::Q5_0 | Format::Q5_1)
    }

    /// What a stored value carries on top of the real one (Q4_0 stores v + 8).
    fn bias(self) -> i32 {
        match self {
            Format::Q4_0 => 8,
            Format::Q5_0 => 16,
            _ => 0,
        }
    }
}

/// 32 activations as 8-bit integers: value ≈ d × q; `s` = d × Σq, for the formats with a
/// minimum. The rounding matches candle's `BlockQ8_1::from_float`, f16 scales included.
#[derive(Debug, Clone, Copy)]
pub struct Activations {
    d: f32,
    s: f32,
    /// Σq, to take a stored bias out of a block's integer sum.
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

/// Which code runs the tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Portable,
    Avx2,
    Avx512Vnni,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn best() -> Kernel {
        Kernel::available()
            .last()
            .copied()
            .unwrap_or(Kernel::Portable)
    }

    /// Every kernel this CPU runs, slowest first.
    pub fn available() -> Vec<Kernel> {
        [Kernel::Portable, Kernel::Avx2, Kernel::Avx512Vnni]
            .into_iter()
            .filter(|k| k.supported())
            .collect()
    }

    fn supported(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => x86::avx2(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => x86::avx512_vnni(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Activation rows one pass over a tile serves: enough to hide the weight decoding,
    /// few enough that the accumulators stay in registers.
    fn columns(self) -> usize {
        match self {
            Kernel::Avx512Vnni => 8,
            Kernel::Avx2 | Kernel::Portable => 4,
        }
    }
}

/// A weight matrix (rows × k) in one of the formats, repacked into tiles of 16 rows.
pub struct Tiles {
    format: Format,
    rows: usize,
    k: usize,
    blocks: usize,
    /// [tile][block][chunk][row in tile][4 bytes]. Nibble formats have 4 chunks: chunk h
    /// holds values 4h..4h+4 in its low nibbles and 16+4h.. in its high ones, which is the
    /// file's own byte order within a row. Q8_0 has 8 chunks of signed bytes.
    quants: Vec<u8>,
    /// Q5_0 and Q5_1, [tile][block][group]: bit 4r + j is the fifth bit of value 4·group + j
    /// of row r.
    fifth: Vec<u64>,
    /// f16 bits, [tile][block][row in tile].
    scales: Vec<u16>,
    /// Q4_1 and Q5_1: f16 bits, laid out as `scales`.
    mins: Vec<u16>,
}

impl Tiles {
    /// Whether a rows × k matrix can be tiled; other shapes use candle's kernels.
    pub fn fit(rows: usize, k: usize) -> bool {
        rows.is_multiple_of(TILE) && k.is_multiple_of(BLOCK) && rows > 0 && k > 0
    }

    /// Repacks `bytes`, the file's rows × k matrix in `format`.
    pub fn new(format: Format, bytes: &[u8], rows: usize, k: usize) -> Result<Tiles> {
        if !Tiles::fit(rows, k) {
            candle_core::bail!(
                "a {rows}×{k} matrix is not whole tiles of {TILE} rows and {BLOCK}-value blocks"
            );
        }
        let blocks = k / BLOCK;
        let block_bytes = format.block_bytes();
        if bytes.len() != rows * blocks * block_bytes {
            candle_core::bail!(
                "a {rows}×{k} {:?} matrix takes {} bytes, not {}",
                format.dtype(),
                rows * blocks * block_bytes,
                bytes.len()
            );
        }
        let quant_bytes = format.quant_bytes();
        let tiles = rows / TILE;
        let mut packed = Tiles {
            format,
            rows,
            k,
            blocks,
            quants: vec![0; rows * blocks * quant_bytes],
            fifth: vec![
                0;
                if format.has_fifth_bit() {
                    tiles * blocks * GROUPS
                } else {
                    0
                }
            ],
            scales: vec![0; rows * blocks],
            mins: vec![0; if format.has_min() { rows * blocks } else { 0 }],
        };
        for (row, row_bytes) in bytes.chunks_exact(blocks * block_bytes).enumerate() {
            let (tile, r) = (row / TILE, row % TILE);
            for (b, block) in row_bytes.chunks_exact(block_bytes).enumerate() {
                let tb = tile * blocks + b;
                packed.scales[tb * TILE + r] = u16::from_le_bytes([block[0], block[1]]);
                if format.has_min() {
                    packed.mins[tb * TILE + r] = u16::from_le_bytes([block[2], block[3]]);
                }
                let at = format.quants_at();
                let quants = &block[at..at + quant_bytes];
                let chunks = &mut packed.quants[tb * TILE * quant_bytes..][..TILE * quant_bytes];
                for (c, four) in quants.chunks_exact(4).enumerate() {
                    chunks[(c * TILE + r) * 4..][..4].copy_from_slice(four);
                }
                if format.has_fifth_bit() {
                    let high = u32::from_le_bytes([
                        block[at - 4],
                        block[at - 3],
                        block[at - 2],
                        block[at - 1],
                    ]);
                    for g in 0..GROUPS {
                        packed.fifth[tb * GROUPS + g] |=
                            u64::from((high >> (4 * g)) & 0xf) << (4 * r);
                    }
                }
            }
        }
        Ok(packed)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Row r of tile-block tb as signed values (the stored bias taken out), with its scale
    /// and minimum.
    fn decode(&self, tb: usize, r: usize, values: &mut [i8; BLOCK]) -> (f32, f32) {
        let quant_bytes = self.format.quant_bytes();
        let chunks = &self.quants[tb * TILE * quant_bytes..][..TILE * quant_bytes];
        let bias = self.format.bias() as i8;
        for (i, v) in values.iter_mut().enumerate() {
            *v = if self.format == Format::Q8_0 {
                chunks[((i / 4) * TILE + r) * 4 + i % 4] as i8
            } else {
                let byte = chunks[(((i % 16) / 4) * TILE + r) * 4 + i % 4];
                let mut value = if i < 16 { byte & 0x0f } else { byte >> 4 };
                if self.format.has_fifth_bit() {
                    let bit = (self.fifth[tb * GROUPS + i / 4] >> (4 * r + i % 4)) & 1;
                    value |= (bit as u8) << 4;
                }
                value as i8 - bias
            };
        }
        let scale = f16::from_bits(self.scales[tb * TILE + r]).to_f32();
        let min = match self.mins.get(tb * TILE + r) {
            Some(&bits) => f16::from_bits(bits).to_f32(),
            None => 0.0,
        };
        (scale, min)
    }

    /// Row `row`, dequantized into `out` (k values).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<()> {
        if row >= self.rows || out.len() != self.k {
            candle_core::bail!(
                "row {row} of a {}×{} matrix cannot fill {} values",
                self.rows,
                self.k,
                out.len()
            );
        }
        let (tile, r) = (row / TILE, row % TILE);
        let mut values = [0i8; BLOCK];
        for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
            let (scale, min) = self.decode(tile * self.blocks + b, r, &mut values);
            for (o, v) in out.iter_mut().zip(values) {
                *o = scale * f32::from(v) + min;
            }
        }
        Ok(())
    }

    /// `x` (m × k, row-major) times the transpose of these weights: the m × rows result,
    /// row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        self.matmul_with(Kernel::best(), x, m)
    }

    /// [`Tiles::matmul`] with a chosen kernel; one this CPU lacks runs the portable one.
    pub fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize) -> Result<Vec<f32>> {
        if x.len() != m * self.k {
            candle_core::bail!(
                "{} values are not {m} rows of {} for a {}×{} matrix",
                x.len(),
                self.k,
                self.rows,
                self.k
            );
        }
        let kernel = if kernel.supported() {
            kernel
        } else {
            Kernel::Portable
        };
        let mut activations = vec![Vec::new(); m];
        let rows = activations.as_mut_ptr() as usize;
        let quantize = |range: std::ops::Range<usize>| {
            for i in range {
                // SAFETY: item i writes only activations[i]; items are disjoint and the
                // pool call returns when every item is done.
                let out = unsafe { &mut *(rows as *mut Vec<Activations>).add(i) };
                quantize_row(&x[i * self.k..(i + 1) * self.k], out);
            }
        };
        // One row is quicker to quantize than to hand to the pool.
        if m == 1 {
            quantize(0..1);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(m, quantize);
        }
        let n = self.rows;
        let mut result = vec![0f32; m * n];
        let out = result.as_mut_ptr() as usize;
        candle_core::utils::barrier_pool().execute_chunked(n / TILE, |tiles| {
            for t in tiles {
                let mut write = |column: usize, values: &[f32; TILE]| {
                    // SAFETY: tile t writes only columns t*16..(t+1)*16 of each result row;
                    // tiles are disjoint, and `result` outlives the pool call, which returns
                    // when every tile is done.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            values.as_ptr(),
                            (out as *mut f32).add(column * n + t * TILE),
                            TILE,
                        )
                    }
                };
                self.tile(kernel, t, &activations, &mut write);
            }
        });
        Ok(result)
    }

    /// Tile t against every activation row, a pass per `kernel.columns()` rows.
    fn tile(
        &self,
        kernel: Kernel,
        t: usize,
        activations: &[Vec<Activations>],
        write: &mut impl FnMut(usize, &[f32; TILE]),
    ) {
        let mut done = 0;
        while done < activations.len() {
            let left = activations.len() - done;
            let at = |c: usize| &activations[done + c][..];
            let width = if left >= 8 && kernel.columns() >= 8 {
                emit(
                    done,
                    self.pass::<8>(kernel, t, std::array::from_fn(at)),
                    write,
                )
            } else if left >= 4 {
                emit(
                    done,
                    self.pass::<4>(kernel, t, std::array::from_fn(at)),
                    write,
                )
            } else {
                emit(
                    done,
                    self.pass::<1>(kernel, t, std::array::from_fn(at)),
                    write,
                )
            };
            done += width;
        }
    }

    fn pass<const C: usize>(
        &self,
        kernel: Kernel,
        t: usize,
        columns: [&[Activations]; C],
    ) -> [[f32; TILE]; C] {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `matmul_with` runs only kernels this CPU has; every activation row has
            // `blocks` blocks and the tile's data is whole (both by construction).
            Kernel::Avx512Vnni => unsafe { x86::pass_vnni(self, t, columns) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Kernel::Avx2 => unsafe { x86::pass_avx2(self, t, columns) },
            _ => self.pass_portable(t, columns),
        }
    }

    /// Plain loops over decoded blocks: what a Pi runs. The 16 × 32 products of a block are
    /// independent integer multiply-adds the compiler vectorizes.
    fn pass_portable<const C: usize>(
        &self,
        t: usize,
        columns: [&[Activations]; C],
    ) -> [[f32; TILE]; C] {
        let mut acc = [[0f32; TILE]; C];
        let mut values = [[0i8; BLOCK]; TILE];
        let mut scales = [(0f32, 0f32); TILE];
        for b in 0..self.blocks {
            let tb = t * self.blocks + b;
            for (r, (v, s)) in values.iter_mut().zip(&mut scales).enumerate() {
                *s = self.decode(tb, r, v);
            }
            for (acc, column) in acc.iter_mut().zip(&columns) {
                let a = &column[b];
                for ((o, v), (scale, min)) in acc.iter_mut().zip(&values).zip(&scales) {
                    let sum: i32 = v
                        .iter()
                        .zip(&a.q)
                        .map(|(&w, &q)| i32::from(w) * i32::from(q))
                        .sum();
                    *o += scale * a.d * sum as f32 + min * a.s;
                }
            }
        }
        acc
    }
}

fn emit<const C: usize>(
    first: usize,
    outputs: [[f32; TILE]; C],
    write: &mut impl FnMut(usize, &[f32; TILE]),
) -> usize {
    for (c, values) in outputs.iter().enumerate() {
        write(first + c, values);
    }
    C
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Activations, Format, Tiles, GROUPS, TILE};
    use std::arch::x86_64::*;

    pub fn avx2() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }

    pub fn avx512_vnni() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            avx2()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
        })
    }

    /// Group g (4 bytes) of an activation block, in every 32-bit lane.
    #[inline(always)]
    unsafe fn group(a: &Activations, g: usize) -> i32 {
        (a.q.as_ptr() as *const i32).add(g).read_unaligned()
    }

    /// One pass of tile t over C activation rows with AVX-512 VNNI: per block, the 16 rows'
    /// 32 values in 8 registers (unsigned: Q8_0 shifted by 128), then 8 `dpbusd` per row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn pass_vnni<const C: usize>(
        tiles: &Tiles,
        t: usize,
        columns: [&[Activations]; C],
    ) -> [[f32; TILE]; C] {
        let format = tiles.format;
        let quant_bytes = format.quant_bytes();
        let bias = if format == Format::Q8_0 {
            128
        } else {
            format.bias()
        };
        let mut acc = [_mm512_setzero_ps(); C];
        for b in 0..tiles.blocks {
            let tb = t * tiles.blocks + b;
            let base = tiles.quants.as_ptr().add(tb * TILE * quant_bytes);
            let mut w = [_mm512_setzero_si512(); GROUPS];
            if format == Format::Q8_0 {
                let flip = _mm512_set1_epi8(-128);
                for (g, w) in w.iter_mut().enumerate() {
                    *w = _mm512_xor_si512(_mm512_loadu_si512(base.add(g * 64) as *const _), flip);
                }
            } else {
                let mask = _mm512_set1_epi8(0x0f);
                for h in 0..4 {
                    let chunk = _mm512_loadu_si512(base.add(h * 64) as *const _);
                    w[h] = _mm512_and_si512(chunk, mask);
                    w[h + 4] = _mm512_and_si512(_mm512_srli_epi16(chunk, 4), mask);
                }
                if format.has_fifth_bit() {
                    let sixteen = _mm512_set1_epi8(16);
                    for (g, w) in w.iter_mut().enumerate() {
                        *w = _mm512_mask_add_epi8(*w, tiles.fifth[tb * GROUPS + g], *w, sixteen);
                    }
                }
            }
            let scales = _mm512_cvtph_ps(_mm256_loadu_si256(
                tiles.scales.as_ptr().add(tb * TILE) as *const __m256i
            ));
            let mins = if format.has_min() {
                _mm512_cvtph_ps(_mm256_loadu_si256(
                    tiles.mins.as_ptr().add(tb * TILE) as *const __m256i
                ))
            } else {
                _mm512_setzero_ps()
            };
            for c in 0..C {
                let a = columns[c].get_unchecked(b);
                // Two chains, so each waits on half as many dpbusd.
                let mut even = _mm512_setzero_si512();
                let mut odd = _mm512_setzero_si512();
                for g in (0..GROUPS).step_by(2) {
                    even = _mm512_dpbusd_epi32(even, w[g], _mm512_set1_epi32(group(a, g)));
                    odd = _mm512_dpbusd_epi32(odd, w[g + 1], _mm512_set1_epi32(group(a, g + 1)));
                }
                let mut sums = _mm512_add_epi32(even, odd);
                if bias != 0 {
                    sums = _mm512_sub_epi32(sums, _mm512_set1_epi32(bias * a.sum));
                }
                let scale = _mm512_mul_ps(scales, _mm512_set1_ps(a.d));
                acc[c] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sums), acc[c]);
                if format.has_min() {
                    acc[c] = _mm512_fmadd_ps(mins, _mm512_set1_ps(a.s), acc[c]);
                }
            }
        }
        let mut out = [[0f32; TILE]; C];
        for (o, acc) in out.iter_mut().zip(acc) {
            _mm512_storeu_ps(o.as_mut_ptr(), acc);
        }
        out
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

    /// One pass of tile t over C activation rows with AVX2, 8 rows at a time. `maddubs`
    /// makes 16-bit pair sums: 8 groups of 4-bit values (|Σ| ≤ 8 × 2 × 15 × 127) or 4 of
    /// 5-bit ones fit in 16 bits before widening; Q8_0's signed bytes take the sign trick and
    /// widen every group.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn pass_avx2<const C: usize>(
        tiles: &Tiles,
        t: usize,
        columns: [&[Activations]; C],
    ) -> [[f32; TILE]; C] {
        let format = tiles.format;
        let quant_bytes = format.quant_bytes();
        let bias = format.bias();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); 2]; C];
        for b in 0..tiles.blocks {
            let tb = t * tiles.blocks + b;
            for half in 0..2 {
                let base = tiles
                    .quants
                    .as_ptr()
                    .add(tb * TILE * quant_bytes + half * 32);
                let mut w = [_mm256_setzero_si256(); GROUPS];
                if format == Format::Q8_0 {
                    for (g, w) in w.iter_mut().enumerate() {
                        *w = _mm256_loadu_si256(base.add(g * 64) as *const __m256i);
                    }
                } else {
                    let mask = _mm256_set1_epi8(0x0f);
                    for h in 0..4 {
                        let chunk = _mm256_loadu_si256(base.add(h * 64) as *const __m256i);
                        w[h] = _mm256_and_si256(chunk, mask);
                        w[h + 4] = _mm256_and_si256(_mm256_srli_epi16(chunk, 4), mask);
                    }
                    if format.has_fifth_bit() {
                        for (g, w) in w.iter_mut().enumerate() {
                            let bits = (tiles.fifth[tb * GROUPS + g] >> (32 * half)) as u32;
                            *w = _mm256_or_si256(*w, fifth_bits(bits));
                        }
                    }
                }
                let at = tb * TILE + half * 8;
                let scales =
                    _mm256_cvtph_ps(_mm_loadu_si128(tiles.scales.as_ptr().add(at) as *const _));
                let mins = if format.has_min() {
                    _mm256_cvtph_ps(_mm_loadu_si128(tiles.mins.as_ptr().add(at) as *const _))
                } else {
                    _mm256_setzero_ps()
                };
                for c in 0..C {
                    let a = columns[c].get_unchecked(b);
                    let q = |g: usize| _mm256_set1_epi32(group(a, g));
                    let sums = match format {
                        Format::Q8_0 => {
                            let mut sums = _mm256_setzero_si256();
                            for (g, &w) in w.iter().enumerate() {
                                let pairs = _mm256_maddubs_epi16(
                                    _mm256_sign_epi8(w, w),
                                    _mm256_sign_epi8(q(g), w),
                                );
                                sums = _mm256_add_epi32(sums, _mm256_madd_epi16(pairs, ones));
                            }
                            sums
                        }
                        Format::Q4_0 | Format::Q4_1 => {
                            let mut pairs = _mm256_setzero_si256();
                            for (g, &w) in w.iter().enumerate() {
                                pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(w, q(g)));
                            }
                            _mm256_madd_epi16(pairs, ones)
                        }
                        Format::Q5_0 | Format::Q5_1 => {
                            let mut low = _mm256_setzero_si256();
                            let mut high = _mm256_setzero_si256();
                            for g in 0..GROUPS / 2 {
                                low = _mm256_add_epi16(low, _mm256_maddubs_epi16(w[g], q(g)));
                                let h = g + GROUPS / 2;
                                high = _mm256_add_epi16(high, _mm256_maddubs_epi16(w[h], q(h)));
                            }
                            _mm256_add_epi32(
                                _mm256_madd_epi16(low, ones),
                                _mm256_madd_epi16(high, ones),
                            )
                        }
                    };
                    let sums = if bias != 0 {
                        _mm256_sub_epi32(sums, _mm256_set1_epi32(bias * a.sum))
                    } else {
                        sums
                    };
                    let scale = _mm256_mul_ps(scales, _mm256_set1_ps(a.d));
                    let acc = &mut acc[c][half];
                    *acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums), *acc);
                    if format.has_min() {
                        *acc = _mm256_fmadd_ps(mins, _mm256_set1_ps(a.s), *acc);
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{self, GgmlType};
    use candle_core::quantized::{QStorage, QTensor};
    use candle_core::{Device, Tensor};
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
            if format.has_min() {
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

    fn worst_difference(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    }

    fn largest(values: &[f32]) -> f32 {
        values.iter().fold(0f32, |a, v| a.max(v.abs()))
    }

    /// candle's generic (not repacked) quantized matmul: activations in 32-value blocks, as
    /// here. (Its repacked x86 path for Q8_0 quantizes activations in 256-value blocks, so it
    /// rounds differently.)
    fn candle_matmul(
        format: Format,
        weights: &[u8],
        x: &[f32],
        mkn: (usize, usize, usize),
    ) -> Result<Vec<f32>> {
        fn run<T: GgmlType>(
            weights: &[u8],
            x: &[f32],
            (m, k, n): (usize, usize, usize),
        ) -> Result<Vec<f32>> {
            let mut blocks = vec![T::zeros(); n * k / T::BLCK_SIZE];
            assert_eq!(std::mem::size_of_val(blocks.as_slice()), weights.len());
            // SAFETY: a candle block is a repr(C) struct of the file's bytes, of that size.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    weights.as_ptr(),
                    blocks.as_mut_ptr() as *mut u8,
                    weights.len(),
                )
            };
            let mut out = vec![0f32; m * n];
            k_quants::matmul((m, k, n), x, &blocks, &mut out)?;
            Ok(out)
        }
        match format {
            Format::Q4_0 => run::<k_quants::BlockQ4_0>(weights, x, mkn),
            Format::Q4_1 => run::<k_quants::BlockQ4_1>(weights, x, mkn),
            Format::Q5_0 => run::<k_quants::BlockQ5_0>(weights, x, mkn),
            Format::Q5_1 => run::<k_quants::BlockQ5_1>(weights, x, mkn),
            Format::Q8_0 => run::<k_quants::BlockQ8_0>(weights, x, mkn),
        }
    }

    /// candle quantizes activations the same way and sums each block exactly: every kernel
    /// agrees with it to float-summation noise.
    #[test]
    fn every_kernel_and_format_matches_candles_quantized_matmul() -> Result<()> {
        let (n, k) = (48, 256);
        for format in Format::ALL {
            for (m, seed) in [(1, 3), (5, 5), (13, 7)] {
                let weights = random_weights(format, n, k, seed);
                let x: Vec<f32> = Tensor::randn(0f32, 1.0, (m * k,), &Device::Cpu)?.to_vec1()?;
                let candle = candle_matmul(format, &weights, &x, (m, k, n))?;
                let tiles = Tiles::new(format, &weights, n, k)?;
                for kernel in Kernel::available() {
                    let ours = tiles.matmul_with(kernel, &x, m)?;
                    let worst = worst_difference(&candle, &ours);
                    let scale = largest(&candle);
                    assert!(
                        worst <= 1e-5 * scale.max(1.0),
                        "{format:?} {kernel:?} m={m}: {worst} of {scale}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn every_format_matches_dequantize_then_matmul() -> Result<()> {
        let (n, k) = (32, 128);
        for format in Format::ALL {
            let weights = random_weights(format, n, k, 11);
            let tiles = Tiles::new(format, &weights, n, k)?;
            // Repacking loses nothing: every row dequantizes as candle dequantizes it.
            let dequantized: Vec<f32> = quantized(format, &weights, n, k)?
                .dequantize(&Device::Cpu)?
                .flatten_all()?
                .to_vec1()?;
            let mut row = vec![0f32; k];
            for r in 0..n {
                tiles.dequantize_row(r, &mut row)?;
                assert_eq!(row, dequantized[r * k..(r + 1) * k], "{format:?} row {r}");
            }
            // The reference sees the same 8-bit activations, so only the order of the float
            // sums differs.
            let m = 6;
            let x: Vec<f32> = Tensor::randn(0f32, 1.0, (m * k,), &Device::Cpu)?.to_vec1()?;
            let mut seen = Vec::new();
            let mut blocks = Vec::new();
            for row in x.chunks_exact(k) {
                quantize_row(row, &mut blocks);
                seen.extend(
                    blocks
                        .iter()
                        .flat_map(|b| b.q.iter().map(move |&q| b.d * f32::from(q))),
                );
            }
            let seen = Tensor::from_vec(seen, (m, k), &Device::Cpu)?;
            let w = Tensor::from_vec(dequantized, (n, k), &Device::Cpu)?;
            let expected: Vec<f32> = seen.matmul(&w.t()?)?.flatten_all()?.to_vec1()?;
            for kernel in Kernel::available() {
                let got = tiles.matmul_with(kernel, &x, m)?;
                let worst = worst_difference(&got, &expected);
                let scale = largest(&expected);
                assert!(
                    worst <= 1e-4 * scale,
                    "{format:?} {kernel:?}: {worst} of {scale}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn shapes_that_do_not_tile_or_do_not_match_are_refused() -> Result<()> {
        let weights = random_weights(Format::Q4_0, 16, 64, 1);
        assert!(Tiles::new(Format::Q4_0, &weights[..weights.len() - 1], 16, 64).is_err());
        assert!(Tiles::new(Format::Q4_0, &weights, 8, 128).is_err());
        let tiles = Tiles::new(Format::Q4_0, &weights, 16, 64)?;
        assert!(tiles.matmul(&[0.0; 63], 1).is_err());
        assert!(tiles.dequantize_row(16, &mut [0.0; 64]).is_err());
        Ok(())
    }
}
