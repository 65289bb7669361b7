//! Compiles `src/bpf/xdp_redirect.bpf.c` with clang (through libbpf-cargo's `SkeletonBuilder`)
//! into `$OUT_DIR/xdp_redirect.bpf.o` (embedded by the crate), and generates the Rust skeleton
//! `$OUT_DIR/xdp_redirect.skel.rs` next to it. The crate's tests need only the skeleton's
//! `types` module (the C structs as BTF describes them, to check the hand-written twins), which
//! is copied alone to `$OUT_DIR/xdp_redirect_types.rs`: the rest of the skeleton has
//! undocumented `unsafe` blocks that the workspace lints reject, and the loader does not use it.
//!
//! Needs clang on PATH (Debian: `clang`). The libbpf headers (`bpf/bpf_helpers.h`, ...) come from
//! the copy vendored in libbpf-sys, which libbpf-cargo extracts for the compiler, so
//! `libbpf-dev` is not needed. `<linux/bpf.h>` needs `<asm/types.h>`, which Debian keeps under
//! the multiarch include directory, hence the extra `-I`.

use std::env;
use std::fs;
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
    let skeleton = out_dir.join("xdp_redirect.skel.rs");
    if let Err(err) = builder.build_and_generate(&skeleton) {
        // `{:#}` prints anyhow's whole chain, including clang's stderr.
        panic!(
            "building the XDP program failed: {err:#}\n\
             hint: install clang (Debian: scripts/install-deps.sh clang llvm libelf-dev \
             zlib1g-dev pkg-config m4)"
        );
    }

    let generated = fs::read_to_string(&skeleton).expect("read the generated skeleton");
    let types = types_module(&generated).expect(
        "the generated skeleton has no `pub mod types { ... }` block: libbpf-cargo changed its \
         output, update types_module() in build.rs",
    );
    fs::write(out_dir.join("xdp_redirect_types.rs"), types).expect("write xdp_redirect_types.rs");
}

/// The `pub mod types { ... }` block of a skeleton. The skeleton is rustfmt-formatted, so the
/// block opens and closes at the same 4-space indentation.
fn types_module(skeleton: &str) -> Option<&str> {
    const OPEN: &str = "    pub mod types {\n";
    const CLOSE: &str = "\n    }\n";
    let start = skeleton.find(OPEN)?;
    let len = skeleton[start..].find(CLOSE)? + CLOSE.len();
    Some(&skeleton[start..start + len])
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
