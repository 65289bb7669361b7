//! `flagella-cni`, the CNI plugin (CNI specification 1.1; 0.3.0 to 1.1.0 negotiated): a
//! container runtime runs it with `CNI_*` environment variables and the network configuration
//! on stdin; it prints a result or the spec's error object on stdout (docs/cni.md).
//!
//! ```text
//!  runtime ─ADD─▶ flagella-cni ─veth─▶ node netns: flg<hash> ◀──▶ pod netns: eth0
//!                      │  endpoints/<ns>/<pod> without address ─▶ etcd ─▶ agent's IPAM
//!                      │  ◀─ addresses + MTU ─ etcd (bounded wait)
//!                      └─ pod: MTU, /32 (/128), default via gateway ─▶ result JSON
//! ```
//!
//! One concern a file: `env` (the `CNI_*` variables), `config` (stdin), `version`
//! (negotiation), `error` (the error object and codes), `result` (the ADD result, `prevResult`),
//! `naming` (the host side's name), `link` (the kernel side, through `ip`), `endpoint` (etcd),
//! and one file per command (`add`, `del`, `check`, `gc`, `status`).

mod add;
mod check;
mod config;
mod del;
mod endpoint;
mod env;
mod error;
mod gc;
mod link;
mod naming;
mod result;
mod status;
mod version;

use std::collections::BTreeMap;

pub use config::MAX_CONFIG_BYTES;
pub use error::{code, CniError};
pub use naming::host_ifname;
pub use version::SUPPORTED as SUPPORTED_VERSIONS;

use env::Command;

/// What the plugin prints on stdout and its exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: u8,
}

/// Runs one invocation: `vars` is the process environment, `stdin` the configuration.
pub async fn run(vars: &BTreeMap<String, String>, stdin: &[u8]) -> Outcome {
    let asked = config::asked_version(stdin);
    let error_version = asked
        .as_deref()
        .and_then(|v| version::Version::negotiate(v).ok())
        .map_or(version::CURRENT, version::Version::as_str);
    match dispatch(vars, stdin, asked.as_deref()).await {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => Outcome {
            stdout: e.to_json(error_version),
            exit_code: 1,
        },
    }
}

async fn dispatch(
    vars: &BTreeMap<String, String>,
    stdin: &[u8],
    asked: Option<&str>,
) -> Result<String, CniError> {
    let inv = env::invocation(vars)?;
    if inv.command == Command::Version {
        return Ok(version::version_json(asked));
    }
    let conf = config::parse(stdin)?;
    let node = conf.node.clone().unwrap_or_else(hostname);
    match inv.command {
        Command::Add => Ok(add::add(&inv, &conf, &node).await?.to_string()),
        Command::Del => del::del(&inv, &conf, &node).await.map(|()| String::new()),
        Command::Check => check::check(&inv, &conf, &node)
            .await
            .map(|()| String::new()),
        Command::Status | Command::Gc if !conf.version.is_1_1() => Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{:?} does not exist in cniVersion {}",
                inv.command,
                conf.version.as_str()
            ),
            "use cniVersion 1.1.0",
        )),
        Command::Status => status::status(&conf, &node).await.map(|()| String::new()),
        Command::Gc => gc::gc(&conf, &node).await.map(|_| String::new()),
        Command::Version => Ok(version::version_json(asked)),
    }
}

/// The node's name when the configuration gives none: the kernel's host name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
