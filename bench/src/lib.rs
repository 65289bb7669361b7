//! `flagella-bench`: topology, traffic generators and baselines (filled by the bench issue).
//! The pipeline's own micro-benchmarks live in `dataplane/benches/`.
