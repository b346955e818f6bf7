//! Calibration: bench results measured on a box replace the published efficiencies for it.
//! Each results row carries the estimate it was measured against, so the median of
//! measured / predicted is the correction, for generation and prompt processing apart.

use super::Efficiencies;
use crate::results::BenchRecord;

/// Efficiencies corrected by `records` measured on the box named `host`; None when there are
/// none. Only rows the estimate models are used: CPU, empty context, and `threads` threads
/// (the estimate assumes every physical core).
pub fn calibrate(records: &[BenchRecord], host: &str, threads: usize) -> Option<Efficiencies> {
    let mine: Vec<&BenchRecord> = records
        .iter()
        .filter(|r| r.host == host && r.backend == "cpu" && r.n_depth == 0)
        .filter(|r| r.n_threads == threads && r.measured_over_predicted > 0.0)
        .collect();
    let median_ratio = |keep: fn(&BenchRecord) -> bool| {
        let mut ratios: Vec<f64> = mine
            .iter()
            .filter(|r| keep(r))
            .map(|r| r.measured_over_predicted)
            .collect();
        ratios.sort_by(f64::total_cmp);
        (!ratios.is_empty()).then(|| ratios[ratios.len() / 2])
    };
    let tg = median_ratio(|r| r.n_prompt == 0 && r.n_gen > 0);
    let pp = median_ratio(|r| r.n_gen == 0 && r.n_prompt > 0);
    if tg.is_none() && pp.is_none() {
        return None;
    }
    let mut e = Efficiencies::default();
    if let Some(ratio) = tg {
        e.cpu_tg_of_measured *= ratio;
        e.cpu_tg_of_theoretical *= ratio;
        e.cpu_tg_of_peak *= ratio;
        // The fixed per-layer cost stretches by the same factor, so the whole time scales.
        e.cpu_seconds_per_layer /= ratio;
    }
    if let Some(ratio) = pp {
        e.cpu_pp_of_peak *= ratio;
    }
    e.source = format!("calibrated from {} runs on {host}", mine.len());
    Some(e)
}

/// Every row of every `*.csv` in `dir`, and the files that could not be read, with why.
pub fn load_results(dir: &std::path::Path) -> (Vec<BenchRecord>, Vec<String>) {
    let mut records = Vec::new();
    let mut problems = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (records, problems);
    };
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    paths.sort();
    for path in paths {
        match crate::results::load(&path) {
            Ok(loaded) => {
                records.extend(loaded.records);
                problems.extend(loaded.bad_rows.iter().map(|bad| bad.to_string()));
            }
            Err(err) => problems.push(err.to_string()),
        }
    }
    (records, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(host: &str, n_prompt: usize, n_gen: usize, ratio: f64) -> BenchRecord {
        BenchRecord {
            n_threads: 2,
            host: host.into(),
            backend: "cpu".into(),
            n_prompt,
            n_gen,
            measured_over_predicted: ratio,
            ..BenchRecord::default()
        }
    }

    #[test]
    fn the_median_ratio_scales_generation_and_prompt_apart() {
        let rows = [
            row("box", 0, 128, 0.5),
            row("box", 0, 128, 0.4),
            row("box", 0, 128, 0.6),
            row("box", 512, 0, 0.1),
            row("other", 0, 128, 9.0),
        ];
        let e = calibrate(&rows, "box", 2).unwrap();
        let published = Efficiencies::default();
        assert!((e.cpu_tg_of_measured - published.cpu_tg_of_measured * 0.5).abs() < 1e-12);
        assert!((e.cpu_pp_of_peak - published.cpu_pp_of_peak * 0.1).abs() < 1e-12);
        assert_eq!(e.source, "calibrated from 4 runs on box");
        assert!(calibrate(&rows, "nobody", 2).is_none());
        assert!(
            calibrate(&rows, "box", 8).is_none(),
            "rows of another thread count"
        );
    }
}
