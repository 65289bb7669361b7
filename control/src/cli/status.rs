//! `flagella status`: is etcd reachable, at which revision, how many objects of each kind it
//! holds; with a dataplane socket, the dataplane's own `status` reply.
//!
//! Contract: [`status`] never fails; an unreachable etcd or dataplane is part of the report
//! (with the error), and [`StatusReport::healthy`] says whether everything asked about answered
//! (the binary exits 1 when not, so scripts can test it).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use std::process::ExitCode;

use super::args::{Output, StatusArgs};
use super::render::emit;
use super::{connect, decode_all, CliError};
use crate::dataplane_client::DataplaneClient;
use crate::schema::{Object, ROOT};

/// How long the dataplane may take to answer `status`.
pub const DATAPLANE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EtcdStatus {
    pub endpoints: Vec<String>,
    pub reachable: bool,
    /// The store revision (when reachable).
    pub revision: Option<i64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DataplaneStatus {
    pub socket: String,
    pub reachable: bool,
    pub error: Option<String>,
    /// The dataplane's `status` reply (revision, uptime, table sizes, counters).
    pub status: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusReport {
    pub etcd: EtcdStatus,
    /// Objects per kind (`namespaces`, `nodes`, `endpoints`, `policies`, `services`,
    /// `identities`), and `malformed`: values the agents skip. Empty when etcd is unreachable.
    pub counts: BTreeMap<&'static str, usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<DataplaneStatus>,
}

impl StatusReport {
    pub fn healthy(&self) -> bool {
        self.etcd.reachable && self.dataplane.as_ref().is_none_or(|d| d.reachable)
    }
}

const KINDS: [&str; 7] = [
    "namespaces",
    "nodes",
    "endpoints",
    "policies",
    "services",
    "identities",
    "malformed",
];

fn kind_of(o: &Object) -> Option<&'static str> {
    Some(match o {
        Object::Namespace(..) => "namespaces",
        Object::Node(..) => "nodes",
        Object::Endpoint { .. } | Object::PendingEndpoint { .. } => "endpoints",
        Object::Policy(_) => "policies",
        Object::Service { .. } => "services",
        Object::Identity(..) => "identities",
        Object::Ignored => return None,
    })
}

async fn etcd_status(endpoints: &[String]) -> (EtcdStatus, BTreeMap<&'static str, usize>) {
    let mut st = EtcdStatus {
        endpoints: endpoints.to_vec(),
        reachable: false,
        revision: None,
        error: None,
    };
    let mut counts = BTreeMap::new();
    let listing = match connect(endpoints).await {
        Ok(store) => store.list(ROOT).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match listing {
        Ok((kvs, revision)) => {
            st.reachable = true;
            st.revision = Some(revision);
            counts.extend(KINDS.iter().map(|k| (*k, 0)));
            let (objects, skipped) = decode_all(kvs);
            for (_, o) in &objects {
                if let Some(k) = kind_of(o) {
                    *counts.entry(k).or_default() += 1;
                }
            }
            counts.insert("malformed", skipped.len());
        }
        Err(e) => st.error = Some(e),
    }
    (st, counts)
}

async fn dataplane_status(socket: &Path) -> DataplaneStatus {
    let ask = async {
        let mut client = DataplaneClient::connect(socket).await?;
        client.status().await
    };
    let result = match tokio::time::timeout(DATAPLANE_TIMEOUT, ask).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "no answer within {} s; the dataplane may be stuck: check its log",
            DATAPLANE_TIMEOUT.as_secs()
        )),
    };
    let (reachable, error, status) = match result {
        Ok(mut v) => {
            if let Value::Object(m) = &mut v {
                m.remove("ok");
                m.remove("seq");
            }
            (true, None, Some(v))
        }
        Err(e) => (false, Some(e), None),
    };
    DataplaneStatus {
        socket: socket.display().to_string(),
        reachable,
        error,
        status,
    }
}

/// The whole report.
pub async fn status(endpoints: &[String], dataplane_socket: Option<&Path>) -> StatusReport {
    let (etcd, counts) = etcd_status(endpoints).await;
    let dataplane = match dataplane_socket {
        Some(p) => Some(dataplane_status(p).await),
        None => None,
    };
    StatusReport {
        etcd,
        counts,
        dataplane,
    }
}

/// The report for people.
pub fn text(r: &StatusReport) -> String {
    let mut out = String::new();
    let urls = r.etcd.endpoints.join(",");
    match (&r.etcd.revision, &r.etcd.error) {
        (Some(rev), _) => out.push_str(&format!("etcd:        ok ({urls}), revision {rev}\n")),
        (None, e) => out.push_str(&format!(
            "etcd:        unreachable ({urls}): {}\n",
            e.as_deref().unwrap_or("no answer")
        )),
    }
    if !r.counts.is_empty() {
        let counts: Vec<String> = KINDS
            .iter()
            .map(|k| format!("{k} {}", r.counts.get(k).copied().unwrap_or(0)))
            .collect();
        out.push_str(&format!("objects:     {}\n", counts.join(", ")));
    }
    if let Some(d) = &r.dataplane {
        match &d.status {
            Some(s) => {
                let n = |v: &Value| v.as_u64().map_or("?".into(), |n| n.to_string());
                out.push_str(&format!(
                    "dataplane:   ok ({}), revision {}, uptime {} s\n",
                    d.socket,
                    n(&s["revision"]),
                    n(&s["uptime_s"])
                ));
                let t = &s["tables"];
                out.push_str(&format!(
                    "  tables:    endpoints {}, ipcache {}, policy entries {}, services {}, nodes {}\n",
                    n(&t["endpoints"]),
                    n(&t["ipcache"]),
                    n(&t["policy_entries"]),
                    n(&t["services"]),
                    n(&t["nodes"])
                ));
                let c = &s["counters"];
                out.push_str(&format!(
                    "  packets:   rx {}, tx {}, drop {}, pass {}\n",
                    n(&c["rx_packets"]),
                    n(&c["tx_packets"]),
                    n(&c["drop_packets"]),
                    n(&c["pass_packets"])
                ));
                if let Some(drops) = c["drops"].as_object().filter(|d| !d.is_empty()) {
                    let d: Vec<String> =
                        drops.iter().map(|(k, v)| format!("{k} {}", n(v))).collect();
                    out.push_str(&format!("  drops:     {}\n", d.join(", ")));
                }
            }
            None => out.push_str(&format!(
                "dataplane:   unreachable ({}): {}\n",
                d.socket,
                d.error.as_deref().unwrap_or("no answer")
            )),
        }
    }
    out
}

/// `flagella status`: the report, printed; exit status 1 when something asked about did not
/// answer.
pub async fn run(args: StatusArgs, etcd: &[String], out: Output) -> Result<ExitCode, CliError> {
    let report = status(etcd, args.dataplane_socket.as_deref()).await;
    emit(out, &report, || text(&report))?;
    if !report.healthy() {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_parts_are_reported_not_fatal() {
        let r = StatusReport {
            etcd: EtcdStatus {
                endpoints: vec!["http://127.0.0.1:1".into()],
                reachable: false,
                revision: None,
                error: Some("connection refused".into()),
            },
            counts: BTreeMap::new(),
            dataplane: None,
        };
        assert!(!r.healthy());
        let t = text(&r);
        assert!(
            t.contains("unreachable") && t.contains("connection refused"),
            "{t}"
        );
    }
}
