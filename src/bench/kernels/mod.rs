//! Quantized matrix products for the GGML block formats Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
//! Q5_K and Q6_K. candle 0.11 runs Q4_1 and Q5_1 with scalar code on x86 (87% of a SmolLM2
//! Q4_1 prompt pass was its `vec_dot_unopt`, by perf), batches no prompt rows, and keeps a
//! second, repacked copy of Q8_0, Q4_K and Q6_K weights.
//!
//! Weights are repacked once, at load, into tiles of 16 rows ([`Tiles`]): 4 quant bytes of
//! each of the 16 rows sit side by side, so one 64-byte load feeds 16 rows and one AVX-512
//! VNNI `dpbusd` does 4 multiply-adds for each. The repacked weights replace the file's bytes
//! (within 3%), so nothing is held twice. Activations are quantized to 8 bits once per row,
//! exactly as candle does (Q8_0/Q8_1 blocks of 32, Q8_K blocks of 256 for the K formats), and
//! every block's sum stays an exact integer, as in candle. Three kernels, chosen at run time:
//! AVX-512 VNNI, AVX2, and a portable one that the compiler vectorizes. Tiles are split
//! across candle's own thread pool, so the two never compete.

use crate::probe::simd::KernelCap;
use candle_core::quantized::GgmlDType;
use candle_core::Result;
use half::f16;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

mod float16;
mod in_place;
mod k_rows;
mod panel;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use float16::{HalfRows, SharedBytes};
pub use in_place::InPlace;
pub use panel::{Panel, PANEL_ROWS};

/// Values per block of the 32-value formats, and per unit of a K-format super-block: the
/// span one pass of 8 `dpbusd` covers.
pub const BLOCK: usize = 32;
/// Values per K-format super-block.
pub const SUPER_BLOCK: usize = 256;
/// Weight rows interleaved in one tile: an AVX-512 register holds 4 quants of each.
pub const TILE: usize = 16;
/// 4-value groups per 32-value unit.
const GROUPS: usize = BLOCK / 4;

/// A weight format these kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl Format {
    pub const ALL: [Format; 8] = [
        Format::Q4_0,
        Format::Q4_1,
        Format::Q5_0,
        Format::Q5_1,
        Format::Q8_0,
        Format::Q4K,
        Format::Q5K,
        Format::Q6K,
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
            Format::Q4K => GgmlDType::Q4K,
            Format::Q5K => GgmlDType::Q5K,
            Format::Q6K => GgmlDType::Q6K,
        }
    }

    /// Bytes of one block in the file.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q5_0 => 22,
            Format::Q5_1 => 24,
            Format::Q8_0 => 34,
            Format::Q4K => 144,
            Format::Q5K => 176,
            Format::Q6K => 210,
        }
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        if self.is_k() {
            SUPER_BLOCK
        } else {
            BLOCK
        }
    }

    /// The 256-value super-block formats.
    pub fn is_k(self) -> bool {
        matches!(self, Format::Q4K | Format::Q5K | Format::Q6K)
    }

    /// 32-value units per block.
    fn units(self) -> usize {
        self.block_values() / BLOCK
    }

    /// Quant bytes per row of a block in the tiles: a nibble per value, or Q8_0's bytes.
    fn quant_bytes(self) -> usize {
        match self {
            Format::Q8_0 => BLOCK,
            _ => self.block_values() / 2,
        }
    }

    /// Where a 32-value block's quants start, after its f16 scale, minimum and fifth bits.
    fn quants_at(self) -> usize {
        match self {
            Format::Q4_1 => 4,
            Format::Q5_0 => 6,
            Format::Q5_1 => 8,
            _ => 2,
        }
    }

    /// Bits above the nibble: Q5's fifth, Q6_K's fifth and sixth.
    fn high_planes(self) -> usize {
        match self {
            Format::Q5_0 | Format::Q5_1 | Format::Q5K => 1,
            Format::Q6K => 2,
            _ => 0,
        }
    }

    /// Whether blocks carry an f16 minimum (Q4_1, Q5_1) or super-block minimum scale (Q4_K,
    /// Q5_K).
    fn has_min(self) -> bool {
        matches!(
            self,
            Format::Q4_1 | Format::Q5_1 | Format::Q4K | Format::Q5K
        )
    }

    /// Integer scales per K-format super-block: one per 32 values, Q6_K's one per 16.
    fn sub_blocks(self) -> usize {
        match self {
            Format::Q4K | Format::Q5K => 8,
            Format::Q6K => 16,
            _ => 0,
        }
    }

    /// What a stored value carries on top of the real one (Q4_0 stores v + 8).
    fn bias(self) -> i32 {
        match self {
            Format::Q4_0 => 8,
            Format::Q5_0 => 16,
            Format::Q6K => 32,
            _ => 0,
        }
    }
}

/// A K-format super-block's scales and minimums, as the file stores them.
struct Scales {
    /// f16 bits of the super-block scale, and of the minimum scale (Q4_K, Q5_K).
    scale: u16,
    min: u16,
    /// Integer scale per sub-block (Q6_K's are signed), minimum per unit.
    sub_scales: [u8; 16],
    sub_mins: [u8; 8],
}

impl Scales {
    fn of(format: Format, block: &[u8]) -> Scales {
        let mut scales = Scales {
            scale: f16_bits(block, 0),
            min: 0,
            sub_scales: [0; 16],
            sub_mins: [0; 8],
        };
        match format {
            Format::Q4K | Format::Q5K => {
                scales.min = f16_bits(block, 2);
                let (sub_scales, sub_mins) = scales_and_mins(&block[4..16]);
                scales.sub_scales[..8].copy_from_slice(&sub_scales.to_le_bytes());
                scales.sub_mins = sub_mins.to_le_bytes();
            }
            Format::Q6K => {
                scales.sub_scales.copy_from_slice(&block[192..208]);
                scales.scale = f16_bits(block, 208);
            }
            Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q5_1 | Format::Q8_0 => {}
        }
        scales
    }
}

/// One K-format super-block as the file stores it, taken apart.
struct Unpacked {
    /// Stored values (Q6_K's with its +32 bias).
    values: [u8; SUPER_BLOCK],
    scales: Scales,
}

fn f16_bits(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// The 8 six-bit scales and 8 minimums of a Q4_K/Q5_K super-block (its 12 bytes at 4), one
/// byte each: the low 6 bits of bytes 0..4 and 4..8, then the nibbles of bytes 8..12 with the
/// top 2 bits of the first 8 above them.
fn scales_and_mins(packed: &[u8]) -> (u64, u64) {
    let word = |i: usize| {
        u32::from_le_bytes([
            packed[4 * i],
            packed[4 * i + 1],
            packed[4 * i + 2],
            packed[4 * i + 3],
        ])
    };
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let (six, four, two) = (0x3f3f_3f3f, 0x0f0f_0f0f, 0x0303_0303);
    let scales_high = (w2 & four) | (((w0 >> 6) & two) << 4);
    let mins_high = ((w2 >> 4) & four) | (((w1 >> 6) & two) << 4);
    (
        u64::from(w0 & six) | u64::from(scales_high) << 32,
        u64::from(w1 & six) | u64::from(mins_high) << 32,
    )
}

impl Unpacked {
    fn new(format: Format, block: &[u8]) -> Unpacked {
        let mut u = Unpacked {
            values: [0; SUPER_BLOCK],
            scales: Scales::of(format, block),
        };
        let nibbles = |qs: &[u8], values: &mut [u8]| {
            for (j, &byte) in qs.iter().enumerate() {
                values[j] = byte & 0x0f;
                values[j + qs.len()] = byte >> 4;
            }
        };
        match format {
            Format::Q4K | Format::Q5K => {
                // Each 32 bytes hold 64 values: 32 in the low nibbles, then 32 in the high.
                let (qh, qs) = if format == Format::Q5K {
                    (Some(&block[16..48]), &block[48..176])
                } else {
                    (None, &block[16..144])
                };
                for (i, qs) in qs.chunks_exact(32).enumerate() {
                    let values = &mut u.values[64 * i..64 * (i + 1)];
                    nibbles(qs, values);
                    if let Some(qh) = qh {
                        for (l, &h) in qh.iter().enumerate() {
                            values[l] |= ((h >> (2 * i)) & 1) << 4;
                            values[l + 32] |= ((h >> (2 * i + 1)) & 1) << 4;
                        }
                    }
                }
            }
            Format::Q6K => {
                let (ql, qh) = (&block[0..128], &block[128..192]);
                for n in 0..2 {
                    let (ql, qh) = (&ql[64 * n..64 * (n + 1)], &qh[32 * n..32 * (n + 1)]);
                    let values = &mut u.values[128 * n..128 * (n + 1)];
                    for l in 0..32 {
                        values[l] = (ql[l] & 0xf) | ((qh[l] & 3) << 4);
                        values[l + 32] = (ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4);
                        values[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                        values[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    }
                }
            }
            // The 32-value formats are repacked straight from the file's bytes
            // (`Part::pack_block`).
            Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q5_1 | Format::Q8_0 => {}
        }
        u
    }
}

impl Unpacked {
    /// The super-block's 256 values, with candle's arithmetic.
    fn dequantize(&self, format: Format, out: &mut [f32]) {
        let Scales {
            scale,
            min,
            sub_scales,
            sub_mins,
        } = &self.scales;
        let (d, min) = (
            f16::from_bits(*scale).to_f32(),
            f16::from_bits(*min).to_f32(),
        );
        for (i, (o, &v)) in out.iter_mut().zip(&self.values).enumerate() {
            let v = (i32::from(v) - format.bias()) as f32;
            *o = if format == Format::Q6K {
                d * f32::from(sub_scales[i / 16] as i8) * v
            } else {
                let unit = i / BLOCK;
                d * f32::from(sub_scales[unit]) * v - min * f32::from(sub_mins[unit])
            };
        }
    }
}

/// The largest magnitude in `values` (a whole number of 8s), NaN ignored as `f32::max`
/// ignores it. Eight running maxima, each a compare and select, vectorize where `f32::max`
/// does not.
fn abs_max(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    for chunk in values.chunks_exact(8) {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            let v = v.abs();
            *m = if v > *m { v } else { *m };
        }
    }
    lanes.iter().fold(0f32, |m, &v| m.max(v))
}

/// `v.round() as i8`: halves away from zero, saturating, NaN to 0. `f32::round` and the
/// saturating `as` are branches per value; these steps vectorize, and are exact because
/// `v - trunc(v)` is.
#[inline(always)]
fn round_to_i8(v: f32) -> i8 {
    #[allow(clippy::eq_op)]
    let v = if v == v { v.clamp(-128.0, 127.0) } else { 0.0 };
    // SAFETY: v is finite and within i32's range.
    let truncated: i32 = unsafe { v.to_int_unchecked() };
    let fraction = v - truncated as f32;
    (truncated + i32::from(fraction >= 0.5) - i32::from(fraction <= -0.5)) as i8
}

/// 32 activations as 8-bit integers, for the 32-value formats: value ≈ d × q; `s` = d × Σq,
/// for the formats with a minimum. The rounding matches candle's `BlockQ8_1::from_float`,
/// f16 scales included.
#[derive(Debug, Clone, Copy)]
pub struct Activations {
    d: f32,
    s: f32,
    /// Σq, to take a stored bias out of a block's integer sum.
    sum: i32,
    q: [i8; BLOCK],
}

impl Activations {
    const ZERO: Activations = Activations {
        d: 0.0,
        s: 0.0,
        sum: 0,
        q: [0; BLOCK],
    };
}

/// Quantizes `x` into `out`, one block per 32 values.
pub fn quantize_row(x: &[f32], out: &mut [Activations]) {
    for (block, out) in x.chunks_exact(BLOCK).zip(out) {
        let d = abs_max(block) / 127.0;
        let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut q = [0i8; BLOCK];
        for (q, v) in q.iter_mut().zip(block) {
            *q = round_to_i8(v * inverse);
        }
        let sum = q.iter().map(|&q| i32::from(q)).sum();
        let d = f16::from_f32(d);
        *out = Activations {
            d: d.to_f32(),
            s: (f16::from_f32(sum as f32) * d).to_f32(),
            sum,
            q,
        };
    }
}

/// 256 activations as 8-bit integers, for the K formats, rounded as candle's
/// `BlockQ8K::from_float`: value ≈ d × q, with the sum of each 16.
#[derive(Debug, Clone, Copy)]
pub struct ActivationsK {
    d: f32,
    /// Σq of each 16, and of each 32: at most 4096 in magnitude.
    sums: [i16; 16],
    unit_sums: [i16; 8],
    q: [i8; SUPER_BLOCK],
}

impl ActivationsK {
    const ZERO: ActivationsK = ActivationsK {
        d: 0.0,
        sums: [0; 16],
        unit_sums: [0; 8],
        q: [0; SUPER_BLOCK],
    };
}

/// Quantizes `x` into `out`, one block per 256 values.
pub fn quantize_row_k(x: &[f32], out: &mut [ActivationsK]) {
    for (block, a) in x.chunks_exact(SUPER_BLOCK).zip(out) {
        *a = ActivationsK::ZERO;
        // The signed value of largest magnitude (the first, as candle picks it) maps to
        // -127. The magnitude first, in a loop that vectorizes; then its sign.
        let amax = abs_max(block);
        let max = block
            .iter()
            .copied()
            .find(|v| v.abs() == amax)
            .unwrap_or(0.0);
        if amax != 0.0 {
            let inverse = -127.0 / max;
            for (q, v) in a.q.iter_mut().zip(block) {
                *q = round_to_i8(inverse * v);
            }
            for (sum, q) in a.sums.iter_mut().zip(a.q.chunks_exact(16)) {
                *sum = q.iter().map(|&q| i16::from(q)).sum();
            }
            for (unit_sum, pair) in a.unit_sums.iter_mut().zip(a.sums.chunks_exact(2)) {
                *unit_sum = pair[0] + pair[1];
            }
            a.d = 1.0 / inverse;
        }
    }
}

/// Which code runs the tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kernel {
    /// Slowest first.
    Portable,
    Avx2,
    Avx512Vnni,
}

impl Kernel {
    /// The fastest kernel this CPU runs, or a slower one if `FITBENCH_KERNEL` caps them (the
    /// probe refuses a value it does not know).
    pub fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let fastest = Kernel::ALL
                .into_iter()
                .rev()
                .find(|k| k.supported())
                .unwrap_or(Kernel::Portable);
            match crate::probe::simd::kernel_cap() {
                Ok(Some(KernelCap::Avx2)) => fastest.min(Kernel::Avx2),
                Ok(Some(KernelCap::Portable)) => Kernel::Portable,
                _ => fastest,
            }
        })
    }

    /// Every kernel this CPU runs, slowest first.
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.supported()).collect()
    }

    const ALL: [Kernel; 3] = [Kernel::Portable, Kernel::Avx2, Kernel::Avx512Vnni];

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

    /// This kernel if the CPU has it, else the portable one.
    fn or_portable(self) -> Kernel {
        if self.supported() {
            self
        } else {
            Kernel::Portable
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

/// A weight matrix (rows × k) in one of the formats, repacked into tiles of 16 rows. Every
/// array is ordered tile, then block, so a tile's data streams in order.
pub struct Tiles {
    format: Format,
    rows: usize,
    k: usize,
    /// Blocks per row.
    blocks: usize,
    /// Whether values are stored whole, a byte each, laid out as Q8_0's (no high planes):
    /// the scratch tiles K-format prompts repack on the fly with AVX-512, whose pass then
    /// reads them without decoding.
    wide: bool,
    /// [tile][block][unit][chunk][row in tile][4 bytes]. Nibble formats have 4 chunks per
    /// unit: chunk h holds values 4h..4h+4 of the unit in its low nibbles and 16+4h.. in its
    /// high ones (for the 32-value formats, the file's own byte order within a row). Q8_0 has
    /// 8 chunks of signed bytes.
    quants: Vec<u8>,
    /// [tile][block][plane][unit][group]: bit 4r + j is bit 4 + plane of value 4·group + j of
    /// the unit, in row r.
    high: Vec<u64>,
    /// f16 bits, [tile][block][row in tile].
    scales: Vec<u16>,
    /// f16 bits, laid out as `scales`: Q4_1 and Q5_1's minimum, Q4_K and Q5_K's minimum scale.
    mins: Vec<u16>,
    /// K formats, [tile][block][sub-block][row in tile] (Q6_K's are signed).
    sub_scales: Vec<u8>,
    /// Q4_K and Q5_K, [tile][block][unit][row in tile].
    sub_mins: Vec<u8>,
}

/// The arrays of [`Tiles`] for a run of whole tiles (borrowed), or their lengths per tile.
struct Arrays<Q, H, S, B> {
    quants: Q,
    high: H,
    scales: S,
    mins: S,
    sub_scales: B,
    sub_mins: B,
}

type Lengths = Arrays<usize, usize, usize, usize>;
type Part<'a> = Arrays<&'a mut [u8], &'a mut [u64], &'a mut [u16], &'a mut [u8]>;

impl Lengths {
    fn per_tile(format: Format, blocks: usize, wide: bool) -> Lengths {
        let (units, tile_blocks) = (format.units(), TILE * blocks);
        let (quant_bytes, planes) = if wide {
            (format.block_values(), 0)
        } else {
            (format.quant_bytes(), format.high_planes())
        };
        Arrays {
            quants: tile_blocks * quant_bytes,
            high: blocks * planes * units * GROUPS,
            scales: tile_blocks,
            mins: if format.has_min() { tile_blocks } else { 0 },
            sub_scales: tile_blocks * format.sub_blocks(),
            sub_mins: if format.has_min() && format.is_k() {
                tile_blocks * units
            } else {
                0
            },
        }
    }
}

impl<'a> Part<'a> {
    /// The first `tiles` tiles, and the rest.
    fn split(self, tiles: usize, per_tile: &Lengths) -> (Part<'a>, Part<'a>) {
        let (quants, quants_rest) = self.quants.split_at_mut(tiles * per_tile.quants);
        let (high, high_rest) = self.high.split_at_mut(tiles * per_tile.high);
        let (scales, scales_rest) = self.scales.split_at_mut(tiles * per_tile.scales);
        let (mins, mins_rest) = self.mins.split_at_mut(tiles * per_tile.mins);
        let (sub_scales, sub_scales_rest) =
            self.sub_scales.split_at_mut(tiles * per_tile.sub_scales);
        let (sub_mins, sub_mins_rest) = self.sub_mins.split_at_mut(tiles * per_tile.sub_mins);
        (
            Arrays {
                quants,
                high,
                scales,
                mins,
                sub_scales,
                sub_mins,
            },
            Arrays {
                quants: quants_rest,
                high: high_rest,
                scales: scales_rest,
                mins: mins_rest,
                sub_scales: sub_scales_rest,
                sub_mins: sub_mins_rest,
            },
        )
    }

    /// A 32-value block: the file's quant bytes are already the tiles' chunks, 4 at a time.
    fn pack_block(&mut self, format: Format, tb: usize, r: usize, block: &[u8]) {
        let quant_bytes = format.quant_bytes();
        self.scales[tb * TILE + r] = f16_bits(block, 0);
        if format.has_min() {
            self.mins[tb * TILE + r] = f16_bits(block, 2);
        }
        let at = format.quants_at();
        let quants = &mut self.quants[tb * TILE * quant_bytes..][..TILE * quant_bytes];
        for (c, four) in block[at..at + quant_bytes].chunks_exact(4).enumerate() {
            quants[(c * TILE + r) * 4..][..4].copy_from_slice(four);
        }
        if format.high_planes() == 1 {
            let high =
                u32::from_le_bytes([block[at - 4], block[at - 3], block[at - 2], block[at - 1]]);
            for (g, bits) in self.high[tb * GROUPS..][..GROUPS].iter_mut().enumerate() {
                *bits |= u64::from((high >> (4 * g)) & 0xf) << (4 * r);
            }
        }
    }

    /// Repacks `bytes`, the file's rows for these tiles, into them, handing each 64 tiles'
    /// worth of the file's bytes to `consumed` once done with them.
    fn pack(
        mut self,
        format: Format,
        blocks: usize,
        bytes: &[u8],
        consumed: &(dyn Fn(&[u8]) + Sync),
    ) {
        let row_bytes = blocks * format.block_bytes();
        for (i, chunk) in bytes.chunks(64 * TILE * row_bytes).enumerate() {
            self.pack_rows(format, blocks, i * 64 * TILE, chunk);
            consumed(chunk);
        }
    }

    /// A K-format super-block's scales and minimums, for row r of tile-block tb.
    fn pack_scales(&mut self, format: Format, tb: usize, r: usize, u: &Scales) {
        let (units, subs) = (format.units(), format.sub_blocks());
        self.scales[tb * TILE + r] = u.scale;
        if format.has_min() {
            self.mins[tb * TILE + r] = u.min;
        }
        for s in 0..subs {
            self.sub_scales[(tb * subs + s) * TILE + r] = u.sub_scales[s];
        }
        if !self.sub_mins.is_empty() {
            for unit in 0..units {
                self.sub_mins[(tb * units + unit) * TILE + r] = u.sub_mins[unit];
            }
        }
    }

    /// Repacks `bytes`, the file's rows from row `first` (of these tiles) on.
    fn pack_rows(&mut self, format: Format, blocks: usize, first: usize, bytes: &[u8]) {
        let (quant_bytes, units, planes) =
            (format.quant_bytes(), format.units(), format.high_planes());
        let block_bytes = format.block_bytes();
        for (row, row_bytes) in bytes.chunks_exact(blocks * block_bytes).enumerate() {
            let row = first + row;
            let (tile, r) = (row / TILE, row % TILE);
            for (b, block) in row_bytes.chunks_exact(block_bytes).enumerate() {
                let tb = tile * blocks + b;
                if !format.is_k() {
                    self.pack_block(format, tb, r, block);
                    continue;
                }
                let u = Unpacked::new(format, block);
                self.pack_scales(format, tb, r, &u.scales);
                let quants = &mut self.quants[tb * TILE * quant_bytes..][..TILE * quant_bytes];
                for unit in 0..units {
                    let values = &u.values[unit * BLOCK..][..BLOCK];
                    for h in 0..4 {
                        let out = &mut quants[((unit * 4 + h) * TILE + r) * 4..][..4];
                        for (j, o) in out.iter_mut().enumerate() {
                            *o = (values[4 * h + j] & 0x0f) | (values[16 + 4 * h + j] << 4);
                        }
                    }
                    for plane in 0..planes {
                        for (g, four) in values.chunks_exact(4).enumerate() {
                            let bits = four.iter().enumerate().fold(0u64, |bits, (j, v)| {
                                bits | u64::from((v >> (4 + plane)) & 1) << j
                            });
                            self.high[((tb * planes + plane) * units + unit) * GROUPS + g] |=
                                bits << (4 * r);
                        }
                    }
                }
            }
        }
    }
}

impl Tiles {
    /// Whether a rows × k matrix in `format` can be tiled; other shapes use candle's kernels.
    pub fn fit(format: Format, rows: usize, k: usize) -> bool {
        rows.is_multiple_of(TILE) && k.is_multiple_of(format.block_values()) && rows > 0 && k > 0
    }

    /// Repacks `bytes`, the file's rows × k matrix in `format`.
    pub fn new(format: Format, bytes: &[u8], rows: usize, k: usize) -> Result<Tiles> {
        Tiles::new_releasing(format, bytes, rows, k, &|_| {})
    }

    /// [`Tiles::new`], handing parts of `bytes` to `consumed` as soon as they are repacked:
    /// a mapped file's pages can leave memory before the whole matrix is done (Gemma 3's
    /// embedding is 73% of its file).
    pub fn new_releasing(
        format: Format,
        bytes: &[u8],
        rows: usize,
        k: usize,
        consumed: &(dyn Fn(&[u8]) + Sync),
    ) -> Result<Tiles> {
        if !Tiles::fit(format, rows, k) {
            candle_core::bail!(
                "a {rows}×{k} {:?} matrix is not whole tiles of {TILE} rows and {}-value blocks",
                format.dtype(),
                format.block_values()
            );
        }
        let blocks = k / format.block_values();
        let block_bytes = format.block_bytes();
        if bytes.len() != rows * blocks * block_bytes {
            candle_core::bail!(
                "a {rows}×{k} {:?} matrix takes {} bytes, not {}",
                format.dtype(),
                rows * blocks * block_bytes,
                bytes.len()
            );
        }
        let tiles = rows / TILE;
        let per_tile = Arrays::per_tile(format, blocks, false);
        let mut packed = Tiles {
            format,
            rows,
            k,
            blocks,
            wide: false,
            quants: vec![0; tiles * per_tile.quants],
            high: vec![0; tiles * per_tile.high],
            scales: vec![0; tiles * per_tile.scales],
            mins: vec![0; tiles * per_tile.mins],
            sub_scales: vec![0; tiles * per_tile.sub_scales],
            sub_mins: vec![0; tiles * per_tile.sub_mins],
        };
        // Repacking is a load-time cost llama.cpp also pays: spread it over the threads.
        let threads = candle_core::utils::get_num_threads().clamp(1, tiles);
        let mut rest = Arrays {
            quants: &mut packed.quants[..],
            high: &mut packed.high[..],
            scales: &mut packed.scales[..],
            mins: &mut packed.mins[..],
            sub_scales: &mut packed.sub_scales[..],
            sub_mins: &mut packed.sub_mins[..],
        };
        let tile_bytes = TILE * blocks * block_bytes;
        std::thread::scope(|scope| {
            let mut first = 0;
            for thread in 0..threads {
                let count = (tiles - first) / (threads - thread);
                let (part, tail) = rest.split(count, &per_tile);
                rest = tail;
                let bytes = &bytes[first * tile_bytes..(first + count) * tile_bytes];
                scope.spawn(move || part.pack(format, blocks, bytes, consumed));
                first += count;
            }
        });
        Ok(packed)
    }

    /// Row r of tile-block tb as real integer values (the stored bias taken out): four
    /// bytes of the row at a time, each high plane a group's four bits at a time. Picking
    /// each value on its own had held the portable kernels to 1.2 tok/s on a 1.1B Q4_0 here.
    fn decode(&self, tb: usize, r: usize, values: &mut [i32]) {
        let format = self.format;
        let values = &mut values[..format.block_values()];
        if format == Format::Q8_0 || self.wide {
            let bytes = format.block_values();
            let quants = &self.quants[tb * TILE * bytes..][..TILE * bytes];
            for (group, four) in values.chunks_exact_mut(4).enumerate() {
                for (v, &byte) in four.iter_mut().zip(&quants[(group * TILE + r) * 4..][..4]) {
                    *v = if format == Format::Q8_0 {
                        i32::from(byte as i8)
                    } else {
                        i32::from(byte)
                    };
                }
            }
        } else {
            self.decode_nibbles(tb, r, values);
        }
        values.iter_mut().for_each(|v| *v -= format.bias());
    }

    /// [`Tiles::decode`] for the nibble formats, before the bias: low nibbles, then each
    /// high plane's bits.
    fn decode_nibbles(&self, tb: usize, r: usize, values: &mut [i32]) {
        let format = self.format;
        let quant_bytes = format.quant_bytes();
        let quants = &self.quants[tb * TILE * quant_bytes..][..TILE * quant_bytes];
        for (unit, values) in values.chunks_exact_mut(BLOCK).enumerate() {
            let (low, high) = values.split_at_mut(BLOCK / 2);
            for chunk in 0..4 {
                let four = &quants[((unit * 4 + chunk) * TILE + r) * 4..][..4];
                for (j, &byte) in four.iter().enumerate() {
                    low[4 * chunk + j] = i32::from(byte & 0x0f);
                    high[4 * chunk + j] = i32::from(byte >> 4);
                }
            }
        }
        let (planes, units) = (format.high_planes(), format.units());
        for plane in 0..planes {
            for (unit, values) in values.chunks_exact_mut(BLOCK).enumerate() {
                for (group, four) in values.chunks_exact_mut(4).enumerate() {
                    let g = ((tb * planes + plane) * units + unit) * GROUPS + group;
                    let bits = (self.high[g] >> (4 * r)) as i32;
                    for (j, v) in four.iter_mut().enumerate() {
                        *v |= ((bits >> j) & 1) << (4 + plane);
                    }
                }
            }
        }
    }

    fn scale(&self, tb: usize, r: usize) -> f32 {
        f16::from_bits(self.scales[tb * TILE + r]).to_f32()
    }

    fn min(&self, tb: usize, r: usize) -> f32 {
        self.mins
            .get(tb * TILE + r)
            .map_or(0.0, |&bits| f16::from_bits(bits).to_f32())
    }

    fn sub_scale(&self, tb: usize, s: usize, r: usize) -> i32 {
        let byte = self.sub_scales[(tb * self.format.sub_blocks() + s) * TILE + r];
        if self.format == Format::Q6K {
            i32::from(byte as i8)
        } else {
            i32::from(byte)
        }
    }

    fn sub_min(&self, tb: usize, unit: usize, r: usize) -> i32 {
        i32::from(self.sub_mins[(tb * self.format.units() + unit) * TILE + r])
    }

    /// `x` (m × k) against every tile, m > 1.
    fn run<A: Columns>(&self, kernel: Kernel, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let activations = quantize_rows::<A>(x, m, self.k);
        let rows: Vec<&[A]> = activations.chunks_exact(self.k / A::VALUES).collect();
        Ok(run_tiles(
            &Quantized(self, std::marker::PhantomData),
            kernel,
            self.rows,
            &rows,
        ))
    }

    /// A matrix of one tile's arrays, for [`Tiles::repack_tile`] to fill: wide (see
    /// [`Tiles::wide`]) for Q5_K and Q6_K.
    fn one_tile(format: Format, k: usize) -> Tiles {
        let blocks = k / format.block_values();
        let wide = matches!(format, Format::Q5K | Format::Q6K);
        let lengths = Lengths::per_tile(format, blocks, wide);
        Tiles {
            format,
            rows: TILE,
            k,
            blocks,
            wide,
            quants: vec![0; lengths.quants],
            high: vec![0; lengths.high],
            scales: vec![0; lengths.scales],
            mins: vec![0; lengths.mins],
            sub_scales: vec![0; lengths.sub_scales],
            sub_mins: vec![0; lengths.sub_mins],
        }
    }

    /// Repacks `bytes`, the file's 16 rows, into this one-tile matrix.
    fn repack_tile(&mut self, bytes: &[u8]) {
        self.high.fill(0);
        let (format, blocks, wide) = (self.format, self.blocks, self.wide);
        let mut part = Arrays {
            quants: &mut self.quants[..],
            high: &mut self.high[..],
            scales: &mut self.scales[..],
            mins: &mut self.mins[..],
            sub_scales: &mut self.sub_scales[..],
            sub_mins: &mut self.sub_mins[..],
        };
        if !wide {
            return part.pack(format, blocks, bytes, &|_| {});
        }
        #[cfg(target_arch = "x86_64")]
        if Kernel::Avx512Vnni.supported() {
            // SAFETY: this CPU has AVX-512.
            return unsafe { k_rows::x86::repack_wide(format, blocks, bytes, &mut part) };
        }
        // Whole values, 4 of each row side by side; the scales as the tiles keep them.
        let size = format.block_bytes();
        for (r, row) in bytes.chunks_exact(blocks * size).enumerate().take(TILE) {
            for (b, block) in row.chunks_exact(size).enumerate() {
                let u = Unpacked::new(format, block);
                let quants = &mut part.quants[b * TILE * SUPER_BLOCK..][..TILE * SUPER_BLOCK];
                for (group, four) in u.values.chunks_exact(4).enumerate() {
                    quants[(group * TILE + r) * 4..][..4].copy_from_slice(four);
                }
                part.pack_scales(format, b, r, &u.scales);
            }
        }
    }
}

/// The m rows of `x` (m × k) quantized for the kernels, m × k / A::VALUES blocks.
fn quantize_rows<A: Columns>(x: &[f32], m: usize, k: usize) -> Vec<A> {
    let blocks = k / A::VALUES;
    let mut activations = vec![A::ZERO; m * blocks];
    let base = activations.as_mut_ptr() as usize;
    let quantize = |range: std::ops::Range<usize>| {
        for i in range {
            // SAFETY: row i writes only its own `blocks` blocks; rows are disjoint and the
            // pool call returns when every row is done.
            let out =
                unsafe { std::slice::from_raw_parts_mut((base as *mut A).add(i * blocks), blocks) };
            A::quantize(&x[i * k..(i + 1) * k], out);
        }
    };
    // One row is quicker to quantize than to hand to the pool.
    if m == 1 {
        quantize(0..1);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(m, quantize);
    }
    activations
}

/// One activation row prepared against one matrix (quantized once, as its kernel takes it):
/// any range of the matrix's rows can then run on any thread.
pub trait RowProduct: Sync {
    fn rows(&self) -> usize;

    /// What a range of rows starts and ends on: a tile, a group of f16 rows.
    fn unit(&self) -> usize;

    /// The products of weight rows `rows` (whole units) into `out`, a value a row.
    fn run(&self, rows: Range<usize>, out: &mut [f32]);
}

/// Each product's results, the products streamed as one matmul across candle's pool: their
/// rows one after another, in grains of 16. A token's q, k and v (or gate and up) take one
/// hand-off to the pool instead of three (or two), and the short k and v matrices no longer
/// start and end streams of their own.
pub fn run_products(products: &[&dyn RowProduct]) -> Vec<Vec<f32>> {
    let unit = products.iter().map(|p| p.unit()).max().unwrap_or(1).max(1);
    if products.len() > 1 && products.iter().any(|p| !p.rows().is_multiple_of(unit)) {
        return products.iter().flat_map(|p| run_products(&[*p])).collect();
    }
    let mut results: Vec<Vec<f32>> = products.iter().map(|p| vec![0f32; p.rows()]).collect();
    let outs: Vec<usize> = results
        .iter_mut()
        .map(|r| r.as_mut_ptr() as usize)
        .collect();
    // The first unit of each product in the concatenation, and the end.
    let starts: Vec<usize> = std::iter::once(0)
        .chain(products.iter().scan(0, |units, p| {
            *units += p.rows() / unit;
            Some(*units)
        }))
        .collect();
    let units = starts.last().copied().unwrap_or(0);
    in_streams(units, (GRAIN_ROWS / unit).max(1), |taken| {
        let mut at = taken.start;
        while at < taken.end {
            let p = starts.partition_point(|&start| start <= at) - 1;
            let end = taken.end.min(starts[p + 1]);
            let rows = (at - starts[p]) * unit..(end - starts[p]) * unit;
            // SAFETY: product p's rows `rows` are taken once; its result holds all its rows
            // and outlives the pool call, which returns when every unit is done.
            let out = unsafe {
                std::slice::from_raw_parts_mut((outs[p] as *mut f32).add(rows.start), rows.len())
            };
            products[p].run(rows, out);
            at = end;
        }
    });
    results
}

/// A weight matrix repacked for fitbench's kernels.
pub trait Repacked: Send + Sync {
    fn rows(&self) -> usize;

    fn k(&self) -> usize;

    /// Row `row`, dequantized into `out` (k values), with candle's arithmetic.
    fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<()>;

    /// `x` (m × k, row-major) times the transpose of these weights, with a chosen kernel (one
    /// this CPU lacks runs the portable one): the m × rows result, row-major.
    fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize) -> Result<Vec<f32>>;

    /// Refuses a row past the end, or an output of the wrong length.
    fn check_row(&self, row: usize, out: &[f32]) -> Result<()> {
        if row >= self.rows() || out.len() != self.k() {
            candle_core::bail!(
                "row {row} of a {}×{} matrix cannot fill {} values",
                self.rows(),
                self.k(),
                out.len()
            );
        }
        Ok(())
    }

    /// [`Repacked::matmul_with`] the fastest kernel here.
    fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        self.matmul_with(Kernel::best(), x, m)
    }

    /// `x` (one row of k values) prepared for its products with these rows by `kernel` (one
    /// this CPU lacks runs the portable one).
    fn prepare_with<'a>(&'a self, kernel: Kernel, x: &[f32]) -> Result<Box<dyn RowProduct + 'a>>;

    /// [`Repacked::prepare_with`] the fastest kernel here.
    fn prepare<'a>(&'a self, x: &[f32]) -> Result<Box<dyn RowProduct + 'a>> {
        self.prepare_with(Kernel::best(), x)
    }

    /// One row's matmul: the weights stream from memory, each thread its own share.
    fn one_row(&self, kernel: Kernel, x: &[f32]) -> Result<Vec<f32>> {
        let product = self.prepare_with(kernel, x)?;
        Ok(run_products(&[product.as_ref()])
            .into_iter()
            .next()
            .unwrap_or_default())
    }
}

/// One activation row against tiles.
struct TileRow<'a, A> {
    tiles: &'a Tiles,
    kernel: Kernel,
    x: Vec<A>,
}

impl<A: Columns> RowProduct for TileRow<'_, A> {
    fn rows(&self) -> usize {
        self.tiles.rows
    }

    fn unit(&self) -> usize {
        TILE
    }

    fn run(&self, rows: Range<usize>, out: &mut [f32]) {
        for (t, out) in (rows.start / TILE..rows.end / TILE).zip(out.chunks_exact_mut(TILE)) {
            let [values] = A::pass::<1>(self.tiles, self.kernel, t, [&self.x]);
            out.copy_from_slice(&values);
        }
    }
}

impl Repacked for Tiles {
    fn rows(&self) -> usize {
        self.rows
    }

    fn k(&self) -> usize {
        self.k
    }

    fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<()> {
        self.check_row(row, out)?;
        let (tile, r) = (row / TILE, row % TILE);
        let mut values = [0i32; SUPER_BLOCK];
        for (b, out) in out.chunks_exact_mut(self.format.block_values()).enumerate() {
            let tb = tile * self.blocks + b;
            let values = &mut values[..out.len()];
            self.decode(tb, r, values);
            let (scale, min) = (self.scale(tb, r), self.min(tb, r));
            for (i, (o, &v)) in out.iter_mut().zip(values.iter()).enumerate() {
                *o = match self.format {
                    Format::Q4K | Format::Q5K => {
                        let unit = i / BLOCK;
                        scale * self.sub_scale(tb, unit, r) as f32 * v as f32
                            - min * self.sub_min(tb, unit, r) as f32
                    }
                    Format::Q6K => scale * self.sub_scale(tb, i / 16, r) as f32 * v as f32,
                    _ => scale * v as f32 + min,
                };
            }
        }
        Ok(())
    }

    fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize) -> Result<Vec<f32>> {
        check_input(x, m, self.k)?;
        if m == 1 {
            self.one_row(kernel, x)
        } else if self.format.is_k() {
            self.run::<ActivationsK>(kernel, x, m)
        } else {
            self.run::<Activations>(kernel, x, m)
        }
    }

    fn prepare_with<'a>(&'a self, kernel: Kernel, x: &[f32]) -> Result<Box<dyn RowProduct + 'a>> {
        check_input(x, 1, self.k)?;
        let kernel = kernel.or_portable();
        Ok(if self.format.is_k() {
            Box::new(TileRow {
                tiles: self,
                kernel,
                x: quantize_rows::<ActivationsK>(x, 1, self.k),
            })
        } else {
            Box::new(TileRow {
                tiles: self,
                kernel,
                x: quantize_rows::<Activations>(x, 1, self.k),
            })
        })
    }
}

/// `a` · each row of `rows` (f16 rows of `a.len()` values, as the KV cache holds them) into
/// `out`, with `kernel`'s vectors: a query head's scores against its keys, one call for all
/// of them instead of one per key.
pub fn dot_half_rows(kernel: Kernel, a: &[f32], rows: &[f16], out: &mut [f32]) {
    match kernel.or_portable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `or_portable` keeps only kernels this CPU has.
        Kernel::Avx512Vnni => unsafe { x86::dot_half_rows_avx512(a, rows, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Kernel::Avx2 => unsafe { x86::dot_half_rows_avx2(a, rows, out) },
        _ => {
            for (o, row) in out.iter_mut().zip(rows.chunks_exact(a.len().max(1))) {
                *o = dot_half_portable(a, row);
            }
        }
    }
}

/// out[h] = Σₜ weights[h][t] · rows[t] for each head h: a group of query heads' attention
/// weights (heads × keys) over their value rows (keys × dim f16 values, side by side), into
/// heads × dim values. Up to 4 heads × 32 values are summed in registers while the value
/// rows pass once; adding each key's share into the outputs in memory had been a load and a
/// store per multiply-add (3.5% of a long TinyLlama generation's samples). The sums run over
/// the keys in order, as that loop's did. Shapes that do not fit together leave `out` zeroed.
pub fn weighted_sum_rows(
    kernel: Kernel,
    weights: &[f32],
    rows: &[f16],
    dim: usize,
    out: &mut [f32],
) {
    let heads = out.len() / dim.max(1);
    let keys = weights.len() / heads.max(1);
    if dim == 0 || keys == 0 || weights.len() != heads * keys || rows.len() < keys * dim {
        out.fill(0.0);
        return;
    }
    match kernel.or_portable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `or_portable` keeps only kernels this CPU has; the shapes are checked.
        Kernel::Avx512Vnni => unsafe { x86::weighted_sum_rows_avx512(weights, rows, dim, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Kernel::Avx2 => unsafe { x86::weighted_sum_rows_avx2(weights, rows, dim, out) },
        // SAFETY: the portable widening reads 32 values of a row that has them.
        _ => unsafe { weighted_head_groups::<PortableWiden>(weights, rows, dim, out) },
    }
}

/// 32 f16 values at a pointer, widened to f32: each kernel's own instructions, inlined into
/// [`weighted_head_groups`] where that runs with the kernel's target features.
pub(crate) trait Widen {
    /// # Safety
    /// `values` points at 32 readable f16 values, and the CPU has the kernel's features.
    unsafe fn widen(values: *const f16) -> [f32; WEIGHTED_LANES];
}

struct PortableWiden;

impl Widen for PortableWiden {
    #[inline(always)]
    unsafe fn widen(values: *const f16) -> [f32; WEIGHTED_LANES] {
        std::array::from_fn(|i| widen_half(*values.add(i)))
    }
}

/// An f16 as f32: one hardware conversion where the build targets one (F16C, or Armv8.2's
/// FP16, as half's `to_f32` then compiles to), otherwise [`widen_half_arithmetic`]. There,
/// `to_f32` is a call that checks for them and falls back to branches (the Pi 3 and 4, and
/// x86 builds for any CPU), which took generation at 1024 positions of context to 0.65× of
/// the arithmetic (SmolLM2, `FITBENCH_KERNEL=portable`, an x86-64 build without F16C).
#[inline(always)]
pub fn widen_half(value: f16) -> f32 {
    const HARDWARE: bool = cfg!(any(
        all(target_arch = "x86_64", target_feature = "f16c"),
        all(target_arch = "aarch64", target_feature = "fp16")
    ));
    if HARDWARE {
        value.to_f32()
    } else {
        widen_half_arithmetic(value)
    }
}

/// An f16 as f32, exactly, in integer and float arithmetic that a loop vectorizes: the
/// exponent and mantissa shifted into an f32 and scaled by 2^112 land exactly, subnormals
/// included; what overflows past 65536 was an infinity or a NaN, and keeps all its exponent
/// bits.
#[inline(always)]
fn widen_half_arithmetic(value: f16) -> f32 {
    let bits = u32::from(value.to_bits());
    let scaled = f32::from_bits((bits & 0x7fff) << 13) * f32::from_bits((254 - 15) << 23);
    let infinite_or_nan = if scaled >= 65536.0 { 0xff << 23 } else { 0 };
    f32::from_bits(scaled.to_bits() | infinite_or_nan | (bits & 0x8000) << 16)
}

/// [`weighted_sum_rows`] for shapes it has checked, 4 heads at a time.
///
/// # Safety
/// `W` must run on this CPU.
#[inline(always)]
pub(crate) unsafe fn weighted_head_groups<W: Widen>(
    weights: &[f32],
    rows: &[f16],
    dim: usize,
    out: &mut [f32],
) {
    let keys = weights.len() / (out.len() / dim);
    for (weights, out) in weights
        .chunks(WEIGHTED_HEADS * keys)
        .zip(out.chunks_mut(WEIGHTED_HEADS * dim))
    {
        match out.len() / dim {
            4 => weighted_heads::<4, W>(weights, rows, dim, out),
            3 => weighted_heads::<3, W>(weights, rows, dim, out),
            2 => weighted_heads::<2, W>(weights, rows, dim, out),
            _ => weighted_heads::<1, W>(weights, rows, dim, out),
        }
    }
}

/// Heads summed together in [`weighted_sum_rows`], and values of each.
const WEIGHTED_HEADS: usize = 4;
const WEIGHTED_LANES: usize = 32;

#[inline(always)]
unsafe fn weighted_heads<const H: usize, W: Widen>(
    weights: &[f32],
    rows: &[f16],
    dim: usize,
    out: &mut [f32],
) {
    let keys = weights.len() / H;
    let weights: [&[f32]; H] = std::array::from_fn(|h| &weights[h * keys..][..keys]);
    let rows = &rows[..keys * dim];
    let whole = dim / WEIGHTED_LANES * WEIGHTED_LANES;
    for at in (0..whole).step_by(WEIGHTED_LANES) {
        let mut sums = [[0f32; WEIGHTED_LANES]; H];
        for (t, row) in rows.chunks_exact(dim).enumerate() {
            let values = W::widen(row.as_ptr().add(at));
            for (sums, weights) in sums.iter_mut().zip(&weights) {
                let weight = weights[t];
                for (sum, &v) in sums.iter_mut().zip(&values) {
                    *sum += weight * v;
                }
            }
        }
        for (out, sums) in out.chunks_exact_mut(dim).zip(&sums) {
            out[at..at + WEIGHTED_LANES].copy_from_slice(sums);
        }
    }
    for (out, weights) in out.chunks_exact_mut(dim).zip(&weights) {
        let out = &mut out[whole..];
        out.fill(0.0);
        for (row, &weight) in rows.chunks_exact(dim).zip(weights.iter()) {
            for (o, &v) in out.iter_mut().zip(&row[whole..]) {
                *o += weight * widen_half(v);
            }
        }
    }
}

/// Σ a·b over an f16 row in 8 running sums, which the compiler can keep in vector lanes (one
/// sum cannot be reordered, so it stays scalar).
fn dot_half_portable(a: &[f32], b: &[f16]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut sums = [0f32; 8];
    for (a, b) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for ((sum, a), b) in sums.iter_mut().zip(a).zip(b) {
            *sum += a * widen_half(*b);
        }
    }
    let whole = n / 8 * 8;
    let tail: f32 = a[whole..]
        .iter()
        .zip(&b[whole..])
        .map(|(a, b)| a * widen_half(*b))
        .sum();
    sums.iter().sum::<f32>() + tail
}

/// `work` over 0..items on candle's pool, each thread taking `shares` chunks of its share
/// (the last to finish helps with what is left).
fn in_chunks(items: usize, shares: usize, work: impl Fn(Range<usize>) + Sync) {
    let pool = candle_core::utils::barrier_pool();
    let chunk = items.div_ceil((pool.n_workers() + 1) * shares).max(1);
    let cursor = AtomicUsize::new(0);
    pool.execute(|_| loop {
        let start = cursor.fetch_add(chunk, Ordering::Relaxed);
        if start >= items {
            break;
        }
        work(start..items.min(start + chunk));
    });
}

/// The rows a thread takes at a time in [`in_streams`]: 20 KB of a 2048-wide Q4_1 matrix,
/// enough for the prefetchers to keep streaming.
const GRAIN_ROWS: usize = 16;

/// `work` over 0..items on candle's pool for a matmul that streams its weights from memory
/// (m = 1): each thread streams its own contiguous share from the front, `grain` items at a
/// time, and a thread that is done takes grains from the back of the others' shares. One
/// contiguous share per thread streams fastest (64 even chunks ran generation 10-20%
/// slower on a TinyLlama Q4_K_M), but even halves kept one thread waiting for the other at
/// the end of every matmul.
fn in_streams(items: usize, grain: usize, work: impl Fn(Range<usize>) + Sync) {
    if u32::try_from(items).is_err() {
        return in_chunks(items, 1, work);
    }
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    let share = items.div_ceil(threads);
    let spans: Vec<Span> = (0..threads)
        .map(|t| Span::new((t * share).min(items)..((t + 1) * share).min(items)))
        .collect();
    let grain = grain.max(1);
    pool.execute(|thread| {
        let own = &spans[thread.min(threads - 1)];
        while let Some(items) = own.take_front(grain) {
            work(items);
        }
        for other in 1..threads {
            let span = &spans[(thread + other) % threads];
            while let Some(items) = span.take_back(grain) {
                work(items);
            }
        }
    });
}

/// What is left of one thread's share in [`in_streams`], (front, back) in one word, on a
/// cache line of its own: its owner takes grains without sharing the line until another
/// thread comes to help.
#[repr(align(64))]
struct Span(AtomicU64);

impl Span {
    fn new(items: Range<usize>) -> Span {
        Span(AtomicU64::new(Span::pack(items.start, items.end)))
    }

    fn pack(front: usize, back: usize) -> u64 {
        ((front as u64) << 32) | back as u64
    }

    /// An eighth of what is left, or a grain near the end: each take is a locked
    /// instruction, which waits for the thread's loads in flight, and a grain at a time
    /// those waits were 1.5% of generation's samples.
    fn take_front(&self, grain: usize) -> Option<Range<usize>> {
        self.take(|front, back| {
            let end = back.min(front + grain.max((back - front) / 8));
            (front..end, end, back)
        })
    }

    fn take_back(&self, grain: usize) -> Option<Range<usize>> {
        self.take(|front, back| {
            let start = front.max(back.saturating_sub(grain));
            (start..back, front, start)
        })
    }

    /// The items `split` takes from what is left, and the (front, back) it leaves.
    fn take(
        &self,
        split: impl Fn(usize, usize) -> (Range<usize>, usize, usize),
    ) -> Option<Range<usize>> {
        let mut packed = self.0.load(Ordering::Relaxed);
        loop {
            let (front, back) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
            if front >= back {
                return None;
            }
            let (taken, front, back) = split(front, back);
            let left = Span::pack(front, back);
            match self
                .0
                .compare_exchange_weak(packed, left, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(taken),
                Err(now) => packed = now,
            }
        }
    }
}

/// One pass of a tile of weights over C activation rows: the 16 outputs for each.
trait TilePass: Sync {
    type Row: ?Sized + Sync;
    /// What a thread fills before its passes over tile t: a tile repacked on the fly.
    type Scratch: Default;

    fn prepare(&self, _t: usize, _scratch: &mut Self::Scratch) {}

    fn pass<const C: usize>(
        &self,
        kernel: Kernel,
        t: usize,
        scratch: &Self::Scratch,
        rows: [&Self::Row; C],
    ) -> [[f32; TILE]; C];
}

/// The 32-value or K-format tiles with their quantized activations.
struct Quantized<'a, A>(&'a Tiles, std::marker::PhantomData<A>);

impl<A: Columns> TilePass for Quantized<'_, A> {
    type Row = [A];
    type Scratch = ();

    fn pass<const C: usize>(
        &self,
        kernel: Kernel,
        t: usize,
        _: &(),
        rows: [&[A]; C],
    ) -> [[f32; TILE]; C] {
        A::pass(self.0, kernel, t, rows)
    }
}

fn check_input(x: &[f32], m: usize, k: usize) -> Result<()> {
    if x.len() != m * k {
        candle_core::bail!("{} values are not {m} rows of {k}", x.len());
    }
    Ok(())
}

/// Every tile of an n-row matrix against `rows`, a pass per `kernel.columns()` rows (a kernel
/// this CPU lacks runs the portable one): the rows.len() × n result, row-major.
fn run_tiles<P: TilePass>(weights: &P, kernel: Kernel, n: usize, rows: &[&P::Row]) -> Vec<f32> {
    let kernel = kernel.or_portable();
    let m = rows.len();
    let mut result = vec![0f32; m * n];
    let out = result.as_mut_ptr() as usize;
    let work = |tiles: Range<usize>| {
        let mut scratch = P::Scratch::default();
        for t in tiles {
            weights.prepare(t, &mut scratch);
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
            let mut done = 0;
            while done < m {
                let at = |c: usize| rows[done + c];
                done += if m - done >= 8 && kernel.columns() >= 8 {
                    emit(
                        done,
                        weights.pass::<8>(kernel, t, &scratch, std::array::from_fn(at)),
                        &mut write,
                    )
                } else if m - done >= 4 {
                    emit(
                        done,
                        weights.pass::<4>(kernel, t, &scratch, std::array::from_fn(at)),
                        &mut write,
                    )
                } else {
                    emit(
                        done,
                        weights.pass::<1>(kernel, t, &scratch, std::array::from_fn(at)),
                        &mut write,
                    )
                };
            }
        }
    };
    in_chunks(n / TILE, 8, work);
    result
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

/// Quantized activation blocks, and the kernels that take them.
trait Columns: Copy + Send + Sync {
    const ZERO: Self;
    /// Values per block.
    const VALUES: usize;

    fn quantize(x: &[f32], out: &mut [Self]);

    /// One pass of tile t over C activation rows: the 16 outputs for each.
    fn pass<const C: usize>(
        tiles: &Tiles,
        kernel: Kernel,
        t: usize,
        columns: [&[Self]; C],
    ) -> [[f32; TILE]; C];
}

impl Columns for Activations {
    const ZERO: Self = Activations::ZERO;
    const VALUES: usize = BLOCK;

    fn quantize(x: &[f32], out: &mut [Self]) {
        quantize_row(x, out)
    }

    fn pass<const C: usize>(
        tiles: &Tiles,
        kernel: Kernel,
        t: usize,
        columns: [&[Self]; C],
    ) -> [[f32; TILE]; C] {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `run_tiles` runs only kernels this CPU has; every activation row has
            // `blocks` blocks and the tile's data is whole (both by construction).
            Kernel::Avx512Vnni => unsafe { x86::pass_vnni(tiles, t, columns) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Kernel::Avx2 => unsafe { x86::pass_avx2(tiles, t, columns) },
            _ => portable_pass(tiles, t, columns),
        }
    }
}

impl Columns for ActivationsK {
    const ZERO: Self = ActivationsK::ZERO;
    const VALUES: usize = SUPER_BLOCK;

    fn quantize(x: &[f32], out: &mut [Self]) {
        quantize_row_k(x, out)
    }

    fn pass<const C: usize>(
        tiles: &Tiles,
        kernel: Kernel,
        t: usize,
        columns: [&[Self]; C],
    ) -> [[f32; TILE]; C] {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as for `Activations`.
            Kernel::Avx512Vnni => unsafe { x86::pass_k_vnni(tiles, t, columns) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as for `Activations`.
            Kernel::Avx2 => unsafe { x86::pass_k_avx2(tiles, t, columns) },
            _ => portable_pass_k(tiles, t, columns),
        }
    }
}

fn dot(values: &[i32], q: &[i8]) -> i32 {
    values.iter().zip(q).map(|(&w, &q)| w * i32::from(q)).sum()
}

/// Plain loops over decoded blocks: what a Pi runs. The products are independent integer
/// multiply-adds the compiler vectorizes.
fn portable_pass<const C: usize>(
    tiles: &Tiles,
    t: usize,
    columns: [&[Activations]; C],
) -> [[f32; TILE]; C] {
    let mut acc = [[0f32; TILE]; C];
    let mut values = [[0i32; BLOCK]; TILE];
    for b in 0..tiles.blocks {
        let tb = t * tiles.blocks + b;
        for (r, v) in values.iter_mut().enumerate() {
            tiles.decode(tb, r, v);
        }
        for (acc, column) in acc.iter_mut().zip(&columns) {
            let a = &column[b];
            for (r, (o, v)) in acc.iter_mut().zip(&values).enumerate() {
                let sum = dot(v, &a.q);
                *o += tiles.scale(tb, r) * a.d * sum as f32 + tiles.min(tb, r) * a.s;
            }
        }
    }
    acc
}

/// The K formats' portable loops: integer sums per sub-block times its integer scale, as
/// candle sums them.
fn portable_pass_k<const C: usize>(
    tiles: &Tiles,
    t: usize,
    columns: [&[ActivationsK]; C],
) -> [[f32; TILE]; C] {
    let mut acc = [[0f32; TILE]; C];
    let mut values = vec![[0i32; SUPER_BLOCK]; TILE];
    let sub = SUPER_BLOCK / tiles.format.sub_blocks();
    for b in 0..tiles.blocks {
        let tb = t * tiles.blocks + b;
        for (r, v) in values.iter_mut().enumerate() {
            tiles.decode(tb, r, v);
        }
        for (acc, column) in acc.iter_mut().zip(&columns) {
            let a = &column[b];
            for (r, (o, v)) in acc.iter_mut().zip(&values).enumerate() {
                let mut sum = 0;
                for (s, (v, q)) in v.chunks_exact(sub).zip(a.q.chunks_exact(sub)).enumerate() {
                    sum += tiles.sub_scale(tb, s, r) * dot(v, q);
                }
                let mut mins = 0;
                if tiles.format.has_min() {
                    for unit in 0..tiles.format.units() {
                        let q_sum = i32::from(a.unit_sums[unit]);
                        mins += tiles.sub_min(tb, unit, r) * q_sum;
                    }
                }
                *o += tiles.scale(tb, r) * a.d * sum as f32 - tiles.min(tb, r) * a.d * mins as f32;
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{self, GgmlType};
    use candle_core::quantized::{QStorage, QTensor};
    use candle_core::{Device, Tensor};
    use std::borrow::Cow;
    use std::sync::Arc;

    #[test]
    fn every_half_widens_as_the_half_crate_widens_it() {
        for bits in 0..=u16::MAX {
            let half = f16::from_bits(bits);
            let (ours, theirs) = (widen_half_arithmetic(half), half.to_f32());
            if theirs.is_nan() {
                assert!(ours.is_nan(), "{bits:#06x}: {ours}");
            } else {
                assert_eq!(
                    ours.to_bits(),
                    theirs.to_bits(),
                    "{bits:#06x}: {ours} against {theirs}"
                );
            }
        }
    }

    /// `n` random values, rounded to f16 as the KV cache holds them.
    fn random_halves(n: usize) -> Result<Vec<f16>> {
        let values: Vec<f32> = Tensor::randn(0f32, 1.0, (n,), &Device::Cpu)?.to_vec1()?;
        Ok(values.into_iter().map(f16::from_f32).collect())
    }

    #[test]
    fn dot_products_match_a_double_sum_for_every_kernel_and_length() -> Result<()> {
        let a: Vec<f32> = Tensor::randn(0f32, 1.0, (71,), &Device::Cpu)?.to_vec1()?;
        let rows = random_halves(2 * 71)?;
        for kernel in Kernel::available() {
            // Two rows of n values each: the vector loops' tails run too.
            for n in [1, 5, 8, 16, 64, 71] {
                let mut out = [f32::NAN; 2];
                dot_half_rows(kernel, &a[..n], &rows[..2 * n], &mut out);
                for (row, ours) in rows.chunks_exact(n).zip(out) {
                    let expected = a[..n].iter().zip(row).map(|(a, b)| *a as f64 * b.to_f64());
                    assert_near_exact(ours, expected.sum(), format_args!("{kernel:?} n={n}"));
                }
            }
        }
        Ok(())
    }

    /// `ours` within 1e-4 of the double-precision `exact`.
    fn assert_near_exact(ours: f32, exact: f64, what: std::fmt::Arguments) {
        assert!(
            (ours as f64 - exact).abs() < 1e-4,
            "{what}: {ours} against {exact}"
        );
    }

    #[test]
    fn weighted_sums_match_a_double_sum_for_every_kernel_group_and_width() -> Result<()> {
        let keys = 37;
        // 1-9 heads take every grouping of 4, 3, 2 and 1; widths 40 and 80 leave a tail
        // past the whole 32-value runs, and 16 has none of them.
        for kernel in Kernel::available() {
            for heads in 1..=9 {
                for dim in [16, 40, 64, 80] {
                    let weights: Vec<f32> =
                        Tensor::rand(0f32, 1.0, (heads * keys,), &Device::Cpu)?.to_vec1()?;
                    let rows = random_halves(keys * dim)?;
                    let mut out = vec![f32::NAN; heads * dim];
                    weighted_sum_rows(kernel, &weights, &rows, dim, &mut out);
                    for (h, out) in out.chunks_exact(dim).enumerate() {
                        for (i, &ours) in out.iter().enumerate() {
                            let expected = (0..keys)
                                .map(|t| weights[h * keys + t] as f64 * rows[t * dim + i].to_f64());
                            let what = format_args!(
                                "{kernel:?}, {heads} heads × {dim}, head {h} value {i}"
                            );
                            assert_near_exact(ours, expected.sum(), what);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn rounding_matches_f32_round_with_ties_infinities_and_nan() {
        let mut values = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30];
        for i in -600..=600 {
            let v = i as f32 / 4.0;
            values.extend([v, v.next_up(), v.next_down()]);
        }
        for v in values {
            assert_eq!(round_to_i8(v), v.round() as i8, "{v}");
        }
        let block: Vec<f32> = (0..32).map(|i| (i as f32 - 20.5) * 0.3).collect();
        let mut with_nan = block.clone();
        with_nan[3] = f32::NAN;
        let expected = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(abs_max(&block), expected);
        assert_eq!(abs_max(&with_nan), expected);
    }

    /// Random bytes are valid blocks for these formats once the f16 scales are tamed.
    fn random_weights(format: Format, rows: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut bytes: Vec<u8> = (0..rows * k / format.block_values() * format.block_bytes())
            .map(|_| next() as u8)
            .collect();
        let (scale_at, min_at) = match format {
            Format::Q6K => (208, None),
            Format::Q4_1 | Format::Q5_1 | Format::Q4K | Format::Q5K => (0, Some(2)),
            _ => (0, None),
        };
        for block in bytes.chunks_exact_mut(format.block_bytes()) {
            let d = f16::from_f32((next() % 1000) as f32 / 20_000.0 + 0.001);
            block[scale_at..scale_at + 2].copy_from_slice(&d.to_le_bytes());
            if let Some(at) = min_at {
                let m = f16::from_f32((next() % 1000) as f32 / 10_000.0 - 0.05);
                block[at..at + 2].copy_from_slice(&m.to_le_bytes());
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
            Format::Q4K => run::<k_quants::BlockQ4K>(weights, x, mkn),
            Format::Q5K => run::<k_quants::BlockQ5K>(weights, x, mkn),
            Format::Q6K => run::<k_quants::BlockQ6K>(weights, x, mkn),
        }
    }

    /// candle quantizes activations the same way and sums each block exactly: every kernel
    /// agrees with it to float-summation noise.
    #[test]
    fn every_kernel_and_format_matches_candles_quantized_matmul() -> Result<()> {
        let (n, k) = (48, 512);
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

    /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q5_K and Q6_K used where they lie: generation's row
    /// kernels and the prompt's tiles repacked on the fly agree with candle, and rows
    /// dequantize as candle's.
    #[test]
    fn in_place_formats_match_candle() -> Result<()> {
        let n = 48;
        for format in Format::ALL.into_iter().filter(|&f| InPlace::takes(f)) {
            // 18 blocks a row against candle (whose checked builds want an even count), 17
            // and 19 against the tiles (which are checked against candle above): the AVX-512
            // row kernels take blocks in fours, the last four masked to what is left (Q8_0 in
            // pairs, an odd one the portable way). The K formats take any count of
            // super-blocks.
            let shapes: &[(usize, u64)] = if format.is_k() {
                &[(512, 13), (768, 17)]
            } else {
                &[(576, 13), (544, 17), (608, 19)]
            };
            for &(k, seed) in shapes {
                let weights = random_weights(format, n, k, seed);
                let mut bytes = vec![0u8; 10];
                bytes.extend(&weights);
                let bytes: SharedBytes = Arc::new(bytes);
                let matrix = InPlace::new(format, bytes.clone(), 10, n, k)?;
                let tiles = Tiles::new(format, &weights, n, k)?;
                for m in [1, 5, 13] {
                    let x: Vec<f32> =
                        Tensor::randn(0f32, 1.0, (m * k,), &Device::Cpu)?.to_vec1()?;
                    let expected = if format.is_k() || k % 64 == 0 {
                        candle_matmul(format, &weights, &x, (m, k, n))?
                    } else {
                        tiles.matmul_with(Kernel::Portable, &x, m)?
                    };
                    for kernel in Kernel::available() {
                        let ours = matrix.matmul_with(kernel, &x, m)?;
                        let worst = worst_difference(&expected, &ours);
                        let scale = largest(&expected);
                        assert!(
                            worst <= 1e-5 * scale.max(1.0),
                            "{format:?} k={k} {kernel:?} m={m}: {worst} of {scale}"
                        );
                    }
                }
                let dequantized: Vec<f32> = quantized(format, &weights, n, k)?
                    .dequantize(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1()?;
                let mut row = vec![0f32; k];
                for r in [0, 17, 47] {
                    matrix.dequantize_row(r, &mut row)?;
                    assert_eq!(row, dequantized[r * k..(r + 1) * k], "{format:?} row {r}");
                }
                assert!(InPlace::new(format, bytes.clone(), 11, n, k).is_err());
                assert!(InPlace::new(format, bytes, 10, 40, k).is_err());
            }
        }
        let weights = random_weights(Format::Q4K, 16, 256, 1);
        assert!(InPlace::new(Format::Q4K, Arc::new(weights), 0, 16, 256).is_err());
        Ok(())
    }

    #[test]
    fn every_format_matches_dequantize_then_matmul() -> Result<()> {
        let (n, k) = (32, 256);
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
            for row in x.chunks_exact(k) {
                if format.is_k() {
                    let mut blocks = vec![ActivationsK::ZERO; k / SUPER_BLOCK];
                    quantize_row_k(row, &mut blocks);
                    seen.extend(blocks.iter().flat_map(|b| b.q.map(|q| b.d * f32::from(q))));
                } else {
                    let mut blocks = vec![Activations::ZERO; k / BLOCK];
                    quantize_row(row, &mut blocks);
                    seen.extend(blocks.iter().flat_map(|b| b.q.map(|q| b.d * f32::from(q))));
                }
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

    /// Matrices of every kind against one row, streamed together, give what each gives
    /// alone; with 44 f16 rows (not whole tiles) among them, each runs on its own.
    #[test]
    fn products_run_together_match_each_run_alone() -> Result<()> {
        let k = 512;
        let in_place = |format: Format, n: usize, seed: u64| -> Result<Box<dyn Repacked>> {
            let bytes: SharedBytes = Arc::new(random_weights(format, n, k, seed));
            Ok(Box::new(InPlace::new(format, bytes, 0, n, k)?))
        };
        let half_rows = |n: usize| -> Result<Box<dyn Repacked>> {
            let values = Tensor::randn(0f32, 1.0, (n * k,), &Device::Cpu)?.to_vec1::<f32>()?;
            let bytes: Vec<u8> = values
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect();
            Ok(Box::new(HalfRows::new(Arc::new(bytes), 0, n, k)?))
        };
        let matrices = [
            Box::new(Tiles::new(
                Format::Q4_0,
                &random_weights(Format::Q4_0, 48, k, 3),
                48,
                k,
            )?) as Box<dyn Repacked>,
            in_place(Format::Q4_1, 16, 5)?,
            half_rows(44)?,
            in_place(Format::Q6K, 80, 7)?,
            half_rows(32)?,
        ];
        let x: Vec<f32> = Tensor::randn(0f32, 1.0, (k,), &Device::Cpu)?.to_vec1()?;
        let subsets: [&[usize]; 2] = [&[0, 1, 3, 4], &[0, 1, 2, 3, 4]];
        for (kernel, subset) in Kernel::available()
            .into_iter()
            .flat_map(|kernel| subsets.map(|subset| (kernel, subset)))
        {
            let prepared = subset
                .iter()
                .map(|&i| matrices[i].prepare_with(kernel, &x))
                .collect::<Result<Vec<_>>>()?;
            let products: Vec<&dyn RowProduct> = prepared.iter().map(|p| p.as_ref()).collect();
            let together = run_products(&products);
            assert_eq!(together.len(), subset.len());
            for (&i, got) in subset.iter().zip(&together) {
                let alone = matrices[i].matmul_with(kernel, &x, 1)?;
                assert_eq!(got, &alone, "{kernel:?}, matrix {i} of {subset:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn f16_rows_match_an_f32_matmul_of_the_same_weights() -> Result<()> {
        // k not a multiple of 16 or 8: the SIMD loops' tails run too (219: half a cache line
        // of 16 values after the whole ones); 44 rows are a whole AVX-512 prompt panel of 32
        // and a part of one.
        for k in [203, 219] {
            f16_rows_match_for(44, k)?;
        }
        Ok(())
    }

    fn f16_rows_match_for(n: usize, k: usize) -> Result<()> {
        let weights =
            Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?.to_dtype(candle_core::DType::F16)?;
        let mut bytes: Vec<u8> = vec![7; 6];
        bytes.extend(
            weights
                .flatten_all()?
                .to_vec1::<f16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes()),
        );
        let bytes: SharedBytes = Arc::new(bytes);
        let rows = HalfRows::new(bytes.clone(), 6, n, k)?;
        let weights = weights.to_dtype(candle_core::DType::F32)?;
        let mut row = vec![0f32; k];
        for r in [0, 5, 43] {
            rows.dequantize_row(r, &mut row)?;
            assert_eq!(row, weights.get(r)?.to_vec1::<f32>()?, "k={k}, row {r}");
        }
        for m in [1, 2, 3, 5, 9, 17, 29] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
            let expected: Vec<f32> = x.matmul(&weights.t()?)?.flatten_all()?.to_vec1()?;
            let x: Vec<f32> = x.flatten_all()?.to_vec1()?;
            for kernel in Kernel::available() {
                let got = rows.matmul_with(kernel, &x, m)?;
                let worst = worst_difference(&got, &expected);
                assert!(
                    worst <= 1e-4 * largest(&expected),
                    "{kernel:?} k={k} m={m}: {worst}"
                );
            }
        }
        assert!(HalfRows::new(bytes.clone(), 8, n, k).is_err());
        assert!(HalfRows::new(bytes.clone(), 6, 10, k).is_err());
        assert!(HalfRows::new(bytes, 6, usize::MAX / 2, k).is_err());
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
