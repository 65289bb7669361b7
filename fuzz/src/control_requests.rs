//! The `control_requests` fuzz body: arbitrary request lines through the dataplane's control
//! handler (`dataplane::api::Control::handle_line`: parse, then apply to a copy of the tables
//! and publish), as the control socket feeds it.
//!
//! Input: lines separated by `\n`, at most [`MAX_LINES`] of them (the rest is ignored).
//!
//! Properties, checked through the protocol itself (dumps of every table, as a client sees
//! them):
//! - a refused request (`ok: false`) leaves every table and the revision as they were;
//! - a request that reports `changed: false` leaves every table as it was;
//! - every reply is a JSON object with a boolean `ok`;
//! - dump then replay: the dump of every table, sent back as upserts and `policy.replace`s
//!   (the shape the protocol promises, see docs/control-socket.md), is accepted; into the
//!   same dataplane it leaves every table as it was; into an empty one it rebuilds the same
//!   tables (service ids aside: a new dataplane numbers them afresh).

use dataplane::api::{Control, StatsRegistry, TablesHandle};
use dataplane::tables::services::Services;
use dataplane::tables::{LocalNode, Tables};
use serde_json::{json, Value};

/// Request lines per input at most: enough for a state to build up, few enough to stay fast.
pub const MAX_LINES: usize = 16;

/// The tables a client can dump, in the order a replay must restore them (a policy needs
/// its endpoint).
const TABLES: [&str; 5] = ["local_node", "nodes", "endpoints", "ipcache", "services"];

/// Runs the lines of `data` through one control handler; panics when a property breaks.
pub fn control_requests(data: &[u8]) {
    let mut control = new_control();
    for line in data.split(|&b| b == b'\n').take(MAX_LINES) {
        handle_checked(&mut control, line);
    }
    check_replay(&mut control);
}

/// Maglev table size of the fuzzed dataplane: a small prime (the daemon's default, 65 537,
/// makes every service upsert fill 64 Ki slots, which only slows the fuzzer down).
const MAGLEV_M: usize = 251;

/// A control handler over empty tables, as the daemon starts (no workers).
pub fn new_control() -> Control {
    let services = Services::new(MAGLEV_M, 1).expect("251 is a valid Maglev table size");
    let tables = Tables::empty(LocalNode::default(), services);
    Control::new(TablesHandle::new(tables), StatsRegistry::new())
}

/// Handles one line and checks what it may have changed; returns the reply.
fn handle_checked(control: &mut Control, line: &[u8]) -> Option<Value> {
    let before = snapshot(control);
    let revision = control.revision();
    let reply = control.handle_line(line).reply?;
    let ok = reply.get("ok").and_then(Value::as_bool);
    let Some(ok) = ok else {
        panic!("a reply without a boolean `ok`: {reply}");
    };
    if !ok {
        assert_eq!(
            control.revision(),
            revision,
            "a refused request moved the revision: {reply}"
        );
        assert_same(&before, &snapshot(control), "a refused request", line);
    } else if reply.get("changed").and_then(Value::as_bool) == Some(false) {
        assert_same(
            &before,
            &snapshot(control),
            "a `changed: false` request",
            line,
        );
    }
    Some(reply)
}

fn assert_same(before: &[Value], after: &[Value], what: &str, line: &[u8]) {
    assert!(
        before == after,
        "{what} changed the tables: {}\nbefore: {before:?}\nafter: {after:?}",
        String::from_utf8_lossy(line)
    );
}

/// Every table as the client sees it (dump replies without their revision), and every
/// endpoint's policy.
pub fn snapshot(control: &mut Control) -> Vec<Value> {
    let mut out: Vec<Value> = TABLES
        .iter()
        .map(|table| dump(control, &json!({ "op": "dump", "table": table })))
        .collect();
    for id in endpoint_ids(&out[2]) {
        out.push(dump(
            control,
            &json!({ "op": "dump", "table": "policy", "endpoint": id }),
        ));
    }
    out
}

fn dump(control: &mut Control, request: &Value) -> Value {
    let line = request.to_string();
    let mut reply = control
        .handle_line(line.as_bytes())
        .reply
        .expect("a dump other than conntrack's is answered at once");
    assert_eq!(
        reply.get("ok"),
        Some(&Value::Bool(true)),
        "{line} refused: {reply}"
    );
    if let Some(map) = reply.as_object_mut() {
        map.remove("revision");
    }
    reply
}

fn endpoint_ids(endpoints: &Value) -> Vec<u64> {
    entries(endpoints)
        .iter()
        .filter_map(|e| e.get("id").and_then(Value::as_u64))
        .collect()
}

fn entries(dump: &Value) -> &[Value] {
    dump.get("entries")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The requests that rebuild `snapshot`'s tables.
pub fn replay_lines(snapshot: &[Value]) -> Vec<String> {
    let mut lines = Vec::new();
    let request = |op: &str, fields: &Value| -> String {
        let mut map = fields.as_object().cloned().unwrap_or_default();
        map.insert("op".into(), Value::from(op));
        Value::Object(map).to_string()
    };
    if let Some(local) = snapshot[0].get("local_node") {
        lines.push(request("local_node.set", local));
    }
    for (dump, op) in [
        (&snapshot[1], "node.upsert"),
        (&snapshot[2], "endpoint.upsert"),
    ] {
        lines.extend(entries(dump).iter().map(|e| request(op, e)));
    }
    for policy in &snapshot[TABLES.len()..] {
        for direction in ["ingress", "egress"] {
            let Some(p) = policy.get(direction) else {
                continue;
            };
            let fields = json!({
                "endpoint": policy.get("endpoint"),
                "direction": direction,
                "enforced": p.get("enforced"),
                "entries": p.get("entries"),
            });
            lines.push(request("policy.replace", &fields));
        }
    }
    lines.extend(
        entries(&snapshot[3])
            .iter()
            .map(|e| request("ipcache.upsert", e)),
    );
    // A service's id is the dataplane's to give: an upsert names the frontend.
    lines.extend(entries(&snapshot[4]).iter().map(|e| {
        let mut e = e.clone();
        if let Some(map) = e.as_object_mut() {
            map.remove("id");
        }
        request("service.upsert", &e)
    }));
    lines
}

/// Dump then replay, into the same handler and into a new one.
fn check_replay(control: &mut Control) {
    let state = snapshot(control);
    let lines = replay_lines(&state);
    // An upsert reports `changed: true` even when it rewrites what is there (only deletes of
    // absent things say `false`), so what is checked is the tables themselves.
    for line in &lines {
        replay_line(control, line);
    }
    assert_same(&state, &snapshot(control), "replaying the dump", b"");
    let mut fresh = new_control();
    for line in &lines {
        replay_line(&mut fresh, line);
    }
    let rebuilt = snapshot(&mut fresh);
    assert!(
        without_service_ids(&rebuilt) == without_service_ids(&state),
        "the dump replayed into an empty dataplane does not rebuild it\noriginal: \
         {state:?}\nrebuilt: {rebuilt:?}"
    );
}

fn replay_line(control: &mut Control, line: &str) -> Value {
    let reply = handle_checked(control, line.as_bytes()).expect("a change is answered at once");
    assert_eq!(
        reply.get("ok"),
        Some(&Value::Bool(true)),
        "a line of a dump's replay refused: {line} -> {reply}"
    );
    reply
}

/// A snapshot with the services' ids removed (a new dataplane numbers them afresh).
fn without_service_ids(snapshot: &[Value]) -> Vec<Value> {
    let mut out = snapshot.to_vec();
    if let Some(list) = out[4].get_mut("entries").and_then(Value::as_array_mut) {
        for e in list {
            if let Some(map) = e.as_object_mut() {
                map.remove("id");
            }
        }
    }
    out
}
