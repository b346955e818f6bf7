//! Runs the fitbench binary the way a user does and checks what it prints.

mod common;

use common::{fitbench, fitbench_in, json, stderr, stdout};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Dotted paths of every leaf in a JSON object; array elements use `[]`.
fn leaf_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_paths(child, &path, out);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for item in items {
                leaf_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// The field names docs/probe.md documents: the first backticked word of each table row.
fn documented_probe_fields() -> Vec<String> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/probe.md"))
        .expect("docs/probe.md exists");
    doc.lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('`').nth(1).map(str::to_string))
        .collect()
}

#[test]
fn probe_json_has_every_documented_field_and_nothing_undocumented() {
    let probe = json(&fitbench(&["probe", "--json"]));
    let documented = documented_probe_fields();
    let mut present = Vec::new();
    leaf_paths(&probe, "", &mut present);
    for path in &present {
        assert!(
            documented.contains(path),
            "`{path}` is printed but not in docs/probe.md"
        );
    }
    // Fields every probe can fill, whatever the box.
    for always in [
        "schema_version",
        "name",
        "origin",
        "os.name",
        "os.kernel",
        "cpu.model",
        "cpu.arch",
        "cpu.logical_cores",
        "cpu.physical_cores",
        "cpu.simd",
        "cpu.compiled_simd",
        "memory.total_bytes",
        "memory.available_bytes",
        "memory.swap_total_bytes",
        "memory.swap_used_bytes",
        "gpus",
        "thermal.sensors",
        "notes",
    ] {
        assert!(
            documented.iter().any(|d| d == always),
            "{always} undocumented"
        );
        assert!(
            present.iter().any(|p| p == always),
            "{always} missing from probe --json"
        );
    }
}

#[test]
fn probe_reports_this_box() {
    let probe = json(&fitbench(&["probe", "--json"]));
    let total = probe["memory"]["total_bytes"].as_u64().unwrap();
    let available = probe["memory"]["available_bytes"].as_u64().unwrap();
    assert!(total > 0);
    assert!(available <= total);
    let logical = probe["cpu"]["logical_cores"].as_u64().unwrap();
    let physical = probe["cpu"]["physical_cores"].as_u64().unwrap();
    assert!(
        physical >= 1 && physical <= logical,
        "{physical} of {logical}"
    );
    // A container may be allowed fewer CPUs than the box has, never more.
    let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(logical as usize >= usable, "{logical} < {usable}");
    assert_eq!(probe["cpu"]["arch"], std::env::consts::ARCH);
    assert_eq!(probe["origin"], "probe");
}

#[test]
fn probe_simd_agrees_with_std_arch_detection() {
    let probe = json(&fitbench(&["probe", "--json"]));
    let reported: Vec<&str> = probe["cpu"]["simd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for (name, detected) in std_arch_features() {
        assert_eq!(
            reported.contains(&name),
            detected,
            "{name}: probe says {reported:?}"
        );
    }
}

#[cfg(target_arch = "x86_64")]
fn std_arch_features() -> Vec<(&'static str, bool)> {
    use std::arch::is_x86_feature_detected as has;
    vec![
        ("sse4.2", has!("sse4.2")),
        ("avx", has!("avx")),
        ("avx2", has!("avx2")),
        ("fma", has!("fma")),
        ("f16c", has!("f16c")),
        ("avx512f", has!("avx512f")),
        ("avx512bw", has!("avx512bw")),
        ("avx512vl", has!("avx512vl")),
        ("avx512vnni", has!("avx512vnni")),
        ("avxvnni", has!("avxvnni")),
    ]
}

#[cfg(target_arch = "aarch64")]
fn std_arch_features() -> Vec<(&'static str, bool)> {
    use std::arch::is_aarch64_feature_detected as has;
    vec![
        ("neon", has!("neon")),
        ("dotprod", has!("dotprod")),
        ("i8mm", has!("i8mm")),
        ("sve", has!("sve")),
        ("fp16", has!("fp16")),
    ]
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn std_arch_features() -> Vec<(&'static str, bool)> {
    Vec::new()
}

#[test]
fn probe_without_gpu_says_so_and_succeeds() {
    let probe = json(&fitbench(&["probe", "--json"]));
    let table = fitbench(&["probe"]);
    assert!(table.status.success());
    let text = stdout(&table);
    assert!(text.contains("RAM") && text.contains("SIMD"), "{text}");
    if probe["gpus"].as_array().unwrap().is_empty() {
        assert!(text.contains("no NVIDIA GPU found"), "{text}");
    } else {
        let name = probe["gpus"][0]["name"].as_str().unwrap();
        assert!(text.contains(name), "{text}");
    }
}

#[test]
fn no_arguments_recommends_for_this_box() {
    let output = fitbench(&[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    // The same defaults as `fitbench recommend`.
    assert!(text.contains("chat task, at least 2.0 tok/s"), "{text}");
    let explicit = stdout(&fitbench(&["recommend"]));
    let first_line = |t: &str| t.lines().next().unwrap_or("").to_string();
    assert_eq!(first_line(&text), first_line(&explicit));
    assert!(
        text.contains("RAM?") && text.contains("Upgrade path"),
        "{text}"
    );
}

/// The field names docs/recommend.md documents.
fn documented_fields(doc: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(doc))
        .expect("the doc exists");
    doc.lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('`').nth(1).map(str::to_string))
        .collect()
}

#[test]
fn recommend_json_fields_are_documented() {
    let r = json(&fitbench(&[
        "recommend",
        "--profile",
        "ryzen5-3600-gtx1050ti",
        "--json",
    ]));
    let documented = documented_fields("recommend.md");
    let mut present = Vec::new();
    leaf_paths(&r, "", &mut present);
    for path in &present {
        // Estimates are documented once, under their own prefix.
        let path = path.replace("picks[].estimate.", "estimate.");
        assert!(
            documented.contains(&path),
            "`{path}` is printed but not in docs/recommend.md"
        );
    }
    assert!(r["picks"].as_array().unwrap().len() == 5);
    assert_eq!(r["task"], "chat");
}

#[test]
fn recommend_markdown_is_a_table_with_the_tree_path() {
    let output = fitbench(&["recommend", "--profile", "pi3b", "--markdown"]);
    assert!(output.status.success());
    let text = stdout(&output);
    assert!(text.contains("| # | model | quant |"), "{text}");
    assert!(text.contains("| --- |"), "{text}");
    assert!(text.contains("- **RAM?** 1.0 GiB total"), "{text}");
    assert!(
        text.contains("**Why not**") && text.contains("phi-3-mini"),
        "{text}"
    );
}

#[test]
fn recommend_explains_an_impossible_constraint_and_exits_0() {
    let output = fitbench(&["recommend", "--profile", "pi3b", "--min-tps", "500"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("nothing in the catalog fits this box; the closest:"),
        "{text}"
    );
    assert!(text.contains("below the 500 tok/s floor"), "{text}");
}

#[test]
fn recommend_refuses_an_unknown_profile_with_the_list() {
    let output = fitbench(&["recommend", "--profile", "pi9"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("available: apple-m1-8gb"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn probe_bandwidth_measures_plausible_numbers() {
    let probe = json(&fitbench(&["probe", "--json", "--bandwidth"]));
    let measured = &probe["memory"]["measured"];
    let single = measured["single_thread_gbs"].as_f64().unwrap();
    let all = measured["all_threads_gbs"].as_f64().unwrap();
    // Any DRAM since DDR2 streams at least 0.5 GB/s; nothing a CPU reads from DRAM reaches 2 TB/s.
    assert!((0.5..2000.0).contains(&single), "{single}");
    assert!((0.5..2000.0).contains(&all), "{all}");
    assert!(measured["buffer_mib"].as_u64().unwrap() >= 16);
    assert_eq!(measured["threads"], probe["cpu"]["logical_cores"]);
}

const SHIPPED: [&str; 10] = [
    "apple-m1-8gb",
    "desktop-i7-9700k",
    "desktop-rtx3060-12gb",
    "jetson-orin-nano-8gb",
    "n100-16gb",
    "phone-8gb",
    "pi3b",
    "pi4-4gb",
    "pi5-8gb",
    "ryzen5-3600-gtx1050ti",
];

#[test]
fn profiles_lists_every_shipped_box() {
    let empty = tempfile::tempdir().unwrap();
    let output = fitbench_in(empty.path(), Some(empty.path()), &["profiles"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for name in SHIPPED {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    let list = json(&fitbench_in(
        empty.path(),
        Some(empty.path()),
        &["profiles", "--json"],
    ));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, SHIPPED);
    let pi3b = &list[6];
    assert_eq!(pi3b["source"], "shipped");
    assert!(pi3b["memory"]["total_bytes"].as_u64().unwrap() <= 1 << 30);
}

#[test]
fn save_writes_a_profile_that_loads_back_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let save = |extra: &[&str]| {
        let mut args = vec!["probe", "--json", "--save", "my-box"];
        args.extend_from_slice(extra);
        fitbench_in(dir.path(), Some(dir.path()), &args)
    };
    let saved = json(&save(&[]));
    assert_eq!(saved["name"], "my-box");
    let path = dir.path().join("my-box.toml");
    let original = std::fs::read_to_string(&path).unwrap();

    let loaded = json(&fitbench_in(
        dir.path(),
        Some(dir.path()),
        &["profiles", "my-box", "--json"],
    ));
    assert_eq!(loaded, saved);

    let again = save(&[]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);

    assert!(save(&["--force"]).status.success());
}

#[test]
fn a_malformed_profile_names_the_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let pi3b = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("profiles/pi3b.toml");
    let text = std::fs::read_to_string(pi3b)
        .unwrap()
        .replace("name = \"pi3b\"", "name = \"broken\"");
    let broken = text.replacen("total_bytes = ", "total_bytes = -", 1);
    let line = broken
        .lines()
        .position(|l| l.starts_with("total_bytes = -"))
        .unwrap()
        + 1;
    std::fs::write(dir.path().join("broken.toml"), broken).unwrap();

    for args in [&["profiles"][..], &["profiles", "broken"][..]] {
        let output = fitbench_in(dir.path(), Some(dir.path()), args);
        assert!(!output.status.success());
        let err = stderr(&output);
        assert!(err.contains("broken.toml"), "{err}");
        assert!(err.contains(&format!("line {line}")), "{err}");
        assert!(err.contains("memory.total_bytes"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn an_unknown_profile_lists_the_available_ones() {
    let dir = tempfile::tempdir().unwrap();
    let output = fitbench_in(dir.path(), Some(dir.path()), &["profiles", "pi9"]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains("no profile named `pi9`"), "{err}");
    for name in SHIPPED {
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn a_bad_profile_name_is_refused_before_probing() {
    let dir = tempfile::tempdir().unwrap();
    let output = fitbench_in(
        dir.path(),
        Some(dir.path()),
        &["probe", "--save", "../escape"],
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("may only use"),
        "{}",
        stderr(&output)
    );
    assert!(!dir.path().join("../escape.toml").exists());
}

#[test]
fn recommend_is_calibrated_by_bench_results_for_the_box() {
    use fitbench::results::{BenchRecord, ResultsFile};
    let dir = tempfile::tempdir().unwrap();
    let mut file = ResultsFile::open(&dir.path().join("pi.csv")).unwrap();
    for ratio in [0.5, 0.5] {
        file.append(&BenchRecord {
            schema_version: fitbench::results::SCHEMA_VERSION,
            host: "pi3b".into(),
            backend: "cpu".into(),
            n_threads: 4,
            n_gen: 128,
            measured_over_predicted: ratio,
            ..BenchRecord::default()
        })
        .unwrap();
    }
    let run = |args: &[&str], results: &Path| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fitbench"));
        command.args(args).env("FITBENCH_RESULTS_DIR", results);
        json(&command.output().unwrap())
    };
    let recommend = ["recommend", "--profile", "pi3b", "--json"];
    let none = dir.path().join("none");
    assert_eq!(
        run(&recommend, dir.path())["efficiencies_source"],
        "calibrated from 2 runs on pi3b"
    );
    assert_eq!(run(&recommend, &none)["efficiencies_source"], "published");
    let estimate = [
        "estimate",
        "-m",
        "qwen2-0.5b",
        "-q",
        "q4_0",
        "--profile",
        "pi3b",
        "--json",
    ];
    let tg = |r: Value| r["speed"]["tg_tps"].as_f64().unwrap();
    let ratio = tg(run(&estimate, dir.path())) / tg(run(&estimate, &none));
    // Half the efficiency, plus the fixed per-layer cost that calibration leaves alone.
    assert!((0.45..0.6).contains(&ratio), "{ratio}");
}
