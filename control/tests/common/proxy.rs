//! A loopback TCP relay into a network namespace: a listener on 127.0.0.1 inside `ns` whose
//! connections are relayed to `target` in this process's namespace. The test's etcd listens on
//! the root namespace's loopback; a process that must run inside a node's namespace (the CNI
//! plugin, as on a real node) reaches it through this, without any interface of the root
//! namespace being touched.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helper: a failure is a failed test

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;

/// Starts the relay; returns the port it listens on inside `ns`. Its threads end with the test
/// process (the listener is inside a namespace the test deletes).
pub fn relay_into(ns: &str, target: SocketAddr) -> u16 {
    // The socket is created on a thread inside `ns` and keeps that namespace afterwards.
    let listener = testkit::run_in(ns, || TcpListener::bind("127.0.0.1:0").expect("bind in ns"));
    let port = listener.local_addr().expect("local addr").port();
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            // Connected from this thread: the root namespace's loopback.
            let Ok(upstream) = TcpStream::connect(target) else {
                continue;
            };
            pipe(&client, &upstream);
        }
    });
    port
}

fn pipe(a: &TcpStream, b: &TcpStream) {
    let copy = |from: io::Result<TcpStream>, to: io::Result<TcpStream>| {
        if let (Ok(mut from), Ok(mut to)) = (from, to) {
            thread::spawn(move || {
                let _ = io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
            });
        }
    };
    copy(a.try_clone(), b.try_clone());
    copy(b.try_clone(), a.try_clone());
}
