//! `flagella-control`: the node agent. Syncs the cluster state from etcd into this node's
//! dataplane (see `control::agent`). Exit codes: 0 never (runs until stopped), 2 bad arguments
//! (clap), 1 start-up failure.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use control::agent::{Agent, AgentConfig};
use control::metrics::{self, AgentMetrics};

/// Flagella node agent: watches etcd (/flagella/v1/), allocates identities cluster-wide,
/// compiles network policies and pushes the changes to this node's dataplane.
///
/// While etcd is unreachable the dataplane keeps its last state (fail static) and the agent
/// retries with backoff; when the dataplane restarts the agent pushes the whole state again.
#[derive(Debug, Parser)]
#[command(name = "flagella-control", version)]
struct Args {
    /// etcd endpoints, comma-separated (e.g. http://10.0.0.1:2379,http://10.0.0.2:2379).
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        value_name = "URL[,URL...]"
    )]
    etcd: Vec<String>,
    /// This node's name: the key under /flagella/v1/nodes/ that describes it.
    #[arg(long, value_name = "NAME")]
    node: String,
    /// The dataplane's control socket.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/flagella/dataplane.sock"
    )]
    dataplane_socket: PathBuf,
    /// Write the agent's status (etcd reachable, dataplane connected, revision, counts) here as JSON.
    #[arg(long, value_name = "PATH")]
    status_file: Option<PathBuf>,
    /// etcd request timeout, in seconds.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    etcd_timeout: u64,
    /// TTL of this node's identity references: they vanish this long after the agent dies.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    lease_ttl: u64,
    /// How long an unreferenced identity lives before it is deleted.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    identity_grace: u64,
    /// Serve Prometheus metrics (`GET /metrics`: etcd events, errors, reconnections and
    /// compactions; endpoints, identities, policies, services, nodes, malformed keys; latency
    /// histograms) on ADDRESS:PORT, or `off`. The dataplane's own metrics are on 9962.
    #[arg(
        long,
        value_name = "ADDRESS:PORT|off",
        default_value = metrics::DEFAULT_ADDRESS,
        value_parser = metrics::parse_address
    )]
    // Spelled out so that clap takes the parser's `Option` (`off` = None) as the value, not as
    // "the flag is optional".
    metrics_address: std::option::Option<std::net::SocketAddr>,
}

fn main() {
    let args = Args::parse();
    // Two worker threads: the spawned tasks (the identity lease's keep-alive, the watch
    // readers) keep running while the main task does a long stretch of model work (an initial
    // sync of 20k endpoints took over the lease's 30 s on a loaded machine, the lease expired and
    // the agent listed again forever: control/tests/scale.rs).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flagella-control: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let cfg = AgentConfig {
        etcd: args.etcd,
        node: args.node,
        dataplane_socket: args.dataplane_socket,
        etcd_timeout: Duration::from_secs(args.etcd_timeout.max(1)),
        lease_ttl: Duration::from_secs(args.lease_ttl.max(2)),
        identity_grace: Duration::from_secs(args.identity_grace),
        gc_interval: Duration::from_secs(args.identity_grace.clamp(1, 60)),
        status_file: args.status_file,
    };
    let metrics = match AgentMetrics::new() {
        Ok(m) => Arc::new(m),
        Err(e) => {
            eprintln!("flagella-control: cannot set up the metrics ({e}); this is a bug, please report it");
            std::process::exit(1);
        }
    };
    if let Some(address) = args.metrics_address {
        if let Err(e) = metrics::serve(address, Arc::clone(&metrics)) {
            eprintln!("flagella-control: {e}");
            std::process::exit(1);
        }
        eprintln!("flagella-control: metrics: http://{address}/metrics");
    }
    runtime.block_on(async move {
        let mut agent = Agent::new(cfg, metrics);
        agent.run().await;
    });
}
