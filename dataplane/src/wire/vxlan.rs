//! VXLAN header (RFC 7348): the 8 bytes between the outer UDP header (port 4789) and the inner
//! Ethernet frame. Flagella carries the source security identity in the VNI.
//!
//! Contract and invariants:
//! - [`VxlanPacket::check_len`] requires the 8-byte header (`Truncated`) and the I flag, which
//!   RFC 7348 says must be set for a valid VNI (`Malformed` otherwise). After
//!   [`VxlanPacket::new_checked`] succeeds no accessor panics.
//! - Reserved bits and bytes are ignored on receive and written as zero on emit.
//! - The VNI is 24 bits; a larger value given to a setter or `Repr` is truncated to its low 24
//!   bits (and trips a debug assertion).

use super::bytes::{get_u24, set_u24};
use super::{Error, Result};

/// IANA-assigned UDP destination port.
pub const UDP_PORT: u16 = 4789;

/// Byte offsets of the header fields.
mod field {
    use crate::wire::{Field, Rest};

    /// R R R R I R R R: only the I flag (0x08) is defined.
    pub const FLAGS: Field = 0..1;
    pub const RESERVED_0: Field = 1..4;
    pub const VNI: Field = 4..7;
    pub const RESERVED_1: Field = 7..8;
    /// The inner Ethernet frame.
    pub const PAYLOAD: Rest = 8..;
}

/// Length of the header.
pub const HEADER_LEN: usize = field::RESERVED_1.end;
/// The I flag: the VNI is valid.
pub const FLAG_VNI_VALID: u8 = 0x08;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// A read/write view of a VXLAN header and the frame it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps a buffer without any check; accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> VxlanPacket<T> {
        VxlanPacket { buffer }
    }

    /// Wraps a buffer and checks it with [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<VxlanPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the header fits (`Truncated`) and that the I flag is set (`Malformed`).
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else if self.flags() & FLAG_VNI_VALID == 0 {
            Err(Error::Malformed)
        } else {
            Ok(())
        }
    }

    /// Gives the buffer back.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The flags byte, reserved bits included.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS.start]
    }

    /// The 24-bit VNI.
    #[inline]
    pub fn vni(&self) -> u32 {
        get_u24(self.buffer.as_ref(), field::VNI)
    }

    /// The inner Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS.start] = flags;
    }

    /// Sets the VNI (low 24 bits of `vni`).
    #[inline]
    pub fn set_vni(&mut self, vni: u32) {
        debug_assert!(vni <= MAX_VNI, "VNI {vni:#x} exceeds 24 bits");
        set_u24(self.buffer.as_mut(), field::VNI, vni);
    }

    /// The inner Ethernet frame, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// A VXLAN header in plain fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// 24 bits.
    pub vni: u32,
}

impl Repr {
    /// Reads a header (checking it first).
    pub fn parse<T: AsRef<[u8]>>(packet: &VxlanPacket<T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr { vni: packet.vni() })
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// The header alone; the inner frame follows it.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header: I flag set, reserved fields zero.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        packet.set_flags(FLAG_VNI_VALID);
        packet.buffer.as_mut()[field::RESERVED_0].fill(0);
        packet.set_vni(self.vni);
        packet.buffer.as_mut()[field::RESERVED_1].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // I flag, VNI 0x123456, followed by the first bytes of an inner frame.
    const VXLAN_VNI_123456: [u8; 12] = [
        0x08, 0x00, 0x00, 0x00, 0x12, 0x34, 0x56, 0x00, 0xff, 0xff, 0xff, 0xff,
    ];

    #[test]
    fn golden_fields() {
        let p = VxlanPacket::new_checked(&VXLAN_VNI_123456[..]).unwrap();
        assert_eq!(p.flags(), FLAG_VNI_VALID);
        assert_eq!(p.vni(), 0x12_3456);
        assert_eq!(p.payload(), &[0xff; 4]);
        assert_eq!(Repr::parse(&p), Ok(Repr { vni: 0x12_3456 }));
    }

    #[test]
    fn parse_emit_round_trip_is_byte_exact() {
        let repr = Repr::parse(&VxlanPacket::new_checked(&VXLAN_VNI_123456[..]).unwrap()).unwrap();
        let mut out = [0xa5u8; 12];
        out[HEADER_LEN..].copy_from_slice(&VXLAN_VNI_123456[HEADER_LEN..]);
        repr.emit(&mut VxlanPacket::new_unchecked(&mut out[..]));
        assert_eq!(out, VXLAN_VNI_123456);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                VxlanPacket::new_checked(&VXLAN_VNI_123456[..n]).err(),
                Some(Error::Truncated)
            );
            let p = VxlanPacket::new_unchecked(&VXLAN_VNI_123456[..n]);
            assert!(Repr::parse(&p).is_err());
        }
        // The header alone is a valid (empty) encapsulation.
        assert!(VxlanPacket::new_checked(&VXLAN_VNI_123456[..HEADER_LEN]).is_ok());
    }

    #[test]
    fn missing_i_flag_is_malformed() {
        let mut bytes = VXLAN_VNI_123456;
        bytes[0] = 0x00;
        assert_eq!(
            VxlanPacket::new_checked(&bytes[..]).err(),
            Some(Error::Malformed)
        );
        bytes[0] = 0xf7; // every bit but I
        assert_eq!(
            Repr::parse(&VxlanPacket::new_unchecked(&bytes[..])),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn reserved_bits_ignored_on_receive() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 0xab, 0xcd, 0xef, 0xff];
        let p = VxlanPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&p), Ok(Repr { vni: 0xab_cdef }));
    }

    proptest! {
        #[test]
        fn repr_round_trip(vni in 0..=MAX_VNI, fill in any::<u8>()) {
            let repr = Repr { vni };
            let mut buf = [fill; HEADER_LEN];
            repr.emit(&mut VxlanPacket::new_unchecked(&mut buf[..]));
            prop_assert_eq!(buf[0], FLAG_VNI_VALID);
            prop_assert_eq!(&buf[1..4], &[0, 0, 0]);
            prop_assert_eq!(buf[7], 0);
            prop_assert_eq!(Repr::parse(&VxlanPacket::new_checked(&buf[..]).unwrap()), Ok(repr));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(p) = VxlanPacket::new_checked(&bytes[..]) {
                let _ = (p.flags(), p.vni(), p.payload());
                prop_assert!(Repr::parse(&p).is_ok());
            } else {
                prop_assert!(Repr::parse(&VxlanPacket::new_unchecked(&bytes[..])).is_err());
            }
        }
    }
}
