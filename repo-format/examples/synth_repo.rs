//! Grow a real repository into a big one for benches/bigrepo.sh: BLOBS index entries of made-up
//! blobs in made-up packs (100 blobs per pack, 50,000 per index object, as a long-lived
//! repository's index looks), and copies of its newest snapshot until it has SNAPSHOTS. The
//! made-up packs do not exist: opening, listing, backing up into and restoring the real
//! snapshots work (they read the index, not the packs); check and prune would report them.
//!
//!   synth_repo REPO_DIR BLOBS SNAPSHOTS      (password in FERRY_PASSWORD)
//!   synth_repo REPO_DIR load|load-whole      load the index object by object (as Ferry does)
//!                                            or from all objects at once; print time and peak RSS
use std::sync::Arc;

use repo_format::{BlobId, BlobKind, Id, IndexFile, IndexPack, ObjectStorage, PackEntry, PackId, Repository};

const PER_PACK: u64 = 100;
const PER_INDEX: u64 = 50_000;

fn made_up(tag: &[u8], n: u64) -> Id {
    Id(repo_format::hash::keyed_hash(&[0x5e; 32], &[tag, &n.to_le_bytes()].concat()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, dir, mode] = args.as_slice() {
        return load(dir, mode).await;
    }
    let [_, dir, blobs, snapshots] = args.as_slice() else {
        eprintln!("usage: synth_repo REPO_DIR BLOBS SNAPSHOTS   (password in FERRY_PASSWORD)");
        std::process::exit(2)
    };
    let (blobs, snapshots): (u64, usize) = (blobs.parse()?, snapshots.parse()?);
    let password = std::env::var("FERRY_PASSWORD").map_err(|_| "FERRY_PASSWORD is not set")?;
    let storage = Arc::new(ObjectStorage::local(std::path::Path::new(dir))?);
    let repo = Repository::open(storage, password.as_bytes(), None).await?;

    let mut written = 0u64;
    while written < blobs {
        let n = PER_INDEX.min(blobs - written);
        let mut file = IndexFile::default();
        let mut at = written;
        while at < written + n {
            let in_pack = PER_PACK.min(written + n - at);
            let pack = made_up(b"pack", at / PER_PACK);
            let entries = (0..in_pack)
                .map(|i| PackEntry {
                    kind: BlobKind::Data,
                    id: BlobId(made_up(b"blob", at + i)),
                    offset: (i * 300_000) as u32,
                    stored_len: 300_000,
                    raw_len: 299_950,
                })
                .collect();
            file.packs.push(IndexPack { id: PackId(pack), salt: [7; repo_format::SALT_LEN], blobs: entries });
            at += in_pack;
        }
        repo.save_index(&file).await?;
        written += n;
    }

    let mut existing = repo.snapshots().await?;
    existing.sort_by_key(|(_, s)| s.time_ns);
    let (_, newest) = existing.last().ok_or("the repository has no snapshot to copy")?;
    for i in existing.len()..snapshots {
        let mut s = newest.clone();
        s.time_ns -= (i as i64) * 3_600_000_000_000; // one an hour, going back
        s.tags.push(("synthetic".into(), i.to_string()));
        repo.save_snapshot(&s).await?;
    }
    println!(
        "{written} made-up blobs in {} index objects; {} snapshots",
        written.div_ceil(PER_INDEX),
        snapshots.max(existing.len())
    );
    Ok(())
}

/// Load the index and report what it cost.
async fn load(dir: &str, mode: &str) -> Result<(), Box<dyn std::error::Error>> {
    let password = std::env::var("FERRY_PASSWORD").map_err(|_| "FERRY_PASSWORD is not set")?;
    let storage = Arc::new(ObjectStorage::local(std::path::Path::new(dir))?);
    let repo = Repository::open(storage, password.as_bytes(), None).await?;
    let t = std::time::Instant::now();
    let index = match mode {
        "load" => repo.load_index().await?,
        "load-whole" => {
            let files = repo.index_files().await?;
            Arc::new(repo_format::Index::build(repo_format::current_index_files(&files))?)
        }
        _ => return Err(format!("unknown mode {mode:?}").into()),
    };
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm = status.lines().find(|l| l.starts_with("VmHWM")).unwrap_or("VmHWM: ?");
    println!(
        "{mode}: {} entries, {} MiB of index ({} B each), {:.2} s, peak {hwm}",
        index.len(),
        index.memory_bytes() >> 20,
        index.memory_bytes() / index.len().max(1),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
