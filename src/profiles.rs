//! Profiles: a `Hardware` saved as TOML, so fitbench can answer for a box it is not running on.
//!
//! Shipped profiles are compiled in, so `--profile pi3b` works from any folder. Profiles the
//! user saves live in `./profiles/` (or `$FITBENCH_PROFILE_DIR`) and win over shipped ones.

use crate::probe::Hardware;
use std::fmt;
use std::path::{Path, PathBuf};

/// The boxes the users name, as hand-written from their vendors' specifications.
const SHIPPED: &[(&str, &str)] = &[
    (
        "apple-m1-8gb",
        include_str!("../profiles/apple-m1-8gb.toml"),
    ),
    (
        "desktop-i7-9700k",
        include_str!("../profiles/desktop-i7-9700k.toml"),
    ),
    (
        "desktop-rtx3060-12gb",
        include_str!("../profiles/desktop-rtx3060-12gb.toml"),
    ),
    (
        "jetson-orin-nano-8gb",
        include_str!("../profiles/jetson-orin-nano-8gb.toml"),
    ),
    ("n100-16gb", include_str!("../profiles/n100-16gb.toml")),
    ("phone-8gb", include_str!("../profiles/phone-8gb.toml")),
    ("pi3b", include_str!("../profiles/pi3b.toml")),
    ("pi4-4gb", include_str!("../profiles/pi4-4gb.toml")),
    ("pi5-8gb", include_str!("../profiles/pi5-8gb.toml")),
    (
        "ryzen5-3600-gtx1050ti",
        include_str!("../profiles/ryzen5-3600-gtx1050ti.toml"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("no profile named `{name}`; available: {}\nhint: `fitbench profiles` lists them, `fitbench probe --save NAME` saves this box", available.join(", "))]
    NotFound {
        name: String,
        available: Vec<String>,
    },
    #[error("{source_name}: line {line}, field `{field}`: {message}\nhint: fix that field (docs/probe.md lists every field and its unit)")]
    Invalid {
        source_name: String,
        line: usize,
        field: String,
        message: String,
    },
    #[error("{}: already exists; pass --force to overwrite it", path.display())]
    Exists { path: PathBuf },
    #[error("profile name `{0}` may only use lowercase letters, digits, '-', '_' and '.'")]
    BadName(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where a profile was found, for `fitbench profiles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileSource {
    Shipped,
    Saved,
}

impl fmt::Display for ProfileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProfileSource::Shipped => "shipped",
            ProfileSource::Saved => "saved",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub hardware: Hardware,
    pub source: ProfileSource,
}

/// The folder `probe --save` writes to and `--profile NAME` reads first.
pub fn profile_dir() -> PathBuf {
    std::env::var_os("FITBENCH_PROFILE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("profiles"))
}

/// Parses a profile's TOML; `source_name` (a path or `shipped:NAME`) goes into errors.
pub fn parse(text: &str, source_name: &str) -> Result<Hardware, ProfileError> {
    let invalid = |line: usize, field: String, message: String| ProfileError::Invalid {
        source_name: source_name.to_string(),
        line,
        field,
        message,
    };
    let deserializer = toml::Deserializer::parse(text)
        .map_err(|err| invalid(error_line(text, &err), "(syntax)".into(), first_line(&err)))?;
    let hardware: Hardware = serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let field = err.path().to_string();
        let inner = err.into_inner();
        invalid(error_line(text, &inner), field, first_line(&inner))
    })?;
    match implausible(&hardware) {
        Some((field, message)) => Err(invalid(line_of(text, field), field.to_string(), message)),
        None => Ok(hardware),
    }
}

/// Values that parse but cannot describe a box, which would make every estimate nonsense.
fn implausible(hw: &Hardware) -> Option<(&'static str, String)> {
    let m = &hw.memory;
    if m.total_bytes == 0 {
        return Some(("memory.total_bytes", "must be above 0".into()));
    }
    if m.available_bytes > m.total_bytes {
        return Some((
            "memory.available_bytes",
            "is more than memory.total_bytes".into(),
        ));
    }
    if m.bandwidth_gbs.is_some_and(|b| !(b > 0.0 && b.is_finite())) {
        return Some((
            "memory.bandwidth_gbs",
            "must be a positive number of GB/s".into(),
        ));
    }
    if hw.cpu.logical_cores == 0 || hw.cpu.physical_cores == 0 {
        return Some(("cpu.physical_cores", "cores must be at least 1".into()));
    }
    for gpu in &hw.gpus {
        if gpu.vram_free_bytes > gpu.vram_total_bytes {
            return Some((
                "gpus.vram_free_bytes",
                "is more than vram_total_bytes".into(),
            ));
        }
        if gpu
            .bandwidth_gbs
            .is_some_and(|b| !(b > 0.0 && b.is_finite()))
        {
            return Some((
                "gpus.bandwidth_gbs",
                "must be a positive number of GB/s".into(),
            ));
        }
    }
    None
}

/// The line where `field`'s last key is set, for an error that points at it.
pub(crate) fn line_of(text: &str, field: &str) -> usize {
    let key = field.rsplit('.').next().unwrap_or(field);
    text.lines()
        .position(|l| l.trim_start().starts_with(key))
        .map_or(1, |i| i + 1)
}

pub(crate) fn error_line(text: &str, err: &toml::de::Error) -> usize {
    err.span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
        .unwrap_or(1)
}

/// toml's message repeats the source line with a caret; the field and line already say where.
pub(crate) fn first_line(err: &toml::de::Error) -> String {
    err.message()
        .lines()
        .next()
        .unwrap_or("invalid value")
        .to_string()
}

pub fn load_file(path: &Path) -> Result<Hardware, ProfileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Resolves `--profile`: a path to a TOML file, a saved profile, or a shipped one.
pub fn resolve(name_or_path: &str) -> Result<Hardware, ProfileError> {
    let as_path = Path::new(name_or_path);
    if name_or_path.ends_with(".toml") || name_or_path.contains(std::path::MAIN_SEPARATOR) {
        return load_file(as_path);
    }
    let saved = profile_dir().join(format!("{name_or_path}.toml"));
    if saved.is_file() {
        return load_file(&saved);
    }
    match shipped(name_or_path) {
        Some(hardware) => Ok(hardware),
        None => Err(ProfileError::NotFound {
            name: name_or_path.to_string(),
            // A broken saved profile must not hide the names that do work.
            available: list()
                .map(|all| all.into_iter().map(|p| p.hardware.name).collect())
                .unwrap_or_else(|_| SHIPPED.iter().map(|(n, _)| n.to_string()).collect()),
        }),
    }
}

/// A shipped profile by name. Unit tests prove every shipped one parses.
fn shipped(name: &str) -> Option<Hardware> {
    let (_, text) = SHIPPED.iter().find(|(shipped, _)| *shipped == name)?;
    parse(text, &format!("shipped profile {name}")).ok()
}

/// Every profile, saved ones shadowing shipped ones of the same name, sorted by name.
pub fn list() -> Result<Vec<Profile>, ProfileError> {
    let mut profiles: Vec<Profile> = Vec::new();
    let dir = profile_dir();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            let hardware = load_file(&path)?;
            // In a checkout, ./profiles holds the shipped files themselves.
            let source = if shipped(&hardware.name).is_some_and(|s| s == hardware) {
                ProfileSource::Shipped
            } else {
                ProfileSource::Saved
            };
            profiles.push(Profile { hardware, source });
        }
    }
    for (name, _) in SHIPPED {
        if !profiles.iter().any(|p| p.hardware.name == *name) {
            profiles.extend(shipped(name).map(|hardware| Profile {
                hardware,
                source: ProfileSource::Shipped,
            }));
        }
    }
    profiles.sort_by(|a, b| a.hardware.name.cmp(&b.hardware.name));
    Ok(profiles)
}

pub fn validate_name(name: &str) -> Result<(), ProfileError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ProfileError::BadName(name.to_string()))
    }
}

pub fn to_toml(hardware: &Hardware) -> String {
    // Hardware has no map keys that TOML cannot express, so serialization cannot fail.
    toml::to_string_pretty(hardware).unwrap_or_default()
}

/// Writes `hardware` as `DIR/NAME.toml`; refuses to replace a file unless `force`.
pub fn save(hardware: &Hardware, dir: &Path, force: bool) -> Result<PathBuf, ProfileError> {
    validate_name(&hardware.name)?;
    let path = dir.join(format!("{}.toml", hardware.name));
    if path.exists() && !force {
        return Err(ProfileError::Exists { path });
    }
    let io = |source| ProfileError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let text = format!(
        "# Saved by `fitbench probe --save {}`; edit freely, `fitbench profiles` checks it.\n{}",
        hardware.name,
        to_toml(hardware)
    );
    // Write beside and rename, so an interrupted save never leaves half a profile.
    let partial = path.with_extension("toml.partial");
    std::fs::write(&partial, text).map_err(io)?;
    std::fs::rename(&partial, &path).map_err(io)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_profile_parses_and_is_named_after_its_file() {
        for (name, text) in SHIPPED {
            let hw = parse(text, name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(hw.name, *name);
            assert!(hw.memory.available_bytes <= hw.memory.total_bytes, "{name}");
            assert!(
                hw.memory.bandwidth_gbs.is_some_and(|b| b > 0.0),
                "{name}: bandwidth"
            );
            for gpu in &hw.gpus {
                assert!(gpu.vram_free_bytes <= gpu.vram_total_bytes, "{name}");
            }
        }
    }

    #[test]
    fn every_shipped_profile_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in SHIPPED {
            let hw = parse(text, name).unwrap();
            let path = save(&hw, dir.path(), false).unwrap();
            assert_eq!(load_file(&path).unwrap(), hw, "{name}");
        }
    }

    #[test]
    fn saving_twice_needs_force() {
        let dir = tempfile::tempdir().unwrap();
        let hw = parse(SHIPPED[0].1, "x").unwrap();
        save(&hw, dir.path(), false).unwrap();
        let err = save(&hw, dir.path(), false).unwrap_err();
        assert!(matches!(err, ProfileError::Exists { .. }));
        assert!(err.to_string().contains("--force"));
        save(&hw, dir.path(), true).unwrap();
    }

    #[test]
    fn a_wrong_field_type_names_file_line_and_field() {
        let text = SHIPPED[0]
            .1
            .replacen("logical_cores = ", "logical_cores = \"many\" #", 1);
        let line = text
            .lines()
            .position(|l| l.starts_with("logical_cores"))
            .unwrap()
            + 1;
        let err = parse(&text, "profiles/broken.toml").unwrap_err();
        match &err {
            ProfileError::Invalid {
                source_name,
                line: l,
                field,
                ..
            } => {
                assert_eq!(source_name, "profiles/broken.toml");
                assert_eq!(*l, line);
                assert_eq!(field, "cpu.logical_cores");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn implausible_values_are_refused_with_their_line() {
        let text = SHIPPED[0]
            .1
            .replacen("bandwidth_gbs = ", "bandwidth_gbs = -", 1);
        let err = parse(&text, "neg.toml").unwrap_err().to_string();
        assert!(
            err.contains("memory.bandwidth_gbs") && err.contains("positive"),
            "{err}"
        );
        let line = text
            .lines()
            .position(|l| l.starts_with("bandwidth_gbs"))
            .unwrap()
            + 1;
        assert!(err.contains(&format!("line {line}")), "{err}");
    }

    #[test]
    fn a_missing_field_is_named() {
        let err = parse("schema_version = 1\nname = \"x\"\n", "x.toml").unwrap_err();
        assert!(err.to_string().contains("missing field `origin`"), "{err}");
    }

    #[test]
    fn profile_names_are_restricted_to_safe_file_names() {
        assert!(validate_name("my-box_2.local").is_ok());
        for bad in ["", "../etc", "My Box", ".hidden", "a/b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
