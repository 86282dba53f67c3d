//! Training curves as a self-contained SVG, drawn from the records of `metrics.jsonl`
//! (see [`crate::metrics::MetricsLog`]).
//!
//! Three panels share the x axis (optimizer step): loss (train and validation), learning rate,
//! and validation accuracy / macro-F1. The SVG uses no scripts, external files or fonts beyond
//! the generic `sans-serif`, so it opens in any browser and can be committed beside a run.
//! Hand-written rather than a plotting crate: three line charts do not justify a dependency
//! tree, and the output stays byte-stable for tests.

use serde_json::Value;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

/// Canvas width in px.
const WIDTH: f64 = 960.0;
/// Left margin: room for y tick labels such as `1.5e-5`.
const MARGIN_LEFT: f64 = 78.0;
/// Right margin: room for the legend beside the plot area.
const MARGIN_RIGHT: f64 = 190.0;
/// Space above each plot area for the panel title.
const TITLE_SPACE: f64 = 34.0;
/// Height of each plot area.
const PLOT_HEIGHT: f64 = 170.0;
/// Space below each plot area for the x tick labels.
const TICK_SPACE: f64 = 30.0;
/// Extra space under the last panel for the x axis title.
const BOTTOM_SPACE: f64 = 22.0;
/// Vertical distance from one panel's top to the next.
const PANEL_STRIDE: f64 = TITLE_SPACE + PLOT_HEIGHT + TICK_SPACE;

/// One line to draw: where its points come from and how it looks.
struct SeriesSpec {
    /// Record `"kind"` to select (`"train"` or `"eval"`).
    kind: &'static str,
    /// Record key holding the y value.
    key: &'static str,
    /// Legend text.
    label: &'static str,
    color: &'static str,
    /// Draw a dot at every point: evaluation records are sparse, and a dot shows where each
    /// measurement actually is.
    markers: bool,
}

/// One panel: a title and the series sharing its y axis.
struct PanelSpec {
    title: &'static str,
    series: &'static [SeriesSpec],
    /// Format y ticks in scientific notation (`2e-5`), for learning rates.
    scientific: bool,
}

const PANELS: [PanelSpec; 3] = [
    PanelSpec {
        title: "Loss",
        series: &[
            SeriesSpec {
                kind: "train",
                key: "loss",
                label: "training loss",
                color: "#1f77b4",
                markers: false,
            },
            SeriesSpec {
                kind: "eval",
                key: "loss",
                label: "validation loss",
                color: "#d62728",
                markers: true,
            },
        ],
        scientific: false,
    },
    PanelSpec {
        title: "Learning rate",
        series: &[SeriesSpec {
            kind: "train",
            key: "lr",
            label: "learning rate",
            color: "#2ca02c",
            markers: false,
        }],
        scientific: true,
    },
    PanelSpec {
        title: "Validation metrics",
        series: &[
            SeriesSpec {
                kind: "eval",
                key: "accuracy",
                label: "accuracy",
                color: "#9467bd",
                markers: true,
            },
            SeriesSpec {
                kind: "eval",
                key: "macro_f1",
                label: "macro F1",
                color: "#ff7f0e",
                markers: true,
            },
        ],
        scientific: false,
    },
];

/// Renders the training curves of `records` (metrics-log records, see
/// [`crate::metrics::MetricsLog`]) as a complete SVG document.
///
/// A record contributes a point to a series when its `"kind"` matches and both `"step"` and the
/// series key are finite numbers; anything else (missing keys, `null` from a NaN loss, strings)
/// is skipped, so a diverged run still plots. A panel with no points says "no data".
pub fn render_svg(records: &[Value]) -> String {
    let data: Vec<Vec<Vec<(f64, f64)>>> = PANELS
        .iter()
        .map(|panel| {
            panel
                .series
                .iter()
                .map(|s| series(records, s.kind, s.key))
                .collect()
        })
        .collect();
    let steps = data.iter().flatten().flatten().map(|&(x, _)| x);
    let x_axis = Axis::new(steps, true);

    let height = PANELS.len() as f64 * PANEL_STRIDE + BOTTOM_SPACE;
    let mut svg = String::new();
    // `write!` into a String cannot fail; the results are ignored on purpose below.
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    for (index, (panel, panel_data)) in PANELS.iter().zip(&data).enumerate() {
        let top = index as f64 * PANEL_STRIDE;
        render_panel(&mut svg, panel, panel_data, &x_axis, top);
    }
    let plot_center = MARGIN_LEFT + plot_width() / 2.0;
    let _ = writeln!(
        svg,
        r##"<text x="{plot_center}" y="{:.1}" text-anchor="middle" fill="#333">step</text>"##,
        height - 8.0
    );
    svg.push_str("</svg>\n");
    svg
}

/// Writes [`render_svg`]`(records)` to `path` atomically: the SVG goes to `<path>.tmp` first and
/// is renamed over `path`, so a viewer reloading the file during training never sees half a file.
pub fn write_svg(path: &Path, records: &[Value]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, render_svg(records))?;
    fs::rename(&tmp, path)
}

fn plot_width() -> f64 {
    WIDTH - MARGIN_LEFT - MARGIN_RIGHT
}

/// The `(step, value)` points of one series, sorted by step.
///
/// A resumed run re-logs the steps between its checkpoint and the crash, so a step can appear
/// twice; the later record wins (it belongs to the run that continued), which keeps the line from
/// doubling back on itself.
fn series(records: &[Value], kind: &str, key: &str) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = records
        .iter()
        .filter(|r| r.get("kind").and_then(Value::as_str) == Some(kind))
        .filter_map(|r| {
            let x = r.get("step").and_then(Value::as_f64)?;
            let y = r.get(key).and_then(Value::as_f64)?;
            (x.is_finite() && y.is_finite()).then_some((x, y))
        })
        .collect();
    // Stable sort keeps file order among equal steps, so "last wins" below means "logged last".
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut deduped: Vec<(f64, f64)> = Vec::with_capacity(points.len());
    for point in points {
        match deduped.last_mut() {
            Some(last) if last.0 == point.0 => *last = point,
            _ => deduped.push(point),
        }
    }
    deduped
}

/// A linear axis: its displayed range and tick positions.
struct Axis {
    min: f64,
    max: f64,
    ticks: Vec<f64>,
    /// Tick spacing, used to pick how many decimals labels need.
    step: f64,
}

impl Axis {
    /// An axis covering `values` with about six "nice" ticks (1, 2 or 5 times a power of ten).
    /// `integer` keeps the tick spacing at least 1, for step counts. No values gives `[0, 1]`.
    fn new(values: impl Iterator<Item = f64>, integer: bool) -> Self {
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let (lo, hi) = if !lo.is_finite() || !hi.is_finite() {
            (0.0, 1.0)
        } else if lo == hi {
            // A single value (one point, or a constant lr) still needs a visible range; centre it.
            let half = if lo == 0.0 { 1.0 } else { lo.abs() * 0.5 };
            let half = if integer { half.max(1.0) } else { half };
            (lo - half, hi + half)
        } else {
            (lo, hi)
        };
        let mut step = nice_step((hi - lo) / 5.0);
        if integer {
            step = step.max(1.0);
        }
        let first = (lo / step).floor();
        let last = (hi / step).ceil();
        // `first`/`last` are integers in units of `step`; computing ticks as `i * step` rather than
        // by repeated addition keeps them free of accumulated rounding (0.30000000000000004).
        let count = (last - first).clamp(1.0, 20.0) as i64;
        let ticks = (0..=count)
            .map(|i| (first + i as f64) * step)
            .collect::<Vec<_>>();
        let min = first * step;
        let max = ticks.last().copied().unwrap_or(min + step);
        Self {
            min,
            max,
            ticks,
            step,
        }
    }

    /// Maps `value` onto the pixel interval `[from, to]`.
    fn map(&self, value: f64, from: f64, to: f64) -> f64 {
        let span = self.max - self.min;
        if span > 0.0 {
            from + (value - self.min) / span * (to - from)
        } else {
            (from + to) / 2.0
        }
    }
}

/// The 1, 2, 5 or 10 times a power of ten nearest to `rough` (Heckbert's "nice numbers"), so an
/// axis gets five to eight ticks rather than as few as three.
fn nice_step(rough: f64) -> f64 {
    if !(rough.is_finite() && rough > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(rough.log10().floor());
    let fraction = rough / magnitude;
    let nice = if fraction < 1.5 {
        1.0
    } else if fraction < 3.0 {
        2.0
    } else if fraction < 7.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// A tick label: scientific (`2e-5`, `1.5e-5`) when asked or when the numbers are very small or
/// large, otherwise fixed-point with just enough decimals for the tick spacing.
fn format_tick(value: f64, step: f64, scientific: bool) -> String {
    // Snap values that are zero up to rounding (e.g. -1e-21) to a clean 0.
    if value.abs() < step.abs() * 1e-9 {
        return "0".to_string();
    }
    if scientific || step.abs() < 1e-3 || value.abs() >= 1e6 {
        let text = format!("{value:.3e}");
        return match text.split_once('e') {
            Some((mantissa, exponent)) => {
                let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
                format!("{mantissa}e{exponent}")
            }
            None => text,
        };
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{value:.decimals$}")
}

/// Draws one panel whose title area starts at `top`.
fn render_panel(
    svg: &mut String,
    panel: &PanelSpec,
    data: &[Vec<(f64, f64)>],
    x_axis: &Axis,
    top: f64,
) {
    let left = MARGIN_LEFT;
    let right = MARGIN_LEFT + plot_width();
    let plot_top = top + TITLE_SPACE;
    let bottom = plot_top + PLOT_HEIGHT;
    let y_axis = Axis::new(data.iter().flatten().map(|&(_, y)| y), false);
    let px = |x: f64| x_axis.map(x, left, right);
    let py = |y: f64| y_axis.map(y, bottom, plot_top);

    let _ = writeln!(
        svg,
        r##"<text x="{left}" y="{:.1}" font-size="14" font-weight="bold" fill="#222">{}</text>"##,
        top + 22.0,
        panel.title
    );
    let _ = writeln!(svg, r##"<g stroke="#e6e6e6" stroke-width="1">"##);
    for &tick in &x_axis.ticks {
        let x = px(tick);
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{plot_top:.1}" x2="{x:.1}" y2="{bottom:.1}"/>"#
        );
    }
    let has_data = data.iter().any(|s| !s.is_empty());
    if has_data {
        for &tick in &y_axis.ticks {
            let y = py(tick);
            let _ = writeln!(
                svg,
                r#"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}"/>"#
            );
        }
    }
    svg.push_str("</g>\n");
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{plot_top:.1}" width="{:.1}" height="{PLOT_HEIGHT}" fill="none" stroke="#999"/>"##,
        right - left
    );

    let _ = writeln!(svg, r##"<g fill="#444" text-anchor="middle">"##);
    for &tick in &x_axis.ticks {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            px(tick),
            bottom + 16.0,
            format_tick(tick, x_axis.step, false)
        );
    }
    svg.push_str("</g>\n");

    if !has_data {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#888" font-size="14">no data</text>"##,
            (left + right) / 2.0,
            (plot_top + bottom) / 2.0 + 5.0
        );
    } else {
        let _ = writeln!(svg, r##"<g fill="#444" text-anchor="end">"##);
        for &tick in &y_axis.ticks {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                left - 6.0,
                py(tick) + 4.0,
                format_tick(tick, y_axis.step, panel.scientific)
            );
        }
        svg.push_str("</g>\n");
    }

    for (spec, points) in panel.series.iter().zip(data) {
        if points.is_empty() {
            continue;
        }
        let coords: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.8" stroke-linejoin="round" points="{}"/>"#,
            spec.color,
            coords.join(" ")
        );
        // A lone point draws no line, so it always gets a marker.
        if spec.markers || points.len() == 1 {
            let _ = writeln!(svg, r#"<g fill="{}">"#, spec.color);
            for &(x, y) in points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3"/>"#,
                    px(x),
                    py(y)
                );
            }
            svg.push_str("</g>\n");
        }
    }

    for (index, (spec, points)) in panel.series.iter().zip(data).enumerate() {
        let y = plot_top + 14.0 + index as f64 * 20.0;
        let x = right + 14.0;
        let label = if points.is_empty() {
            format!("{} (no data)", spec.label)
        } else {
            spec.label.to_string()
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2.5"/><text x="{:.1}" y="{:.1}" fill="#222">{label}</text>"##,
            x + 22.0,
            spec.color,
            x + 28.0,
            y + 4.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A plausible run: 300 steps, linear warmup over 30 steps to 2e-5 then linear decay, noisy
    /// decreasing train loss every 10 steps, evaluation every 50 steps.
    fn example_records() -> Vec<Value> {
        let mut records = Vec::new();
        for step in (10..=300).step_by(10) {
            let s = step as f64;
            let lr = if s <= 30.0 {
                2e-5 * s / 30.0
            } else {
                2e-5 * (300.0 - s) / 270.0
            };
            let noise = ((s * 0.37).sin()) * 0.05;
            let loss = 0.35 + 0.75 * (-s / 80.0).exp() + noise;
            records.push(json!({"kind":"train","step":step,"epoch":1 + step / 100,"loss":loss,"lr":lr,"grad_norm":1.3,"examples_per_s":12.1}));
            if step % 50 == 0 {
                let acc = 0.55 + 0.3 * (1.0 - (-s / 100.0).exp());
                records.push(json!({"kind":"eval","step":step,"epoch":1 + step / 100,"loss":loss + 0.08,"accuracy":acc,"macro_f1":acc - 0.04}));
            }
        }
        records
    }

    #[test]
    fn svg_is_a_complete_document_with_titles_and_one_line_per_series() {
        let svg = render_svg(&example_records());
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for title in [
            "Loss",
            "Learning rate",
            "Validation metrics",
            "training loss",
            "validation loss",
            "macro F1",
        ] {
            assert!(svg.contains(title), "missing {title}");
        }
        assert_eq!(svg.matches("<polyline").count(), 5);
        assert!(!svg.contains("no data"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // The opening and closing tags of the groups balance.
        assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
    }

    #[test]
    fn learning_rate_ticks_use_scientific_notation() {
        let svg = render_svg(&example_records());
        assert!(svg.contains(">2e-5<"), "no 2e-5 tick");
        assert!(svg.contains(">1e-5<"), "no 1e-5 tick");
    }

    #[test]
    fn empty_input_renders_no_data_panels() {
        let svg = render_svg(&[]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches(">no data<").count(), 3);
        assert_eq!(svg.matches("<polyline").count(), 0);
    }

    #[test]
    fn non_finite_and_missing_values_are_skipped() {
        let records = vec![
            json!({"kind":"train","step":1,"loss":1.0,"lr":1e-5}),
            // serde_json turns NaN and infinities into null.
            json!({"kind":"train","step":2,"loss":f64::NAN,"lr":f64::INFINITY}),
            json!({"kind":"train","step":3,"loss":"NaN"}),
            json!({"kind":"train","loss":0.5}),
            json!({"kind":"train","step":4,"loss":0.8,"lr":2e-5}),
        ];
        assert_eq!(
            series(&records, "train", "loss"),
            vec![(1.0, 1.0), (4.0, 0.8)]
        );
        assert_eq!(
            series(&records, "train", "lr"),
            vec![(1.0, 1e-5), (4.0, 2e-5)]
        );
        let svg = render_svg(&records);
        assert!(!svg.contains("NaN"));
        // train loss and lr have points; the eval-only series do not.
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("validation loss (no data)"));
        assert_eq!(svg.matches(">no data<").count(), 1);
    }

    #[test]
    fn a_single_point_gets_a_marker_and_a_finite_axis() {
        let svg = render_svg(&[json!({"kind":"eval","step":5,"accuracy":0.5,"macro_f1":0.5})]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("<circle"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn repeated_steps_from_a_resumed_run_keep_the_last_record() {
        let records = vec![
            json!({"kind":"train","step":10,"loss":1.0}),
            json!({"kind":"train","step":20,"loss":0.9}),
            json!({"kind":"train","step":10,"loss":0.7}),
        ];
        assert_eq!(
            series(&records, "train", "loss"),
            vec![(10.0, 0.7), (20.0, 0.9)]
        );
    }

    #[test]
    fn ticks_are_nice_round_numbers() {
        let axis = Axis::new([0.0, 0.83].into_iter(), false);
        assert_eq!(axis.step, 0.2);
        let labels: Vec<String> = axis
            .ticks
            .iter()
            .map(|&t| format_tick(t, axis.step, false))
            .collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let steps = Axis::new([10.0, 300.0].into_iter(), true);
        assert_eq!(steps.step, 50.0);
        assert_eq!(steps.ticks.first(), Some(&0.0));
        assert_eq!(steps.ticks.last(), Some(&300.0));
        assert_eq!(format_tick(1.5e-5, 5e-6, true), "1.5e-5");
        assert_eq!(format_tick(3.0 * 5e-6, 5e-6, true), "1.5e-5");
    }

    #[test]
    fn write_svg_replaces_the_file_and_leaves_no_temporary() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("curves.svg");
        fs::write(&path, "old")?;
        write_svg(&path, &example_records())?;
        assert!(fs::read_to_string(&path)?.starts_with("<svg"));
        assert!(!dir.path().join("curves.svg.tmp").exists());
        Ok(())
    }

    /// Writes the example run to `/tmp/wick-plot-example.svg` for eyeballing
    /// (`rsvg-convert /tmp/wick-plot-example.svg -o /tmp/wick-plot-example.png`).
    #[test]
    #[ignore = "writes outside the temp dir; run by hand to look at the plot"]
    fn render_example_for_inspection() -> io::Result<()> {
        write_svg(Path::new("/tmp/wick-plot-example.svg"), &example_records())
    }
}
