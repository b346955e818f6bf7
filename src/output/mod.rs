//! Rendering for people: tables. Scripts get `--json` from the serde types instead.

mod bench;
mod compare;
mod hardware;
mod model;
mod recommend;
mod report;

pub use bench::{bench_markdown, bench_table};
pub use compare::{compare_markdown, compare_table};
pub use hardware::{hardware_table, profiles_table};
pub use model::{
    estimate_table, inspect_table, models_table, quant_rows, quants_table, scan_table,
    tensors_table, FileSummary,
};
pub use recommend::{recommendation_markdown, recommendation_text};
pub use report::report_table;

use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};

/// A table with fitbench's look, narrow enough for an 80-column terminal on a Pi.
fn new_table() -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    table
}

/// Binary units, since RAM and VRAM are sold and reported in powers of two.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::format_bytes;

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(1 << 30), "1.0 GiB");
        assert_eq!(format_bytes(64 * (1 << 30)), "64.0 GiB");
    }
}
