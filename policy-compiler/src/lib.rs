//! Compiles Kubernetes NetworkPolicy and CiliumNetworkPolicy into identity-based policy-map
//! entries (to be written).
