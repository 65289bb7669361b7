//! `cargo bench -p dataplane --bench monitor`: what the monitor costs the pipeline, in
//! ns/packet, batch 64, one core, on a batch whose every frame is dropped (the monitor's
//! worst case: every frame is an event).
//!
//! The frames are 60-byte TCP SYNs from an interface no endpoint is configured for, so each is
//! parsed and then dropped by the identity stage (`unknown_interface`): the event path is the
//! same whatever the reason. Four cases:
//! - `no_sink`: a pipeline without monitor (the floor);
//! - `sink_idle`: a sink, nobody listening (what every daemon pays: one relaxed load per
//!   `process` call);
//! - `listening`: someone listens, the ring is drained after every batch (untimed): each drop
//!   is copied into the ring (metadata and 128 bytes of frame);
//! - `listening_ring_full`: someone listens but the ring is never drained: each event is
//!   counted lost (a flood outrunning the monitor thread).

#![allow(clippy::unwrap_used, clippy::expect_used)] // A bench: a broken set-up should stop loudly.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use dataplane::frame::Frame;
use dataplane::pipeline::event_ring::{event_ring, EventConfig, EventSink, RingConsumer};
use dataplane::pipeline::{Pipeline, PipelineConfig};
use dataplane::tables::maglev::DEFAULT_M;
use dataplane::tables::services::Services;
use dataplane::tables::{LocalNode, Tables};
use dataplane::testutil::{PacketBuilder, TCP_SYN};

const BATCH: usize = 64;
const UNKNOWN_IFINDEX: u32 = 99;
const NOW: u64 = 1_000_000_000;

fn syn_batch() -> Vec<Frame<Vec<u8>>> {
    (0..BATCH as u16)
        .map(|i| {
            let src = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
            let dst = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));
            PacketBuilder::tcp(src, 40_000 + i, dst, 80, TCP_SYN).frame()
        })
        .collect()
}

/// A pipeline, with a monitor sink when `listening` is `Some` (its value: someone listens).
fn pipeline(listening: Option<bool>) -> (Pipeline, Option<RingConsumer>) {
    let mut p = Pipeline::new(PipelineConfig::default()).unwrap();
    let Some(on) = listening else {
        return (p, None);
    };
    let (producer, consumer) = event_ring(4096);
    let switch = Arc::new(AtomicBool::new(on));
    p.report_events(EventSink::new(producer, switch, EventConfig::default()));
    (p, Some(consumer))
}

fn bench(c: &mut Criterion, id: &str, listening: Option<bool>, drain: bool) {
    let tables = Tables::empty(LocalNode::default(), Services::new(DEFAULT_M, 42).unwrap());
    let (mut p, mut ring) = pipeline(listening);
    let mut frames = syn_batch();
    let mut g = c.benchmark_group("monitor");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                black_box(p.process(&tables, UNKNOWN_IFINDEX, &mut frames, NOW));
                total += start.elapsed();
                if let (true, Some(ring)) = (drain, ring.as_mut()) {
                    while ring.pop().is_some() {}
                }
            }
            total
        })
    });
    g.finish();
    if let Some(ring) = ring {
        println!("monitor/{id}: {} events lost", ring.lost());
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c, "no_sink", None, false);
    bench(&mut c, "sink_idle", Some(false), false);
    bench(&mut c, "listening", Some(true), true);
    bench(&mut c, "listening_ring_full", Some(true), false);
    c.final_summary();
}
