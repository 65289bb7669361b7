//! What the Kubernetes ([`crate::k8s`]) and Cilium ([`crate::cilium`]) readers share: an
//! object's metadata, the namespace assumed when none is written, and CIDRs with their
//! `except` blocks.
//!
//! Layering: [`crate::parse`] dispatches to `k8s` and `cilium`; both use this module and
//! neither imports the other or `parse` (a test checks the module graph has no cycle).

use dataplane::Prefix;

use crate::doc::Node;
use crate::error::Error;

/// Namespace assumed for namespaced objects that name none (what `kubectl apply` would do in
/// the default context).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Reads `metadata.namespace` and `metadata.name`. Other metadata (labels, annotations, uid,
/// ...) describes the object, not the policy, and is accepted as is.
pub(crate) fn metadata(
    root: Node<'_>,
    namespaced: bool,
) -> Result<(Option<String>, String), Error> {
    root.required("metadata", "metadata with a name", |m| {
        if !m.value.is_object() {
            return Err(m.error("expected an object with `name`"));
        }
        let name = m.required("name", "the policy name", |n| {
            let s = n.str()?;
            if s.is_empty() {
                return Err(n.error("the policy name is empty"));
            }
            Ok(s.to_string())
        })?;
        let namespace = m.with_field("namespace", |n| n.str().map(str::to_string))?;
        if !namespaced && namespace.is_some() {
            return Err(Error::field(
                m.doc,
                &m.child_path("namespace"),
                "a cluster-wide policy has no namespace; remove it",
            ));
        }
        Ok((namespace, name))
    })
}

/// Parses a CIDR; a bare address is refused (the APIs require the `/len`).
pub(crate) fn parse_cidr(n: Node<'_>) -> Result<Prefix, Error> {
    let s = n.str()?;
    if !s.contains('/') {
        return Err(n.error(format!(
            "`{s}` has no prefix length; write it as a CIDR, e.g. {s}/32"
        )));
    }
    s.parse::<Prefix>().map_err(|e| n.error(e.to_string()))
}

/// Every `except` must lie inside `cidr`, as the API requires.
pub(crate) fn check_except(n: Node<'_>, cidr: &Prefix, except: &[Prefix]) -> Result<(), Error> {
    for e in except {
        if !cidr.covers(e) {
            return Err(n.error(format!(
                "except {e} is not inside cidr {cidr}; every except block must be a sub-range of the cidr"
            )));
        }
    }
    Ok(())
}
