//! The one owner of a worker's UMEM frames: the UMEM, its sockets' rings and the free list.
//!
//! Safety contract (xsk-rs's, made structural here): **a frame handed to a ring is not touched
//! until it comes back.** Every descriptor of the UMEM is at any time in exactly one of:
//! - the free list (`Xsk::free`), owned by this struct;
//! - a fill, RX, TX or completion ring, owned by the kernel;
//! - the batch being processed (`Xsk::rx`), owned by [`Xsk::rx_batch`] for the duration of
//!   the call.
//!
//! Descriptors move between those places only inside this file: a ring's `produce` is always
//! followed by removing exactly the produced descriptors from the Rust side, and a ring's
//! `consume` is the only way one comes back. The pipeline sees the batch as
//! `Frame<UmemBuf>` views, which exist only while its closure runs and are dropped before any
//! descriptor of the batch is produced to a ring. Every `unsafe` block below relies on this
//! contract and says which part.
//!
//! Fast path (everything called per poll iteration) allocates nothing: all vectors are sized
//! at construction (`free` holds every frame; `rx`, `views`, `placements` and each `staged` hold a
//! batch).

use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::mpsc;

use hashbrown::HashMap;
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use super::config::{BindMode, XskConfig};
use super::counters::{IoCounters, SocketStats};
use super::{sys, IoError, PortSpec};
use crate::frame::Frame;
use crate::pipeline::{Verdict, Verdicts};

/// A window onto one whole UMEM chunk (headroom included), lent to the pipeline for one batch.
///
/// Created only by [`Region::view`] for a chunk whose descriptor the batch owns, and dropped
/// (with the `views` vector being cleared) before that descriptor goes back to any ring. Not
/// `Clone`, `Send` or `Sync`, so it cannot be duplicated or leave the worker thread.
#[derive(Debug)]
pub(crate) struct UmemBuf {
    ptr: NonNull<u8>,
    len: usize,
}

impl AsRef<[u8]> for UmemBuf {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` is one chunk inside the UMEM mapping, which the `Xsk` that
        // made this view keeps mapped; the batch owns the chunk (no ring holds it, so the
        // kernel does not write it) and this is the only view of it (each descriptor appears
        // once in a batch). See the module contract.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for UmemBuf {
    #[inline]
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_ref`; `&mut self` makes this the only live access to the chunk.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// The UMEM mapping, as plain geometry: where chunk `i` lives.
#[derive(Clone, Copy, Debug)]
struct Region {
    base: NonNull<u8>,
    frame_size: usize,
    frame_count: usize,
}

impl Region {
    /// Finds the mapping's first byte from a descriptor `Umem::new` returned.
    fn locate(
        umem: &Umem,
        first: &mut FrameDesc,
        frame_size: usize,
        frame_count: usize,
    ) -> Option<Self> {
        let addr = first.addr();
        // SAFETY: `first` is a descriptor of this UMEM that no ring has seen yet, so nothing
        // else accesses its frame; the view is dropped at the end of this statement.
        let data_start = unsafe { umem.data_mut(first) }.contents_mut().as_mut_ptr();
        // AF_XDP addresses are offsets into the UMEM and xsk-rs maps descriptor `addr` at
        // `mapping start + addr`, so stepping back `addr` bytes lands on the first byte.
        let base = data_start.wrapping_sub(addr);
        Some(Region {
            base: NonNull::new(base)?,
            frame_size,
            frame_count,
        })
    }

    /// Chunk index and offset inside it of a descriptor, if it lies inside the UMEM.
    #[inline]
    fn locate_desc(&self, desc: &FrameDesc) -> Option<(usize, usize)> {
        let addr = desc.addr();
        let chunk = addr / self.frame_size;
        (chunk < self.frame_count).then_some((chunk, addr % self.frame_size))
    }

    /// A view of the chunk of `desc`, with the frame window at the descriptor's offset and
    /// length. `None` for a descriptor outside the UMEM or running past its chunk.
    #[inline]
    fn view(&self, desc: &FrameDesc) -> Option<Frame<UmemBuf>> {
        let (chunk, offset) = self.locate_desc(desc)?;
        let ptr = self.base.as_ptr().wrapping_add(chunk * self.frame_size);
        let buf = UmemBuf {
            ptr: NonNull::new(ptr)?,
            len: self.frame_size,
        };
        Frame::new(buf, offset, desc.lengths().data())
    }

    /// The whole chunk of `desc`, writable.
    ///
    /// # Safety
    /// The caller owns `desc` (it is in no ring) and no [`UmemBuf`] of that chunk is alive.
    #[inline]
    unsafe fn chunk_mut(&mut self, chunk: usize) -> &mut [u8] {
        debug_assert!(chunk < self.frame_count);
        let ptr = self.base.as_ptr().wrapping_add(chunk * self.frame_size);
        // SAFETY: `chunk < frame_count` (checked by `locate_desc`), so the slice lies in the
        // mapping; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(ptr, self.frame_size) }
    }
}

/// Where a frame of the batch lies once the pipeline is done with it: at `head..head + len` of
/// its chunk. Geometry only: the frame's fate is its verdict, read from the pipeline at disposal.
#[derive(Clone, Copy, Debug)]
struct Placement {
    head: usize,
    len: usize,
}

/// One socket: an (interface, queue) with its RX/TX rings and its own fill/completion rings.
#[derive(Debug)]
struct Port {
    spec: PortSpec,
    ifindex: u32,
    tx: TxQueue,
    rx: RxQueue,
    fill: FillQueue,
    comp: CompQueue,
    tx_size: u32,
    fill_size: u32,
    comp_size: u32,
    /// The copy-mode TX budget the kernel accepted, if any.
    tx_budget: Option<u32>,
    /// Most frames this port's fill ring may hold (a hot-added port's share of the UMEM).
    fill_cap: u32,
    /// Frames in its fill ring now (given by refill, taken back by receive).
    in_fill: u32,
}

/// A socket as the caller sees it: enough to register it in the XDP program's XSKMAP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    pub spec: PortSpec,
    pub ifindex: u32,
    pub fd: RawFd,
    /// The copy-mode TX budget (`XDP_MAX_TX_SKB_BUDGET`) in force, `None` when the kernel
    /// lacks the option (it then sends at most 32 frames per `sendto`).
    pub tx_budget: Option<u32>,
}

/// A worker's UMEM, sockets and free list: see the module contract.
#[derive(Debug)]
pub(crate) struct Xsk {
    /// Keeps the mapping behind `region` alive (the sockets hold clones too).
    umem: Umem,
    region: Region,
    /// Frames owned by no ring and no batch. Capacity: every frame of the UMEM.
    free: Vec<FrameDesc>,
    /// Port slots: a removed port leaves `None` (reused by the next one), so a slot's index,
    /// which `owner` records, stays valid.
    ports: Vec<Option<Port>>,
    /// Per chunk: `slot + 1` of the port whose fill or TX ring holds it, 0 otherwise. What a
    /// removed port's rings held comes back to the free list from this.
    owner: Vec<u16>,
    /// Per chunk: a descriptor of it as the UMEM first handed it out (to recycle a chunk that
    /// a removed port's ring held).
    templates: Vec<FrameDesc>,
    /// Opens sockets on this UMEM from another thread ([`PortOpener`]).
    socket_config: SocketConfig,
    cfg: XskConfig,
    /// TX port by interface index (the first socket of that interface in this worker).
    by_ifindex: HashMap<u32, usize>,
    /// The batch being processed.
    rx: Vec<FrameDesc>,
    views: Vec<Frame<UmemBuf>>,
    /// Per frame of the batch: where its bytes are (`None`: its view no longer matched its
    /// descriptor, a pipeline bug; the frame is dropped).
    placements: Vec<Option<Placement>>,
    /// Per port: descriptors of this batch bound for its TX ring.
    staged: Vec<Vec<FrameDesc>>,
    refill_batch: usize,
}

// SAFETY: `region.base` points into the mapping owned (through `umem`) by this value, which
// moves with it; nothing else holds that pointer (views never outlive a call), so moving the
// whole `Xsk` to another thread moves every access with it. All other fields are `Send`.
unsafe impl Send for Xsk {}

impl Xsk {
    /// Creates the UMEM, one socket per port (each with its own fill and completion rings),
    /// and fills every fill ring. Must run in the network namespace of the interfaces.
    pub(crate) fn new(cfg: &XskConfig, ports: &[PortSpec], batch: usize) -> Result<Self, IoError> {
        if ports.is_empty() {
            return Err(IoError::NoPorts);
        }
        for (i, p) in ports.iter().enumerate() {
            if ports[..i].contains(p) {
                return Err(IoError::DuplicatePort {
                    ifname: p.ifname.clone(),
                    queue: p.queue,
                });
            }
        }
        let ifindexes = ports
            .iter()
            .map(|p| {
                sys::ifindex(&p.ifname).ok_or_else(|| IoError::NoSuchInterface {
                    ifname: p.ifname.clone(),
                })
            })
            .collect::<Result<Vec<u32>, IoError>>()?;
        let umem_config = umem_config(cfg)?;
        let frame_count = frame_count(cfg, ports.len())?;
        if ports.len() + cfg.hot_ports as usize >= usize::from(u16::MAX) {
            return Err(IoError::Config {
                field: "hot_ports",
                reason: "more than 65534 ports in one worker: use fewer".into(),
            });
        }
        let socket_config = socket_config(cfg)?;
        let (umem, mut descs) =
            Umem::new(umem_config, frame_count, false).map_err(|source| IoError::Umem {
                frames: frame_count.get(),
                frame_size: cfg.frame_size,
                source,
            })?;
        let count = descs.len();
        let first = descs.first_mut().ok_or(IoError::Config {
            field: "frames_per_port",
            reason: "the UMEM has no frames".into(),
        })?;
        let region = Region::locate(&umem, first, cfg.frame_size as usize, count).ok_or(
            IoError::Config {
                field: "frame_size",
                reason: "the UMEM mapping could not be located".into(),
            },
        )?;

        let mut free = Vec::with_capacity(descs.len());
        let mut templates = vec![FrameDesc::default(); count];
        for d in &descs {
            if let Some((chunk, _)) = region.locate_desc(d) {
                templates[chunk] = *d;
            }
        }
        free.extend(descs);
        let mut xsk = Xsk {
            umem,
            region,
            free,
            ports: Vec::with_capacity(ports.len() + cfg.hot_ports as usize),
            owner: vec![0; count],
            templates,
            socket_config,
            cfg: cfg.clone(),
            by_ifindex: HashMap::new(),
            rx: vec![FrameDesc::default(); batch],
            views: Vec::with_capacity(batch),
            placements: Vec::with_capacity(batch),
            staged: Vec::new(),
            refill_batch: cfg.refill_batch.max(1) as usize,
        };
        for (spec, &ifindex) in ports.iter().zip(&ifindexes) {
            let port = open_port(&xsk.umem, socket_config, cfg, spec, ifindex, cfg.fill_size)?;
            xsk.by_ifindex
                .entry(port.ifindex)
                .or_insert(xsk.ports.len());
            xsk.ports.push(Some(port));
            xsk.staged.push(Vec::with_capacity(batch));
        }
        let mut counters = IoCounters::default();
        for p in 0..xsk.ports.len() {
            xsk.refill(p, 1, &mut counters);
        }
        Ok(xsk)
    }

    pub(crate) fn port_count(&self) -> usize {
        self.ports.len()
    }

    pub(crate) fn sockets(&self) -> impl Iterator<Item = SocketInfo> + '_ {
        self.ports.iter().flatten().map(Port::info)
    }

    /// A port's slot, if it holds a port.
    #[inline]
    fn port_mut(&mut self, p: usize) -> Option<&mut Port> {
        self.ports.get_mut(p).and_then(Option::as_mut)
    }

    /// Something that opens sockets on this UMEM from another thread.
    pub(crate) fn opener(&self) -> PortOpener {
        PortOpener {
            umem: self.umem.clone(),
            socket_config: self.socket_config,
            cfg: self.cfg.clone(),
            batch: self.rx.len(),
        }
    }

    /// Serves a port opened by [`PortOpener::open`]: it takes a free slot, becomes the TX port
    /// of its interface, and its fill ring gets its share of frames. Returns its slot.
    pub(crate) fn add_port(&mut self, new: NewPort, c: &mut IoCounters) -> usize {
        let NewPort { port, staged } = new;
        let ifindex = port.ifindex;
        let slot = match self.ports.iter().position(Option::is_none) {
            Some(slot) => {
                self.ports[slot] = Some(port);
                self.staged[slot] = staged;
                slot
            }
            None => {
                self.ports.push(Some(port));
                self.staged.push(staged);
                self.ports.len() - 1
            }
        };
        self.by_ifindex.entry(ifindex).or_insert(slot);
        self.refill(slot, 1, c);
        slot
    }

    /// Stops serving every port of `ifindex`: what their rings held returns to the free list
    /// (from `owner`) once the sockets are closed. Returns how many ports were removed.
    pub(crate) fn remove_ports(&mut self, ifindex: u32, c: &mut IoCounters) -> usize {
        let slots: Vec<usize> = (0..self.ports.len())
            .filter(|&p| {
                self.ports[p]
                    .as_ref()
                    .is_some_and(|port| port.ifindex == ifindex)
            })
            .collect();
        self.by_ifindex.remove(&ifindex);
        for &slot in &slots {
            self.reap_completions(slot, c);
            // Closing the socket ends the kernel's use of its rings and their frames.
            drop(self.ports[slot].take());
            let tag = slot_tag(slot);
            for chunk in 0..self.owner.len() {
                if self.owner[chunk] == tag {
                    self.owner[chunk] = 0;
                    self.free.push(self.templates[chunk]);
                }
            }
            if let Some(staged) = self.staged.get_mut(slot) {
                self.free.append(staged);
            }
        }
        // Another socket of the same interface index (a re-created one) keeps TX working.
        if let Some(p) = self
            .ports
            .iter()
            .position(|port| port.as_ref().is_some_and(|port| port.ifindex == ifindex))
        {
            self.by_ifindex.insert(ifindex, p);
        }
        slots.len()
    }

    /// Frames on the free list (tests and diagnostics).
    pub(crate) fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// Frames given to the ports' fill rings and not yet received back (tests and
    /// diagnostics): with [`Xsk::free_frames`] and nothing in flight, every frame.
    pub(crate) fn filled_frames(&self) -> usize {
        self.ports
            .iter()
            .flatten()
            .map(|p| p.in_fill as usize)
            .sum()
    }

    /// The kernel's drop counters of each socket (`XDP_STATISTICS`), in port order, written
    /// into `out` (resized only if its length differs).
    pub(crate) fn socket_stats(&self, out: &mut Vec<SocketStats>) {
        out.resize(self.ports.iter().flatten().count(), SocketStats::default());
        for (port, slot) in self.ports.iter().flatten().zip(out.iter_mut()) {
            if let Ok(s) = port.rx.fd().xdp_statistics() {
                *slot = SocketStats {
                    rx_dropped: s.rx_dropped(),
                    rx_invalid_descs: s.rx_invalid_descs(),
                    tx_invalid_descs: s.tx_invalid_descs(),
                    rx_ring_full: s.rx_ring_full(),
                    rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs(),
                    tx_ring_empty_descs: s.tx_ring_empty_descs(),
                };
            }
        }
    }

    /// Housekeeping of port `p` between batches: recycle TX completions, refill the fill ring
    /// (in batches of at least `refill_batch`), and kick TX descriptors the kernel has not
    /// consumed yet (copy mode sends at most its budget per `sendto`).
    #[inline]
    pub(crate) fn service(&mut self, p: usize, c: &mut IoCounters) {
        self.reap_completions(p, c);
        self.refill(p, self.refill_batch, c);
        if let Some(port) = self.port_mut(p) {
            if port.tx.needs_wakeup() && port.tx.nb_free_exact() < port.tx_size {
                kick_tx(port, c);
            }
        }
    }

    /// Moves completed TX frames of port `p` to the free list.
    #[inline]
    fn reap_completions(&mut self, p: usize, c: &mut IoCounters) {
        let Some(port) = self.ports.get_mut(p).and_then(Option::as_mut) else {
            return;
        };
        let room = self.free.capacity() - self.free.len();
        let ready = port.comp.nb_avail(port.comp_size) as usize;
        let n = ready.min(room);
        if n == 0 {
            return;
        }
        let old = self.free.len();
        // Within capacity (frames are conserved), so no allocation.
        self.free.resize(old + n, FrameDesc::default());
        // SAFETY: the completion ring returns frames of this UMEM that this worker put on the
        // TX ring of the same socket; once consumed the kernel is done with them and the free
        // list is their only owner.
        let got = unsafe { port.comp.consume(&mut self.free[old..]) };
        self.free.truncate(old + got);
        for d in &self.free[old..] {
            if let Some((chunk, _)) = self.region.locate_desc(d) {
                self.owner[chunk] = 0;
            }
        }
        c.tx_completed += got as u64;
    }

    /// Tops up port `p`'s fill ring from the free list when at least `min_batch` slots are
    /// free, as far as the free list allows.
    #[inline]
    fn refill(&mut self, p: usize, min_batch: usize, c: &mut IoCounters) {
        let Some(port) = self.ports.get_mut(p).and_then(Option::as_mut) else {
            return;
        };
        let room = port.fill_cap.saturating_sub(port.in_fill) as usize;
        let slots = (port.fill.nb_free(port.fill_size) as usize).min(room);
        if slots < min_batch {
            return;
        }
        let n = slots.min(self.free.len());
        if n == 0 {
            c.fill_starved += 1;
            return;
        }
        let start = self.free.len() - n;
        // SAFETY: these descriptors are frames of this UMEM on the free list, owned by no ring
        // and no view. The ring takes the first `got` of them and they are removed from the
        // free list right below, so nothing touches them until the RX ring returns them.
        let got = unsafe { port.fill.produce(&self.free[start..]) };
        port.in_fill += got as u32;
        let tag = slot_tag(p);
        for d in &self.free[start..start + got] {
            if let Some((chunk, _)) = self.region.locate_desc(d) {
                self.owner[chunk] = tag;
            }
        }
        self.free.drain(start..start + got);
        c.filled += got as u64;
        if port.fill.needs_wakeup() {
            c.fill_wakeups += 1;
            if port.fill.wakeup(port.rx.fd_mut(), 0).is_err() {
                c.wakeup_errors += 1;
            }
        }
    }

    /// Receives up to `max` frames on port `p`, hands them to `process` as frame views (with
    /// the port's interface index) and disposes of each by its verdict: to the TX ring of the
    /// socket on the verdict's interface (same UMEM: no copy), or back to the free list.
    /// With `keep`, each received frame is first offered to it (the handoff to its flow's
    /// owner): a frame it does not keep (it copied it elsewhere, or dropped it) is freed
    /// before `process` runs. Returns the number of frames received.
    #[inline]
    pub(crate) fn rx_batch<'v, F, K>(
        &mut self,
        p: usize,
        max: usize,
        c: &mut IoCounters,
        keep: Option<K>,
        process: F,
    ) -> usize
    where
        F: FnOnce(u32, &mut [Frame<UmemBuf>]) -> Verdicts<'v>,
        K: FnMut(u32, &[u8]) -> bool,
    {
        let Some(port) = self.ports.get_mut(p).and_then(Option::as_mut) else {
            return 0;
        };
        let max = max.min(self.rx.len());
        // SAFETY: the RX ring returns frames of this UMEM that this worker put on the same
        // socket's fill ring; consuming them ends the kernel's use and makes this batch their
        // only owner.
        let received = unsafe { port.rx.consume(&mut self.rx[..max]) };
        if received == 0 {
            if port.fill.needs_wakeup() {
                c.fill_wakeups += 1;
                if port.fill.wakeup(port.rx.fd_mut(), 0).is_err() {
                    c.wakeup_errors += 1;
                }
            }
            return 0;
        }
        let ifindex = port.ifindex;
        port.in_fill = port.in_fill.saturating_sub(received as u32);
        c.rx_frames += received as u64;
        c.rx_batches += 1;

        let mut kept = self.make_views(received, c);
        if let Some(keep) = keep {
            kept = self.keep_only(ifindex, kept, keep);
        }
        self.run_batch(ifindex, kept, c, process);
        received
    }

    /// Copies up to `max` frames that `take` hands out (another worker's frames, from its
    /// handoff ring, all of one interface) into free frames of this UMEM, at the offset the
    /// kernel receives at, then processes and disposes of them as [`Xsk::rx_batch`] does.
    /// `take` is given a sink to call with (interface, bytes) per frame; a frame that does not
    /// fit a chunk, or finds no free frame, is counted and skipped. Returns the frames taken.
    #[inline]
    pub(crate) fn rx_handed_off<'v, T, F>(
        &mut self,
        max: usize,
        c: &mut IoCounters,
        take: T,
        process: F,
    ) -> usize
    where
        T: FnOnce(usize, &mut dyn FnMut(u32, &[u8])) -> usize,
        F: FnOnce(u32, &mut [Frame<UmemBuf>]) -> Verdicts<'v>,
    {
        let max = max.min(self.rx.len());
        let mut n = 0;
        let mut ifindex = 0;
        let taken = take(max, &mut |i, bytes| {
            ifindex = i;
            match self.copy_in(bytes) {
                Some(desc) => {
                    if let Some(slot) = self.rx.get_mut(n) {
                        *slot = desc;
                        n += 1;
                    }
                }
                None => c.handoff_no_frame += 1,
            }
        });
        if n == 0 {
            return taken;
        }
        c.handoff_frames += n as u64;
        let kept = self.make_views(n, c);
        self.run_batch(ifindex, kept, c, process);
        taken
    }

    /// A free frame holding `bytes` at its receive offset, with its length set; `None` (the
    /// frame back on the free list, if one was taken) when none is free or `bytes` do not fit.
    fn copy_in(&mut self, bytes: &[u8]) -> Option<FrameDesc> {
        let mut desc = self.free.pop()?;
        // SAFETY: `desc` came off the free list: no ring and no view holds its chunk.
        let mut data = unsafe { self.umem.data_mut(&mut desc) };
        let mut cursor = data.cursor();
        cursor.set_pos(0);
        if std::io::Write::write_all(&mut cursor, bytes).is_err() {
            self.free.push(desc);
            return None;
        }
        Some(desc)
    }

    /// Keeps the first `kept` frames of the batch that `keep` keeps, in order, at the front of
    /// the batch; frees the others (after their views are gone). Returns how many stay.
    fn keep_only<K: FnMut(u32, &[u8]) -> bool>(
        &mut self,
        ifindex: u32,
        kept: usize,
        mut keep: K,
    ) -> usize {
        let mut stay = 0;
        for i in 0..kept {
            let keeps = self.views.get(i).is_some_and(|f| keep(ifindex, f.data()));
            if keeps {
                self.views.swap(stay, i);
                self.rx.swap(stay, i);
                stay += 1;
            }
        }
        // The handed-off frames' views end here, before their descriptors are freed.
        self.views.truncate(stay);
        for i in stay..kept {
            if let Some(&desc) = self.rx.get(i) {
                self.free.push(desc);
            }
        }
        stay
    }

    /// Processes the `kept` viewed frames of the batch (received on `ifindex`), then disposes
    /// of each by its verdict and flushes the TX rings.
    #[inline]
    fn run_batch<'v, F>(&mut self, ifindex: u32, kept: usize, c: &mut IoCounters, process: F)
    where
        F: FnOnce(u32, &mut [Frame<UmemBuf>]) -> Verdicts<'v>,
    {
        let verdicts = process(ifindex, &mut self.views);
        self.place();
        // From here on no view of any chunk of the batch exists.
        self.views.clear();
        for i in 0..kept {
            let (Some(&desc), Some(&placement)) = (self.rx.get(i), self.placements.get(i)) else {
                break;
            };
            self.dispose(desc, placement, verdicts.get(i), c);
        }
        for q in 0..self.ports.len() {
            self.flush_tx(q, c);
        }
    }

    /// Builds the views of the first `received` descriptors of `rx`, compacting away any the
    /// kernel should never return (outside the UMEM): those are counted and never reused.
    fn make_views(&mut self, received: usize, c: &mut IoCounters) -> usize {
        self.views.clear();
        let mut kept = 0;
        for i in 0..received {
            let Some(&desc) = self.rx.get(i) else { break };
            if let Some((chunk, _)) = self.region.locate_desc(&desc) {
                self.owner[chunk] = 0;
            }
            match self.region.view(&desc) {
                Some(frame) => {
                    self.rx[kept] = desc;
                    kept += 1;
                    self.views.push(frame);
                }
                None => c.rx_invalid += 1,
            }
        }
        kept
    }

    /// Records where each viewed frame's bytes are, while the views still exist.
    fn place(&mut self) {
        self.placements.clear();
        for (i, frame) in self.views.iter().enumerate() {
            let chunk_matches = self
                .rx
                .get(i)
                .and_then(|d| self.region.locate_desc(d))
                .is_some_and(|(chunk, _)| {
                    frame.buffer().ptr.as_ptr()
                        == self
                            .region
                            .base
                            .as_ptr()
                            .wrapping_add(chunk * self.region.frame_size)
                });
            self.placements.push(chunk_matches.then(|| Placement {
                head: frame.offset(),
                len: frame.len(),
            }));
        }
    }

    /// Disposes of `desc` by its `verdict`: staged for the TX ring of the verdict's interface
    /// (moving the packet back to the receive offset if it moved, and setting the descriptor's
    /// length), or returned to the free list, counted under the reason.
    #[inline]
    fn dispose(
        &mut self,
        mut desc: FrameDesc,
        placement: Option<Placement>,
        verdict: Option<Verdict>,
        c: &mut IoCounters,
    ) {
        let Some(Placement { head, len }) = placement else {
            c.view_mismatch += 1;
            self.free.push(desc);
            return;
        };
        let port = match verdict {
            Some(Verdict::Tx { ifindex }) => match self.by_ifindex.get(&ifindex) {
                Some(&port) => port,
                None => {
                    c.tx_no_port += 1;
                    self.free.push(desc);
                    return;
                }
            },
            Some(Verdict::Pass) => {
                c.pass_dropped += 1;
                self.free.push(desc);
                return;
            }
            Some(Verdict::Drop(_) | Verdict::Pending) | None => {
                c.dropped += 1;
                self.free.push(desc);
                return;
            }
        };
        let Some((chunk, rx_offset)) = self.region.locate_desc(&desc) else {
            return; // cannot happen: views exist only for descriptors inside the UMEM
        };
        if head != rx_offset {
            if rx_offset + len > self.region.frame_size {
                c.realign_too_long += 1;
                self.free.push(desc);
                return;
            }
            // SAFETY: the batch owns `desc` and the views were dropped before disposal.
            let bytes = unsafe { self.region.chunk_mut(chunk) };
            bytes.copy_within(head..head + len, rx_offset);
            c.realigned += 1;
        }
        // SAFETY: `desc` is a frame of this UMEM owned by the batch (no ring, no view).
        unsafe { self.umem.data_mut(&mut desc) }
            .cursor()
            .set_pos(len);
        match self.staged.get_mut(port) {
            Some(staged) => staged.push(desc),
            None => self.free.push(desc),
        }
    }

    /// Produces port `q`'s staged descriptors to its TX ring (as many as fit; the rest are
    /// recycled and counted) and wakes the kernel if it asks to be.
    #[inline]
    fn flush_tx(&mut self, q: usize, c: &mut IoCounters) {
        let (Some(Some(port)), Some(staged)) = (self.ports.get_mut(q), self.staged.get_mut(q))
        else {
            return;
        };
        if staged.is_empty() {
            return;
        }
        let fits = (port.tx.nb_free(staged.len() as u32) as usize).min(staged.len());
        // SAFETY: every staged descriptor is a frame of this UMEM owned by this batch (no
        // ring, no view), with its length set. The ring takes the first `sent`; all staged
        // descriptors leave `staged` below (the rest to the free list), so the sent ones are
        // not touched until the completion ring returns them.
        let sent = unsafe { port.tx.produce(&staged[..fits]) };
        let tag = slot_tag(q);
        for d in &staged[..sent] {
            if let Some((chunk, _)) = self.region.locate_desc(d) {
                self.owner[chunk] = tag;
            }
        }
        c.tx_frames += sent as u64;
        c.tx_ring_full += (staged.len() - sent) as u64;
        self.free.extend(staged.drain(..).skip(sent));
        if sent > 0 && port.tx.needs_wakeup() {
            kick_tx(port, c);
        }
    }
}

/// The `owner` tag of port slot `p` (slots are fewer than `u16::MAX`: checked at start).
#[inline]
fn slot_tag(p: usize) -> u16 {
    u16::try_from(p + 1).unwrap_or(u16::MAX)
}

impl Port {
    fn info(&self) -> SocketInfo {
        SocketInfo {
            spec: self.spec.clone(),
            ifindex: self.ifindex,
            fd: self.rx.fd().as_raw_fd(),
            tx_budget: self.tx_budget,
        }
    }
}

/// A socket opened on a worker's UMEM by another thread (the control thread), on its way to
/// the worker ([`Xsk::add_port`]) with the TX staging space it needs, so the worker allocates
/// nothing for it.
#[derive(Debug)]
pub struct NewPort {
    port: Port,
    staged: Vec<FrameDesc>,
}

impl NewPort {
    /// What to register in the interface's XSKMAP.
    pub fn info(&self) -> SocketInfo {
        self.port.info()
    }
}

/// What a running worker is asked to change, sent to it through [`PortChanges`].
#[derive(Debug)]
pub enum PortChange {
    /// Boxed: the message is a pointer's size, whatever a socket holds.
    Add(Box<NewPort>),
    /// Stop serving every socket of this interface index.
    Remove { ifindex: u32 },
}

/// The sending end the worker's owner keeps ([`crate::io::Worker::port_changes`]).
pub type PortChanges = mpsc::Sender<PortChange>;

/// Opens sockets on a worker's UMEM, from any thread; the worker keeps running meanwhile.
#[derive(Clone, Debug)]
pub struct PortOpener {
    umem: Umem,
    socket_config: SocketConfig,
    cfg: XskConfig,
    batch: usize,
}

// SAFETY: `Umem` is an `Arc<Mutex<..>>` over the mapping plus the region handle (both `Send`
// and `Sync` in xsk-rs); socket creation takes that mutex. The other fields are plain data.
unsafe impl Send for PortOpener {}

impl PortOpener {
    /// Opens the socket of `spec` (the interface must exist in this thread's namespace) with a
    /// hot-added port's share of frames.
    pub fn open(&self, spec: &PortSpec) -> Result<NewPort, IoError> {
        let ifindex = sys::ifindex(&spec.ifname).ok_or_else(|| IoError::NoSuchInterface {
            ifname: spec.ifname.clone(),
        })?;
        let cap = (self.cfg.hot_frames_per_port / 2).clamp(1, self.cfg.fill_size);
        let port = open_port(
            &self.umem,
            self.socket_config,
            &self.cfg,
            spec,
            ifindex,
            cap,
        )?;
        Ok(NewPort {
            port,
            staged: Vec::with_capacity(self.batch),
        })
    }
}

/// `sendto` on the socket: in copy mode this is what transmits (up to the TX budget).
#[inline]
fn kick_tx(port: &mut Port, c: &mut IoCounters) {
    c.tx_wakeups += 1;
    if port.tx.wakeup().is_err() {
        c.wakeup_errors += 1;
    }
}

fn umem_config(cfg: &XskConfig) -> Result<UmemConfig, IoError> {
    let bad = |field, reason: String| IoError::Config { field, reason };
    let frame_size = FrameSize::new(cfg.frame_size).map_err(|e| {
        bad(
            "frame_size",
            format!("{e}: use a power of two of at least 2048 (4096 is the usual)"),
        )
    })?;
    let fill = queue_size("fill_size", cfg.fill_size)?;
    let comp = queue_size("comp_size", cfg.comp_size)?;
    UmemConfig::builder()
        .frame_size(frame_size)
        .fill_queue_size(fill)
        .comp_queue_size(comp)
        .frame_headroom(cfg.frame_headroom)
        .build()
        .map_err(|e| {
            bad(
                "frame_headroom",
                format!(
                    "{e}: the headroom plus the kernel's 256 bytes must leave room for a frame"
                ),
            )
        })
}

fn queue_size(field: &'static str, size: u32) -> Result<QueueSize, IoError> {
    QueueSize::new(size).map_err(|e| IoError::Config {
        field,
        reason: format!("{e}: ring sizes must be powers of two (2048 or 4096 are usual)"),
    })
}

fn frame_count(cfg: &XskConfig, ports: usize) -> Result<NonZeroU32, IoError> {
    let hot = cfg.hot_frames_per_port.checked_mul(cfg.hot_ports);
    u32::try_from(ports)
        .ok()
        .and_then(|p| cfg.frames_per_port.checked_mul(p))
        .and_then(|f| f.checked_add(hot?))
        .and_then(NonZeroU32::new)
        .ok_or(IoError::Config {
            field: "frames_per_port",
            reason: format!(
                "{} frames per port times {ports} ports is zero or overflows: use 1..=65536",
                cfg.frames_per_port
            ),
        })
}

fn socket_config(cfg: &XskConfig) -> Result<SocketConfig, IoError> {
    let mut bind = BindFlags::XDP_USE_NEED_WAKEUP;
    match cfg.mode {
        BindMode::Auto => {}
        BindMode::Copy => bind |= BindFlags::XDP_COPY,
        BindMode::ZeroCopy => bind |= BindFlags::XDP_ZEROCOPY,
    }
    Ok(SocketConfig::builder()
        .rx_queue_size(queue_size("rx_size", cfg.rx_size)?)
        .tx_queue_size(queue_size("tx_size", cfg.tx_size)?)
        // The XDP program is xdp-redirect's, attached by the caller: libxdp must not load its
        // own (nor detach anything when the socket closes).
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(bind)
        .build())
}

/// Opens the socket of one port on the shared UMEM, with its own fill and completion rings.
fn open_port(
    umem: &Umem,
    config: SocketConfig,
    cfg: &XskConfig,
    spec: &PortSpec,
    ifindex: u32,
    fill_cap: u32,
) -> Result<Port, IoError> {
    let name = CString::new(spec.ifname.as_str()).map_err(|_| IoError::NoSuchInterface {
        ifname: spec.ifname.clone(),
    })?;
    let socket_error = |source| IoError::Socket {
        ifname: spec.ifname.clone(),
        queue: spec.queue,
        source,
    };
    // SAFETY: xsk-rs requires XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD when the (interface, queue)
    // pair is already bound from this UMEM; it is always set here (and duplicates are
    // rejected before any socket is opened).
    let (tx, rx, rings) = unsafe { Socket::new(config, umem, &Interface::new(name), spec.queue) }
        .map_err(socket_error)?;
    let (fill, comp) = rings.ok_or_else(|| IoError::SharedContext {
        ifname: spec.ifname.clone(),
        queue: spec.queue,
    })?;
    let tx_budget = cfg
        .tx_budget
        .map(|budget| budget.min(cfg.tx_size))
        .filter(|&budget| sys::set_tx_budget(rx.fd().as_raw_fd(), budget).is_ok());
    Ok(Port {
        spec: spec.clone(),
        ifindex,
        tx,
        rx,
        fill,
        comp,
        tx_size: cfg.tx_size,
        fill_size: cfg.fill_size,
        comp_size: cfg.comp_size,
        tx_budget,
        fill_cap,
        in_fill: 0,
    })
}
