//! report.md: the boxes, findings computed from the rows, the charts, and llama-bench-style
//! tables of every row.

use super::data::{self, BoxSummary, TestKind};
use super::{relative, ChartOutcome};
use crate::output::format_bytes;
use crate::results::{BadRow, BenchRecord};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

pub struct Inputs<'a> {
    pub title: &'a str,
    pub sources: &'a [PathBuf],
    pub records: &'a [BenchRecord],
    pub bad_rows: &'a [BadRow],
    pub boxes: &'a [BoxSummary],
    pub charts: &'a [ChartOutcome],
    /// One per chart, empty for a skipped one.
    pub captions: &'a [String],
    pub out_dir: &'a Path,
}

/// The header of each box's results table, llama-bench's columns first.
pub const TABLE_HEADER: &str =
    "| model | size | params | backend | threads | test | t/s | peak RSS | notes |";

pub fn report(inputs: &Inputs) -> String {
    let mut out = String::new();
    let sources: Vec<String> = inputs
        .sources
        .iter()
        .map(|p| format!("`{}`", p.display()))
        .collect();
    let _ = writeln!(out, "# {}\n", inputs.title);
    let _ = writeln!(
        out,
        "{} rows from {} box{} in {}, by fitbench {}.\n",
        inputs.records.len(),
        inputs.boxes.len(),
        if inputs.boxes.len() == 1 { "" } else { "es" },
        sources.join(", "),
        env!("CARGO_PKG_VERSION"),
    );
    boxes_section(&mut out, inputs.boxes);
    findings_section(&mut out, inputs);
    charts_section(&mut out, inputs);
    results_section(&mut out, inputs.records, inputs.boxes);
    if !inputs.bad_rows.is_empty() {
        let _ = writeln!(out, "## Rows not read\n");
        for bad in inputs.bad_rows {
            let _ = writeln!(out, "- `{bad}`");
        }
        out.push('\n');
    }
    out
}

fn boxes_section(out: &mut String, boxes: &[BoxSummary]) {
    let _ = writeln!(out, "## Boxes\n");
    let _ = writeln!(
        out,
        "| box | CPU | arch | SIMD | RAM | GPU | backend | rows | fitbench |\n|---|---|---|---|---|---|---|---|---|"
    );
    for b in boxes {
        let gpu = match (b.gpu.is_empty(), b.vram_total_bytes) {
            (true, _) => "none".to_string(),
            (false, 0) => b.gpu.clone(),
            (false, vram) => format!("{} ({})", b.gpu, format_bytes(vram)),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            b.host,
            b.cpu_model,
            b.cpu_arch,
            b.cpu_simd,
            format_bytes(b.ram_total_bytes),
            gpu,
            b.backends.join(", "),
            b.rows,
            b.fitbench_versions.join(", "),
        );
    }
    out.push('\n');
}

fn findings_section(out: &mut String, inputs: &Inputs) {
    let _ = writeln!(out, "## Findings\n");
    let best = data::best_rows(inputs.records);
    for b in inputs.boxes {
        let fastest = best
            .iter()
            .filter(|(k, _)| k.host == b.host && TestKind::of(&k.test) == TestKind::Generation)
            .max_by(|a, b| a.1.avg_ts.total_cmp(&b.1.avg_ts));
        match fastest {
            Some((key, r)) => {
                let _ = writeln!(
                    out,
                    "- **{}**: fastest generation is {} at {:.1} ± {:.1} tok/s ({}, {} threads, peak {}).",
                    b.host,
                    key.model,
                    r.avg_ts,
                    r.stddev_ts,
                    key.test,
                    r.n_threads,
                    format_bytes(r.peak_rss_bytes)
                );
            }
            None => {
                let _ = writeln!(out, "- **{}**: no generation test was run.", b.host);
            }
        }
    }

    // A model file's smallest peak RSS anywhere is the least it needs.
    let mut least_memory: BTreeMap<String, (u64, &str)> = BTreeMap::new();
    for r in inputs.records.iter().filter(|r| r.peak_rss_bytes > 0) {
        let entry = least_memory
            .entry(data::model_label(r))
            .or_insert((r.peak_rss_bytes, &r.host));
        if r.peak_rss_bytes < entry.0 {
            *entry = (r.peak_rss_bytes, &r.host);
        }
    }
    let mut misfits = 0;
    for b in inputs.boxes.iter().filter(|b| b.ram_total_bytes > 0) {
        for (model, (bytes, host)) in &least_memory {
            if *bytes > b.ram_total_bytes {
                misfits += 1;
                let _ = writeln!(
                    out,
                    "- **{}** ({} RAM) cannot hold {}: it peaked at {} on {host}.",
                    b.host,
                    format_bytes(b.ram_total_bytes),
                    model,
                    format_bytes(*bytes)
                );
            }
        }
    }
    if misfits == 0 {
        let _ = writeln!(
            out,
            "- Every model file measured fits in the RAM of every box here."
        );
    }

    let throttled: Vec<&BenchRecord> = inputs.records.iter().filter(|r| r.throttled).collect();
    if throttled.is_empty() {
        let _ = writeln!(out, "- No run was throttled.");
    } else {
        let _ = writeln!(
            out,
            "- {} run{} throttled (heat, a clock drop, or the Pi's firmware): treat {} as a lower bound:",
            throttled.len(),
            if throttled.len() == 1 { " was" } else { "s were" },
            if throttled.len() == 1 { "it" } else { "them" },
        );
        for r in throttled {
            let _ = writeln!(
                out,
                "  - {}: {} {} at {} threads ({:.1} tok/s, max {} °C).",
                r.host,
                data::model_label(r),
                r.test,
                r.n_threads,
                r.avg_ts,
                r.temp_max_c.map_or("?".into(), |t| format!("{t:.0}"))
            );
        }
    }

    for b in inputs.boxes {
        let mut ratios: Vec<f64> = inputs
            .records
            .iter()
            .filter(|r| r.host == b.host && r.measured_over_predicted > 0.0)
            .map(|r| r.measured_over_predicted)
            .collect();
        if ratios.is_empty() {
            continue;
        }
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        let within = ratios.iter().filter(|r| (0.75..=1.25).contains(*r)).count();
        let _ = writeln!(
            out,
            "- **{}**: measured/predicted median {median:.2}; {within} of {} rows within ±25% of the estimate.",
            b.host,
            ratios.len()
        );
    }
    if !inputs.bad_rows.is_empty() {
        let _ = writeln!(
            out,
            "- {} row{} could not be read; they are listed at the end.",
            inputs.bad_rows.len(),
            if inputs.bad_rows.len() == 1 { "" } else { "s" }
        );
    }
    out.push('\n');
}

fn charts_section(out: &mut String, inputs: &Inputs) {
    let _ = writeln!(out, "## Charts\n");
    for (chart, caption) in inputs.charts.iter().zip(inputs.captions) {
        let _ = writeln!(out, "### {}\n", chart.heading);
        match (&chart.skipped, chart.files.first()) {
            (Some(reason), _) => {
                let _ = writeln!(out, "*Not drawn: {reason}.*\n");
            }
            (None, Some(file)) => {
                let _ = writeln!(
                    out,
                    "![{}]({})\n\n{caption}\n",
                    chart.heading,
                    relative(file, inputs.out_dir)
                );
                for other in &chart.files[1..] {
                    let _ = writeln!(
                        out,
                        "Also as [{0}]({0}).\n",
                        relative(other, inputs.out_dir)
                    );
                }
            }
            (None, None) => {
                let _ = writeln!(out, "*Not drawn: no chart format was asked for.*\n");
            }
        }
    }
}

/// The table row for one results row.
pub fn table_row(r: &BenchRecord) -> String {
    let mut notes = Vec::new();
    if r.throttled {
        notes.push("throttled".to_string());
    }
    if r.outliers > 0 {
        notes.push(format!("{} outlier(s)", r.outliers));
    }
    if !r.spec_name.is_empty() {
        notes.push(format!("spec {}", r.spec_name));
    }
    format!(
        "| {} | {} | {:.2} B | {} | {} | {} | {:.2} ± {:.2} | {} | {} |",
        data::model_label(r),
        format_bytes(r.model_size),
        r.model_n_params as f64 / 1e9,
        r.backend,
        r.n_threads,
        r.test,
        r.avg_ts,
        r.stddev_ts,
        format_bytes(r.peak_rss_bytes),
        notes.join(", ")
    )
}

fn results_section(out: &mut String, records: &[BenchRecord], boxes: &[BoxSummary]) {
    let _ = writeln!(out, "## Results\n");
    for b in boxes {
        let _ = writeln!(out, "### {}\n", b.host);
        let _ = writeln!(
            out,
            "{TABLE_HEADER}\n|---|---:|---:|---|---:|---|---:|---:|---|"
        );
        for r in records.iter().filter(|r| r.host == b.host) {
            let _ = writeln!(out, "{}", table_row(r));
        }
        out.push('\n');
    }
    let sizes = data::quant_sizes(records);
    if !sizes.is_empty() {
        let _ = writeln!(
            out,
            "### Size by quantization\n\n| model | quant | size | of the largest |\n|---|---|---:|---:|"
        );
        for model in &sizes {
            let largest = model.sizes[0].1.max(1) as f64;
            for (quant, bytes) in &model.sizes {
                let _ = writeln!(
                    out,
                    "| {} | {quant} | {} | {:.0}% |",
                    model.model,
                    format_bytes(*bytes),
                    *bytes as f64 / largest * 100.0
                );
            }
        }
        out.push('\n');
    }
}
