//! Throughput of the repository pipeline and of its primitives.
//!
//! Two separate in-memory inputs of `FERRY_BENCH_MB / 2` MiB each (default 256 → 128 + 128):
//! `text`, generated text-like bytes that zstd compresses, and `random`, incompressible bytes.
//! Every benchmark reports bytes of its input per second (`Throughput::Bytes`).
//!
//! * `primitives/*`: FastCDC chunking (`Chunker::lengths`), keyed BLAKE3 (`MasterKey::blob_id`
//!   over 1 MiB pieces), zstd level 3 (`compress_into` over 1 MiB pieces) and AES-256-GCM
//!   (`repo_format::Aead`, the repository's own path, 1 MiB messages).
//! * `write/*`: a fresh repository per iteration on local storage (in /dev/shm when present,
//!   temporary pack files too, so the disk does not dominate), chunk + `save` from several
//!   threads + `finish`. Repository creation is not timed.
//! * `read/*`: every data blob through `Repository::read_blob` (several tasks at once), and every
//!   pack read whole, parsed and all its blobs opened.
//! * `index/lookup_1M_of_2M`: an in-memory index of 2,000,000 random blob ids (`Index::build`)
//!   and a million lookups of present ids in random order: what a restore plan or a deduplicating
//!   backup does per blob once the index is bigger than the CPU caches.
//!
//! Run: `cargo bench -p ferry-repo-format --bench pipeline`; check that it works:
//! `cargo bench -p ferry-repo-format --bench pipeline -- --test`. Environment: `FERRY_BENCH_MB`
//! (total input, default 256), `FERRY_BENCH_THREADS` (saving threads, default the CPU count).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use repo_format::{
    BlobId, BlobKind, Chunker, ChunkerParams, FileKind, Id, Index, IndexFile, IndexPack, KdfParams, MasterKey,
    ObjectStorage, PackEntry, PackId, RepoConfig, Repository, Storage, WriterOptions, compress_into, open_blob,
    parse_pack,
};
use std::hint::black_box;

const PIECE: usize = 1 << 20;

struct Input {
    name: &'static str,
    data: Vec<u8>,
}

fn total_mb() -> usize {
    std::env::var("FERRY_BENCH_MB").ok().and_then(|v| v.parse().ok()).filter(|&n: &usize| n >= 2).unwrap_or(256)
}

/// Deterministic text: words from a generated vocabulary, punctuation, numbers and newlines.
fn text_like(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let vocab: Vec<Vec<u8>> = (0..2000)
        .map(|_| {
            let n = 2 + (next() % 9) as usize;
            (0..n).map(|_| b"etaoinshrdlucmfwypvbgkjqxz"[(next() % 26).min(next() % 26) as usize]).collect()
        })
        .collect();
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let r = next();
        // Zipf-ish: small indices are far more frequent.
        let w = &vocab[((r % 2000) * ((r >> 16) % 2000) / 2000) as usize];
        out.extend_from_slice(w);
        match (r >> 40) % 23 {
            0 => out.extend_from_slice(b".\n"),
            1 | 2 => out.extend_from_slice(b", "),
            3 => out.extend_from_slice(format!(" {} ", (r >> 48) % 10_000).as_bytes()),
            _ => out.push(b' '),
        }
    }
    out.truncate(len);
    out
}

fn random(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(b"ferry bench random").finalize_xof().fill(&mut out);
    out
}

fn inputs() -> &'static [Input] {
    static INPUTS: OnceLock<Vec<Input>> = OnceLock::new();
    INPUTS.get_or_init(|| {
        let half = (total_mb() / 2) << 20;
        vec![Input { name: "text", data: text_like(half) }, Input { name: "random", data: random(half) }]
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime"))
}

/// Saving threads (and read tasks / 2): `FERRY_BENCH_THREADS`, default the CPUs (2 to 8).
fn threads() -> usize {
    std::env::var("FERRY_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n >= 1)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8))
}

/// Where benchmark repositories and temporary packs go: RAM when possible.
fn scratch() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() { shm } else { std::env::temp_dir() }
}

fn primitives(c: &mut Criterion) {
    let mut g = c.benchmark_group("primitives");
    g.sampling_mode(SamplingMode::Flat);
    let master = MasterKey::generate();
    let chunker = Chunker::new(ChunkerParams::default(), master.chunker_seed());
    let aes = repo_format::Aead::new(&[7u8; 32]);
    for input in inputs() {
        let data = &input.data[..];
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::new("fastcdc", input.name), data, |b, d| {
            b.iter(|| black_box(chunker.lengths(d).len()))
        });
        g.bench_with_input(BenchmarkId::new("blake3_keyed_1MiB", input.name), data, |b, d| {
            b.iter(|| {
                for p in d.chunks(PIECE) {
                    black_box(master.blob_id(p));
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("zstd3_1MiB", input.name), data, |b, d| {
            let mut out = Vec::with_capacity(PIECE + 64);
            b.iter(|| {
                let mut stored = 0;
                for p in d.chunks(PIECE) {
                    out.clear();
                    compress_into(p, 3, &mut out);
                    stored += out.len();
                }
                black_box(stored)
            })
        });
        g.bench_with_input(BenchmarkId::new("aes256gcm_1MiB", input.name), data, |b, d| {
            let mut sealed = Vec::with_capacity(PIECE + 64);
            b.iter(|| {
                for p in d.chunks(PIECE) {
                    sealed.clear();
                    aes.seal_into(b"aad", p, &mut sealed);
                    black_box(&sealed);
                }
            })
        });
    }
    g.finish();
}

async fn new_repo(dir: &std::path::Path) -> Arc<Repository> {
    let st: Arc<dyn Storage> = Arc::new(ObjectStorage::local(dir).expect("local storage"));
    let repo = Repository::init(st, b"bench", KdfParams::insecure_for_tests(), RepoConfig::new(0), "bench")
        .await
        .expect("init");
    Arc::new(repo)
}

/// Chunk `data` in `threads()` slices in parallel and save every chunk; then finish.
async fn write_all(repo: &Repository, data: &'static [u8]) {
    let w = repo.writer(WriterOptions { tmp_dir: scratch(), ..WriterOptions::default() });
    let chunker = Chunker::new(repo.config().chunker, repo.master_key().chunker_seed());
    let n = threads();
    let slice = data.len().div_ceil(n);
    let tasks: Vec<_> = data
        .chunks(slice)
        .map(|part| {
            let w = w.clone();
            tokio::task::spawn_blocking(move || {
                let mut at = 0;
                for len in chunker.lengths(part) {
                    w.save(BlobKind::Data, &part[at..at + len]).expect("save");
                    at += len;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("save thread");
    }
    repo.finish_writer(w).await.expect("finish");
}

fn write_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("write");
    g.sampling_mode(SamplingMode::Flat);
    for input in inputs() {
        g.throughput(Throughput::Bytes(input.data.len() as u64));
        g.bench_function(BenchmarkId::new("chunk_save_finish", input.name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir_in(scratch()).expect("tempdir");
                    total += runtime().block_on(async {
                        let repo = new_repo(dir.path()).await;
                        let t = Instant::now();
                        write_all(&repo, &input.data).await;
                        t.elapsed()
                    });
                }
                total
            })
        });
    }
    g.finish();
}

fn read_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("read");
    g.sampling_mode(SamplingMode::Flat);
    let conc = 2 * threads();
    for input in inputs() {
        let dir = tempfile::tempdir_in(scratch()).expect("tempdir");
        let repo = runtime().block_on(async {
            let repo = new_repo(dir.path()).await;
            write_all(&repo, &input.data).await;
            repo.load_index().await.expect("index");
            repo
        });
        let idx = repo.index();
        let blobs: Vec<_> = idx.iter().filter(|(_, l)| l.kind == BlobKind::Data).map(|(id, _)| id).collect();
        let raw: u64 = idx.iter().map(|(_, l)| u64::from(l.raw_len)).sum();
        g.throughput(Throughput::Bytes(raw));
        g.bench_function(BenchmarkId::new("read_blob", input.name), |b| {
            b.iter(|| {
                runtime().block_on(async {
                    let mut set = tokio::task::JoinSet::new();
                    let mut got = 0u64;
                    for id in &blobs {
                        if set.len() >= conc {
                            got += set.join_next().await.expect("task").expect("join");
                        }
                        let (repo, id) = (repo.clone(), *id);
                        set.spawn(
                            async move { repo.read_blob(BlobKind::Data, &id).await.expect("read_blob").len() as u64 },
                        );
                    }
                    while let Some(n) = set.join_next().await {
                        got += n.expect("join");
                    }
                    assert_eq!(got, raw);
                })
            })
        });
        let packs: Vec<_> = idx.packs().iter().map(|p| p.id).collect();
        g.bench_function(BenchmarkId::new("whole_packs", input.name), |b| {
            b.iter(|| {
                runtime().block_on(async {
                    let mut set = tokio::task::JoinSet::new();
                    for id in &packs {
                        let (repo, id) = (repo.clone(), *id);
                        set.spawn(async move {
                            let bytes = repo.storage().read(FileKind::Pack, &id.0, u64::MAX).await.expect("read pack");
                            tokio::task::spawn_blocking(move || {
                                let (salt, entries) = parse_pack(repo.master_key(), &bytes).expect("parse");
                                let mut n = 0u64;
                                for e in entries {
                                    let s = &bytes[e.offset as usize..(e.offset + e.stored_len) as usize];
                                    n += open_blob(repo.master_key(), &salt, e.kind, &e.id, s).expect("open").len()
                                        as u64;
                                }
                                n
                            })
                            .await
                            .expect("open task")
                        });
                    }
                    let mut got = 0u64;
                    while let Some(n) = set.join_next().await {
                        got += n.expect("join");
                    }
                    assert_eq!(got, raw);
                })
            })
        });
        drop(repo);
        drop(dir);
    }
    g.finish();
}

fn index(c: &mut Criterion) {
    const BLOBS: usize = 2_000_000;
    const LOOKUPS: usize = 1_000_000;
    let id = |i: usize| BlobId(Id(*blake3::hash(&(i as u64).to_le_bytes()).as_bytes()));
    let packs = (0..BLOBS / 1000)
        .map(|p| IndexPack {
            id: PackId(Id([p as u8; 32])),
            salt: [1; 32],
            blobs: (p * 1000..(p + 1) * 1000)
                .map(|i| PackEntry { kind: BlobKind::Data, id: id(i), offset: 0, stored_len: 1, raw_len: 1 })
                .collect(),
        })
        .collect();
    let idx = Index::build([&IndexFile { packs, supersedes: Vec::new() }]).unwrap();
    // Present ids in an order unrelated to the index's (a multiplicative stride modulo BLOBS).
    let wanted: Vec<BlobId> = (0..LOOKUPS).map(|i| id(i.wrapping_mul(7_919) % BLOBS)).collect();
    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    g.bench_function("lookup_1M_of_2M", |b| {
        b.iter(|| wanted.iter().filter(|w| idx.lookup(BlobKind::Data, w).is_some()).count())
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = primitives, write_path, read_path, index
}
criterion_main!(benches);
