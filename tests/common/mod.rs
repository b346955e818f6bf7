//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs fitbench in `cwd` with `profile_dir` as the saved-profile folder and a private
/// cache, so tests never touch ./profiles or the user's cache.
pub fn fitbench_in(cwd: &Path, profile_dir: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fitbench"));
    command
        .args(args)
        .current_dir(cwd)
        .env("FITBENCH_CACHE_DIR", shared_cache_dir());
    if let Some(dir) = profile_dir {
        command.env("FITBENCH_PROFILE_DIR", dir);
    }
    command.output().expect("the fitbench binary runs")
}

pub fn fitbench(args: &[&str]) -> Output {
    fitbench_in(Path::new(env!("CARGO_MANIFEST_DIR")), None, args)
}

/// One bandwidth cache for the whole test run, so only the first test pays for measuring.
fn shared_cache_dir() -> PathBuf {
    std::env::temp_dir().join("fitbench-test-cache")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "failed: {}", stderr(output));
    serde_json::from_slice(&output.stdout).expect("valid JSON on stdout")
}

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

/// A real model fetched by scripts/fetch-test-models.sh; fails with what to run when absent.
pub fn test_model(file: &str) -> PathBuf {
    let dir = std::env::var_os("FITBENCH_TEST_MODELS").unwrap_or_else(|| {
        panic!("FITBENCH_TEST_MODELS is not set: run the tests with scripts/test.sh, which fetches the test models")
    });
    let path = PathBuf::from(dir).join(file);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-test-models.sh",
        path.display()
    );
    path
}
