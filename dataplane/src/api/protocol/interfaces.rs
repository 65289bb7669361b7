//! `interface.add` / `interface.remove`: serve, or stop serving, a pod interface while the
//! dataplane runs (its XDP program, its AF_XDP socket on a worker), without a restart.

use serde::{Deserialize, Serialize};

use super::RequestError;

/// The interface, by name in the dataplane's network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceMsg {
    pub ifname: String,
}

impl InterfaceMsg {
    /// A Linux interface name: 1..=15 bytes, no `/`, `:` or whitespace.
    pub fn check(&self) -> Result<(), RequestError> {
        let n = &self.ifname;
        let ok = !n.is_empty()
            && n.len() <= 15
            && n.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
        if ok {
            Ok(())
        } else {
            Err(RequestError::at(
                "ifname",
                format!(
                    "`{n}` is not an interface name: 1 to 15 characters without `/`, `:` or spaces"
                ),
            ))
        }
    }
}
