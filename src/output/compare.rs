//! `fitbench compare` for people: one row per configuration both files measured.

use super::new_table;
use crate::compare::{CompareReport, Comparison, Configuration};

const HEADER: [&str; 8] = [
    "model",
    "test",
    "threads",
    "A t/s",
    "B t/s",
    "B/A",
    "p",
    "difference",
];

fn cells(c: &Comparison) -> Vec<String> {
    let verdict = match c.significant {
        _ if c.ratio.is_nan() => "A measured 0 tok/s",
        Some(true) if c.ratio > 1.0 => "B faster",
        Some(true) => "B slower",
        Some(false) => "not significant",
        None if c.a.samples < 2 || c.b.samples < 2 => "too few samples",
        None => "no spread to test",
    };
    vec![
        format!("{} {}", c.configuration.model, c.configuration.quant),
        c.configuration.test.clone(),
        c.configuration.n_threads.to_string(),
        format!("{:.2} ± {:.2}", c.a.mean_ts, c.a.stddev_ts),
        format!("{:.2} ± {:.2}", c.b.mean_ts, c.b.stddev_ts),
        format!("{:.2} ± {:.2}", c.ratio, c.ratio_stddev),
        c.p_value.map_or("-".into(), |p| format!("{p:.3}")),
        verdict.to_string(),
    ]
}

fn unmatched(title: &str, configs: &[Configuration]) -> String {
    if configs.is_empty() {
        return String::new();
    }
    let list: Vec<String> = configs
        .iter()
        .map(|c| {
            format!(
                "  {} {} {} at {} threads",
                c.model, c.quant, c.test, c.n_threads
            )
        })
        .collect();
    format!("\n{title}:\n{}", list.join("\n"))
}

fn footer(report: &CompareReport) -> String {
    format!(
        "A = {}, B = {}; p: Welch's t-test on the repetitions, significant below 0.05.{}{}",
        report.baseline,
        report.candidate,
        unmatched("only in A", &report.only_in_baseline),
        unmatched("only in B", &report.only_in_candidate)
    )
}

pub fn compare_table(report: &CompareReport) -> String {
    let mut table = new_table();
    table.set_header(HEADER.to_vec());
    for c in &report.comparisons {
        table.add_row(cells(c));
    }
    format!("{table}\n{}", footer(report))
}

pub fn compare_markdown(report: &CompareReport) -> String {
    let mut out = format!(
        "| {} |\n|{}\n",
        HEADER.join(" | "),
        " --- |".repeat(HEADER.len())
    );
    for c in &report.comparisons {
        out.push_str(&format!("| {} |\n", cells(c).join(" | ")));
    }
    format!("{out}\n{}", footer(report))
}
