//! Wire formats, in the style of smoltcp's `wire` module.
//!
//! Every protocol has two levels:
//! - a zero-copy view `Packet<T: AsRef<[u8]>>` (getters), writable when `T: AsMut<[u8]>`
//!   (setters). `new_checked` validates lengths once; after it succeeds no accessor can panic.
//! - a small `Repr` with `parse()` from a checked view and `emit()` into a view.
//!
//! Every protocol module is laid out the same way: a private `mod field` of [`Field`] ranges
//! (with `HEADER_LEN` derived from the last one), the view, and a type named `Repr` (used as
//! `tcp::Repr`). Multi-byte fields go through the private `bytes` helpers (`get_u16`,
//! `set_u16`...; no module keeps its own copy); unknown protocol numbers are values
//! (`Unknown(u8)`), and all checksum arithmetic lives in [`checksum`].
//!
//! Things several protocols share are defined once: the IP protocol number in [`ip`]
//! (re-exported by `ipv4` and `ipv6`), the TCP flags in [`tcp`], and the DSR frontend in [`dsr`]
//! (its IPv4-option and Geneve-option encodings sit in `ipv4` and `geneve`).

pub mod arp;
mod bytes;
pub mod checksum;
pub mod dsr;
pub mod ethernet;
pub mod geneve;
pub mod icmpv4;
pub mod icmpv6;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vxlan;

/// A byte range inside a header.
pub type Field = core::ops::Range<usize>;
/// A field from a byte offset to the end of the header.
pub type Rest = core::ops::RangeFrom<usize>;

/// Why a header could not be parsed. Kept small and `Copy` so the fast path can map it to a
/// drop reason without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends before the header (or a length field) says it does.
    #[error("truncated header")]
    Truncated,
    /// A field holds a value the protocol forbids (bad version, header length, flags...).
    #[error("malformed header")]
    Malformed,
    /// A checksum does not verify.
    #[error("bad checksum")]
    Checksum,
    /// Well-formed but not something this implementation handles.
    #[error("unsupported")]
    Unsupported,
}

pub type Result<T> = core::result::Result<T, Error>;

/// Declares a `u8`-valued enum with an `Unknown(u8)` variant and conversions both ways.
/// `Unknown` only ever holds values that have no name (build values with `From<u8>`).
macro_rules! u8_enum {
    (
        $(#[$attr:meta])*
        pub enum $name:ident {
            $( $(#[$vattr:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$attr])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vattr])* $variant, )+
            /// A value this implementation does not name.
            Unknown(u8),
        }

        impl From<u8> for $name {
            #[inline]
            fn from(value: u8) -> $name {
                match value {
                    $( $value => $name::$variant, )+
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for u8 {
            #[inline]
            fn from(value: $name) -> u8 {
                match value {
                    $( $name::$variant => $value, )+
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}
pub(crate) use u8_enum;
