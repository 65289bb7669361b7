//! The TCP state machine: how a packet's flags, travelling in a direction, advance an entry's
//! state.
//!
//! Contract: a pure function of (state, FIN bits seen, direction, flags); no sequence numbers
//! are checked, so RST is believed as is (as Cilium does).

use super::entry::{CtState, FIN_FROM_BOTH, FIN_FROM_ORIGINAL, FIN_FROM_REPLY};
use super::key::FlowDirection;

/// TCP flag bits as they sit in byte 13 of the TCP header (the `tcp_flags` argument of
/// [`Conntrack::update`](super::Conntrack::update)): the bits of
/// [`crate::wire::tcp::TcpFlags`], as bytes.
pub(super) mod tcp_flag {
    use crate::wire::tcp::TcpFlags;

    pub const FIN: u8 = TcpFlags::FIN.bits();
    pub const SYN: u8 = TcpFlags::SYN.bits();
    pub const RST: u8 = TcpFlags::RST.bits();
    pub const ACK: u8 = TcpFlags::ACK.bits();
}

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
/// Follows Linux's conntrack where it matters for a stateless-sequence tracker: an ACK from the
/// originator does not establish a flow before the reply side sent SYN+ACK, and a FIN before the
/// handshake completes is ignored. We do not see sequence numbers, so RST is believed as is
/// (as Cilium does); the entry then only lives `tcp_close` past the last packet.
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
                dir: FlowDirection::Original
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
                dir: FlowDirection::Original
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
