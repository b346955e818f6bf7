//! Command-line arguments. Later issues add `recommend`, `bench`, `synth`, `report`...

use crate::recommend::{LicenseFilter, Task, DEFAULT_MIN_TPS};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "fitbench",
    version,
    about = "Which language model fits this box, and how fast will it really run here?",
    long_about = "Which language model fits this box, and how fast will it really run here?\n\n\
                  Without a command, fitbench probes this box and recommends models for it."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Recommend models and quantizations for this box or a profile (the default command).
    Recommend(RecommendArgs),
    /// Report this box: memory, CPU, SIMD, GPUs, board and temperatures.
    Probe(ProbeArgs),
    /// List the hardware profiles fitbench can answer for.
    Profiles(ProfilesArgs),
    /// List the model catalog (and with --quants, the quantization table).
    Models(ModelsArgs),
    /// Read a GGUF file's header: architecture, parameters, quant mix, and whether it fits.
    Inspect(InspectArgs),
    /// Estimate memory and speed of a catalog model at a quantization.
    Estimate(EstimateArgs),
    /// Find the GGUF models already on this box (Ollama, Hugging Face, LM Studio, folders).
    Scan(ScanArgs),
    /// Measure token throughput with candle on a GGUF file or a catalog model's synthetic twin.
    Bench(BenchArgs),
    /// Write a GGUF with random weights of exactly a catalog model's shapes.
    Synth(SynthArgs),
    /// Run a benchmark suite from a spec file; resumes where an earlier run stopped.
    Run(RunArgs),
    /// Compare two results files configuration by configuration: ratios and significance.
    Compare(CompareArgs),
    /// Merge results files into one, checking schemas and dropping duplicate rows.
    Merge(MergeArgs),
    /// Charts (PNG, SVG) and a Markdown report from results files, one box or many.
    Report(ReportArgs),
    /// Internal: one bench worker process (reads its spec as JSON on stdin).
    #[command(hide = true)]
    BenchWorker,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A GGUF file to measure.
    #[arg(long, conflicts_with_all = ["model", "quant"], required_unless_present = "model")]
    pub gguf: Option<std::path::PathBuf>,
    /// A catalog model: its synthetic twin is written to the cache on first use.
    #[arg(long, short, requires = "quant")]
    pub model: Option<String>,
    /// Quantization for --model.
    #[arg(long, short)]
    pub quant: Option<String>,
    /// Prompt lengths for pp tests (0 to skip), e.g. 128,512.
    #[arg(
        short = 'p',
        long = "n-prompt",
        default_value = "512",
        value_name = "N,..."
    )]
    pub n_prompt: String,
    /// Generation lengths for tg tests (0 to skip).
    #[arg(
        short = 'n',
        long = "n-gen",
        default_value = "128",
        value_name = "N,..."
    )]
    pub n_gen: String,
    /// Prompt-then-generation tests, e.g. 512,128 (repeatable).
    #[arg(long = "pg", value_name = "P,G")]
    pub pg: Vec<String>,
    /// Context depths filled before each test, e.g. 0,1024.
    #[arg(
        short = 'd',
        long = "n-depth",
        default_value = "0",
        value_name = "N,..."
    )]
    pub n_depth: String,
    /// Thread counts to sweep [default: physical cores].
    #[arg(short = 't', long = "threads", value_name = "N,...")]
    pub threads: Option<String>,
    /// Repetitions per test (the minimum with --target-ci).
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub repetitions: usize,
    /// Repeat until the 95% confidence half-width is under this share of the mean, e.g. 5%.
    #[arg(long, value_name = "PERCENT")]
    pub target_ci: Option<String>,
    /// Upper bound on repetitions with --target-ci.
    #[arg(long, default_value_t = 30)]
    pub max_repetitions: usize,
    /// Untimed runs before each test.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Device: cpu, cuda:N (a build with --features cuda) or metal:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Seed for the random token ids.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Also greedy-decode a short answer with the file's tokenizer (real weights only).
    #[arg(long)]
    pub sample: bool,
    /// Results file rows are appended to.
    #[arg(short = 'o', long, default_value = "results/bench.csv")]
    pub output: std::path::PathBuf,
    /// Run even when the estimate says the model would need swap.
    #[arg(long)]
    pub force: bool,
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    #[arg(long)]
    pub markdown: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The suite's spec (docs/specs.md; specs/example.toml).
    #[arg(value_name = "SPEC.toml")]
    pub spec: std::path::PathBuf,
    /// Results file [default: results/SPEC-NAME.csv].
    #[arg(short = 'o', long)]
    pub output: Option<std::path::PathBuf>,
    /// Require rows of this spec in the results file and run only what they lack (what a
    /// run does anyway when it finds them).
    #[arg(long)]
    pub resume: bool,
    /// Run even when the estimate says a model would need swap.
    #[arg(long)]
    pub force: bool,
    /// Print this run's rows as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The baseline.
    #[arg(value_name = "A.csv")]
    pub baseline: std::path::PathBuf,
    /// The results compared with it: ratios are B/A.
    #[arg(value_name = "B.csv")]
    pub candidate: std::path::PathBuf,
    /// Only A's rows from this box (a file holding several boxes).
    #[arg(long, value_name = "HOST")]
    pub host_a: Option<String>,
    /// Only B's rows from this box.
    #[arg(long, value_name = "HOST")]
    pub host_b: Option<String>,
    /// Print JSON (fields in docs/specs.md).
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    #[arg(long)]
    pub markdown: bool,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Results files, of any schema fitbench reads.
    #[arg(required = true, value_name = "RESULTS.csv")]
    pub inputs: Vec<std::path::PathBuf>,
    /// The merged file; rows it already holds are not written twice.
    #[arg(short = 'o', long, value_name = "FILE.csv")]
    pub output: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Results files written by `fitbench bench` or `fitbench run`.
    #[arg(required = true, value_name = "RESULTS.csv")]
    pub inputs: Vec<std::path::PathBuf>,
    /// Folder for report.md and the charts [default: reports/ and the first file's name].
    #[arg(long, value_name = "DIR")]
    pub out: Option<std::path::PathBuf>,
    /// Chart formats, comma-separated: png, svg.
    #[arg(long, default_value = "png,svg", value_name = "FORMAT,...")]
    pub format: String,
    /// The report's title.
    #[arg(long, default_value = "fitbench report")]
    pub title: String,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Catalog id, e.g. tinyllama-1.1b.
    #[arg(long, short)]
    pub model: String,
    /// Quantization scheme, e.g. Q4_0.
    #[arg(long, short)]
    pub quant: String,
    /// Output file [default: the synthetic-model cache].
    #[arg(short = 'o', long)]
    pub output: Option<std::path::PathBuf>,
}

/// The box to answer for and how to size the model on it.
#[derive(Debug, Args, Clone, Default)]
pub struct TargetArgs {
    /// Answer for a profile (name or TOML path) instead of this box.
    #[arg(long, value_name = "NAME|FILE")]
    pub profile: Option<String>,
    /// Context length in tokens [default: min(4096, the model's maximum)].
    #[arg(long, value_name = "N")]
    pub ctx: Option<u64>,
    /// Prompt batch size to reserve buffers for (llama.cpp's -ub) [default: 512].
    #[arg(long, value_name = "N")]
    pub ubatch: Option<u64>,
    /// KV cache element type: f16 or q8_0.
    #[arg(long, value_name = "TYPE", default_value = "f16")]
    pub kv_type: String,
    /// Plan for the CPU even when there is a GPU.
    #[arg(long)]
    pub cpu_only: bool,
}

/// How many picks `recommend` shows unless told.
const DEFAULT_TOP: usize = 5;

#[derive(Debug, Args)]
pub struct RecommendArgs {
    /// Answer for a profile (name or TOML path) instead of this box.
    #[arg(long, value_name = "NAME|FILE")]
    pub profile: Option<String>,
    /// What the model is for; ranks by the matching published scores.
    #[arg(long, value_enum, default_value_t)]
    pub task: Task,
    /// Context length in tokens [default: the decision tree's plan for this box's RAM].
    #[arg(long, value_name = "N")]
    pub ctx: Option<u64>,
    /// Speed floor: leave out what generates slower than this, in tokens per second.
    #[arg(long, value_name = "TOK/S", default_value_t = DEFAULT_MIN_TPS)]
    pub min_tps: f64,
    /// Only models under a permissive license.
    #[arg(long, value_enum, default_value_t)]
    pub license: LicenseFilter,
    /// Plan for the CPU even when there is a GPU.
    #[arg(long)]
    pub cpu_only: bool,
    /// How many picks to show.
    #[arg(long, default_value_t = DEFAULT_TOP, value_name = "N")]
    pub top: usize,
    /// Print JSON (fields in docs/recommend.md).
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Print Markdown, for an issue or a README.
    #[arg(long)]
    pub markdown: bool,
}

/// `fitbench` with no command: the same defaults as `fitbench recommend`.
impl Default for RecommendArgs {
    fn default() -> RecommendArgs {
        RecommendArgs {
            profile: None,
            task: Task::default(),
            ctx: None,
            min_tps: DEFAULT_MIN_TPS,
            license: LicenseFilter::default(),
            cpu_only: false,
            top: DEFAULT_TOP,
            json: false,
            markdown: false,
        }
    }
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Show the quantization table (GGML types, bits per weight, schemes) instead.
    #[arg(long)]
    pub quants: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The .gguf file (or an Ollama blob).
    pub file: std::path::PathBuf,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Also list every tensor.
    #[arg(long)]
    pub tensors: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EstimateArgs {
    /// Catalog id, e.g. phi-3-mini (see `fitbench models`).
    #[arg(long, short)]
    pub model: String,
    /// Quantization scheme, any case: Q4_K_M, q8_0, F16...
    #[arg(long, short)]
    pub quant: String,
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Folders to search as well as the default model stores.
    pub dirs: Vec<std::path::PathBuf>,
    /// Search only the given folders, not Ollama, Hugging Face and LM Studio stores.
    #[arg(long)]
    pub no_default_stores: bool,
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Default)]
pub struct ProbeArgs {
    /// Print JSON with the field names documented in docs/probe.md.
    #[arg(long)]
    pub json: bool,
    /// Also measure memory read bandwidth (about 2 s).
    #[arg(long)]
    pub bandwidth: bool,
    /// Save the result as profiles/NAME.toml.
    #[arg(long, value_name = "NAME")]
    pub save: Option<String>,
    /// Overwrite an existing profile with --save.
    #[arg(long, requires = "save")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ProfilesArgs {
    /// Show one profile in full (a name or a path to a TOML file) instead of the list.
    pub name: Option<String>,
    /// Print JSON: the profile, or an array of profiles each with a `source` field.
    #[arg(long)]
    pub json: bool,
}
