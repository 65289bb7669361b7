//! `cniVersion` negotiation: the spec versions this plugin speaks, and what each changes in
//! the result.

use super::error::{code, CniError};

/// Every version this plugin reads and writes, oldest first.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest: what VERSION answers in when asked in an unknown dialect.
pub const CURRENT: &str = "1.1.0";

/// A supported version, with what its result and commands look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version(&'static str);

impl Version {
    /// `text` if this plugin speaks it; error 1 otherwise.
    pub fn negotiate(text: &str) -> Result<Version, CniError> {
        SUPPORTED
            .iter()
            .find(|v| **v == text)
            .map(|v| Version(v))
            .ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("cniVersion `{text}` is not supported"),
                    format!("set cniVersion to one of {}", SUPPORTED.join(", ")),
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// Results before 1.0.0 carry `"version": "4"|"6"` on each IP.
    pub fn ips_carry_version(self) -> bool {
        self.0.starts_with("0.")
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self.0 != "0.3.0" && self.0 != "0.3.1"
    }

    /// STATUS and GC, and the interface `mtu` in results, exist from 1.1.0 on.
    pub fn is_1_1(self) -> bool {
        self.0 == "1.1.0"
    }
}

/// The VERSION command's answer.
pub fn version_json(asked: Option<&str>) -> String {
    let cni_version = asked
        .and_then(|a| Version::negotiate(a).ok())
        .map_or(CURRENT, Version::as_str);
    serde_json::json!({ "cniVersion": cni_version, "supportedVersions": SUPPORTED }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_versions_negotiate_and_others_are_error_1() {
        assert!(Version::negotiate("1.1.0").expect("1.1").is_1_1());
        assert!(Version::negotiate("0.3.1")
            .expect("0.3.1")
            .ips_carry_version());
        assert!(!Version::negotiate("0.3.1").expect("0.3.1").has_check());
        let err = Version::negotiate("9.9.9").expect_err("unknown");
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn version_lists_everything_supported() {
        let v: serde_json::Value =
            serde_json::from_str(&version_json(Some("1.0.0"))).expect("json");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(
            v["supportedVersions"].as_array().map(Vec::len),
            Some(SUPPORTED.len())
        );
        let v: serde_json::Value = serde_json::from_str(&version_json(None)).expect("json");
        assert_eq!(v["cniVersion"], CURRENT);
    }
}
