//! Scan: find the GGUF models a user already has, in folders and in the stores of Ollama,
//! the Hugging Face hub cache and LM Studio.

use crate::estimate::{self, Estimate, EstimateOptions, Footprint};
use crate::gguf::GgufFile;
use crate::probe::Hardware;
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Folders nest this deep at most (HF: hub/models--org--name/snapshots/REV/file.gguf).
const MAX_DEPTH: usize = 8;

#[derive(Debug, Clone, Serialize)]
pub struct FoundModel {
    /// As the store names it: `phi3:mini` for Ollama, the file name elsewhere.
    pub name: String,
    pub path: PathBuf,
    /// ollama, huggingface, lm-studio or folder.
    pub store: &'static str,
}

/// One scanned file: its estimate on the box, or why it could not be read.
#[derive(Debug, Clone, Serialize)]
pub struct ScanRow {
    #[serde(flatten)]
    pub model: FoundModel,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Estimate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Finds the models and estimates each; a bad file becomes a row with its error.
pub fn scan(
    dirs: &[PathBuf],
    stores: &[(PathBuf, &'static str)],
    hardware: &Hardware,
    options: &EstimateOptions,
) -> Vec<ScanRow> {
    find_models(dirs, stores)
        .into_iter()
        .map(|model| {
            let result = GgufFile::open(&model.path)
                .map_err(|e| format!("{}; {}", e.problem, e.hint))
                .and_then(|file| Footprint::from_gguf(&file))
                .map(|f| estimate::estimate(&f, hardware, options));
            let (estimate, error) = match result {
                Ok(e) => (Some(e), None),
                Err(problem) => (None, Some(problem)),
            };
            ScanRow {
                model,
                estimate,
                error,
            }
        })
        .collect()
}

/// The default stores that exist on this box, with the store each is.
pub fn default_stores() -> Vec<(PathBuf, &'static str)> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let env_dir = |name: &str| std::env::var_os(name).map(PathBuf::from);
    let mut stores = Vec::new();
    let ollama =
        env_dir("OLLAMA_MODELS").or_else(|| home.as_ref().map(|h| h.join(".ollama/models")));
    stores.extend(ollama.map(|d| (d, "ollama")));
    let hf = env_dir("HF_HUB_CACHE")
        .or_else(|| env_dir("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| home.as_ref().map(|h| h.join(".cache/huggingface/hub")));
    stores.extend(hf.map(|d| (d, "huggingface")));
    if let Some(h) = &home {
        stores.push((h.join(".lmstudio/models"), "lm-studio"));
        stores.push((h.join(".cache/lm-studio/models"), "lm-studio"));
    }
    stores.retain(|(dir, _)| dir.is_dir());
    stores
}

/// Every model file under `dirs` and the stores, each file once.
pub fn find_models(dirs: &[PathBuf], stores: &[(PathBuf, &'static str)]) -> Vec<FoundModel> {
    let mut found = Vec::new();
    for (dir, store) in stores {
        if *store == "ollama" {
            found.extend(ollama_models(dir));
        } else {
            walk(dir, store, 0, &mut found);
        }
    }
    for dir in dirs {
        if dir.join("manifests").is_dir() && dir.join("blobs").is_dir() {
            found.extend(ollama_models(dir));
        } else if dir.is_file() {
            found.push(folder_model(dir.clone(), "folder"));
        } else {
            walk(dir, "folder", 0, &mut found);
        }
    }
    let mut seen = HashSet::new();
    found
        .retain(|m| seen.insert(std::fs::canonicalize(&m.path).unwrap_or_else(|_| m.path.clone())));
    found
}

fn folder_model(path: PathBuf, store: &'static str) -> FoundModel {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    FoundModel { name, path, store }
}

fn walk(dir: &Path, store: &'static str, depth: usize, found: &mut Vec<FoundModel>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        // Symlinked folders are skipped (they can loop); symlinked files are followed,
        // which is how the Hugging Face cache points snapshots at blobs.
        let is_link = path
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink());
        if path.is_dir() && !is_link {
            walk(&path, store, depth + 1, found);
        } else if path.is_file()
            && path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            found.push(folder_model(path, store));
        }
    }
}

/// Ollama keeps manifests/REGISTRY/NAMESPACE/MODEL/TAG (JSON) that point at blobs/sha256-HEX.
fn ollama_models(root: &Path) -> Vec<FoundModel> {
    let mut manifests = Vec::new();
    collect_files(&root.join("manifests"), 0, &mut manifests);
    manifests.sort();
    let mut found = Vec::new();
    for manifest in manifests {
        let Some(blob) = model_blob(&manifest) else {
            continue;
        };
        let path = root.join("blobs").join(blob.replace(':', "-"));
        let Ok(relative) = manifest.strip_prefix(root.join("manifests")) else {
            continue;
        };
        let parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        found.push(FoundModel {
            name: ollama_name(&parts),
            path,
            store: "ollama",
        });
    }
    found
}

fn collect_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > MAX_DEPTH {
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, depth + 1, out);
        } else {
            out.push(path);
        }
    }
}

/// The digest of the manifest's model layer.
fn model_blob(manifest: &Path) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["layers"]
        .as_array()?
        .iter()
        .find(|l| l["mediaType"] == "application/vnd.ollama.image.model")?["digest"]
        .as_str()
        .map(str::to_string)
}

/// `registry.ollama.ai/library/phi3/mini` → `phi3:mini`; other namespaces keep theirs.
fn ollama_name(parts: &[String]) -> String {
    match parts {
        [registry, namespace, model, tag] if registry == "registry.ollama.ai" => {
            if namespace == "library" {
                format!("{model}:{tag}")
            } else {
                format!("{namespace}/{model}:{tag}")
            }
        }
        [registry, namespace, model, tag] => format!("{registry}/{namespace}/{model}:{tag}"),
        other => other.join("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_names_read_as_ollama_prints_them() {
        let parts = |p: &str| p.split('/').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            ollama_name(&parts("registry.ollama.ai/library/phi3/mini")),
            "phi3:mini"
        );
        assert_eq!(
            ollama_name(&parts("registry.ollama.ai/someone/tiny/latest")),
            "someone/tiny:latest"
        );
        assert_eq!(
            ollama_name(&parts("hf.co/org/repo/Q4_K_M")),
            "hf.co/org/repo:Q4_K_M"
        );
    }

    #[test]
    fn folders_are_walked_for_gguf_files_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(nested.join("m.gguf"), b"GGUF").unwrap();
        std::fs::write(nested.join("notes.txt"), b"x").unwrap();
        std::fs::write(dir.path().join("Other.GGUF"), b"GGUF").unwrap();
        let found = find_models(&[dir.path().to_path_buf(), nested.clone()], &[]);
        let names: Vec<&str> = found.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["Other.GGUF", "m.gguf"]);
    }
}
