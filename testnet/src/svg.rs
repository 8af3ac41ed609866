//! Small, dependency-free SVG charts for the testnet report.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 360.0;
const M: f64 = 56.0;
/// Left margin of charts whose axis labels can be long.
const ML: f64 = 92.0;
const COLORS: [&str; 8] = [
    "#1b7837", "#762a83", "#e08214", "#2166ac", "#b2182b", "#5aae61", "#8073ac", "#fdb863",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn frame(title: &str, y_label: &str, max: f64) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    let _ = write!(
        s,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        H / 2.0,
        H / 2.0,
        esc(y_label)
    );
    for i in 0..=4 {
        let y = H - M - (H - 2.0 * M) * f64::from(i) / 4.0;
        let v = max * f64::from(i) / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{M}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##,
            W - 20.0
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            M - 4.0,
            y + 4.0,
            fmt_num(v)
        );
    }
    s
}

fn fmt_num(v: f64) -> String {
    if v >= 10.0 {
        format!("{:.0}", v)
    } else {
        format!("{:.1}", v)
    }
}

/// Grouped bars: one group per label, one bar per series.
pub fn bars(
    title: &str,
    y_label: &str,
    labels: &[String],
    series: &[(String, Vec<f64>)],
) -> String {
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.1;
    let mut s = frame(title, y_label, max);
    let groups = labels.len().max(1) as f64;
    let gw = (W - M - 20.0) / groups;
    let bw = (gw * 0.8) / series.len().max(1) as f64;
    for (gi, label) in labels.iter().enumerate() {
        let gx = M + gw * gi as f64 + gw * 0.1;
        for (si, (_, vals)) in series.iter().enumerate() {
            let v = vals.get(gi).copied().unwrap_or(0.0);
            let h = (H - 2.0 * M) * v / max;
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                gx + bw * si as f64,
                H - M - h,
                bw.max(1.0),
                h,
                COLORS[si % COLORS.len()]
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            gx + gw * 0.4,
            H - M + 16.0,
            esc(label)
        );
    }
    legend(&mut s, series.iter().map(|(n, _)| n.as_str()));
    s.push_str("</svg>");
    s
}

fn legend<'a>(s: &mut String, names: impl Iterator<Item = &'a str>) {
    for (i, n) in names.enumerate() {
        let x = M + 10.0 + (i % 4) as f64 * 160.0;
        let y = H - 14.0 - (i / 4) as f64 * 14.0;
        let _ = write!(
            s,
            r#"<rect x="{x}" y="{}" width="10" height="10" fill="{}"/>"#,
            y - 9.0,
            COLORS[i % COLORS.len()]
        );
        let _ = write!(s, r#"<text x="{}" y="{y}">{}</text>"#, x + 14.0, esc(n));
    }
}

/// A histogram of values (e.g. latencies in ms).
pub fn histogram(title: &str, x_label: &str, values: &[f64]) -> String {
    let bins = 20usize;
    let max = values.iter().copied().fold(0.0_f64, f64::max).max(1e-9);
    let mut counts = vec![0.0; bins];
    for v in values {
        let i = ((v / max) * (bins as f64 - 1.0)).round() as usize;
        counts[i.min(bins - 1)] += 1.0;
    }
    let labels: Vec<String> = (0..bins)
        .map(|i| {
            if i % 4 == 0 {
                fmt_num(max * i as f64 / (bins as f64 - 1.0))
            } else {
                String::new()
            }
        })
        .collect();
    let mut s = bars(title, "count", &labels, &[(x_label.to_owned(), counts)]);
    if values.is_empty() {
        s = s.replace(
            "</svg>",
            r#"<text x="360" y="180" text-anchor="middle">no data</text></svg>"#,
        );
    }
    s
}

/// One line of a [`spread`] chart: its name and, at each x, the mean and
/// the lowest and highest value across seeds.
pub type SpreadSeries = (String, Vec<(f64, f64, f64, f64)>);

/// Lines of means against a numeric x, with a bar from the lowest to the
/// highest value at each point (the spread across seeds). The y axis spans
/// the data, negative values included.
pub fn spread(title: &str, x_label: &str, y_label: &str, series: &[SpreadSeries]) -> String {
    let points = || series.iter().flat_map(|(_, p)| p.iter());
    let (mut lo, mut hi) = points().fold((f64::MAX, f64::MIN), |(l, h), &(_, _, a, b)| {
        (l.min(a), h.max(b))
    });
    let (x0, x1) = points().fold((f64::MAX, f64::MIN), |(l, h), &(x, ..)| {
        (l.min(x), h.max(x))
    });
    if lo > hi {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-6);
    let (lo, hi) = (
        if lo >= 0.0 {
            (lo - pad).max(0.0)
        } else {
            lo - pad
        },
        hi + pad,
    );
    let xspan = if x1 > x0 { x1 - x0 } else { 1.0 };
    let px = |x: f64| ML + 20.0 + (W - ML - M - 40.0) * (x - x0) / xspan;
    let py = |y: f64| H - M - (H - 2.0 * M) * (y - lo) / (hi - lo);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12"><rect width="{W}" height="{H}" fill="white"/>"#
    );
    let _ = write!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text><text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        W / 2.0,
        esc(title),
        H / 2.0,
        H / 2.0,
        esc(y_label),
        W / 2.0,
        H - M + 30.0,
        esc(x_label)
    );
    for i in 0..=4 {
        let v = lo + (hi - lo) * f64::from(i) / 4.0;
        let y = py(v);
        let _ = write!(
            s,
            r##"<line x1="{ML}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - 20.0,
            ML - 4.0,
            y + 4.0,
            fmt_signed(v)
        );
    }
    let mut xs: Vec<f64> = points().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            px(x),
            H - M + 16.0,
            fmt_signed(x)
        );
    }
    for (si, (_, pts)) in series.iter().enumerate() {
        let c = COLORS[si % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, m, ..)| format!("{:.1},{:.1}", px(x), py(m)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for &(x, m, a, b) in pts {
            let _ = write!(
                s,
                r#"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="{c}"/><circle cx="{0:.1}" cy="{3:.1}" r="3" fill="{c}"/>"#,
                px(x),
                py(a),
                py(b),
                py(m)
            );
        }
    }
    legend(&mut s, series.iter().map(|(n, _)| n.as_str()));
    s.push_str("</svg>");
    s
}

fn fmt_signed(v: f64) -> String {
    if v < 0.0 {
        format!("-{}", fmt_num(-v))
    } else {
        fmt_num(v)
    }
}
