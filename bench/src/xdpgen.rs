//! `--generator xdp`: prebuilt frames transmitted from an AF_XDP socket (copy mode), the
//! cheapest generator this machine has: no socket layer and no syscall per frame; the kernel
//! copies each frame from the UMEM into an skb and hands it to the device's transmit directly
//! (no qdisc), up to its TX budget per `sendto`.
//!
//! Contract:
//! - Runs in the calling thread's network namespace (`ip netns exec POD`, or a thread that
//!   entered the pod with `probe::enter_netns`), on `--dev` queue 0, transmit only. No XDP
//!   program is loaded or needed: the socket never receives (its RX ring stays empty), so
//!   libxdp's default program is inhibited and nothing is attached to the interface.
//! - The UMEM holds `max(flows, MIN_FRAMES)` frames (capped at [`MAX_FRAMES`]); frame `i`
//!   carries flow `i % flows`, built by [`crate::traffic::flow_frames`] exactly as for
//!   `--generator packet`. Frames are written once, before the socket exists, and never again,
//!   so the kernel reading a frame while it is also queued a second time is harmless. With
//!   `--stamp`, the 8 timestamp bytes at the payload's start are written while the frame is
//!   on the free queue (ours), just before it is produced, and never while the kernel owns it.
//! - `--rate`: a frame may go once `rate x elapsed` frames are due; the loop produces at most
//!   the frames due (and at most [`BATCH`]) per iteration, so the offered load is smooth on
//!   the scale of a batch.
//! - Ownership of frames (xsk-rs's safety contract): every frame index is at any time either
//!   on the free queue (ours) or on the TX/completion rings (the kernel's); it moves to the
//!   kernel only through `TxQueue::produce` (the unproduced tail goes back to the free queue)
//!   and back only through `CompQueue::consume`. The free queue is FIFO, so consecutive
//!   batches walk the flows round-robin.
//! - Descriptors sent are copies of a table built at start-up with each frame's length set:
//!   `CompQueue::consume` zeroes a descriptor's length, so completed descriptors are used only
//!   for their address and never resent as they are.
//! - `sent` counts completions (frames the kernel has transmitted), measured like the other
//!   generators' `sent`; `send_errors` counts `sendto` kicks that failed with anything but
//!   the back-pressure errnos (EAGAIN, EBUSY, ENOBUFS, ENETDOWN), which xsk-rs swallows.
//!
//! The send loop allocates nothing: every vector is sized before it starts.

use std::collections::VecDeque;
use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FrameDesc, Socket, TxQueue, Umem};

use crate::cli::GenArgs;
use crate::traffic::{flow_frames, frame_generator_args, pin, GenResult};
use crate::BenchError;

/// Bytes per UMEM chunk (the smallest xsk-rs accepts; frames are at most 1514 bytes).
const FRAME_SIZE: u32 = 2048;
/// At least this many frames, so the TX and completion rings can be kept full with few flows.
const MIN_FRAMES: u32 = 4096;
/// At most this many frames (128 MiB of UMEM); more flows than this reuse none of the rest.
const MAX_FRAMES: u32 = 65536;
/// TX ring entries.
const TX_SIZE: u32 = 2048;
/// Completion ring entries (at least the TX ring's, so completions never back up the ring).
const COMP_SIZE: u32 = 4096;
/// RX and fill rings: required by the socket, unused.
const UNUSED_RING: u32 = 64;
const _: () = assert!(COMP_SIZE >= TX_SIZE);
/// Descriptors put on the TX ring per iteration.
const BATCH: usize = 64;
/// Frames the kernel may transmit per `sendto` in copy mode (its default is 32).
const TX_BUDGET: libc::c_uint = 256;
/// `XDP_MAX_TX_SKB_BUDGET` (Linux 6.16 and later); the libc crate does not have it yet.
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
/// How long the generator waits for the frames still in flight after its duration.
const DRAIN: Duration = Duration::from_millis(100);

/// Frames in the UMEM for `flows` flows.
pub fn frame_count(flows: u32) -> u32 {
    flows.clamp(MIN_FRAMES, MAX_FRAMES)
}

/// The TX side of one AF_XDP socket and the frames it sends.
struct Sender {
    /// Keeps the mapping alive (the socket holds a clone as well); `--stamp` writes through it.
    umem: Umem,
    tx: TxQueue,
    comp: CompQueue,
    /// Frame `i`'s descriptor with its length set; sent as copies, never modified.
    table: Vec<FrameDesc>,
    /// Indices into `table` owned by this side (see the module contract).
    free: VecDeque<u32>,
    /// The descriptors of one TX batch.
    batch: Vec<FrameDesc>,
    /// Completion ring output.
    done: Vec<FrameDesc>,
    tx_budget: Option<libc::c_uint>,
    /// Write the send time into each frame before it is produced.
    stamp: bool,
}

/// Where `--stamp` writes: the first payload byte (Ethernet 14 + IPv4 20 + UDP 8).
pub const STAMP_AT: usize = 42;
/// The UDP checksum's offset in the frame (zeroed with `--stamp`: IPv4 UDP may carry none).
const UDP_CHECKSUM_AT: usize = 40;

/// The source MAC of `dev` in this thread's namespace (`/sys` may belong to another one).
fn interface_mac(dev: &str) -> Result<[u8; 6], BenchError> {
    let name = dev.as_bytes();
    // SAFETY: ifreq is plain old data; all-zero is valid before the name is set.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() || name.contains(&0) {
        return Err(BenchError::Failed(format!(
            "`{dev}` is not an interface name"
        )));
    }
    for (dst, &b) in req.ifr_name.iter_mut().zip(name) {
        *dst = b as libc::c_char;
    }
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(BenchError::io("socket", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; SIOCGIFHWADDR writes the
    // hardware address into it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc != 0 {
        return Err(BenchError::io(
            format!("reading the MAC of {dev} (is it in this namespace?)"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: SIOCGIFHWADDR succeeded, so the union holds `ifru_hwaddr`.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, &b) in mac.iter_mut().zip(data.iter()) {
        *m = b as u8;
    }
    Ok(mac)
}

/// Raises RLIMIT_MEMLOCK for `bytes` of UMEM when this process is charged for it.
fn allow_umem(bytes: u64) -> Result<(), BenchError> {
    if !dataplane::daemon::preflight::umem_counts_against_memlock() {
        return Ok(());
    }
    dataplane::daemon::preflight::ensure_memlock(bytes + (1 << 20)).map_err(|e| {
        BenchError::Failed(format!(
            "--generator xdp needs {bytes} bytes of locked memory for its UMEM: {e}"
        ))
    })
}

fn queue_size(n: u32) -> Result<QueueSize, BenchError> {
    QueueSize::new(n).map_err(|e| BenchError::Failed(format!("ring size {n}: {e}")))
}

impl Sender {
    /// Creates the UMEM, writes `frames` into it (frame `i` holds `frames[i % len]`) and opens
    /// a TX socket on `dev` queue 0.
    fn open(dev: &str, frames: &[Vec<u8>], count: u32, stamp: bool) -> Result<Sender, BenchError> {
        let umem_err = |e: String| {
            BenchError::Failed(format!(
                "AF_XDP UMEM of {count} x {FRAME_SIZE} bytes: {e} (root, and `ulimit -l unlimited` \
                 if the locked-memory limit cannot be raised)"
            ))
        };
        let frame_size = FrameSize::new(FRAME_SIZE).map_err(|e| umem_err(e.to_string()))?;
        let config = UmemConfig::builder()
            .frame_size(frame_size)
            .fill_queue_size(queue_size(UNUSED_RING)?)
            .comp_queue_size(queue_size(COMP_SIZE)?)
            .build()
            .map_err(|e| umem_err(e.to_string()))?;
        let frames_nz = NonZeroU32::new(count).ok_or_else(|| umem_err("no frames".into()))?;
        allow_umem(u64::from(count) * u64::from(FRAME_SIZE))?;
        let (umem, mut descs) =
            Umem::new(config, frames_nz, false).map_err(|e| umem_err(e.to_string()))?;
        if frames.is_empty() {
            return Err(umem_err("no flows".into()));
        }
        for (desc, frame) in descs.iter_mut().zip(frames.iter().cycle()) {
            // SAFETY: no socket exists yet, so no ring holds this frame and nothing else
            // accesses it; the view ends with this statement.
            let mut data = unsafe { umem.data_mut(desc) };
            let mut cursor = data.cursor();
            std::io::Write::write_all(&mut cursor, frame)
                .map_err(|e| umem_err(format!("a {}-byte frame does not fit: {e}", frame.len())))?;
        }
        let socket_config = SocketConfig::builder()
            .rx_queue_size(queue_size(UNUSED_RING)?)
            .tx_queue_size(queue_size(TX_SIZE)?)
            // Transmit only: no XDP program is needed, so libxdp must not load (nor later
            // unload) its default one on the pod's interface.
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP | BindFlags::XDP_COPY)
            .build();
        let name = CString::new(dev)
            .map_err(|_| BenchError::Failed(format!("`{dev}` is not an interface name")))?;
        // SAFETY: XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD is set, and this UMEM has no other socket.
        let (tx, _rx, rings) =
            unsafe { Socket::new(socket_config, &umem, &Interface::new(name), 0) }.map_err(
                |e| {
                    BenchError::Failed(format!(
                        "AF_XDP socket on {dev} queue 0: {e} (needs root and a kernel with \
                     CONFIG_XDP_SOCKETS; use --generator packet otherwise)"
                    ))
                },
            )?;
        let (_fill, comp) = rings.ok_or_else(|| {
            BenchError::Failed(format!("AF_XDP socket on {dev}: no completion ring"))
        })?;
        let tx_budget = set_tx_budget(&tx, TX_BUDGET).then_some(TX_BUDGET);
        Ok(Sender {
            umem,
            tx,
            comp,
            free: (0..count).collect(),
            table: descs,
            batch: Vec::with_capacity(BATCH),
            done: vec![FrameDesc::default(); COMP_SIZE as usize],
            tx_budget,
            stamp,
        })
    }

    /// Puts up to `limit` (at most [`BATCH`]) free frames on the TX ring; returns how many it
    /// took.
    #[inline]
    fn produce(&mut self, limit: usize) -> usize {
        self.batch.clear();
        let limit = limit.min(BATCH);
        while self.batch.len() < limit {
            let Some(i) = self.free.pop_front() else {
                break;
            };
            match self.table.get(i as usize) {
                Some(&d) => self.batch.push(d),
                None => break, // cannot happen: indices come from the table
            }
        }
        if self.batch.is_empty() {
            return 0;
        }
        if self.stamp {
            self.stamp_batch();
        }
        // SAFETY: every descriptor is a frame of this socket's UMEM taken off the free queue
        // (owned by no ring) with its length set; the ones the ring does not take go back to
        // the free queue below, the rest are not touched until the completion ring returns
        // them. The frames' bytes are never written after start-up.
        let taken = unsafe { self.tx.produce(&self.batch) };
        for d in self.batch[taken..].iter().rev() {
            self.free
                .push_front((d.addr() / FRAME_SIZE as usize) as u32);
        }
        taken
    }

    /// Writes the current CLOCK_MONOTONIC time into every frame of the batch.
    fn stamp_batch(&mut self) {
        let now = crate::traffic::monotonic_ns().to_le_bytes();
        for d in &self.batch {
            let mut desc = *d;
            // SAFETY: the frame was just taken off the free queue, so no ring holds it and
            // the kernel does not read it until it is produced below; the view ends with the
            // statement.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            if let Some(slot) = data.contents_mut().get_mut(STAMP_AT..STAMP_AT + 8) {
                slot.copy_from_slice(&now);
            }
        }
    }

    /// Kicks the kernel when it asks to be (copy mode: every `sendto` transmits up to the
    /// budget). False when `sendto` failed for a reason other than back-pressure.
    #[inline]
    fn kick(&mut self) -> bool {
        !self.tx.needs_wakeup() || self.tx.wakeup().is_ok()
    }

    /// Moves completed frames back to the free queue; returns how many completed.
    #[inline]
    fn reap(&mut self) -> usize {
        // SAFETY: the completion ring returns frames of this UMEM that were put on this
        // socket's TX ring; once consumed, the kernel is done with them.
        let got = unsafe { self.comp.consume(&mut self.done) };
        for d in &self.done[..got] {
            let i = d.addr() / FRAME_SIZE as usize;
            if i < self.table.len() {
                self.free.push_back(i as u32);
            }
        }
        got
    }

    /// Frames owned by the kernel (on the TX or completion ring, or being sent).
    fn in_flight(&self) -> usize {
        self.table.len() - self.free.len()
    }
}

/// `setsockopt(SOL_XDP, XDP_MAX_TX_SKB_BUDGET)`; false where the kernel lacks it.
fn set_tx_budget(tx: &TxQueue, budget: libc::c_uint) -> bool {
    // SAFETY: `budget` is a live c_uint and its size is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            tx.fd().as_raw_fd(),
            libc::SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            (&budget as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// `gen --generator xdp`: needs `--dev`, `--dst-mac` and `--src`, like `packet`.
pub fn generate(args: &GenArgs) -> Result<GenResult, BenchError> {
    let (dev, dst_mac, src) = frame_generator_args(args, "xdp")?;
    let src_mac = interface_mac(dev)?;
    if args.stamp && args.size < STAMP_AT + 8 {
        return Err(BenchError::Failed(format!(
            "--stamp needs --size {} or more (8 payload bytes for the time)",
            STAMP_AT + 8
        )));
    }
    let mut frames = flow_frames(args, src, src_mac, dst_mac);
    if args.stamp {
        for f in &mut frames {
            if let Some(sum) = f.get_mut(UDP_CHECKSUM_AT..UDP_CHECKSUM_AT + 2) {
                sum.fill(0);
            }
        }
    }
    let mut sender = Sender::open(dev, &frames, frame_count(args.flows), args.stamp)?;
    if sender.tx_budget.is_none() {
        eprintln!(
            "gen: this kernel lacks XDP_MAX_TX_SKB_BUDGET; copy mode sends 32 frames per sendto"
        );
    }
    if let Some(core) = args.core {
        pin(core)?;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let mut result = GenResult::default();
    let mut rounds = 0u32;
    let mut produced = 0u64;
    loop {
        rounds = rounds.wrapping_add(1);
        if rounds % 64 == 0 && (Instant::now() >= end || crate::signals::stopping()) {
            break;
        }
        let limit = match args.rate {
            Some(rate) => frames_due(rate, start.elapsed(), produced),
            None => BATCH,
        };
        produced += sender.produce(limit) as u64;
        if !sender.kick() {
            result.send_errors += 1;
        }
        result.sent += sender.reap() as u64;
    }
    result.seconds = start.elapsed().as_secs_f64();
    // Frames handed over before the end still go out: count them (briefly), as the start's
    // first completions lagged behind their sends.
    let drain_end = Instant::now() + DRAIN;
    while sender.in_flight() > 0 && Instant::now() < drain_end {
        sender.kick();
        result.sent += sender.reap() as u64;
    }
    Ok(result)
}

/// Frames that may go now at `rate` per second, `elapsed` after the start, `produced` having
/// gone (capped at [`BATCH`]).
pub fn frames_due(rate: f64, elapsed: Duration, produced: u64) -> usize {
    let due = (rate * elapsed.as_secs_f64()) as u64;
    due.saturating_sub(produced).min(BATCH as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_lets_out_what_is_due_and_no_more_than_a_batch() {
        let ms = Duration::from_millis;
        assert_eq!(frames_due(1000.0, ms(10), 0), 10);
        assert_eq!(frames_due(1000.0, ms(10), 10), 0);
        assert_eq!(frames_due(1000.0, ms(10), 20), 0);
        assert_eq!(frames_due(1e6, ms(10), 0), BATCH);
    }

    #[test]
    fn frame_count_is_bounded() {
        assert_eq!(frame_count(1), MIN_FRAMES);
        assert_eq!(frame_count(10_000), 10_000);
        assert_eq!(frame_count(60_000), 60_000);
        assert_eq!(frame_count(u32::MAX), MAX_FRAMES);
    }
}
