//! The last bandwidth measurement of this box, so estimates are instant after the first run.
//! Keyed by host, CPU and RAM size: a different box, or this one with new RAM, measures again.

use super::MeasuredBandwidth;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    measured: MeasuredBandwidth,
}

fn path() -> Option<PathBuf> {
    crate::cache::cache_dir().map(|d| d.join("bandwidth.json"))
}

pub fn load(key: &str) -> Option<MeasuredBandwidth> {
    let text = std::fs::read_to_string(path()?).ok()?;
    let entry: Entry = serde_json::from_str(&text).ok()?;
    (entry.key == key).then_some(entry.measured)
}

/// Best effort: a read-only home only means measuring again next time.
pub fn store(key: &str, measured: &MeasuredBandwidth) {
    let Some(path) = path() else { return };
    let entry = Entry {
        key: key.to_string(),
        measured: measured.clone(),
    };
    if let (Some(dir), Ok(text)) = (path.parent(), serde_json::to_string_pretty(&entry)) {
        let partial = path.with_extension("json.partial");
        let _ = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&partial, text))
            .and_then(|_| std::fs::rename(&partial, &path));
    }
}
