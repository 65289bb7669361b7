//! Ethernet II frames, with at most one IEEE 802.1Q VLAN tag.
//!
//! Contract:
//! - [`EthernetFrame::new_checked`] accepts a buffer of at least [`HEADER_LEN`] bytes, and of at
//!   least [`VLAN_HEADER_LEN`] bytes when the outer EtherType is 802.1Q (0x8100). After it
//!   succeeds no getter can panic.
//! - Only one tag is understood: [`EthernetFrame::inner_ethertype`] is the type after that tag
//!   (the type of [`EthernetFrame::payload`]). Stacked tags (QinQ, or 0x8100 inside 0x8100) are
//!   left to the caller: the inner type then reads [`EtherType::Vlan`] and [`Repr::parse`]
//!   refuses them as [`Error::Unsupported`]. 802.1ad's 0x88a8 is just an unknown type.
//! - The frame check sequence is not part of the buffer (AF_XDP and veth never hand it to us);
//!   padding to the 60-byte minimum is part of the payload, and upper layers bound themselves
//!   by their own length fields.
//! - Setters never re-validate. Changing the outer EtherType of a checked view to 0x8100 on a
//!   buffer too short for a tag is not a panic for getters: [`EthernetFrame::vlan`] returns
//!   `None` and [`EthernetFrame::payload`] is empty; re-run [`EthernetFrame::check_len`] after
//!   such edits.

use crate::types::MacAddr;
use crate::wire::bytes::{get_mac, get_u16, set_u16};
use crate::wire::{Error, Result};

mod field {
    use crate::wire::{Field, Rest};

    pub const DESTINATION: Field = 0..6;
    pub const SOURCE: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const PAYLOAD: Rest = 14..;

    // Present only when ETHERTYPE is 0x8100: the tag control information (PCP, DEI, VID),
    // then the EtherType of the payload.
    pub const VLAN_TCI: Field = 14..16;
    pub const INNER_ETHERTYPE: Field = 16..18;
    pub const TAGGED_PAYLOAD: Rest = 18..;
}

/// Length of an untagged Ethernet header.
pub const HEADER_LEN: usize = field::ETHERTYPE.end;
/// Length of an 802.1Q tag (TPID + TCI).
pub const VLAN_TAG_LEN: usize = field::INNER_ETHERTYPE.end - field::ETHERTYPE.end;
/// Length of an Ethernet header carrying one 802.1Q tag.
pub const VLAN_HEADER_LEN: usize = field::INNER_ETHERTYPE.end;

/// An EtherType. Unknown values are kept, not rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EtherType {
    Ipv4,
    Arp,
    Ipv6,
    /// IEEE 802.1Q tag protocol identifier.
    Vlan,
    Unknown(u16),
}

impl From<u16> for EtherType {
    #[inline]
    fn from(value: u16) -> Self {
        match value {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            0x8100 => EtherType::Vlan,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    #[inline]
    fn from(value: EtherType) -> Self {
        match value {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Vlan => 0x8100,
            EtherType::Unknown(other) => other,
        }
    }
}

/// The tag control information of an 802.1Q tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VlanTag {
    /// Priority code point (3 bits).
    pub pcp: u8,
    /// Drop eligible indicator.
    pub dei: bool,
    /// VLAN identifier (12 bits).
    pub vid: u16,
}

impl VlanTag {
    /// Splits a 16-bit TCI into its fields.
    #[inline]
    pub fn from_tci(tci: u16) -> VlanTag {
        VlanTag {
            pcp: (tci >> 13) as u8,
            dei: tci & 0x1000 != 0,
            vid: tci & 0x0fff,
        }
    }

    /// The 16-bit TCI; out-of-range `pcp` and `vid` bits are masked away.
    #[inline]
    pub fn tci(&self) -> u16 {
        (u16::from(self.pcp & 0x7) << 13) | (u16::from(self.dei) << 12) | (self.vid & 0x0fff)
    }
}

/// A zero-copy view of an Ethernet II frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps a buffer without checking it; getters may panic on a short buffer.
    #[inline]
    pub fn new_unchecked(buffer: T) -> EthernetFrame<T> {
        EthernetFrame { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<EthernetFrame<T>> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// `Err(Truncated)` when the buffer cannot hold the header, including the 802.1Q tag when
    /// the outer EtherType announces one.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.ethertype() == EtherType::Vlan && len < VLAN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn dst_addr(&self) -> MacAddr {
        get_mac(self.buffer.as_ref(), field::DESTINATION)
    }

    #[inline]
    pub fn src_addr(&self) -> MacAddr {
        get_mac(self.buffer.as_ref(), field::SOURCE)
    }

    /// The outer EtherType: [`EtherType::Vlan`] for a tagged frame.
    #[inline]
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(get_u16(self.buffer.as_ref(), field::ETHERTYPE))
    }

    /// The 802.1Q tag, if the frame carries one.
    #[inline]
    pub fn vlan(&self) -> Option<VlanTag> {
        if self.ethertype() != EtherType::Vlan {
            return None;
        }
        let tci = self.buffer.as_ref().get(field::VLAN_TCI)?;
        Some(VlanTag::from_tci(u16::from_be_bytes([tci[0], tci[1]])))
    }

    /// The EtherType of the payload: the type after the tag for a tagged frame, else the outer
    /// type.
    #[inline]
    pub fn inner_ethertype(&self) -> EtherType {
        let outer = self.ethertype();
        if outer != EtherType::Vlan {
            return outer;
        }
        match self.buffer.as_ref().get(field::INNER_ETHERTYPE) {
            Some(t) => EtherType::from(u16::from_be_bytes([t[0], t[1]])),
            // Only reachable on an unchecked view; "tagged, payload unknown" is the honest answer.
            None => EtherType::Vlan,
        }
    }

    /// 14, or 18 with an 802.1Q tag.
    #[inline]
    pub fn header_len(&self) -> usize {
        if self.ethertype() == EtherType::Vlan {
            VLAN_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Everything after the header (and its tag), Ethernet padding included.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let payload = if self.ethertype() == EtherType::Vlan {
            data.get(field::TAGGED_PAYLOAD)
        } else {
            data.get(field::PAYLOAD)
        };
        payload.unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    #[inline]
    pub fn set_dst_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.0);
    }

    #[inline]
    pub fn set_src_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.0);
    }

    /// Writes the outer EtherType. Writing [`EtherType::Vlan`] turns bytes 14..18 into a tag.
    #[inline]
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        set_u16(self.buffer.as_mut(), field::ETHERTYPE, ethertype.into());
    }

    /// Writes the tag control information (bytes 14..16); meaningful once the outer EtherType
    /// is [`EtherType::Vlan`].
    ///
    /// # Panics
    /// When the buffer is shorter than [`VLAN_HEADER_LEN`].
    #[inline]
    pub fn set_vlan(&mut self, tag: VlanTag) {
        set_u16(self.buffer.as_mut(), field::VLAN_TCI, tag.tci());
    }

    /// Writes the EtherType after the tag (bytes 16..18).
    ///
    /// # Panics
    /// When the buffer is shorter than [`VLAN_HEADER_LEN`].
    #[inline]
    pub fn set_inner_ethertype(&mut self, ethertype: EtherType) {
        set_u16(
            self.buffer.as_mut(),
            field::INNER_ETHERTYPE,
            ethertype.into(),
        );
    }

    /// Everything after the header (and its tag), writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let payload = if self.ethertype() == EtherType::Vlan {
            field::TAGGED_PAYLOAD
        } else {
            field::PAYLOAD
        };
        self.buffer.as_mut().get_mut(payload).unwrap_or(&mut [])
    }
}

/// A parsed Ethernet header.
///
/// `vlan` holds only the VLAN id: [`Repr::emit`] writes PCP 0 and DEI 0, and [`Repr::parse`]
/// drops them (read [`EthernetFrame::vlan`] when they matter). `ethertype` is the type of the
/// payload (after the tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    pub src_addr: MacAddr,
    pub dst_addr: MacAddr,
    /// The 12-bit VLAN id of the single 802.1Q tag, if any.
    pub vlan: Option<u16>,
    pub ethertype: EtherType,
}

impl Repr {
    /// Parses a frame. `Truncated` for a short buffer; `Unsupported` for stacked tags (the
    /// type after the tag is 0x8100 again), which one `vlan` field cannot describe.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &EthernetFrame<&T>) -> Result<Repr> {
        frame.check_len()?;
        let ethertype = frame.inner_ethertype();
        let vlan = frame.vlan().map(|tag| tag.vid);
        if vlan.is_some() && ethertype == EtherType::Vlan {
            return Err(Error::Unsupported);
        }
        Ok(Repr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            vlan,
            ethertype,
        })
    }

    /// 14, or 18 with a tag.
    #[inline]
    pub fn header_len(&self) -> usize {
        if self.vlan.is_some() {
            VLAN_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// The bytes [`emit`](Self::emit) writes: the header only; the payload follows it.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        self.header_len()
    }

    /// Writes the header (not the payload). A VLAN id above 4095 is masked to 12 bits.
    ///
    /// # Panics
    /// When the buffer is shorter than [`header_len`](Self::header_len).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, frame: &mut EthernetFrame<&mut T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        match self.vlan {
            Some(vid) => {
                frame.set_ethertype(EtherType::Vlan);
                frame.set_vlan(VlanTag {
                    pcp: 0,
                    dei: false,
                    vid,
                });
                frame.set_inner_ethertype(self.ethertype);
            }
            None => frame.set_ethertype(self.ethertype),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DST: MacAddr = MacAddr([0x02, 0x00, 0x00, 0x00, 0x00, 0x02]);
    const SRC: MacAddr = MacAddr([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);

    // An untagged frame carrying the start of an IPv4 header (payload truncated for brevity):
    // dst 02:00:00:00:00:02, src 02:00:00:00:00:01, type 0x0800.
    const UNTAGGED: [u8; 18] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // destination
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // source
        0x08, 0x00, // IPv4
        0x45, 0x00, 0x00, 0x14, // payload
    ];

    // The same frame with an 802.1Q tag: TPID 0x8100, TCI 0xa064 = PCP 5, DEI 0, VID 100,
    // then the payload's type 0x86dd (IPv6).
    const TAGGED: [u8; 20] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // destination
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // source
        0x81, 0x00, // 802.1Q
        0xa0, 0x64, // PCP 5, DEI 0, VID 100
        0x86, 0xdd, // IPv6
        0x60, 0x00, // payload
    ];

    // A tagged frame with DEI set, PCP 0 and the largest VID: TCI 0x1fff.
    const TAGGED_DEI: [u8; 18] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x81, 0x00, 0x1f,
        0xff, 0x08, 0x06,
    ];

    #[test]
    fn ethertype_numbers() {
        for (raw, ty) in [
            (0x0800, EtherType::Ipv4),
            (0x0806, EtherType::Arp),
            (0x86dd, EtherType::Ipv6),
            (0x8100, EtherType::Vlan),
            (0x88a8, EtherType::Unknown(0x88a8)),
        ] {
            assert_eq!(EtherType::from(raw), ty);
            assert_eq!(u16::from(ty), raw);
        }
    }

    #[test]
    fn untagged_golden() {
        let frame = EthernetFrame::new_checked(&UNTAGGED[..]).unwrap();
        assert_eq!(frame.dst_addr(), DST);
        assert_eq!(frame.src_addr(), SRC);
        assert_eq!(frame.ethertype(), EtherType::Ipv4);
        assert_eq!(frame.inner_ethertype(), EtherType::Ipv4);
        assert_eq!(frame.vlan(), None);
        assert_eq!(frame.header_len(), 14);
        assert_eq!(frame.payload(), &[0x45, 0x00, 0x00, 0x14]);
    }

    #[test]
    fn tagged_golden() {
        let frame = EthernetFrame::new_checked(&TAGGED[..]).unwrap();
        assert_eq!(frame.ethertype(), EtherType::Vlan);
        assert_eq!(
            frame.vlan(),
            Some(VlanTag {
                pcp: 5,
                dei: false,
                vid: 100
            })
        );
        assert_eq!(frame.inner_ethertype(), EtherType::Ipv6);
        assert_eq!(frame.header_len(), 18);
        assert_eq!(frame.payload(), &[0x60, 0x00]);

        let frame = EthernetFrame::new_checked(&TAGGED_DEI[..]).unwrap();
        assert_eq!(
            frame.vlan(),
            Some(VlanTag {
                pcp: 0,
                dei: true,
                vid: 4095
            })
        );
        assert_eq!(frame.inner_ethertype(), EtherType::Arp);
        assert!(frame.dst_addr().is_broadcast());
        assert!(frame.payload().is_empty());
    }

    #[test]
    fn tci_round_trip_and_masking() {
        assert_eq!(VlanTag::from_tci(0xa064).tci(), 0xa064);
        assert_eq!(VlanTag::from_tci(0x1fff).tci(), 0x1fff);
        let wide = VlanTag {
            pcp: 0xff,
            dei: false,
            vid: 0xffff,
        };
        assert_eq!(wide.tci(), 0xefff);
    }

    #[test]
    fn repr_round_trip_golden() {
        for golden in [&UNTAGGED[..], &TAGGED[..]] {
            let frame = EthernetFrame::new_checked(golden).unwrap();
            let repr = Repr::parse(&frame).unwrap();
            let mut out = golden.to_vec();
            out[..repr.header_len()].fill(0);
            repr.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
            if repr.vlan.is_some() {
                // emit writes PCP 0; the golden frame has PCP 5.
                assert_eq!(out[14], 0x00);
                out[14] = golden[14];
            }
            assert_eq!(out, golden);
        }
        let repr = Repr::parse(&EthernetFrame::new_checked(&TAGGED[..]).unwrap()).unwrap();
        assert_eq!(
            repr,
            Repr {
                src_addr: SRC,
                dst_addr: DST,
                vlan: Some(100),
                ethertype: EtherType::Ipv6
            }
        );
        assert_eq!(repr.buffer_len(), 18);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&UNTAGGED[..len]).err(),
                Some(Error::Truncated),
                "untagged, {len} bytes"
            );
        }
        for len in 0..VLAN_HEADER_LEN {
            let frame = EthernetFrame::new_unchecked(&TAGGED[..len]);
            assert_eq!(
                frame.check_len(),
                Err(Error::Truncated),
                "tagged, {len} bytes"
            );
            assert_eq!(Repr::parse(&frame), Err(Error::Truncated));
        }
        assert!(EthernetFrame::new_checked(&TAGGED[..VLAN_HEADER_LEN]).is_ok());
    }

    #[test]
    fn stacked_tags_are_unsupported() {
        let mut qinq = TAGGED;
        qinq[16] = 0x81;
        qinq[17] = 0x00;
        let frame = EthernetFrame::new_checked(&qinq[..]).unwrap();
        assert_eq!(frame.inner_ethertype(), EtherType::Vlan);
        assert_eq!(Repr::parse(&frame), Err(Error::Unsupported));
    }

    #[test]
    fn retagging_a_short_checked_view_does_not_panic() {
        let mut buf = UNTAGGED[..14].to_vec();
        let mut frame = EthernetFrame::new_checked(&mut buf[..]).unwrap();
        frame.set_ethertype(EtherType::Vlan);
        assert_eq!(frame.vlan(), None);
        assert_eq!(frame.inner_ethertype(), EtherType::Vlan);
        assert!(frame.payload().is_empty());
        assert!(frame.payload_mut().is_empty());
        assert_eq!(frame.check_len(), Err(Error::Truncated));
    }

    #[test]
    fn setters_write_the_fields() {
        let mut buf = [0u8; 20];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        frame.set_dst_addr(DST);
        frame.set_src_addr(SRC);
        frame.set_ethertype(EtherType::Vlan);
        frame.set_vlan(VlanTag {
            pcp: 5,
            dei: false,
            vid: 100,
        });
        frame.set_inner_ethertype(EtherType::Ipv6);
        frame.payload_mut().copy_from_slice(&[0x60, 0x00]);
        assert_eq!(buf, TAGGED);
    }

    fn ethertype_strategy() -> impl Strategy<Value = EtherType> {
        // Any type but 0x8100, which the single-tag Repr cannot carry as a payload type.
        any::<u16>()
            .prop_filter("not a second tag", |t| *t != 0x8100)
            .prop_map(EtherType::from)
    }

    proptest! {
        #[test]
        fn repr_emit_parse_round_trip(
            src in any::<[u8; 6]>(),
            dst in any::<[u8; 6]>(),
            vlan in proptest::option::of(0u16..4096),
            ethertype in ethertype_strategy(),
        ) {
            let repr = Repr { src_addr: MacAddr(src), dst_addr: MacAddr(dst), vlan, ethertype };
            let mut buf = vec![0xa5; repr.buffer_len() + 3];
            repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
            let frame = EthernetFrame::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(frame.header_len(), repr.header_len());
            prop_assert_eq!(frame.payload(), &[0xa5u8; 3][..]);
            prop_assert_eq!(Repr::parse(&frame).unwrap(), repr);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(frame) = EthernetFrame::new_checked(&bytes[..]) {
                let _ = (frame.dst_addr(), frame.src_addr(), frame.vlan(), frame.inner_ethertype());
                prop_assert_eq!(frame.payload().len(), bytes.len() - frame.header_len());
                let _ = Repr::parse(&frame);
            }
        }
    }
}
