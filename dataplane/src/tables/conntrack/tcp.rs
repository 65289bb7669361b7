//! The TCP state machine: how a packet's flags, travelling in a direction, advance an entry's
//! state (what a segment carries is `segment.rs`).
//!
//! Contract: a pure function of (state, FIN bits seen, direction, flags). Sequence numbers are
//! not its concern: a RST reaches it only after `tcp_window` judged it exact (a RST in window
//! but not exact leaves the state alone, one out of window is refused before).

use super::entry::{CtState, FIN_FROM_BOTH, FIN_FROM_ORIGINAL, FIN_FROM_REPLY};
use super::key::FlowDirection;
use super::segment::tcp_flag;

/// Result of one TCP packet on an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TcpStep {
    pub(super) state: CtState,
    pub(super) fin_seen: u8,
    /// A pure SYN restarted the flow (port reuse after close): counters stay, the handshake
    /// starts over, and the SYN's sender becomes the originator.
    pub(super) restart: bool,
}

/// Advances the TCP state for a packet with `flags` travelling in `dir`.
///
/// Follows Linux's conntrack: an ACK from the originator does not establish a flow before the
/// reply side sent SYN+ACK, and a FIN before the handshake completes is ignored. A RST that
/// gets here was judged exact (`tcp_window`) and closes; the entry then only lives `tcp_close`
/// past the last packet.
pub(super) fn tcp_step(state: CtState, fin_seen: u8, dir: FlowDirection, flags: u8) -> TcpStep {
    let syn = flags & tcp_flag::SYN != 0;
    let ack = flags & tcp_flag::ACK != 0;
    let pure_syn = syn && !ack;
    let keep = TcpStep {
        state,
        fin_seen,
        restart: false,
    };
    if flags & tcp_flag::RST != 0 {
        return TcpStep {
            state: CtState::Closing,
            ..keep
        };
    }
    let restart = TcpStep {
        state: CtState::SynSent,
        fin_seen: 0,
        restart: true,
    };
    let state = match (state, dir) {
        (CtState::Closing, _) if pure_syn => return restart,
        (CtState::New, FlowDirection::Reply) if pure_syn => return restart,
        (CtState::New, FlowDirection::Original) if pure_syn => CtState::SynSent,
        (CtState::New | CtState::SynSent, FlowDirection::Reply) if syn && ack => CtState::SynRecv,
        (CtState::SynRecv, FlowDirection::Original) if ack && !syn => CtState::Established,
        (other, _) => other,
    };
    if flags & tcp_flag::FIN != 0 && state.is_established() {
        let fin_seen = fin_seen
            | match dir {
                FlowDirection::Original => FIN_FROM_ORIGINAL,
                FlowDirection::Reply => FIN_FROM_REPLY,
            };
        let state = if fin_seen == FIN_FROM_BOTH {
            CtState::Closing
        } else {
            CtState::FinWait
        };
        return TcpStep {
            state,
            fin_seen,
            restart: false,
        };
    }
    TcpStep { state, ..keep }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn tcp_handshake_establishes() {
        let mut ct = table(64);
        let key = client_key(IPPROTO_TCP);
        let h = create(&mut ct, &key, 0);
        assert_eq!(ct.entry(h).state(), CtState::New);
        assert_eq!(packet(&mut ct, &key, SYN, 0).state, CtState::SynSent);
        assert_eq!(ct.entry(h).expires(), 60 * SEC);
        let up = packet(&mut ct, &key.reversed(), SYN | ACK, SEC);
        assert_eq!(up.state, CtState::SynRecv);
        assert_eq!(up.dir, FlowDirection::Reply);
        assert_eq!(ct.entry(h).expires(), 61 * SEC);
        assert_eq!(
            packet(&mut ct, &key, ACK, 2 * SEC).state,
            CtState::Established
        );
        assert_eq!(ct.entry(h).expires(), 2 * SEC + 21_600 * SEC);
        // Data both ways keeps it established and refreshes the timer.
        assert_eq!(
            packet(&mut ct, &key.reversed(), ACK, 3 * SEC).state,
            CtState::Established
        );
        assert_eq!(ct.entry(h).last_seen(), 3 * SEC);
        assert_eq!(ct.entry(h).created(), 0);
        assert!(ct.entry(h).flags().contains(CtFlags::SEEN_REPLY));
    }

    #[test]
    fn tcp_does_not_establish_out_of_order() {
        let mut ct = table(64);
        let key = client_key(IPPROTO_TCP);
        create(&mut ct, &key, 0);
        packet(&mut ct, &key, SYN, 0);
        // An ACK from the originator before any SYN+ACK (Linux: invalid in SYN_SENT).
        assert_eq!(packet(&mut ct, &key, ACK, 1).state, CtState::SynSent);
        // A SYN+ACK from the originator's side is not the handshake's answer.
        assert_eq!(packet(&mut ct, &key, SYN | ACK, 2).state, CtState::SynSent);
        // A FIN before the handshake completes is ignored.
        assert_eq!(packet(&mut ct, &key, FIN, 3).state, CtState::SynSent);
        // Mid-stream traffic on a new entry does not establish it either...
        let mut ct = table(64);
        create(&mut ct, &key, 0);
        assert_eq!(packet(&mut ct, &key, ACK, 0).state, CtState::New);
        assert_eq!(packet(&mut ct, &key.reversed(), ACK, 0).state, CtState::New);
        // ...unless the caller asked for a pickup.
        let mut ct = table(64);
        let hash = ct.hash_key(&key);
        let info = CtCreate {
            established: true,
            ..CtCreate::default()
        };
        let h = ct.create(&key, hash, FlowDirection::Original, info, 0);
        assert_eq!(ct.entry(h).state(), CtState::Established);
        assert_eq!(ct.entry(h).expires(), 21_600 * SEC);
        assert_eq!(packet(&mut ct, &key, ACK, 1).state, CtState::Established);
    }

    #[test]
    fn fin_both_ways_closes() {
        let mut ct = table(64);
        let key = client_key(IPPROTO_TCP);
        let h = established(&mut ct, &key);
        assert_eq!(
            packet(&mut ct, &key, FIN | ACK, SEC).state,
            CtState::FinWait
        );
        assert_eq!(ct.entry(h).expires(), SEC + 21_600 * SEC);
        // More FINs from the same side do not close it.
        assert_eq!(
            packet(&mut ct, &key, FIN | ACK, SEC).state,
            CtState::FinWait
        );
        let up = packet(&mut ct, &key.reversed(), FIN | ACK, 2 * SEC);
        assert_eq!(up.state, CtState::Closing);
        assert_eq!(ct.entry(h).expires(), 12 * SEC);
        // The last ACK keeps it closing.
        assert_eq!(packet(&mut ct, &key, ACK, 3 * SEC).state, CtState::Closing);
        assert!(look(&ct, &key, 13 * SEC - 1).is_some());
        assert_eq!(look(&ct, &key, 13 * SEC), None);
    }

    #[test]
    fn rst_closes_in_any_state() {
        let key = client_key(IPPROTO_TCP);
        let mut ct = table(64);
        let h = established(&mut ct, &key);
        assert_eq!(
            packet(&mut ct, &key.reversed(), RST, SEC).state,
            CtState::Closing
        );
        assert_eq!(ct.entry(h).expires(), 11 * SEC);
        let mut ct = table(64);
        create(&mut ct, &key, 0);
        packet(&mut ct, &key, SYN, 0);
        assert_eq!(
            packet(&mut ct, &key.reversed(), RST | ACK, 0).state,
            CtState::Closing
        );
    }

    #[test]
    fn a_rst_out_of_window_changes_nothing_and_one_in_window_keeps_the_state() {
        let key = client_key(IPPROTO_TCP);
        let mut ct = table(64);
        let h = established(&mut ct, &key);
        let before = *ct.entry(h);
        let (h2, dir) = look(&ct, &key.reversed(), SEC).unwrap();
        let exact = in_sequence(ct.entry(h), dir, RST);
        // A guess far from the number the client expects: refused, nothing counted or changed.
        let guess = TcpSegment {
            seq: exact.seq.wrapping_add(0x4000_0000),
            ..exact
        };
        let up = ct.update(h2, dir, guess, 40, SEC);
        assert!(up.out_of_window);
        assert_eq!(up.state, CtState::Established);
        assert_eq!(*ct.entry(h), before);
        // In the window but not exact (RFC 5961's challenge ACK case): counted, still open.
        let near = TcpSegment {
            seq: exact.seq.wrapping_add(1_000),
            ..exact
        };
        let up = ct.update(h2, dir, near, 40, SEC);
        assert_eq!((up.state, up.out_of_window), (CtState::Established, false));
        assert_eq!(ct.entry(h).packets(FlowDirection::Reply), 2);
        assert_eq!(ct.entry(h).expires(), SEC + 21_600 * SEC);
        // Exactly at the expected number: closes.
        let up = ct.update(h2, dir, exact, 40, 2 * SEC);
        assert_eq!((up.state, up.out_of_window), (CtState::Closing, false));
        // Non-TCP protocols never see the check.
        let udp = client_key(IPPROTO_UDP);
        let hu = create(&mut ct, &udp, 0);
        let up = ct.update(hu, FlowDirection::Reply, seg(RST), 40, 0);
        assert_eq!((up.state, up.out_of_window), (CtState::Established, false));
    }

    #[test]
    fn a_tcp_entry_is_stored_whole_from_its_first_segment() {
        let mut ct = table(64);
        let key = client_key(IPPROTO_TCP);
        let hash = ct.hash_key(&key);
        let syn = TcpSegment {
            flags: SYN,
            seq: 77,
            window: 1_000,
            ..TcpSegment::NONE
        };
        let info = CtCreate::default();
        let (h, _) = ct.create_counted(&key, hash, FlowDirection::Original, info, 0, syn, 74);
        assert!(ct.entry(h).has_tail());
        // The server's "connection refused" must acknowledge that SYN.
        let (h2, dir) = look(&ct, &key.reversed(), 0).unwrap();
        let wrong = TcpSegment {
            flags: RST | ACK,
            ack: 79,
            ..TcpSegment::NONE
        };
        assert!(ct.update(h2, dir, wrong, 54, 0).out_of_window);
        let refused = TcpSegment { ack: 78, ..wrong };
        assert_eq!(ct.update(h2, dir, refused, 54, 0).state, CtState::Closing);
    }

    #[test]
    fn syn_restarts_a_closed_flow() {
        let key = client_key(IPPROTO_TCP);
        let mut ct = table(64);
        let h = established(&mut ct, &key);
        packet(&mut ct, &key, RST, SEC);
        // A SYN+ACK or data does not restart it.
        assert_eq!(packet(&mut ct, &key, ACK, SEC).state, CtState::Closing);
        // The same client reconnects from the same port.
        let up = packet(&mut ct, &key, SYN, 2 * SEC);
        assert_eq!(
            up,
            CtUpdate {
                state: CtState::SynSent,
                dir: FlowDirection::Original,
                out_of_window: false,
            }
        );
        assert!(!ct.entry(h).flags().contains(CtFlags::SEEN_REPLY));
        assert_eq!(ct.entry(h).expires(), 62 * SEC);

        // The server side opens a connection on the closed flow's ports: it becomes the
        // originator, and its earlier packets move to the Original counters.
        let mut ct = table(64);
        let h = established(&mut ct, &key);
        packet(&mut ct, &key, RST, SEC);
        let server_sent = ct.entry(h).packets(FlowDirection::Reply);
        let up = packet(&mut ct, &key.reversed(), SYN, 2 * SEC);
        assert_eq!(
            up,
            CtUpdate {
                state: CtState::SynSent,
                dir: FlowDirection::Original,
                out_of_window: false,
            }
        );
        assert_eq!(ct.key(h).src(), key.dst());
        assert_eq!(
            ct.entry(h).packets(FlowDirection::Original),
            server_sent + 1
        );
        assert_eq!(look(&ct, &key, 2 * SEC), Some((h, FlowDirection::Reply)));
        ct.check_invariants();
    }
}
