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
//!
//! The programs of the interfaces added are listed in [`HotPrograms`], shared with the
//! metrics thread, so `/metrics` shows their counters as it shows the configured interfaces'.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dataplane::daemon::preflight;
use dataplane::io::{PortChange, PortChanges, PortOpener, PortSpec};
use xdp_redirect::{AttachMode, RedirectConfig, XdpAttachment, XdpProgram};

/// The programs of the interfaces added at run time, by interface name: written here (on the
/// control thread) as interfaces come and go, read at scrape time by the metrics thread.
#[derive(Clone, Default)]
pub struct HotPrograms(Arc<Mutex<Vec<NamedProgram>>>);

/// An interface's name and its program.
pub type NamedProgram = (String, Arc<XdpProgram>);

impl HotPrograms {
    /// The programs now (a copy: the lock is not held while the kernel is asked).
    pub fn snapshot(&self) -> Vec<NamedProgram> {
        self.0.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn insert(&self, ifname: &str, program: Arc<XdpProgram>) {
        if let Ok(mut programs) = self.0.lock() {
            programs.retain(|(name, _)| name != ifname);
            programs.push((ifname.to_string(), program));
        }
    }

    fn remove(&self, ifname: &str) {
        if let Ok(mut programs) = self.0.lock() {
            programs.retain(|(name, _)| name != ifname);
        }
    }
}

/// One interface added at run time.
struct Added {
    ifindex: u32,
    /// Kept alive with the attachment (its maps hold the socket); shared with `/metrics`.
    program: Arc<XdpProgram>,
    attachment: XdpAttachment,
}

/// How an added interface's XDP program is loaded and attached.
pub struct ProgramSetup {
    pub mode: AttachMode,
    pub redirect: RedirectConfig,
    /// Where programs are pinned (they outlive the process), if they are.
    pub pins: Option<PathBuf>,
}

/// The daemon's [`dataplane::api::Interfaces`].
pub struct HotInterfaces {
    setup: ProgramSetup,
    opener: PortOpener,
    changes: PortChanges,
    /// Served since start: `add` says so, `remove` leaves them.
    configured: Vec<String>,
    added: HashMap<String, Added>,
    capacity: u32,
    programs: HotPrograms,
}

impl HotInterfaces {
    pub fn new(
        setup: ProgramSetup,
        opener: PortOpener,
        changes: PortChanges,
        configured: Vec<String>,
        capacity: u32,
        programs: HotPrograms,
    ) -> HotInterfaces {
        HotInterfaces {
            setup,
            opener,
            changes,
            configured,
            added: HashMap::new(),
            capacity,
            programs,
        }
    }

    fn attach(&self, ifname: &str) -> Result<Added, String> {
        let ifindex = preflight::ifindex(ifname).map_err(|e| e.to_string())?;
        let (program, attachment) = super::restart::load_and_attach(
            ifname,
            ifindex,
            self.setup.redirect,
            self.setup.mode,
            self.setup.pins.as_deref(),
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
            program: Arc::new(program),
            attachment,
        })
    }

    fn detach(&mut self, ifname: &str) -> bool {
        let Some(added) = self.added.remove(ifname) else {
            return false;
        };
        self.programs.remove(ifname);
        // The interface may be gone already (its pod deleted): the kernel detached then.
        let _ = added.attachment.detach();
        // Its pod is gone: nothing of it may stay pinned.
        if let Err(err) = super::restart::unpin(self.setup.pins.as_deref(), ifname) {
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
            added.ifindex, self.setup.mode
        );
        self.programs.insert(ifname, Arc::clone(&added.program));
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
