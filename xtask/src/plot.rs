//! `cargo xtask bench-lab --plot FILE`: throughput against round-trip time, one line per
//! series and loss, as an SVG the README can show.

use plotters::prelude::*;
use std::path::Path;

/// Draw `points` (series, RTT ms, loss %, MB/s) of the series named in `series` (in that
/// order, each its own colour; each loss its own line and marker size).
pub fn throughput_by_rtt(
    path: &Path,
    points: &[(String, u32, f64, f64)],
    series: &[&str],
) -> anyhow::Result<()> {
    let wanted: Vec<_> = points
        .iter()
        .filter(|p| series.contains(&p.0.as_str()))
        .collect();
    anyhow::ensure!(
        !wanted.is_empty(),
        "nothing to plot: no row of {series:?} ran"
    );
    let max_rtt = wanted.iter().map(|p| p.1).max().unwrap_or(1);
    let max_rate = wanted.iter().map(|p| p.3).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "NAT lab: throughput against round-trip time",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0u32..max_rtt + max_rtt / 10 + 1, 0.0..max_rate * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("peer-to-peer round trip (ms)")
        .y_desc("MB/s")
        .draw()?;
    let mut losses: Vec<f64> = wanted.iter().map(|p| p.2).collect();
    losses.sort_by(f64::total_cmp);
    losses.dedup();
    for (i, name) in series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        for (j, &loss) in losses.iter().enumerate() {
            let mut line: Vec<(u32, f64)> = wanted
                .iter()
                .filter(|p| p.0 == *name && p.2 == loss)
                .map(|p| (p.1, p.3))
                .collect();
            if line.is_empty() {
                continue;
            }
            line.sort_by_key(|p| p.0);
            // Later losses: thinner lines, so the loss-free one stands out.
            let width = 3u32.saturating_sub(j as u32).max(1);
            let style = colour.stroke_width(width);
            chart
                .draw_series(LineSeries::new(line.clone(), style))?
                .label(format!("{name}, {loss} % loss"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(width))
                });
            chart.draw_series(
                line.into_iter()
                    .map(|p| Circle::new(p, 2 + width, colour.filled())),
            )?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
