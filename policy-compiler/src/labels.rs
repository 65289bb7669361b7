//! Label sets, and how a pod's identity labels are built (as Cilium builds them).
//!
//! A pod's identity label set is its own labels plus:
//! - `io.kubernetes.pod.namespace = <namespace>` ([`NAMESPACE_LABEL`]);
//! - `io.cilium.k8s.namespace.labels.<key> = <value>` for every label of its namespace
//!   ([`NAMESPACE_LABELS_PREFIX`]);
//! - `io.cilium.k8s.policy.serviceaccount = <name>` when the pod runs under a service account
//!   ([`SERVICE_ACCOUNT_LABEL`], Cilium's `k8s:io.cilium.k8s.policy.serviceaccount`);
//!
//! so that a namespace or service-account selector becomes an ordinary selector on the pod's
//! identity labels, and changing a namespace's labels (or a pod's service account) changes the
//! identity of the pods concerned. Keys are stored without
//! Cilium's source prefix (`k8s:`): all pod labels come from Kubernetes. Pod labels that would
//! collide with these reserved keys are refused when the cluster is read.
//!
//! [`Labels`] is the workspace's one label-set type: the compiler's identity table and the node
//! agent's cluster-wide identity allocator (`control::identity`) both key on it. Its JSON form
//! is an object in key order (the canonical text the agent puts in etcd keys).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The label holding a pod's namespace (Cilium: `k8s:io.kubernetes.pod.namespace`).
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Prefix under which the namespace's labels are folded into a pod's identity labels.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// The label holding a pod's service account (Cilium: `k8s:io.cilium.k8s.policy.serviceaccount`).
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
/// The label Kubernetes puts on every namespace (its name), added when absent.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A sorted set of `key=value` labels. Sorted so that equal sets hash and compare equal, which
/// is what makes identities deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The identity labels of a pod in namespace `namespace` whose namespace carries
    /// `namespace_labels`, running under `service_account` if any (see the module doc).
    pub fn for_pod(
        pod_labels: &Labels,
        namespace: &str,
        namespace_labels: &Labels,
        service_account: Option<&str>,
    ) -> Labels {
        let mut out = pod_labels.clone();
        out.insert(NAMESPACE_LABEL, namespace);
        if let Some(sa) = service_account {
            out.insert(SERVICE_ACCOUNT_LABEL, sa);
        }
        for (k, v) in namespace_labels.iter() {
            out.insert(format!("{NAMESPACE_LABELS_PREFIX}{k}"), v);
        }
        out
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Labels(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        Labels(map)
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(labels: Labels) -> Self {
        labels.0
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// True when a pod label key would collide with the labels the compiler adds (a pod that could
/// set them would pose as another namespace's or service account's pod).
pub fn is_reserved_key(key: &str) -> bool {
    key == NAMESPACE_LABEL
        || key == SERVICE_ACCOUNT_LABEL
        || key.starts_with(NAMESPACE_LABELS_PREFIX)
}

/// The message for a pod label that uses a reserved key (what to do instead).
pub const RESERVED_KEY_HINT: &str = "this key is reserved for labels Flagella derives from the \
     namespace and the service account; rename it (set the service account with \
     serviceAccountName / --service-account)";

/// Checks a service account name as Kubernetes does (a DNS subdomain: 1..=253 characters,
/// lower-case letters, digits, `-` and `.`, starting and ending with a letter or digit).
pub fn check_service_account(name: &str) -> Result<(), String> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = (1..=253).contains(&name.len())
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && name.starts_with(alnum)
        && name.ends_with(alnum);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a service account name: use 1..=253 lower-case letters, digits, `-` \
             and `.`, starting and ending with a letter or digit (e.g. `web-frontend`)",
            name.chars().take(64).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_labels_fold_in_namespace() {
        let pod: Labels = [("app", "web")].into_iter().collect();
        let ns: Labels = [("team", "blue")].into_iter().collect();
        let l = Labels::for_pod(&pod, "x", &ns, None);
        assert_eq!(l.get("app"), Some("web"));
        assert_eq!(l.get(NAMESPACE_LABEL), Some("x"));
        assert_eq!(l.get("io.cilium.k8s.namespace.labels.team"), Some("blue"));
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn the_service_account_is_an_identity_label() {
        let pod: Labels = [("app", "web")].into_iter().collect();
        let l = Labels::for_pod(&pod, "x", &Labels::new(), Some("frontend"));
        assert_eq!(
            l.get("io.cilium.k8s.policy.serviceaccount"),
            Some("frontend")
        );
        assert_ne!(l, Labels::for_pod(&pod, "x", &Labels::new(), None));
    }

    #[test]
    fn service_account_names() {
        assert!(check_service_account("default").is_ok());
        assert!(check_service_account("web-frontend.v2").is_ok());
        for bad in ["", "Web", "-a", "a-", "a_b", "a b", &"a".repeat(254)] {
            assert!(check_service_account(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn equal_sets_are_equal_whatever_the_order() {
        let a: Labels = [("a", "1"), ("b", "2")].into_iter().collect();
        let b: Labels = [("b", "2"), ("a", "1")].into_iter().collect();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "a=1,b=2");
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"a":"1","b":"2"}"#);
    }

    #[test]
    fn reserved_keys() {
        assert!(is_reserved_key("io.kubernetes.pod.namespace"));
        assert!(is_reserved_key("io.cilium.k8s.namespace.labels.x"));
        assert!(is_reserved_key("io.cilium.k8s.policy.serviceaccount"));
        assert!(!is_reserved_key("app"));
    }
}
