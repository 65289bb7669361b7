//! A single-producer single-consumer ring of fixed-size frame slots, allocated once.
//!
//! One worker (the producer) copies a frame it received but does not own into the next free
//! slot; the owner (the consumer) reads it out. Contract:
//! - **No lock, no allocation, no system call** on `push`/`pop`: two indices, each written by
//!   one side only (Release) and read by the other (Acquire), each on its own cache line; each
//!   side caches the other's index and reloads it only when the ring looks full (producer) or
//!   empty (consumer), so the two cores share a line only when they must.
//! - **Every pushed frame is popped exactly once, in order**; a full ring refuses the push
//!   (the caller counts and drops the frame, as a full NIC queue would) and a frame longer than
//!   a slot is refused too. The stress test below (and `tests/handoff_stress.rs`) checks it
//!   with threads.
//! - The two ends are not `Clone` and take `&mut self`, so there is exactly one producer and
//!   one consumer however the ends move between threads.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Why a frame was not handed off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// Every slot is taken: the consumer is behind.
    Full,
    /// The frame is longer than a slot.
    TooLong,
}

/// One slot: a frame's interface of arrival, its length and its bytes (`slot_bytes` long).
struct Slot {
    ifindex: u32,
    len: usize,
    bytes: Box<[u8]>,
}

/// An index written by one side, alone on its cache line (no false sharing with the other).
#[repr(align(128))]
struct Padded(AtomicUsize);

struct Shared {
    /// Next slot the consumer reads (written by the consumer only).
    head: Padded,
    /// Next slot the producer writes (written by the producer only).
    tail: Padded,
    slots: Box<[UnsafeCell<Slot>]>,
    /// `slots.len() - 1` (the length is a power of two).
    mask: usize,
}

// SAFETY: a slot is accessed by the producer only while `tail - head < capacity` says it is
// free (after an Acquire load of `head`, which orders the consumer's reads of it before), and by
// the consumer only while `head < tail` says it is filled (after an Acquire load of `tail`,
// which orders the producer's writes before). The indices are atomics. So no slot is accessed
// by both sides at once.
unsafe impl Sync for Shared {}
// SAFETY: the slots are plain bytes; see `Sync`.
unsafe impl Send for Shared {}

/// The sending end: the worker that received the frame.
pub struct Producer {
    shared: Arc<Shared>,
    tail: usize,
    /// The consumer's `head` as last seen (it only grows, so a stale value errs on "full").
    head_cache: usize,
    slot_bytes: usize,
}

/// The receiving end: the worker that owns the frame's flow.
pub struct Consumer {
    shared: Arc<Shared>,
    head: usize,
    /// The producer's `tail` as last seen (it only grows, so a stale value errs on "empty").
    tail_cache: usize,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.shared.slots.len())
            .field("tail", &self.tail)
            .finish()
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.shared.slots.len())
            .field("head", &self.head)
            .finish()
    }
}

/// A ring of `capacity` slots (rounded up to a power of two, at least 2) of `slot_bytes`
/// bytes each, all allocated now.
pub fn ring(capacity: usize, slot_bytes: usize) -> (Producer, Consumer) {
    let capacity = capacity.max(2).next_power_of_two();
    let slots = (0..capacity)
        .map(|_| {
            UnsafeCell::new(Slot {
                ifindex: 0,
                len: 0,
                bytes: vec![0u8; slot_bytes].into_boxed_slice(),
            })
        })
        .collect();
    let shared = Arc::new(Shared {
        head: Padded(AtomicUsize::new(0)),
        tail: Padded(AtomicUsize::new(0)),
        slots,
        mask: capacity - 1,
    });
    (
        Producer {
            shared: Arc::clone(&shared),
            tail: 0,
            head_cache: 0,
            slot_bytes,
        },
        Consumer {
            shared,
            head: 0,
            tail_cache: 0,
        },
    )
}

impl Producer {
    /// Copies `frame` (received on `ifindex`) into the next slot and publishes it.
    #[inline]
    pub fn push(&mut self, ifindex: u32, frame: &[u8]) -> Result<(), PushError> {
        if frame.len() > self.slot_bytes {
            return Err(PushError::TooLong);
        }
        let capacity = self.shared.slots.len();
        if self.tail - self.head_cache == capacity {
            self.head_cache = self.shared.head.0.load(Ordering::Acquire);
            if self.tail - self.head_cache == capacity {
                return Err(PushError::Full);
            }
        }
        let cell = &self.shared.slots[self.tail & self.shared.mask];
        // SAFETY: `tail - head < capacity`, so the consumer has released this slot (the Acquire
        // load of `head` orders its reads before these writes) and will not read it before the
        // Release store of `tail` below. See `Shared`'s `Sync`.
        let slot = unsafe { &mut *cell.get() };
        slot.ifindex = ifindex;
        slot.len = frame.len();
        if let Some(dst) = slot.bytes.get_mut(..frame.len()) {
            dst.copy_from_slice(frame);
        }
        self.tail += 1;
        self.shared.tail.0.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// The longest frame a slot holds.
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }
}

impl Consumer {
    /// The interface of the oldest frame waiting, if any (to group frames by interface).
    #[inline]
    pub fn peek_ifindex(&mut self) -> Option<u32> {
        if !self.refresh() {
            return None;
        }
        // SAFETY: `head < tail`: the slot is filled and the producer will not write it before
        // the Release store of `head` in `pop`. See `Shared`'s `Sync`.
        Some(unsafe { &*self.shared.slots[self.head & self.shared.mask].get() }.ifindex)
    }

    /// Hands the oldest frame (its interface and bytes) to `read`, then frees its slot.
    /// `None` when the ring is empty.
    #[inline]
    pub fn pop<R>(&mut self, read: impl FnOnce(u32, &[u8]) -> R) -> Option<R> {
        if !self.refresh() {
            return None;
        }
        let cell = &self.shared.slots[self.head & self.shared.mask];
        let out = {
            // SAFETY: as in `peek_ifindex`; the reference ends before the slot is released.
            let slot = unsafe { &*cell.get() };
            read(slot.ifindex, slot.bytes.get(..slot.len).unwrap_or(&[]))
        };
        self.head += 1;
        self.shared.head.0.store(self.head, Ordering::Release);
        Some(out)
    }

    /// Frames waiting (as far as this end knows without reloading the producer's index).
    pub fn len(&self) -> usize {
        self.tail_cache - self.head
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when a frame is waiting; reloads the producer's index only when none was known.
    #[inline]
    fn refresh(&mut self) -> bool {
        if self.head == self.tail_cache {
            self.tail_cache = self.shared.tail.0.load(Ordering::Acquire);
        }
        self.head != self.tail_cache
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_out_in_order_with_their_interface() {
        let (mut tx, mut rx) = ring(4, 64);
        tx.push(7, b"one").unwrap();
        tx.push(9, b"two!").unwrap();
        assert_eq!(rx.peek_ifindex(), Some(7));
        assert_eq!(rx.pop(|i, b| (i, b.to_vec())), Some((7, b"one".to_vec())));
        assert_eq!(rx.pop(|i, b| (i, b.to_vec())), Some((9, b"two!".to_vec())));
        assert_eq!(rx.pop(|_, _| ()), None);
        assert_eq!(rx.peek_ifindex(), None);
    }

    #[test]
    fn a_full_ring_refuses_and_recovers() {
        let (mut tx, mut rx) = ring(3, 8); // rounded up to 4
        for i in 0..4 {
            tx.push(i, &[i as u8]).unwrap();
        }
        assert_eq!(tx.push(9, b"x"), Err(PushError::Full));
        assert_eq!(rx.pop(|i, _| i), Some(0));
        tx.push(4, b"y").unwrap();
        let got: Vec<u32> = std::iter::from_fn(|| rx.pop(|i, _| i)).collect();
        assert_eq!(got, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_frame_longer_than_a_slot_is_refused() {
        let (mut tx, mut rx) = ring(2, 4);
        assert_eq!(tx.push(1, b"12345"), Err(PushError::TooLong));
        tx.push(1, b"1234").unwrap();
        assert_eq!(rx.pop(|_, b| b.len()), Some(4));
    }

    #[test]
    fn two_threads_lose_and_duplicate_nothing() {
        const N: u32 = 200_000;
        let (mut tx, mut rx) = ring(64, 8);
        let producer = std::thread::spawn(move || {
            let mut i = 0u32;
            while i < N {
                if tx.push(i, &i.to_le_bytes()).is_ok() {
                    i += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
        });
        let mut expected = 0u32;
        while expected < N {
            let Some((i, bytes)) = rx.pop(|i, b| (i, b.to_vec())) else {
                std::hint::spin_loop();
                continue;
            };
            assert_eq!(i, expected);
            assert_eq!(bytes, expected.to_le_bytes());
            expected += 1;
        }
        producer.join().unwrap();
        assert_eq!(rx.pop(|_, _| ()), None);
    }
}
