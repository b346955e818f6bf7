//! Suites: a TOML spec names a benchmark matrix (models × tests × threads) and how to run
//! it, so that a run is a file others can repeat and two boxes' results are comparable.
//! docs/specs.md describes the format.

use crate::bench::{RunSettings, TestSpec};
use crate::catalog::{self, Quant};
use crate::profiles::{error_line, first_line, line_of};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The spec file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    name: String,
    #[serde(default)]
    description: String,
    /// The profile this suite is sized for (its memory check in the tests).
    profile: Option<String>,
    models: Vec<ModelEntry>,
    /// llama-bench test names: pp512, tg128, pp512+tg128.
    tests: Vec<String>,
    #[serde(default = "default_depths")]
    depths: Vec<usize>,
    /// Thread counts [default: the box's physical cores].
    threads: Option<Vec<usize>>,
    #[serde(default = "default_repetitions")]
    repetitions: usize,
    /// Repeat until the 95% CI half-width is under this share of the mean, e.g. "5%".
    target_ci: Option<String>,
    #[serde(default = "default_max_repetitions")]
    max_repetitions: usize,
    #[serde(default = "default_warmup")]
    warmup: usize,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default = "default_device")]
    device: String,
    #[serde(default)]
    cooldown: Cooldown,
}

fn default_depths() -> Vec<usize> {
    vec![0]
}
fn default_repetitions() -> usize {
    5
}
fn default_max_repetitions() -> usize {
    30
}
fn default_warmup() -> usize {
    1
}
fn default_seed() -> u64 {
    42
}
fn default_device() -> String {
    "cpu".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    /// A catalog id, measured as its synthetic twin at `quant`.
    catalog: Option<String>,
    quant: Option<String>,
    /// A GGUF file; `~` and `${VAR}` are expanded.
    gguf: Option<String>,
    /// The file's expected sha256: a different file is refused before anything runs.
    sha256: Option<String>,
}

/// The pause between two configurations, so heat from one does not slow the next.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cooldown {
    /// Always wait this long.
    #[serde(default)]
    pub seconds: f64,
    /// Then wait until the hottest CPU sensor reads below this (where one is readable).
    pub below_c: Option<f32>,
    /// Never wait longer than this for `below_c`.
    #[serde(default = "default_max_wait")]
    pub max_wait_seconds: f64,
}

fn default_max_wait() -> f64 {
    300.0
}

/// Where a suite's model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    Gguf {
        path: PathBuf,
        sha256: Option<String>,
    },
    Twin {
        id: String,
        quant: Quant,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SuiteModel {
    /// `models[N]`, for errors.
    pub field: String,
    pub source: ModelSource,
}

/// A checked spec, ready to run.
#[derive(Debug, Clone)]
pub struct Suite {
    pub path: PathBuf,
    pub name: String,
    pub description: String,
    /// sha256 of the spec file's bytes.
    pub hash: String,
    pub profile: Option<String>,
    pub models: Vec<SuiteModel>,
    pub threads: Option<Vec<usize>>,
    pub run: RunSettings,
    pub cooldown: Cooldown,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: line {line}, field `{field}`: {message}\nhint: docs/specs.md describes every field; specs/example.toml is a working spec")]
    Invalid {
        path: String,
        line: usize,
        field: String,
        message: String,
    },
}

/// Expands a leading `~` and every `${VAR}`; an unset variable is an error naming it.
pub fn expand_path(text: &str) -> Result<PathBuf, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`{text}`: `${{` without a closing `}}`"))?;
        let name = &after[..end];
        let value = std::env::var(name)
            .map_err(|_| format!("`{text}`: the environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if out == "~" || out.starts_with("~/") {
        let home = std::env::var("HOME").map_err(|_| format!("`{text}`: HOME is not set"))?;
        out = format!("{home}{}", &out[1..]);
    }
    Ok(PathBuf::from(out))
}

/// Parses llama-bench's test names at a depth: `pp512`, `tg128`, `pp512+tg128`.
pub fn parse_test(name: &str, n_depth: usize) -> Option<TestSpec> {
    use crate::bench::TestKind;
    let number = |text: &str, prefix: &str| {
        text.strip_prefix(prefix)
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n > 0)
    };
    let name = name.trim();
    let (kind, n_prompt, n_gen) = match name.split_once('+') {
        Some((p, g)) => (TestKind::Pg, number(p, "pp")?, number(g, "tg")?),
        None => match number(name, "pp") {
            Some(p) => (TestKind::Pp, p, 0),
            None => (TestKind::Tg, 0, number(name, "tg")?),
        },
    };
    Some(TestSpec {
        kind,
        n_prompt,
        n_gen,
        n_depth,
    })
}

impl Suite {
    pub fn load(path: &Path) -> Result<Suite, SpecError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| SpecError::Io {
            path: name.clone(),
            source,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let mut suite = Suite::parse(&text, &name)?;
        suite.path = path.to_path_buf();
        suite.hash = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(suite)
    }

    /// Parses and checks everything that needs no file: syntax, fields, catalog ids,
    /// quantizations, test names. Files are checked by `check_files`.
    pub fn parse(text: &str, source_name: &str) -> Result<Suite, SpecError> {
        let invalid = |line: usize, field: &str, message: String| SpecError::Invalid {
            path: source_name.to_string(),
            line,
            field: field.to_string(),
            message,
        };
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|err| invalid(error_line(text, &err), "(syntax)", first_line(&err)))?;
        let spec: SpecFile = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let field = err.path().to_string();
            let inner = err.into_inner();
            invalid(error_line(text, &inner), &field, first_line(&inner))
        })?;
        let at = |field: &str| line_of(text, field);
        // Inline tables put many keys on one line: find the offending value itself.
        let at_value = |value: &str, field: &str| {
            text.lines()
                .position(|l| l.contains(&format!("\"{value}\"")))
                .map_or_else(|| at(field), |i| i + 1)
        };
        if spec.name.trim().is_empty() {
            return Err(invalid(at("name"), "name", "must not be empty".into()));
        }
        if spec.models.is_empty() {
            return Err(invalid(
                at("models"),
                "models",
                "name at least one model".into(),
            ));
        }
        let mut models = Vec::new();
        for (i, entry) in spec.models.iter().enumerate() {
            let field = format!("models[{i}]");
            let source = match (&entry.catalog, &entry.gguf) {
                (Some(id), None) => {
                    let model = catalog::find(id).map_err(|e| {
                        invalid(
                            at_value(id, "catalog"),
                            &format!("{field}.catalog"),
                            first(&e),
                        )
                    })?;
                    let quant_name = entry.quant.as_deref().ok_or_else(|| {
                        invalid(
                            at_value(id, "catalog"),
                            &format!("{field}.quant"),
                            "a catalog model needs a quant, e.g. quant = \"Q4_0\"".into(),
                        )
                    })?;
                    let quant = Quant::parse(quant_name).ok_or_else(|| {
                        invalid(
                            at_value(quant_name, "quant"),
                            &format!("{field}.quant"),
                            format!("unknown quantization `{quant_name}`"),
                        )
                    })?;
                    ModelSource::Twin {
                        id: model.id.clone(),
                        quant,
                    }
                }
                (None, Some(gguf)) => ModelSource::Gguf {
                    path: expand_path(gguf).map_err(|m| {
                        invalid(at_value(gguf, "gguf"), &format!("{field}.gguf"), m)
                    })?,
                    sha256: entry.sha256.as_ref().map(|s| s.to_ascii_lowercase()),
                },
                _ => {
                    return Err(invalid(
                        at("models"),
                        &field,
                        "give either catalog = \"ID\" with quant, or gguf = \"PATH\"".into(),
                    ))
                }
            };
            models.push(SuiteModel { field, source });
        }
        if spec.tests.is_empty() {
            return Err(invalid(
                at("tests"),
                "tests",
                "name at least one test".into(),
            ));
        }
        if spec.depths.is_empty() {
            return Err(invalid(
                at("depths"),
                "depths",
                "name at least one depth, e.g. [0]".into(),
            ));
        }
        // A repeated entry would run a configuration twice and write two rows for it.
        let repeated = |values: Vec<String>| {
            let mut seen = std::collections::HashSet::new();
            values.into_iter().find(|v| !seen.insert(v.clone()))
        };
        let repeats = [
            (
                "tests",
                repeated(spec.tests.iter().map(|t| t.trim().to_string()).collect()),
            ),
            (
                "depths",
                repeated(spec.depths.iter().map(usize::to_string).collect()),
            ),
            (
                "threads",
                repeated(
                    spec.threads
                        .iter()
                        .flatten()
                        .map(usize::to_string)
                        .collect(),
                ),
            ),
        ];
        for (field, value) in repeats {
            if let Some(value) = value {
                return Err(invalid(
                    at(field),
                    field,
                    format!("`{value}` is listed twice"),
                ));
            }
        }
        let mut tests = Vec::new();
        for &depth in &spec.depths {
            for name in &spec.tests {
                tests.push(parse_test(name, depth).ok_or_else(|| {
                    invalid(
                        at_value(name, "tests"),
                        "tests",
                        format!("`{name}` is not a test; use pp512, tg128 or pp512+tg128"),
                    )
                })?);
            }
        }
        if let Some(threads) = &spec.threads {
            if threads.is_empty() || threads.contains(&0) {
                return Err(invalid(
                    at("threads"),
                    "threads",
                    "give thread counts of 1 or more, e.g. [1, 2, 4]".into(),
                ));
            }
        }
        let target_ci = match &spec.target_ci {
            None => None,
            Some(text) => Some(
                text.trim_end_matches('%')
                    .parse::<f64>()
                    .ok()
                    .filter(|v| *v > 0.0 && *v < 100.0)
                    .map(|v| v / 100.0)
                    .ok_or_else(|| {
                        invalid(
                            at("target_ci"),
                            "target_ci",
                            format!("`{text}`: give a percentage such as \"5%\""),
                        )
                    })?,
            ),
        };
        if spec.repetitions == 0 {
            return Err(invalid(
                at("repetitions"),
                "repetitions",
                "must be 1 or more".into(),
            ));
        }
        if spec.max_repetitions < spec.repetitions {
            return Err(invalid(
                at("max_repetitions"),
                "max_repetitions",
                format!("must be at least repetitions ({})", spec.repetitions),
            ));
        }
        let device_ok = spec.device == "cpu"
            || ["cuda:", "metal:"].iter().any(|prefix| {
                spec.device
                    .strip_prefix(prefix)
                    .is_some_and(|n| n.parse::<usize>().is_ok())
            });
        if !device_ok {
            return Err(invalid(
                at("device"),
                "device",
                format!("`{}`: use \"cpu\", \"cuda:N\" or \"metal:N\"", spec.device),
            ));
        }
        let cooldown = &spec.cooldown;
        let wait = |seconds: f64| seconds >= 0.0 && seconds.is_finite();
        if !(wait(cooldown.seconds) && wait(cooldown.max_wait_seconds)) {
            return Err(invalid(
                at("cooldown"),
                "cooldown",
                "waits are seconds of 0 or more".into(),
            ));
        }
        let repetitions = spec.repetitions;
        Ok(Suite {
            path: PathBuf::from(source_name),
            name: spec.name.trim().to_string(),
            description: spec.description.clone(),
            hash: String::new(),
            profile: spec.profile.clone(),
            models,
            threads: spec.threads.clone(),
            run: RunSettings {
                tests,
                repetitions,
                max_repetitions: spec.max_repetitions,
                target_ci,
                warmup: spec.warmup,
                seed: spec.seed,
                device: spec.device.clone(),
            },
            cooldown: spec.cooldown.clone(),
        })
    }

    /// Thread counts to run: the spec's, or the box's physical cores.
    pub fn threads_for(&self, physical_cores: u32) -> Vec<usize> {
        self.threads
            .clone()
            .unwrap_or_else(|| vec![physical_cores.max(1) as usize])
    }

    /// Configurations to run, in order: per model, per thread count, per test.
    pub fn configurations(&self, threads: &[usize]) -> Vec<Configuration> {
        let mut all = Vec::new();
        for model in 0..self.models.len() {
            for &n_threads in threads {
                for test in &self.run.tests {
                    all.push(Configuration {
                        model,
                        n_threads,
                        test: test.clone(),
                    });
                }
            }
        }
        all
    }
}

/// The first line of an error: the hint after it does not fit in a spec error.
fn first(error: &dyn std::fmt::Display) -> String {
    error
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// One cell of the matrix: what a results row records.
#[derive(Debug, Clone, PartialEq)]
pub struct Configuration {
    pub model: usize,
    pub n_threads: usize,
    pub test: TestSpec,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::TestKind;

    const GOOD: &str = r#"
name = "tiny"
models = [
  { catalog = "smollm2-135m", quant = "Q4_0" },
  { gguf = "~/models/x.gguf", sha256 = "ABC" },
]
tests = ["pp64", "tg16", "pp32+tg8"]
depths = [0, 128]
threads = [1, 2]
repetitions = 3
cooldown = { seconds = 2, below_c = 60 }
"#;

    #[test]
    fn a_spec_expands_into_its_matrix() {
        let suite = Suite::parse(GOOD, "tiny.toml").unwrap();
        assert_eq!(suite.name, "tiny");
        assert_eq!(suite.run.tests.len(), 6, "3 tests at 2 depths");
        assert_eq!(suite.run.tests[3].n_depth, 128);
        assert_eq!(suite.run.repetitions, 3);
        assert_eq!(suite.cooldown.below_c, Some(60.0));
        let configs = suite.configurations(&suite.threads_for(8));
        assert_eq!(configs.len(), 2 * 2 * 6);
        assert_eq!(configs[0].n_threads, 1);
        assert_eq!(configs[6].n_threads, 2);
        match &suite.models[1].source {
            ModelSource::Gguf { path, sha256 } => {
                assert!(!path.starts_with("~"));
                assert_eq!(sha256.as_deref(), Some("abc"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_names_are_llama_benchs() {
        let pg = parse_test("pp512+tg128", 0).unwrap();
        assert_eq!((pg.kind, pg.n_prompt, pg.n_gen), (TestKind::Pg, 512, 128));
        assert_eq!(parse_test("tg7", 3).unwrap().name(), "tg7 @ d3");
        for bad in ["pp0", "tg", "512", "pp512+pp1", "tg-1"] {
            assert!(parse_test(bad, 0).is_none(), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let cases = [
            ("name = \"x\"\nmodels = [{ catalog = \"no-such\", quant = \"Q4_0\" }]\ntests = [\"tg8\"]\n", 2, "models[0].catalog", "no-such"),
            ("name = \"x\"\nmodels = [{ catalog = \"smollm2-135m\", quant = \"Q9\" }]\ntests = [\"tg8\"]\n", 2, "models[0].quant", "Q9"),
            ("name = \"x\"\nmodels = [{ gguf = \"a.gguf\" }]\ntests = [\"tg8\"]\nthreads = \"two\"\n", 4, "threads", "invalid type"),
            ("name = \"x\"\nmodels = [{ gguf = \"a.gguf\" }]\ntests = [\"tg8\", \"fast\"]\n", 3, "tests", "`fast`"),
            ("name = \"x\"\nmodels = [{ gguf = \"a.gguf\" }]\ntests = [\"tg8\"\n", 3, "(syntax)", ""),
            ("name = \"x\"\nmodel = []\n", 2, "model", "unknown field"),
            ("name = \"x\"\nmodels = [{ gguf = \"a.gguf\" }]\ntests = [\"tg8\"]\nthreads = [2, 4, 2]\n", 4, "threads", "`2` is listed twice"),
            ("name = \"x\"\nmodels = [{ gguf = \"a.gguf\" }]\ntests = [\"tg8\"]\ndepths = []\n", 4, "depths", "at least one depth"),
            ("name = \"x\"\nmodels = [{ gguf = \"a.gguf\" }]\ntests = [\"tg8\"]\nrepetitions = 0\n", 4, "repetitions", "1 or more"),
            ("name = \"x\"\nmodels = [{ gguf = \"a.gguf\" }]\ntests = [\"tg8\"]\ndevice = \"gpu\"\n", 4, "device", "cuda:N"),
            ("name = \"x\"\nmodels = [{ gguf = \"${FITBENCH_NO_SUCH_VAR}/a.gguf\" }]\ntests = [\"tg8\"]\n", 2, "models[0].gguf", "FITBENCH_NO_SUCH_VAR"),
        ];
        for (text, line, field, words) in cases {
            let err = Suite::parse(text, "s.toml").unwrap_err().to_string();
            assert!(
                err.contains(&format!("s.toml: line {line}, field `{field}`")),
                "{text}\n→ {err}"
            );
            assert!(err.contains(words), "{text}\n→ {err}");
        }
    }

    /// Estimated seconds for a suite on a box: every repetition and warm-up of every
    /// configuration, with the depth filled at prompt speed, plus the cool-downs.
    fn estimated_seconds(suite: &Suite, hw: &crate::probe::Hardware) -> f64 {
        use crate::estimate::{self, EstimateOptions, Fit, Footprint};
        let threads = suite.threads_for(hw.cpu.physical_cores);
        let context = suite.run.tests.iter().map(TestSpec::context).max().unwrap() as u64;
        let ubatch = suite.run.tests.iter().map(|t| t.n_prompt).max().unwrap() as u64;
        let mut seconds = 0.0;
        for model in &suite.models {
            let ModelSource::Twin { id, quant } = &model.source else {
                panic!("shipped suites use twins, to run without downloads")
            };
            let footprint = Footprint::from_catalog(catalog::find(id).unwrap(), *quant);
            let e = estimate::estimate(
                &footprint,
                hw,
                &EstimateOptions {
                    context: Some(context),
                    ubatch: Some(ubatch),
                    cpu_only: true,
                    ..EstimateOptions::default()
                },
            );
            assert_eq!(
                e.placement.fit,
                Fit::FitsInRam,
                "{}: {id} {} does not fit {}",
                suite.name,
                quant.name,
                hw.name
            );
            for &n in &threads {
                // Prompt processing is compute-bound: it scales with the threads used.
                let share = n as f64 / f64::from(hw.cpu.physical_cores.max(1));
                let pp = e.speed.pp_tps * share.min(1.0);
                for t in &suite.run.tests {
                    let once =
                        (t.n_prompt + t.n_depth) as f64 / pp + t.n_gen as f64 / e.speed.tg_tps;
                    seconds += once * (suite.run.warmup + suite.run.repetitions) as f64
                        + suite.cooldown.seconds;
                }
            }
        }
        seconds
    }

    #[test]
    fn shipped_suites_fit_their_box_and_finish_well_inside_30_minutes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("specs");
        for (name, profile) in [
            ("example", "pi3b"),
            ("pi3b", "pi3b"),
            ("pi4", "pi4-4gb"),
            ("desktop", "desktop-i7-9700k"),
        ] {
            let suite = Suite::load(&dir.join(format!("{name}.toml"))).unwrap();
            assert_eq!(suite.name, name);
            if name != "example" {
                assert_eq!(suite.profile.as_deref(), Some(profile));
            }
            let hw = crate::profiles::resolve(profile).unwrap();
            let minutes = estimated_seconds(&suite, &hw) / 60.0;
            // The estimate runs up to 3× ahead of candle on small boxes (docs/estimates.md):
            // a third of the budget leaves room for that.
            assert!(minutes < 10.0, "{name} on {profile}: {minutes:.1} min");
            eprintln!("{name} on {profile}: {minutes:.1} min estimated");
        }
    }

    #[test]
    fn paths_expand_home_and_variables() {
        let home = std::env::var("HOME").unwrap();
        assert_eq!(
            expand_path("~/m.gguf").unwrap(),
            PathBuf::from(format!("{home}/m.gguf"))
        );
        assert_eq!(
            expand_path("${HOME}/a/${HOME}").unwrap(),
            PathBuf::from(format!("{home}/a/{home}"))
        );
        assert!(expand_path("${HOME").is_err());
    }
}
