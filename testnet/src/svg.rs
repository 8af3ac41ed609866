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

/// A round tick value without needless decimals (0.2, 1, 50, 1000).
fn tick(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round() as i64)
    } else {
        let t = format!("{x:.3}");
        t.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

fn fmt_signed(v: f64) -> String {
    if v < 0.0 {
        format!("-{}", fmt_num(-v))
    } else {
        fmt_num(v)
    }
}

/// The share of `values` at or below each value (a CDF), on a logarithmic
/// x axis with round ticks (1, 2, 5 × 10ⁿ), the median and the 99th
/// percentile marked: latencies spread over orders of magnitude stay
/// readable (a linear histogram puts them all in its first bar).
pub fn cdf(title: &str, x_label: &str, values: &[f64]) -> String {
    let mut v: Vec<f64> = values
        .iter()
        .copied()
        .filter(|x| x.is_finite() && *x > 0.0)
        .collect();
    v.sort_by(f64::total_cmp);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12"><rect width="{W}" height="{H}" fill="white"/><text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    if v.is_empty() {
        s.push_str(r#"<text x="360" y="180" text-anchor="middle">no data</text></svg>"#);
        return s;
    }
    let lo = 10f64.powf(v[0].log10().floor());
    let hi = 10f64.powf(v[v.len() - 1].log10().ceil()).max(lo * 10.0);
    let px = |x: f64| ML + (W - ML - 30.0) * (x.log10() - lo.log10()) / (hi.log10() - lo.log10());
    let py = |p: f64| H - M - (H - 2.0 * M) * p;
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{} (log scale)</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">share at or below</text>"#,
        (ML + W - 30.0) / 2.0,
        H - M + 32.0,
        esc(x_label),
        H / 2.0,
        H / 2.0
    );
    for i in 0..=4 {
        let p = f64::from(i) / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{ML}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}%</text>"##,
            W - 30.0,
            ML - 4.0,
            py(p) + 4.0,
            i * 25,
            y = py(p)
        );
    }
    let mut decade = lo;
    while decade <= hi * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let x = decade * m;
            if x < lo * 0.9999 || x > hi * 1.0001 {
                continue;
            }
            let _ = write!(
                s,
                r##"<line x1="{X:.1}" y1="{}" x2="{X:.1}" y2="{}" stroke="#eee"/><text x="{X:.1}" y="{}" text-anchor="middle">{}</text>"##,
                M,
                H - M,
                H - M + 16.0,
                tick(x),
                X = px(x)
            );
        }
        decade *= 10.0;
    }
    let n = v.len() as f64;
    let points: Vec<String> = v
        .iter()
        .enumerate()
        .map(|(i, x)| format!("{:.1},{:.1}", px(*x), py((i as f64 + 1.0) / n)))
        .collect();
    let _ = write!(
        s,
        r##"<polyline fill="none" stroke="#2166ac" stroke-width="2" points="{}"/>"##,
        points.join(" ")
    );
    let at = |q: f64| v[((q * n).ceil() as usize).clamp(1, v.len()) - 1];
    for (label, q, colour) in [("p50", 0.5, "#1b7837"), ("p99", 0.99, "#b2182b")] {
        let x = at(q);
        let _ = write!(
            s,
            r#"<line x1="{X:.1}" y1="{}" x2="{X:.1}" y2="{}" stroke="{colour}" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" fill="{colour}">{label} {}</text>"#,
            M,
            H - M,
            px(x) + 4.0,
            M + if q < 0.9 { 14.0 } else { 30.0 },
            fmt_num(x),
            X = px(x)
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cdf_spreads_latencies_over_decades_and_marks_p50_and_p99() {
        // 98 fast answers and 2 slow ones: a linear histogram would show one bar.
        let mut v: Vec<f64> = (0..98).map(|i| 2.0 + f64::from(i) / 100.0).collect();
        v.extend([450.0, 900.0]);
        let svg = cdf("latency", "ms", &v);
        for tick in [">1<", ">10<", ">100<", ">1000<", ">2<", ">5<"] {
            assert!(svg.contains(tick), "tick {tick} in {svg}");
        }
        assert!(svg.contains("p50 2.5"), "{svg}");
        assert!(svg.contains("p99 450"), "{svg}");
        assert!(cdf("x", "ms", &[]).contains("no data"));
    }

    #[test]
    fn spread_charts_span_negative_values() {
        let svg = spread(
            "balance",
            "scale",
            "EUR",
            &[(
                "a".into(),
                vec![(1.0, -10.0, -12.0, -8.0), (2.0, 5.0, 4.0, 6.0)],
            )],
        );
        assert!(svg.contains(">-1"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 1);
    }
}
