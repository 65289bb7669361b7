//! What a worker's I/O layer counts: its own [`IoCounters`] and the kernel's [`SocketStats`].
//!
//! Plain counters, written by the worker thread only (the kernel's are read with a system call
//! about every 100 ms, never per pass). `SocketStatsReader` (in `sys`) reads one socket's
//! statistics from another thread (the daemon's `/metrics`, at scrape time).

/// What the I/O layer of one worker did. Plain counters written by the worker thread only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoCounters {
    /// Passes over the ports.
    pub polls: u64,
    /// Batches (non-empty receives) and the frames in them.
    pub rx_batches: u64,
    pub rx_frames: u64,
    /// Descriptors the kernel returned outside the UMEM (never reused; a kernel bug).
    pub rx_invalid: u64,
    /// Frames placed on TX rings, and TX completions recycled.
    pub tx_frames: u64,
    pub tx_completed: u64,
    /// Frames recycled because their TX ring was full.
    pub tx_ring_full: u64,
    /// `Verdict::Tx` to an interface this worker has no socket on.
    pub tx_no_port: u64,
    /// `Verdict::Drop` frames recycled.
    pub dropped: u64,
    /// `Verdict::Pass` frames: user space cannot hand a frame back to the kernel's stack
    /// without a TAP device, so they are counted and recycled (the XDP program passes what
    /// the kernel must see before it reaches AF_XDP).
    pub pass_dropped: u64,
    /// Frames moved back to their receive offset before TX because their start moved.
    pub realigned: u64,
    /// Frames that grew too much to move back inside their chunk (dropped).
    pub realign_too_long: u64,
    /// A frame view that no longer matched its descriptor (a pipeline bug; dropped).
    pub view_mismatch: u64,
    /// Descriptors given to fill rings, and refills that found the free list empty.
    pub filled: u64,
    pub fill_starved: u64,
    /// Wakeups: `poll` for the fill ring, `sendto` for TX; and those that failed.
    pub fill_wakeups: u64,
    pub tx_wakeups: u64,
    pub wakeup_errors: u64,
    /// Frames other workers handed to this one (copied into this worker's UMEM) and those
    /// that found no free frame here (dropped).
    pub handoff_frames: u64,
    pub handoff_no_frame: u64,
    /// Nanoseconds spent in passes that received frames (busy-loop time): divided by
    /// `rx_frames` it is the worker's cost per packet at saturation.
    pub busy_ns: u64,
}

/// The kernel's counters of one socket (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketStats {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    /// Frames the kernel could not deliver because the fill ring was empty.
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

impl SocketStats {
    /// Every counter with its field name and meaning: the one list `/metrics` shows
    /// (`flagella_xsk_<name>_total`). The destructuring fails to compile when a field is added
    /// without being listed.
    pub fn fields(&self) -> [(&'static str, &'static str, u64); 6] {
        let SocketStats {
            rx_dropped,
            rx_invalid_descs,
            tx_invalid_descs,
            rx_ring_full,
            rx_fill_ring_empty_descs,
            tx_ring_empty_descs,
        } = *self;
        [
            (
                "rx_dropped",
                "frames the kernel dropped for this socket (e.g. too long for a UMEM chunk)",
                rx_dropped,
            ),
            (
                "rx_invalid_descs",
                "invalid descriptors on the RX side",
                rx_invalid_descs,
            ),
            (
                "tx_invalid_descs",
                "invalid descriptors the socket put on its TX ring",
                tx_invalid_descs,
            ),
            (
                "rx_ring_full",
                "frames dropped because the RX ring was full",
                rx_ring_full,
            ),
            (
                "rx_fill_ring_empty_descs",
                "frames dropped because the fill ring was empty",
                rx_fill_ring_empty_descs,
            ),
            (
                "tx_ring_empty_descs",
                "TX wakeups that found the TX ring empty",
                tx_ring_empty_descs,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_socket_statistic_is_listed_once_with_its_value() {
        let s = SocketStats {
            rx_dropped: 1,
            rx_invalid_descs: 2,
            tx_invalid_descs: 3,
            rx_ring_full: 4,
            rx_fill_ring_empty_descs: 5,
            tx_ring_empty_descs: 6,
        };
        let fields = s.fields();
        let values: Vec<u64> = fields.iter().map(|(_, _, v)| *v).collect();
        assert_eq!(values, [1, 2, 3, 4, 5, 6]);
        let mut names: Vec<&str> = fields.iter().map(|(n, _, _)| *n).collect();
        names.dedup();
        assert_eq!(names.len(), 6);
        assert!(names.contains(&"rx_fill_ring_empty_descs"));
    }
}
