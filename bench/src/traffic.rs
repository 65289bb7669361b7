//! The traffic ends: a UDP generator and a UDP sink, each one process inside a pod namespace.
//!
//! Generator: one UDP socket per flow (so flow `i` has source port `src_port + i`), all
//! connected to `--dst`; each `sendmmsg` call sends `batch` datagrams on one socket, and the
//! sockets take turns, so every flow is touched once per `flows` calls. The payload is
//! `size - 42` bytes of zeros (Ethernet + IPv4 + UDP headers make up the rest). A send that
//! fails with ENOBUFS/EAGAIN is counted and retried on the next turn: the generator measures
//! what it could push, it does not stop.
//!
//! Sink: one UDP socket on `0.0.0.0:port` with a large receive buffer, `recvmmsg` in batches
//! with a 100 ms timeout so it can report on time while idle. It prints either a line per
//! second for people or, with `--samples`, `sample <CLOCK_MONOTONIC ns> <packets>` every
//! 100 ms, which `forward` uses to measure exactly over its window. The last line is always
//! `total <packets> <seconds> <pps>`.

use std::io::Write;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::cli::{GenArgs, SinkArgs, MIN_FRAME};
use crate::BenchError;

/// At most this many latency samples are kept by `sink --latency` (32 MiB).
const MAX_LATENCY_SAMPLES: usize = 4_000_000;

/// Receive buffer the sink asks for (SO_RCVBUFFORCE as root, else capped by rmem_max).
const SINK_RCVBUF: libc::c_int = 64 << 20;

/// Pins the calling thread to `core`.
pub fn pin(core: usize) -> Result<(), BenchError> {
    if core >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(BenchError::Failed(format!("CPU {core} is out of range")));
    }
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `core` was checked to fit in the set above.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(BenchError::io(
            format!("pinning to CPU {core}"),
            std::io::Error::last_os_error(),
        ))
    }
}

/// CLOCK_MONOTONIC in nanoseconds (shared by every process on the machine).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call writes into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

fn udp_socket() -> Result<OwnedFd, BenchError> {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(BenchError::io("socket", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn check(rc: libc::c_int, what: impl FnOnce() -> String) -> Result<(), BenchError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(BenchError::io(what(), std::io::Error::last_os_error()))
    }
}

fn set_int_opt(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> bool {
    // SAFETY: `v` is a live c_int and its size is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit (10k flows need 10k sockets).
fn raise_fd_limit(needed: u64) -> Result<(), BenchError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit the call writes into.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    check(rc, || "getrlimit".into())?;
    if lim.rlim_cur >= needed {
        return Ok(());
    }
    lim.rlim_cur = lim.rlim_max.max(needed);
    lim.rlim_max = lim.rlim_cur;
    // SAFETY: `lim` is a valid rlimit the call reads.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    check(rc, || {
        format!("raising the open-file limit to {needed} (run as root or `ulimit -n {needed}`)")
    })
}

/// One connected UDP socket per flow, source ports `src_port..src_port+flows`.
fn flow_sockets(args: &GenArgs) -> Result<Vec<OwnedFd>, BenchError> {
    raise_fd_limit(u64::from(args.flows) + 64)?;
    let dst = sockaddr(args.dst);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let mut out = Vec::with_capacity(args.flows as usize);
    for i in 0..args.flows {
        let port = u32::from(args.src_port) + i;
        let port = u16::try_from(port).map_err(|_| {
            BenchError::Failed(format!(
                "source ports {}..{} pass 65535: lower --src-port",
                args.src_port,
                u32::from(args.src_port) + args.flows
            ))
        })?;
        let fd = udp_socket()?;
        let src = sockaddr(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, port));
        // SAFETY: `src` is a valid sockaddr_in of length `len`.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&src as *const libc::sockaddr_in).cast(),
                len,
            )
        };
        check(rc, || format!("bind to source port {port}"))?;
        // SAFETY: `dst` is a valid sockaddr_in of length `len`.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&dst as *const libc::sockaddr_in).cast(),
                len,
            )
        };
        check(rc, || format!("connect to {}", args.dst))?;
        out.push(fd);
    }
    Ok(out)
}

/// What the generator did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GenResult {
    pub sent: u64,
    pub send_errors: u64,
    pub seconds: f64,
}

/// `flagella-bench gen`.
/// One `sendmmsg` of the whole batch, counted in `result`.
///
/// Every header in `msgs` must point at live iovecs over live payloads (both generators build
/// them once and keep them alive for the whole run).
fn send_batch(fd: &OwnedFd, msgs: &mut [libc::mmsghdr], result: &mut GenResult) {
    // SAFETY: `msgs` holds `msgs.len()` initialised headers whose iovecs and payloads outlive
    // the call (the caller's contract above); the kernel only reads them and writes msg_len.
    let n = unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            0,
        )
    };
    if n > 0 {
        result.sent += n as u64;
    } else {
        result.send_errors += 1;
    }
}

/// The socket generator (`--generator socket`): UDP with `sendmmsg`, one connected socket per
/// flow. [`crate::generator::generate`] picks the generator.
pub fn generate_socket(args: &GenArgs) -> Result<GenResult, BenchError> {
    if let Some(core) = args.core {
        pin(core)?;
    }
    let sockets = flow_sockets(args)?;
    let payload = vec![0u8; args.size - MIN_FRAME];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // Every message points at the same payload: the kernel copies it, the bytes never change.
    // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
    let mut msgs: Vec<libc::mmsghdr> = (0..args.batch)
        .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
        .collect();
    for m in &mut msgs {
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let mut result = GenResult::default();
    let mut turn = 0usize;
    let mut calls = 0u32;
    loop {
        // Checking the clock every 64 calls keeps it off the per-packet cost.
        calls = calls.wrapping_add(1);
        if calls % 64 == 0 && (Instant::now() >= end || crate::signals::stopping()) {
            break;
        }
        let Some(fd) = sockets.get(turn) else { break };
        turn = if turn + 1 == sockets.len() {
            0
        } else {
            turn + 1
        };
        send_batch(fd, &mut msgs, &mut result);
    }
    result.seconds = start.elapsed().as_secs_f64();
    Ok(result)
}

/// The frames of `--generator packet` and `xdp`: one per flow, source port `src_port + i`.
pub fn flow_frames(
    args: &GenArgs,
    src: std::net::Ipv4Addr,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Vec<Vec<u8>> {
    use dataplane::testutil::PacketBuilder;
    use dataplane::types::MacAddr;
    let payload = vec![0u8; args.size - MIN_FRAME];
    (0..args.flows)
        .map(|i| {
            let sport = args.src_port.wrapping_add(i as u16);
            PacketBuilder::udp(src.into(), sport, (*args.dst.ip()).into(), args.dst.port())
                .macs(MacAddr(src_mac), MacAddr(dst_mac))
                .ttl(64)
                .payload(&payload)
                .build()
        })
        .collect()
}

pub(crate) fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// What the generators of prebuilt frames (`packet`, `xdp`) need: `--dev`, `--dst-mac` and
/// `--src`, or an error naming the missing one.
pub(crate) fn frame_generator_args<'a>(
    args: &'a GenArgs,
    generator: &str,
) -> Result<(&'a str, [u8; 6], std::net::Ipv4Addr), BenchError> {
    let need = |what: &str| BenchError::Failed(format!("--generator {generator} needs {what}"));
    let dev = args.dev.as_deref().ok_or_else(|| need("--dev"))?;
    let dst_mac = args
        .dst_mac
        .as_deref()
        .and_then(parse_mac)
        .ok_or_else(|| need("--dst-mac aa:bb:cc:dd:ee:ff"))?;
    let src = args
        .src
        .ok_or_else(|| need("--src (the source IPv4 address)"))?;
    Ok((dev, dst_mac, src))
}

/// `--generator packet`: prebuilt frames on an AF_PACKET socket bound to `--dev`, sendmmsg in
/// batches, consecutive messages taking consecutive flows.
pub fn generate_packets(args: &GenArgs) -> Result<GenResult, BenchError> {
    let (dev, dst_mac, src) = frame_generator_args(args, "packet")?;
    let mac_path = format!("/sys/class/net/{dev}/address");
    let src_mac = std::fs::read_to_string(&mac_path)
        .ok()
        .and_then(|m| parse_mac(&m))
        .ok_or_else(|| BenchError::Failed(format!("cannot read the MAC of {dev} ({mac_path})")))?;
    let ifindex = std::ffi::CString::new(dev)
        .ok()
        // SAFETY: `name` is a valid NUL-terminated string that lives across the call.
        .map(|name| unsafe { libc::if_nametoindex(name.as_ptr()) })
        .filter(|&i| i != 0)
        .ok_or_else(|| BenchError::Failed(format!("no interface {dev} here")))?;
    if let Some(core) = args.core {
        pin(core)?;
    }
    let proto = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(BenchError::io(
            "AF_PACKET socket (needs root)",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_opt(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1);
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid before the fields are set.
    let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = proto;
    ll.sll_ifindex = ifindex as i32;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `ll` is a valid sockaddr_ll of length `len`.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&ll as *const libc::sockaddr_ll).cast(),
            len,
        )
    };
    check(rc, || format!("binding an AF_PACKET socket to {dev}"))?;

    let frames = flow_frames(args, src, src_mac, dst_mac);
    let mut iovs: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
    let mut msgs: Vec<libc::mmsghdr> = (0..args.batch)
        .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
        .collect();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let mut result = GenResult::default();
    let mut next_flow = 0usize;
    let mut calls = 0u32;
    loop {
        calls = calls.wrapping_add(1);
        if calls % 64 == 0 && (Instant::now() >= end || crate::signals::stopping()) {
            break;
        }
        for m in &mut msgs {
            let Some(iov) = iovs.get_mut(next_flow) else {
                break;
            };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            next_flow = if next_flow + 1 == frames.len() {
                0
            } else {
                next_flow + 1
            };
        }
        send_batch(&fd, &mut msgs, &mut result);
    }
    result.seconds = start.elapsed().as_secs_f64();
    Ok(result)
}

/// What the sink saw.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SinkResult {
    pub packets: u64,
    pub seconds: f64,
}

fn sink_socket(port: u16) -> Result<OwnedFd, BenchError> {
    let fd = udp_socket()?;
    if !set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, SINK_RCVBUF) {
        set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, SINK_RCVBUF);
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: `tv` is a live timeval and its size is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    check(rc, || "SO_RCVTIMEO".into())?;
    let addr = sockaddr(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, port));
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_in of length `len`.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            len,
        )
    };
    check(rc, || {
        format!("bind to UDP port {port} (is another sink running?)")
    })?;
    Ok(fd)
}

/// `flagella-bench sink`: counts datagrams until the duration ends; prints as it goes.
pub fn sink(args: &SinkArgs, out: &mut impl Write) -> Result<SinkResult, BenchError> {
    if let Some(core) = args.core {
        pin(core)?;
    }
    let fd = sink_socket(args.port)?;
    let mut bufs = vec![[0u8; 2048]; args.batch];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
    let mut msgs: Vec<libc::mmsghdr> = (0..args.batch)
        .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
        .collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let period = if args.samples {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    };
    let mut next_report = start + period;
    let (mut packets, mut at_last_report) = (0u64, 0u64);
    let mut latencies: Vec<u64> = if args.latency {
        Vec::with_capacity(MAX_LATENCY_SAMPLES)
    } else {
        Vec::new()
    };
    let report_err = |e| BenchError::io("writing the sink's output", e);
    while !crate::signals::stopping() {
        // SAFETY: `msgs` holds `msgs.len()` headers pointing at live buffers of the stated
        // lengths, which outlive the call; a null timeout means SO_RCVTIMEO applies.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n > 0 {
            packets += n as u64;
            if args.latency {
                record_latencies(&bufs, &msgs[..n as usize], &mut latencies);
            }
        }
        let now = Instant::now();
        if now >= next_report {
            if args.samples {
                writeln!(out, "sample {} {packets}", monotonic_ns()).map_err(report_err)?;
            } else {
                let secs = (now - (next_report - period)).as_secs_f64();
                let pps = (packets - at_last_report) as f64 / secs;
                writeln!(
                    out,
                    "{:7.1} s: {:.3} Mpps",
                    (now - start).as_secs_f64(),
                    pps / 1e6
                )
                .map_err(report_err)?;
            }
            out.flush().map_err(report_err)?;
            at_last_report = packets;
            next_report += period;
        }
        if now >= end {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if args.latency {
        match crate::stats::Latency::of(&mut latencies) {
            Some(l) => writeln!(out, "{}", l.to_line()).map_err(report_err)?,
            None => {
                writeln!(out, "latency none (no stamped datagram arrived)").map_err(report_err)?
            }
        }
    }
    writeln!(
        out,
        "total {packets} {seconds:.3} {:.0}",
        packets as f64 / seconds.max(1e-9)
    )
    .map_err(report_err)?;
    Ok(SinkResult { packets, seconds })
}

/// The one-way latency of each received datagram: now minus the send time `gen --stamp`
/// wrote into its first 8 payload bytes (CLOCK_MONOTONIC, one clock for every namespace).
/// Datagrams without a plausible stamp (short, zero, in the future) are skipped.
fn record_latencies(bufs: &[[u8; 2048]], msgs: &[libc::mmsghdr], out: &mut Vec<u64>) {
    let now = monotonic_ns();
    for (buf, m) in bufs.iter().zip(msgs) {
        if out.len() >= MAX_LATENCY_SAMPLES {
            return;
        }
        if (m.msg_len as usize) < 8 {
            continue;
        }
        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&buf[..8]);
        let sent = u64::from_le_bytes(stamp);
        if sent != 0 && sent <= now {
            out.push(now - sent);
        }
    }
}

/// One `sample` line of the sink: (monotonic ns, packets so far).
pub fn parse_sample(line: &str) -> Option<(u64, u64)> {
    let mut it = line.strip_prefix("sample ")?.split_whitespace();
    let t = it.next()?.parse().ok()?;
    let n = it.next()?.parse().ok()?;
    Some((t, n))
}

/// The generator's last line: `sent <packets> <seconds> <pps> errors <n>`.
pub fn parse_sent(line: &str) -> Option<GenResult> {
    let mut it = line.strip_prefix("sent ")?.split_whitespace();
    let sent = it.next()?.parse().ok()?;
    let seconds = it.next()?.parse().ok()?;
    let _pps = it.next()?;
    let send_errors = match (it.next(), it.next()) {
        (Some("errors"), Some(n)) => n.parse().ok()?,
        _ => 0,
    };
    Some(GenResult {
        sent,
        send_errors,
        seconds,
    })
}

/// The line [`parse_sent`] reads.
pub fn format_sent(r: &GenResult) -> String {
    format!(
        "sent {} {:.3} {:.0} errors {}",
        r.sent,
        r.seconds,
        r.sent as f64 / r.seconds.max(1e-9),
        r.send_errors
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("02:81:00:00:00:0a\n"),
            Some([2, 0x81, 0, 0, 0, 10])
        );
        assert_eq!(parse_mac("02:81:00:00:00"), None);
        assert_eq!(parse_mac("02:81:00:00:00:00:01"), None);
        assert_eq!(parse_mac("zz:81:00:00:00:00"), None);
    }

    #[test]
    fn flow_frames_are_valid_udp_with_one_port_per_flow() {
        use crate::cli::Generator;
        let args = GenArgs {
            dst: "10.81.0.12:9000".parse().unwrap(),
            size: 64,
            flows: 3,
            src_port: 20000,
            duration: 1.0,
            batch: 64,
            core: None,
            generator: Generator::Packet,
            dev: None,
            dst_mac: None,
            src: None,
            rate: None,
            stamp: false,
        };
        let frames = flow_frames(&args, "10.81.0.11".parse().unwrap(), [2; 6], [4; 6]);
        assert_eq!(frames.len(), 3);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.len(), 64);
            assert_eq!(&f[0..6], &[4; 6]);
            assert_eq!(u16::from_be_bytes([f[34], f[35]]), 20000 + i as u16);
            assert_eq!(u16::from_be_bytes([f[36], f[37]]), 9000);
            assert!(
                dataplane::wire::checksum::verify(&f[14..34]),
                "IPv4 header checksum"
            );
        }
    }

    #[test]
    fn sample_lines() {
        assert_eq!(parse_sample("sample 123 45"), Some((123, 45)));
        assert_eq!(parse_sample("sample 123"), None);
        assert_eq!(parse_sample("total 1 2 3"), None);
    }

    #[test]
    fn sent_line_round_trips() {
        let r = GenResult {
            sent: 1000,
            send_errors: 3,
            seconds: 2.0,
        };
        let line = format_sent(&r);
        assert_eq!(line, "sent 1000 2.000 500 errors 3");
        assert_eq!(parse_sent(&line), Some(r));
        assert_eq!(parse_sent("sent x"), None);
    }
}
