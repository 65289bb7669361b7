//! Checks made before the daemon touches anything, each failing with a message that says what
//! to do: root (or the capabilities), AF_XDP in the kernel, the configured interfaces, and a
//! memlock limit high enough for the UMEM and BPF maps (raised when allowed).

use crate::daemon::config::DaemonConfig;

/// Why the daemon refuses to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreflightError {
    #[error("flagella-dataplane must run as root or with CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF (it attaches XDP programs and opens AF_XDP sockets): run it with sudo or from its systemd unit")]
    NotRoot,
    #[error("this kernel has no AF_XDP sockets ({0}): use a kernel built with CONFIG_XDP_SOCKETS=y (Linux 4.18 or later)")]
    NoAfXdp(String),
    #[error("interface `{0}` does not exist: check the [[interface]] names in the configuration against `ip link`")]
    NoInterface(String),
    #[error("the locked-memory limit is {have} bytes and the dataplane needs {need}: raise it (systemd: LimitMEMLOCK=infinity; shell: ulimit -l unlimited)")]
    Memlock { have: u64, need: u64 },
    #[error("interface `{name}` has {rx_queues} receive queues but the configuration serves {served}: frames on the other queues would reach the kernel past the dataplane's policy; set `queues = {rx_queues}` in its [[interface]] section (or reduce the queues: `ethtool -L {name} combined {served}`)")]
    UnservedQueues {
        name: String,
        rx_queues: u32,
        served: u32,
    },
}

/// Runs every check against `cfg`; `need_memlock` is what the UMEMs and maps will pin.
pub fn check(cfg: &DaemonConfig, need_memlock: u64) -> Result<(), PreflightError> {
    check_root()?;
    check_af_xdp()?;
    for iface in &cfg.interfaces {
        ifindex(&iface.name)?;
        check_queues(&iface.name, iface.queues)?;
    }
    ensure_memlock(need_memlock)
}

/// The interface's receive queues (`/sys/class/net/<name>/queues/rx-*`); `None` when sysfs does
/// not say.
pub fn rx_queues(name: &str) -> Option<u32> {
    let dir = std::fs::read_dir(format!("/sys/class/net/{name}/queues")).ok()?;
    let n = dir
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    u32::try_from(n).ok().filter(|n| *n > 0)
}

/// Every receive queue must have a socket: the XDP program passes a frame on a queue without
/// one to the kernel (counted as `no_socket`), which would let it skip policy.
pub fn check_queues(name: &str, served: u32) -> Result<(), PreflightError> {
    match rx_queues(name) {
        Some(rx_queues) if rx_queues > served => Err(PreflightError::UnservedQueues {
            name: name.to_string(),
            rx_queues,
            served,
        }),
        _ => Ok(()),
    }
}

/// Effective user id 0.
pub fn check_root() -> Result<(), PreflightError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root || effective_caps().is_some_and(|caps| caps & NEEDED_CAPS == NEEDED_CAPS) {
        Ok(())
    } else {
        Err(PreflightError::NotRoot)
    }
}

/// CAP_NET_ADMIN (12), CAP_NET_RAW (13) and CAP_BPF (39): what an unprivileged service user
/// needs to attach XDP and open AF_XDP sockets (scripts/systemd/flagella-dataplane.service).
const NEEDED_CAPS: u64 = (1 << 12) | (1 << 13) | (1 << 39);

/// The effective capability set of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Opens (and closes) an AF_XDP socket to see whether the kernel has them.
pub fn check_af_xdp() -> Result<(), PreflightError> {
    // SAFETY: socket() takes plain integers; the returned descriptor is closed right below.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(PreflightError::NoAfXdp(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    // SAFETY: fd is a descriptor this function owns and closes once.
    unsafe { libc::close(fd) };
    Ok(())
}

/// The index of interface `name`.
pub fn ifindex(name: &str) -> Result<u32, PreflightError> {
    let c =
        std::ffi::CString::new(name).map_err(|_| PreflightError::NoInterface(name.to_string()))?;
    // SAFETY: c is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        Err(PreflightError::NoInterface(name.to_string()))
    } else {
        Ok(index)
    }
}

/// `CAP_IPC_LOCK`'s bit in the capability sets.
const CAP_IPC_LOCK: u32 = 14;

/// Whether AF_XDP UMEMs count against RLIMIT_MEMLOCK for this process: the kernel skips the
/// accounting for a process with `CAP_IPC_LOCK` in its effective set (root usually has it;
/// a container's root may lack `CAP_SYS_RESOURCE` and so be unable to raise the limit, which
/// then does not matter). Reads `/proc/self/status`; when it cannot tell, answers `true`.
pub fn umem_counts_against_memlock() -> bool {
    effective_caps().is_none_or(|caps| caps & (1 << CAP_IPC_LOCK) == 0)
}

/// Raises RLIMIT_MEMLOCK to at least `need` bytes when the hard limit allows; errors otherwise.
pub fn ensure_memlock(need: u64) -> Result<(), PreflightError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Ok(()); // Cannot tell: let the kernel be the judge later.
    }
    if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= need {
        return Ok(());
    }
    let want = if lim.rlim_max == libc::RLIM_INFINITY || lim.rlim_max >= need {
        libc::rlimit {
            rlim_cur: need.max(lim.rlim_cur),
            rlim_max: lim.rlim_max,
        }
    } else {
        return Err(PreflightError::Memlock {
            have: lim.rlim_max,
            need,
        });
    };
    // SAFETY: want is a valid rlimit; setrlimit only reads it.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &want) } != 0 {
        return Err(PreflightError::Memlock {
            have: lim.rlim_cur,
            need,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_exists_and_nonsense_does_not() {
        assert!(ifindex("lo").is_ok());
        let err = ifindex("flagella-nope0").unwrap_err();
        assert!(err.to_string().contains("ip link"), "{err}");
        assert!(ifindex("bad\0name").is_err());
    }

    #[test]
    fn memlock_within_the_current_limit_is_fine() {
        assert_eq!(ensure_memlock(0), Ok(()));
    }

    #[test]
    fn root_with_ipc_lock_is_not_charged_for_umems() {
        // Root in a test container normally has CAP_IPC_LOCK; a plain user does not.
        if check_root().is_err() {
            assert!(umem_counts_against_memlock());
        }
    }

    #[test]
    fn loopback_queues_are_read_and_checked() {
        // `lo` has one receive queue on Linux.
        assert_eq!(rx_queues("lo"), Some(1));
        assert!(check_queues("lo", 1).is_ok());
        assert!(
            check_queues("lo", 2).is_ok(),
            "more sockets than queues is harmless"
        );
        assert_eq!(rx_queues("flagella-nonsense0"), None);
        let e = PreflightError::UnservedQueues {
            name: "eth1".into(),
            rx_queues: 4,
            served: 1,
        }
        .to_string();
        assert!(e.contains("queues = 4"), "{e}");
    }

    #[test]
    fn errors_say_what_to_do() {
        assert!(PreflightError::NotRoot.to_string().contains("sudo"));
        let m = PreflightError::Memlock { have: 1, need: 2 }.to_string();
        assert!(m.contains("LimitMEMLOCK"), "{m}");
    }
}
