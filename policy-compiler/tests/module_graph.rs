//! The modules of policy-compiler depend on each other in one direction: this test reads every
//! `src/*.rs`, collects the `crate::<module>` paths its non-test code names (`use` lines,
//! grouped `use crate::{a, b}` and inline paths alike), and fails on a cycle, naming it.
//!
//! What counts: code before the file's `#[cfg(test)]` (a `mod tests` is a module of its own that
//! nothing imports, so its imports cannot close a cycle); comments are ignored; `lib.rs` only
//! declares the modules.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Non-test code of a file with comments removed.
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim() == "#[cfg(test)]" {
            break;
        }
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first path segments after every `crate::` in `code`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        // `crate::` inside a longer identifier (`my_crate::`) is not ours.
        if code[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::b, c, d::{e, f}}`: the first segment of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        out.insert(ident(&group[j..]).to_string());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest).to_string());
        }
    }
    out
}

fn module_graph(src: &Path) -> Graph {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if name != "lib" {
                files.insert(name, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(name, text)| {
            let deps = crate_paths(&code(text))
                .into_iter()
                .filter(|d| d != name && modules.contains(d))
                .collect();
            (name.clone(), deps)
        })
        .collect()
}

/// A cycle of `g` (its modules in order, the first repeated at the end), if there is one.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        m: &str,
        state: &mut BTreeMap<String, bool>, // false: on the stack; true: done
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(true) => return None,
            Some(false) => {
                let start = stack.iter().position(|s| s == m).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(m.to_string());
                return Some(cycle);
            }
            None => {}
        }
        state.insert(m.to_string(), false);
        stack.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, d, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(m.to_string(), true);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        let mut stack = Vec::new();
        if let Some(c) = visit(g, m, &mut state, &mut stack) {
            return Some(c);
        }
    }
    None
}

#[test]
fn policy_compiler_modules_have_no_cycle() {
    let g = module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    // The reader sees the edges it must (else an empty graph would pass).
    assert!(
        g["parse"].contains("k8s") && g["parse"].contains("cilium"),
        "{g:?}"
    );
    assert!(g["trace"].contains("compile"), "{g:?}");
    if let Some(cycle) = find_cycle(&g) {
        panic!(
            "import cycle among policy-compiler's modules: {}",
            cycle.join(" -> ")
        );
    }
    // The shape the layering promises: the two readers share policy_fields, not each other.
    for reader in ["k8s", "cilium"] {
        for forbidden in ["parse", "k8s", "cilium"] {
            assert!(
                !g[reader].contains(forbidden),
                "{reader} imports {forbidden}; shared parsing belongs in policy_fields"
            );
        }
    }
}

#[test]
fn the_reader_and_the_cycle_finder_work() {
    let text = "use crate::a::X;\nuse crate::{b, c::{D, E}, d};\nfn f() { crate::e::g(); }\n\
                // crate::f in a comment\n#[cfg(test)]\nmod tests { use crate::h; }\n";
    let found: Vec<String> = crate_paths(&code(text)).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d", "e"]);
    let g: Graph = [("x", "y"), ("y", "z"), ("z", "x"), ("w", "x")]
        .into_iter()
        .fold(Graph::new(), |mut g, (a, b)| {
            g.entry(a.into()).or_default().insert(b.into());
            g
        });
    let c = find_cycle(&g).unwrap();
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4, "{c:?}");
    let mut acyclic = g.clone();
    acyclic.get_mut("z").unwrap().clear();
    assert_eq!(find_cycle(&acyclic), None);
}
