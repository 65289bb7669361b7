//! The `policy` benchmark's PNG plots (plotters, bitmap backend):
//! - `throughput.png`: the found rate (Mpps, median with min-max bars) against policy entries,
//!   one line per target, the generator's ceiling as a dashed line;
//! - `latency.png`: the latency CDF (log-scaled µs) of each target at the largest entry count
//!   measured, at the first latency fraction.
//!
//! Text is drawn with ab_glyph from a TrueType font read at run time ([`FONT_PATHS`]), so the
//! build needs no fontconfig or freetype; without one the plots are not drawn and the report
//! says why (`apt-get install fonts-dejavu-core`).

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::policy_report::PolicyReport;

/// Where the font is looked for, in order.
pub const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

const WIDTH: u32 = 900;
const HEIGHT: u32 = 560;

/// The first of [`FONT_PATHS`] that exists.
pub fn font_path() -> Option<&'static str> {
    FONT_PATHS.into_iter().find(|p| Path::new(p).exists())
}

/// Registers the font once per process (plotters keeps a `'static` reference to its bytes).
fn ensure_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let path = font_path().ok_or_else(|| {
                format!(
                    "no TrueType font at {}: apt-get install fonts-dejavu-core",
                    FONT_PATHS.join(" or ")
                )
            })?;
            let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{path} is not a usable TrueType font"))
        })
        .clone()
}

fn colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 6] = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
    ];
    PALETTE[i % PALETTE.len()]
}

/// Targets in the order they first appear.
fn targets(report: &PolicyReport) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in &report.points {
        if !out.contains(&p.target) {
            out.push(p.target.clone());
        }
    }
    out
}

/// Entry counts, sorted and distinct: the x axis places them evenly (0 has no logarithm).
fn entry_counts(report: &PolicyReport) -> Vec<u32> {
    let mut e: Vec<u32> = report.points.iter().map(|p| p.entries).collect();
    e.sort_unstable();
    e.dedup();
    e
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// `throughput.png`.
pub fn throughput(report: &PolicyReport, path: &Path) -> Result<(), String> {
    ensure_font()?;
    let entries = entry_counts(report);
    if entries.is_empty() {
        return Err("no points".into());
    }
    let x_of = |n: u32| entries.iter().position(|&e| e == n).unwrap_or(0) as f64;
    let top = report
        .points
        .iter()
        .filter_map(|p| p.rate.map(|r| r.max))
        .chain(report.ceiling.map(|c| c.max))
        .fold(0.0f64, f64::max)
        / 1e6;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Highest rate with loss under the threshold vs policy entries",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(
            -0.3f64..(entries.len() as f64 - 0.7),
            0f64..(top * 1.15).max(0.01),
        )
        .map_err(err)?;
    let labels = entries.clone();
    chart
        .configure_mesh()
        .x_desc("policy entries on the destination")
        .y_desc("Mpps")
        .x_labels(entries.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() > 0.01 || i < 0.0 {
                return String::new();
            }
            labels
                .get(i as usize)
                .map_or_else(String::new, u32::to_string)
        })
        .draw()
        .map_err(err)?;
    if let Some(c) = report.ceiling {
        let y = c.median / 1e6;
        let xs = (-0.3, entries.len() as f64 - 0.7);
        chart
            .draw_series(DashedLineSeries::new(
                [(xs.0, y), (xs.1, y)],
                6,
                4,
                BLACK.stroke_width(1),
            ))
            .map_err(err)?
            .label("generator ceiling")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK));
    }
    for (i, target) in targets(report).iter().enumerate() {
        let c = colour(i);
        let pts: Vec<(f64, f64, f64, f64)> = report
            .points
            .iter()
            .filter(|p| &p.target == target)
            .filter_map(|p| {
                p.rate
                    .map(|r| (x_of(p.entries), r.median / 1e6, r.min / 1e6, r.max / 1e6))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|&(x, y, _, _)| (x, y)),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(target.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(
                pts.iter()
                    .map(|&(x, y, _, _)| Circle::new((x, y), 4, c.filled())),
            )
            .map_err(err)?;
        chart
            .draw_series(
                pts.iter()
                    .map(|&(x, _, lo, hi)| PathElement::new([(x, lo), (x, hi)], c.stroke_width(1))),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// `latency.png`.
pub fn latency_cdf(report: &PolicyReport, path: &Path) -> Result<(), String> {
    ensure_font()?;
    let largest = entry_counts(report).last().copied().unwrap_or(0);
    let curves: Vec<(String, Vec<(f64, f64)>)> = report
        .points
        .iter()
        .filter(|p| p.entries == largest)
        .filter_map(|p| {
            let l = p.latency.first()?.latency.as_ref()?;
            let pts = l
                .cdf
                .iter()
                .map(|&(q, ns)| ((ns as f64 / 1e3).max(0.1), q))
                .collect();
            Some((p.target.clone(), pts))
        })
        .collect();
    let fraction = report
        .points
        .iter()
        .find_map(|p| p.latency.first().map(|l| l.fraction))
        .unwrap_or(0.0);
    let (lo, hi) = curves
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.0))
        .fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (lo, hi) = if hi > 0.0 {
        (lo * 0.8, hi * 1.25)
    } else {
        (1.0, 1000.0)
    };
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "One-way latency CDF, {largest} policy entries, at {:.0}% of each target's rate",
                fraction * 100.0
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency (µs, log scale)")
        .y_desc("fraction of packets")
        .draw()
        .map_err(err)?;
    for (i, (target, pts)) in curves.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(target.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}
