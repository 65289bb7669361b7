//! Label selectors (`matchLabels` + `matchExpressions`), as Kubernetes defines them.
//!
//! A [`Selector`] is a conjunction of [`Requirement`]s; the empty selector matches every label
//! set. `matchLabels {k: v}` is the requirement `k In [v]`. Operators: `In` (key present with one
//! of the values), `NotIn` (key absent, or present with none of the values), `Exists`,
//! `DoesNotExist`. Requirements are kept sorted and deduplicated so that two selectors meaning
//! the same thing compare equal (the selector cache relies on it).
//!
//! Keys are normalised while parsing by a caller-given function: Cilium's source prefixes
//! (`k8s:`, `any:`) are stripped, and namespace selectors map `k` to
//! `io.cilium.k8s.namespace.labels.k` (see [`crate::labels`]).

use std::collections::BTreeSet;
use std::fmt;

use crate::doc::Node;
use crate::error::Error;
use crate::labels::Labels;

/// A selector operator.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

/// One condition on one key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub op: Operator,
}

impl Requirement {
    pub fn equals(key: impl Into<String>, value: impl Into<String>) -> Self {
        Requirement {
            key: key.into(),
            op: Operator::In([value.into()].into_iter().collect()),
        }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Operator::In(values) => value.is_some_and(|v| values.contains(v)),
            Operator::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A conjunction of requirements; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every label set.
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn from_requirements(reqs: impl IntoIterator<Item = Requirement>) -> Self {
        let mut requirements: Vec<Requirement> = reqs.into_iter().collect();
        requirements.sort();
        requirements.dedup();
        Selector { requirements }
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// True when some requirement constrains `key`.
    pub fn constrains(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| r.key == key)
    }

    /// This selector AND `other`.
    pub fn and(&self, other: &Selector) -> Selector {
        Selector::from_requirements(self.requirements.iter().chain(&other.requirements).cloned())
    }

    /// This selector AND `key = value`.
    pub fn and_equals(&self, key: &str, value: &str) -> Selector {
        self.and(&Selector::from_requirements([Requirement::equals(
            key, value,
        )]))
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Parses a `LabelSelector` object; `map_key` normalises every key.
    pub fn parse(node: Node<'_>, map_key: &dyn Fn(&str) -> String) -> Result<Selector, Error> {
        node.fields(&["matchLabels", "matchExpressions"], &[])?;
        let mut reqs = Vec::new();
        if let Some(labels) = node.with_field("matchLabels", |n| n.string_map())? {
            for (k, v) in labels {
                reqs.push(Requirement::equals(map_key(&k), v));
            }
        }
        if let Some(exprs) = node.with_field("matchExpressions", |n| {
            n.items(|e| parse_expression(e, map_key))
        })? {
            reqs.extend(exprs);
        }
        Ok(Selector::from_requirements(reqs))
    }
}

fn parse_expression(
    node: Node<'_>,
    map_key: &dyn Fn(&str) -> String,
) -> Result<Requirement, Error> {
    node.fields(&["key", "operator", "values"], &[])?;
    let key = node.required("key", "the label key", |n| n.str().map(map_key))?;
    let values: Option<BTreeSet<String>> = node.with_field("values", |n| {
        n.items(|v| v.str().map(str::to_string))
            .map(|v| v.into_iter().collect())
    })?;
    let values = values.unwrap_or_default();
    let op = node.required(
        "operator",
        "the operator (In, NotIn, Exists, DoesNotExist)",
        |n| {
            let op = n.str()?;
            let needs_values = matches!(op, "In" | "NotIn");
            match (needs_values, values.is_empty()) {
                (true, true) => {
                    return Err(n.error(format!("operator {op} needs a non-empty `values` list")))
                }
                (false, false) if matches!(op, "Exists" | "DoesNotExist") => {
                    return Err(n.error(format!("operator {op} takes no `values`; remove them")))
                }
                _ => {}
            }
            match op {
                "In" => Ok(Operator::In(values.clone())),
                "NotIn" => Ok(Operator::NotIn(values.clone())),
                "Exists" => Ok(Operator::Exists),
                "DoesNotExist" => Ok(Operator::DoesNotExist),
                other => Err(n.error(format!(
                    "unknown operator `{other}`; use In, NotIn, Exists or DoesNotExist"
                ))),
            }
        },
    )?;
    Ok(Requirement { key, op })
}

/// Strips Cilium's label-source prefixes that mean "a Kubernetes label" (`k8s:`, `any:`).
/// Other sources (`reserved:`, `cidr:`) are kept: no pod label carries them, so a selector on
/// them matches no pod.
pub fn strip_source(key: &str) -> String {
    key.strip_prefix("k8s:")
        .or_else(|| key.strip_prefix("any:"))
        .unwrap_or(key)
        .to_string()
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match &r.op {
                Operator::In(v) if v.len() == 1 => {
                    format!("{}={}", r.key, v.iter().next().map_or("", |s| s.as_str()))
                }
                Operator::In(v) => format!("{} in ({})", r.key, join(v)),
                Operator::NotIn(v) => format!("{} notin ({})", r.key, join(v)),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn join(v: &BTreeSet<String>) -> String {
    v.iter().cloned().collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::split_documents;

    fn parse(yaml: &str) -> Result<Selector, Error> {
        let docs = split_documents("t.yaml", yaml).unwrap();
        Selector::parse(Node::root(&docs[0]), &strip_source)
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().copied().collect()
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = parse("{}").unwrap();
        assert!(s.is_everything());
        assert!(s.matches(&Labels::new()));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = parse(
            "matchLabels: {app: web}\nmatchExpressions:\n- {key: tier, operator: In, values: [a, b]}\n",
        )
        .unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "c")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
    }

    #[test]
    fn not_in_matches_absent_keys() {
        let s =
            parse("matchExpressions:\n- {key: env, operator: NotIn, values: [prod]}\n").unwrap();
        assert!(s.matches(&Labels::new()));
        assert!(s.matches(&labels(&[("env", "dev")])));
        assert!(!s.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn exists_and_does_not_exist() {
        let e = parse("matchExpressions:\n- {key: x, operator: Exists}\n").unwrap();
        let d = parse("matchExpressions:\n- {key: x, operator: DoesNotExist}\n").unwrap();
        let with = labels(&[("x", "")]);
        assert!(e.matches(&with) && !d.matches(&with));
        assert!(!e.matches(&Labels::new()) && d.matches(&Labels::new()));
    }

    #[test]
    fn bad_expressions_are_refused() {
        let e = parse("matchExpressions:\n- {key: x, operator: In}\n").unwrap_err();
        assert!(
            e.to_string().contains("matchExpressions[0].operator"),
            "{e}"
        );
        let e =
            parse("matchExpressions:\n- {key: x, operator: Exists, values: [a]}\n").unwrap_err();
        assert!(e.to_string().contains("takes no `values`"), "{e}");
        let e =
            parse("matchExpressions:\n- {key: x, operator: Equals, values: [a]}\n").unwrap_err();
        assert!(e.to_string().contains("unknown operator"), "{e}");
    }

    #[test]
    fn cilium_source_prefixes_are_stripped() {
        let s = parse("matchLabels: {'k8s:app': web, 'any:tier': a}\n").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "a")])));
    }

    #[test]
    fn equal_meaning_equal_value() {
        let a = parse("matchLabels: {a: '1', b: '2'}\n").unwrap();
        let b = parse(
            "matchExpressions:\n- {key: b, operator: In, values: ['2']}\nmatchLabels: {a: '1'}\n",
        )
        .unwrap();
        assert_eq!(a, b);
    }
}
