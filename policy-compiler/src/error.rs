//! Errors and warnings of the compiler.
//!
//! Every error names where the input came from ([`DocRef`]: source name, document number and,
//! once known, the object's kind and name), the field path inside the document
//! (`spec.ingress[0].from[1].podSelector`) and the reason, and says what to do. Warnings are
//! things the compiler accepted but does not enforce (L7 rules, `toFQDNs`, ...): they are never
//! silently dropped, callers print them.

use std::fmt;

/// Where a document came from: `policies.yaml, document 2 (NetworkPolicy x/allow-a)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DocRef {
    /// The name the caller gave the input (usually the file name).
    pub source: String,
    /// 1-based document number within the source (multi-document YAML, `kind: List` items).
    pub index: usize,
    /// `Kind namespace/name`, once read from the document.
    pub object: Option<String>,
}

impl DocRef {
    pub fn new(source: &str, index: usize) -> Self {
        DocRef {
            source: source.to_string(),
            index,
            object: None,
        }
    }
}

impl fmt::Display for DocRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, document {}", self.source, self.index)?;
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        Ok(())
    }
}

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The text is not valid YAML or JSON.
    #[error("{source_name}: not valid {format}: {reason}; fix the syntax at the position given")]
    Syntax {
        source_name: String,
        format: &'static str,
        reason: String,
    },
    /// A field has a wrong type, a wrong value, or is not part of the schema.
    #[error("{doc}: field `{path}`: {reason}")]
    Field {
        doc: DocRef,
        path: String,
        reason: String,
    },
    /// Two objects with the same identity.
    #[error("{doc}: {what} is defined twice (first in {first}); remove or rename one of them")]
    Duplicate {
        doc: DocRef,
        what: String,
        first: Box<DocRef>,
    },
}

impl Error {
    pub(crate) fn field(doc: &DocRef, path: &str, reason: impl Into<String>) -> Self {
        Error::Field {
            doc: doc.clone(),
            path: path.to_string(),
            reason: reason.into(),
        }
    }
}

/// Something accepted but not enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub doc: DocRef,
    /// Field path of the unsupported element.
    pub path: String,
    /// What happens instead.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: field `{}`: {}", self.doc, self.path, self.message)
    }
}
