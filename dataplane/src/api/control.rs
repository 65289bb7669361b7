//! The control thread's request handler, without I/O: one request line in, one reply (and
//! maybe one event) out. [`super::server`] feeds it lines from the socket; tests call it
//! directly.
//!
//! Contract:
//! - A change request is parsed, applied to a copy of the tables and published in one
//!   [`TablesHandle::update`]; on any error the reply is `{"ok":false,...}` and the published
//!   tables are untouched. Each change that did something bumps the `revision` and produces an
//!   event `{"event":"change","revision":N,"op":...,<the request's fields>}` for subscribers.
//! - Replies are JSON objects with `ok`; the request's `seq`, if any, is echoed.
//! - A staged batch (`batch` with `txn`) is kept by [`Staging`] until its last part, which is
//!   applied as one batch; a half-sent one is never published. The server tells which client
//!   sent a line ([`Control::handle_client_line`]) and frees a departed client's parts.
//! - A conntrack dump cannot be answered at once (the workers own conntrack): the handler
//!   returns [`Outcome::pending_ct`] and the server polls [`Control::finish_ct_dump`] until the
//!   workers answered or the deadline passed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::apply::{apply, apply_batch, sorted_entries};
use super::interfaces::Interfaces;
use super::protocol::{
    parse_request, Change, DumpRequest, DumpTable, EndpointMsg, IpcacheMsg, LocalNodeMsg,
    NextHopsMsg, NodeMsg, Refusal, Request, RequestError, ServiceMsg, StagedPart, Text,
    CT_DUMP_DEFAULT_LIMIT, CT_DUMP_MAX_LIMIT,
};
use super::publish::{StatsRegistry, TablesHandle, MAX_CT_DUMPS_IN_FLIGHT};
use super::staging::{ClientId, Staging};
use crate::pipeline::{Counters, Stage};
use crate::tables::endpoints::EndpointId;
use crate::tables::Tables;

/// How long the workers have to answer a conntrack dump.
pub const CT_DUMP_TIMEOUT: Duration = Duration::from_secs(2);

/// A conntrack dump waiting for the workers.
#[derive(Clone, Debug)]
pub struct PendingCtDump {
    pub generation: u64,
    pub seq: Option<Value>,
    pub deadline: Instant,
}

/// What handling one line produced.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The reply line (absent only while a conntrack dump is pending).
    pub reply: Option<Value>,
    /// An event line (without its newline) for every subscriber; built only while events are
    /// wanted ([`Control::set_events_wanted`]).
    pub event: Option<Vec<u8>>,
    /// `Some(true)` after `subscribe`, `Some(false)` after `unsubscribe`.
    pub subscribe: Option<bool>,
    pub pending_ct: Option<PendingCtDump>,
}

impl Outcome {
    fn reply(v: Value) -> Self {
        Outcome {
            reply: Some(v),
            ..Outcome::default()
        }
    }
}

/// The control state: the published tables, the workers' statistics, the revision.
#[derive(Debug)]
pub struct Control {
    tables: TablesHandle,
    stats: Arc<StatsRegistry>,
    revision: u64,
    started: Instant,
    /// Whether change events are built (the server turns this off while nobody subscribes:
    /// an event copies the whole change, which can be megabytes).
    events_wanted: bool,
    /// Parts of staged batches not yet committed.
    staging: Staging,
    /// Adds and removes interfaces at run time (the daemon's); `None` refuses those requests.
    interfaces: Option<Box<dyn Interfaces>>,
}

impl std::fmt::Debug for dyn Interfaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interfaces")
    }
}

/// A change event, serialized straight from the change (no `Value` tree of a large policy).
#[derive(Serialize)]
struct ChangeEvent<'a> {
    event: &'static str,
    revision: u64,
    op: &'static str,
    #[serde(flatten)]
    change: &'a Change,
}

/// A batch's event: the changes that did something, each with its `op`.
#[derive(Serialize)]
struct BatchEvent<'a> {
    event: &'static str,
    revision: u64,
    op: &'static str,
    changes: Vec<BatchItem<'a>>,
}

/// One change of a [`BatchEvent`].
#[derive(Serialize)]
struct BatchItem<'a> {
    op: &'static str,
    #[serde(flatten)]
    change: &'a Change,
}

impl Control {
    pub fn new(tables: TablesHandle, stats: Arc<StatsRegistry>) -> Self {
        Control {
            tables,
            stats,
            revision: 0,
            started: Instant::now(),
            events_wanted: true,
            staging: Staging::default(),
            interfaces: None,
        }
    }

    /// Serves `interface.add`/`interface.remove` through `interfaces`.
    pub fn set_interfaces(&mut self, interfaces: Box<dyn Interfaces>) {
        self.interfaces = Some(interfaces);
    }

    /// Whether [`Outcome::event`] is built for changes (on by default).
    pub fn set_events_wanted(&mut self, wanted: bool) {
        self.events_wanted = wanted;
    }

    /// Number of changes applied since start.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn tables(&self) -> &TablesHandle {
        &self.tables
    }

    /// Handles one request line (without its newline) from client 0.
    pub fn handle_line(&mut self, line: &[u8]) -> Outcome {
        self.handle_client_line(0, line)
    }

    /// Handles one request line (without its newline) from `client` (whose staged batches are
    /// its own).
    pub fn handle_client_line(&mut self, client: ClientId, line: &[u8]) -> Outcome {
        match parse_request(line) {
            Err(Refusal { seq, error }) => Outcome::reply(error_reply(seq.as_ref(), &error)),
            Ok(env) => self.handle(env.request, env.seq, client, line.len()),
        }
    }

    /// Frees the staged batches of a client that went away.
    pub fn abandon_staged(&mut self, client: ClientId) {
        self.staging.abandon(client);
    }

    /// Frees the staged batches whose next part is overdue; returns how many.
    pub fn expire_staged(&mut self, now: Instant) -> usize {
        self.staging.expire(now)
    }

    /// Staged batches open, and the bytes their parts hold.
    pub fn staged_open(&self) -> (usize, usize) {
        (self.staging.open(), self.staging.bytes())
    }

    /// One part of a staged batch: kept (reply `staged`), or, the last part, the whole
    /// transaction applied as one [`Self::batch`].
    fn stage_part(
        &mut self,
        client: ClientId,
        part: StagedPart,
        line_len: usize,
        seq: Option<Value>,
    ) -> Outcome {
        let (txn, number) = (part.txn, part.part);
        match self.staging.stage(client, part, line_len, Instant::now()) {
            Err(e) => Outcome::reply(error_reply(seq.as_ref(), &e)),
            Ok(Some(changes)) => self.batch(&changes, seq.as_ref()),
            Ok(None) => {
                let mut body = Map::new();
                body.insert("txn".into(), Value::from(txn));
                body.insert("staged".into(), Value::from(number));
                Outcome::reply(ok_reply(seq.as_ref(), body))
            }
        }
    }

    fn handle(
        &mut self,
        request: Request,
        seq: Option<Value>,
        client: ClientId,
        line_len: usize,
    ) -> Outcome {
        let seq_ref = seq.as_ref();
        match request {
            Request::Ping => Outcome::reply(ok_reply(seq_ref, Map::new())),
            Request::Status => Outcome::reply(ok_reply(seq_ref, self.status())),
            Request::Subscribe | Request::Unsubscribe => {
                let on = request == Request::Subscribe;
                let mut body = Map::new();
                body.insert("subscribed".into(), Value::from(on));
                body.insert("revision".into(), Value::from(self.revision));
                Outcome {
                    reply: Some(ok_reply(seq_ref, body)),
                    subscribe: Some(on),
                    ..Outcome::default()
                }
            }
            Request::Dump(d) if d.table == DumpTable::Conntrack => self.start_ct_dump(&d, seq),
            Request::Dump(d) => Outcome::reply(match self.dump(&d) {
                Ok(body) => ok_reply(seq_ref, body),
                Err(e) => error_reply(seq_ref, &e),
            }),
            Request::Change(change) => self.change(&change, seq_ref),
            Request::Batch(changes) => self.batch(&changes, seq_ref),
            Request::Staged(part) => self.stage_part(client, part, line_len, seq),
            Request::InterfaceAdd(i) => self.interface(&i.ifname, true, seq_ref),
            Request::InterfaceRemove(i) => self.interface(&i.ifname, false, seq_ref),
        }
    }

    /// `interface.add` (`add`) or `interface.remove`: `{"ok":true,"changed":bool}`.
    fn interface(&mut self, ifname: &str, add: bool, seq: Option<&Value>) -> Outcome {
        let Some(interfaces) = self.interfaces.as_mut() else {
            let e = RequestError::whole(
                "this dataplane does not add interfaces at run time (it runs without AF_XDP \
                 workers); list the interface in its configuration and restart it",
            );
            return Outcome::reply(error_reply(seq, &e));
        };
        let done = if add {
            interfaces.add(ifname)
        } else {
            interfaces.remove(ifname)
        };
        Outcome::reply(match done {
            Ok(changed) => {
                let mut body = Map::new();
                body.insert("changed".into(), Value::from(changed));
                ok_reply(seq, body)
            }
            Err(message) => error_reply(seq, &RequestError::at("ifname", message)),
        })
    }

    /// A `batch`: every change applied to one copy and published once, or none. One revision
    /// and one event (`op: batch` with the changes that did something) for the whole batch.
    fn batch(&mut self, changes: &[Change], seq: Option<&Value>) -> Outcome {
        let applied = match self.tables.update(|t| apply_batch(t, changes)) {
            Ok(a) => a,
            Err(e) => return Outcome::reply(error_reply(seq, &e)),
        };
        let changed: Vec<BatchItem<'_>> = changes
            .iter()
            .zip(&applied)
            .filter(|(_, a)| a.changed)
            .map(|(change, _)| BatchItem {
                op: change.op(),
                change,
            })
            .collect();
        let mut body = Map::new();
        body.insert("changed".into(), Value::from(!changed.is_empty()));
        body.insert("applied".into(), Value::from(changes.len()));
        let mut event = None;
        if !changed.is_empty() {
            self.revision += 1;
            if self.events_wanted {
                let e = BatchEvent {
                    event: "change",
                    revision: self.revision,
                    op: "batch",
                    changes: changed,
                };
                // Plain data with string keys: serializing cannot fail.
                event = serde_json::to_vec(&e).ok();
            }
        }
        body.insert("revision".into(), Value::from(self.revision));
        Outcome {
            reply: Some(ok_reply(seq, body)),
            event,
            ..Outcome::default()
        }
    }

    fn change(&mut self, change: &Change, seq: Option<&Value>) -> Outcome {
        let applied = match self.tables.update(|t| apply(t, change)) {
            Ok(a) => a,
            Err(e) => return Outcome::reply(error_reply(seq, &e)),
        };
        let mut body = applied.detail;
        body.insert("changed".into(), Value::from(applied.changed));
        let mut event = None;
        if applied.changed {
            self.revision += 1;
            if self.events_wanted {
                let e = ChangeEvent {
                    event: "change",
                    revision: self.revision,
                    op: change.op(),
                    change,
                };
                // Plain data with string keys: serializing cannot fail.
                event = serde_json::to_vec(&e).ok();
            }
        }
        body.insert("revision".into(), Value::from(self.revision));
        Outcome {
            reply: Some(ok_reply(seq, body)),
            event,
            ..Outcome::default()
        }
    }

    fn status(&self) -> Map<String, Value> {
        let t = self.tables.load();
        let policy_entries: usize = t
            .endpoints
            .iter()
            .map(|e| e.policy.ingress.map.len() + e.policy.egress.map.len())
            .sum();
        let workers: Vec<Value> = self
            .stats
            .per_worker()
            .iter()
            .map(|w| {
                json!({
                    "name": w.name,
                    "publications": w.publications,
                    "busy_ns": w.busy_ns,
                    "io": w.io,
                    "rx_packets": w.counters.rx_packets,
                    "tx_packets": w.counters.tx_packets,
                    "drop_packets": w.counters.drop_packets,
                })
            })
            .collect();
        let mut body = Map::new();
        body.insert("revision".into(), Value::from(self.revision));
        body.insert(
            "uptime_s".into(),
            Value::from(self.started.elapsed().as_secs()),
        );
        body.insert("node".into(), Value::from(t.node.name.clone()));
        body.insert(
            "tables".into(),
            json!({
                "endpoints": t.endpoints.len(),
                "ipcache": t.ipcache.len(),
                "policy_entries": policy_entries,
                "services": t.services.len(),
                "nodes": t.nodes.len(),
            }),
        );
        body.insert("io_total".into(), io_total(&self.stats.per_worker()));
        body.insert("workers".into(), Value::Array(workers));
        body.insert(
            "staged".into(),
            json!({ "transactions": self.staging.open(), "bytes": self.staging.bytes() }),
        );
        body.insert("counters".into(), counters_json(&self.stats.total()));
        body
    }

    fn dump(&self, d: &DumpRequest) -> Result<Map<String, Value>, RequestError> {
        let t = self.tables.load();
        let mut body = Map::new();
        body.insert("table".into(), to_value(&d.table));
        body.insert("revision".into(), Value::from(self.revision));
        let entries = match d.table {
            DumpTable::Endpoints => {
                let mut v: Vec<EndpointMsg> =
                    t.endpoints.iter().map(|e| (&e.spec).into()).collect();
                v.sort_by_key(|e| e.id);
                to_value(&v)
            }
            DumpTable::Ipcache => {
                let mut v: Vec<_> = t.ipcache.iter().collect();
                v.sort_by_key(|(p, _)| *p);
                let v: Vec<IpcacheMsg> = v
                    .into_iter()
                    .map(|(p, e)| IpcacheMsg {
                        prefix: Text(p),
                        identity: e.identity.0,
                        tunnel_endpoint: e.tunnel_endpoint,
                    })
                    .collect();
                to_value(&v)
            }
            DumpTable::Policy => return dump_policy(&t, d.endpoint, body),
            DumpTable::Services => {
                let mut v: Vec<ServiceMsg> = t.services.iter().map(ServiceMsg::from).collect();
                v.sort_by_key(|s| s.id);
                to_value(&v)
            }
            DumpTable::Nodes => {
                let mut v: Vec<NodeMsg> = t.nodes.iter().map(NodeMsg::from).collect();
                v.sort_by(|a, b| a.name.cmp(&b.name));
                to_value(&v)
            }
            DumpTable::NextHops => {
                body.insert(
                    "next_hops".into(),
                    to_value(&NextHopsMsg::from(t.next_hops.as_ref())),
                );
                return Ok(body);
            }
            DumpTable::LocalNode => {
                body.insert(
                    "local_node".into(),
                    to_value(&LocalNodeMsg::from(t.node.as_ref())),
                );
                return Ok(body);
            }
            // Answered by the workers: see `start_ct_dump`.
            DumpTable::Conntrack => Value::Array(Vec::new()),
        };
        body.insert("entries".into(), entries);
        Ok(body)
    }

    fn start_ct_dump(&mut self, d: &DumpRequest, seq: Option<Value>) -> Outcome {
        let limit = d.limit.unwrap_or(CT_DUMP_DEFAULT_LIMIT);
        if limit > CT_DUMP_MAX_LIMIT {
            let e = RequestError::at(
                "limit",
                format!(
                    "limit {limit} is above {CT_DUMP_MAX_LIMIT} entries per worker: ask for \
                     fewer (the workers copy them between batches)"
                ),
            );
            return Outcome::reply(error_reply(seq.as_ref(), &e));
        }
        let Some(generation) = self.stats.request_ct_dump(limit) else {
            let e = RequestError::whole(format!(
                "{MAX_CT_DUMPS_IN_FLIGHT} conntrack dumps are in progress already: retry in a \
                 moment"
            ));
            return Outcome::reply(error_reply(seq.as_ref(), &e));
        };
        let pending = PendingCtDump {
            generation,
            seq,
            deadline: Instant::now() + CT_DUMP_TIMEOUT,
        };
        match self.finish_ct_dump(&pending, Instant::now()) {
            Some(reply) => Outcome::reply(reply),
            None => Outcome {
                pending_ct: Some(pending),
                ..Outcome::default()
            },
        }
    }

    /// The reply to a pending conntrack dump once every worker has answered, or an error reply
    /// once `now` is past its deadline; `None` while it is still worth waiting.
    pub fn finish_ct_dump(&self, p: &PendingCtDump, now: Instant) -> Option<Value> {
        match self.stats.collect_ct_dump(p.generation) {
            Some(answers) => {
                let workers: Vec<Value> = answers
                    .into_iter()
                    .map(|(name, s)| {
                        json!({
                            "name": name,
                            "occupied": s.occupied,
                            "truncated": s.truncated,
                            "entries": s.entries,
                        })
                    })
                    .collect();
                let mut body = Map::new();
                body.insert("table".into(), Value::from("conntrack"));
                body.insert("io_total".into(), io_total(&self.stats.per_worker()));
                body.insert("workers".into(), Value::Array(workers));
                Some(ok_reply(p.seq.as_ref(), body))
            }
            None if now >= p.deadline => Some(self.give_up_ct_dump(p)),
            None => None,
        }
    }

    /// Abandons a pending dump whose client went away.
    pub fn cancel_ct_dump(&self, p: &PendingCtDump) {
        self.stats.cancel_ct_dump(p.generation);
    }

    /// The timeout reply of a dump past its deadline (the request is closed).
    fn give_up_ct_dump(&self, p: &PendingCtDump) -> Value {
        self.stats.cancel_ct_dump(p.generation);
        error_reply(
            p.seq.as_ref(),
            &RequestError::whole(format!(
                "the workers did not answer the conntrack dump within {} s: check that \
                     they are running (status shows their publication counts rising), then retry",
                CT_DUMP_TIMEOUT.as_secs()
            )),
        )
    }
}

fn dump_policy(
    t: &Tables,
    endpoint: Option<u32>,
    mut body: Map<String, Value>,
) -> Result<Map<String, Value>, RequestError> {
    let id = endpoint.ok_or_else(|| {
        RequestError::at(
            "endpoint",
            "a policy dump needs `endpoint`: give the endpoint id (dump endpoints lists them)",
        )
    })?;
    let ep = t.endpoints.get(EndpointId(id)).ok_or_else(|| {
        RequestError::at(
            "endpoint",
            format!("endpoint {id} does not exist: dump endpoints lists the known ones"),
        )
    })?;
    body.insert("endpoint".into(), Value::from(id));
    for (name, p) in [
        ("ingress", &ep.policy.ingress),
        ("egress", &ep.policy.egress),
    ] {
        body.insert(
            name.into(),
            json!({ "enforced": p.enforced, "entries": sorted_entries(p) }),
        );
    }
    Ok(body)
}

fn to_value<T: Serialize>(v: &T) -> Value {
    // Every type serialized here is plain data with string keys, which cannot fail.
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// `{"ok":true, "seq":..., ...body}`.
pub fn ok_reply(seq: Option<&Value>, body: Map<String, Value>) -> Value {
    let mut m = Map::new();
    m.insert("ok".into(), Value::from(true));
    if let Some(s) = seq {
        m.insert("seq".into(), s.clone());
    }
    m.extend(body);
    Value::Object(m)
}

/// `{"ok":false, "error":..., "field":..., "seq":...}`.
pub fn error_reply(seq: Option<&Value>, e: &RequestError) -> Value {
    let mut m = Map::new();
    m.insert("ok".into(), Value::from(false));
    if let Some(s) = seq {
        m.insert("seq".into(), s.clone());
    }
    m.insert("error".into(), Value::from(e.message.clone()));
    if let Some(f) = &e.field {
        m.insert("field".into(), Value::from(f.clone()));
    }
    Value::Object(m)
}

/// Counters as `status` reports them: totals, non-zero drops by reason name, per-stage counts.
/// The workers' I/O summaries added field by field (`status`'s `io_total`): what the node's
/// sockets and the handoff between workers did, whatever the number of workers.
fn io_total(workers: &[super::publish::WorkerCounters]) -> Value {
    let mut total = Map::new();
    for w in workers {
        let Ok(Value::Object(fields)) = serde_json::to_value(w.io) else {
            continue;
        };
        for (name, value) in fields {
            let sum = total.get(&name).and_then(Value::as_u64).unwrap_or(0);
            total.insert(name, Value::from(sum + value.as_u64().unwrap_or(0)));
        }
    }
    Value::Object(total)
}

pub fn counters_json(c: &Counters) -> Value {
    let drops: Map<String, Value> = c
        .nonzero_drops()
        .map(|(r, n)| (r.name().to_string(), Value::from(n)))
        .collect();
    let stages: Map<String, Value> = Stage::ALL
        .iter()
        .map(|s| {
            let i = *s as usize;
            (
                s.name().to_string(),
                json!({ "in": c.stage_in.get(i), "drops": c.stage_drops.get(i) }),
            )
        })
        .collect();
    let mut out: Map<String, Value> = c
        .scalars()
        .map(|(name, n)| (name.to_string(), Value::from(n)))
        .collect();
    out.insert("drops".into(), Value::Object(drops));
    out.insert("stages".into(), Value::Object(stages));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Pipeline, PipelineConfig};
    use crate::tables::services::Services;
    use crate::tables::LocalNode;

    fn control() -> Control {
        let t = Tables::empty(LocalNode::default(), Services::new(251, 1).unwrap());
        Control::new(TablesHandle::new(t), StatsRegistry::new())
    }

    fn reply(c: &mut Control, line: &str) -> Value {
        c.handle_line(line.as_bytes()).reply.unwrap()
    }

    const EP1: &str = r#"{"op":"endpoint.upsert","seq":1,"id":1,"ifindex":11,"mac":"02:00:00:00:00:01","ipv4":"10.0.0.1","identity":1001}"#;

    /// Interfaces served by name; `lxc-missing` does not exist.
    #[derive(Default)]
    struct FakeInterfaces(std::collections::BTreeSet<String>);

    impl Interfaces for FakeInterfaces {
        fn add(&mut self, ifname: &str) -> Result<bool, String> {
            if ifname == "lxc-missing" {
                return Err(format!("interface `{ifname}` does not exist"));
            }
            Ok(self.0.insert(ifname.to_string()))
        }

        fn remove(&mut self, ifname: &str) -> Result<bool, String> {
            Ok(self.0.remove(ifname))
        }
    }

    #[test]
    fn interfaces_are_added_and_removed_idempotently_without_a_revision() {
        let mut c = control();
        let refused = reply(&mut c, r#"{"op":"interface.add","ifname":"lxc1"}"#);
        assert_eq!(refused["ok"], false, "no interfaces: {refused}");
        c.set_interfaces(Box::new(FakeInterfaces::default()));
        let add = r#"{"op":"interface.add","seq":7,"ifname":"lxc1"}"#;
        let r = reply(&mut c, add);
        assert_eq!(
            (r["ok"].clone(), r["changed"].clone(), r["seq"].clone()),
            (json!(true), json!(true), json!(7))
        );
        assert_eq!(reply(&mut c, add)["changed"], false, "already served");
        let r = reply(&mut c, r#"{"op":"interface.add","ifname":"lxc-missing"}"#);
        assert_eq!(
            (r["ok"].clone(), r["field"].clone()),
            (json!(false), json!("ifname")),
            "{r}"
        );
        let bad = reply(&mut c, r#"{"op":"interface.add","ifname":"a/b"}"#);
        assert_eq!(bad["ok"], false, "{bad}");
        let remove = r#"{"op":"interface.remove","ifname":"lxc1"}"#;
        assert_eq!(reply(&mut c, remove)["changed"], true);
        assert_eq!(reply(&mut c, remove)["changed"], false);
        assert_eq!(c.revision(), 0, "the tables did not change");
    }

    #[test]
    fn change_bumps_revision_and_emits_an_event() {
        let mut c = control();
        let out = c.handle_line(EP1.as_bytes());
        let r = out.reply.unwrap();
        assert_eq!(r["ok"], true);
        assert_eq!(r["seq"], 1);
        assert_eq!(r["revision"], 1);
        let e: Value = serde_json::from_slice(&out.event.unwrap()).unwrap();
        assert_eq!(e["event"], "change");
        assert_eq!(e["op"], "endpoint.upsert");
        assert_eq!(e["mac"], "02:00:00:00:00:01");
        // A no-op delete: no event, no new revision.
        let out = c.handle_line(br#"{"op":"endpoint.delete","id":9}"#);
        assert!(out.event.is_none());
        assert_eq!(out.reply.unwrap()["revision"], 1);
        // Nobody listening: no event is built.
        c.set_events_wanted(false);
        let out = c.handle_line(br#"{"op":"endpoint.delete","id":1}"#);
        assert_eq!(out.reply.unwrap()["revision"], 2);
        assert!(out.event.is_none());
    }

    /// Issue 14, finding 4: a staged batch's parts are never published before its last part;
    /// the last applies them all in one revision; another client's parts stay apart; a
    /// refused part discards the transaction so its last part cannot publish the rest.
    #[test]
    fn staged_batch_publishes_only_whole() {
        let mut c = control();
        let part0 = r#"{"op":"batch","txn":3,"part":0,"more":true,"changes":[{"op":"endpoint.upsert","id":1,"ifindex":11,"mac":"02:00:00:00:00:01","ipv4":"10.0.0.1","identity":1001},{"op":"policy.replace","endpoint":1,"direction":"ingress","enforced":true,"entries":[{"identity":1002,"action":"allow"}]}]}"#;
        let part1 = r#"{"op":"batch","txn":3,"part":1,"seq":9,"changes":[{"op":"policy.update","endpoint":1,"direction":"ingress","add":[{"identity":1003,"action":"allow"}]}]}"#;
        let r = c.handle_client_line(1, part0.as_bytes()).reply.unwrap();
        assert_eq!(
            (r["ok"].clone(), r["staged"].clone()),
            (Value::from(true), Value::from(0))
        );
        assert_eq!(
            c.tables().load().endpoints.len(),
            0,
            "half-sent: nothing published"
        );
        assert_eq!(c.revision(), 0);
        assert_eq!(c.staged_open().0, 1);
        // The same transaction number from another client is another transaction.
        let r = c.handle_client_line(2, part1.as_bytes()).reply.unwrap();
        assert_eq!(r["ok"], false, "{r}");
        let r = c.handle_client_line(1, part1.as_bytes()).reply.unwrap();
        assert_eq!(
            (r["ok"].clone(), r["seq"].clone()),
            (Value::from(true), Value::from(9))
        );
        assert_eq!(
            (r["applied"].clone(), r["revision"].clone()),
            (Value::from(3), Value::from(1))
        );
        let t = c.tables().load();
        let ep = t.endpoints.get(EndpointId(1)).unwrap();
        assert!(ep.policy.ingress.enforced);
        assert_eq!(ep.policy.ingress.map.len(), 2);
        assert_eq!(c.staged_open(), (0, 0));

        // A part refused (unknown endpoint in part 1 is only found at commit; a bad field is
        // found at once): the transaction is gone, its last part publishes nothing.
        let begin = r#"{"op":"batch","txn":4,"part":0,"more":true,"changes":[{"op":"endpoint.delete","id":1}]}"#;
        let bad = r#"{"op":"batch","txn":4,"part":1,"more":true,"changes":[{"op":"ipcache.delete","prefix":"10.0.0.0/33"}]}"#;
        let last = r#"{"op":"batch","txn":4,"part":2,"changes":[]}"#;
        assert_eq!(
            c.handle_client_line(1, begin.as_bytes()).reply.unwrap()["ok"],
            true
        );
        assert_eq!(
            c.handle_client_line(1, bad.as_bytes()).reply.unwrap()["ok"],
            false
        );
        let r = c.handle_client_line(1, last.as_bytes()).reply.unwrap();
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(
            c.tables().load().endpoints.len(),
            1,
            "the delete was never published"
        );
        assert_eq!(c.staged_open(), (0, 0));
        // A client that goes away leaves nothing staged.
        assert_eq!(
            c.handle_client_line(5, begin.as_bytes()).reply.unwrap()["ok"],
            true
        );
        c.abandon_staged(5);
        assert_eq!(c.staged_open(), (0, 0));
    }

    /// A new endpoint and its policy in one batch: one revision, one event, and never
    /// visible without its policy; a batch with one bad change publishes nothing of it.
    #[test]
    fn batch_is_all_or_nothing() {
        let mut c = control();
        let batch = r#"{"op":"batch","seq":5,"changes":[
            {"op":"ipcache.upsert","prefix":"10.0.0.2/32","identity":1002},
            {"op":"endpoint.upsert","id":1,"ifindex":11,"mac":"02:00:00:00:00:01","ipv4":"10.0.0.1","identity":1001},
            {"op":"policy.replace","endpoint":1,"direction":"ingress","enforced":true,"entries":[{"identity":1002,"action":"allow"}]}]}"#;
        let before = c.tables().snapshot();
        let out = c.handle_line(batch.replace('\n', "").as_bytes());
        let r = out.reply.unwrap();
        assert_eq!(
            (r["ok"].clone(), r["seq"].clone(), r["revision"].clone()),
            (Value::from(true), Value::from(5), Value::from(1)),
            "{r}"
        );
        assert_eq!(r["applied"], 3);
        let e: Value = serde_json::from_slice(&out.event.unwrap()).unwrap();
        assert_eq!(e["op"], "batch");
        assert_eq!(e["changes"].as_array().map(Vec::len), Some(3));
        assert_eq!(e["changes"][1]["op"], "endpoint.upsert", "{e}");
        assert_eq!(e["changes"][2]["entries"][0]["identity"], 1002, "{e}");
        assert_eq!(
            before.endpoints.len(),
            0,
            "the old snapshot never saw the endpoint"
        );
        let t = c.tables().snapshot();
        let ep = t.endpoints.get(EndpointId(1)).unwrap();
        assert!(ep.policy.ingress.enforced);
        assert_eq!(t.ipcache.len(), 1);

        let bad = r#"{"op":"batch","changes":[{"op":"endpoint.delete","id":1},{"op":"policy.replace","endpoint":1,"direction":"egress","entries":[]}]}"#;
        let r = reply(&mut c, bad);
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["field"], "changes[1].endpoint", "{r}");
        assert!(
            std::sync::Arc::ptr_eq(&t, &c.tables().snapshot()),
            "nothing published"
        );
        assert_eq!(c.revision(), 1);
    }

    #[test]
    fn errors_carry_field_and_seq() {
        let mut c = control();
        let r = reply(&mut c, r#"{"op":"endpoint.upsert","seq":"x","id":1}"#);
        assert_eq!(r["ok"], false);
        assert_eq!(r["seq"], "x");
        assert_eq!(r["field"], "ifindex");
        assert!(r["error"].as_str().unwrap().contains("ifindex"));
    }

    #[test]
    fn dumps_replay_as_upserts() {
        let mut c = control();
        reply(&mut c, EP1);
        reply(
            &mut c,
            r#"{"op":"policy.update","endpoint":1,"direction":"ingress","enforced":true,"add":[{"identity":1002,"proto":"tcp","port":80,"action":"allow","cookie":3}]}"#,
        );
        let d = reply(&mut c, r#"{"op":"dump","table":"endpoints"}"#);
        let mut line = d["entries"][0].as_object().unwrap().clone();
        line.insert("op".into(), Value::from("endpoint.upsert"));
        let again = reply(&mut c, &Value::Object(line).to_string());
        assert_eq!(again["ok"], true, "{again}");
        let p = reply(&mut c, r#"{"op":"dump","table":"policy","endpoint":1}"#);
        assert_eq!(p["ingress"]["enforced"], true);
        assert_eq!(
            p["ingress"]["entries"][0],
            json!({"identity":1002,"proto":"tcp","port":80,"action":"allow","cookie":3})
        );
        let missing = reply(&mut c, r#"{"op":"dump","table":"policy"}"#);
        assert_eq!(missing["field"], "endpoint");
        for table in ["ipcache", "services", "nodes", "local_node"] {
            let r = reply(&mut c, &format!(r#"{{"op":"dump","table":"{table}"}}"#));
            assert_eq!(r["ok"], true, "{r}");
        }
    }

    #[test]
    fn status_sums_published_counters() {
        let mut c = control();
        let mut w = c.stats.register("worker-0", 1);
        let mut p = Pipeline::new(PipelineConfig::default()).unwrap();
        let mut frames = [crate::testutil::frame(&[0u8; 6])];
        p.process(&c.tables.load(), 1, &mut frames, 0);
        w.tick(&p, 0);
        let s = reply(&mut c, r#"{"op":"status"}"#);
        assert_eq!(s["counters"]["rx_packets"], 1);
        assert_eq!(s["counters"]["drop_packets"], 1);
        assert_eq!(s["workers"][0]["name"], "worker-0");
        assert_eq!(s["workers"][0]["io"]["polls"], 0);
        assert_eq!(s["workers"][0]["io"]["sock_fill_ring_empty"], 0);
        // Every counter the pipeline keeps is in `status` (they come from one list).
        for (name, _) in Counters::default().scalars() {
            assert!(
                s["counters"].get(name).is_some(),
                "`{name}` missing from status"
            );
        }
        assert!(s["counters"]["dsr_option_written"].is_u64());
    }

    #[test]
    fn status_sums_the_workers_io_and_handoff() {
        let mut c = control();
        for (name, handed_off) in [("worker-0", 5), ("worker-1", 7)] {
            let mut w = c.stats.register(name, 1);
            w.set_io(crate::pipeline::IoSummary {
                polls: 10,
                handed_off,
                taken_over: 12 - handed_off,
                ..Default::default()
            });
            w.publish(&Pipeline::new(PipelineConfig::default()).unwrap(), 0);
        }
        let s = reply(&mut c, r#"{"op":"status"}"#);
        assert_eq!(s["workers"][1]["io"]["handed_off"], 7);
        assert_eq!(s["io_total"]["handed_off"], 12);
        assert_eq!(s["io_total"]["taken_over"], 12);
        assert_eq!(s["io_total"]["polls"], 20);
    }

    #[test]
    fn conntrack_dump_waits_for_workers_and_times_out() {
        let mut c = control();
        // No worker: answered at once.
        assert_eq!(
            reply(&mut c, r#"{"op":"dump","table":"conntrack"}"#)["ok"],
            true
        );
        let mut w = c.stats.register("worker-0", 1);
        let out = c.handle_line(br#"{"op":"dump","table":"conntrack","limit":5,"seq":3}"#);
        let pending = out.pending_ct.unwrap();
        assert!(c.finish_ct_dump(&pending, Instant::now()).is_none());
        let late = c
            .finish_ct_dump(&pending, pending.deadline + Duration::from_millis(1))
            .unwrap();
        assert_eq!(late["ok"], false);
        // The late request is closed; a new one is answered by the next publication.
        assert_eq!(c.stats.ct_dumps_in_flight(), 0);
        let out = c.handle_line(br#"{"op":"dump","table":"conntrack","limit":5,"seq":3}"#);
        let pending = out.pending_ct.unwrap();
        let p = Pipeline::new(PipelineConfig::default()).unwrap();
        w.tick(&p, 0);
        let r = c.finish_ct_dump(&pending, Instant::now()).unwrap();
        assert_eq!(r["ok"], true);
        assert_eq!(r["seq"], 3);
        assert_eq!(r["workers"][0]["entries"], json!([]));
        let too_many = reply(
            &mut c,
            r#"{"op":"dump","table":"conntrack","limit":1000000}"#,
        );
        assert_eq!(too_many["field"], "limit");
    }
}
