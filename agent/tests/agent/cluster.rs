//! A real etcd and kube-apiserver on 127.0.0.1 for one test, started by `tests/kube/start.sh`
//! (binaries built from Go module sources by `tests/kube/build.sh`), stopped on drop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::skip;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/kube").join(name)
}

fn binaries_present() -> bool {
    let dir = match std::env::var_os("FERRY_KUBE_BIN") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("FERRY_SERVERS_DIR").unwrap_or_else(|| "/var/cache/ferry-servers".into()))
                .join("kube/bin")
        }
    };
    dir.join("kube-apiserver").is_file() && dir.join("etcd").is_file()
}

#[derive(Debug)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    vars: HashMap<String, String>,
}

impl Cluster {
    /// Start one, or `None` (recorded as a skip) when the servers are not built here.
    pub fn start() -> Option<Cluster> {
        if !binaries_present() {
            skip("kube-apiserver and etcd are not built (tests/servers.sh install builds them)");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("ferry-kube-").tempdir().unwrap();
        let out = Command::new("bash").arg(script("start.sh")).arg(dir.path()).output().unwrap();
        if !out.status.success() {
            let log = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
            panic!(
                "tests/kube/start.sh failed: {}\n{}\napiserver.log tail: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                log("apiserver.log").lines().rev().take(20).collect::<Vec<_>>().join("\n")
            );
        }
        let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
        let vars = env
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        Some(Cluster { dir, vars })
    }

    pub fn var(&self, k: &str) -> &str {
        self.vars.get(k).unwrap_or_else(|| panic!("{k} not in the cluster's env"))
    }

    pub fn agent_kubeconfig(&self) -> PathBuf {
        PathBuf::from(self.var("FERRY_KUBE_AGENT_KUBECONFIG"))
    }

    /// A client with the admin token (group system:masters).
    pub async fn admin(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.var("FERRY_KUBE_ADMIN_KUBECONFIG")).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
        kube::Client::try_from(cfg).unwrap()
    }

    /// Stop the API server only (etcd and every object stay).
    pub fn stop_apiserver(&self) {
        let ok = Command::new("bash").arg(script("stop.sh")).arg(self.dir.path()).arg("apiserver").status().unwrap();
        assert!(ok.success(), "stop.sh apiserver");
    }

    /// Start the API server again on the same port.
    pub fn start_apiserver(&self) {
        let ok = Command::new("bash").arg(script("start.sh")).arg(self.dir.path()).arg("apiserver").status().unwrap();
        assert!(ok.success(), "start.sh apiserver");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script("stop.sh")).arg(self.dir.path()).status();
    }
}
