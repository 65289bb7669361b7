//! Test-only helpers. [`modules`]: a crate's module graph read from its source, for the tests
//! that keep dependencies going one way. The rest, for the integration tests that build network
//! namespaces (as root): the
//! dataplane's (`dataplane/tests/support`), the control crate's (`control/tests/common/net.rs`)
//! and the XDP loader's (`xdp-redirect/tests/attach.rs`). A dev-dependency only: nothing here
//! is compiled into a library or a binary.
//!
//! Contract: every namespace a test creates goes through a [`NetNsGuard`], which deletes them
//! all (newest first) when dropped, pass or fail, so veth pairs and the processes' network go
//! with them; a namespace it cannot delete is reported on stderr with the command that removes
//! it. Nothing here touches the root namespace's interfaces. Helpers that must succeed panic
//! (these are tests: a broken topology should stop them loudly); [`NetNsGuard::add`] and
//! [`run_ip`] return the reason instead, for a caller that skips through [`skip`] (a failure
//! under CI).

pub mod bpffs;
pub mod modules;

pub use bpffs::BpffsGuard;

/// True under CI: `CI` set to anything but empty, `false` or `0` (CI systems set `CI=true`).
pub fn under_ci() -> bool {
    means_ci(std::env::var("CI").ok().as_deref())
}

fn means_ci(value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Skips a test that cannot run here (no root, no network namespaces, no BPF or AF_XDP, no
/// etcd), saying why: prints `SKIPPED: <reason>`. Under CI ([`under_ci`]) it panics with the
/// reason instead, so a broken environment cannot turn the suite green by skipping.
pub fn skip(reason: &str) {
    if under_ci() {
        panic!("CI: this test must run here, but it would be skipped: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// A new private directory under the system's temporary directory, named `prefix` and random
/// characters (`mkdtemp`: mode 0700, a name no other user can predict and plant first); the
/// caller removes it (the tests remove theirs in a `Drop`). Panics when it cannot be created.
pub fn private_dir(prefix: &str) -> std::path::PathBuf {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}: check $TMPDIR"))
        .keep()
}

use std::fs::File;
use std::process::Command;
use std::thread;

use nix::sched::{setns, CloneFlags};

/// The network namespaces of one test run; dropping the guard deletes them, newest first.
#[derive(Debug, Default)]
pub struct NetNsGuard {
    names: Vec<String>,
}

impl NetNsGuard {
    /// Creates namespace `name`; it is deleted when the guard drops.
    pub fn add(&mut self, name: &str) -> Result<(), String> {
        run_ip(&["netns", "add", name])?;
        self.names.push(name.to_string());
        Ok(())
    }

    /// The namespaces created so far, oldest first.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            if run_ip(&["netns", "del", name]).is_err() {
                eprintln!("WARNING: could not delete namespace {name}: run `ip netns del {name}`");
            }
        }
    }
}

/// Runs `ip args..`; its stdout, or an error naming the command and what `ip` said.
pub fn run_ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip -n ns args..`, which must succeed; its stdout.
pub fn ip_in(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run_ip(&all).unwrap_or_else(|e| panic!("{e}"))
}

/// Enters network namespace `ns` on the calling thread (only that thread).
fn enter(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("open namespace {path}: {e}"));
    setns(file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
}

/// Runs `f` on a new thread that entered network namespace `ns`.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let ns = ns.to_string();
    thread::spawn(move || {
        enter(&ns);
        f()
    })
}

/// Runs `body` on a scoped thread that entered network namespace `ns`, and returns its result;
/// a panic in `body` is resumed here (failing the test) after the thread is joined.
pub fn run_in<T: Send>(ns: &str, body: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(ns);
                body()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod ci_tests {
    use super::means_ci;

    #[test]
    fn ci_is_any_value_but_empty_false_or_zero() {
        assert!(means_ci(Some("true")) && means_ci(Some("1")) && means_ci(Some("yes")));
        assert!(!means_ci(None) && !means_ci(Some("")) && !means_ci(Some("false")));
        assert!(!means_ci(Some("0")));
    }

    /// Under CI a skip is a failure that says why (run in a child process with `CI=true`).
    #[test]
    fn a_skip_under_ci_fails_and_says_why() {
        if std::env::var_os("TESTKIT_SKIP_CHILD").is_some() {
            super::skip("no etcd here");
            return;
        }
        let exe = std::env::current_exe().expect("the test binary");
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "ci_tests::a_skip_under_ci_fails_and_says_why",
                "--nocapture",
            ])
            .env("TESTKIT_SKIP_CHILD", "1")
            .env("CI", "true")
            .output()
            .expect("run the test binary");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(text.contains("would be skipped: no etcd here"), "{text}");
        let out = std::process::Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "--exact",
                "ci_tests::a_skip_under_ci_fails_and_says_why",
                "--nocapture",
            ])
            .env("TESTKIT_SKIP_CHILD", "1")
            .env_remove("CI")
            .output()
            .expect("run the test binary");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("SKIPPED: no etcd here"), "{text}");
    }
}
