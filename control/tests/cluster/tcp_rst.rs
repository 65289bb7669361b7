//! Conntrack's TCP sequence check on a real kernel TCP connection (issue 14): pod n1a's
//! masqueraded connection to an echo server in the world, and an off-path sender in the
//! world's namespace that knows the flow's tuple (the server's address and port, node 1's
//! address and the masquerade port) but not its sequence numbers. It sends RSTs "from the
//! server" at numbers it made up, while n1a pushes 4 MB through the connection and reads them
//! back. The dataplane drops the guesses (`tcp_rst_out_of_window`): the transfer completes, and
//! both of the flow's entries on node 1 (the pod's and the translated one, which holds the
//! port) stay ESTABLISHED. Then n1a resets the connection itself (SO_LINGER 0: its kernel's RST
//! carries the exact number): both entries close.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::Duration;

use dataplane::wire::tcp::{Repr as TcpRepr, TcpFlags, TcpOptions, TcpPacket};
use serde_json::{json, Value};

use super::common::traffic::{echo, tcp_server};
use super::{in_netns, wait_for, Cluster};

/// The echo server's port in the world (the masquerade test's server holds `WORLD_PORT`).
const ECHO_PORT: u16 = 9001;
/// Guessed RSTs sent during the transfer.
const GUESSES: u32 = 200;
const TRANSFER: usize = 4 << 20;

pub fn guessed_rsts_do_not_break_a_masqueraded_flow(c: &mut Cluster, world_ns: &str) {
    let m = c.mode.index();
    let server_ip = Ipv4Addr::new(198, 51, m, 7);
    let server = SocketAddr::new(IpAddr::V4(server_ip), ECHO_PORT);
    c.servers
        .push(tcp_server(world_ns, server, &c.stop_servers, echo));
    let node1 = c.node(1).underlay;
    let n1a = c.pod("n1a").netns.clone();
    let stream = in_netns(&n1a, move || {
        TcpStream::connect_timeout(&server, Duration::from_secs(5))
    })
    .expect("n1a connects to the world's echo server");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let pod_side = stream.local_addr().unwrap();
    let port = masquerade_port(c, server);
    let before = rst_drops(c);

    let world = world_ns.to_string();
    let injector =
        thread::spawn(move || in_netns(&world, move || send_guesses(server_ip, node1, port)));
    transfer(&stream);
    injector.join().unwrap().expect("the RSTs were sent");
    wait_for("node 1 counts the guessed RSTs as dropped", || {
        // A guess that lands in the receiver's window (a few in a thousand) is passed, and
        // n1a's kernel answers it with a challenge ACK; every other one is dropped.
        rst_drops(c).saturating_sub(before) >= u64::from(GUESSES) * 9 / 10
    });
    transfer(&stream);
    for entry in flow_entries(c, server, pod_side) {
        assert_eq!(
            entry["state"], "ESTABLISHED",
            "guessed RSTs left the flow open: {entry}"
        );
    }

    // n1a's own RST, at the number the server expects: the flow closes, port and all.
    set_linger_zero(&stream);
    drop(stream);
    wait_for("n1a's own RST closes both of its flow's entries", || {
        let entries = flow_entries(c, server, pod_side);
        entries.len() == 2 && entries.iter().all(|e| e["state"] == "CLOSING")
    });
}

/// Writes `TRANSFER` bytes and reads the echo back, comparing it.
fn transfer(stream: &TcpStream) {
    let data: Vec<u8> = (0..TRANSFER).map(|i| (i * 7 % 251) as u8).collect();
    let mut writer = stream.try_clone().unwrap();
    let sent = data.clone();
    let send = thread::spawn(move || writer.write_all(&sent));
    let mut back = vec![0u8; TRANSFER];
    let mut reader = stream;
    reader
        .read_exact(&mut back)
        .expect("the echo of the transfer (the connection must survive the guesses)");
    send.join().unwrap().expect("the transfer was written");
    assert!(back == data, "the echo differs from what was sent");
}

/// The masquerade port of n1a's connection to `server`: node 1's translated entry.
fn masquerade_port(c: &Cluster, server: SocketAddr) -> u16 {
    let node1 = c.node(1).underlay;
    let entries = conntrack(c);
    let translated = entries
        .iter()
        .filter(|e| e["dst"] == server.to_string())
        .filter_map(|e| e["src"].as_str()?.parse::<SocketAddr>().ok())
        .find(|src| src.ip() == IpAddr::V4(node1));
    translated
        .unwrap_or_else(|| panic!("no translated entry towards {server} on node 1: {entries:?}"))
        .port()
}

/// Node 1's entries of n1a's connection: its own (from `pod_side`) and the translated one.
fn flow_entries(c: &Cluster, server: SocketAddr, pod_side: SocketAddr) -> Vec<Value> {
    let node1 = IpAddr::V4(c.node(1).underlay);
    conntrack(c)
        .into_iter()
        .filter(|e| e["dst"] == server.to_string())
        .filter(|e| {
            let src = e["src"].as_str().and_then(|s| s.parse::<SocketAddr>().ok());
            src == Some(pod_side) || src.map(|s| s.ip()) == Some(node1)
        })
        .collect()
}

fn conntrack(c: &Cluster) -> Vec<Value> {
    let dump = c.dataplane(
        1,
        json!({"op": "dump", "table": "conntrack", "limit": 100000}),
    );
    dump["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("a conntrack dump: {dump}"))
        .iter()
        .flat_map(|w| w["entries"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn rst_drops(c: &Cluster) -> u64 {
    c.counters(1)["counters"]["drops"]["tcp_rst_out_of_window"]
        .as_u64()
        .unwrap_or(0)
}

/// From the world's namespace: `GUESSES` RSTs from the server's address and port to node 1's
/// masquerade port, at sequence numbers from a fixed-seed generator (half with ACK set).
fn send_guesses(server: Ipv4Addr, node: Ipv4Addr, port: u16) -> Result<(), String> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    if fd < 0 {
        return Err(format!("raw socket: {}", std::io::Error::last_os_error()));
    }
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(node).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut result = Ok(());
    for i in 0..GUESSES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let flags = if i % 2 == 0 {
            TcpFlags::RST
        } else {
            TcpFlags::RST | TcpFlags::ACK
        };
        let repr = TcpRepr {
            src_port: ECHO_PORT,
            dst_port: port,
            seq: state as u32,
            ack: (state >> 32) as u32,
            flags,
            window: 0,
            urgent: 0,
            options: TcpOptions::EMPTY,
            payload_len: 0,
        };
        let mut segment = [0u8; 20];
        repr.emit_v4(
            &mut TcpPacket::new_unchecked(&mut segment[..]),
            server,
            node,
        );
        // SAFETY: the buffer and the address outlive the call; lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                fd,
                segment.as_ptr().cast(),
                segment.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            result = Err(format!("sendto: {}", std::io::Error::last_os_error()));
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    result
}

/// SO_LINGER with a zero timeout: closing the socket resets the connection.
fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a `linger` of the size given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}
