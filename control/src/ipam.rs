//! Host-scope IPAM: pod addresses from the node's pod CIDR, each allocation persisted in etcd
//! before it is handed out, so that a restart (or a second process) never hands an address
//! out twice.
//!
//! Keys: `/flagella/v1/ipam/<node>/<address>` -> `{"owner":"<namespace>/<pod>"}`.
//!
//! Invariants:
//! - an address is handed out only after a transaction created its key (it requires the key
//!   absent), so two allocations never return the same address, whichever process made them;
//! - [`Ipam::allocate`] is idempotent per owner: an owner that already holds an address gets
//!   it back (a restarted agent or a retried CNI ADD does not leak addresses);
//! - never handed out: the network address, the first host address (the pods' gateway) and, in
//!   IPv4, the broadcast address.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use dataplane::Prefix;

use crate::schema::ROOT;
use crate::store::{Store, StoreError};

/// Largest range scanned for a free address (an IPv6 /64 is not walked to its end).
const MAX_SCAN: u128 = 1 << 20;

/// An IPAM failure.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("pod CIDR {cidr} of node {node} is full; give the node a larger or a second pod CIDR")]
    Exhausted { node: String, cidr: Prefix },
    #[error("{address} is not in node {node}'s pod CIDR {cidr}")]
    OutOfRange {
        node: String,
        address: IpAddr,
        cidr: Prefix,
    },
    #[error("the addresses of endpoint {owner} cannot be written back: {reason}; fix or rewrite the endpoint's value")]
    WriteBack { owner: String, reason: String },
}

/// The value of an allocation key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allocation {
    pub owner: String,
}

/// The IPAM of one node and one pod CIDR.
#[derive(Clone, Debug)]
pub struct Ipam {
    store: Store,
    node: String,
    cidr: Prefix,
}

fn offset_addr(base: IpAddr, offset: u128) -> Option<IpAddr> {
    match base {
        IpAddr::V4(a) => {
            let v = u128::from(u32::from(a)).checked_add(offset)?;
            u32::try_from(v).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v)))
        }
        IpAddr::V6(a) => u128::from(a)
            .checked_add(offset)
            .map(|v| IpAddr::V6(Ipv6Addr::from(v))),
    }
}

/// The prefix of node `node`'s allocation keys: `/flagella/v1/ipam/<node>/`.
pub fn node_prefix(node: &str) -> String {
    format!("{ROOT}ipam/{node}/")
}

/// The allocation key of `addr` on node `node`.
pub fn allocation_key(node: &str, addr: IpAddr) -> String {
    format!("{}{addr}", node_prefix(node))
}

/// Every allocation of node `node`, of every pod CIDR: (address, owner). Keys or values that
/// do not decode are left out (their transaction-created keys still keep their addresses from
/// being handed out again).
pub async fn list_allocations(
    store: &Store,
    node: &str,
) -> Result<Vec<(IpAddr, String)>, StoreError> {
    let (kvs, _) = store.list(&node_prefix(node)).await?;
    Ok(kvs
        .into_iter()
        .filter_map(|kv| {
            let addr: IpAddr = kv.key.rsplit('/').next()?.parse().ok()?;
            let a: Allocation = serde_json::from_slice(&kv.value).ok()?;
            Some((addr, a.owner))
        })
        .collect())
}

/// Number of addresses in `cidr`, capped at [`MAX_SCAN`].
fn size(cidr: &Prefix) -> u128 {
    let width: u32 = if cidr.is_ipv4() { 32 } else { 128 };
    let host_bits = width - u32::from(cidr.prefix_len());
    if host_bits >= 20 {
        MAX_SCAN
    } else {
        1u128 << host_bits
    }
}

impl Ipam {
    pub fn new(store: Store, node: &str, cidr: Prefix) -> Ipam {
        Ipam {
            store,
            node: node.to_string(),
            cidr,
        }
    }

    fn key(&self, addr: IpAddr) -> String {
        allocation_key(&self.node, addr)
    }

    /// The candidates in order: skip the network address and the gateway; in IPv4 the last
    /// address is broadcast.
    fn candidates(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let n = size(&self.cidr);
        let last = if self.cidr.is_ipv4() && self.cidr.prefix_len() <= 30 {
            n.saturating_sub(1)
        } else {
            n
        };
        (2..last).filter_map(|o| offset_addr(self.cidr.addr(), o))
    }

    /// Every allocation of this node: (address, owner).
    pub async fn allocations(&self) -> Result<Vec<(IpAddr, String)>, IpamError> {
        Ok(list_allocations(&self.store, &self.node).await?)
    }

    /// An address for `owner` (`namespace/pod`): the one it already holds, else a free one.
    pub async fn allocate(&self, owner: &str) -> Result<IpAddr, IpamError> {
        let taken = self.allocations().await?;
        self.allocate_from(owner, &taken, &BTreeSet::new()).await
    }

    /// [`Ipam::allocate`] with this node's allocations already listed (`taken`, as
    /// [`Ipam::allocations`] returns them, plus any made since), never handing out an address
    /// of `in_use` (addresses endpoints hold without an allocation key: written by hand).
    /// `taken` only saves transactions: an address is still handed out only after the
    /// transaction that created its key succeeded.
    pub async fn allocate_from(
        &self,
        owner: &str,
        taken: &[(IpAddr, String)],
        in_use: &BTreeSet<IpAddr>,
    ) -> Result<IpAddr, IpamError> {
        if let Some((addr, _)) = taken
            .iter()
            .find(|(a, o)| o == owner && self.cidr.contains(*a))
        {
            return Ok(*addr);
        }
        let used: HashSet<IpAddr> = taken.iter().map(|(a, _)| *a).collect();
        let value = serde_json::to_vec(&Allocation {
            owner: owner.to_string(),
        })
        .unwrap_or_default();
        let mut client = self.store.client();
        for addr in self
            .candidates()
            .filter(|a| !used.contains(a) && !in_use.contains(a))
        {
            let key = self.key(addr);
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), value.clone(), None)]);
            let resp = client
                .txn(txn)
                .await
                .map_err(StoreError::etcd("ipam allocation"))?;
            if resp.succeeded() {
                return Ok(addr);
            }
        }
        Err(IpamError::Exhausted {
            node: self.node.clone(),
            cidr: self.cidr,
        })
    }

    /// Returns `addr` to the pool.
    pub async fn release(&self, addr: IpAddr) -> Result<(), IpamError> {
        if !self.cidr.contains(addr) {
            return Err(IpamError::OutOfRange {
                node: self.node.clone(),
                address: addr,
                cidr: self.cidr,
            });
        }
        self.store.delete(&self.key(addr)).await?;
        Ok(())
    }

    /// Returns every address of `owner` to the pool.
    pub async fn release_owner(&self, owner: &str) -> Result<(), IpamError> {
        for (addr, o) in self.allocations().await? {
            if o == owner {
                self.store.delete(&self.key(addr)).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn offsets_and_sizes() {
        let p: Prefix = "10.1.0.0/30".parse().unwrap();
        assert_eq!(size(&p), 4);
        assert_eq!(offset_addr(p.addr(), 2), Some("10.1.0.2".parse().unwrap()));
        assert_eq!(offset_addr("255.255.255.255".parse().unwrap(), 1), None);
        let p6: Prefix = "fd00::/64".parse().unwrap();
        assert_eq!(size(&p6), MAX_SCAN);
    }
}
