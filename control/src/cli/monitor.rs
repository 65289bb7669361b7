//! `flagella monitor`: the dataplane's drop, policy-verdict and trace events, live.
//!
//! Reads the dataplane's monitor socket (JSON lines, `dataplane::api::flow`), keeps the events
//! the filters select, adds the labels of both identities, and prints each one as a line of
//! text for people or, with `-o json`, as the flow JSON (one per line, Hubble-like). Lost-event
//! records from the dataplane (a worker's ring or this reader's queue was full) are always
//! shown. `--pcap FILE` also writes the frames of the selected events to a pcap file.
//!
//! Labels come from the agent's view, i.e. the identities allocated in etcd (the dataplane
//! knows identities only as numbers): read at start and again when an event names an identity
//! not seen yet (at most every few seconds). Without etcd, events are shown without labels.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use dataplane::pipeline::event::CAPTURE_BYTES;
use dataplane::pipeline::DropReason;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;

use super::args::{EventTypeArg, MonitorArgs, Output};
use super::identity::{identities, reserved_identities};
use super::pcap::PcapWriter;
use super::{connect, CliError};

/// How often unknown identities may trigger a new read of etcd.
const LABEL_REFRESH: Duration = Duration::from_secs(3);
/// The longest line accepted from the socket (a flow is well under 1 KiB).
const MAX_LINE: usize = 64 * 1024;

/// What the filters select.
#[derive(Debug, Default)]
pub struct Filter {
    types: Vec<&'static str>,
    endpoints: Vec<u32>,
    identities: Vec<u32>,
    reasons: Vec<u8>,
}

impl Filter {
    /// The filters of `args`; an unknown reason is refused with the list of names.
    pub fn new(args: &MonitorArgs) -> Result<Filter, CliError> {
        let reasons = args
            .reason
            .iter()
            .map(|r| parse_reason(r))
            .collect::<Result<_, _>>()?;
        Ok(Filter {
            types: args.types.iter().map(|t| type_name(*t)).collect(),
            endpoints: args.endpoint.clone(),
            identities: args.identity.clone(),
            reasons,
        })
    }

    /// Whether `flow` (the object under `"flow"`) passes every filter given.
    pub fn matches(&self, flow: &Value) -> bool {
        let kind = flow["event_type"]["type"].as_str().unwrap_or("");
        let policy_drop = kind == "drop" && flow["stage"] == "policy";
        let type_ok = self.types.is_empty()
            || self
                .types
                .iter()
                .any(|t| *t == kind || (*t == "policy-verdict" && policy_drop));
        let either = |field: &str, wanted: &[u32]| {
            wanted.is_empty()
                || ["source", "destination"].iter().any(|side| {
                    flow[side][field]
                        .as_u64()
                        .is_some_and(|v| wanted.iter().any(|w| u64::from(*w) == v))
                })
        };
        let reason_ok = self.reasons.is_empty()
            || flow["drop_reason"]
                .as_u64()
                .is_some_and(|r| self.reasons.iter().any(|w| u64::from(*w) == r));
        type_ok
            && either("ID", &self.endpoints)
            && either("identity", &self.identities)
            && reason_ok
    }
}

fn type_name(t: EventTypeArg) -> &'static str {
    match t {
        EventTypeArg::Drop => "drop",
        EventTypeArg::PolicyVerdict => "policy-verdict",
        EventTypeArg::Trace => "trace",
    }
}

/// A drop reason by name (`policy_denied_ingress`) or number (`51`).
pub fn parse_reason(arg: &str) -> Result<u8, CliError> {
    let found = DropReason::ALL
        .iter()
        .find(|r| r.name() == arg || r.code().to_string() == arg);
    match found {
        Some(r) => Ok(r.code()),
        None => Err(CliError::Input(format!(
            "unknown drop reason `{arg}`; use one of: {}",
            DropReason::ALL.map(|r| r.name()).join(", ")
        ))),
    }
}

/// Identity -> its labels, as the agent allocated them.
struct Labels {
    etcd: Vec<String>,
    known: BTreeMap<u64, Vec<String>>,
    last_read: Option<Instant>,
    /// etcd could not be read: say so once, then go on without.
    warned: bool,
}

impl Labels {
    fn new(etcd: &[String]) -> Labels {
        let known = reserved_identities()
            .into_iter()
            .map(|i| (u64::from(i.id), label_list(&i.labels)))
            .collect();
        Labels {
            etcd: etcd.to_vec(),
            known,
            last_read: None,
            warned: false,
        }
    }

    /// Reads etcd again if `wanted` names an identity not known yet and the last read is old.
    async fn refresh_for(&mut self, wanted: &[u64]) {
        if wanted.iter().all(|id| self.known.contains_key(id))
            || self.last_read.is_some_and(|t| t.elapsed() < LABEL_REFRESH)
        {
            return;
        }
        self.last_read = Some(Instant::now());
        let read = async {
            let store = connect(&self.etcd).await?;
            identities(&store).await
        };
        match read.await {
            Ok((list, _skipped)) => {
                for i in list {
                    self.known.insert(u64::from(i.id), label_list(&i.labels));
                }
            }
            Err(e) if !self.warned => {
                self.warned = true;
                eprintln!(
                    "warning: identity labels unavailable ({e}); events show identity numbers only"
                );
            }
            Err(_) => {}
        }
    }

    /// Adds `"labels"` to the source and destination of `flow`.
    fn annotate(&self, flow: &mut Value) {
        for side in ["source", "destination"] {
            let Some(id) = flow[side]["identity"].as_u64() else {
                continue;
            };
            if let (Some(labels), Some(map)) = (self.known.get(&id), flow[side].as_object_mut()) {
                map.insert("labels".into(), json!(labels));
            }
        }
    }
}

/// `["k=v", ...]`, sorted.
fn label_list(labels: &BTreeMap<String, String>) -> Vec<String> {
    labels
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            }
        })
        .collect()
}

/// `flagella monitor`: runs until the socket closes, or `--count` events were shown.
pub async fn run(args: MonitorArgs, etcd: &[String], out: Output) -> Result<(), CliError> {
    let filter = Filter::new(&args)?;
    let mut pcap = args.pcap.as_deref().map(open_pcap).transpose()?;
    let stream = UnixStream::connect(&args.socket).await.map_err(|e| {
        CliError::Other(format!(
            "cannot connect to the monitor socket {}: {e}; is flagella-dataplane running (as \
             root, without --monitor-socket off)? Point --socket at its monitor socket",
            args.socket.display()
        ))
    })?;
    let mut labels = Labels::new(etcd);
    let mut lines = BufReader::new(stream).lines();
    let mut shown = 0u64;
    let stdout = std::io::stdout();
    let mut seen_ids: HashSet<u64> = HashSet::new();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| CliError::Other(format!("reading the monitor socket: {e}")))?
    {
        if line.len() > MAX_LINE {
            continue;
        }
        let Ok(mut record) = serde_json::from_str::<Value>(&line) else {
            continue; // Not ours to interpret: a newer dataplane's record, say.
        };
        if let Some(lost) = record.get("lost_events") {
            print_line(&stdout, out, &record, || lost_text(lost))?;
            continue;
        }
        let Some(flow) = record.get_mut("flow") else {
            continue;
        };
        if !filter.matches(flow) {
            continue;
        }
        let ids = identities_of(flow);
        seen_ids.extend(ids.iter().copied());
        if !args.no_labels {
            labels.refresh_for(&ids).await;
            labels.annotate(flow);
        }
        if let Some(pcap) = pcap.as_mut() {
            write_frame(pcap, flow)?;
        }
        let text = flow_text(flow);
        print_line(&stdout, out, &record, || text)?;
        shown += 1;
        if args.count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
    }
    Err(CliError::Other(
        "the monitor socket closed: the dataplane stopped; start it and run flagella monitor again"
            .into(),
    ))
}

fn identities_of(flow: &Value) -> Vec<u64> {
    ["source", "destination"]
        .iter()
        .filter_map(|side| flow[side]["identity"].as_u64())
        .collect()
}

fn open_pcap(path: &Path) -> Result<PcapWriter<BufWriter<File>>, CliError> {
    let file = File::create(path).map_err(|source| CliError::Read {
        path: path.display().to_string(),
        source,
    })?;
    PcapWriter::new(BufWriter::new(file), CAPTURE_BYTES as u32)
        .map_err(|e| CliError::Other(format!("writing {}: {e}", path.display())))
}

/// The event's captured bytes as one pcap record.
fn write_frame(pcap: &mut PcapWriter<BufWriter<File>>, flow: &Value) -> Result<(), CliError> {
    let Some(bytes) = flow["frame_hex"].as_str().and_then(unhex) else {
        return Ok(());
    };
    let time = flow["time_ns"].as_u64().unwrap_or(0);
    let len = flow["frame_len"]
        .as_u64()
        .and_then(|l| u32::try_from(l).ok())
        .unwrap_or(0);
    pcap.write(time, &bytes, len)
        .map_err(|e| CliError::Other(format!("writing the pcap file: {e}")))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn print_line(
    stdout: &std::io::Stdout,
    out: Output,
    record: &Value,
    text: impl FnOnce() -> String,
) -> Result<(), CliError> {
    let line = match out {
        Output::Json => record.to_string(),
        Output::Text => text(),
    };
    let mut lock = stdout.lock();
    writeln!(lock, "{line}")
        .and_then(|()| lock.flush())
        .map_err(|e| CliError::Other(format!("writing to stdout: {e}")))
}

/// `LOST 12 events (worker_ring, worker 0)`.
fn lost_text(lost: &Value) -> String {
    let n = lost["num_events_lost"].as_u64().unwrap_or(0);
    let source = lost["source"].as_str().unwrap_or("?");
    match lost["worker"].as_u64() {
        Some(w) => format!("LOST {n} events ({source}, worker {w})"),
        None => format!("LOST {n} events ({source})"),
    }
}

/// One line for people: verdict and why, the two ends with identities and labels, the
/// protocol, the direction and the interface.
pub fn flow_text(flow: &Value) -> String {
    let verdict = flow["verdict"].as_str().unwrap_or("?");
    let why = match (flow["drop_reason_desc"].as_str(), flow["stage"].as_str()) {
        (Some(reason), Some(stage)) => format!(" {reason} (at {stage})"),
        (Some(reason), None) => format!(" {reason}"),
        _ => String::new(),
    };
    let (proto, sport, dport, flags) = l4_parts(&flow["l4"]);
    format!(
        "{} {}{}: {} -> {} {}{} {} if {}",
        flow["event_type"]["type"].as_str().unwrap_or("?"),
        verdict,
        why,
        end_text(&flow["source"], &flow["IP"]["source"], sport),
        end_text(&flow["destination"], &flow["IP"]["destination"], dport),
        proto,
        flags,
        flow["traffic_direction"].as_str().unwrap_or("?"),
        flow["interface"]["index"]
    )
}

/// `10.0.0.1:80 (identity 1001 [app=web], endpoint 7)`.
fn end_text(end: &Value, ip: &Value, port: Option<u64>) -> String {
    let addr = match (ip.as_str(), port) {
        (Some(ip), Some(p)) if ip.contains(':') => format!("[{ip}]:{p}"),
        (Some(ip), Some(p)) => format!("{ip}:{p}"),
        (Some(ip), None) => ip.to_string(),
        (None, _) => "-".to_string(),
    };
    let labels = end["labels"]
        .as_array()
        .map(|l| {
            let l: Vec<&str> = l.iter().filter_map(Value::as_str).collect();
            format!(" [{}]", l.join(","))
        })
        .unwrap_or_default();
    let endpoint = end["ID"]
        .as_u64()
        .map(|id| format!(", endpoint {id}"))
        .unwrap_or_default();
    format!("{addr} (identity {}{labels}{endpoint})", end["identity"])
}

/// Protocol name, ports, and TCP flags (` SYN,ACK`); for ICMP the type and code in the
/// protocol (`ICMPv4 type 3 code 10`).
fn l4_parts(l4: &Value) -> (String, Option<u64>, Option<u64>, String) {
    let Some((proto, v)) = l4.as_object().and_then(|m| m.iter().next()) else {
        return ("-".into(), None, None, String::new());
    };
    if let Some(t) = v["type"].as_u64() {
        let code = v["code"]
            .as_u64()
            .map(|c| format!(" code {c}"))
            .unwrap_or_default();
        return (format!("{proto} type {t}{code}"), None, None, String::new());
    }
    let flags = v["flags"]
        .as_object()
        .map(|f| format!(" {}", f.keys().cloned().collect::<Vec<_>>().join(",")))
        .unwrap_or_default();
    (
        proto.clone(),
        v["source_port"].as_u64(),
        v["destination_port"].as_u64(),
        flags,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied_syn() -> Value {
        json!({
            "verdict": "DROPPED", "drop_reason": 51, "drop_reason_desc": "policy_denied_ingress",
            "stage": "policy", "event_type": {"type": "drop"}, "traffic_direction": "ingress",
            "interface": {"index": 5},
            "source": {"identity": 1001, "ID": 7, "labels": ["app=a"]},
            "destination": {"identity": 1002, "ID": 8},
            "IP": {"source": "10.0.0.1", "destination": "10.0.0.2", "ipVersion": "IPv4"},
            "l4": {"TCP": {"source_port": 40000, "destination_port": 80, "flags": {"SYN": true}}}
        })
    }

    #[test]
    fn icmp_shows_its_type_and_code() {
        let mut f = denied_syn();
        f["l4"] = json!({"ICMPv4": {"type": 3, "code": 10}});
        let t = flow_text(&f);
        assert!(
            t.contains("10.0.0.2 (identity 1002, endpoint 8) ICMPv4 type 3 code 10 ingress"),
            "{t}"
        );
        f["l4"] = json!({"ICMPv6": {"type": 128}});
        assert!(flow_text(&f).contains(" ICMPv6 type 128 ingress"));
    }

    fn filter(types: &[&'static str], endpoints: &[u32], ids: &[u32], reasons: &[u8]) -> Filter {
        Filter {
            types: types.to_vec(),
            endpoints: endpoints.to_vec(),
            identities: ids.to_vec(),
            reasons: reasons.to_vec(),
        }
    }

    #[test]
    fn filters_select_by_type_endpoint_identity_and_reason() {
        let f = denied_syn();
        assert!(filter(&[], &[], &[], &[]).matches(&f));
        assert!(filter(&["drop"], &[8], &[1001], &[51]).matches(&f));
        assert!(
            filter(&["policy-verdict"], &[], &[], &[]).matches(&f),
            "a policy drop"
        );
        assert!(!filter(&["trace"], &[], &[], &[]).matches(&f));
        assert!(!filter(&[], &[9], &[], &[]).matches(&f));
        assert!(!filter(&[], &[], &[1003], &[]).matches(&f));
        assert!(!filter(&[], &[], &[], &[50]).matches(&f));
    }

    #[test]
    fn reasons_are_accepted_by_name_or_number_and_unknown_ones_listed() {
        assert_eq!(parse_reason("policy_denied_ingress").unwrap(), 51);
        assert_eq!(parse_reason("51").unwrap(), 51);
        let e = parse_reason("nope").unwrap_err().to_string();
        assert!(e.contains("policy_denied_egress"), "{e}");
    }

    #[test]
    fn text_shows_verdict_reason_ends_labels_and_flags() {
        let t = flow_text(&denied_syn());
        assert_eq!(
            t,
            "drop DROPPED policy_denied_ingress (at policy): \
             10.0.0.1:40000 (identity 1001 [app=a], endpoint 7) -> \
             10.0.0.2:80 (identity 1002, endpoint 8) TCP SYN ingress if 5"
        );
    }

    #[test]
    fn frames_travel_as_hex() {
        assert_eq!(unhex("01ff"), Some(vec![1, 255]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
