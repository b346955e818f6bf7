//! fitbench's matmul kernels against candle's, per format (the quantized ones and f16), at
//! generation (m = 1) and prompt (m = 512) shapes of a 1.1B model's FFN (2048 → 5632).
//!
//!     cargo bench --bench kernels              # CANDLE_NUM_THREADS sets the threads
//!     cargo bench --bench kernels -- streaming # only the streaming table
//!     cargo bench --bench kernels -- ceiling   # only the in-cache table
//!     cargo bench --bench kernels -- attention # only attention's weighted sum
//!     cargo bench --bench kernels -- gating    # only the feed-forward gate
//!     cargo bench --bench kernels -- portable  # the portable kernel against candle
//!     cargo bench --bench kernels -- streaming Q4_1 Q5K  # only these formats
//!
//! Prints the median of 20 runs for each, and the ratio, for every SIMD kernel this CPU has
//! (AVX2 beside AVX-512: what a desktop without AVX-512 runs). Then generation as it meets memory:
//! m = 1 through 512 MiB of distinct matrices (far more than any cache), as GB/s and as a
//! share of the box's read bandwidth (the same threads summing the same bytes). Then m = 1
//! over a matrix that stays in cache: what the kernel could read if memory kept up. Two
//! threads at this box's fast face each read all one thread can, so the streaming table
//! with `CANDLE_NUM_THREADS=1` is the one that tells whether a kernel keeps up with memory.

use candle_core::quantized::k_quants::{
    BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0,
};
use candle_core::quantized::{GgmlDType, GgmlType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use fitbench::bench::kernels::{
    weighted_sum_rows, Format, HalfRows, InPlace, Kernel, Repacked, Tiles,
};
use fitbench::bench::ops::{gated_times, Gate};
use half::f16;
use std::sync::Arc;
use std::time::Instant;

const DTYPES: [GgmlDType; 9] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::F16,
];

/// The file bytes of an n × k matrix of `dtype`, held as the runner holds them for `kernel`:
/// Q4_1, Q5_0, Q5_1, Q8_0, Q5_K, Q6_K and f16 where they lie, Q4_K repacked into tiles, and
/// Q4_0 into tiles for the SIMD kernels.
fn ours(
    dtype: GgmlDType,
    bytes: Vec<u8>,
    n: usize,
    k: usize,
    kernel: Kernel,
) -> candle_core::Result<Box<dyn Repacked>> {
    match (dtype, Format::of(dtype)) {
        (_, Some(format)) if InPlace::used_for(format, kernel) => {
            Ok(Box::new(InPlace::new(format, Arc::new(bytes), 0, n, k)?))
        }
        (_, Some(format)) => Ok(Box::new(Tiles::new(format, &bytes, n, k)?)),
        _ => Ok(Box::new(HalfRows::new(Arc::new(bytes), 0, n, k)?)),
    }
}

fn median_seconds(run: impl FnMut()) -> f64 {
    median_of(20, run)
}

fn median_of(runs: usize, mut run: impl FnMut()) -> f64 {
    run();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> candle_core::Result<()> {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: a timing run
    // there would only slow the tests down.
    if !std::env::args().any(|a| a == "--bench") {
        println!("timing runs only under `cargo bench --bench kernels`");
        return Ok(());
    }
    let (n, k) = (5632, 2048);
    let args: Vec<String> = std::env::args().collect();
    let named: Vec<GgmlDType> = DTYPES
        .into_iter()
        .filter(|dtype| args.contains(&format!("{dtype:?}")))
        .collect();
    let formats = if named.is_empty() {
        DTYPES.to_vec()
    } else {
        named
    };
    if args.iter().any(|a| a == "streaming") {
        return streaming(&formats, n, k);
    }
    if args.iter().any(|a| a == "ceiling") {
        return ceiling(&formats, k);
    }
    if args.iter().any(|a| a == "attention") {
        attention();
        return Ok(());
    }
    if args.iter().any(|a| a == "gating") {
        gating();
        return Ok(());
    }
    // The portable kernel alone on request: what a CPU without x86 SIMD (a Pi) runs.
    let portable = args.iter().any(|a| a == "portable");
    let kernels: Vec<Kernel> = Kernel::available()
        .into_iter()
        .filter(|&k| (k == Kernel::Portable) == portable)
        .collect();
    println!("| format | m | kernel | candle | fitbench | candle / fitbench |");
    println!("|---|---|---|---|---|---|");
    let held_for = if portable {
        Kernel::Portable
    } else {
        Kernel::best()
    };
    for &dtype in &formats {
        let weights = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
        let quantized = QTensor::quantize(&weights, dtype)?;
        let tiles = ours(dtype, quantized.data()?.to_vec(), n, k, held_for)?;
        let candle = QMatMul::from_qtensor(quantized)?;
        let weight_values: Vec<f32> = weights.flatten_all()?.to_vec1()?;
        for m in [1, 512] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
            let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let theirs = match portable.then(|| plain_loops(dtype, &weight_values, n)) {
                // Seconds a run at m = 512: five runs are enough for its median.
                Some(Some(product)) => median_of(if m == 1 { 20 } else { 5 }, || {
                    std::hint::black_box(product(&values));
                }),
                _ => median_seconds(|| {
                    candle.forward(&x).map(drop).unwrap_or(());
                }),
            };
            for &kernel in &kernels {
                let ours = median_seconds(|| {
                    let _ = std::hint::black_box(tiles.matmul_with(kernel, &values, m));
                });
                println!(
                    "| {dtype:?} | {m} | {kernel:?} | {:.2} ms | {:.2} ms | {:.2} |",
                    theirs * 1e3,
                    ours * 1e3,
                    theirs / ours
                );
            }
        }
    }
    if portable {
        return Ok(());
    }
    streaming(&formats, n, k)?;
    ceiling(&formats, k)
}

/// Activation rows in, the matmul's result out.
type Matmul = Box<dyn Fn(&[f32]) -> Vec<f32>>;

/// A matmul through candle's plain loops for `dtype` (its `vec_dot_unopt`, each weight row
/// against each activation row), which is what candle runs on a CPU without AVX2 or NEON,
/// such as an x86 box older than AVX2. On x86 candle picks AVX2 at run time, so its
/// `forward` here would not show them. None for f16, which has no such loop.
fn plain_loops(dtype: GgmlDType, weights: &[f32], n: usize) -> Option<Matmul> {
    fn product<T: GgmlType + 'static>(weights: &[f32], n: usize) -> Matmul {
        let k = weights.len() / n;
        let mut rows = vec![T::zeros(); weights.len() / T::BLCK_SIZE];
        T::from_float(weights, &mut rows);
        Box::new(move |x: &[f32]| {
            let mut columns = vec![T::VecDotType::zeros(); x.len() / T::VecDotType::BLCK_SIZE];
            T::VecDotType::from_float(x, &mut columns);
            let per_row = k / T::BLCK_SIZE;
            let per_column = k / T::VecDotType::BLCK_SIZE;
            columns
                .chunks_exact(per_column)
                .flat_map(|column| {
                    rows.chunks_exact(per_row)
                        .map(|row| T::vec_dot_unopt(k, row, column))
                        .collect::<Vec<_>>()
                })
                .collect()
        })
    }
    Some(match dtype {
        GgmlDType::Q4_0 => product::<BlockQ4_0>(weights, n),
        GgmlDType::Q4_1 => product::<BlockQ4_1>(weights, n),
        GgmlDType::Q5_0 => product::<BlockQ5_0>(weights, n),
        GgmlDType::Q5_1 => product::<BlockQ5_1>(weights, n),
        GgmlDType::Q8_0 => product::<BlockQ8_0>(weights, n),
        GgmlDType::Q4K => product::<BlockQ4K>(weights, n),
        GgmlDType::Q5K => product::<BlockQ5K>(weights, n),
        GgmlDType::Q6K => product::<BlockQ6K>(weights, n),
        _ => return None,
    })
}

/// Generation's attention-weighted sum of the cache's f16 value rows, per group of query
/// heads, against adding each key's share into the outputs in memory (the loop it
/// replaced), one thread, with the best kernel.
fn attention() {
    println!("| heads × dim | keys | key at a time | weighted_sum_rows | ratio |");
    println!("|---|---|---|---|---|");
    for (heads, dim, keys) in [(8, 64, 128), (8, 64, 512), (3, 64, 128), (4, 256, 128)] {
        let weights: Vec<f32> = (0..heads * keys).map(|i| (i % 7) as f32 * 0.01).collect();
        let rows: Vec<f16> = (0..keys * dim)
            .map(|i| f16::from_f32((i % 13) as f32 * 0.1))
            .collect();
        let mut out = vec![0f32; heads * dim];
        let key_at_a_time = median_seconds(|| {
            out.fill(0.0);
            for (t, row) in rows.chunks_exact(dim).enumerate() {
                for (out, weights) in out.chunks_exact_mut(dim).zip(weights.chunks_exact(keys)) {
                    for (o, v) in out.iter_mut().zip(row) {
                        *o += weights[t] * v.to_f32();
                    }
                }
            }
            std::hint::black_box(&out);
        });
        let ours = median_seconds(|| {
            weighted_sum_rows(Kernel::best(), &weights, &rows, dim, &mut out);
            std::hint::black_box(&out);
        });
        println!(
            "| {heads} × {dim} | {keys} | {:.2} µs | {:.2} µs | {:.2} |",
            key_at_a_time * 1e6,
            ours * 1e6,
            key_at_a_time / ours
        );
    }
}

/// The feed-forward gate (`ops::gated_times`) on one token, against the same sums with the
/// library's `f32::exp`: work the main thread does alone between two matmuls.
fn gating() {
    println!("| gate | values | f32::exp | fitbench | ratio |");
    println!("|---|---|---|---|---|");
    for (gate, values) in [(Gate::Silu, 5632), (Gate::GeluTanh, 2048)] {
        let gates: Vec<f32> = (0..values).map(|i| (i % 97) as f32 * 0.1 - 4.8).collect();
        let ups: Vec<f32> = (0..values).map(|i| (i % 13) as f32 * 0.1).collect();
        let mut out = vec![0f32; values];
        let library = median_seconds(|| {
            for ((o, &g), &u) in out.iter_mut().zip(&gates).zip(&ups) {
                let z = match gate {
                    Gate::Silu => g,
                    Gate::GeluTanh => 2.0 * 0.797_884_6 * g * (1.0 + 0.044_715 * g * g),
                };
                *o = g / (1.0 + (-z).exp()) * u;
            }
            std::hint::black_box(&out);
        });
        let ours = median_seconds(|| {
            gated_times(gate, &gates, &ups, &mut out);
            std::hint::black_box(&out);
        });
        println!(
            "| {gate:?} | {values} | {:.2} µs | {:.2} µs | {:.2} |",
            library * 1e6,
            ours * 1e6,
            library / ours
        );
    }
}

const STREAMED_BYTES: usize = 512 << 20;

/// Bytes per second the thread pool reads when it only sums them.
fn read_bandwidth() -> f64 {
    let words = vec![1u64; STREAMED_BYTES / 8];
    let seconds = median_seconds(|| {
        let total = std::sync::atomic::AtomicU64::new(0);
        candle_core::utils::barrier_pool().execute_chunked(words.len() / 4096, |range| {
            let sum = words[range.start * 4096..range.end * 4096]
                .iter()
                .fold(0u64, |a, w| a.wrapping_add(*w));
            total.fetch_add(sum, std::sync::atomic::Ordering::Relaxed);
        });
        std::hint::black_box(total.into_inner());
    });
    STREAMED_BYTES as f64 / seconds
}

fn streaming(formats: &[GgmlDType], n: usize, k: usize) -> candle_core::Result<()> {
    // This VM's bandwidth jumps between about 45 and 75 GB/s within minutes, so each
    // format's rate is set against a read measured just before it, five times over, and the
    // median share is what counts.
    println!("\n| format | m = 1 over 512 MiB | read bandwidth | share (median of 5) |\n|---|---|---|---|");
    let x: Vec<f32> = Tensor::randn(0f32, 1.0, (k,), &Device::Cpu)?.to_vec1()?;
    for &dtype in formats {
        let bytes = random_matrix(dtype, n, k)?;
        let copies = STREAMED_BYTES.div_ceil(bytes.len());
        let matrices = (0..copies)
            .map(|_| ours(dtype, bytes.clone(), n, k, Kernel::best()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut rounds: Vec<(f64, f64)> = (0..5)
            .map(|_| {
                let roofline = read_bandwidth();
                let seconds = median_seconds(|| {
                    for tiles in &matrices {
                        let _ = std::hint::black_box(tiles.matmul(&x, 1));
                    }
                });
                ((copies * bytes.len()) as f64 / seconds, roofline)
            })
            .collect();
        rounds.sort_by(|a, b| (a.0 / a.1).total_cmp(&(b.0 / b.1)));
        let (rate, roofline) = rounds[rounds.len() / 2];
        print_rate(dtype, rate, roofline);
    }
    Ok(())
}

/// The file bytes of a random n × k matrix in `dtype`.
fn random_matrix(dtype: GgmlDType, n: usize, k: usize) -> candle_core::Result<Vec<u8>> {
    let weights = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
    Ok(QTensor::quantize(&weights, dtype)?.data()?.to_vec())
}

/// One table row: a kernel's rate in bytes per second against the read bandwidth.
fn print_rate(dtype: GgmlDType, rate: f64, roofline: f64) {
    println!(
        "| {dtype:?} | {:.1} GB/s | {:.1} GB/s | {:.2} |",
        rate / 1e9,
        roofline / 1e9,
        rate / roofline
    );
}

/// m = 1 over 512 rows (1-2 MB, which stay in this box's L2 and L3), against the read
/// bandwidth from memory: above 1, the kernel has time to spare for memory's pace.
fn ceiling(formats: &[GgmlDType], k: usize) -> candle_core::Result<()> {
    const REPEATS: usize = 200;
    let n = 512;
    println!(
        "\n| format | m = 1 in cache | read bandwidth from memory | ratio |\n|---|---|---|---|"
    );
    let x: Vec<f32> = Tensor::randn(0f32, 1.0, (k,), &Device::Cpu)?.to_vec1()?;
    for &dtype in formats {
        let bytes = random_matrix(dtype, n, k)?;
        let size = bytes.len();
        let tiles = ours(dtype, bytes, n, k, Kernel::best())?;
        let roofline = read_bandwidth();
        let seconds = median_seconds(|| {
            for _ in 0..REPEATS {
                let _ = std::hint::black_box(tiles.matmul(&x, 1));
            }
        }) / REPEATS as f64;
        print_rate(dtype, size as f64 / seconds, roofline);
    }
    Ok(())
}
