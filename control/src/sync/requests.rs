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
//!
//! A request too large for one line (the dataplane refuses lines above 16 MiB: a policy
//! selecting 10k identities on 22 ports is that large) travels as the parts of one staged
//! batch ([`StagedPart`], issue 14, finding 4), which the dataplane applies as one batch when
//! the last part arrives: large or small, a request is applied whole or not at all, and the
//! endpoint keeps its previous policy in force meanwhile. Its policy changes are cut into
//! pieces whose application in order equals the original (a `policy.replace` becomes a
//! smaller replace followed by `policy.update` additions; an update's deletions go before its
//! additions, as the dataplane applies them). [`fail_closed`] gives the changes that shut an
//! endpoint's policy when one of its requests is refused anyway.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dataplane_client::{
    Change, PolicyReplace, PolicyUpdate, Request, StagedPart, WireDirection,
};

/// Ipcache changes in one `batch` (about 100 bytes each: far below the 16 MiB line limit).
pub const IPCACHE_BATCH: usize = 4096;

/// The most weight (see [`weight`]) one line carries. A policy entry serializes to at most
/// ~110 bytes and any other change to a few hundred, so a part stays below 8 MiB, half the
/// dataplane's line limit.
pub const PART_WEIGHT: usize = 32 * 1024;

/// Transaction numbers of staged batches: unique within the process, hence on a connection.
static NEXT_TXN: AtomicU64 = AtomicU64::new(1);

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
    out.into_iter().flat_map(fitted).collect()
}

/// A change's share of a line: one, plus one per policy entry or key and per backend it lists.
pub fn weight(change: &Change) -> usize {
    1 + match change {
        Change::PolicyUpdate(m) => m.add.len() + m.delete.len(),
        Change::PolicyReplace(m) => m.entries.len(),
        Change::HostPolicyReplace(m) => m.entries.len(),
        Change::ServiceUpsert(m) => m.backends.len(),
        _ => 0,
    }
}

/// `request` itself when it fits one line, else the parts of one staged batch that applies the
/// same changes.
fn fitted(request: Request) -> Vec<Request> {
    let changes = match request {
        Request::Change(c) if weight(&c) > PART_WEIGHT => vec![c],
        Request::Batch(cs) if cs.iter().map(weight).sum::<usize>() > PART_WEIGHT => cs,
        other => return vec![other],
    };
    let pieces = changes.into_iter().flat_map(pieces);
    let mut parts: Vec<Vec<Change>> = vec![Vec::new()];
    let mut filled = 0;
    for piece in pieces {
        let w = weight(&piece);
        if filled + w > PART_WEIGHT && parts.last().is_some_and(|p| !p.is_empty()) {
            parts.push(Vec::new());
            filled = 0;
        }
        filled += w;
        if let Some(last) = parts.last_mut() {
            last.push(piece);
        }
    }
    let txn = NEXT_TXN.fetch_add(1, Ordering::Relaxed);
    let count = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, changes)| {
            Request::Staged(StagedPart {
                txn,
                part: u32::try_from(i).unwrap_or(u32::MAX),
                more: i + 1 < count,
                changes,
            })
        })
        .collect()
}

/// `change` cut into changes of at most [`PART_WEIGHT`] whose application in order equals it.
fn pieces(change: Change) -> Vec<Change> {
    let chunk = PART_WEIGHT - 1;
    match change {
        Change::PolicyReplace(m) if m.entries.len() > chunk => {
            let mut entries = m.entries.into_iter();
            let first: Vec<_> = entries.by_ref().take(chunk).collect();
            let mut out = vec![Change::PolicyReplace(PolicyReplace {
                endpoint: m.endpoint,
                direction: m.direction,
                enforced: m.enforced,
                entries: first,
            })];
            let rest: Vec<_> = entries.collect();
            out.extend(rest.chunks(chunk).map(|add| {
                Change::PolicyUpdate(PolicyUpdate {
                    endpoint: m.endpoint,
                    direction: m.direction,
                    enforced: Some(m.enforced),
                    add: add.to_vec(),
                    delete: Vec::new(),
                })
            }));
            out
        }
        Change::PolicyUpdate(m) if m.add.len() + m.delete.len() > chunk => {
            let piece = |add: Vec<_>, delete: Vec<_>| {
                Change::PolicyUpdate(PolicyUpdate {
                    endpoint: m.endpoint,
                    direction: m.direction,
                    enforced: m.enforced,
                    add,
                    delete,
                })
            };
            // Deletions first, as the dataplane applies one update.
            let mut out: Vec<Change> = m
                .delete
                .chunks(chunk)
                .map(|d| piece(Vec::new(), d.to_vec()))
                .collect();
            out.extend(m.add.chunks(chunk).map(|a| piece(a.to_vec(), Vec::new())));
            out
        }
        other => vec![other],
    }
}

/// The changes that shut the policy of every endpoint and direction `request` touches
/// (enforced, no entries: nothing admitted): sent when the dataplane refuses a request, so an
/// endpoint is never left less enforced than its policy says. It opens again with the next
/// complete push of its policy (a resync).
pub fn fail_closed(request: &Request) -> Vec<Change> {
    let changes: &[Change] = match request {
        Request::Change(c) => std::slice::from_ref(c),
        Request::Batch(cs) => cs,
        Request::Staged(p) => &p.changes,
        _ => &[],
    };
    let touched: BTreeSet<(u32, bool)> = changes
        .iter()
        .filter_map(|c| match c {
            Change::PolicyUpdate(m) => Some((m.endpoint, m.direction == WireDirection::Ingress)),
            Change::PolicyReplace(m) => Some((m.endpoint, m.direction == WireDirection::Ingress)),
            _ => None,
        })
        .collect();
    touched
        .into_iter()
        .map(|(endpoint, ingress)| {
            Change::PolicyReplace(PolicyReplace {
                endpoint,
                direction: if ingress {
                    WireDirection::Ingress
                } else {
                    WireDirection::Egress
                },
                enforced: true,
                entries: Vec::new(),
            })
        })
        .collect()
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
        EndpointMsg, EndpointRef, IpcacheMsg, NodeRef, PolicyEntryMsg, PolicyKeyMsg, PolicyReplace,
        PolicyUpdate, Proto, Text, WireDirection,
    };
    use dataplane::api::apply::{apply_batch, sorted_entries};
    use dataplane::api::protocol::WireAction;
    use dataplane::api::server::MAX_LINE;
    use dataplane::api::{Control, StatsRegistry, TablesHandle};
    use dataplane::tables::endpoints::EndpointId;
    use dataplane::tables::services::Services;
    use dataplane::tables::{LocalNode, Tables};

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

    fn tables() -> Tables {
        Tables::empty(LocalNode::default(), Services::new(251, 1).unwrap())
    }

    /// What `namespaceSelector: {}` on 22 ports compiles to with `identities` pods' identities.
    fn wide_entries(identities: u32, cookie: u32) -> Vec<PolicyEntryMsg> {
        (0..identities)
            .flat_map(|i| {
                (0..22u16).map(move |p| PolicyEntryMsg {
                    identity: 100_000 + i,
                    proto: Proto(6),
                    port: Some(8000 + p),
                    end_port: None,
                    action: WireAction::Allow,
                    cookie,
                })
            })
            .collect()
    }

    fn line(r: &Request) -> String {
        serde_json::Value::Object(r.to_json()).to_string()
    }

    /// Issue 14, finding 4: an endpoint with a policy of 12k identities x 22 ports (and a
    /// later update as large) is one line of more than 16 MiB, which the dataplane refused,
    /// leaving the pod unenforced. Now every line fits, nothing is published before the last
    /// part, and the result equals the unsplit request applied at once.
    #[test]
    fn a_policy_larger_than_a_line_travels_staged_and_applies_whole() {
        let replace = Change::PolicyReplace(PolicyReplace {
            endpoint: 5,
            direction: WireDirection::Ingress,
            enforced: true,
            entries: wide_entries(12_000, 1),
        });
        let original = vec![endpoint(5), replace];
        assert!(
            line(&Request::Batch(original.clone())).len() > MAX_LINE,
            "the test's policy must exceed the line limit"
        );
        let mut expected = tables();
        apply_batch(&mut expected, &original).unwrap();

        let control = &mut Control::new(TablesHandle::new(tables()), StatsRegistry::new());
        let out = requests(original);
        assert!(out.len() > 1, "{} requests", out.len());
        for (i, r) in out.iter().enumerate() {
            let text = line(r);
            assert!(text.len() <= MAX_LINE, "request {i}: {} bytes", text.len());
            assert!(matches!(r, Request::Staged(p) if p.more == (i + 1 < out.len())));
            assert_eq!(
                control.tables().load().endpoints.len(),
                0,
                "published early"
            );
            let reply = control.handle_line(text.as_bytes()).reply.unwrap();
            assert_eq!(reply["ok"], true, "{reply}");
        }
        assert_eq!(control.revision(), 1, "one publication");
        let policy = |t: &Tables| {
            let ep = t.endpoints.get(EndpointId(5)).unwrap();
            (
                ep.policy.ingress.enforced,
                sorted_entries(&ep.policy.ingress),
            )
        };
        let got = policy(&control.tables().load());
        assert_eq!(got.1.len(), 12_000 * 22);
        assert_eq!(got, policy(&expected));

        // An update above a part's weight: deletions and additions of 1000 identities each.
        let delete: Vec<PolicyKeyMsg> = wide_entries(1_000, 1)
            .into_iter()
            .map(|e| PolicyKeyMsg {
                identity: e.identity,
                proto: e.proto,
                port: e.port,
                end_port: None,
            })
            .collect();
        let mut add = wide_entries(1_000, 2);
        for e in &mut add {
            e.identity += 50_000;
        }
        let update = vec![Change::PolicyUpdate(PolicyUpdate {
            endpoint: 5,
            direction: WireDirection::Ingress,
            enforced: Some(true),
            add,
            delete,
        })];
        apply_batch(&mut expected, &update).unwrap();
        let parts = requests(update);
        assert!(parts.len() > 1 && matches!(parts[0], Request::Staged(_)));
        for r in parts {
            let reply = control.handle_line(line(&r).as_bytes()).reply.unwrap();
            assert_eq!(reply["ok"], true, "{reply}");
        }
        assert_eq!(control.revision(), 2);
        assert_eq!(policy(&control.tables().load()), policy(&expected));
    }

    /// A refused request shuts the policy of each endpoint and direction it touched.
    #[test]
    fn a_refused_request_shuts_the_policies_it_touched() {
        let r = Request::Batch(vec![
            endpoint(5),
            replace(5, WireDirection::Ingress),
            update(5),
            replace(5, WireDirection::Egress),
        ]);
        let shut = fail_closed(&r);
        assert_eq!(shut.len(), 2);
        for c in &shut {
            let Change::PolicyReplace(m) = c else {
                panic!("{c:?}")
            };
            assert!(m.enforced && m.entries.is_empty() && m.endpoint == 5);
        }
        assert!(fail_closed(&Request::Change(endpoint(5))).is_empty());
    }
}
