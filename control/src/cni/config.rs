//! The network configuration on stdin (spec "Network configuration"): the fields every plugin
//! gets, Flagella's own (`etcdEndpoints`, `node`, `addressTimeoutSeconds`), the runtime's
//! (`runtimeConfig`, `args`), `prevResult` (CHECK, DEL) and the GC's valid attachments.
//!
//! Unknown fields are allowed (the spec lets runtimes and chains add their own); the values
//! this plugin uses are checked here, so the commands get a configuration they can trust.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::error::{code, CniError};
use super::version::Version;

/// At most this many bytes are read from stdin: a configuration is a few kilobytes.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// How long ADD waits for the agent to give the pod its addresses, unless configured.
pub const DEFAULT_ADDRESS_TIMEOUT: Duration = Duration::from_secs(30);

/// One attachment the runtime still uses (GC's `cni.dev/valid-attachments`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default, rename = "serviceAccount")]
    service_account: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct CniArgsSection {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct ArgsSection {
    #[serde(default)]
    cni: CniArgsSection,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    cni_version: String,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    etcd_endpoints: Vec<String>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    address_timeout_seconds: Option<u64>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    #[serde(default)]
    args: ArgsSection,
    #[serde(default)]
    prev_result: Option<serde_json::Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

/// The configuration, checked.
#[derive(Clone, Debug)]
pub struct NetConf {
    pub version: Version,
    pub etcd_endpoints: Vec<String>,
    /// The node the pods are on: `node`, else the host name.
    pub node: Option<String>,
    pub address_timeout: Duration,
    /// `runtimeConfig.labels` over `args.cni.labels`.
    pub labels: BTreeMap<String, String>,
    /// `runtimeConfig.serviceAccount` (`K8S_POD_SERVICE_ACCOUNT` in `CNI_ARGS` wins).
    pub service_account: Option<String>,
    pub prev_result: Option<serde_json::Value>,
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Reads only `cniVersion` (VERSION's input may be nothing else, or nothing at all).
pub fn asked_version(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Only {
        #[serde(rename = "cniVersion")]
        cni_version: String,
    }
    serde_json::from_slice::<Only>(stdin)
        .ok()
        .map(|o| o.cni_version)
}

/// Parses and checks the configuration: error 6 when it is not JSON of the right shape,
/// 1 for an unsupported `cniVersion`, 7 for invalid values.
pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    if stdin.len() > MAX_CONFIG_BYTES {
        return Err(invalid(format!(
            "the configuration is {} bytes, more than the {MAX_CONFIG_BYTES} this plugin reads",
            stdin.len()
        )));
    }
    let wire: Wire = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILED,
            format!("the network configuration on stdin does not decode: {e}"),
            "pass a JSON object with cniVersion, name, type and etcdEndpoints (docs/cni.md)",
        )
    })?;
    let version = Version::negotiate(&wire.cni_version)?;
    if wire.name.is_empty() {
        return Err(invalid("`name` is empty".into()));
    }
    if wire.kind.is_empty() {
        return Err(invalid("`type` is empty".into()));
    }
    if wire.etcd_endpoints.is_empty() || wire.etcd_endpoints.iter().any(String::is_empty) {
        return Err(invalid(
            "`etcdEndpoints` must list the etcd client URLs, e.g. [\"http://127.0.0.1:2379\"]"
                .into(),
        ));
    }
    if wire
        .node
        .as_deref()
        .is_some_and(|n| n.is_empty() || n.contains('/'))
    {
        return Err(invalid("`node` must be a node name without `/`".into()));
    }
    let timeout = match wire.address_timeout_seconds {
        Some(0) | Some(3601..) => {
            return Err(invalid("`addressTimeoutSeconds` must be 1..=3600".into()))
        }
        Some(s) => Duration::from_secs(s),
        None => DEFAULT_ADDRESS_TIMEOUT,
    };
    let mut labels = wire.args.cni.labels;
    labels.extend(wire.runtime_config.labels);
    Ok(NetConf {
        version,
        etcd_endpoints: wire.etcd_endpoints,
        node: wire.node,
        address_timeout: timeout,
        labels,
        service_account: wire.runtime_config.service_account,
        prev_result: wire.prev_result,
        valid_attachments: wire.valid_attachments,
    })
}

fn invalid(msg: String) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        format!("invalid network configuration: {msg}"),
        "fix the conflist in /etc/cni/net.d (docs/cni.md shows one)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"cniVersion":"1.1.0","name":"flagella","type":"flagella-cni",
        "etcdEndpoints":["http://127.0.0.1:2379"],"node":"n1","dns":{},
        "runtimeConfig":{"labels":{"app":"web"}},"args":{"cni":{"labels":{"app":"x","tier":"f"}}}}"#;

    #[test]
    fn a_good_configuration_parses_with_runtime_labels_winning() {
        let c = parse(GOOD.as_bytes()).expect("valid");
        assert_eq!(c.node.as_deref(), Some("n1"));
        assert_eq!(c.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(c.labels.get("tier").map(String::as_str), Some("f"));
        assert_eq!(c.address_timeout, DEFAULT_ADDRESS_TIMEOUT);
    }

    #[test]
    fn malformed_json_is_6_bad_values_7_bad_version_1() {
        assert_eq!(
            parse(b"{not json").expect_err("6").code,
            code::DECODE_FAILED
        );
        assert_eq!(parse(b"[]").expect_err("6").code, code::DECODE_FAILED);
        let no_etcd = r#"{"cniVersion":"1.1.0","name":"f","type":"flagella-cni"}"#;
        assert_eq!(
            parse(no_etcd.as_bytes()).expect_err("7").code,
            code::INVALID_CONFIG
        );
        let old = GOOD.replace("1.1.0", "0.1.0");
        assert_eq!(
            parse(old.as_bytes()).expect_err("1").code,
            code::INCOMPATIBLE_VERSION
        );
        let huge = vec![b' '; MAX_CONFIG_BYTES + 1];
        assert_eq!(parse(&huge).expect_err("7").code, code::INVALID_CONFIG);
    }

    /// The conflist shipped for /etc/cni/net.d: a runtime hands each plugin its entry with the
    /// list's `cniVersion` and `name` added (libcni does this).
    #[test]
    fn the_shipped_conflist_parses_as_the_runtime_passes_it() {
        let list: serde_json::Value =
            serde_json::from_str(include_str!("../../../scripts/cni/10-flagella.conflist"))
                .expect("conflist JSON");
        let mut plugin = list["plugins"][0].clone();
        plugin["cniVersion"] = list["cniVersion"].clone();
        plugin["name"] = list["name"].clone();
        let c = parse(plugin.to_string().as_bytes()).expect("valid");
        assert!(c.version.is_1_1());
        assert_eq!(c.etcd_endpoints, vec!["http://127.0.0.1:2379".to_string()]);
    }

    #[test]
    fn gc_attachments_are_read() {
        let gc = r#"{"cniVersion":"1.1.0","name":"f","type":"flagella-cni","etcdEndpoints":["x"],
            "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#;
        let c = parse(gc.as_bytes()).expect("valid");
        assert_eq!(
            c.valid_attachments,
            Some(vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }])
        );
    }
}
