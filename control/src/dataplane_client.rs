//! Client of the dataplane's control socket: newline-delimited JSON over a Unix socket, one
//! request per line, one reply (`{"ok":true,...}` or `{"ok":false,"error":...}`) per line.
//!
//! The request types here are the subset of the protocol the agent sends, written to match
//! `dataplane::api::protocol` (branch `api`, `docs/control-socket.md`): same op names, same
//! field names, same defaults. They live here, in one file, until that module is on main; then
//! this file should use those types instead (a JSON round-trip test pins the shapes meanwhile).
//!
//! Contract: [`DataplaneClient::send`] writes one request and reads its reply; an `ok:false`
//! reply is [`ClientError::Refused`] (the request changed nothing); an I/O error means the
//! dataplane went away (the agent reconnects and resyncs everything).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use dataplane::tables::policy::{Action, Direction, PolicyEntry, PolicyKey};

/// A dataplane client failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("dataplane socket {path}: {source}; is flagella-dataplane running?")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dataplane closed the connection")]
    Closed,
    #[error("dataplane refused {op}: {message}")]
    Refused { op: String, message: String },
    #[error("dataplane sent a reply that is not JSON: {0}")]
    BadReply(String),
}

/// Policy direction, as the protocol spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireDirection {
    Ingress,
    Egress,
}

impl From<Direction> for WireDirection {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Ingress => WireDirection::Ingress,
            Direction::Egress => WireDirection::Egress,
        }
    }
}

/// A policy-map key (`identity` 0 = any, `proto` 0 = any, no port = any).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMsg {
    pub identity: u32,
    pub proto: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

impl KeyMsg {
    /// The wire key of `k`, with its identity replaced by `identity`.
    pub fn new(k: &PolicyKey, identity: u32) -> KeyMsg {
        let (port, end_port) = if k.ports.is_any() {
            (None, None)
        } else if k.ports.lo == k.ports.hi {
            (Some(k.ports.lo), None)
        } else {
            (Some(k.ports.lo), Some(k.ports.hi))
        };
        KeyMsg {
            identity,
            proto: k.proto,
            port,
            end_port,
        }
    }
}

/// A policy-map entry: key fields, action, cookie.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMsg {
    #[serde(flatten)]
    pub key: KeyMsg,
    pub action: String,
    pub cookie: u32,
}

impl EntryMsg {
    pub fn new(k: &PolicyKey, identity: u32, e: &PolicyEntry) -> EntryMsg {
        EntryMsg {
            key: KeyMsg::new(k, identity),
            action: match e.action {
                Action::Allow => "allow".into(),
                Action::Deny => "deny".into(),
            },
            cookie: e.cookie,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendMsg {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendMsg {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u16,
}

/// One change request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op")]
pub enum Change {
    #[serde(rename = "endpoint.upsert")]
    EndpointUpsert {
        id: u32,
        ifindex: u32,
        mac: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        ipv4: Option<Ipv4Addr>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ipv6: Option<Ipv6Addr>,
        identity: u32,
    },
    #[serde(rename = "endpoint.delete")]
    EndpointDelete { id: u32 },
    #[serde(rename = "ipcache.upsert")]
    IpcacheUpsert {
        prefix: String,
        identity: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        tunnel_endpoint: Option<IpAddr>,
    },
    #[serde(rename = "ipcache.delete")]
    IpcacheDelete { prefix: String },
    #[serde(rename = "policy.update")]
    PolicyUpdate {
        endpoint: u32,
        direction: WireDirection,
        #[serde(skip_serializing_if = "Option::is_none")]
        enforced: Option<bool>,
        add: Vec<EntryMsg>,
        delete: Vec<KeyMsg>,
    },
    #[serde(rename = "policy.replace")]
    PolicyReplace {
        endpoint: u32,
        direction: WireDirection,
        enforced: bool,
        entries: Vec<EntryMsg>,
    },
    #[serde(rename = "service.upsert")]
    ServiceUpsert {
        frontend: FrontendMsg,
        backends: Vec<BackendMsg>,
        mode: String,
    },
    #[serde(rename = "service.delete")]
    ServiceDelete { frontend: FrontendMsg },
    #[serde(rename = "node.upsert")]
    NodeUpsert {
        name: String,
        underlay: IpAddr,
        pod_cidrs: Vec<String>,
        encap: String,
    },
    #[serde(rename = "node.delete")]
    NodeDelete { name: String },
}

impl Change {
    /// The op name.
    pub fn op(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("op").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default()
    }
}

/// A connection to the dataplane.
#[derive(Debug)]
pub struct DataplaneClient {
    path: PathBuf,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    seq: u64,
}

impl DataplaneClient {
    pub async fn connect(path: &Path) -> Result<DataplaneClient, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let (r, w) = stream.into_split();
        Ok(DataplaneClient {
            path: path.to_path_buf(),
            reader: BufReader::new(r),
            writer: w,
            seq: 0,
        })
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
        |source| ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Sends one request object (its `op` included) and returns the reply.
    pub async fn request(&mut self, mut body: Value) -> Result<Value, ClientError> {
        self.seq += 1;
        let op = body
            .get("op")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        if let Value::Object(m) = &mut body {
            m.insert("seq".into(), Value::from(self.seq));
        }
        let mut line = body.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })?;
        loop {
            let mut reply = String::new();
            let n = self.reader.read_line(&mut reply).await.map_err(self.io())?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            let v: Value = serde_json::from_str(reply.trim_end())
                .map_err(|e| ClientError::BadReply(e.to_string()))?;
            // Skip event lines (a subscribed connection) until our reply.
            if v.get("seq").and_then(Value::as_u64) != Some(self.seq) && v.get("ok").is_none() {
                continue;
            }
            if v.get("ok") == Some(&Value::Bool(true)) {
                return Ok(v);
            }
            let message = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_string();
            return Err(ClientError::Refused { op, message });
        }
    }

    /// Sends one change.
    pub async fn send(&mut self, change: &Change) -> Result<(), ClientError> {
        let body =
            serde_json::to_value(change).map_err(|e| ClientError::BadReply(e.to_string()))?;
        self.request(body).await.map(|_| ())
    }

    /// `status`: the dataplane's own report.
    pub async fn status(&mut self) -> Result<Value, ClientError> {
        self.request(serde_json::json!({"op": "status"})).await
    }

    /// `dump` of one table (`endpoints`, `ipcache`, `services`, `nodes`).
    pub async fn dump(&mut self, table: &str) -> Result<Value, ClientError> {
        self.request(serde_json::json!({"op": "dump", "table": table}))
            .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use dataplane::tables::policy::PortRange;
    use dataplane::Identity;

    /// The JSON shapes of docs/control-socket.md (api branch).
    #[test]
    fn requests_have_the_protocol_shapes() {
        let k = PolicyKey::l4(Identity(0), 6, PortRange::new(80, 90).unwrap());
        let c = Change::PolicyUpdate {
            endpoint: 3,
            direction: Direction::Ingress.into(),
            enforced: Some(true),
            add: vec![EntryMsg::new(&k, 300, &PolicyEntry::allow(7))],
            delete: vec![KeyMsg::new(&PolicyKey::l3(Identity(2)), 2)],
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"op":"policy.update","endpoint":3,"direction":"ingress","enforced":true,"add":[{"identity":300,"proto":6,"port":80,"end_port":90,"action":"allow","cookie":7}],"delete":[{"identity":2,"proto":0}]}"#
        );
        let c = Change::IpcacheUpsert {
            prefix: "10.1.0.5/32".into(),
            identity: 300,
            tunnel_endpoint: Some("192.168.0.2".parse().unwrap()),
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"op":"ipcache.upsert","prefix":"10.1.0.5/32","identity":300,"tunnel_endpoint":"192.168.0.2"}"#
        );
        assert_eq!(c.op(), "ipcache.upsert");
    }
}
