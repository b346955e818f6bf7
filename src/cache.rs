//! Where fitbench keeps what it can make again: measured bandwidth, synthetic models.

use std::path::PathBuf;

/// `$FITBENCH_CACHE_DIR`, else `$XDG_CACHE_HOME/fitbench`, else `~/.cache/fitbench`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FITBENCH_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("fitbench"))
}
