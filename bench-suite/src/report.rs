//! Side-by-side rendering of the per-engine reports: Markdown, JSON and an SVG chart.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::measure::PhaseResult;
use crate::workload::{DiskUsage, Profile};

/// Everything measured for one engine (one worker process).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EngineReport {
    /// Engine name (`memory`, `sled`, `redb`, `rocksdb`, or `btreemap` for the baseline).
    pub engine: String,
    /// Profile name.
    pub profile: String,
    /// Keys loaded.
    pub keys: usize,
    /// Value size in bytes.
    pub value_size: usize,
    /// Cache budget in MiB given to the engine.
    pub cache_mb: u64,
    /// Durability of the main phases (`buffered 100ms` or `sync`).
    pub durability: String,
    /// `write 4 KiB + fdatasync` cycles per second measured in the same data directory.
    pub fsyncs_per_sec: f64,
    /// Raw `Backend` phases.
    pub raw: Vec<PhaseResult>,
    /// The same operations through `MvccStore`.
    #[serde(default)]
    pub mvcc: Vec<PhaseResult>,
    /// Disk usage of the raw run.
    pub disk: DiskUsage,
    /// Key-index bytes per key (beyond the key itself) and per extra version, if measured.
    #[serde(default)]
    pub index_bytes_per_key: Option<f64>,
    /// Key-index bytes per extra version, if measured.
    #[serde(default)]
    pub index_bytes_per_version: Option<f64>,
    /// Peak RSS of the whole worker process in bytes.
    pub peak_rss: u64,
}

pub(crate) fn human_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

pub(crate) fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / 1024.0 / 1024.0 / 1024.0)
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

fn cell(p: Option<&PhaseResult>) -> String {
    match p {
        None => "–".into(),
        Some(p) => match p.mb_per_sec {
            Some(mb) => format!("{mb:.1} MB/s"),
            None if p.name.starts_with("compaction") => format!(
                "{} rows/s ({} rows in {:.2} s)",
                human_rate(p.ops_per_sec),
                p.ops,
                p.seconds
            ),
            None if p.ops <= 1 => format!("{:.3} s", p.seconds),
            None if p.p50_us > 0.0 => format!(
                "{} /s (p50 {:.1} µs, p99 {:.1} µs)",
                human_rate(p.ops_per_sec),
                p.p50_us,
                p.p99_us
            ),
            None => format!("{} /s", human_rate(p.ops_per_sec)),
        },
    }
}

fn phase_names(
    reports: &[EngineReport],
    pick: fn(&EngineReport) -> &Vec<PhaseResult>,
) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in reports {
        for p in pick(r) {
            if !names.contains(&p.name) {
                names.push(p.name.clone());
            }
        }
    }
    names
}

fn find<'a>(phases: &'a [PhaseResult], name: &str) -> Option<&'a PhaseResult> {
    phases.iter().find(|p| p.name == name)
}

/// Renders the side-by-side Markdown tables.
pub fn markdown(reports: &[EngineReport], baseline: &[PhaseResult]) -> String {
    let mut out = String::new();
    let Some(first) = reports.first() else {
        return "no engine ran\n".into();
    };
    let _ = writeln!(
        out,
        "Profile `{}`: {} keys of 16 bytes, {}-byte values; every engine: cache {} MiB, durability {} (durable rows: ack = durable; the memory engine runs volatile, so it has none); fsyncs/s of this disk: {:.0}.\n",
        first.profile, first.keys, first.value_size, first.cache_mb, first.durability, first.fsyncs_per_sec
    );
    let mut header = String::from("| operation |");
    let mut rule = String::from("|---|");
    for r in reports {
        let _ = write!(header, " {} |", r.engine);
        rule.push_str("---|");
    }
    header.push_str(" BTreeMap baseline |");
    rule.push_str("---|");

    let _ = writeln!(out, "**Raw `Backend`**\n\n{header}\n{rule}");
    for name in phase_names(reports, |r| &r.raw) {
        let mut row = format!("| {name} |");
        for r in reports {
            let _ = write!(row, " {} |", cell(find(&r.raw, &name)));
        }
        let _ = write!(row, " {} |", cell(find(baseline, &name)));
        let _ = writeln!(out, "{row}");
    }
    let mvcc_names = phase_names(reports, |r| &r.mvcc);
    if !mvcc_names.is_empty() {
        let mut header = String::from("| operation |");
        let mut rule = String::from("|---|");
        for r in reports {
            let _ = write!(header, " {} |", r.engine);
            rule.push_str("---|");
        }
        let _ = writeln!(
            out,
            "\n**Through `MvccStore`** (ratio to the same engine's raw figure)\n\n{header}\n{rule}"
        );
        for name in mvcc_names {
            let mut row = format!("| {name} |");
            for r in reports {
                let m = find(&r.mvcc, &name);
                let ratio = m
                    .zip(find(&r.raw, &name))
                    .filter(|(_, raw)| raw.ops_per_sec > 0.0 && raw.mb_per_sec.is_none())
                    .map(|(m, raw)| format!(" ×{:.2}", m.ops_per_sec / raw.ops_per_sec))
                    .unwrap_or_default();
                let _ = write!(row, " {}{ratio} |", cell(m));
            }
            let _ = writeln!(out, "{row}");
        }
    }
    let mut header = String::from("| resource |");
    let mut rule = String::from("|---|");
    for r in reports {
        let _ = write!(header, " {} |", r.engine);
        rule.push_str("---|");
    }
    let _ = writeln!(out, "\n**Memory and disk**\n\n{header}\n{rule}");
    type Row = (&'static str, fn(&EngineReport) -> String);
    let rows: [Row; 7] = [
        ("peak RSS (whole run)", |r| human_bytes(r.peak_rss)),
        ("peak RSS during load (put)", |r| {
            find(&r.raw, "put").map_or("–".into(), |p| human_bytes(p.peak_rss))
        }),
        ("anonymous RSS after load", |r| {
            find(&r.raw, "batch put (10 keys)").map_or("–".into(), |p| human_bytes(p.anon_rss))
        }),
        ("disk after load", |r| human_bytes(r.disk.after_load)),
        ("disk after deletes + compaction", |r| {
            human_bytes(r.disk.after_compaction)
        }),
        ("disk after defragment", |r| {
            human_bytes(r.disk.after_defragment)
        }),
        (
            "key index bytes per key beyond the key / per extra version (engine-independent)",
            |r| match (r.index_bytes_per_key, r.index_bytes_per_version) {
                (Some(k), Some(v)) => format!("{k:.0} / {v:.0}"),
                _ => "–".into(),
            },
        ),
    ];
    for (name, f) in rows {
        let mut row = format!("| {name} |");
        for r in reports {
            let _ = write!(row, " {} |", f(r));
        }
        let _ = writeln!(out, "{row}");
    }
    out
}

/// Writes a grouped bar chart (ops/s, log scale) of the raw phases to `path` as SVG.
pub fn svg_chart(reports: &[EngineReport], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let names: Vec<String> = phase_names(reports, |r| &r.raw)
        .into_iter()
        .filter(|n| {
            reports
                .iter()
                .any(|r| find(&r.raw, n).is_some_and(|p| p.mb_per_sec.is_none() && p.ops > 1))
        })
        .collect();
    let max = reports
        .iter()
        .flat_map(|r| r.raw.iter().map(|p| p.ops_per_sec))
        .fold(10.0f64, f64::max);
    let width = 140 + 110 * names.len() as u32;
    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let groups = names.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "ops/s by engine (raw Backend, log scale)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..groups, (1f64..max * 2.0).log_scale())?;
    let labels = names.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len().max(1))
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            labels.get(i).cloned().unwrap_or_default()
        })
        .y_desc("ops/s")
        .draw()?;
    let n = reports.len().max(1) as f64;
    for (e, r) in reports.iter().enumerate() {
        let color = Palette99::pick(e).to_rgba();
        let bars: Vec<_> = names
            .iter()
            .enumerate()
            .filter_map(|(g, name)| {
                let p = find(&r.raw, name)?;
                let x0 = g as f64 + 0.1 + 0.8 * e as f64 / n;
                let x1 = x0 + 0.8 / n;
                Some(Rectangle::new(
                    [(x0, 1.0), (x1, p.ops_per_sec.max(1.0))],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(r.engine.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Profile description for the output header.
pub fn describe(profile: &Profile) -> String {
    format!(
        "{} ({} keys, {}-byte values, {} reads per read phase)",
        profile.name, profile.keys, profile.value_size, profile.reads
    )
}
