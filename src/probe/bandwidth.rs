//! Memory read bandwidth: the number that best predicts token generation speed, since
//! generating one token streams every weight through the CPU once.

use super::MeasuredBandwidth;
use std::hint::black_box;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;
/// Time spent per thread count; two of these plus filling the buffer stays under 3 s.
const BUDGET_PER_RUN: Duration = Duration::from_millis(700);
const MIN_PASSES: u32 = 3;

/// Streams over a buffer far larger than the last-level cache, first with one thread and
/// then with `threads`, and reports the best pass of each (STREAM's convention).
pub fn measure_read_bandwidth(
    available_bytes: u64,
    llc_bytes: Option<u64>,
    threads: usize,
) -> anyhow::Result<MeasuredBandwidth> {
    let buffer_bytes = buffer_size(available_bytes, llc_bytes);
    let words = usize::try_from(buffer_bytes / 8)?;
    let mut buffer: Vec<u64> = Vec::new();
    buffer.try_reserve_exact(words).map_err(|_| {
        anyhow::anyhow!(
            "could not allocate {} MiB for the bandwidth test",
            buffer_bytes / MIB
        )
    })?;
    // Writing every word makes the kernel back the pages now, not inside the timed passes.
    buffer.extend((0..words as u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));

    let threads = threads.max(1);
    Ok(MeasuredBandwidth {
        single_thread_gbs: best_pass_gbs(&buffer, 1),
        all_threads_gbs: best_pass_gbs(&buffer, threads),
        threads: threads as u32,
        buffer_mib: buffer_bytes / MIB,
    })
}

/// At least 16× the last-level cache and 256 MiB, but never more than a quarter of what is
/// available: a Pi 3B must not swap to measure itself.
fn buffer_size(available_bytes: u64, llc_bytes: Option<u64>) -> u64 {
    let wanted = (llc_bytes.unwrap_or(0) * 16).max(256 * MIB);
    let allowed = (available_bytes / 4).max(16 * MIB);
    wanted.min(allowed) / MIB * MIB
}

fn best_pass_gbs(buffer: &[u64], threads: usize) -> f64 {
    let chunk = buffer.len().div_ceil(threads);
    let started = Instant::now();
    let mut best = Duration::MAX;
    let mut passes = 0;
    while passes < MIN_PASSES || started.elapsed() < BUDGET_PER_RUN {
        let pass_start = Instant::now();
        std::thread::scope(|scope| {
            for part in buffer.chunks(chunk) {
                scope.spawn(move || black_box(sum_words(black_box(part))));
            }
        });
        best = best.min(pass_start.elapsed());
        passes += 1;
    }
    std::mem::size_of_val(buffer) as f64 / best.as_secs_f64() / 1e9
}

/// A plain fold: LLVM unrolls it into several vector accumulators on every target. A manual
/// eight-lane version was transposed into shuffles on znver5 and read at 4 GB/s instead of 35.
fn sum_words(words: &[u64]) -> u64 {
    words.iter().fold(0, |sum, word| sum.wrapping_add(*word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_outgrows_the_cache_but_never_a_quarter_of_free_memory() {
        assert_eq!(buffer_size(16 << 30, Some(32 * MIB)), 512 * MIB);
        assert_eq!(buffer_size(16 << 30, None), 256 * MIB);
        // A Pi 3B with 600 MiB free gets a 150 MiB buffer, not 256.
        assert_eq!(buffer_size(600 * MIB, Some(512 * 1024)), 150 * MIB);
    }

    #[test]
    fn summing_reads_every_word() {
        let words: Vec<u64> = (1..=21).collect();
        assert_eq!(sum_words(&words), 21 * 22 / 2);
    }
}
