//! Model test of the handoff under concurrency: worker threads, each with its own `Pipeline`
//! (conntrack with insert, lookup, expiry and GC as a worker runs them) and its `Handoff`,
//! receive the frames of many UDP flows in both directions, spread over their "queues" with no
//! regard for flows, and hand each frame they do not own to its owner.
//!
//! Checked at the end: every frame was processed exactly once (or, with rings too small for
//! the load, dropped and counted, never both, never twice), by its flow's owner; no flow has
//! a conntrack entry in two workers' tables.

#![allow(clippy::unwrap_used)] // Tests: a failed setup should stop the test loudly.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dataplane::pipeline::flow_owner::FlowOwner;
use dataplane::pipeline::handoff::{mesh, Dispatch, Handoff};
use dataplane::pipeline::{Pipeline, PipelineConfig, Verdict};
use dataplane::tables::conntrack::FlowKey;
use dataplane::tables::endpoints::{EndpointId, EndpointSpec, Endpoints};
use dataplane::tables::ipcache::{IpCache, IpCacheEntry};
use dataplane::tables::maglev::DEFAULT_M;
use dataplane::tables::services::Services;
use dataplane::tables::{LocalNode, Tables};
use dataplane::testutil::{self, PacketBuilder};
use dataplane::{Identity, MacAddr, Prefix};

const PODS: u8 = 8;
const ROUTER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xff, 0x01]);
/// Virtual nanoseconds per frame received: 16k frames span ~160 s, so UDP entries (60 s) expire
/// and are collected while the test runs.
const NS_PER_FRAME: u64 = 10_000_000;

fn pod_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 9, 0, 2 + i)
}

fn pod_mac(i: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0x09, i])
}

fn pod_ifindex(i: u8) -> u32 {
    10 + u32::from(i)
}

fn tables() -> Tables {
    let mut endpoints = Endpoints::new();
    let mut ipcache = IpCache::new();
    for i in 0..PODS {
        endpoints
            .upsert(EndpointSpec {
                id: EndpointId(u32::from(i) + 1),
                ifindex: pod_ifindex(i),
                mac: pod_mac(i),
                ipv4: Some(pod_ip(i)),
                ipv6: None,
                identity: Identity(1000 + u32::from(i)),
            })
            .unwrap();
        ipcache.upsert(
            Prefix::host(IpAddr::V4(pod_ip(i))),
            IpCacheEntry::local(Identity(1000 + u32::from(i))),
        );
    }
    let mut t = Tables::empty(
        LocalNode {
            router_mac: ROUTER_MAC,
            gateway_ipv4: Some(Ipv4Addr::new(10, 9, 0, 1)),
            ..LocalNode::default()
        },
        Services::new(DEFAULT_M, 1).unwrap(),
    );
    t.endpoints = Arc::new(endpoints);
    t.ipcache = Arc::new(ipcache);
    t
}

/// One frame of the load: its id (in its payload), ingress interface and bytes.
struct Sent {
    id: u32,
    ingress: u32,
    bytes: Vec<u8>,
}

/// `flows` UDP flows between pod pairs, `per_direction` frames each way, interleaved.
fn load(flows: u32, per_direction: u32) -> Vec<Sent> {
    let mut out = Vec::new();
    for _ in 0..per_direction {
        for f in 0..flows {
            let (a, b) = (
                (f % u32::from(PODS)) as u8,
                ((f / 3 + 1) % u32::from(PODS)) as u8,
            );
            let b = if a == b { (b + 1) % PODS } else { b };
            let sport = 10_000 + f as u16;
            for (src, dst, sp, dp) in [(a, b, sport, 53), (b, a, 53, sport)] {
                let id = out.len() as u32;
                let bytes =
                    PacketBuilder::udp(IpAddr::V4(pod_ip(src)), sp, IpAddr::V4(pod_ip(dst)), dp)
                        .macs(pod_mac(src), ROUTER_MAC)
                        .payload(&id.to_le_bytes())
                        .build();
                out.push(Sent {
                    id,
                    ingress: pod_ifindex(src),
                    bytes,
                });
            }
        }
    }
    out
}

/// The id a frame carries (the last 4 bytes: its payload).
fn id_of(frame: &[u8]) -> u32 {
    let n = frame.len();
    u32::from_le_bytes(frame[n - 4..].try_into().unwrap())
}

/// What one worker thread did.
#[derive(Default)]
struct Outcome {
    /// (frame id, verdict) for each frame this worker processed.
    processed: Vec<(u32, Verdict)>,
    /// Ids of frames it could not hand off.
    dropped: Vec<u32>,
    flows: Vec<FlowKey>,
    ring_full: u64,
}

/// Runs `workers` threads over `sent` (frame i arrives on worker i % workers, or on a worker
/// picked by a cheap mix of i) with rings of `ring_slots` slots.
fn run(workers: usize, ring_slots: usize, sent: &Arc<Vec<Sent>>) -> Vec<Outcome> {
    let t = Arc::new(tables());
    let owner = FlowOwner::new(workers, None);
    let clock = Arc::new(AtomicU64::new(1_000_000_000));
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = mesh(workers, ring_slots, 256)
        .into_iter()
        .enumerate()
        .map(|(w, links)| {
            let (t, sent, clock, done) = (t.clone(), sent.clone(), clock.clone(), done.clone());
            std::thread::spawn(move || {
                let mut h = Handoff::new(owner, links);
                let mut p = Pipeline::new(PipelineConfig::default()).unwrap();
                let mut out = Outcome::default();
                let mine = sent
                    .iter()
                    .filter(|s| (s.id as usize).wrapping_mul(2_654_435_761) % workers == w);
                let mut process = |p: &mut Pipeline, out: &mut Outcome, ingress, bytes: &[u8]| {
                    let now = clock.fetch_add(NS_PER_FRAME, Ordering::Relaxed);
                    let mut frames = [testutil::frame(bytes)];
                    let v = p.process(&t, ingress, &mut frames, now)[0];
                    out.processed.push((id_of(bytes), v));
                    done.fetch_add(1, Ordering::Relaxed);
                };
                for s in mine {
                    match h.dispatch(&t, s.ingress, &s.bytes) {
                        Dispatch::Keep => process(&mut p, &mut out, s.ingress, &s.bytes),
                        Dispatch::HandedOff => {}
                        Dispatch::Dropped => {
                            out.dropped.push(s.id);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    take_over(&mut h, &mut p, &mut out, &mut process);
                }
                while done.load(Ordering::Relaxed) < sent.len() {
                    if take_over(&mut h, &mut p, &mut out, &mut process) == 0 {
                        p.maintain(clock.load(Ordering::Relaxed));
                        std::thread::yield_now();
                    }
                }
                out.flows = p.conntrack().iter().map(|(k, _)| *k).collect();
                out.ring_full = h.counters.ring_full;
                out
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Processes up to a batch of frames handed to this worker; returns how many.
fn take_over(
    h: &mut Handoff,
    p: &mut Pipeline,
    out: &mut Outcome,
    process: &mut impl FnMut(&mut Pipeline, &mut Outcome, u32, &[u8]),
) -> usize {
    let mut taken = Vec::new();
    h.take_over(32, |ingress, bytes| taken.push((ingress, bytes.to_vec())));
    for (ingress, bytes) in &taken {
        process(p, out, *ingress, bytes);
    }
    taken.len()
}

/// The checks common to both runs; returns the number of frames dropped.
fn check(workers: usize, sent: &[Sent], outcomes: &[Outcome]) -> usize {
    let t = tables();
    let owner = FlowOwner::new(workers, None);
    let mut seen: HashMap<u32, usize> = HashMap::new();
    for (w, o) in outcomes.iter().enumerate() {
        for &(id, verdict) in &o.processed {
            assert!(seen.insert(id, w).is_none(), "frame {id} processed twice");
            let s = &sent[id as usize];
            assert_eq!(
                owner.owner(&t, &s.bytes),
                Some(w),
                "frame {id} on its owner"
            );
            assert!(
                matches!(verdict, Verdict::Tx { .. }),
                "frame {id}: {verdict:?}"
            );
        }
    }
    let dropped: Vec<u32> = outcomes
        .iter()
        .flat_map(|o| o.dropped.iter().copied())
        .collect();
    for id in &dropped {
        assert!(
            !seen.contains_key(id),
            "frame {id} both dropped and processed"
        );
    }
    assert_eq!(seen.len() + dropped.len(), sent.len(), "no frame lost");
    let ring_full: u64 = outcomes.iter().map(|o| o.ring_full).sum();
    assert_eq!(ring_full as usize, dropped.len(), "every drop counted");
    let mut holders: HashMap<FlowKey, usize> = HashMap::new();
    for o in outcomes {
        for k in &o.flows {
            *holders.entry(*k).or_default() += 1;
        }
    }
    assert!(!holders.is_empty());
    for (k, n) in holders {
        assert_eq!(
            n,
            1,
            "flow {:?} -> {:?} held by {n} workers",
            k.src(),
            k.dst()
        );
    }
    dropped.len()
}

#[test]
fn four_workers_lose_and_duplicate_nothing_and_keep_each_flow_in_one_table() {
    let sent = Arc::new(load(512, 8));
    let outcomes = run(4, sent.len(), &sent); // rings that can hold the whole load
    assert_eq!(check(4, &sent, &outcomes), 0, "rings large enough: no drop");
    let processed: Vec<usize> = outcomes.iter().map(|o| o.processed.len()).collect();
    assert!(
        processed.iter().all(|&n| n > 1000),
        "every worker owns flows: {processed:?}"
    );
}

#[test]
fn four_workers_with_tiny_rings_drop_only_what_they_count() {
    let sent = Arc::new(load(256, 8));
    let outcomes = run(4, 2, &sent);
    check(4, &sent, &outcomes);
}
