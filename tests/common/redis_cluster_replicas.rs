//! A Redis Cluster whose every master has a replica (three of each), for failover tests:
//! built from plain [`RedisServer`]s started with cluster options, joined with
//! `redis-cli --cluster create --cluster-replicas 1`. Which node serves a key, which node
//! replicates which, and a replica's `CLUSTER FAILOVER TAKEOVER` are asked of the nodes
//! themselves. Needs `redis-server` and `redis-cli` (`make setup`). Every node killed on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::{RedisServer, free_port};

/// How long the cluster gets to agree on anything (formation, a promotion).
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

/// Three masters and three replicas on free loopback ports.
pub struct ReplicatedCluster {
    nodes: Vec<RedisServer>,
}

impl ReplicatedCluster {
    /// Starts six nodes, joins them (three masters, one replica each) and returns once every
    /// node says `cluster_state:ok` and every replica's link to its master is up.
    pub fn start() -> ReplicatedCluster {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                // The bus port defaults to port + 10000, which may be taken: pick it free.
                let bus = free_port().to_string();
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): run `make setup`"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = ReplicatedCluster { nodes };
        cluster.settle(|c| c.masters().len() == 3 && c.replicas_linked() == 3);
        cluster
    }

    /// `redis+cluster://` naming every node, masters and replicas.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", addrs.join(","))
    }

    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// The running nodes whose `INFO replication` says `role:master`.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running() && self.nodes[i].role() == "master")
            .collect()
    }

    /// The node that replicates node `master`.
    pub fn replica_of(&self, master: usize) -> usize {
        let port = format!("master_port:{}", self.nodes[master].port());
        (0..self.nodes.len())
            .find(|&i| {
                self.nodes[i].is_running()
                    && self.nodes[i]
                        .info("replication")
                        .lines()
                        .any(|l| l.trim() == port)
            })
            .unwrap_or_else(|| panic!("node {master} has no replica"))
    }

    /// The masters that hold any key.
    pub fn masters_with_keys(&self) -> Vec<usize> {
        self.masters()
            .into_iter()
            .filter(|&i| !self.nodes[i].keys("*").is_empty())
            .collect()
    }

    /// `CLUSTER FAILOVER TAKEOVER` on `replica` (its master may be dead: no agreement asked),
    /// then waits until every running node says `cluster_state:ok` with `replica` a master.
    pub fn take_over(&self, replica: usize) {
        let _: String =
            self.nodes[replica].cmd(redis::cmd("CLUSTER").arg("FAILOVER").arg("TAKEOVER"));
        self.settle(|c| c.nodes[replica].role() == "master");
    }

    /// How many running replicas have `master_link_status:up`.
    fn replicas_linked(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && n.info("replication").contains("master_link_status:up"))
            .count()
    }

    /// Waits until `done` holds and every running node says `cluster_state:ok`.
    fn settle(&self, done: impl Fn(&Self) -> bool) {
        let started = Instant::now();
        loop {
            let states: Vec<bool> = self
                .nodes
                .iter()
                .filter(|n| n.is_running())
                .map(|n| {
                    let info: String = n.cmd(redis::cmd("CLUSTER").arg("INFO"));
                    info.contains("cluster_state:ok")
                })
                .collect();
            if states.iter().all(|ok| *ok) && done(self) {
                return;
            }
            assert!(
                started.elapsed() < SETTLE_WITHIN,
                "the cluster did not settle within {SETTLE_WITHIN:?}: ok per node {states:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
