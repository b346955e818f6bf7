//! fitbench's quantized matmul kernels against candle's, per format, at generation (m = 1)
//! and prompt (m = 512) shapes of a 1.1B model's FFN (2048 → 5632).
//!
//!     cargo bench --bench kernels            # CANDLE_NUM_THREADS sets the threads
//!
//! Prints the median of 20 runs for each, and the ratio.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use fitbench::bench::kernels::{Format, Kernel, Tiles};
use std::time::Instant;

fn median_seconds(mut run: impl FnMut()) -> f64 {
    run();
    let mut times: Vec<f64> = (0..20)
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
    println!("fitbench kernel: {:?}", Kernel::best());
    println!("| format | m | candle | fitbench | candle / fitbench |\n|---|---|---|---|---|");
    for format in Format::ALL {
        let dtype = format.dtype();
        let weights = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
        let quantized = QTensor::quantize(&weights, dtype)?;
        let tiles = Tiles::new(format, &quantized.data()?, n, k)?;
        let candle = QMatMul::from_qtensor(quantized)?;
        for m in [1, 512] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
            let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let theirs = median_seconds(|| {
                candle.forward(&x).map(drop).unwrap_or(());
            });
            let ours = median_seconds(|| {
                let _ = std::hint::black_box(tiles.matmul(&values, m));
            });
            println!(
                "| {dtype:?} | {m} | {:.2} ms | {:.2} ms | {:.2} |",
                theirs * 1e3,
                ours * 1e3,
                theirs / ours
            );
        }
    }
    Ok(())
}
