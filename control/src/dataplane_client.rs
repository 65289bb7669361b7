//! Client of the dataplane's control socket: newline-delimited JSON over a Unix socket, one
//! request per line, one reply (`{"ok":true,...}` or `{"ok":false,"error":...}`) per line.
//!
//! The request types are the dataplane's own ([`dataplane::api::protocol`], documented in
//! `docs/control-socket.md`), re-exported here; every line is built by
//! [`Request::to_json`], so the op names come from the protocol's one table ([`Op`]).
//! [`policy_entry`] and [`policy_key`] build the policy-map items with a translated
//! (cluster-wide) identity.
//!
//! Contract: [`DataplaneClient::send`] writes one request and reads its reply; an `ok:false`
//! reply is [`ClientError::Refused`] (the request changed nothing); an I/O error means the
//! dataplane went away (the agent reconnects and resyncs everything). Every request has a
//! deadline ([`REQUEST_TIMEOUT`] unless [`DataplaneClient::set_timeout`] says otherwise): a
//! dataplane that does not answer in time is [`ClientError::Timeout`], after which the
//! connection is unusable (a late reply would be taken for the next one's) and the agent treats
//! it as lost: it reconnects and resyncs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use dataplane::tables::policy::{PolicyEntry, PolicyKey};
use dataplane::Identity;

pub use dataplane::api::protocol::{
    BackendMsg, Change, DumpRequest, DumpTable, EndpointMsg, EndpointRef, FrontendMsg,
    HostPolicyReplace, IpcacheMsg, LocalNodeMsg, NodeMsg, NodeRef, Op, PolicyEntryMsg,
    PolicyKeyMsg, PolicyReplace, PolicyUpdate, PrefixRef, Proto, Request, ServiceMsg, ServiceRef,
    StagedPart, Text, WireDirection, WireEncap, WireFrontendKind, WireLbMode,
};

/// A dataplane client failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("dataplane socket {path}: {source}; is flagella-dataplane running, and may this user open its socket?")]
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
    #[error("dataplane did not answer {op} within {} s: reconnecting and resyncing; if this repeats, check that flagella-dataplane runs and `flagella status` answers", .after.as_secs_f64())]
    Timeout { op: String, after: Duration },
    #[error("the connection to the dataplane is unusable after an unanswered request: reconnect")]
    Poisoned,
}

/// How long a request may wait for its reply. Generous: with incremental policy updates the
/// largest request takes well under a second; a dataplane this slow is stuck.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The policy-map key `k` with its identity replaced by `identity` (the cluster-wide number).
pub fn policy_key(k: &PolicyKey, identity: u32) -> PolicyKeyMsg {
    PolicyKeyMsg::from(PolicyKey {
        identity: Identity(identity),
        ..*k
    })
}

/// The policy-map entry `(k, e)` with its identity replaced by `identity`.
pub fn policy_entry(k: &PolicyKey, identity: u32, e: &PolicyEntry) -> PolicyEntryMsg {
    PolicyEntryMsg::from((
        PolicyKey {
            identity: Identity(identity),
            ..*k
        },
        *e,
    ))
}

/// The JSON request line body of a change (its `op` included).
pub fn change_json(change: &Change) -> Value {
    Value::Object(change.to_json())
}

/// A connection to the dataplane.
#[derive(Debug)]
pub struct DataplaneClient {
    path: PathBuf,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    seq: u64,
    timeout: Duration,
    /// A request timed out: its reply may still come, so no other request may be sent.
    poisoned: bool,
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
            timeout: REQUEST_TIMEOUT,
            poisoned: false,
        })
    }

    /// Replaces [`REQUEST_TIMEOUT`] for the requests that follow.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
        |source| ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Sends one request object (its `op` included) and returns the reply, or
    /// [`ClientError::Timeout`] when none came within the deadline.
    pub async fn request(&mut self, mut body: Value) -> Result<Value, ClientError> {
        if self.poisoned {
            return Err(ClientError::Poisoned);
        }
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
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(line, op.clone())).await {
            Ok(result) => result,
            Err(_) => {
                self.poisoned = true;
                Err(ClientError::Timeout { op, after: timeout })
            }
        }
    }

    /// Writes `line` and reads until the reply to it.
    async fn exchange(&mut self, line: String, op: String) -> Result<Value, ClientError> {
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
        self.request(change_json(change)).await.map(|_| ())
    }

    /// Sends one query or change (its line built by [`Request::to_json`]).
    pub async fn send_request(&mut self, request: &Request) -> Result<Value, ClientError> {
        self.request(Value::Object(request.to_json())).await
    }

    /// `ping`: is the dataplane still there.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.send_request(&Request::Ping).await.map(|_| ())
    }

    /// `status`: the dataplane's own report.
    pub async fn status(&mut self) -> Result<Value, ClientError> {
        self.send_request(&Request::Status).await
    }

    /// `dump` of one table.
    pub async fn dump(&mut self, table: DumpTable) -> Result<Value, ClientError> {
        self.send_request(&Request::Dump(DumpRequest {
            table,
            endpoint: None,
            limit: None,
        }))
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use dataplane::api::protocol::parse_request;
    use dataplane::tables::policy::PortRange;

    /// What the client writes is what the dataplane parses, field for field.
    fn round_trip(c: Change) -> String {
        let line = change_json(&c).to_string();
        let env = parse_request(line.as_bytes()).unwrap_or_else(|r| panic!("{line}: {r:?}"));
        assert_eq!(env.request, Request::Change(c), "{line}");
        line
    }

    /// Finding 9 of issue 14: a dataplane that never answers held the agent forever.
    #[tokio::test]
    async fn a_request_without_reply_times_out_and_poisons_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        // Accepts, reads nothing, answers nothing (kept alive until the test ends).
        let silent = tokio::spawn(async move { listener.accept().await.map(|(s, _)| s) });
        let mut client = DataplaneClient::connect(&path).await.unwrap();
        client.set_timeout(Duration::from_millis(200));
        let err = client.ping().await.unwrap_err();
        assert!(
            matches!(err, ClientError::Timeout { ref op, .. } if op == "ping"),
            "{err}"
        );
        assert!(err.to_string().contains("resyncing"), "{err}");
        assert!(matches!(client.ping().await, Err(ClientError::Poisoned)));
        drop(silent);
    }

    #[test]
    fn requests_parse_as_the_dataplane_protocol() {
        let k = PolicyKey::l4(Identity(0), 6, PortRange::new(80, 90).unwrap());
        let line = round_trip(Change::PolicyUpdate(PolicyUpdate {
            endpoint: 3,
            direction: WireDirection::Ingress,
            enforced: Some(true),
            add: vec![policy_entry(&k, 300, &PolicyEntry::allow(7))],
            delete: vec![policy_key(&PolicyKey::l3(Identity(2)), 2)],
        }));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["op"], "policy.update");
        assert_eq!(
            v["add"][0],
            serde_json::json!({"identity":300,"proto":"tcp","port":80,"end_port":90,"action":"allow","cookie":7})
        );
        assert_eq!(v["delete"][0]["identity"], 2);
        let line = round_trip(Change::IpcacheUpsert(IpcacheMsg {
            prefix: Text("10.1.0.5/32".parse().unwrap()),
            identity: 300,
            tunnel_endpoint: Some("192.168.0.2".parse().unwrap()),
        }));
        assert!(line.contains(r#""prefix":"10.1.0.5/32""#), "{line}");
        round_trip(Change::EndpointUpsert(EndpointMsg {
            id: 5,
            ifindex: 7,
            mac: Text("02:00:00:00:00:05".parse().unwrap()),
            ipv4: Some("10.1.0.5".parse().unwrap()),
            ipv6: None,
            identity: 1000,
        }));
        round_trip(Change::ServiceUpsert(ServiceMsg {
            frontend: FrontendMsg {
                addr: "10.96.0.10".parse().unwrap(),
                port: 80,
                proto: Proto(6),
            },
            backends: vec![BackendMsg {
                addr: "10.1.0.12".parse().unwrap(),
                port: 8080,
                weight: 2,
            }],
            mode: WireLbMode::Dsr,
            kind: WireFrontendKind::NodePort,
            id: None,
        }));
        round_trip(Change::NodeUpsert(NodeMsg {
            name: "n2".into(),
            underlay: "192.168.0.2".parse().unwrap(),
            pod_cidrs: vec![Text("10.2.0.0/24".parse().unwrap())],
            encap: WireEncap::Geneve,
        }));
        round_trip(Change::EndpointDelete(EndpointRef { id: 5 }));
    }
}
