//! The kernel side of ADD, DEL and CHECK, through iproute2's `ip` (present on every node
//! running containers): the veth pair, the pod's MTU, addresses and routes. Commands on the pod
//! side run in the pod's namespace through `nsenter --net=<CNI_NETNS>`, which takes any
//! namespace path (`/proc/<pid>/ns/net`, a bind mount), as the spec requires.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::error::{code, CniError};

/// Runs `ip args` in this process's namespace (the node's).
fn ip(args: &[&str]) -> Result<String, CniError> {
    run(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    )
}

/// Runs `ip args` in the namespace at `netns`.
fn ip_in(netns: &Path, args: &[&str]) -> Result<String, CniError> {
    let net = format!("--net={}", netns.display());
    run(
        Command::new("nsenter").arg(net).arg("ip").args(args),
        &format!("ip {} (in {})", args.join(" "), netns.display()),
    )
}

fn run(command: &mut Command, what: &str) -> Result<String, CniError> {
    let out = command.output().map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("could not run `{what}`: {e}"),
            "install iproute2 (`ip`) and util-linux (`nsenter`) on the node",
        )
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CniError::new(
            code::IO_FAILURE,
            format!(
                "`{what}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            "check the node's interfaces (`ip link`) and that the plugin runs as root",
        ))
    }
}

/// Whether the namespace path names a network namespace that exists.
pub fn netns_exists(netns: &Path) -> bool {
    netns.exists()
}

/// Whether an interface of this name exists on the node.
pub fn host_link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The veth pair: `host` on the node, `pod` inside `netns`, both up; the pod side's MTU set
/// later, once the agent has given it.
pub fn create_veth(host: &str, pod: &str, netns: &Path) -> Result<(), CniError> {
    let netns_text = netns.display().to_string();
    ip(&[
        "link",
        "add",
        host,
        "type",
        "veth",
        "peer",
        "name",
        pod,
        "netns",
        &netns_text,
    ])?;
    ip(&["link", "set", host, "up"])?;
    ip_in(netns, &["link", "set", pod, "up"])?;
    ip_in(netns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes the host side (the kernel removes its peer with it); absent is fine.
pub fn delete_host_link(host: &str) -> Result<(), CniError> {
    if !host_link_exists(host) {
        return Ok(());
    }
    match ip(&["link", "del", host]) {
        Err(_) if !host_link_exists(host) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// The host side's interface index.
pub fn host_ifindex(host: &str) -> Result<u32, CniError> {
    let path = Path::new("/sys/class/net").join(host).join("ifindex");
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            CniError::new(
                code::IO_FAILURE,
                format!("cannot read {}", path.display()),
                "the host side of the veth vanished while being set up; retry the ADD",
            )
        })
}

/// The MAC of `name`, on the node (`netns` None) or in the pod's namespace.
pub fn mac_of(name: &str, netns: Option<&Path>) -> Result<String, CniError> {
    let args = ["-j", "link", "show", "dev", name];
    let text = match netns {
        Some(ns) => ip_in(ns, &args)?,
        None => ip(&args)?,
    };
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    v[0]["address"].as_str().map(str::to_string).ok_or_else(|| {
        CniError::new(
            code::IO_FAILURE,
            format!("`ip -j link show dev {name}` gave no MAC"),
            "check the interface exists",
        )
    })
}

/// The pod's side: MTU, its addresses as host routes (/32, /128, no DAD), and a default route
/// per family through that family's gateway, reached on the link (the dataplane answers ARP
/// and neighbour solicitations for it).
pub fn configure_pod(
    netns: &Path,
    pod: &str,
    mtu: Option<u16>,
    ips: &[(IpAddr, Option<IpAddr>)],
) -> Result<(), CniError> {
    if let Some(mtu) = mtu {
        ip_in(netns, &["link", "set", pod, "mtu", &mtu.to_string()])?;
    }
    for (addr, gateway) in ips {
        let (family, prefix) = match addr {
            IpAddr::V4(a) => ("-4", format!("{a}/32")),
            IpAddr::V6(a) => ("-6", format!("{a}/128")),
        };
        let mut add = vec![family, "addr", "add", &prefix, "dev", pod];
        if addr.is_ipv6() {
            add.push("nodad");
        }
        ip_in(netns, &add)?;
        if let Some(gw) = gateway {
            let gw = gw.to_string();
            ip_in(
                netns,
                &[
                    family, "route", "add", "default", "via", &gw, "dev", pod, "onlink",
                ],
            )?;
        }
    }
    Ok(())
}

/// The addresses on the pod's interface, as `addr/len`.
pub fn pod_addresses(netns: &Path, pod: &str) -> Result<Vec<String>, CniError> {
    let text = ip_in(netns, &["-j", "addr", "show", "dev", pod])?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(v[0]["addr_info"]
        .as_array()
        .map(|infos| {
            infos
                .iter()
                .filter_map(|i| {
                    Some(format!(
                        "{}/{}",
                        i["local"].as_str()?,
                        i["prefixlen"].as_u64()?
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Whether the pod has a default route of `addr`'s family through `gateway`.
pub fn has_default_route(netns: &Path, ipv4: bool, gateway: IpAddr) -> Result<bool, CniError> {
    let family = if ipv4 { "-4" } else { "-6" };
    let text = ip_in(netns, &["-j", family, "route", "show", "default"])?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(v.as_array().is_some_and(|routes| {
        routes
            .iter()
            .any(|r| r["gateway"].as_str() == Some(&gateway.to_string()))
    }))
}
