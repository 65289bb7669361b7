//! The probes of `converge`: a sender in pod A and a receiver in pod B, each a thread of this
//! process that entered the pod's network namespace (`setns` on a thread changes only that
//! thread), so arrival times land in shared atomics on the same CLOCK_MONOTONIC as the etcd
//! writes, with no process or pipe in between.
//!
//! - **Sender**: one UDP datagram every `interval` (deadline-paced `clock_nanosleep`, timer
//!   slack set to 1 ns), each from a distinct 5-tuple: probe `k` goes from source port
//!   `20000 + (k / 60000) % 40000` to destination port `1024 + k % 60000`. So every probe is a
//!   new flow that the dataplane decides by policy; conntrack cannot carry one (a tuple comes
//!   back after 2.4e9 probes, days at 10 kHz). The payload is [`MAGIC`] and `k`.
//! - **Receiver**: an `AF_PACKET` socket on B's `eth0` (every destination port, before the
//!   UDP layer, which answers port-unreachable and drops them) that keeps the time of the
//!   latest probe, a count, and — once armed by [`Probes::arm`] — the time of the first probe
//!   after that.
//! - [`Probes`] owns both threads and stops them on drop.

use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::BenchError;

/// First 8 payload bytes of a probe.
pub const MAGIC: u64 = 0x666c_6167_6376_7267; // "flagcvrg"
const SRC_PORT_FIRST: u16 = 20000;
const SRC_PORTS: u64 = 40000;
const DST_PORT_FIRST: u16 = 1024;
const DST_PORTS: u64 = 60000;

/// CLOCK_MONOTONIC in nanoseconds.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Source and destination ports of probe `k` (see the module doc).
pub fn probe_ports(k: u64) -> (u16, u16) {
    let src = SRC_PORT_FIRST + u16::try_from((k / DST_PORTS) % SRC_PORTS).unwrap_or(0);
    let dst = DST_PORT_FIRST + u16::try_from(k % DST_PORTS).unwrap_or(0);
    (src, dst)
}

/// Moves the calling thread into network namespace `ns` (`/run/netns/<ns>`).
pub fn enter_netns(ns: &str) -> Result<(), BenchError> {
    let path = format!("/run/netns/{ns}");
    let file =
        std::fs::File::open(&path).map_err(|e| BenchError::io(format!("opening {path}"), e))?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a valid namespace fd; it affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(BenchError::io(
            format!("setns into {ns}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// What the receiver shares.
#[derive(Debug, Default)]
pub struct Arrivals {
    /// Time of the latest probe (0: none yet).
    pub last_ns: AtomicU64,
    pub count: AtomicU64,
    /// Armed: the first probe stores its time in `first_ns` (0: none since arming).
    pub armed: AtomicBool,
    pub first_ns: AtomicU64,
    /// Probe number of that first probe.
    pub first_seq: AtomicU64,
}

/// What the sender shares.
#[derive(Debug, Default)]
pub struct Sent {
    pub count: AtomicU64,
    pub started_ns: AtomicU64,
    pub errors: AtomicU64,
}

/// The two probe threads.
#[derive(Debug)]
pub struct Probes {
    pub arrivals: Arc<Arrivals>,
    pub sent: Arc<Sent>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), BenchError>>>,
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Probes {
    /// Starts the receiver in `b_ns` (on `eth0`, for probes from `a_ip`) and the sender in
    /// `a_ns` (to `b_ip`, one probe every `interval`).
    pub fn start(
        a_ns: &str,
        b_ns: &str,
        a_ip: Ipv4Addr,
        b_ip: Ipv4Addr,
        interval: Duration,
    ) -> Result<Probes, BenchError> {
        let mut probes = Probes {
            arrivals: Arc::new(Arrivals::default()),
            sent: Arc::new(Sent::default()),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        {
            let (b_ns, arrivals, stop) = (
                b_ns.to_string(),
                probes.arrivals.clone(),
                probes.stop.clone(),
            );
            let ready = ready_tx.clone();
            probes.threads.push(std::thread::spawn(move || {
                let sock = enter_netns(&b_ns).and_then(|()| PacketSocket::open("eth0"));
                let sock = match sock {
                    Ok(s) => {
                        let _ = ready.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e.to_string()));
                        return Err(e);
                    }
                };
                receive(&sock, a_ip, &arrivals, &stop);
                Ok(())
            }));
        }
        wait_ready(&ready_rx, "the probe receiver in pod B")?;
        {
            let (a_ns, sent, stop) = (a_ns.to_string(), probes.sent.clone(), probes.stop.clone());
            let ready = ready_tx;
            probes.threads.push(std::thread::spawn(move || {
                if let Err(e) = enter_netns(&a_ns) {
                    let _ = ready.send(Err(e.to_string()));
                    return Err(e);
                }
                let _ = ready.send(Ok(()));
                send(b_ip, interval, &sent, &stop);
                Ok(())
            }));
        }
        wait_ready(&ready_rx, "the probe sender in pod A")?;
        Ok(probes)
    }

    /// Arms the receiver: the next probe's time goes to `first_ns`.
    pub fn arm(&self) {
        self.arrivals.first_ns.store(0, Ordering::SeqCst);
        self.arrivals.armed.store(true, Ordering::SeqCst);
    }

    /// The first probe's time since [`Self::arm`], if one came.
    pub fn first(&self) -> Option<(u64, u64)> {
        let t = self.arrivals.first_ns.load(Ordering::SeqCst);
        (t != 0).then(|| (t, self.arrivals.first_seq.load(Ordering::SeqCst)))
    }

    pub fn last_arrival_ns(&self) -> u64 {
        self.arrivals.last_ns.load(Ordering::SeqCst)
    }

    /// Mean interval between probes actually sent so far, in ns.
    pub fn achieved_interval_ns(&self) -> Option<f64> {
        let n = self.sent.count.load(Ordering::Relaxed);
        let start = self.sent.started_ns.load(Ordering::Relaxed);
        (n > 1).then(|| (now_ns().saturating_sub(start)) as f64 / (n - 1) as f64)
    }
}

fn wait_ready(
    rx: &std::sync::mpsc::Receiver<Result<(), String>>,
    what: &str,
) -> Result<(), BenchError> {
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(BenchError::Failed(format!("{what}: {e}"))),
        Err(_) => Err(BenchError::Failed(format!("{what} did not start"))),
    }
}

/// The sender loop (see the module doc).
fn send(b_ip: Ipv4Addr, interval: Duration, sent: &Sent, stop: &AtomicBool) {
    // SAFETY: prctl with an integer argument; 1 ns of slack makes the sleeps precise.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64) };
    let step = u64::try_from(interval.as_nanos()).unwrap_or(100_000).max(1);
    let mut next = now_ns();
    sent.started_ns.store(next, Ordering::Relaxed);
    let mut k = 0u64;
    let mut socket: Option<(u16, UdpSocket)> = None;
    let mut payload = [0u8; 16];
    payload[..8].copy_from_slice(&MAGIC.to_be_bytes());
    while !stop.load(Ordering::Relaxed) {
        let (src, dst) = probe_ports(k);
        if socket.as_ref().map(|(p, _)| *p) != Some(src) {
            socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, src))
                .ok()
                .map(|s| (src, s));
        }
        payload[8..].copy_from_slice(&k.to_be_bytes());
        let ok = socket
            .as_ref()
            .is_some_and(|(_, s)| s.send_to(&payload, SocketAddrV4::new(b_ip, dst)).is_ok());
        if ok {
            sent.count.fetch_add(1, Ordering::Relaxed);
        } else {
            sent.errors.fetch_add(1, Ordering::Relaxed);
        }
        k += 1;
        next += step;
        let now = now_ns();
        if next > now {
            sleep_until(next);
        } else if now - next > 100 * step {
            next = now; // far behind (descheduled): do not burst to catch up
        }
    }
}

fn sleep_until(t_ns: u64) {
    let ts = libc::timespec {
        tv_sec: i64::try_from(t_ns / 1_000_000_000).unwrap_or(0),
        tv_nsec: i64::try_from(t_ns % 1_000_000_000).unwrap_or(0),
    };
    // SAFETY: absolute sleep on CLOCK_MONOTONIC with a valid timespec; EINTR only wakes early.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}

/// An `AF_PACKET`/`SOCK_DGRAM` socket for IPv4 on one interface (frames arrive without their
/// Ethernet header), with a 20 ms receive timeout so the loop can see `stop`.
struct PacketSocket {
    fd: i32,
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.fd) };
    }
}

impl PacketSocket {
    fn open(dev: &str) -> Result<PacketSocket, BenchError> {
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
        if fd < 0 {
            return Err(BenchError::io(
                "AF_PACKET socket (needs root)",
                std::io::Error::last_os_error(),
            ));
        }
        let sock = PacketSocket { fd };
        let name = CString::new(dev).map_err(|_| BenchError::Failed("bad device name".into()))?;
        // SAFETY: name is a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(BenchError::io(
                format!("no interface {dev}"),
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
        // SAFETY: bind with a sockaddr_ll of the right size.
        let rc = unsafe {
            libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(BenchError::io(
                format!("binding to {dev}"),
                std::io::Error::last_os_error(),
            ));
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: setsockopt with a timeval of the right size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(sock)
    }

    fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: recv into a buffer we own, with its length.
        let n = unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        usize::try_from(n).ok()
    }
}

/// The probe number if `packet` (an IPv4 packet) is a probe from `from`.
pub fn parse_probe(packet: &[u8], from: Ipv4Addr) -> Option<u64> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.first()? >> 4 != 4 || ihl < 20 || *packet.get(9)? != 17 {
        return None;
    }
    let src = Ipv4Addr::new(
        *packet.get(12)?,
        *packet.get(13)?,
        *packet.get(14)?,
        *packet.get(15)?,
    );
    if src != from {
        return None;
    }
    let payload = packet.get(ihl + 8..ihl + 8 + 16)?;
    let magic = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    if magic != MAGIC {
        return None;
    }
    Some(u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?))
}

fn receive(sock: &PacketSocket, from: Ipv4Addr, arrivals: &Arrivals, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Some(n) = sock.recv(&mut buf) else {
            continue;
        };
        let Some(seq) = buf.get(..n).and_then(|p| parse_probe(p, from)) else {
            continue;
        };
        let t = now_ns();
        arrivals.last_ns.store(t, Ordering::SeqCst);
        arrivals.count.fetch_add(1, Ordering::Relaxed);
        if arrivals.armed.load(Ordering::SeqCst)
            && arrivals
                .first_ns
                .compare_exchange(0, t, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            arrivals.first_seq.store(seq, Ordering::SeqCst);
            arrivals.armed.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_make_distinct_tuples() {
        assert_eq!(probe_ports(0), (20000, 1024));
        assert_eq!(probe_ports(59_999), (20000, 61_023));
        assert_eq!(probe_ports(60_000), (20001, 1024));
        assert_eq!(probe_ports(60_000 * 40_000), (20000, 1024));
        let mut seen = std::collections::HashSet::new();
        for k in (0..3_000_000).step_by(7) {
            assert!(seen.insert(probe_ports(k)), "{k}");
        }
    }

    #[test]
    fn parses_probes_only() {
        let from = Ipv4Addr::new(10, 81, 0, 11);
        let mut p = vec![
            0x45, 0, 0, 44, 0, 0, 0, 0, 64, 17, 0, 0, 10, 81, 0, 11, 10, 81, 0, 12,
        ];
        p.extend_from_slice(&[0x4e, 0x20, 0x04, 0x00, 0, 24, 0, 0]);
        p.extend_from_slice(&MAGIC.to_be_bytes());
        p.extend_from_slice(&42u64.to_be_bytes());
        assert_eq!(parse_probe(&p, from), Some(42));
        assert_eq!(parse_probe(&p, Ipv4Addr::new(10, 81, 0, 13)), None);
        let mut tcp = p.clone();
        tcp[9] = 6;
        assert_eq!(parse_probe(&tcp, from), None);
        let mut other = p.clone();
        other[28] ^= 1;
        assert_eq!(parse_probe(&other, from), None);
        assert_eq!(parse_probe(&p[..40], from), None);
        assert_eq!(parse_probe(&[], from), None);
    }
}
