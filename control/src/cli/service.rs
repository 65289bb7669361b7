//! `flagella service upsert|list|delete`, and the flag syntax of `service upsert` (parsed by
//! [`parse_frontend`] and [`parse_backend`]): `--frontend IP:PORT[/PROTO]` (`10.96.0.10:80/tcp`,
//! `[fd00::10]:53/udp`; protocol `tcp` by default, or `udp`, `sctp`), `--backend
//! IP:PORT[,WEIGHT]` (weight 1 by default, 0 drains).

use std::net::SocketAddr;

use serde::Serialize;

use super::args::{ModeArg, Output, ServiceVerb};
use super::render::{emit, warn};
use super::table::Table;
use super::{connect, list_decoded, put_validated, split_namespaced, CliError, Skipped};
use crate::schema::{BackendSpec, FrontendSpec, Object, ObjectKey, ServiceMode, ServiceSpec};
use crate::store::Store;

/// One service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    #[serde(flatten)]
    pub spec: ServiceSpec,
}

/// Parses `IP:PORT[/PROTO][,nodeport=N]`.
pub fn parse_frontend(s: &str) -> Result<FrontendSpec, String> {
    let (s, node_port) = match s.split_once(',') {
        Some((f, extra)) => (f, Some(parse_node_port(s, extra)?)),
        None => (s, None),
    };
    let (addr, protocol) = match s.rsplit_once('/') {
        Some((addr, proto)) => (addr, protocol_name(proto)?),
        None => (s, "TCP"),
    };
    let sa: SocketAddr = addr.parse().map_err(|_| {
        format!("`{s}` is not IP:PORT[/PROTO]; e.g. 10.96.0.10:80/tcp or [fd00::10]:53/udp")
    })?;
    Ok(FrontendSpec {
        ip: sa.ip(),
        port: sa.port(),
        protocol: protocol.to_string(),
        node_port,
    })
}

/// The `nodeport=N` after a frontend's comma.
fn parse_node_port(frontend: &str, extra: &str) -> Result<u16, String> {
    extra
        .strip_prefix("nodeport=")
        .and_then(|n| n.parse::<u16>().ok())
        .ok_or_else(|| {
            format!(
                "`{extra}` in `{frontend}` is not nodeport=PORT; e.g. 10.96.0.10:80/tcp,nodeport=30080"
            )
        })
}

pub(super) fn protocol_name(p: &str) -> Result<&'static str, String> {
    ["TCP", "UDP", "SCTP"]
        .into_iter()
        .find(|n| n.eq_ignore_ascii_case(p))
        .ok_or_else(|| format!("unknown protocol `{p}`: use tcp, udp or sctp"))
}

/// Parses `IP:PORT[,WEIGHT]`.
pub fn parse_backend(s: &str) -> Result<BackendSpec, String> {
    let (addr, weight) = match s.split_once(',') {
        Some((addr, w)) => (
            addr,
            w.parse::<u16>().map_err(|_| {
                format!("weight `{w}` in `{s}` must be a number 0..=65535 (0 drains the backend)")
            })?,
        ),
        None => (s, 1),
    };
    let sa: SocketAddr = addr.parse().map_err(|_| {
        format!("`{s}` is not IP:PORT[,WEIGHT]; e.g. 10.1.0.12:8080 or 10.1.0.12:8080,3")
    })?;
    Ok(BackendSpec {
        ip: sa.ip(),
        port: sa.port(),
        weight,
    })
}

/// `service upsert`: validates the service as the agents will, then writes it.
pub async fn upsert_service(
    store: &Store,
    namespace: &str,
    name: &str,
    spec: ServiceSpec,
) -> Result<ServiceInfo, CliError> {
    let key = ObjectKey::Service {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
    .to_key();
    put_validated(store, &key, &spec).await?;
    Ok(ServiceInfo {
        namespace: namespace.to_string(),
        name: name.to_string(),
        spec,
    })
}

/// Every service, sorted by `namespace/name`.
pub async fn services(store: &Store) -> Result<(Vec<ServiceInfo>, Vec<Skipped>), CliError> {
    let (objects, skipped) = list_decoded(store, "services/").await?;
    let out = objects
        .into_iter()
        .filter_map(|(_, o)| match o {
            Object::Service {
                namespace,
                name,
                spec,
            } => Some(ServiceInfo {
                namespace,
                name,
                spec,
            }),
            _ => None,
        })
        .collect();
    Ok((out, skipped))
}

/// `service delete NAMESPACE/NAME`.
pub async fn delete_service(
    store: &Store,
    namespace: &str,
    name: &str,
) -> Result<String, CliError> {
    let key = ObjectKey::Service {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
    .to_key();
    super::check_key(&key)?;
    if store.get(&key).await?.is_none() {
        return Err(CliError::NotFound {
            what: format!("service {namespace}/{name}"),
            hint: "`flagella service list` lists the services".into(),
        });
    }
    store.delete(&key).await?;
    Ok(key)
}

/// `IP:PORT/PROTO` of a frontend (`[v6]:port/proto` for IPv6), `,nodeport=N` when it has one:
/// the syntax `--frontend` reads.
pub fn frontend_text(f: &FrontendSpec) -> String {
    let text = format!(
        "{}/{}",
        SocketAddr::new(f.ip, f.port),
        f.protocol.to_ascii_lowercase()
    );
    match f.node_port {
        Some(n) => format!("{text},nodeport={n}"),
        None => text,
    }
}

/// `IP:PORT` of a backend, `,WEIGHT` when not 1.
pub fn backend_text(b: &BackendSpec) -> String {
    let addr = SocketAddr::new(b.ip, b.port);
    if b.weight == 1 {
        addr.to_string()
    } else {
        format!("{addr},{}", b.weight)
    }
}

pub async fn run(verb: ServiceVerb, etcd: &[String], out: Output) -> Result<(), CliError> {
    let store = connect(etcd).await?;
    match verb {
        ServiceVerb::Upsert {
            name,
            frontend,
            backend,
            mode,
            external_ip,
        } => {
            let (ns, n) = split_namespaced("service", &name)?;
            let spec = ServiceSpec {
                frontends: frontend,
                backends: backend,
                mode: match mode {
                    ModeArg::Snat => ServiceMode::Snat,
                    ModeArg::Dsr => ServiceMode::Dsr,
                },
                external_ips: external_ip,
            };
            let s = upsert_service(&store, ns, n, spec).await?;
            emit(out, &s, || format!("service {ns}/{n} written\n"))
        }
        ServiceVerb::List => {
            let (services, skipped) = services(&store).await?;
            warn(&skipped);
            emit(out, &services, || {
                let mut t =
                    Table::new(&["SERVICE", "MODE", "FRONTENDS", "EXTERNAL IPS", "BACKENDS"]);
                for s in &services {
                    let f: Vec<String> = s.spec.frontends.iter().map(frontend_text).collect();
                    let e: Vec<String> =
                        s.spec.external_ips.iter().map(|a| a.to_string()).collect();
                    let b: Vec<String> = s.spec.backends.iter().map(backend_text).collect();
                    t.row(vec![
                        format!("{}/{}", s.namespace, s.name),
                        match s.spec.mode {
                            ServiceMode::Snat => "snat".into(),
                            ServiceMode::Dsr => "dsr".into(),
                        },
                        f.join(" "),
                        if e.is_empty() {
                            "-".into()
                        } else {
                            e.join(",")
                        },
                        if b.is_empty() {
                            "-".into()
                        } else {
                            b.join(" ")
                        },
                    ]);
                }
                t.render()
            })
        }
        ServiceVerb::Delete { name } => {
            let (ns, n) = split_namespaced("service", &name)?;
            let key = delete_service(&store, ns, n).await?;
            emit(
                out,
                &serde_json::json!({"deleted": format!("{ns}/{n}"), "key": key}),
                || format!("deleted service {ns}/{n}\n"),
            )
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn frontend_and_backend_flags() {
        let f = parse_frontend("10.96.0.10:80/tcp").unwrap();
        assert_eq!(
            (f.ip.to_string(), f.port, f.protocol.as_str()),
            ("10.96.0.10".into(), 80, "TCP")
        );
        let f = parse_frontend("[fd00::10]:53/UDP").unwrap();
        assert_eq!(
            (f.ip.to_string(), f.port, f.protocol.as_str()),
            ("fd00::10".into(), 53, "UDP")
        );
        assert_eq!(parse_frontend("10.96.0.10:80").unwrap().protocol, "TCP");
        assert_eq!(frontend_text(&f), "[fd00::10]:53/udp");
        for bad in [
            "10.96.0.10",
            "10.96.0.10:80/icmp",
            "x:80",
            "10.96.0.10:99999/tcp",
        ] {
            assert!(parse_frontend(bad).is_err(), "{bad}");
        }
        let b = parse_backend("10.1.0.12:8080,3").unwrap();
        assert_eq!((b.port, b.weight), (8080, 3));
        assert_eq!(backend_text(&b), "10.1.0.12:8080,3");
        assert_eq!(parse_backend("10.1.0.12:8080").unwrap().weight, 1);
        let e = parse_backend("10.1.0.12:8080,heavy").unwrap_err();
        assert!(e.contains("weight"), "{e}");
        assert!(parse_backend("10.1.0.12").is_err());
    }

    #[test]
    fn node_ports_in_the_frontend_flag() {
        let f = parse_frontend("10.96.0.10:80/tcp,nodeport=30080").unwrap();
        assert_eq!((f.port, f.node_port), (80, Some(30080)));
        assert_eq!(frontend_text(&f), "10.96.0.10:80/tcp,nodeport=30080");
        assert_eq!(parse_frontend(&frontend_text(&f)).unwrap(), f);
        assert_eq!(parse_frontend("10.96.0.10:80").unwrap().node_port, None);
        for bad in ["10.96.0.10:80/tcp,30080", "10.96.0.10:80,nodeport=x"] {
            let e = parse_frontend(bad).unwrap_err();
            assert!(e.contains("nodeport=PORT"), "{e}");
        }
    }
}
