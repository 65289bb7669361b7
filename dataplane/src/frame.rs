//! Frame buffers with headroom and tailroom, the way AF_XDP UMEM chunks are laid out.
//!
//! A [`Frame`] is a window `[head, head + len)` into a buffer `B`. Encapsulation and the DSR
//! option grow the window at the front ([`Frame::push_front`]) without moving the payload;
//! decapsulation shrinks it ([`Frame::pull_front`]). The same type wraps a `Vec<u8>` in tests and
//! a `&mut [u8]` UMEM chunk in the daemon, so the stages never know where a frame lives.
//!
//! Invariant: `head + len <= buf.len()`; every method keeps it and none can panic.

/// Headroom reserved in front of received frames: room for an outer Ethernet + IPv6 + UDP +
/// Geneve header with a DSR option (14 + 40 + 8 + 8 + 12 = 82), rounded up to a cache line.
pub const DEFAULT_HEADROOM: usize = 128;

/// A packet inside a larger buffer.
#[derive(Debug, Clone)]
pub struct Frame<B> {
    buf: B,
    head: usize,
    len: usize,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Frame<B> {
    /// Wraps `buf` with the packet at `[head, head + len)`; `None` when that window does not fit.
    pub fn new(buf: B, head: usize, len: usize) -> Option<Self> {
        let end = head.checked_add(len)?;
        (end <= buf.as_ref().len()).then_some(Frame { buf, head, len })
    }

    /// The packet bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        // Cannot fail: the invariant holds `head + len <= buf.len()`.
        self.buf
            .as_ref()
            .get(self.head..self.head + self.len)
            .unwrap_or(&[])
    }

    /// The packet bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let (head, len) = (self.head, self.len);
        self.buf
            .as_mut()
            .get_mut(head..head + len)
            .unwrap_or(&mut [])
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes free in front of the packet.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head
    }

    /// Bytes free after the packet.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.buf.as_ref().len() - self.head - self.len
    }

    /// Offset of the packet inside the buffer (what a TX descriptor's `addr` needs).
    #[inline]
    pub fn offset(&self) -> usize {
        self.head
    }

    /// Grows the packet by `n` bytes at the front and returns them for the caller to fill;
    /// `None` (and no change) when the headroom is too small.
    #[inline]
    pub fn push_front(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.head {
            return None;
        }
        self.head -= n;
        self.len += n;
        let head = self.head;
        self.buf.as_mut().get_mut(head..head + n)
    }

    /// Removes `n` bytes from the front; `false` (and no change) when the packet is shorter.
    #[inline]
    pub fn pull_front(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        self.head += n;
        self.len -= n;
        true
    }

    /// Sets the packet length, trimming it or extending it into the tailroom; `false` (and no
    /// change) when the buffer is too small.
    #[inline]
    pub fn set_len(&mut self, len: usize) -> bool {
        if self.head + len > self.buf.as_ref().len() {
            return false;
        }
        self.len = len;
        true
    }

    /// Opens a gap of `n` bytes at offset `at` of the packet by moving the first `at` bytes
    /// forward into the headroom (the payload after `at` stays where it is). Used to insert an
    /// IPv4 option after the Ethernet + IP header. Returns the gap; `None` when `at > len` or the
    /// headroom is too small.
    pub fn insert_gap(&mut self, at: usize, n: usize) -> Option<&mut [u8]> {
        if at > self.len || n > self.head {
            return None;
        }
        let old_head = self.head;
        self.head -= n;
        self.len += n;
        let buf = self.buf.as_mut();
        buf.copy_within(old_head..old_head + at, self.head);
        let gap = self.head + at;
        buf.get_mut(gap..gap + n)
    }

    /// Removes `n` bytes at offset `at` by moving the first `at` bytes backwards over them (the
    /// reverse of [`Frame::insert_gap`]); `false` when the range is outside the packet.
    pub fn remove_range(&mut self, at: usize, n: usize) -> bool {
        match at.checked_add(n) {
            Some(end) if end <= self.len => {}
            _ => return false,
        }
        let head = self.head;
        self.buf.as_mut().copy_within(head..head + at, head + n);
        self.head += n;
        self.len -= n;
        true
    }

    /// The underlying buffer.
    pub fn buffer(&self) -> &B {
        &self.buf
    }

    /// Gives the buffer back.
    pub fn into_buffer(self) -> B {
        self.buf
    }
}

impl Frame<Vec<u8>> {
    /// A heap frame for tests and tools: `packet` copied after `headroom` free bytes, with
    /// `tailroom` free bytes after it.
    pub fn from_packet(packet: &[u8], headroom: usize, tailroom: usize) -> Self {
        let mut buf = vec![0u8; headroom + packet.len() + tailroom];
        buf[headroom..headroom + packet.len()].copy_from_slice(packet);
        Frame {
            buf,
            head: headroom,
            len: packet.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_and_pull_front() {
        let mut f = Frame::from_packet(&[1, 2, 3], 4, 2);
        assert_eq!((f.headroom(), f.tailroom()), (4, 2));
        f.push_front(2).unwrap().copy_from_slice(&[9, 8]);
        assert_eq!(f.data(), &[9, 8, 1, 2, 3]);
        assert!(f.push_front(3).is_none());
        assert_eq!(f.data(), &[9, 8, 1, 2, 3]);
        assert!(f.pull_front(2));
        assert_eq!(f.data(), &[1, 2, 3]);
        assert!(!f.pull_front(4));
    }

    #[test]
    fn gap_insert_and_remove_keep_payload_in_place() {
        let mut f = Frame::from_packet(&[1, 2, 3, 4], 4, 0);
        f.insert_gap(2, 2).unwrap().copy_from_slice(&[7, 7]);
        assert_eq!(f.data(), &[1, 2, 7, 7, 3, 4]);
        assert!(f.remove_range(2, 2));
        assert_eq!(f.data(), &[1, 2, 3, 4]);
        assert!(!f.remove_range(3, 2));
        assert!(f.insert_gap(5, 1).is_none());
    }

    #[test]
    fn set_len_respects_buffer() {
        let mut f = Frame::from_packet(&[1, 2], 0, 2);
        assert!(f.set_len(4));
        assert!(!f.set_len(5));
        assert!(f.set_len(1));
        assert_eq!(f.data(), &[1]);
    }

    #[test]
    fn new_rejects_out_of_bounds_window() {
        assert!(Frame::new(vec![0u8; 4], 2, 3).is_none());
        assert!(Frame::new(vec![0u8; 4], usize::MAX, 3).is_none());
        assert!(Frame::new(&mut [0u8; 4][..], 1, 3).is_some());
    }
}
