//! The host side's interface name, derived from the container id alone, so that DEL finds it
//! again without any state, even when the pod's namespace is gone.

/// `flg` + 12 hex digits of a 64-bit FNV-1a hash of the container id: 15 characters (the
/// kernel's limit), stable across versions of this plugin (the hash is written out here, not
/// Rust's `DefaultHasher`), and distinct from the dataplane's own `flg_host`/`flg_net`.
pub fn host_ifname(container_id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("flg{:012x}", hash >> 16)
}

/// The endpoint's key name when the runtime passes no `K8S_POD_NAME`: `cni-` and the
/// container id's first 32 characters, lower case (a container id is alphanumeric with `_.-`).
pub fn fallback_pod_name(container_id: &str) -> String {
    let short: String = container_id.chars().take(32).collect();
    format!("cni-{}", short.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_the_kernel_and_differ_per_container() {
        let a = host_ifname("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        let b = host_ifname("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdee");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("flg") && a.bytes().skip(3).all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(
            a,
            host_ifname("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
    }

    #[test]
    fn the_fallback_name_is_short_and_lower_case() {
        assert_eq!(fallback_pod_name("ABC.def"), "cni-abc.def");
        assert_eq!(fallback_pod_name(&"a".repeat(64)).len(), 36);
    }
}
