//! `cargo bench -p dataplane --bench workers`: the pipeline on 1 and 2 threads, in memory, with
//! the handoff between workers (`pipeline::handoff`) as `io::Worker` runs it.
//!
//! # The state
//! 256 local pods without policy, 8,192 established flows between them (3/4 TCP, 1/4 UDP,
//! 64-byte frames), opened through the pipelines before the clock starts, each in its owner's
//! conntrack (`pipeline::flow_owner`).
//!
//! # Runs
//! - `1 thread`: one pipeline, no handoff (what a single worker does today);
//! - `2 threads, independent`: two pipelines with no ownership lookup: what this machine's
//!   two cores give (memory, caches, other processes), the ceiling of the runs below;
//! - `2 threads, 0% handed off`: every frame arrives on its owner's queue (ideal steering),
//!   but each is looked up (the cost of `FlowOwner`);
//! - `2 threads, ~50% handed off`: each frame arrives on a queue picked by a hash of its flow
//!   and direction that knows nothing of owners (a veth pod's transmit queue, RSS on a NIC):
//!   about half the frames arrive on the other worker and are copied to it.
//!
//! Each thread owns a pipeline and receives pre-built batches of 64 frames of one ingress
//! interface; per batch it dispatches each frame (keep, or copy to the owner's ring), processes
//! the kept ones, then takes over up to a batch of frames handed to it (copied into its own
//! buffers, as into its UMEM) and processes them. Timed: dispatch, copies, processing. Not
//! timed: refreshing the input batches between chunks of 16 (the pipeline rewrites MACs and
//! TTL). The figure per thread is the median, over its chunks, of the chunk's time divided by
//! the frames it processed (its own and taken over): a chunk hit by another process's time
//! slice is an outlier the median ignores. Scaling ratio = 1-thread ns/packet divided by the
//! 2-thread ns/packet per thread: 1.0 is linear.
//!
//! `WORKERS_BENCH_SECS` (default 3) sets each run's length.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A bench: a broken set-up should stop loudly.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use dataplane::frame::Frame;
use dataplane::pipeline::flow_owner::FlowOwner;
use dataplane::pipeline::handoff::{mesh, Dispatch, Handoff};
use dataplane::pipeline::{Pipeline, PipelineConfig, Verdict};
use dataplane::tables::endpoints::{EndpointId, EndpointSpec, Endpoints};
use dataplane::tables::ipcache::{IpCache, IpCacheEntry};
use dataplane::tables::maglev::DEFAULT_M;
use dataplane::tables::services::Services;
use dataplane::tables::{LocalNode, Tables};
use dataplane::testutil::{PacketBuilder, TCP_ACK, TCP_SYN, TCP_SYN_ACK};
use dataplane::{Identity, MacAddr, Prefix};

const BATCH: usize = 64;
const CHUNK: usize = 16;
const PODS: u32 = 256;
const FLOWS: u32 = 8_192;
const HEADROOM: usize = 128;
const BUF: usize = 2_048;
const ROUTER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xff, 0x01]);
/// The pipeline's clock: fixed, so nothing expires.
const NOW: u64 = 1_000 * 1_000_000_000;

fn pod_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 2)) + i)
}

fn pod_mac(i: u32) -> MacAddr {
    let b = i.to_be_bytes();
    MacAddr([0x02, 0x01, b[0], b[1], b[2], b[3]])
}

fn pod_ifindex(i: u32) -> u32 {
    100 + i
}

fn tables() -> Tables {
    let mut endpoints = Endpoints::new();
    let mut ipcache = IpCache::new();
    for i in 0..PODS {
        let identity = Identity(1000 + i % 64);
        endpoints
            .upsert(EndpointSpec {
                id: EndpointId(i + 1),
                ifindex: pod_ifindex(i),
                mac: pod_mac(i),
                ipv4: Some(pod_ip(i)),
                ipv6: None,
                identity,
            })
            .unwrap();
        ipcache.upsert(
            Prefix::host(IpAddr::V4(pod_ip(i))),
            IpCacheEntry::local(identity),
        );
    }
    let mut t = Tables::empty(
        LocalNode {
            router_mac: ROUTER_MAC,
            gateway_ipv4: Some(Ipv4Addr::new(10, 0, 0, 1)),
            ..LocalNode::default()
        },
        Services::new(DEFAULT_M, 1).unwrap(),
    );
    t.endpoints = Arc::new(endpoints);
    t.ipcache = Arc::new(ipcache);
    t
}

/// Flow `f`: (client, server, TCP?, client port, server port).
fn flow(f: u32) -> (u32, u32, bool, u16, u16) {
    let client = f % PODS;
    let server = (f / PODS * 7 + client + 1) % PODS;
    (client, server, f % 4 != 3, 10_000 + (f / PODS) as u16, 80)
}

/// A frame of flow `f` in direction `reply`, with TCP `flags`: (ingress, bytes).
fn frame_of(f: u32, reply: bool, flags: u8) -> (u32, Vec<u8>) {
    let (c, s, tcp, cport, sport) = flow(f);
    let (src, dst, sp, dp) = if reply {
        (s, c, sport, cport)
    } else {
        (c, s, cport, sport)
    };
    let (a, b) = (IpAddr::V4(pod_ip(src)), IpAddr::V4(pod_ip(dst)));
    let builder = if tcp {
        PacketBuilder::tcp(a, sp, b, dp, flags)
    } else {
        PacketBuilder::udp(a, sp, b, dp)
    };
    let mut bytes = builder.macs(pod_mac(src), ROUTER_MAC).build();
    bytes.resize(bytes.len().max(60), 0);
    (pod_ifindex(src), bytes)
}

/// A cheap hash of (flow, direction) that knows nothing of owners: the "queue" a frame
/// arrives on.
fn queue_of(f: u32, reply: bool, queues: usize) -> usize {
    let h = (u64::from(f) << 1 | u64::from(reply)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((u128::from(h) * queues as u128) >> 64) as usize
}

/// One batch: its ingress and the frames' template bytes.
struct Batch {
    ingress: u32,
    frames: Vec<Vec<u8>>,
}

/// The batches thread `w` of `threads` receives: with `spread`, by `queue_of`; without, each
/// frame on its owner's queue.
fn batches_for(w: usize, threads: usize, spread: bool, t: &Tables) -> Vec<Batch> {
    let owner = FlowOwner::new(threads, None);
    let mut per_ingress: std::collections::BTreeMap<u32, Vec<Vec<u8>>> = Default::default();
    for f in 0..FLOWS {
        for reply in [false, true] {
            let (ingress, bytes) = frame_of(f, reply, TCP_ACK);
            let q = if spread {
                queue_of(f, reply, threads)
            } else {
                owner.owner(t, &bytes).unwrap()
            };
            if q == w {
                per_ingress.entry(ingress).or_default().push(bytes);
            }
        }
    }
    per_ingress
        .into_iter()
        .flat_map(|(ingress, frames)| {
            frames
                .chunks(BATCH)
                .map(|c| Batch {
                    ingress,
                    frames: c.to_vec(),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Pipelines of `threads` workers with every flow opened (handshake or request and reply)
/// in its owner's conntrack.
fn pipelines(threads: usize, t: &Tables) -> Vec<Pipeline> {
    let owner = FlowOwner::new(threads, None);
    let mut ps: Vec<Pipeline> = (0..threads)
        .map(|_| Pipeline::new(PipelineConfig::default()).unwrap())
        .collect();
    for f in 0..FLOWS {
        let tcp = flow(f).2;
        let steps: &[(bool, u8)] = if tcp {
            &[(false, TCP_SYN), (true, TCP_SYN_ACK), (false, TCP_ACK)]
        } else {
            &[(false, 0), (true, 0)]
        };
        for &(reply, flags) in steps {
            let (ingress, bytes) = frame_of(f, reply, flags);
            let w = owner.owner(t, &bytes).unwrap();
            let mut frames = [Frame::from_packet(&bytes, HEADROOM, 64)];
            let v = ps[w].process(t, ingress, &mut frames, NOW)[0];
            assert!(matches!(v, Verdict::Tx { .. }), "set-up of flow {f}: {v:?}");
        }
    }
    ps
}

/// Frame buffers reused for every copy (refreshing inputs, taking over handed-off frames).
struct Pool(Vec<Vec<u8>>);

impl Pool {
    fn frame(&mut self, bytes: &[u8]) -> Frame<Vec<u8>> {
        let mut buf = self.0.pop().unwrap_or_else(|| vec![0; BUF]);
        buf[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
        Frame::new(buf, HEADROOM, bytes.len()).unwrap()
    }

    fn give_back(&mut self, frames: &mut Vec<Frame<Vec<u8>>>) {
        self.0.extend(frames.drain(..).map(Frame::into_buffer));
    }
}

/// What one thread measured: ns per packet of each chunk, and frames not forwarded.
struct ThreadResult {
    ns_per_packet: Vec<f64>,
    packets: u64,
    handed_off: u64,
    ring_full: u64,
    not_forwarded: u64,
}

/// Runs `threads` threads for `secs`; `spread` as in `batches_for`; without `dispatch` the
/// threads run independent pipelines (no ownership lookup, no handoff).
fn run(threads: usize, spread: bool, dispatch: bool, secs: f64) -> Vec<ThreadResult> {
    let t = Arc::new(tables());
    let mut ps = pipelines(threads, &t);
    let owner = FlowOwner::new(threads, None);
    let mut links = mesh(threads, 1024, BUF - HEADROOM).into_iter();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|w| {
            let mut p = ps.remove(0);
            let handoff =
                (threads > 1 && dispatch).then(|| Handoff::new(owner, links.next().unwrap()));
            let batches = batches_for(w, threads, spread, &t);
            let (t, stop, start) = (t.clone(), stop.clone(), start.clone());
            std::thread::spawn(move || worker_loop(&mut p, handoff, &batches, &t, &stop, &start))
        })
        .collect();
    start.wait();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn worker_loop(
    p: &mut Pipeline,
    mut handoff: Option<Handoff>,
    batches: &[Batch],
    t: &Tables,
    stop: &AtomicBool,
    start: &Barrier,
) -> ThreadResult {
    let mut pool = Pool((0..(CHUNK + 2) * BATCH).map(|_| vec![0u8; BUF]).collect());
    let mut chunk: Vec<Vec<Frame<Vec<u8>>>> =
        (0..CHUNK).map(|_| Vec::with_capacity(BATCH)).collect();
    let mut taken: Vec<Frame<Vec<u8>>> = Vec::with_capacity(BATCH);
    let mut result = ThreadResult {
        ns_per_packet: Vec::new(),
        packets: 0,
        handed_off: 0,
        ring_full: 0,
        not_forwarded: 0,
    };
    let mut next = 0usize;
    start.wait();
    while !stop.load(Ordering::Relaxed) {
        // Untimed: fresh copies of the next CHUNK batches.
        let ingress: Vec<u32> = (0..CHUNK)
            .map(|i| {
                let b = &batches[(next + i) % batches.len()];
                pool.give_back(&mut chunk[i]);
                for bytes in &b.frames {
                    let f = pool.frame(bytes);
                    chunk[i].push(f);
                }
                b.ingress
            })
            .collect();
        next = (next + CHUNK) % batches.len();
        let mut packets = 0u64;
        let started = Instant::now();
        for (frames, &ingress) in chunk.iter_mut().zip(&ingress) {
            let kept = match handoff.as_mut() {
                Some(h) => keep_only(h, t, ingress, frames),
                None => frames.len(),
            };
            let v = p.process(t, ingress, &mut frames[..kept], NOW);
            result.not_forwarded += v
                .iter()
                .filter(|v| !matches!(v, Verdict::Tx { .. }))
                .count() as u64;
            packets += kept as u64;
            if let Some(h) = handoff.as_mut() {
                // As `io::Worker` does: batches of one interface until the inbox is empty, at
                // most 8 per batch of its own.
                for _ in 0..8 {
                    let mut from = 0;
                    h.take_over(BATCH, |i, bytes| {
                        from = i;
                        taken.push(pool.frame(bytes));
                    });
                    if taken.is_empty() {
                        break;
                    }
                    let v = p.process(t, from, &mut taken, NOW);
                    result.not_forwarded += v
                        .iter()
                        .filter(|v| !matches!(v, Verdict::Tx { .. }))
                        .count() as u64;
                    packets += taken.len() as u64;
                    pool.give_back(&mut taken);
                }
            }
        }
        let ns = started.elapsed().as_nanos() as f64;
        if packets > 0 {
            result.ns_per_packet.push(ns / packets as f64);
        }
        result.packets += packets;
    }
    if let Some(h) = handoff {
        result.handed_off = h.counters.handed_off;
        result.ring_full = h.counters.ring_full;
    }
    result
}

/// Dispatches each frame; keeps the kept ones at the front (in order); returns how many.
fn keep_only(h: &mut Handoff, t: &Tables, ingress: u32, frames: &mut [Frame<Vec<u8>>]) -> usize {
    let mut stay = 0;
    for i in 0..frames.len() {
        if h.dispatch(t, ingress, frames[i].data()) == Dispatch::Keep {
            frames.swap(stay, i);
            stay += 1;
        }
    }
    stay
}

/// The cost of the ownership lookup alone, per frame (median over rounds of 64 frames).
fn owner_cost() {
    let t = tables();
    let owner = FlowOwner::new(2, None);
    let frames: Vec<Vec<u8>> = (0..FLOWS)
        .map(|f| frame_of(f, f % 2 == 1, TCP_ACK).1)
        .collect();
    let mut samples = Vec::new();
    let mut sink = 0usize;
    for _ in 0..200 {
        for round in frames.chunks(BATCH) {
            let started = Instant::now();
            for bytes in round {
                sink += owner.owner(&t, std::hint::black_box(bytes)).unwrap_or(0);
            }
            samples.push(started.elapsed().as_nanos() as f64 / round.len() as f64);
        }
    }
    println!(
        "  ownership lookup (FlowOwner::owner): {:.1} ns/frame ({sink})",
        median(&mut samples)
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let secs: f64 = std::env::var("WORKERS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once, briefly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs = if quick { 0.2 } else { secs };
    println!("workers bench: {FLOWS} established flows between {PODS} pods, batch {BATCH}, {secs} s per run");
    owner_cost();
    let mut one = f64::NAN;
    for (threads, spread, dispatch, name) in [
        (1, false, false, "1 thread (no handoff)"),
        (
            2,
            false,
            false,
            "2 threads, independent (no ownership lookup)",
        ),
        (
            2,
            false,
            true,
            "2 threads, 0% handed off (ownership looked up)",
        ),
        (2, true, true, "2 threads, ~50% handed off"),
    ] {
        let results = run(threads, spread, dispatch, secs);
        let mut per_thread = Vec::new();
        for (w, mut r) in results.into_iter().enumerate() {
            let ns = median(&mut r.ns_per_packet);
            per_thread.push(ns);
            println!(
                "  {name}: thread {w}: {ns:.1} ns/packet ({:.2} Mpps), {} packets, {} handed off, \
                 {} dropped (ring full), {} not forwarded",
                1e3 / ns,
                r.packets,
                r.handed_off,
                r.ring_full,
                r.not_forwarded
            );
            assert_eq!(
                r.not_forwarded, 0,
                "every frame of an established flow is forwarded"
            );
        }
        let worst = per_thread.iter().copied().fold(f64::NAN, f64::max);
        if threads == 1 {
            one = worst;
        } else {
            println!(
                "  {name}: scaling ratio {:.2} (1-thread ns/packet / slowest thread's; 1.0 = linear)",
                one / worst
            );
        }
    }
}
