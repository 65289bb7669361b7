//! The commands of the `flagella` CLI, as library code: each reads or writes etcd (or asks the
//! dataplane's socket) and prints its report as an aligned table for people or as JSON for
//! scripts (`-o json`). Arguments are [`args`] (clap); the binary only starts the runtime and
//! calls [`run`].
//!
//! Contract:
//! - nothing here panics on etcd contents, files or flags; a value in etcd that does not decode
//!   ([`crate::schema::decode`]) is skipped and returned as a warning naming its key, as the
//!   agent does;
//! - every write is validated with the same decoder the agent uses *before* anything is written,
//!   so what the CLI writes is never a malformed key for the agents;
//! - errors are [`CliError`], whose messages say what to do; the binary maps them to exit
//!   status 1 (usage errors are clap's, status 2).
//!
//! Modules: [`args`] (every noun, verb and flag), one module per noun with its command's
//! `run` ([`policy`], [`trace`] for `policy trace`, [`diff`] for `policy diff` and the
//! preview of `policy import --dry-run`, [`endpoint`], [`identity`], [`service`],
//! [`node`], [`namespace`], [`status`], [`monitor`], [`replay`] with [`pcap`]), and the output: [`render`] (JSON or text, warnings)
//! and [`table`] (aligned text tables).

pub mod args;
pub mod diff;
pub mod endpoint;
pub mod host;
pub mod identity;
pub mod monitor;
pub mod namespace;
pub mod node;
pub mod pcap;
pub mod policy;
pub mod render;
pub mod replay;
pub mod service;
pub mod status;
pub mod table;
pub mod trace;

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use self::args::{Cli, Noun};

use crate::dataplane_client::ClientError;
use crate::schema::{self, Object, SchemaError};
use crate::store::{Kv, Store, StoreError};

/// How long one etcd request may take before the CLI gives up.
pub const ETCD_TIMEOUT: Duration = Duration::from_secs(5);

/// A command failure (exit status 1). Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dataplane(#[from] ClientError),
    /// An input (file, flag value) is refused; nothing was written.
    #[error("{0}; nothing was written")]
    Input(String),
    /// The object asked for does not exist.
    #[error("{what} not found; {hint}")]
    NotFound { what: String, hint: String },
    /// The name given matches several objects.
    #[error("{what} is ambiguous: {candidates}; say which with --kind")]
    Ambiguous { what: String, candidates: String },
    #[error("cannot read {path}: {source}; check the path and permissions")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// A key whose value was skipped because it does not decode.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub key: String,
    pub reason: String,
}

impl From<&SchemaError> for Skipped {
    fn from(e: &SchemaError) -> Self {
        Skipped {
            key: e.key().to_string(),
            reason: e.to_string(),
        }
    }
}

/// Connects to etcd (any of `endpoints`).
pub async fn connect(endpoints: &[String]) -> Result<Store, CliError> {
    Ok(Store::connect(endpoints, ETCD_TIMEOUT).await?)
}

/// Every decodable object under `prefix` (a path below [`schema::ROOT`], e.g. `services/`),
/// with the keys skipped because they do not decode.
pub async fn list_decoded(
    store: &Store,
    prefix: &str,
) -> Result<(Vec<(Kv, Object)>, Vec<Skipped>), CliError> {
    let (kvs, _) = store.list(&format!("{}{prefix}", schema::ROOT)).await?;
    Ok(decode_all(kvs))
}

/// Decodes a listing, splitting it into objects and skipped keys.
pub fn decode_all(kvs: Vec<Kv>) -> (Vec<(Kv, Object)>, Vec<Skipped>) {
    let mut objects = Vec::with_capacity(kvs.len());
    let mut skipped = Vec::new();
    for kv in kvs {
        match schema::decode(&kv.key, &kv.value) {
            Ok(o) => objects.push((kv, o)),
            Err(e) => skipped.push(Skipped::from(&e)),
        }
    }
    (objects, skipped)
}

/// Splits `namespace/name`; `what` names the argument in the error.
pub fn split_namespaced<'a>(what: &str, arg: &'a str) -> Result<(&'a str, &'a str), CliError> {
    match arg.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns, name))
        }
        _ => Err(CliError::Input(format!(
            "{what} `{arg}` must be NAMESPACE/NAME, e.g. default/web"
        ))),
    }
}

/// Checks that `key` is a well-formed schema key (names without `/`, not empty, ...).
pub fn check_key(key: &str) -> Result<(), CliError> {
    schema::parse_key(key)
        .map(|_| ())
        .map_err(|e| CliError::Input(e.to_string()))
}

/// `k=v,k=v` of a label map, sorted (for tables).
pub fn labels_text<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    labels
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Writes `spec` under `key` (creating or replacing it) after validating it with the decoder
/// the agents use, so the agents never see it as a malformed key.
pub(crate) async fn put_validated<T: Serialize>(
    store: &Store,
    key: &str,
    spec: &T,
) -> Result<(), CliError> {
    let value = serde_json::to_vec(spec).map_err(|e| CliError::Other(e.to_string()))?;
    schema::decode(key, &value).map_err(|e| CliError::Input(e.to_string()))?;
    store.put(key, value).await?;
    Ok(())
}

/// Runs the command `cli` names; its exit status (1 for an unhealthy `status`).
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let out = cli.output;
    let etcd = &cli.etcd;
    match cli.noun {
        Noun::Policy { verb } => policy::run(verb, etcd, out).await?,
        Noun::Endpoint { verb } => endpoint::run(verb, etcd, out).await?,
        Noun::Identity { verb } => identity::run(verb, etcd, out).await?,
        Noun::Service { verb } => service::run(verb, etcd, out).await?,
        Noun::Node { verb } => node::run(verb, etcd, out).await?,
        Noun::Namespace { verb } => namespace::run(verb, etcd, out).await?,
        Noun::Status(args) => return status::run(args, etcd, out).await,
        Noun::Monitor(args) => monitor::run(args, etcd, out).await?,
        Noun::Replay(args) => replay::run(args, etcd, out).await?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_names() {
        assert!(matches!(split_namespaced("pod", "a/b"), Ok(("a", "b"))));
        for bad in ["a", "/b", "a/", "a/b/c", ""] {
            let e = split_namespaced("pod", bad);
            assert!(
                matches!(&e, Err(CliError::Input(m)) if m.contains("NAMESPACE/NAME")),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn decode_all_splits_good_and_bad() {
        let kv = |k: &str, v: &str| Kv {
            key: format!("{}{k}", schema::ROOT),
            value: v.as_bytes().to_vec(),
            mod_revision: 1,
        };
        let (ok, bad) = decode_all(vec![
            kv("namespaces/a", "{}"),
            kv("namespaces/b", "{oops"),
            kv("gadgets/x", "{}"),
        ]);
        assert_eq!(ok.len(), 1);
        assert_eq!(bad.len(), 2);
        assert!(bad[0].key.ends_with("namespaces/b"), "{bad:?}");
    }
}
