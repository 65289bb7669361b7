//! The `policy_parse` body as plain tests, for CI on a stable toolchain without cargo-fuzz:
//! every seed of `corpus/seed-policy_parse/`, then deterministic text mutations of the seeds
//! (lines dropped, repeated or swapped; characters replaced by ones YAML and JSON care about),
//! which reach further into a policy than random bytes, which rarely stay valid YAML.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use flagella_fuzz::replay::inputs;

/// Mutated inputs per seed.
const MUTATIONS: usize = 300;

/// Characters a mutation writes: structure, quoting, numbers, the keys' separators.
const ALPHABET: &[u8] = b"{}[]:,-'\"# \n0123456789./*ax";

fn seeds() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/seed-policy_parse");
    let files = inputs(&dir).unwrap();
    assert!(
        files.len() >= 5,
        "the seed corpus is missing: {}",
        dir.display()
    );
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

/// A linear congruential step (Knuth's MMIX constants): deterministic, no dependency.
fn step(state: &mut u64) -> usize {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (*state >> 33) as usize
}

fn mutate(seed: &str, state: &mut u64) -> String {
    let mut lines: Vec<String> = seed.lines().map(str::to_string).collect();
    for _ in 0..1 + step(state) % 3 {
        if lines.is_empty() {
            break;
        }
        let at = step(state) % lines.len();
        match step(state) % 4 {
            0 => {
                lines.remove(at);
            }
            1 => {
                let line = lines[at].clone();
                lines.insert(at, line);
            }
            2 => {
                let other = step(state) % lines.len();
                lines.swap(at, other);
            }
            _ => {
                let mut bytes = lines[at].clone().into_bytes();
                if !bytes.is_empty() {
                    let i = step(state) % bytes.len();
                    bytes[i] = ALPHABET[step(state) % ALPHABET.len()];
                }
                lines[at] = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
    }
    lines.join("\n")
}

#[test]
fn policy_parse_seeds() {
    for seed in seeds() {
        flagella_fuzz::policy_parse(seed.as_bytes());
    }
}

#[test]
fn policy_parse_seeds_parse_and_compile() {
    // The seeds are policies (not noise): each parses, so the properties after parsing run.
    for seed in seeds() {
        let parsed = policy_compiler::parse_policies("seed", &seed);
        assert!(parsed.is_ok(), "{seed}\n{parsed:?}");
    }
}

#[test]
fn policy_parse_mutated() {
    let seeds = seeds();
    let mut state = 0x5eed_0003;
    for seed in &seeds {
        for _ in 0..MUTATIONS {
            flagella_fuzz::policy_parse(mutate(seed, &mut state).as_bytes());
        }
    }
}

#[test]
fn policy_parse_noise() {
    let mut state = 0x5eed_0004;
    for _ in 0..2000 {
        let len = step(&mut state) % 120;
        let text: Vec<u8> = (0..len)
            .map(|_| ALPHABET[step(&mut state) % ALPHABET.len()])
            .collect();
        flagella_fuzz::policy_parse(&text);
    }
}
