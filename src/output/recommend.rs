//! `recommend` for people (a table under the tree path) and for issues and READMEs (Markdown).

use super::{format_bytes, new_table};
use crate::estimate::format_tps;
use crate::recommend::{placement_summary, Candidate, Recommendation};
use comfy_table::Table;

const HEADER: [&str; 8] = ["#", "model", "quant", "where", "memory", "tg", "pp", "why"];

fn pick_row(rank: usize, c: &Candidate) -> Vec<String> {
    let e = &c.estimate;
    vec![
        (rank + 1).to_string(),
        c.model.clone(),
        c.quant.clone(),
        placement_summary(e),
        format!("{} @ {} ctx", format_bytes(e.memory.total_bytes), e.context),
        format_tps(e.speed.tg_tps),
        format_tps(e.speed.pp_tps),
        c.why.clone(),
    ]
}

fn path_line(r: &Recommendation) -> String {
    r.plan
        .path
        .iter()
        .map(|s| format!("{} {} → {}", s.question, s.value, s.branch))
        .collect::<Vec<_>>()
        .join("\n  ")
}

fn upgrade_lines(r: &Recommendation) -> Vec<String> {
    r.upgrades
        .iter()
        .map(|u| match &u.unlocks {
            Some(unlocks) => format!("{}: {unlocks}", u.step),
            None => format!("{}: no better pick", u.step),
        })
        .collect()
}

pub fn recommendation_text(r: &Recommendation) -> String {
    let mut out = format!(
        "fitbench recommends for {} ({} task, at least {}; speeds from {} efficiencies):\n  {}\n",
        r.hardware,
        r.task.name(),
        format_tps(r.min_tps),
        r.efficiencies_source,
        path_line(r)
    );
    if let Some(nothing) = &r.nothing_fits {
        out.push_str(&format!("\n{nothing}\n"));
    } else {
        let mut table: Table = new_table();
        table.set_header(HEADER.to_vec());
        for (rank, c) in r.picks.iter().enumerate() {
            table.add_row(pick_row(rank, c));
        }
        out.push_str(&format!("\n{table}\n"));
    }
    if !r.near_misses.is_empty() {
        out.push_str("\nWhy not:\n");
        for miss in &r.near_misses {
            out.push_str(&format!("  {}\n", miss.reason));
        }
    }
    out.push_str("\nUpgrade path:\n");
    for line in upgrade_lines(r) {
        out.push_str(&format!("  {line}\n"));
    }
    if let Some(hint) = &r.runtime_hint {
        out.push_str(&format!("\n{hint}\n"));
    }
    out.push_str("\nEstimates, not measurements: docs/estimates.md says how they are made; `fitbench bench` calibrates them for this box.");
    out
}

fn markdown_row(cells: &[String]) -> String {
    let escaped: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
    format!("| {} |", escaped.join(" | "))
}

pub fn recommendation_markdown(r: &Recommendation) -> String {
    let mut out = format!(
        "### fitbench recommends for `{}` ({} task, at least {})\n\n",
        r.hardware,
        r.task.name(),
        format_tps(r.min_tps)
    );
    for step in &r.plan.path {
        out.push_str(&format!(
            "- **{}** {} → {}\n",
            step.question, step.value, step.branch
        ));
    }
    out.push('\n');
    match &r.nothing_fits {
        Some(nothing) => out.push_str(&format!("{nothing}\n")),
        None => {
            let header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
            out.push_str(&markdown_row(&header));
            out.push('\n');
            out.push_str(&markdown_row(&vec!["---".to_string(); HEADER.len()]));
            out.push('\n');
            for (rank, c) in r.picks.iter().enumerate() {
                out.push_str(&markdown_row(&pick_row(rank, c)));
                out.push('\n');
            }
        }
    }
    if !r.near_misses.is_empty() {
        out.push_str("\n**Why not**\n\n");
        for miss in &r.near_misses {
            out.push_str(&format!("- {}\n", miss.reason));
        }
    }
    out.push_str("\n**Upgrade path**\n\n");
    for line in upgrade_lines(r) {
        out.push_str(&format!("- {line}\n"));
    }
    if let Some(hint) = &r.runtime_hint {
        out.push_str(&format!("\n{hint}\n"));
    }
    out
}
