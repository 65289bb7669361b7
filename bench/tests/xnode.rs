//! Root only: every cross-node target of `flagella-bench xnode` (kernel-vxlan, flagella-vxlan,
//! flagella-geneve, flagella-native) carries pod A's UDP on node 1 to the sink in pod B on
//! node 2, and tearing the target and the topology down leaves no namespace and no process.
//!
//! Each test builds the two-node topology (prefix `fxt-<pid>-<n>`), starts the target the way
//! `xnode` does (`XnodeTopology::start`: for flagella, a dataplane in each node configured over
//! its control socket, next hops resolved by the daemons from the kernel), runs the sink in B
//! and the socket generator in A (each in a thread that entered the pod's namespace) for half a
//! second, tears everything down, then checks that something arrived, never more than was sent,
//! and that the namespaces and the dataplanes' processes are gone. No speed is asserted.
//!
//! Skipped, with the reason, when not root, without AF_XDP, or without the flagella-dataplane
//! binary (next to this test's profile directory, or `FLAGELLA_DATAPLANE_BIN`); under `CI=true`
//! a skip is a failure. One target at a time: the dataplanes' workers and the traffic share the
//! machine's cores.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a failed test

mod common;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use bench::cli::{GenArgs, Generator, RunArgs, SinkArgs, XnodeTarget};
use bench::forward::Running;
use bench::topo::SINK_PORT;
use bench::xnode::XnodeTopology;

static SERIAL: Mutex<()> = Mutex::new(());

/// The dataplane binary, or why this test cannot run here.
fn preflight() -> Result<PathBuf, String> {
    common::root_with_afxdp()?;
    common::dataplane_binary()
}

/// The binary, or `None` after saying why the test is skipped (a panic under `CI=true`).
fn binary_or_skip() -> Option<PathBuf> {
    match preflight() {
        Ok(bin) => Some(bin),
        Err(why) => {
            testkit::skip(&format!(
                "{why} (this test needs root, AF_XDP and flagella-dataplane)"
            ));
            None
        }
    }
}

/// The scratch directory of one test, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn frames_reach_the_sink(target: XnodeTarget, n: u32) {
    let Some(bin) = binary_or_skip() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    let prefix = format!("fxt-{pid}-{n}");
    let short = format!("fxt{pid}r{n}");
    let scratch = Scratch(std::env::temp_dir().join(&prefix));
    std::fs::create_dir_all(&scratch.0).unwrap();
    let args = RunArgs {
        duration: 1,
        size: 64,
        generator: Generator::Socket,
        gen_core: 0,
        worker_core: 1,
        sink_core: None,
        nice: 0,
        dataplane: Some(bin),
        // Short test on a shared machine: idle workers need not spin.
        idle_sleep_us: 100,
    };

    let topo = XnodeTopology::build(&prefix, &short).unwrap();
    let running = topo.start(target, &args, 1, &scratch.0).unwrap();
    let daemons: Vec<u32> = match &running {
        Running::Flagella(dataplanes) => dataplanes.iter().map(|f| f.pid()).collect(),
        _ => Vec::new(),
    };
    let ends = topo.ends();
    let (b_ns, b_ip) = (ends.dst.ns.clone(), ends.dst.ip);
    let (a_ns, a_ip) = (ends.src.ns.clone(), ends.src.ip);
    let sink = std::thread::spawn(move || {
        bench::probe::enter_netns(&b_ns).unwrap();
        let args = SinkArgs {
            port: SINK_PORT,
            duration: 2.0,
            batch: 64,
            core: None,
            samples: false,
            latency: false,
        };
        bench::traffic::sink(&args, &mut Vec::new()).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let gen = std::thread::spawn(move || {
        bench::probe::enter_netns(&a_ns).unwrap();
        let args = GenArgs {
            dst: std::net::SocketAddrV4::new(b_ip, SINK_PORT),
            size: 64,
            flows: 4,
            src_port: 20000,
            duration: 0.5,
            batch: 8,
            core: None,
            generator: Generator::Socket,
            dev: None,
            dst_mac: None,
            src: Some(a_ip),
            rate: None,
            stamp: false,
        };
        bench::generator::generate(&args)
    });
    let sent = gen.join().unwrap();
    let received = sink.join().unwrap();
    drop(running);
    drop(topo);
    drop(scratch);

    let namespaces = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    assert!(
        !namespaces.contains(&prefix),
        "namespaces left behind:\n{namespaces}"
    );
    for pid in daemons {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "flagella-dataplane (pid {pid}) still running"
        );
    }
    let sent = sent.unwrap();
    eprintln!(
        "{}: sent {} in {:.2} s, the sink received {}",
        target.name(),
        sent.sent,
        sent.seconds,
        received.packets
    );
    assert!(
        received.packets > 0,
        "{}: nothing reached the sink",
        target.name()
    );
    assert!(
        sent.sent >= received.packets,
        "{}: the sink counted {} but only {} were sent",
        target.name(),
        received.packets,
        sent.sent
    );
}

#[test]
fn kernel_vxlan_frames_reach_the_sink() {
    frames_reach_the_sink(XnodeTarget::KernelVxlan, 1);
}

#[test]
fn flagella_vxlan_frames_reach_the_sink() {
    frames_reach_the_sink(XnodeTarget::FlagellaVxlan, 2);
}

#[test]
fn flagella_geneve_frames_reach_the_sink() {
    frames_reach_the_sink(XnodeTarget::FlagellaGeneve, 3);
}

#[test]
fn flagella_native_frames_reach_the_sink() {
    frames_reach_the_sink(XnodeTarget::FlagellaNative, 4);
}
