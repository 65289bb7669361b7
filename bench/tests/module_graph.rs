//! The bench crate's modules depend on each other in one direction: the graph of its top-level
//! modules, read from `src/` (`testkit::modules`: `crate::` paths of non-test code), has no cycle.

use std::path::Path;

use testkit::modules::{assert_acyclic, top_level_graph};

#[test]
fn bench_modules_have_no_cycle() {
    let g = top_level_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    // The reader sees the edges it must (else an empty graph would pass).
    assert!(g["xnode"].contains("topo"), "{g:?}");
    assert_acyclic("bench crate's modules", &g);
}
