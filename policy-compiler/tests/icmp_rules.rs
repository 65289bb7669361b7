//! Cilium `icmps` rules compiled and traced end to end: the compiled maps admit the echo
//! request types the rule names (by number or by name, per family) and refuse other types,
//! other protocols and other peers; a deny on a type beats an L3 allow.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use policy_compiler::trace::{parse_port_proto, trace, Probe};
use policy_compiler::{parse_cluster, parse_policies, PolicyEngine};

const CLUSTER: &str = r#"
namespaces: {x: {ns: x}}
pods:
- {namespace: x, name: client, labels: {app: client}, ip: 10.1.0.1}
- {namespace: x, name: other, labels: {app: other}, ip: 10.1.0.2}
- {namespace: x, name: server, labels: {app: server}, ip: 10.1.0.3}
nodes: [{name: n1, ip: 192.168.0.1}]
"#;

const ECHO_ONLY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: echo-only, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    icmps:
    - fields:
      - {type: 8, family: IPv4}
      - {type: EchoRequest, family: IPv6}
"#;

fn engine(policies: &str) -> PolicyEngine {
    let cluster = parse_cluster("c.yaml", CLUSTER).unwrap();
    let parsed = parse_policies("p.yaml", policies).unwrap();
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    PolicyEngine::build(&cluster, &parsed.policies).unwrap()
}

fn verdict(e: &PolicyEngine, from: &str, to: &str, port: &str) -> &'static str {
    let (port, protocol) = parse_port_proto(port).unwrap();
    let probe = Probe {
        from: from.into(),
        to: to.into(),
        port,
        protocol,
    };
    trace(e, &probe).unwrap().verdict
}

#[test]
fn echo_requests_of_both_families_pass_other_types_do_not() {
    let e = engine(ECHO_ONLY);
    let (client, server) = ("x/client", "x/server");
    assert_eq!(verdict(&e, client, server, "8/ICMP"), "allowed");
    assert_eq!(verdict(&e, client, server, "128/ICMPv6"), "allowed");
    assert_eq!(verdict(&e, client, server, "EchoRequest/ICMP"), "allowed");
    assert_eq!(verdict(&e, client, server, "13/ICMP"), "denied");
    assert_eq!(verdict(&e, client, server, "Timestamp/ICMP"), "denied");
    assert_eq!(verdict(&e, client, server, "139/ICMPv6"), "denied");
    // 128 is an IPv6 type: as an IPv4 type it is not allowed.
    assert_eq!(verdict(&e, client, server, "128/ICMP"), "denied");
    // The ICMP type is not a TCP port.
    assert_eq!(verdict(&e, client, server, "8/TCP"), "denied");
    assert_eq!(verdict(&e, "x/other", server, "8/ICMP"), "denied");
}

#[test]
fn the_deciding_rule_is_the_icmp_rule() {
    let e = engine(ECHO_ONLY);
    let (port, protocol) = parse_port_proto("8/ICMP").unwrap();
    let probe = Probe {
        from: "x/client".into(),
        to: "x/server".into(),
        port,
        protocol,
    };
    let r = trace(&e, &probe).unwrap();
    assert_eq!(r.protocol, "ICMP");
    assert_eq!(r.ingress.match_kind, Some("l3-l4"));
    assert_eq!(r.ingress.rules[0].rule, "spec.ingress[0]");
}

#[test]
fn a_denied_icmp_type_beats_an_l3_allow() {
    let e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-timestamps, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{}]
  ingressDeny:
  - icmps: [{fields: [{type: Timestamp}]}]
"#,
    );
    assert_eq!(verdict(&e, "x/client", "x/server", "8/ICMP"), "allowed");
    assert_eq!(verdict(&e, "x/client", "x/server", "80/TCP"), "allowed");
    assert_eq!(verdict(&e, "x/client", "x/server", "13/ICMP"), "denied");
    assert_eq!(verdict(&e, "x/client", "x/server", "13/ICMPv6"), "allowed");
}
