//! What the root-only bench tests (`ingress`, `policy`, `xnode`, `xdp_generator`) check before
//! they run: root, AF_XDP sockets, and a built flagella-dataplane. A test file says
//! `mod common;`; Cargo does not build this directory as a test of its own.

#![allow(dead_code)] // each test file uses a subset

use std::path::PathBuf;

/// Root and AF_XDP sockets, or why not.
pub fn root_with_afxdp() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    // SAFETY: plain syscall with constant arguments; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "no AF_XDP sockets here ({})",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` was just returned by socket() and is not used again.
    unsafe { libc::close(fd) };
    Ok(())
}

/// The dataplane binary: `FLAGELLA_DATAPLANE_BIN`, else next to this test's profile directory
/// (target/<profile>/deps/<test>-<hash> -> target/<profile>/flagella-dataplane), or what to
/// build.
pub fn dataplane_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("FLAGELLA_DATAPLANE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let next_to_tests = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("flagella-dataplane")));
    next_to_tests.filter(|bin| bin.exists()).ok_or_else(|| {
        "flagella-dataplane is not built next to this test: run `cargo build -p dataplane \
         --features afxdp --bin flagella-dataplane` (or set FLAGELLA_DATAPLANE_BIN)"
            .to_string()
    })
}
