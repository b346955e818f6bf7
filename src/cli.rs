//! Command-line arguments. Later issues add `models`, `estimate`, `recommend`, `bench`...

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "fitbench",
    version,
    about = "Which language model fits this box, and how fast will it really run here?",
    long_about = "Which language model fits this box, and how fast will it really run here?\n\n\
                  Without a command, fitbench probes this box."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Report this box: memory, CPU, SIMD, GPUs, board and temperatures.
    Probe(ProbeArgs),
    /// List the hardware profiles fitbench can answer for.
    Profiles(ProfilesArgs),
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
