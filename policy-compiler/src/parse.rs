//! Entry point of policy parsing: text -> documents -> [`Policy`] objects, dispatched on
//! `apiVersion` and `kind`.
//!
//! Accepted kinds: `networking.k8s.io/v1 NetworkPolicy`, `cilium.io/v2 CiliumNetworkPolicy`,
//! `cilium.io/v2 CiliumClusterwideNetworkPolicy`. Any other kind is an error (a file of
//! policies that silently skipped an object would enforce less than its author wrote).
//! Two objects with the same kind, namespace and name in one call are an error.

use std::collections::HashMap;

use crate::doc::{split_documents, Node};
use crate::error::{DocRef, Error, Warning};
use crate::model::{Policy, PolicyId};

/// The policies of one input, and the warnings about what they contain but is not enforced.
#[derive(Debug, Clone, Default)]
pub struct ParsedPolicies {
    pub policies: Vec<Policy>,
    pub warnings: Vec<Warning>,
}

/// Parses every policy in `text`; `source` names the input in errors (usually the file name).
pub fn parse_policies(source: &str, text: &str) -> Result<ParsedPolicies, Error> {
    let mut out = ParsedPolicies::default();
    let mut seen: HashMap<PolicyId, DocRef> = HashMap::new();
    for mut document in split_documents(source, text)? {
        let mut warnings = Vec::new();
        let policy = parse_object(&mut document, &mut warnings)?;
        if let Some(first) = seen.get(&policy.id) {
            return Err(Error::Duplicate {
                doc: document.doc.clone(),
                what: policy.id.to_string(),
                first: Box::new(first.clone()),
            });
        }
        seen.insert(policy.id.clone(), document.doc.clone());
        out.policies.push(policy);
        out.warnings.extend(warnings);
    }
    Ok(out)
}

fn parse_object(
    document: &mut crate::doc::Document,
    warnings: &mut Vec<Warning>,
) -> Result<Policy, Error> {
    let (api, kind) = {
        let root = Node::root(document);
        if !root.value.is_object() {
            return Err(root.error(format!(
                "expected a policy object, found {}",
                crate::doc::kind_of(root.value)
            )));
        }
        let api = root.required("apiVersion", "apiVersion", |n| n.str().map(str::to_string))?;
        let kind = root.required("kind", "kind", |n| n.str().map(str::to_string))?;
        (api, kind)
    };
    // Name the object in every later error.
    let name = document
        .value
        .get("metadata")
        .and_then(|m| {
            let name = m.get("name")?.as_str()?;
            Some(match m.get("namespace").and_then(|n| n.as_str()) {
                Some(ns) => format!("{ns}/{name}"),
                None => name.to_string(),
            })
        })
        .unwrap_or_else(|| "(unnamed)".into());
    document.doc.object = Some(format!("{kind} {name}"));
    let root = Node::root(document);
    let known = ["apiVersion", "kind", "metadata", "spec", "specs", "status"];
    match (api.as_str(), kind.as_str()) {
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            root.fields(&["apiVersion", "kind", "metadata", "spec", "status"], &[])?;
            crate::k8s::parse_network_policy(root, warnings)
        }
        ("cilium.io/v2", "CiliumNetworkPolicy") => {
            root.fields(&known, &[])?;
            crate::cilium::parse_cilium_policy(root, false, warnings)
        }
        ("cilium.io/v2", "CiliumClusterwideNetworkPolicy") => {
            root.fields(&known, &[])?;
            crate::cilium::parse_cilium_policy(root, true, warnings)
        }
        _ => Err(Error::field(
            &document.doc,
            "kind",
            format!(
                "`{api} {kind}` is not a policy Flagella reads; expected networking.k8s.io/v1 \
                 NetworkPolicy, cilium.io/v2 CiliumNetworkPolicy or cilium.io/v2 \
                 CiliumClusterwideNetworkPolicy"
            ),
        )),
    }
}
