//! The CNI error object (spec "Error"): `{"cniVersion", "code", "msg", "details"}` on stdout
//! and a non-zero exit status, with the spec's well-known codes.

use serde::Serialize;

/// The spec's well-known error codes (0-99 are reserved to the spec; 100+ are this plugin's).
pub mod code {
    /// The configuration's `cniVersion` is not one this plugin speaks.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A field of the network configuration is not supported.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container (its network namespace) is unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A required `CNI_*` environment variable is missing or invalid.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// An I/O operation failed (netlink, the `ip` tool).
    pub const IO_FAILURE: u32 = 5;
    /// The configuration on stdin is not valid JSON.
    pub const DECODE_FAILED: u32 = 6;
    /// The configuration decoded but its values are invalid.
    pub const INVALID_CONFIG: u32 = 7;
    /// A transient condition (etcd unreachable, the agent has not answered yet).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADDs now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// This plugin: the pod's endpoint key exists and belongs to another container.
    pub const ENDPOINT_TAKEN: u32 = 100;
    /// This plugin: CHECK found the pod's networking not as ADD left it.
    pub const CHECK_FAILED: u32 = 101;
}

/// One failure, as the runtime will see it. `msg` says what failed, `details` what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The spec's JSON error object, in `cni_version`'s dialect (the same for every version).
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        let wire = Wire {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        };
        serde_json::to_string(&wire).unwrap_or_else(|_| {
            format!(
                "{{\"cniVersion\":\"{cni_version}\",\"code\":{},\"msg\":\"error\"}}",
                self.code
            )
        })
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}; {}", self.code, self.msg, self.details)
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_object_has_the_spec_fields() {
        let e = CniError::new(code::INVALID_CONFIG, "bad \"name\"", "fix it");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).expect("json");
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "bad \"name\"");
        assert_eq!(v["details"], "fix it");
    }
}
