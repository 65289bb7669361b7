//! The CPU time of a forwarder's packet threads, split into user and kernel time, read from
//! `/proc/PID/task/TID/stat` (fields 14 `utime` and 15 `stime`, in clock ticks).
//!
//! Why: both AF_XDP forwarders here run in copy mode on veth, where the transmit `sendto`
//! makes the kernel copy every frame into an skb and run the receiving pod's network stack on
//! the forwarder's own core. Busy-loop time (flagella's `busy_ns`, OVS's pmd-stats) counts
//! that kernel work as the forwarder's; the user/kernel split shows how much of a forwarder's
//! cost is its own code and how much is the kernel path they share. The same counters are read
//! the same way for both, so the split is symmetric.
//!
//! Resolution: the kernel charges whole ticks (usually 10 ms) to whichever mode a thread is in
//! when the tick fires, so over a window of a few seconds on a busy thread the error is about
//! a percent.

use std::path::Path;

use crate::BenchError;

/// User and kernel CPU time, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user_ns: u64,
    pub kernel_ns: u64,
}

impl CpuTime {
    /// `self - earlier`, field by field (never negative).
    pub fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime {
            user_ns: self.user_ns.saturating_sub(earlier.user_ns),
            kernel_ns: self.kernel_ns.saturating_sub(earlier.kernel_ns),
        }
    }
}

/// The summed CPU time of process `pid`'s threads whose name (`comm`) starts with
/// `name_prefix` (flagella's `worker-`, OVS's `pmd`). An error names the process and says
/// what was missing; no matching thread is an error too, since a ratio built on zero would
/// mislead.
pub fn threads_cpu_time(pid: u32, name_prefix: &str) -> Result<CpuTime, BenchError> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(|e| BenchError::io(format!("listing {dir}"), e))?;
    let ns_per_tick = ns_per_tick()?;
    let mut total = CpuTime::default();
    let mut matched = 0;
    for task in tasks.flatten() {
        let path = task.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue; // the thread exited meanwhile
        };
        if !comm.trim_end().starts_with(name_prefix) {
            continue;
        }
        let Some((utime, stime)) = read_stat(&path.join("stat")) else {
            continue;
        };
        total.user_ns += utime * ns_per_tick;
        total.kernel_ns += stime * ns_per_tick;
        matched += 1;
    }
    if matched == 0 {
        return Err(BenchError::Failed(format!(
            "process {pid} has no thread named {name_prefix}* (is it the forwarder, and is it still running?)"
        )));
    }
    Ok(total)
}

fn read_stat(path: &Path) -> Option<(u64, u64)> {
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

/// (utime, stime) in ticks from one `stat` line. The name in parentheses may contain spaces
/// and parentheses, so fields are counted from the last `)`: after it come field 3 (state)
/// onwards, so utime and stime are the 12th and 13th there.
pub fn parse_stat(line: &str) -> Option<(u64, u64)> {
    let rest = &line[line.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime = fields.next()?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

fn ns_per_tick() -> Result<u64, BenchError> {
    // SAFETY: sysconf takes a plain integer and has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz)
        .ok()
        .filter(|&hz| hz > 0)
        .map(|hz| 1_000_000_000 / hz)
        .ok_or_else(|| BenchError::Failed(format!("sysconf(_SC_CLK_TCK) returned {hz}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        // A real line of a thread named "pmd-c01/id:6", with utime 4821 and stime 10234.
        let line = "4242 (pmd-c01/id:6) R 1 4242 4242 0 -1 4194368 10 0 0 0 4821 10234 0 0 \
                    20 0 9 0 123 456 789";
        assert_eq!(parse_stat(line), Some((4821, 10234)));
        // Spaces and a ')' inside the name do not shift the fields.
        let odd = "7 (a b) c)) S 1 7 7 0 -1 0 0 0 0 0 11 22 0 0 20 0 1 0 1 2 3";
        assert_eq!(parse_stat(odd), Some((11, 22)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn this_test_threads_time_is_readable() {
        // Burn CPU in a named thread, found by its name, until the kernel has charged it a
        // tick: on a loaded machine a fixed wall-clock spin may never get the CPU for one.
        // The bound only keeps a broken reader from hanging the suite.
        let handle = std::thread::Builder::new()
            .name("cputime-probe".into())
            .spawn(|| {
                let give_up = std::time::Instant::now() + std::time::Duration::from_secs(120);
                let mut x = 0u64;
                loop {
                    for _ in 0..1_000_000 {
                        x = x.wrapping_mul(31).wrapping_add(7);
                    }
                    std::hint::black_box(x);
                    let t = threads_cpu_time(std::process::id(), "cputime-probe");
                    let charged = matches!(&t, Ok(t) if t.user_ns + t.kernel_ns > 0);
                    if charged || std::time::Instant::now() > give_up {
                        return t;
                    }
                }
            })
            .expect("spawn");
        let t = handle.join().expect("join").expect("readable");
        assert!(t.user_ns + t.kernel_ns > 0, "{t:?}");
        let err = threads_cpu_time(std::process::id(), "no-such-thread").unwrap_err();
        assert!(err.to_string().contains("no-such-thread"), "{err}");
    }

    #[test]
    fn since_never_goes_negative() {
        let a = CpuTime {
            user_ns: 10,
            kernel_ns: 5,
        };
        let b = CpuTime {
            user_ns: 30,
            kernel_ns: 4,
        };
        assert_eq!(
            b.since(&a),
            CpuTime {
                user_ns: 20,
                kernel_ns: 0
            }
        );
    }
}
