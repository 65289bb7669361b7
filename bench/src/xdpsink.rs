//! The forwarder-level sink (`--sink xdp`): an XDP program that drops every frame on the pod's
//! interface, so what is counted is what the forwarder delivered to the pod's link, with no
//! socket, no UDP stack and no sink process competing for a core.
//!
//! Contract:
//! - `xdp-sink --dev eth0` runs inside the pod's namespace (`ip netns exec POD`). It loads a
//!   two-instruction program (`r0 = XDP_DROP; exit`) with `bpf(BPF_PROG_LOAD)` and attaches it
//!   in driver mode with `bpf(BPF_LINK_CREATE)`: a BPF link lives exactly as long as its file
//!   descriptor, so the program leaves the interface when this process exits, however it exits
//!   (SIGKILL included). Nothing is pinned; no object file or compiler is needed.
//! - It prints `attached <ifindex>` once the link exists, then waits for its duration or a
//!   signal.
//! - The count is the kernel's own: veth's per-queue `rx_queue_N_xdp_drops` (`ethtool -S`),
//!   summed over queues, read from outside by [`xdp_drops`]. Driver mode is required because
//!   generic (skb) mode does not feed those counters.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::topo::exec_in;
use crate::BenchError;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`'s BPF_XDP.
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_DRV_MODE`: native XDP (veth has it), which feeds the per-queue counters.
const XDP_FLAGS_DRV_MODE: u32 = 4;
const XDP_DROP: i32 = 1;

/// One eBPF instruction, encoded as the kernel's `struct bpf_insn` (little-endian layout:
/// opcode, dst/src registers, offset, immediate).
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (code as u64)
        | (((src << 4 | dst) as u64) << 8)
        | ((off as u16 as u64) << 16)
        | ((imm as u32 as u64) << 32)
}

/// `r0 = XDP_DROP; exit`.
pub const DROP_PROGRAM: [u64; 2] = [
    // BPF_ALU64 | BPF_MOV | BPF_K
    insn(0xb7, 0, 0, 0, XDP_DROP),
    // BPF_JMP | BPF_EXIT
    insn(0x95, 0, 0, 0, 0),
];

/// The fields of `union bpf_attr` that BPF_PROG_LOAD reads, in the kernel's order; the
/// kernel treats the bytes it knows beyond `size_of::<ProgLoadAttr>()` as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The fields of `union bpf_attr` that BPF_LINK_CREATE reads for XDP.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> Result<OwnedFd, std::io::Error> {
    // SAFETY: `attr` is a live, fully initialised #[repr(C)] prefix of `union bpf_attr` and
    // its size is passed; the kernel reads (and may write) at most that many bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(rc).map_err(|_| std::io::Error::other("bpf() fd out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The drop program attached to `dev`; detached when dropped (the link's fd closes).
#[derive(Debug)]
pub struct XdpDrop {
    _link: OwnedFd,
    _prog: OwnedFd,
    pub ifindex: u32,
}

/// Loads [`DROP_PROGRAM`] and attaches it to `dev` of this namespace in driver mode.
pub fn attach_drop(dev: &str) -> Result<XdpDrop, BenchError> {
    let name = CString::new(dev)
        .map_err(|_| BenchError::Failed(format!("`{dev}` is not an interface name")))?;
    // SAFETY: `name` is a valid NUL-terminated string that lives across the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(BenchError::Failed(format!(
            "xdp-sink: no interface `{dev}` in this namespace (run it with `ip netns exec POD`)"
        )));
    }
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    prog_name[..8].copy_from_slice(b"fbn_drop");
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: DROP_PROGRAM.len() as u32,
        insns: DROP_PROGRAM.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: BPF_XDP,
        ..ProgLoadAttr::default()
    };
    let prog = bpf(BPF_PROG_LOAD, &mut load).map_err(|e| {
        BenchError::Failed(format!(
            "xdp-sink: loading the XDP_DROP program: {e} (needs root and a kernel with BPF; \
             use --sink udp otherwise)"
        ))
    })?;
    let mut link = LinkCreateAttr {
        prog_fd: std::os::fd::AsRawFd::as_raw_fd(&prog) as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
    };
    let link = bpf(BPF_LINK_CREATE, &mut link).map_err(|e| {
        BenchError::Failed(format!(
            "xdp-sink: attaching XDP_DROP to {dev} in driver mode: {e} (the interface must \
             support native XDP, as veth does, and have no XDP program yet; use --sink udp \
             otherwise)"
        ))
    })?;
    Ok(XdpDrop {
        _link: link,
        _prog: prog,
        ifindex,
    })
}

/// `flagella-bench xdp-sink`: attach, say so, hold until `duration` or a signal.
pub fn run(dev: &str, duration: f64) -> Result<(), BenchError> {
    let drop = attach_drop(dev)?;
    println!("attached {}", drop.ifindex);
    let end = Instant::now() + Duration::from_secs_f64(duration);
    while Instant::now() < end && !crate::signals::stopping() {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The sum of `rx_queue_N_xdp_drops` in `ethtool -S` output; `None` when it has none.
pub fn parse_xdp_drops(text: &str) -> Option<u64> {
    let mut found = false;
    let mut sum = 0u64;
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        if key.starts_with("rx_queue_") && key.ends_with("_xdp_drops") {
            sum = sum.saturating_add(value.trim().parse::<u64>().ok()?);
            found = true;
        }
    }
    found.then_some(sum)
}

/// Frames the XDP program on `dev` in `ns` has dropped so far.
pub fn xdp_drops(ns: &str, dev: &str) -> Result<u64, BenchError> {
    let text = exec_in(ns, "ethtool", &["-S", dev])?;
    parse_xdp_drops(&text).ok_or_else(|| {
        BenchError::Failed(format!(
            "`ethtool -S {dev}` in {ns} has no rx_queue_N_xdp_drops counters (not a veth?); \
             use --sink udp"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_mov_r0_drop_then_exit() {
        assert_eq!(DROP_PROGRAM[0], 0x0000_0001_0000_00b7);
        assert_eq!(DROP_PROGRAM[1], 0x95);
    }

    #[test]
    fn drops_are_summed_over_queues() {
        let text = "NIC statistics:\n     peer_ifindex: 3\n     rx_queue_0_xdp_packets: 10\n     \
                    rx_queue_0_xdp_drops: 7\n     rx_queue_1_xdp_drops: 5\n     \
                    tx_queue_0_xdp_xmit: 2\n";
        assert_eq!(parse_xdp_drops(text), Some(12));
        assert_eq!(
            parse_xdp_drops("NIC statistics:\n     rx_packets: 4\n"),
            None
        );
        assert_eq!(parse_xdp_drops("rx_queue_0_xdp_drops: lots\n"), None);
    }
}
