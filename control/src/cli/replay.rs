//! `flagella replay`: every frame of a capture through the dataplane's own pipeline
//! (`dataplane::pipeline::Pipeline`, the code a worker runs, with its own conntrack), offline,
//! over tables built from a state snapshot; each frame's verdict is reported as
//! `flagella monitor` shows it (the monitor's own event path: `EventSink` and
//! `api::flow::flow_json`, with traces on, so every frame has its line).
//!
//! The state is a snapshot: lines of control-socket requests (`endpoint.upsert`,
//! `policy.update`, `batch`, ..., what the agent sends; parsed with
//! `api::protocol::parse_request`) and `dump` replies (each entry turned into its upsert),
//! applied with `api::apply` to empty tables of the daemon's Maglev size and seed. The lines
//! come from a file (--state), from a running dataplane's dumps (--dataplane-socket), or are the
//! changes the agent of a node would send, from etcd (--node: its own model,
//! `sync::ClusterState`); --save-state writes them, to replay the same state later.
//!
//! Frames are replayed one at a time, in file order, at their capture time (conntrack ages
//! flows by it). A frame captured shorter than it was (the monitor keeps 128 bytes) is padded
//! with zeros to its original length, so its headers are judged and its payload is not. A
//! frame's ingress interface is --ingress, else the pod interface whose endpoint has the
//! frame's source MAC, else the uplink the state names (0 when it names none: an unknown
//! interface, as the daemon would see it).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use dataplane::api::apply::apply;
use dataplane::api::flow::{flow_json, Clock};
use dataplane::api::protocol::{parse_request, Change, DumpRequest, DumpTable, Request};
use dataplane::frame::{Frame, DEFAULT_HEADROOM};
use dataplane::pipeline::event_ring::{event_ring, EventConfig, EventSink, RingConsumer};
use dataplane::pipeline::{Pipeline, PipelineConfig, Verdict};
use dataplane::tables::maglev::{DAEMON_SEED, DEFAULT_M};
use dataplane::tables::services::Services;
use dataplane::tables::{LocalNode, Tables};
use dataplane::MacAddr;
use serde_json::{json, Map, Value};

use super::args::{Output, ReplayArgs};
use super::monitor::flow_text;
use super::pcap::{read_pcap, PcapWriter, Record};
use super::render::warn;
use super::{connect, CliError, Skipped};
use crate::dataplane_client::DataplaneClient;
use crate::schema::ROOT;
use crate::sync::ClusterState;

/// Frames longer than this are not padded back to their original length (a jumbo frame).
const MAX_PADDED: u32 = 9216;

/// What a replay counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub forwarded: usize,
    pub passed: usize,
    pub dropped: usize,
}

pub async fn run(args: ReplayArgs, etcd: &[String], out: Output) -> Result<(), CliError> {
    let (source, lines) = snapshot(&args, etcd).await?;
    if let Some(path) = &args.save_state {
        save_state(path, &lines)?;
    }
    let tables = state_from_lines(&source, &lines)?;
    let bytes = std::fs::read(&args.pcap).map_err(|source| CliError::Read {
        path: format!("the --pcap file {}", args.pcap.display()),
        source,
    })?;
    let records =
        read_pcap(&bytes).map_err(|e| CliError::Other(format!("{}: {e}", args.pcap.display())))?;
    let mut drops = match &args.drops {
        Some(path) => Some(open_drops(path)?),
        None => None,
    };
    let mut replay = Replayer::new(tables)?;
    let mut summary = Summary::default();
    for (i, record) in records.iter().enumerate() {
        let mut flow = replay.one(record, args.ingress);
        count(&mut summary, &flow);
        if let (Some(w), Some("DROPPED")) = (drops.as_mut(), flow["flow"]["verdict"].as_str()) {
            w.write(record.time_ns, &record.data, record.original_len)
                .map_err(|e| CliError::Other(format!("writing --drops: {e}")))?;
        }
        if let Some(m) = flow.as_object_mut() {
            m.insert("packet".into(), json!(i + 1));
        }
        let line = match out {
            Output::Json => flow.to_string(),
            Output::Text => format!("#{} {}", i + 1, flow_text(&flow["flow"])),
        };
        println!("{line}");
    }
    if out == Output::Text {
        println!(
            "{} frames: {} forwarded, {} passed to the kernel, {} dropped",
            records.len(),
            summary.forwarded,
            summary.passed,
            summary.dropped
        );
    }
    Ok(())
}

fn count(s: &mut Summary, flow: &Value) {
    match flow["flow"]["verdict"].as_str() {
        Some("FORWARDED") => s.forwarded += 1,
        Some("PASSED_TO_KERNEL") => s.passed += 1,
        _ => s.dropped += 1,
    }
}

fn open_drops(path: &Path) -> Result<PcapWriter<std::io::BufWriter<std::fs::File>>, CliError> {
    let file = std::fs::File::create(path).map_err(|source| CliError::Read {
        path: format!("the --drops file {}", path.display()),
        source,
    })?;
    PcapWriter::new(std::io::BufWriter::new(file), MAX_RECORD_SNAPLEN)
        .map_err(|e| CliError::Other(format!("writing --drops {}: {e}", path.display())))
}

/// The snap length written in a --drops file's header (the input's frames are copied whole).
const MAX_RECORD_SNAPLEN: u32 = 262_144;

/// The pipeline, its tables and its event output.
pub struct Replayer {
    tables: Tables,
    pipeline: Pipeline,
    events: RingConsumer,
    clock: Clock,
}

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer").finish_non_exhaustive()
    }
}

impl Replayer {
    pub fn new(tables: Tables) -> Result<Replayer, CliError> {
        let mut pipeline = Pipeline::new(PipelineConfig::default())
            .map_err(|e| CliError::Other(format!("the pipeline: {e}")))?;
        let (producer, events) = event_ring(4);
        let listening = Arc::new(AtomicBool::new(true));
        let cfg = EventConfig {
            policy_sample: 1,
            trace: true,
        };
        pipeline.report_events(EventSink::new(producer, listening, cfg));
        Ok(Replayer {
            tables,
            pipeline,
            events,
            // Event times are the capture's (replaced below); the offset is not used.
            clock: Clock::new(0),
        })
    }

    /// One frame through the pipeline: its monitor record (`{"flow": {...}}`).
    pub fn one(&mut self, record: &Record, ingress: Option<u32>) -> Value {
        let mut data = record.data.clone();
        if record.original_len <= MAX_PADDED {
            data.resize((record.original_len as usize).max(data.len()), 0);
        }
        let ifindex = ingress.unwrap_or_else(|| ingress_of(&self.tables, &data));
        let mut frames = [Frame::from_packet(&data, DEFAULT_HEADROOM, 64)];
        let verdict = self
            .pipeline
            .process(&self.tables, ifindex, &mut frames, record.time_ns)
            .get(0)
            .unwrap_or(Verdict::Pending);
        let mut flow = match self.events.pop() {
            Some(e) => flow_json(&e, 0, &self.clock),
            // Every frame has an event with traces on; say so if one ever has not.
            None => {
                json!({"flow": {"verdict": format!("{verdict:?}"), "interface": {"index": ifindex}}})
            }
        };
        while self.events.pop().is_some() {}
        if let Some(f) = flow.get_mut("flow").and_then(Value::as_object_mut) {
            f.insert("time_ns".into(), json!(record.time_ns));
        }
        flow
    }
}

/// The interface a frame came in on: the pod whose MAC sent it, else the uplink.
fn ingress_of(t: &Tables, frame: &[u8]) -> u32 {
    let src = frame.get(6..12).and_then(MacAddr::from_bytes);
    if let Some(ep) = src.and_then(|mac| t.endpoints.iter().find(|ep| ep.spec.mac == mac)) {
        return ep.spec.ifindex;
    }
    t.node.uplink_ifindex.unwrap_or(0)
}

/// Empty tables as the daemon starts with (its Maglev size and seed).
fn empty_tables() -> Result<Tables, CliError> {
    let services = Services::new(DEFAULT_M, DAEMON_SEED)
        .map_err(|e| CliError::Other(format!("the service table: {e}")))?;
    Ok(Tables::empty(LocalNode::default(), services))
}

/// The snapshot's lines, and what to call them in errors: --state, --dataplane-socket or
/// --node.
async fn snapshot(args: &ReplayArgs, etcd: &[String]) -> Result<(String, Vec<Line>), CliError> {
    if let Some(path) = &args.state {
        let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
            path: format!("the --state file {}", path.display()),
            source,
        })?;
        let source = path.display().to_string();
        let lines = lines_of_text(&source, &text)?;
        return Ok((source, lines));
    }
    if let Some(socket) = &args.dataplane_socket {
        let source = format!("the dumps of {}", socket.display());
        return Ok((source, dumps_of(socket).await?));
    }
    if let Some(node) = &args.node {
        let source = format!("node {node}'s state from etcd");
        return Ok((source, agent_lines(node, etcd).await?));
    }
    Err(CliError::Other(
        "give --state FILE, --dataplane-socket PATH or --node NAME".into(),
    ))
}

/// One line of a snapshot, with its line number in the source.
pub type Line = (usize, Value);

/// The JSON lines of a state file (blank lines and `#` comments skipped).
pub fn lines_of_text(source: &str, text: &str) -> Result<Vec<Line>, CliError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| {
            CliError::Input(format!(
                "{source}, line {}: not JSON ({e}); each line is one request or dump reply",
                i + 1
            ))
        })?;
        out.push((i + 1, value));
    }
    Ok(out)
}

/// Writes a snapshot's lines as a state file.
fn save_state(path: &Path, lines: &[Line]) -> Result<(), CliError> {
    let text: String = lines.iter().map(|(_, v)| format!("{v}\n")).collect();
    std::fs::write(path, text).map_err(|source| CliError::Read {
        path: format!("the --save-state file {}", path.display()),
        source,
    })
}

/// Tables from a snapshot's lines (`source` names them in errors).
pub fn state_from_lines(source: &str, lines: &[Line]) -> Result<Tables, CliError> {
    let mut t = empty_tables()?;
    for (n, value) in lines {
        let at = |e: String| CliError::Input(format!("{source}, line {n}: {e}"));
        for request in requests_of(value).map_err(at)? {
            for change in changes_of(&request).map_err(at)? {
                apply(&mut t, &change).map_err(|e| at(format!("{}: {e}", change_op(&change))))?;
            }
        }
    }
    Ok(t)
}

/// Tables from the text of a state file.
pub fn state_from_text(source: &str, text: &str) -> Result<Tables, CliError> {
    state_from_lines(source, &lines_of_text(source, text)?)
}

/// A running dataplane's tables as its dump replies: the local node, endpoints, ipcache,
/// services, nodes, the host's policy, and each endpoint's policy.
async fn dumps_of(socket: &Path) -> Result<Vec<Line>, CliError> {
    let mut client = DataplaneClient::connect(socket).await?;
    let mut out = Vec::new();
    let tables = [
        DumpTable::LocalNode,
        DumpTable::Endpoints,
        DumpTable::Ipcache,
        DumpTable::Services,
        DumpTable::Nodes,
        DumpTable::HostPolicy,
    ];
    for table in tables {
        out.push(checked(client.dump(table).await?)?);
    }
    let ids: Vec<u32> = out[1]["entries"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .filter_map(|e| e["id"].as_u64().and_then(|id| u32::try_from(id).ok()))
                .collect()
        })
        .unwrap_or_default();
    for id in ids {
        let request = Request::Dump(DumpRequest {
            table: DumpTable::Policy,
            endpoint: Some(id),
            limit: None,
        });
        out.push(checked(client.send_request(&request).await?)?);
    }
    Ok(out
        .into_iter()
        .enumerate()
        .map(|(i, v)| (i + 1, v))
        .collect())
}

/// A dump reply, or its refusal as an error.
fn checked(reply: Value) -> Result<Value, CliError> {
    if reply["ok"] == Value::Bool(true) {
        return Ok(reply);
    }
    Err(CliError::Other(format!(
        "the dataplane refused a dump: {}; check its version and log",
        reply["error"]
    )))
}

/// A line's requests: itself when it has `op`, else the upserts of a `dump` reply.
fn requests_of(v: &Value) -> Result<Vec<Value>, String> {
    if v.get("op").is_some() {
        return Ok(vec![v.clone()]);
    }
    let table = v["table"].as_str().ok_or(
        "neither a request (`op`) nor a dump reply (`table`): write what the control socket \
         reads or what `dump` answers",
    )?;
    let with_op = |op: &str, body: &Value| -> Result<Value, String> {
        let mut m: Map<String, Value> = body
            .as_object()
            .cloned()
            .ok_or(format!("a {table} dump entry is not an object"))?;
        m.insert("op".into(), json!(op));
        Ok(Value::Object(m))
    };
    let entries = |op: &str| -> Result<Vec<Value>, String> {
        v["entries"]
            .as_array()
            .ok_or(format!("the {table} dump has no `entries` list"))?
            .iter()
            .map(|e| with_op(op, e))
            .collect()
    };
    match table {
        "endpoints" => entries("endpoint.upsert"),
        "ipcache" => entries("ipcache.upsert"),
        "services" => entries("service.upsert"),
        "nodes" => entries("node.upsert"),
        "local_node" => Ok(vec![with_op("local_node.set", &v["local_node"])?]),
        "policy" => Ok(directions_of(v, "policy.replace", Some(&v["endpoint"]))),
        "host_policy" => Ok(directions_of(v, "host_policy.replace", None)),
        // Not state the pipeline reads from a snapshot (learnt from the kernel, or per worker).
        "next_hops" | "conntrack" => Ok(Vec::new()),
        other => Err(format!("unknown dump table `{other}`")),
    }
}

/// The two `op` requests (one per direction) that set a dumped policy back; `endpoint` names
/// whose (none for the host's).
fn directions_of(dump: &Value, op: &str, endpoint: Option<&Value>) -> Vec<Value> {
    ["ingress", "egress"]
        .iter()
        .map(|d| {
            let mut r = json!({
                "op": op,
                "direction": d,
                "enforced": dump[*d]["enforced"],
                "entries": dump[*d]["entries"],
            });
            if let (Some(id), Some(m)) = (endpoint, r.as_object_mut()) {
                m.insert("endpoint".into(), id.clone());
            }
            r
        })
        .collect()
}

/// The changes a request line holds (requests that change nothing are refused: a snapshot is
/// only changes).
fn changes_of(v: &Value) -> Result<Vec<Change>, String> {
    let envelope = parse_request(v.to_string().as_bytes()).map_err(|r| r.error.to_string())?;
    match envelope.request {
        Request::Change(c) => Ok(vec![c]),
        Request::Batch(changes) => Ok(changes),
        Request::Staged(part) => Ok(part.changes),
        _ => Err(format!(
            "`{}` changes no table: a state snapshot holds table changes only",
            v["op"].as_str().unwrap_or("?")
        )),
    }
}

fn change_op(c: &Change) -> String {
    Request::Change(c.clone()).to_json()["op"]
        .as_str()
        .unwrap_or("change")
        .to_string()
}

/// The changes the agent of `node` would send its dataplane from etcd now, as request lines.
async fn agent_lines(node: &str, etcd: &[String]) -> Result<Vec<Line>, CliError> {
    let store = connect(etcd).await?;
    let (kvs, _) = store.list(ROOT).await?;
    let listing: Vec<(String, Vec<u8>)> = kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    let mut state = ClusterState::new(node);
    state.set_local_only(true);
    state.set_quiet(true);
    state.put_all(&listing);
    if !state.nodes().contains_key(node) {
        return Err(CliError::NotFound {
            what: format!("node {node}"),
            hint: "`flagella node list` lists the nodes in etcd".into(),
        });
    }
    let changes = state.commit();
    let skipped: Vec<Skipped> = state
        .rejected()
        .iter()
        .map(|(key, reason)| Skipped {
            key: key.clone(),
            reason: reason.clone(),
        })
        .collect();
    warn(&skipped);
    Ok(changes
        .into_iter()
        .enumerate()
        .map(|(i, c)| (i + 1, Value::Object(Request::Change(c).to_json())))
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn dump_replies_become_upserts() {
        let r = requests_of(&json!({"ok": true, "table": "ipcache", "entries": [
            {"prefix": "10.0.0.0/8", "identity": 2}
        ]}))
        .unwrap();
        assert_eq!(r[0]["op"], "ipcache.upsert");
        let p = requests_of(&json!({"table": "policy", "endpoint": 3,
            "ingress": {"enforced": true, "entries": []},
            "egress": {"enforced": false, "entries": []}}))
        .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0]["op"], "policy.replace");
        assert!(requests_of(&json!({"x": 1}))
            .unwrap_err()
            .contains("neither"));
    }

    /// Every table a dataplane dumps, fed back as a state file, gives the same dumps: the
    /// dataplane's own `Control` answers both.
    #[test]
    fn a_dataplanes_dumps_rebuild_its_tables() {
        use dataplane::api::{Control, StatsRegistry, TablesHandle};
        let lines = [
            r#"{"op":"local_node.set","name":"n1","router_mac":"02:00:00:00:00:01","underlay_ipv4":"192.168.0.1","gateway_ipv4":"10.1.0.1","uplink_ifindex":2,"uplink_mac":"02:00:00:00:01:01","uplink_mtu":1500,"default_encap":"vxlan"}"#,
            r#"{"op":"endpoint.upsert","id":1,"ifindex":11,"mac":"02:00:00:00:00:0a","ipv4":"10.1.0.5","identity":1001}"#,
            r#"{"op":"ipcache.upsert","prefix":"10.2.0.0/24","identity":1002,"tunnel_endpoint":"192.168.0.2"}"#,
            r#"{"op":"policy.update","endpoint":1,"direction":"ingress","enforced":true,"add":[{"identity":1002,"proto":"tcp","port":80,"action":"allow","cookie":3}]}"#,
            r#"{"op":"service.upsert","frontend":{"addr":"10.96.0.10","port":80,"proto":"tcp"},"backends":[{"addr":"10.1.0.5","port":8080,"weight":2}],"mode":"dsr"}"#,
            r#"{"op":"node.upsert","name":"n2","underlay":"192.168.0.2","pod_cidrs":["10.2.0.0/24"],"encap":"geneve"}"#,
            r#"{"op":"host_policy.replace","direction":"ingress","enforced":true,"entries":[{"identity":1002,"proto":"tcp","port":22,"action":"allow"}]}"#,
        ];
        let tables = || TablesHandle::new(empty_tables().unwrap());
        let dumps = |c: &mut Control| -> Vec<Value> {
            [
                "local_node",
                "endpoints",
                "ipcache",
                "services",
                "nodes",
                "host_policy",
            ]
            .iter()
            .map(|t| json!({"op": "dump", "table": t}))
            .chain([json!({"op": "dump", "table": "policy", "endpoint": 1})])
            .map(|d| {
                let mut r = c.handle_line(d.to_string().as_bytes()).reply.unwrap();
                r.as_object_mut().unwrap().remove("revision");
                r
            })
            .collect()
        };
        let mut live = Control::new(tables(), StatsRegistry::new());
        for l in lines {
            let r = live.handle_line(l.as_bytes()).reply.unwrap();
            assert_eq!(r["ok"], true, "{l}: {r}");
        }
        let snapshot = dumps(&mut live);
        let text: Vec<String> = snapshot.iter().map(Value::to_string).collect();
        let rebuilt = state_from_text("dumps", &text.join("\n")).unwrap();
        assert!(rebuilt.endpoints.host_policy().ingress.enforced);
        let mut again = Control::new(TablesHandle::new(rebuilt), StatsRegistry::new());
        assert_eq!(dumps(&mut again), snapshot);
    }

    #[test]
    fn a_state_file_line_that_is_refused_names_its_line() {
        let text = "# a comment\n{\"op\":\"ipcache.upsert\",\"prefix\":\"10.0.0.0/8\",\"identity\":2}\n{\"op\":\"status\"}\n";
        let e = state_from_text("s.jsonl", text).err().unwrap().to_string();
        assert!(
            e.contains("s.jsonl, line 3") && e.contains("changes no table"),
            "{e}"
        );
        let e = state_from_text("s.jsonl", "{oops")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("line 1") && e.contains("not JSON"), "{e}");
    }
}
