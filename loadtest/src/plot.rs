//! SVG plots (plotters): latency CDFs (one curve per run or server, logarithmic latency axis)
//! and server RSS against open connections.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use serde_json::Value;

use crate::output::RssPoint;

const SIZE: (u32, u32) = (900, 560);

/// A title from a result: scenario, server, parameters.
pub fn title(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let mut t = format!("{} on {}", s("scenario"), s("server"));
    if let Some(p) = v.get("params").and_then(Value::as_str) {
        t.push_str(&format!(" ({p})"));
    }
    if let Some(r) = v.get("round").and_then(Value::as_u64) {
        t.push_str(&format!(", round {r}"));
    }
    t
}

fn palette(i: usize) -> RGBColor {
    const C: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    C[i % C.len()]
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e:?}")
}

/// Latency CDFs: x = latency in ms (log scale; send→delivery, or send→ack for throughput),
/// y = fraction of samples.
pub fn latency_cdf(path: &Path, title: &str, series: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    let all = series.iter().flat_map(|(_, s)| s.iter());
    let lo = all
        .clone()
        .map(|p| p.0)
        .fold(f64::INFINITY, f64::min)
        .max(0.01);
    let hi = all.map(|p| p.0).fold(0.0, f64::max).max(lo * 10.0);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((lo * 0.8..hi * 1.2).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale): send → delivery; throughput: send → ack")
        .y_desc("fraction of messages")
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = palette(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Server RSS (MiB) against open connections, one line per series (the path goes up while
/// connections open and back while they close).
pub fn rss_vs_connections(
    path: &Path,
    title: &str,
    series: &[(String, Vec<RssPoint>)],
) -> Result<()> {
    let all = series.iter().flat_map(|(_, s)| s.iter());
    let max_c = all.clone().map(|p| p.connections).max().unwrap_or(1).max(1) as f64;
    let max_mib = all.map(|p| p.rss_kib as f64 / 1024.0).fold(1.0, f64::max);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_c * 1.05, 0.0..max_mib * 1.1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("open connections")
        .y_desc("server RSS (MiB)")
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = palette(i);
        chart
            .draw_series(LineSeries::new(
                pts.iter()
                    .map(|p| (p.connections as f64, p.rss_kib as f64 / 1024.0)),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn svg_files_with_every_series() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cdf.svg");
        latency_cdf(
            &p,
            "fanout",
            &[
                ("lara".into(), vec![(0.5, 0.1), (1.0, 0.5), (9.0, 1.0)]),
                ("centrifugo".into(), vec![(0.2, 0.5), (0.4, 1.0)]),
            ],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg"), "{svg:.100}");
        assert!(svg.contains("lara") && svg.contains("centrifugo"));
        let r = dir.path().join("rss.svg");
        let pts = |k: u64| {
            (0..5)
                .map(|i| RssPoint {
                    t_s: i as f64,
                    connections: i * 1000,
                    rss_kib: 10_000 + i * 1000 * k,
                })
                .collect::<Vec<_>>()
        };
        rss_vs_connections(&r, "idle", &[("a".into(), pts(8)), ("b".into(), pts(130))]).unwrap();
        assert!(std::fs::read_to_string(&r).unwrap().contains("server RSS"));
    }

    #[test]
    fn titles() {
        let v = json!({"scenario":"fanout","server":"lara","params":"K=1000","round":2});
        assert_eq!(title(&v), "fanout on lara (K=1000), round 2");
    }
}
