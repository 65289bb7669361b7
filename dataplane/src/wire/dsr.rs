//! The DSR frontend: the service address and port a load-balanced packet was sent to, carried
//! to the backend's node so that the reply can leave with them as its source (Cilium's DSR).
//!
//! One value, [`DsrOption`], with two encodings, each kept next to its header:
//! - native routing: an IPv4 option (type 0x9a, length 8, port then address), in
//!   [`crate::wire::ipv4`] (`DsrOption::parse_ipv4`, `emit_ipv4`, `ipv4::find_dsr_option`);
//! - tunnel mode: a Geneve option (class 0x014b, type 1, address then port and 2 bytes of
//!   padding), in [`crate::wire::geneve`] (`DsrOption::parse_geneve`, `emit_geneve`,
//!   `geneve::find_dsr_option`).
//!
//! Only IPv4 frontends exist: both encodings hold a 4-byte address.

use std::net::Ipv4Addr;

/// The service frontend (VIP and port) of a DSR packet. See the module doc for its encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DsrOption {
    pub addr: Ipv4Addr,
    pub port: u16,
}
