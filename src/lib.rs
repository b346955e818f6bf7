//! fitbench: which language model fits this box, and how fast it will really run here.
//!
//! The flow (see DESIGN.md): probe → profiles → catalog → estimate → recommend → bench →
//! results → report. Each module owns its data type; only the binary prints.

pub mod bench;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod compare;
pub mod estimate;
pub mod gguf;
pub mod output;
pub mod probe;
pub mod profiles;
pub mod recommend;
pub mod report;
pub mod results;
pub mod scan;
pub mod spec;
