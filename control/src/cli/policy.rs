//! `flagella policy import|get|delete|trace|diff` (the trace itself is [`super::trace`], the
//! diff [`super::diff`], a node's host policy [`super::host`]), and the
//! live cluster state `policy trace` and the object reports read.
//!
//! Import contract: the input is exactly what `kubectl get networkpolicies -A -o yaml` (or
//! `-o json`) prints, a CiliumNetworkPolicy/CiliumClusterwideNetworkPolicy manifest, or several
//! `---` documents of those. The whole input is validated with the policy compiler first
//! ([`policy_compiler::parse_policies`]: errors name the document and the field); then each
//! object is encoded as JSON and checked with the agent's own decoder under its schema key.
//! Only when every object passed is anything written, so a bad file writes nothing. The
//! objects are written in etcd transactions of at most [`MAX_TXN_OPS`] puts (etcd's default
//! `--max-txn-ops`); an input of up to that many policies therefore lands all at once.
//!
//! Stored values are the objects as the input holds them (server-side fields such as
//! `metadata.resourceVersion` included): etcd keeps what `kubectl -o json` prints.

use etcd_client::{Txn, TxnOp};
use policy_compiler::doc::split_documents;
use policy_compiler::impact::ImpactChange;
use policy_compiler::model::{Policy, PolicyId, PolicyKind};
use policy_compiler::parse_policies;
use serde::Serialize;
use serde_json::Value;

use std::io::Read;

use policy_compiler::trace::explain;

use super::args::{Output, PolicyVerb};
use super::render::{emit, warn};
use super::table::Table;
use super::{connect, diff, host, trace, CliError, Skipped};
use crate::schema::{self, ObjectKey, ROOT};
use crate::store::{Kv, Store};
use crate::sync::ClusterState;

/// Puts per etcd transaction (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// One policy as the CLI reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyRef {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub key: String,
}

impl From<&PolicyId> for PolicyRef {
    fn from(id: &PolicyId) -> Self {
        PolicyRef {
            kind: id.kind.as_str().to_string(),
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            key: schema::policy_key(id),
        }
    }
}

/// What `policy import` did (or would do, with `--dry-run`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub imported: Vec<PolicyRef>,
    /// What the policies contain but the dataplane does not enforce (L7 rules, FQDNs, ...),
    /// and the CIDR peers that split an identity.
    pub warnings: Vec<String>,
    pub dry_run: bool,
    /// `--dry-run`: the flows whose verdict would change ([`super::diff`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<ImpactChange>>,
}

/// A validated import: the keys and values to write, and the report.
#[derive(Clone, Debug)]
pub struct PreparedImport {
    pub writes: Vec<(String, Vec<u8>)>,
    /// The policies the writes hold, as the compiler reads them.
    pub policies: Vec<Policy>,
    pub report: ImportReport,
}

/// Validates an import input (`source` names it in errors). Writes nothing.
pub fn prepare_import(source: &str, text: &str) -> Result<PreparedImport, CliError> {
    let parsed = parse_policies(source, text).map_err(|e| CliError::Input(e.to_string()))?;
    // parse_policies reads the same documents, in order, one policy per document.
    let documents = split_documents(source, text).map_err(|e| CliError::Input(e.to_string()))?;
    if documents.len() != parsed.policies.len() {
        return Err(CliError::Other(format!(
            "{source}: {} documents but {} policies; this is a bug in flagella, please report it",
            documents.len(),
            parsed.policies.len()
        )));
    }
    let mut writes = Vec::with_capacity(documents.len());
    let mut imported = Vec::with_capacity(documents.len());
    for (doc, policy) in documents.iter().zip(&parsed.policies) {
        let key = schema::policy_key(&policy.id);
        let value = serde_json::to_vec(&doc.value)
            .map_err(|e| CliError::Input(format!("{}: cannot encode as JSON: {e}", doc.doc)))?;
        // The agent's own check: what we write, every agent accepts.
        schema::decode(&key, &value)
            .map_err(|e| CliError::Input(format!("{} ({}): {e}", doc.doc, policy.id)))?;
        writes.push((key, value));
        imported.push(PolicyRef::from(&policy.id));
    }
    Ok(PreparedImport {
        writes,
        policies: parsed.policies,
        report: ImportReport {
            imported,
            warnings: parsed.warnings.iter().map(|w| w.to_string()).collect(),
            dry_run: false,
            changes: None,
        },
    })
}

/// The imported policies' CIDR peers that split an identity of the cluster now in etcd
/// (`policy_compiler::splits`): computed after the write, from the agents' own model.
async fn split_warnings(store: &Store, imported: &[PolicyRef]) -> Result<Vec<String>, CliError> {
    let (state, _) = live_state(store).await?;
    let imported_key = |id: &PolicyId| imported.iter().any(|p| p.key == schema::policy_key(id));
    Ok(state
        .engine()
        .split_warnings()
        .iter()
        .filter(|w| imported_key(&w.policy))
        .map(ToString::to_string)
        .collect())
}

/// Writes `writes` in transactions of at most [`MAX_TXN_OPS`] puts.
pub async fn write_all(store: &Store, writes: &[(String, Vec<u8>)]) -> Result<(), CliError> {
    for chunk in writes.chunks(MAX_TXN_OPS) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), None))
            .collect();
        store
            .client()
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(crate::store::StoreError::etcd("import transaction"))?;
    }
    Ok(())
}

/// The kinds a `--kind` flag can name.
pub fn kind_matches(id: &PolicyId, kind: Option<PolicyKind>) -> bool {
    kind.is_none_or(|k| k == id.kind)
}

/// Does `selector` (`namespace/name`, or `name` for a cluster-wide policy) name `id`?
pub fn selector_matches(id: &PolicyId, selector: &str) -> bool {
    match selector.split_once('/') {
        Some((ns, name)) => id.namespace.as_deref() == Some(ns) && id.name == name,
        None => id.namespace.is_none() && id.name == selector,
    }
}

/// A stored policy: its id, key and the object itself.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredPolicy {
    pub id: PolicyId,
    pub key: String,
    pub object: Value,
}

/// Policy keys (well-formed keys; values not decoded) under `policies/`.
async fn policy_keys(store: &Store) -> Result<Vec<(PolicyId, Kv)>, CliError> {
    let (kvs, _) = store.list(&format!("{ROOT}policies/")).await?;
    Ok(kvs
        .into_iter()
        .filter_map(|kv| match schema::parse_key(&kv.key) {
            Ok(ObjectKey::Policy(id)) => Some((id, kv)),
            _ => None,
        })
        .collect())
}

/// `policy get [SELECTOR]`: the matching policies (all without a selector), and the keys
/// skipped because their value does not decode. A selector that matches nothing is
/// [`CliError::NotFound`].
pub async fn get(
    store: &Store,
    selector: Option<&str>,
    kind: Option<PolicyKind>,
) -> Result<(Vec<StoredPolicy>, Vec<Skipped>), CliError> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (id, kv) in policy_keys(store).await? {
        if !kind_matches(&id, kind) || !selector.is_none_or(|s| selector_matches(&id, s)) {
            continue;
        }
        if let Err(e) = schema::decode(&kv.key, &kv.value) {
            skipped.push(Skipped::from(&e));
            continue;
        }
        match serde_json::from_slice(&kv.value) {
            Ok(object) => out.push(StoredPolicy {
                id,
                key: kv.key,
                object,
            }),
            Err(e) => skipped.push(Skipped {
                key: kv.key,
                reason: e.to_string(),
            }),
        }
    }
    if let (Some(s), true) = (selector, out.is_empty() && skipped.is_empty()) {
        return Err(CliError::NotFound {
            what: format!("policy {s}"),
            hint: "`flagella policy get` lists the stored policies".into(),
        });
    }
    Ok((out, skipped))
}

/// `policy delete SELECTOR`: deletes the one matching policy key (even one whose value does not
/// decode, so that a bad value can be removed).
pub async fn delete(
    store: &Store,
    selector: &str,
    kind: Option<PolicyKind>,
) -> Result<PolicyRef, CliError> {
    let matches: Vec<PolicyId> = policy_keys(store)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| kind_matches(id, kind) && selector_matches(id, selector))
        .collect();
    match matches.as_slice() {
        [] => Err(CliError::NotFound {
            what: format!("policy {selector}"),
            hint: "`flagella policy get` lists the stored policies".into(),
        }),
        [id] => {
            store.delete(&schema::policy_key(id)).await?;
            Ok(PolicyRef::from(id))
        }
        several => Err(CliError::Ambiguous {
            what: format!("policy {selector}"),
            candidates: several
                .iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// A `kind: List` of objects, as `kubectl get -o json` prints several (and `policy import`
/// reads back).
pub fn as_list(policies: &[StoredPolicy]) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": policies.iter().map(|p| p.object.clone()).collect::<Vec<_>>(),
    })
}

/// The cluster as the agents see it: every key under [`ROOT`] fed to a [`ClusterState`] (the
/// agent's model) for no node in particular. Keys it refuses are returned as skipped.
pub async fn live_state(store: &Store) -> Result<(ClusterState, Vec<Skipped>), CliError> {
    let (kvs, _) = store.list(ROOT).await?;
    let listing: Vec<(String, Vec<u8>)> = kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    Ok(state_of(&listing))
}

/// The agents' model of a listing of keys under [`ROOT`], for no node in particular, with the
/// keys it refused.
pub fn state_of(listing: &[(String, Vec<u8>)]) -> (ClusterState, Vec<Skipped>) {
    let mut state = ClusterState::new("");
    state.set_quiet(true);
    state.put_all(listing);
    // The engine computes the per-endpoint maps at commit; the changes meant for a dataplane
    // are not needed here.
    let _ = state.commit();
    let skipped = state
        .rejected()
        .iter()
        .map(|(key, reason)| Skipped {
            key: key.clone(),
            reason: reason.clone(),
        })
        .collect();
    (state, skipped)
}

// ---- the command ----------------------------------------------------------------------

fn read_input(file: &str) -> Result<(String, String), CliError> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| CliError::Read {
                path: "stdin".into(),
                source,
            })?;
        return Ok(("stdin".into(), text));
    }
    let text = std::fs::read_to_string(file).map_err(|source| CliError::Read {
        path: file.to_string(),
        source,
    })?;
    Ok((file.to_string(), text))
}

fn policy_table(refs: impl IntoIterator<Item = PolicyId>) -> String {
    let mut t = Table::new(&["KIND", "NAMESPACE", "NAME"]);
    for id in refs {
        t.row(vec![
            id.kind.as_str().to_string(),
            id.namespace.unwrap_or_else(|| "-".into()),
            id.name,
        ]);
    }
    t.render()
}

pub async fn run(verb: PolicyVerb, etcd: &[String], out: Output) -> Result<(), CliError> {
    match verb {
        PolicyVerb::Import { file, dry_run } => {
            let (source, text) = read_input(&file)?;
            let mut prepared = prepare_import(&source, &text)?;
            prepared.report.dry_run = dry_run;
            let store = connect(etcd).await?;
            if dry_run {
                let (preview, skipped) = diff::diff_live(&store, &prepared).await?;
                warn(&skipped);
                prepared.report.warnings = preview.warnings;
                prepared.report.changes = Some(preview.changes);
            } else {
                write_all(&store, &prepared.writes).await?;
                let splits = split_warnings(&store, &prepared.report.imported).await?;
                prepared.report.warnings.extend(splits);
            }
            let report = &prepared.report;
            if out == Output::Text {
                for w in &report.warnings {
                    eprintln!("warning: {w}");
                }
            }
            emit(out, report, || {
                let mut t = Table::new(&["KIND", "NAMESPACE", "NAME", "KEY"]);
                for p in &report.imported {
                    t.row(vec![
                        p.kind.clone(),
                        p.namespace.clone().unwrap_or_else(|| "-".into()),
                        p.name.clone(),
                        p.key.clone(),
                    ]);
                }
                let verb = if dry_run { "would import" } else { "imported" };
                let preview = report
                    .changes
                    .as_ref()
                    .map(|changes| {
                        let r = diff::DiffReport {
                            policies: report.imported.clone(),
                            changes: changes.clone(),
                            warnings: Vec::new(),
                        };
                        format!("\n{}", diff::diff_text(&r, &source))
                    })
                    .unwrap_or_default();
                format!(
                    "{}{verb} {} policies from {source}\n{preview}",
                    t.render(),
                    report.imported.len()
                )
            })
        }
        PolicyVerb::Diff(args) => {
            let (source, text) = read_input(&args.file)?;
            let prepared = prepare_import(&source, &text)?;
            let report = match &args.cluster {
                None => {
                    let store = connect(etcd).await?;
                    let (report, skipped) = diff::diff_live(&store, &prepared).await?;
                    warn(&skipped);
                    report
                }
                Some(cluster) => {
                    let policies = prepared.policies.clone();
                    diff::diff_offline(&args.policies, cluster, &prepared, policies)?
                }
            };
            if out == Output::Text {
                for w in &report.warnings {
                    eprintln!("warning: {w}");
                }
            }
            emit(out, &report, || diff::diff_text(&report, &source))
        }
        PolicyVerb::Get {
            host: Some(node),
            policies,
            cluster,
            ..
        } => {
            let view = match cluster {
                Some(cluster) => host::get_offline(&policies, &cluster, &node)?,
                None => {
                    let store = connect(etcd).await?;
                    let (view, skipped) = host::get(&store, &node).await?;
                    warn(&skipped);
                    view
                }
            };
            emit(out, &view, || host::text(&view))
        }
        PolicyVerb::Get {
            selector,
            kind,
            host: None,
            ..
        } => {
            let store = connect(etcd).await?;
            let (found, skipped) = get(&store, selector.as_deref(), kind.map(Into::into)).await?;
            warn(&skipped);
            match (&selector, found.as_slice()) {
                (Some(_), [one]) => emit(out, &one.object, || {
                    format!(
                        "{}\n",
                        serde_json::to_string_pretty(&one.object).unwrap_or_default()
                    )
                }),
                (Some(_), several) if out == Output::Text && !several.is_empty() => {
                    let text: Vec<String> = several
                        .iter()
                        .map(|p| serde_json::to_string_pretty(&p.object).unwrap_or_default())
                        .collect();
                    emit(out, &(), || format!("{}\n", text.join("\n---\n")))
                }
                _ => emit(out, &as_list(&found), || {
                    policy_table(found.iter().map(|p| p.id.clone()))
                }),
            }
        }
        PolicyVerb::Delete { selector, kind } => {
            let store = connect(etcd).await?;
            let deleted = delete(&store, &selector, kind.map(Into::into)).await?;
            emit(out, &deleted, || {
                format!("deleted {} ({})\n", deleted.name, deleted.key)
            })
        }
        PolicyVerb::Trace(args) => {
            let results = if args.policies.is_empty() {
                trace::trace_live(&args, etcd).await?
            } else {
                trace::trace_offline(&args)?
            };
            emit(out, &results, || {
                results
                    .iter()
                    .map(|r| format!("{}\n", explain(r)))
                    .collect::<String>()
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    const LIST: &str = r#"apiVersion: v1
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    name: deny-all
    namespace: prod
    resourceVersion: "1234"
    uid: 0b0c5a4e-0000-0000-0000-000000000000
    creationTimestamp: "2024-01-01T00:00:00Z"
  spec:
    podSelector: {}
    policyTypes: [Ingress]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    name: allow-web
    namespace: prod
  spec:
    podSelector: {matchLabels: {app: web}}
    ingress:
    - ports: [{port: 80, protocol: TCP}]
kind: List
metadata:
  resourceVersion: ""
"#;

    #[test]
    fn a_kubectl_list_becomes_one_key_per_policy() {
        let p = prepare_import("np.yaml", LIST).unwrap();
        let keys: Vec<&str> = p.writes.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "/flagella/v1/policies/NetworkPolicy/prod/deny-all",
                "/flagella/v1/policies/NetworkPolicy/prod/allow-web"
            ]
        );
        // Each value is the object itself, as JSON.
        let v: Value = serde_json::from_slice(&p.writes[0].1).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "1234");
        assert_eq!(v["kind"], "NetworkPolicy");
    }

    #[test]
    fn a_bad_document_names_itself_and_its_field() {
        let bad = LIST.replace("port: 80", "port: 800000");
        let e = prepare_import("np.yaml", &bad).unwrap_err().to_string();
        assert!(e.contains("np.yaml, document 2"), "{e}");
        assert!(e.contains("spec.ingress[0].ports[0]"), "{e}");
        assert!(e.contains("nothing was written"), "{e}");
    }

    #[test]
    fn selectors() {
        let np = PolicyId {
            kind: PolicyKind::NetworkPolicy,
            namespace: Some("a".into()),
            name: "p".into(),
        };
        let ccnp = PolicyId {
            kind: PolicyKind::CiliumClusterwideNetworkPolicy,
            namespace: None,
            name: "p".into(),
        };
        assert!(selector_matches(&np, "a/p"));
        assert!(!selector_matches(&np, "p"));
        assert!(selector_matches(&ccnp, "p"));
        assert!(!selector_matches(&ccnp, "a/p"));
        assert!(kind_matches(&np, None));
        assert!(!kind_matches(&np, Some(PolicyKind::CiliumNetworkPolicy)));
    }
}
