//! `flagella replay` through the binary: a capture of allowed, policy-denied, spoofed and reply
//! frames and a service's, replayed offline over a state file of control-socket lines (what the agent sends)
//! and of `dump` replies, reports each frame's verdict, stage and drop reason as the monitor
//! does, with the pipeline's own conntrack (the reply of an allowed flow passes a policy that
//! would refuse it as a new flow), and writes the dropped frames to a pcap.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a failed test

mod common;

use std::net::IpAddr;

use control::cli::pcap::{read_pcap, PcapWriter};
use dataplane::testutil::{PacketBuilder, TCP_ACK, TCP_SYN};
use dataplane::MacAddr;
use serde_json::Value;

use common::cli::{flagella, ok, stderr, Dir};

const ROUTER: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);
const MAC_A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
const MAC_B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);

/// Pods A (endpoint 1, ifindex 11) and B (endpoint 2, ifindex 12); B admits A on 80/TCP only,
/// A admits nothing (only replies of its own flows come in).
const STATE: &str = r#"# pods A and B, as the agent sends them
{"op":"endpoint.upsert","id":1,"ifindex":11,"mac":"02:00:00:00:00:0a","ipv4":"10.1.0.1","identity":1001}
{"op":"endpoint.upsert","id":2,"ifindex":12,"mac":"02:00:00:00:00:0b","ipv4":"10.1.0.2","identity":1002}
{"op":"batch","changes":[{"op":"ipcache.upsert","prefix":"10.1.0.1/32","identity":1001},{"op":"ipcache.upsert","prefix":"10.1.0.2/32","identity":1002}]}
{"op":"policy.update","endpoint":2,"direction":"ingress","enforced":true,"add":[{"identity":1001,"proto":"tcp","port":80,"action":"allow","cookie":1}]}
{"op":"policy.update","endpoint":1,"direction":"ingress","enforced":true,"add":[]}
{"op":"service.upsert","frontend":{"addr":"10.96.0.10","port":80,"proto":"tcp"},"backends":[{"addr":"10.1.0.2","port":80}]}
"#;

/// The same state as `dump` replies of the dataplane.
const DUMPS: &str = r#"{"ok":true,"table":"endpoints","revision":4,"entries":[{"id":1,"ifindex":11,"mac":"02:00:00:00:00:0a","ipv4":"10.1.0.1","identity":1001},{"id":2,"ifindex":12,"mac":"02:00:00:00:00:0b","ipv4":"10.1.0.2","identity":1002}]}
{"ok":true,"table":"ipcache","revision":4,"entries":[{"prefix":"10.1.0.1/32","identity":1001},{"prefix":"10.1.0.2/32","identity":1002}]}
{"ok":true,"table":"policy","revision":4,"endpoint":2,"ingress":{"enforced":true,"entries":[{"identity":1001,"proto":"tcp","port":80,"action":"allow","cookie":1}]},"egress":{"enforced":false,"entries":[]}}
{"ok":true,"table":"policy","revision":4,"endpoint":1,"ingress":{"enforced":true,"entries":[]},"egress":{"enforced":false,"entries":[]}}
{"ok":true,"table":"services","revision":4,"entries":[{"id":1,"frontend":{"addr":"10.96.0.10","port":80,"proto":"tcp"},"backends":[{"addr":"10.1.0.2","port":80,"weight":1}],"mode":"snat"}]}
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The capture: (frame, what the replay must say).
fn capture() -> Vec<(Vec<u8>, &'static str, Option<&'static str>)> {
    let (a, b) = (ip("10.1.0.1"), ip("10.1.0.2"));
    vec![
        (
            PacketBuilder::tcp(a, 40000, b, 80, TCP_SYN)
                .macs(MAC_A, ROUTER)
                .build(),
            "FORWARDED",
            None,
        ),
        (
            // B's answer: a reply of the allowed flow, found in conntrack (A's ingress
            // policy, which admits nothing, is not asked).
            PacketBuilder::tcp(b, 80, a, 40000, TCP_SYN | TCP_ACK)
                .macs(MAC_B, ROUTER)
                .build(),
            "FORWARDED",
            None,
        ),
        (
            PacketBuilder::tcp(a, 40001, b, 81, TCP_SYN)
                .macs(MAC_A, ROUTER)
                .build(),
            "DROPPED",
            Some("policy_denied_ingress"),
        ),
        (
            // A new flow from B to A: A's ingress refuses it.
            PacketBuilder::tcp(b, 40002, a, 80, TCP_SYN)
                .macs(MAC_B, ROUTER)
                .build(),
            "DROPPED",
            Some("policy_denied_ingress"),
        ),
        (
            // A to the service's VIP: DNATed to B, whose policy admits A on 80.
            PacketBuilder::tcp(a, 40004, ip("10.96.0.10"), 80, TCP_SYN)
                .macs(MAC_A, ROUTER)
                .build(),
            "FORWARDED",
            None,
        ),
        (
            // A spoofing another address.
            PacketBuilder::tcp(ip("10.1.0.99"), 40003, b, 80, TCP_SYN)
                .macs(MAC_A, ROUTER)
                .build(),
            "DROPPED",
            Some("invalid_source_ip"),
        ),
    ]
}

fn write_capture(dir: &Dir) -> String {
    let path = dir.0.join("capture.pcap");
    let mut w = PcapWriter::new(std::fs::File::create(&path).unwrap(), 65535).unwrap();
    for (i, (frame, _, _)) in capture().iter().enumerate() {
        let t = 1_700_000_000_000_000_000 + i as u64 * 1_000_000;
        w.write(t, frame, frame.len() as u32).unwrap();
    }
    path.display().to_string()
}

fn check_json(out: &str) {
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected = capture();
    assert_eq!(lines.len(), expected.len(), "{out}");
    for (i, (line, (_, verdict, reason))) in lines.iter().zip(&expected).enumerate() {
        let flow = &line["flow"];
        assert_eq!(line["packet"], i + 1);
        assert_eq!(flow["verdict"], *verdict, "frame {}: {line}", i + 1);
        assert_eq!(
            flow["drop_reason_desc"].as_str(),
            *reason,
            "frame {}: {line}",
            i + 1
        );
    }
    // Where the forwarded frames went, and which stage dropped.
    assert_eq!(lines[0]["flow"]["egress_interface"]["index"], 12);
    assert_eq!(lines[1]["flow"]["egress_interface"]["index"], 11);
    assert_eq!(lines[2]["flow"]["stage"], "policy");
    assert_eq!(lines[2]["flow"]["source"]["identity"], 1001);
    assert_eq!(lines[2]["flow"]["destination"]["ID"], 2);
    assert_eq!(
        lines[4]["flow"]["egress_interface"]["index"], 12,
        "the VIP's backend is B"
    );
    assert_eq!(lines[5]["flow"]["stage"], "identity");
}

#[test]
fn replay_over_agent_lines_reports_verdicts_as_the_monitor_does() {
    let dir = Dir::new("flagella-replay-");
    let pcap = write_capture(&dir);
    let state = dir.file("state.jsonl", STATE);
    let drops = dir.0.join("drops.pcap").display().to_string();
    let out = ok(&flagella(&[
        "replay", "--pcap", &pcap, "--state", &state, "--drops", &drops, "-o", "json",
    ]));
    check_json(&out);
    let dropped = read_pcap(&std::fs::read(&drops).unwrap()).unwrap();
    assert_eq!(dropped.len(), 3);
    assert_eq!(dropped[0].data, capture()[2].0);
    let text = ok(&flagella(&["replay", "--pcap", &pcap, "--state", &state]));
    assert!(
        text.contains("#3 drop DROPPED policy_denied_ingress (at policy)"),
        "{text}"
    );
    assert!(
        text.contains("6 frames: 3 forwarded, 0 passed to the kernel, 3 dropped"),
        "{text}"
    );
}

#[test]
fn replay_over_dumps_gives_the_same_verdicts() {
    let dir = Dir::new("flagella-replay-");
    let pcap = write_capture(&dir);
    let state = dir.file("dumps.jsonl", DUMPS);
    check_json(&ok(&flagella(&[
        "replay", "--pcap", &pcap, "--state", &state, "-o", "json",
    ])));
}

#[test]
fn bad_inputs_name_the_file_and_line() {
    let dir = Dir::new("flagella-replay-");
    let pcap = write_capture(&dir);
    let state = dir.file(
        "bad.jsonl",
        &STATE.replace("\"identity\":1002}", "\"identity\":\"x\"}"),
    );
    let o = flagella(&["replay", "--pcap", &pcap, "--state", &state]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad.jsonl, line 3"), "{}", stderr(&o));
    let not_pcap = dir.file("x.pcap", "hello, world, this is not a capture");
    let good = dir.file("state.jsonl", STATE);
    let o = flagella(&["replay", "--pcap", &not_pcap, "--state", &good]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a classic pcap"), "{}", stderr(&o));
    let o = flagella(&["replay", "--pcap", &pcap]);
    assert_eq!(o.status.code(), Some(2), "--state or --node is required");
    let help = ok(&flagella(&["replay", "--help"]));
    assert!(
        help.contains("STATE FILE") && help.contains("EXAMPLES"),
        "{help}"
    );
}
