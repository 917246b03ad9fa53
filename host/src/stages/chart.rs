//! Charts as PNG bytes (plotters on an in-memory bitmap, encoded with `png`), so a stage can
//! write them atomically like any other output. The font is embedded (DejaVu Sans, see
//! `host/assets/DejaVuSans.LICENSE`): a chart looks the same on every machine and needs no
//! system fonts.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

/// The embedded font.
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Series colours, in order.
const PALETTE: [RGBColor; 4] = [RGBColor(0x4c, 0x72, 0xb0), RGBColor(0xdd, 0x84, 0x52), RGBColor(0x55, 0xa8, 0x68), RGBColor(0xc4, 0x4e, 0x52)];

/// A chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("chart \"{title}\": {message}")]
pub struct ChartError {
    /// The chart's title.
    pub title: String,
    /// What went wrong.
    pub message: String,
}

fn font() -> Result<(), String> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| "the embedded font cannot be read".to_string()))
        .clone()
}

/// A proportion with its interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// The proportion.
    pub value: f64,
    /// Interval, lower end.
    pub lo: f64,
    /// Interval, upper end.
    pub hi: f64,
}

/// One group of bars: a label and one rate per series.
#[derive(Debug, Clone, PartialEq)]
pub struct BarGroup {
    /// Label under the group.
    pub label: String,
    /// One rate per series, in series order.
    pub rates: Vec<Rate>,
}

/// Grouped bars of rates in [0, 1] with interval whiskers and the value above each bar.
/// `series` names the bars of each group (the legend).
pub fn grouped_rates_png(title: &str, y_label: &str, series: &[&str], groups: &[BarGroup], size: (u32, u32)) -> Result<Vec<u8>, ChartError> {
    let err = |message: String| ChartError { title: title.to_string(), message };
    font().map_err(err)?;
    if groups.is_empty() || series.is_empty() || groups.iter().any(|g| g.rates.len() != series.len()) {
        return Err(err(format!("{} groups of {} series: every group needs one rate per series", groups.len(), series.len())));
    }
    let (w, h) = size;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let n = groups.len();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(18)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..n as f64, 0f64..1.08f64)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
            .y_desc(y_label)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let k = series.len() as f64;
        let slot = 0.8 / k;
        for (s, name) in series.iter().enumerate() {
            let color = PALETTE[s % PALETTE.len()];
            let x0 = |i: usize| i as f64 + 0.1 + s as f64 * slot;
            chart
                .draw_series(groups.iter().enumerate().map(|(i, g)| {
                    Rectangle::new([(x0(i) + 0.02 * slot, 0.0), (x0(i) + 0.98 * slot, g.rates[s].value)], color.filled())
                }))
                .map_err(|e| err(e.to_string()))?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
            chart
                .draw_series(groups.iter().enumerate().map(|(i, g)| {
                    let r = g.rates[s];
                    ErrorBar::new_vertical(x0(i) + slot / 2.0, r.lo, r.value, r.hi, BLACK.stroke_width(2), 10)
                }))
                .map_err(|e| err(e.to_string()))?;
            chart
                .draw_series(groups.iter().enumerate().map(|(i, g)| {
                    let r = g.rates[s];
                    Text::new(format!("{:.0}%", r.value * 100.0), (x0(i) + 0.2 * slot, (r.hi + 0.045).min(1.07)), ("sans-serif", 14))
                }))
                .map_err(|e| err(e.to_string()))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        // Group labels under the axis, centred on each group.
        let style = TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        for (i, g) in groups.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            root.draw(&Text::new(g.label.clone(), (px, py + 10), style.clone())).map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    encode(&buf, size).map_err(err)
}

/// RGB pixels as PNG bytes.
fn encode(buf: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(buf).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// One line of a line chart: its legend name, its points, and whether to mark each point.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Legend name.
    pub name: String,
    /// (x, y) points in x order.
    pub points: Vec<(f64, f64)>,
    /// Draw a dot on every point (for sparse series such as validation losses).
    pub dots: bool,
}

/// A chart on f64 axes in the house style: caption, margins, labelled mesh.
type XyChart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>;

fn xy_chart<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    title: &str,
    (x, y): (std::ops::Range<f64>, std::ops::Range<f64>),
    (x_label, y_label): (&str, &str),
) -> Result<XyChart<'a, 'b>, String> {
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(chart)
}

/// The legend of the series drawn with labels, in the house style.
fn legend<'a, 'b: 'a>(chart: &mut XyChart<'a, 'b>, position: SeriesLabelPosition) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())
}

/// Lines over a shared x axis (e.g. training and validation loss per step).
pub fn lines_png(title: &str, x_label: &str, y_label: &str, lines: &[Line], size: (u32, u32)) -> Result<Vec<u8>, ChartError> {
    let err = |message: String| ChartError { title: title.to_string(), message };
    font().map_err(err)?;
    let all: Vec<(f64, f64)> = lines.iter().flat_map(|l| l.points.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    if all.is_empty() {
        return Err(err("no finite points to draw".into()));
    }
    let (x0, x1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(x, _)| (a.min(x), b.max(x)));
    let (y0, y1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(_, y)| (a.min(y), b.max(y)));
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    let (x1, y0, y1) = (if x1 > x0 { x1 } else { x0 + 1.0 }, (y0 - pad).max(0.0), y1 + pad);
    let (w, h) = size;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = xy_chart(&root, title, (x0..x1, y0..y1), (x_label, y_label)).map_err(err)?;
        for (i, line) in lines.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let pts: Vec<(f64, f64)> = line.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label(line.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3)));
            if line.dots {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(|e| err(e.to_string()))?;
            }
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight).map_err(err)?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    encode(&buf, size).map_err(err)
}

/// Overlaid histograms of several series over shared bins (e.g. critic margins per aspect):
/// `bins` equal-width bins from the smallest to the largest finite value, counts per series
/// drawn as translucent bars, and a dashed line at x = 0 when 0 is in range.
pub fn histogram_png(title: &str, x_label: &str, series: &[(String, Vec<f64>)], bins: usize, size: (u32, u32)) -> Result<Vec<u8>, ChartError> {
    let err = |message: String| ChartError { title: title.to_string(), message };
    font().map_err(err)?;
    let all: Vec<f64> = series.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite()).collect();
    if all.is_empty() || bins == 0 {
        return Err(err("no finite values to draw".into()));
    }
    let (lo, hi) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let width = (hi - lo) / bins as f64;
    let counts: Vec<Vec<u32>> = series
        .iter()
        .map(|(_, v)| {
            let mut c = vec![0u32; bins];
            for &x in v.iter().filter(|x| x.is_finite()) {
                c[(((x - lo) / width) as usize).min(bins - 1)] += 1;
            }
            c
        })
        .collect();
    let top = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let (w, h) = size;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = xy_chart(&root, title, (lo..hi, 0.0..top), (x_label, "count")).map_err(err)?;
        for (i, ((name, _), c)) in series.iter().zip(&counts).enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(c.iter().enumerate().filter(|(_, &n)| n > 0).map(|(b, &n)| {
                    let x0 = lo + b as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, n as f64)], color.mix(0.55).filled())
                }))
                .map_err(|e| err(e.to_string()))?
                .label(format!("{name} (n = {})", c.iter().sum::<u32>()))
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], color.mix(0.55).filled()));
        }
        if lo < 0.0 && hi > 0.0 {
            chart
                .draw_series(DashedLineSeries::new(vec![(0.0, 0.0), (0.0, top)], 6, 4, BLACK.stroke_width(1)))
                .map_err(|e| err(e.to_string()))?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft).map_err(err)?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    encode(&buf, size).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_chart_is_a_png_and_refuses_nothing_to_draw() {
        let train = Line { name: "train".into(), points: (1..=20).map(|s| (s as f64, 3.0 / s as f64)).collect(), dots: false };
        let val = Line { name: "validation".into(), points: vec![(0.0, 3.2), (10.0, 1.1), (20.0, 0.9)], dots: true };
        let png = lines_png("loss", "step", "nats per token", &[train, val], (640, 400)).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let empty = Line { name: "x".into(), points: vec![(1.0, f64::NAN)], dots: false };
        assert!(lines_png("loss", "step", "nats", &[empty], (640, 400)).unwrap_err().to_string().contains("no finite points"));
    }

    #[test]
    fn a_histogram_counts_every_value_into_its_bin() {
        let a: Vec<f64> = (0..50).map(|i| i as f64 / 10.0 - 2.0).collect();
        let png = histogram_png("margins", "margin", &[("instruction".into(), a), ("response".into(), vec![1.0, 1.5])], 10, (640, 400)).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(histogram_png("m", "x", &[("a".into(), vec![f64::NAN])], 10, (100, 100)).is_err());
    }

    #[test]
    fn a_chart_is_a_png_with_bars_drawn() {
        let r = |v: f64| Rate { value: v, lo: (v - 0.1).max(0.0), hi: (v + 0.1).min(1.0) };
        let groups = vec![
            BarGroup { label: "open-qa".into(), rates: vec![r(0.4), r(0.7)] },
            BarGroup { label: "overall".into(), rates: vec![r(0.5), r(0.6)] },
        ];
        let png_bytes = grouped_rates_png("pass rate", "pass rate", &["base", "tuned"], &groups, (640, 400)).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(&png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut img = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut img).unwrap();
        assert_eq!((info.width, info.height), (640, 400));
        // Both series' colours appear.
        let px: Vec<&[u8]> = img.chunks(3).collect();
        assert!(px.iter().any(|p| p == &[0x4c, 0x72, 0xb0]));
        assert!(px.iter().any(|p| p == &[0xdd, 0x84, 0x52]));
        // A group without a rate per series is refused.
        let bad = vec![BarGroup { label: "x".into(), rates: vec![r(0.1)] }];
        assert!(grouped_rates_png("t", "y", &["a", "b"], &bad, (100, 100)).is_err());
    }
}
