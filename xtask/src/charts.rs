//! BENCHMARKS.md's charts: SVG files written beside it (`docs/bench/`) with `plotters`.
//!
//! Two shapes cover them: a log–log line chart (map memory against services) and a chart of
//! medians with their range over the rounds, per category and series (costs and rates).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

const SIZE: (u32, u32) = (960, 440);
const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
];

fn failed(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a chart: {e}")
}

/// Every chart's frame: title, margins and label areas.
fn frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    builder
}

/// `lines` in the chart's colours, each in the legend; with `dots`, each point marked too.
fn draw_lines<X, Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<X, Y>>,
    lines: &[Line],
    dots: bool,
) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, line) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(failed)?
            .label(line.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if dots {
            chart
                .draw_series(
                    line.points
                        .iter()
                        .map(|&p| Circle::new(p, 3, color.filled())),
                )
                .map_err(failed)?;
        }
    }
    Ok(())
}

/// The legend, at `position`.
fn legend<'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(failed)
}

/// One line of a log–log chart.
pub(crate) struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A log–log line chart (both axes from a little under the smallest value to a little over
/// the largest).
pub(crate) fn log_lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
) -> Result<()> {
    let all = lines.iter().flat_map(|l| l.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Ok(());
    }
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let mut chart = frame(&root, title)
        .build_cartesian_2d(
            (x0 / 1.5..x1 * 1.5).log_scale(),
            (y0 / 1.5..y1 * 1.5).log_scale(),
        )
        .map_err(failed)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(failed)?;
    draw_lines(&mut chart, lines, true)?;
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(failed)
}

/// A line chart on linear axes: `x` as given, `y` from `y_range`; `marks` are vertical lines
/// (an event at that `x`, named in the legend).
pub(crate) fn lines(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    y_range: (f64, f64),
    lines: &[Line],
    marks: &[(String, f64)],
) -> Result<()> {
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    if x0 >= x1 {
        return Ok(());
    }
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let mut chart = frame(&root, title)
        .build_cartesian_2d(x0..x1, y_range.0..y_range.1)
        .map_err(failed)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(failed)?;
    draw_lines(&mut chart, lines, false)?;
    for (name, x) in marks {
        let x = *x;
        chart
            .draw_series(LineSeries::new(
                [(x, y_range.0), (x, y_range.1)],
                BLACK.mix(0.5).stroke_width(1),
            ))
            .map_err(failed)?
            .label(name.clone())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    }
    legend(&mut chart, SeriesLabelPosition::MiddleRight)?;
    root.present().map_err(failed)
}

/// A median with the range it was taken over.
#[derive(Clone, Copy)]
pub(crate) struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// One series of [`spreads`]: a value per category (`None`: not measured).
pub(crate) struct Series {
    pub name: String,
    pub values: Vec<Option<Spread>>,
}

/// Medians as dots with their range as error bars, per category (x) and series (side by side
/// within a category), from 0 up.
pub(crate) fn spreads(
    path: &Path,
    title: &str,
    y_desc: &str,
    categories: &[String],
    series: &[Series],
) -> Result<()> {
    let top = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .map(|v| v.max)
        .fold(0.0, f64::max);
    if categories.is_empty() || top <= 0.0 {
        return Ok(());
    }
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let n = categories.len() as f64;
    let mut chart = frame(&root, title)
        .build_cartesian_2d(-0.5..n - 0.5, 0.0..top * 1.15)
        .map_err(failed)?;
    let labels = categories.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(categories.len())
        .x_label_formatter(&move |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()
        .map_err(failed)?;
    let width = 0.6;
    let step = width / series.len().max(1) as f64;
    for (s, one) in series.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        let offset = -width / 2.0 + step * (s as f64 + 0.5);
        let points: Vec<(f64, Spread)> = one
            .values
            .iter()
            .enumerate()
            .filter_map(|(c, v)| v.map(|v| (c as f64 + offset, v)))
            .collect();
        chart
            .draw_series(points.iter().map(|&(x, v)| {
                ErrorBar::new_vertical(x, v.min, v.median, v.max, color.filled(), 8)
            }))
            .map_err(failed)?
            .label(one.name.clone())
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, v)| Circle::new((x, v.median), 4, color.filled())),
            )
            .map_err(failed)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of() -> Vec<Line> {
        vec![Line {
            name: "geosteer".into(),
            points: vec![(0.0, 100.0), (1.0, 100.0), (1.1, 0.0), (3.0, 0.0)],
        }]
    }

    #[test]
    fn writes_both_kinds_of_chart() {
        let dir = std::env::temp_dir().join(format!("geosteer-charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let memory = [Line {
            name: "geosteer".into(),
            points: vec![(100.0, 7.2), (1000.0, 11.0), (10000.0, 51.8)],
        }];
        log_lines(&dir.join("a.svg"), "Map memory", "services", "MiB", &memory).unwrap();
        let v = Spread {
            median: 2.0,
            min: 1.5,
            max: 3.0,
        };
        let series = [Series {
            name: "keep-alive".into(),
            values: vec![Some(v), None],
        }];
        let categories = ["geosteer".to_string(), "iptables".to_string()];
        spreads(&dir.join("b.svg"), "CPU", "µs", &categories, &series).unwrap();
        let marks = [("failure".to_string(), 1.0)];
        lines(
            &dir.join("c.svg"),
            "Share",
            ("s", "%"),
            (0.0, 100.0),
            &lines_of(),
            &marks,
        )
        .unwrap();
        for name in ["a.svg", "b.svg", "c.svg"] {
            let svg = std::fs::read_to_string(dir.join(name)).unwrap();
            assert!(
                svg.starts_with("<svg") && svg.contains("geosteer"),
                "{name}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
