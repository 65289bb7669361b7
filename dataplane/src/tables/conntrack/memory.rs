//! The table's memory: arrays allocated, filled and touched once, aligned to and advised into
//! 2 MiB transparent huge pages when they are large enough.
//!
//! Contract: a `HugeArray` owns its allocation like a `Box<[T]>` and frees it on drop; the
//! huge-page advice is a hint whose failure is ignored. An array placed in a state file's
//! mapping ([`HugeArray::in_mapping`], `state_file.rs`) instead keeps the mapping alive, which
//! is unmapped when its last array goes.

/// Tables at least this large are aligned to, and advised into, 2 MiB pages.
pub(super) const HUGE_PAGE: usize = 2 << 20;

/// One of the table's arrays (buckets, tags): one allocation made, filled and touched once.
///
/// Not a `Box<[T]>` because of its alignment: a table of 2 MiB or more is aligned to
/// 2 MiB and advised (`madvise(MADV_HUGEPAGE)`) into transparent huge pages where the kernel
/// offers them, so that a lookup's random bucket needs no page walk of its own (a 34 MiB table
/// in 4 KiB pages misses the TLB on nearly every packet, and each walk is nested under a
/// hypervisor). Smaller tables, and kernels without THP, get ordinary pages: the advice is a
/// hint and its failure is ignored.
pub(super) struct HugeArray<T: Copy> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
    owner: Owner,
}

/// Who frees an array's memory.
enum Owner {
    /// Allocated by [`HugeArray::new`] with this layout, freed on drop.
    Heap(std::alloc::Layout),
    /// Part of a shared file mapping, unmapped when the last of its arrays drops.
    Mapping(#[allow(dead_code)] std::sync::Arc<Mapping>),
}

// SAFETY: `HugeArray` owns its allocation exclusively (like a `Box<[T]>`, and `T: Copy` is
// plain data with no destructor), so moving it to another thread or sharing `&HugeArray` is as
// safe as for the box of a `Send + Sync` element.
unsafe impl<T: Copy + Send> Send for HugeArray<T> {}
// SAFETY: as above; `&HugeArray` only gives out `&[T]`.
unsafe impl<T: Copy + Sync> Sync for HugeArray<T> {}

impl<T: Copy> HugeArray<T> {
    /// `len` (> 0) copies of `fill`; `Err` carries the layout that could not be allocated.
    pub(super) fn new(len: usize, fill: T) -> Result<HugeArray<T>, std::alloc::Layout> {
        let size = len.saturating_mul(std::mem::size_of::<T>());
        let align = if size >= HUGE_PAGE {
            HUGE_PAGE
        } else {
            std::mem::align_of::<T>()
        };
        let layout = std::alloc::Layout::from_size_align(size, align)
            .map_err(|_| std::alloc::Layout::new::<T>())?;
        assert!(len > 0 && size > 0, "a table has at least one bucket");
        // SAFETY: `layout` has a non-zero size (asserted above).
        let raw = unsafe { std::alloc::alloc(layout) }.cast::<T>();
        let ptr = std::ptr::NonNull::new(raw).ok_or(layout)?;
        if align == HUGE_PAGE {
            advise_huge_pages(ptr.as_ptr().cast(), size);
        }
        for i in 0..len {
            // SAFETY: `i < len`, so the write stays inside the allocation of `len` elements,
            // which is aligned for `T`; the memory is uninitialised, so nothing is dropped.
            unsafe { ptr.as_ptr().add(i).write(fill) };
        }
        Ok(HugeArray {
            ptr,
            len,
            owner: Owner::Heap(layout),
        })
    }

    /// `len` elements at `ptr`, inside `mapping`.
    ///
    /// # Safety
    /// `ptr..ptr + len` lies inside `mapping`, is aligned for `T` and holds valid `T`s (the
    /// state file checked their layout and initialised or validated them), and no other
    /// `HugeArray` covers any of it.
    pub(super) unsafe fn in_mapping(
        ptr: std::ptr::NonNull<T>,
        len: usize,
        mapping: std::sync::Arc<Mapping>,
    ) -> HugeArray<T> {
        HugeArray {
            ptr,
            len,
            owner: Owner::Mapping(mapping),
        }
    }
}

impl<T: Copy> std::ops::Deref for HugeArray<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points to `len` initialised elements that `self` owns and that live as
        // long as `self`; shared access follows from `&self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> std::ops::DerefMut for HugeArray<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Drop for HugeArray<T> {
    fn drop(&mut self) {
        if let Owner::Heap(layout) = self.owner {
            // SAFETY: allocated in `new` with exactly `layout`, and freed only here. `T: Copy`
            // has no destructor, so there is nothing to drop in place first.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), layout) };
        }
        // A mapping's array: the `Arc` it holds unmaps with the last one.
    }
}

/// A shared mapping of a state file, unmapped when the last array in it drops; it holds the
/// file (and its lock) as long.
pub(super) struct Mapping {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    _file: std::fs::File,
}

// SAFETY: the mapping is plain memory owned by this value; the arrays in it (which hold the
// `Arc`) give out access with the borrow rules of `HugeArray`, as for heap memory.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` gives no access to the memory by itself.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr + len` is the mapping `open` made, unmapped only here; no array
        // into it is left (they hold the `Arc` this drop ends).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl Mapping {
    /// Maps `len` bytes of `file` shared, read and write, populated; the mapping holds the file
    /// (and so its lock).
    pub(super) fn map_shared(file: std::fs::File, len: usize) -> Result<Mapping, String> {
        // SAFETY: a new shared mapping of `len` bytes of a file at least that long (sized by the
        // caller or checked), owned by the returned `Mapping` until its drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "mapping {len} bytes: {}",
                std::io::Error::last_os_error()
            ));
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>()).ok_or("mapping returned null")?;
        Ok(Mapping {
            ptr,
            len,
            _file: file,
        })
    }

    /// The first byte of the mapping.
    pub(super) fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

/// Asks the kernel to back `len` bytes at `addr` (2 MiB aligned) with transparent huge pages.
/// Best effort: the table works the same without them.
fn advise_huge_pages(addr: *mut libc::c_void, len: usize) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `addr..addr + len` is one live allocation of ours, page aligned (2 MiB);
        // MADV_HUGEPAGE changes only how the kernel backs it, never its contents, and an error
        // (no THP support) leaves the mapping as it was.
        let _ = unsafe { libc::madvise(addr, len, libc::MADV_HUGEPAGE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (addr, len);
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;

    #[test]
    fn large_tables_are_aligned_for_huge_pages() {
        // 2^14 slots = 2^11 buckets of 1024 bytes: 2 MiB.
        let big = table(1 << 14);
        assert_eq!(big.buckets.as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(big.buckets.len(), (1 << 14) / WAYS);
        let small = table(64);
        assert_eq!(small.buckets.as_ptr() as usize % 64, 0);
        assert!(small.tags.iter().all(|t| *t == Tags::EMPTY));
    }
}
