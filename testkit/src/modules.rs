//! The module graph of a crate, read from its source: the tests that keep dependencies going
//! one way (`dataplane/tests/layering.rs`, `*/tests/module_graph.rs`) all read it here.
//!
//! What counts as a dependency: a `crate::x` (or, for [`first_segments`] with another prefix,
//! `super::x`) path in a file's code before its unit tests (the first `#[cfg(test)]` line: by
//! convention the test module closes the file, and tests may reach anywhere without being a
//! dependency of the code), with comments removed. Grouped imports (`crate::{a::b, c}`) count
//! each item.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Module -> the modules it names.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// `text`'s code up to its unit tests, with `//` comments (doc comments included) removed.
pub fn non_test_code(text: &str) -> String {
    text.lines()
        .take_while(|line| line.trim() != "#[cfg(test)]")
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first path segment of every path that follows `prefix` in `code`: `prefix::a::b` gives
/// `a`; `prefix::{a::b, c}` gives `a` and `c`. A `prefix` inside a longer path (`xcrate::`,
/// `a::super::`) is not a path from here.
pub fn first_segments(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| is_ident(c) || c == ':') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            for item in split_top_level(&group[..end]) {
                let name: String = item.trim().chars().take_while(|&c| is_ident(c)).collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Splits `s` at the commas outside braces.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Every `.rs` file under `dir`, as paths relative to `dir`.
pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                if let Ok(rel) = path.strip_prefix(root) {
                    out.push(rel.to_path_buf());
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The graph of a crate's top-level modules (`src/x.rs` or `src/x/...`): each names the other
/// top-level modules any of its files' code names through `crate::`. `lib.rs`, `main.rs` and
/// `bin/` (the top, which may name anything) are left out.
pub fn top_level_graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    for rel in rust_files(src) {
        let Some(first) = rel.components().next() else {
            continue;
        };
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if matches!(module.as_str(), "lib" | "main" | "bin") {
            continue;
        }
        let Ok(text) = fs::read_to_string(src.join(&rel)) else {
            continue;
        };
        let named = first_segments(&non_test_code(&text), "crate::");
        graph.entry(module).or_default().extend(named);
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for (module, named) in graph.iter_mut() {
        named.retain(|n| n != module && modules.contains(n));
    }
    graph
}

/// A cycle of `graph`: its modules in order, the first repeated at the end.
pub fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// Panics, naming the cycle, if `graph` (of `what`) has one.
pub fn assert_acyclic(what: &str, graph: &Graph) {
    if let Some(cycle) = find_cycle(graph) {
        panic!("import cycle among {what}: {}", cycle.join(" -> "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scanner_reads_paths_groups_and_skips_comments_and_tests() {
        let text = "use crate::a::B;\nuse crate::{c::D, e, f::{g, h}};\nlet x = crate::i::j();\n\
                    use super::{k, l::M};\nfoo::super::n;\nmy_crate::z;\n// crate::y in a comment\n\
                    #[cfg(test)]\nmod tests { use crate::t; }\n";
        let code = non_test_code(text);
        let crate_paths: Vec<_> = first_segments(&code, "crate::").into_iter().collect();
        assert_eq!(crate_paths, ["a", "c", "e", "f", "i"]);
        let super_paths: Vec<_> = first_segments(&code, "super::").into_iter().collect();
        assert_eq!(super_paths, ["k", "l"]);
    }

    #[test]
    fn the_cycle_finder_names_the_cycle() {
        let g: Graph = [("x", "y"), ("y", "z"), ("z", "x"), ("w", "x")]
            .into_iter()
            .fold(Graph::new(), |mut g, (a, b)| {
                g.entry(a.into()).or_default().insert(b.into());
                g
            });
        let c = find_cycle(&g).expect("a cycle");
        assert_eq!(c.first(), c.last());
        assert_eq!(c.len(), 4, "{c:?}");
        let mut acyclic = g.clone();
        if let Some(z) = acyclic.get_mut("z") {
            z.clear();
        }
        assert_eq!(find_cycle(&acyclic), None);
    }
}
