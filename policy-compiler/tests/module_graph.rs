//! The modules of policy-compiler depend on each other in one direction: the module graph read
//! from `src/` (`testkit::modules`: `crate::` paths of non-test code) has no cycle, and the two
//! policy readers share `policy_fields` rather than importing each other.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use std::path::Path;

use testkit::modules::{assert_acyclic, top_level_graph};

#[test]
fn policy_compiler_modules_have_no_cycle() {
    let g = top_level_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    // The reader sees the edges it must (else an empty graph would pass).
    assert!(
        g["parse"].contains("k8s") && g["parse"].contains("cilium"),
        "{g:?}"
    );
    assert!(g["trace"].contains("compile"), "{g:?}");
    assert_acyclic("policy-compiler's modules", &g);
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
