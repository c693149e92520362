//! Velero's backup hooks, read from pod annotations as Velero writes them, and run in the pod's
//! container through the Kubernetes exec API (no shell: the command is an argv):
//!
//! - `pre.hook.backup.velero.io/{container,command,on-error,timeout}` before the volume's
//!   snapshot, `post.hook.backup.velero.io/…` after it (after the thaw);
//! - `container`: default the pod's first container; one the pod does not have is an error;
//! - `command`: a JSON array of strings (`["/sbin/fsfreeze","--freeze","/data"]`), or, as Velero
//!   accepts it, a single word without arguments; anything else is an error;
//! - `on-error`: `Fail` (default: the volume fails and is not backed up) or `Continue` (a
//!   warning); `timeout`: a Go duration, default 30s, after which the command is abandoned (the
//!   exec stream is closed, which makes kubelet kill it) and counts as failed;
//! - a KubeVirt VM pod (`kubevirt.io: virt-launcher`) without hook annotations gets KubeVirt's
//!   own: `virt-freezer --freeze`/`--unfreeze` in `compute` (the guest agent quiesces the
//!   guest), unless `kubevirt.io/skip-backup-hooks` is set.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, AttachParams};

/// Which hook: `pre`/`post` of a backup, `post` of a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Pre,
    Post,
    PostRestore,
}

impl When {
    fn prefix(self) -> &'static str {
        match self {
            When::Pre => "pre.hook.backup.velero.io",
            When::Post => "post.hook.backup.velero.io",
            When::PostRestore => "post.hook.restore.velero.io",
        }
    }

    /// The timeout annotation: a restore hook's is `exec-timeout`.
    fn timeout_key(self) -> &'static str {
        match self {
            When::PostRestore => "exec-timeout",
            _ => "timeout",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Fail,
    Continue,
}

/// One hook of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub container: String,
    pub command: Vec<String>,
    pub on_error: OnError,
    pub timeout: Duration,
}

/// The default hook timeout (Velero's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Velero's command syntax: a JSON array of strings, or one word.
pub fn parse_command(key: &str, s: &str) -> Result<Vec<String>> {
    let t = s.trim();
    if t.starts_with('[') {
        let v: Vec<String> =
            serde_json::from_str(t).map_err(|e| anyhow!("{key}: not a JSON array of strings ({e}): {s:?}"))?;
        if v.is_empty() || v[0].is_empty() {
            bail!("{key}: the command is empty");
        }
        return Ok(v);
    }
    if t.is_empty() || t.contains(char::is_whitespace) {
        bail!("{key}: expected a JSON array such as [\"/bin/sync\"] (no shell runs it), got {s:?}");
    }
    Ok(vec![t.to_string()])
}

/// The `when` hook of `pod`, if its annotations ask for one; an error names the annotation.
pub fn hook(pod: &Pod, when: When) -> Result<Option<Hook>> {
    let ann: &BTreeMap<String, String> = pod.annotations();
    let p = when.prefix();
    let key = |k: &str| format!("{p}/{k}");
    let Some(cmd) = ann.get(&key("command")) else {
        return Ok(virt_freezer(pod, when));
    };
    let command = parse_command(&key("command"), cmd)?;
    let containers: Vec<&str> = pod.spec.iter().flat_map(|s| s.containers.iter()).map(|c| c.name.as_str()).collect();
    let container = match ann.get(&key("container")) {
        Some(c) if !containers.contains(&c.as_str()) => {
            bail!("{}: pod {} has no container {c:?} (it has {containers:?})", key("container"), pod.name_any())
        }
        Some(c) => c.clone(),
        None => containers
            .first()
            .map(|c| c.to_string())
            .ok_or_else(|| anyhow!("pod {} has no containers", pod.name_any()))?,
    };
    let on_error = match ann.get(&key("on-error")).map(String::as_str) {
        None | Some("Fail") => OnError::Fail,
        Some("Continue") => OnError::Continue,
        Some(o) => bail!("{}: {o:?} is neither Fail nor Continue", key("on-error")),
    };
    let timeout = duration(ann, &key(when.timeout_key()))?.unwrap_or(DEFAULT_TIMEOUT);
    Ok(Some(Hook { container, command, on_error, timeout }))
}

/// The label of KubeVirt's VM pods, and the one naming their VMI.
pub const VIRT_LAUNCHER: (&str, &str) = ("kubevirt.io", "virt-launcher");
pub const VMI_LABEL: &str = "kubevirt.io/domain";
/// On a VM pod (annotation or label): no freeze hooks.
pub const SKIP_VM_HOOKS: &str = "kubevirt.io/skip-backup-hooks";

/// A KubeVirt VM pod's default backup hooks, as KubeVirt's Velero plugin sets them: the guest
/// agent freezes the guest's filesystems (`virt-freezer --freeze`) before the snapshot and thaws
/// them after, in the `compute` container; none with `kubevirt.io/skip-backup-hooks`.
fn virt_freezer(pod: &Pod, when: When) -> Option<Hook> {
    let labels = pod.labels();
    if labels.get(VIRT_LAUNCHER.0).map(String::as_str) != Some(VIRT_LAUNCHER.1)
        || pod.annotations().contains_key(SKIP_VM_HOOKS)
        || labels.contains_key(SKIP_VM_HOOKS)
    {
        return None;
    }
    let op = match when {
        When::Pre => "--freeze",
        When::Post => "--unfreeze",
        When::PostRestore => return None,
    };
    let vmi = labels.get(VMI_LABEL)?;
    let ns = pod.namespace().unwrap_or_default();
    let command = ["/usr/bin/virt-freezer", op, "--name", vmi, "--namespace", &ns].map(String::from).to_vec();
    Some(Hook { container: "compute".into(), command, on_error: OnError::Fail, timeout: Duration::from_secs(60) })
}

/// The longest a hook may run, or wait for its container: a pod's annotations must not hold the
/// node's data-movement slot for ever.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// A duration annotation (a Go duration, not zero, at most `MAX_TIMEOUT`).
fn duration(ann: &BTreeMap<String, String>, key: &str) -> Result<Option<Duration>> {
    ann.get(key).map(|t| super::duration_field(key, t, MAX_TIMEOUT).map_err(|e| anyhow!("{e}"))).transpose()
}

/// A command as shown in a message: at most 200 characters (a pod's annotation can be huge).
fn shown(command: &[String]) -> String {
    let s = format!("{command:?}");
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// Everything `r` yields, keeping only the last `cap` bytes (a hook can print without end).
async fn read_tail<R: tokio::io::AsyncRead + Unpin>(mut r: R, cap: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut tail = std::collections::VecDeque::with_capacity(cap);
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let keep = &buf[..n][n.saturating_sub(cap)..];
        let over = (tail.len() + keep.len()).saturating_sub(cap);
        tail.drain(..over);
        tail.extend(keep);
    }
    tail.into()
}

/// A restore's post hook and how it waits for its container: `wait-for-ready` (`"true"`: until
/// the container is ready, else until it runs) within `wait-timeout` (default 10 minutes, so a
/// container that never starts cannot hold the agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreHook {
    pub hook: Hook,
    pub wait_for_ready: bool,
    pub wait_timeout: Duration,
}

/// The default wait of a restore hook for its container.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(600);

/// The post-restore hook of `pod`, if its annotations ask for one.
pub fn restore_hook(pod: &Pod) -> Result<Option<RestoreHook>> {
    let Some(hook) = hook(pod, When::PostRestore)? else { return Ok(None) };
    let p = When::PostRestore.prefix();
    let ann = pod.annotations();
    let wait_for_ready = match ann.get(&format!("{p}/wait-for-ready")).map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(o) => bail!("{p}/wait-for-ready: {o:?} is neither true nor false"),
    };
    let wait_timeout = duration(ann, &format!("{p}/wait-timeout"))?.unwrap_or(DEFAULT_WAIT);
    Ok(Some(RestoreHook { hook, wait_for_ready, wait_timeout }))
}

/// Wait until `h`'s container in `pod` runs (or is ready); false at the wait timeout.
pub async fn wait_container(pods: &Api<Pod>, pod: &str, h: &RestoreHook) -> Result<bool> {
    let end = tokio::time::Instant::now() + h.wait_timeout;
    loop {
        let p = pods.get(pod).await?;
        let ok = p
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .find(|c| c.name == h.hook.container)
            .is_some_and(|c| {
                if h.wait_for_ready { c.ready } else { c.state.as_ref().is_some_and(|s| s.running.is_some()) }
            });
        if ok {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= end {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a hook did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub ok: bool,
    /// For the status: what ran, and how it ended (exit code, timeout, output tail).
    pub note: String,
}

/// Bytes of each output stream of a hook kept (its end).
const OUTPUT_TAIL: usize = 4096;

/// Keep the end of a command's output for a message.
fn tail(s: &[u8]) -> String {
    let s = String::from_utf8_lossy(s);
    let t = s.trim();
    let start = t.char_indices().rev().nth(200).map_or(0, |(i, _)| i);
    t[start..].to_string()
}

/// Run `h` in `namespace/pod` and wait for it (at most its timeout). At the timeout the exec
/// stream is aborted (dropping it would not close the connection), which makes kubelet kill the
/// command.
pub async fn run(pods: &Api<Pod>, pod: &str, h: &Hook) -> Ran {
    let what = format!("{} in {pod}/{}", shown(&h.command), h.container);
    let params = AttachParams::default().container(h.container.clone()).stdin(false).stdout(true).stderr(true);
    let deadline = tokio::time::Instant::now() + h.timeout;
    let timed_out = || Ran { ok: false, note: format!("{what}: timed out after {:?}", h.timeout) };
    let mut p = match tokio::time::timeout_at(deadline, pods.exec(pod, h.command.clone(), &params)).await {
        Err(_) => return timed_out(),
        Ok(Err(e)) => return Ran { ok: false, note: format!("{what}: {e}") },
        Ok(Ok(p)) => p,
    };
    let status = p.take_status();
    let (stdout, stderr) = (p.stdout(), p.stderr());
    let wait = async {
        let read_out = async {
            match stdout {
                Some(o) => read_tail(o, OUTPUT_TAIL).await,
                None => Vec::new(),
            }
        };
        let read_err = async {
            match stderr {
                Some(e) => read_tail(e, OUTPUT_TAIL).await,
                None => Vec::new(),
            }
        };
        let (out, err) = tokio::join!(read_out, read_err);
        let status = match status {
            Some(s) => s.await,
            None => None,
        };
        (status, out, err)
    };
    let (status, out, err) = match tokio::time::timeout_at(deadline, wait).await {
        Err(_) => {
            p.abort();
            return timed_out();
        }
        Ok(s) => s,
    };
    let _ = p.join().await;
    let output = [tail(&out), tail(&err)].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" / ");
    match status {
        Some(s) if s.status.as_deref() == Some("Success") => Ran { ok: true, note: format!("{what}: succeeded") },
        Some(s) => {
            let code = s
                .details
                .as_ref()
                .and_then(|d| d.causes.as_ref())
                .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
                .and_then(|c| c.message.clone());
            let how = match code {
                Some(c) => format!("exit code {c}"),
                None => s.message.unwrap_or_else(|| "failed".into()),
            };
            Ran { ok: false, note: format!("{what}: {how}; output: {output}") }
        }
        None => Ran { ok: false, note: format!("{what}: no exit status (the stream ended)") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ann: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": ann},
            "spec": {"containers": [{"name": "app"}, {"name": "side"}]}
        }))
        .unwrap()
    }

    #[test]
    fn velero_annotations_are_read_as_written() {
        assert_eq!(hook(&pod(json!({})), When::Pre).unwrap(), None);
        let h = hook(
            &pod(json!({"pre.hook.backup.velero.io/command": "[\"/sbin/fsfreeze\", \"--freeze\", \"/data\"]",
                        "pre.hook.backup.velero.io/container": "side",
                        "pre.hook.backup.velero.io/on-error": "Continue",
                        "pre.hook.backup.velero.io/timeout": "1m30s"})),
            When::Pre,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.command, ["/sbin/fsfreeze", "--freeze", "/data"]);
        assert_eq!((h.container.as_str(), h.on_error, h.timeout), ("side", OnError::Continue, Duration::from_secs(90)));
        let h = hook(&pod(json!({"post.hook.backup.velero.io/command": "sync"})), When::Post).unwrap().unwrap();
        assert_eq!(
            (h.command, h.container, h.on_error, h.timeout),
            (vec!["sync".to_string()], "app".into(), OnError::Fail, DEFAULT_TIMEOUT)
        );
        assert_eq!(hook(&pod(json!({"post.hook.backup.velero.io/command": "sync"})), When::Pre).unwrap(), None);
    }

    #[test]
    fn a_kubevirt_vm_pod_gets_virt_freezer_hooks_unless_told_not_to() {
        let vm = |extra: serde_json::Value| -> Pod {
            let mut labels = json!({"kubevirt.io": "virt-launcher", "kubevirt.io/domain": "vm1"});
            labels.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value(json!({
                "metadata": {"name": "virt-launcher-vm1-x", "namespace": "vms", "labels": labels},
                "spec": {"containers": [{"name": "compute"}]}
            }))
            .unwrap()
        };
        let h = hook(&vm(json!({})), When::Pre).unwrap().unwrap();
        assert_eq!(h.command, ["/usr/bin/virt-freezer", "--freeze", "--name", "vm1", "--namespace", "vms"]);
        assert_eq!((h.container.as_str(), h.on_error), ("compute", OnError::Fail));
        assert_eq!(hook(&vm(json!({})), When::Post).unwrap().unwrap().command[1], "--unfreeze");
        assert_eq!(hook(&vm(json!({"kubevirt.io/skip-backup-hooks": "true"})), When::Pre).unwrap(), None);
        assert_eq!(hook(&pod(json!({})), When::Pre).unwrap(), None, "not a VM pod");
    }

    #[tokio::test]
    async fn output_is_kept_to_its_tail_and_commands_are_shown_short() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let tail = read_tail(&data[..], 4096).await;
        assert_eq!(tail, data[data.len() - 4096..]);
        assert_eq!(read_tail(&b"short"[..], 4096).await, b"short");
        let huge = vec!["x".repeat(100_000)];
        assert!(shown(&huge).chars().count() <= 201);
    }

    #[test]
    fn bad_annotations_name_the_annotation() {
        for (ann, want) in [
            (
                json!({"pre.hook.backup.velero.io/command": "[\"a\""}),
                "pre.hook.backup.velero.io/command: not a JSON array",
            ),
            (
                json!({"pre.hook.backup.velero.io/command": "sh -c 'x'"}),
                "pre.hook.backup.velero.io/command: expected a JSON array",
            ),
            (json!({"pre.hook.backup.velero.io/command": "[]"}), "the command is empty"),
            (
                json!({"pre.hook.backup.velero.io/command": "[\"a\"]", "pre.hook.backup.velero.io/container": "db"}),
                "pre.hook.backup.velero.io/container: pod p has no container \"db\"",
            ),
            (
                json!({"pre.hook.backup.velero.io/command": "[\"a\"]", "pre.hook.backup.velero.io/on-error": "Ignore"}),
                "pre.hook.backup.velero.io/on-error: \"Ignore\"",
            ),
            (
                json!({"pre.hook.backup.velero.io/command": "[\"a\"]", "pre.hook.backup.velero.io/timeout": "soon"}),
                "pre.hook.backup.velero.io/timeout: \"soon\"",
            ),
            (
                json!({"pre.hook.backup.velero.io/command": "[\"a\"]",
                       "pre.hook.backup.velero.io/timeout": "99999999999h"}),
                "pre.hook.backup.velero.io/timeout: \"99999999999h\" is more than the 1h allowed",
            ),
        ] {
            let e = hook(&pod(ann), When::Pre).unwrap_err().to_string();
            assert!(e.contains(want), "{e} !~ {want}");
        }
    }
}
