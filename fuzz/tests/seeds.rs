//! The fuzz bodies as plain tests, for CI on a stable toolchain without cargo-fuzz: every seed
//! file of `corpus/seed-<target>/`, then pseudo-random inputs from a fixed-seed xorshift
//! generator (the same inputs on every run, so a failure reproduces).
//!
//! This is a smoke test, not fuzzing: it keeps the targets compiling and the seeds passing.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use flagella_fuzz::replay::inputs;

/// Pseudo-random inputs per target.
const RANDOM_INPUTS: usize = 4000;

/// xorshift64* (Vigna): small, deterministic, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("corpus/seed-{target}"));
    let files = inputs(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// Random inputs: a third pure noise, the rest seeds with a few bytes flipped, truncated or
/// extended, which reaches deeper than noise does.
fn random_inputs(seeds: &[Vec<u8>], seed: u64) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut rng = XorShift(seed);
    (0..RANDOM_INPUTS).map(move |i| {
        if i % 3 == 0 || seeds.is_empty() {
            let len = rng.below(200);
            return (0..len).map(|_| rng.next() as u8).collect();
        }
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            if input.is_empty() {
                break;
            }
            let at = rng.below(input.len());
            input[at] = rng.next() as u8;
        }
        match rng.below(4) {
            0 => input.truncate(rng.below(input.len() + 1)),
            1 => input.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
            _ => {}
        }
        input
    })
}

#[test]
fn wire_parsers_seeds() {
    for input in seeds("wire_parsers") {
        flagella_fuzz::wire_parsers(&input);
    }
}

#[test]
fn wire_parsers_random() {
    let seeds = seeds("wire_parsers");
    for input in random_inputs(&seeds, 0x5eed_0001) {
        flagella_fuzz::wire_parsers(&input);
    }
}

#[test]
fn pipeline_seeds() {
    for input in seeds("pipeline") {
        flagella_fuzz::pipeline(&input);
    }
}

#[test]
fn pipeline_random() {
    let seeds = seeds("pipeline");
    for input in random_inputs(&seeds, 0x5eed_0002) {
        flagella_fuzz::pipeline(&input);
    }
}

/// The batch format round-trips, so the seed generator writes what the target reads.
#[test]
fn batch_encoding_round_trips() {
    let frames: [&[u8]; 3] = [b"abc", b"", &[0xff; 300]];
    let input = flagella_fuzz::pipeline::encode_batch(0x1e, &frames);
    let batch = flagella_fuzz::pipeline::decode_batch(&input).unwrap();
    assert_eq!(batch.frames, frames);
    assert_eq!(batch.ingress_ifindex, flagella_fuzz::pipeline::INGRESS[2]);
    assert!(batch.complete_l4_checksums);
    assert_eq!(batch.headroom, flagella_fuzz::pipeline::SMALL_HEADROOM);
    assert_eq!(batch.tailroom, 0);
    assert!(batch.repair_checksums);
}

/// The harness repairs a broken IPv4 header checksum, outer and inner, unless told not to.
#[test]
fn repair_fixes_outer_and_inner_ipv4_checksums() {
    use dataplane::wire::ethernet::EthernetFrame;
    use dataplane::wire::ipv4::Ipv4Packet;
    let tunnel = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("corpus/seed-wire_parsers/uplink-vxlan-from-node-b"),
    )
    .unwrap();
    let inner_ip = 14 + 20 + 8 + 8 + 14;
    let mut broken = tunnel.clone();
    broken[14 + 10] ^= 0xff; // outer checksum
    broken[inner_ip + 10] ^= 0xff; // inner checksum
    let verifies = |frame: &[u8], at: usize| {
        Ipv4Packet::new_checked(&frame[at..])
            .unwrap()
            .verify_checksum()
    };
    assert!(!verifies(&broken, 14) && !verifies(&broken, inner_ip));
    flagella_fuzz::pipeline::repair_ipv4_checksums(&mut broken);
    assert!(verifies(&broken, 14) && verifies(&broken, inner_ip));
    assert_eq!(broken, tunnel);
    assert!(EthernetFrame::new_checked(&broken[..]).is_ok());
}

#[test]
fn control_requests_seeds() {
    for input in seeds("control_requests") {
        flagella_fuzz::control_requests(&input);
    }
}

/// Fewer than the frame targets: each input is up to 16 requests, each checked against dumps
/// of every table.
#[test]
fn control_requests_random() {
    let seeds = seeds("control_requests");
    for input in random_inputs(&seeds, 0x5eed_0003).take(RANDOM_INPUTS / 8) {
        flagella_fuzz::control_requests(&input);
    }
}

#[test]
fn etcd_events_seeds() {
    for input in seeds("etcd_events") {
        flagella_fuzz::etcd_events(&input);
    }
}

/// Fewer than the frame targets: each input compiles policy and commits several times.
#[test]
fn etcd_events_random() {
    let seeds = seeds("etcd_events");
    for input in random_inputs(&seeds, 0x5eed_0004).take(RANDOM_INPUTS / 8) {
        flagella_fuzz::etcd_events(&input);
    }
}
