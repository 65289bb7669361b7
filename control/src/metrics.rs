//! `flagella-control`'s `/metrics` (default 127.0.0.1:9963, next to the dataplane's 9962): what
//! the agent sees of etcd, of the cluster model and of the dataplane, in Prometheus text format,
//! served by the dataplane crate's [`MetricsServer`] on a thread of its own.
//!
//! # Contract
//! - [`AgentMetrics`] is the one list of the agent's metrics: every metric is a field here,
//!   registered once in [`AgentMetrics::new`], so a metric cannot be counted without being
//!   shown. The agent updates them as it works (atomic operations, shared with the server
//!   thread); a scrape only encodes them.
//! - Gauges of the model (endpoints, identities, policies, services, nodes, refused keys) are
//!   set from the same snapshot as the status file ([`AgentMetrics::set_status`]), so the two
//!   never disagree.
//! - Latencies are histograms in seconds: an etcd watch batch received -> its changes applied
//!   by the dataplane; one control request's round trip as the agent sees it; one identity
//!   resolution (a lookup or an allocation in etcd).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dataplane::api::metrics::{encode, MetricsError, MetricsServer, Render};
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

use crate::status::Status;
use crate::store::Event;

/// The default listen address of the agent's `/metrics`.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9963";

/// Every metric of the agent (see the module doc).
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    /// Watch events by type (`put`, `delete`).
    pub etcd_events: IntCounterVec,
    /// Sessions that ended on an etcd error (the agent then reconnects with backoff).
    pub etcd_errors: IntCounter,
    /// Sessions established after the first one.
    pub etcd_reconnects: IntCounter,
    /// Watches whose history was compacted away (the agent listed again).
    pub etcd_compactions: IntCounter,
    pub etcd_reachable: IntGauge,
    pub dataplane_connected: IntGauge,
    pub endpoints: IntGauge,
    pub identities: IntGauge,
    pub policies: IntGauge,
    pub services: IntGauge,
    pub nodes: IntGauge,
    /// Keys refused since start (malformed or unresolvable), and those refused now.
    pub malformed_keys: IntCounter,
    pub rejected_keys: IntGauge,
    /// Control requests the dataplane answered with an error.
    pub dataplane_refusals: IntCounter,
    pub etcd_to_dataplane: Histogram,
    pub dataplane_request: Histogram,
    pub identity_allocation: Histogram,
    /// True once a session was established (the next ones are reconnections).
    connected_once: AtomicBool,
}

impl AgentMetrics {
    /// Every metric, registered. Fails only on a duplicate or invalid name (a bug here).
    pub fn new() -> prometheus::Result<AgentMetrics> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        // 100 us .. 6.5 s: a local request takes well under a millisecond, a convergence
        // through identity allocation in etcd tens of milliseconds, an overloaded node seconds.
        let histogram = |name: &str, help: &str| -> prometheus::Result<Histogram> {
            let opts = HistogramOpts::new(name, help).buckets(exponential_buckets(1e-4, 2.0, 17)?);
            let h = Histogram::with_opts(opts)?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let etcd_events = IntCounterVec::new(
            Opts::new(
                "flagella_control_etcd_events_total",
                "etcd watch events received, by type (put, delete).",
            ),
            &["type"],
        )?;
        registry.register(Box::new(etcd_events.clone()))?;
        // Both series exist from the start (at 0), so that rate() and dashboards see them.
        for kind in ["put", "delete"] {
            etcd_events.with_label_values(&[kind]);
        }
        Ok(AgentMetrics {
            etcd_events,
            etcd_errors: counter(
                "flagella_control_etcd_errors_total",
                "etcd sessions that ended on an error (the agent reconnects with backoff).",
            )?,
            etcd_reconnects: counter(
                "flagella_control_etcd_reconnects_total",
                "etcd sessions established after the first one.",
            )?,
            etcd_compactions: counter(
                "flagella_control_etcd_compactions_total",
                "Watches whose history etcd had compacted (the agent listed and reconciled).",
            )?,
            etcd_reachable: gauge(
                "flagella_control_etcd_reachable",
                "1 while the agent's etcd session is up, 0 while it retries.",
            )?,
            dataplane_connected: gauge(
                "flagella_control_dataplane_connected",
                "1 while the agent is connected to the dataplane's control socket.",
            )?,
            endpoints: gauge(
                "flagella_control_endpoints",
                "Endpoints (pods) in the cluster model.",
            )?,
            identities: gauge(
                "flagella_control_identities",
                "Label sets with a cluster-wide identity known to the agent.",
            )?,
            policies: gauge("flagella_control_policies", "Network policies in force.")?,
            services: gauge(
                "flagella_control_services",
                "Services in the cluster model.",
            )?,
            nodes: gauge("flagella_control_nodes", "Nodes in the cluster model.")?,
            malformed_keys: counter(
                "flagella_control_malformed_keys_total",
                "etcd values refused (malformed, or naming a missing node or namespace); each is \
                 skipped and the key keeps its last good value.",
            )?,
            rejected_keys: gauge(
                "flagella_control_rejected_keys",
                "Keys whose current value is refused (listed in the status file).",
            )?,
            dataplane_refusals: counter(
                "flagella_control_dataplane_refusals_total",
                "Control requests the dataplane refused (logged by the agent with the reason).",
            )?,
            etcd_to_dataplane: histogram(
                "flagella_control_etcd_to_dataplane_seconds",
                "From an etcd watch batch received to its changes applied by the dataplane \
                 (batches that changed the dataplane only).",
            )?,
            dataplane_request: histogram(
                "flagella_control_dataplane_request_seconds",
                "One control request to the dataplane, sent to answered, as the agent sees it.",
            )?,
            identity_allocation: histogram(
                "flagella_control_identity_allocation_seconds",
                "Resolving one label set's cluster-wide identity in etcd (lookup or allocation).",
            )?,
            registry,
            connected_once: AtomicBool::new(false),
        })
    }

    /// Counts a watch batch's events by type.
    pub fn note_events(&self, events: &[Event]) {
        for e in events {
            let kind = match e {
                Event::Put(_) => "put",
                Event::Delete { .. } => "delete",
            };
            self.etcd_events.with_label_values(&[kind]).inc();
        }
    }

    /// An etcd session is established: every one after the first is a reconnection.
    pub fn note_session(&self) {
        if self.connected_once.swap(true, Ordering::Relaxed) {
            self.etcd_reconnects.inc();
        }
    }

    /// Control requests timed so far (the agent compares it around a convergence to know
    /// whether the dataplane was told anything).
    pub fn requests_timed(&self) -> u64 {
        self.dataplane_request.get_sample_count()
    }

    /// The model's gauges, from the snapshot the status file gets; `identities` is counted by
    /// the caller (the status does not carry it).
    pub fn set_status(&self, s: &Status, identities: usize) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.etcd_reachable.set(i64::from(s.etcd_reachable));
        self.dataplane_connected
            .set(i64::from(s.dataplane_connected));
        self.endpoints.set(n(s.endpoints));
        self.identities.set(n(identities));
        self.policies.set(n(s.policies));
        self.services.set(n(s.services));
        self.nodes.set(n(s.nodes));
        self.rejected_keys.set(n(s.rejected_keys.len()));
        // The status carries running totals; the counters follow them (never backwards).
        let catch_up = |c: &IntCounter, total: u64| c.inc_by(total.saturating_sub(c.get()));
        catch_up(&self.malformed_keys, s.malformed_total);
        catch_up(&self.dataplane_refusals, s.dataplane_refusals);
    }

    /// Records one duration in `h`.
    pub fn observe(h: &Histogram, d: Duration) {
        h.observe(d.as_secs_f64());
    }

    /// The Prometheus text of every metric.
    pub fn render(&self) -> prometheus::Result<String> {
        encode(&self.registry)
    }
}

/// Parses `--metrics-address`: `ADDRESS:PORT`, or `off` (no server).
pub fn parse_address(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|e| {
        format!("`{s}` is not ADDRESS:PORT ({e}); write e.g. {DEFAULT_ADDRESS}, or `off`")
    })
}

/// Binds `/metrics` on `address` and serves `metrics` on a thread of its own until the process
/// exits.
pub fn serve(
    address: SocketAddr,
    metrics: std::sync::Arc<AgentMetrics>,
) -> Result<(), MetricsError> {
    let render: Render = Box::new(move || metrics.render());
    let server = MetricsServer::bind(address, render)?;
    static NEVER: AtomicBool = AtomicBool::new(false);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || server.run(&NEVER))
        .map(drop)
        .map_err(|source| MetricsError { address, source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::store::Kv;

    #[test]
    fn every_metric_is_shown_with_help_and_type() {
        let m = AgentMetrics::new().unwrap();
        m.note_events(&[
            Event::Put(Kv {
                key: "k".into(),
                value: vec![],
                mod_revision: 1,
            }),
            Event::Delete {
                key: "k".into(),
                mod_revision: 2,
            },
        ]);
        m.note_session();
        m.note_session();
        let status = Status {
            endpoints: 3,
            malformed_total: 2,
            rejected_keys: vec!["/flagella/v1/x".into()],
            ..Status::default()
        };
        m.set_status(&status, 5);
        m.set_status(&status, 5);
        AgentMetrics::observe(&m.dataplane_request, Duration::from_millis(2));
        let text = m.render().unwrap();
        for line in [
            "flagella_control_etcd_events_total{type=\"put\"} 1",
            "flagella_control_etcd_events_total{type=\"delete\"} 1",
            "flagella_control_etcd_reconnects_total 1",
            "flagella_control_endpoints 3",
            "flagella_control_identities 5",
            "flagella_control_malformed_keys_total 2",
            "flagella_control_rejected_keys 1",
            "flagella_control_dataplane_request_seconds_count 1",
            "# TYPE flagella_control_etcd_to_dataplane_seconds histogram",
            "# TYPE flagella_control_identity_allocation_seconds histogram",
            "# TYPE flagella_control_etcd_compactions_total counter",
            "# TYPE flagella_control_etcd_errors_total counter",
        ] {
            assert!(text.contains(line), "`{line}` missing from:\n{text}");
        }
        assert_eq!(m.requests_timed(), 1);
    }

    #[test]
    fn the_address_is_parsed_or_off() {
        assert_eq!(parse_address("off").unwrap(), None);
        assert_eq!(
            parse_address("127.0.0.1:9963").unwrap(),
            Some("127.0.0.1:9963".parse().unwrap())
        );
        assert!(parse_address("nowhere").unwrap_err().contains("off"));
    }
}
