//! How meshctl prints things: aligned tables for people, YAML and JSON for
//! programs (and for `meshctl apply -f` to read back).

use std::io::Write;

use anyhow::Context;
use serde::Serialize;

/// The `-o` flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    #[default]
    Table,
    /// A YAML document per item, separated by `---`.
    Yaml,
    /// Pretty-printed JSON.
    Json,
}

/// Columns padded to their widest cell, kubectl style (three spaces apart,
/// the last column unpadded so lines carry no trailing blanks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    lines: Vec<Line>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Row(Vec<String>),
    /// Printed as is, between rows, without widening any column.
    Note(String),
}

impl Table {
    /// A table with these column headers.
    pub fn new<const N: usize>(headers: [&str; N]) -> Self {
        Self {
            lines: vec![Line::Row(headers.iter().map(|h| (*h).to_owned()).collect())],
        }
    }

    /// Adds a row; cells beyond the headers are kept, missing ones are blank.
    pub fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        self.lines.push(Line::Row(cells.into_iter().collect()));
    }

    /// Adds a line of free text that does not take part in the alignment.
    pub fn note(&mut self, text: impl Into<String>) {
        self.lines.push(Line::Note(text.into()));
    }

    /// True when only the headers are there.
    pub fn is_empty(&self) -> bool {
        self.lines.len() == 1
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let rows = || {
            self.lines.iter().filter_map(|line| match line {
                Line::Row(cells) => Some(cells),
                Line::Note(_) => None,
            })
        };
        let columns = rows().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in rows() {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in &self.lines {
            let row = match line {
                Line::Row(cells) => cells,
                Line::Note(text) => {
                    out.push_str(text);
                    out.push('\n');
                    continue;
                }
            };
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                if i > 0 {
                    line.push_str("   ");
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(
                    ' ',
                    width.saturating_sub(cell.chars().count()),
                ));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A multi-document YAML stream, `---` between documents: what
/// `meshctl apply -f` accepts back.
pub fn yaml_stream<T: Serialize>(items: &[T]) -> anyhow::Result<String> {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(item).context("cannot render YAML")?);
    }
    Ok(out)
}

/// Pretty JSON with a final newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<String> {
    let mut out = serde_json::to_string_pretty(value).context("cannot render JSON")?;
    out.push('\n');
    Ok(out)
}

/// Writes to stdout. A closed pipe (`meshctl get routes | head -1`) is not
/// an error: the reader has what it wanted.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_without_trailing_blanks() {
        let mut t = Table::new(["NAME", "DESTINATION", "REVISION"]);
        t.row(["inventory".into(), "inv".into(), "7".into()]);
        t.row(["a".into(), "catalog".into(), "12".into()]);
        assert_eq!(
            t.render(),
            "NAME        DESTINATION   REVISION\n\
             inventory   inv           7\n\
             a           catalog       12\n"
        );
    }

    #[test]
    fn table_blank_last_cell_leaves_no_trailing_blanks() {
        let mut t = Table::new(["A", "NACK"]);
        t.row(["x".into(), String::new()]);
        t.note("a long note that widens nothing");
        assert_eq!(t.render(), "A   NACK\nx\na long note that widens nothing\n");
        assert!(!t.is_empty());
        assert!(Table::new(["A"]).is_empty());
    }

    #[test]
    fn yaml_stream_separates_documents() {
        let text = yaml_stream(&[1, 2]).unwrap();
        assert_eq!(text, "1\n---\n2\n");
        assert_eq!(yaml_stream::<u8>(&[]).unwrap(), "");
    }
}
