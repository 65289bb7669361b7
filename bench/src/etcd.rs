//! etcd for `converge`: our own server, or a given one, and a small synchronous client.
//!
//! - [`EtcdServer::start`] runs Debian's `etcd` (etcd-server) on two free loopback ports with a
//!   data directory under the run's scratch directory and a name carrying the run's prefix;
//!   dropping it stops the process by PID (SIGTERM, then SIGKILL) and the scratch directory
//!   goes with the run.
//! - [`Etcd`] wraps `control::store::Store` (the agent's own client, so the bench writes keys
//!   exactly as the cluster would) on a current-thread tokio runtime: every call blocks.
//!   [`Etcd::put_many`] writes in transactions of 100 puts (etcd refuses more than 128
//!   operations in one transaction by default), which keeps populating 10k endpoints to a few
//!   seconds instead of one fsync per key.
//! - Everything this run writes is remembered, and [`Etcd::delete_written`] removes it (used
//!   when the etcd was given with `--etcd`: the identities the agent allocated stay, as they
//!   would after a real pod's deletion, until the identity collection removes them).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use control::store::Store;
use etcd_client::{Txn, TxnOp};

use crate::targets::ChildGuard;
use crate::BenchError;

/// The key prefix of the cluster (docs/etcd-schema.md).
pub const ROOT: &str = control::schema::ROOT;
/// Debian's etcd-server binary.
pub const ETCD_BIN: &str = "etcd";

fn free_port() -> Result<u16, BenchError> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::io("binding a free loopback port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| BenchError::io("reading the free port", e))
}

/// Our own etcd; stopped by PID on drop.
#[derive(Debug)]
pub struct EtcdServer {
    pub url: String,
    _child: ChildGuard,
}

impl EtcdServer {
    /// Starts `etcd` named `name` with its data in `dir/etcd`, waiting until it answers.
    pub fn start(name: &str, dir: &Path) -> Result<EtcdServer, BenchError> {
        let client = free_port()?;
        let peer = free_port()?;
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let data = dir.join("etcd");
        let log = dir.join("etcd.log");
        let logf = std::fs::File::create(&log)
            .map_err(|e| BenchError::io(log.display().to_string(), e))?;
        let mut cmd = Command::new(ETCD_BIN);
        cmd.arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={name}={peer_url}"))
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf);
        let mut child = ChildGuard::spawn("etcd", &mut cmd).map_err(|e| match e {
            BenchError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                BenchError::Unavailable(
                    "etcd is not installed: apt-get install -y etcd-server (or pass --etcd URL)"
                        .into(),
                )
            }
            e => e,
        })?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            child.check_alive(&log)?;
            if std::net::TcpStream::connect(("127.0.0.1", client)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(BenchError::Failed(format!(
                    "etcd did not listen on {url} within 20 s; see {}",
                    log.display()
                )));
            }
            crate::signals::sleep(Duration::from_millis(50))?;
        }
        Ok(EtcdServer { url, _child: child })
    }
}

/// A blocking etcd client remembering the keys it wrote.
#[derive(Debug)]
pub struct Etcd {
    rt: tokio::runtime::Runtime,
    store: Store,
    written: Vec<String>,
}

fn etcd_err(what: &str) -> impl FnOnce(control::store::StoreError) -> BenchError + '_ {
    move |e| BenchError::Failed(format!("etcd {what}: {e}"))
}

impl Etcd {
    /// Connects to `urls` (comma-separated are split by the caller).
    pub fn connect(urls: &[String]) -> Result<Etcd, BenchError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BenchError::io("starting a tokio runtime", e))?;
        let store = rt
            .block_on(Store::connect(urls, Duration::from_secs(10)))
            .map_err(|e| {
                BenchError::Failed(format!(
                    "cannot connect to etcd at {}: {e}; is it running?",
                    urls.join(",")
                ))
            })?;
        Ok(Etcd {
            rt,
            store,
            written: Vec::new(),
        })
    }

    /// How many keys exist under [`ROOT`].
    pub fn count_root(&self) -> Result<usize, BenchError> {
        let (kvs, _) = self
            .rt
            .block_on(self.store.list(ROOT))
            .map_err(etcd_err("list"))?;
        Ok(kvs.len())
    }

    /// Every key under [`ROOT`] (full keys) with its value (a paged listing).
    pub fn list_root(&self) -> Result<Vec<(String, Vec<u8>)>, BenchError> {
        let (kvs, _) = self
            .rt
            .block_on(self.store.list(ROOT))
            .map_err(etcd_err("list"))?;
        Ok(kvs.into_iter().map(|kv| (kv.key, kv.value)).collect())
    }

    /// The current revision.
    pub fn revision(&self) -> Result<i64, BenchError> {
        self.rt
            .block_on(self.store.revision())
            .map_err(etcd_err("revision"))
    }

    /// One put of `ROOT + key`; returns when etcd acknowledged it.
    pub fn put(&mut self, key: &str, value: &str) -> Result<(), BenchError> {
        let full = format!("{ROOT}{key}");
        self.rt
            .block_on(self.store.put(&full, value))
            .map_err(etcd_err("put"))?;
        self.written.push(full);
        Ok(())
    }

    /// One delete of `ROOT + key`.
    pub fn delete(&mut self, key: &str) -> Result<(), BenchError> {
        let full = format!("{ROOT}{key}");
        self.rt
            .block_on(self.store.delete(&full))
            .map_err(etcd_err("delete"))?;
        self.written.retain(|k| *k != full);
        Ok(())
    }

    /// Puts `items` in transactions of 100.
    pub fn put_many(&mut self, items: &[(String, String)]) -> Result<(), BenchError> {
        let client = self.store.client();
        for chunk in items.chunks(100) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(k, v)| TxnOp::put(format!("{ROOT}{k}"), v.as_str(), None))
                .collect();
            let mut c = client.clone();
            self.rt
                .block_on(c.txn(Txn::new().and_then(ops)))
                .map_err(|e| BenchError::Failed(format!("etcd transaction: {e}")))?;
            self.written
                .extend(chunk.iter().map(|(k, _)| format!("{ROOT}{k}")));
        }
        Ok(())
    }

    /// Deletes every key this client wrote (in transactions of 100).
    pub fn delete_written(&mut self) -> Result<(), BenchError> {
        let keys = std::mem::take(&mut self.written);
        let client = self.store.client();
        for chunk in keys.chunks(100) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|k| TxnOp::delete(k.as_str(), None))
                .collect();
            let mut c = client.clone();
            self.rt
                .block_on(c.txn(Txn::new().and_then(ops)))
                .map_err(|e| BenchError::Failed(format!("etcd transaction: {e}")))?;
        }
        Ok(())
    }
}
