//! Compiles `src/bpf/xdp_redirect.bpf.c` with clang (through libbpf-cargo's `SkeletonBuilder`)
//! into `$OUT_DIR/xdp_redirect.bpf.o`, and generates the Rust skeleton
//! `$OUT_DIR/xdp_redirect.skel.rs` next to it (the crate uses its `types` module, the Rust view
//! of the C structs, to check the hand-written twins).
//!
//! Needs clang on PATH (Debian: `clang`). The libbpf headers (`bpf/bpf_helpers.h`, ...) come from
//! the copy vendored in libbpf-sys, which libbpf-cargo extracts for the compiler, so
//! `libbpf-dev` is not needed. `<linux/bpf.h>` needs `<asm/types.h>`, which Debian keeps under
//! the multiarch include directory, hence the extra `-I`.

use std::env;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

const SOURCE: &str = "src/bpf/xdp_redirect.bpf.c";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    let mut builder = SkeletonBuilder::new();
    builder
        .source(SOURCE)
        .obj(out_dir.join("xdp_redirect.bpf.o"))
        .clang_args(multiarch_include_args());
    if let Err(err) = builder.build_and_generate(out_dir.join("xdp_redirect.skel.rs")) {
        // `{:#}` prints anyhow's whole chain, including clang's stderr.
        panic!(
            "building the XDP program failed: {err:#}\n\
             hint: install clang (Debian: scripts/install-deps.sh clang llvm libelf-dev \
             zlib1g-dev pkg-config m4)"
        );
    }
}

/// `-I/usr/include/<multiarch triple>` for the target, if that directory exists (Debian and
/// Ubuntu keep `asm/` there; other distributions keep it in `/usr/include`, needing nothing).
fn multiarch_include_args() -> Vec<String> {
    let var = |name: &str| env::var(name).unwrap_or_default();
    let triple = format!(
        "{}-{}-{}",
        var("CARGO_CFG_TARGET_ARCH"),
        var("CARGO_CFG_TARGET_OS"),
        var("CARGO_CFG_TARGET_ENV")
    );
    let dir = Path::new("/usr/include").join(triple);
    if dir.is_dir() {
        vec![format!("-I{}", dir.display())]
    } else {
        Vec::new()
    }
}
