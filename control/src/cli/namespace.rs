//! `flagella namespace list|upsert`: namespaces and their labels (part of their pods'
//! identities; an endpoint needs its namespace to exist).

use std::collections::BTreeMap;

use serde::Serialize;

use super::args::{NamespaceVerb, Output};
use super::render::{emit, warn};
use super::table::Table;
use super::{connect, labels_text, list_decoded, put_validated, CliError, Skipped};
use crate::schema::{NamespaceSpec, Object, ObjectKey};
use crate::store::Store;

/// One namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// `namespace upsert NAME`: writes the namespace (its labels are part of its pods' identities,
/// `io.cilium.k8s.namespace.labels.*`). Endpoints of a namespace that does not exist are
/// refused by the agents until it is written.
pub async fn upsert_namespace(
    store: &Store,
    name: &str,
    labels: BTreeMap<String, String>,
) -> Result<NamespaceInfo, CliError> {
    let key = ObjectKey::Namespace(name.to_string()).to_key();
    let spec = NamespaceSpec { labels };
    put_validated(store, &key, &spec).await?;
    Ok(NamespaceInfo {
        name: name.to_string(),
        labels: spec.labels,
    })
}

/// Every namespace, sorted by name.
pub async fn namespaces(store: &Store) -> Result<(Vec<NamespaceInfo>, Vec<Skipped>), CliError> {
    let (objects, skipped) = list_decoded(store, "namespaces/").await?;
    let out = objects
        .into_iter()
        .filter_map(|(_, o)| match o {
            Object::Namespace(name, spec) => Some(NamespaceInfo {
                name,
                labels: spec.labels,
            }),
            _ => None,
        })
        .collect();
    Ok((out, skipped))
}

pub async fn run(verb: NamespaceVerb, etcd: &[String], out: Output) -> Result<(), CliError> {
    let store = connect(etcd).await?;
    match verb {
        NamespaceVerb::Upsert { name, labels } => {
            let ns = upsert_namespace(&store, &name, labels).await?;
            emit(out, &ns, || format!("namespace {} written\n", ns.name))
        }
        NamespaceVerb::List => {
            let (list, skipped) = namespaces(&store).await?;
            warn(&skipped);
            emit(out, &list, || {
                let mut t = Table::new(&["NAME", "LABELS"]);
                for ns in &list {
                    t.row(vec![ns.name.clone(), labels_text(&ns.labels)]);
                }
                t.render()
            })
        }
    }
}
