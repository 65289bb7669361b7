//! A pcap file writer (the classic libpcap format, nanosecond timestamps, Ethernet link type),
//! for `flagella monitor --pcap`: what tshark, tcpdump and Wireshark open.
//!
//! Each record holds the bytes the dataplane captured (the first `snaplen` of the frame) and
//! the frame's original length, so tools show truncated frames as such.

use std::io::{self, Write};

/// Magic number of a nanosecond-resolution pcap file (libpcap's `NSEC_TCPDUMP_MAGIC`).
const MAGIC_NS: u32 = 0xa1b2_3c4d;
/// `LINKTYPE_ETHERNET`.
const LINKTYPE_ETHERNET: u32 = 1;

/// Writes a pcap stream to `out`.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header; `snaplen` is the longest record the file will hold.
    pub fn new(mut out: W, snaplen: u32) -> io::Result<Self> {
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&MAGIC_NS.to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
        header.extend_from_slice(&4u16.to_le_bytes());
        header.extend_from_slice(&0i32.to_le_bytes()); // timestamps are UTC
        header.extend_from_slice(&0u32.to_le_bytes()); // accuracy (always 0)
        header.extend_from_slice(&snaplen.to_le_bytes());
        header.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&header)?;
        Ok(PcapWriter { out })
    }

    /// One record: `captured` bytes of a frame of `original_len` bytes, at `time_ns`
    /// nanoseconds since the Unix epoch.
    pub fn write(&mut self, time_ns: u64, captured: &[u8], original_len: u32) -> io::Result<()> {
        let seconds = u32::try_from(time_ns / 1_000_000_000).unwrap_or(u32::MAX);
        let nanos = (time_ns % 1_000_000_000) as u32;
        let len = u32::try_from(captured.len()).unwrap_or(u32::MAX);
        let mut record = Vec::with_capacity(16 + captured.len());
        record.extend_from_slice(&seconds.to_le_bytes());
        record.extend_from_slice(&nanos.to_le_bytes());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&original_len.max(len).to_le_bytes());
        record.extend_from_slice(captured);
        self.out.write_all(&record)?;
        // Flushed per record: a monitor stopped with ^C leaves a complete file.
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    #[test]
    fn writes_the_header_and_records_libpcap_reads() {
        let mut out = Vec::new();
        let mut w = PcapWriter::new(&mut out, 128).unwrap();
        w.write(1_700_000_000_123_456_789, &[1, 2, 3], 60).unwrap();
        assert_eq!(out.len(), 24 + 16 + 3);
        assert_eq!(u32_at(&out, 0), MAGIC_NS);
        assert_eq!(&out[4..8], &[2, 0, 4, 0]);
        assert_eq!(u32_at(&out, 16), 128, "snaplen");
        assert_eq!(u32_at(&out, 20), 1, "Ethernet");
        assert_eq!(u32_at(&out, 24), 1_700_000_000);
        assert_eq!(u32_at(&out, 28), 123_456_789);
        assert_eq!(u32_at(&out, 32), 3, "captured");
        assert_eq!(u32_at(&out, 36), 60, "original length");
        assert_eq!(&out[40..], &[1, 2, 3]);
    }

    #[test]
    fn an_original_length_below_the_capture_is_raised_to_it() {
        let mut out = Vec::new();
        let mut w = PcapWriter::new(&mut out, 128).unwrap();
        w.write(0, &[9; 10], 4).unwrap();
        assert_eq!(u32_at(&out, 36), 10);
    }
}
