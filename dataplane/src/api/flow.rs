//! Monitor events as JSON lines, in a shape close to Hubble's `observe -o json` flows, and the
//! lost-events record that reports what the rings or a slow subscriber dropped.
//!
//! One definition of the wire shape: the monitor socket writes it, `flagella monitor` reads it
//! (see docs/monitor.md). Runs on the monitor thread, never on a worker.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::pipeline::event::Event;
use crate::pipeline::Verdict;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV4: u8 = 1;
const ICMPV6: u8 = 58;

/// Turns the workers' monotonic batch times into wall-clock time, with the offset between
/// the two clocks read once (at the monitor's start).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock nanoseconds minus monotonic nanoseconds.
    offset_ns: i128,
}

impl Clock {
    /// The offset between `monotonic_now_ns` and the wall clock now.
    pub fn new(monotonic_now_ns: u64) -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Clock {
            offset_ns: wall - i128::from(monotonic_now_ns),
        }
    }

    /// Wall-clock nanoseconds since the Unix epoch of a monotonic time.
    pub fn wall_ns(&self, monotonic_ns: u64) -> u64 {
        u64::try_from(i128::from(monotonic_ns) + self.offset_ns).unwrap_or(0)
    }
}

/// The flow record of one event (`{"flow": {...}, "time_ns": ...}`), one JSON line.
pub fn flow_json(e: &Event, worker: usize, clock: &Clock) -> Value {
    let mut flow = Map::new();
    flow.insert("time_ns".into(), json!(clock.wall_ns(e.time_ns)));
    flow.insert("verdict".into(), json!(verdict_name(e.verdict)));
    if let Some(reason) = e.reason() {
        flow.insert("drop_reason".into(), json!(reason.code()));
        flow.insert("drop_reason_desc".into(), json!(reason.name()));
    }
    if let Some(stage) = e.stage {
        flow.insert("stage".into(), json!(stage.name()));
    }
    flow.insert("event_type".into(), json!({ "type": e.kind.name() }));
    flow.insert("traffic_direction".into(), json!(e.direction()));
    flow.insert("interface".into(), json!({ "index": e.ingress_ifindex }));
    if let Verdict::Tx { ifindex } = e.verdict {
        flow.insert("egress_interface".into(), json!({ "index": ifindex }));
    }
    flow.insert(
        "source".into(),
        endpoint_json(e.src_identity.0, e.src_ep.map(|ep| ep.0)),
    );
    flow.insert(
        "destination".into(),
        endpoint_json(e.dst_identity.0, e.dst_ep.map(|ep| ep.0)),
    );
    if e.tuple.proto != 0 {
        flow.insert("IP".into(), ip_json(e));
        if let Some(l4) = l4_json(e) {
            flow.insert("l4".into(), l4);
        }
    }
    flow.insert("worker".into(), json!(worker));
    flow.insert("frame_len".into(), json!(e.frame_len));
    flow.insert("frame_hex".into(), json!(hex(e.frame())));
    json!({ "flow": Value::Object(flow) })
}

/// `{"lost_events": {...}}`: `lost` events dropped at `source` (`worker_ring` with its worker,
/// or `subscriber_queue`: this subscriber read too slowly) since the previous such record.
pub fn lost_json(source: &str, worker: Option<usize>, lost: u64) -> Value {
    let mut record = json!({ "source": source, "num_events_lost": lost });
    if let (Some(w), Some(map)) = (worker, record.as_object_mut()) {
        map.insert("worker".into(), json!(w));
    }
    json!({ "lost_events": record })
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Drop(_) => "DROPPED",
        Verdict::Tx { .. } => "FORWARDED",
        Verdict::Pass => "PASSED_TO_KERNEL",
        Verdict::Pending => "UNKNOWN",
    }
}

fn endpoint_json(identity: u32, endpoint: Option<u32>) -> Value {
    let mut v = json!({ "identity": identity });
    if let (Some(id), Some(map)) = (endpoint, v.as_object_mut()) {
        map.insert("ID".into(), json!(id));
    }
    v
}

fn ip_json(e: &Event) -> Value {
    let version = match e.tuple.src {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    };
    json!({
        "source": e.tuple.src.to_string(),
        "destination": e.tuple.dst.to_string(),
        "ipVersion": version,
    })
}

fn l4_json(e: &Event) -> Option<Value> {
    let t = &e.tuple;
    Some(match t.proto {
        TCP => json!({ "TCP": {
            "source_port": t.sport,
            "destination_port": t.dport,
            "flags": tcp_flags_json(e.tcp_flags),
        }}),
        UDP => json!({ "UDP": { "source_port": t.sport, "destination_port": t.dport } }),
        ICMPV4 => json!({ "ICMPv4": icmp_json(e) }),
        ICMPV6 => json!({ "ICMPv6": icmp_json(e) }),
        _ => return None,
    })
}

/// `{"type": 8, "code": 0}`, as Hubble writes ICMP (no `code` when the event lost it).
fn icmp_json(e: &Event) -> Value {
    match e.icmp_code {
        Some(code) => json!({ "type": e.icmp_type, "code": code }),
        None => json!({ "type": e.icmp_type }),
    }
}

/// `{"SYN": true, "ACK": true}` for the flags set, as Hubble writes them.
fn tcp_flags_json(flags: u8) -> Value {
    const NAMES: [(u8, &str); 8] = [
        (0x01, "FIN"),
        (0x02, "SYN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    let set: Map<String, Value> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| ((*name).to_string(), Value::Bool(true)))
        .collect();
    Value::Object(set)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::event::{EventKind, Origin};
    use crate::pipeline::{DropReason, PacketMeta, Stage};
    use crate::tables::endpoints::EndpointId;
    use crate::types::Identity;

    #[test]
    fn a_denied_syn_encodes_as_a_hubble_like_flow() {
        let mut m = PacketMeta::EMPTY;
        m.verdict = Verdict::Drop(DropReason::PolicyDeniedIngress);
        m.drop_stage = Stage::Policy as u8;
        m.tuple.src = "10.0.0.1".parse().unwrap();
        m.tuple.dst = "10.0.0.2".parse().unwrap();
        m.tuple.sport = 40000;
        m.tuple.dport = 80;
        m.tuple.proto = TCP;
        m.tcp_flags = 0x02;
        m.src_identity = Identity(1001);
        m.dst_identity = Identity(1002);
        m.src_ep = Some(EndpointId(7));
        m.dst_ep = Some(EndpointId(8));
        let mut e = Event::EMPTY;
        let origin = Origin {
            ifindex: 5,
            from_pod: true,
            now: 1_000,
        };
        e.capture(EventKind::Drop, &m, &[0x01, 0xff], &origin);
        let clock = Clock { offset_ns: 500 };
        let v = flow_json(&e, 2, &clock);
        let f = &v["flow"];
        assert_eq!(f["time_ns"], 1_500);
        assert_eq!(f["verdict"], "DROPPED");
        assert_eq!(f["drop_reason"], 51);
        assert_eq!(f["drop_reason_desc"], "policy_denied_ingress");
        assert_eq!(f["stage"], "policy");
        assert_eq!(f["event_type"]["type"], "drop");
        assert_eq!(f["traffic_direction"], "ingress");
        assert_eq!(f["interface"]["index"], 5);
        assert_eq!(f["source"], json!({"identity": 1001, "ID": 7}));
        assert_eq!(f["destination"], json!({"identity": 1002, "ID": 8}));
        assert_eq!(f["IP"]["source"], "10.0.0.1");
        assert_eq!(f["IP"]["destination"], "10.0.0.2");
        assert_eq!(f["l4"]["TCP"]["source_port"], 40000);
        assert_eq!(f["l4"]["TCP"]["destination_port"], 80);
        assert_eq!(f["l4"]["TCP"]["flags"], json!({"SYN": true}));
        assert_eq!(f["worker"], 2);
        assert_eq!(f["frame_len"], 2);
        assert_eq!(f["frame_hex"], "01ff");
    }

    /// ICMP as Hubble writes it: type and code (read from the frame at the parser's offset),
    /// not the echo identifier the tuple's ports hold; no code once the header moved.
    #[test]
    fn icmp_encodes_type_and_code() {
        let mut m = PacketMeta::EMPTY;
        m.tuple.src = "10.0.0.1".parse().unwrap();
        m.tuple.dst = "10.0.0.2".parse().unwrap();
        m.tuple.proto = ICMPV4;
        m.tuple.dport = 3;
        m.icmp = crate::pipeline::meta::IcmpClass::Error;
        m.icmp_type = 3;
        m.l4 = 2;
        let origin = Origin {
            ifindex: 5,
            from_pod: true,
            now: 0,
        };
        let clock = Clock { offset_ns: 0 };
        let mut e = Event::EMPTY;
        e.capture(EventKind::Drop, &m, &[0, 0, 3, 10, 0, 0], &origin);
        let v = flow_json(&e, 0, &clock);
        assert_eq!(v["flow"]["l4"], json!({"ICMPv4": {"type": 3, "code": 10}}));
        e.capture(EventKind::Trace, &m, &[0, 0, 0x45, 0], &origin);
        let v = flow_json(&e, 0, &clock);
        assert_eq!(v["flow"]["l4"], json!({"ICMPv4": {"type": 3}}));
    }

    #[test]
    fn lost_records_name_their_source() {
        assert_eq!(
            lost_json("worker_ring", Some(1), 9),
            json!({"lost_events": {"source": "worker_ring", "worker": 1, "num_events_lost": 9}})
        );
        assert_eq!(
            lost_json("subscriber_queue", None, 3),
            json!({"lost_events": {"source": "subscriber_queue", "num_events_lost": 3}})
        );
    }
}
