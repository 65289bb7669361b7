//! `/metrics`: the dataplane's counters in Prometheus text format, over HTTP on a loopback
//! address (default 127.0.0.1:9962, as Cilium's agent). The HTTP side ([`MetricsServer`]) serves
//! whatever text its render function builds, so `flagella-control` serves its own metrics
//! (127.0.0.1:9963) through the same server.
//!
//! # Contract
//! - Counting never slows the fast path: workers keep plain per-worker counters and publish
//!   copies off the packet path (`api::publish::StatsRegistry`); a scrape sums the copies, builds a fresh
//!   registry and encodes it. Nothing here runs per packet. What the kernel counts (the XDP
//!   programs' counters, the AF_XDP sockets' `XDP_STATISTICS`) the daemon reads at scrape time
//!   on the metrics thread ([`KernelCounters`]), with system calls the workers never wait for.
//! - Names follow Prometheus conventions: `flagella_` prefix, `_total` counters with HELP and
//!   TYPE. Every scalar pipeline counter becomes `flagella_<name>_total` (one list,
//!   `Counters::scalars`), every drop reason a `reason` label of `flagella_drops_total` (with its `direction`),
//!   the per-interface traffic `flagella_interface_{packets,bytes}_total{interface,direction}`, every
//!   stage a `stage` label of `flagella_stage_packets_total` / `flagella_stage_drops_total`,
//!   each worker's AF_XDP ring statistics a `worker` label, each XDP program counter
//!   `flagella_xdp_<field>_total{interface}` and each socket statistic
//!   `flagella_xsk_<field>_total{interface,queue}`, each worker's conntrack table
//!   `flagella_conntrack_{entries,capacity}` and `flagella_conntrack_<field>_total{worker}`: no
//!   counter can exist without a metric.
//! - The server answers `GET /metrics` and nothing else (404), one request per connection, with
//!   a read timeout so an idle client cannot hold it; it never panics on input.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::{CounterVec, Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use super::flow_export::ExportStats;
use super::monitor::MonitorStats;
use super::publish::{CtSummary, WorkerCounters};
use crate::pipeline::{Counters, Direction, DropReason, Stage};
use crate::tables::conntrack::CtStats;
use crate::tables::Tables;

/// The default listen address (Cilium's agent uses 9962).
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9962";

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds the text of one scrape (called on the metrics thread, once per request).
pub type Render = Box<dyn Fn() -> Result<String, prometheus::Error> + Send>;

/// One counter of a kernel structure: its field name, what it counts, its value.
pub type KernelField = (&'static str, &'static str, u64);

/// What the kernel counted outside the pipeline, read at scrape time by the daemon.
#[derive(Clone, Debug, Default)]
pub struct KernelCounters {
    /// Per interface, its XDP program's counters (summed over CPUs).
    pub programs: Vec<(String, Vec<KernelField>)>,
    /// Per (interface, queue), its AF_XDP socket's `XDP_STATISTICS`.
    pub sockets: Vec<(String, u32, Vec<KernelField>)>,
    /// Interface names by index, to label the pipeline's per-interface counters (an index
    /// not here is labelled with its number).
    pub interface_names: Vec<(u32, String)>,
}

/// The Prometheus text for these totals, workers and kernel counters.
pub fn render(
    total: &Counters,
    workers: &[WorkerCounters],
    kernel: &KernelCounters,
) -> Result<String, prometheus::Error> {
    let registry = Registry::new();
    for (name, value) in total.scalars() {
        let help = format!("Pipeline counter `{name}` (summed over workers).");
        let c = counter(&registry, &format!("flagella_{name}_total"), &help, &[])?;
        c.with_label_values::<&str>(&[]).inc_by(value);
    }
    let drops = counter(
        &registry,
        "flagella_drops_total",
        "Frames dropped, by reason (numbers and meanings: dataplane/src/pipeline/drop.rs) and \
         direction (`egress`: sent by a pod or refused by its egress policy; `ingress`: the rest).",
        &["reason", "direction"],
    )?;
    for reason in DropReason::ALL {
        for direction in Direction::ALL {
            drops
                .with_label_values(&[reason.name(), direction.name()])
                .inc_by(total.drops_going(reason, direction));
        }
    }
    let stage_in = counter(
        &registry,
        "flagella_stage_packets_total",
        "Frames that entered each pipeline stage.",
        &["stage"],
    )?;
    let stage_drops = counter(
        &registry,
        "flagella_stage_drops_total",
        "Frames each pipeline stage dropped.",
        &["stage"],
    )?;
    for stage in Stage::ALL {
        let i = stage as usize;
        stage_in
            .with_label_values(&[stage.name()])
            .inc_by(total.stage_in.get(i).copied().unwrap_or(0));
        stage_drops
            .with_label_values(&[stage.name()])
            .inc_by(total.stage_drops.get(i).copied().unwrap_or(0));
    }
    render_interfaces(&registry, total, &kernel.interface_names)?;
    render_workers(&registry, workers)?;
    render_conntrack(&registry, workers)?;
    render_kernel(&registry, kernel)?;
    encode(&registry)
}

/// `registry` in the Prometheus text format.
pub fn encode(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The monitor's event accounting (`flagella monitor`, docs/monitor.md): appended to
/// [`render`]'s text by a daemon that serves the monitor socket.
pub fn render_monitor(stats: &MonitorStats) -> Result<String, prometheus::Error> {
    let registry = Registry::new();
    let lost = IntCounterVec::new(
        Opts::new(
            "flagella_monitor_events_lost_total",
            "Monitor events lost: `worker_ring` (a worker's ring was full), `rate_limited` \
             (over the monitor's rate, --monitor-rate), `subscriber_queue` (a subscriber read \
             too slowly).",
        ),
        &["source"],
    )?;
    registry.register(Box::new(lost.clone()))?;
    lost.with_label_values(&["worker_ring"])
        .inc_by(stats.ring_lost.load(Ordering::Relaxed));
    lost.with_label_values(&["subscriber_queue"])
        .inc_by(stats.subscriber_lost.load(Ordering::Relaxed));
    lost.with_label_values(&["rate_limited"])
        .inc_by(stats.rate_limited.load(Ordering::Relaxed));
    let events = IntCounterVec::new(
        Opts::new(
            "flagella_monitor_events_total",
            "Monitor events that reached the monitor while subscribers listened: sent to \
             them, or lost for all of them (rate_limited, or every queue full).",
        ),
        &[],
    )?;
    registry.register(Box::new(events.clone()))?;
    events
        .with_label_values::<&str>(&[])
        .inc_by(stats.events.load(Ordering::Relaxed));
    let subscribers = IntGaugeVec::new(
        Opts::new(
            "flagella_monitor_subscribers",
            "Clients connected to the monitor socket.",
        ),
        &[],
    )?;
    registry.register(Box::new(subscribers.clone()))?;
    subscribers
        .with_label_values::<&str>(&[])
        .set(i64::try_from(stats.subscribers.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    encode(&registry)
}

/// Packets and bytes per interface and direction (`rx`: received from the interface, `tx`:
/// sent on it), summed over workers; `interface="other"` counts the interfaces beyond a
/// worker's table.
fn render_interfaces(
    registry: &Registry,
    total: &Counters,
    names: &[(u32, String)],
) -> prometheus::Result<()> {
    let packets = counter(
        registry,
        "flagella_interface_packets_total",
        "Frames the pipeline received (rx) from or sent (tx) on each interface.",
        &["interface", "direction"],
    )?;
    let bytes = counter(
        registry,
        "flagella_interface_bytes_total",
        "Bytes of the frames the pipeline received (rx) from or sent (tx) on each interface.",
        &["interface", "direction"],
    )?;
    for t in total.interfaces.iter() {
        let name = match (t.ifindex, names.iter().find(|(i, _)| *i == t.ifindex)) {
            (0, _) => "other".to_string(),
            (_, Some((_, name))) => name.clone(),
            (ifindex, None) => ifindex.to_string(),
        };
        for (direction, p, b) in [
            ("rx", t.rx_packets, t.rx_bytes),
            ("tx", t.tx_packets, t.tx_bytes),
        ] {
            packets.with_label_values(&[&name, direction]).inc_by(p);
            bytes.with_label_values(&[&name, direction]).inc_by(b);
        }
    }
    Ok(())
}

/// What the published tables hold: policy-map entries per direction (summed over endpoints)
/// and the endpoints whose policy is enforced, read from the snapshot at scrape time.
pub fn render_tables(tables: &Tables) -> Result<String, prometheus::Error> {
    let registry = Registry::new();
    let entries = IntGaugeVec::new(
        Opts::new(
            "flagella_policy_map_entries",
            "Entries of the endpoints' policy maps, by direction (summed over endpoints).",
        ),
        &["direction"],
    )?;
    registry.register(Box::new(entries.clone()))?;
    let enforced = IntGaugeVec::new(
        Opts::new(
            "flagella_policy_enforced_endpoints",
            "Endpoints whose policy is enforced (default deny), by direction.",
        ),
        &["direction"],
    )?;
    registry.register(Box::new(enforced.clone()))?;
    for direction in Direction::ALL {
        let policies = || {
            tables
                .endpoints
                .iter()
                .map(|e| e.policy.direction(direction))
        };
        let count = policies().map(|p| p.map.len()).sum::<usize>();
        let on = policies().filter(|p| p.enforced).count();
        entries
            .with_label_values(&[direction.name()])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        enforced
            .with_label_values(&[direction.name()])
            .set(i64::try_from(on).unwrap_or(i64::MAX));
    }
    encode(&registry)
}

/// The flow export's totals (`flagella_flow_export_*`). The rings' losses, which the export
/// shares with the monitor, are `flagella_monitor_events_lost_total{source="worker_ring"}`.
pub fn render_flow_export(stats: &ExportStats) -> Result<String, prometheus::Error> {
    let registry = Registry::new();
    let counter = |name: &str, help: &str, value: u64| -> prometheus::Result<()> {
        let c = IntCounterVec::new(Opts::new(name, help), &[])?;
        registry.register(Box::new(c.clone()))?;
        c.with_label_values::<&str>(&[]).inc_by(value);
        Ok(())
    };
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    counter(
        "flagella_flow_export_flows_total",
        "Flows queued for the flow export's file or collector.",
        load(&stats.flows),
    )?;
    counter(
        "flagella_flow_export_written_total",
        "Lines (flows and loss reports) the flow export wrote.",
        load(&stats.written),
    )?;
    counter(
        "flagella_flow_export_write_errors_total",
        "Failed writes, opens or connects of the flow export (each retried every second).",
        load(&stats.write_errors),
    )?;
    counter(
        "flagella_flow_export_reopens_total",
        "Times the flow export opened its file (start, rotation, SIGHUP) or connected to its \
         collector.",
        load(&stats.reopens),
    )?;
    let lost = IntCounterVec::new(
        Opts::new(
            "flagella_flow_export_lost_total",
            "Flows the flow export did not write: `rate_limited` (over the configured rate), \
             `export_queue` (the file or collector was slow or away).",
        ),
        &["source"],
    )?;
    registry.register(Box::new(lost.clone()))?;
    lost.with_label_values(&["rate_limited"])
        .inc_by(load(&stats.rate_limited));
    lost.with_label_values(&["export_queue"])
        .inc_by(load(&stats.queue_lost));
    encode(&registry)
}

/// Each worker's conntrack table: occupancy, capacity and the table's own counters.
fn render_conntrack(registry: &Registry, workers: &[WorkerCounters]) -> prometheus::Result<()> {
    let gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
        let g = IntGaugeVec::new(Opts::new(name, help), &["worker"])?;
        registry.register(Box::new(g.clone()))?;
        Ok(g)
    };
    let entries = gauge(
        "flagella_conntrack_entries",
        "Occupied conntrack slots of each worker (expired entries not yet collected included).",
    )?;
    let capacity = gauge(
        "flagella_conntrack_capacity",
        "Conntrack slots of each worker's table.",
    )?;
    let mut families: Vec<Family> = Vec::new();
    for w in workers {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        entries
            .with_label_values(&[w.name.as_str()])
            .set(n(w.conntrack.entries));
        capacity
            .with_label_values(&[w.name.as_str()])
            .set(n(w.conntrack.capacity));
        for &(name, help, value) in &conntrack_fields(&w.conntrack) {
            let sample = (vec![w.name.as_str()], value);
            match families.iter_mut().find(|(f, _, _)| *f == name) {
                Some((_, _, samples)) => samples.push(sample),
                None => families.push((name, help, vec![sample])),
            }
        }
    }
    emit(
        registry,
        "flagella_conntrack",
        "Conntrack",
        &["worker"],
        families,
    )
}

/// The conntrack table's counters by name (the destructuring fails to compile when `CtStats`
/// gains a field this list does not show).
fn conntrack_fields(ct: &CtSummary) -> [KernelField; 6] {
    let CtStats {
        inserts,
        replaced,
        expired_reused,
        evictions,
        gc_freed,
        removed,
    } = ct.stats;
    [
        (
            "inserts",
            "entries created (replacements and evictions included)",
            inserts,
        ),
        (
            "replaced",
            "creates that overwrote an entry of the same flow",
            replaced,
        ),
        (
            "expired_reused",
            "creates that reused an expired entry's slot",
            expired_reused,
        ),
        (
            "evictions",
            "live entries displaced because their bucket was full",
            evictions,
        ),
        (
            "gc_freed",
            "expired entries freed by the incremental GC",
            gc_freed,
        ),
        ("removed", "entries removed on request", removed),
    ]
}

/// One counter family being built: its field name, help, and samples (label values, value).
type Family<'a> = (&'a str, &'a str, Vec<(Vec<&'a str>, u64)>);

/// The XDP programs' counters by interface, the sockets' statistics by interface and queue.
fn render_kernel(registry: &Registry, kernel: &KernelCounters) -> prometheus::Result<()> {
    let mut programs: Vec<Family> = Vec::new();
    for (interface, fields) in &kernel.programs {
        collect(&mut programs, fields, vec![interface.as_str()]);
    }
    emit(
        registry,
        "flagella_xdp",
        "XDP program",
        &["interface"],
        programs,
    )?;
    let queues: Vec<String> = kernel
        .sockets
        .iter()
        .map(|(_, q, _)| q.to_string())
        .collect();
    let mut sockets: Vec<Family> = Vec::new();
    for ((interface, _, fields), queue) in kernel.sockets.iter().zip(&queues) {
        collect(
            &mut sockets,
            fields,
            vec![interface.as_str(), queue.as_str()],
        );
    }
    emit(
        registry,
        "flagella_xsk",
        "AF_XDP socket (XDP_STATISTICS)",
        &["interface", "queue"],
        sockets,
    )
}

/// Groups one source's fields by field name: `(name, help, [(label values, value)])`.
fn collect<'a>(into: &mut Vec<Family<'a>>, fields: &'a [KernelField], labels: Vec<&'a str>) {
    for &(name, help, value) in fields {
        match into.iter_mut().find(|(n, _, _)| *n == name) {
            Some((_, _, samples)) => samples.push((labels.clone(), value)),
            None => into.push((name, help, vec![(labels.clone(), value)])),
        }
    }
}

/// One counter family `<prefix>_<field>_total` per field.
fn emit(
    registry: &Registry,
    prefix: &str,
    source: &str,
    labels: &[&str],
    fields: Vec<Family>,
) -> prometheus::Result<()> {
    for (name, help, samples) in fields {
        let c = counter(
            registry,
            &format!("{prefix}_{name}_total"),
            &format!("{source} counter `{name}`: {help}"),
            labels,
        )?;
        for (values, n) in samples {
            c.with_label_values(&values).inc_by(n);
        }
    }
    Ok(())
}

/// Per-worker I/O: busy time and the AF_XDP rings' statistics, so that no drop is invisible.
fn render_workers(registry: &Registry, workers: &[WorkerCounters]) -> prometheus::Result<()> {
    let busy = CounterVec::new(
        Opts::new(
            "flagella_worker_busy_seconds_total",
            "Time each worker spent in passes that received frames.",
        ),
        &["worker"],
    )?;
    registry.register(Box::new(busy.clone()))?;
    let idle = CounterVec::new(
        Opts::new(
            "flagella_worker_idle_seconds_total",
            "Time each worker has been running minus its busy time (polls that found nothing).",
        ),
        &["worker"],
    )?;
    registry.register(Box::new(idle.clone()))?;
    for w in workers {
        busy.with_label_values(&[w.name.as_str()])
            .inc_by(w.busy_ns as f64 / 1e9);
        idle.with_label_values(&[w.name.as_str()])
            .inc_by(w.running_ns.saturating_sub(w.busy_ns) as f64 / 1e9);
    }
    // Every field of `IoSummary`, by its own name (the struct is the list: a field added there
    // becomes a metric here).
    let mut io: Vec<(String, Vec<(&str, u64)>)> = Vec::new();
    for w in workers {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(w.io) else {
            continue;
        };
        for (field, value) in fields {
            let n = value.as_u64().unwrap_or(0);
            match io.iter_mut().find(|(f, _)| *f == field) {
                Some((_, samples)) => samples.push((w.name.as_str(), n)),
                None => io.push((field, vec![(w.name.as_str(), n)])),
            }
        }
    }
    for (field, samples) in io {
        let help = format!("AF_XDP I/O counter `{field}` of each worker (see `IoSummary`).");
        let c = counter(
            registry,
            &format!("flagella_worker_{field}_total"),
            &help,
            &["worker"],
        )?;
        for (worker, n) in samples {
            c.with_label_values(&[worker]).inc_by(n);
        }
    }
    Ok(())
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

/// Why the metrics server could not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen for /metrics on {address}: {source}: choose another --metrics-address, or `off`"
)]
pub struct MetricsError {
    pub address: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// The `/metrics` listener.
pub struct MetricsServer {
    listener: TcpListener,
    render: Render,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Listens on `address`; each `GET /metrics` answers what `render` builds then.
    pub fn bind(address: SocketAddr, render: Render) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(address)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| MetricsError { address, source })?;
        Ok(MetricsServer { listener, render })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves scrapes until `shutdown` is set (polling the listener every 50 ms).
    pub fn run(&self, shutdown: &AtomicBool) {
        while !shutdown.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = self.serve(stream) {
                        eprintln!("/metrics: a scrape failed: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    eprintln!("/metrics: accept failed: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn serve(&self, stream: TcpStream) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        let mut request_line = String::new();
        BufReader::new(stream.try_clone()?)
            .take(8192)
            .read_line(&mut request_line)?;
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next(), parts.next());
        let path = path.map(|p| p.split('?').next().unwrap_or(p));
        let (status, body) = match (method, path) {
            (Some("GET"), Some("/metrics")) => match (self.render)() {
                Ok(text) => ("200 OK", text),
                Err(e) => ("500 Internal Server Error", format!("{e}\n")),
            },
            _ => ("404 Not Found", "try GET /metrics\n".to_string()),
        };
        let mut w = stream;
        write!(
            w,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        w.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::publish::StatsRegistry;

    #[test]
    fn policy_map_entries_are_counted_per_direction() {
        use crate::tables::endpoints::{EndpointId, EndpointSpec};
        use crate::tables::policy::{PolicyEntry, PolicyKey};
        use crate::tables::{maglev, services::Services, LocalNode};
        use crate::types::Identity;
        let mut tables = Tables::empty(
            LocalNode::default(),
            Services::new(maglev::DEFAULT_M, 1).unwrap(),
        );
        let endpoints = Arc::make_mut(&mut tables.endpoints);
        for id in [1u8, 2] {
            endpoints
                .upsert(EndpointSpec {
                    id: EndpointId(u32::from(id)),
                    ifindex: 10 + u32::from(id),
                    mac: crate::MacAddr([2, 0, 0, 0, 0, id]),
                    ipv4: Some(std::net::Ipv4Addr::new(10, 0, 0, id)),
                    ipv6: None,
                    identity: Identity(1000),
                })
                .unwrap();
            let policy = endpoints.policy_mut(EndpointId(u32::from(id))).unwrap();
            policy.ingress.enforced = true;
            for peer in 0..u32::from(id) {
                policy
                    .ingress
                    .map
                    .insert(PolicyKey::l3(Identity(2000 + peer)), PolicyEntry::allow(1))
                    .unwrap();
            }
        }
        let text = render_tables(&tables).unwrap();
        for series in [
            "flagella_policy_map_entries{direction=\"ingress\"} 3",
            "flagella_policy_map_entries{direction=\"egress\"} 0",
            "flagella_policy_enforced_endpoints{direction=\"ingress\"} 2",
            "flagella_policy_enforced_endpoints{direction=\"egress\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }

    #[test]
    fn every_counter_and_drop_reason_is_a_metric() {
        let mut c = Counters {
            dsr_option_written: 3,
            ..Counters::default()
        };
        c.drop(
            Stage::Policy,
            DropReason::PolicyDeniedIngress,
            Direction::Ingress,
        );
        let text = render(&c, &[], &KernelCounters::default()).unwrap();
        for (name, _) in Counters::default().scalars() {
            assert!(
                text.contains(&format!("# TYPE flagella_{name}_total counter")),
                "flagella_{name}_total missing"
            );
        }
        for reason in DropReason::ALL {
            assert!(
                text.contains(&format!(
                    "flagella_drops_total{{direction=\"egress\",reason=\"{}\"}}",
                    reason.name()
                )),
                "{} missing",
                reason.name()
            );
        }
        assert!(
            text.contains("flagella_dsr_option_written_total 3"),
            "{text}"
        );
        assert!(text.contains(
            "flagella_drops_total{direction=\"ingress\",reason=\"policy_denied_ingress\"} 1"
        ));
        assert!(text.contains(
            "flagella_drops_total{direction=\"egress\",reason=\"policy_denied_ingress\"} 0"
        ));
        assert!(text.contains("flagella_stage_drops_total{stage=\"policy\"} 1"));
        c.interfaces.of(4).rx_packets = 5;
        c.interfaces.of(4).tx_bytes = 60;
        c.interfaces.of(6).tx_packets = 1;
        let kernel = KernelCounters {
            interface_names: vec![(4, "lxc-a".into())],
            ..KernelCounters::default()
        };
        let text = render(&c, &[], &kernel).unwrap();
        for series in [
            "flagella_interface_packets_total{direction=\"rx\",interface=\"lxc-a\"} 5",
            "flagella_interface_bytes_total{direction=\"tx\",interface=\"lxc-a\"} 60",
            "flagella_interface_packets_total{direction=\"tx\",interface=\"6\"} 1",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
        let worker = WorkerCounters {
            name: "worker-0".into(),
            publications: 1,
            busy_ns: 1_500_000_000,
            running_ns: 4_000_000_000,
            conntrack: CtSummary {
                entries: 3,
                capacity: 1024,
                stats: CtStats {
                    evictions: 2,
                    ..CtStats::default()
                },
            },
            io: crate::pipeline::IoSummary {
                sock_rx_ring_full: 7,
                ..Default::default()
            },
            counters: Counters::default(),
        };
        let text = render(&c, &[worker], &KernelCounters::default()).unwrap();
        assert!(text.contains("flagella_worker_sock_rx_ring_full_total{worker=\"worker-0\"} 7"));
        assert!(text.contains("flagella_worker_busy_seconds_total{worker=\"worker-0\"} 1.5"));
        assert!(text.contains("flagella_worker_idle_seconds_total{worker=\"worker-0\"} 2.5"));
        assert!(text.contains("flagella_conntrack_entries{worker=\"worker-0\"} 3"));
        assert!(text.contains("flagella_conntrack_capacity{worker=\"worker-0\"} 1024"));
        assert!(text.contains("flagella_conntrack_evictions_total{worker=\"worker-0\"} 2"));
        assert!(text.contains("# TYPE flagella_conntrack_gc_freed_total counter"));
    }

    /// Every scalar counter and every drop reason, each made non-zero, shows up both in the
    /// control socket's `status` and in `/metrics` with its value.
    #[test]
    fn no_counter_or_drop_reason_is_missing_from_status_or_metrics() {
        let mut c = Counters::default();
        for (n, reason) in DropReason::ALL.iter().enumerate() {
            for i in 0..=n {
                // One of them egress, the rest ingress: both labels are checked.
                let direction = if i == 0 {
                    Direction::Egress
                } else {
                    Direction::Ingress
                };
                c.drop(Stage::Policy, *reason, direction);
            }
        }
        let status = crate::api::control::counters_json(&c);
        let text = render(&c, &[], &KernelCounters::default()).unwrap();
        for (name, value) in c.scalars() {
            assert_eq!(status[name], value, "`{name}` missing from status");
            assert!(
                text.contains(&format!("\nflagella_{name}_total {value}\n")),
                "flagella_{name}_total missing from /metrics"
            );
        }
        for (n, reason) in DropReason::ALL.iter().enumerate() {
            let name = reason.name();
            assert_eq!(
                status["drops"][name],
                n + 1,
                "drop reason `{name}` missing from status"
            );
            for (direction, count) in [("egress", 1), ("ingress", n)] {
                assert!(
                    text.contains(&format!(
                        "flagella_drops_total{{direction=\"{direction}\",reason=\"{name}\"}} {count}\n",
                    )),
                    "drop reason `{name}` ({direction}) missing from /metrics"
                );
            }
        }
    }

    #[test]
    fn kernel_counters_are_labelled_by_interface_and_queue() {
        let kernel = KernelCounters {
            programs: vec![
                (
                    "eth0".into(),
                    vec![("redirected", "owned and redirected", 5)],
                ),
                (
                    "eth1".into(),
                    vec![("redirected", "owned and redirected", 6)],
                ),
            ],
            sockets: vec![
                ("eth0".into(), 0, vec![("rx_dropped", "dropped", 1)]),
                ("eth0".into(), 1, vec![("rx_dropped", "dropped", 2)]),
            ],
            interface_names: Vec::new(),
        };
        let text = render(&Counters::default(), &[], &kernel).unwrap();
        assert!(
            text.contains("# TYPE flagella_xdp_redirected_total counter"),
            "{text}"
        );
        assert!(text.contains("flagella_xdp_redirected_total{interface=\"eth0\"} 5"));
        assert!(text.contains("flagella_xdp_redirected_total{interface=\"eth1\"} 6"));
        assert!(text.contains("flagella_xsk_rx_dropped_total{interface=\"eth0\",queue=\"1\"} 2"));
    }

    #[test]
    fn the_server_answers_metrics_and_404_on_loopback() {
        let stats = StatsRegistry::new();
        let render: Render = Box::new(move || {
            render(
                &stats.total(),
                &stats.per_worker(),
                &KernelCounters::default(),
            )
        });
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), render).unwrap();
        let addr = server.local_addr().unwrap();
        let shutdown = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&shutdown);
        let handle = std::thread::spawn(move || server.run(&stop));
        let get = |path: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = get("/metrics");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("flagella_rx_packets_total 0"), "{ok}");
        assert!(get("/").starts_with("HTTP/1.1 404"));
        shutdown.store(true, Ordering::Relaxed);
        handle.join().unwrap();
    }
}
