//! Statistics over repetitions, apart from any I/O (hyperfine keeps them apart the same way).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub mean: f64,
    pub stddev: f64,
    pub median: f64,
    /// Half-width of the 95% confidence interval of the mean.
    pub ci95_halfwidth: f64,
    /// Samples whose modified z-score exceeds hyperfine's threshold.
    pub outliers: usize,
}

/// hyperfine's outlier rule: |x - median| / (1.4826 × MAD) above this is an outlier.
const OUTLIER_THRESHOLD: f64 = 14.826;

pub fn summarize(samples: &[f64]) -> Summary {
    let n = samples.len();
    if n == 0 {
        return Summary {
            mean: 0.0,
            stddev: 0.0,
            median: 0.0,
            ci95_halfwidth: f64::INFINITY,
            outliers: 0,
        };
    }
    let mean = samples.iter().sum::<f64>() / n as f64;
    let stddev = if n > 1 {
        (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    let median = percentile(samples, 50.0);
    let deviations: Vec<f64> = samples.iter().map(|x| (x - median).abs()).collect();
    let mad = percentile(&deviations, 50.0);
    let outliers = if mad > 0.0 {
        deviations
            .iter()
            .filter(|d| **d / (1.4826 * mad) > OUTLIER_THRESHOLD)
            .count()
    } else {
        0
    };
    let ci95_halfwidth = if n > 1 {
        t_975(n - 1) * stddev / (n as f64).sqrt()
    } else {
        f64::INFINITY
    };
    Summary {
        mean,
        stddev,
        median,
        ci95_halfwidth,
        outliers,
    }
}

/// Linear interpolation between closest ranks, as numpy's default.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let low = rank.floor() as usize;
    let high = rank.ceil() as usize;
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// Student's t quantile for a two-sided 95% interval.
fn t_975(degrees_of_freedom: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match degrees_of_freedom {
        0 => f64::INFINITY,
        d if d <= TABLE.len() => TABLE[d - 1],
        _ => 1.96,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_stddev_and_median() {
        let s = summarize(&[10.0, 12.0, 14.0]);
        assert_eq!(s.mean, 12.0);
        assert_eq!(s.stddev, 2.0);
        assert_eq!(s.median, 12.0);
        // t(2) = 4.303; 4.303 × 2 / √3
        assert!(
            (s.ci95_halfwidth - 4.969).abs() < 1e-3,
            "{}",
            s.ci95_halfwidth
        );
    }

    #[test]
    fn a_far_sample_is_an_outlier_by_the_mad_rule() {
        let s = summarize(&[100.0, 101.0, 99.0, 100.5, 99.5, 30.0]);
        assert_eq!(s.outliers, 1);
        assert_eq!(summarize(&[100.0, 101.0, 99.0, 100.5]).outliers, 0);
    }

    #[test]
    fn percentiles_interpolate() {
        let xs = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&xs, 50.0), 3.0);
        assert_eq!(percentile(&xs, 95.0), 4.8);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
    }
}
