//! `fitbench report` on results written by real bench runs on two "boxes", and on bad input.

mod common;

use common::{fitbench_in, json, stderr, stdout, test_model, SMOLLM2};
use fitbench::results::{self, BenchRecord, ResultsFile};
use std::path::Path;
use std::process::{Command, Output};

const CHARTS: [&str; 6] = [
    "throughput",
    "memory",
    "threads",
    "predicted",
    "boxes",
    "sizes",
];

/// Runs `fitbench bench` as the box named `host`.
fn bench_as(dir: &Path, host: &str, args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_fitbench"))
        .arg("bench")
        .args(args)
        .args(["-p", "16", "-n", "4", "-r", "2", "--warmup", "0"])
        .current_dir(dir)
        .env("FITBENCH_HOST", host)
        .env("FITBENCH_CACHE_DIR", dir.join("cache"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
}

fn report(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    fitbench_in(dir, None, &all)
}

fn assert_png_is_a_drawing(path: &Path) {
    let image = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_luma8();
    assert_eq!(image.width(), 1100, "{}", path.display());
    assert!(image.height() >= 200, "{}", path.display());
    let pixels: Vec<f64> = image.pixels().map(|p| f64::from(p.0[0])).collect();
    let mean = pixels.iter().sum::<f64>() / pixels.len() as f64;
    let variance = pixels.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / pixels.len() as f64;
    assert!(
        variance > 100.0,
        "{} looks blank: {variance}",
        path.display()
    );
    let dark = pixels.iter().filter(|p| **p < 100.0).count();
    assert!(
        dark > 500,
        "{}: no text or axes ({dark} dark pixels)",
        path.display()
    );
}

fn assert_svg_parses_with_text(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let doc =
        roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let labels = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "text")
        .count();
    assert!(labels > 5, "{}: {labels} text elements", path.display());
}

#[test]
fn a_report_of_two_boxes_has_every_chart_and_tables_that_match_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let model = test_model(SMOLLM2);
    let model = model.to_str().unwrap();
    bench_as(path, "desk", &["--gguf", model, "-t", "1,2", "-o", "a.csv"]);
    bench_as(
        path,
        "edge-box",
        &["--gguf", model, "-t", "2", "-o", "b.csv"],
    );
    for quant in ["Q4_0", "Q8_0"] {
        bench_as(
            path,
            "edge-box",
            &["-m", "smollm2-135m", "-q", quant, "-t", "2", "-o", "b.csv"],
        );
    }

    let out = path.join("reports/two");
    let output = report(
        path,
        &[
            "a.csv",
            "b.csv",
            "--out",
            out.to_str().unwrap(),
            "--title",
            "Two boxes",
            "--json",
        ],
    );
    let written = json(&output);
    assert_eq!(written["rows"], 10);
    assert_eq!(written["boxes"], serde_json::json!(["desk", "edge-box"]));
    for (chart, stem) in written["charts"].as_array().unwrap().iter().zip(CHARTS) {
        assert_eq!(chart["chart"], stem);
        assert!(chart["skipped"].is_null(), "{stem}: {}", chart["skipped"]);
        assert_png_is_a_drawing(&out.join(format!("{stem}.png")));
        assert_svg_parses_with_text(&out.join(format!("{stem}.svg")));
    }

    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(markdown.starts_with("# Two boxes\n"), "{markdown}");
    for stem in CHARTS {
        assert!(markdown.contains(&format!("({stem}.png)")), "{stem}");
        assert!(markdown.contains(&format!("[{stem}.svg]")), "{stem}");
    }
    let mut rows = results::read(&path.join("a.csv")).unwrap();
    rows.extend(results::read(&path.join("b.csv")).unwrap());
    let table_lines: Vec<&str> = markdown
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains(" ± "))
        .collect();
    assert_eq!(table_lines.len(), rows.len(), "{markdown}");
    for r in &rows {
        let cells = format!(
            "| {} | {} | {:.2} ± {:.2} |",
            r.n_threads, r.test, r.avg_ts, r.stddev_ts
        );
        assert!(
            table_lines.iter().any(|l| l.contains(&cells)),
            "no table row for {} {cells}",
            r.host
        );
    }
    assert!(markdown.contains("**desk**: fastest generation is SmolLM2-135M-Instruct Q4_1"));
    assert!(markdown.contains("| smollm2-135m | Q8_0 |"), "{markdown}");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

fn failure(output: &Output) -> String {
    assert!(!output.status.success(), "succeeded: {}", stdout(output));
    stderr(output)
}

#[test]
fn files_that_are_not_results_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.csv", b"");
    let err = failure(&report(dir.path(), &[&empty]));
    assert!(err.contains("empty.csv: the file is empty"), "{err}");

    let header = results::header().replace(",avg_ts", "");
    let missing = write(dir.path(), "missing.csv", format!("{header}\n").as_bytes());
    let err = failure(&report(dir.path(), &[&missing]));
    assert!(err.contains("missing.csv: missing column avg_ts"), "{err}");

    let binary = write(
        dir.path(),
        "model.csv",
        &[0x47, 0x47, 0x55, 0x46, 0xff, 0xfe, 0, 0],
    );
    let err = failure(&report(dir.path(), &[&binary]));
    assert!(
        err.contains("model.csv: this is not a CSV text file"),
        "{err}"
    );

    let other = write(dir.path(), "other.csv", b"model,size,t/s\nx,1,2\n");
    let err = failure(&report(dir.path(), &[&other]));
    assert!(
        err.contains("other.csv: no fitbench results header"),
        "{err}"
    );

    let err = failure(&report(dir.path(), &["absent.csv"]));
    assert!(err.contains("absent.csv"), "{err}");
    assert!(!dir.path().join("reports").exists(), "nothing is written");
}

fn record(host: &str, test: &str, avg_ts: f64) -> BenchRecord {
    BenchRecord {
        schema_version: results::SCHEMA_VERSION,
        host: host.into(),
        model_filename: "tiny-Q4_0.gguf".into(),
        quant: "Q4_0".into(),
        test: test.into(),
        n_threads: 2,
        avg_ts,
        stddev_ts: 0.5,
        peak_rss_bytes: 100 << 20,
        ram_total_bytes: 1 << 30,
        ..BenchRecord::default()
    }
}

#[test]
fn bad_rows_are_named_and_the_good_rows_reported() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("mixed.csv");
    let mut file = ResultsFile::open(&csv).unwrap();
    file.append(&record("pi", "tg128", 7.5)).unwrap();
    drop(file);
    let mut text = std::fs::read_to_string(&csv).unwrap();
    text.push_str("2,2026-01-01T00:00:00Z,,,pi,not,enough,columns\n");
    std::fs::write(&csv, &text).unwrap();
    let mut file = ResultsFile::open(&csv).unwrap();
    file.append(&record("pi", "pp512", 40.0)).unwrap();

    let out = dir.path().join("r");
    let output = report(
        dir.path(),
        &[csv.to_str().unwrap(), "--out", out.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("mixed.csv:3:"),
        "{}",
        stderr(&output)
    );
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(markdown.contains("2 rows from 1 box"), "{markdown}");
    assert!(markdown.contains("## Rows not read"), "{markdown}");
    assert!(markdown.contains("mixed.csv:3:"), "{markdown}");
    assert!(
        markdown.contains("| 2 | tg128 | 7.50 ± 0.50 |"),
        "{markdown}"
    );
    // One box, no thread sweep, no second quantization: those charts say why they are absent.
    assert!(markdown.contains("*Not drawn: the results come from one box.*"));
    assert!(markdown
        .contains("*Not drawn: no configuration was measured at two or more thread counts.*"));
    assert!(!out.join("boxes.png").exists());
    assert!(out.join("throughput.png").exists());
}

#[test]
fn schema_1_files_still_report() {
    let dir = tempfile::tempdir().unwrap();
    let current = dir.path().join("v2.csv");
    ResultsFile::open(&current)
        .unwrap()
        .append(&record("old-box", "tg32", 3.25))
        .unwrap();
    // Schema 1 is schema 2 without the columns 2 added.
    let text = std::fs::read_to_string(&current).unwrap();
    let mut lines = text.lines().map(|l| l.split(',').collect::<Vec<_>>());
    let header = lines.next().unwrap();
    let keep: Vec<usize> = (0..header.len())
        .filter(|&i| !["spec_name", "spec_hash", "vram_total_bytes"].contains(&header[i]))
        .collect();
    let mut v1 = String::new();
    for (n, cells) in std::iter::once(header).chain(lines).enumerate() {
        let cells: Vec<&str> = keep.iter().map(|&i| cells[i]).collect();
        let mut line = cells.join(",");
        if n > 0 {
            line = line.replacen("2,", "1,", 1);
        }
        v1.push_str(&line);
        v1.push('\n');
    }
    let old = write(dir.path(), "v1.csv", v1.as_bytes());
    let rows = results::read(Path::new(&old)).unwrap();
    assert_eq!(rows[0].schema_version, 1);
    assert_eq!(rows[0].avg_ts, 3.25);
    let out = dir.path().join("r");
    let output = report(dir.path(), &[&old, "--out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        markdown.contains("| 2 | tg32 | 3.25 ± 0.50 |"),
        "{markdown}"
    );
}
