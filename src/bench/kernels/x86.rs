//! The tile kernels for x86: AVX-512 VNNI (`dpbusd`: 4 unsigned × signed byte products
//! summed into each 32-bit lane) and AVX2 (`maddubs` then `madd`, the same sums in two steps).

use super::{
    weighted_head_groups, Activations, ActivationsK, Format, Tiles, Widen, BLOCK, GROUPS, TILE,
};
use half::f16;
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

/// [`super::dot_half_rows`] with AVX-512: 16 keys' values widened a step.
#[target_feature(enable = "avx512f,f16c,fma")]
pub unsafe fn dot_half_rows_avx512(a: &[f32], rows: &[f16], out: &mut [f32]) {
    let n = a.len();
    let whole = n / 16 * 16;
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(n.max(1))) {
        let mut acc = _mm512_setzero_ps();
        for i in (0..whole).step_by(16) {
            let keys = _mm512_cvtph_ps(_mm256_loadu_si256(row.as_ptr().add(i) as *const __m256i));
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(a.as_ptr().add(i)), keys, acc);
        }
        *o = _mm512_reduce_add_ps(acc) + super::dot_half_portable(&a[whole..], &row[whole..]);
    }
}

/// [`super::dot_half_rows`] with AVX2: 8 keys' values widened a step.
#[target_feature(enable = "avx2,f16c,fma")]
pub unsafe fn dot_half_rows_avx2(a: &[f32], rows: &[f16], out: &mut [f32]) {
    let n = a.len();
    let whole = n / 8 * 8;
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(n.max(1))) {
        let mut acc = _mm256_setzero_ps();
        for i in (0..whole).step_by(8) {
            let keys = _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(i) as *const __m128i));
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), keys, acc);
        }
        let halves = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        let sum = _mm_add_ss(pairs, _mm_movehdup_ps(pairs));
        *o = _mm_cvtss_f32(sum) + super::dot_half_portable(&a[whole..], &row[whole..]);
    }
}

struct Avx512Widen;

impl Widen for Avx512Widen {
    #[inline(always)]
    unsafe fn widen(values: *const f16) -> [f32; 32] {
        let mut out = [0f32; 32];
        for half in 0..2 {
            let wide = _mm512_cvtph_ps(_mm256_loadu_si256(values.add(16 * half) as *const _));
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * half), wide);
        }
        out
    }
}

struct Avx2Widen;

impl Widen for Avx2Widen {
    #[inline(always)]
    unsafe fn widen(values: *const f16) -> [f32; 32] {
        let mut out = [0f32; 32];
        for quarter in 0..4 {
            let wide = _mm256_cvtph_ps(_mm_loadu_si128(values.add(8 * quarter) as *const _));
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * quarter), wide);
        }
        out
    }
}

/// [`super::weighted_sum_rows`] compiled for AVX-512, for shapes it has checked.
#[target_feature(enable = "avx512f,f16c,fma")]
pub unsafe fn weighted_sum_rows_avx512(weights: &[f32], rows: &[f16], dim: usize, out: &mut [f32]) {
    weighted_head_groups::<Avx512Widen>(weights, rows, dim, out)
}

/// [`super::weighted_sum_rows`] compiled for AVX2, for shapes it has checked.
#[target_feature(enable = "avx2,f16c,fma")]
pub unsafe fn weighted_sum_rows_avx2(weights: &[f32], rows: &[f16], dim: usize, out: &mut [f32]) {
    weighted_head_groups::<Avx2Widen>(weights, rows, dim, out)
}

/// How far ahead of the weights being read they are fetched into cache, by every kernel that
/// streams them: the hardware prefetcher stops at each page. One thread streaming m = 1
/// (`CANDLE_NUM_THREADS=1 cargo bench --bench kernels -- streaming`) read 0.77-0.94 of what
/// it reads when only summing at 4 KiB ahead (Q5_K 0.58), 0.89-1.04 at 8 KiB, and no better
/// at 16 or 32 KiB (f16 and the tiles worse): two threads at the box's fast face each need
/// all that one thread can read.
pub(super) const PREFETCH: usize = 8192;

/// Group g (4 bytes) of 8-bit activations, for every 32-bit lane.
#[inline(always)]
unsafe fn group(q: &[i8], g: usize) -> i32 {
    (q.as_ptr() as *const i32).add(g).read_unaligned()
}

/// Fetches into cache what tile-block `tb + ahead` keeps beside its quants (high bits,
/// scales, minimums), `ahead` being as far as [`PREFETCH`] bytes of quants: those arrays are
/// separate streams the hardware prefetcher did not keep up with (a third of Q6_K's
/// generation time stalled on its high-bit masks, by perf).
#[inline(always)]
unsafe fn prefetch_side(tiles: &Tiles, format: Format, wide: bool, tb: usize) {
    let tb = tb + (PREFETCH / (TILE * quant_bytes(format, wide))).max(1);
    // wrapping_add: near the end these point past the arrays, which a prefetch ignores.
    let lines = |start: *const u8, bytes: usize| {
        for offset in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset) as *const i8);
        }
    };
    let high = planes(format, wide) * format.units() * GROUPS;
    lines(
        tiles.high.as_ptr().wrapping_add(tb * high) as *const u8,
        high * 8,
    );
    lines(
        tiles.scales.as_ptr().wrapping_add(tb * TILE) as *const u8,
        2 * TILE,
    );
    if !tiles.mins.is_empty() {
        lines(
            tiles.mins.as_ptr().wrapping_add(tb * TILE) as *const u8,
            2 * TILE,
        );
    }
    let subs = format.sub_blocks() * TILE;
    lines(tiles.sub_scales.as_ptr().wrapping_add(tb * subs), subs);
    let mins = if tiles.sub_mins.is_empty() {
        0
    } else {
        format.units() * TILE
    };
    lines(tiles.sub_mins.as_ptr().wrapping_add(tb * mins), mins);
}

/// Quant bytes per row of a block in tiles of `format`, wide or not ([`Tiles::wide`]).
#[inline(always)]
fn quant_bytes(format: Format, wide: bool) -> usize {
    if wide {
        format.block_values()
    } else {
        format.quant_bytes()
    }
}

/// High-bit planes in tiles of `format`, wide or not.
#[inline(always)]
fn planes(format: Format, wide: bool) -> usize {
    if wide {
        0
    } else {
        format.high_planes()
    }
}

/// The high-bit masks of one unit's 8 groups, for each plane.
#[inline(always)]
unsafe fn high_masks(
    tiles: &Tiles,
    format: Format,
    tb: usize,
    unit: usize,
    plane: usize,
) -> &[u64] {
    let (planes, units) = (format.high_planes(), format.units());
    &tiles.high[((tb * planes + plane) * units + unit) * GROUPS..][..GROUPS]
}

/// One 32-value unit of tile-block tb as 8 registers of unsigned bytes: register g holds
/// values 4g..4g+4 of each of the 16 rows (Q8_0 shifted by 128 to be unsigned).
/// Always inlined, so that a caller's constant `format` and `wide` take the other layouts'
/// code out.
#[inline(always)]
unsafe fn unit_vnni(
    tiles: &Tiles,
    format: Format,
    wide: bool,
    tb: usize,
    unit: usize,
) -> [__m512i; GROUPS] {
    let whole_bytes = wide || format == Format::Q8_0;
    // A unit is 4 lines of nibbles or 8 of whole bytes.
    let lines = if whole_bytes { 8 } else { 4 };
    let base = tiles
        .quants
        .as_ptr()
        .add(tb * TILE * quant_bytes(format, wide) + unit * lines * 64);
    for line in 0..lines {
        _mm_prefetch::<_MM_HINT_T0>(base.add(PREFETCH + line * 64) as *const i8);
    }
    let mut w = [_mm512_setzero_si512(); GROUPS];
    if wide {
        for (g, w) in w.iter_mut().enumerate() {
            *w = _mm512_loadu_si512(base.add(g * 64) as *const _);
        }
        return w;
    }
    if format == Format::Q8_0 {
        let flip = _mm512_set1_epi8(-128);
        for (g, w) in w.iter_mut().enumerate() {
            *w = _mm512_xor_si512(_mm512_loadu_si512(base.add(g * 64) as *const _), flip);
        }
        return w;
    }
    let mask = _mm512_set1_epi8(0x0f);
    for h in 0..4 {
        let chunk = _mm512_loadu_si512(base.add(h * 64) as *const _);
        w[h] = _mm512_and_si512(chunk, mask);
        w[h + 4] = _mm512_and_si512(_mm512_srli_epi16(chunk, 4), mask);
    }
    for plane in 0..format.high_planes() {
        let bit = _mm512_set1_epi8(16 << plane);
        for (w, &mask) in w.iter_mut().zip(high_masks(tiles, format, tb, unit, plane)) {
            *w = _mm512_mask_add_epi8(*w, mask, *w, bit);
        }
    }
    w
}

/// One pass of tile t over C activation rows, 32-value formats, AVX-512 VNNI: per block the
/// 16 rows' values in 8 registers, then 8 `dpbusd` per activation row.
pub unsafe fn pass_vnni<const C: usize>(
    tiles: &Tiles,
    t: usize,
    columns: [&[Activations]; C],
) -> [[f32; TILE]; C] {
    match tiles.format {
        Format::Q4_1 => pass_vnni_as::<C, 1>(tiles, t, columns),
        Format::Q5_0 => pass_vnni_as::<C, 2>(tiles, t, columns),
        Format::Q5_1 => pass_vnni_as::<C, 3>(tiles, t, columns),
        Format::Q8_0 => pass_vnni_as::<C, 4>(tiles, t, columns),
        // Q4_0; the K formats never come here.
        _ => pass_vnni_as::<C, 0>(tiles, t, columns),
    }
}

/// [`pass_vnni`] compiled for one format, `Format::ALL[F]`: without the other formats'
/// branches its loop over the columns unrolls and keeps its accumulators in registers.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn pass_vnni_as<const C: usize, const F: usize>(
    tiles: &Tiles,
    t: usize,
    columns: [&[Activations]; C],
) -> [[f32; TILE]; C] {
    let format = Format::ALL[F];
    let bias = if format == Format::Q8_0 {
        128
    } else {
        format.bias()
    };
    let mut acc = [_mm512_setzero_ps(); C];
    for b in 0..tiles.blocks {
        let tb = t * tiles.blocks + b;
        prefetch_side(tiles, format, false, tb);
        let w = unit_vnni(tiles, format, false, tb, 0);
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
                even = _mm512_dpbusd_epi32(even, w[g], _mm512_set1_epi32(group(&a.q, g)));
                odd = _mm512_dpbusd_epi32(odd, w[g + 1], _mm512_set1_epi32(group(&a.q, g + 1)));
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

/// One pass of tile t over C activation rows, K formats, AVX-512 VNNI: each unit's integer
/// sums times the rows' integer sub-block scales, summed exactly over the super-block, then
/// one float scale per super-block.
pub unsafe fn pass_k_vnni<const C: usize>(
    tiles: &Tiles,
    t: usize,
    columns: [&[ActivationsK]; C],
) -> [[f32; TILE]; C] {
    match (tiles.format, tiles.wide) {
        (Format::Q5K, false) => pass_k_vnni_as::<C, 6, false>(tiles, t, columns),
        (Format::Q5K, true) => pass_k_vnni_as::<C, 6, true>(tiles, t, columns),
        (Format::Q6K, false) => pass_k_vnni_as::<C, 7, false>(tiles, t, columns),
        (Format::Q6K, true) => pass_k_vnni_as::<C, 7, true>(tiles, t, columns),
        // Q4_K, never wide; the 32-value formats never come here.
        _ => pass_k_vnni_as::<C, 5, false>(tiles, t, columns),
    }
}

/// [`pass_k_vnni`] compiled for one format, `Format::ALL[F]`, and layout, as [`pass_vnni_as`]. What the
/// stored values carry besides value × sub-scale (Q4_K's and Q5_K's minimums, Q6_K's +32) is
/// taken out once per super-block with `dpwssd` on pairs of 16-bit sums, which keeps the loop
/// over units down to the `dpbusd`s and one scale multiply per unit.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn pass_k_vnni_as<const C: usize, const F: usize, const WIDE: bool>(
    tiles: &Tiles,
    t: usize,
    columns: [&[ActivationsK]; C],
) -> [[f32; TILE]; C] {
    let format = Format::ALL[F];
    let q6k = format == Format::Q6K;
    let subs = format.sub_blocks();
    let mut acc = [_mm512_setzero_ps(); C];
    for b in 0..tiles.blocks {
        let tb = t * tiles.blocks + b;
        prefetch_side(tiles, format, WIDE, tb);
        let sub_scales = tiles.sub_scales.as_ptr().add(tb * subs * TILE);
        let sub_scale = |s: usize| {
            let bytes = _mm_loadu_si128(sub_scales.add(s * TILE) as *const _);
            if q6k {
                _mm512_cvtepi8_epi32(bytes)
            } else {
                _mm512_cvtepu8_epi32(bytes)
            }
        };
        let mut sums = [_mm512_setzero_si512(); C];
        for unit in 0..format.units() {
            let w = unit_vnni(tiles, format, WIDE, tb, unit);
            // Low nibbles hold values 0..16 of the unit, high ones 16..32: Q6_K's two
            // sub-blocks.
            let (low_scale, high_scale) = if q6k {
                (sub_scale(2 * unit), sub_scale(2 * unit + 1))
            } else {
                let scale = sub_scale(unit);
                (scale, scale)
            };
            for c in 0..C {
                let q = &columns[c].get_unchecked(b).q[unit * BLOCK..][..BLOCK];
                let mut low = _mm512_setzero_si512();
                let mut high = _mm512_setzero_si512();
                for g in 0..GROUPS / 2 {
                    low = _mm512_dpbusd_epi32(low, w[g], _mm512_set1_epi32(group(q, g)));
                    high = _mm512_dpbusd_epi32(high, w[g + 4], _mm512_set1_epi32(group(q, g + 4)));
                }
                let scaled = if q6k {
                    _mm512_add_epi32(
                        _mm512_mullo_epi32(low, low_scale),
                        _mm512_mullo_epi32(high, high_scale),
                    )
                } else {
                    // One scale for the whole unit: one multiply.
                    _mm512_mullo_epi32(_mm512_add_epi32(low, high), low_scale)
                };
                sums[c] = _mm512_add_epi32(sums[c], scaled);
            }
        }
        // Per row, pairs of 16-bit factors for the offset: Q6_K's sub-scales (times the
        // activations' sums of 16), or the minimums (times their sums of 32).
        let (factors, pairs) = if q6k {
            (sub_scales, subs / 2)
        } else {
            (
                tiles.sub_mins.as_ptr().add(tb * format.units() * TILE),
                format.units() / 2,
            )
        };
        let mut pair_factors = [_mm512_setzero_si512(); 8];
        for (p, pair) in pair_factors.iter_mut().enumerate().take(pairs) {
            let first = _mm_loadu_si128(factors.add(2 * p * TILE) as *const _);
            let second = _mm_loadu_si128(factors.add((2 * p + 1) * TILE) as *const _);
            let interleaved = _mm256_set_m128i(
                _mm_unpackhi_epi8(first, second),
                _mm_unpacklo_epi8(first, second),
            );
            *pair = if q6k {
                _mm512_cvtepi8_epi16(interleaved)
            } else {
                _mm512_cvtepu8_epi16(interleaved)
            };
        }
        let scales = _mm512_cvtph_ps(_mm256_loadu_si256(
            tiles.scales.as_ptr().add(tb * TILE) as *const __m256i
        ));
        let min_scales = if format.has_min() {
            _mm512_cvtph_ps(_mm256_loadu_si256(
                tiles.mins.as_ptr().add(tb * TILE) as *const __m256i
            ))
        } else {
            _mm512_setzero_ps()
        };
        for c in 0..C {
            let a = columns[c].get_unchecked(b);
            let activation_sums = if q6k {
                a.sums.as_ptr()
            } else {
                a.unit_sums.as_ptr()
            } as *const i32;
            let mut offset = _mm512_setzero_si512();
            for (p, &pair) in pair_factors.iter().enumerate().take(pairs) {
                let sums_pair = _mm512_set1_epi32(activation_sums.add(p).read_unaligned());
                offset = _mm512_dpwssd_epi32(offset, pair, sums_pair);
            }
            let d = _mm512_set1_ps(a.d);
            if q6k {
                // Values are stored +32.
                sums[c] = _mm512_sub_epi32(sums[c], _mm512_slli_epi32(offset, 5));
            }
            acc[c] = _mm512_fmadd_ps(
                _mm512_mul_ps(scales, d),
                _mm512_cvtepi32_ps(sums[c]),
                acc[c],
            );
            if format.has_min() {
                acc[c] = _mm512_fnmadd_ps(
                    _mm512_mul_ps(min_scales, d),
                    _mm512_cvtepi32_ps(offset),
                    acc[c],
                );
            }
        }
    }
    let mut out = [[0f32; TILE]; C];
    for (o, acc) in out.iter_mut().zip(acc) {
        _mm512_storeu_ps(o.as_mut_ptr(), acc);
    }
    out
}

/// The f16 at `at` of `block`, converted with F16C (the `half` crate's conversion is a call
/// per value).
#[inline(always)]
pub(super) unsafe fn half_at(block: *const u8, at: usize) -> f32 {
    let bits = (block.add(at) as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// `bit` in byte j where bit j of `bits` is set.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn spread_bits(bits: u32, bit: i8) -> __m256i {
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
    _mm256_and_si256(set, _mm256_set1_epi8(bit))
}

/// Rows 8·half..8·half+8 of one unit as 8 registers of bytes, as [`unit_vnni`] (Q8_0 stays
/// signed).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn unit_avx2(tiles: &Tiles, tb: usize, unit: usize, half: usize) -> [__m256i; GROUPS] {
    let format = tiles.format;
    let mut w = [_mm256_setzero_si256(); GROUPS];
    if tiles.wide {
        let base = tiles
            .quants
            .as_ptr()
            .add((tb * format.units() + unit) * TILE * BLOCK + half * 32);
        for (g, w) in w.iter_mut().enumerate() {
            *w = _mm256_loadu_si256(base.add(g * 64) as *const __m256i);
        }
        return w;
    }
    let quant_bytes = format.quant_bytes();
    let base = tiles
        .quants
        .as_ptr()
        .add(tb * TILE * quant_bytes + unit * TILE * BLOCK / 2 + half * 32);
    if format == Format::Q8_0 {
        for (g, w) in w.iter_mut().enumerate() {
            *w = _mm256_loadu_si256(base.add(g * 64) as *const __m256i);
        }
        return w;
    }
    let mask = _mm256_set1_epi8(0x0f);
    for h in 0..4 {
        let chunk = _mm256_loadu_si256(base.add(h * 64) as *const __m256i);
        w[h] = _mm256_and_si256(chunk, mask);
        w[h + 4] = _mm256_and_si256(_mm256_srli_epi16(chunk, 4), mask);
    }
    for plane in 0..format.high_planes() {
        for (w, &mask) in w.iter_mut().zip(high_masks(tiles, format, tb, unit, plane)) {
            *w = _mm256_or_si256(*w, spread_bits((mask >> (32 * half)) as u32, 16 << plane));
        }
    }
    w
}

/// Σ over groups `groups` of w × q, as 8 32-bit lanes. `maddubs` sums pairs into 16 bits,
/// where a pair is at most 2 × 128 × the largest value, so 8 groups of 4-bit values
/// (|pair| ≤ 3840), 4 of 5-bit or 2 of 6-bit share a 16-bit sum before widening.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn unsigned_sums(format: Format, w: &[__m256i], q: &[i8], first: usize) -> __m256i {
    match format.high_planes() {
        0 => shared_sums::<8>(w, q, first),
        1 => shared_sums::<4>(w, q, first),
        _ => shared_sums::<2>(w, q, first),
    }
}

/// [`unsigned_sums`] with `SHARE` groups to a 16-bit sum.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn shared_sums<const SHARE: usize>(w: &[__m256i], q: &[i8], first: usize) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    let mut sums = _mm256_setzero_si256();
    let mut g = 0;
    while g < w.len() {
        let mut products = _mm256_setzero_si256();
        for (j, &w) in w.iter().enumerate().skip(g).take(SHARE) {
            let more = _mm256_maddubs_epi16(w, _mm256_set1_epi32(group(q, first + j)));
            products = _mm256_add_epi16(products, more);
        }
        sums = _mm256_add_epi32(sums, _mm256_madd_epi16(products, ones));
        g += SHARE;
    }
    sums
}

/// One pass of tile t over C activation rows, 32-value formats, AVX2, 8 rows at a time.
/// Q8_0's signed bytes take the sign trick (maddubs wants one operand unsigned) and widen
/// every group.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn pass_avx2<const C: usize>(
    tiles: &Tiles,
    t: usize,
    columns: [&[Activations]; C],
) -> [[f32; TILE]; C] {
    let format = tiles.format;
    let bias = format.bias();
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; C];
    for b in 0..tiles.blocks {
        let tb = t * tiles.blocks + b;
        prefetch_side(tiles, format, false, tb);
        for half in 0..2 {
            let w = unit_avx2(tiles, tb, 0, half);
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
                let mut sums = if format == Format::Q8_0 {
                    let mut sums = _mm256_setzero_si256();
                    for (g, &w) in w.iter().enumerate() {
                        let q = _mm256_set1_epi32(group(&a.q, g));
                        let pairs =
                            _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(q, w));
                        sums = _mm256_add_epi32(sums, _mm256_madd_epi16(pairs, ones));
                    }
                    sums
                } else {
                    unsigned_sums(format, &w, &a.q, 0)
                };
                if bias != 0 {
                    sums = _mm256_sub_epi32(sums, _mm256_set1_epi32(bias * a.sum));
                }
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

/// One pass of tile t over C activation rows, K formats, AVX2: [`pass_k_vnni`] 8 rows at a
/// time.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn pass_k_avx2<const C: usize>(
    tiles: &Tiles,
    t: usize,
    columns: [&[ActivationsK]; C],
) -> [[f32; TILE]; C] {
    let format = tiles.format;
    let subs = format.sub_blocks();
    let eight = |bytes: &[u8], at: usize| _mm_loadl_epi64(bytes.as_ptr().add(at) as *const _);
    let sub_scale = |tb: usize, s: usize, half: usize| {
        let bytes = eight(&tiles.sub_scales, (tb * subs + s) * TILE + half * 8);
        if format == Format::Q6K {
            _mm256_cvtepi8_epi32(bytes)
        } else {
            _mm256_cvtepu8_epi32(bytes)
        }
    };
    let mut acc = [[_mm256_setzero_ps(); 2]; C];
    for b in 0..tiles.blocks {
        let tb = t * tiles.blocks + b;
        prefetch_side(tiles, format, false, tb);
        for half in 0..2 {
            let mut sums = [_mm256_setzero_si256(); C];
            let mut mins = [_mm256_setzero_si256(); C];
            for unit in 0..format.units() {
                let w = unit_avx2(tiles, tb, unit, half);
                let (low_scale, high_scale) = if format == Format::Q6K {
                    (
                        sub_scale(tb, 2 * unit, half),
                        sub_scale(tb, 2 * unit + 1, half),
                    )
                } else {
                    let scale = sub_scale(tb, unit, half);
                    (scale, scale)
                };
                let unit_min = if format.has_min() {
                    let at = (tb * format.units() + unit) * TILE + half * 8;
                    _mm256_cvtepu8_epi32(eight(&tiles.sub_mins, at))
                } else {
                    _mm256_setzero_si256()
                };
                for c in 0..C {
                    let a = columns[c].get_unchecked(b);
                    let q = &a.q[unit * BLOCK..][..BLOCK];
                    let mut low = unsigned_sums(format, &w[..4], q, 0);
                    let mut high = unsigned_sums(format, &w[4..], q, 4);
                    let (low_sum, high_sum) =
                        (i32::from(a.sums[2 * unit]), i32::from(a.sums[2 * unit + 1]));
                    let scaled = if format == Format::Q6K {
                        low = _mm256_sub_epi32(low, _mm256_set1_epi32(32 * low_sum));
                        high = _mm256_sub_epi32(high, _mm256_set1_epi32(32 * high_sum));
                        _mm256_add_epi32(
                            _mm256_mullo_epi32(low, low_scale),
                            _mm256_mullo_epi32(high, high_scale),
                        )
                    } else {
                        let q_sum = _mm256_set1_epi32(low_sum + high_sum);
                        mins[c] = _mm256_add_epi32(mins[c], _mm256_mullo_epi32(unit_min, q_sum));
                        _mm256_mullo_epi32(_mm256_add_epi32(low, high), low_scale)
                    };
                    sums[c] = _mm256_add_epi32(sums[c], scaled);
                }
            }
            let at = tb * TILE + half * 8;
            let scales =
                _mm256_cvtph_ps(_mm_loadu_si128(tiles.scales.as_ptr().add(at) as *const _));
            let min_scales = if format.has_min() {
                _mm256_cvtph_ps(_mm_loadu_si128(tiles.mins.as_ptr().add(at) as *const _))
            } else {
                _mm256_setzero_ps()
            };
            for c in 0..C {
                let d = _mm256_set1_ps(columns[c].get_unchecked(b).d);
                let acc = &mut acc[c][half];
                *acc = _mm256_fmadd_ps(_mm256_mul_ps(scales, d), _mm256_cvtepi32_ps(sums[c]), *acc);
                if format.has_min() {
                    *acc = _mm256_fnmadd_ps(
                        _mm256_mul_ps(min_scales, d),
                        _mm256_cvtepi32_ps(mins[c]),
                        *acc,
                    );
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
