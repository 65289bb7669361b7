//! The dataplane's dependencies go one way, checked from the source: every `crate::` path in
//! a module's code (comments aside) names a module of a lower layer, or its own.
//!
//! ```text
//! types <- wire, frame <- tables (with TablesHandle), testutil <- pipeline
//!       <- io, api, nexthop (side by side: none names another) <- daemon <- the binary
//! ```
//!
//! Inside a directory, the files' `super::` / `crate::<dir>::` references form no cycle
//! (`mod.rs`, the parent, is left out: its children may use what it defines). And the pipeline's
//! stages never name each other: they communicate only through `PacketMeta`, and what several
//! stages need lives in helper modules.

#![allow(clippy::unwrap_used)] // Tests: an unreadable source tree should stop the test loudly.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Layer of each top-level module: a module may name only modules of a lower layer.
const LAYERS: &[(&str, u8)] = &[
    ("types", 0),
    ("wire", 1),
    ("frame", 1),
    ("tables", 2),
    ("testutil", 2),
    ("pipeline", 3),
    ("io", 4),
    ("api", 4),
    ("nexthop", 4),
    ("daemon", 5),
];

/// The pipeline's stages: one file each, none naming another.
const STAGES: &[&str] = &[
    "parse",
    "decap",
    "identity",
    "service",
    "conntrack",
    "policy",
    "route",
];

/// Directories whose files must not form an import cycle.
const ACYCLIC_DIRS: &[&str] = &[
    "tables", "wire", "pipeline", "io", "api", "daemon", "nexthop",
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, as paths relative to `src/`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.strip_prefix(src_dir()).unwrap().to_path_buf());
        }
    }
}

/// The file's code with `//` comments (doc comments included) removed, up to its unit tests
/// (the first `#[cfg(test)]` line: by convention the test module closes the file): tests may
/// reach anywhere, they are not a dependency of the code.
fn code(path: &Path) -> String {
    fs::read_to_string(src_dir().join(path))
        .unwrap()
        .lines()
        .take_while(|line| line.trim() != "#[cfg(test)]")
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// True for a file its parent declares under `#[cfg(test)]` (a test-only helper module).
fn is_test_only(path: &Path) -> bool {
    let (Some(parent), Some(stem)) = (path.parent(), path.file_stem()) else {
        return false;
    };
    let Ok(parent_mod) = fs::read_to_string(src_dir().join(parent).join("mod.rs")) else {
        return false;
    };
    let lines: Vec<&str> = parent_mod.lines().map(str::trim).collect();
    let decl = format!("mod {};", stem.to_string_lossy());
    lines
        .windows(2)
        .any(|w| w[0] == "#[cfg(test)]" && w[1].ends_with(&decl))
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first path segment of every path that follows `prefix` in `code`: `prefix::a::b` gives
/// `a`; `prefix::{a::b, c}` gives `a` and `c`.
fn first_segments(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| is_ident(c) || c == ':') {
            continue; // `xcrate::`, or `a::super::` (not a path from here).
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

/// `(top-level module, file stem)` of a file: `pipeline/parse.rs` -> `("pipeline", "parse")`,
/// `types.rs` -> `("types", "types")`; `None` for `lib.rs` and the binaries (the top).
fn module_of(path: &Path) -> Option<(String, String)> {
    let parts: Vec<String> = path
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    match parts.as_slice() {
        [file] if file == "lib" => None,
        [file] => Some((file.clone(), file.clone())),
        [dir, ..] if dir == "bin" => None,
        [dir, .., file] => Some((dir.clone(), file.clone())),
        [] => None,
    }
}

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|&(_, l)| l)
}

#[test]
fn every_module_names_only_lower_layers() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    assert!(files.len() > 20, "found only {files:?}");
    let mut wrong = Vec::new();
    for path in &files {
        let Some((module, _)) = module_of(path) else {
            continue;
        };
        let Some(own) = layer(&module) else {
            wrong.push(format!(
                "{}: module `{module}` has no layer in LAYERS",
                path.display()
            ));
            continue;
        };
        for used in first_segments(&code(path), "crate::") {
            // `crate::MacAddr` and the like: the root's re-exports, all of `types` (lib.rs).
            let used = if used.starts_with(char::is_uppercase) {
                "types".to_string()
            } else {
                used
            };
            if used == module {
                continue;
            }
            match layer(&used) {
                Some(l) if l < own => {}
                Some(l) => wrong.push(format!(
                    "{}: `{module}` (layer {own}) names `crate::{used}` (layer {l})",
                    path.display()
                )),
                None => wrong.push(format!(
                    "{}: names `crate::{used}`, which has no layer in LAYERS",
                    path.display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

/// The sibling files each file of `dir` names (`super::x`, `crate::dir::x`).
fn sibling_graph(dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src_dir().join(dir), &mut files);
    let stems: BTreeSet<String> = files
        .iter()
        .filter_map(|p| module_of(p).map(|(_, stem)| stem))
        .filter(|s| s != "mod")
        .collect();
    let mut graph = BTreeMap::new();
    for path in &files {
        let Some((_, stem)) = module_of(path) else {
            continue;
        };
        if stem == "mod" || is_test_only(path) {
            continue;
        }
        let text = code(path);
        let mut named = first_segments(&text, "super::");
        named.extend(first_segments(&text, &format!("crate::{dir}::")));
        named.retain(|n| n != &stem && stems.contains(n));
        graph.insert(stem, named);
    }
    graph
}

/// A cycle in `graph`, as the path that closes it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
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

#[test]
fn no_directory_has_an_import_cycle() {
    for dir in ACYCLIC_DIRS {
        let graph = sibling_graph(dir);
        assert!(!graph.is_empty(), "{dir}: no files found");
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{dir}/: import cycle {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn no_pipeline_stage_names_another() {
    let graph = sibling_graph("pipeline");
    for stage in STAGES {
        let named = graph
            .get(*stage)
            .unwrap_or_else(|| panic!("pipeline/{stage}.rs is missing"));
        let stages: Vec<_> = named
            .iter()
            .filter(|n| STAGES.contains(&n.as_str()))
            .collect();
        assert!(
            stages.is_empty(),
            "pipeline/{stage}.rs names the stage(s) {stages:?}: stages talk only through \
             PacketMeta; move what they share into a helper module"
        );
    }
    // Nor does a helper call into a stage (that would be a stage call by another name).
    for (file, named) in &graph {
        if STAGES.contains(&file.as_str()) {
            continue;
        }
        let stages: Vec<_> = named
            .iter()
            .filter(|n| STAGES.contains(&n.as_str()))
            .collect();
        assert!(
            stages.is_empty(),
            "pipeline/{file}.rs (a helper) names the stage(s) {stages:?}"
        );
    }
}

#[test]
fn the_import_scanner_reads_paths_and_groups() {
    let code = "use crate::a::B;\nuse crate::{c::D, e, f::{g, h}};\nlet x = crate::i::j();\n\
                use super::{k, l::M};\nfoo::super::n;";
    let crate_paths: Vec<_> = first_segments(code, "crate::").into_iter().collect();
    assert_eq!(crate_paths, ["a", "c", "e", "f", "i"]);
    let super_paths: Vec<_> = first_segments(code, "super::").into_iter().collect();
    assert_eq!(super_paths, ["k", "l"]);
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".to_string(), "b".to_string(), "a".to_string()])
    );
}
