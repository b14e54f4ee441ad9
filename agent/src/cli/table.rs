//! Plain-text tables: left-aligned columns separated by two spaces, no borders, so the output
//! reads well in a terminal and still splits on whitespace.

/// Renders `rows` under `headers`. Widths count characters, not bytes (arrows, µ).
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0) - cell.chars().count().min(widths[i]);
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Prefixes every line of `text` with `indent`.
pub fn indent(text: &str, indent: &str) -> String {
    text.lines().map(|l| format!("{indent}{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_by_characters() {
        let rows = vec![
            vec!["a→b".to_string(), "1".to_string()],
            vec!["long value".to_string(), "".to_string()],
        ];
        assert_eq!(
            render(&["NAME", "N"], &rows),
            "NAME        N\na→b         1\nlong value\n"
        );
        assert_eq!(indent("x\ny\n", "  "), "  x\n  y\n");
    }
}
