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

/// One group of bars: a label under the group and one value per engine (`None` = not
/// measured on that engine).
struct BarGroup {
    label: String,
    values: Vec<Option<f64>>,
}

/// How a panel's y axis is drawn.
#[derive(Clone, Copy)]
enum Axis {
    /// Log scale of operation rates (`12.3k`, `1.2M`).
    LogRate,
    /// Linear from 0 with the given unit suffix.
    Linear(&'static str),
}

/// Draws one panel of grouped bars: a group per label, a bar per engine in the engines'
/// colours, the label centred under its group, the value above each bar.
fn bar_panel<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    axis: Axis,
    groups: &[BarGroup],
    engines: usize,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    use plotters::prelude::*;

    let n_groups = groups.len().max(1) as f64;
    let max = groups
        .iter()
        .flat_map(|g| g.values.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    let n = engines.max(1) as f64;
    // Group labels are drawn on `area`, whose coordinates start at its own top-left corner.
    let base = area.get_base_pixel();
    let bar_x = |g: usize, e: usize| {
        let x0 = g as f64 + 0.08 + 0.84 * e as f64 / n;
        (x0, x0 + 0.84 / n)
    };
    let label_style = ("sans-serif", 13).into_font().color(&BLACK);
    let value_style =
        ("sans-serif", 10)
            .into_font()
            .color(&BLACK)
            .pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Bottom,
            ));
    let centred = label_style
        .clone()
        .pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ));
    match axis {
        Axis::LogRate => {
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 17))
                .margin(10)
                .x_label_area_size(34)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..n_groups, (1f64..(max * 3.0).max(10.0)).log_scale())?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_desc(y_desc)
                .y_label_formatter(&|v| human_rate(*v))
                .draw()?;
            for e in 0..engines {
                let color = Palette99::pick(e).to_rgba();
                chart.draw_series(groups.iter().enumerate().filter_map(|(g, grp)| {
                    let v = grp.values.get(e).copied().flatten()?;
                    let (x0, x1) = bar_x(g, e);
                    Some(Rectangle::new(
                        [(x0, 1.0), (x1, v.max(1.0))],
                        color.filled(),
                    ))
                }))?;
                chart.draw_series(groups.iter().enumerate().filter_map(|(g, grp)| {
                    let v = grp.values.get(e).copied().flatten()?;
                    let (x0, x1) = bar_x(g, e);
                    Some(Text::new(
                        human_rate(v),
                        ((x0 + x1) / 2.0, v.max(1.0) * 1.08),
                        value_style.clone(),
                    ))
                }))?;
            }
            let plot = chart.plotting_area();
            let (_, y_range) = (plot.get_x_range(), plot.get_y_range());
            let bottom = y_range.start;
            for (g, grp) in groups.iter().enumerate() {
                let (px, py) = chart.backend_coord(&(g as f64 + 0.5, bottom));
                area.draw(&Text::new(
                    grp.label.clone(),
                    (px - base.0, py - base.1 + 8),
                    centred.clone(),
                ))?;
            }
        }
        Axis::Linear(unit) => {
            let top = if max > 0.0 { max * 1.2 } else { 1.0 };
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 17))
                .margin(10)
                .x_label_area_size(34)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..n_groups, 0f64..top)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_desc(y_desc)
                .y_labels(8)
                .light_line_style(WHITE)
                .y_label_formatter(&|v| format!("{v:.1}{unit}"))
                .draw()?;
            for e in 0..engines {
                let color = Palette99::pick(e).to_rgba();
                chart.draw_series(groups.iter().enumerate().filter_map(|(g, grp)| {
                    let v = grp.values.get(e).copied().flatten()?;
                    let (x0, x1) = bar_x(g, e);
                    Some(Rectangle::new([(x0, 0.0), (x1, v)], color.filled()))
                }))?;
                chart.draw_series(groups.iter().enumerate().filter_map(|(g, grp)| {
                    let v = grp.values.get(e).copied().flatten()?;
                    let (x0, x1) = bar_x(g, e);
                    Some(Text::new(
                        format!("{v:.2}"),
                        ((x0 + x1) / 2.0, v + top * 0.01),
                        value_style.clone(),
                    ))
                }))?;
            }
            for (g, grp) in groups.iter().enumerate() {
                let (px, py) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
                area.draw(&Text::new(
                    grp.label.clone(),
                    (px - base.0, py - base.1 + 8),
                    centred.clone(),
                ))?;
            }
        }
    }
    Ok(())
}

/// Writes the comparison chart to `path` as SVG, in three panels with one colour per engine
/// (legend on top, outside the bars):
/// 1. operations per second of each raw `Backend` phase (log scale, values on the bars);
/// 2. the MVCC-to-raw throughput ratio of each phase measured both ways (1.0 = the MVCC layer
///    costs nothing);
/// 3. memory and disk per engine in MiB: peak RSS, disk after the load, after deletes and
///    compaction, after defragment.
pub fn svg_chart(reports: &[EngineReport], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let engines = reports.len();
    let names: Vec<String> = phase_names(reports, |r| &r.raw)
        .into_iter()
        .filter(|n| {
            reports
                .iter()
                .any(|r| find(&r.raw, n).is_some_and(|p| p.mb_per_sec.is_none() && p.ops > 1))
        })
        .collect();
    let raw: Vec<BarGroup> = names
        .iter()
        .map(|n| BarGroup {
            label: n.clone(),
            values: reports
                .iter()
                .map(|r| find(&r.raw, n).map(|p| p.ops_per_sec))
                .collect(),
        })
        .collect();
    let ratio: Vec<BarGroup> = names
        .iter()
        .filter(|n| reports.iter().any(|r| find(&r.mvcc, n).is_some()))
        .map(|n| BarGroup {
            label: n.clone(),
            values: reports
                .iter()
                .map(|r| {
                    let raw = find(&r.raw, n)?.ops_per_sec;
                    let mvcc = find(&r.mvcc, n)?.ops_per_sec;
                    (raw > 0.0).then(|| mvcc / raw)
                })
                .collect(),
        })
        .collect();
    let mib = |b: u64| Some(b as f64 / (1024.0 * 1024.0));
    let nonzero = |b: u64| if b == 0 { None } else { mib(b) };
    let resources: Vec<BarGroup> = vec![
        BarGroup {
            label: "peak RSS".into(),
            values: reports.iter().map(|r| nonzero(r.peak_rss)).collect(),
        },
        BarGroup {
            label: "disk after load".into(),
            values: reports.iter().map(|r| mib(r.disk.after_load)).collect(),
        },
        BarGroup {
            label: "disk after deletes + compaction".into(),
            values: reports
                .iter()
                .map(|r| mib(r.disk.after_compaction))
                .collect(),
        },
        BarGroup {
            label: "disk after defragment".into(),
            values: reports
                .iter()
                .map(|r| mib(r.disk.after_defragment))
                .collect(),
        },
    ];

    let width = (220 + 190 * names.len() as u32).max(1000);
    let root = SVGBackend::new(path, (width, 1320)).into_drawing_area();
    root.fill(&WHITE)?;
    let (legend, rest) = root.split_vertically(50);
    let profile = reports
        .first()
        .map(|r| {
            format!(
                "{} keys, {}-byte values, cache {} MiB, {}",
                r.keys, r.value_size, r.cache_mb, r.durability
            )
        })
        .unwrap_or_default();
    legend.draw(&Text::new(
        format!("rusd-bench: engines side by side ({profile})"),
        (12, 6),
        ("sans-serif", 15).into_font(),
    ))?;
    for (e, r) in reports.iter().enumerate() {
        let color = Palette99::pick(e).to_rgba();
        let x = 12 + 130 * e as i32;
        legend.draw(&Rectangle::new([(x, 30), (x + 14, 44)], color.filled()))?;
        legend.draw(&Text::new(
            r.engine.clone(),
            (x + 20, 30),
            ("sans-serif", 14).into_font(),
        ))?;
    }
    let (top, lower) = rest.split_vertically(450);
    let (middle, bottom) = lower.split_vertically(400);
    bar_panel(
        &top,
        "Raw Backend throughput per phase (ops/s, log scale; higher is better)",
        "ops/s",
        Axis::LogRate,
        &raw,
        engines,
    )?;
    bar_panel(
        &middle,
        "MVCC store / raw Backend throughput (1.0 = the MVCC layer costs nothing)",
        "ratio",
        Axis::Linear("x"),
        &ratio,
        engines,
    )?;
    bar_panel(
        &bottom,
        "Memory and disk per engine (MiB; lower is better)",
        "MiB",
        Axis::Linear(" MiB"),
        &resources,
        engines,
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(name: &str, ops_per_sec: f64) -> PhaseResult {
        PhaseResult {
            name: name.into(),
            ops: 1000,
            seconds: 1.0,
            ops_per_sec,
            p50_us: 1.0,
            p99_us: 2.0,
            mb_per_sec: None,
            peak_rss: 0,
            anon_rss: 0,
        }
    }

    fn report(engine: &str, scale: f64) -> EngineReport {
        EngineReport {
            engine: engine.into(),
            profile: "quick".into(),
            keys: 20_000,
            value_size: 256,
            cache_mb: 64,
            durability: "buffered 100ms".into(),
            fsyncs_per_sec: 1000.0,
            raw: vec![
                phase("put", 100_000.0 * scale),
                phase("get", 900_000.0 * scale),
                phase("durable put (64 writers)", 6_000.0 * scale),
            ],
            mvcc: vec![
                phase("put", 50_000.0 * scale),
                phase("get", 450_000.0 * scale),
            ],
            disk: DiskUsage {
                after_load: 40 << 20,
                after_compaction: 30 << 20,
                after_defragment: 10 << 20,
            },
            index_bytes_per_key: None,
            index_bytes_per_version: None,
            peak_rss: 120 << 20,
        }
    }

    /// The chart has one legend entry per engine, a label per phase group, the three panels,
    /// readable rate ticks (no `1000000.0`) and the ratio of the phases measured both ways.
    #[test]
    fn chart_has_labels_ratios_and_resources() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.svg");
        let reports = vec![report("sled", 1.0), report("redb", 0.5)];
        svg_chart(&reports, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        if let Ok(out) = std::env::var("RUSD_CHART_OUT") {
            std::fs::copy(&path, out).unwrap();
        }
        for needle in [
            ">sled<",
            ">redb<",
            ">put<",
            ">get<",
            ">durable put (64 writers)<",
            ">MVCC store / raw Backend throughput (1.0 = the MVCC layer costs nothing)<",
            ">peak RSS<",
            ">disk after defragment<",
            ">0.50<",
            ">100.0k<",
            ">120.00<",
        ] {
            // plotters writes each text on a line of its own.
            let line = format!("\n{}\n", needle.trim_matches(['>', '<']));
            assert!(svg.contains(&line), "{needle} missing");
        }
        assert!(!svg.contains("1000000.0"));
    }
}
