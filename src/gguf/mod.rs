//! The GGUF header reader: metadata and the tensor table, never the weights.
//!
//! This is the one place that reads untrusted bytes, so it trusts nothing: every count and
//! length is checked against the bytes left in the file before anything is allocated for it,
//! and every tensor must lie aligned and whole inside the file.

mod types;

pub use types::GgmlType;

use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: u32 = 4;
/// Arrays longer than this (vocabularies, merges) keep only their length; the estimator needs
/// no token text, and reading 262k strings into memory would make `inspect` slow.
const MAX_KEPT_ARRAY_LEN: u64 = 64;
/// No real key, name or value comes near this; a larger claim is corruption, and believing it
/// would allocate gigabytes from a damaged 30 GB file.
const MAX_STRING_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}\nhint: {hint}", path.display())]
pub struct GgufError {
    pub path: PathBuf,
    pub problem: String,
    pub hint: &'static str,
}

const HINT_CORRUPT: &str =
    "the file is damaged or not GGUF; download it again and compare its sha256";

/// A metadata value; long arrays keep their element type and length only.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MetaValue {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
    LongArray {
        element_type: &'static str,
        len: u64,
    },
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::UInt(v) => Some(v),
            MetaValue::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// Element count of an array value, however long.
    pub fn array_len(&self) -> Option<u64> {
        match self {
            MetaValue::Array(items) => Some(items.len() as u64),
            MetaValue::LongArray { len, .. } => Some(*len),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: dims[0] is the row length (the contiguous one).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the tensor data section.
    pub offset: u64,
    pub elements: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub file_bytes: u64,
    pub alignment: u64,
    /// Where tensor data starts; everything before it is header.
    pub data_offset: u64,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let fail = |problem: String, hint| GgufError {
            path: path.to_path_buf(),
            problem,
            hint,
        };
        let file = File::open(path).map_err(|e| {
            fail(
                format!("cannot open: {e}"),
                "check the path and its permissions",
            )
        })?;
        let len = file
            .metadata()
            .map_err(|e| fail(format!("cannot stat: {e}"), "check the path"))?
            .len();
        read(BufReader::with_capacity(1 << 16, file), len, path)
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// Whether `fitbench synth` wrote this file: its weights are random, of the right shapes.
    pub fn is_synthetic(&self) -> bool {
        matches!(self.get("fitbench.synthetic"), Some(MetaValue::Bool(true)))
    }

    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(MetaValue::as_str)
    }

    /// `{arch}.{key}`, e.g. `llama.context_length`.
    pub fn arch_u64(&self, key: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.get(&format!("{arch}.{key}"))
            .and_then(MetaValue::as_u64)
    }

    /// Exact parameter count: the sum over the tensor table.
    pub fn parameters(&self) -> u64 {
        self.tensors.iter().map(|t| t.elements).sum()
    }

    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }

    /// Bytes per GGML type, largest first: the file's quant mix.
    pub fn bytes_by_type(&self) -> Vec<(GgmlType, u64)> {
        bytes_by_type(self.tensors.iter().map(|t| (t.ggml_type, t.bytes)))
    }
}

/// Sums bytes per GGML type, largest first.
pub fn bytes_by_type(items: impl IntoIterator<Item = (GgmlType, u64)>) -> Vec<(GgmlType, u64)> {
    let mut by_type: BTreeMap<GgmlType, u64> = BTreeMap::new();
    for (ggml_type, bytes) in items {
        *by_type.entry(ggml_type).or_default() += bytes;
    }
    let mut mix: Vec<_> = by_type.into_iter().collect();
    mix.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    mix
}

/// Parses a GGUF header from any seekable source of `len` bytes; `path` names it in errors.
pub fn read<R: Read + Seek>(reader: R, len: u64, path: &Path) -> Result<GgufFile, GgufError> {
    let mut r = Reader {
        inner: reader,
        pos: 0,
        len,
        path,
    };
    let magic: [u8; 4] = r.array("magic")?;
    if &magic != MAGIC {
        return Err(r.error(
            format!("not a GGUF file: it starts with {magic:02x?}, not \"GGUF\""),
            "pass a .gguf model file; safetensors and PyTorch files need converting with llama.cpp's convert_hf_to_gguf.py",
        ));
    }
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(r.error(
            format!("GGUF version {version} is not supported (fitbench reads versions 2 and 3)"),
            "version 1 files predate 2023; convert the model again with a current llama.cpp",
        ));
    }
    let tensor_count = r.u64("tensor count")?;
    let kv_count = r.u64("metadata count")?;
    // Smallest possible entries: a tensor info is 24 bytes, a key/value 13.
    r.check_count(tensor_count, 24, "tensor count")?;
    r.check_count(kv_count, 13, "metadata count")?;

    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = r.string("metadata key")?;
        let value_type = r.u32("metadata value type")?;
        let value = r.value(value_type, &key, 0)?;
        metadata.insert(key, value);
    }

    let mut tensors = Vec::new();
    for index in 0..tensor_count {
        tensors.push(r.tensor_info(index)?);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(value) => match value.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(r.error(
                    format!("general.alignment is {value:?}, not a power of two"),
                    HINT_CORRUPT,
                ))
            }
        },
    };
    let data_offset = r.pos.div_ceil(alignment) * alignment;
    check_tensor_layout(&r, &mut tensors, alignment, data_offset)?;

    Ok(GgufFile {
        path: path.to_path_buf(),
        version,
        file_bytes: len,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}

/// Every tensor aligned, inside the file, and not overlapping the next one.
fn check_tensor_layout<R>(
    r: &Reader<'_, R>,
    tensors: &mut [TensorInfo],
    alignment: u64,
    data_offset: u64,
) -> Result<(), GgufError> {
    for t in tensors.iter() {
        if t.offset % alignment != 0 {
            return Err(r.error(
                format!(
                    "tensor `{}` starts at data offset {}, not a multiple of the file's alignment {alignment}",
                    t.name, t.offset
                ),
                HINT_CORRUPT,
            ));
        }
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|start| start.checked_add(t.bytes));
        if end.is_none_or(|end| end > r.len) {
            return Err(r.error(
                format!(
                    "tensor `{}` ({} bytes at data offset {}) ends past the end of the file ({} bytes): the file is truncated",
                    t.name, t.bytes, t.offset, r.len
                ),
                "the download was cut short; fetch the file again and compare its sha256",
            ));
        }
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        if pair[0].offset + pair[0].bytes > pair[1].offset {
            return Err(r.error(
                format!(
                    "tensor `{}` ({} {} bytes at offset {}) overlaps tensor `{}` at offset {}: its shape disagrees with the file",
                    pair[0].name, pair[0].ggml_type, pair[0].bytes, pair[0].offset, pair[1].name, pair[1].offset
                ),
                HINT_CORRUPT,
            ));
        }
    }
    Ok(())
}

struct Reader<'p, R> {
    inner: R,
    pos: u64,
    len: u64,
    path: &'p Path,
}

impl<R> Reader<'_, R> {
    fn error(&self, problem: String, hint: &'static str) -> GgufError {
        GgufError {
            path: self.path.to_path_buf(),
            problem,
            hint,
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// A count whose entries take at least `min_bytes` each must fit in what is left.
    fn check_count(&self, count: u64, min_bytes: u64, what: &str) -> Result<(), GgufError> {
        if count.saturating_mul(min_bytes) > self.remaining() {
            return Err(self.error(
                format!(
                    "{what} {count} at byte {} is impossible: {} bytes are left in the file",
                    self.pos,
                    self.remaining()
                ),
                HINT_CORRUPT,
            ));
        }
        Ok(())
    }
}

impl<R: Read + Seek> Reader<'_, R> {
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        if self.remaining() < N as u64 {
            return Err(self.truncated(what));
        }
        self.inner
            .read_exact(&mut buf)
            .map_err(|_| self.truncated(what))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn truncated(&self, what: &str) -> GgufError {
        self.error(
            format!(
                "truncated: the file ends at byte {} while reading the {what}",
                self.len
            ),
            "the download was cut short; fetch the file again and compare its sha256",
        )
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string_len(&mut self, what: &str) -> Result<u64, GgufError> {
        let len = self.u64(what)?;
        if len > self.remaining() || len > MAX_STRING_BYTES {
            return Err(self.error(
                format!(
                    "{what} at byte {} claims {len} bytes; {} are left in the file and no GGUF string exceeds {} MiB",
                    self.pos - 8,
                    self.remaining(),
                    MAX_STRING_BYTES >> 20
                ),
                HINT_CORRUPT,
            ));
        }
        Ok(len)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.string_len(what)?;
        let mut bytes = vec![0u8; len as usize];
        self.inner
            .read_exact(&mut bytes)
            .map_err(|_| self.truncated(what))?;
        self.pos += len;
        // Keys and names are ASCII in practice; lossy keeps a bad byte from failing the file.
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn skip(&mut self, bytes: u64, what: &str) -> Result<(), GgufError> {
        if bytes > self.remaining() {
            return Err(self.truncated(what));
        }
        // Short skips (a vocabulary's strings) go through the read buffer: a seek would
        // throw the buffer away and make `inspect` of a 262k-token vocabulary ten times slower.
        let done = if bytes <= 1 << 16 {
            std::io::copy(&mut (&mut self.inner).take(bytes), &mut std::io::sink()).ok()
                == Some(bytes)
        } else {
            self.inner.seek(SeekFrom::Current(bytes as i64)).is_ok()
        };
        if !done {
            return Err(self.truncated(what));
        }
        self.pos += bytes;
        Ok(())
    }

    fn value(&mut self, value_type: u32, key: &str, depth: u32) -> Result<MetaValue, GgufError> {
        Ok(match value_type {
            0 => MetaValue::UInt(self.array::<1>(key)?[0].into()),
            1 => MetaValue::Int(i8::from_le_bytes(self.array(key)?).into()),
            2 => MetaValue::UInt(u16::from_le_bytes(self.array(key)?).into()),
            3 => MetaValue::Int(i16::from_le_bytes(self.array(key)?).into()),
            4 => MetaValue::UInt(self.u32(key)?.into()),
            5 => MetaValue::Int(i32::from_le_bytes(self.array(key)?).into()),
            6 => MetaValue::Float(f32::from_le_bytes(self.array(key)?).into()),
            7 => MetaValue::Bool(self.array::<1>(key)?[0] != 0),
            8 => MetaValue::String(self.string(key)?),
            9 if depth == 0 => self.array_value(key)?,
            10 => MetaValue::UInt(self.u64(key)?),
            11 => MetaValue::Int(i64::from_le_bytes(self.array(key)?)),
            12 => MetaValue::Float(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(self.error(
                    format!("metadata `{key}` has unknown value type {other}"),
                    HINT_CORRUPT,
                ))
            }
        })
    }

    fn array_value(&mut self, key: &str) -> Result<MetaValue, GgufError> {
        let element_type = self.u32(key)?;
        let len = self.u64(key)?;
        let (fixed_size, name) = match element_type {
            0 | 1 | 7 => (Some(1), "u8"),
            2 | 3 => (Some(2), "u16"),
            4..=6 => (Some(4), "u32"),
            10..=12 => (Some(8), "u64"),
            8 => (None, "string"),
            _ => {
                return Err(self.error(
                    format!(
                        "metadata `{key}` is an array of unknown or nested type {element_type}"
                    ),
                    HINT_CORRUPT,
                ))
            }
        };
        // A string costs at least its 8-byte length prefix.
        self.check_count(
            len,
            fixed_size.unwrap_or(8),
            &format!("array length of `{key}`"),
        )?;
        if len > MAX_KEPT_ARRAY_LEN {
            match fixed_size {
                Some(size) => self.skip(len * size, key)?,
                None => {
                    for _ in 0..len {
                        let n = self.string_len(key)?;
                        self.skip(n, key)?;
                    }
                }
            }
            let element_type = if element_type == 6 || element_type == 12 {
                "float"
            } else {
                name
            };
            return Ok(MetaValue::LongArray { element_type, len });
        }
        let mut items = Vec::new();
        for _ in 0..len {
            items.push(self.value(element_type, key, 1)?);
        }
        Ok(MetaValue::Array(items))
    }

    fn tensor_info(&mut self, index: u64) -> Result<TensorInfo, GgufError> {
        let name = self.string(&format!("name of tensor {index}"))?;
        let n_dims = self.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.error(
                format!("tensor `{name}` has {n_dims} dimensions; GGML allows 1 to {MAX_DIMS}"),
                HINT_CORRUPT,
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(&name)?);
        }
        let type_id = self.u32(&name)?;
        let offset = self.u64(&name)?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
            self.error(
                format!("tensor `{name}` has unknown GGML type {type_id}"),
                "the file may need a newer fitbench, or it is damaged",
            )
        })?;
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d))
            .filter(|e| *e > 0)
            .ok_or_else(|| {
                self.error(
                    format!("tensor `{name}` has an impossible shape {dims:?}"),
                    HINT_CORRUPT,
                )
            })?;
        let bytes = (dims[0] % ggml_type.block_size() == 0)
            .then(|| ggml_type.bytes_for(elements))
            .flatten()
            .ok_or_else(|| {
                self.error(
                    format!(
                        "tensor `{name}` has rows of {} elements, not whole {ggml_type} blocks of {}",
                        dims[0],
                        ggml_type.block_size()
                    ),
                    HINT_CORRUPT,
                )
            })?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            elements,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests;
