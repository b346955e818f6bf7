//! `fitbench run`, `compare` and `merge`: specs on real and synthetic weights, resuming after
//! SIGKILL, and bad specs refused before anything runs.

mod common;

use common::{json, stderr, stdout, test_model, SMOLLM2};
use fitbench::results::{self, BenchRecord};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn fitbench(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fitbench"));
    command.args(args).current_dir(dir).env(
        "FITBENCH_CACHE_DIR",
        std::env::temp_dir().join("fitbench-test-cache"),
    );
    command
}

fn run(dir: &Path, args: &[&str]) -> Output {
    fitbench(dir, args).output().unwrap()
}

fn real_weights_spec(dir: &Path, name: &str) -> PathBuf {
    test_model(SMOLLM2); // fails with what to run when the model is missing
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"name = "{name}"
models = [{{ gguf = "${{FITBENCH_TEST_MODELS}}/{SMOLLM2}", sha256 = "{SMOLLM2_SHA256}" }}]
tests = ["pp16", "tg4"]
threads = [2]
repetitions = 4
warmup = 0
"#
        ),
    )
    .unwrap();
    path
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_spec_over_real_weights_runs_and_a_resume_runs_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let spec = real_weights_spec(dir.path(), "real");
    let output = run(dir.path(), &["run", spec.to_str().unwrap(), "--json"]);
    let rows = json(&output);
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    let csv = dir.path().join("results/real.csv");
    let written = results::read(&csv).unwrap();
    let hash = sha256_hex(&std::fs::read(&spec).unwrap());
    let tests: Vec<&str> = written.iter().map(|r| r.test.as_str()).collect();
    assert_eq!(tests, ["pp16", "tg4"]);
    for r in &written {
        assert_eq!(r.spec_name, "real");
        assert_eq!(r.spec_hash, hash);
        assert_eq!(r.model_sha256, SMOLLM2_SHA256);
        assert_eq!(r.samples_ts.split(';').count(), 4);
        assert!(r.avg_ts > 0.0);
    }

    let before = std::fs::read(&csv).unwrap();
    let output = run(dir.path(), &["run", spec.to_str().unwrap(), "--resume"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("2 of 2 configurations already in"));
    assert!(
        stderr(&output).contains("nothing to run"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read(&csv).unwrap(),
        before,
        "the file is untouched"
    );

    // compare: a second run of the same spec, matched row by row.
    let second = dir.path().join("second.csv");
    let output = run(
        dir.path(),
        &[
            "run",
            spec.to_str().unwrap(),
            "-o",
            second.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let output = run(
        dir.path(),
        &[
            "compare",
            csv.to_str().unwrap(),
            second.to_str().unwrap(),
            "--json",
        ],
    );
    let report = json(&output);
    let comparisons = report["comparisons"].as_array().unwrap();
    assert_eq!(comparisons.len(), 2);
    let b_rows = results::read(&second).unwrap();
    let mean = |r: &BenchRecord| {
        let x: Vec<f64> = r
            .samples_ts
            .split(';')
            .map(|s| s.parse().unwrap())
            .collect();
        x.iter().sum::<f64>() / x.len() as f64
    };
    for c in comparisons {
        let test = c["test"].as_str().unwrap();
        let a = written.iter().find(|r| r.test == test).unwrap();
        let b = b_rows.iter().find(|r| r.test == test).unwrap();
        let ratio = c["ratio"].as_f64().unwrap();
        assert!((ratio - mean(b) / mean(a)).abs() < 1e-9, "{test}: {ratio}");
        assert_eq!(c["a"]["samples"], 4);
        let p = c["p_value"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p));
        assert_eq!(c["significant"].as_bool().unwrap(), p < 0.05);
        assert!(c["ratio_stddev"].as_f64().unwrap() > 0.0);
    }
    let table = stdout(&run(
        dir.path(),
        &["compare", csv.to_str().unwrap(), second.to_str().unwrap()],
    ));
    assert!(table.contains("B/A") && table.contains("tg4"), "{table}");

    // merge: both runs in one file, then again without duplicates.
    let all = dir.path().join("all.csv");
    for expected in [
        "4 row(s) written, 0 duplicate",
        "0 row(s) written, 4 duplicate",
    ] {
        let output = run(
            dir.path(),
            &[
                "merge",
                csv.to_str().unwrap(),
                second.to_str().unwrap(),
                "-o",
                all.to_str().unwrap(),
            ],
        );
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
    }
    assert_eq!(results::read(&all).unwrap().len(), 4);
}

/// A small deterministic generator: the kill points vary, and a failure can be replayed
/// from the seed in its message.
struct Xorshift(u64);

impl Xorshift {
    fn next_millis(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low)
    }
}

fn configuration_keys(rows: &[BenchRecord]) -> Vec<(String, String, usize)> {
    rows.iter()
        .map(|r| (r.model_filename.clone(), r.test.clone(), r.n_threads))
        .collect()
}

#[test]
fn a_run_killed_at_random_moments_resumes_without_losing_or_tearing_rows() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("specs/example.toml");
    let csv = dir.path().join("killed.csv");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut random = Xorshift(seed);
    let mut kills = 0;
    let mut rows_before_the_last_run = 0;
    for _ in 0..8 {
        let mut child = fitbench(
            dir.path(),
            &["run", spec.to_str().unwrap(), "-o", csv.to_str().unwrap()],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
        std::thread::sleep(Duration::from_millis(random.next_millis(300, 10_000)));
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        if csv.exists() {
            let text = std::fs::read_to_string(&csv).unwrap();
            assert!(text.ends_with('\n'), "seed {seed}: a torn line:\n{text}");
            let rows = results::read(&csv)
                .unwrap_or_else(|e| panic!("seed {seed}: the file does not read: {e}"));
            let keys = configuration_keys(&rows);
            let unique: HashSet<_> = keys.iter().collect();
            assert_eq!(
                unique.len(),
                keys.len(),
                "seed {seed}: a configuration ran twice"
            );
            rows_before_the_last_run = rows.len();
            // The whole suite takes about 12 s here: a run that finished before its kill
            // leaves the next one nothing to be killed in, so it starts afresh.
            if finished {
                std::fs::remove_file(&csv).unwrap();
            }
        }
    }
    assert!(
        kills >= 4,
        "seed {seed}: only {kills} runs were killed mid-way"
    );
    assert!(
        rows_before_the_last_run > 0,
        "seed {seed}: no killed run got as far as a row"
    );

    let output = run(
        dir.path(),
        &["run", spec.to_str().unwrap(), "-o", csv.to_str().unwrap()],
    );
    assert!(output.status.success(), "seed {seed}: {}", stderr(&output));
    let rows = results::read(&csv).unwrap();
    let keys: HashSet<_> = configuration_keys(&rows).into_iter().collect();
    assert_eq!(
        rows.len(),
        8,
        "seed {seed}: 2 models × 2 tests × 2 thread counts"
    );
    assert_eq!(keys.len(), 8, "seed {seed}");
    assert!(rows.iter().all(|r| r.spec_name == "example" && r.synthetic));
}

fn refused(dir: &Path, spec_text: &str, env: &[(&str, &str)]) -> String {
    let spec = dir.join("bad.toml");
    std::fs::write(&spec, spec_text).unwrap();
    let out = dir.join("bad.csv");
    let mut command = fitbench(
        dir,
        &["run", spec.to_str().unwrap(), "-o", out.to_str().unwrap()],
    );
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    assert!(!output.status.success(), "ran: {}", stdout(&output));
    assert!(
        !out.exists(),
        "nothing may be written before the checks pass"
    );
    stderr(&output)
}

#[test]
fn bad_specs_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let err = refused(
        d,
        "name = \"x\"\nmodels = [{ catalog = \"llama-9b\", quant = \"Q4_0\" }]\ntests = [\"tg8\"]\n",
        &[],
    );
    assert!(
        err.contains("bad.toml: line 2, field `models[0].catalog`"),
        "{err}"
    );
    assert!(err.contains("no model `llama-9b`"), "{err}");

    let err = refused(
        d,
        "name = \"x\"\nmodels = [{ gguf = \"${HOME}/no/such.gguf\" }]\ntests = [\"tg8\"]\n",
        &[],
    );
    assert!(
        err.contains("models[0].gguf") && err.contains("no/such.gguf: no such file"),
        "{err}"
    );

    let model = test_model(SMOLLM2);
    let err = refused(
        d,
        &format!(
            "name = \"x\"\nmodels = [{{ gguf = \"{}\", sha256 = \"{}\" }}]\ntests = [\"tg8\"]\n",
            model.display(),
            "0".repeat(64)
        ),
        &[],
    );
    assert!(
        err.contains("models[0].sha256") && err.contains(SMOLLM2_SHA256),
        "{err}"
    );

    let err = refused(
        d,
        "name = \"x\"\nmodels = [\n  { catalog = \"smollm2-135m\" quant = \"Q4_0\" },\n]\n",
        &[],
    );
    assert!(err.contains("bad.toml: line 3, field `(syntax)`"), "{err}");

    let err = refused(
        d,
        "name = \"x\"\nmodels = [{ catalog = \"tinyllama-1.1b\", quant = \"Q8_0\" }]\ntests = [\"tg8\"]\n",
        &[("FITBENCH_MEMORY_LIMIT", "300000000")],
    );
    assert!(
        err.contains("models[0]: tinyllama-1.1b Q8_0: refusing to load"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
}
