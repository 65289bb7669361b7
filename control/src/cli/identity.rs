//! `flagella identity list|get`: the reserved identities and those allocated in etcd for
//! label sets.

use std::collections::BTreeMap;

use dataplane::Identity;
use serde::Serialize;

use super::args::{IdentityVerb, Output};
use super::render::{emit, warn};
use super::table::Table;
use super::{connect, labels_text, list_decoded, CliError, Skipped};
use crate::identity::FIRST_IDENTITY;
use crate::schema::{self, Object, ObjectKey};
use crate::store::Store;

/// One security identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IdentityInfo {
    pub id: u32,
    pub labels: BTreeMap<String, String>,
    /// Reserved identities (host, world, ...) are the same on every node and not in etcd.
    pub reserved: bool,
}

/// The reserved identities, as `reserved:<name>` labels.
pub fn reserved_identities() -> Vec<IdentityInfo> {
    (1..FIRST_IDENTITY)
        .filter_map(|n| {
            let name = Identity(n).reserved_name()?;
            Some(IdentityInfo {
                id: n,
                labels: BTreeMap::from([(format!("reserved:{name}"), String::new())]),
                reserved: true,
            })
        })
        .collect()
}

/// Reserved identities, then every allocated one, by number.
pub async fn identities(store: &Store) -> Result<(Vec<IdentityInfo>, Vec<Skipped>), CliError> {
    let (objects, skipped) = list_decoded(store, "identities/id/").await?;
    let mut out = reserved_identities();
    out.extend(objects.into_iter().filter_map(|(_, o)| match o {
        Object::Identity(id, spec) => Some(IdentityInfo {
            id,
            labels: spec.labels,
            reserved: false,
        }),
        _ => None,
    }));
    out.sort_by_key(|i| i.id);
    Ok((out, skipped))
}

/// `identity get N`.
pub async fn identity(store: &Store, id: u32) -> Result<IdentityInfo, CliError> {
    let not_found = || CliError::NotFound {
        what: format!("identity {id}"),
        hint: "`flagella identity list` lists the reserved and allocated identities".into(),
    };
    if id < FIRST_IDENTITY {
        return reserved_identities()
            .into_iter()
            .find(|i| i.id == id)
            .ok_or_else(not_found);
    }
    let key = ObjectKey::Identity(id).to_key();
    let kv = store.get(&key).await?.ok_or_else(not_found)?;
    match schema::decode(&key, &kv.value) {
        Ok(Object::Identity(id, spec)) => Ok(IdentityInfo {
            id,
            labels: spec.labels,
            reserved: false,
        }),
        Ok(_) => Err(not_found()),
        Err(e) => Err(CliError::Other(format!(
            "{e}; an agent reallocates it once the key is deleted"
        ))),
    }
}

pub async fn run(verb: IdentityVerb, etcd: &[String], out: Output) -> Result<(), CliError> {
    let store = connect(etcd).await?;
    let ids = match verb {
        IdentityVerb::List => {
            let (ids, skipped) = identities(&store).await?;
            warn(&skipped);
            ids
        }
        IdentityVerb::Get { id } => vec![identity(&store, id).await?],
    };
    let text = || {
        let mut t = Table::new(&["ID", "LABELS"]);
        for i in &ids {
            let labels = if i.reserved {
                i.labels.keys().cloned().collect::<Vec<_>>().join(",")
            } else {
                labels_text(&i.labels)
            };
            t.row(vec![i.id.to_string(), labels]);
        }
        t.render()
    };
    match ids.as_slice() {
        [one] if out == Output::Json => emit(out, one, text),
        _ => emit(out, &ids, text),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn reserved_identities_are_listed() {
        let r = reserved_identities();
        assert!(r
            .iter()
            .any(|i| i.id == 2 && i.labels.contains_key("reserved:world")));
        assert!(r.iter().all(|i| i.reserved && i.id < FIRST_IDENTITY));
    }
}
