//! TCP sequence tracking: enough of each direction's sequence space and window to tell a RST
//! its receiver would act on from one an off-path sender guessed.
//!
//! Without it, anyone who can address a packet with a tracked flow's 5-tuple (a host in the
//! world spoofing a masqueraded flow's server) closes the flow's entry with one RST, and with
//! it the masquerade port, which a new flow may then take. This is the check Linux conntrack
//! does (`tcp_in_window`, and the RST rules of `tcp_packet`), following RFC 5961's model of
//! what a receiver accepts:
//!
//! - a RST exactly at the sequence number its receiver expects next closes the flow;
//! - a RST elsewhere in the receiver's window is passed but closes nothing: the receiver
//!   answers it with a challenge ACK (RFC 5961 section 3.2), and a genuine sender then resets
//!   at the exact number;
//! - any other RST is out of window: dropped (`tcp_rst_out_of_window`), the entry untouched.
//!
//! # Model
//! Per direction, `next[d]` is the sequence number side `d` is expected to send next: the
//! furthest of the ends of its own segments (sequence + payload, SYN and FIN counting one) and
//! of the acknowledgements its peer sent. `window_log2[d]` is the largest window side `d`
//! advertised, scaled, as a power of two rounded up (a tolerance, so a factor of two of slack
//! costs nothing). A segment of `d` teaches the tracker only when it is in its receiver's
//! window around `next[d]`, so a blind sender cannot walk `next` to a number it chose.
//!
//! A side becomes known by its SYN (a SYN+ACK only when it acknowledges the SYN it answers), or,
//! when nothing at all is known (an entry picked up mid-stream), by its first segment. Until a
//! side is known, a RST from it is acceptable only when it acknowledges its peer's next number
//! (RFC 793's rule in SYN-SENT: the RST must acknowledge the SYN); with nothing known at all, a
//! RST is believed, as it was before this check.
//!
//! Contract: 12 bytes, `Copy`, pure functions of the segment; no allocation, no clock.

use super::key::FlowDirection;
use super::segment::{tcp_flag, TcpSegment};

/// The smallest tolerance around `next` (64 KiB, the largest unscaled window): a window not yet
/// seen, or one that shrank, must not turn a genuine retransmission's RST into a drop.
const MIN_WINDOW_LOG2: u8 = 16;
/// The window scale assumed for a side whose SYN was never seen (an entry picked up
/// mid-stream): the largest RFC 7323 allows, so its window is never underestimated.
const UNKNOWN_SHIFT: u8 = 14;

/// `info` bits of a direction.
mod info {
    /// The window scale shift its SYN offered (RFC 7323), valid with `WSCALE`.
    pub const SHIFT: u8 = 0x0f;
    /// `next` holds a number learnt from the flow.
    pub const KNOWN: u8 = 1 << 4;
    /// Its SYN carried the window scale option.
    pub const WSCALE: u8 = 1 << 5;
    /// Its SYN was seen (so is whether it offered window scaling).
    pub const SYN_SEEN: u8 = 1 << 6;
}

/// What a RST does to its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RstVerdict {
    /// At the number its receiver expects: the flow closes.
    Exact,
    /// In the receiver's window but not exact: passed, the flow stays as it is (RFC 5961's
    /// challenge ACK will follow).
    InWindow,
    /// Outside the receiver's window: dropped, the entry untouched.
    OutOfWindow,
}

/// Both directions' sequence state (see the module documentation), indexed by
/// [`FlowDirection::index`]. Stored in an entry's tail; all zero means nothing known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub(super) struct TcpWindow {
    next: [u32; 2],
    window_log2: [u8; 2],
    info: [u8; 2],
}

impl TcpWindow {
    /// Nothing known about either side.
    pub(super) const UNKNOWN: TcpWindow = TcpWindow {
        next: [0; 2],
        window_log2: [0; 2],
        info: [0; 2],
    };

    /// The sequence number side `dir` is expected to send next, when known.
    #[cfg(test)]
    pub(super) fn next(&self, dir: FlowDirection) -> Option<u32> {
        self.known(dir.index()).then_some(self.next[dir.index()])
    }

    #[inline]
    fn known(&self, side: usize) -> bool {
        self.info[side] & info::KNOWN != 0
    }

    /// Judges a RST travelling in `dir` (see the module documentation).
    #[inline]
    pub(super) fn judge_rst(&self, dir: FlowDirection, seg: &TcpSegment) -> RstVerdict {
        let (s, r) = sides(dir);
        if self.known(s) {
            if seg.seq == self.next[s] {
                RstVerdict::Exact
            } else if self.in_window(seg.seq, self.next[s], r) {
                RstVerdict::InWindow
            } else {
                RstVerdict::OutOfWindow
            }
        } else if self.known(r) {
            let acks_peer = seg.flags & tcp_flag::ACK != 0 && seg.ack == self.next[r];
            if acks_peer {
                RstVerdict::Exact
            } else {
                RstVerdict::OutOfWindow
            }
        } else {
            RstVerdict::Exact
        }
    }

    /// Learns from a segment that is not a RST, travelling in `dir`. `restart`: the segment is a
    /// SYN that reopened a closed flow, whose old numbers mean nothing any more.
    #[inline]
    pub(super) fn learn(&mut self, dir: FlowDirection, seg: &TcpSegment, restart: bool) {
        if restart {
            *self = TcpWindow::UNKNOWN;
        }
        let (s, r) = sides(dir);
        let learnt = if seg.flags & tcp_flag::SYN != 0 {
            self.learn_syn(s, r, seg)
        } else {
            self.learn_segment(s, r, seg)
        };
        if learnt && seg.flags & tcp_flag::ACK != 0 {
            self.learn_ack(s, r, seg.ack);
        }
    }

    /// A SYN makes its side known, once: a second SYN is a retransmission (nothing new) or a
    /// forgery (which must not move the numbers). A SYN+ACK counts only when it acknowledges
    /// the SYN it answers.
    fn learn_syn(&mut self, s: usize, r: usize, seg: &TcpSegment) -> bool {
        if self.known(s) {
            return false;
        }
        if seg.flags & tcp_flag::ACK != 0 && self.known(r) && seg.ack != self.next[r] {
            return false;
        }
        self.next[s] = seg.seq.wrapping_add(1).wrapping_add(u32::from(seg.len));
        self.info[s] = info::KNOWN
            | info::SYN_SEEN
            | match seg.wscale {
                Some(shift) => info::WSCALE | (shift & info::SHIFT),
                None => 0,
            };
        // RFC 7323: the window of a SYN is never scaled.
        self.window_log2[s] = self.window_log2[s].max(log2_ceil(u32::from(seg.window)));
        true
    }

    /// Data or a bare ACK: moves `next[s]` on when in window; bootstraps a side only when
    /// nothing at all is known (a flow picked up mid-stream).
    fn learn_segment(&mut self, s: usize, r: usize, seg: &TcpSegment) -> bool {
        let fin = u32::from(seg.flags & tcp_flag::FIN != 0);
        let end = seg.seq.wrapping_add(u32::from(seg.len)).wrapping_add(fin);
        if self.known(s) {
            if !self.in_window(seg.seq, self.next[s], r) {
                return false;
            }
            if after(end, self.next[s]) {
                self.next[s] = end;
            }
        } else if !self.known(r) {
            self.next[s] = end;
            self.info[s] |= info::KNOWN;
        } else {
            return false;
        }
        let scaled = u32::from(seg.window) << self.shift(s);
        self.window_log2[s] = self.window_log2[s].max(log2_ceil(scaled));
        true
    }

    /// An acknowledgement from `s` of `r`'s numbers: moves `next[r]` on when in window.
    fn learn_ack(&mut self, s: usize, r: usize, ack: u32) {
        if !self.known(r) {
            self.next[r] = ack;
            self.info[r] |= info::KNOWN;
        } else if self.in_window(ack, self.next[r], s) && after(ack, self.next[r]) {
            self.next[r] = ack;
        }
    }

    /// The window scale shift of side `s`'s advertisements: its offer when both SYNs offered
    /// one, none when either SYN did not, the largest when a SYN was never seen.
    fn shift(&self, s: usize) -> u8 {
        let both = self.info[0] & self.info[1];
        if both & info::SYN_SEEN == 0 {
            UNKNOWN_SHIFT
        } else if both & info::WSCALE == 0 {
            0
        } else {
            self.info[s] & info::SHIFT
        }
    }

    /// True when `seq` lies within receiver `r`'s window on either side of `next`: ahead up to
    /// what `r` lets its peer send, behind as far (retransmissions of data `r` acknowledged).
    #[inline]
    fn in_window(&self, seq: u32, next: u32, r: usize) -> bool {
        let log2 = self.window_log2[r].clamp(MIN_WINDOW_LOG2, 31);
        let distance = seq.wrapping_sub(next);
        distance.min(distance.wrapping_neg()) <= 1u32 << log2
    }
}

/// The sender's and the receiver's indices for a segment travelling in `dir`.
#[inline]
fn sides(dir: FlowDirection) -> (usize, usize) {
    let s = dir.index();
    (s, 1 - s)
}

/// `a` comes after `b` in sequence space (RFC 793 modular comparison).
#[inline]
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The smallest `k` with `2^k >= v` (0 for 0 and 1).
#[inline]
fn log2_ceil(v: u32) -> u8 {
    if v <= 1 {
        0
    } else {
        (32 - (v - 1).leading_zeros()) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    const CLIENT_ISN: u32 = 1_000;
    const SERVER_ISN: u32 = 0xffff_ff00; // wraps during the test: modular arithmetic matters.

    fn seg(flags: u8, seq: u32, ack: u32, window: u16, len: u16) -> TcpSegment {
        TcpSegment {
            flags,
            seq,
            ack,
            window,
            len,
            wscale: None,
        }
    }

    const O: FlowDirection = FlowDirection::Original;
    const R: FlowDirection = FlowDirection::Reply;

    /// A handshake with window scaling on both sides (client shift 7, server shift 2).
    fn handshake() -> TcpWindow {
        let mut w = TcpWindow::UNKNOWN;
        let syn = TcpSegment {
            wscale: Some(7),
            ..seg(SYN, CLIENT_ISN, 0, 64_240, 0)
        };
        w.learn(O, &syn, false);
        let syn_ack = TcpSegment {
            wscale: Some(2),
            ..seg(SYN | ACK, SERVER_ISN, CLIENT_ISN + 1, 65_160, 0)
        };
        w.learn(R, &syn_ack, false);
        w.learn(O, &seg(ACK, CLIENT_ISN + 1, SERVER_ISN + 1, 502, 0), false);
        w
    }

    #[test]
    fn the_handshake_makes_both_sides_known() {
        let w = handshake();
        assert_eq!(w.next(O), Some(CLIENT_ISN + 1));
        assert_eq!(w.next(R), Some(SERVER_ISN.wrapping_add(1)));
        assert_eq!(w.shift(0), 7);
        assert_eq!(w.shift(1), 2);
        // 502 << 7 = 64,256 -> 2^16.
        assert_eq!(w.window_log2[0], 16);
    }

    #[test]
    fn data_and_acks_move_next_on() {
        let mut w = handshake();
        w.learn(
            O,
            &seg(ACK, CLIENT_ISN + 1, SERVER_ISN + 1, 502, 1_000),
            false,
        );
        assert_eq!(w.next(O), Some(CLIENT_ISN + 1_001));
        // The server answers past the wrap of its numbers, and acknowledges.
        let server_data = SERVER_ISN.wrapping_add(1);
        w.learn(
            R,
            &seg(ACK, server_data, CLIENT_ISN + 1_001, 500, 400),
            false,
        );
        assert_eq!(w.next(R), Some(server_data.wrapping_add(400)));
        assert_eq!(w.next(O), Some(CLIENT_ISN + 1_001));
        // A retransmission of old data does not move next back.
        w.learn(
            O,
            &seg(ACK, CLIENT_ISN + 1, SERVER_ISN + 1, 502, 1_000),
            false,
        );
        assert_eq!(w.next(O), Some(CLIENT_ISN + 1_001));
        // A FIN counts one.
        w.learn(O, &seg(FIN | ACK, CLIENT_ISN + 1_001, 0, 502, 0), false);
        assert_eq!(w.next(O), Some(CLIENT_ISN + 1_002));
    }

    #[test]
    fn a_blind_sender_cannot_move_the_numbers() {
        let mut w = handshake();
        let before = w;
        // Data far outside the window, a second SYN with another number, an ACK of data never
        // sent: none of them teaches the tracker anything.
        w.learn(R, &seg(ACK, 0x1234_5678, CLIENT_ISN + 1, 500, 100), false);
        w.learn(R, &seg(SYN | ACK, 77, CLIENT_ISN + 1, 500, 0), false);
        w.learn(O, &seg(SYN, 99, 0, 500, 0), false);
        w.learn(O, &seg(ACK, CLIENT_ISN + 1, 0x0fff_0000, 500, 0), false);
        assert_eq!(w, before);
        // A restart (a SYN that reopened a closed flow) starts over.
        w.learn(O, &seg(SYN, 99, 0, 500, 0), true);
        assert_eq!(w.next(O), Some(100));
        assert_eq!(w.next(R), None);
    }

    #[test]
    fn rst_verdicts_follow_the_receivers_window() {
        let w = handshake();
        let server_next = SERVER_ISN.wrapping_add(1);
        // The server's RST exactly at its next number closes.
        assert_eq!(
            w.judge_rst(R, &seg(RST, server_next, 0, 0, 0)),
            RstVerdict::Exact
        );
        // In the client's window (64 KiB here) but not exact: passed, closes nothing.
        let near = server_next.wrapping_add(3_000);
        assert_eq!(
            w.judge_rst(R, &seg(RST, near, 0, 0, 0)),
            RstVerdict::InWindow
        );
        let behind = server_next.wrapping_sub(3_000);
        assert_eq!(
            w.judge_rst(R, &seg(RST | ACK, behind, 0, 0, 0)),
            RstVerdict::InWindow
        );
        // Anywhere else: out of window.
        for seq in [0x4000_0000, 0x8000_0000, server_next.wrapping_add(1 << 20)] {
            assert_eq!(
                w.judge_rst(R, &seg(RST, seq, 0, 0, 0)),
                RstVerdict::OutOfWindow,
                "seq {seq:#x}"
            );
        }
        // The client's side, whose receiver (the server) advertised a scaled window.
        assert_eq!(
            w.judge_rst(O, &seg(RST, CLIENT_ISN + 1, 0, 0, 0)),
            RstVerdict::Exact
        );
        assert_eq!(
            w.judge_rst(O, &seg(RST, CLIENT_ISN + 200_000, 0, 0, 0)),
            RstVerdict::OutOfWindow
        );
    }

    #[test]
    fn a_rst_answering_a_syn_must_acknowledge_it() {
        let mut w = TcpWindow::UNKNOWN;
        w.learn(O, &seg(SYN, CLIENT_ISN, 0, 64_240, 0), false);
        // "Connection refused": RST+ACK of the SYN, sequence 0.
        assert_eq!(
            w.judge_rst(R, &seg(RST | ACK, 0, CLIENT_ISN + 1, 0, 0)),
            RstVerdict::Exact
        );
        assert_eq!(
            w.judge_rst(R, &seg(RST | ACK, 0, CLIENT_ISN + 2, 0, 0)),
            RstVerdict::OutOfWindow
        );
        assert_eq!(
            w.judge_rst(R, &seg(RST, 0, CLIENT_ISN + 1, 0, 0)),
            RstVerdict::OutOfWindow,
            "no ACK flag: acknowledges nothing"
        );
        // A segment of the unknown side does not make it known while its peer is.
        w.learn(R, &seg(ACK, 5_000, CLIENT_ISN + 1, 500, 10), false);
        assert_eq!(w.next(R), None);
    }

    #[test]
    fn an_entry_picked_up_mid_stream_learns_from_its_first_segments() {
        let mut w = TcpWindow::UNKNOWN;
        // Nothing known: a RST is believed.
        assert_eq!(w.judge_rst(R, &seg(RST, 42, 0, 0, 0)), RstVerdict::Exact);
        w.learn(O, &seg(ACK, 7_000, 9_000, 100, 10), false);
        assert_eq!(w.next(O), Some(7_010));
        assert_eq!(w.next(R), Some(9_000));
        // No SYN seen: the largest scale is assumed, the window is never underestimated.
        assert_eq!(w.shift(0), UNKNOWN_SHIFT);
        assert_eq!(w.judge_rst(R, &seg(RST, 9_000, 0, 0, 0)), RstVerdict::Exact);
        assert_eq!(
            w.judge_rst(R, &seg(RST, 9_000 + 70_000, 0, 0, 0)),
            RstVerdict::InWindow
        );
    }

    #[test]
    fn log2_ceil_rounds_up() {
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 65_535, 65_536, 65_537, u32::MAX].map(log2_ceil),
            [0, 0, 1, 2, 2, 3, 16, 16, 17, 32]
        );
        assert!(after(1, 0xffff_ffff));
        assert!(!after(0xffff_ffff, 1));
        assert!(!after(5, 5));
    }
}
