//! The handoff rings of a set of workers, and a worker's decision per received frame.

use super::ring::{ring, Consumer, Producer, PushError};
use crate::pipeline::flow_owner::FlowOwner;
use crate::tables::Tables;

/// One worker's ends of the mesh: an outbox to every other worker, an inbox from each.
#[derive(Debug)]
pub struct Links {
    index: usize,
    /// By destination worker; `None` at this worker's own index.
    outboxes: Vec<Option<Producer>>,
    /// From every other worker.
    inboxes: Vec<Consumer>,
}

/// The rings between `workers` workers: one per ordered pair, `capacity` slots of `slot_bytes`
/// each (all allocated now), returned as each worker's [`Links`], in worker order.
pub fn mesh(workers: usize, capacity: usize, slot_bytes: usize) -> Vec<Links> {
    let mut links: Vec<Links> = (0..workers)
        .map(|index| Links {
            index,
            outboxes: (0..workers).map(|_| None).collect(),
            inboxes: Vec::with_capacity(workers.saturating_sub(1)),
        })
        .collect();
    for from in 0..workers {
        for to in (0..workers).filter(|&to| to != from) {
            let (tx, rx) = ring(capacity, slot_bytes);
            links[from].outboxes[to] = Some(tx);
            links[to].inboxes.push(rx);
        }
    }
    links
}

impl Links {
    pub fn index(&self) -> usize {
        self.index
    }

    /// The rings frames from the other workers arrive on.
    pub fn inboxes(&mut self) -> &mut [Consumer] {
        &mut self.inboxes
    }
}

/// What one worker's handoff did, as `status` shows it per worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HandoffCounters {
    /// Frames this worker received for a flow another worker owns, copied to it.
    pub handed_off: u64,
    /// Frames other workers handed to this one (processed here).
    pub taken_over: u64,
    /// Frames dropped because the owner's inbox was full (the owner is behind).
    pub ring_full: u64,
    /// Frames dropped because they were longer than a ring slot.
    pub too_long: u64,
}

/// A worker's side of the handoff: who owns a flow, and the rings to the owners.
#[derive(Debug)]
pub struct Handoff {
    owner: FlowOwner,
    links: Links,
    /// The inbox `take_over` looks at first (rotates, so no inbox starves the others).
    next_inbox: usize,
    pub counters: HandoffCounters,
}

/// What to do with a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// This worker owns its flow (or it belongs to none): process it here.
    Keep,
    /// Copied to its owner: free it here.
    HandedOff,
    /// Its owner could not take it (counted): free it here.
    Dropped,
}

impl Handoff {
    /// `links` must come from a [`mesh`] of `owner.workers()` workers.
    pub fn new(owner: FlowOwner, links: Links) -> Handoff {
        Handoff {
            owner,
            links,
            next_inbox: 0,
            counters: HandoffCounters::default(),
        }
    }

    pub fn index(&self) -> usize {
        self.links.index
    }

    /// How many workers hand frames to this one.
    pub fn inboxes(&self) -> usize {
        self.links.inboxes.len()
    }

    /// Keeps `frame` (received on `ifindex`) or copies it to its owner's inbox.
    #[inline]
    pub fn dispatch(&mut self, t: &Tables, ifindex: u32, frame: &[u8]) -> Dispatch {
        let Some(owner) = self.owner.owner(t, frame) else {
            return Dispatch::Keep;
        };
        let Some(Some(outbox)) = self.links.outboxes.get_mut(owner) else {
            return Dispatch::Keep; // this worker's own index (or a mesh of another size)
        };
        match outbox.push(ifindex, frame) {
            Ok(()) => {
                self.counters.handed_off += 1;
                Dispatch::HandedOff
            }
            Err(PushError::Full) => {
                self.counters.ring_full += 1;
                Dispatch::Dropped
            }
            Err(PushError::TooLong) => {
                self.counters.too_long += 1;
                Dispatch::Dropped
            }
        }
    }

    /// Takes over up to `max` frames that other workers handed to this one, all received on
    /// one interface (the pipeline processes a batch per ingress interface): `take` gets the
    /// interface and each frame's bytes. Returns how many were taken.
    #[inline]
    pub fn take_over(&mut self, max: usize, mut take: impl FnMut(u32, &[u8])) -> usize {
        let inboxes = self.links.inboxes.len();
        let mut taken = 0;
        for k in 0..inboxes {
            let i = (self.next_inbox + k) % inboxes;
            let Some(inbox) = self.links.inboxes.get_mut(i) else {
                break;
            };
            let Some(ifindex) = inbox.peek_ifindex() else {
                continue;
            };
            while taken < max && inbox.peek_ifindex() == Some(ifindex) {
                if inbox.pop(|i, bytes| take(i, bytes)).is_some() {
                    taken += 1;
                }
            }
            self.next_inbox = (i + 1) % inboxes;
            break;
        }
        self.counters.taken_over += taken as u64;
        taken
    }
}
