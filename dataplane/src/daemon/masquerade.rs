//! Masquerade, as the daemon sets it up: whether it is on (`masquerade`, default on when there
//! is an uplink), the range of source ports (`masquerade_ports`, default 61000-65535), each
//! worker's share of it, and the check that the node's own connections never pick one of those
//! ports (`net.ipv4.ip_local_port_range` must not overlap: the uplink program would take their
//! replies away from the kernel).

use std::path::Path;

use crate::daemon::config::DaemonConfig;
use crate::tables::snat::{MasqueradeConfig, PortRange};

/// Where Linux keeps the ports its own connections pick (of the reading process's network
/// namespace, which is the node's).
pub const IP_LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// Why masquerading cannot start as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasqueradeError {
    #[error("the masquerade ports {masquerade} overlap the node's own ephemeral ports {local} (net.ipv4.ip_local_port_range): replies to the host's own connections would be taken by the dataplane; choose disjoint ranges (e.g. `sysctl -w net.ipv4.ip_local_port_range=\"32768 60999\"` and masquerade_ports = \"61000-65535\"), or set masquerade = false")]
    Overlap {
        masquerade: PortRange,
        local: PortRange,
    },
    #[error("cannot read {path}: {reason}; the dataplane checks it before masquerading: mount /proc, or set masquerade = false")]
    Unreadable { path: String, reason: String },
    #[error("the masquerade ports {ports} are fewer than the {workers} workers that share them: widen masquerade_ports")]
    TooFewPorts { ports: PortRange, workers: usize },
}

/// The node's masquerade range when it masquerades: on in the configuration and an uplink to
/// leave through. The range was validated with the configuration.
pub fn range(cfg: &DaemonConfig) -> Option<PortRange> {
    if !cfg.masquerade || cfg.uplink().is_none() {
        return None;
    }
    cfg.masquerade_ports.parse().ok()
}

/// Worker `index` of `workers`: the node's range and its own share of it.
pub fn worker_config(
    ports: PortRange,
    index: usize,
    workers: usize,
) -> Result<MasqueradeConfig, MasqueradeError> {
    let worker_ports = ports
        .share(index, workers)
        .ok_or(MasqueradeError::TooFewPorts { ports, workers })?;
    Ok(MasqueradeConfig {
        ports,
        worker_ports,
    })
}

/// Refuses a masquerade range that overlaps `ip_local_port_range` (the file's text, as Linux
/// writes it: `FIRST<tab>LAST`).
pub fn check_local_port_range(
    masquerade: PortRange,
    ip_local_port_range: &str,
) -> Result<(), MasqueradeError> {
    let local: PortRange =
        ip_local_port_range
            .parse()
            .map_err(
                |e: crate::tables::snat::PortRangeError| MasqueradeError::Unreadable {
                    path: IP_LOCAL_PORT_RANGE.to_string(),
                    reason: e.to_string(),
                },
            )?;
    if masquerade.overlaps(local) {
        return Err(MasqueradeError::Overlap { masquerade, local });
    }
    Ok(())
}

/// [`check_local_port_range`] against the node's own file.
pub fn check_node(masquerade: PortRange) -> Result<(), MasqueradeError> {
    let path = Path::new(IP_LOCAL_PORT_RANGE);
    let text = std::fs::read_to_string(path).map_err(|e| MasqueradeError::Unreadable {
        path: IP_LOCAL_PORT_RANGE.to_string(),
        reason: e.to_string(),
    })?;
    check_local_port_range(masquerade, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::{InterfaceConfig, Role};
    use crate::tables::snat::DEFAULT_PORTS;

    #[test]
    fn on_by_default_with_an_uplink_only() {
        let mut cfg = DaemonConfig::default();
        assert_eq!(range(&cfg), None, "no uplink: nothing to leave through");
        cfg.interfaces.push(InterfaceConfig {
            name: "eth1".into(),
            role: Role::Uplink,
            queues: 1,
        });
        assert_eq!(range(&cfg), Some(DEFAULT_PORTS));
        cfg.masquerade = false;
        assert_eq!(range(&cfg), None);
    }

    #[test]
    fn the_kernels_ephemeral_ports_must_not_overlap() {
        assert_eq!(
            check_local_port_range(DEFAULT_PORTS, "32768\t60999\n"),
            Ok(())
        );
        let err = check_local_port_range(DEFAULT_PORTS, "32768\t61000\n").unwrap_err();
        assert!(matches!(err, MasqueradeError::Overlap { .. }));
        assert!(err.to_string().contains("ip_local_port_range"), "{err}");
        assert!(matches!(
            check_local_port_range(DEFAULT_PORTS, "garbage"),
            Err(MasqueradeError::Unreadable { .. })
        ));
    }

    #[test]
    fn workers_get_disjoint_shares() {
        let a = worker_config(DEFAULT_PORTS, 0, 2).unwrap();
        let b = worker_config(DEFAULT_PORTS, 1, 2).unwrap();
        assert_eq!((a.ports, b.ports), (DEFAULT_PORTS, DEFAULT_PORTS));
        assert!(!a.worker_ports.overlaps(b.worker_ports));
        let tiny = PortRange::new(61000, 61000).unwrap();
        assert!(matches!(
            worker_config(tiny, 0, 2),
            Err(MasqueradeError::TooFewPorts { .. })
        ));
    }
}
