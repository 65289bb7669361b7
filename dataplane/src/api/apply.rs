//! Applying one [`Change`] to a private copy of the [`Tables`].
//!
//! [`apply`] is called by [`TablesHandle::update`](super::publish::TablesHandle::update) on a
//! clone of the published tables, so atomicity needs no undo log: a change that fails halfway
//! (the third entry of a `policy.update` batch is invalid) returns `Err`, the copy is dropped and
//! the published tables never saw any of it. Everything is still validated before the first
//! mutation, so that the error names the first field at fault in request order.
//!
//! Only the tables a change touches are `Arc::make_mut`ed (copied): an ipcache upsert copies the
//! ipcache and shares every other table with the previous snapshot; a policy change copies the
//! endpoints table (slab and indexes) and that one endpoint's policy, not the others' policies.
//!
//! Deleting something that does not exist succeeds with `changed: false` (the caller's desired
//! state holds), so a control process can replay deletes safely.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::protocol::{
    join, Change, EndpointMsg, NodeMsg, PolicyEntryMsg, RequestError, ServiceMsg,
};
use crate::tables::endpoints::{EndpointError, EndpointId};
use crate::tables::nodes::NodeError;
use crate::tables::policy::{
    BatchOutcome, DirectionalPolicy, PolicyEntry, PolicyKey, PolicyMapError,
};
use crate::tables::services::{Frontend, ServiceError};
use crate::tables::Tables;

/// What an applied change did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// False when the change was a no-op (deleting something absent): nothing is published.
    pub changed: bool,
    /// Extra reply fields (`service_id`, `added`, `deleted`).
    pub detail: Map<String, Value>,
}

impl Applied {
    fn changed() -> Self {
        Applied {
            changed: true,
            detail: Map::new(),
        }
    }

    fn deleted(existed: bool) -> Self {
        Applied {
            changed: existed,
            detail: Map::new(),
        }
    }

    fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.detail.insert(key.to_string(), value.into());
        self
    }
}

/// Applies `change` to `t`. On `Err`, `t` may be half-changed: the caller must discard it (as
/// [`TablesHandle::update`](super::publish::TablesHandle::update) does).
pub fn apply(t: &mut Tables, change: &Change) -> Result<Applied, RequestError> {
    match change {
        Change::EndpointUpsert(m) => endpoint_upsert(t, m),
        Change::EndpointDelete(m) => {
            let id = EndpointId(m.id);
            // Checked first so that a no-op copies no table.
            let existed = t.endpoints.get(id).is_some()
                && Arc::make_mut(&mut t.endpoints).remove(id).is_some();
            Ok(Applied::deleted(existed))
        }
        Change::IpcacheUpsert(m) => {
            let (prefix, entry) = m.to_entry()?;
            Arc::make_mut(&mut t.ipcache).upsert(prefix, entry);
            Ok(Applied::changed())
        }
        Change::IpcacheDelete(m) => {
            let existed = t.ipcache.get(&m.prefix.0).is_some()
                && Arc::make_mut(&mut t.ipcache).remove(&m.prefix.0).is_some();
            Ok(Applied::deleted(existed))
        }
        Change::PolicyUpdate(m) => {
            let adds = entries(&m.add, "add")?;
            let deletes = m
                .delete
                .iter()
                .enumerate()
                .map(|(i, k)| k.to_key(&format!("delete[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let policy = directional_mut(t, m.endpoint, m.direction.into())?;
            let outcome = apply_entries(policy, &deletes, &adds, "add")?;
            if let Some(enforced) = m.enforced {
                policy.enforced = enforced;
            }
            Ok(Applied::changed()
                .with("added", adds.len())
                .with("deleted", outcome.removed))
        }
        Change::PolicyReplace(m) => {
            let new = entries(&m.entries, "entries")?;
            let policy = directional_mut(t, m.endpoint, m.direction.into())?;
            policy.map.clear();
            apply_entries(policy, &[], &new, "entries")?;
            policy.enforced = m.enforced;
            Ok(Applied::changed().with("entries", new.len()))
        }
        Change::HostPolicyReplace(m) => {
            let new = entries(&m.entries, "entries")?;
            let policy = Arc::make_mut(&mut t.endpoints)
                .host_policy_mut()
                .direction_mut(m.direction.into());
            policy.map.clear();
            apply_entries(policy, &[], &new, "entries")?;
            policy.enforced = m.enforced;
            Ok(Applied::changed().with("entries", new.len()))
        }
        Change::ServiceUpsert(m) => {
            let id = Arc::make_mut(&mut t.services)
                .upsert(m.to_spec())
                .map_err(|e| service_error(m, e))?;
            Ok(Applied::changed().with("service_id", id.0))
        }
        Change::ServiceDelete(m) => {
            let frontend = Frontend::from(m.frontend);
            let existed = t
                .services
                .lookup(frontend.addr, frontend.port, frontend.proto)
                .is_some()
                && Arc::make_mut(&mut t.services).remove(&frontend).is_some();
            Ok(Applied::deleted(existed))
        }
        Change::NodeUpsert(m) => {
            Arc::make_mut(&mut t.nodes)
                .upsert(m.to_node())
                .map_err(|e| node_error(m, e))?;
            Ok(Applied::changed())
        }
        Change::NodeDelete(m) => {
            let existed = t.nodes.get(&m.name).is_some()
                && Arc::make_mut(&mut t.nodes).remove(&m.name).is_some();
            Ok(Applied::deleted(existed))
        }
        Change::LocalNodeSet(m) => {
            let mut node = m.to_local_node()?;
            node.tunnel_ports = m.kept_tunnel_ports(t.node.tunnel_ports)?;
            node.host_link = t.node.host_link; // The daemon's, as the tunnel ports.
            node.host_addresses = t.node.host_addresses.clone();
            t.node = Arc::new(node);
            Ok(Applied::changed())
        }
    }
}

/// Applies `changes` in order to `t` (one copy: an ipcache written a thousand times in one
/// batch is copied once). The first refusal refuses them all, with its field placed as
/// `changes[i].field`; as with [`apply`], the caller discards `t` then.
pub fn apply_batch(t: &mut Tables, changes: &[Change]) -> Result<Vec<Applied>, RequestError> {
    changes
        .iter()
        .enumerate()
        .map(|(i, c)| apply(t, c).map_err(|e| e.in_batch(i)))
        .collect()
}

fn endpoint_upsert(t: &mut Tables, m: &EndpointMsg) -> Result<Applied, RequestError> {
    let spec = m.to_spec()?;
    Arc::make_mut(&mut t.endpoints)
        .upsert(spec)
        .map_err(endpoint_error)?;
    Ok(Applied::changed())
}

/// Converts every entry first, so the first invalid one is reported before anything changes.
fn entries(
    list: &[PolicyEntryMsg],
    name: &str,
) -> Result<Vec<(PolicyKey, PolicyEntry)>, RequestError> {
    list.iter()
        .enumerate()
        .map(|(i, e)| e.to_entry(&format!("{name}[{i}]")))
        .collect()
}

/// Removes `deletes` and inserts `adds` in one batch (each touched group is re-flattened once,
/// so a request's cost grows as R log R in its ranges, not R^3).
fn apply_entries(
    policy: &mut DirectionalPolicy,
    deletes: &[PolicyKey],
    adds: &[(PolicyKey, PolicyEntry)],
    name: &str,
) -> Result<BatchOutcome, RequestError> {
    policy
        .map
        .apply_batch(deletes, adds)
        .map_err(|(i, e)| match e {
            PolicyMapError::PortsWithoutProtocol { .. } => {
                RequestError::at(join(&format!("{name}[{i}]"), "port"), e.to_string())
            }
        })
}

/// The policy of `endpoint` in `dir`, copied for writing.
fn directional_mut(
    t: &mut Tables,
    endpoint: u32,
    dir: crate::tables::policy::Direction,
) -> Result<&mut DirectionalPolicy, RequestError> {
    Arc::make_mut(&mut t.endpoints)
        .policy_mut(EndpointId(endpoint))
        .map(|p| p.direction_mut(dir))
        .ok_or_else(|| {
            RequestError::at(
                "endpoint",
                format!(
                    "endpoint {endpoint} does not exist: send endpoint.upsert for it first \
                     (dump endpoints lists the known ones)"
                ),
            )
        })
}

fn endpoint_error(e: EndpointError) -> RequestError {
    let family = |addr: std::net::IpAddr| if addr.is_ipv4() { "ipv4" } else { "ipv6" };
    let field = match &e {
        EndpointError::NoAddress { .. } => "ipv4",
        EndpointError::UnusableIp { addr, .. } | EndpointError::IpInUse { addr, .. } => {
            family(*addr)
        }
        EndpointError::UnusableMac { .. } | EndpointError::MacInUse { .. } => "mac",
        EndpointError::IfindexInUse { .. } => "ifindex",
    };
    RequestError::at(field, e.to_string())
}

fn node_error(m: &NodeMsg, e: NodeError) -> RequestError {
    let field = match &e {
        NodeError::EmptyName => "name".to_string(),
        NodeError::UnusableUnderlay { .. } | NodeError::UnderlayInUse { .. } => {
            "underlay".to_string()
        }
        NodeError::PodCidrOverlap { cidr, .. } => {
            match m.pod_cidrs.iter().position(|p| p.0 == *cidr) {
                Some(i) => format!("pod_cidrs[{i}]"),
                None => "pod_cidrs".to_string(),
            }
        }
    };
    RequestError::at(field, e.to_string())
}

fn service_error(m: &ServiceMsg, e: ServiceError) -> RequestError {
    let backend_at = |key: &crate::tables::maglev::BackendKey, last: bool, sub: &str| {
        let mut matching = m
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.addr == key.addr && b.port == key.port)
            .map(|(i, _)| i);
        let index = if last {
            matching.next_back()
        } else {
            matching.next()
        };
        match index {
            Some(i) => join(&format!("backends[{i}]"), sub),
            None => "backends".to_string(),
        }
    };
    let field = match &e {
        ServiceError::TableSize { .. } | ServiceError::IdsExhausted { .. } => None,
        ServiceError::UnsupportedProtocol { .. } => Some("frontend.proto".to_string()),
        ServiceError::FrontendPortZero { .. } => Some("frontend.port".to_string()),
        ServiceError::BackendPortZero { backend, .. } => Some(backend_at(backend, false, "port")),
        ServiceError::FamilyMismatch { backend, .. } => Some(backend_at(backend, false, "addr")),
        ServiceError::DuplicateBackend { backend, .. } => Some(backend_at(backend, true, "")),
        ServiceError::TooManyBackends { .. } | ServiceError::Maglev { .. } => {
            Some("backends".to_string())
        }
    };
    RequestError {
        field,
        message: e.to_string(),
    }
}

/// The policy-key messages of a map, sorted (for dumps).
pub fn sorted_entries(p: &DirectionalPolicy) -> Vec<PolicyEntryMsg> {
    let mut v: Vec<(PolicyKey, PolicyEntry)> = p.map.iter().collect();
    v.sort_by_key(|(k, _)| *k);
    v.into_iter().map(PolicyEntryMsg::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::protocol::{parse_request, Request};
    use crate::api::publish::TablesHandle;
    use crate::tables::policy::Direction;
    use crate::tables::services::Services;
    use crate::tables::LocalNode;
    use crate::types::Identity;

    fn change(line: &str) -> Change {
        match parse_request(line.as_bytes()).unwrap().request {
            Request::Change(c) => c,
            other => panic!("{other:?}"),
        }
    }

    fn handle() -> TablesHandle {
        let h = TablesHandle::new(Tables::empty(
            LocalNode::default(),
            Services::new(251, 1).unwrap(),
        ));
        for line in [
            r#"{"op":"endpoint.upsert","id":1,"ifindex":11,"mac":"02:00:00:00:00:01","ipv4":"10.0.0.1","identity":1001}"#,
            r#"{"op":"endpoint.upsert","id":2,"ifindex":12,"mac":"02:00:00:00:00:02","ipv4":"10.0.0.2","identity":1002}"#,
        ] {
            h.update(|t| apply(t, &change(line))).unwrap();
        }
        h
    }

    fn run(h: &TablesHandle, line: &str) -> Result<Applied, RequestError> {
        h.update(|t| apply(t, &change(line)))
    }

    #[test]
    fn batched_policy_update_with_one_invalid_entry_changes_nothing() {
        let h = handle();
        run(&h, r#"{"op":"policy.update","endpoint":2,"direction":"ingress","enforced":true,"add":[{"identity":1001,"proto":"tcp","port":80,"action":"allow"}]}"#).unwrap();
        let before = h.snapshot();
        let e = run(&h, r#"{"op":"policy.update","endpoint":2,"direction":"ingress","enforced":false,"delete":[{"identity":1001,"proto":"tcp","port":80}],"add":[{"identity":7,"action":"allow"},{"identity":8,"proto":"udp","port":53,"action":"deny"},{"identity":9,"port":443,"action":"allow"}]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("add[2].port"), "{}", e.message);
        let after = h.snapshot();
        assert!(Arc::ptr_eq(&before, &after), "nothing may be published");
        let p = &after.endpoints.get(EndpointId(2)).unwrap().policy.ingress;
        assert!(p.enforced);
        assert_eq!(p.map.len(), 1);
        assert!(p.lookup(Identity(1001), 6, 80).is_allowed());
    }

    #[test]
    fn batched_policy_update_applies_deletes_adds_and_enforcement_together() {
        let h = handle();
        run(&h, r#"{"op":"policy.update","endpoint":2,"direction":"ingress","enforced":true,"add":[{"identity":1001,"proto":"tcp","port":80,"action":"allow"}]}"#).unwrap();
        let a = run(&h, r#"{"op":"policy.update","endpoint":2,"direction":"ingress","delete":[{"identity":1001,"proto":"tcp","port":80},{"identity":5}],"add":[{"identity":1001,"proto":"tcp","port":8000,"end_port":8080,"action":"allow","cookie":4}]}"#).unwrap();
        assert_eq!(a.detail["deleted"], 1);
        assert_eq!(a.detail["added"], 1);
        let t = h.snapshot();
        let p = &t.endpoints.get(EndpointId(2)).unwrap().policy;
        assert!(!p.ingress.lookup(Identity(1001), 6, 80).is_allowed());
        assert!(p.ingress.lookup(Identity(1001), 6, 8042).is_allowed());
        assert!(!p.egress.enforced);
        // The other endpoint's policy is shared with the previous version, not copied.
        assert_eq!(sorted_entries(&p.ingress).len(), 1);
    }

    #[test]
    fn policy_replace_replaces_the_whole_direction() {
        let h = handle();
        run(&h, r#"{"op":"policy.update","endpoint":1,"direction":"egress","enforced":true,"add":[{"identity":1002,"action":"allow"}]}"#).unwrap();
        run(&h, r#"{"op":"policy.replace","endpoint":1,"direction":"egress","entries":[{"identity":1003,"action":"deny"}]}"#).unwrap();
        let t = h.snapshot();
        let p = t
            .endpoints
            .get(EndpointId(1))
            .unwrap()
            .policy
            .direction(Direction::Egress);
        assert_eq!(p.map.len(), 1);
        assert!(!p.lookup(Identity(1002), 6, 1).is_allowed());
    }

    #[test]
    fn host_policy_replace_sets_the_hosts_map_not_an_endpoints() {
        let h = handle();
        run(&h, r#"{"op":"host_policy.replace","direction":"ingress","enforced":true,"entries":[{"proto":"tcp","port":8080,"action":"allow"}]}"#).unwrap();
        let t = h.snapshot();
        let p = &t.endpoints.host_policy().ingress;
        assert!(p.enforced && !t.endpoints.host_policy().egress.enforced);
        assert!(p.lookup(Identity(1002), 6, 8080).is_allowed());
        assert!(!p.lookup(Identity(1002), 6, 9090).is_allowed());
        let ep = &t.endpoints.get(EndpointId(1)).unwrap().policy;
        assert!(!ep.ingress.enforced, "no endpoint's policy changed");
        run(&h, r#"{"op":"host_policy.replace","direction":"ingress"}"#).unwrap();
        let t = h.snapshot();
        assert!(!t.endpoints.host_policy().ingress.enforced);
        assert!(t.endpoints.host_policy().ingress.map.is_empty());
        let e = run(&h, r#"{"op":"host_policy.replace","direction":"ingress","entries":[{"port":80,"action":"allow"}]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("entries[0].port"), "{e:?}");
    }

    #[test]
    fn table_errors_name_fields() {
        let h = handle();
        let cases = [
            (
                r#"{"op":"endpoint.upsert","id":3,"ifindex":13,"mac":"02:00:00:00:00:03","ipv4":"10.0.0.1","identity":1003}"#,
                "ipv4",
            ),
            (
                r#"{"op":"endpoint.upsert","id":3,"ifindex":11,"mac":"02:00:00:00:00:03","ipv4":"10.0.0.3","identity":1003}"#,
                "ifindex",
            ),
            (
                r#"{"op":"endpoint.upsert","id":3,"ifindex":13,"mac":"02:00:00:00:00:01","ipv4":"10.0.0.3","identity":1003}"#,
                "mac",
            ),
            (
                r#"{"op":"endpoint.upsert","id":3,"ifindex":13,"mac":"02:00:00:00:00:03","identity":1003}"#,
                "ipv4",
            ),
            (
                r#"{"op":"endpoint.upsert","id":3,"ifindex":13,"mac":"02:00:00:00:00:03","ipv4":"10.0.0.3","identity":0}"#,
                "identity",
            ),
            (
                r#"{"op":"policy.update","endpoint":99,"direction":"ingress"}"#,
                "endpoint",
            ),
            (
                r#"{"op":"service.upsert","frontend":{"addr":"10.96.0.1","port":0,"proto":"tcp"},"backends":[]}"#,
                "frontend.port",
            ),
            (
                r#"{"op":"service.upsert","frontend":{"addr":"10.96.0.1","port":80,"proto":"tcp"},"backends":[{"addr":"10.0.0.1","port":80},{"addr":"fd00::1","port":80}]}"#,
                "backends[1].addr",
            ),
            (
                r#"{"op":"service.upsert","frontend":{"addr":"10.96.0.1","port":80,"proto":"tcp"},"backends":[{"addr":"10.0.0.1","port":80},{"addr":"10.0.0.1","port":80}]}"#,
                "backends[1]",
            ),
            (
                r#"{"op":"ipcache.upsert","prefix":"10.0.0.0/8","identity":5,"tunnel_endpoint":"0.0.0.0"}"#,
                "tunnel_endpoint",
            ),
            (r#"{"op":"local_node.set","uplink_mtu":500}"#, "uplink_mtu"),
        ];
        let before = h.snapshot();
        for (line, field) in cases {
            let e = run(&h, line).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{line}: {}", e.message);
        }
        assert!(Arc::ptr_eq(&before, &h.snapshot()));
        run(&h, r#"{"op":"node.upsert","name":"b","underlay":"192.168.0.2","pod_cidrs":["10.2.0.0/24"]}"#).unwrap();
        let e = run(&h, r#"{"op":"node.upsert","name":"c","underlay":"192.168.0.3","pod_cidrs":["10.3.0.0/24","10.2.0.0/16"]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("pod_cidrs[1]"), "{}", e.message);
    }

    #[test]
    fn deletes_of_absent_things_change_nothing() {
        let h = handle();
        let before = h.snapshot();
        for line in [
            r#"{"op":"endpoint.delete","id":42}"#,
            r#"{"op":"ipcache.delete","prefix":"10.9.0.0/16"}"#,
            r#"{"op":"node.delete","name":"nope"}"#,
            r#"{"op":"service.delete","frontend":{"addr":"10.96.0.1","port":80,"proto":"tcp"}}"#,
        ] {
            assert!(!run(&h, line).unwrap().changed, "{line}");
        }
        // `update` publishes a new `Tables` even for a no-op, but it shares every table.
        let after = h.snapshot();
        assert!(Arc::ptr_eq(&before.endpoints, &after.endpoints));
        assert!(Arc::ptr_eq(&before.ipcache, &after.ipcache));
        assert!(Arc::ptr_eq(&before.nodes, &after.nodes));
        assert!(Arc::ptr_eq(&before.services, &after.services));
        assert_eq!(after.endpoints.len(), 2);
    }

    #[test]
    fn upserts_touch_only_their_table() {
        let h = handle();
        let before = h.snapshot();
        let a = run(&h, r#"{"op":"service.upsert","frontend":{"addr":"10.96.0.1","port":80,"proto":"tcp"},"backends":[{"addr":"10.0.0.1","port":8080}]}"#).unwrap();
        assert_eq!(a.detail["service_id"], 1);
        run(&h, r#"{"op":"ipcache.upsert","prefix":"10.2.0.5","identity":2001,"tunnel_endpoint":"192.168.0.2"}"#).unwrap();
        let after = h.snapshot();
        assert!(Arc::ptr_eq(&before.endpoints, &after.endpoints));
        assert!(Arc::ptr_eq(&before.nodes, &after.nodes));
        assert_eq!(after.services.len(), 1);
        assert_eq!(
            after.ipcache.identity_of("10.2.0.5".parse().unwrap()),
            Identity(2001)
        );
    }
}
