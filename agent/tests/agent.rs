//! End-to-end tests of `ferry agent` against a real kube-apiserver and etcd on 127.0.0.1
//! (built from Go module sources by tests/kube/build.sh), with a real S3 server on loopback,
//! loop-mounted file systems and loop block devices. The tests play kubelet, the scheduler,
//! the PV controller and the CSI snapshotter; the agents run as separate processes with the
//! least-privilege RBAC of deploy/rbac.yaml.

mod common;

#[path = "agent/bench.rs"]
mod bench;
#[path = "agent/cluster.rs"]
mod cluster;
#[path = "agent/freeze.rs"]
mod freeze;
#[path = "agent/own.rs"]
mod own;
#[path = "agent/protocol.rs"]
mod protocol;
#[path = "agent/resilience.rs"]
mod resilience;
#[path = "agent/roundtrip.rs"]
mod roundtrip;
#[path = "agent/world.rs"]
mod world;
