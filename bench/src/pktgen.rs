//! The kernel's packet generator, where this kernel has it (`/proc/net/pktgen`, per network
//! namespace). It sends from one kernel thread per CPU (`kpktgend_<cpu>`) straight to the
//! device's transmit path, without sockets, so it costs far less per packet than `sendmmsg`.
//!
//! `generate` programs thread `kpktgend_<core>` with one device, the destination (IP, MAC,
//! port) and a source-port range for the flows, runs it for the duration and removes the
//! device again, pass or fail. Where pktgen is absent it refuses with
//! "not available on this kernel" and says how to get it.

use std::path::Path;
use std::time::Duration;

use crate::cli::GenArgs;
use crate::traffic::GenResult;
use crate::BenchError;

const PROC: &str = "/proc/net/pktgen";

/// `Ok` when pktgen can be used here, else why not.
pub fn available() -> Result<(), BenchError> {
    if Path::new(PROC).join("pgctrl").exists() {
        Ok(())
    } else {
        Err(BenchError::Unavailable(format!(
            "pktgen is not available on this kernel ({PROC} is missing: `modprobe pktgen`, or the \
             kernel was built without CONFIG_NET_PKTGEN); use --generator socket"
        )))
    }
}

fn write(file: &str, cmd: &str) -> Result<(), BenchError> {
    let path = Path::new(PROC).join(file);
    std::fs::write(&path, format!("{cmd}\n"))
        .map_err(|e| BenchError::io(format!("pktgen: `{cmd}` > {}", path.display()), e))
}

/// Packets the device has sent so far: the number after `pkts-sofar:` in its file.
fn read_sent(dev: &str) -> u64 {
    let text = std::fs::read_to_string(Path::new(PROC).join(dev)).unwrap_or_default();
    let mut words = text.split_whitespace();
    words
        .position(|w| w == "pkts-sofar:")
        .and_then(|_| words.next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Removes the device from the thread when dropped.
struct ThreadGuard(String);

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        let _ = write(&self.0, "rem_device_all");
    }
}

/// Runs pktgen as `gen --generator pktgen` asks.
pub fn generate(args: &GenArgs) -> Result<GenResult, BenchError> {
    available()?;
    let dev = args.dev.as_deref().ok_or_else(|| {
        BenchError::Failed("pktgen needs --dev (the interface to send on)".into())
    })?;
    let mac = args
        .dst_mac
        .as_deref()
        .ok_or_else(|| BenchError::Failed("pktgen needs --dst-mac (the next hop's MAC)".into()))?;
    let thread = format!("kpktgend_{}", args.core.unwrap_or(0));
    write(&thread, "rem_device_all")?;
    let guard = ThreadGuard(thread.clone());
    write(&thread, &format!("add_device {dev}"))?;
    let last_port = u32::from(args.src_port) + args.flows - 1;
    for cmd in [
        "count 0".to_string(),
        "clone_skb 0".to_string(),
        // pktgen's size includes the 4-byte FCS.
        format!("pkt_size {}", args.size + 4),
        format!("dst {}", args.dst.ip()),
        format!("dst_mac {mac}"),
        format!("udp_dst_min {}", args.dst.port()),
        format!("udp_dst_max {}", args.dst.port()),
        format!("udp_src_min {}", args.src_port),
        format!("udp_src_max {last_port}"),
        "flag UDPSRC_RND".to_string(),
    ] {
        write(dev, &cmd)?;
    }
    // `start` blocks until `stop`, so it runs on its own thread.
    let runner = std::thread::spawn(|| write("pgctrl", "start"));
    let started = std::time::Instant::now();
    let slept = crate::signals::sleep(Duration::from_secs_f64(args.duration));
    let _ = write("pgctrl", "stop");
    let seconds = started.elapsed().as_secs_f64();
    let _ = runner.join();
    let sent = read_sent(dev);
    drop(guard);
    slept?;
    Ok(GenResult {
        sent,
        send_errors: 0,
        seconds,
    })
}
