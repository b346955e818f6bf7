//! Model load time, warm (file in the page cache) and cold (evicted first), median of 5:
//!
//!     FITBENCH_LOAD_GGUF=a.gguf:b.gguf cargo bench --bench load
//!
//! Cold runs evict the file with posix_fadvise(DONTNEED), which needs no root. llama.cpp's
//! side of the comparison is `benches/peers/llama_load.c`, timed the same way.

use candle_core::Device;
use fitbench::bench::model::Model;
use std::path::Path;
use std::time::Instant;

const RUNS: usize = 5;

fn evict(path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    // SAFETY: a plain syscall on a descriptor this function owns.
    let status = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    anyhow::ensure!(
        status == 0,
        "{}: posix_fadvise failed ({status})",
        path.display()
    );
    Ok(())
}

fn median_ms(path: &Path, cold: bool) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        if cold {
            evict(path)?;
        }
        let start = Instant::now();
        let model = Model::load(path, &Device::Cpu, 640)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        drop(model);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[RUNS / 2])
}

fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs bench targets too, without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("timing runs only under `cargo bench --bench load`");
        return Ok(());
    }
    let Ok(files) = std::env::var("FITBENCH_LOAD_GGUF") else {
        anyhow::bail!("set FITBENCH_LOAD_GGUF to the GGUF files to load, separated by ':'");
    };
    println!("| file | warm | cold |\n|---|---|---|");
    for file in files.split(':') {
        let path = Path::new(file);
        Model::load(path, &Device::Cpu, 640)?;
        let warm = median_ms(path, false)?;
        let cold = median_ms(path, true)?;
        println!("| {file} | {warm:.0} ms | {cold:.0} ms |");
    }
    Ok(())
}
