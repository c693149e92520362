//! The agent's runtime: two controllers (DataUploads and DataDownloads of the Velero
//! namespace, filtered to `spec.datamover: ferry` on the client side since the CRDs offer no
//! field selector), the mover pods they watch, and the jobs they run.
//!
//! Each reconcile observes the object, its mover pod and this process's jobs, asks
//! `machine::decide` what to do, and does it. Jobs run as tasks: a panic or error in one ends
//! its object `Failed` and the agent goes on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::Semaphore;

use ferry_engine::job::{CancelToken, Limits, MemoryBudget};
use repo_format::UploadBudget;

use crate::expose::{self, MOVER_LABEL, OWNER_LABEL, Owner, PodSettings};
use crate::machine::{self, Action, Local, Mover, Observed};
use crate::metrics::Metrics;
use crate::repos::{PasswordRef, Repos};
use crate::store::Store;
use crate::transfer::{self, Transfer};
use crate::types::{DataDownload, DataUpload, Phase};

/// The agent's settings (from its command line, environment and ConfigMap).
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node (`NODE_NAME` from the downward API).
    pub node: String,
    /// The Velero namespace (`velero`, or `openshift-adp` under OADP).
    pub namespace: String,
    /// The name in `spec.datamover` this agent serves.
    pub datamover: String,
    /// kubelet's pods directory as mounted in the agent (`/host_pods`).
    pub host_pods: PathBuf,
    /// The agent's state on a hostPath: the job store and the repository caches.
    pub state_dir: PathBuf,
    /// Jobs moving data at once on this node (Velero's `loadConcurrency`).
    pub concurrency: usize,
    /// Objects this node accepts beyond the running ones (Velero's `prepareQueueLength`).
    pub prepare_queue: usize,
    /// Chunk bytes in flight across all jobs.
    pub memory_budget: u64,
    /// Pack bytes uploading at once across all jobs.
    pub upload_budget: u64,
    /// Worker threads per job.
    pub threads: usize,
    pub password: PasswordRef,
    pub pod: PodSettings,
    /// How often a running job writes `status.progress`.
    pub progress_interval: Duration,
    /// How long a VolumeBackup/VolumeRestore entry may stay `Pending` before any agent fails it.
    pub pickup_timeout: Duration,
}

/// One job of this process.
#[derive(Debug)]
struct JobEntry {
    cancel: CancelToken,
    finished: bool,
}

/// Shared by every reconcile.
pub struct Agent {
    pub client: Client,
    pub s: Settings,
    store: Arc<Store>,
    pub(crate) repos: Repos,
    /// Freezes of this agent (their records live in the job store).
    pub freezer: Arc<crate::freeze::Freezer>,
    /// VolumeBackup work started by this process: `<backup uid>/<namespace>/<pod>`.
    /// The value: the cancel token of a job that still runs, `None` once it ended.
    pub(crate) own_jobs: Mutex<HashMap<String, Option<CancelToken>>>,
    jobs: Mutex<HashMap<String, JobEntry>>,
    /// Objects this agent accepted that have not ended or moved to another node: the accept
    /// limit counts them at once (the controllers' caches lag behind concurrent reconciles).
    claimed: Mutex<std::collections::HashSet<String>>,
    /// The cluster's Node names (refreshed every minute; None until read, or if not allowed).
    nodes: Mutex<Option<std::collections::HashSet<String>>>,
    slots: Arc<Semaphore>,
    budget: Arc<MemoryBudget>,
    uploads: Arc<UploadBudget>,
    pub metrics: Arc<Metrics>,
    events: kube::runtime::events::Recorder,
}

/// A reconcile error: logged, counted, retried with back-off.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Error(#[from] anyhow::Error);

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("settings", &self.s).finish_non_exhaustive()
    }
}

impl Agent {
    pub fn new(client: Client, s: Settings, metrics: Arc<Metrics>) -> Result<Arc<Agent>> {
        std::fs::create_dir_all(&s.state_dir)
            .with_context(|| format!("creating the state directory {}", s.state_dir.display()))?;
        let store = Arc::new(Store::open(&s.state_dir.join("jobs.db"))?);
        // Before anything else: thaw what an earlier run froze and could not thaw (a crash or
        // `kill -9` while frozen).
        let freezer = Arc::new(crate::freeze::Freezer::new(store.clone(), &[&s.state_dir, std::path::Path::new("/")]));
        freezer.recover().context("thawing the freezes recorded by an earlier run")?;
        let repos = Repos::new(client.clone(), &s.namespace, s.password.clone(), s.state_dir.clone(), &metrics);
        let reporter =
            kube::runtime::events::Reporter { controller: "ferry-agent".into(), instance: Some(s.node.clone()) };
        Ok(Arc::new(Agent {
            events: kube::runtime::events::Recorder::new(client.clone(), reporter),
            slots: Arc::new(Semaphore::new(s.concurrency.max(1))),
            budget: MemoryBudget::new(s.memory_budget),
            uploads: UploadBudget::new(s.upload_budget),
            client,
            store,
            freezer,
            own_jobs: Mutex::new(HashMap::new()),
            repos,
            jobs: Mutex::new(HashMap::new()),
            claimed: Mutex::new(std::collections::HashSet::new()),
            nodes: Mutex::new(None),
            metrics,
            s,
        }))
    }

    /// A slot of `--concurrency` for a job of Ferry's own resources.
    pub(crate) async fn own_slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.slots.clone().acquire_owned().await.expect("semaphore never closed")
    }

    /// A job's limits: its threads, and the chunk and upload budgets shared by every job.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            threads: self.s.threads,
            chunk_queue: self.s.threads * 2,
            memory: Some(self.budget.clone()),
            uploads: Some(self.uploads.clone()),
            parallel_chunking: None,
            index_keys: None,
        }
    }

    fn local(&self, uid: &str) -> Local {
        if let Some(j) = self.jobs.lock().expect("jobs lock").get(uid) {
            return if j.finished { Local::Finished } else { Local::Running };
        }
        match self.store.get(uid) {
            Ok(Some(r)) if !r.done => Local::Interrupted { attempts: r.attempts },
            _ => Local::None,
        }
    }

    /// Objects accepted by or moving on this node and not ended, from the controllers' caches.
    fn busy(&self, uploads: &[Arc<DataUpload>], downloads: &[Arc<DataDownload>]) -> usize {
        fn count<T: Transfer>(items: &[Arc<T>], a: &Agent) -> usize {
            items
                .iter()
                .filter(|o| o.datamover() == Some(a.s.datamover.as_str()) && !o.phase().is_terminal())
                .filter(|o| o.data_node().or(o.accepted_by()) == Some(a.s.node.as_str()))
                .count()
        }
        count(uploads, self) + count(downloads, self)
    }

    /// Patch `obj`'s status. `Ok(false)`: a 409, someone else changed it first. A new phase is
    /// also published as a Kubernetes Event on the object (reason: the phase).
    async fn patch<T: Transfer>(&self, obj: &T, patch: serde_json::Value) -> Result<bool> {
        let api: Api<T> = Api::namespaced(self.client.clone(), &self.s.namespace);
        match api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(patch.clone())).await {
            Ok(_) => {
                if let Some(phase) = patch["status"]["phase"].as_str() {
                    self.event(obj, phase, patch["status"]["message"].as_str()).await;
                }
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e).with_context(|| format!("patching {} {}", T::kind(&()), obj.name_any())),
        }
    }

    /// Publish the phase change of `obj` as an Event (a failure to do so is only logged).
    async fn event<T: Transfer>(&self, obj: &T, phase: &str, message: Option<&str>) {
        use kube::runtime::events::{Event, EventType};
        let failed = matches!(phase, "Failed" | "Canceled");
        let note = match message {
            Some(m) if !m.is_empty() => format!("{phase} on node {}: {m}", self.s.node),
            _ => format!("{phase} on node {}", self.s.node),
        };
        let ev = Event {
            type_: if failed { EventType::Warning } else { EventType::Normal },
            reason: phase.to_string(),
            note: Some(note.chars().take(1024).collect()),
            action: format!("{}{}", &T::DIRECTION[..1].to_uppercase(), &T::DIRECTION[1..]),
            secondary: None,
        };
        if let Err(e) = self.events.publish(&ev, &obj.object_ref(&())).await {
            tracing::debug!(object = %obj.name_any(), "publishing an event: {e}");
        }
    }

    /// End `obj` in `phase`: write the terminal status (with `fields` added) and remove what
    /// was exposed for it. A success is written first (a cleanup failure must not cost the
    /// snapshot ID; the sweep removes leftovers); a failure or cancel is written after the
    /// cleanup, as Velero's own mover does, unless it is exclusive. With `precondition` (a resourceVersion) the write is exclusive and
    /// `Ok(false)` means someone else changed the object first; transient API errors (an API
    /// server restarting) are retried for a few minutes, so a finished job is not lost to one.
    async fn end<T: Transfer>(
        &self,
        obj: &T,
        phase: Phase,
        message: &str,
        fields: Option<serde_json::Value>,
        precondition: Option<&str>,
    ) -> Result<bool> {
        let uid = obj.uid().unwrap_or_default();
        // `InProgress` has a start time; a stale copy of the object may not show it.
        let started = obj.started_at().is_some() || obj.phase() == Phase::InProgress;
        let mut patch = transfer::end_patch(phase, message, started);
        if let (Some(st), Some(serde_json::Value::Object(f))) = (patch["status"].as_object_mut(), fields) {
            st.extend(f);
        }
        if let Some(rv) = precondition {
            patch["metadata"] = serde_json::json!({"resourceVersion": rv});
        }
        let cleanup = || async {
            if let Err(e) = expose::cleanup(&self.client, &self.s.namespace, &uid).await {
                tracing::warn!(object = %obj.name_any(), "cleanup failed (the sweep retries it): {e:#}");
            }
        };
        // Removing what was exposed, and Velero's source snapshot for an upload that never
        // moved it (it exists only for this backup).
        let dispose = || async {
            cleanup().await;
            if phase != Phase::Completed {
                if let Some((ns, vs)) = obj.source_snapshot() {
                    if let Err(e) = expose::dispose_source(&self.client, ns, vs).await {
                        tracing::warn!(object = %obj.name_any(), "deleting the source snapshot {ns}/{vs}: {e:#}");
                    }
                }
            }
        };
        // A failure or cancel is written after the cleanup, unless the write is exclusive: then
        // only once it won (a stale view must not remove a mover another node is using).
        let clean_first = phase != Phase::Completed && precondition.is_none();
        if clean_first {
            dispose().await;
        }
        let mut delay = Duration::from_millis(500);
        let deadline = std::time::Instant::now() + END_RETRY;
        loop {
            match self.patch(obj, patch.clone()).await {
                Ok(true) => break,
                Ok(false) => return Ok(false),
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!(object = %obj.name_any(), "writing {}: {e:#}; retrying", phase.as_str());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
        self.metrics.ended(T::DIRECTION, phase);
        let _ = self.store.finish(&uid);
        self.claimed.lock().expect("claims lock").remove(&uid);
        tracing::info!(object = %obj.name_any(), kind = T::DIRECTION, phase = phase.as_str(), "{message}");
        if !clean_first {
            dispose().await;
        }
        Ok(true)
    }
}

/// An error worth retrying: the API server overloaded, failing or unreachable (not a refusal
/// or a missing object, and not the agent's own findings).
fn transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| match c.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(ae)) => ae.code >= 500 || ae.code == 429,
        Some(_) => true,
        None => false,
    })
}

/// How long a terminal status write is retried.
const END_RETRY: Duration = Duration::from_secs(180);

/// How often the cluster's Node names are read (an object whose node left is ended).
const NODES_EVERY: Duration = Duration::from_secs(60);

/// How often exposed objects whose owner ended or vanished are removed.
const SWEEP_EVERY: Duration = Duration::from_secs(120);

/// Remove exposed objects (labelled with an owner uid) whose DataUpload or DataDownload is gone
/// or ended: what a failed cleanup, a crash between the end and the cleanup, or a deleted
/// object left behind. Returns how many owners were swept.
pub async fn sweep(a: &Agent) -> Result<usize> {
    use kube::api::ListParams;
    let ns = &a.s.namespace;
    // Owners first, then the transfers: a transfer created between the two listings is seen
    // by the second (and young objects are left out of the first anyway).
    let owners = expose::owners(&a.client, ns).await?;
    let mut active = std::collections::HashSet::new();
    let lp = ListParams::default();
    for du in Api::<DataUpload>::namespaced(a.client.clone(), ns).list(&lp).await?.items {
        if !du.phase().is_terminal() {
            active.extend(du.uid());
        }
    }
    for dd in Api::<DataDownload>::namespaced(a.client.clone(), ns).list(&lp).await?.items {
        if !dd.phase().is_terminal() {
            active.extend(dd.uid());
        }
    }
    let mut swept = 0;
    for uid in owners.difference(&active) {
        let n = expose::cleanup(&a.client, ns, uid).await?;
        tracing::info!(owner = %uid, "swept {n} objects left by an ended or deleted transfer");
        swept += 1;
    }
    Ok(swept)
}

/// Requeue soon while something outside is awaited.
const POLL: Duration = Duration::from_secs(5);

async fn reconcile<T: Transfer + Runner>(obj: Arc<T>, a: Arc<Agent>, busy: usize) -> Result<Requeue, Error> {
    if obj.datamover() != Some(a.s.datamover.as_str()) {
        return Ok(Requeue::await_change());
    }
    let uid = obj.uid().unwrap_or_default();
    let phase = obj.phase();
    let owner = Owner::of(&*obj, T::DIRECTION)?;
    let (mover, pod) = match phase {
        Phase::Accepted | Phase::Prepared | Phase::InProgress => expose::mover(&a.client, &owner).await?,
        _ => (Mover::Absent, None),
    };
    let accepted_for = obj.accepted_at().map(|t| (k8s_openapi::chrono::Utc::now() - t.0).to_std().unwrap_or_default());
    let o = Observed {
        node: &a.s.node,
        ours: true,
        phase,
        cancel: obj.cancel(),
        accepted_by: obj.accepted_by(),
        data_node: obj.data_node(),
        accepted_for,
        prepare_timeout: obj.timeout(),
        mover,
        local: a.local(&uid),
        owner_gone: node_gone(&a, obj.data_node().or(obj.accepted_by())).await,
        can_accept: {
            let claimed = a.claimed.lock().expect("claims lock");
            busy.max(claimed.len()) < a.s.concurrency + a.s.prepare_queue || claimed.contains(&uid)
        },
    };
    // Claims end with the object, or when its data moves on another node.
    if phase.is_terminal() || obj.data_node().is_some_and(|n| n != a.s.node) {
        a.claimed.lock().expect("claims lock").remove(&uid);
    }
    let action = machine::decide(&o);
    tracing::debug!(object = %obj.name_any(), ?phase, ?action, "reconcile");
    let rv = obj.resource_version().unwrap_or_default();
    match action {
        Action::Skip => Ok(Requeue::await_change()),
        // A new object waiting for room on this node: look again soon (a job ending does not
        // wake it). Other waits are for watched changes, with a slower safety net.
        Action::Wait if phase == Phase::New => Ok(Requeue::requeue(Duration::from_secs(1))),
        Action::Wait => Ok(Requeue::requeue(POLL)),
        Action::Accept => {
            a.claimed.lock().expect("claims lock").insert(uid.clone());
            let won = a.patch(&*obj, transfer::accept_patch(&rv, &a.s.node)).await;
            if !matches!(won, Ok(true)) {
                a.claimed.lock().expect("claims lock").remove(&uid);
            }
            if won? {
                a.metrics.accepted(T::DIRECTION);
                tracing::info!(object = %obj.name_any(), kind = T::DIRECTION, "accepted");
            }
            Ok(Requeue::requeue(Duration::from_millis(200)))
        }
        Action::Expose => match T::expose(&obj, &a, &owner).await {
            Ok(_) => Ok(Requeue::requeue(POLL)),
            // The API server or the network failing: retried (within the preparation timeout).
            Err(e) if transient(&e) => Err(e.context("exposing the volume (retried)").into()),
            Err(e) => {
                a.end(&*obj, Phase::Failed, &format!("exposing the volume: {e:#}"), None, None).await?;
                Ok(Requeue::await_change())
            }
        },
        Action::Prepare => {
            a.patch(&*obj, transfer::prepare_patch(&rv, &a.s.node)).await?;
            Ok(Requeue::requeue(Duration::from_millis(200)))
        }
        Action::Start | Action::Resume { .. } => {
            let Some(pod) = pod else { return Ok(Requeue::requeue(POLL)) };
            if phase == Phase::Prepared
                && !a.patch(&*obj, transfer::start_patch(&rv, &a.s.node, T::DIRECTION == "upload")).await?
            {
                return Ok(Requeue::requeue(Duration::from_millis(200)));
            }
            start_job(obj.clone(), a.clone(), owner, pod.uid().unwrap_or_default());
            Ok(Requeue::requeue(POLL))
        }
        Action::StopJob => {
            if let Some(j) = a.jobs.lock().expect("jobs lock").get(&uid) {
                j.cancel.cancel();
            }
            if !phase.is_terminal() && phase != Phase::Canceling {
                let canceling =
                    serde_json::json!({"metadata": {"resourceVersion": rv}, "status": {"phase": "Canceling"}});
                a.patch(&*obj, canceling).await?;
            }
            Ok(Requeue::requeue(POLL))
        }
        Action::Cancel => {
            // Before anyone accepted it, another node may accept it right now: exclusive.
            let pre = (phase == Phase::New).then_some(rv.as_str());
            a.end(&*obj, Phase::Canceled, "canceled", None, pre).await?;
            Ok(Requeue::await_change())
        }
        Action::Fail(msg) => {
            a.end(&*obj, Phase::Failed, &msg, None, Some(&rv)).await?;
            Ok(Requeue::await_change())
        }
        Action::Forget => {
            let _ = expose::cleanup(&a.client, &a.s.namespace, &uid).await;
            let _ = a.store.forget(&uid);
            Ok(Requeue::await_change())
        }
    }
}

/// `node` is not a Node of the cluster: missing from the last listing, and a GET confirms it
/// (the listing may predate a node that just joined).
pub(crate) async fn node_gone(a: &Agent, node: Option<&str>) -> bool {
    let Some(node) = node.filter(|n| *n != a.s.node) else { return false };
    let listed_missing = a.nodes.lock().expect("nodes lock").as_ref().is_some_and(|known| !known.contains(node));
    if !listed_missing {
        return false;
    }
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(a.client.clone());
    match api.get_metadata_opt(node).await {
        Ok(None) => true,
        Ok(Some(_)) => {
            if let Some(known) = a.nodes.lock().expect("nodes lock").as_mut() {
                known.insert(node.to_string());
            }
            false
        }
        Err(_) => false,
    }
}

/// One reconcile of `obj`, as the controller runs it (with no other object busy on this node):
/// for tests that check the requests it makes.
pub async fn reconcile_once<T: Transfer + Runner>(obj: Arc<T>, a: Arc<Agent>) -> Result<Requeue, Error> {
    reconcile(obj, a, 0).await
}

/// What differs between uploads and downloads: how the volume is exposed and what the job does.
pub trait Runner: Transfer {
    /// `Ok(false)`: not yet possible (the snapshot is not ready); try again later.
    fn expose(obj: &Self, a: &Agent, owner: &Owner) -> impl std::future::Future<Output = Result<bool>> + Send;

    /// Move the data of the volume at `volume` (`<host pods>/<pod uid>/<pv>`); returns the
    /// status fields to set with `Completed`, and its message.
    fn run(
        obj: &Self,
        a: &Agent,
        owner: &Owner,
        volume: PathBuf,
        job: ferry_engine::Job,
    ) -> impl std::future::Future<Output = Result<(serde_json::Value, String)>> + Send;
}

fn start_job<T: Transfer + Runner>(obj: Arc<T>, a: Arc<Agent>, owner: Owner, pod_uid: String) {
    let uid = owner.uid.clone();
    let cancel = CancelToken::new();
    {
        let mut jobs = a.jobs.lock().expect("jobs lock");
        if jobs.contains_key(&uid) {
            return;
        }
        jobs.insert(uid.clone(), JobEntry { cancel: cancel.clone(), finished: false });
    }
    let task = {
        let (obj, a, cancel) = (obj.clone(), a.clone(), cancel.clone());
        async move {
            let _slot = tokio::select! {
                slot = a.slots.clone().acquire_owned() => slot.expect("semaphore never closed"),
                _ = cancel.cancelled() => anyhow::bail!("canceled while waiting for a free slot on the node"),
            };
            a.store.start(&owner.uid, T::kind(&()).as_ref(), &owner.namespace, &owner.name)?;
            let pv = expose::claim_volume(&a.client, &owner).await?;
            let volume = a.s.host_pods.join(&pod_uid).join(&pv);
            let job = ferry_engine::Job { cancel, limits: a.limits(), ..Default::default() };
            let counters = job.progress.clone();
            // Stops the progress reporter and counts the job out, also when the job panics.
            let _running = Running::start(&a, tokio::spawn(report_progress(obj.clone(), a.clone(), counters.clone())));
            let started = std::time::Instant::now();
            let out = T::run(&obj, &a, &owner, volume, job).await;
            a.metrics.duration(T::DIRECTION, started.elapsed());
            a.metrics.bytes(T::DIRECTION, counters.bytes_done.load(std::sync::atomic::Ordering::Relaxed));
            out
        }
    };
    tokio::spawn(async move {
        // A panic in the job is caught here, and ends the object Failed like an error.
        let result = match tokio::spawn(task).await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("the job panicked: {e}")),
        };
        if let Some(j) = a.jobs.lock().expect("jobs lock").get_mut(&uid) {
            j.finished = true;
        }
        // The object as it is now: someone else may have ended it meanwhile (then it is not
        // overwritten), and its resourceVersion makes the end exclusive.
        let api: Api<T> = Api::namespaced(a.client.clone(), &a.s.namespace);
        let now = match api.get_opt(&obj.name_any()).await {
            Ok(Some(o)) => Some(o),
            Ok(None) => None,
            Err(_) => Some((*obj).clone()),
        };
        let ended = match now {
            None => Ok(false),
            Some(o) if o.phase().is_terminal() => Ok(false),
            Some(o) => {
                let rv = o.resource_version();
                let rv = rv.as_deref();
                match result {
                    _ if cancel.is_cancelled() => a.end(&o, Phase::Canceled, "canceled", None, None).await,
                    Ok((fields, message)) => a.end(&o, Phase::Completed, &message, Some(fields), rv).await,
                    Err(e) => {
                        a.metrics.error(T::DIRECTION);
                        a.end(&o, Phase::Failed, &format!("{e:#}"), None, rv).await
                    }
                }
            }
        };
        if let Err(e) = ended {
            tracing::error!(object = %obj.name_any(), "writing the end of the job: {e:#}");
        }
        a.jobs.lock().expect("jobs lock").remove(&uid);
    });
}

/// A running job: counted in the gauge and reporting progress until dropped.
struct Running {
    metrics: Arc<Metrics>,
    progress: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(a: &Agent, progress: tokio::task::JoinHandle<()>) -> Running {
        a.metrics.running.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Running { metrics: a.metrics.clone(), progress }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.progress.abort();
        self.metrics.running.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Write `status.progress` every interval while the job runs.
async fn report_progress<T: Transfer>(obj: Arc<T>, a: Arc<Agent>, counters: Arc<ferry_engine::progress::Counters>) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut last = (u64::MAX, u64::MAX);
    loop {
        tokio::time::sleep(a.s.progress_interval).await;
        let now = (counters.bytes_done.load(Relaxed), counters.bytes_total.load(Relaxed));
        if now != last {
            last = now;
            if let Err(e) = a.patch(&*obj, transfer::progress_patch(now.0, now.1)).await {
                tracing::debug!("progress of {}: {e:#}", obj.name_any());
            }
        }
    }
}

/// Run both controllers until `shutdown` resolves.
pub async fn run(a: Arc<Agent>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
    let ns = a.s.namespace.clone();
    let uploads: Api<DataUpload> = Api::namespaced(a.client.clone(), &ns);
    let downloads: Api<DataDownload> = Api::namespaced(a.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), &ns);
    let pod_cfg = watcher::Config::default().labels(MOVER_LABEL);
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let shutdown_backups = shutdown.clone();
    let shutdown_own = shutdown.clone();

    let up = Controller::new(uploads, watcher::Config::default());
    let down = Controller::new(downloads, watcher::Config::default());
    let (up_store, down_store) = (up.store(), down.store());
    let (us, ds) = (up_store.clone(), down_store.clone());
    let pod_owner = |dir: &'static str| {
        move |p: Pod| {
            let labels = p.labels();
            (labels.get(MOVER_LABEL).map(String::as_str) == Some(dir))
                .then(|| labels.get(OWNER_LABEL).cloned())
                .flatten()
                .and_then(|_| p.owner_references().first().map(|o| o.name.clone()))
                .zip(p.namespace())
        }
    };
    let up_owner = pod_owner("upload");
    let down_owner = pod_owner("download");
    let a1 = a.clone();
    let uploads_done = up
        .watches(pods.clone(), pod_cfg.clone(), move |p| up_owner(p).map(|(n, ns)| ObjectRef::new(&n).within(&ns)))
        .graceful_shutdown_on(shutdown.clone())
        .run(
            move |o, a: Arc<Agent>| {
                let busy = a.busy(&us.state(), &ds.state());
                reconcile(o, a, busy)
            },
            error_policy,
            a1,
        )
        .for_each(|_| futures::future::ready(()));
    let (us, ds) = (up_store, down_store);
    let downloads_done = down
        .watches(pods, pod_cfg, move |p| down_owner(p).map(|(n, ns)| ObjectRef::new(&n).within(&ns)))
        .graceful_shutdown_on(shutdown)
        .run(
            move |o, a: Arc<Agent>| {
                let busy = a.busy(&us.state(), &ds.state());
                reconcile(o, a, busy)
            },
            error_policy,
            a.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    let backups_done =
        Controller::new(Api::<crate::types::Backup>::namespaced(a.client.clone(), &ns), watcher::Config::default())
            .graceful_shutdown_on(shutdown_backups)
            .run(crate::backups::reconcile, error_policy_backup, a.clone())
            .for_each(|_| futures::future::ready(()));
    // Ferry's own resources: one controller each, same shutdown and error policy.
    fn own<K, F, Fut>(
        a: &Arc<Agent>,
        shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
        reconcile: F,
    ) -> impl std::future::Future<Output = ()>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
        F: FnMut(Arc<K>, Arc<Agent>) -> Fut,
        Fut: std::future::Future<Output = Result<Requeue, Error>> + Send + 'static,
    {
        Controller::new(Api::<K>::namespaced(a.client.clone(), &a.s.namespace), watcher::Config::default())
            .graceful_shutdown_on(shutdown)
            .run(reconcile, error_policy_own, a.clone())
            .for_each(|_| futures::future::ready(()))
    }
    let own_backups = own(&a, shutdown_own.clone(), crate::own::backup::reconcile);
    let own_schedules = own(&a, shutdown_own.clone(), crate::own::schedules::reconcile);
    let own_restores = own(&a, shutdown_own, crate::own::restore::reconcile);
    let sweeper = {
        let a = a.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = sweep(&a).await {
                    tracing::warn!("sweep: {e:#}");
                }
                tokio::time::sleep(SWEEP_EVERY).await;
            }
        })
    };
    let node_lister = {
        let a = a.clone();
        tokio::spawn(async move {
            let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(a.client.clone());
            loop {
                match api.list_metadata(&Default::default()).await {
                    Ok(list) => {
                        let names = list.items.into_iter().filter_map(|n| n.metadata.name).collect();
                        *a.nodes.lock().expect("nodes lock") = Some(names);
                    }
                    Err(e) => tracing::debug!("listing nodes: {e}"),
                }
                tokio::time::sleep(NODES_EVERY).await;
            }
        })
    };
    a.metrics.set_ready(true);
    tokio::join!(uploads_done, downloads_done, backups_done, own_backups, own_schedules, own_restores);
    // Whatever is frozen is thawed before anything else stops.
    let thawed = a.freezer.thaw_all();
    if thawed > 0 {
        tracing::warn!("stopping: thawed {thawed} frozen filesystems");
    }
    sweeper.abort();
    node_lister.abort();
    a.metrics.set_ready(false);
    // Graceful stop: running jobs are cancelled, and their objects stay InProgress for the
    // next start of this agent to resume (the job store records them).
    let running = a.jobs.lock().expect("jobs lock").len();
    tracing::info!("stopping: {running} running jobs left to resume at the next start");
    Ok(())
}

fn error_policy_backup(b: Arc<crate::types::Backup>, e: &Error, a: Arc<Agent>) -> Requeue {
    a.metrics.error("backup-deletion");
    tracing::warn!(backup = %b.name_any(), "{e}");
    Requeue::requeue(Duration::from_secs(30))
}

fn error_policy_own<K: kube::Resource<DynamicType = ()>>(o: Arc<K>, e: &Error, a: Arc<Agent>) -> Requeue {
    a.metrics.error(K::kind(&()).as_ref());
    tracing::warn!(kind = %K::kind(&()), object = %o.name_any(), "{e}");
    Requeue::requeue(Duration::from_secs(10))
}

fn error_policy<T: Transfer>(obj: Arc<T>, e: &Error, a: Arc<Agent>) -> Requeue {
    a.metrics.error(T::DIRECTION);
    tracing::warn!(object = %obj.name_any(), "{e}");
    Requeue::requeue(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> anyhow::Error {
        let e = kube::core::ErrorResponse { status: "Failure".into(), message: "m".into(), reason: "r".into(), code };
        anyhow::Error::from(kube::Error::Api(e)).context("exposing")
    }

    #[test]
    fn only_server_side_and_transport_failures_are_retried() {
        for code in [500, 503, 429] {
            assert!(transient(&api_error(code)), "{code}");
        }
        for code in [400, 403, 404, 409, 422] {
            assert!(!transient(&api_error(code)), "{code}");
        }
        assert!(
            !transient(&anyhow::anyhow!("VolumeSnapshot app/s failed: boom")),
            "the agent's own findings are final"
        );
        let transport = anyhow::Error::from(kube::Error::LinesCodecMaxLineLengthExceeded).context("x");
        assert!(transient(&transport));
    }
}
