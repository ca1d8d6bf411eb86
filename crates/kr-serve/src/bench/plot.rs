//! PNG plots of `bench serve` reports (plotters, bitmap backend): latency CDFs, output
//! throughput vs concurrency and p99 latencies vs concurrency. Several reports (e.g.
//! kr-serve and llama-server on the same workload) share one set of axes.
//!
//! Invariants: pure Rust end to end: text is drawn with ab_glyph from a DejaVu Sans Mono
//! font embedded in the binary (`assets/`, Bitstream Vera licence beside it), so plotting
//! needs no system fonts or libraries. Plots read only the JSON reports.

use crate::error::{CliError, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSansMono.ttf");
const SIZE: (u32, u32) = (1200, 520);

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Bench(format!("plotting failed: {e}"))
}

fn register_font() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    ok.then_some(())
        .ok_or_else(|| err("the embedded font did not load"))
}

/// `reports/run.json` → `reports/run` (plots are `reports/run-*.png`).
pub fn prefix_of(out: &Path) -> PathBuf {
    out.with_extension("")
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// One line on a chart.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// Draws every plot for `reports` (label, report) and returns the files written.
pub fn plot_reports(reports: &[(String, Value)], prefix: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| CliError::Write {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let cdf = with_suffix(prefix, "-latency-cdf.png");
    let panels = [("TTFT", "ttft_ms"), ("E2E latency", "e2e_ms")].map(|(title, key)| {
        let series = reports
            .iter()
            .flat_map(|(label, r)| levels(r).map(move |l| (label, l)))
            .map(|(label, l)| Series {
                name: format!("{label} c={}", l["concurrency"]),
                points: super::stats::cdf(&request_values(l, key)),
            })
            .collect::<Vec<_>>();
        (
            format!("{title} CDF"),
            format!("{title} (ms)"),
            "fraction of requests".to_string(),
            series,
        )
    });
    draw_panels(&cdf, &panels)?;
    let thr = with_suffix(prefix, "-throughput.png");
    let panels = [
        ("output_throughput", "Output throughput", "tokens/s"),
        ("request_throughput", "Request throughput", "requests/s"),
    ]
    .map(|(key, title, unit)| {
        (
            title.to_string(),
            "concurrency".to_string(),
            unit.to_string(),
            by_concurrency(reports, |l| l[key].as_f64()),
        )
    });
    draw_panels(&thr, &panels)?;
    let p99 = with_suffix(prefix, "-p99.png");
    let panels = [
        ("ttft_ms", "p99 TTFT"),
        ("tpot_ms", "p99 TPOT"),
        ("e2e_ms", "p99 E2E"),
    ]
    .map(|(key, title)| {
        (
            title.to_string(),
            "concurrency".to_string(),
            "ms".to_string(),
            by_concurrency(reports, |l| l[key]["p99"].as_f64()),
        )
    });
    draw_panels(&p99, &panels)?;
    Ok(vec![cdf, thr, p99])
}

fn levels(r: &Value) -> impl Iterator<Item = &Value> {
    r["levels"].as_array().into_iter().flatten()
}

fn request_values(level: &Value, key: &str) -> Vec<f64> {
    level["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|q| q[key].as_f64())
        .collect()
}

/// One series per report: `metric(level)` against the level's concurrency.
fn by_concurrency(
    reports: &[(String, Value)],
    metric: impl Fn(&Value) -> Option<f64>,
) -> Vec<Series> {
    reports
        .iter()
        .map(|(label, r)| Series {
            name: label.clone(),
            points: levels(r)
                .filter_map(|l| Some((l["concurrency"].as_f64()?, metric(l)?)))
                .collect(),
        })
        .collect()
}

type Panel = (String, String, String, Vec<Series>);

fn draw_panels(path: &Path, panels: &[Panel]) -> Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, panels.len()));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    root.present().map_err(err)
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (title, x_desc, y_desc, series) = panel;
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all.clone().map(|p| p.0).fold(0.0, f64::max).max(1e-9) * 1.05;
    let y_max = all.map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc.as_str())
        .y_desc(y_desc.as_str())
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// `kr-serve bench plot`: several reports on shared axes.
pub fn bench_plot(args: crate::cli::BenchPlotArgs) -> Result<()> {
    let mut reports = Vec::new();
    for path in &args.reports {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read report {}: {e}", path.display())))?;
        let r: Value = serde_json::from_str(&text)
            .map_err(|e| CliError::Usage(format!("report {} is not JSON: {e}", path.display())))?;
        if r["benchmark"] != "serve" {
            return Err(CliError::Usage(format!(
                "{} is not a `bench serve` report",
                path.display()
            )));
        }
        let label = r["label"]
            .as_str()
            .map_or_else(|| path.display().to_string(), str::to_string);
        reports.push((label, r));
    }
    for p in plot_reports(&reports, &args.out_prefix)? {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
