//! Reports: charts (PNG, SVG) and a Markdown report from one or many results files, from
//! one box or many.

mod charts;
mod data;
mod figures;
mod glyphs;
mod markdown;

pub use charts::Format;
pub use data::model_label;
use figures::Chart;

use crate::results::{self, BadRow, BenchRecord};
use anyhow::{bail, Context};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub out_dir: PathBuf,
    pub formats: Vec<Format>,
    pub title: String,
}

/// What a chart became: files, or the reason it was not drawn.
#[derive(Debug, Clone, Serialize)]
pub struct ChartOutcome {
    pub chart: &'static str,
    pub heading: &'static str,
    pub files: Vec<PathBuf>,
    pub skipped: Option<String>,
}

/// What `generate` wrote.
#[derive(Debug, Serialize)]
pub struct Report {
    pub out_dir: PathBuf,
    pub markdown: PathBuf,
    pub rows: usize,
    pub boxes: Vec<String>,
    pub charts: Vec<ChartOutcome>,
    pub bad_rows: Vec<BadRow>,
}

/// Every row of `inputs`. A file that cannot be read at all is an error; bad rows inside a
/// readable file are kept aside to be named.
pub fn load_all(inputs: &[PathBuf]) -> anyhow::Result<(Vec<BenchRecord>, Vec<BadRow>)> {
    let mut records = Vec::new();
    let mut bad_rows = Vec::new();
    for path in inputs {
        let loaded = results::load(path)?;
        records.extend(loaded.records);
        bad_rows.extend(loaded.bad_rows);
    }
    if records.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "{}: no results rows to report{}\nhint: run `fitbench bench -o FILE.csv` first",
            names.join(", "),
            if bad_rows.is_empty() {
                String::new()
            } else {
                format!(" ({} unreadable)", bad_rows.len())
            }
        );
    }
    Ok((records, bad_rows))
}

/// Writes the charts and report.md for `inputs` into `options.out_dir`.
pub fn generate(inputs: &[PathBuf], options: &ReportOptions) -> anyhow::Result<Report> {
    let (records, bad_rows) = load_all(inputs)?;
    std::fs::create_dir_all(&options.out_dir).with_context(|| {
        format!(
            "{}: cannot create the report folder",
            options.out_dir.display()
        )
    })?;
    let boxes = data::boxes(&records);
    let mut charts = Vec::new();
    let mut captions = Vec::new();
    for chart in Chart::ALL {
        let mut outcome = ChartOutcome {
            chart: chart.stem(),
            heading: chart.heading(),
            files: Vec::new(),
            skipped: None,
        };
        match figures::plan(chart, &records, &boxes) {
            figures::Planned::Figure { figure, caption } => {
                for &format in &options.formats {
                    let path =
                        options
                            .out_dir
                            .join(format!("{}.{}", chart.stem(), format.extension()));
                    charts::render(&figure, &path, format)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    outcome.files.push(path);
                }
                captions.push(caption);
            }
            figures::Planned::Skipped(reason) => {
                // A chart left from an earlier report would contradict this one.
                for format in [Format::Png, Format::Svg] {
                    let stale =
                        options
                            .out_dir
                            .join(format!("{}.{}", chart.stem(), format.extension()));
                    let _ = std::fs::remove_file(stale);
                }
                outcome.skipped = Some(reason);
                captions.push(String::new());
            }
        }
        charts.push(outcome);
    }
    let markdown_path = options.out_dir.join("report.md");
    let text = markdown::report(&markdown::Inputs {
        title: &options.title,
        sources: inputs,
        records: &records,
        bad_rows: &bad_rows,
        boxes: &boxes,
        charts: &charts,
        captions: &captions,
        out_dir: &options.out_dir,
    });
    std::fs::write(&markdown_path, text)
        .with_context(|| format!("{}: cannot write the report", markdown_path.display()))?;
    Ok(Report {
        out_dir: options.out_dir.clone(),
        markdown: markdown_path,
        rows: records.len(),
        boxes: boxes.into_iter().map(|b| b.host).collect(),
        charts,
        bad_rows,
    })
}

/// The path of `file` relative to `dir`, for links inside report.md.
fn relative(file: &Path, dir: &Path) -> String {
    file.strip_prefix(dir).unwrap_or(file).display().to_string()
}
