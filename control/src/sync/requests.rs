//! Changes into the requests that carry them to the dataplane, so that no endpoint ever carries
//! traffic before its policy is in force (issue 14, finding 5).
//!
//! The dataplane applies one request atomically (one copy of its tables, one publication), and
//! a `batch` request is one request. So:
//! - every `endpoint.upsert` travels in one `batch` with the `policy.update`/`policy.replace`
//!   requests of the same endpoint: a new endpoint appears already enforced (a restarted
//!   dataplane's resync, a new pod), and an endpoint whose identity changes never meets packets
//!   under its old policy and new identity;
//! - ipcache changes come first (a policy naming an identity is useful only once addresses
//!   resolve to it), [`IPCACHE_BATCH`] to a `batch`: each request copies the ipcache once, so a
//!   resync of N entries costs N / [`IPCACHE_BATCH`] copies instead of N;
//! - everything else (nodes, services, endpoint deletions) goes first, in its order.
//!
//! A refused batch changes nothing: an endpoint whose batch is refused stays out of the
//! dataplane (no traffic) rather than in it unenforced.

use std::collections::BTreeMap;

use crate::dataplane_client::{Change, Request};

/// Ipcache changes in one `batch` (about 100 bytes each: far below the 16 MiB line limit).
pub const IPCACHE_BATCH: usize = 4096;

/// The requests that carry `changes` (see the module doc).
pub fn requests(changes: Vec<Change>) -> Vec<Request> {
    let mut first = Vec::new();
    let mut ipcache = Vec::new();
    // Endpoint id -> its upserts and policy changes, in their order; `order` keeps the ids in
    // the order of their first upsert.
    let mut by_endpoint: BTreeMap<u32, Vec<Change>> = BTreeMap::new();
    let mut order = Vec::new();
    let mut policy = Vec::new();
    let mut host = Vec::new();
    for change in changes {
        match &change {
            Change::IpcacheUpsert(_) | Change::IpcacheDelete(_) => ipcache.push(change),
            Change::EndpointUpsert(m) => {
                let group = by_endpoint.entry(m.id).or_default();
                if group.is_empty() {
                    order.push(m.id);
                }
                group.push(change);
            }
            Change::PolicyUpdate(_) | Change::PolicyReplace(_) => policy.push(change),
            // After the ipcache, whose CIDR identities its entries may name.
            Change::HostPolicyReplace(_) => host.push(change),
            _ => first.push(change),
        }
    }
    let mut loose = Vec::new();
    for change in policy {
        match by_endpoint.get_mut(&policy_endpoint(&change)) {
            Some(group) => group.push(change),
            None => loose.push(change),
        }
    }
    let mut out: Vec<Request> = first.into_iter().map(Request::Change).collect();
    out.extend(ipcache_requests(ipcache));
    for id in order {
        if let Some(group) = by_endpoint.remove(&id) {
            out.push(one_or_batch(group));
        }
    }
    out.extend(loose.into_iter().map(Request::Change));
    out.extend(host.into_iter().map(Request::Change));
    out
}

/// The endpoint a policy change is for.
fn policy_endpoint(change: &Change) -> u32 {
    match change {
        Change::PolicyUpdate(m) => m.endpoint,
        Change::PolicyReplace(m) => m.endpoint,
        _ => u32::MAX,
    }
}

fn ipcache_requests(mut ipcache: Vec<Change>) -> Vec<Request> {
    let mut out = Vec::new();
    while !ipcache.is_empty() {
        let rest = ipcache.split_off(ipcache.len().min(IPCACHE_BATCH));
        out.push(one_or_batch(std::mem::replace(&mut ipcache, rest)));
    }
    out
}

/// A single change as itself (the line a reader expects), several as one batch.
fn one_or_batch(mut group: Vec<Change>) -> Request {
    match group.len() {
        1 => match group.pop() {
            Some(change) => Request::Change(change),
            None => Request::Batch(group),
        },
        _ => Request::Batch(group),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::dataplane_client::{
        EndpointMsg, EndpointRef, IpcacheMsg, NodeRef, PolicyReplace, PolicyUpdate, Text,
        WireDirection,
    };

    fn endpoint(id: u32) -> Change {
        Change::EndpointUpsert(EndpointMsg {
            id,
            ifindex: id,
            mac: Text(format!("02:00:00:00:00:{id:02x}").parse().unwrap()),
            ipv4: Some(std::net::Ipv4Addr::new(10, 1, 0, id as u8)),
            ipv6: None,
            identity: 1000 + id,
        })
    }

    fn replace(id: u32, direction: WireDirection) -> Change {
        Change::PolicyReplace(PolicyReplace {
            endpoint: id,
            direction,
            enforced: true,
            entries: Vec::new(),
        })
    }

    fn update(id: u32) -> Change {
        Change::PolicyUpdate(PolicyUpdate {
            endpoint: id,
            direction: WireDirection::Ingress,
            enforced: Some(true),
            add: Vec::new(),
            delete: Vec::new(),
        })
    }

    fn ipcache(i: u32) -> Change {
        Change::IpcacheUpsert(IpcacheMsg {
            prefix: Text(format!("10.2.{}.{}/32", i / 256, i % 256).parse().unwrap()),
            identity: 2000,
            tunnel_endpoint: None,
        })
    }

    /// A resync's order (endpoints, then ipcache, then policy) becomes: others, ipcache in
    /// batches, then each endpoint in one batch with its policy.
    #[test]
    fn each_endpoint_travels_with_its_policy() {
        let mut changes = vec![
            Change::NodeDelete(NodeRef { name: "n9".into() }),
            Change::EndpointDelete(EndpointRef { id: 9 }),
            endpoint(5),
            endpoint(6),
        ];
        changes.extend((0..IPCACHE_BATCH as u32 + 1).map(ipcache));
        changes.extend([
            replace(6, WireDirection::Ingress),
            replace(5, WireDirection::Ingress),
            replace(5, WireDirection::Egress),
            update(7),
        ]);
        let out = requests(changes);
        let ops: Vec<String> = out.iter().map(|r| r.kind().name().to_string()).collect();
        assert_eq!(
            ops,
            [
                "node.delete",
                "endpoint.delete",
                "batch",
                "ipcache.upsert",
                "batch",
                "batch",
                "policy.update"
            ]
        );
        let Request::Batch(first_ipcache) = &out[2] else {
            panic!()
        };
        assert_eq!(first_ipcache.len(), IPCACHE_BATCH);
        let Request::Batch(ep5) = &out[4] else {
            panic!()
        };
        assert_eq!(
            ep5,
            &[
                endpoint(5),
                replace(5, WireDirection::Ingress),
                replace(5, WireDirection::Egress)
            ]
        );
        let Request::Batch(ep6) = &out[5] else {
            panic!()
        };
        assert_eq!(ep6, &[endpoint(6), replace(6, WireDirection::Ingress)]);
    }

    /// Every request fits the dataplane's parser (a batch parses back to its changes).
    #[test]
    fn batches_parse_as_the_dataplane_protocol() {
        let out = requests(vec![endpoint(5), update(5), ipcache(1), ipcache(2)]);
        for r in out {
            let line = serde_json::Value::Object(r.to_json()).to_string();
            let parsed = dataplane::api::protocol::parse_request(line.as_bytes()).unwrap();
            assert_eq!(parsed.request, r, "{line}");
        }
    }
}
