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
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// The program's name as loaded (`bpf_prog_info.name` shows it).
pub const PROGRAM_NAME: &str = "fbn_drop";
/// Where `name` sits in `struct bpf_prog_info`.
const PROG_INFO_NAME_AT: usize = 64;
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

/// `bpf(cmd, attr)`'s plain return value (0 for commands that return no descriptor).
fn bpf_raw<T>(cmd: libc::c_long, attr: &mut T) -> Result<libc::c_long, std::io::Error> {
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
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// How many XDP_DROP programs of this benchmark ([`PROGRAM_NAME`]) the kernel holds, in every
/// namespace: 0 once every `xdp-sink` has exited. Needs root (CAP_SYS_ADMIN).
pub fn loaded_drop_programs() -> Result<usize, BenchError> {
    #[repr(C)]
    #[derive(Default)]
    struct IdAttr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut count = 0;
    let mut id = 0u32;
    loop {
        let mut next = IdAttr {
            id,
            ..IdAttr::default()
        };
        match bpf_raw(BPF_PROG_GET_NEXT_ID, &mut next) {
            Ok(_) => id = next.next_id,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(count),
            Err(e) => return Err(BenchError::io("listing BPF programs (needs root)", e)),
        }
        let mut by_id = IdAttr {
            id,
            ..IdAttr::default()
        };
        // A program can vanish between the two calls: skip it.
        let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut by_id) else {
            continue;
        };
        let mut info = [0u8; 256];
        let mut attr = InfoAttr {
            bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
            info_len: info.len() as u32,
            info: info.as_mut_ptr() as u64,
        };
        if bpf_raw(BPF_OBJ_GET_INFO_BY_FD, &mut attr).is_err() {
            continue;
        }
        let name = &info[PROG_INFO_NAME_AT..PROG_INFO_NAME_AT + 16];
        if name.starts_with(PROGRAM_NAME.as_bytes()) && name[PROGRAM_NAME.len()] == 0 {
            count += 1;
        }
    }
}

/// `bpf(cmd, attr)` for commands that return a new file descriptor.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> Result<OwnedFd, std::io::Error> {
    let rc = bpf_raw(cmd, attr)?;
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
    prog_name[..PROGRAM_NAME.len()].copy_from_slice(PROGRAM_NAME.as_bytes());
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
