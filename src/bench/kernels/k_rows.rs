//! Q5_K and Q6_K rows as the file stores them, against Q8_K activations: the generation
//! kernels of [`super::InPlace`] for the K formats llama.cpp uses in place (it repacks only
//! Q4_K here). Each super-block's values are unpacked in registers, multiplied with
//! `maddubs` (6-bit weights times 8-bit activations fit its 16 bits), and scaled per
//! sub-block with a 16-bit multiply-add; Q6_K's +32 and Q5_K's minimums come off once per
//! super-block, through the activations' sums.

use super::{ActivationsK, Format, Unpacked, BLOCK};
use half::f16;

/// One row against `x`, with candle's arithmetic: Q6_K sums d · Σ sc · Σ (v − 32)·q per
/// 16 values; Q5_K sums d · Σ sc · Σ v·q per 32 values, less dmin · Σ m · Σq.
pub fn portable_dot(format: Format, row: &[u8], x: &[ActivationsK]) -> f32 {
    row.chunks_exact(format.block_bytes())
        .zip(x)
        .map(|(block, a)| {
            let u = Unpacked::new(format, block);
            let d = f16::from_bits(u.scales.scale).to_f32() * a.d;
            let span = if format == Format::Q6K { 16 } else { BLOCK };
            let bias = format.bias();
            let sum: i32 = u
                .values
                .chunks_exact(span)
                .zip(a.q.chunks_exact(span))
                .zip(u.scales.sub_scales)
                .map(|((values, q), scale)| {
                    let scale = if format == Format::Q6K {
                        i32::from(scale as i8)
                    } else {
                        i32::from(scale)
                    };
                    let dot: i32 = values
                        .iter()
                        .zip(q)
                        .map(|(&v, &q)| (i32::from(v) - bias) * i32::from(q))
                        .sum();
                    scale * dot
                })
                .sum();
            let mins: i32 = u
                .scales
                .sub_mins
                .iter()
                .zip(a.unit_sums)
                .map(|(&m, s)| i32::from(m) * i32::from(s))
                .sum();
            d * sum as f32 - f16::from_bits(u.scales.min).to_f32() * a.d * mins as f32
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use super::super::x86::{half_at as half, PREFETCH};
    use super::super::{Part, Scales, SUPER_BLOCK, TILE};
    use super::{ActivationsK, Format};
    use std::arch::x86_64::*;

    /// For each of the 4 registers of a super-block's products (32 pair sums each), the
    /// index of each lane's scale: Q6_K has one per 8 lanes (16 values), Q5_K one per 16.
    const fn picks(lanes_per_scale: usize) -> [[i16; 32]; 4] {
        let mut picks = [[0; 32]; 4];
        let mut j = 0;
        while j < 4 {
            let mut lane = 0;
            while lane < 32 {
                picks[j][lane] = (j * (32 / lanes_per_scale) + lane / lanes_per_scale) as i16;
                lane += 1;
            }
            j += 1;
        }
        picks
    }

    static Q6K_PICKS: [[i16; 32]; 4] = picks(8);
    static Q5K_PICKS: [[i16; 32]; 4] = picks(16);

    #[inline(always)]
    unsafe fn prefetch(block: *const u8, bytes: usize) {
        for line in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH + line) as *const i8);
        }
    }

    #[inline(always)]
    unsafe fn load(at: *const i8) -> __m512i {
        _mm512_loadu_si512(at as *const _)
    }

    /// The 256 values of a Q6_K super-block (stored, +32), 64 a register: each 128 are 64
    /// bytes of low nibbles and 32 of high bit pairs.
    #[inline(always)]
    unsafe fn q6k_values(b: *const u8) -> [__m512i; 4] {
        let nibble = _mm512_set1_epi8(0x0f);
        let pair = _mm512_set1_epi8(0x30);
        // The second 32 values of each 64 take the next bit pair of the same high bytes.
        let shifts = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(2));
        let mut values = [_mm512_setzero_si512(); 4];
        for n in 0..2 {
            let low = load(b.add(64 * n) as *const i8);
            let high = _mm512_srlv_epi16(
                _mm512_broadcast_i64x4(_mm256_loadu_si256(b.add(128 + 32 * n) as *const __m256i)),
                shifts,
            );
            // (nibbles & 0x0f) | high pair: ternary logic 0xEA is (A & B) | C.
            values[2 * n] = _mm512_ternarylogic_epi32::<0xEA>(
                low,
                nibble,
                _mm512_and_si512(_mm512_slli_epi16::<4>(high), pair),
            );
            values[2 * n + 1] = _mm512_ternarylogic_epi32::<0xEA>(
                _mm512_srli_epi16::<4>(low),
                nibble,
                _mm512_and_si512(high, pair),
            );
        }
        values
    }

    /// `sums` plus a super-block's values times its activations, each pair of products times
    /// its lane's scale, which `picks` choose from `scales`.
    #[inline(always)]
    unsafe fn scaled_sums(
        mut sums: __m512i,
        values: [__m512i; 4],
        a: &ActivationsK,
        picks: &[__m512i; 4],
        scales: __m512i,
    ) -> __m512i {
        for (j, values) in values.into_iter().enumerate() {
            sums = _mm512_dpwssd_epi32(
                sums,
                _mm512_maddubs_epi16(values, load(a.q.as_ptr().add(64 * j))),
                _mm512_permutexvar_epi16(picks[j], scales),
            );
        }
        sums
    }

    /// [`super::portable_dot`] for Q6_K with AVX-512 VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot_q6k_vnni(row: &[u8], x: &[ActivationsK]) -> f32 {
        let picks = Q6K_PICKS.map(|p| _mm512_loadu_si512(p.as_ptr() as *const _));
        let mut acc = _mm512_setzero_ps();
        for (block, a) in row.chunks_exact(210).zip(x) {
            let b = block.as_ptr();
            prefetch(b, 210);
            let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192) as *const __m128i));
            let wide_scales = _mm512_castsi256_si512(scales);
            // −32 · Σ sc · Σq of each 16 values: the +32 every stored value carries.
            let bias = _mm256_madd_epi16(
                scales,
                _mm256_loadu_si256(a.sums.as_ptr() as *const __m256i),
            );
            let sums = scaled_sums(
                _mm512_sub_epi32(
                    _mm512_setzero_si512(),
                    _mm512_zextsi256_si512(_mm256_slli_epi32::<5>(bias)),
                ),
                q6k_values(b),
                a,
                &picks,
                wide_scales,
            );
            let d = _mm512_set1_ps(half(b, 208) * a.d);
            acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sums), acc);
        }
        _mm512_reduce_add_ps(acc)
    }

    /// The high bits of `qh`, shifted so that the one unit pair `i` reads sits at bit 4.
    #[inline(always)]
    unsafe fn fifth_bits(qh: __m512i, i: usize) -> __m512i {
        match i {
            0 => _mm512_slli_epi16::<4>(qh),
            1 => _mm512_slli_epi16::<2>(qh),
            2 => qh,
            _ => _mm512_srli_epi16::<2>(qh),
        }
    }

    /// The 256 values of a Q5_K super-block, 64 a register: each 32 bytes of nibbles hold
    /// 64 values, their fifth bits one bit pair of the 32 high bytes.
    #[inline(always)]
    unsafe fn q5k_values(b: *const u8) -> [__m512i; 4] {
        let nibble = _mm512_set1_epi8(0x0f);
        let fifth = _mm512_set1_epi8(0x10);
        // Low nibbles (the first 32 values) in the lower half, high ones in the upper.
        let nibble_shifts = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(4));
        let high_shifts = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(1));
        let qh = _mm512_srlv_epi16(
            _mm512_broadcast_i64x4(_mm256_loadu_si256(b.add(16) as *const __m256i)),
            high_shifts,
        );
        let mut values = [_mm512_setzero_si512(); 4];
        for (i, values) in values.iter_mut().enumerate() {
            let nibbles = _mm512_srlv_epi16(
                _mm512_broadcast_i64x4(_mm256_loadu_si256(b.add(48 + 32 * i) as *const __m256i)),
                nibble_shifts,
            );
            *values = _mm512_ternarylogic_epi32::<0xEA>(
                nibbles,
                nibble,
                _mm512_and_si512(fifth_bits(qh, i), fifth),
            );
        }
        values
    }

    /// A Q5_K super-block's eight 6-bit scales and eight minimums, as 16-bit lanes:
    /// [`super::super::scales_and_mins`] in registers. The scalar one, called for each
    /// super-block, took over a third of the kernel's time, and one thread streamed Q5_K at
    /// 22 GB/s against 31-35 for the other formats.
    #[inline(always)]
    unsafe fn q5k_scales_and_mins(block: *const u8) -> (__m128i, __m128i) {
        // Words 0-2 of the 12 packed bytes at 4 (w0, w1, w2); the fourth lane is not used.
        let words = _mm_loadu_si128(block.add(4) as *const __m128i);
        let low = _mm_and_si128(words, _mm_set1_epi32(0x3f3f_3f3f));
        // Scales 4-7: w2's low nibbles and w0's top bit pairs; minimums 4-7: w2's high
        // nibbles and w1's top bit pairs.
        let nibbles = _mm_and_si128(
            _mm_srlv_epi32(
                _mm_shuffle_epi32::<0b1010_1010>(words),
                _mm_setr_epi32(0, 4, 0, 0),
            ),
            _mm_set1_epi32(0x0f0f_0f0f),
        );
        let top = _mm_and_si128(_mm_srli_epi32::<2>(words), _mm_set1_epi32(0x3030_3030));
        // The eight scales in the low 8 bytes, the eight minimums in the high.
        let both = _mm_unpacklo_epi32(low, _mm_or_si128(nibbles, top));
        (
            _mm_cvtepu8_epi16(both),
            _mm_cvtepu8_epi16(_mm_unpackhi_epi64(both, both)),
        )
    }

    /// `min_acc` plus a Q5_K super-block's dmin · d · Σ m · Σq, over 4 lanes.
    #[inline(always)]
    unsafe fn add_minimums(
        min_acc: __m128,
        b: *const u8,
        mins: __m128i,
        a: &ActivationsK,
    ) -> __m128 {
        let min_sums = _mm_madd_epi16(
            mins,
            _mm_loadu_si128(a.unit_sums.as_ptr() as *const __m128i),
        );
        _mm_fmadd_ps(
            _mm_set1_ps(half(b, 2) * a.d),
            _mm_cvtepi32_ps(min_sums),
            min_acc,
        )
    }

    #[inline(always)]
    unsafe fn sum_lanes(v: __m128) -> f32 {
        let mut lanes = [0f32; 4];
        _mm_storeu_ps(lanes.as_mut_ptr(), v);
        lanes.iter().sum()
    }

    /// [`super::portable_dot`] for Q5_K with AVX-512 VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot_q5k_vnni(row: &[u8], x: &[ActivationsK]) -> f32 {
        let picks = Q5K_PICKS.map(|p| _mm512_loadu_si512(p.as_ptr() as *const _));
        let mut acc = _mm512_setzero_ps();
        let mut min_acc = _mm_setzero_ps();
        for (block, a) in row.chunks_exact(176).zip(x) {
            let b = block.as_ptr();
            prefetch(b, 176);
            let (scales, mins) = q5k_scales_and_mins(b);
            min_acc = add_minimums(min_acc, b, mins, a);
            let sums = scaled_sums(
                _mm512_setzero_si512(),
                q5k_values(b),
                a,
                &picks,
                _mm512_castsi128_si512(scales),
            );
            let d = _mm512_set1_ps(half(b, 0) * a.d);
            acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sums), acc);
        }
        _mm512_reduce_add_ps(acc) - sum_lanes(min_acc)
    }

    /// Repacks `bytes`, the file's 16 rows of `blocks` Q5_K or Q6_K super-blocks, into `tile`,
    /// the arrays of a wide one-tile matrix: each value a byte, 4 of each row side by side.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn repack_wide(format: Format, blocks: usize, bytes: &[u8], tile: &mut Part) {
        let size = format.block_bytes();
        let mut values = [0u8; SUPER_BLOCK];
        for (r, row) in bytes.chunks_exact(blocks * size).enumerate().take(TILE) {
            for (b, block) in row.chunks_exact(size).enumerate() {
                let at = block.as_ptr();
                let registers = if format == Format::Q6K {
                    q6k_values(at)
                } else {
                    q5k_values(at)
                };
                for (i, register) in registers.into_iter().enumerate() {
                    _mm512_storeu_si512(values.as_mut_ptr().add(64 * i) as *mut _, register);
                }
                let quants = &mut tile.quants[b * TILE * SUPER_BLOCK..][..TILE * SUPER_BLOCK];
                for (group, four) in values.chunks_exact(4).enumerate() {
                    quants[(group * TILE + r) * 4..][..4].copy_from_slice(four);
                }
                tile.pack_scales(format, b, r, &Scales::of(format, block));
            }
        }
    }

    /// `maddubs` of 32 unsigned values with 32 activations, each pair of products times its
    /// 16-bit scale: 8 sums.
    #[inline(always)]
    unsafe fn scaled(values: __m256i, q: *const i8, scales: __m256i) -> __m256i {
        let products = _mm256_maddubs_epi16(values, _mm256_loadu_si256(q as *const __m256i));
        _mm256_madd_epi16(products, scales)
    }

    /// Q6_K's scales s and s + 1 of its 16 (`bytes`) across the first and second 16 values,
    /// picked with a shuffle: a scalar load and broadcast for each had cost more per
    /// super-block than the values' arithmetic.
    #[inline(always)]
    unsafe fn scale_pair(bytes: __m128i, s: usize) -> __m256i {
        let repeat = |byte: usize| (0x0101_0101_0101_0101u64 * byte as u64) as i64;
        _mm256_cvtepi8_epi16(_mm_shuffle_epi8(
            bytes,
            _mm_set_epi64x(repeat(s + 1), repeat(s)),
        ))
    }

    /// Word `unit` of `words` (8 of them, in both halves) across all 16.
    #[inline(always)]
    unsafe fn word_across(words: __m256i, unit: usize) -> __m256i {
        let pick = (((2 * unit + 1) << 8) | (2 * unit)) as i16;
        _mm256_shuffle_epi8(words, _mm256_set1_epi16(pick))
    }

    /// [`dot_q6k_vnni`] with AVX2, 32 values a register.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q6k(row: &[u8], x: &[ActivationsK]) -> f32 {
        let nibble = _mm256_set1_epi8(0x0f);
        let pair = _mm256_set1_epi8(0x03);
        let mut acc = _mm256_setzero_ps();
        for (block, a) in row.chunks_exact(210).zip(x) {
            let b = block.as_ptr();
            prefetch(b, 210);
            let scale_bytes = _mm_loadu_si128(b.add(192) as *const __m128i);
            let scales = _mm256_cvtepi8_epi16(scale_bytes);
            let bias = _mm256_madd_epi16(
                scales,
                _mm256_loadu_si256(a.sums.as_ptr() as *const __m256i),
            );
            let mut sums = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(bias));
            for n in 0..2 {
                let first = _mm256_loadu_si256(b.add(64 * n) as *const __m256i);
                let second = _mm256_loadu_si256(b.add(64 * n + 32) as *const __m256i);
                let high = _mm256_loadu_si256(b.add(128 + 32 * n) as *const __m256i);
                let lows = [
                    first,
                    second,
                    _mm256_srli_epi16::<4>(first),
                    _mm256_srli_epi16::<4>(second),
                ];
                let highs = [
                    high,
                    _mm256_srli_epi16::<2>(high),
                    _mm256_srli_epi16::<4>(high),
                    _mm256_srli_epi16::<6>(high),
                ];
                for (j, (low, high)) in lows.into_iter().zip(highs).enumerate() {
                    let values = _mm256_or_si256(
                        _mm256_and_si256(low, nibble),
                        _mm256_slli_epi16::<4>(_mm256_and_si256(high, pair)),
                    );
                    let s = 8 * n + 2 * j;
                    let q = a.q.as_ptr().add(128 * n + 32 * j);
                    sums = _mm256_add_epi32(sums, scaled(values, q, scale_pair(scale_bytes, s)));
                }
            }
            let d = _mm256_set1_ps(half(b, 208) * a.d);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sums), acc);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        lanes.iter().sum()
    }

    /// [`dot_q5k_vnni`] with AVX2, 32 values a register.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q5k(row: &[u8], x: &[ActivationsK]) -> f32 {
        let nibble = _mm256_set1_epi8(0x0f);
        let bit = _mm256_set1_epi8(0x01);
        let mut acc = _mm256_setzero_ps();
        let mut min_acc = _mm_setzero_ps();
        for (block, a) in row.chunks_exact(176).zip(x) {
            let b = block.as_ptr();
            prefetch(b, 176);
            let (scales, mins) = q5k_scales_and_mins(b);
            min_acc = add_minimums(min_acc, b, mins, a);
            let unit_scales = _mm256_broadcastsi128_si256(scales);
            let qh = _mm256_loadu_si256(b.add(16) as *const __m256i);
            let mut sums = _mm256_setzero_si256();
            for i in 0..4 {
                let nibbles = _mm256_loadu_si256(b.add(48 + 32 * i) as *const __m256i);
                for upper in 0..2 {
                    let unit = 2 * i + upper;
                    let low = _mm256_srl_epi16(nibbles, _mm_cvtsi32_si128(4 * upper as i32));
                    let high = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(unit as i32));
                    let values = _mm256_or_si256(
                        _mm256_and_si256(low, nibble),
                        _mm256_slli_epi16::<4>(_mm256_and_si256(high, bit)),
                    );
                    let q = a.q.as_ptr().add(32 * unit);
                    sums =
                        _mm256_add_epi32(sums, scaled(values, q, word_across(unit_scales, unit)));
                }
            }
            let d = _mm256_set1_ps(half(b, 0) * a.d);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sums), acc);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        lanes.iter().sum::<f32>() - sum_lanes(min_acc)
    }
}
