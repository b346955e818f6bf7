//! The command-line layer: arguments, and the commands that print. Every other module
//! returns values; only this one writes to the terminal.

mod args;
mod bench;
mod commands;
mod run;

pub use args::Cli;
pub use commands::run;
