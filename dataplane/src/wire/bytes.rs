//! Big-endian field access shared by the wire views: the one copy of the `get_u16`/`set_u16`
//! family that every protocol module uses with its own `mod field` ranges.
//!
//! Contract: each helper indexes `data` with the given [`Field`] and panics when the field lies
//! outside the buffer, exactly as slice indexing does. A view calls them only on fields that its
//! `check_len` has already proven to be inside the buffer, so after `new_checked` succeeds no
//! accessor can panic. The setters expect a field of the value's width (2, 3 or 4 bytes); the
//! fields are constants of each protocol module, so a wrong width is a bug caught by the tests.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::types::MacAddr;
use crate::wire::Field;

/// Reads a 16-bit big-endian field.
#[inline]
pub(crate) fn get_u16(data: &[u8], f: Field) -> u16 {
    u16::from_be_bytes([data[f.start], data[f.start + 1]])
}

/// Writes a 16-bit big-endian field.
#[inline]
pub(crate) fn set_u16(data: &mut [u8], f: Field, value: u16) {
    data[f].copy_from_slice(&value.to_be_bytes());
}

/// Reads a 24-bit big-endian field (a VXLAN or Geneve VNI) into the low bits of a `u32`.
#[inline]
pub(crate) fn get_u24(data: &[u8], f: Field) -> u32 {
    let s = f.start;
    u32::from_be_bytes([0, data[s], data[s + 1], data[s + 2]])
}

/// Writes the low 24 bits of `value` as a 24-bit big-endian field; the high byte is dropped.
#[inline]
pub(crate) fn set_u24(data: &mut [u8], f: Field, value: u32) {
    data[f].copy_from_slice(&value.to_be_bytes()[1..]);
}

/// Reads a 32-bit big-endian field.
#[inline]
pub(crate) fn get_u32(data: &[u8], f: Field) -> u32 {
    let s = f.start;
    u32::from_be_bytes([data[s], data[s + 1], data[s + 2], data[s + 3]])
}

/// Writes a 32-bit big-endian field.
#[inline]
pub(crate) fn set_u32(data: &mut [u8], f: Field, value: u32) {
    data[f].copy_from_slice(&value.to_be_bytes());
}

/// Reads a 6-byte MAC address field.
#[inline]
pub(crate) fn get_mac(data: &[u8], f: Field) -> MacAddr {
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&data[f.start..f.start + 6]);
    MacAddr(mac)
}

/// Reads a 4-byte IPv4 address field.
#[inline]
pub(crate) fn get_ipv4(data: &[u8], f: Field) -> Ipv4Addr {
    let s = f.start;
    Ipv4Addr::new(data[s], data[s + 1], data[s + 2], data[s + 3])
}

/// Reads a 16-byte IPv6 address field.
#[inline]
pub(crate) fn get_ipv6(data: &[u8], f: Field) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&data[f.start..f.start + 16]);
    Ipv6Addr::from(octets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_network_order() {
        let mut b = [0u8; 16];
        set_u16(&mut b, 0..2, 0x1234);
        set_u24(&mut b, 2..5, 0xab_cdef);
        set_u32(&mut b, 5..9, 0xdead_beef);
        assert_eq!(
            b[..9],
            [0x12, 0x34, 0xab, 0xcd, 0xef, 0xde, 0xad, 0xbe, 0xef]
        );
        assert_eq!(get_u16(&b, 0..2), 0x1234);
        assert_eq!(get_u24(&b, 2..5), 0xab_cdef);
        assert_eq!(get_u32(&b, 5..9), 0xdead_beef);
        assert_eq!(get_ipv4(&b, 5..9), Ipv4Addr::new(0xde, 0xad, 0xbe, 0xef));
        assert_eq!(
            get_mac(&b, 0..6),
            MacAddr([0x12, 0x34, 0xab, 0xcd, 0xef, 0xde])
        );
        assert_eq!(get_ipv6(&b, 0..16).octets(), b);
    }

    #[test]
    fn set_u24_drops_the_high_byte() {
        let mut b = [0u8; 3];
        set_u24(&mut b, 0..3, 0xff12_3456);
        assert_eq!(b, [0x12, 0x34, 0x56]);
    }
}
