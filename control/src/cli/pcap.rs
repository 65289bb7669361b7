//! The classic libpcap file format: a writer (nanosecond timestamps, Ethernet link type) for
//! `flagella monitor --pcap` and `flagella replay --drops`, what tshark, tcpdump and Wireshark
//! open; and a reader for `flagella replay --pcap` (micro- or nanosecond files of either byte
//! order, Ethernet link type: what tcpdump, tshark -F pcap and the monitor write).
//!
//! Each record holds the bytes the dataplane captured (the first `snaplen` of the frame) and
//! the frame's original length, so tools show truncated frames as such.

use std::io::{self, Write};

/// Magic number of a nanosecond-resolution pcap file (libpcap's `NSEC_TCPDUMP_MAGIC`).
const MAGIC_NS: u32 = 0xa1b2_3c4d;
/// Magic number of a microsecond-resolution pcap file (libpcap's `TCPDUMP_MAGIC`).
const MAGIC_US: u32 = 0xa1b2_c3d4;
/// Larger records than this are refused (a corrupt length, not a frame).
const MAX_RECORD: u32 = 256 * 1024;
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

/// One record of a capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// The captured bytes (maybe fewer than the frame had).
    pub data: Vec<u8>,
    /// The frame's length on the wire.
    pub original_len: u32,
}

/// Reads a whole pcap file's records. Errors say what the file is instead and what to do.
pub fn read_pcap(bytes: &[u8]) -> Result<Vec<Record>, String> {
    let header = bytes
        .get(..24)
        .ok_or("shorter than a pcap header (24 bytes): not a pcap file")?;
    let magic_le = u32_le(header, 0);
    let (big_endian, nanos) = match (magic_le, magic_le.swap_bytes()) {
        (MAGIC_NS, _) => (false, true),
        (MAGIC_US, _) => (false, false),
        (_, MAGIC_NS) => (true, true),
        (_, MAGIC_US) => (true, false),
        _ => {
            return Err(format!(
                "magic {magic_le:#010x} is not a classic pcap file's (pcapng? convert it with \
                 `tshark -F pcap -r IN -w OUT` or `editcap -F pcap IN OUT`)"
            ))
        }
    };
    let word = |b: &[u8], at: usize| {
        let v = u32_le(b, at);
        if big_endian {
            v.swap_bytes()
        } else {
            v
        }
    };
    let link = word(header, 20);
    if link != LINKTYPE_ETHERNET {
        return Err(format!(
            "link type {link} is not Ethernet (1): capture on the pods' veths or the uplink"
        ));
    }
    let mut out = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let n = out.len() + 1;
        let rec = bytes.get(at..at + 16).ok_or(format!(
            "record {n}: the file ends inside its header (truncated file)"
        ))?;
        let (secs, frac, caplen, len) = (word(rec, 0), word(rec, 4), word(rec, 8), word(rec, 12));
        if caplen > MAX_RECORD {
            return Err(format!(
                "record {n}: {caplen} bytes is not a frame (corrupt file)"
            ));
        }
        let data = bytes
            .get(at + 16..at + 16 + caplen as usize)
            .ok_or(format!(
                "record {n}: the file ends inside its data (truncated file)"
            ))?;
        let frac_ns = if nanos {
            u64::from(frac)
        } else {
            u64::from(frac) * 1000
        };
        out.push(Record {
            time_ns: u64::from(secs) * 1_000_000_000 + frac_ns,
            data: data.to_vec(),
            original_len: len.max(caplen),
        });
        at += 16 + caplen as usize;
    }
    Ok(out)
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
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

    #[test]
    fn what_the_writer_writes_reads_back() {
        let mut out = Vec::new();
        let mut w = PcapWriter::new(&mut out, 128).unwrap();
        w.write(1_700_000_000_123_456_789, &[1, 2, 3], 60).unwrap();
        w.write(1_700_000_001_000_000_000, &[4; 64], 64).unwrap();
        let r = read_pcap(&out).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].time_ns, 1_700_000_000_123_456_789);
        assert_eq!(
            (r[0].data.as_slice(), r[0].original_len),
            (&[1u8, 2, 3][..], 60)
        );
        assert_eq!(r[1].data, vec![4; 64]);
    }

    #[test]
    fn microsecond_big_endian_files_read_too() {
        let mut b = Vec::new();
        for w in [MAGIC_US, 0x0002_0004, 0, 0, 65535, LINKTYPE_ETHERNET] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        for w in [7u32, 5, 2, 2] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        b.extend_from_slice(&[9, 9]);
        let r = read_pcap(&b).unwrap();
        assert_eq!(r[0].time_ns, 7_000_005_000);
        assert_eq!(r[0].data, [9, 9]);
    }

    #[test]
    fn bad_files_say_what_they_are() {
        assert!(read_pcap(b"short").unwrap_err().contains("not a pcap"));
        let e = read_pcap(&[0x0a, 0x0d, 0x0d, 0x0a].repeat(6)).unwrap_err();
        assert!(e.contains("pcapng"), "{e}");
        let mut out = Vec::new();
        let mut w = PcapWriter::new(&mut out, 128).unwrap();
        w.write(0, &[1; 10], 10).unwrap();
        out.truncate(out.len() - 3);
        assert!(read_pcap(&out).unwrap_err().contains("record 1"));
    }
}
