//! Tables for `models`, `inspect`, `estimate` and `scan`.

use super::{format_bytes, new_table};
use crate::catalog::{ModelSpec, QUANTS};
use crate::estimate::{format_tps, Estimate, Footprint};
use crate::gguf::{GgmlType, GgufFile};
use crate::probe::Hardware;
use crate::scan::ScanRow;
use serde::Serialize;

fn params(count: u64) -> String {
    if count >= 1_000_000_000 {
        format!("{:.1}B", count as f64 / 1e9)
    } else {
        format!("{:.0}M", count as f64 / 1e6)
    }
}

pub fn models_table(models: &[ModelSpec]) -> String {
    let mut table = new_table();
    table.set_header(vec![
        "id",
        "params",
        "class",
        "SLM",
        "arch",
        "layers",
        "context",
        "license",
        "strengths",
        "MMLU",
    ]);
    for m in models {
        let moe = if m.is_moe() {
            format!(" ({}/{} experts)", m.experts_active, m.experts_total)
        } else {
            String::new()
        };
        table.add_row(vec![
            m.id.clone(),
            format!("{}{moe}", params(m.params)),
            m.size_class().into(),
            m.slm_class().into(),
            m.architecture.clone(),
            m.layers.to_string(),
            m.max_context.to_string(),
            m.license.clone(),
            m.strengths.join(" "),
            m.score("MMLU").map_or("-".into(), |s| format!("{s:.1}")),
        ]);
    }
    table.to_string()
}

#[derive(Serialize)]
pub struct QuantRow {
    pub name: &'static str,
    pub kind: &'static str,
    pub bits_per_weight: f64,
    pub block_size: u64,
    pub block_bytes: u64,
}

/// Every GGML type with its exact size, then the llama-quantize schemes with their base type.
pub fn quant_rows() -> Vec<QuantRow> {
    let types = GgmlType::all().map(|t| QuantRow {
        name: t.name(),
        kind: "ggml type",
        bits_per_weight: t.bits_per_weight(),
        block_size: t.block_size(),
        block_bytes: t.block_bytes(),
    });
    let schemes = QUANTS
        .iter()
        .filter(|q| q.name != q.base.name())
        .map(|q| QuantRow {
            name: q.name,
            kind: "scheme",
            bits_per_weight: q.base.bits_per_weight(),
            block_size: q.base.block_size(),
            block_bytes: q.base.block_bytes(),
        });
    types.chain(schemes).collect()
}

pub fn quants_table() -> String {
    let mut table = new_table();
    table.set_header(vec!["name", "kind", "bits/weight", "block", "bytes/block"]);
    for row in quant_rows() {
        let bpw = if row.kind == "scheme" {
            format!(
                "{} (base; mix rule in docs/estimates.md)",
                row.bits_per_weight
            )
        } else {
            row.bits_per_weight.to_string()
        };
        table.add_row(vec![
            row.name.to_string(),
            row.kind.to_string(),
            bpw,
            row.block_size.to_string(),
            row.block_bytes.to_string(),
        ]);
    }
    table.to_string()
}

/// The header facts `inspect --json` prints.
#[derive(Serialize)]
pub struct FileSummary {
    pub path: String,
    pub gguf_version: u32,
    pub file_bytes: u64,
    pub architecture: String,
    pub name: String,
    pub quant: String,
    pub parameters: u64,
    pub tensor_count: usize,
    pub tensor_bytes: u64,
    pub header_bytes: u64,
    pub context_length: u64,
    pub bytes_by_type: Vec<TypeShare>,
}

#[derive(Serialize)]
pub struct TypeShare {
    #[serde(rename = "type")]
    pub ggml_type: GgmlType,
    pub bytes: u64,
    pub share: f64,
}

impl FileSummary {
    pub fn new(file: &GgufFile, f: &Footprint) -> FileSummary {
        let tensor_bytes = file.tensor_bytes();
        FileSummary {
            path: file.path.display().to_string(),
            gguf_version: file.version,
            file_bytes: file.file_bytes,
            architecture: f.architecture.clone(),
            name: f.model.clone(),
            quant: f.quant.clone(),
            parameters: file.parameters(),
            tensor_count: file.tensors.len(),
            tensor_bytes,
            header_bytes: file.data_offset,
            context_length: f.max_context,
            bytes_by_type: file
                .bytes_by_type()
                .into_iter()
                .map(|(ggml_type, bytes)| TypeShare {
                    ggml_type,
                    bytes,
                    share: bytes as f64 / tensor_bytes.max(1) as f64,
                })
                .collect(),
        }
    }
}

pub fn inspect_table(file: &GgufFile, f: &Footprint) -> String {
    let summary = FileSummary::new(file, f);
    let mut table = new_table();
    table.set_header(vec![summary.name.as_str(), summary.path.as_str()]);
    let mix: Vec<String> = summary
        .bytes_by_type
        .iter()
        .map(|t| format!("{} {:.1}%", t.ggml_type, t.share * 100.0))
        .collect();
    let rows = [
        ("architecture", summary.architecture.clone()),
        (
            "parameters",
            format!("{} ({})", params(summary.parameters), summary.parameters),
        ),
        ("quant", format!("{} — {}", summary.quant, mix.join(", "))),
        (
            "file",
            format!(
                "{} (GGUF v{}, {} tensors, {} header)",
                format_bytes(summary.file_bytes),
                summary.gguf_version,
                summary.tensor_count,
                format_bytes(summary.header_bytes)
            ),
        ),
        (
            "shape",
            format!(
                "{} layers, hidden {}, {} heads / {} KV heads × {}, FFN {}, vocab {}",
                f.layers, f.hidden_size, f.heads, f.kv_heads, f.head_dim, f.ffn_size, f.vocab_size
            ),
        ),
        ("max context", summary.context_length.to_string()),
    ];
    for (key, value) in rows {
        table.add_row(vec![key.to_string(), value]);
    }
    table.to_string()
}

pub fn tensors_table(file: &GgufFile) -> String {
    let mut table = new_table();
    table.set_header(vec!["tensor", "shape", "type", "bytes", "offset"]);
    for t in &file.tensors {
        table.add_row(vec![
            t.name.clone(),
            format!("{:?}", t.dims),
            t.ggml_type.to_string(),
            t.bytes.to_string(),
            t.offset.to_string(),
        ]);
    }
    table.to_string()
}

/// Every memory term, where the model goes and how fast it will run.
pub fn estimate_table(e: &Estimate, hw: &Hardware) -> String {
    let mut table = new_table();
    table.set_header(vec![
        format!("{} {}", e.model, e.quant),
        format!("on {} at {} tokens of context", hw.name, e.context),
    ]);
    let m = &e.memory;
    let p = &e.placement;
    let s = &e.speed;
    let placement = match p.backend {
        "cpu" => format!("CPU, {} of RAM budget", format_bytes(p.ram_budget_bytes)),
        backend if p.gpu_layers < p.total_layers => format!(
            "{backend}: {} of {} layers on the GPU ({} of {} VRAM budget), the rest in RAM",
            p.gpu_layers,
            p.total_layers,
            format_bytes(p.gpu_bytes),
            format_bytes(p.vram_budget_bytes)
        ),
        backend => format!(
            "{backend}: all {} layers on the GPU ({} of {} VRAM budget)",
            p.total_layers,
            format_bytes(p.gpu_bytes),
            format_bytes(p.vram_budget_bytes)
        ),
    };
    let rows = [
        ("weights", format_bytes(m.weights_bytes)),
        (
            "KV cache",
            format!("{} ({})", format_bytes(m.kv_cache_bytes), e.kv_type.name()),
        ),
        ("compute buffers", format_bytes(m.compute_bytes)),
        ("runtime", format_bytes(m.overhead_bytes)),
        ("total memory", format_bytes(m.total_bytes)),
        ("placement", placement),
        ("fit", p.fit.label().to_string()),
        (
            "generation",
            format!(
                "{} ({}-bound: {} per token at {:.1} GB/s {})",
                format_tps(s.tg_tps),
                s.tg_bound,
                format_bytes(s.bytes_read_per_token),
                s.bandwidth_gbs,
                s.bandwidth_source
            ),
        ),
        ("prompt", format_tps(s.pp_tps)),
        ("verdict", e.verdict.clone()),
    ];
    for (key, value) in rows {
        table.add_row(vec![key.to_string(), value]);
    }
    table.to_string()
}

pub fn scan_table(rows: &[ScanRow], hw: &Hardware) -> String {
    let mut table = new_table();
    table.set_header(vec![
        "model".to_string(),
        "store".into(),
        "arch".into(),
        "params".into(),
        "quant".into(),
        "size".into(),
        "memory".into(),
        format!("where on {}", hw.name),
        "tg".into(),
        "verdict".into(),
    ]);
    for row in rows {
        let mut cells = vec![row.model.name.clone(), row.model.store.to_string()];
        match (&row.estimate, &row.error) {
            (Some(e), _) => cells.extend([
                e.architecture.clone(),
                params(e.params),
                e.quant.clone(),
                format_bytes(e.memory.weights_bytes),
                format!("{} @ {}", format_bytes(e.memory.total_bytes), e.context),
                e.placement.fit.label().to_string(),
                format_tps(e.speed.tg_tps),
                e.verdict.clone(),
            ]),
            (None, error) => {
                cells.extend(std::iter::repeat_n("-".to_string(), 7));
                cells.push(format!("unreadable: {}", error.as_deref().unwrap_or("?")));
            }
        }
        table.add_row(cells);
    }
    table.to_string()
}
