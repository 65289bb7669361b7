//! The invocation: what the runtime passes in `CNI_*` environment variables (spec
//! "Parameters"), read from a map so tests need no process environment.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::error::{code, CniError};

/// The operation asked for (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

/// The `K8S_*` keys of `CNI_ARGS` this plugin reads (others are ignored, as Kubernetes runtimes
/// pass `IgnoreUnknown=1` and keys of their own).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub service_account: Option<String>,
}

/// One invocation's parameters, validated for its command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    /// `CNI_NETNS`: absent for DEL when the namespace is already gone.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub pod: PodArgs,
}

/// Reads the invocation from `vars` (`std::env::vars()` in the binary).
pub fn invocation(vars: &BTreeMap<String, String>) -> Result<Invocation, CniError> {
    let get = |k: &str| vars.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let command = get("CNI_COMMAND")
        .ok_or_else(|| missing("CNI_COMMAND", "one of ADD, DEL, CHECK, VERSION, STATUS, GC"))?;
    let command = Command::parse(command).ok_or_else(|| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_COMMAND `{command}` is not a CNI operation"),
            "set it to one of ADD, DEL, CHECK, VERSION, STATUS, GC",
        )
    })?;
    let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
    let container_id = match get("CNI_CONTAINERID") {
        Some(id) => check_container_id(id)?,
        None if per_container => return Err(missing("CNI_CONTAINERID", "the container's id")),
        None => String::new(),
    };
    let ifname = match get("CNI_IFNAME") {
        Some(name) => check_ifname(name)?,
        None if per_container => {
            return Err(missing(
                "CNI_IFNAME",
                "the interface name inside the container, e.g. eth0",
            ))
        }
        None => String::new(),
    };
    let netns = get("CNI_NETNS").map(PathBuf::from);
    if netns.is_none() && matches!(command, Command::Add | Command::Check) {
        return Err(missing(
            "CNI_NETNS",
            "the path of the container's network namespace",
        ));
    }
    let pod = pod_args(get("CNI_ARGS").unwrap_or(""))?;
    Ok(Invocation {
        command,
        container_id,
        netns,
        ifname,
        pod,
    })
}

fn missing(var: &str, what: &str) -> CniError {
    CniError::new(
        code::INVALID_ENVIRONMENT,
        format!("{var} is not set"),
        format!("the runtime must set {var} to {what} (CNI spec, \"Parameters\")"),
    )
}

/// The spec's container id: an alphanumeric first character, then alphanumerics, `_`, `.`, `-`.
fn check_container_id(id: &str) -> Result<String, CniError> {
    let mut bytes = id.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if first_ok && rest_ok && id.len() <= 253 {
        Ok(id.to_string())
    } else {
        Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_CONTAINERID `{id}` is not a valid container id"),
            "it must start with a letter or digit, followed by letters, digits, `_`, `.` or `-`",
        ))
    }
}

/// A Linux interface name: 1..=15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn check_ifname(name: &str) -> Result<String, CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(name.to_string())
    } else {
        Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_IFNAME `{name}` is not a valid interface name"),
            "use 1 to 15 characters without `/`, `:` or whitespace, e.g. eth0",
        ))
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
fn pod_args(text: &str) -> Result<PodArgs, CniError> {
    let mut pod = PodArgs::default();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_ARGS has `{pair}`, which is not KEY=VALUE"),
                "separate KEY=VALUE pairs with `;`, e.g. K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
            )
        })?;
        let value = Some(value.to_string()).filter(|v| !v.is_empty());
        match key {
            "K8S_POD_NAMESPACE" => pod.namespace = value,
            "K8S_POD_NAME" => pod.name = value,
            "K8S_POD_SERVICE_ACCOUNT" => pod.service_account = value,
            _ => {}
        }
    }
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_add_reads_every_parameter_and_the_pod_args() {
        let inv = invocation(&vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-1.2_3"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_UID=u",
            ),
        ]))
        .expect("valid");
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.container_id, "abc-1.2_3");
        assert_eq!(inv.ifname, "eth0");
        assert_eq!(inv.pod.namespace.as_deref(), Some("shop"));
        assert_eq!(inv.pod.name.as_deref(), Some("web-1"));
    }

    #[test]
    fn missing_or_bad_parameters_are_error_4() {
        for bad in [
            vars(&[]),
            vars(&[("CNI_COMMAND", "FROB")]),
            vars(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/x"),
            ]),
            vars(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "-x"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/x"),
            ]),
            vars(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "x"),
                ("CNI_IFNAME", "a/b"),
                ("CNI_NETNS", "/x"),
            ]),
            vars(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "x"),
                ("CNI_IFNAME", "eth0"),
            ]),
            vars(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "x"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "novalue"),
            ]),
        ] {
            let err = invocation(&bad).expect_err("refused");
            assert_eq!(err.code, code::INVALID_ENVIRONMENT, "{err}");
        }
    }

    #[test]
    fn del_needs_no_namespace_and_version_needs_nothing() {
        let del = invocation(&vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .expect("valid");
        assert_eq!(del.netns, None);
        let version = invocation(&vars(&[("CNI_COMMAND", "VERSION")])).expect("valid");
        assert_eq!(version.command, Command::Version);
    }
}
