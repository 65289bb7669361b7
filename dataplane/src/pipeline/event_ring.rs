//! The per-worker lossy event ring and the worker's side of it, [`EventSink`].
//!
//! One ring per worker, single producer (the worker) and single consumer (the monitor thread),
//! both enforced by the types: [`event_ring`] returns one [`RingProducer`] and one
//! [`RingConsumer`], neither `Clone`, each method taking `&mut self`. The ring is allocated
//! once; pushing copies into a slot, or, when the ring is full, drops the event and counts it
//! (`lost`): never blocks, never allocates, never makes a syscall.
//!
//! [`EventSink`] decides what to push: every drop, one in `policy_sample` admitted new flows,
//! every forwarded frame when traces are on; and nothing at all unless someone listens (one
//! relaxed atomic load per batch, [`EventSink::listening`]). While someone listens, it keeps
//! the first bytes of each frame of the batch as received ([`EventSink::keep_received`]),
//! before the stages rewrite them (MACs, NAT, encapsulation): an event carries the frame as it
//! arrived, so a capture of forwarded frames replays (`flagella replay`) as it was seen.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::event::{Event, EventKind, Origin, CAPTURE_BYTES};
use super::meta::{CtMark, PacketMeta, Verdict};
use crate::frame::Frame;

/// Events a worker's ring holds: a few batches' worth of drops while the monitor thread sleeps.
pub const DEFAULT_RING_EVENTS: usize = 4096;

/// The shared part of a ring: its slots and the two positions.
struct Ring {
    slots: Box<[UnsafeCell<Event>]>,
    mask: usize,
    /// Next slot the producer writes (only the producer stores it).
    head: AtomicUsize,
    /// Next slot the consumer reads (only the consumer stores it).
    tail: AtomicUsize,
    /// Events dropped because the ring was full.
    lost: AtomicU64,
}

// SAFETY: a slot is written only by the one producer while it is outside `tail..head` (not
// visible to the consumer) and read only by the one consumer while inside it; `head` is
// published with Release after the write and loaded with Acquire before the read, `tail`
// likewise the other way, so no slot is ever accessed by both threads at once.
unsafe impl Sync for Ring {}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.slots.len())
            .field("lost", &self.lost.load(Ordering::Relaxed))
            .finish()
    }
}

/// The worker's end of a ring.
#[derive(Debug)]
pub struct RingProducer(Arc<Ring>);

/// The monitor thread's end of a ring.
#[derive(Debug)]
pub struct RingConsumer(Arc<Ring>);

/// A ring of at least `capacity` events (rounded up to a power of two, at least 2).
pub fn event_ring(capacity: usize) -> (RingProducer, RingConsumer) {
    let capacity = capacity.max(2).next_power_of_two();
    let ring = Arc::new(Ring {
        slots: (0..capacity)
            .map(|_| UnsafeCell::new(Event::EMPTY))
            .collect(),
        mask: capacity - 1,
        head: AtomicUsize::new(0),
        tail: AtomicUsize::new(0),
        lost: AtomicU64::new(0),
    });
    (RingProducer(Arc::clone(&ring)), RingConsumer(ring))
}

impl RingProducer {
    /// Fills the next free slot with `fill` and publishes it; when the ring is full, counts
    /// the event as lost instead and returns false.
    #[inline]
    pub fn push_with(&mut self, fill: impl FnOnce(&mut Event)) -> bool {
        let ring = &*self.0;
        let head = ring.head.load(Ordering::Relaxed);
        let tail = ring.tail.load(Ordering::Acquire);
        if head.wrapping_sub(tail) > ring.mask {
            ring.lost.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let slot = &ring.slots[head & ring.mask];
        // SAFETY: `head` is outside `tail..head`, so the consumer does not read this slot until
        // the Release store below; we are the only producer (`&mut self`, not `Clone`).
        fill(unsafe { &mut *slot.get() });
        ring.head.store(head.wrapping_add(1), Ordering::Release);
        true
    }
}

impl RingConsumer {
    /// The oldest event, if any.
    pub fn pop(&mut self) -> Option<Event> {
        let ring = &*self.0;
        let tail = ring.tail.load(Ordering::Relaxed);
        let head = ring.head.load(Ordering::Acquire);
        if tail == head {
            return None;
        }
        // SAFETY: `tail` is inside `tail..head`: published by the producer (Acquire above) and
        // not written again until the Release store below gives it back.
        let event = unsafe { *ring.slots[tail & ring.mask].get() };
        ring.tail.store(tail.wrapping_add(1), Ordering::Release);
        Some(event)
    }

    /// Events dropped so far because the ring was full.
    pub fn lost(&self) -> u64 {
        self.0.lost.load(Ordering::Relaxed)
    }
}

/// What a worker reports besides drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventConfig {
    /// One policy-verdict event per this many admitted new flows (0: none).
    pub policy_sample: u32,
    /// A trace event for every forwarded or passed frame (costly: for debugging).
    pub trace: bool,
}

impl Default for EventConfig {
    fn default() -> Self {
        EventConfig {
            policy_sample: 1,
            trace: false,
        }
    }
}

/// A worker's event output: its ring, the shared "someone listens" switch, what to report.
pub struct EventSink {
    ring: RingProducer,
    listening: Arc<AtomicBool>,
    cfg: EventConfig,
    /// Admitted new flows since the last policy-verdict event.
    since_sample: u32,
    /// The current batch's frames as received (the first `kept`), allocated once.
    received: Box<[Received]>,
    kept: usize,
}

/// The first bytes of one frame as it was received, and its whole length.
#[derive(Clone, Copy)]
struct Received {
    len: u32,
    captured: u16,
    bytes: [u8; CAPTURE_BYTES],
}

impl Received {
    const EMPTY: Received = Received {
        len: 0,
        captured: 0,
        bytes: [0; CAPTURE_BYTES],
    };

    #[inline]
    fn keep(&mut self, frame: &[u8]) {
        let captured = frame.len().min(CAPTURE_BYTES);
        self.len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        self.captured = captured as u16;
        self.bytes[..captured].copy_from_slice(&frame[..captured]);
    }
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink").field("cfg", &self.cfg).finish()
    }
}

impl EventSink {
    pub fn new(ring: RingProducer, listening: Arc<AtomicBool>, cfg: EventConfig) -> Self {
        EventSink {
            ring,
            listening,
            cfg,
            since_sample: 0,
            received: vec![Received::EMPTY; super::MAX_BATCH].into_boxed_slice(),
            kept: 0,
        }
    }

    /// Keeps the first bytes of each of `frames` (one batch, before any stage ran) for the
    /// events [`record`](Self::record) pushes for them. A copy per frame, paid only while
    /// someone listens.
    #[inline]
    pub fn keep_received<B: AsRef<[u8]> + AsMut<[u8]>>(&mut self, frames: &[Frame<B>]) {
        self.kept = 0;
        for (slot, f) in self.received.iter_mut().zip(frames) {
            slot.keep(f.data());
            self.kept += 1;
        }
    }

    /// Whether anyone listens: the one load a batch pays when no one does.
    #[inline]
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Pushes the events of one finished batch (`meta[i]` describes `frames[i]`).
    #[inline]
    pub fn record<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        frames: &[Frame<B>],
        meta: &[PacketMeta],
        origin: &Origin,
    ) {
        for (i, (f, m)) in frames.iter().zip(meta).enumerate() {
            if let Some(kind) = self.kind_of(m) {
                // The frame as received when it was kept, else (a caller that kept none) as
                // it is now.
                let received = self.received[..self.kept].get(i);
                self.ring.push_with(|e| {
                    e.capture(kind, m, f.data(), origin);
                    if let Some(r) = received {
                        e.replace_frame(&r.bytes[..usize::from(r.captured)], r.len);
                    }
                });
            }
        }
        self.kept = 0;
    }

    /// The event a frame's fate calls for, if any.
    #[inline]
    fn kind_of(&mut self, m: &PacketMeta) -> Option<EventKind> {
        match m.verdict {
            Verdict::Drop(_) => Some(EventKind::Drop),
            Verdict::Pending => None,
            Verdict::Tx { .. } | Verdict::Pass => {
                if m.ct == CtMark::New && self.sampled() {
                    Some(EventKind::PolicyVerdict)
                } else if self.cfg.trace {
                    Some(EventKind::Trace)
                } else {
                    None
                }
            }
        }
    }

    /// Counts one admitted new flow; true for every `policy_sample`-th.
    #[inline]
    fn sampled(&mut self) -> bool {
        if self.cfg.policy_sample == 0 {
            return false;
        }
        self.since_sample += 1;
        if self.since_sample >= self.cfg.policy_sample {
            self.since_sample = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::DropReason;

    fn event_with_port(port: u16) -> impl FnOnce(&mut Event) {
        move |e| e.tuple.dport = port
    }

    #[test]
    fn a_full_ring_drops_and_counts_the_new_events_and_keeps_the_old_ones() {
        let (mut tx, mut rx) = event_ring(4);
        for port in 0..10 {
            tx.push_with(event_with_port(port));
        }
        assert_eq!(rx.lost(), 6);
        let ports: Vec<u16> = std::iter::from_fn(|| rx.pop())
            .map(|e| e.tuple.dport)
            .collect();
        assert_eq!(ports, [0, 1, 2, 3]);
        assert!(tx.push_with(event_with_port(99)), "room again once read");
        assert_eq!(rx.pop().map(|e| e.tuple.dport), Some(99));
        assert!(rx.pop().is_none());
    }

    #[test]
    fn producer_and_consumer_threads_see_every_event_in_order_or_count_it_lost() {
        let (mut tx, mut rx) = event_ring(64);
        const N: u64 = 200_000;
        let producer = std::thread::spawn(move || {
            for i in 0..N {
                tx.push_with(|e| e.time_ns = i);
            }
        });
        let mut seen = 0u64;
        let mut last = None;
        loop {
            let done = producer.is_finished();
            match rx.pop() {
                Some(e) => {
                    assert!(last < Some(e.time_ns), "in order");
                    last = Some(e.time_ns);
                    seen += 1;
                }
                None if done => break,
                None => std::thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(seen + rx.lost(), N, "every event read or counted lost");
    }

    #[test]
    fn a_sink_reports_every_drop_and_samples_admitted_new_flows() {
        let (tx, mut rx) = event_ring(64);
        let listening = Arc::new(AtomicBool::new(true));
        let cfg = EventConfig {
            policy_sample: 2,
            trace: false,
        };
        let mut sink = EventSink::new(tx, Arc::clone(&listening), cfg);
        let mut frames: Vec<Frame<Vec<u8>>> = (0..6)
            .map(|_| Frame::from_packet(&[0xab; 200], 0, 0))
            .collect();
        let mut meta = vec![PacketMeta::EMPTY; 6];
        meta[0].verdict = Verdict::Drop(DropReason::PolicyDeniedIngress);
        meta[0].drop_stage = crate::pipeline::Stage::Policy as u8;
        for m in &mut meta[1..5] {
            m.verdict = Verdict::Tx { ifindex: 3 };
            m.ct = CtMark::New;
        }
        meta[5].verdict = Verdict::Tx { ifindex: 3 };
        meta[5].ct = CtMark::Established;
        let origin = Origin {
            ifindex: 7,
            from_pod: true,
            now: 42,
        };
        frames.truncate(6);
        sink.record(&frames, &meta, &origin);
        let events: Vec<Event> = std::iter::from_fn(|| rx.pop()).collect();
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Drop,
                EventKind::PolicyVerdict,
                EventKind::PolicyVerdict
            ]
        );
        let drop = &events[0];
        assert_eq!(drop.reason(), Some(DropReason::PolicyDeniedIngress));
        assert_eq!(drop.stage, Some(crate::pipeline::Stage::Policy));
        assert_eq!(drop.direction(), "ingress");
        assert_eq!(
            (drop.ingress_ifindex, drop.time_ns, drop.frame_len),
            (7, 42, 200)
        );
        assert_eq!(
            drop.frame(),
            &[0xab; crate::pipeline::event::CAPTURE_BYTES][..]
        );
    }

    #[test]
    fn an_event_carries_the_frame_as_received_not_as_the_stages_rewrote_it() {
        let (tx, mut rx) = event_ring(8);
        let cfg = EventConfig {
            policy_sample: 0,
            trace: true,
        };
        let mut sink = EventSink::new(tx, Arc::new(AtomicBool::new(true)), cfg);
        let mut frames = vec![
            Frame::from_packet(&[0xab; 200], 0, 0),
            Frame::from_packet(&[0x11; 60], 0, 0),
        ];
        let mut meta = vec![PacketMeta::EMPTY; 2];
        for m in &mut meta {
            m.verdict = Verdict::Tx { ifindex: 3 };
        }
        let origin = Origin {
            ifindex: 7,
            from_pod: true,
            now: 1,
        };
        sink.keep_received(&frames);
        // The stages rewrite the headers (MACs, NAT) of what they forward.
        for f in &mut frames {
            f.data_mut()[..12].fill(0xcd);
        }
        sink.record(&frames, &meta, &origin);
        let events: Vec<Event> = std::iter::from_fn(|| rx.pop()).collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].frame(), &[0xab; CAPTURE_BYTES][..]);
        assert_eq!(events[0].frame_len, 200);
        assert_eq!(events[1].frame(), &[0x11; 60][..]);
        assert_eq!(events[1].frame_len, 60);

        // A batch nothing was kept for: its frames as they are (what was kept is not reused).
        sink.record(&frames[..1], &meta[..1], &origin);
        let event = rx.pop().unwrap();
        assert_eq!(&event.frame()[..12], &[0xcd; 12]);
    }
}
