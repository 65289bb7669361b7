//! The `etcd_events` fuzz body: arbitrary etcd key/value sequences through the agent's pure
//! core (`control::sync::ClusterState`: decode and apply each key, resolve identities, commit;
//! then `control::sync::requests`, which groups the changes into dataplane requests), as
//! `control::agent` drives it, without etcd or a dataplane.
//!
//! Input: text lines (at most [`MAX_LINES`]), each one of
//! - `put <key> <value>`: the key below `/flagella/v1/` (e.g. `nodes/n1`) and its value, the
//!   rest of the line, as an etcd put or a listed key;
//! - `del <key>`: an etcd delete;
//! - `commit`: what the agent does after a batch of watch events: every label set without a
//!   cluster-wide number gets one (the same number for the same set, from
//!   [`control::identity::FIRST_IDENTITY`] up, as the allocator hands them out), then commit,
//!   then the requests;
//! - `restart`: the dataplane restarted: the whole state as requests (`snapshot`);
//! - anything else is ignored.
//!
//! The input always ends with a commit and a restart. This node is `n1`; the model compiles
//! policy for its pods only, as the agent's does.
//!
//! Properties: every request the agent would send (and its `local_node.set`) is one line of
//! at most the dataplane's line limit, which the dataplane's own parser accepts and reads back
//! as the same request; no panic whatever the keys and values.

use std::collections::HashMap;

use control::dataplane_client::{Change, LocalNodeMsg, Request};
use control::identity::FIRST_IDENTITY;
use control::schema;
use control::sync::{local_node_facts, requests, ClusterState};
use dataplane::api::protocol::parse_request;
use dataplane::api::server::MAX_LINE;
use policy_compiler::labels::Labels;
use serde_json::Value;

/// Input lines at most.
pub const MAX_LINES: usize = 64;
/// The node the fuzzed agent runs on.
pub const NODE: &str = "n1";

/// Runs the lines of `data` through one agent model; panics when a property breaks.
pub fn etcd_events(data: &[u8]) {
    let mut agent = Agent::new();
    for line in data.split(|&b| b == b'\n').take(MAX_LINES) {
        agent.step(line);
    }
    agent.commit();
    agent.restart();
}

/// The agent's model and the identity numbers it was given.
struct Agent {
    state: ClusterState,
    numbers: HashMap<Labels, u32>,
}

impl Agent {
    fn new() -> Agent {
        let mut state = ClusterState::new(NODE);
        state.set_local_only(true);
        state.set_quiet(true);
        Agent {
            state,
            numbers: HashMap::new(),
        }
    }

    fn step(&mut self, line: &[u8]) {
        let (verb, rest) = split_word(line);
        match verb {
            b"put" => {
                let (key, value) = split_word(rest);
                if let Ok(key) = std::str::from_utf8(key) {
                    // A refused value is the model's to log and skip; the fuzzer checks only
                    // that nothing panics and what it sends stays well-formed.
                    let _ = self.state.put(&format!("{}{key}", schema::ROOT), value);
                }
            }
            b"del" => {
                if let Ok(key) = std::str::from_utf8(rest) {
                    self.state.delete(&format!("{}{key}", schema::ROOT));
                }
            }
            b"commit" => self.commit(),
            b"restart" => self.restart(),
            _ => {}
        }
    }

    /// Identities, commit, requests, as `Agent::converge` does.
    fn commit(&mut self) {
        for (labels, _local) in self.state.needed_identities() {
            let next = FIRST_IDENTITY + self.numbers.len() as u32;
            let id = *self.numbers.entry(labels.clone()).or_insert(next);
            self.state.set_identity(labels, id);
        }
        let changes = self.state.commit();
        self.send(changes);
    }

    /// After a dataplane restart, everything again.
    fn restart(&mut self) {
        let changes = self.state.snapshot();
        self.send(changes);
    }

    fn send(&mut self, changes: Vec<Change>) {
        for request in requests(changes) {
            check_line(&request);
        }
        if self.state.take_local_node_due() {
            if let Some(spec) = self.state.own_node().cloned() {
                let facts = local_node_facts(&LocalNodeMsg::default(), NODE, &spec);
                check_line(&Request::Change(Change::LocalNodeSet(facts)));
            }
        }
    }
}

/// The first space-separated word and the rest (after the space).
fn split_word(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b' ') {
        Some(at) => (&line[..at], &line[at + 1..]),
        None => (line, &[]),
    }
}

/// The line the agent's client writes for `request` (`dataplane_client::request`: the
/// request's JSON with a `seq`) fits the limit and parses back to the same request.
fn check_line(request: &Request) {
    let mut body = request.to_json();
    body.insert("seq".into(), Value::from(u64::MAX));
    let line = Value::Object(body).to_string();
    assert!(
        line.len() <= MAX_LINE,
        "a {} request of {} bytes is past the control line limit ({MAX_LINE})",
        request.kind().name(),
        line.len()
    );
    assert!(
        !line.contains('\n'),
        "a request line with a newline in it: {line}"
    );
    match parse_request(line.as_bytes()) {
        Ok(envelope) => assert!(
            envelope.request == *request,
            "the dataplane reads a request other than the one sent: sent {request:?}, read \
             {:?}, line {line}",
            envelope.request
        ),
        Err(refusal) => panic!(
            "the dataplane's parser refuses a request the agent sends: {}: {line}",
            refusal.error.message
        ),
    }
}
