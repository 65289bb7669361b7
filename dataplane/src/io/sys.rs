//! The few system calls the I/O layer makes besides xsk-rs's: interface lookup, CPU pinning, the
//! copy-mode TX budget socket option, a socket's `XDP_STATISTICS` (read off the worker by
//! [`SocketStatsReader`], through its own duplicate of the descriptor), and the monotonic clock.
//!
//! Each wrapper is safe: it validates its inputs, owns every buffer it passes to the kernel for
//! the duration of the call, and turns a failure into an `io::Error`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use super::counters::SocketStats;

/// `SOL_XDP` option that raises how many TX descriptors one `sendto` turns into socket buffers
/// in copy mode (default 32; allowed 32..=TX ring size). Linux 6.17 and later; the libc crate
/// and this machine's headers do not name it yet. Value from `include/uapi/linux/if_xdp.h`.
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

/// The index of interface `name` in the calling thread's network namespace.
pub(crate) fn ifindex(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string that lives across the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Pins the calling thread to CPU `core`.
pub(crate) fn pin_current_thread(core: usize) -> io::Result<()> {
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    if core >= max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {core} is beyond the {max} CPUs a cpu_set_t holds"),
        ));
    }
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `core` was checked to be inside the set just above.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises the copy-mode TX budget of AF_XDP socket `fd` to `budget` descriptors per `sendto`.
/// Fails with `ENOPROTOOPT` on kernels without the option and `EACCES` outside 32..=TX size.
pub(crate) fn set_tx_budget(fd: RawFd, budget: u32) -> io::Result<()> {
    let value: libc::c_uint = budget;
    // SAFETY: `value` is a live c_uint and the length passed is its size; the kernel only
    // reads it. An invalid fd is reported as EBADF, not undefined behaviour.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            (&value as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `struct xdp_statistics` of `include/uapi/linux/if_xdp.h` (Linux 5.9 and later: six counters).
#[repr(C)]
#[derive(Default)]
struct XdpStatistics {
    rx_dropped: u64,
    rx_invalid_descs: u64,
    tx_invalid_descs: u64,
    rx_ring_full: u64,
    rx_fill_ring_empty_descs: u64,
    tx_ring_empty_descs: u64,
}

/// The `XDP_STATISTICS` of AF_XDP socket `fd`. Fields an older kernel does not fill stay 0.
pub(crate) fn xdp_statistics(fd: BorrowedFd<'_>) -> io::Result<SocketStats> {
    let mut raw = XdpStatistics::default();
    let mut len = std::mem::size_of::<XdpStatistics>() as libc::socklen_t;
    // SAFETY: `raw` is a live, writable struct of `len` bytes and `len` a live socklen_t; the
    // kernel writes at most `len` bytes and stores the length it wrote.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            libc::XDP_STATISTICS,
            (&mut raw as *mut XdpStatistics).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(SocketStats {
        rx_dropped: raw.rx_dropped,
        rx_invalid_descs: raw.rx_invalid_descs,
        tx_invalid_descs: raw.tx_invalid_descs,
        rx_ring_full: raw.rx_ring_full,
        rx_fill_ring_empty_descs: raw.rx_fill_ring_empty_descs,
        tx_ring_empty_descs: raw.tx_ring_empty_descs,
    })
}

/// Reads one AF_XDP socket's `XDP_STATISTICS` off the worker, through a duplicate descriptor
/// (the socket stays open while the reader lives, even after its worker closed its own).
#[derive(Debug)]
pub struct SocketStatsReader {
    fd: OwnedFd,
}

impl SocketStatsReader {
    /// Duplicates `fd` (a socket of [`SocketInfo`](super::SocketInfo)); the caller's descriptor
    /// must be open now.
    pub fn new(fd: RawFd) -> io::Result<Self> {
        // SAFETY: the caller passes the descriptor of a socket its worker holds open during this
        // call; the borrow ends before `new` returns (we keep only our duplicate).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        Ok(SocketStatsReader {
            fd: borrowed.try_clone_to_owned()?,
        })
    }

    /// The socket's statistics now (one `getsockopt`).
    pub fn read(&self) -> io::Result<SocketStats> {
        xdp_statistics(self.fd.as_fd())
    }
}

/// Nanoseconds of `CLOCK_MONOTONIC` (the clock conntrack ages entries with).
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel (vDSO) to write; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail and `ts` stays valid either way.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_an_index_and_nonsense_does_not() {
        assert!(ifindex("lo").is_some());
        assert_eq!(ifindex("no-such-if-xyz"), None);
        assert_eq!(ifindex("bad\0name"), None);
    }

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn pinning_beyond_the_set_is_refused() {
        let err = pin_current_thread(1 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn pinning_to_the_current_cpu_leaves_only_that_cpu() {
        std::thread::spawn(|| {
            // SAFETY: no arguments; returns the CPU the thread runs on, or -1.
            let cpu = unsafe { libc::sched_getcpu() };
            let cpu = usize::try_from(cpu).expect("sched_getcpu");
            pin_current_thread(cpu).expect("pin to the CPU the thread is on");
            // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
            let rc = unsafe {
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set)
            };
            assert_eq!(rc, 0);
            // SAFETY: `set` is an initialised cpu_set_t.
            assert_eq!(unsafe { libc::CPU_COUNT(&set) }, 1);
            // SAFETY: `cpu` is below the set size (the kernel reported it).
            assert!(unsafe { libc::CPU_ISSET(cpu, &set) });
        })
        .join()
        .expect("pinned thread");
    }

    #[test]
    fn statistics_of_a_non_xdp_socket_fail() {
        use std::os::fd::AsFd;
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
        assert!(xdp_statistics(udp.as_fd()).is_err());
    }

    #[test]
    fn tx_budget_on_a_non_xdp_socket_fails() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
        use std::os::fd::AsRawFd;
        assert!(set_tx_budget(udp.as_raw_fd(), 256).is_err());
        assert!(set_tx_budget(-1, 256).is_err());
    }
}
