//! `flagella-bench`: pod -> pod forwarding benchmarks in network namespaces.
//!
//! - [`traffic`]: a UDP generator (`sendmmsg`, one socket per flow) and sink (`recvmmsg`), run
//!   inside pod namespaces; [`pktgen`] drives the kernel's pktgen where this kernel has it,
//!   [`xdpgen`] sends prebuilt frames from an AF_XDP socket (`--generator xdp`).
//! - [`topo`]: a node namespace and two pod namespaces joined by veth pairs, removed on drop.
//! - [`targets`]: what forwards between the pods: flagella-dataplane, the kernel, Open vSwitch
//!   (userspace datapath, AF_XDP ports), each torn down on drop.
//! - [`cputime`]: a forwarder thread's user and kernel CPU time, from /proc.
//! - [`forward`]: one measurement; [`report`]: the arithmetic and the table.
//! - [`xnode`]: pod -> pod across two nodes (flagella-dataplane over VXLAN, Geneve, native
//!   routing, against the kernel's VXLAN device), measured as `forward` measures.
//! - [`ingress`]: into and out of the cluster (an external client -> a NodePort with DSR and
//!   SNAT, pod -> world masqueraded) through flagella-dataplane and through kernel forwarding
//!   with kube-proxy's iptables rules; [`ingress_report`] its measurements and table,
//!   [`connrate`] the TCP connection setup rate.
//! - [`machine`]: when and on what a result was measured.
//! - [`converge`]: policy convergence (etcd write -> first packet decided by it) against
//!   iptables-restore and nftables; [`synth`] the synthetic cluster and the baselines' rule
//!   text, [`etcd`] the etcd server and client, [`probe`] the probe sender and receiver.
//! - [`cni_add`]: CNI ADD latency, flagella-cni (etcd, agent, dataplane) against Debian's
//!   ptp + host-local in one node namespace.
//! - [`monitor_cost`]: what a `flagella monitor` client costs an allowed transfer beside a
//!   flood of denied packets (with and without it, alternated rounds).
//! - [`policybench`]: policy size on the data path (`policy`): flagella with N policy entries
//!   against iptables (nft, legacy) and an nftables set, by [`ratesearch`] (RFC 2544-style
//!   loss-rate search) over [`trial`]s counted at an [`xdpsink`] (XDP_DROP) or a UDP socket;
//!   [`stats`] medians and latency percentiles, [`policy_report`] the results and their table,
//!   [`policy_output`] the files (JSON, Markdown, [`plot`]'s PNGs), [`point_cost`] each
//!   point's loss by cause and CPU time per packet of the forwarding threads.
//! - [`signals`]: SIGINT/SIGTERM become a flag the waits poll, so the guards' `Drop` runs.
//!
//! The pipeline's own micro-benchmarks live in `dataplane/benches/`.

pub mod cli;
pub mod cni_add;
pub mod connrate;
pub mod converge;
pub mod cputime;
pub mod etcd;
pub mod forward;
pub mod generator;
pub mod ingress;
pub mod ingress_report;
pub mod machine;
pub mod monitor_cost;
pub mod pktgen;
pub mod plot;
pub mod point_cost;
pub mod policy_output;
pub mod policy_report;
pub mod policybench;
pub mod probe;
pub mod ratesearch;
pub mod report;
pub mod restart;
pub mod scale;
pub mod signals;
pub mod stats;
pub mod synth;
pub mod targets;
pub mod topo;
pub mod traffic;
pub mod trial;
pub mod xdpgen;
pub mod xdpsink;
pub mod xnode;

/// Why a benchmark step failed; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("flagella-bench {what} needs root (namespaces, XDP, AF_XDP): run it with sudo")]
    NotRoot { what: &'static str },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted by a signal; everything this run created has been removed")]
    Interrupted,
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

impl BenchError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }
}
