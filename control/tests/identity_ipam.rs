//! Identity allocation and IPAM against a real etcd.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use control::identity::{IdentityAllocator, FIRST_IDENTITY};
use control::ipam::Ipam;
use control::store::Store;
use policy_compiler::labels::Labels;

fn labels(i: usize) -> Labels {
    [
        ("app".to_string(), format!("app-{i}")),
        (
            "io.kubernetes.pod.namespace".to_string(),
            "default".to_string(),
        ),
    ]
    .into_iter()
    .collect()
}

async fn store(e: &common::Etcd) -> Store {
    Store::connect(&e.urls(), Duration::from_secs(5))
        .await
        .unwrap()
}

/// Two nodes (threads, each with its own connection and runtime) allocate the same 40 label
/// sets at the same time, in opposite orders: they agree on every number, and no number names
/// two label sets.
#[test]
fn two_nodes_agree_on_identities() {
    let Some(etcd) = common::Etcd::start() else {
        return;
    };
    const N: usize = 40;
    let run = |node: &'static str, reverse: bool, urls: Vec<String>| {
        std::thread::spawn(move || {
            common::runtime().block_on(async move {
                let s = Store::connect(&urls, Duration::from_secs(5)).await.unwrap();
                let mut a = IdentityAllocator::new(s, node, Duration::from_secs(10))
                    .await
                    .unwrap();
                let mut order: Vec<usize> = (0..N).collect();
                if reverse {
                    order.reverse();
                }
                let mut got = BTreeMap::new();
                for i in order {
                    got.insert(i, a.acquire(&labels(i)).await.unwrap());
                }
                got
            })
        })
    };
    let t1 = run("node-1", false, etcd.urls());
    let t2 = run("node-2", true, etcd.urls());
    let (a, b) = (t1.join().unwrap(), t2.join().unwrap());
    assert_eq!(a, b, "the two nodes disagree");
    let mut by_number: HashMap<u32, usize> = HashMap::new();
    for (i, n) in &a {
        assert!(*n >= FIRST_IDENTITY);
        if let Some(j) = by_number.insert(*n, *i) {
            panic!("identity {n} given to label sets {i} and {j}");
        }
    }
    // The reverse index agrees.
    common::runtime().block_on(async {
        let alloc = IdentityAllocator::new(store(&etcd).await, "reader", Duration::from_secs(10))
            .await
            .unwrap();
        let all = alloc.list().await.unwrap();
        assert_eq!(all.len(), N);
        for (i, n) in &a {
            assert_eq!(all[n], labels(*i));
        }
    });
}

/// An allocator that stops (its lease dropped) and a new one for the same node: the same label
/// sets keep their numbers, new label sets get new numbers; released identities are collected
/// after the grace period only, and their numbers are never reused.
#[test]
fn restart_keeps_numbers_and_release_waits_for_grace() {
    let Some(etcd) = common::Etcd::start() else {
        return;
    };
    common::runtime().block_on(async {
        let s = store(&etcd).await;
        let first = {
            let mut a = IdentityAllocator::new(s.clone(), "node-1", Duration::from_secs(10))
                .await
                .unwrap();
            let x = a.acquire(&labels(1)).await.unwrap();
            let y = a.acquire(&labels(2)).await.unwrap();
            (x, y)
        }; // "killed": keep-alive stops; the refs stay until the lease expires
        let mut a = IdentityAllocator::new(s.clone(), "node-1", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(a.acquire(&labels(1)).await.unwrap(), first.0);
        assert_eq!(a.acquire(&labels(2)).await.unwrap(), first.1);
        let z = a.acquire(&labels(3)).await.unwrap();
        assert!(z != first.0 && z != first.1);

        // Release 2: not collected before the grace period, collected after it.
        a.release(first.1).await.unwrap();
        let mut gc = IdentityAllocator::new(s.clone(), "node-2", Duration::from_secs(10))
            .await
            .unwrap();
        // Labels 1 and 3 are still referenced through the first lease's keys or the second's.
        assert_eq!(
            gc.collect_garbage(Duration::from_millis(300))
                .await
                .unwrap(),
            Vec::<u32>::new()
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let deleted = gc
            .collect_garbage(Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(deleted, vec![first.1], "only the released identity goes");
        // Acquiring label set 2 again gives a fresh number, never a reused one.
        let again = a.acquire(&labels(2)).await.unwrap();
        assert!(again > z, "numbers are never reused ({again} after {z})");
        // A referenced identity survives any grace.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let deleted = gc.collect_garbage(Duration::ZERO).await.unwrap();
        assert!(
            !deleted.contains(&first.0) && !deleted.contains(&again),
            "{deleted:?}"
        );
    });
}

/// IPAM: distinct addresses, persisted across a restart of the allocator (a new Ipam over the
/// same etcd), idempotent per owner, reusable only after release; the gateway and the network
/// and broadcast addresses are never handed out.
#[test]
fn ipam_never_hands_out_an_address_twice() {
    let Some(mut etcd) = common::Etcd::start() else {
        return;
    };
    let cidr: dataplane::Prefix = "10.9.0.0/28".parse().unwrap();
    let first: Vec<std::net::IpAddr> = common::runtime().block_on(async {
        let ipam = Ipam::new(store(&etcd).await, "node-1", cidr);
        let mut v = Vec::new();
        for i in 0..5 {
            v.push(ipam.allocate(&format!("default/pod-{i}")).await.unwrap());
        }
        v
    });
    // Restart etcd too: the allocations are on disk.
    etcd.restart();
    common::runtime().block_on(async {
        let ipam = Ipam::new(store(&etcd).await, "node-1", cidr);
        assert_eq!(
            ipam.allocate("default/pod-2").await.unwrap(),
            first[2],
            "idempotent per owner"
        );
        let mut all = first.clone();
        for i in 5..13 {
            all.push(ipam.allocate(&format!("default/pod-{i}")).await.unwrap());
        }
        let set: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(
            set.len(),
            all.len(),
            "an address was handed out twice: {all:?}"
        );
        for bad in ["10.9.0.0", "10.9.0.1", "10.9.0.15"] {
            let bad: std::net::IpAddr = bad.parse().unwrap();
            assert!(!set.contains(&bad), "{bad} handed out");
        }
        // 16 addresses - network, gateway, broadcast = 13: the pool is now empty.
        assert!(ipam.allocate("default/one-too-many").await.is_err());
        ipam.release(first[0]).await.unwrap();
        assert_eq!(ipam.allocate("default/late").await.unwrap(), first[0]);
    });
}
