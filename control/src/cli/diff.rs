//! `flagella policy diff` and the preview of `flagella policy import --dry-run`: which flows
//! change verdict if a policy file were applied ([`policy_compiler::impact`]).
//!
//! Live, "before" is the cluster in etcd as the agents model it ([`super::policy::state_of`])
//! and "after" is the same listing with the file's keys written over it (exactly the keys
//! `policy import` would write, [`super::policy::prepare_import`]), so the preview is the
//! import's effect. Offline, "before" is --policies with --cluster, and "after" the same with
//! the file's policies replacing those of the same kind, namespace and name. Nothing is
//! written either way. The nodes' host policies are compared too (node labels from etcd's node
//! records, or the cluster file's).

use std::collections::BTreeMap;
use std::path::Path;

use policy_compiler::impact::{diff_with_hosts, ImpactChange};
use policy_compiler::model::{Policy, PolicyId};
use policy_compiler::trace::host_policies;
use policy_compiler::PolicyEngine;
use serde::Serialize;

use super::policy::{state_of, PolicyRef, PreparedImport};
use super::table::Table;
use super::trace::{read_cluster, read_policy_files};
use super::{CliError, Skipped};
use crate::schema::{self, ROOT};
use crate::store::Store;

/// What applying a file would change.
#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    /// The policies of the file (created or replaced).
    pub policies: Vec<PolicyRef>,
    /// Flow groups whose verdict changes, largest blast radius first.
    pub changes: Vec<ImpactChange>,
    /// The file's CIDR peers that would split an identity, and what it holds but is not
    /// enforced.
    pub warnings: Vec<String>,
}

/// The preview against etcd: the listing now, and with `prepared`'s writes over it.
pub async fn diff_live(
    store: &Store,
    prepared: &PreparedImport,
) -> Result<(DiffReport, Vec<Skipped>), CliError> {
    let (kvs, _) = store.list(ROOT).await?;
    let mut listing: BTreeMap<String, Vec<u8>> =
        kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    let now: Vec<(String, Vec<u8>)> = listing.clone().into_iter().collect();
    for (k, v) in &prepared.writes {
        listing.insert(k.clone(), v.clone());
    }
    let then: Vec<(String, Vec<u8>)> = listing.into_iter().collect();
    let (mut before, skipped) = state_of(&now);
    let (mut after, _) = state_of(&then);
    let (before_hosts, after_hosts) = (before.host_policies(), after.host_policies());
    let imported = &prepared.report.imported;
    let changes = diff_with_hosts(before.engine(), &before_hosts, after.engine(), &after_hosts);
    let report = DiffReport {
        policies: imported.clone(),
        changes,
        warnings: warnings(after.engine(), imported, &prepared.report.warnings),
    };
    Ok((report, skipped))
}

/// The preview offline: `policies` with `cluster`, and with the file's policies over them.
pub fn diff_offline(
    policies: &[std::path::PathBuf],
    cluster: &Path,
    prepared: &PreparedImport,
    new_policies: Vec<Policy>,
) -> Result<DiffReport, CliError> {
    let current = read_policy_files(policies)?;
    let cluster_name = cluster.display().to_string();
    let cluster = read_cluster(cluster)?;
    let mut next: BTreeMap<PolicyId, Policy> =
        current.iter().map(|p| (p.id.clone(), p.clone())).collect();
    for p in new_policies {
        next.insert(p.id.clone(), p);
    }
    let next: Vec<Policy> = next.into_values().collect();
    let build = |set: &[Policy]| {
        PolicyEngine::build(&cluster, set)
            .map_err(|e| CliError::Other(format!("{cluster_name}: {e}")))
    };
    let (mut before, mut after) = (build(&current)?, build(&next)?);
    let nodes = || cluster.nodes.iter().map(|n| (n.name.as_str(), &n.labels));
    let (before_hosts, after_hosts) = (
        host_policies(&mut before, nodes()),
        host_policies(&mut after, nodes()),
    );
    let imported = &prepared.report.imported;
    Ok(DiffReport {
        policies: imported.clone(),
        changes: diff_with_hosts(&before, &before_hosts, &after, &after_hosts),
        warnings: warnings(&after, imported, &prepared.report.warnings),
    })
}

/// The file's own warnings, and the splits its policies would make (of the cluster after).
fn warnings(after: &PolicyEngine, imported: &[PolicyRef], own: &[String]) -> Vec<String> {
    let is_imported = |id: &PolicyId| imported.iter().any(|p| p.key == schema::policy_key(id));
    own.iter()
        .cloned()
        .chain(
            after
                .split_warnings()
                .iter()
                .filter(|w| is_imported(&w.policy))
                .map(ToString::to_string),
        )
        .collect()
}

/// The report for people: one line per group, then a summary.
pub fn diff_text(r: &DiffReport, source: &str) -> String {
    if r.changes.is_empty() {
        return format!(
            "no flow changes verdict if the {} policies of {source} are applied\n",
            r.policies.len()
        );
    }
    let mut t = Table::new(&["CHANGE", "FROM", "PODS", "TO", "PODS", "PORT", "BECAUSE"]);
    for c in &r.changes {
        t.row(vec![
            c.change.to_string(),
            c.source.clone(),
            c.source_pods.to_string(),
            c.destination.clone(),
            c.destination_pods.to_string(),
            format!("{}/{}", c.ports_text(), c.protocol),
            c.because.join("; "),
        ]);
    }
    let flows: usize = r.changes.iter().map(|c| c.flows.len()).sum();
    format!(
        "{}{} groups ({flows} source/destination pairs) change verdict if the {} policies of \
         {source} are applied; -o json lists every pair\n",
        t.render(),
        r.changes.len(),
        r.policies.len()
    )
}
