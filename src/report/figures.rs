//! From results rows to the six figures, or the reason a figure is not drawn.

use super::charts::{color, BarPanel, BarSeries, Figure, LabelledPoint, Limit};
use super::data::{self, BoxSummary, TestKind};
use crate::results::BenchRecord;
use std::collections::BTreeSet;

/// Series drawn in the thread-scaling chart before it gets unreadable.
const MAX_SWEEPS: usize = 10;
const GIB: f64 = (1u64 << 30) as f64;

/// The report's charts, in the order report.md shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chart {
    Throughput,
    Memory,
    Threads,
    Predicted,
    Boxes,
    Sizes,
}

impl Chart {
    pub const ALL: [Chart; 6] = [
        Chart::Throughput,
        Chart::Memory,
        Chart::Threads,
        Chart::Predicted,
        Chart::Boxes,
        Chart::Sizes,
    ];

    /// File name without extension.
    pub fn stem(self) -> &'static str {
        match self {
            Chart::Throughput => "throughput",
            Chart::Memory => "memory",
            Chart::Threads => "threads",
            Chart::Predicted => "predicted",
            Chart::Boxes => "boxes",
            Chart::Sizes => "sizes",
        }
    }

    pub fn heading(self) -> &'static str {
        match self {
            Chart::Throughput => "Throughput per model and quantization",
            Chart::Memory => "Memory against speed: what fits",
            Chart::Threads => "Thread scaling",
            Chart::Predicted => "Predicted against measured",
            Chart::Boxes => "Boxes side by side",
            Chart::Sizes => "File size by quantization",
        }
    }
}

/// A figure to draw with its caption, or why there is none.
pub enum Planned {
    Figure { figure: Figure, caption: String },
    Skipped(String),
}

pub fn plan(chart: Chart, records: &[BenchRecord], boxes: &[BoxSummary]) -> Planned {
    match chart {
        Chart::Throughput => throughput(records, boxes),
        Chart::Memory => memory(records, boxes),
        Chart::Threads => threads(records),
        Chart::Predicted => predicted(records, boxes),
        Chart::Boxes => side_by_side(records, boxes),
        Chart::Sizes => sizes(records),
    }
}

fn host_color(boxes: &[BoxSummary], host: &str) -> usize {
    boxes.iter().position(|b| b.host == host).unwrap_or(0)
}

fn host_series(boxes: &[BoxSummary]) -> Vec<(String, plotters::style::RGBColor)> {
    boxes
        .iter()
        .enumerate()
        .map(|(i, b)| (b.host.clone(), color(i)))
        .collect()
}

fn kinds_present<'a>(tests: impl Iterator<Item = &'a String>) -> Vec<TestKind> {
    let kinds: BTreeSet<TestKind> = tests.map(|t| TestKind::of(t)).collect();
    kinds.into_iter().collect()
}

fn throughput(records: &[BenchRecord], boxes: &[BoxSummary]) -> Planned {
    let best = data::best_rows(records);
    let kinds = kinds_present(best.keys().map(|k| &k.test));
    let mut panels = Vec::new();
    for b in boxes {
        for &kind in &kinds {
            let rows: Vec<_> = best
                .iter()
                .filter(|(k, _)| k.host == b.host && TestKind::of(&k.test) == kind)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let categories: Vec<String> = rows
                .iter()
                .map(|(k, _)| k.model.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let tests: Vec<String> = rows
                .iter()
                .map(|(k, _)| k.test.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let series = tests
                .iter()
                .enumerate()
                .map(|(j, test)| BarSeries {
                    name: test.clone(),
                    values: categories
                        .iter()
                        .map(|model| {
                            rows.iter()
                                .find(|(k, _)| &k.model == model && &k.test == test)
                                .map(|(_, r)| (r.avg_ts, r.stddev_ts))
                        })
                        .collect(),
                    color: color(j + kind as usize * 3),
                })
                .collect();
            panels.push(BarPanel {
                title: format!("{} · {}", b.host, kind.title()),
                categories,
                series,
            });
        }
    }
    if panels.is_empty() {
        return Planned::Skipped("no rows".into());
    }
    Planned::Figure {
        figure: Figure::Bars {
            title: "Tokens per second (mean ± sd) at each box's fastest thread count".into(),
            x_desc: "tokens per second".into(),
            columns: kinds.len(),
            panels,
            decimals: 1,
        },
        caption: "Each bar is a model file's mean tokens per second over the repetitions, with \
                  its standard deviation; a configuration measured at several thread counts \
                  shows its fastest."
            .into(),
    }
}

fn memory(records: &[BenchRecord], boxes: &[BoxSummary]) -> Planned {
    let best = data::best_rows(records);
    // One point per box × model: its fastest generation test at depth 0.
    let mut points: Vec<LabelledPoint> = Vec::new();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut candidates: Vec<_> = best
        .iter()
        .filter(|(k, r)| {
            TestKind::of(&k.test) == TestKind::Generation
                && r.n_depth == 0
                && r.peak_rss_bytes > 0
                && r.avg_ts > 0.0
        })
        .collect();
    candidates.sort_by(|a, b| b.1.avg_ts.total_cmp(&a.1.avg_ts));
    for (key, r) in candidates {
        if seen.insert((key.host.clone(), key.model.clone())) {
            points.push(LabelledPoint {
                series: host_color(boxes, &key.host),
                label: key.model.clone(),
                x: r.peak_rss_bytes as f64 / GIB,
                y: r.avg_ts,
            });
        }
    }
    if points.is_empty() {
        return Planned::Skipped(
            "no generation (tg) test at depth 0 with a peak resident memory".into(),
        );
    }
    let mut limits = Vec::new();
    for (i, b) in boxes.iter().enumerate() {
        limits.push(Limit {
            label: format!("{} RAM {:.1} GiB", b.host, b.ram_total_bytes as f64 / GIB),
            gib: b.ram_total_bytes as f64 / GIB,
            color: color(i),
        });
        if b.vram_total_bytes > 0 {
            limits.push(Limit {
                label: format!("{} VRAM {:.1} GiB", b.host, b.vram_total_bytes as f64 / GIB),
                gib: b.vram_total_bytes as f64 / GIB,
                color: color(i),
            });
        }
    }
    limits.retain(|l| l.gib > 0.0);
    Planned::Figure {
        figure: Figure::Memory {
            title: "Peak memory against generation speed, with each box's memory".into(),
            y_desc: "generation tokens per second (log scale)".into(),
            series: host_series(boxes),
            points,
            limits,
        },
        caption: "One point per box and model file: its peak resident memory and its fastest \
                  generation test. A point right of a box's RAM line does not fit that box."
            .into(),
    }
}

fn threads(records: &[BenchRecord]) -> Planned {
    let mut sweeps = data::thread_sweeps(records);
    if sweeps.is_empty() {
        return Planned::Skipped(
            "no configuration was measured at two or more thread counts".into(),
        );
    }
    let total = sweeps.len();
    // Generation is what users feel; show it first when there are too many lines.
    sweeps.sort_by_key(|s| TestKind::of(&s.key.test) != TestKind::Generation);
    sweeps.truncate(MAX_SWEEPS);
    let shown = if total > MAX_SWEEPS {
        format!(" {MAX_SWEEPS} of the {total} configurations measured are shown, generation first.")
    } else {
        String::new()
    };
    Planned::Figure {
        figure: Figure::Threads {
            title: "Tokens per second (mean ± sd) against threads".into(),
            sweeps,
        },
        caption: format!(
            "Each line is one box, model file and test measured at several thread counts.{shown}"
        ),
    }
}

fn predicted(records: &[BenchRecord], boxes: &[BoxSummary]) -> Planned {
    let points: Vec<LabelledPoint> = records
        .iter()
        .filter(|r| r.predicted_ts > 0.0 && r.avg_ts > 0.0)
        .map(|r| LabelledPoint {
            series: host_color(boxes, &r.host),
            label: data::model_label(r),
            x: r.predicted_ts,
            y: r.avg_ts,
        })
        .collect();
    if points.is_empty() {
        return Planned::Skipped("no row carries fitbench's estimate (predicted_ts)".into());
    }
    Planned::Figure {
        figure: Figure::Predicted {
            title: "fitbench's estimate against the measurement".into(),
            series: host_series(boxes),
            points,
        },
        caption: "One point per row. Points above the diagonal beat the estimate; the grey band \
                  is ±25%."
            .into(),
    }
}

fn side_by_side(records: &[BenchRecord], boxes: &[BoxSummary]) -> Planned {
    if boxes.len() < 2 {
        return Planned::Skipped("the results come from one box".into());
    }
    let best = data::best_rows(records);
    let shared = data::shared_configs(&best);
    if shared.is_empty() {
        return Planned::Skipped("no model file and test was measured on two boxes".into());
    }
    let kinds = kinds_present(shared.keys().map(|(_, test)| test));
    let panels = kinds
        .iter()
        .map(|&kind| {
            let configs: Vec<_> = shared
                .keys()
                .filter(|(_, test)| TestKind::of(test) == kind)
                .collect();
            let series = boxes
                .iter()
                .enumerate()
                .map(|(i, b)| BarSeries {
                    name: b.host.clone(),
                    values: configs
                        .iter()
                        .map(|(model, test)| {
                            best.iter()
                                .find(|(k, _)| {
                                    k.host == b.host && &k.model == model && &k.test == test
                                })
                                .map(|(_, r)| (r.avg_ts, r.stddev_ts))
                        })
                        .collect(),
                    color: color(i),
                })
                .collect();
            BarPanel {
                title: kind.title().to_string(),
                categories: configs
                    .iter()
                    .map(|(model, test)| format!("{model} · {test}"))
                    .collect(),
                series,
            }
        })
        .collect();
    Planned::Figure {
        figure: Figure::Bars {
            title: "The same model file and test on each box (mean ± sd)".into(),
            x_desc: "tokens per second".into(),
            columns: 1,
            panels,
            decimals: 1,
        },
        caption: "Only configurations measured on two or more boxes, each at its fastest thread \
                  count there."
            .into(),
    }
}

fn sizes(records: &[BenchRecord]) -> Planned {
    let models = data::quant_sizes(records);
    if models.is_empty() {
        return Planned::Skipped("no model was measured at two or more quantizations".into());
    }
    let quants: Vec<String> = models
        .iter()
        .flat_map(|m| m.sizes.iter().map(|(q, _)| q.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let series = quants
        .iter()
        .enumerate()
        .map(|(j, quant)| BarSeries {
            name: quant.clone(),
            values: models
                .iter()
                .map(|m| {
                    m.sizes
                        .iter()
                        .find(|(q, _)| q == quant)
                        .map(|(_, bytes)| (*bytes as f64 / (1u64 << 20) as f64, 0.0))
                })
                .collect(),
            color: color(j),
        })
        .collect();
    Planned::Figure {
        figure: Figure::Bars {
            title: "Tensor bytes by quantization".into(),
            x_desc: "size of the weights (MiB)".into(),
            columns: 1,
            panels: vec![BarPanel {
                title: "model files measured at more than one quantization".into(),
                categories: models.iter().map(|m| m.model.clone()).collect(),
                series,
            }],
            decimals: 0,
        },
        caption: "The weights' size in each file measured (llama-bench's model_size).".into(),
    }
}
