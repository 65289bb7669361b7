//! The host interface's rtnetlink requests against a real kernel, in a namespace of its own:
//! the veth pair created once (found the second time), addresses and routes added, listed
//! back by the dumps a restarted dataplane starts from, and removed (twice: removing what is
//! gone succeeds). What `dataplane::daemon::host_link` drives through the daemon binary.
//!
//! Skips, with the reason, when not root or without `ip netns`; nothing outside the namespace
//! is touched, and the namespace is deleted on exit, pass or fail.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a failed test

use std::net::IpAddr;

use dataplane::nexthop::netlink::Netlink;
use dataplane::Prefix;
use testkit::{ip_in, run_in, NetNsGuard};

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

#[test]
fn the_host_interface_is_created_addressed_routed_and_read_back() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return testkit::skip("needs root (a network namespace, a veth pair)");
    }
    let ns = format!("fhl-{}", std::process::id());
    let mut guard = NetNsGuard::default();
    if let Err(e) = guard.add(&ns) {
        return testkit::skip(&format!("cannot create a network namespace: {e}"));
    }
    let (kernel_ifindex, dump) = run_in(&ns, || {
        let mut nl = Netlink::requests().unwrap();
        assert!(nl.create_veth("hl_host", "hl_net", 1).unwrap(), "created");
        assert!(!nl.create_veth("hl_host", "hl_net", 1).unwrap(), "found");
        // Not /sys/class/net: sysfs shows the namespace it was mounted in, not this thread's.
        let index = |name: &str| -> u32 {
            let name = std::ffi::CString::new(name).unwrap();
            // SAFETY: a valid NUL-terminated name; the call only reads it.
            let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert_ne!(i, 0, "{name:?} exists");
            i
        };
        let (host, net) = (index("hl_host"), index("hl_net"));
        nl.set_link_up(net, Some(1400)).unwrap();
        nl.set_link_up(host, Some(1400)).unwrap();
        for a in [p("10.9.0.1/32"), p("fd09::1/128")] {
            nl.set_address(true, a, host).unwrap();
            nl.set_address(true, a, host).unwrap(); // replace: idempotent
        }
        let src: Option<IpAddr> = Some("10.9.0.1".parse().unwrap());
        nl.set_route(true, p("10.8.0.0/24"), src, host).unwrap();
        nl.set_route(true, p("10.9.0.7/32"), None, host).unwrap();
        nl.set_route(true, p("fd08::/64"), None, host).unwrap();
        let mut addresses = nl.addresses_of(host).unwrap();
        addresses.sort();
        let mut routes = nl.own_routes_of(host).unwrap();
        routes.sort();
        (host, (addresses, routes))
    });
    let (addresses, routes) = &dump;
    assert_eq!(addresses, &[p("10.9.0.1/32"), p("fd09::1/128")]);
    assert_eq!(
        routes,
        &[
            (p("10.8.0.0/24"), Some("10.9.0.1".parse().unwrap())),
            (p("10.9.0.7/32"), None),
            (p("fd08::/64"), None),
        ],
        "only the dataplane's own routes (proto 241), not the kernel's local ones"
    );
    let shown = ip_in(&ns, &["route", "show", "dev", "hl_host"]);
    assert!(
        shown.contains("10.8.0.0/24 proto 241 scope link src 10.9.0.1"),
        "{shown}"
    );
    let mtu = ip_in(&ns, &["link", "show", "dev", "hl_host"]);
    assert!(mtu.contains("mtu 1400") && mtu.contains("UP"), "{mtu}");

    run_in(&ns, move || {
        let mut nl = Netlink::requests().unwrap();
        for _ in 0..2 {
            nl.set_route(false, p("10.8.0.0/24"), None, kernel_ifindex)
                .unwrap(); // The second time: gone already, which is fine.
            nl.set_address(false, p("10.9.0.1/32"), kernel_ifindex)
                .unwrap();
        }
        assert_eq!(nl.addresses_of(kernel_ifindex).unwrap(), [p("fd09::1/128")]);
        // The device's last IPv4 address took its IPv4 routes with it (the kernel flushes
        // them: `host_link::Reconciler` knows); the IPv6 route stays.
        assert_eq!(
            nl.own_routes_of(kernel_ifindex).unwrap(),
            [(p("fd08::/64"), None)]
        );
    });
}
