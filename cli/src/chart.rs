//! PNG chart of an eval: mean KL divergence vs the f16 cache, per cache type, with rotation
//! off/on and stock/attnrot kernels side by side.
use crate::eval::Row;
use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use std::path::Path;

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        for f in FONTS {
            if let Ok(bytes) = std::fs::read(f) {
                let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).is_ok() {
                    return true;
                }
            }
        }
        false
    });
    if !ok {
        bail!("no DejaVu Sans font found for the chart ({}); install fonts-dejavu-core or pass --no-chart", FONTS[0]);
    }
    Ok(())
}

/// Bars: for each cache type (x), one bar per (rotation, kernels: stock / attnrot exact /
/// attnrot quality); y = mean KLD with ± whiskers.
pub fn kld_chart(rows: &[Row], path: &Path) -> Result<()> {
    register_font()?;
    let ctx = rows
        .first()
        .map(|r| r.config.ctx)
        .context("no results to chart")?;
    let rows: Vec<&Row> = rows.iter().filter(|r| r.config.ctx == ctx).collect();
    let mut labels: Vec<String> = Vec::new();
    for r in &rows {
        let l = r.config.label();
        if !labels.contains(&l) {
            labels.push(l);
        }
    }
    // (rotation, kernels, colour, legend); series without rows are not drawn
    let series: [(bool, &str, RGBColor, &str); 6] = [
        (
            false,
            "stock",
            RGBColor(200, 120, 110),
            "rotation off, stock",
        ),
        (true, "stock", RGBColor(110, 150, 200), "rotation on, stock"),
        (
            false,
            "attnrot",
            RGBColor(230, 170, 80),
            "rotation off, attnrot exact",
        ),
        (
            true,
            "attnrot",
            RGBColor(60, 110, 180),
            "rotation on, attnrot exact",
        ),
        (
            false,
            "quality",
            RGBColor(150, 200, 120),
            "rotation off, attnrot quality",
        ),
        (
            true,
            "quality",
            RGBColor(40, 140, 70),
            "rotation on, attnrot quality",
        ),
    ];
    let ymax = rows
        .iter()
        .map(|r| r.stats.kld_mean + r.stats.kld_err)
        .fold(0.0f64, f64::max)
        .max(1e-4)
        * 1.15;
    let tmp = path.with_extension(format!("tmp{}.png", std::process::id()));
    {
        let root = BitMapBackend::new(&tmp, (1200, 640)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Mean KL divergence vs the f16 KV cache (ctx {ctx}) — lower is better"),
                ("sans-serif", 24),
            )
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..labels.len() as f64, 0f64..ymax)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(labels.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = (*x - 0.5).round();
                if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                    labels[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .y_desc("mean KLD")
            .label_style(("sans-serif", 16))
            .draw()?;
        let active: Vec<_> = series
            .iter()
            .filter(|s| rows.iter().any(|r| r.config.kernels == s.1))
            .collect();
        let w = 0.8 / active.len().max(1) as f64;
        for (si, (rot, kern, color, name)) in active.into_iter().enumerate() {
            let mut bars = Vec::new();
            let mut whiskers = Vec::new();
            for (xi, l) in labels.iter().enumerate() {
                let hit = rows.iter().find(|r| {
                    &r.config.label() == l
                        && r.config.kernels == *kern
                        && (r.config.rotation == *rot || (l == "f16" && !rot))
                });
                // f16 has no rotation setting: draw it in the "off" slots only
                if let Some(r) = hit {
                    if l == "f16" && *rot {
                        continue;
                    }
                    let x0 = xi as f64 + 0.1 + si as f64 * w;
                    bars.push(Rectangle::new(
                        [(x0, 0.0), (x0 + w * 0.9, r.stats.kld_mean)],
                        color.filled(),
                    ));
                    let xm = x0 + w * 0.45;
                    whiskers.push(PathElement::new(
                        vec![
                            (xm, (r.stats.kld_mean - r.stats.kld_err).max(0.0)),
                            (xm, r.stats.kld_mean + r.stats.kld_err),
                        ],
                        BLACK.stroke_width(1),
                    ));
                }
            }
            if bars.is_empty() {
                continue;
            }
            let c = *color;
            chart
                .draw_series(bars)?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
            chart.draw_series(whiskers)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()?;
        root.present()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `attnrot stats`: errors vs bits per K value, one panel for the score error and one for the
/// attention output error (log scale), one series per family of encodings.
pub fn stats_chart(rows: &[crate::stats::CandidateResult], path: &Path) -> Result<()> {
    register_font()?;
    if rows.is_empty() {
        bail!("no results to chart");
    }
    let mut families: Vec<String> = Vec::new();
    for r in rows {
        if !families.contains(&r.family) {
            families.push(r.family.clone());
        }
    }
    let palette = [
        RGBColor(200, 80, 70),
        RGBColor(60, 110, 180),
        RGBColor(110, 170, 220),
        RGBColor(40, 150, 80),
        RGBColor(150, 90, 180),
        RGBColor(230, 150, 40),
        RGBColor(120, 120, 120),
        RGBColor(20, 20, 20),
        RGBColor(180, 160, 60),
    ];
    // the quantized encodings; f16/bf16 (16 bits) are in the table
    let rows: Vec<&crate::stats::CandidateResult> =
        rows.iter().filter(|r| r.bits_k <= 9.0).collect();
    let xmax = rows.iter().map(|r| r.bits_k).fold(0f64, f64::max) + 0.5;
    let tmp = path.with_extension(format!("tmp{}.png", std::process::id()));
    {
        let root = BitMapBackend::new(&tmp, (1400, 620)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 2));
        type Metric = fn(&crate::stats::CandidateResult) -> f64;
        let metrics: [(&str, Metric); 2] = [
            ("score error ‖Ŝ−S‖/‖S‖, S = Q·Kᵀ", |r| {
                r.mean.score_rel_err
            }),
            ("attention output error ‖Ô−O‖/‖O‖", |r| {
                r.mean.out_rel_err
            }),
        ];
        for (panel, (title, f)) in panels.iter().zip(metrics) {
            let ys: Vec<f64> = rows.iter().map(|r| f(r)).filter(|v| *v > 0.0).collect();
            let ymin = ys.iter().cloned().fold(f64::MAX, f64::min).max(1e-9) / 1.5;
            let ymax = ys.iter().cloned().fold(0f64, f64::max).max(ymin * 10.0) * 1.5;
            let mut chart = ChartBuilder::on(panel)
                .caption(title, ("sans-serif", 20))
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(70)
                .build_cartesian_2d(1.5f64..xmax, (ymin..ymax).log_scale())?;
            chart
                .configure_mesh()
                .x_desc("bits per K value (scales/norms counted)")
                .y_desc("relative error (mean over layers)")
                .y_label_formatter(&|y| format!("{y:.0e}"))
                .label_style(("sans-serif", 14))
                .draw()?;
            for (fi, fam) in families.iter().enumerate() {
                let c = palette[fi % palette.len()];
                let mut pts: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| &r.family == fam && f(r) > 0.0)
                    .map(|r| (r.bits_k, f(r)))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                let line = fam.starts_with("TurboQuant");
                if line {
                    chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
                }
                // later series smaller, so coinciding points stay visible
                let radius = 8 - (fi as i32 % 6);
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, radius, c.filled())))?
                    .label(fam.as_str())
                    .legend(move |(x, y)| Circle::new((x + 7, y), 5, c.filled()));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()?;
        }
        root.present()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
