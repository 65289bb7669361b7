//! A real etcd for tests: `/usr/bin/etcd` on free loopback ports with a temporary data
//! directory, killed (the child we started, by its PID) and cleaned up on drop.
//!
//! Ports are picked by binding port 0 and closing; another process could take one in the
//! instant between, in which case etcd fails to start and the test says so.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helper: a failure is a failed test

pub mod cli;
pub mod net;
pub mod prometheus;
pub mod proxy;
pub mod traffic;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ETCD: &str = "/usr/bin/etcd";

/// A running etcd.
pub struct Etcd {
    child: Option<Child>,
    pub url: String,
    peer_url: String,
    pub dir: PathBuf,
    client_port: u16,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr").port()
}

/// True (and a message printed) when the tests must be skipped.
pub fn skip() -> bool {
    if std::path::Path::new(ETCD).exists() {
        return false;
    }
    testkit::skip(&format!(
        "{ETCD} is missing; install Debian's etcd-server (apt-get install etcd-server)"
    ));
    true
}

impl Etcd {
    /// Starts etcd and waits until it answers. `None` when etcd is not installed.
    pub fn start() -> Option<Etcd> {
        if skip() {
            return None;
        }
        let dir = testkit::private_dir("flagella-etcd-");
        let mut e = Etcd {
            child: None,
            url: String::new(),
            peer_url: String::new(),
            dir,
            client_port: free_port(),
        };
        e.url = format!("http://127.0.0.1:{}", e.client_port);
        e.peer_url = format!("http://127.0.0.1:{}", free_port());
        e.spawn();
        Some(e)
    }

    fn spawn(&mut self) {
        let child = Command::new(ETCD)
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.display()))
            .arg(format!("--listen-client-urls={}", self.url))
            .arg(format!("--advertise-client-urls={}", self.url))
            .arg(format!("--listen-peer-urls={}", self.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer_url))
            .arg(format!("--initial-cluster=test={}", self.peer_url))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/bin/etcd");
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("etcd exited during start-up ({status}); a port may have been taken");
                }
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_ok()
                && health(self.client_port)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd did not become healthy within 20 s");
    }

    /// Stops etcd (SIGKILL to our child), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn urls(&self) -> Vec<String> {
        vec![self.url.clone()]
    }
}

/// GET /health answers {"health":"true"}.
fn health(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A current-thread tokio runtime for a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
