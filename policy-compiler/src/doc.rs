//! Splitting an input text into documents, and a path-tracking reader over them.
//!
//! Accepted inputs: one JSON value, or YAML with one or more `---`-separated documents. A
//! document of `kind: List` (or a top-level JSON/YAML array) is expanded into its items, each
//! numbered on its own. Empty YAML documents are skipped.
//!
//! [`Node`] is how the parsers read a document: every access knows its field path, so every
//! error can name it, and [`Node::fields`] refuses fields that are not in the schema instead of
//! ignoring them.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{DocRef, Error};

/// One document of an input, ready to be read.
#[derive(Debug, Clone)]
pub struct Document {
    pub doc: DocRef,
    pub value: Value,
}

/// Splits `text` (named `source` in errors) into documents.
pub fn split_documents(source: &str, text: &str) -> Result<Vec<Document>, Error> {
    let raw = if looks_like_json(text) {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Syntax {
            source_name: source.to_string(),
            format: "JSON",
            reason: e.to_string(),
        })?;
        vec![v]
    } else {
        let mut out = Vec::new();
        for de in serde_yaml::Deserializer::from_str(text) {
            let v = Value::deserialize(de).map_err(|e| Error::Syntax {
                source_name: source.to_string(),
                format: "YAML",
                reason: e.to_string(),
            })?;
            out.push(v);
        }
        out
    };
    let mut docs = Vec::new();
    for v in raw {
        expand(source, v, &mut docs);
    }
    Ok(docs)
}

fn looks_like_json(text: &str) -> bool {
    matches!(text.trim_start().chars().next(), Some('{') | Some('['))
}

/// Pushes `v`, or its items when it is a list, numbering documents from 1.
fn expand(source: &str, v: Value, out: &mut Vec<Document>) {
    match v {
        Value::Null => {}
        Value::Array(items) => {
            for item in items {
                expand(source, item, out);
            }
        }
        Value::Object(mut map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
            if let Some(Value::Array(items)) = map.remove("items") {
                for item in items {
                    expand(source, item, out);
                }
            }
        }
        other => {
            let index = out.len() + 1;
            out.push(Document {
                doc: DocRef::new(source, index),
                value: other,
            });
        }
    }
}

/// A value inside a document, with its field path.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub value: &'a Value,
    pub doc: &'a DocRef,
    path: &'a str,
}

impl<'a> Node<'a> {
    pub fn root(doc: &'a Document) -> Self {
        Node {
            value: &doc.value,
            doc: &doc.doc,
            path: "",
        }
    }

    pub fn path(&self) -> &str {
        if self.path.is_empty() {
            "(document)"
        } else {
            self.path
        }
    }

    /// An error about this node.
    pub fn error(&self, reason: impl Into<String>) -> Error {
        Error::field(self.doc, self.path(), reason)
    }

    /// The path of child `key`.
    pub fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The path of list item `i`.
    pub fn item_path(&self, i: usize) -> String {
        format!("{}[{i}]", self.path)
    }

    /// Runs `f` on child `key` when it is present and not null.
    pub fn with_field<T>(
        &self,
        key: &str,
        f: impl FnOnce(Node<'_>) -> Result<T, Error>,
    ) -> Result<Option<T>, Error> {
        let Some(v) = self.value.as_object().and_then(|m| m.get(key)) else {
            return Ok(None);
        };
        if v.is_null() {
            return Ok(None);
        }
        let path = self.child_path(key);
        f(Node {
            value: v,
            doc: self.doc,
            path: &path,
        })
        .map(Some)
    }

    /// Runs `f` on child `key`, which must be present.
    pub fn required<T>(
        &self,
        key: &str,
        what: &str,
        f: impl FnOnce(Node<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.with_field(key, f)?.ok_or_else(|| {
            Error::field(
                self.doc,
                &self.child_path(key),
                format!("missing; {what} is required"),
            )
        })
    }

    /// Runs `f` on every item of this list.
    pub fn items<T>(
        &self,
        mut f: impl FnMut(Node<'_>) -> Result<T, Error>,
    ) -> Result<Vec<T>, Error> {
        let list = self
            .value
            .as_array()
            .ok_or_else(|| self.error(format!("expected a list, found {}", kind_of(self.value))))?;
        let mut out = Vec::with_capacity(list.len());
        for (i, v) in list.iter().enumerate() {
            let path = self.item_path(i);
            out.push(f(Node {
                value: v,
                doc: self.doc,
                path: &path,
            })?);
        }
        Ok(out)
    }

    /// Checks this node is an object whose keys are all in `known`; returns the keys found that
    /// are in `unsupported` (present in the schema, not enforced), for the caller to report.
    pub fn fields(&self, known: &[&str], unsupported: &[&str]) -> Result<Vec<String>, Error> {
        let map = self.value.as_object().ok_or_else(|| {
            self.error(format!("expected an object, found {}", kind_of(self.value)))
        })?;
        let mut found = Vec::new();
        for (k, v) in map {
            if unsupported.contains(&k.as_str()) {
                if !v.is_null() {
                    found.push(self.child_path(k));
                }
            } else if !known.contains(&k.as_str()) {
                return Err(Error::field(
                    self.doc,
                    &self.child_path(k),
                    format!(
                        "unknown field; the fields allowed here are: {}",
                        known
                            .iter()
                            .chain(unsupported)
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        Ok(found)
    }

    pub fn str(&self) -> Result<&'a str, Error> {
        self.value
            .as_str()
            .ok_or_else(|| self.error(format!("expected a string, found {}", kind_of(self.value))))
    }

    pub fn bool(&self) -> Result<bool, Error> {
        self.value.as_bool().ok_or_else(|| {
            self.error(format!(
                "expected true or false, found {}",
                kind_of(self.value)
            ))
        })
    }

    /// A port number 0..=65535 given as a number or a numeric string.
    pub fn u16(&self) -> Result<u16, Error> {
        let n = match self.value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        n.and_then(|n| u16::try_from(n).ok()).ok_or_else(|| {
            self.error(format!(
                "expected a number from 0 to 65535, found {}",
                self.value
            ))
        })
    }

    /// A map of string keys to string values (labels).
    pub fn string_map(&self) -> Result<Vec<(String, String)>, Error> {
        let map = self.value.as_object().ok_or_else(|| {
            self.error(format!(
                "expected a map of labels, found {}",
                kind_of(self.value)
            ))
        })?;
        map.iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Bool(b) => b.to_string(),
                    Value::Number(n) => n.to_string(),
                    Value::Null => String::new(),
                    other => {
                        return Err(Error::field(
                            self.doc,
                            &self.child_path(k),
                            format!("expected a string label value, found {}", kind_of(other)),
                        ))
                    }
                };
                Ok((k.clone(), s))
            })
            .collect()
    }
}

/// A human name for a JSON value's type.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_multi_document_and_list() {
        let text = "a: 1\n---\n---\nkind: List\nitems:\n- b: 2\n- c: 3\n";
        let docs = split_documents("f.yaml", text).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[2].doc.index, 3);
        assert_eq!(docs[2].value["c"], 3);
    }

    #[test]
    fn json_list_and_array() {
        let docs =
            split_documents("f.json", r#"{"kind":"List","items":[{"a":1},{"b":2}]}"#).unwrap();
        assert_eq!(docs.len(), 2);
        let docs = split_documents("f.json", r#"[{"a":1}]"#).unwrap();
        assert_eq!(docs.len(), 1);
    }

    #[test]
    fn syntax_errors_name_the_source() {
        let e = split_documents("bad.json", "{").unwrap_err();
        assert!(e.to_string().starts_with("bad.json: not valid JSON"), "{e}");
        let e = split_documents("bad.yaml", "a: [").unwrap_err();
        assert!(e.to_string().starts_with("bad.yaml: not valid YAML"), "{e}");
    }

    #[test]
    fn unknown_fields_are_errors_with_paths() {
        let docs = split_documents("f.yaml", "spec:\n  podSelecter: {}\n").unwrap();
        let root = Node::root(&docs[0]);
        let e = root
            .required("spec", "spec", |s| s.fields(&["podSelector"], &[]))
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("`spec.podSelecter`"), "{msg}");
        assert!(msg.contains("podSelector"), "{msg}");
    }

    #[test]
    fn ports_accept_numbers_and_numeric_strings() {
        let docs = split_documents("f.yaml", "a: 80\nb: '81'\nc: 70000\n").unwrap();
        let root = Node::root(&docs[0]);
        assert_eq!(root.required("a", "a", |n| n.u16()).unwrap(), 80);
        assert_eq!(root.required("b", "b", |n| n.u16()).unwrap(), 81);
        assert!(root.required("c", "c", |n| n.u16()).is_err());
    }
}
