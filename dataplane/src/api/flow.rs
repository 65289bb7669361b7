//! Monitor events as JSON lines, in a shape close to Hubble's `observe -o json` flows, and the
//! lost-events record that reports what the rings or a slow subscriber dropped.
//!
//! One definition of the wire shape: the monitor socket writes it, `flagella monitor` reads it
//! (see docs/monitor.md). Runs on the monitor thread, never on a worker.

use std::fmt::Write;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

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

/// Appends the flow record of one event (`{"flow": {...}}`, one JSON object, no newline) to
/// `out`.
///
/// Written straight into `out` rather than built as a `serde_json::Value`: the monitor thread
/// encodes up to its rate limit's worth of events a second beside the workers, and a `Value`
/// costs a dozen allocations an event (a map, its keys, nested objects, the address strings);
/// into a reused `out`, this costs none. Every string written is a fixed name or a number, so
/// nothing needs escaping. The unit tests parse the result with serde_json.
pub fn write_flow(out: &mut String, e: &Event, worker: usize, clock: &Clock) {
    // `fmt::Write` for `String` never fails: the results are ignored on purpose.
    let _ = write!(
        out,
        r#"{{"flow":{{"time_ns":{},"verdict":"{}""#,
        clock.wall_ns(e.time_ns),
        verdict_name(e.verdict)
    );
    if let Some(reason) = e.reason() {
        let _ = write!(
            out,
            r#","drop_reason":{},"drop_reason_desc":"{}""#,
            reason.code(),
            reason.name()
        );
    }
    if let Some(stage) = e.stage {
        let _ = write!(out, r#","stage":"{}""#, stage.name());
    }
    let _ = write!(
        out,
        r#","event_type":{{"type":"{}"}},"traffic_direction":"{}","interface":{{"index":{}}}"#,
        e.kind.name(),
        e.direction(),
        e.ingress_ifindex
    );
    if let Verdict::Tx { ifindex } = e.verdict {
        let _ = write!(out, r#","egress_interface":{{"index":{ifindex}}}"#);
    }
    out.push_str(r#","source":"#);
    write_endpoint(out, e.src_identity.0, e.src_ep.map(|ep| ep.0));
    out.push_str(r#","destination":"#);
    write_endpoint(out, e.dst_identity.0, e.dst_ep.map(|ep| ep.0));
    if e.tuple.proto != 0 {
        write_ip(out, e);
        write_l4(out, e);
    }
    let _ = write!(
        out,
        r#","worker":{worker},"frame_len":{},"frame_hex":""#,
        e.frame_len
    );
    write_hex(out, e.frame());
    out.push_str("\"}}");
}

/// The flow record of one event as a `Value` (tests and callers that inspect it; the monitor
/// writes [`write_flow`]'s text, which this parses: one definition).
pub fn flow_json(e: &Event, worker: usize, clock: &Clock) -> Value {
    let mut line = String::new();
    write_flow(&mut line, e, worker, clock);
    serde_json::from_str(&line).unwrap_or(Value::Null)
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

fn write_endpoint(out: &mut String, identity: u32, endpoint: Option<u32>) {
    let _ = write!(out, r#"{{"identity":{identity}"#);
    if let Some(id) = endpoint {
        let _ = write!(out, r#","ID":{id}"#);
    }
    out.push('}');
}

fn write_ip(out: &mut String, e: &Event) {
    let version = match e.tuple.src {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    };
    let _ = write!(
        out,
        r#","IP":{{"source":"{}","destination":"{}","ipVersion":"{version}"}}"#,
        e.tuple.src, e.tuple.dst
    );
}

fn write_l4(out: &mut String, e: &Event) {
    let t = &e.tuple;
    let _ = match t.proto {
        TCP => {
            let _ = write!(
                out,
                r#","l4":{{"TCP":{{"source_port":{},"destination_port":{},"flags":"#,
                t.sport, t.dport
            );
            write_tcp_flags(out, e.tcp_flags);
            out.push_str("}}");
            Ok(())
        }
        UDP => write!(
            out,
            r#","l4":{{"UDP":{{"source_port":{},"destination_port":{}}}}}"#,
            t.sport, t.dport
        ),
        ICMPV4 => write!(out, r#","l4":{{"ICMPv4":{{"id_or_type":{}}}}}"#, t.dport),
        ICMPV6 => write!(out, r#","l4":{{"ICMPv6":{{"id_or_type":{}}}}}"#, t.dport),
        _ => Ok(()),
    };
}

/// `{"SYN":true,"ACK":true}` for the flags set, as Hubble writes them.
fn write_tcp_flags(out: &mut String, flags: u8) {
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
    out.push('{');
    let mut first = true;
    for (_, name) in NAMES.iter().filter(|(bit, _)| flags & bit != 0) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, r#""{name}":true"#);
    }
    out.push('}');
}

fn write_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
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
        m.tcp.flags = 0x02;
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

    fn event_with(proto: u8, verdict: Verdict, src: &str, dst: &str, flags: u8) -> Event {
        let mut m = PacketMeta::EMPTY;
        m.verdict = verdict;
        m.tuple.src = src.parse().unwrap();
        m.tuple.dst = dst.parse().unwrap();
        m.tuple.sport = 1234;
        m.tuple.dport = 53;
        m.tuple.proto = proto;
        m.tcp_flags = flags;
        let mut e = Event::EMPTY;
        let origin = Origin {
            ifindex: 3,
            from_pod: false,
            now: 7,
        };
        e.capture(EventKind::Trace, &m, &[0xab; 200], &origin);
        e
    }

    #[test]
    fn every_protocol_and_verdict_encodes_as_valid_json() {
        let clock = Clock { offset_ns: 0 };
        let tx = Verdict::Tx { ifindex: 9 };
        let v = flow_json(&event_with(UDP, tx, "fd00::1", "fd00::2", 0), 0, &clock);
        let f = &v["flow"];
        assert_eq!(f["verdict"], "FORWARDED");
        assert_eq!(f["egress_interface"]["index"], 9);
        assert_eq!(f["IP"]["ipVersion"], "IPv6");
        assert_eq!(f["IP"]["source"], "fd00::1");
        assert_eq!(f["l4"]["UDP"]["destination_port"], 53);
        assert_eq!(f["source"], json!({"identity": 0}), "no endpoint, no ID");
        assert_eq!(f["frame_len"], 200);
        assert_eq!(f["frame_hex"], "ab".repeat(128));
        let v = flow_json(
            &event_with(ICMPV4, Verdict::Pass, "1.2.3.4", "5.6.7.8", 0),
            0,
            &clock,
        );
        assert_eq!(v["flow"]["verdict"], "PASSED_TO_KERNEL");
        assert_eq!(v["flow"]["l4"]["ICMPv4"]["id_or_type"], 53);
        let v = flow_json(
            &event_with(ICMPV6, Verdict::Pass, "::1", "::2", 0),
            0,
            &clock,
        );
        assert_eq!(v["flow"]["l4"]["ICMPv6"]["id_or_type"], 53);
        let v = flow_json(
            &event_with(47, Verdict::Pass, "1.2.3.4", "5.6.7.8", 0),
            0,
            &clock,
        );
        assert!(v["flow"].get("l4").is_none(), "GRE has no l4: {v}");
        let v = flow_json(
            &event_with(TCP, Verdict::Pass, "1.2.3.4", "5.6.7.8", 0xff),
            0,
            &clock,
        );
        let flags = v["flow"]["l4"]["TCP"]["flags"].as_object().unwrap();
        assert_eq!(flags.len(), 8, "every flag: {v}");
        let v = flow_json(
            &event_with(TCP, Verdict::Pass, "1.2.3.4", "5.6.7.8", 0x12),
            0,
            &clock,
        );
        assert_eq!(
            v["flow"]["l4"]["TCP"]["flags"],
            json!({"SYN": true, "ACK": true})
        );
    }

    #[test]
    fn encoding_into_a_reused_buffer_allocates_nothing_after_the_first_event() {
        let clock = Clock { offset_ns: 0 };
        let e = event_with(TCP, Verdict::Pass, "fd00::1:2:3:4", "fd00::5:6:7:8", 0xff);
        let mut line = String::new();
        write_flow(&mut line, &e, 0, &clock);
        let (capacity, address) = (line.capacity(), line.as_ptr());
        for _ in 0..100 {
            line.clear();
            write_flow(&mut line, &e, 0, &clock);
        }
        assert_eq!((line.capacity(), line.as_ptr()), (capacity, address));
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
