//! The exact requests one reconcile sends to the API server ("level 2" of the test plan in
//! DATAMOVER.md §5.3): a kube-rs `Client` on a mocked service (tower-test), a verifier that
//! checks each request's method, path and query, content type and JSON body, and answers it.
//!
//! Two facts of Velero's protocol are checked here, because the pure decision function
//! (`machine`) cannot see them and a wrong shape only fails against a real cluster:
//! - Velero's DataUpload/DataDownload CRDs have **no status subresource**: status is written
//!   with a merge PATCH of `status` on the main resource (a write to `/status` is a 404, and
//!   a PUT of a whole object would drop fields a newer Velero added).
//! - The accept is **exclusive**: the patch carries `metadata.resourceVersion` as a
//!   precondition, so when several node agents race for a new object the API server answers
//!   409 to all but one, and the losers go away quietly.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_daemon::agent::reconcile_once;
use ferry_daemon::expose::PodSettings;
use ferry_daemon::metrics::Metrics;
use ferry_daemon::repos::PasswordRef;
use ferry_daemon::types::{DataDownload, DataUpload};
use ferry_daemon::{Agent, Settings};
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::chrono::{DateTime, Utc};
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

type ApiServer = Handle<Request<Body>, Response<Body>>;

const NS: &str = "velero";
const NODE: &str = "n1";
const MERGE_PATCH: &str = "application/merge-patch+json";

// ---------------------------------------------------------------------------------------
// The mocked API server.

/// An agent of node `n1` on a mocked API server, its metrics, and its state directory.
fn agent() -> (Arc<Agent>, ApiServer, Arc<Metrics>, tempfile::TempDir) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, NS);
    let dir = tempfile::tempdir().expect("temporary directory");
    let settings = Settings {
        node: NODE.into(),
        namespace: NS.into(),
        datamover: "ferry".into(),
        host_pods: dir.path().join("pods"),
        state_dir: dir.path().join("state"),
        concurrency: 1,
        prepare_queue: 1,
        memory_budget: 64 << 20,
        upload_budget: 64 << 20,
        threads: 1,
        password: PasswordRef { secret: "ferry-repository".into(), key: "password".into() },
        pod: PodSettings { image: "ferry:test".into(), command: vec!["ferry".into(), "hold".into()], read_only: true },
        progress_interval: Duration::from_secs(10),
        pickup_timeout: Duration::from_secs(600),
    };
    let metrics = Arc::new(Metrics::default());
    let agent = Agent::new(client, settings, metrics.clone()).expect("the agent starts");
    (agent, handle, metrics, dir)
}

/// Run `reconcile` against `verifier` (which plays the API server on `server`), and return
/// what the reconcile returned. A failed assertion in the verifier fails the test with its
/// own message (the reconcile then sees a closed connection).
async fn run<F, V>(server: ApiServer, verifier: impl FnOnce(ApiServer) -> V, reconcile: F) -> F::Output
where
    F: Future,
    V: Future<Output = ()> + Send + 'static,
{
    let verifier = tokio::spawn(verifier(server));
    // The reconcile owns the agent, hence the client: when it returns, the mocked service is
    // dropped and the verifier's wait for a further request ends at once.
    let out = reconcile.await;
    if let Err(e) = verifier.await {
        std::panic::resume_unwind(e.into_panic());
    }
    out
}

/// The next request, which must be `method uri`: its headers and its JSON body (`Null` when
/// empty), and the way to answer it.
async fn expect(
    server: &mut ApiServer,
    method: Method,
    uri: &str,
) -> (http::HeaderMap, Value, SendResponse<Response<Body>>) {
    let next = tokio::time::timeout(Duration::from_secs(10), server.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request within 10 s; expected {method} {uri}"));
    let (req, answer) = next.unwrap_or_else(|| panic!("the agent was done; it never sent {method} {uri}"));
    let (parts, body) = req.into_parts();
    assert_eq!((&parts.method, normalized(&parts.uri).as_str()), (&method, uri), "the request");
    let bytes = body.collect_bytes().await.expect("request body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{method} {uri}: body is not JSON ({e})"))
    };
    (parts.headers, body, answer)
}

/// The request's path and query as sent, without the empty query parameter kube-rs leaves
/// before the first one of a list (`pods?&labelSelector=…`).
fn normalized(uri: &http::Uri) -> String {
    uri.to_string().replacen("?&", "?", 1)
}

/// The next request must be a merge patch of `uri` (on the main resource); its body.
async fn expect_merge_patch(server: &mut ApiServer, uri: &str) -> (Value, SendResponse<Response<Body>>) {
    let (headers, body, answer) = expect(server, Method::PATCH, uri).await;
    assert_eq!(
        headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some(MERGE_PATCH),
        "PATCH {uri}: content type"
    );
    (body, answer)
}

/// The next request must publish the Event of a phase change of `name`: reason = the phase,
/// from this agent's node (events.k8s.io/v1, in the object's namespace).
async fn expect_event(server: &mut ApiServer, name: &str, phase: &str, kind: &str) {
    let (_, body, to) = expect(server, Method::POST, "/apis/events.k8s.io/v1/namespaces/velero/events?").await;
    assert_eq!(body["reason"], phase, "event reason: {body}");
    assert_eq!(body["regarding"]["name"], name, "event subject: {body}");
    assert_eq!(body["regarding"]["kind"], kind, "event subject: {body}");
    assert_eq!(body["reportingController"], "ferry-agent", "{body}");
    assert_eq!(body["reportingInstance"], NODE, "{body}");
    let warning = matches!(phase, "Failed" | "Canceled");
    assert_eq!(body["type"], if warning { "Warning" } else { "Normal" }, "{body}");
    answer(to, StatusCode::CREATED, &body);
}

/// The agent sends nothing more (it is done, or it waits 200 ms without a request).
async fn expect_no_more(server: &mut ApiServer) {
    if let Ok(Some((req, _))) = tokio::time::timeout(Duration::from_millis(200), server.next_request()).await {
        panic!("unexpected further request: {} {}", req.method(), req.uri());
    }
}

fn answer(to: SendResponse<Response<Body>>, status: StatusCode, body: &Value) {
    let resp = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("response JSON")))
        .expect("response");
    to.send_response(resp);
}

/// The API server's answer to a stale resourceVersion.
fn conflict(to: SendResponse<Response<Body>>, resource: &str, name: &str) {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("Operation cannot be fulfilled on {resource}.velero.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
        "reason": "Conflict",
        "details": {"name": name, "group": "velero.io", "kind": resource},
        "code": 409,
    });
    answer(to, StatusCode::CONFLICT, &status);
}

/// `patch` applied to `obj` as the API server does it (RFC 7386), with a new resourceVersion.
fn merged(obj: &Value, patch: &Value, resource_version: &str) -> Value {
    fn merge(target: &mut Value, patch: &Value) {
        let Some(fields) = patch.as_object() else {
            *target = patch.clone();
            return;
        };
        if !target.is_object() {
            *target = json!({});
        }
        let t = target.as_object_mut().expect("an object");
        for (k, v) in fields {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
    let mut out = obj.clone();
    merge(&mut out, patch);
    out["metadata"]["resourceVersion"] = json!(resource_version);
    out
}

fn empty_list(api_version: &str, kind: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "100"}, "items": []})
}

// ---------------------------------------------------------------------------------------
// Objects as Velero writes them.

const DATAUPLOADS: &str = "/apis/velero.io/v2alpha1/namespaces/velero/datauploads";
const DATADOWNLOADS: &str = "/apis/velero.io/v2alpha1/namespaces/velero/datadownloads";

/// A DataUpload as Velero's CSI plugin creates it (no status), with `spec.datamover` =
/// `datamover` when given.
fn data_upload(name: &str, uid: &str, resource_version: &str, datamover: Option<&str>) -> Value {
    let mut du = json!({
        "apiVersion": "velero.io/v2alpha1", "kind": "DataUpload",
        "metadata": {
            "name": name, "generateName": "backup-1-", "namespace": NS, "uid": uid,
            "resourceVersion": resource_version,
            "labels": {"velero.io/backup-name": "backup-1", "velero.io/backup-uid": "b-uid"},
        },
        "spec": {
            "snapshotType": "CSI",
            "csiSnapshot": {"volumeSnapshot": "velero-data-abcde", "storageClass": "csi-sc", "snapshotClass": "csi-vsc"},
            "sourcePVC": "data", "backupStorageLocation": "default", "sourceNamespace": "app",
            "operationTimeout": "10m0s",
        },
    });
    if let Some(d) = datamover {
        du["spec"]["datamover"] = json!(d);
    }
    du
}

fn data_download(name: &str, uid: &str, resource_version: &str) -> Value {
    json!({
        "apiVersion": "velero.io/v2alpha1", "kind": "DataDownload",
        "metadata": {
            "name": name, "generateName": "restore-1-", "namespace": NS, "uid": uid,
            "resourceVersion": resource_version,
            "labels": {"velero.io/restore-name": "restore-1", "velero.io/restore-uid": "r-uid"},
        },
        "spec": {
            "targetVolume": {"pvc": "data", "pv": "", "namespace": "app"},
            "backupStorageLocation": "default", "datamover": "ferry", "snapshotID": "ferry:abc",
            "sourceNamespace": "app", "operationTimeout": "10m0s", "nodeOS": "linux",
        },
    })
}

fn upload(v: &Value) -> Arc<DataUpload> {
    Arc::new(serde_json::from_value(v.clone()).expect("a DataUpload"))
}

/// An RFC 3339 timestamp of the last minute.
fn assert_recent_time(v: &Value, what: &str) {
    let s = v.as_str().unwrap_or_else(|| panic!("{what}: not a string: {v}"));
    let t = DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{what}: {s:?} is not RFC 3339 ({e})"));
    let age = Utc::now().signed_duration_since(t);
    assert!(age.num_seconds().abs() < 60, "{what}: {s} is not now");
}

/// The accept patch: exactly the resourceVersion precondition and the three status fields.
fn assert_accept_patch(body: &Value, resource_version: &str) {
    assert_recent_time(&body["status"]["acceptedTimestamp"], "status.acceptedTimestamp");
    let mut b = body.clone();
    b["status"]["acceptedTimestamp"] = json!("<now>");
    assert_eq!(
        b,
        json!({
            "metadata": {"resourceVersion": resource_version},
            "status": {"phase": "Accepted", "acceptedByNode": NODE, "acceptedTimestamp": "<now>"},
        }),
        "the accept patch"
    );
}

fn count(metrics: &Metrics, line: &str) -> bool {
    metrics.render().lines().any(|l| l == line)
}

// ---------------------------------------------------------------------------------------
// The cases.

/// A new DataUpload of ours: one exclusive merge patch to Accepted, on the main resource.
#[tokio::test]
async fn a_new_upload_is_accepted_with_one_exclusive_merge_patch() {
    let (agent, server, metrics, _dir) = agent();
    let du = data_upload("backup-1-abcde", "uid-1", "7", Some("ferry"));
    let obj = du.clone();
    let out = run(
        server,
        |mut s| async move {
            let (body, to) = expect_merge_patch(&mut s, &format!("{DATAUPLOADS}/backup-1-abcde?")).await;
            assert_accept_patch(&body, "7");
            answer(to, StatusCode::OK, &merged(&obj, &body, "8"));
            expect_event(&mut s, "backup-1-abcde", "Accepted", "DataUpload").await;
            expect_no_more(&mut s).await;
        },
        reconcile_once(upload(&du), agent),
    )
    .await;
    assert_eq!(out.expect("the reconcile succeeds"), Action::requeue(Duration::from_millis(200)));
    assert!(count(&metrics, "ferry_agent_accepted_total{direction=\"upload\"} 1"), "{}", metrics.render());
}

/// Another node accepted first: the 409 is not an error, and nothing else is sent.
#[tokio::test]
async fn losing_the_accept_race_is_quiet_and_final() {
    let (agent, server, metrics, _dir) = agent();
    let du = data_upload("backup-1-abcde", "uid-2", "7", Some("ferry"));
    let out = run(
        server,
        |mut s| async move {
            let (body, to) = expect_merge_patch(&mut s, &format!("{DATAUPLOADS}/backup-1-abcde?")).await;
            assert_accept_patch(&body, "7");
            conflict(to, "datauploads", "backup-1-abcde");
            expect_no_more(&mut s).await;
        },
        reconcile_once(upload(&du), agent),
    )
    .await;
    out.expect("a 409 on the accept is another node winning, not an error");
    assert!(!metrics.render().contains("ferry_agent_accepted_total"), "{}", metrics.render());
}

/// Objects of the built-in mover (`velero`, empty or absent) or of another mover: no request.
#[tokio::test]
async fn another_movers_upload_gets_no_request_at_all() {
    for datamover in [Some("velero"), Some(""), None, Some("kubevirt")] {
        let (agent, server, _metrics, _dir) = agent();
        let mut du = data_upload("backup-1-abcde", "uid-3", "7", datamover);
        du["spec"]["cancel"] = json!(datamover == Some("velero"));
        let out =
            run(server, |mut s| async move { expect_no_more(&mut s).await }, reconcile_once(upload(&du), agent)).await;
        assert_eq!(out.expect("the reconcile succeeds"), Action::await_change(), "datamover {datamover:?}");
    }
}

/// A cancel before anyone accepted: the exposed objects are looked for (by the owner label,
/// in the order `expose::cleanup` lists them), then one merge patch ends it Canceled.
#[tokio::test]
async fn a_new_upload_canceled_is_cleaned_up_and_ends_canceled() {
    let (agent, server, metrics, _dir) = agent();
    let mut du = data_upload("backup-1-abcde", "uid-4", "7", Some("ferry"));
    du["spec"]["cancel"] = json!(true);
    let obj = du.clone();
    let out = run(
        server,
        |mut s| async move {
            // Nobody accepted it yet, so the end is exclusive (another node may be accepting it
            // right now); an exclusive end is written first (a stale view must not remove a
            // mover another node uses), then what was exposed is removed.
            let (body, to) = expect_merge_patch(&mut s, &format!("{DATAUPLOADS}/backup-1-abcde?")).await;
            let st = &body["status"];
            assert_recent_time(&st["completionTimestamp"], "status.completionTimestamp");
            assert_recent_time(&st["startTimestamp"], "status.startTimestamp (never started)");
            let mut b = body.clone();
            b["status"]["completionTimestamp"] = json!("<now>");
            b["status"]["startTimestamp"] = json!("<now>");
            assert_eq!(
                b,
                json!({"metadata": {"resourceVersion": "7"},
                       "status": {"phase": "Canceled", "message": "canceled",
                                  "completionTimestamp": "<now>", "startTimestamp": "<now>"}}),
                "the end patch"
            );
            answer(to, StatusCode::OK, &merged(&obj, &body, "8"));
            expect_event(&mut s, "backup-1-abcde", "Canceled", "DataUpload").await;
            // Exposed objects are found by owner and by this agent's Velero namespace.
            let selector = "labelSelector=ferry.dev%2Fowner-uid%3Duid-4%2Cferry.dev%2Fnamespace%3Dvelero";
            for (path, api_version, kind) in [
                ("/api/v1/namespaces/velero/pods", "v1", "PodList"),
                ("/api/v1/namespaces/velero/persistentvolumeclaims", "v1", "PersistentVolumeClaimList"),
                (
                    "/apis/snapshot.storage.k8s.io/v1/namespaces/velero/volumesnapshots",
                    "snapshot.storage.k8s.io/v1",
                    "VolumeSnapshotList",
                ),
                (
                    "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents",
                    "snapshot.storage.k8s.io/v1",
                    "VolumeSnapshotContentList",
                ),
            ] {
                let (_, body, to) = expect(&mut s, Method::GET, &format!("{path}?{selector}")).await;
                assert_eq!(body, Value::Null, "a list has no body");
                answer(to, StatusCode::OK, &empty_list(api_version, kind));
            }
            // Nothing was exposed, so Velero's source snapshot is disposed of (already gone here).
            let (_, _, to) = expect(
                &mut s,
                Method::DELETE,
                "/apis/snapshot.storage.k8s.io/v1/namespaces/app/volumesnapshots/velero-data-abcde?",
            )
            .await;
            answer(
                to,
                StatusCode::NOT_FOUND,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                        "message": "volumesnapshots \"velero-data-abcde\" not found"}),
            );
            expect_no_more(&mut s).await;
        },
        reconcile_once(upload(&du), agent),
    )
    .await;
    assert_eq!(out.expect("the reconcile succeeds"), Action::await_change());
    let ended = "ferry_agent_ended_total{direction=\"upload\",phase=\"Canceled\"} 1";
    assert!(count(&metrics, ended), "{}", metrics.render());
}

/// A new DataDownload: the same exclusive accept, on datadownloads, with no `nodeOS` (a
/// DataDownload has no such status field; the upload's start patch is the one that sets it).
#[tokio::test]
async fn a_new_download_is_accepted_on_datadownloads_without_node_os() {
    fn has_node_os(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.iter().any(|(k, v)| k == "nodeOS" || has_node_os(v)),
            Value::Array(a) => a.iter().any(has_node_os),
            _ => false,
        }
    }
    let (agent, server, metrics, _dir) = agent();
    let dd = data_download("restore-1-fghij", "uid-5", "31");
    let obj = dd.clone();
    let dd: Arc<DataDownload> = Arc::new(serde_json::from_value(dd).expect("a DataDownload"));
    let out = run(
        server,
        |mut s| async move {
            let (body, to) = expect_merge_patch(&mut s, &format!("{DATADOWNLOADS}/restore-1-fghij?")).await;
            assert!(!has_node_os(&body), "nodeOS in a DataDownload patch: {body}");
            assert_accept_patch(&body, "31");
            answer(to, StatusCode::OK, &merged(&obj, &body, "32"));
            expect_event(&mut s, "restore-1-fghij", "Accepted", "DataDownload").await;
            expect_no_more(&mut s).await;
        },
        reconcile_once(dd, agent),
    )
    .await;
    assert_eq!(out.expect("the reconcile succeeds"), Action::requeue(Duration::from_millis(200)));
    assert!(count(&metrics, "ferry_agent_accepted_total{direction=\"download\"} 1"), "{}", metrics.render());
}

/// Accepted by this node, its mover pod running here: the pod is read, then one exclusive
/// merge patch marks it Prepared on this node.
#[tokio::test]
async fn an_accepted_upload_whose_mover_runs_here_is_prepared_here() {
    let (agent, server, _metrics, _dir) = agent();
    let mut du = data_upload("backup-1-abcde", "uid-6", "12", Some("ferry"));
    du["status"] = json!({"phase": "Accepted", "acceptedByNode": NODE, "acceptedTimestamp": Utc::now().to_rfc3339()});
    let obj = du.clone();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "ferry-backup-1-abcde", "namespace": NS, "uid": "pod-uid-6", "resourceVersion": "40",
            "labels": {"ferry.dev/owner-uid": "uid-6", "ferry.dev/mover": "upload"},
            "ownerReferences": [{"apiVersion": "velero.io/v2alpha1", "kind": "DataUpload",
                                 "name": "backup-1-abcde", "uid": "uid-6", "controller": true}],
        },
        "spec": {"nodeName": NODE, "containers": [{"name": "mover", "image": "ferry:test"}]},
        "status": {"phase": "Running"},
    });
    let out = run(
        server,
        |mut s| async move {
            let (_, body, to) =
                expect(&mut s, Method::GET, "/api/v1/namespaces/velero/pods/ferry-backup-1-abcde").await;
            assert_eq!(body, Value::Null, "a get has no body");
            answer(to, StatusCode::OK, &pod);
            let (body, to) = expect_merge_patch(&mut s, &format!("{DATAUPLOADS}/backup-1-abcde?")).await;
            assert_eq!(
                body,
                json!({"metadata": {"resourceVersion": "12"}, "status": {"phase": "Prepared", "node": NODE}}),
                "the prepare patch"
            );
            answer(to, StatusCode::OK, &merged(&obj, &body, "13"));
            expect_event(&mut s, "backup-1-abcde", "Prepared", "DataUpload").await;
            expect_no_more(&mut s).await;
        },
        reconcile_once(upload(&du), agent),
    )
    .await;
    assert_eq!(out.expect("the reconcile succeeds"), Action::requeue(Duration::from_millis(200)));
}
