//! The Internet checksum (RFC 1071): full sums, pseudo-headers, and incremental updates
//! (RFC 1624).
//!
//! Sums are carried as `u32` accumulators of 16-bit big-endian words and folded only at the end,
//! so a header and a payload can be summed separately and combined.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{Error, Result};

/// Adds the big-endian 16-bit words of `data` to `acc` (an odd trailing byte is padded with a
/// zero byte, as RFC 1071 says). The result is unfolded.
#[inline]
pub fn sum(data: &[u8], acc: u32) -> u32 {
    let mut acc = u64::from(acc);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Summing 32-bit big-endian halves is the same one's-complement sum as 16-bit words,
        // once folded; it halves the loop count.
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        acc += u64::from(u32::from_be_bytes([c[4], c[5], c[6], c[7]]));
    }
    let mut words = chunks.remainder().chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    fold64(acc)
}

#[inline]
fn fold64(mut acc: u64) -> u32 {
    while acc > 0xffff_ffff {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    acc as u32
}

/// Folds a 32-bit accumulator into 16 bits with end-around carry (not complemented).
#[inline]
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Combines two partial sums.
#[inline]
pub fn combine(a: u32, b: u32) -> u32 {
    fold64(u64::from(a) + u64::from(b))
}

/// The checksum field value for `data`: the complement of the folded sum.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// Finishes an accumulator into a checksum field value.
#[inline]
pub fn finish(acc: u32) -> u16 {
    !fold(acc)
}

/// True when `data` (which contains its own checksum field) sums to 0xffff.
#[inline]
pub fn verify(data: &[u8]) -> bool {
    fold(sum(data, 0)) == 0xffff
}

/// Sum of the IPv4 pseudo-header (RFC 793 / RFC 768): source, destination, zero, protocol,
/// upper-layer length.
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u32) -> u32 {
    let mut acc = sum(&src.octets(), 0);
    acc = sum(&dst.octets(), acc);
    combine(
        acc,
        u32::from(protocol) + (length & 0xffff) + (length >> 16),
    )
}

/// Sum of the IPv6 pseudo-header (RFC 8200 section 8.1): source, destination, upper-layer
/// packet length (32 bits), three zero bytes, next header.
#[inline]
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, length: u32) -> u32 {
    let mut acc = sum(&src.octets(), 0);
    acc = sum(&dst.octets(), acc);
    combine(
        acc,
        u32::from(next_header) + (length & 0xffff) + (length >> 16),
    )
}

/// RFC 1624 eqn. 3: the new checksum field after a 16-bit word of the covered data changed from
/// `old` to `new`: `HC' = ~(~HC + ~m + m')`.
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let acc = u32::from(!check) + u32::from(!old) + u32::from(new);
    !fold(acc)
}

/// RFC 1624 update for a 32-bit value (an IPv4 address) that changed from `old` to `new`.
#[inline]
pub fn update32(check: u16, old: u32, new: u32) -> u16 {
    let acc = u32::from(!check)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!(old as u16))
        + u32::from((new >> 16) as u16)
        + u32::from(new as u16);
    !fold(acc)
}

/// RFC 1624 update for an arbitrary run of bytes of even length that changed from `old` to
/// `new` (an IPv6 address, a MAC is never covered). `old` and `new` must have the same length.
#[inline]
pub fn update_bytes(check: u16, old: &[u8], new: &[u8]) -> u16 {
    // ~old summed word by word equals 0xffff*n - sum(old) in one's complement, i.e. the
    // complement of the folded sum of old.
    let acc = u32::from(!check) + u32::from(!fold(sum(old, 0))) + u32::from(fold(sum(new, 0)));
    !fold(acc)
}

/// RFC 768: a computed UDP checksum of zero is transmitted as all ones, because zero in the
/// field means "no checksum" (IPv4 only; over IPv6 a zero field is invalid).
#[inline]
pub fn udp_nonzero(check: u16) -> u16 {
    if check == 0 {
        0xffff
    } else {
        check
    }
}

/// Writes `bytes` into `message` at `offset` and returns the checksum field `check` patched for
/// the change (RFC 1624). Works one window of 16-bit words aligned on the start of `message`
/// (the checksum's own alignment), so `offset` and the length may be odd; a last odd byte of
/// the message is summed with a zero pad, as the full checksum does. The window must not
/// include the checksum field itself. Errors: `Truncated` when the range leaves `message`.
///
/// Used by the ICMP and ICMPv6 views (ICMPv6's pseudo-header is 40 bytes and keeps the
/// alignment).
pub(crate) fn write_with_checksum_update(
    message: &mut [u8],
    offset: usize,
    bytes: &[u8],
    check: u16,
) -> Result<u16> {
    let end = offset.checked_add(bytes.len()).ok_or(Error::Truncated)?;
    if end > message.len() {
        return Err(Error::Truncated);
    }
    let window_start = offset & !1;
    // Round the end up to a word; an odd-length message's lone last byte is its own word.
    let window_end = ((end + 1) & !1).min(message.len());
    let old = fold(sum(&message[window_start..window_end], 0));
    message[offset..end].copy_from_slice(bytes);
    let new = fold(sum(&message[window_start..window_end], 0));
    Ok(update16(check, old, new))
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 1071 section 3 example: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2 (folded).
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    // A real IPv4 header (from Wikipedia's worked example) with checksum 0xb861.
    const IPV4_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn ipv4_header_golden() {
        assert!(verify(&IPV4_HEADER));
        let mut h = IPV4_HEADER;
        h[10] = 0;
        h[11] = 0;
        assert_eq!(checksum(&h), 0xb861);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12], 0), 0x1200);
        assert_eq!(sum(&[0x12, 0x34, 0x56], 0), 0x1234 + 0x5600);
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut h = IPV4_HEADER;
        let check = u16::from_be_bytes([h[10], h[11]]);
        // Decrement the TTL (word 4 is TTL|proto).
        let old = u16::from_be_bytes([h[8], h[9]]);
        h[8] -= 1;
        let new = u16::from_be_bytes([h[8], h[9]]);
        let inc = update16(check, old, new);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(inc, checksum(&h));

        // Rewrite the destination address.
        let mut h2 = IPV4_HEADER;
        let old = u32::from_be_bytes([h2[16], h2[17], h2[18], h2[19]]);
        let new = u32::from(Ipv4Addr::new(10, 9, 8, 7));
        h2[16..20].copy_from_slice(&new.to_be_bytes());
        let inc = update32(check, old, new);
        assert_eq!(
            inc,
            update_bytes(check, &old.to_be_bytes(), &new.to_be_bytes())
        );
        h2[10] = 0;
        h2[11] = 0;
        assert_eq!(inc, checksum(&h2));
    }

    #[test]
    fn udp_zero_becomes_ffff() {
        assert_eq!(udp_nonzero(0), 0xffff);
        assert_eq!(udp_nonzero(0x1234), 0x1234);
    }

    #[test]
    fn pseudo_header_combines_like_bytes() {
        let src = Ipv4Addr::new(10, 0, 0, 1);
        let dst = Ipv4Addr::new(10, 0, 0, 2);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src.octets());
        bytes.extend_from_slice(&dst.octets());
        bytes.extend_from_slice(&[0, 6, 0, 20]);
        assert_eq!(
            fold(pseudo_header_v4(src, dst, 6, 20)),
            fold(sum(&bytes, 0))
        );
    }
}
