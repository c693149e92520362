//! `ferry bench`: what Ferry's primitives and pipeline do on this machine, as one JSON report —
//! the command a user on IBM Power or Z (or anywhere) runs to compare. Under qemu the figures
//! mean nothing; there it only shows that the command works.

use std::time::Instant;

use anyhow::{Context, Result};
use repo_format::{Chunker, ChunkerParams, MasterKey};

use crate::cli::{BenchArgs, Cli};

/// `len` bytes: the first half pseudo-random (incompressible), the second text-like.
fn data(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let half = len / 2;
    blake3::Hasher::new_keyed(&[7; 32]).finalize_xof().fill(&mut v[..half]);
    let words = ["backup ", "volume ", "restore ", "pod ", "node ", "snapshot ", "chunk ", "the ", "of ", "data\n"];
    let mut i = half;
    let mut k = 0usize;
    while i < len {
        let w = words[(v[k % half] as usize) % words.len()].as_bytes();
        let n = w.len().min(len - i);
        v[i..i + n].copy_from_slice(&w[..n]);
        i += n;
        k += 1;
    }
    v
}

/// Best of `runs` timings of `f` over `bytes`, in MB/s (10^6 bytes per second).
fn mbps(bytes: usize, runs: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    bytes as f64 / best / 1e6
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    for key in ["model name", "cpu", "machine", "processor"] {
        if let Some(l) = info.lines().find(|l| l.split(':').next().map(str::trim) == Some(key)) {
            return l.split_once(':').map(|x| x.1.trim().to_string()).unwrap_or_default();
        }
    }
    String::new()
}

fn cpu_features() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let line = info.lines().find(|l| {
        let k = l.split(':').next().map(str::trim).unwrap_or("");
        k == "flags" || k == "Features" || k == "features"
    });
    let all: Vec<String> = line
        .and_then(|l| l.split_once(':'))
        .map(|x| x.1.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    // The ones that matter to Ferry's primitives.
    let wanted = [
        "sse4_1",
        "avx2",
        "avx512f",
        "aes",
        "pclmulqdq",
        "vaes",
        "vpclmulqdq",
        "sha_ni",
        "asimd",
        "pmull",
        "sha3",
        "altivec",
        "vsx",
        "vxe",
        "vxe2",
        "msa",
    ];
    all.into_iter().filter(|f| wanted.contains(&f.as_str())).collect()
}

pub async fn run(cli: &Cli, a: &BenchArgs) -> Result<i32> {
    let mb = a.mb.max(4);
    let len = mb << 20;
    let buf = data(len);
    let (rand, text) = buf.split_at(len / 2);
    let runs = 3;
    let master = MasterKey::generate();
    let mut report = serde_json::Map::new();
    let mut prim = serde_json::Map::new();
    let ch = Chunker::new(ChunkerParams::default(), master.chunker_seed());
    prim.insert(
        "fastcdc_2020_1MiB_avg".into(),
        mbps(len, runs, || drop(std::hint::black_box(ch.lengths(&buf)))).into(),
    );
    prim.insert(
        "blake3_keyed_1MiB".into(),
        mbps(len, runs, || {
            buf.chunks(1 << 20).for_each(|c| {
                std::hint::black_box(master.blob_id(c));
            })
        })
        .into(),
    );
    let mut out = Vec::with_capacity(1 << 21);
    for level in [1, 3, 9] {
        for (name, part) in [("random", rand), ("text", text)] {
            let v = mbps(part.len(), runs, || {
                part.chunks(1 << 20).for_each(|c| {
                    out.clear();
                    repo_format::compress_into(c, level, &mut out);
                    std::hint::black_box(&out);
                })
            });
            prim.insert(format!("zstd_{level}_compress_{name}"), v.into());
        }
    }
    let compressed: Vec<Vec<u8>> = text
        .chunks(1 << 20)
        .map(|c| {
            let mut o = Vec::new();
            repo_format::compress_into(c, 3, &mut o);
            o
        })
        .collect();
    prim.insert(
        "zstd_3_decompress_text".into(),
        mbps(text.len(), runs, || {
            compressed.iter().for_each(|c| drop(std::hint::black_box(repo_format::decompress(c))))
        })
        .into(),
    );
    // The repository's own path (repo_format::aes_gcm_path()), as packs are sealed.
    let cipher = repo_format::Aead::new(&[9u8; 32]);
    let work = &buf[..len.min(64 << 20)];
    let mut sealed = Vec::with_capacity((1 << 20) + repo_format::SEAL_OVERHEAD);
    prim.insert(
        "aes_256_gcm_1MiB".into(),
        mbps(work.len(), runs, || {
            for c in work.chunks(1 << 20) {
                sealed.clear();
                cipher.seal_into(b"", c, &mut sealed);
                std::hint::black_box(&sealed);
            }
        })
        .into(),
    );
    report.insert("primitives_mb_per_s_one_core".into(), prim.into());

    // The whole pipeline: files -> backup -> restore, in a temporary local repository.
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let src = dir.path().join("src");
    std::fs::create_dir(&src)?;
    for (i, part) in buf.chunks(len / 8).enumerate() {
        std::fs::write(src.join(format!("file-{i}")), part)?;
    }
    // In-process, through the engine, as a backup and a restore run in the CLI or the agent.
    let repo_dir = dir.path().join("repo");
    let storage: std::sync::Arc<dyn repo_format::Storage> =
        std::sync::Arc::new(repo_format::ObjectStorage::local(&repo_dir).context("creating the benchmark repository")?);
    let kdf = repo_format::KdfParams { m_cost: 64, t_cost: 1, p_cost: 1 };
    let config = repo_format::RepoConfig::new(0);
    let repo = std::sync::Arc::new(repo_format::Repository::init(storage, b"bench", kdf, config, "bench").await?);
    let limits = crate::env::limits();
    let cfg = ferry_engine::backup::BackupConfig {
        paths: vec![src.clone()],
        excludes: Vec::new(),
        host: "bench".into(),
        tags: Vec::new(),
        parent: None,
        force: false,
        cache_dir: Some(dir.path().join("cache")),
        identity: None,
        requester: None,
    };
    let t = Instant::now();
    let job = ferry_engine::Job::new().with_limits(limits.clone());
    let out = ferry_engine::backup::run(repo.clone(), cfg, &job).await.context("benchmark backup")?;
    let backup_s = t.elapsed().as_secs_f64();
    let target = dir.path().join("restore");
    let t = Instant::now();
    let opts = ferry_engine::restore::RestoreOptions::default();
    // The backup worked on a view of its own: the restore loads the index it needs, as `restore` does.
    let repo = ferry_engine::restore::load_index(&repo).await?;
    let plan = ferry_engine::restore::plan(&repo, out.snapshot.tree, &Default::default(), &opts).await?;
    let job = ferry_engine::Job::new().with_limits(limits);
    let restored = ferry_engine::restore::execute(repo, plan, &target, &job, &opts).await?;
    anyhow::ensure!(restored.errors.is_empty(), "benchmark restore: {}", restored.errors[0]);
    let restore_s = t.elapsed().as_secs_f64();
    report.insert(
        "pipeline".into(),
        serde_json::json!({
            "bytes": len, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "backup_mb_per_s": len as f64 / backup_s / 1e6, "restore_mb_per_s": len as f64 / restore_s / 1e6,
            "backup_s": backup_s, "restore_s": restore_s,
        }),
    );
    report.insert(
        "machine".into(),
        serde_json::json!({
            "arch": std::env::consts::ARCH, "cpu": cpu_model(), "features": cpu_features(),
            "endian": if cfg!(target_endian = "big") { "big" } else { "little" },
            "under_qemu": std::env::var_os("FERRY_UNDER_QEMU").is_some(),
        }),
    );
    report.insert("ferry".into(), super::version::info());
    let v = serde_json::Value::Object(report);
    if cli.json {
        crate::output::print_json(&v);
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(crate::exit::OK)
}
