//! Small SVG charts for the report pages, drawn on the server: no script,
//! readable without colour (every bar carries its value in text), with a
//! title and description for screen readers.

use super::html::esc;

/// A horizontal bar chart of `rows` (label, value), each value written out
/// by `label`. Negative values are drawn as zero-length bars.
pub fn bars(
    id: &str,
    title: &str,
    rows: &[(String, i64)],
    label: impl Fn(i64) -> String,
) -> String {
    const WIDTH: i64 = 640;
    const LEFT: i64 = 190;
    const RIGHT: i64 = 110;
    const ROW: i64 = 30;
    if rows.is_empty() {
        return String::new();
    }
    let max = rows.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let span = WIDTH - LEFT - RIGHT;
    let height = ROW * rows.len() as i64 + 10;
    let mut out = format!(
        r#"<figure><svg id="{id}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-labelledby="{id}-t {id}-d" xmlns="http://www.w3.org/2000/svg"><title id="{id}-t">{t}</title><desc id="{id}-d">{d}</desc>"#,
        t = esc(title),
        d = esc(rows
            .iter()
            .map(|(k, v)| format!("{k}: {}", label(*v)))
            .collect::<Vec<_>>()
            .join("; ")),
    );
    for (i, (name, value)) in rows.iter().enumerate() {
        let y = 5 + ROW * i as i64;
        let w = (value.max(&0).saturating_mul(span) / max).max(if *value > 0 { 2 } else { 0 });
        let short: String = name.chars().take(26).collect();
        out.push_str(&format!(
            r##"<text x="{tx}" y="{ty}" text-anchor="end" font-size="14" fill="#1a1a1a">{n}</text><rect x="{LEFT}" y="{y}" width="{w}" height="{bh}" fill="#1d5e2c"></rect><text x="{vx}" y="{ty}" font-size="14" fill="#1a1a1a">{v}</text>"##,
            tx = LEFT - 8,
            ty = y + 16,
            n = esc(short),
            bh = ROW - 8,
            vx = LEFT + w + 6,
            v = esc(label(*value)),
        ));
    }
    out.push_str("</svg></figure>");
    out
}

#[cfg(test)]
mod tests {
    use super::bars;

    #[test]
    fn bars_scale_to_the_largest_value_and_escape_labels() {
        let svg = bars(
            "c",
            "Spending <by> category",
            &[
                ("fruit & veg".into(), 300),
                ("bread".into(), 150),
                ("none".into(), 0),
            ],
            |v| v.to_string(),
        );
        assert!(svg.contains("width=\"340\""), "{svg}");
        assert!(svg.contains("width=\"170\""), "{svg}");
        assert!(svg.contains("width=\"0\""), "{svg}");
        assert!(svg.contains("fruit &amp; veg"));
        assert!(svg.contains("Spending &lt;by&gt; category"));
        assert!(bars("e", "empty", &[], |v| v.to_string()).is_empty());
    }
}
