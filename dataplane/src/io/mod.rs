//! AF_XDP I/O: one UMEM per worker, one socket per (interface, queue), busy-polling workers that
//! run the pipeline on each received batch (feature `afxdp`).
//!
//! Data path of a frame, and who owns it at each step:
//!
//! ```text
//!  free list --refill--> fill ring(port) --kernel--> rx ring(port) --consume--> batch
//!     ^                                                                          |
//!     |  Drop / Pass / no TX port / TX ring full          Pipeline::process(ifindex of port)
//!     +<-------------------------------------------------------------------------+
//!     |                                                                          | Tx { ifindex }
//!     +<-- completion ring(port') <--kernel-- tx ring(port') <-------------------+
//! ```
//!
//! Contract and invariants:
//! - **One UMEM per worker**, shared by all the worker's sockets (`XDP_SHARED_UMEM`), so a frame
//!   received on one interface is transmitted on another by handing its descriptor to the
//!   other socket's TX ring: no copy in user space. Each (interface, queue) gets its own fill
//!   and completion rings (the kernel requires them for a shared UMEM on another device).
//! - **A frame handed to a ring is not touched until it comes back.** Every descriptor is in
//!   exactly one place: the worker's free list, a kernel ring, or the batch being processed.
//!   That is enforced in one place, `umem::Xsk`, which owns the UMEM, the rings and the free
//!   list, and which is the only code with `unsafe` ring or memory access. The pipeline sees
//!   the frames of one batch as [`Frame`](crate::frame::Frame) views over UMEM chunks that cannot
//!   outlive the batch.
//! - **Headroom**: the UMEM is configured with `frame_headroom` (default
//!   [`DEFAULT_HEADROOM`](crate::frame::DEFAULT_HEADROOM)) on top of the kernel's 256-byte XDP
//!   headroom, and the pipeline's frame window spans the whole chunk, so encapsulation can
//!   `push_front` in place.
//! - **TX descriptors** carry the frame's length as the pipeline left it (xsk-rs resets the
//!   length of descriptors it hands back, so it is always set explicitly). xsk-rs 0.11 offers
//!   no way to set a descriptor's address, so a frame whose start moved (encapsulation,
//!   decapsulation, DSR option) is moved back to its receive offset before TX: one `memmove`
//!   of that frame, counted in [`IoCounters::realigned`]. Pod-to-pod frames never move.
//! - **Pass**: a `Verdict::Pass` from user space cannot go back to the kernel's stack without
//!   a TAP device; the XDP program already passes what the kernel must see (ARP on the uplink,
//!   non-IP), so a Pass here is counted as [`IoCounters::pass_dropped`] and recycled.
//! - The fill ring is refilled early and in batches from the free list, and `need_wakeup` is
//!   honoured on both the fill and TX rings; each wakeup is counted.
//! - **A frame's fate is the pipeline's verdict, read once**: after the batch, each frame goes
//!   where its `PacketMeta::verdict` says (through the [`Verdicts`](crate::pipeline::Verdicts)
//!   view `Pipeline::process` returns); the I/O layer keeps only where each frame's bytes are,
//!   never a copy of its fate.
//!
//! Files, in dependency order (none imports a later one): `sys` (system calls), `config` (ring
//! geometry), `counters`, `umem` (the owner of the frames), `worker` (the loop). This layer
//! depends on `pipeline` and `tables` only: the counters go out through the pipeline's
//! [`Publisher`](crate::pipeline::Publisher) trait, which the control socket (`api`) implements.

mod config;
mod counters;
mod sys;
mod umem;
mod worker;

pub use config::{BindMode, XskConfig};
pub use counters::{IoCounters, SocketStats};
pub use sys::{monotonic_ns, SocketStatsReader};
pub use umem::{NewPort, PortChange, PortChanges, PortOpener, SocketInfo};
pub use worker::{TablesSource, Worker, WorkerConfig};

use crate::pipeline::PipelineError;

/// One AF_XDP socket of a worker: an interface (by name, in the worker's network namespace)
/// and one of its receive queues.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortSpec {
    pub ifname: String,
    pub queue: u32,
}

impl PortSpec {
    pub fn new(ifname: impl Into<String>, queue: u32) -> Self {
        PortSpec {
            ifname: ifname.into(),
            queue,
        }
    }
}

/// What went wrong setting up AF_XDP I/O. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error(
        "a worker needs at least one port (interface and queue): list the interfaces it serves"
    )]
    NoPorts,
    #[error("port {ifname} queue {queue} is listed twice: give each (interface, queue) to exactly one worker, once")]
    DuplicatePort { ifname: String, queue: u32 },
    #[error("interface `{ifname}` does not exist in this network namespace: check the name, and that the worker thread entered the right namespace")]
    NoSuchInterface { ifname: String },
    #[error("invalid AF_XDP setting {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("creating a UMEM of {frames} frames of {frame_size} bytes failed: lower the frame count, or raise the memlock limit (ulimit -l) on kernels before 5.11 without CAP_IPC_LOCK")]
    Umem {
        frames: u32,
        frame_size: u32,
        #[source]
        source: xsk_rs::umem::UmemCreateError,
    },
    #[error("creating the AF_XDP socket on {ifname} queue {queue} failed: check the queue exists (`ethtool -l`), no other AF_XDP socket is bound to it, the kernel has CONFIG_XDP_SOCKETS, and the process is root (or has CAP_NET_RAW and CAP_BPF)")]
    Socket {
        ifname: String,
        queue: u32,
        #[source]
        source: xsk_rs::socket::SocketCreateError,
    },
    #[error("the AF_XDP socket on {ifname} queue {queue} got no fill/completion rings of its own: another socket of this UMEM is already bound to that (interface, queue); use one socket per queue")]
    SharedContext { ifname: String, queue: u32 },
    #[error("pinning the worker to CPU {core} failed: pick a core this process may run on (`taskset -p $$`, cgroup cpusets)")]
    Pin {
        core: usize,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}
