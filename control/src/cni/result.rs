//! The ADD result (spec "Success"): interfaces, IPs, routes, DNS, in the negotiated version's
//! dialect; and the parts of a `prevResult` CHECK compares against.

use std::net::IpAddr;

use serde_json::{json, Value};

use super::version::Version;

/// What ADD set up, in the terms of the result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub host_ifname: String,
    pub host_mac: String,
    pub pod_ifname: String,
    pub pod_mac: String,
    /// The namespace path the runtime gave (`sandbox`).
    pub sandbox: String,
    pub mtu: Option<u16>,
    /// The pod's addresses with their gateway (the node's pod gateway of that family).
    pub ips: Vec<(IpAddr, Option<IpAddr>)>,
}

/// The pod's address as the result writes it: a host route (/32, /128), as the pod holds it.
fn host_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// The result JSON of ADD. Interface 0 is the host side, 1 the pod side (the IPs point at it).
pub fn add_result(a: &Attached, version: Version) -> Value {
    let mut host = json!({ "name": a.host_ifname, "mac": a.host_mac });
    let mut pod = json!({ "name": a.pod_ifname, "mac": a.pod_mac, "sandbox": a.sandbox });
    if let (true, Some(mtu)) = (version.is_1_1(), a.mtu) {
        host["mtu"] = json!(mtu);
        pod["mtu"] = json!(mtu);
    }
    let ips: Vec<Value> = a
        .ips
        .iter()
        .map(|(ip, gw)| {
            let mut v = json!({ "address": host_prefix(*ip), "interface": 1 });
            if let Some(gw) = gw {
                v["gateway"] = json!(gw.to_string());
            }
            if version.ips_carry_version() {
                v["version"] = json!(if ip.is_ipv4() { "4" } else { "6" });
            }
            v
        })
        .collect();
    let routes: Vec<Value> = a
        .ips
        .iter()
        .filter_map(|(ip, gw)| {
            let gw = (*gw)?;
            let dst = if ip.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
            Some(json!({ "dst": dst, "gw": gw.to_string() }))
        })
        .collect();
    json!({
        "cniVersion": version.as_str(),
        "interfaces": [host, pod],
        "ips": ips,
        "routes": routes,
        "dns": {},
    })
}

/// What CHECK expects, read from `prevResult`: the sandbox interface's name and MAC, and the
/// addresses on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub pod_ifname: Option<String>,
    pub pod_mac: Option<String>,
    pub addresses: Vec<String>,
}

/// Reads `prevResult` leniently: a chained plugin may have added entries of its own.
pub fn expected(prev: &Value, pod_ifname: &str) -> Expected {
    let interfaces = prev["interfaces"].as_array().cloned().unwrap_or_default();
    let pod_index = interfaces
        .iter()
        .position(|i| i["name"] == pod_ifname && i["sandbox"].is_string());
    let pod = pod_index.and_then(|i| interfaces.get(i));
    let addresses = prev["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter(|ip| pod_index.is_some_and(|p| ip["interface"].as_u64() == Some(p as u64)))
                .filter_map(|ip| ip["address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Expected {
        pod_ifname: pod.and_then(|p| p["name"].as_str().map(str::to_string)),
        pod_mac: pod.and_then(|p| p["mac"].as_str().map(str::to_string)),
        addresses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached() -> Attached {
        Attached {
            host_ifname: "flg0123456789ab".into(),
            host_mac: "02:00:00:00:00:01".into(),
            pod_ifname: "eth0".into(),
            pod_mac: "02:00:00:00:00:02".into(),
            sandbox: "/var/run/netns/p".into(),
            mtu: Some(1450),
            ips: vec![(
                "10.1.0.5".parse().expect("ip"),
                Some("10.1.0.1".parse().expect("ip")),
            )],
        }
    }

    #[test]
    fn the_result_has_the_documented_fields_per_version() {
        let v11 = add_result(&attached(), Version::negotiate("1.1.0").expect("v"));
        assert_eq!(v11["cniVersion"], "1.1.0");
        assert_eq!(v11["interfaces"][1]["sandbox"], "/var/run/netns/p");
        assert_eq!(v11["interfaces"][1]["mtu"], 1450);
        assert_eq!(v11["ips"][0]["address"], "10.1.0.5/32");
        assert_eq!(v11["ips"][0]["gateway"], "10.1.0.1");
        assert_eq!(v11["ips"][0]["interface"], 1);
        assert!(v11["ips"][0].get("version").is_none());
        assert_eq!(v11["routes"][0]["dst"], "0.0.0.0/0");
        let v04 = add_result(&attached(), Version::negotiate("0.4.0").expect("v"));
        assert_eq!(v04["ips"][0]["version"], "4");
        assert!(v04["interfaces"][1].get("mtu").is_none());
    }

    #[test]
    fn check_reads_back_what_add_wrote() {
        let a = attached();
        let prev = add_result(&a, Version::negotiate("1.0.0").expect("v"));
        let e = expected(&prev, "eth0");
        assert_eq!(e.pod_mac.as_deref(), Some("02:00:00:00:00:02"));
        assert_eq!(e.addresses, vec!["10.1.0.5/32".to_string()]);
        assert_eq!(
            expected(&json!({"garbage": 1}), "eth0"),
            Expected::default()
        );
    }
}
