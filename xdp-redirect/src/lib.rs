//! The tiny XDP program that hands pod traffic to the dataplane's AF_XDP sockets, and its loader.
//!
//! The program (`src/bpf/xdp_redirect.bpf.c`, compiled by `build.rs`) looks at the Ethernet
//! header only. IPv4 and IPv6 always belong to the dataplane; ARP and other EtherTypes belong to
//! it only when [`RedirectConfig`] says so, otherwise they go to the kernel. A frame the
//! dataplane owns is redirected to the AF_XDP socket registered for its receive queue
//! (`xsks_map[rx_queue_index]`); a queue without a socket falls back to `XDP_PASS`, so the
//! kernel keeps working while the dataplane starts or restarts.
//!
//! Contract and invariants:
//! - [`XdpProgram::load`] loads one independent copy of the program and its maps. The XSKMAP is
//!   keyed by queue only, so an interface needs its own copy (one `XdpProgram` per interface).
//! - [`XdpProgram::attach`] creates a BPF link: the program stays attached exactly as long as the
//!   returned [`XdpAttachment`] (or the process) lives. Nothing is left behind when the process
//!   is killed. Native mode is the default; generic mode is used only when asked for, and
//!   [`AttachMode::warning`] gives the text the caller must show then.
//! - The `#[repr(C)]` twins of the C structs below name their C counterparts; a test checks
//!   their sizes and field offsets against the types libbpf-cargo generates from the object.
//! - Everything here is control path (syscalls, may allocate); the per-packet work is the C
//!   program's.

use std::fmt;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use libbpf_rs::libbpf_sys;
use libbpf_rs::{ErrorKind, MapCore, MapFlags, Object, ObjectBuilder};

/// The XSKMAP is indexed by the receive queue of the frame (`ctx->rx_queue_index`); a queue with
/// no registered socket falls back to `XDP_PASS`, so the kernel keeps working.
pub const XSKMAP_KEYED_BY: &str = "rx_queue_index";

/// Number of queue slots in the XSKMAP. Twin: `XSKMAP_MAX_ENTRIES` in `xdp_redirect.bpf.c`.
pub const XSKMAP_MAX_ENTRIES: u32 = 64;

/// The compiled BPF object, embedded so that the binary needs no file at run time.
static BPF_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xdp_redirect.bpf.o"));

/// Names inside the object; they must match `xdp_redirect.bpf.c`.
const PROGRAM_NAME: &str = "xdp_redirect_prog";
const XSKS_MAP: &str = "xsks_map";
const CONFIG_MAP: &str = "config_map";
const COUNTERS_MAP: &str = "counters_map";

/// The single key of the one-entry config and counters arrays.
const ONLY_KEY: [u8; 4] = 0u32.to_ne_bytes();

/// Shortest frame the kernel's BPF_PROG_TEST_RUN accepts as packet data (an Ethernet header).
const TEST_RUN_MIN_DATA: usize = 14;

/// What the dataplane owns besides IP (IPv4 and IPv6 are always its own). Everything it does not
/// own is passed to the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedirectConfig {
    /// `false` (default): ARP goes to the kernel. `true`: ARP goes to the dataplane, which then
    /// must answer it (the pod-facing gateway does).
    pub redirect_arp: bool,
    /// `false` (default): EtherTypes other than IPv4, IPv6 and ARP (LLDP, VLAN tags, ...) go to
    /// the kernel. `true`: they go to the dataplane.
    pub redirect_non_ip: bool,
}

/// The value of `config_map`, as the kernel sees it.
/// Twin: `struct xdp_redirect_config` in `src/bpf/xdp_redirect.bpf.c`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RawRedirectConfig {
    redirect_arp: u32,
    redirect_non_ip: u32,
}

impl RawRedirectConfig {
    fn from_config(config: RedirectConfig) -> Self {
        Self {
            redirect_arp: u32::from(config.redirect_arp),
            redirect_non_ip: u32::from(config.redirect_non_ip),
        }
    }

    fn to_ne_bytes(self) -> [u8; size_of::<Self>()] {
        let mut bytes = [0u8; size_of::<Self>()];
        bytes[..4].copy_from_slice(&self.redirect_arp.to_ne_bytes());
        bytes[4..].copy_from_slice(&self.redirect_non_ip.to_ne_bytes());
        bytes
    }
}

/// Where frames went, summed over all CPUs since the program was loaded.
/// Twin: `struct xdp_redirect_counters` in `src/bpf/xdp_redirect.bpf.c` (one per CPU there).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedirectCounters {
    /// Owned by the dataplane and taken by the AF_XDP socket of its queue.
    pub redirected: u64,
    /// Owned by the dataplane, but no socket is registered for its queue: passed to the kernel.
    pub no_socket: u64,
    /// Not owned by the dataplane under the current [`RedirectConfig`]: passed to the kernel.
    pub not_owned: u64,
    /// Shorter than an Ethernet header: passed to the kernel (which drops it).
    pub truncated: u64,
}

impl RedirectCounters {
    const FIELDS: usize = size_of::<Self>() / size_of::<u64>();

    /// Adds one CPU's copy, as the kernel returned it. A short copy (never produced by the
    /// kernel) contributes only its complete fields.
    fn add_ne_bytes(&mut self, bytes: &[u8]) {
        let mut fields = [0u64; Self::FIELDS];
        for (field, chunk) in fields.iter_mut().zip(bytes.chunks_exact(size_of::<u64>())) {
            let mut word = [0u8; size_of::<u64>()];
            word.copy_from_slice(chunk);
            *field = u64::from_ne_bytes(word);
        }
        let [redirected, no_socket, not_owned, truncated] = fields;
        self.redirected += redirected;
        self.no_socket += no_socket;
        self.not_owned += not_owned;
        self.truncated += truncated;
    }
}

/// How the program is attached to an interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver, before any socket buffer exists (`XDP_FLAGS_DRV_MODE`). Fails on drivers
    /// without native XDP rather than silently falling back.
    #[default]
    Native,
    /// After the kernel built a socket buffer (`XDP_FLAGS_SKB_MODE`): works on every interface,
    /// but costs an allocation and a copy per frame. Only when asked for.
    Generic,
}

impl AttachMode {
    /// The `XDP_FLAGS_*` mode bit the kernel expects.
    fn flags(self) -> u32 {
        match self {
            AttachMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
        }
    }

    /// The warning a caller must show (log, print) when it attaches in this mode, if any.
    pub fn warning(self) -> Option<&'static str> {
        match self {
            AttachMode::Native => None,
            AttachMode::Generic => Some(
                "XDP attached in generic (SKB) mode: every frame costs a socket-buffer \
                 allocation and a copy, far slower than native mode; use it only for testing \
                 or on drivers without native XDP",
            ),
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
    }
}

/// The verdict of one program run, as returned by [`XdpProgram::test_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAction {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    /// A value the kernel does not define; the program never returns one.
    Unknown(u32),
}

impl XdpAction {
    fn from_raw(value: u32) -> Self {
        match value {
            libbpf_sys::XDP_ABORTED => XdpAction::Aborted,
            libbpf_sys::XDP_DROP => XdpAction::Drop,
            libbpf_sys::XDP_PASS => XdpAction::Pass,
            libbpf_sys::XDP_TX => XdpAction::Tx,
            libbpf_sys::XDP_REDIRECT => XdpAction::Redirect,
            other => XdpAction::Unknown(other),
        }
    }
}

/// Everything that can go wrong while loading, attaching or driving the program. Each message
/// ends with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("permission denied to {operation}: run as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON); on kernels before 5.11 also raise the memlock limit (ulimit -l unlimited)")]
    PermissionDenied {
        operation: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("this kernel does not support BPF or AF_XDP: use a kernel built with CONFIG_BPF_SYSCALL and CONFIG_XDP_SOCKETS (5.10 or later)")]
    BpfUnavailable {
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("the embedded BPF object could not be opened: rebuild the xdp-redirect crate (clang must be installed)")]
    Open {
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("the kernel refused to load the XDP program: the verifier log, if any, was printed to stderr above; check that the kernel supports XSKMAP (CONFIG_XDP_SOCKETS)")]
    Load {
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("the BPF object has no {kind} named `{name}`: xdp_redirect.bpf.c and lib.rs disagree, make their names match and rebuild")]
    ObjectMismatch { kind: &'static str, name: &'static str },
    #[error("interface index {ifindex} does not exist in this network namespace: check the interface name and the namespace the calling thread is in")]
    NoSuchInterface { ifindex: u32 },
    #[error("interface index {ifindex} has no native XDP support: use AttachMode::Generic (slower), or a driver with native XDP")]
    NativeUnsupported { ifindex: u32 },
    #[error("interface index {ifindex} already has an XDP program ({mode} mode requested): detach it first (`ip link set dev IFACE xdp off`, or stop its owner)")]
    InterfaceBusy { ifindex: u32, mode: AttachMode },
    #[error("attaching XDP in {mode} mode to interface index {ifindex} failed: check the interface is up, its MTU fits XDP (at most about 3500 bytes), and `dmesg`")]
    Attach {
        ifindex: u32,
        mode: AttachMode,
        #[source]
        source: io::Error,
    },
    #[error("detaching XDP from interface index {ifindex} failed: check `ip link show` and remove it with `ip link set dev IFACE xdp off` if it is still there")]
    Detach {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("queue {queue} is beyond the XSKMAP's {max} slots: use fewer queues (`ethtool -L`) or raise XSKMAP_MAX_ENTRIES in both xdp_redirect.bpf.c and lib.rs")]
    QueueOutOfRange { queue: u32, max: u32 },
    #[error("registering fd {fd} as the AF_XDP socket of queue {queue} failed: pass the fd of an AF_XDP socket (bound to this interface and queue)")]
    RegisterSocket {
        queue: u32,
        fd: RawFd,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("unregistering the AF_XDP socket of queue {queue} failed: check the program is still loaded")]
    UnregisterSocket {
        queue: u32,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("writing the redirect configuration failed: check the program is still loaded and the process still has CAP_BPF")]
    Config {
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("reading the redirect counters failed: check the program is still loaded and the process still has CAP_BPF")]
    Counters {
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("BPF_PROG_TEST_RUN of a {len}-byte frame failed: frames must fit a page minus headroom (about 3500 bytes); test runs need root")]
    TestRun {
        len: usize,
        #[source]
        source: libbpf_rs::Error,
    },
}

/// One loaded copy of the redirect program and its maps, not yet attached anywhere.
#[derive(Debug)]
pub struct XdpProgram {
    object: Object,
    config: RedirectConfig,
}

impl XdpProgram {
    /// Loads the program into the kernel and writes `config` into its config map.
    pub fn load(config: RedirectConfig) -> Result<Self, XdpError> {
        let open = ObjectBuilder::default()
            .open_memory(BPF_OBJECT)
            .map_err(|source| XdpError::Open { source })?;
        let object = open.load().map_err(|source| match source.kind() {
            ErrorKind::PermissionDenied => XdpError::PermissionDenied {
                operation: "load the XDP program",
                source,
            },
            ErrorKind::Unsupported => XdpError::BpfUnavailable { source },
            _ => XdpError::Load { source },
        })?;
        let mut program = Self { object, config };
        program.check_object()?;
        program.set_config(config)?;
        Ok(program)
    }

    /// The configuration the program currently applies.
    pub fn config(&self) -> RedirectConfig {
        self.config
    }

    /// Changes what the dataplane owns. Takes effect for the next frame, also while attached
    /// (the config map entry is replaced whole, so no frame sees half of it).
    pub fn set_config(&mut self, config: RedirectConfig) -> Result<(), XdpError> {
        let value = RawRedirectConfig::from_config(config).to_ne_bytes();
        self.map(CONFIG_MAP)?
            .update(&ONLY_KEY, &value, MapFlags::ANY)
            .map_err(|source| XdpError::Config { source })?;
        self.config = config;
        Ok(())
    }

    /// Attaches the program to interface `ifindex` (resolved in the calling thread's network
    /// namespace) through a BPF link. In [`AttachMode::Generic`] the caller must show
    /// [`AttachMode::warning`]. The program stays attached until the returned value is dropped
    /// or [`XdpAttachment::detach`]ed, or the process exits.
    pub fn attach(&self, ifindex: u32, mode: AttachMode) -> Result<XdpAttachment, XdpError> {
        let program = self.program()?;
        let opts = libbpf_sys::bpf_link_create_opts {
            sz: size_of::<libbpf_sys::bpf_link_create_opts>() as _,
            flags: mode.flags(),
            ..Default::default()
        };
        // Not libbpf-rs's `attach_xdp`: it passes no mode flags, and the kernel then silently
        // falls back to generic mode on drivers without native XDP.
        // The kernel's `target_ifindex` is a u32 that libbpf carries in an int: the cast keeps
        // the bits.
        // SAFETY: plain syscall wrapper; the program fd is valid for the duration of the call
        // (borrowed from `self`) and `opts` is a fully initialised options struct that outlives
        // the call.
        let fd = unsafe {
            libbpf_sys::bpf_link_create(
                program.as_fd().as_raw_fd(),
                ifindex as i32,
                libbpf_sys::BPF_XDP,
                &opts,
            )
        };
        if fd < 0 {
            return Err(attach_error(ifindex, mode, io::Error::from_raw_os_error(-fd)));
        }
        // SAFETY: `bpf_link_create` returned a new, valid file descriptor that nothing else owns.
        let link = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(XdpAttachment {
            link: Some(link),
            ifindex,
            mode,
        })
    }

    /// Makes `xsk_fd`, an AF_XDP socket, the receiver of the owned frames arriving on `queue`
    /// (replacing any previous socket of that queue). The kernel takes its own reference to the
    /// socket; closing `xsk_fd` afterwards removes it from the map.
    pub fn register_socket(&self, queue: u32, xsk_fd: RawFd) -> Result<(), XdpError> {
        check_queue(queue)?;
        let fd = u32::try_from(xsk_fd).map_err(|_| XdpError::RegisterSocket {
            queue,
            fd: xsk_fd,
            source: libbpf_rs::Error::from_raw_os_error(errno::EBADF),
        })?;
        self.map(XSKS_MAP)?
            .update(&queue.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| XdpError::RegisterSocket {
                queue,
                fd: xsk_fd,
                source,
            })
    }

    /// Removes the socket of `queue`, if any: its frames go to the kernel again. Removing an
    /// empty slot is not an error.
    pub fn unregister_socket(&self, queue: u32) -> Result<(), XdpError> {
        check_queue(queue)?;
        match self.map(XSKS_MAP)?.delete(&queue.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(XdpError::UnregisterSocket { queue, source }),
        }
    }

    /// The counters of all CPUs, summed.
    pub fn counters(&self) -> Result<RedirectCounters, XdpError> {
        let per_cpu = self
            .map(COUNTERS_MAP)?
            .lookup_percpu(&ONLY_KEY, MapFlags::ANY)
            .map_err(|source| XdpError::Counters { source })?
            .unwrap_or_default();
        let mut sum = RedirectCounters::default();
        for cpu in &per_cpu {
            sum.add_ne_bytes(cpu);
        }
        Ok(sum)
    }

    /// Runs the program once over `frame` through BPF_PROG_TEST_RUN (receive queue 0, no
    /// interface) and returns its verdict. Counters and maps are the real ones.
    ///
    /// The kernel refuses packet data shorter than an Ethernet header; a shorter `frame` is
    /// therefore preceded by 4-byte-aligned XDP metadata, which the program does not see as
    /// packet data, so it still sees exactly `frame`.
    pub fn test_run(&self, frame: &[u8]) -> Result<XdpAction, XdpError> {
        let program = self.program_mut()?;
        let meta_len = TEST_RUN_MIN_DATA.saturating_sub(frame.len()).next_multiple_of(4);
        let mut data = vec![0u8; meta_len];
        data.extend_from_slice(frame);
        let mut context = xdp_md_bytes(meta_len, data.len());

        let mut input = libbpf_rs::ProgramInput::default();
        input.data_in = Some(&data);
        if meta_len > 0 {
            input.context_in = Some(&mut context);
        }
        let output = program
            .test_run(input)
            .map_err(|source| XdpError::TestRun {
                len: frame.len(),
                source,
            })?;
        Ok(XdpAction::from_raw(output.return_value))
    }

    fn check_object(&self) -> Result<(), XdpError> {
        self.program()?;
        for name in [XSKS_MAP, CONFIG_MAP, COUNTERS_MAP] {
            self.map(name)?;
        }
        Ok(())
    }

    fn program(&self) -> Result<libbpf_rs::Program<'_>, XdpError> {
        self.object
            .progs()
            .find(|prog| prog.name() == PROGRAM_NAME)
            .ok_or(XdpError::ObjectMismatch {
                kind: "program",
                name: PROGRAM_NAME,
            })
    }

    /// `test_run` is only offered on the mutable program view, which libbpf-rs hands out from
    /// a shared `Object` borrow.
    fn program_mut(&self) -> Result<libbpf_rs::ProgramMut<'_>, XdpError> {
        self.object
            .progs_mut()
            .find(|prog| prog.name() == PROGRAM_NAME)
            .ok_or(XdpError::ObjectMismatch {
                kind: "program",
                name: PROGRAM_NAME,
            })
    }

    fn map(&self, name: &'static str) -> Result<libbpf_rs::Map<'_>, XdpError> {
        self.object
            .maps()
            .find(|map| map.name() == name)
            .ok_or(XdpError::ObjectMismatch { kind: "map", name })
    }
}

/// A live attachment of the program to one interface. Dropping it detaches the program.
#[derive(Debug)]
pub struct XdpAttachment {
    /// `None` only after a successful explicit detach.
    link: Option<OwnedFd>,
    ifindex: u32,
    mode: AttachMode,
}

impl XdpAttachment {
    /// The interface the program is attached to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The mode it was attached in.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Detaches now and reports failure (dropping also detaches, silently).
    pub fn detach(mut self) -> Result<(), XdpError> {
        match self.link.take() {
            Some(link) => detach_link(&link).map_err(|source| XdpError::Detach {
                ifindex: self.ifindex,
                source,
            }),
            None => Ok(()),
        }
    }
}

impl Drop for XdpAttachment {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            // Closing the last fd of the link detaches too; the explicit detach also covers a
            // link fd duplicated elsewhere. Nothing useful can be done with an error here.
            let _ = detach_link(&link);
        }
    }
}

/// BPF_LINK_DETACH: the program leaves the interface now, even if other fds of the link exist.
fn detach_link(link: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain syscall wrapper on a link fd that `link` keeps open during the call.
    let rc = unsafe { libbpf_sys::bpf_link_detach(link.as_raw_fd()) };
    if rc < 0 {
        Err(io::Error::from_raw_os_error(-rc))
    } else {
        Ok(())
    }
}

/// The Linux errno values the error mapping distinguishes.
mod errno {
    pub const EPERM: i32 = 1;
    pub const EBADF: i32 = 9;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const ENODEV: i32 = 19;
    pub const EOPNOTSUPP: i32 = 95;
}

fn attach_error(ifindex: u32, mode: AttachMode, source: io::Error) -> XdpError {
    use errno::{EBUSY, EEXIST, ENODEV, EOPNOTSUPP, EPERM};
    match source.raw_os_error() {
        Some(ENODEV) => XdpError::NoSuchInterface { ifindex },
        Some(EBUSY | EEXIST) => XdpError::InterfaceBusy { ifindex, mode },
        Some(EOPNOTSUPP) if mode == AttachMode::Native => XdpError::NativeUnsupported { ifindex },
        Some(EPERM) => XdpError::PermissionDenied {
            operation: "attach XDP",
            source: source.into(),
        },
        _ => XdpError::Attach {
            ifindex,
            mode,
            source,
        },
    }
}

fn check_queue(queue: u32) -> Result<(), XdpError> {
    if queue < XSKMAP_MAX_ENTRIES {
        Ok(())
    } else {
        Err(XdpError::QueueOutOfRange {
            queue,
            max: XSKMAP_MAX_ENTRIES,
        })
    }
}

/// A `struct xdp_md` for BPF_PROG_TEST_RUN whose packet starts `meta_len` bytes into `total`
/// bytes of data (the bytes before it are metadata). Layout: six `u32`, `data` first and
/// `data_end` second; the rest (data_meta, ingress_ifindex, rx_queue_index, egress_ifindex) 0.
fn xdp_md_bytes(meta_len: usize, total: usize) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    // Both values are below a page (the kernel rejects larger data anyway): the casts are exact.
    ctx[0..4].copy_from_slice(&(meta_len as u32).to_ne_bytes());
    ctx[4..8].copy_from_slice(&(total as u32).to_ne_bytes());
    ctx
}

