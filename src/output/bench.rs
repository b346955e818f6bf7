//! Bench results for people (llama-bench's table, with what it lacks) and for Markdown.

use super::{format_bytes, new_table};
use crate::results::BenchRecord;

const HEADER: [&str; 10] = [
    "model",
    "test",
    "threads",
    "t/s",
    "predicted",
    "ratio",
    "TTFT / ITL p50, p95",
    "load",
    "peak RSS",
    "notes",
];

fn row(r: &BenchRecord) -> Vec<String> {
    let latency = match (r.ttft_ms, r.itl_p50_ms, r.itl_p95_ms) {
        (Some(ttft), Some(p50), Some(p95)) => format!("{ttft:.0} ms / {p50:.1}, {p95:.1} ms"),
        (None, Some(p50), Some(p95)) => format!("{p50:.1}, {p95:.1} ms"),
        _ => "-".into(),
    };
    let mut notes = Vec::new();
    if r.throttled {
        notes.push("THROTTLED".to_string());
    }
    if r.outliers > 0 {
        notes.push(format!("{} outlier(s)", r.outliers));
    }
    if r.avg_ts > 0.0 && r.stddev_ts / r.avg_ts > 0.1 {
        notes.push("spread > 10%".to_string());
    }
    if let Some(j) = r.energy_j {
        notes.push(format!("{j:.1} J"));
    }
    vec![
        crate::report::model_label(r),
        r.test.clone(),
        r.n_threads.to_string(),
        format!("{:.2} ± {:.2}", r.avg_ts, r.stddev_ts),
        format!("{:.1}", r.predicted_ts),
        format!("{:.2}", r.measured_over_predicted),
        latency,
        format!("{:.0} ms {}", r.load_ms, r.load_cache),
        format_bytes(r.peak_rss_bytes),
        notes.join(", "),
    ]
}

pub fn bench_table(records: &[BenchRecord]) -> String {
    let mut table = new_table();
    table.set_header(HEADER.to_vec());
    for r in records {
        table.add_row(row(r));
    }
    table.to_string()
}

pub fn bench_markdown(records: &[BenchRecord]) -> String {
    let mut out = format!(
        "| {} |\n|{}\n",
        HEADER.join(" | "),
        " --- |".repeat(HEADER.len())
    );
    for r in records {
        out.push_str(&format!("| {} |\n", row(r).join(" | ")));
    }
    out
}
