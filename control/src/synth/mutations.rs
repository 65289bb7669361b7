//! A seeded random sequence of cluster changes over a [`ScaleCluster`]: endpoints added,
//! deleted and relabelled (a new `version`: a new identity), namespace labels flipped (every
//! namespace selector over `env` changes its selection), policies added, rewritten and deleted.
//! The same seed gives the same sequence.

use std::collections::BTreeMap;

use super::cluster::{ScaleCluster, SynthEndpoint};

/// One etcd operation, key relative to [`super::cluster::ROOT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    Put(String, String),
    Delete(String),
}

/// xorshift64*: small, seeded, good enough to pick changes (no dependency).
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The generator: the cluster as it is after the changes returned so far.
#[derive(Clone, Debug)]
pub struct Mutations {
    cluster: ScaleCluster,
    rng: Rng,
    /// Live endpoints by key.
    live: BTreeMap<String, SynthEndpoint>,
    /// Policies present: index -> variant.
    policies: BTreeMap<usize, u16>,
    /// Namespaces whose `env` is prod.
    prod: Vec<bool>,
    serial: usize,
}

impl Mutations {
    /// Starts from `cluster` as generated (every endpoint and policy present).
    pub fn new(cluster: ScaleCluster, seed: u64) -> Mutations {
        let live = cluster
            .endpoints
            .iter()
            .map(|e| (cluster.endpoint_object(e).0, e.clone()))
            .collect();
        let policies = (0..cluster.spec.policies).map(|i| (i, 0)).collect();
        let prod = (0..cluster.spec.namespaces).map(|k| k % 2 == 0).collect();
        let serial = cluster.spec.endpoints;
        Mutations {
            cluster,
            rng: Rng(seed | 1),
            live,
            policies,
            prod,
            serial,
        }
    }

    /// The next change.
    pub fn next_mutation(&mut self) -> Mutation {
        loop {
            let m = match self.rng.below(100) {
                0..=24 => self.add_endpoint(),
                25..=44 => self.delete_endpoint(),
                45..=59 => self.relabel_endpoint(),
                60..=69 => Some(self.flip_namespace()),
                70..=84 => Some(self.rewrite_policy()),
                _ => self.delete_policy(),
            };
            if let Some(m) = m {
                return m;
            }
        }
    }

    fn add_endpoint(&mut self) -> Option<Mutation> {
        // Agents' nodes get a third of the new pods: those are the ones with maps.
        let start = if self.rng.below(3) == 0 {
            self.rng.below(self.cluster.spec.agents.max(1))
        } else {
            self.rng.below(self.cluster.spec.nodes)
        };
        let node = self.cluster.node_with_room(start)?;
        let deployment = self.rng.below(self.cluster.spec.identities + 10);
        self.serial += 1;
        let e = self.cluster.endpoint(self.serial, deployment, node);
        let (k, v) = self.cluster.endpoint_object(&e);
        self.live.insert(k.clone(), e);
        Some(Mutation::Put(k, v))
    }

    fn pick_endpoint(&mut self) -> Option<String> {
        let n = self.rng.below(self.live.len().max(1));
        self.live.keys().nth(n).cloned()
    }

    fn delete_endpoint(&mut self) -> Option<Mutation> {
        let k = self.pick_endpoint()?;
        self.live.remove(&k);
        Some(Mutation::Delete(k))
    }

    fn relabel_endpoint(&mut self) -> Option<Mutation> {
        let k = self.pick_endpoint()?;
        let e = self.live.get(&k)?.clone();
        let version = format!("canary{}", self.rng.below(3));
        let (k, v) = self.cluster.endpoint_object_with(&e, Some(&version));
        Some(Mutation::Put(k, v))
    }

    fn flip_namespace(&mut self) -> Mutation {
        let k = self.rng.below(self.prod.len());
        self.prod[k] = !self.prod[k];
        let (key, value) = self.cluster.namespace_object(k, self.prod[k]);
        Mutation::Put(key, value)
    }

    fn rewrite_policy(&mut self) -> Mutation {
        let i = self.rng.below(self.cluster.spec.policies.max(1) + 20);
        let variant = (self.rng.below(4) + 1) as u16;
        self.policies.insert(i, variant);
        let (k, v) = self.cluster.policy_object(i, variant);
        Mutation::Put(k, v)
    }

    fn delete_policy(&mut self) -> Option<Mutation> {
        let n = self.rng.below(self.policies.len().max(1));
        let i = *self.policies.keys().nth(n)?;
        self.policies.remove(&i);
        Some(Mutation::Delete(self.cluster.policy_object(i, 0).0))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::synth::ScaleSpec;

    #[test]
    fn same_seed_same_sequence_and_every_value_decodes() {
        let mut spec = ScaleSpec::new("m", 500);
        spec.nodes = 10;
        spec.identities = 50;
        spec.policies = 60;
        let c = ScaleCluster::generate(&spec).unwrap();
        let mut a = Mutations::new(c.clone(), 7);
        let mut b = Mutations::new(c, 7);
        let mut kinds = [0usize; 2];
        for _ in 0..300 {
            let m = a.next_mutation();
            assert_eq!(m, b.next_mutation());
            match m {
                Mutation::Put(k, v) => {
                    kinds[0] += 1;
                    let key = format!("{}{k}", crate::schema::ROOT);
                    crate::schema::decode(&key, v.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
                }
                Mutation::Delete(_) => kinds[1] += 1,
            }
        }
        assert!(kinds[0] > 100 && kinds[1] > 50, "{kinds:?}");
    }
}
