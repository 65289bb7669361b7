//! Aligned text tables, as `cilium endpoint list` and `kubectl get` print them: an upper-case
//! header, columns separated by three spaces and padded to their widest cell (the last column
//! is not padded, so lines carry no trailing blanks).
//!
//! Widths count characters, not bytes, so non-ASCII labels stay aligned in a terminal that
//! shows one column per character.

use std::fmt::Write;

/// A table being built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

const GAP: &str = "   ";

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are kept (and widen the table).
    pub fn row(&mut self, cells: Vec<String>) -> &mut Table {
        self.rows.push(cells);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row after the header, each ending in `\n`.
    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for line in std::iter::once(&self.header).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let mut text = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = line.get(i).map_or("", String::as_str);
                if i > 0 {
                    text.push_str(GAP);
                }
                let _ = write!(text, "{cell:<w$}");
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_lines_have_no_trailing_blanks() {
        let mut t = Table::new(&["NAME", "IP", "LABELS"]);
        t.row(vec!["a".into(), "10.0.0.1".into(), "app=web".into()]);
        t.row(vec!["long-name".into(), "10.0.0.22".into(), String::new()]);
        t.row(vec!["é".into()]);
        assert_eq!(
            t.render(),
            "NAME        IP          LABELS\n\
             a           10.0.0.1    app=web\n\
             long-name   10.0.0.22\n\
             é\n"
        );
    }

    #[test]
    fn empty_table_prints_its_header() {
        let t = Table::new(&["ID", "LABELS"]);
        assert!(t.is_empty());
        assert_eq!(t.render(), "ID   LABELS\n");
    }
}
