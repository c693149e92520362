//! One test's world for the agent: a real API server (`Cluster`), the agent's least-privilege
//! RBAC from `deploy/rbac.yaml` granted to the API server's `ferry-agent` user, a repository
//! password Secret, S3 credentials and a BackupStorageLocation on the loopback S3 server, and
//! `ferry agent` processes, one per simulated node.
//!
//! The test plays the parts no process here plays: the CSI snapshotter (snapshots ready), the
//! PV controller (claims bound), the scheduler (pods bound to a node) and kubelet (the volume
//! laid out under the node's pods directory on a loop-mounted ext4 or a loop block device,
//! the pod Running).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::{Value, json};

use ferry_daemon::types::{DataDownload, DataUpload, Phase, VolumeSnapshot, VolumeSnapshotContent};

use crate::cluster::Cluster;
use crate::common::devices::{BindMount, Ext4, Loop};
use crate::common::skip;

pub const NS: &str = "velero";
pub const PASSWORD: &str = "agent-e2e-password";

/// A running `ferry agent`.
#[derive(Debug)]
pub struct AgentProc {
    pub node: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

/// A volume laid out for a mover pod: kept mounted (or attached) until the world ends.
#[derive(Debug)]
#[allow(dead_code)] // held for their drop
pub enum Backing {
    Fs(Ext4),
    Block(Loop),
    Bind(BindMount),
}

pub struct World {
    pub agents: Vec<AgentProc>,
    /// Test kubelets serving pod exec (`tests/kube/kubelet`), one per node that needs hooks.
    pub kubelets: Vec<Child>,
    pub backing: Vec<Backing>,
    pub client: Client,
    pub tmp: tempfile::TempDir,
    pub prefix: String,
    pub cluster: Cluster,
}

fn api<K>(c: &Client, ns: &str) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(c.clone(), ns)
}

async fn create<K>(api: &Api<K>, v: Value) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap_or_else(|e| panic!("creating {obj:?}: {e}"))
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").field("tmp", &self.tmp.path()).field("agents", &self.agents).finish_non_exhaustive()
    }
}

impl World {
    /// A cluster, S3 and one agent per node; `None` (a recorded skip) without the servers.
    pub async fn new(nodes: &[&str]) -> Option<World> {
        World::with_endpoint(nodes, None).await
    }

    /// As `new`, with the location's S3 endpoint at `endpoint` (a proxy in front of the test
    /// server) instead of the server itself.
    pub async fn with_endpoint(nodes: &[&str], endpoint: Option<String>) -> Option<World> {
        if crate::common::under_qemu() {
            return None;
        }
        let Ok(server) = std::env::var("FERRY_TEST_S3_ENDPOINT") else {
            skip("no S3 server (run tests/servers.sh start and source its env)");
            return None;
        };
        let endpoint = endpoint.unwrap_or(server);
        let cluster = Cluster::start()?;
        let client = cluster.admin().await;
        let tmp = tempfile::Builder::new().prefix("ferry-agent-e2e-").tempdir().unwrap();
        let prefix = format!("agent-e2e/{}", tmp.path().file_name().unwrap().to_string_lossy());
        let mut w =
            World { agents: Vec::new(), kubelets: Vec::new(), backing: Vec::new(), client, tmp, prefix, cluster };
        w.grant_rbac().await;
        let secrets: Api<Secret> = api(&w.client, NS);
        create(
            &secrets,
            json!({"metadata": {"name": "ferry-repo-credentials"},
                                "stringData": {"repository-password": PASSWORD}}),
        )
        .await;
        let ini = "[default]\naws_access_key_id = test\naws_secret_access_key = test\n";
        create(&secrets, json!({"metadata": {"name": "cloud-credentials"}, "stringData": {"cloud": ini}})).await;
        w.bsl("default", &endpoint, Some(("cloud-credentials", "cloud"))).await;
        for n in nodes {
            w.start_agent(n, &[]);
        }
        Some(w)
    }

    /// Create BackupStorageLocation `name` on the test S3 server.
    pub async fn bsl(&self, name: &str, endpoint: &str, credential: Option<(&str, &str)>) {
        let mut spec = json!({
            "provider": "aws",
            "objectStorage": {"bucket": std::env::var("FERRY_TEST_S3_BUCKET").unwrap_or("ferry-test".into()),
                              "prefix": self.prefix},
            "config": {"region": "us-east-1", "s3Url": endpoint, "s3ForcePathStyle": "true"},
        });
        if let Some((s, k)) = credential {
            spec["credential"] = json!({"name": s, "key": k});
        }
        let bsls: Api<ferry_daemon::types::BackupStorageLocation> = api(&self.client, NS);
        create(
            &bsls,
            json!({"apiVersion": "velero.io/v1", "kind": "BackupStorageLocation",
                             "metadata": {"name": name, "namespace": NS}, "spec": spec}),
        )
        .await;
    }

    /// deploy/rbac.yaml's Role and ClusterRole, bound to the API server's `ferry-agent` user (the
    /// tests run the agent with that user's token: nothing beyond those rules is allowed).
    async fn grant_rbac(&self) {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rbac.yaml")).unwrap();
        let subject = json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "ferry-agent"}]);
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            match v["kind"].as_str().unwrap() {
                "Role" => {
                    create(&api::<Role>(&self.client, NS), v).await;
                }
                "ClusterRole" => {
                    create(&Api::<ClusterRole>::all(self.client.clone()), v).await;
                }
                "RoleBinding" => {
                    let mut v = v;
                    v["subjects"] = subject.clone();
                    create(&api::<RoleBinding>(&self.client, NS), v).await;
                }
                "ClusterRoleBinding" => {
                    let mut v = v;
                    v["subjects"] = subject.clone();
                    create(&Api::<ClusterRoleBinding>::all(self.client.clone()), v).await;
                }
                _ => {}
            }
        }
    }

    /// Start `ferry agent` for `node` (again, keeping its pods and state directories), with a
    /// Node object of that name (as kubelet registers it).
    pub fn start_agent(&mut self, node: &str, extra: &[&str]) {
        self.register_node(node);
        let base = self.tmp.path().join(node);
        let (pods, state) = (base.join("pods"), base.join("state"));
        std::fs::create_dir_all(&pods).unwrap();
        let log = base.join(format!("agent-{}.log", self.agents.iter().filter(|a| a.node == node).count()));
        let child = Command::new(assert_cmd::cargo::cargo_bin("ferry"))
            .args(["agent", "-vv", "--node", node, "--namespace", NS, "--mover-image", "ferry:test"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            // Defaults for the tests unless `extra` sets them (a flag given twice is an error).
            .args(if extra.contains(&"--progress-interval") { &[][..] } else { &["--progress-interval", "1s"][..] })
            .args(if extra.contains(&"--threads") { &[][..] } else { &["--threads", "2"][..] })
            .arg("--kubeconfig")
            .arg(self.cluster.agent_kubeconfig())
            .arg("--host-pods")
            .arg(&pods)
            .arg("--state-dir")
            .arg(&state)
            .args(extra)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SHARED_CREDENTIALS_FILE")
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.agents.retain(|a| a.node != node || a.child.is_some());
        self.agents.push(AgentProc { node: node.into(), child: Some(child), log });
    }

    /// Create the Node `name` unless it exists (what kubelet does when it joins).
    pub fn register_node(&self, name: &str) {
        let client = self.client.clone();
        let name = name.to_string();
        // Called from sync code inside the test's runtime: do the request on a helper thread.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
                if nodes.get_opt(&name).await.unwrap().is_none() {
                    let n = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
                    nodes.create(&PostParams::default(), &n).await.unwrap();
                }
            })
        })
        .join()
        .unwrap();
    }

    /// Start the test kubelet of `node` (it registers the Node with its address and serves pod
    /// exec by running the command on this machine); returns once it serves.
    pub fn start_kubelet(&mut self, node: &str) {
        let ready = self.tmp.path().join(format!("kubelet-{node}.port"));
        let log = std::fs::File::create(self.tmp.path().join(format!("kubelet-{node}.log"))).unwrap();
        let child = Command::new(self.cluster.var("FERRY_KUBE_TEST_KUBELET"))
            .arg("--kubeconfig")
            .arg(self.cluster.var("FERRY_KUBE_ADMIN_KUBECONFIG"))
            .args(["--node", node, "--listen", "127.0.0.1:0", "--client-ca", self.cluster.var("FERRY_KUBE_CA")])
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.kubelets.push(child);
        let end = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            assert!(Instant::now() < end, "the test kubelet of {node} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn agent(&mut self, node: &str) -> &mut AgentProc {
        self.agents.iter_mut().rev().find(|a| a.node == node && a.child.is_some()).expect("a running agent")
    }

    /// Panics, with the end of its log, if the running agent of `node` has exited.
    pub fn assert_agent_running(&mut self, node: &str) {
        let a = self.agent(node);
        if let Some(status) = a.child.as_mut().unwrap().try_wait().unwrap() {
            let log = std::fs::read_to_string(&a.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "the agent of {node} exited ({status}); its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }

    /// The process id of the running agent of `node`.
    pub fn agent_pid(&mut self, node: &str) -> u32 {
        self.agent(node).child.as_ref().unwrap().id()
    }

    /// `kill -9` the agent of `node`.
    pub fn kill_agent(&mut self, node: &str) {
        let a = self.agent(node);
        let mut c = a.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM the agent of `node`; its exit status.
    pub fn stop_agent(&mut self, node: &str) -> std::process::ExitStatus {
        let a = self.agent(node);
        let mut c = a.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        c.wait().unwrap()
    }

    /// GET `path` from the metrics listener of the running agent of `node` (its address is in
    /// its log); the status code and body.
    pub fn agent_http(&mut self, node: &str, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let log = std::fs::read_to_string(&self.agent(node).log).unwrap();
        let addr = log
            .lines()
            .find_map(|l| l.split("metrics and health on http://").nth(1))
            .map(|a| a.trim().to_string())
            .expect("the agent logs its metrics address");
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (code, body)
    }

    /// Every agent's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for a in &self.agents {
            let text = std::fs::read_to_string(&a.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {} ({}):\n", a.node, a.log.display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    pub async fn namespace(&self, name: &str) {
        create(&Api::<Namespace>::all(self.client.clone()), json!({"metadata": {"name": name}})).await;
    }

    /// A source PVC `ns/pvc` and a ready CSI snapshot `ns/snap` of it, as the CSI snapshotter
    /// leaves them for Velero's DataUpload.
    pub async fn snapshot(&self, ns: &str, pvc: &str, snap: &str, block: bool) {
        create(
            &api::<PersistentVolumeClaim>(&self.client, ns),
            json!({"metadata": {"name": pvc}, "spec": {
                "accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                "volumeMode": if block { "Block" } else { "Filesystem" },
                "resources": {"requests": {"storage": "64Mi"}}}}),
        )
        .await;
        let content = format!("snapcontent-{ns}-{snap}");
        let vscs: Api<VolumeSnapshotContent> = Api::all(self.client.clone());
        create(
            &vscs,
            json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                   "metadata": {"name": content},
                   "spec": {"deletionPolicy": "Delete", "driver": "fake.csi.ferry.dev",
                            "source": {"volumeHandle": format!("vol-{pvc}")},
                            "volumeSnapshotRef": {"namespace": ns, "name": snap},
                            "volumeSnapshotClassName": "fake"}}),
        )
        .await;
        let pp = PatchParams::default();
        vscs.patch_status(
            &content,
            &pp,
            &Patch::Merge(json!({"status": {"snapshotHandle": format!("handle-{snap}"), "readyToUse": true,
                                           "restoreSize": 64 << 20}})),
        )
        .await
        .unwrap();
        let vss: Api<VolumeSnapshot> = api(&self.client, ns);
        create(
            &vss,
            json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                   "metadata": {"name": snap, "namespace": ns},
                   "spec": {"source": {"persistentVolumeClaimName": pvc}, "volumeSnapshotClassName": "fake"}}),
        )
        .await;
        vss.patch_status(
            snap,
            &pp,
            &Patch::Merge(json!({"status": {"boundVolumeSnapshotContentName": content, "readyToUse": true,
                                           "restoreSize": "64Mi"}})),
        )
        .await
        .unwrap();
    }

    /// A DataUpload as Velero's CSI plugin creates it (no status).
    pub async fn data_upload(&self, name: &str, ns: &str, pvc: &str, snap: &str, datamover: &str) -> DataUpload {
        self.data_upload_to(name, ns, pvc, snap, datamover, "default").await
    }

    /// A DataUpload to backup location `bsl`.
    pub async fn data_upload_to(
        &self,
        name: &str,
        ns: &str,
        pvc: &str,
        snap: &str,
        datamover: &str,
        bsl: &str,
    ) -> DataUpload {
        self.data_upload_of(name, ns, pvc, snap, datamover, bsl, ("b1", "uid-b1")).await
    }

    /// A Velero Backup (data moved by ferry); its uid.
    pub async fn backup(&self, name: &str) -> String {
        let b: ferry_daemon::types::Backup = create(
            &api(&self.client, NS),
            json!({"apiVersion": "velero.io/v1", "kind": "Backup", "metadata": {"name": name, "namespace": NS},
                   "spec": {"datamover": "ferry", "snapshotMoveData": true, "storageLocation": "default"}}),
        )
        .await;
        b.metadata.uid.unwrap()
    }

    /// A DataUpload of Backup `backup` = (name, uid).
    #[allow(clippy::too_many_arguments)]
    pub async fn data_upload_of(
        &self,
        name: &str,
        ns: &str,
        pvc: &str,
        snap: &str,
        datamover: &str,
        bsl: &str,
        backup: (&str, &str),
    ) -> DataUpload {
        create(
            &api::<DataUpload>(&self.client, NS),
            json!({"apiVersion": "velero.io/v2alpha1", "kind": "DataUpload",
                   "metadata": {"name": name, "namespace": NS,
                                "labels": {"velero.io/backup-name": backup.0, "velero.io/backup-uid": backup.1}},
                   "spec": {"snapshotType": "CSI", "sourcePVC": pvc, "sourceNamespace": ns, "datamover": datamover,
                            "backupStorageLocation": bsl, "operationTimeout": "10m0s",
                            "csiSnapshot": {"volumeSnapshot": snap, "storageClass": "fast", "snapshotClass": "fake"}}}),
        )
        .await
    }

    /// A target PVC as Velero's restore leaves it (selector label) and its DataDownload.
    pub async fn data_download(&self, name: &str, ns: &str, pvc: &str, snapshot_id: &str, block: bool) -> DataDownload {
        create(
            &api::<PersistentVolumeClaim>(&self.client, ns),
            json!({"metadata": {"name": pvc}, "spec": {
                "accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                "volumeMode": if block { "Block" } else { "Filesystem" },
                "selector": {"matchLabels": {"velero.io/dynamic-pv-restore": format!("{ns}.{pvc}.x1y2z")}},
                "resources": {"requests": {"storage": "64Mi"}}}}),
        )
        .await;
        create(
            &api::<DataDownload>(&self.client, NS),
            json!({"apiVersion": "velero.io/v2alpha1", "kind": "DataDownload",
                   "metadata": {"name": name, "namespace": NS, "labels": {"velero.io/restore-name": "r1"}},
                   "spec": {"targetVolume": {"pvc": pvc, "namespace": ns, "pv": ""},
                            "backupStorageLocation": "default", "datamover": "ferry", "snapshotID": snapshot_id,
                            "sourceNamespace": "app", "operationTimeout": "10m0s"}}),
        )
        .await
    }

    /// Wait until `get` returns Some, for up to `secs`.
    pub async fn until<T, F, Fut>(&self, what: &str, secs: u64, mut get: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = get().await {
                return v;
            }
            if Instant::now() > end {
                panic!("timed out waiting for {what}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Merge-patch DataUpload `name` (as Velero does to set `spec.cancel`).
    pub async fn patch_upload(&self, name: &str, patch: Value) {
        api::<DataUpload>(&self.client, NS).patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    }

    pub async fn upload(&self, name: &str) -> DataUpload {
        api::<DataUpload>(&self.client, NS).get(name).await.unwrap()
    }

    pub async fn download(&self, name: &str) -> DataDownload {
        api::<DataDownload>(&self.client, NS).get(name).await.unwrap()
    }

    /// Wait for DataUpload `name` to reach `phase`.
    pub async fn upload_phase(&self, name: &str, phase: Phase, secs: u64) -> DataUpload {
        self.until(&format!("DataUpload {name} {phase:?}"), secs, || async {
            let du = self.upload(name).await;
            (du.status.as_ref().and_then(|s| s.phase) == Some(phase)).then_some(du)
        })
        .await
    }

    pub async fn download_phase(&self, name: &str, phase: Phase, secs: u64) -> DataDownload {
        self.until(&format!("DataDownload {name} {phase:?}"), secs, || async {
            let dd = self.download(name).await;
            (dd.status.as_ref().and_then(|s| s.phase) == Some(phase)).then_some(dd)
        })
        .await
    }

    /// `ns/name`, if it exists.
    pub async fn get_in<K>(&self, ns: &str, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        api::<K>(&self.client, ns).get_opt(name).await.unwrap()
    }

    /// `ns/name` is gone, or deleted and waiting for a finalizer that no controller here
    /// removes (a pod's kubelet confirming its graceful deletion, a claim's pvc-protection).
    pub async fn gone_in<K>(&self, ns: &str, name: &str) -> bool
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        self.get_in::<K>(ns, name).await.is_none_or(|o| o.meta().deletion_timestamp.is_some())
    }

    /// Wait until everything exposed for `owner` is gone (its pod and claim at least deleted).
    pub async fn exposed_gone(&self, owner: &str) {
        let name = format!("ferry-{owner}");
        self.until(&format!("the objects exposed for {owner} to go"), 30, || async {
            let gone = self.gone_in::<Pod>(NS, &name).await
                && self.gone_in::<PersistentVolumeClaim>(NS, &name).await
                && self.get_in::<VolumeSnapshot>(NS, &name).await.is_none()
                && self.get_cluster::<VolumeSnapshotContent>(&name).await.is_none();
            gone.then_some(())
        })
        .await
    }

    /// The cluster-scoped `name`, if it exists.
    pub async fn get_cluster<K>(&self, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        Api::<K>::all(self.client.clone()).get_opt(name).await.unwrap()
    }

    /// Play the PV controller, the scheduler and kubelet for the mover of `owner` (a
    /// DataUpload's or DataDownload's name): bind its claim to a new PV, bind its pod to `node`,
    /// lay the volume out under that node's pods directory and mark the pod Running. `fill`
    /// writes the volume's contents (a mounted directory, or a block device path). Returns the
    /// PV's name.
    pub async fn serve_mover(&mut self, owner: &str, node: &str, block: bool, fill: impl FnOnce(&Path)) -> String {
        let (pv, base) = self.bind_mover(owner, node, block).await;
        let image = self.tmp.path().join(format!("{owner}.img"));
        if block {
            let dir = base.join("volumeDevices/kubernetes.io~csi");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::File::create(&image).unwrap().set_len(16 << 20).unwrap();
            let dev = Loop::new(&image);
            fill(Path::new(&dev.0));
            let rdev = std::fs::metadata(&dev.0).map(|m| std::os::unix::fs::MetadataExt::rdev(&m)).unwrap();
            nix::sys::stat::mknod(
                &dir.join(&pv),
                nix::sys::stat::SFlag::S_IFBLK,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                rdev,
            )
            .unwrap();
            self.backing.push(Backing::Block(dev));
        } else {
            let mnt = base.join("volumes/kubernetes.io~csi").join(&pv).join("mount");
            let fs = Ext4::new(&image, &mnt, 48 << 20, &[]);
            fill(&mnt);
            self.backing.push(Backing::Fs(fs));
        }
        self.run_mover(owner).await;
        pv
    }

    /// As `serve_mover`, with the existing directory `source` bind-mounted as the volume.
    pub async fn serve_mover_from(&mut self, owner: &str, node: &str, source: &Path) -> String {
        let (pv, base) = self.bind_mover(owner, node, false).await;
        let mnt = base.join("volumes/kubernetes.io~csi").join(&pv).join("mount");
        self.backing.push(Backing::Bind(BindMount::new(source, &mnt)));
        self.run_mover(owner).await;
        pv
    }

    /// The PV controller's and the scheduler's part for the mover of `owner`: a PV bound to its
    /// claim, its pod bound to `node`. Returns the PV's name and the pod's directory under the
    /// node's pods directory.
    pub async fn bind_mover(&mut self, owner: &str, node: &str, block: bool) -> (String, PathBuf) {
        let name = format!("ferry-{owner}");
        let pods: Api<Pod> = api(&self.client, NS);
        let pod = self.until(&format!("mover pod {name}"), 60, || async { pods.get_opt(&name).await.unwrap() }).await;
        let pvcs: Api<PersistentVolumeClaim> = api(&self.client, NS);
        let pvc = self.until(&format!("claim {name}"), 30, || async { pvcs.get_opt(&name).await.unwrap() }).await;
        let pv = format!("pv-{owner}");
        create(
            &Api::<PersistentVolume>::all(self.client.clone()),
            json!({"metadata": {"name": pv}, "spec": {
                "capacity": {"storage": "64Mi"}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "fast",
                "volumeMode": if block { "Block" } else { "Filesystem" },
                "csi": {"driver": "fake.csi.ferry.dev", "volumeHandle": format!("h-{owner}")},
                "claimRef": {"namespace": NS, "name": name, "uid": pvc.metadata.uid}}}),
        )
        .await;
        pvcs.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"volumeName": pv}}))).await.unwrap();
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                             "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
        pods.create_subresource::<Value>(
            "binding",
            &name,
            &PostParams::default(),
            serde_json::to_vec(&binding).unwrap(),
        )
        .await
        .unwrap();
        let uid = pod.metadata.uid.clone().unwrap();
        (pv, self.tmp.path().join(node).join("pods").join(&uid))
    }

    /// kubelet's part: the mover pod of `owner` is Running.
    pub async fn run_mover(&self, owner: &str) {
        let pods: Api<Pod> = api(&self.client, NS);
        pods.patch_status(
            &format!("ferry-{owner}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap();
    }

    /// The PV controller's part at the end of a restore: once PV `pv` points at `ns/pvc`,
    /// bind the claim to it (its volume name, phase Bound).
    pub async fn bind_restored(&self, ns: &str, pvc: &str, pv: &str) {
        self.wait_handed(ns, pvc, pv).await;
        self.bind_claim(ns, pvc, pv).await;
    }

    /// Wait until PV `pv`'s claimRef points at `ns/pvc`.
    pub async fn wait_handed(&self, ns: &str, pvc: &str, pv: &str) {
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        self.until(&format!("PV {pv} handed to {ns}/{pvc}"), 120, || async {
            let p = pvs.get(pv).await.unwrap();
            let c = p.spec.and_then(|s| s.claim_ref)?;
            (c.namespace.as_deref() == Some(ns) && c.name.as_deref() == Some(pvc)).then_some(())
        })
        .await;
    }

    /// Bind claim `ns/pvc` to PV `pv`, as the PV controller does.
    pub async fn bind_claim(&self, ns: &str, pvc: &str, pv: &str) {
        let pvcs: Api<PersistentVolumeClaim> = api(&self.client, ns);
        pvcs.patch(pvc, &PatchParams::default(), &Patch::Merge(json!({"spec": {"volumeName": pv}}))).await.unwrap();
        pvcs.patch_status(pvc, &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Bound"}})))
            .await
            .unwrap();
    }

    /// The path where `serve_mover` laid out the volume `pv` of the pod `owner` on `node`.
    pub fn mount_of(&self, pv: &str) -> PathBuf {
        for b in &self.backing {
            if let Backing::Fs(fs) = b {
                if fs.mnt.parent().and_then(|p| p.file_name()).is_some_and(|n| n == pv) {
                    return fs.mnt.clone();
                }
            }
        }
        panic!("no mounted volume {pv}")
    }

    /// A `ferry` command on this world's repository (S3, the agent's password).
    pub fn ferry(&self, args: &[&str]) -> std::process::Output {
        let endpoint = std::env::var("FERRY_TEST_S3_ENDPOINT").unwrap();
        let bucket = std::env::var("FERRY_TEST_S3_BUCKET").unwrap_or("ferry-test".into());
        let pw = self.tmp.path().join("password");
        std::fs::write(&pw, PASSWORD).unwrap();
        Command::new(assert_cmd::cargo::cargo_bin("ferry"))
            .arg("--repo")
            .arg(format!("s3:{endpoint}/{bucket}/{}/ferry", self.prefix))
            .arg("--password-file")
            .arg(&pw)
            .arg("--no-cache")
            .args(args)
            .output()
            .unwrap()
    }

    /// The labels on a PV.
    pub async fn pv_labels(&self, pv: &str) -> BTreeMap<String, String> {
        let p: PersistentVolume = Api::all(self.client.clone()).get(pv).await.unwrap();
        p.metadata.labels.unwrap_or_default()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for a in &mut self.agents {
            if let Some(mut c) = a.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for k in &mut self.kubelets {
            let _ = k.kill();
            let _ = k.wait();
        }
        // Backing volumes unmount and detach on drop (after the agents are gone).
        self.backing.clear();
    }
}
