//! Requests: the one table of ops, the parsed [`Request`] and [`Change`], and
//! [`parse_request`].
//!
//! Every op name is written once, in the `ops!` table below, which generates [`Op`] (with its
//! name and its lookup by name) and [`OPS`]. The parser matches on [`Op`] exhaustively, the
//! `changes!` list ties each [`Change`] variant to the [`Op`] of the same name, and clients
//! build their lines with [`Request::to_json`]: a new op cannot be named in one place and
//! forgotten in another.

use serde::de::value::MapDeserializer;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::error::Category;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{
    join, DumpRequest, EndpointMsg, EndpointRef, HostPolicyReplace, InterfaceMsg, IpcacheMsg,
    LocalNodeMsg, NodeMsg, NodeRef, PolicyReplace, PolicyUpdate, PrefixRef, RequestError,
    ServiceMsg, ServiceRef,
};

/// The table of ops: `Variant = "name"`, in the order error messages list them.
macro_rules! ops {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, )*) => {
        /// An op, as the `op` field names it ([`Op::name`]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Op {
            $( $(#[$doc])* $variant, )*
        }

        impl Op {
            /// Every op, in the table's order.
            pub const ALL: [Op; [$($name),*].len()] = [$(Op::$variant),*];

            /// The `op` field's spelling.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Op::$variant => $name, )*
                }
            }

            /// The op of an `op` field; `None` for an unknown name.
            pub fn from_name(name: &str) -> Option<Op> {
                match name {
                    $( $name => Some(Op::$variant), )*
                    _ => None,
                }
            }
        }

        /// Every op, as the `op` field spells it.
        pub const OPS: [&str; Op::ALL.len()] = [$($name),*];
    };
}

ops! {
    /// The dataplane's report (tables, workers, counters).
    Status = "status",
    EndpointUpsert = "endpoint.upsert",
    EndpointDelete = "endpoint.delete",
    IpcacheUpsert = "ipcache.upsert",
    IpcacheDelete = "ipcache.delete",
    PolicyUpdate = "policy.update",
    PolicyReplace = "policy.replace",
    /// The node's own policy (host firewall), one direction, whole.
    HostPolicyReplace = "host_policy.replace",
    ServiceUpsert = "service.upsert",
    ServiceDelete = "service.delete",
    NodeUpsert = "node.upsert",
    NodeDelete = "node.delete",
    LocalNodeSet = "local_node.set",
    /// One table's contents.
    Dump = "dump",
    /// Change events on this connection from now on.
    Subscribe = "subscribe",
    /// A liveness check.
    Ping = "ping",
    Unsubscribe = "unsubscribe",
    /// Several changes applied as one: all or none, in one publication. With `txn`, one part
    /// of a staged batch too large for one line ([`StagedPart`]).
    Batch = "batch",
    /// Serve a pod interface from now on (idempotent).
    InterfaceAdd = "interface.add",
    /// Stop serving an interface added with `interface.add` (idempotent).
    InterfaceRemove = "interface.remove",
}

/// A request without parameters (`status`, `subscribe`, ...): any field is a mistake.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// The changes: `Variant(message)`, each variant named as its [`Op`].
macro_rules! changes {
    ($( $variant:ident($msg:ty), )*) => {
        /// A change to the tables. Applied atomically by [`crate::api::apply::apply`].
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Change {
            $( $variant($msg), )*
        }

        /// A change serializes as its message's fields (no `op`; [`Change::to_json`] adds it).
        impl Serialize for Change {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $( Change::$variant(m) => m.serialize(s), )*
                }
            }
        }

        impl Change {
            /// The op of this change.
            pub fn kind(&self) -> Op {
                match self {
                    $( Change::$variant(_) => Op::$variant, )*
                }
            }

            fn body(&self) -> serde_json::Result<Value> {
                serde_json::to_value(self)
            }

            /// Parses the fields of change op `op` (refused when `op` is not a change).
            fn parse(op: Op, body: Body<'_>) -> Result<Change, RequestError> {
                match op {
                    $( Op::$variant => fields(op.name(), body).map(Change::$variant), )*
                    _ => Err(RequestError::at(
                        "op",
                        format!("`{}` is not a change to the tables", op.name()),
                    )),
                }
            }
        }
    };
}

changes! {
    EndpointUpsert(EndpointMsg),
    EndpointDelete(EndpointRef),
    IpcacheUpsert(IpcacheMsg),
    IpcacheDelete(PrefixRef),
    PolicyUpdate(PolicyUpdate),
    PolicyReplace(PolicyReplace),
    HostPolicyReplace(HostPolicyReplace),
    ServiceUpsert(ServiceMsg),
    ServiceDelete(ServiceRef),
    NodeUpsert(NodeMsg),
    NodeDelete(NodeRef),
    LocalNodeSet(LocalNodeMsg),
}

impl Change {
    /// The `op` field of this change.
    pub fn op(&self) -> &'static str {
        self.kind().name()
    }

    /// The change as a JSON object with its `op`: the body of a change event.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut map = match self.body() {
            Ok(Value::Object(map)) => map,
            // Every message is a struct of plain values, which serializes to an object.
            _ => Map::new(),
        };
        map.insert("op".into(), Value::from(self.op()));
        map
    }
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    /// Answers `{"ok":true}`: a liveness check.
    Ping,
    Dump(DumpRequest),
    /// From now on the connection also receives one event line per applied change.
    Subscribe,
    Unsubscribe,
    Change(Change),
    /// Changes applied in order to one copy of the tables and published together, or refused
    /// together (a new endpoint with its policy, so it never carries traffic unenforced).
    Batch(Vec<Change>),
    /// A `batch` with a `txn`: one part of a batch too large for one line.
    Staged(StagedPart),
    InterfaceAdd(InterfaceMsg),
    InterfaceRemove(InterfaceMsg),
}

/// One part of a staged batch: a change set larger than a line travels as parts 0, 1, ... of
/// one transaction (`txn`, chosen by the client, scoped to its connection). The control thread
/// keeps the parts unpublished; the part without `more` applies all of them, in order, as one
/// batch (all or none, one publication). A part out of order, or any refused part, discards
/// the transaction; so does the client's disconnection or its silence (see `api::staging`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedPart {
    pub txn: u64,
    /// 0 for the first part (which begins the transaction), then 1, 2, ...
    pub part: u32,
    /// More parts follow; false on the last part, which commits.
    pub more: bool,
    pub changes: Vec<Change>,
}

impl Request {
    /// The op of this request.
    pub fn kind(&self) -> Op {
        match self {
            Request::Status => Op::Status,
            Request::Ping => Op::Ping,
            Request::Dump(_) => Op::Dump,
            Request::Subscribe => Op::Subscribe,
            Request::Unsubscribe => Op::Unsubscribe,
            Request::Change(c) => c.kind(),
            Request::Batch(_) | Request::Staged(_) => Op::Batch,
            Request::InterfaceAdd(_) => Op::InterfaceAdd,
            Request::InterfaceRemove(_) => Op::InterfaceRemove,
        }
    }

    /// The request as the JSON object a client sends: its fields and its `op` (no `seq`).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut map = match self {
            Request::Change(c) => return c.to_json(),
            Request::Batch(changes) => changes_json(changes),
            Request::Staged(p) => {
                let mut map = changes_json(&p.changes);
                map.insert("txn".into(), Value::from(p.txn));
                map.insert("part".into(), Value::from(p.part));
                if p.more {
                    map.insert("more".into(), Value::from(true));
                }
                map
            }
            Request::Dump(d) => match serde_json::to_value(d) {
                Ok(Value::Object(map)) => map,
                // A struct of plain values serializes to an object.
                _ => Map::new(),
            },
            Request::InterfaceAdd(i) | Request::InterfaceRemove(i) => {
                Map::from_iter([("ifname".to_string(), Value::from(i.ifname.clone()))])
            }
            Request::Status | Request::Ping | Request::Subscribe | Request::Unsubscribe => {
                Map::new()
            }
        };
        map.insert("op".into(), Value::from(self.kind().name()));
        map
    }
}

/// `{"changes":[...]}`, each change with its `op`.
fn changes_json(changes: &[Change]) -> Map<String, Value> {
    let list = changes.iter().map(|c| Value::Object(c.to_json())).collect();
    Map::from_iter([("changes".to_string(), Value::Array(list))])
}

/// A parsed request and the `seq` to echo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub seq: Option<Value>,
    pub request: Request,
}

/// A refused request: the error and the `seq` to echo (when it could be read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub seq: Option<Value>,
    pub error: RequestError,
}

/// Most top-level fields a request may carry (every op has fewer than ten).
pub const MAX_FIELDS: usize = 32;

/// Most JSON objects and arrays in one request line. A 16 MiB `policy.replace` of real entries
/// holds about 280 000; the limit keeps a line of empty objects (`[{},{},...]`) from turning
/// into millions of parsed messages.
pub const MAX_CONTAINERS: usize = 1 << 19;

/// A request's top-level fields, each still unparsed JSON text borrowed from the line: memory
/// stays proportional to the number of fields, whatever the values hold.
struct TopLevel<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = TopLevel<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a request object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if fields.len() == MAX_FIELDS {
                        return Err(de::Error::custom(format!(
                            "more than {MAX_FIELDS} fields: a request has `op`, `seq` and its \
                             op's fields only"
                        )));
                    }
                    fields.push((key, map.next_value::<&RawValue>()?));
                }
                Ok(TopLevel(fields))
            }
        }
        d.deserialize_map(Fields)
    }
}

/// The number of JSON objects and arrays in `line` (brackets outside strings), counted up to
/// `MAX_CONTAINERS + 1`. Cheap: one pass, no allocation.
fn containers(line: &[u8]) -> usize {
    let (mut count, mut in_string, mut escaped) = (0, false, false);
    for b in line {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (false, _, b'"') => in_string = true,
            (false, _, b'{' | b'[') => {
                count += 1;
                if count > MAX_CONTAINERS {
                    break;
                }
            }
            _ => {}
        }
    }
    count
}

/// Parses one request line (without its newline), straight into its typed message: no
/// intermediate `Value` tree, so memory stays a small multiple of the line's length.
pub fn parse_request(line: &[u8]) -> Result<Envelope, Refusal> {
    let refuse = |seq: Option<Value>, error| Refusal { seq, error };
    if containers(line) > MAX_CONTAINERS {
        return Err(refuse(
            None,
            RequestError::whole(format!(
                "more than {MAX_CONTAINERS} JSON objects and arrays in one request: split it \
                 into several requests"
            )),
        ));
    }
    let TopLevel(fields) = serde_json::from_slice(line).map_err(|e| {
        let starts_as_object = line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let message = match e.classify() {
            Category::Data if !starts_as_object => {
                "a request is a JSON object with an `op` field, e.g. {\"op\":\"status\"}"
                    .to_string()
            }
            Category::Data => format!("{e}"),
            _ => format!(
                "not valid JSON ({e}): send one JSON object per line, e.g. {{\"op\":\"status\"}}"
            ),
        };
        refuse(None, RequestError::whole(message))
    })?;
    let mut seq = None;
    let mut op = None;
    let mut body = Vec::with_capacity(fields.len());
    for (key, raw) in fields {
        match key.as_str() {
            "seq" => seq = Some(raw),
            "op" => op = Some(raw),
            _ => body.push((key, raw)),
        }
    }
    let seq = match seq {
        None => None,
        Some(raw) => Some(parse_seq(raw).ok_or_else(|| {
            refuse(
                None,
                RequestError::at(
                    "seq",
                    "`seq` must be a number or a string: it is echoed back in the reply",
                ),
            )
        })?),
    };
    let op = match op.map(|raw| serde_json::from_str::<String>(raw.get())) {
        Some(Ok(op)) => op,
        Some(Err(_)) => {
            return Err(refuse(
                seq,
                RequestError::at(
                    "op",
                    format!(
                        "`op` must be a string naming the request: one of {}",
                        OPS.join(", ")
                    ),
                ),
            ))
        }
        None => {
            return Err(refuse(
                seq,
                RequestError::at(
                    "op",
                    format!("missing `op`: say what to do, one of {}", OPS.join(", ")),
                ),
            ))
        }
    };
    match parse_op(&op, body) {
        Ok(request) => Ok(Envelope { seq, request }),
        Err(error) => Err(refuse(seq, error)),
    }
}

/// A `seq` field: a number or a string (anything else, a container above all, is refused
/// before it is parsed).
fn parse_seq(raw: &RawValue) -> Option<Value> {
    let text = raw.get();
    let scalar = text.starts_with('"')
        || text.starts_with('-')
        || text.starts_with(|c: char| c.is_ascii_digit());
    if !scalar {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// A request's fields other than `op` and `seq`, unparsed.
type Body<'a> = Vec<(String, &'a RawValue)>;

fn parse_op(op: &str, body: Body<'_>) -> Result<Request, RequestError> {
    let Some(kind) = Op::from_name(op) else {
        return Err(RequestError::at(
            "op",
            format!("unknown op `{op}`: use one of {}", OPS.join(", ")),
        ));
    };
    let request = match kind {
        Op::Status => fields::<NoParams>(op, body).map(|_| Request::Status)?,
        Op::Ping => fields::<NoParams>(op, body).map(|_| Request::Ping)?,
        Op::Subscribe => fields::<NoParams>(op, body).map(|_| Request::Subscribe)?,
        Op::Unsubscribe => fields::<NoParams>(op, body).map(|_| Request::Unsubscribe)?,
        Op::Dump => Request::Dump(fields(op, body)?),
        Op::EndpointUpsert
        | Op::EndpointDelete
        | Op::IpcacheUpsert
        | Op::IpcacheDelete
        | Op::PolicyUpdate
        | Op::PolicyReplace
        | Op::HostPolicyReplace
        | Op::ServiceUpsert
        | Op::ServiceDelete
        | Op::NodeUpsert
        | Op::NodeDelete
        | Op::LocalNodeSet => Request::Change(Change::parse(kind, body)?),
        Op::Batch => parse_batch(body)?,
        Op::InterfaceAdd | Op::InterfaceRemove => {
            let msg: InterfaceMsg = fields(op, body)?;
            msg.check()?;
            if kind == Op::InterfaceAdd {
                Request::InterfaceAdd(msg)
            } else {
                Request::InterfaceRemove(msg)
            }
        }
    };
    Ok(request)
}

/// A `batch`: its `changes`, each an object with the `op` of a change (a batch holds no
/// batch, query or subscription), and, for a part of a staged batch, `txn`, `part` and `more`.
/// An error names its place, `changes[i].field`.
fn parse_batch(body: Body<'_>) -> Result<Request, RequestError> {
    let mut list = None;
    let (mut txn, mut part, mut more) = (None, None, None);
    for (key, raw) in body {
        match key.as_str() {
            "changes" => list = Some(raw),
            "txn" => txn = Some(number::<u64>("txn", raw)?),
            "part" => part = Some(number::<u32>("part", raw)?),
            "more" => {
                more =
                    Some(serde_json::from_str::<bool>(raw.get()).map_err(|_| {
                        RequestError::at("more", "batch: `more` must be true or false")
                    })?)
            }
            _ => {
                return Err(RequestError::at(
                    key.clone(),
                    format!(
                        "batch: unknown field `{key}`: a batch has `changes`, and `txn`, `part` \
                         and `more` when staged; remove it"
                    ),
                ))
            }
        }
    }
    let must = "batch: `changes` must be a list of change requests, each with its `op`";
    let list = list.ok_or_else(|| RequestError::at("changes", must))?;
    // Each item stays unparsed text borrowed from the line until its own op parses it.
    let items: Vec<&RawValue> =
        serde_json::from_str(list.get()).map_err(|_| RequestError::at("changes", must))?;
    let changes = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| parse_batch_item(item).map_err(|e| e.in_batch(i)))
        .collect::<Result<Vec<_>, _>>()?;
    match (txn, part) {
        (None, None) if more.is_none() => Ok(Request::Batch(changes)),
        (Some(txn), Some(part)) => Ok(Request::Staged(StagedPart {
            txn,
            part,
            more: more.unwrap_or(false),
            changes,
        })),
        (Some(_), None) => Err(RequestError::at(
            "part",
            "batch: a staged batch (`txn`) needs `part`: 0 for the first part, then 1, 2, ...",
        )),
        (None, _) => Err(RequestError::at(
            "txn",
            "batch: `part` and `more` need `txn`: give the transaction's number, or remove them",
        )),
    }
}

/// A non-negative integer field of a `batch`.
fn number<T: DeserializeOwned>(name: &str, raw: &RawValue) -> Result<T, RequestError> {
    serde_json::from_str(raw.get()).map_err(|_| {
        RequestError::at(
            name,
            format!("batch: `{name}` must be a non-negative integer"),
        )
    })
}

fn parse_batch_item(item: &RawValue) -> Result<Change, RequestError> {
    let TopLevel(fields) = serde_json::from_str(item.get())
        .map_err(|_| RequestError::at("", "a change is a JSON object with an `op`"))?;
    let mut op = None;
    let mut body = Vec::with_capacity(fields.len());
    for (key, raw) in fields {
        if key == "op" {
            op = serde_json::from_str::<String>(raw.get()).ok();
        } else {
            body.push((key, raw));
        }
    }
    let op = op.ok_or_else(|| RequestError::at("op", "a change needs its `op` (a string)"))?;
    let kind = Op::from_name(&op)
        .ok_or_else(|| RequestError::at("op", format!("unknown op `{op}` in a batch")))?;
    Change::parse(kind, body)
}

/// Deserializes the fields of an `op` request, naming the field at fault on error.
fn fields<T: DeserializeOwned>(op: &str, body: Body<'_>) -> Result<T, RequestError> {
    let map = MapDeserializer::<_, serde_json::Error>::new(body.into_iter());
    serde_path_to_error::deserialize(map).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde reports a missing field at the enclosing object: name the field itself. (An
        // unknown field's path already ends with its name.)
        let named = inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let field = match named {
            Some(name) => join(&path, name),
            None if path == "." => String::new(),
            None => path,
        };
        let hint = if inner.starts_with("unknown field") {
            "remove it or fix its spelling"
        } else {
            "fix this field and resend"
        };
        RequestError {
            message: format!("{op}: {}: {inner}: {hint}", display_field(&field)),
            field: (!field.is_empty()).then_some(field),
        }
    })
}

fn display_field(field: &str) -> &str {
    if field.is_empty() {
        "request"
    } else {
        field
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(line: &str) -> RequestError {
        match parse_request(line.as_bytes()) {
            Ok(e) => panic!("{line} parsed as {e:?}"),
            Err(r) => r.error,
        }
    }

    fn field_of(line: &str) -> Option<String> {
        refused(line).field
    }

    #[test]
    fn parses_every_op() {
        let lines = [
            r#"{"op":"status"}"#,
            r#"{"op":"ping","seq":1}"#,
            r#"{"op":"subscribe"}"#,
            r#"{"op":"unsubscribe"}"#,
            r#"{"op":"dump","table":"policy","endpoint":3}"#,
            r#"{"op":"endpoint.upsert","id":1,"ifindex":5,"mac":"02:00:00:00:00:01","ipv4":"10.0.0.1","identity":1000}"#,
            r#"{"op":"endpoint.delete","id":1}"#,
            r#"{"op":"ipcache.upsert","prefix":"10.0.0.0/24","identity":2000,"tunnel_endpoint":"192.168.0.2"}"#,
            r#"{"op":"ipcache.delete","prefix":"10.0.0.0/24"}"#,
            r#"{"op":"policy.update","endpoint":1,"direction":"ingress","enforced":true,"add":[{"identity":1001,"proto":"tcp","port":80,"action":"allow","cookie":7}],"delete":[{"identity":9}]}"#,
            r#"{"op":"policy.replace","endpoint":1,"direction":"egress","entries":[]}"#,
            r#"{"op":"host_policy.replace","direction":"ingress","enforced":true,"entries":[{"proto":"tcp","port":22,"action":"allow"}]}"#,
            r#"{"op":"service.upsert","frontend":{"addr":"10.96.0.10","port":80,"proto":"tcp"},"backends":[{"addr":"10.0.0.1","port":8080}],"mode":"dsr"}"#,
            r#"{"op":"service.delete","frontend":{"addr":"10.96.0.10","port":80,"proto":6}}"#,
            r#"{"op":"node.upsert","name":"b","underlay":"192.168.0.2","pod_cidrs":["10.2.0.0/24"],"encap":"geneve"}"#,
            r#"{"op":"node.delete","name":"b"}"#,
            r#"{"op":"local_node.set","name":"a","underlay_ipv4":"192.168.0.1","uplink_ifindex":2}"#,
            r#"{"op":"batch","changes":[{"op":"endpoint.delete","id":1},{"op":"ipcache.delete","prefix":"10.0.0.0/24"}]}"#,
            r#"{"op":"interface.add","ifname":"flg0123456789ab"}"#,
            r#"{"op":"interface.remove","ifname":"lxc1"}"#,
        ];
        assert_eq!(lines.len(), OPS.len());
        for line in lines {
            let env = parse_request(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e:?}"));
            if let Request::Change(c) = &env.request {
                assert!(line.contains(c.op()));
            }
        }
    }

    #[test]
    fn interface_requests_round_trip_and_bad_names_are_refused() {
        let add = Request::InterfaceAdd(InterfaceMsg {
            ifname: "flg0123456789ab".into(),
        });
        let line = Value::Object(add.to_json()).to_string();
        assert_eq!(parse_request(line.as_bytes()).expect("parses").request, add);
        for bad in [
            r#"{"op":"interface.add","ifname":""}"#,
            r#"{"op":"interface.add","ifname":"sixteen-chars-xx"}"#,
            r#"{"op":"interface.remove","ifname":"a b"}"#,
            r#"{"op":"interface.add","ifname":"x","extra":1}"#,
        ] {
            assert!(parse_request(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn seq_is_echoed_even_on_error() {
        let r = parse_request(br#"{"op":"endpoint.delete","seq":"abc"}"#).unwrap_err();
        assert_eq!(r.seq, Some(Value::from("abc")));
        assert_eq!(r.error.field.as_deref(), Some("id"));
    }

    #[test]
    fn each_error_names_its_field() {
        let cases = [
            (r#"{"seq":1}"#, "op"),
            (r#"{"op":7}"#, "op"),
            (r#"{"op":"endpoint.frobnicate"}"#, "op"),
            (
                r#"{"op":"endpoint.upsert","id":1,"ifindex":5,"mac":"zz","identity":1}"#,
                "mac",
            ),
            (
                r#"{"op":"endpoint.upsert","id":1,"ifindex":5,"identity":1}"#,
                "mac",
            ),
            (
                r#"{"op":"endpoint.upsert","id":-1,"ifindex":5,"mac":"02:00:00:00:00:01","identity":1}"#,
                "id",
            ),
            (
                r#"{"op":"endpoint.upsert","id":1,"ifindex":5,"mac":"02:00:00:00:00:01","identity":1,"ipv4":"10.0.0.300"}"#,
                "ipv4",
            ),
            (
                r#"{"op":"endpoint.upsert","id":1,"ifindex":5,"mac":"02:00:00:00:00:01","identity":1,"identiy":2}"#,
                "identiy",
            ),
            (
                r#"{"op":"ipcache.upsert","prefix":"10.0.0.0/33","identity":5}"#,
                "prefix",
            ),
            (
                r#"{"op":"policy.update","endpoint":1,"direction":"sideways"}"#,
                "direction",
            ),
            (
                r#"{"op":"policy.update","endpoint":1,"direction":"ingress","add":[{"action":"allow"},{"proto":"tcp","port":70000,"action":"allow"}]}"#,
                "add[1].port",
            ),
            (
                r#"{"op":"policy.update","endpoint":1,"direction":"ingress","add":[{"proto":"bogus","action":"allow"}]}"#,
                "add[0].proto",
            ),
            (
                r#"{"op":"policy.update","endpoint":1,"direction":"ingress","add":[{"proto":"tcp"}]}"#,
                "add[0].action",
            ),
            (
                r#"{"op":"service.upsert","frontend":{"addr":"10.96.0.10","port":80},"backends":[]}"#,
                "frontend.proto",
            ),
            (
                r#"{"op":"service.upsert","frontend":{"addr":"10.96.0.10","port":80,"proto":"tcp"},"backends":[{"addr":"x","port":1}]}"#,
                "backends[0].addr",
            ),
            (
                r#"{"op":"node.upsert","name":"b","underlay":"192.168.0.2","pod_cidrs":["10.2.0.0/24","nope"]}"#,
                "pod_cidrs[1]",
            ),
            (r#"{"op":"dump","table":"everything"}"#, "table"),
            (r#"{"op":"status","verbose":true}"#, "verbose"),
            (
                r#"{"op":"service.delete","frontend":{"addr":"10.96.0.10","port":80,"proto":6,"vip":1}}"#,
                "frontend.vip",
            ),
            (
                r#"{"op":"service.upsert","frontend":{"addr":"10.96.0.10","proto":6}}"#,
                "frontend.port",
            ),
            (r#"{"op":"ping","seq":[1]}"#, "seq"),
            (r#"{"op":"batch"}"#, "changes"),
            (r#"{"op":"batch","changes":[],"atomic":true}"#, "atomic"),
            (r#"{"op":"batch","changes":[],"txn":1}"#, "part"),
            (r#"{"op":"batch","changes":[],"part":1}"#, "txn"),
            (r#"{"op":"batch","changes":[],"more":true}"#, "txn"),
            (r#"{"op":"batch","changes":[],"txn":-1,"part":0}"#, "txn"),
            (
                r#"{"op":"batch","changes":[],"txn":1,"part":0,"more":1}"#,
                "more",
            ),
            (
                r#"{"op":"batch","changes":[{"op":"endpoint.delete","id":1},{"op":"ipcache.delete","prefix":"10.0.0.0/33"}]}"#,
                "changes[1].prefix",
            ),
            (
                r#"{"op":"batch","changes":[{"op":"status"}]}"#,
                "changes[0].op",
            ),
            (
                r#"{"op":"batch","changes":[{"op":"batch","changes":[]}]}"#,
                "changes[0].op",
            ),
            (r#"{"op":"batch","changes":[7]}"#, "changes[0]"),
        ];
        for (line, field) in cases {
            let e = refused(line);
            assert_eq!(e.field.as_deref(), Some(field), "{line}: {}", e.message);
            assert!(e.message.contains(':'), "{}", e.message);
        }
    }

    #[test]
    fn whole_request_errors_have_no_field() {
        assert_eq!(field_of("not json"), None);
        assert_eq!(field_of("[1,2]"), None);
        assert!(refused("{\"op\":")
            .message
            .contains("one JSON object per line"));
    }

    #[test]
    fn too_many_containers_or_fields_are_refused_before_parsing() {
        let mut line =
            String::from(r#"{"op":"policy.update","endpoint":1,"direction":"ingress","delete":["#);
        line.push_str(&vec!["{}"; MAX_CONTAINERS].join(","));
        line.push_str("]}");
        let e = refused(&line);
        assert_eq!(e.field, None);
        assert!(e.message.contains("split it"), "{}", e.message);
        // Brackets inside strings are not containers.
        assert_eq!(containers(br#"{"a":"[[[{{{\"[","b":[1]}"#), 2);
        let many: Vec<String> = (0..=MAX_FIELDS).map(|i| format!(r#""f{i}":0"#)).collect();
        let e = refused(&format!(r#"{{"op":"ping",{}}}"#, many.join(",")));
        assert!(e.message.contains("fields"), "{}", e.message);
    }

    #[test]
    fn a_line_of_tiny_values_is_refused_at_its_first_wrong_value() {
        // Finding 10 of issue 14: a `Value` tree of this line took ~60 bytes per input byte;
        // parsed into the typed message, the first `[0]` is refused.
        let mut line =
            String::from(r#"{"op":"policy.update","endpoint":1,"direction":"ingress","add":["#);
        line.push_str(&vec!["[0]"; 100_000].join(","));
        line.push_str("]}");
        assert_eq!(refused(&line).field.as_deref(), Some("add[0]"));
        let mut line = String::from(r#"{"op":"ping","seq":1,"pad":["#);
        line.push_str(&vec!["0"; 100_000].join(","));
        line.push_str("]}");
        let r = parse_request(line.as_bytes()).unwrap_err();
        assert_eq!(r.error.field.as_deref(), Some("pad"));
        assert_eq!(r.seq, Some(Value::from(1)));
    }

    /// The table is the one spelling: names and variants map both ways, and every request's
    /// line carries its op's name.
    #[test]
    fn the_op_table_maps_both_ways() {
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.name()), Some(op));
        }
        assert_eq!(OPS.len(), Op::ALL.len());
        assert_eq!(Op::from_name("frobnicate"), None);
        let status = Request::Status.to_json();
        assert_eq!(Value::Object(status).to_string(), r#"{"op":"status"}"#);
        let dump = Request::Dump(DumpRequest {
            table: super::super::DumpTable::Ipcache,
            endpoint: None,
            limit: None,
        });
        let line = Value::Object(dump.to_json()).to_string();
        assert_eq!(line, r#"{"op":"dump","table":"ipcache"}"#);
        assert_eq!(parse_request(line.as_bytes()).unwrap().request, dump);
    }

    /// A batch's line, as `to_json` writes it, parses back to the same changes.
    #[test]
    fn batch_round_trips() {
        let line = r#"{"op":"batch","changes":[{"op":"endpoint.delete","id":1},{"op":"node.delete","name":"b"}]}"#;
        let request = parse_request(line.as_bytes()).unwrap().request;
        let Request::Batch(changes) = &request else {
            panic!("{request:?}");
        };
        assert_eq!(changes.len(), 2);
        let again = Value::Object(request.to_json()).to_string();
        assert_eq!(parse_request(again.as_bytes()).unwrap().request, request);
    }

    /// A staged part's line, as `to_json` writes it, parses back to the same part.
    #[test]
    fn staged_part_round_trips() {
        let line = r#"{"op":"batch","txn":7,"part":2,"more":true,"changes":[{"op":"endpoint.delete","id":1}]}"#;
        let request = parse_request(line.as_bytes()).unwrap().request;
        let Request::Staged(p) = &request else {
            panic!("{request:?}");
        };
        assert_eq!((p.txn, p.part, p.more, p.changes.len()), (7, 2, true, 1));
        let again = Value::Object(request.to_json()).to_string();
        assert_eq!(parse_request(again.as_bytes()).unwrap().request, request);
        let last = parse_request(br#"{"op":"batch","txn":7,"part":3,"changes":[]}"#).unwrap();
        assert!(matches!(
            last.request,
            Request::Staged(StagedPart { more: false, .. })
        ));
    }
}
