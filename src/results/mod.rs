//! Results: one CSV row per test configuration. Column meanings are in
//! docs/results-schema.md; where llama-bench has a column of the same meaning, it has its name.

use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

pub const SCHEMA_VERSION: u32 = 2;

/// Columns schema 2 added; a schema 1 file reads with these empty.
const ADDED_IN_2: [&str; 3] = ["spec_name", "spec_hash", "vram_total_bytes"];

/// One measured test configuration, with everything needed to reproduce and compare it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchRecord {
    pub schema_version: u32,
    /// UTC, RFC 3339.
    pub timestamp: String,
    /// The `fitbench run` spec this row belongs to; empty for `fitbench bench`.
    #[serde(default)]
    pub spec_name: String,
    /// sha256 of the spec file's bytes, so a changed spec is visible.
    #[serde(default)]
    pub spec_hash: String,
    pub host: String,
    pub cpu_model: String,
    pub cpu_arch: String,
    pub cpu_simd: String,
    pub gpu: String,
    pub ram_total_bytes: u64,
    /// VRAM of the largest GPU; 0 without one.
    #[serde(default)]
    pub vram_total_bytes: u64,
    pub fitbench_version: String,
    pub fitbench_commit: String,
    pub candle_version: String,
    pub backend: String,
    pub model_filename: String,
    pub model_sha256: String,
    pub model_type: String,
    pub model_size: u64,
    pub model_n_params: u64,
    pub quant: String,
    pub synthetic: bool,
    pub test: String,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub n_depth: usize,
    pub n_threads: usize,
    pub repetitions: usize,
    pub warmup: usize,
    pub seed: u64,
    pub avg_ts: f64,
    pub stddev_ts: f64,
    pub median_ts: f64,
    pub ci95_halfwidth_ts: f64,
    /// Every repetition's tok/s, separated by ';'.
    pub samples_ts: String,
    pub outliers: usize,
    pub ttft_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
    pub itl_p95_ms: Option<f64>,
    pub load_ms: f64,
    pub load_cache: String,
    pub peak_rss_bytes: u64,
    pub temp_start_c: Option<f32>,
    pub temp_max_c: Option<f32>,
    pub freq_start_mhz: Option<u64>,
    pub freq_min_mhz: Option<u64>,
    pub throttled: bool,
    pub energy_j: Option<f64>,
    pub predicted_ts: f64,
    pub predicted_memory_bytes: u64,
    /// avg_ts / predicted_ts: above 1, the box beat the estimate.
    pub measured_over_predicted: f64,
}

/// The header this version writes.
pub fn header() -> String {
    let mut writer = csv::Writer::from_writer(Vec::new());
    // Serializing a header needs a value; the field names do not depend on it.
    let _ = writer.serialize(example());
    let bytes = writer.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn example() -> BenchRecord {
    BenchRecord {
        schema_version: SCHEMA_VERSION,
        ..BenchRecord::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: its header is not fitbench's results schema {SCHEMA_VERSION}; nothing was written\nhint: write to a new file with -o results/NEW.csv; `fitbench merge OLD.csv -o NEW.csv` carries an older file's rows into this schema")]
    OtherSchema { path: String },
    #[error("{path}: {message}\nhint: the file was edited or is not a fitbench results file")]
    Parse { path: String, message: String },
    #[error("{path}: the file is empty\nhint: give a results file written by `fitbench bench` or `fitbench run`")]
    Empty { path: String },
    #[error("{path}: missing column{plural} {columns}\nhint: this is not a fitbench results file, or it was edited; `fitbench bench -o` writes complete ones", plural = if columns.contains(',') { "s" } else { "" })]
    MissingColumns { path: String, columns: String },
}

/// A row that could not be read, by its line in the file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadRow {
    pub path: String,
    pub line: u64,
    pub message: String,
}

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path, self.line, self.message)
    }
}

/// What a results file held: the rows that read, and the ones that did not.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<BenchRecord>,
    pub bad_rows: Vec<BadRow>,
}

/// An open results file that rows are appended to, one whole line per write.
pub struct ResultsFile {
    file: std::fs::File,
    path: String,
}

impl ResultsFile {
    /// Opens (or creates) `path` for appending. A torn last line left by a crash is cut
    /// off; every complete earlier row is kept. A file of another schema is refused.
    pub fn open(path: &Path) -> Result<ResultsFile, ResultsError> {
        let name = path.display().to_string();
        let io = |source| ResultsError::Io {
            path: name.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        // A header cut short by a crash while the file was being created counts as empty.
        if text.is_empty() || (!text.contains('\n') && header().starts_with(text.as_str())) {
            file.set_len(0).map_err(io)?;
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            file.write_all(format!("{}\n", header()).as_bytes())
                .map_err(io)?;
        } else {
            if text.lines().next() != Some(header().as_str()) {
                return Err(ResultsError::OtherSchema { path: name });
            }
            // A torn last row: cut it off. (A file without a newline at all is a header
            // cut short, handled above.)
            if let Some(i) = text.rfind('\n').filter(|_| !text.ends_with('\n')) {
                file.set_len(i as u64 + 1).map_err(io)?;
            }
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok(ResultsFile { file, path: name })
    }

    /// Appends one row with a single write and syncs it to disk.
    pub fn append(&mut self, record: &BenchRecord) -> Result<(), ResultsError> {
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::new());
        writer.serialize(record).map_err(|e| ResultsError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        let line = writer.into_inner().unwrap_or_default();
        let io = |source| ResultsError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)
    }
}

/// Reads every row of a results file; any unreadable row is an error.
pub fn read(path: &Path) -> Result<Vec<BenchRecord>, ResultsError> {
    let loaded = load(path)?;
    match loaded.bad_rows.into_iter().next() {
        Some(bad) => Err(ResultsError::Parse {
            path: bad.path,
            message: format!("line {}: {}", bad.line, bad.message),
        }),
        None => Ok(loaded.records),
    }
}

/// Reads a results file of any schema this version knows, keeping the good rows when some
/// are bad. Whole-file problems (not text, no header, missing columns) are errors.
pub fn load(path: &Path) -> Result<Loaded, ResultsError> {
    let name = path.display().to_string();
    let parse = |message: String| ResultsError::Parse {
        path: name.clone(),
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| ResultsError::Io {
            path: name.clone(),
            source: std::io::Error::other(e),
        })?;
    let headers = match reader.headers() {
        Ok(h) if h.iter().all(str::is_empty) => {
            return Err(ResultsError::Empty { path: name.clone() })
        }
        Ok(h) => h.clone(),
        Err(e) if matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) => {
            return Err(parse("this is not a CSV text file".into()))
        }
        Err(e) => return Err(parse(e.to_string())),
    };
    let missing: Vec<String> = header()
        .split(',')
        .filter(|c| !ADDED_IN_2.contains(c) && !headers.iter().any(|h| h == *c))
        .map(str::to_string)
        .collect();
    if missing.len() == header().split(',').count() - ADDED_IN_2.len() {
        return Err(parse(
            "no fitbench results header (schema_version, timestamp, host, ...)".into(),
        ));
    }
    if !missing.is_empty() {
        return Err(ResultsError::MissingColumns {
            path: name.clone(),
            columns: missing.join(", "),
        });
    }
    let mut loaded = Loaded::default();
    for row in reader.records() {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                loaded.bad_rows.push(BadRow {
                    path: name.clone(),
                    line,
                    message: e.to_string(),
                });
                continue;
            }
        };
        let line = row.position().map_or(0, |p| p.line());
        let bad = |message: String| BadRow {
            path: name.clone(),
            line,
            message,
        };
        match row.deserialize::<BenchRecord>(Some(&headers)) {
            Ok(record) if record.schema_version > SCHEMA_VERSION => loaded.bad_rows.push(bad(
                format!(
                    "written with results schema {}, newer than this fitbench's {SCHEMA_VERSION}; upgrade fitbench to read it",
                    record.schema_version
                ),
            )),
            Ok(record) => loaded.records.push(record),
            Err(e) => loaded.bad_rows.push(bad(field_error(&e, &headers))),
        }
    }
    Ok(loaded)
}

/// csv's deserialize error, with the column named rather than numbered.
fn field_error(error: &csv::Error, headers: &csv::StringRecord) -> String {
    if let csv::ErrorKind::Deserialize { err, .. } = error.kind() {
        if let Some(column) = err.field().and_then(|i| headers.get(i as usize)) {
            return format!("column `{column}`: {}", err.kind());
        }
        return err.kind().to_string();
    }
    error.to_string()
}

/// What `merge` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MergeSummary {
    pub rows_read: usize,
    pub rows_written: usize,
    /// Rows identical to one already kept (in the output or an earlier input).
    pub duplicates: usize,
}

/// One row as the line this version writes: the identity `merge` de-duplicates by.
fn csv_line(record: &BenchRecord) -> String {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    let _ = writer.serialize(record);
    String::from_utf8_lossy(&writer.into_inner().unwrap_or_default()).into_owned()
}

/// Appends every row of `inputs` to `output` in this schema, skipping rows identical to one
/// already there. An input with an unreadable row is refused before anything is written.
pub fn merge(inputs: &[std::path::PathBuf], output: &Path) -> Result<MergeSummary, ResultsError> {
    let mut incoming = Vec::new();
    for path in inputs {
        let loaded = load(path)?;
        if let Some(bad) = loaded.bad_rows.first() {
            return Err(ResultsError::Parse {
                path: bad.path.clone(),
                message: format!(
                    "line {}: {} ({} unreadable row(s)); nothing was merged\nhint: fix or delete those lines, or report the file to see which rows read",
                    bad.line,
                    bad.message,
                    loaded.bad_rows.len()
                ),
            });
        }
        incoming.extend(loaded.records);
    }
    let mut file = ResultsFile::open(output)?;
    let mut seen: std::collections::HashSet<String> = read(output)?.iter().map(csv_line).collect();
    let mut summary = MergeSummary {
        rows_read: incoming.len(),
        rows_written: 0,
        duplicates: 0,
    };
    for mut record in incoming {
        // An older row gains the new columns, empty: it now is a row of this schema.
        record.schema_version = SCHEMA_VERSION;
        if seen.insert(csv_line(&record)) {
            file.append(&record)?;
            summary.rows_written += 1;
        } else {
            summary.duplicates += 1;
        }
    }
    Ok(summary)
}

/// Seconds since the epoch as RFC 3339 UTC, without a date crate (Howard Hinnant's
/// days-to-civil algorithm).
pub fn rfc3339(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(test: &str) -> BenchRecord {
        BenchRecord {
            test: test.into(),
            avg_ts: 12.5,
            samples_ts: "12;13".into(),
            ttft_ms: Some(3.5),
            ..example()
        }
    }

    #[test]
    fn rows_append_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results/run.csv");
        ResultsFile::open(&path)
            .unwrap()
            .append(&record("pp512"))
            .unwrap();
        ResultsFile::open(&path)
            .unwrap()
            .append(&record("tg128"))
            .unwrap();
        let rows = read(&path).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], record("pp512"));
        assert_eq!(rows[1].test, "tg128");
    }

    #[test]
    fn a_torn_last_line_is_cut_and_earlier_rows_survive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.csv");
        ResultsFile::open(&path)
            .unwrap()
            .append(&record("pp512"))
            .unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"1,2026-11-23T00:00:00Z,half a ro").unwrap();
        drop(file);
        ResultsFile::open(&path)
            .unwrap()
            .append(&record("tg128"))
            .unwrap();
        let tests: Vec<String> = read(&path).unwrap().into_iter().map(|r| r.test).collect();
        assert_eq!(tests, ["pp512", "tg128"]);
    }

    #[test]
    fn a_header_cut_short_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.csv");
        std::fs::write(&path, &header()[..20]).unwrap();
        ResultsFile::open(&path)
            .unwrap()
            .append(&record("pp512"))
            .unwrap();
        assert_eq!(read(&path).unwrap().len(), 1);
    }

    #[test]
    fn a_file_of_another_schema_is_refused_and_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.csv");
        std::fs::write(&path, "model,size,t/s\nx,1,2\n").unwrap();
        let err = ResultsFile::open(&path).err().unwrap();
        assert!(err.to_string().contains("-o results/NEW.csv"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "model,size,t/s\nx,1,2\n"
        );
    }

    #[test]
    fn the_header_uses_llama_bench_names() {
        let h = header();
        for column in [
            "n_prompt",
            "n_gen",
            "n_depth",
            "n_threads",
            "avg_ts",
            "stddev_ts",
            "model_size",
            "model_n_params",
            "schema_version",
        ] {
            assert!(h.split(',').any(|c| c == column), "{column}");
        }
    }

    #[test]
    fn rows_of_a_newer_schema_are_named_and_the_rest_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mixed.csv");
        let mut file = ResultsFile::open(&path).unwrap();
        file.append(&record("pp512")).unwrap();
        file.append(&BenchRecord {
            schema_version: SCHEMA_VERSION + 1,
            ..record("tg128")
        })
        .unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.records.len(), 1);
        assert_eq!(loaded.bad_rows.len(), 1);
        assert_eq!(loaded.bad_rows[0].line, 3);
        assert!(loaded.bad_rows[0].message.contains("upgrade fitbench"));
        assert!(read(&path).is_err(), "strict reading refuses the file");
    }

    #[test]
    fn merging_upgrades_rows_and_drops_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.csv");
        let b = dir.path().join("b.csv");
        let mut file = ResultsFile::open(&a).unwrap();
        file.append(&record("pp512")).unwrap();
        file.append(&record("tg128")).unwrap();
        let mut file = ResultsFile::open(&b).unwrap();
        file.append(&record("tg128")).unwrap();
        file.append(&BenchRecord {
            host: "other".into(),
            ..record("tg128")
        })
        .unwrap();
        let out = dir.path().join("all.csv");
        let summary = merge(&[a.clone(), b.clone()], &out).unwrap();
        assert_eq!(
            summary,
            MergeSummary {
                rows_read: 4,
                rows_written: 3,
                duplicates: 1
            }
        );
        // Merging again adds nothing: every row is already there.
        let again = merge(&[a, b], &out).unwrap();
        assert_eq!((again.rows_written, again.duplicates), (0, 4));
        assert_eq!(read(&out).unwrap().len(), 3);
    }

    #[test]
    fn a_damaged_input_is_not_merged() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.csv");
        ResultsFile::open(&a)
            .unwrap()
            .append(&record("pp512"))
            .unwrap();
        let mut text = std::fs::read_to_string(&a).unwrap();
        text.push_str("2,x\n");
        std::fs::write(&a, text).unwrap();
        let out = dir.path().join("all.csv");
        let err = merge(&[a], &out).unwrap_err().to_string();
        assert!(err.contains("a.csv: line 3"), "{err}");
        assert!(!out.exists(), "nothing was written");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_435_200), "2026-11-23T12:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
