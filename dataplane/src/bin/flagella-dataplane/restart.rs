//! What outlives one dataplane process on purpose, so that a restart (an upgrade, a crash)
//! keeps the pods' flows and never lets a pod's frame reach the node's kernel unpoliced:
//! the interfaces' XDP programs, pinned in bpffs (`bpf_pin_dir`), which drop what the dataplane
//! owns while no socket serves it; and the workers' connection tracking, in files under
//! `state_dir` (`dataplane::tables::conntrack`'s state file). `--uninstall` removes both.

use std::path::{Path, PathBuf};

use dataplane::daemon::config::{DaemonConfig, DEFAULT_BPF_PIN_DIR};
use dataplane::daemon::preflight;
use dataplane::tables::conntrack::state_file::worker_state_file;
use dataplane::tables::conntrack::Restored;
use xdp_redirect::{
    check_bpffs, pinned_interfaces, AttachMode, LinkOrigin, MapsOrigin, PinDir, RedirectConfig,
    XdpAttachment, XdpError, XdpProgram,
};

use super::log;

/// The directory programs are pinned in, or `None` (not pinned). The default directory when
/// it is not on bpffs (a test under `ip netns exec`, a node without bpffs mounted) means off,
/// with a warning; a directory the operator configured must be on bpffs.
pub fn pin_root(cfg: &DaemonConfig) -> Result<Option<PathBuf>, String> {
    if cfg.bpf_pin_dir == "off" {
        return Ok(None);
    }
    let root = PathBuf::from(&cfg.bpf_pin_dir);
    match check_bpffs(&root) {
        Ok(()) => Ok(Some(root)),
        Err(err) if cfg.bpf_pin_dir == DEFAULT_BPF_PIN_DIR => {
            log(&format!(
                "WARNING: XDP programs are not pinned ({err}); a restart of this dataplane lets \
                 the pods' frames reach the node's kernel until it is back, and loses its \
                 connection tracking"
            ));
            Ok(None)
        }
        Err(err) => Err(format!("bpf_pin_dir: {err}")),
    }
}

/// Where a worker's connection tracking is kept across restarts (programs pinned only: without
/// them the interfaces are not held between two processes, so neither are their flows).
pub fn conntrack_state_file(cfg: &DaemonConfig, pinned: bool, worker: usize) -> Option<PathBuf> {
    pinned.then(|| worker_state_file(&cfg.state_dir, worker))
}

/// Says what became of worker `index`'s connection tracking.
pub fn log_conntrack(index: usize, restored: Option<&Restored>) {
    match restored {
        None => {}
        Some(Restored::Created) => log(&format!("worker-{index}: conntrack state created")),
        Some(Restored::Kept { entries }) => log(&format!(
            "worker-{index}: conntrack kept from the previous process ({entries} entries)"
        )),
        Some(Restored::Rebuilt { reason }) => log(&format!(
            "worker-{index}: the conntrack state file could not be taken over ({reason}): \
             rebuilt empty; established flows are re-learnt as new ones where policy allows"
        )),
    }
}

/// Loads `ifname`'s program and attaches it, pinned under `root` when given: a program the
/// previous process pinned is taken over in place (one atomic link update: no frame meets an
/// interface without a program). A pinned program drops owned frames while no socket serves
/// their queue.
pub fn load_and_attach(
    ifname: &str,
    ifindex: u32,
    redirect: RedirectConfig,
    mode: AttachMode,
    root: Option<&Path>,
) -> Result<(XdpProgram, XdpAttachment), XdpError> {
    let Some(root) = root else {
        let program = XdpProgram::load(redirect)?;
        let attachment = program.attach(ifindex, mode)?;
        return Ok((program, attachment));
    };
    let pins = PinDir::new(root, ifname)?;
    let redirect = RedirectConfig {
        drop_without_socket: true,
        ..redirect
    };
    let (program, maps) = XdpProgram::load_pinned(redirect, &pins)?;
    if let MapsOrigin::Rebuilt { reason } = &maps {
        log(&format!(
            "{ifname}: the pinned XDP maps in {} have another layout ({reason}): rebuilt from \
             scratch (the uplink's owned destinations are re-learnt from the tables)",
            pins.path().display()
        ));
    }
    let (attachment, link) = program.attach_pinned(ifindex, mode, &pins)?;
    if link == LinkOrigin::Updated {
        log(&format!(
            "{ifname}: took over the pinned XDP program of the previous process (maps {})",
            if maps == MapsOrigin::Reused {
                "kept"
            } else {
                "new"
            }
        ));
    }
    Ok((program, attachment))
}

/// Removes `ifname`'s pins (its pod is gone, or the operator uninstalls): the program leaves
/// the interface.
pub fn unpin(root: Option<&Path>, ifname: &str) -> Result<(), XdpError> {
    let Some(root) = root else { return Ok(()) };
    PinDir::new(root, ifname)?.remove()?;
    Ok(())
}

/// Removes the pins of interfaces that no longer exist (a pod deleted while no dataplane ran:
/// the agent will never send its `interface.remove`). Pins of existing interfaces stay: their
/// programs keep dropping until this process serves them (at start, or the agent's
/// `interface.add`).
pub fn prune_gone(root: Option<&Path>) {
    let Some(root) = root else { return };
    let names = match pinned_interfaces(root) {
        Ok(names) => names,
        Err(err) => return log(&format!("WARNING: {err}")),
    };
    for name in names {
        if preflight::ifindex(&name).is_ok() {
            continue;
        }
        match unpin(Some(root), &name) {
            Ok(()) => log(&format!("{name}: gone; its pinned XDP program removed")),
            Err(err) => log(&format!("WARNING: {name}: {err}")),
        }
    }
}

/// `--uninstall`: every pinned program detached and unpinned, every state file removed.
pub fn uninstall(cfg: &DaemonConfig) -> Result<(), String> {
    refuse_if_running(&cfg.state_dir)?;
    if cfg.bpf_pin_dir != "off" {
        let root = PathBuf::from(&cfg.bpf_pin_dir);
        let names = pinned_interfaces(&root).map_err(|e| e.to_string())?;
        for name in &names {
            unpin(Some(&root), name).map_err(|e| format!("{name}: {e}"))?;
            log(&format!("{name}: XDP program detached and unpinned"));
        }
        if root.exists() {
            std::fs::remove_dir(&root).map_err(|e| {
                format!(
                    "removing {}: {e}: remove what is left in it by hand",
                    root.display()
                )
            })?;
        }
    }
    remove_state_files(&cfg.state_dir)?;
    log("uninstalled: nothing of the dataplane is left on the interfaces");
    Ok(())
}

/// A running dataplane holds its state files locked: uninstalling under it would take its
/// programs away while it serves them.
fn refuse_if_running(dir: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    for path in state_files(dir) {
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        // SAFETY: plain syscall on an fd `file` keeps open; the lock goes with `file`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(format!(
                "a flagella-dataplane is running on {} (it holds {}): stop it first \
                 (systemctl stop flagella-dataplane), then uninstall",
                dir.display(),
                path.display()
            ));
        }
    }
    Ok(())
}

/// The conntrack state files in `dir` (none when it does not exist).
fn state_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("conntrack-") && n.ends_with(".state"))
        })
        .collect()
}

fn remove_state_files(dir: &Path) -> Result<(), String> {
    for path in state_files(dir) {
        std::fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
        log(&format!("removed {}", path.display()));
    }
    Ok(())
}
