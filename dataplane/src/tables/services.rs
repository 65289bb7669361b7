//! The service table: frontend (VIP, port, protocol) -> weighted backends, each service with its
//! own Maglev table ([`super::maglev`]).
//!
//! Contract and invariants:
//! - **Fast path** ([`Services::lookup`], [`Services::get`], [`Service::select`],
//!   [`Services::is_frontend_addr`], [`flow_hash`]) allocates, locks and logs nothing: the maps
//!   are keyed by small `Copy` values and `select` is `table[hash % M]`.
//! - **Control path** ([`Services::upsert`], [`Services::remove`]) validates the whole spec and
//!   builds the new Maglev table *before* touching the maps, so a rejected update leaves the
//!   table exactly as it was.
//! - **Ids.** A frontend keeps its [`ServiceId`] across updates (conntrack's reverse-NAT entries
//!   stay valid); a new frontend gets a fresh id, never 0, not reused while the id space still
//!   has unused numbers (so a stale conntrack entry does not translate to another service).
//! - **Cross-node agreement.** Every node built with the same `maglev_m` and `seed` computes the
//!   same [`flow_hash`] and the same Maglev tables, so a flow picks the same backend whichever
//!   node it enters through (what DSR needs).
//! - **Selection.** A backend of weight 0 (terminating) is never selected; a service whose
//!   backends all have weight 0, or that has none, selects nothing (the pipeline drops with a
//!   "no backend" reason).

use std::fmt;
use std::net::IpAddr;

use hashbrown::HashMap;

use super::maglev::{self, BackendKey, MaglevError, MaglevTable};
use crate::wire::ip::Protocol;

/// IP protocol number of TCP (from [`Protocol`], for `u8` keys and patterns).
pub const PROTO_TCP: u8 = Protocol::Tcp.number();
/// IP protocol number of UDP (from [`Protocol`]).
pub const PROTO_UDP: u8 = Protocol::Udp.number();

/// What clients connect to: a virtual IP, a port and a protocol ([`PROTO_TCP`] or
/// [`PROTO_UDP`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
}

impl fmt::Display for Frontend {
    /// `10.96.0.10:53/udp`, `[fd00::10]:443/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port)?,
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port)?,
        }
        match self.proto {
            PROTO_TCP => f.write_str("/tcp"),
            PROTO_UDP => f.write_str("/udp"),
            other => write!(f, "/proto-{other}"),
        }
    }
}

/// One server behind a frontend. `weight` 0 keeps it known but never selected (terminating).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u16,
}

impl Backend {
    /// Its identity for Maglev (address and port; the weight is not part of it).
    pub fn key(&self) -> BackendKey {
        BackendKey::new(self.addr, self.port)
    }
}

/// How replies get back to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LbMode {
    /// The load-balancing node rewrites the destination and does reverse NAT on the replies.
    Snat,
    /// Direct server return: the backend's node replies to the client directly with the VIP as
    /// source; the frontend travels with the packet (IPv4 option or Geneve option).
    Dsr,
}

/// Who reaches a frontend, as Kubernetes names the ways (Cilium's `SVC_FLAG_*`): only the
/// uplink's XDP program cares (`daemon::host_path`); the pipeline balances them all alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FrontendKind {
    /// A cluster IP: reached from pods only, never owned on the uplink.
    #[default]
    ClusterIp,
    /// The node's own address and a node port: reached from outside; the uplink owns exactly
    /// (address, protocol, port), the node's other ports stay the host's.
    NodePort,
    /// An external IP routed to the node: reached from outside; the uplink owns the address.
    ExternalIp,
}

/// A service as the control plane describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub frontend: Frontend,
    /// In the caller's order; [`Service::select`] returns references into this list.
    pub backends: Vec<Backend>,
    pub mode: LbMode,
    pub kind: FrontendKind,
}

/// A service's number, carried in conntrack for reverse NAT. Never 0 (free for "no service").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u32);

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a service could not be installed. Each variant names the frontend it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid Maglev table size for the service table")]
    TableSize {
        #[source]
        source: MaglevError,
    },
    #[error("service {frontend}: protocol {proto} is not supported; use 6 (TCP) or 17 (UDP)")]
    UnsupportedProtocol { frontend: Frontend, proto: u8 },
    #[error("service {frontend}: port 0 cannot be a frontend port; give the port clients use")]
    FrontendPortZero { frontend: Frontend },
    #[error(
        "service {frontend}: backend {backend} has port 0; give the port the backend listens on"
    )]
    BackendPortZero {
        frontend: Frontend,
        backend: BackendKey,
    },
    #[error(
        "service {frontend}: backend {backend} is not of the frontend's address family; a \
         service's backends must all be IPv4 or all IPv6, like its frontend"
    )]
    FamilyMismatch {
        frontend: Frontend,
        backend: BackendKey,
    },
    #[error(
        "service {frontend}: backend {backend} is listed twice; list it once and set its weight"
    )]
    DuplicateBackend {
        frontend: Frontend,
        backend: BackendKey,
    },
    #[error(
        "service {frontend}: {count} backends, but a Maglev table of size {m} allows at most \
         {max}; remove backends or configure a prime table size above 100 x backends"
    )]
    TooManyBackends {
        frontend: Frontend,
        count: usize,
        max: usize,
        m: usize,
    },
    #[error("service {frontend}: its Maglev table could not be built")]
    Maglev {
        frontend: Frontend,
        #[source]
        source: MaglevError,
    },
    #[error("service {frontend}: no free service id ({count} services exist); remove some")]
    IdsExhausted { frontend: Frontend, count: usize },
}

/// An installed service: its spec, its id and its Maglev table.
#[derive(Clone, Debug)]
pub struct Service {
    id: ServiceId,
    spec: ServiceSpec,
    maglev: MaglevTable,
}

impl Service {
    pub fn id(&self) -> ServiceId {
        self.id
    }

    pub fn frontend(&self) -> &Frontend {
        &self.spec.frontend
    }

    /// The backends in the order the spec gave them.
    pub fn backends(&self) -> &[Backend] {
        &self.spec.backends
    }

    pub fn mode(&self) -> LbMode {
        self.spec.mode
    }

    pub fn kind(&self) -> FrontendKind {
        self.spec.kind
    }

    /// The backend for a flow ([`flow_hash`]): `table[hash % M]`. `None` when no backend is
    /// selectable. Never returns a backend of weight 0. Fast path.
    #[inline]
    pub fn select(&self, flow_hash: u64) -> Option<&Backend> {
        let index = self.maglev.lookup(flow_hash)?;
        self.spec.backends.get(usize::from(index))
    }

    /// The Maglev table (for `flagella service list` and tests).
    pub fn maglev(&self) -> &MaglevTable {
        &self.maglev
    }

    /// Bytes this service holds: inline, backend list and Maglev table (not the map slot).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.spec.backends.capacity() * std::mem::size_of::<Backend>()
            + self.maglev.memory_bytes()
            - std::mem::size_of::<MaglevTable>()
    }
}

/// All services of the node, by frontend and by id.
#[derive(Clone, Debug)]
pub struct Services {
    maglev_m: usize,
    seed: u64,
    by_frontend: HashMap<Frontend, Service>,
    frontend_of: HashMap<ServiceId, Frontend>,
    /// Number of services per VIP, for [`Services::is_frontend_addr`].
    vips: HashMap<IpAddr, u32>,
    /// Next id to try; ids are handed out in increasing order, wrapping past `u32::MAX` to 1.
    next_id: u32,
}

impl Services {
    /// An empty table whose services use Maglev tables of `maglev_m` entries (a prime, e.g.
    /// [`maglev::DEFAULT_M`]) and the cluster-wide `seed` (the same on every node).
    pub fn new(maglev_m: usize, seed: u64) -> Result<Self, ServiceError> {
        maglev::validate_m(maglev_m).map_err(|source| ServiceError::TableSize { source })?;
        Ok(Services {
            maglev_m,
            seed,
            by_frontend: HashMap::new(),
            frontend_of: HashMap::new(),
            vips: HashMap::new(),
            next_id: 1,
        })
    }

    /// The Maglev table size every service uses.
    pub fn maglev_m(&self) -> usize {
        self.maglev_m
    }

    /// The cluster-wide seed, to pass to [`flow_hash`].
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Installs or replaces the service of `spec.frontend`. A frontend already present keeps its
    /// id; its Maglev table is rebuilt. On error nothing changes. Control path.
    pub fn upsert(&mut self, spec: ServiceSpec) -> Result<ServiceId, ServiceError> {
        validate(&spec, self.maglev_m)?;
        let frontend = spec.frontend;
        let maglev = self.build_table(&spec)?;
        let id = match self.by_frontend.get(&frontend) {
            Some(existing) => existing.id,
            None => self.allocate_id(frontend)?,
        };
        let service = Service { id, spec, maglev };
        if self.by_frontend.insert(frontend, service).is_none() {
            self.frontend_of.insert(id, frontend);
            *self.vips.entry(frontend.addr).or_insert(0) += 1;
        }
        Ok(id)
    }

    /// Removes the service of `frontend`, returning its spec. Control path.
    pub fn remove(&mut self, frontend: &Frontend) -> Option<ServiceSpec> {
        let service = self.by_frontend.remove(frontend)?;
        self.frontend_of.remove(&service.id);
        if let Some(count) = self.vips.get_mut(&frontend.addr) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.vips.remove(&frontend.addr);
            }
        }
        Some(service.spec)
    }

    /// The service a packet to `addr:port` over `proto` is for. Fast path.
    #[inline]
    pub fn lookup(&self, addr: IpAddr, port: u16, proto: u8) -> Option<&Service> {
        self.by_frontend.get(&Frontend { addr, port, proto })
    }

    /// The service with this id (reverse NAT from a conntrack entry). Fast path.
    #[inline]
    pub fn get(&self, id: ServiceId) -> Option<&Service> {
        let frontend = self.frontend_of.get(&id)?;
        self.by_frontend.get(frontend)
    }

    /// True when `addr` is the VIP of at least one service, whatever the port and protocol (a
    /// packet to a VIP on a port with no service is dropped, not routed). Fast path.
    #[inline]
    pub fn is_frontend_addr(&self, addr: IpAddr) -> bool {
        self.vips.contains_key(&addr)
    }

    pub fn len(&self) -> usize {
        self.by_frontend.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_frontend.is_empty()
    }

    /// All services, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Service> {
        self.by_frontend.values()
    }

    /// Estimated bytes held by the whole table: the three maps' slots (one control byte per
    /// slot, as hashbrown lays them out) plus each service's backends and Maglev table.
    pub fn memory_bytes(&self) -> usize {
        fn slots<K, V>(map: &HashMap<K, V>) -> usize {
            map.capacity() * (std::mem::size_of::<(K, V)>() + 1)
        }
        let heap: usize = self
            .iter()
            .map(|s| s.memory_bytes() - std::mem::size_of::<Service>())
            .sum();
        std::mem::size_of::<Self>()
            + slots(&self.by_frontend)
            + slots(&self.frontend_of)
            + slots(&self.vips)
            + heap
    }

    /// [`Services::memory_bytes`] divided by the number of services (0 when empty); what the
    /// benchmark reports as "memory per service".
    pub fn bytes_per_service(&self) -> usize {
        self.memory_bytes().checked_div(self.len()).unwrap_or(0)
    }

    fn build_table(&self, spec: &ServiceSpec) -> Result<MaglevTable, ServiceError> {
        let keys: Vec<(BackendKey, u16)> =
            spec.backends.iter().map(|b| (b.key(), b.weight)).collect();
        maglev::build(&keys, self.maglev_m, self.seed).map_err(|source| ServiceError::Maglev {
            frontend: spec.frontend,
            source,
        })
    }

    /// The next id not in use, from `next_id` on; 0 is skipped. Errors only when all
    /// 2^32 - 1 ids are taken.
    fn allocate_id(&mut self, frontend: Frontend) -> Result<ServiceId, ServiceError> {
        let count = self.frontend_of.len();
        if count >= u32::MAX as usize {
            return Err(ServiceError::IdsExhausted { frontend, count });
        }
        loop {
            let candidate = ServiceId(self.next_id);
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.frontend_of.contains_key(&candidate) {
                return Ok(candidate);
            }
        }
    }
}

/// Checks a spec against the rules in [`ServiceError`]; the first problem wins.
fn validate(spec: &ServiceSpec, maglev_m: usize) -> Result<(), ServiceError> {
    let frontend = spec.frontend;
    if frontend.proto != PROTO_TCP && frontend.proto != PROTO_UDP {
        return Err(ServiceError::UnsupportedProtocol {
            frontend,
            proto: frontend.proto,
        });
    }
    if frontend.port == 0 {
        return Err(ServiceError::FrontendPortZero { frontend });
    }
    let max = maglev::max_backends(maglev_m);
    if spec.backends.len() > max {
        return Err(ServiceError::TooManyBackends {
            frontend,
            count: spec.backends.len(),
            max,
            m: maglev_m,
        });
    }
    for backend in &spec.backends {
        if backend.addr.is_ipv4() != frontend.addr.is_ipv4() {
            return Err(ServiceError::FamilyMismatch {
                frontend,
                backend: backend.key(),
            });
        }
        if backend.port == 0 {
            return Err(ServiceError::BackendPortZero {
                frontend,
                backend: backend.key(),
            });
        }
    }
    let mut keys: Vec<BackendKey> = spec.backends.iter().map(Backend::key).collect();
    keys.sort_unstable_by_key(BackendKey::to_bytes);
    if let Some(pair) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(ServiceError::DuplicateBackend {
            frontend,
            backend: pair[0],
        });
    }
    Ok(())
}

/// The hash that picks a flow's backend: over the 5-tuple, with the cluster-wide `seed`, the
/// same on every node and every build. Fast path: no allocation.
///
/// Input bytes, in order: source address octets, destination address octets (4 or 16 each),
/// source port, destination port (big endian), protocol; hashed by [`maglev::hash_bytes`].
/// Not symmetric: replies find their flow through conntrack, not through this hash. For ICMP,
/// pass the echo identifier as a port, or 0.
pub fn flow_hash(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8, seed: u64) -> u64 {
    let mut tuple = TupleBytes::default();
    tuple.push_addr(src);
    tuple.push_addr(dst);
    tuple.push(&sport.to_be_bytes());
    tuple.push(&dport.to_be_bytes());
    tuple.push(&[proto]);
    maglev::hash_bytes(tuple.as_slice(), seed)
}

/// A stack buffer for the widest 5-tuple (IPv6: 16 + 16 + 2 + 2 + 1 bytes).
struct TupleBytes {
    buf: [u8; 37],
    len: usize,
}

impl Default for TupleBytes {
    fn default() -> Self {
        TupleBytes {
            buf: [0; 37],
            len: 0,
        }
    }
}

impl TupleBytes {
    fn push_addr(&mut self, addr: IpAddr) {
        match addr {
            IpAddr::V4(a) => self.push(&a.octets()),
            IpAddr::V6(a) => self.push(&a.octets()),
        }
    }

    /// Appends `bytes`; the buffer is sized for the widest tuple, so this never truncates.
    fn push(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(bytes);
            self.len = end;
        }
    }

    fn as_slice(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SEED: u64 = 0x0123_4567_89ab_cdef;
    /// A small prime keeps these tests fast; the properties do not depend on M.
    const M: usize = 1021;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn tcp(addr: IpAddr, port: u16) -> Frontend {
        Frontend {
            addr,
            port,
            proto: PROTO_TCP,
        }
    }

    fn backend(d: u8, weight: u16) -> Backend {
        Backend {
            addr: v4(10, 0, 1, d),
            port: 8080,
            weight,
        }
    }

    fn spec(frontend: Frontend, backends: Vec<Backend>) -> ServiceSpec {
        ServiceSpec {
            frontend,
            backends,
            mode: LbMode::Snat,
            kind: FrontendKind::ClusterIp,
        }
    }

    fn table() -> Services {
        Services::new(M, SEED).unwrap()
    }

    #[test]
    fn upsert_lookup_get_remove() {
        let mut t = table();
        assert!(t.is_empty());
        let vip = v4(10, 96, 0, 10);
        let fe = tcp(vip, 80);
        let id = t
            .upsert(spec(fe, vec![backend(1, 1), backend(2, 1)]))
            .unwrap();
        assert_ne!(id.0, 0);
        assert_eq!(t.len(), 1);

        let s = t.lookup(vip, 80, PROTO_TCP).unwrap();
        assert_eq!(s.id(), id);
        assert_eq!(s.frontend(), &fe);
        assert_eq!(s.backends().len(), 2);
        assert_eq!(s.mode(), LbMode::Snat);
        assert!(t.lookup(vip, 80, PROTO_UDP).is_none());
        assert!(t.lookup(vip, 81, PROTO_TCP).is_none());
        assert!(t.lookup(v4(10, 96, 0, 11), 80, PROTO_TCP).is_none());
        assert_eq!(t.get(id).unwrap().frontend(), &fe);
        assert_eq!(t.iter().count(), 1);

        let removed = t.remove(&fe).unwrap();
        assert_eq!(removed.backends, vec![backend(1, 1), backend(2, 1)]);
        assert!(t.lookup(vip, 80, PROTO_TCP).is_none());
        assert!(t.get(id).is_none());
        assert!(t.remove(&fe).is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn update_keeps_the_id_and_rebuilds_maglev() {
        let mut t = table();
        let fe = tcp(v4(10, 96, 0, 10), 80);
        let other = tcp(v4(10, 96, 0, 10), 443);
        let id = t.upsert(spec(fe, vec![backend(1, 1)])).unwrap();
        let other_id = t.upsert(spec(other, vec![backend(1, 1)])).unwrap();
        assert_ne!(id, other_id);
        let before = t.get(id).unwrap().maglev().clone();

        let again = t
            .upsert(ServiceSpec {
                frontend: fe,
                backends: vec![backend(1, 1), backend(2, 1)],
                mode: LbMode::Dsr,
                kind: FrontendKind::ClusterIp,
            })
            .unwrap();
        assert_eq!(again, id);
        assert_eq!(t.len(), 2);
        let s = t.get(id).unwrap();
        assert_eq!(s.mode(), LbMode::Dsr);
        assert_eq!(s.backends().len(), 2);
        assert_ne!(s.maglev(), &before);
        let picked: std::collections::HashSet<_> = (0..200u64)
            .filter_map(|h| s.select(h))
            .map(|b| b.addr)
            .collect();
        assert_eq!(picked.len(), 2, "both backends are used after the update");
    }

    #[test]
    fn ids_are_not_reused_right_away() {
        let mut t = table();
        let a = tcp(v4(10, 96, 0, 1), 80);
        let b = tcp(v4(10, 96, 0, 2), 80);
        let id_a = t.upsert(spec(a, vec![])).unwrap();
        t.remove(&a);
        let id_b = t.upsert(spec(b, vec![])).unwrap();
        assert_ne!(id_a, id_b);
        assert!(t.get(id_a).is_none());
    }

    #[test]
    fn id_allocation_wraps_and_skips_ids_in_use() {
        let mut t = table();
        let a = tcp(v4(10, 96, 0, 1), 80);
        let b = tcp(v4(10, 96, 0, 2), 80);
        let c = tcp(v4(10, 96, 0, 3), 80);
        assert_eq!(t.upsert(spec(a, vec![])).unwrap(), ServiceId(1));
        t.next_id = u32::MAX;
        assert_eq!(t.upsert(spec(b, vec![])).unwrap(), ServiceId(u32::MAX));
        // Wraps past 0 (never assigned) and past 1 (still in use).
        assert_eq!(t.upsert(spec(c, vec![])).unwrap(), ServiceId(2));
    }

    #[test]
    fn frontend_addr_counts_every_port() {
        let mut t = table();
        let vip = v4(10, 96, 0, 10);
        assert!(!t.is_frontend_addr(vip));
        t.upsert(spec(tcp(vip, 80), vec![])).unwrap();
        t.upsert(spec(
            Frontend {
                addr: vip,
                port: 53,
                proto: PROTO_UDP,
            },
            vec![],
        ))
        .unwrap();
        // Updating must not count the VIP twice.
        t.upsert(spec(tcp(vip, 80), vec![backend(1, 1)])).unwrap();
        assert!(t.is_frontend_addr(vip));
        assert!(!t.is_frontend_addr(v4(10, 96, 0, 11)));
        t.remove(&tcp(vip, 80));
        assert!(t.is_frontend_addr(vip), "the UDP service still uses it");
        t.remove(&Frontend {
            addr: vip,
            port: 53,
            proto: PROTO_UDP,
        });
        assert!(!t.is_frontend_addr(vip));
    }

    #[test]
    fn rejects_invalid_specs() {
        let mut t = table();
        let fe = tcp(v4(10, 96, 0, 10), 80);
        let v6_backend = Backend {
            addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            port: 80,
            weight: 1,
        };
        assert_eq!(
            t.upsert(spec(fe, vec![backend(1, 1), v6_backend])),
            Err(ServiceError::FamilyMismatch {
                frontend: fe,
                backend: v6_backend.key()
            })
        );
        let zero_port = Backend {
            port: 0,
            ..backend(1, 1)
        };
        assert_eq!(
            t.upsert(spec(fe, vec![zero_port])),
            Err(ServiceError::BackendPortZero {
                frontend: fe,
                backend: zero_port.key()
            })
        );
        let fe0 = tcp(v4(10, 96, 0, 10), 0);
        assert_eq!(
            t.upsert(spec(fe0, vec![])),
            Err(ServiceError::FrontendPortZero { frontend: fe0 })
        );
        let icmp = Frontend { proto: 1, ..fe };
        assert_eq!(
            t.upsert(spec(icmp, vec![])),
            Err(ServiceError::UnsupportedProtocol {
                frontend: icmp,
                proto: 1
            })
        );
        assert_eq!(
            t.upsert(spec(fe, vec![backend(1, 1), backend(1, 0)])),
            Err(ServiceError::DuplicateBackend {
                frontend: fe,
                backend: backend(1, 1).key()
            })
        );
        let mut small = Services::new(13, SEED).unwrap();
        let thirteen: Vec<Backend> = (1..=13).map(|d| backend(d, 1)).collect();
        assert_eq!(
            small.upsert(spec(fe, thirteen.clone())),
            Err(ServiceError::TooManyBackends {
                frontend: fe,
                count: 13,
                max: 12,
                m: 13
            })
        );
        assert!(small.upsert(spec(fe, thirteen[..12].to_vec())).is_ok());
        assert!(t.is_empty(), "rejected specs leave no trace");
    }

    #[test]
    fn error_messages_name_the_frontend() {
        let mut t = table();
        let fe = Frontend {
            addr: "fd00::10".parse().unwrap(),
            port: 443,
            proto: PROTO_TCP,
        };
        let err = t.upsert(spec(fe, vec![backend(1, 1)])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("[fd00::10]:443/tcp"), "{text}");
        assert!(text.contains("10.0.1.1:8080"), "{text}");
    }

    #[test]
    fn table_size_must_be_prime() {
        assert_eq!(
            Services::new(16383, SEED).unwrap_err(),
            ServiceError::TableSize {
                source: MaglevError::NotPrime { m: 16383 }
            }
        );
        assert!(Services::new(maglev::DEFAULT_M, SEED).is_ok());
    }

    #[test]
    fn failed_update_keeps_the_old_service() {
        let mut t = table();
        let fe = tcp(v4(10, 96, 0, 10), 80);
        let id = t.upsert(spec(fe, vec![backend(1, 1)])).unwrap();
        let bad = Backend {
            port: 0,
            ..backend(2, 1)
        };
        assert!(t.upsert(spec(fe, vec![backend(1, 1), bad])).is_err());
        let s = t.get(id).unwrap();
        assert_eq!(s.backends(), &[backend(1, 1)]);
        assert_eq!(s.select(42), Some(&backend(1, 1)));
    }

    #[test]
    fn nothing_selectable_selects_nothing() {
        let mut t = table();
        let empty = tcp(v4(10, 96, 0, 1), 80);
        let draining = tcp(v4(10, 96, 0, 2), 80);
        t.upsert(spec(empty, vec![])).unwrap();
        t.upsert(spec(draining, vec![backend(1, 0), backend(2, 0)]))
            .unwrap();
        for h in [0, 1, u64::MAX] {
            assert!(t
                .lookup(empty.addr, 80, PROTO_TCP)
                .unwrap()
                .select(h)
                .is_none());
            assert!(t
                .lookup(draining.addr, 80, PROTO_TCP)
                .unwrap()
                .select(h)
                .is_none());
        }
    }

    #[test]
    fn flow_hash_golden_values() {
        // Cross-node contract: every node must compute these exact numbers, or flows entering
        // through different nodes would land on different backends. Cross-checked against an
        // independent (Python) model of the byte layout and `maglev::hash_bytes`.
        let h4 = flow_hash(
            v4(192, 168, 1, 10),
            v4(10, 96, 0, 10),
            40000,
            80,
            PROTO_TCP,
            SEED,
        );
        assert_eq!(h4, 0xe844_9ee0_bfd5_01ee);
        let h6 = flow_hash(
            "fd00::1".parse().unwrap(),
            "fd00::10".parse().unwrap(),
            40000,
            443,
            PROTO_UDP,
            0,
        );
        assert_eq!(h6, 0x4465_cf96_bd81_e3e9);
    }

    #[test]
    fn flow_hash_depends_on_every_field() {
        let base = (v4(192, 168, 1, 10), v4(10, 96, 0, 10), 40000, 80, PROTO_TCP);
        let h = |(s, d, sp, dp, p): (IpAddr, IpAddr, u16, u16, u8), seed| {
            flow_hash(s, d, sp, dp, p, seed)
        };
        let reference = h(base, SEED);
        assert_eq!(reference, h(base, SEED), "deterministic");
        assert_ne!(reference, h(base, SEED + 1));
        assert_ne!(
            reference,
            h((v4(192, 168, 1, 11), base.1, 40000, 80, 6), SEED)
        );
        assert_ne!(
            reference,
            h((base.0, v4(10, 96, 0, 11), 40000, 80, 6), SEED)
        );
        assert_ne!(reference, h((base.0, base.1, 40001, 80, 6), SEED));
        assert_ne!(reference, h((base.0, base.1, 40000, 81, 6), SEED));
        assert_ne!(reference, h((base.0, base.1, 40000, 80, 17), SEED));
        // Swapping the ports is a different flow.
        assert_ne!(reference, h((base.0, base.1, 80, 40000, 6), SEED));
    }

    #[test]
    fn memory_per_service() {
        let mut t = Services::new(maglev::DEFAULT_M, SEED).unwrap();
        for s in 0..20u8 {
            let backends = (1..=10).map(|d| backend(d, 1)).collect();
            t.upsert(spec(tcp(v4(10, 96, 1, s), 80), backends)).unwrap();
        }
        let per = t.bytes_per_service();
        println!(
            "services: {} bytes per service (M={}, 10 backends)",
            per,
            maglev::DEFAULT_M
        );
        // The Maglev table (2 bytes x M) dominates.
        assert!(per >= 2 * maglev::DEFAULT_M);
        assert!(per < 3 * maglev::DEFAULT_M);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn select_never_returns_a_weight_zero_backend(
            weights in prop::collection::vec(0u16..4, 1..40),
            hashes in prop::collection::vec(any::<u64>(), 64),
            seed in any::<u64>(),
        ) {
            let mut t = Services::new(M, seed).unwrap();
            let backends: Vec<Backend> = weights
                .iter()
                .zip(1u8..)
                .map(|(&w, d)| backend(d, w))
                .collect();
            let fe = tcp(v4(10, 96, 0, 10), 80);
            t.upsert(spec(fe, backends)).unwrap();
            let s = t.lookup(fe.addr, fe.port, fe.proto).unwrap();
            let any_selectable = weights.iter().any(|&w| w > 0);
            for h in hashes {
                match s.select(h) {
                    Some(b) => prop_assert!(b.weight > 0),
                    None => prop_assert!(!any_selectable),
                }
            }
        }

        #[test]
        fn lookup_finds_exactly_what_was_upserted(
            ports in prop::collection::hash_set(1u16.., 1..30),
            probe in 1u16..,
        ) {
            let mut t = table();
            let vip = v4(10, 96, 0, 10);
            for &p in &ports {
                t.upsert(spec(tcp(vip, p), vec![backend(1, 1)])).unwrap();
            }
            prop_assert_eq!(t.len(), ports.len());
            prop_assert_eq!(t.lookup(vip, probe, PROTO_TCP).is_some(), ports.contains(&probe));
            for s in t.iter() {
                prop_assert_eq!(t.get(s.id()).map(|g| g.frontend()), Some(s.frontend()));
            }
        }
    }
}
