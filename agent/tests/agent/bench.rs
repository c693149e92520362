//! The agent's benchmark (run by `benches/agent-bench.sh`, ignored by `cargo test`): N volumes
//! shaped like the peer corpus (scaled down: crate sources, a sparse VM-style image, incompressible
//! media), each on its own loop-mounted ext4, backed up
//! 1. by `ferry backup` run back to back, one volume after the other (the CLI baseline),
//! 2. by one `ferry agent` through N DataUploads created at once (`--concurrency C`), and
//! 3. by the same agent restarted with `--concurrency 1` through N more (one after another
//!    inside the agent, its protocol included),
//!
//! each into a fresh repository on an s3s-fs server on loopback. Reports both wall times, their
//! ratio and the peak RSS of the agent (VmHWM) and of the largest CLI run (GNU time's %M), the
//! CPU of each and of the whole machine, and of that the control plane's (kube-apiserver and
//! etcd, which answer the agent's protocol on these same cores; the harness waits for the
//! uploads through a watch, so its own polling does not add to it).
//!
//! Settings: `FERRY_AGENT_BENCH_VOLUMES` (10), `FERRY_AGENT_BENCH_SOURCES_MIB` (24 per volume),
//! `FERRY_AGENT_BENCH_IMAGE_MIB` (32 of data in a 256 MiB sparse image), `FERRY_AGENT_BENCH_MEDIA_MIB`
//! (16), `FERRY_AGENT_BENCH_CONCURRENCY` (C, 2), `FERRY_AGENT_BENCH_ARGS` (more `ferry agent`
//! flags, split at whitespace), `FERRY_AGENT_BENCH_OUT` (a file for the result line).

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_daemon::types::{DataUpload, Phase};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};

use crate::common::devices::Ext4;
use crate::world::{PASSWORD, World};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Every regular file of the local cargo registry's sources, sorted (the peer corpus's sources).
fn registry_files() -> Vec<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let mut out = Vec::new();
    let mut stack = vec![home.join("registry/src")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Volume `i`: every `n`-th registry file from offset `i` up to `sources` bytes, a sparse image
/// with `image` bytes of random 1 MiB extents, `media` bytes of random data.
fn fill_volume(dir: &Path, i: usize, n: usize, files: &[PathBuf], sources: u64, image: u64, media: u64) {
    let mut total = 0;
    for (k, f) in files.iter().skip(i).step_by(n).enumerate() {
        if total >= sources {
            break;
        }
        let Ok(data) = std::fs::read(f) else { continue };
        total += data.len() as u64;
        let sub = dir.join(format!("src/{:03}", k / 200));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("{k}-{}", f.file_name().unwrap().to_string_lossy())), data).unwrap();
    }
    let mut rng = blake3::Hasher::new_keyed(&[i as u8; 32]).finalize_xof();
    let mut img = std::fs::File::create(dir.join("vm.img")).unwrap();
    img.set_len(256 << 20).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    for e in 0..image >> 20 {
        rng.fill(&mut chunk);
        img.seek(SeekFrom::Start((e * 7 % 256) << 20)).unwrap();
        img.write_all(&chunk).unwrap();
    }
    let mut m = std::fs::File::create(dir.join("media.bin")).unwrap();
    for _ in 0..media >> 20 {
        rng.fill(&mut chunk);
        m.write_all(&chunk).unwrap();
    }
}

/// A disk-backed S3 server on loopback (the same one for both runs).
struct S3s(std::process::Child, String);

impl S3s {
    fn start(root: &Path) -> Option<S3s> {
        let bin = std::env::var("FERRY_TEST_S3S_FS").ok()?;
        std::fs::create_dir_all(root.join("ferry-test")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "test", "--secret-key", "test"])
            .arg(root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(30), "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(S3s(child, format!("http://127.0.0.1:{port}")))
    }
}

impl Drop for S3s {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU seconds (user + system) a live process has used so far.
fn cpu_s(pid: u32) -> f64 {
    try_cpu_s(pid).unwrap_or_else(|| panic!("no process {pid}"))
}

/// `cpu_s`, or `None` when the process is gone.
fn try_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) in parentheses: utime and stime are the
    // 14th and 15th of the line, the 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(ticks / hz as f64)
}

/// CPU seconds used so far by the live processes named `kube-apiserver` or `etcd`: the control
/// plane, which shares this machine's cores with the agent here (on a cluster it has nodes of
/// its own). The CLI's phase asks it nothing; the agent's phase pays it for the protocol.
fn control_plane_s() -> f64 {
    let mut total = 0.0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else { continue };
        if matches!(comm.trim(), "kube-apiserver" | "etcd") {
            // Gone between the listing and the read: its CPU is not counted.
            total += try_cpu_s(pid).unwrap_or(0.0);
        }
    }
    total
}

/// CPU seconds the whole machine has been busy (every process, /proc/stat's first line less
/// idle and iowait).
fn machine_busy_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let f: Vec<f64> = stat.lines().next().unwrap().split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap();
    (f.iter().sum::<f64>() - f[3] - f[4]) / hz as f64
}

/// Peak resident memory of a live process, in KiB.
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Peaks of a process's anonymous and file-backed resident memory (KiB), sampled every 20 ms
/// on a thread until `stop` is set: VmHWM alone does not tell the heap from mapped pack files.
struct RssPeaks {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl RssPeaks {
    fn start(pid: u32) -> RssPeaks {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut anon, mut file) = (0, 0);
            let field = |status: &str, name: &str| -> u64 {
                status
                    .lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                    .unwrap_or(0)
            };
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { break };
                anon = field(&status, "RssAnon:").max(anon);
                file = field(&status, "RssFile:").max(file);
                std::thread::sleep(Duration::from_millis(20));
            }
            (anon, file)
        });
        RssPeaks { stop, thread }
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Back up volume `i` of `vols` through DataUpload `{tag}-{i}` of snapshot `{tag}-snap-{i}`
/// into location `bsl`, all created at once, and wait until every one has completed.
async fn upload_all(w: &mut World, tag: &str, bsl: &str, vols: &[PathBuf]) {
    let n = vols.len();
    for i in 0..n {
        w.data_upload_to(
            &format!("{tag}-{i}"),
            "app",
            &format!("{tag}-pvc-{i}"),
            &format!("{tag}-snap-{i}"),
            "ferry",
            bsl,
        )
        .await;
    }
    // The harness shares the 2 cores with the agent, and so do the apiserver and etcd it asks:
    // one list per tick while the movers are served, then a watch for the phases, not a GET of
    // every upload every 200 ms. (Measured: the control plane's CPU in the agent's phase stayed
    // at 0.55-0.8 s either way; that is the protocol's own requests, not the harness's.)
    let uploads: Api<DataUpload> = Api::namespaced(w.client.clone(), crate::world::NS);
    let index = |du: &DataUpload| {
        du.metadata
            .name
            .as_deref()
            .and_then(|s| s.strip_prefix(&format!("{tag}-")))
            .and_then(|i| i.parse::<usize>().ok())
    };
    let mut served = vec![false; n];
    while served.iter().any(|s| !s) {
        w.assert_agent_running("n1");
        for du in uploads.list(&ListParams::default()).await.unwrap().items {
            let Some(i) = index(&du).filter(|&i| i < n && !served[i]) else { continue };
            if du.status.and_then(|s| s.phase) == Some(Phase::Accepted)
                && w.get_in::<k8s_openapi::api::core::v1::Pod>("velero", &format!("ferry-{tag}-{i}")).await.is_some()
            {
                w.serve_mover_from(&format!("{tag}-{i}"), "n1", &vols[i]).await;
                served[i] = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let completed = async {
        let mut done = vec![false; n];
        loop {
            let list = uploads.list(&ListParams::default()).await.unwrap();
            let rv = list.metadata.resource_version.clone().unwrap_or_default();
            let mut seen = list.items;
            let mut events = uploads.watch(&WatchParams::default().timeout(60), &rv).await.unwrap().boxed();
            loop {
                for du in seen.drain(..) {
                    let phase = du.status.as_ref().and_then(|s| s.phase);
                    assert_ne!(phase, Some(Phase::Failed), "{:?} failed\n{}", du.metadata.name, w.logs());
                    if let Some(i) = index(&du).filter(|&i| i < n) {
                        done[i] |= phase == Some(Phase::Completed);
                    }
                }
                if done.iter().all(|d| *d) {
                    return;
                }
                match events.try_next().await {
                    Ok(Some(WatchEvent::Added(du) | WatchEvent::Modified(du))) => seen.push(du),
                    Ok(Some(WatchEvent::Bookmark(_) | WatchEvent::Deleted(_))) => {}
                    // Ended (its timeout) or expired: list again.
                    Ok(None) | Ok(Some(WatchEvent::Error(_))) | Err(_) => break,
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(1800), completed)
        .await
        .expect("the uploads did not complete in 30 minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: benches/agent-bench.sh runs it"]
async fn bench_volumes_through_the_agent_vs_the_cli_back_to_back() {
    let n = env_or("FERRY_AGENT_BENCH_VOLUMES", 10);
    let (sources, image, media) = (
        env_or("FERRY_AGENT_BENCH_SOURCES_MIB", 24) as u64 * (1 << 20),
        env_or("FERRY_AGENT_BENCH_IMAGE_MIB", 32) as u64 * (1 << 20),
        env_or("FERRY_AGENT_BENCH_MEDIA_MIB", 16) as u64 * (1 << 20),
    );
    let scratch = tempfile::Builder::new().prefix("ferry-agent-bench-").tempdir().unwrap();
    let Some(s3) = S3s::start(&scratch.path().join("s3")) else {
        crate::common::skip("FERRY_TEST_S3S_FS not set (tests/servers.sh install && start)");
        return;
    };
    let Some(mut w) = World::with_endpoint(&[], Some(s3.1.clone())).await else { return };

    // The volumes, written once and used by both runs.
    let files = registry_files();
    assert!(!files.is_empty(), "no crate sources under the cargo registry");
    let mut vols = Vec::new();
    for i in 0..n {
        let mnt = scratch.path().join(format!("vol-{i}"));
        let fs = Ext4::new(&scratch.path().join(format!("vol-{i}.img")), &mnt, 1 << 30, &[]);
        fill_volume(&mnt, i, n, &files, sources, image, media);
        vols.push(fs);
    }
    let _ = Command::new("sync").status();
    // Allocated bytes (the images are sparse: their holes are not data).
    let data: u64 = vols
        .iter()
        .map(|v| Command::new("du").args(["-s", "-B1"]).arg(&v.mnt).output().unwrap())
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().parse::<u64>().unwrap())
        .sum();

    // 1. The CLI, one volume after the other, into its own repository.
    let pw = scratch.path().join("password");
    std::fs::write(&pw, PASSWORD).unwrap();
    let repo = format!("s3:{}/ferry-test/cli", s3.1);
    let ferry = assert_cmd::cargo::cargo_bin("ferry");
    let run = |args: &[&str]| {
        let out = Command::new("/usr/bin/time")
            .args(["-f", "%e %M %U %S"])
            .arg(&ferry)
            .args(["--repo", &repo, "--password-file", pw.to_str().unwrap(), "--cache-dir"])
            .arg(scratch.path().join("cli-cache"))
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "ferry {args:?}: {err}");
        let last = err.lines().last().unwrap().to_string();
        let mut it = last.split_whitespace();
        let mut num = || it.next().unwrap().parse::<f64>().unwrap();
        (num(), num() as u64, num() + num())
    };
    run(&["init"]);
    let (mut cli_wall, mut cli_rss, mut cli_cpu) = (0.0, 0, 0.0);
    let (busy, plane) = (machine_busy_s(), control_plane_s());
    for v in &vols {
        let (wall, rss, cpu) = run(&["backup", "--host", "n1", "--quiet", v.mnt.to_str().unwrap()]);
        cli_wall += wall;
        cli_rss = cli_rss.max(rss);
        cli_cpu += cpu;
    }
    let (cli_busy, cli_plane) = (machine_busy_s() - busy, control_plane_s() - plane);
    // The CLI's packs are still being written back (its temporary files and the server's
    // objects): let that finish first, or the agent's run pays for it.
    let _ = Command::new("sync").status();

    // 2. One agent, all DataUploads at once.
    let concurrency = env_or("FERRY_AGENT_BENCH_CONCURRENCY", 2).to_string();
    let extra = std::env::var("FERRY_AGENT_BENCH_ARGS").unwrap_or_default();
    // Progress as often as a deployed agent writes it (the tests' 1 s would be 40 more status
    // writes for the control plane sharing these cores).
    let mut args = vec!["--concurrency", &concurrency, "--progress-interval", "10s"];
    args.extend(extra.split_whitespace());
    w.start_agent("n1", &args);
    w.namespace("app").await;
    for i in 0..n {
        w.snapshot("app", &format!("du-pvc-{i}"), &format!("du-snap-{i}"), false).await;
    }
    let agent_cpu_before = cpu_s(w.agent_pid("n1"));
    let peaks = RssPeaks::start(w.agent_pid("n1"));
    let (busy, plane) = (machine_busy_s(), control_plane_s());
    let t = Instant::now();
    let mounts: Vec<PathBuf> = vols.iter().map(|v| v.mnt.clone()).collect();
    upload_all(&mut w, "du", "default", &mounts).await;
    let agent_wall = t.elapsed().as_secs_f64();
    let agent_rss = vm_hwm(w.agent_pid("n1"));
    let (anon_peak, file_peak) = peaks.finish();
    let agent_cpu = cpu_s(w.agent_pid("n1")) - agent_cpu_before;
    let (agent_busy, agent_plane) = (machine_busy_s() - busy, control_plane_s() - plane);

    // 3. The same agent one job at a time (`--concurrency 1`: "one after another" inside the
    // agent, its protocol included), into a repository of its own (a second location).
    w.stop_agent("n1");
    let mut one_args = vec!["--concurrency", "1", "--progress-interval", "10s"];
    one_args.extend(extra.split_whitespace());
    let prefix = w.prefix.clone();
    w.prefix = format!("{prefix}-one");
    w.bsl("one", &s3.1, Some(("cloud-credentials", "cloud"))).await;
    w.prefix = prefix;
    w.start_agent("n1", &one_args);
    for i in 0..n {
        w.snapshot("app", &format!("one-pvc-{i}"), &format!("one-snap-{i}"), false).await;
    }
    let _ = Command::new("sync").status();
    let one_cpu_before = cpu_s(w.agent_pid("n1"));
    let t = Instant::now();
    upload_all(&mut w, "one", "one", &mounts).await;
    let one_wall = t.elapsed().as_secs_f64();
    let one_cpu = cpu_s(w.agent_pid("n1")) - one_cpu_before;

    let line = format!(
        "agent-bench: {n} volumes, {:.0} MiB of data: CLI back to back {cli_wall:.2} s, CPU {cli_cpu:.2} s \
         machine {cli_busy:.2} s of which control plane {cli_plane:.2} s (largest RSS {} MiB), agent --concurrency {concurrency} {agent_wall:.2} s, \
         CPU {agent_cpu:.2} s, machine {agent_busy:.2} s of which control plane {agent_plane:.2} s (peak RSS {} MiB: anonymous {} MiB, mapped files {} MiB \
         at their sampled peaks); agent/CLI wall {:.2}; the agent one job at a time {one_wall:.2} s, CPU {one_cpu:.2} s; \
         all at once / one at a time {:.2}",
        data as f64 / (1 << 20) as f64,
        cli_rss / 1024,
        agent_rss / 1024,
        anon_peak / 1024,
        file_peak / 1024,
        agent_wall / cli_wall,
        agent_wall / one_wall
    );
    let kv = format!(
        "cli_s={cli_wall:.2} agent_s={agent_wall:.2} ratio={:.3} agent_rss_mib={} cli_rss_mib={} \
         cli_cpu_s={cli_cpu:.2} agent_cpu_s={agent_cpu:.2} cli_busy_s={cli_busy:.2} agent_busy_s={agent_busy:.2} cli_plane_s={cli_plane:.2} agent_plane_s={agent_plane:.2} \
         agent_anon_mib={} agent_file_mib={} one_s={one_wall:.2} one_cpu_s={one_cpu:.2} one_ratio={:.3}",
        agent_wall / cli_wall,
        agent_rss / 1024,
        cli_rss / 1024,
        anon_peak / 1024,
        file_peak / 1024,
        agent_wall / one_wall
    );
    println!("{line}");
    if let Ok(out) = std::env::var("FERRY_AGENT_BENCH_OUT") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(out).unwrap();
        writeln!(f, "{kv}").unwrap();
    }
}
