//! Pod interfaces added and removed while the dataplane runs (`interface.add` /
//! `interface.remove` on the control socket, which the agent sends for its node's endpoints).
//!
//! Runs on the control thread. Adding: the interface's own XDP program (a pod's: all IP and
//! ARP to the dataplane) is loaded and attached; an AF_XDP socket is opened on the first
//! worker's UMEM ([`PortOpener`]) and registered in the program's XSKMAP; the socket goes to
//! the running worker through its queue ([`PortChanges`]), which starts serving it between two
//! passes: no lock on the packet path, no restart. Removing does the reverse: the program is
//! detached (the kernel stops redirecting), then the worker drops the socket and takes back its
//! frames. Interfaces of the configuration are never removed here.

use std::collections::HashMap;
use std::path::PathBuf;

use dataplane::daemon::preflight;
use dataplane::io::{PortChange, PortChanges, PortOpener, PortSpec};
use xdp_redirect::{AttachMode, RedirectConfig, XdpAttachment, XdpProgram};

/// One interface added at run time.
struct Added {
    ifindex: u32,
    /// Kept alive with the attachment (its maps hold the socket).
    _program: XdpProgram,
    attachment: XdpAttachment,
}

/// The daemon's [`dataplane::api::Interfaces`].
pub struct HotInterfaces {
    mode: AttachMode,
    redirect: RedirectConfig,
    opener: PortOpener,
    changes: PortChanges,
    /// Served since start: `add` says so, `remove` leaves them.
    configured: Vec<String>,
    added: HashMap<String, Added>,
    capacity: u32,
    /// Where programs are pinned (they outlive the process), if they are.
    pins: Option<PathBuf>,
}

impl HotInterfaces {
    pub fn new(
        mode: AttachMode,
        redirect: RedirectConfig,
        opener: PortOpener,
        changes: PortChanges,
        configured: Vec<String>,
        capacity: u32,
        pins: Option<PathBuf>,
    ) -> HotInterfaces {
        HotInterfaces {
            mode,
            redirect,
            opener,
            changes,
            configured,
            added: HashMap::new(),
            capacity,
            pins,
        }
    }

    fn attach(&self, ifname: &str) -> Result<Added, String> {
        let ifindex = preflight::ifindex(ifname).map_err(|e| e.to_string())?;
        let (program, attachment) = super::restart::load_and_attach(
            ifname,
            ifindex,
            self.redirect,
            self.mode,
            self.pins.as_deref(),
        )
        .map_err(|e| format!("{ifname}: loading and attaching XDP failed: {e}"))?;
        let port = self
            .opener
            .open(&PortSpec::new(ifname, 0))
            .map_err(|e| format!("{ifname}: {e}"))?;
        program
            .register_socket(0, port.info().fd)
            .map_err(|e| format!("{ifname}: registering the AF_XDP socket failed: {e}"))?;
        self.changes
            .send(PortChange::Add(Box::new(port)))
            .map_err(|_| "the first worker has stopped: restart flagella-dataplane".to_string())?;
        Ok(Added {
            ifindex,
            _program: program,
            attachment,
        })
    }

    fn detach(&mut self, ifname: &str) -> bool {
        let Some(added) = self.added.remove(ifname) else {
            return false;
        };
        // The interface may be gone already (its pod deleted): the kernel detached then.
        let _ = added.attachment.detach();
        // Its pod is gone: nothing of it may stay pinned.
        if let Err(err) = super::restart::unpin(self.pins.as_deref(), ifname) {
            eprintln!("flagella-dataplane: {ifname}: {err}");
        }
        let _ = self.changes.send(PortChange::Remove {
            ifindex: added.ifindex,
        });
        true
    }
}

impl dataplane::api::Interfaces for HotInterfaces {
    fn add(&mut self, ifname: &str) -> Result<bool, String> {
        if self.configured.iter().any(|c| c == ifname) {
            return Ok(false);
        }
        let current = preflight::ifindex(ifname).ok();
        match self.added.get(ifname) {
            Some(a) if Some(a.ifindex) == current => return Ok(false),
            // The same name on a new interface (a pod re-created): serve the new one.
            Some(_) => {
                self.detach(ifname);
            }
            None => {}
        }
        if self.added.len() >= self.capacity as usize {
            return Err(format!(
                "{} interfaces were added at run time already, the most this dataplane took \
                 room for: raise --hot-interfaces (hot_interfaces) and restart it",
                self.capacity
            ));
        }
        let added = self.attach(ifname)?;
        eprintln!(
            "flagella-dataplane: {ifname}: added at run time (ifindex {}, XDP {})",
            added.ifindex, self.mode
        );
        self.added.insert(ifname.to_string(), added);
        Ok(true)
    }

    fn remove(&mut self, ifname: &str) -> Result<bool, String> {
        let removed = self.detach(ifname);
        if removed {
            eprintln!("flagella-dataplane: {ifname}: removed");
        }
        Ok(removed)
    }
}
