//! Attaching the redirect program to real interfaces, as root.
//!
//! Each test builds its own network namespace `fxr-<pid>-<n>` holding a veth pair, runs its
//! body on a thread that entered that namespace (so interface indexes and `ip` resolve there),
//! and removes the namespace in a guard's `Drop`, pass or fail: deleting the namespace deletes
//! the veth pair with it. Nothing is created in, or attached to, the root namespace.
//!
//! Skips, saying why, when not root, when `ip` or network namespaces are unavailable, or when
//! the kernel refuses BPF.

use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{setns, CloneFlags};
use xdp_redirect::{AttachMode, RedirectConfig, XdpError, XdpProgram};

/// The two ends of the veth pair inside each test namespace.
const VETH_A: &str = "fxra";
const VETH_B: &str = "fxrb";

/// A network namespace that exists as long as this value does.
struct NetNsGuard {
    name: String,
}

impl NetNsGuard {
    /// Creates `fxr-<pid>-<n>`, or says why it cannot (the caller skips).
    fn create() -> Result<Self, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "fxr-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let output = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|err| format!("cannot run `ip` (install iproute2): {err}"))?;
        if !output.status.success() {
            return Err(format!(
                "`ip netns add {name}` failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Self { name })
    }

    /// Runs `ip -n <ns> <args>`; panics (failing the test) if it fails.
    fn ip(&self, args: &[&str]) -> String {
        let output = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            output.status.success(),
            "ip -n {} {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Adds the veth pair, both ends up.
    fn add_veth_pair(&self) {
        self.ip(&[
            "link", "add", VETH_A, "type", "veth", "peer", "name", VETH_B,
        ]);
        self.ip(&["link", "set", VETH_A, "up"]);
        self.ip(&["link", "set", VETH_B, "up"]);
    }

    /// Runs `body` on a thread that has entered the namespace. A panic in `body` fails the
    /// test after the thread is joined; the guard still removes the namespace.
    fn run_inside<T: Send>(&self, body: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns = File::open(&path).expect("open the namespace file");
                    setns(ns, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
                    body()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The XDP state `ip link` reports for `dev`: "xdp" (native), "xdpgeneric", or "none".
    fn xdp_state(&self, dev: &str) -> &'static str {
        let out = self.ip(&["link", "show", "dev", dev]);
        let words: Vec<&str> = out.split_whitespace().collect();
        if words.contains(&"xdpgeneric") {
            "xdpgeneric"
        } else if words.contains(&"xdp") {
            "xdp"
        } else {
            assert!(!out.contains("prog/xdp"), "unexpected XDP state: {out}");
            "none"
        }
    }
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        let deleted = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status()
            .is_ok_and(|status| status.success());
        if !deleted {
            eprintln!(
                "WARNING: could not delete network namespace {}: remove it with `ip netns del {}`",
                self.name, self.name
            );
        }
    }
}

/// The namespace and a loaded program, or None after printing why the test is skipped.
fn setup() -> Option<NetNsGuard> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: attaching XDP needs root (run `sudo cargo test -p xdp-redirect`)");
        return None;
    }
    if let Err(err) = XdpProgram::load(RedirectConfig::default()) {
        match err {
            XdpError::PermissionDenied { .. } | XdpError::BpfUnavailable { .. } => {
                eprintln!("SKIPPED: BPF unavailable here: {err}");
                return None;
            }
            other => panic!("loading the XDP program failed: {other} ({other:?})"),
        }
    }
    match NetNsGuard::create() {
        Ok(ns) => Some(ns),
        Err(why) => {
            eprintln!("SKIPPED: no network namespace: {why}");
            None
        }
    }
}

fn load() -> XdpProgram {
    XdpProgram::load(RedirectConfig::default()).expect("load (it loaded in setup)")
}

fn ifindex(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).expect("interface index in the test namespace")
}

#[test]
fn native_attach_lives_exactly_as_long_as_the_attachment() {
    let Some(ns) = setup() else { return };
    ns.add_veth_pair();
    ns.run_inside(|| {
        let program = load();
        let attachment = program
            .attach(ifindex(VETH_A), AttachMode::Native)
            .expect("native XDP on veth");
        assert_eq!(attachment.mode(), AttachMode::Native);
        assert_eq!(ns.xdp_state(VETH_A), "xdp");
        assert_eq!(ns.xdp_state(VETH_B), "none", "only the interface asked for");

        // The link holds the program: dropping the loader does not detach it.
        drop(program);
        assert_eq!(ns.xdp_state(VETH_A), "xdp");

        drop(attachment);
        assert_eq!(ns.xdp_state(VETH_A), "none");
    });
}

#[test]
fn generic_mode_only_when_asked_and_explicit_detach() {
    let Some(ns) = setup() else { return };
    ns.add_veth_pair();
    ns.run_inside(|| {
        let program = load();
        let attachment = program
            .attach(ifindex(VETH_B), AttachMode::Generic)
            .expect("generic XDP on veth");
        assert!(attachment.mode().warning().is_some());
        assert_eq!(ns.xdp_state(VETH_B), "xdpgeneric");
        attachment.detach().expect("detach");
        assert_eq!(ns.xdp_state(VETH_B), "none");
    });
}

#[test]
fn a_busy_interface_is_refused_not_replaced() {
    let Some(ns) = setup() else { return };
    ns.add_veth_pair();
    ns.run_inside(|| {
        let program = load();
        let index = ifindex(VETH_A);
        let _first = program
            .attach(index, AttachMode::Native)
            .expect("first attach");
        for mode in [AttachMode::Native, AttachMode::Generic] {
            let err = program.attach(index, mode).unwrap_err();
            assert!(
                matches!(err, XdpError::InterfaceBusy { ifindex, .. } if ifindex == index),
                "{mode}: {err:?}"
            );
        }
        assert_eq!(
            ns.xdp_state(VETH_A),
            "xdp",
            "the first attachment is intact"
        );
    });
}

#[test]
fn native_mode_never_falls_back_silently() {
    let Some(ns) = setup() else { return };
    ns.run_inside(|| {
        let program = load();
        // The namespace's own loopback: its driver has no native XDP.
        let lo = ifindex("lo");
        let err = program.attach(lo, AttachMode::Native).unwrap_err();
        assert!(
            matches!(err, XdpError::NativeUnsupported { ifindex } if ifindex == lo),
            "{err:?}"
        );
        assert!(err.to_string().contains("AttachMode::Generic"), "{err}");
        assert_eq!(ns.xdp_state("lo"), "none");
    });
}

#[test]
fn a_missing_interface_is_named_as_such() {
    let Some(ns) = setup() else { return };
    ns.run_inside(|| {
        let program = load();
        // A fresh namespace holds only lo (index 1): no interface has this index.
        let err = program.attach(4242, AttachMode::Native).unwrap_err();
        assert!(
            matches!(err, XdpError::NoSuchInterface { ifindex: 4242 }),
            "{err:?}"
        );
    });
}
