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

use testkit::modules::{assert_acyclic, first_segments, non_test_code, rust_files};

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

/// True for a file its parent declares under `#[cfg(test)]` (a test-only helper module).
/// Every `.rs` file under `src/<sub>` (all of `src/` for ""), as paths relative to `src/`.
fn src_files(sub: &str) -> Vec<PathBuf> {
    rust_files(&src_dir().join(sub))
        .into_iter()
        .map(|p| Path::new(sub).join(p))
        .collect()
}

/// A file's code before its unit tests, comments removed (`testkit::modules::non_test_code`).
fn code(path: &Path) -> String {
    non_test_code(&fs::read_to_string(src_dir().join(path)).unwrap())
}

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
    let files = src_files("");
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
    let files = src_files(dir);
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

#[test]
fn no_directory_has_an_import_cycle() {
    for dir in ACYCLIC_DIRS {
        let graph = sibling_graph(dir);
        assert!(!graph.is_empty(), "{dir}: no files found");
        assert_acyclic(&format!("the files of {dir}/"), &graph);
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
