//! Root only: `--generator xdp`'s frames cross the kernel-forwarded topology and reach the sink.
//!
//! Builds the `forward` topology (node namespace, pods A and B, prefix fbx-<pid>, removed on
//! drop), enables kernel forwarding, runs the sink in B and the AF_XDP generator in A (each in
//! a thread that entered the pod's namespace) for about a second, and checks that something
//! arrived and never more than was sent. Skipped, with a message, when not root or when this
//! kernel has no AF_XDP.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bench::cli::{GenArgs, Generator, SinkArgs};
use bench::topo::{Topology, POD_B_IP, ROUTER_MAC, SINK_PORT};

fn skip_reason() -> Option<String> {
    common::root_with_afxdp().err()
}

#[test]
fn xdp_generator_packets_reach_the_sink() {
    if let Some(why) = skip_reason() {
        testkit::skip(&format!("{why} (this test needs root and AF_XDP)"));
        return;
    }
    let prefix = format!("fbx-{}", std::process::id());
    let short = format!("fbx{}", std::process::id());
    let topo = Topology::build(&prefix, &short).unwrap();
    topo.enable_kernel_forwarding().unwrap();

    let b_ns = topo.b.ns.clone();
    let sink = std::thread::spawn(move || {
        bench::probe::enter_netns(&b_ns).unwrap();
        let args = SinkArgs {
            port: SINK_PORT,
            duration: 2.5,
            batch: 64,
            core: None,
            samples: false,
            latency: false,
        };
        bench::traffic::sink(&args, &mut Vec::new()).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));

    let a_ns = topo.a.ns.clone();
    let src = topo.a.ip;
    let gen = std::thread::spawn(move || {
        bench::probe::enter_netns(&a_ns).unwrap();
        let args = GenArgs {
            dst: std::net::SocketAddrV4::new(POD_B_IP, SINK_PORT),
            size: 64,
            flows: 16,
            src_port: 20000,
            duration: 1.0,
            batch: 64,
            core: None,
            generator: Generator::Xdp,
            dev: Some("eth0".into()),
            dst_mac: Some(ROUTER_MAC.into()),
            src: Some(src),
            rate: None,
            stamp: false,
        };
        bench::generator::generate(&args)
    });
    let sent = gen.join().unwrap().unwrap();
    let received = sink.join().unwrap();
    drop(topo);
    eprintln!(
        "xdp generator: sent {} in {:.2} s, sink received {}",
        sent.sent, sent.seconds, received.packets
    );
    assert!(received.packets > 0, "nothing reached the sink");
    assert!(
        sent.sent >= received.packets,
        "the sink counted {} but only {} were sent",
        received.packets,
        sent.sent
    );
}
