//! Two results files, configuration by configuration: the ratio B/A with its uncertainty,
//! and whether the difference is significant (Welch's t-test on the repetitions' samples),
//! as hyperfine reports relative speed.

use crate::results::BenchRecord;
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};
use std::collections::BTreeMap;

/// Below this p-value a difference is called significant.
pub const ALPHA: f64 = 0.05;

/// What makes two rows the same measurement: model file, quantization, test (with its
/// depth) and threads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Configuration {
    pub model: String,
    pub quant: String,
    pub test: String,
    pub n_threads: usize,
}

/// One side's samples, pooled over every row of its configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    pub host: String,
    pub samples: usize,
    pub mean_ts: f64,
    pub stddev_ts: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    #[serde(flatten)]
    pub configuration: Configuration,
    pub a: Side,
    pub b: Side,
    /// mean_b / mean_a: above 1, B is faster.
    pub ratio: f64,
    /// The ratio's standard deviation, propagated from both sides'.
    pub ratio_stddev: f64,
    /// Welch's two-sided p-value; None when a side has fewer than two samples.
    pub p_value: Option<f64>,
    pub significant: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub baseline: String,
    pub candidate: String,
    pub comparisons: Vec<Comparison>,
    pub only_in_baseline: Vec<Configuration>,
    pub only_in_candidate: Vec<Configuration>,
}

fn configuration(r: &BenchRecord) -> Configuration {
    Configuration {
        model: r.model_filename.clone(),
        quant: r.quant.clone(),
        test: r.test.clone(),
        n_threads: r.n_threads,
    }
}

/// Each repetition's tok/s; a row without samples counts as one sample at its mean.
fn samples(r: &BenchRecord) -> Vec<f64> {
    let parsed: Vec<f64> = r
        .samples_ts
        .split(';')
        .filter_map(|s| s.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .collect();
    if parsed.is_empty() {
        vec![r.avg_ts]
    } else {
        parsed
    }
}

/// Samples per configuration, pooled over the rows of one box. Rows of several boxes for
/// one configuration are an error: pooling them would compare an average of boxes.
fn pooled(
    file: &str,
    rows: &[BenchRecord],
) -> Result<BTreeMap<Configuration, (String, Vec<f64>)>, String> {
    let mut by: BTreeMap<Configuration, (String, Vec<f64>)> = BTreeMap::new();
    for r in rows {
        let entry = by
            .entry(configuration(r))
            .or_insert_with(|| (r.host.clone(), Vec::new()));
        if entry.0 != r.host {
            return Err(format!(
                "{file}: {} {} {} at {} threads was measured on two boxes ({} and {})\nhint: pick one box per file with --host-a/--host-b",
                r.model_filename, r.quant, r.test, r.n_threads, entry.0, r.host
            ));
        }
        entry.1.extend(samples(r));
    }
    Ok(by)
}

fn mean_and_variance(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let variance = if x.len() > 1 {
        x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, variance)
}

/// Welch's t-test: (t, degrees of freedom, two-sided p-value). None when a side has fewer
/// than two samples, or neither varies (no spread to test against).
pub fn welch(a: &[f64], b: &[f64]) -> Option<(f64, f64, f64)> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (mean_a, var_a) = mean_and_variance(a);
    let (mean_b, var_b) = mean_and_variance(b);
    let (se_a, se_b) = (var_a / a.len() as f64, var_b / b.len() as f64);
    let se = se_a + se_b;
    if se <= 0.0 {
        return None;
    }
    let t = (mean_b - mean_a) / se.sqrt();
    let df =
        se.powi(2) / (se_a.powi(2) / (a.len() - 1) as f64 + se_b.powi(2) / (b.len() - 1) as f64);
    let distribution = StudentsT::new(0.0, 1.0, df).ok()?;
    let p = 2.0 * (1.0 - distribution.cdf(t.abs()));
    Some((t, df, p.clamp(0.0, 1.0)))
}

pub fn compare(
    baseline_name: &str,
    baseline: &[BenchRecord],
    candidate_name: &str,
    candidate: &[BenchRecord],
) -> Result<CompareReport, String> {
    let a = pooled(baseline_name, baseline)?;
    let b = pooled(candidate_name, candidate)?;
    let side = |host: &str, x: &[f64]| {
        let (mean, variance) = mean_and_variance(x);
        Side {
            host: host.to_string(),
            samples: x.len(),
            mean_ts: mean,
            stddev_ts: variance.sqrt(),
        }
    };
    let mut comparisons = Vec::new();
    for (config, (host_a, xa)) in &a {
        let Some((host_b, xb)) = b.get(config) else {
            continue;
        };
        let (sa, sb) = (side(host_a, xa), side(host_b, xb));
        let ratio = if sa.mean_ts > 0.0 {
            sb.mean_ts / sa.mean_ts
        } else {
            f64::NAN
        };
        let relative = |s: &Side| {
            if s.mean_ts > 0.0 {
                s.stddev_ts / s.mean_ts
            } else {
                0.0
            }
        };
        let ratio_stddev = ratio * (relative(&sa).powi(2) + relative(&sb).powi(2)).sqrt();
        let p_value = welch(xa, xb).map(|(_, _, p)| p);
        comparisons.push(Comparison {
            configuration: config.clone(),
            a: sa,
            b: sb,
            ratio,
            ratio_stddev,
            p_value,
            significant: p_value.map(|p| p < ALPHA),
        });
    }
    Ok(CompareReport {
        baseline: baseline_name.to_string(),
        candidate: candidate_name.to_string(),
        comparisons,
        only_in_baseline: a.keys().filter(|k| !b.contains_key(*k)).cloned().collect(),
        only_in_candidate: b.keys().filter(|k| !a.contains_key(*k)).cloned().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welch_matches_a_hand_computed_case() {
        // Means 12 and 14, both variances 2.5, n = 5: t = 2 / sqrt(0.5 + 0.5) = 2 and
        // df = 1 / (2 × 0.25 / 4) = 8; a t table gives two-sided p = 0.0805 at t = 2, df = 8.
        let a = [10.0, 11.0, 12.0, 13.0, 14.0];
        let b = [12.0, 13.0, 14.0, 15.0, 16.0];
        let (t, df, p) = welch(&a, &b).unwrap();
        assert!((t - 2.0).abs() < 1e-12, "{t}");
        assert!((df - 8.0).abs() < 1e-9, "{df}");
        assert!((p - 0.0805).abs() < 5e-4, "{p}");
        // Unequal variances and sizes: Welch's df, not the pooled n - 2.
        let (_, df, _) = welch(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0, 40.0, 50.0]).unwrap();
        let (va, vb): (f64, f64) = (1.0 / 3.0, 250.0 / 5.0);
        let expected = (va + vb).powi(2) / (va * va / 2.0 + vb * vb / 4.0);
        assert!((df - expected).abs() < 1e-9, "{df} vs {expected}");
    }

    #[test]
    fn welch_needs_two_samples_and_some_spread() {
        assert!(welch(&[1.0], &[1.0, 2.0]).is_none());
        assert!(welch(&[3.0, 3.0], &[3.0, 3.0]).is_none());
    }

    fn row(host: &str, test: &str, samples: &str) -> BenchRecord {
        BenchRecord {
            host: host.into(),
            model_filename: "m.gguf".into(),
            quant: "Q4_0".into(),
            test: test.into(),
            n_threads: 4,
            samples_ts: samples.into(),
            ..BenchRecord::default()
        }
    }

    #[test]
    fn rows_match_by_configuration_and_ratios_carry_their_uncertainty() {
        let a = [
            row("pi4", "tg128", "10;10.2;9.8"),
            row("pi4", "pp512", "20;21;19"),
        ];
        let b = [
            row("pi5", "tg128", "20;20.4;19.6"),
            row("pi5", "tg128 @ d512", "15;15"),
        ];
        let report = compare("a.csv", &a, "b.csv", &b).unwrap();
        assert_eq!(report.comparisons.len(), 1);
        let c = &report.comparisons[0];
        assert_eq!((c.a.host.as_str(), c.b.host.as_str()), ("pi4", "pi5"));
        assert!((c.ratio - 2.0).abs() < 1e-12);
        // Both sides vary by 2%: the ratio by 2% × sqrt(2).
        let expected = 2.0 * (2.0f64 * 0.02f64.powi(2)).sqrt();
        assert!(
            (c.ratio_stddev - expected).abs() < 1e-9,
            "{}",
            c.ratio_stddev
        );
        assert_eq!(c.significant, Some(true));
        assert_eq!(report.only_in_baseline[0].test, "pp512");
        assert_eq!(report.only_in_candidate[0].test, "tg128 @ d512");
    }

    #[test]
    fn a_file_mixing_boxes_for_one_configuration_is_refused() {
        let a = [row("pi4", "tg128", "10;11"), row("pi5", "tg128", "20;21")];
        let err = compare("a.csv", &a, "b.csv", &a[..1]).unwrap_err();
        assert!(err.contains("a.csv") && err.contains("--host-a"), "{err}");
    }
}
