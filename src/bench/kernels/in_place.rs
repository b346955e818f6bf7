//! Q4_1, Q5_0, Q5_1, Q8_0, Q5_K and Q6_K matrices used where they lie in the mapped file,
//! as llama.cpp uses them (it repacks only Q4_0 and Q4_K here), and Q4_0 too for the
//! portable kernel: loading them costs nothing (repacking a 1.1 GB Q8_0 model took 355 ms
//! against llama.cpp's 17). Generation streams each row's blocks straight from the mapping.
//! Prompts on the SIMD kernels repack each tile of 16 rows, as its thread reaches it, into a
//! scratch tile that stays in cache while every activation row passes over it; on the
//! portable one, 16 rows meet every activation row with generation's dot.

use super::{
    check_input, in_chunks, k_rows, quantize_rows, run_tiles, widen_half, Activations,
    ActivationsK, Columns, Format, Kernel, Repacked, RowProduct, SharedBytes, TilePass, Tiles,
    Unpacked, BLOCK, TILE,
};
use candle_core::Result;
use half::f16;
use std::ops::Range;

pub struct InPlace {
    format: Format,
    bytes: SharedBytes,
    start: usize,
    rows: usize,
    k: usize,
}

impl InPlace {
    /// Whether matrices in `format` can be used in place (Q4_K only as tiles).
    pub fn takes(format: Format) -> bool {
        format != Format::Q4K
    }

    /// Whether `kernel` runs matrices in `format` in place rather than as tiles. The SIMD
    /// kernels take Q4_0 as tiles, as llama.cpp repacks it; the portable kernel's tiles
    /// decode every value first, and its dot over Q4_0's blocks where they lie ran a 2048 →
    /// 5632 matrix 3.7× (m = 1) and 2.4× (m = 512) as fast on an x86-64 build for any CPU
    /// (`cargo bench --bench kernels -- portable`).
    pub fn used_for(format: Format, kernel: Kernel) -> bool {
        InPlace::takes(format) && (format != Format::Q4_0 || kernel == Kernel::Portable)
    }

    /// The rows × k matrix in `format` at `start` of `bytes`.
    pub fn new(
        format: Format,
        bytes: SharedBytes,
        start: usize,
        rows: usize,
        k: usize,
    ) -> Result<InPlace> {
        let available = (*bytes).as_ref().len().saturating_sub(start);
        let needed = rows.checked_mul(k / format.block_values() * format.block_bytes());
        if !InPlace::takes(format)
            || !Tiles::fit(format, rows, k)
            || needed.is_none_or(|n| n > available)
        {
            candle_core::bail!(
                "{available} bytes cannot hold a {rows}×{k} {:?} matrix of whole {TILE}-row tiles",
                format.dtype()
            );
        }
        Ok(InPlace {
            format,
            bytes,
            start,
            rows,
            k,
        })
    }

    fn row_bytes(&self) -> usize {
        self.k / self.format.block_values() * self.format.block_bytes()
    }

    /// The file's bytes of rows first..first + count.
    fn rows_at(&self, first: usize, count: usize) -> &[u8] {
        let size = self.row_bytes();
        &(*self.bytes).as_ref()[self.start + first * size..][..count * size]
    }

    /// One activation row against these rows, `dot` giving each row's product.
    fn generate<'a>(&'a self, dot: impl Fn(&[u8]) -> f32 + Sync + 'a) -> Box<dyn RowProduct + 'a> {
        Box::new(Generation { matrix: self, dot })
    }

    /// [`InPlace::generate`] for the 32-value formats.
    fn generate_blocks(&self, kernel: Kernel, x: Vec<Activations>) -> Box<dyn RowProduct + '_> {
        let format = self.format;
        // AVX-512 takes Q8_0's blocks two at a time, the 4- and 5-bit formats four at a time;
        // AVX2 takes them all two at a time.
        let grouped = match (kernel, format) {
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512Vnni, Format::Q8_0) => {
                Grouped::Pairs(x86::pairs(&x, stored_bias(format)))
            }
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512Vnni, _) => Grouped::Quads(x86::quads(&x, stored_bias(format))),
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, _) => Grouped::Twins(x86::twins(&x, format)),
            _ => Grouped::Blocks,
        };
        // SAFETY (each SIMD arm): only kernels this CPU has group the activations; the row
        // has one block per activation block (checked in `new` and `check_input`), which the
        // groups hold in order.
        self.generate(move |row| match &grouped {
            #[cfg(target_arch = "x86_64")]
            Grouped::Pairs(pairs) => unsafe { x86::dot_q8_0_vnni(row, pairs, &x) },
            #[cfg(target_arch = "x86_64")]
            Grouped::Quads(quads) => unsafe {
                match format {
                    Format::Q4_0 => x86::dot_quads::<0>(row, quads),
                    Format::Q4_1 => x86::dot_quads::<1>(row, quads),
                    Format::Q5_0 => x86::dot_quads::<2>(row, quads),
                    _ => x86::dot_quads::<3>(row, quads),
                }
            },
            #[cfg(target_arch = "x86_64")]
            Grouped::Twins(twins) => unsafe {
                match format {
                    Format::Q4_0 => x86::dot::<0>(row, twins),
                    Format::Q4_1 => x86::dot::<1>(row, twins),
                    Format::Q5_0 => x86::dot::<2>(row, twins),
                    Format::Q5_1 => x86::dot::<3>(row, twins),
                    _ => x86::dot::<4>(row, twins),
                }
            },
            Grouped::Blocks => portable_dot(format, row, &x),
        })
    }

    /// [`InPlace::generate`] for Q5_K and Q6_K.
    fn generate_super_blocks(
        &self,
        kernel: Kernel,
        x: Vec<ActivationsK>,
    ) -> Box<dyn RowProduct + '_> {
        let q6k = self.format == Format::Q6K;
        self.generate(move |row| match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: only kernels this CPU has get here; the row has one super-block per
            // activation block (checked in `new` and `check_input`).
            Kernel::Avx512Vnni => unsafe {
                if q6k {
                    k_rows::x86::dot_q6k_vnni(row, &x)
                } else {
                    k_rows::x86::dot_q5k_vnni(row, &x)
                }
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Kernel::Avx2 => unsafe {
                if q6k {
                    k_rows::x86::dot_q6k(row, &x)
                } else {
                    k_rows::x86::dot_q5k(row, &x)
                }
            },
            _ => k_rows::portable_dot(self.format, row, &x),
        })
    }
}

/// A token's activation blocks as the chosen kernel takes them.
enum Grouped {
    #[cfg(target_arch = "x86_64")]
    Pairs(Vec<x86::Pair>),
    #[cfg(target_arch = "x86_64")]
    Quads(Vec<x86::Quad>),
    #[cfg(target_arch = "x86_64")]
    Twins(Vec<x86::Twin>),
    /// One at a time, for the portable loops.
    Blocks,
}

/// The f16 at `at` of a block: its scale at 0, Q4_1's and Q5_1's minimum at 2. Through
/// [`widen_half`]: half's `to_f32`, a call per value without F16C, was 13% of portable Q8_0
/// generation on an x86-64 build for any CPU.
#[inline(always)]
fn half_at(block: &[u8], at: usize) -> f32 {
    widen_half(f16::from_le_bytes([block[at], block[at + 1]]))
}

/// What the kernels add to each stored value to make it unsigned: Q8_0's signed bytes get
/// 128, Q5_0 stores its values + 16 already.
fn stored_bias(format: Format) -> i32 {
    match format {
        Format::Q8_0 => 128,
        _ => format.bias(),
    }
}

/// A block's 32 values, the stored bias taken out.
fn block_values(format: Format, block: &[u8]) -> [i8; BLOCK] {
    let mut values = [0i8; BLOCK];
    if format == Format::Q8_0 {
        for (v, &byte) in values.iter_mut().zip(&block[2..]) {
            *v = byte as i8;
        }
        return values;
    }
    let at = format.quants_at();
    let (low, high) = values.split_at_mut(BLOCK / 2);
    for ((low, high), &byte) in low.iter_mut().zip(high).zip(&block[at..at + BLOCK / 2]) {
        *low = (byte & 0x0f) as i8;
        *high = (byte >> 4) as i8;
    }
    if format.high_planes() == 1 {
        let bits = u32::from_le_bytes([block[at - 4], block[at - 3], block[at - 2], block[at - 1]]);
        for (j, v) in values.iter_mut().enumerate() {
            *v |= (((bits >> j) & 1) << 4) as i8;
        }
    }
    let bias = format.bias() as i8;
    values.iter_mut().for_each(|v| *v -= bias);
    values
}

/// Σ over blocks of d_w · d_x · Σ w·q (+ m_w · s_x with a minimum), as candle's
/// `vec_dot`s sum it, for the 32-value formats.
fn portable_dot(format: Format, row: &[u8], x: &[Activations]) -> f32 {
    match format {
        Format::Q4_0 => dot_blocks::<0>(row, x),
        Format::Q4_1 => dot_blocks::<1>(row, x),
        Format::Q5_0 => dot_blocks::<2>(row, x),
        Format::Q5_1 => dot_blocks::<3>(row, x),
        _ => dot_blocks::<4>(row, x),
    }
}

/// [`portable_dot`] for `Format::ALL[F]`, the format a constant so that each block's sum is
/// straight-line code over fixed widths.
fn dot_blocks<const F: usize>(row: &[u8], x: &[Activations]) -> f32 {
    let format = Format::ALL[F];
    let bias = format.bias();
    row.chunks_exact(format.block_bytes())
        .zip(x)
        .map(|(block, a)| {
            let sum = stored_sum::<F>(block, &a.q) - bias * a.sum;
            let mut dot = sum as f32 * half_at(block, 0) * a.d;
            if format.has_min() {
                dot += half_at(block, 2) * a.s;
            }
            dot
        })
        .sum()
}

/// Σ stored value × q over a block of `Format::ALL[F]`, its bias left in, over fixed widths
/// that the compiler vectorizes (128-bit on an x86-64 build for any CPU, as on a Pi's NEON).
/// Decoding the block into values first, with the format tested per block, held a 2048 →
/// 5632 Q4_1 matrix at m = 1 to 10 ms here (now 1.4).
#[inline(always)]
fn stored_sum<const F: usize>(block: &[u8], q: &[i8; BLOCK]) -> i32 {
    let format = Format::ALL[F];
    if format == Format::Q8_0 {
        let values = &block[2..2 + BLOCK];
        let mut sum = 0i32;
        for j in 0..BLOCK {
            sum += i32::from(values[j] as i8) * i32::from(q[j]);
        }
        return sum;
    }
    let at = format.quants_at();
    let quants = &block[at..at + BLOCK / 2];
    let mut high = [0u8; BLOCK];
    if format.high_planes() == 1 {
        // A test and a select per value, which vectorize as a compare: a table of 8 values
        // per byte, stored and read back, took Q5_0 1.8× as long on 128-bit x86.
        let bits = &block[at - 4..at];
        for (j, high) in high.iter_mut().enumerate() {
            *high = if bits[j / 8] & (1 << (j % 8)) != 0 {
                0x10
            } else {
                0
            };
        }
    }
    let mut sum = 0i32;
    for j in 0..BLOCK / 2 {
        let low = i32::from(quants[j] & 0x0f | high[j]);
        let top = i32::from(quants[j] >> 4 | high[j + BLOCK / 2]);
        sum += low * i32::from(q[j]) + top * i32::from(q[j + BLOCK / 2]);
    }
    sum
}

/// The matrix's tiles, each repacked as its thread reaches it, with quantized activations.
struct OnTheFly<'a, A> {
    matrix: &'a InPlace,
    activations: std::marker::PhantomData<A>,
}

impl<A: Columns> TilePass for OnTheFly<'_, A> {
    type Row = [A];
    type Scratch = Option<Tiles>;

    fn prepare(&self, t: usize, scratch: &mut Option<Tiles>) {
        let matrix = self.matrix;
        scratch
            .get_or_insert_with(|| Tiles::one_tile(matrix.format, matrix.k))
            .repack_tile(matrix.rows_at(t * TILE, TILE));
    }

    fn pass<const C: usize>(
        &self,
        kernel: Kernel,
        _: usize,
        scratch: &Option<Tiles>,
        rows: [&[A]; C],
    ) -> [[f32; TILE]; C] {
        match scratch {
            Some(tile) => A::pass(tile, kernel, 0, rows),
            // `prepare` always fills it first.
            None => [[0.0; TILE]; C],
        }
    }
}

impl InPlace {
    /// Every tile against `x` (m rows), each repacked on the fly.
    fn prompt<A: Columns>(&self, kernel: Kernel, x: &[A]) -> Vec<f32> {
        let rows: Vec<&[A]> = x.chunks_exact(self.k / A::VALUES).collect();
        let pass = OnTheFly {
            matrix: self,
            activations: std::marker::PhantomData,
        };
        run_tiles(&pass, kernel, self.rows, &rows)
    }
}

/// Weight rows a portable prompt holds in cache while every activation row meets them.
const PORTABLE_ROWS: usize = 16;

impl InPlace {
    /// `x` (m rows of activations) times these rows with the portable kernel: each 16 rows
    /// against every activation row with generation's dot, the rows staying in cache. The
    /// tiles' portable pass, which decodes every value into a tile first, took a 2048 →
    /// 5632 Q4_1 prompt of 512 twice as long on an x86-64 build for any CPU.
    fn portable_prompt(&self, x: &[Activations], m: usize) -> Vec<f32> {
        let (n, blocks) = (self.rows, self.k / BLOCK);
        let mut result = vec![0f32; m * n];
        let out = result.as_mut_ptr() as usize;
        in_chunks(n.div_ceil(PORTABLE_ROWS), 4, |chunk| {
            let rows = chunk.start * PORTABLE_ROWS..n.min(chunk.end * PORTABLE_ROWS);
            for (c, x) in x.chunks_exact(blocks).enumerate() {
                for r in rows.clone() {
                    let dot = portable_dot(self.format, self.rows_at(r, 1), x);
                    // SAFETY: this chunk alone writes its rows of each result row, and
                    // `result` outlives the pool call, which returns when every chunk is done.
                    unsafe { *(out as *mut f32).add(c * n + r) = dot };
                }
            }
        });
        result
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
        let format = self.format;
        let blocks = self.rows_at(row, 1).chunks_exact(format.block_bytes());
        for (values, block) in out.chunks_exact_mut(format.block_values()).zip(blocks) {
            if format.is_k() {
                Unpacked::new(format, block).dequantize(format, values);
                continue;
            }
            let d = half_at(block, 0);
            let m = if format.has_min() {
                half_at(block, 2)
            } else {
                0.0
            };
            for (v, w) in values.iter_mut().zip(block_values(format, block)) {
                *v = d * f32::from(w) + m;
            }
        }
        Ok(())
    }

    fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize) -> Result<Vec<f32>> {
        check_input(x, m, self.k)?;
        if m == 1 {
            return self.one_row(kernel, x);
        }
        let kernel = kernel.or_portable();
        if kernel == Kernel::Portable && !self.format.is_k() {
            return Ok(self.portable_prompt(&quantize_rows::<Activations>(x, m, self.k), m));
        }
        Ok(if self.format.is_k() {
            self.prompt(kernel, &quantize_rows::<ActivationsK>(x, m, self.k))
        } else {
            self.prompt(kernel, &quantize_rows::<Activations>(x, m, self.k))
        })
    }

    fn prepare_with<'a>(&'a self, kernel: Kernel, x: &[f32]) -> Result<Box<dyn RowProduct + 'a>> {
        check_input(x, 1, self.k)?;
        let kernel = kernel.or_portable();
        Ok(if self.format.is_k() {
            self.generate_super_blocks(kernel, quantize_rows(x, 1, self.k))
        } else {
            self.generate_blocks(kernel, quantize_rows(x, 1, self.k))
        })
    }
}

/// One activation row against an in-place matrix's rows, each streamed from the mapping.
struct Generation<'a, F> {
    matrix: &'a InPlace,
    dot: F,
}

impl<F: Fn(&[u8]) -> f32 + Sync> RowProduct for Generation<'_, F> {
    fn rows(&self) -> usize {
        self.matrix.rows
    }

    fn unit(&self) -> usize {
        1
    }

    fn run(&self, rows: Range<usize>, out: &mut [f32]) {
        let size = self.matrix.row_bytes();
        let weights = self.matrix.rows_at(rows.start, rows.len());
        for (out, bytes) in out.iter_mut().zip(weights.chunks_exact(size)) {
            *out = (self.dot)(bytes);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::x86::PREFETCH;
    use super::{stored_bias, Activations, Format};
    use std::arch::x86_64::*;

    /// Two Q8_0 activation blocks side by side, as one 512-bit `dpbusd` takes them.
    #[repr(C, align(64))]
    pub struct Pair {
        q: [i8; 64],
        /// -bias × Σq of each block, in the first lane of its half: `dpbusd` starts from it,
        /// which takes out what was added to make the weights unsigned.
        bias: [i32; 16],
        /// Each block's scale across its half.
        d: [f32; 16],
    }

    pub fn pairs(x: &[Activations], bias: i32) -> Vec<Pair> {
        x.chunks_exact(2)
            .map(|two| {
                let mut pair = Pair {
                    q: [0; 64],
                    bias: [0; 16],
                    d: [0.0; 16],
                };
                for (half, a) in two.iter().enumerate() {
                    pair.q[32 * half..32 * (half + 1)].copy_from_slice(&a.q);
                    pair.bias[8 * half] = -bias * a.sum;
                    pair.d[8 * half..8 * (half + 1)].fill(a.d);
                }
                pair
            })
            .collect()
    }

    /// Four activation blocks as [`dot_quads`] takes them: each block's values 0-15 in
    /// `low` and 16-31 in `high`, 16 a block, the order in which one permute brings four
    /// blocks' nibbles together.
    #[repr(C, align(64))]
    pub struct Quad {
        low: [i8; 64],
        high: [i8; 64],
        /// -bias × Σq of each block, in the first of its 4 lanes.
        bias: [i32; 16],
        /// Each block's scale across its 4 lanes.
        d: [f32; 16],
        /// Each block's d × Σq over 4 across its lanes: the minimum's term.
        s: [f32; 16],
    }

    /// `x` four blocks a quad, the last filled out with zeros.
    pub fn quads(x: &[Activations], bias: i32) -> Vec<Quad> {
        x.chunks(4)
            .map(|four| {
                let mut quad = Quad {
                    low: [0; 64],
                    high: [0; 64],
                    bias: [0; 16],
                    d: [0.0; 16],
                    s: [0.0; 16],
                };
                for (j, a) in four.iter().enumerate() {
                    quad.low[16 * j..16 * (j + 1)].copy_from_slice(&a.q[..16]);
                    quad.high[16 * j..16 * (j + 1)].copy_from_slice(&a.q[16..]);
                    quad.bias[4 * j] = -bias * a.sum;
                    quad.d[4 * j..4 * (j + 1)].fill(a.d);
                    quad.s[4 * j..4 * (j + 1)].fill(a.s / 4.0);
                }
                quad
            })
            .collect()
    }

    /// The indices of a 16-bit word permute over two registers that hold four `format`
    /// blocks: word w of the result is word `word` of block `block`, (block, word) = pick(w).
    #[inline(always)]
    unsafe fn word_picks(format: Format, pick: impl Fn(usize) -> (usize, usize)) -> __m512i {
        let words = format.block_bytes() / 2;
        let picks: [i16; 32] = std::array::from_fn(|w| {
            let (block, word) = pick(w);
            (block * words + word) as i16
        });
        _mm512_loadu_si512(picks.as_ptr() as *const _)
    }

    /// [`super::portable_dot`] for Q4_1, Q5_0 and Q5_1 (`Format::ALL[F]`) with AVX-512 VNNI,
    /// four blocks at a time: one permute gathers their 64 bytes of nibbles out of two
    /// registers, the low and high nibbles go through one `dpbusd` each, and one more
    /// permute spreads the four scales (and minimums) across each block's lanes. Two blocks
    /// at a time, a row cost three times the instructions, and Q4_1 generation was bound by
    /// them: 42-44 GB/s against 49 for Q6_K's rows on the same box. A row's last blocks go
    /// through the same steps, masked, rather than a scalar tail: SmolLM2's 18-block rows
    /// ran 3.4× slower with one. Only that last quad works out its masks: doing so for every
    /// quad cost one thread 0.06-0.15 of its streaming rate.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot_quads<const F: usize>(row: &[u8], quads: &[Quad]) -> f32 {
        let format = Format::ALL[F];
        let picks = Picks::new(format);
        let quad_bytes = 4 * format.block_bytes();
        let whole = row.len() / quad_bytes;
        let at = row.as_ptr();
        let mut acc = _mm512_setzero_ps();
        for (i, quad) in quads.iter().enumerate().take(whole) {
            let blocks = at.add(i * quad_bytes);
            acc = quad_into::<F>(acc, blocks, masks(quad_bytes), quad, &picks);
        }
        // The two registers load only what the last quad holds (zeros, against zero
        // activations, for the rest), so nothing past the row, or the mapping, is read.
        if let Some(quad) = quads.get(whole) {
            let offset = whole * quad_bytes;
            let last = masks(row.len() - offset);
            acc = quad_into::<F>(acc, at.add(offset), last, quad, &picks);
        }
        _mm512_reduce_add_ps(acc)
    }

    /// The permutes' indices and the byte constants [`dot_quads`] uses for `format`.
    struct Picks {
        nibbles_at: __m512i,
        /// Scales in words 0-15, each block's over its 4 lanes; minimums in words 16-31.
        halves_at: __m512i,
        /// The high bits' first 16 (of the low values) in words 0-3, the last 16 in 4-7.
        high_bits_at: __m512i,
        nibble_mask: __m512i,
        sixteen: __m512i,
    }

    impl Picks {
        #[inline(always)]
        unsafe fn new(format: Format) -> Picks {
            let quants_word = format.quants_at() / 2;
            Picks {
                nibbles_at: word_picks(format, |w| (w / 8, quants_word + w % 8)),
                halves_at: word_picks(format, |w| (w % 16 / 4, w / 16)),
                high_bits_at: word_picks(format, |w| {
                    (w % 4, quants_word.saturating_sub(2) + w / 4 % 2)
                }),
                nibble_mask: _mm512_set1_epi8(0x0f),
                sixteen: _mm512_set1_epi8(16),
            }
        }
    }

    /// `acc` plus one quad of blocks at `blocks`, of which the two masks load 64 bytes each.
    #[inline(always)]
    unsafe fn quad_into<const F: usize>(
        acc: __m512,
        blocks: *const u8,
        (first_bytes, second_bytes): (__mmask64, __mmask64),
        quad: &Quad,
        picks: &Picks,
    ) -> __m512 {
        let format = Format::ALL[F];
        _mm_prefetch::<_MM_HINT_T0>(blocks.wrapping_add(PREFETCH) as *const i8);
        let first = _mm512_maskz_loadu_epi8(first_bytes, blocks as *const i8);
        let second = _mm512_maskz_loadu_epi8(second_bytes, blocks.add(64) as *const i8);
        let nibbles = _mm512_permutex2var_epi16(first, picks.nibbles_at, second);
        let mut low = _mm512_and_si512(nibbles, picks.nibble_mask);
        let mut high = _mm512_and_si512(_mm512_srli_epi16::<4>(nibbles), picks.nibble_mask);
        if format.high_planes() == 1 {
            let bits = _mm512_castsi512_si128(_mm512_permutex2var_epi16(
                first,
                picks.high_bits_at,
                second,
            ));
            let (low_bits, high_bits) = (
                _mm_cvtsi128_si64(bits) as u64,
                _mm_extract_epi64::<1>(bits) as u64,
            );
            low = _mm512_mask_add_epi8(low, low_bits, low, picks.sixteen);
            high = _mm512_mask_add_epi8(high, high_bits, high, picks.sixteen);
        }
        let sums = _mm512_dpbusd_epi32(
            _mm512_load_si512(quad.bias.as_ptr() as *const _),
            low,
            _mm512_load_si512(quad.low.as_ptr() as *const _),
        );
        let sums = _mm512_dpbusd_epi32(
            sums,
            high,
            _mm512_load_si512(quad.high.as_ptr() as *const _),
        );
        let halves = _mm512_permutex2var_epi16(first, picks.halves_at, second);
        let scales = _mm512_mul_ps(
            _mm512_cvtph_ps(_mm512_castsi512_si256(halves)),
            _mm512_load_ps(quad.d.as_ptr()),
        );
        let acc = _mm512_fmadd_ps(scales, _mm512_cvtepi32_ps(sums), acc);
        if format.has_min() {
            let minimums = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(halves));
            return _mm512_fmadd_ps(minimums, _mm512_load_ps(quad.s.as_ptr()), acc);
        }
        acc
    }

    /// The byte masks of two 64-byte registers that load `bytes` (at most 128).
    #[inline(always)]
    fn masks(bytes: usize) -> (__mmask64, __mmask64) {
        let mask = |n: usize| match n {
            0 => 0,
            64.. => u64::MAX,
            n => (1u64 << n) - 1,
        };
        (mask(bytes), mask(bytes.saturating_sub(64)))
    }

    /// One block's 32 stored values as unsigned bytes (Q8_0's made so by adding 128), in
    /// value order.
    #[inline(always)]
    unsafe fn unsigned_values(format: Format, block: *const u8) -> __m256i {
        if format == Format::Q8_0 {
            let w = _mm256_loadu_si256(block.add(2) as *const __m256i);
            return _mm256_xor_si256(w, _mm256_set1_epi8(-128));
        }
        let at = format.quants_at();
        let nibbles = _mm_loadu_si128(block.add(at) as *const __m128i);
        let mask = _mm_set1_epi8(0x0f);
        let w = _mm256_set_m128i(
            _mm_and_si128(_mm_srli_epi16(nibbles, 4), mask),
            _mm_and_si128(nibbles, mask),
        );
        if format.high_planes() == 1 {
            let high = (block.add(at - 4) as *const u32).read_unaligned();
            return _mm256_or_si256(w, super::super::x86::spread_bits(high, 16));
        }
        w
    }

    /// The scales of the two blocks from `block`, each across its half (a function, not a
    /// closure: closures do not inherit the caller's target features).
    #[inline(always)]
    unsafe fn scales(block: *const u8, size: usize) -> __m512 {
        _mm512_cvtph_ps(_mm256_set_m128i(
            _mm_set1_epi16((block.add(size) as *const i16).read_unaligned()),
            _mm_set1_epi16((block as *const i16).read_unaligned()),
        ))
    }

    /// Two activation blocks as [`dot`] takes them on AVX2.
    #[repr(C, align(32))]
    pub struct Twin {
        q: [i8; 64],
        /// Per block: its scale, then what the block's second header half is multiplied by.
        /// With a minimum that half is the minimum, times d × Σq (the minimum's term);
        /// without, it is the scale again, times -bias × d × Σq (which takes out the stored
        /// bias in float, where [`dot`] has a lane for it anyway).
        factors: [f32; 4],
    }

    /// `x` two blocks a twin, the last filled out with zeros.
    pub fn twins(x: &[Activations], format: Format) -> Vec<Twin> {
        let bias = stored_bias(format);
        x.chunks(2)
            .map(|two| {
                let mut twin = Twin {
                    q: [0; 64],
                    factors: [0.0; 4],
                };
                for (half, a) in two.iter().enumerate() {
                    twin.q[32 * half..32 * (half + 1)].copy_from_slice(&a.q);
                    let second = if format.has_min() {
                        a.s
                    } else if format == Format::Q8_0 {
                        // Its products take w's sign instead of a bias.
                        0.0
                    } else {
                        -(bias as f32) * a.d * a.sum as f32
                    };
                    twin.factors[2 * half..2 * (half + 1)].copy_from_slice(&[a.d, second]);
                }
                twin
            })
            .collect()
    }

    /// [`super::portable_dot`] with AVX2, two blocks a step: unsigned values times the
    /// activations (`maddubs`), pairs summed to 32 bits, then the two blocks' 8 sums each
    /// folded into one register of 4 and 4 (`hadd`), converted and scaled at once. The two
    /// blocks' headers (scale and minimum, or the scale twice) convert together, and their
    /// products with the twin's factors give both scales and the minimums' (or the stored
    /// bias's) terms. Per block, this ran half the scalar header work and half the
    /// conversions of one block at a time, which had held tg on AVX2 at 0.89-0.90×
    /// llama.cpp's for Q4_1 and Q5_0. `F` indexes [`Format::ALL`], so each format compiles
    /// to its own loop.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot<const F: usize>(row: &[u8], twins: &[Twin]) -> f32 {
        let size = Format::ALL[F].block_bytes();
        let blocks = row.len() / size;
        let at = row.as_ptr();
        let mut acc = _mm256_setzero_ps();
        let mut terms = _mm_setzero_ps();
        for (i, twin) in twins.iter().enumerate().take(blocks / 2) {
            let first = at.add(2 * i * size);
            (acc, terms) = twin_into::<F>((acc, terms), first, first.add(size), twin);
        }
        // An odd last block is paired with itself; its twin's second half is all zeros.
        if blocks % 2 == 1 {
            if let Some(twin) = twins.get(blocks / 2) {
                let last = at.add((blocks - 1) * size);
                (acc, terms) = twin_into::<F>((acc, terms), last, last, twin);
            }
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut term_lanes = [0f32; 4];
        _mm_storeu_ps(term_lanes.as_mut_ptr(), terms);
        lanes.iter().sum::<f32>() + term_lanes[1] + term_lanes[3]
    }

    /// One twin of [`dot`]: blocks at `first` and `second` added to (acc, terms).
    #[inline(always)]
    unsafe fn twin_into<const F: usize>(
        (acc, terms): (__m256, __m128),
        first: *const u8,
        second: *const u8,
        twin: &Twin,
    ) -> (__m256, __m128) {
        let format = Format::ALL[F];
        _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(PREFETCH) as *const i8);
        if 2 * format.block_bytes() > 64 {
            _mm_prefetch::<_MM_HINT_T0>(second.wrapping_add(PREFETCH) as *const i8);
        }
        let ones = _mm256_set1_epi16(1);
        let sums = _mm256_hadd_epi32(
            _mm256_madd_epi16(products(format, first, twin.q.as_ptr()), ones),
            _mm256_madd_epi16(products(format, second, twin.q.as_ptr().add(32)), ones),
        );
        let halves = (header(format, first) as u64) | (header(format, second) as u64) << 32;
        let factors = _mm_mul_ps(
            _mm_cvtph_ps(_mm_cvtsi64_si128(halves as i64)),
            _mm_load_ps(twin.factors.as_ptr()),
        );
        // `hadd` left the first block's sums in lanes 0, 1, 4, 5 and the second's in the rest.
        let scales = _mm256_permutevar8x32_ps(
            _mm256_castps128_ps256(factors),
            _mm256_setr_epi32(0, 0, 2, 2, 0, 0, 2, 2),
        );
        (
            _mm256_fmadd_ps(scales, _mm256_cvtepi32_ps(sums), acc),
            _mm_add_ps(terms, factors),
        )
    }

    /// A block's weights times 32 activations at `q`, adjacent pairs summed to 16 bits.
    #[inline(always)]
    unsafe fn products(format: Format, block: *const u8, q: *const i8) -> __m256i {
        let q = _mm256_load_si256(q as *const __m256i);
        // 255 × 127 × 2 would saturate 16 bits: Q8_0 multiplies |w| by q with w's sign.
        if format == Format::Q8_0 {
            let w = _mm256_loadu_si256(block.add(2) as *const __m256i);
            return _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(q, w));
        }
        _mm256_maddubs_epi16(unsigned_values(format, block), q)
    }

    /// A block's scale and minimum as two f16s, or its scale twice where it has no minimum.
    #[inline(always)]
    unsafe fn header(format: Format, block: *const u8) -> u32 {
        if format.has_min() {
            return (block as *const u32).read_unaligned();
        }
        let d = u32::from((block as *const u16).read_unaligned());
        d | d << 16
    }

    /// One pair of Q8_0 blocks at `block` added to `acc`.
    #[inline(always)]
    unsafe fn q8_0_pair_into(acc: __m512, block: *const u8, pair: &Pair) -> __m512 {
        let format = Format::Q8_0;
        let size = format.block_bytes();
        _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH) as *const i8);
        let w = _mm512_inserti64x4(
            _mm512_castsi256_si512(unsigned_values(format, block)),
            unsigned_values(format, block.add(size)),
            1,
        );
        let sums = _mm512_dpbusd_epi32(
            _mm512_load_si512(pair.bias.as_ptr() as *const _),
            w,
            _mm512_load_si512(pair.q.as_ptr() as *const _),
        );
        let scales = _mm512_mul_ps(scales(block, size), _mm512_load_ps(pair.d.as_ptr()));
        _mm512_fmadd_ps(scales, _mm512_cvtepi32_ps(sums), acc)
    }

    /// [`super::portable_dot`] for Q8_0 two blocks at a time with AVX-512 VNNI: the weights
    /// made unsigned (the 128 added taken out by each pair's bias), then each block's 8 sums
    /// scaled in float.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot_q8_0_vnni(row: &[u8], pairs: &[Pair], x: &[Activations]) -> f32 {
        let format = Format::Q8_0;
        let size = format.block_bytes();
        let at = row.as_ptr();
        // Two pairs a step, an accumulator each, so both stay in registers.
        let mut acc = [_mm512_setzero_ps(); 2];
        for i in (0..pairs.len() / 2).map(|i| 2 * i) {
            acc[0] = q8_0_pair_into(acc[0], at.add(2 * i * size), &pairs[i]);
            let next = i + 1;
            acc[1] = q8_0_pair_into(acc[1], at.add(2 * next * size), &pairs[next]);
        }
        if pairs.len() % 2 == 1 {
            let last = pairs.len() - 1;
            acc[0] = q8_0_pair_into(acc[0], at.add(2 * last * size), &pairs[last]);
        }
        let done = 2 * pairs.len();
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
            + super::portable_dot(format, &row[done * size..], &x[done..])
    }
}
