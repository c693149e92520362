//! Writes the seed corpora `seeds/<target>/` with the library's own encoders: a few small,
//! well-formed inputs per target, in the framing each target expects (its mode byte first where
//! it has one). Run from `repo-format/fuzz`: `cargo run --example seeds`. Sealed seeds use the
//! targets' fixed key, and random nonces, so their bytes differ from run to run.

use std::fs;
use std::path::Path;

use ferry_fuzz::{PASSWORD, SALT, master};
use repo_format::fuzzing::{config_encode, keyfile_create, object_seal, pack_header_seal};
use repo_format::{
    BlobId, BlobKind, ChunkerParams, Content, Id, IndexFile, IndexPack, KdfParams, Node, NodeType, PackEntry, PackId,
    RepoConfig, Segment, Snapshot, SnapshotId, Summary, Tree, TreeId, compress_into, encode_segment_list, path_of,
};

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn config() -> RepoConfig {
    RepoConfig {
        repo_id: Id([0x44; 32]),
        created_ns: 1_700_000_000_000_000_000,
        chunker: ChunkerParams::default(),
        fixed_chunk_size: 256 << 10,
        compression_level: 3,
        pack_size: 32 << 20,
        gc_grace_ns: repo_format::DEFAULT_GC_GRACE_NS,
    }
}

fn entry(kind: BlobKind, n: u8, offset: u32, stored_len: u32) -> PackEntry {
    PackEntry { kind, id: BlobId(Id([n; 32])), offset, stored_len, raw_len: stored_len.saturating_sub(29) }
}

fn index() -> IndexFile {
    IndexFile {
        packs: vec![
            IndexPack {
                id: PackId(Id([1; 32])),
                salt: SALT,
                blobs: vec![entry(BlobKind::Data, 2, 0, 100), entry(BlobKind::Tree, 3, 100, 60)],
            },
            IndexPack { id: PackId(Id([4; 32])), salt: [5; 32], blobs: vec![entry(BlobKind::Data, 2, 0, 40)] },
        ],
        supersedes: vec![],
    }
}

fn segments() -> Vec<Segment> {
    vec![
        Segment::Blob { id: BlobId(Id([6; 32])), len: 4096 },
        Segment::Zero { len: 1 << 20 },
        Segment::Indirect { id: TreeId(Id([7; 32])), len: 1 << 30 },
    ]
}

fn tree() -> Tree {
    let mut file = Node::new(b"file.txt".to_vec(), NodeType::File);
    file.mode = 0o644;
    file.size = (1 << 30) + (1 << 20) + 4096;
    file.mtime_ns = 1_700_000_000_000_000_000;
    file.xattrs = vec![(b"user.k".to_vec(), b"v".to_vec())];
    file.content = Content::Segments(segments());
    let mut dir = Node::new(b"sub".to_vec(), NodeType::Dir);
    dir.content = Content::Tree(TreeId(Id([8; 32])));
    let mut link = Node::new(b"\xff-link".to_vec(), NodeType::Symlink);
    link.link_target = b"../file.txt".to_vec();
    Tree { nodes: vec![file, dir, link, Node::new(b"dev".to_vec(), NodeType::CharDev)] }
}

fn snapshot() -> Snapshot {
    Snapshot {
        time_ns: 1_700_000_000_000_000_000,
        tree: TreeId(Id([9; 32])),
        parent: Some(SnapshotId(Id([10; 32]))),
        hostname: "host".into(),
        username: "user".into(),
        program: "ferry 0.1.0".into(),
        paths: vec![b"/srv/data".to_vec(), b"/dev/vdb".to_vec()],
        tags: vec![("namespace".into(), "prod".into()), ("pvc".into(), "db".into())],
        summary: Summary { files_new: 3, bytes_read: 1 << 20, duration_ns: 5_000_000, ..Summary::default() },
    }
}

/// A pack header payload listing blobs of these stored lengths.
fn header_payload(stored: &[u32]) -> Vec<u8> {
    let mut p = (stored.len() as u32).to_le_bytes().to_vec();
    for (i, s) in stored.iter().enumerate() {
        p.push((i % 2) as u8);
        p.extend_from_slice(&[i as u8 + 1; 32]);
        p.extend_from_slice(&s.to_le_bytes());
        p.extend_from_slice(&s.saturating_sub(29).to_le_bytes());
    }
    p
}

fn pack(blob_area: &[u8], payload: &[u8]) -> Vec<u8> {
    let header = pack_header_seal(&master(), &SALT, payload);
    cat(&[blob_area, &header, &SALT, &(header.len() as u32).to_le_bytes(), b"FERRYPAK"])
}

fn main() {
    let root = Path::new("seeds");
    let mut n = 0;
    let mut put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), bytes).unwrap();
        n += 1;
    };
    let mk = master();

    let tiny = KdfParams::insecure_for_tests();
    put("keyfile", "stored-tiny", &cat(&[&[0], &keyfile_create(&mk, PASSWORD, tiny, 42, "host@user").unwrap()]));
    let default = keyfile_create(&mk, b"other", KdfParams::default(), 42, "").unwrap();
    put("keyfile", "stored-default-cost", &cat(&[&[0], &default]));
    put("keyfile", "round-trip", &cat(&[&[1, 0, 1, 16], &7u32.to_le_bytes(), &[0x35; 4], b"host@user"]));

    let config = config_encode(&config());
    let index_payload = index().encode();
    let snapshot = snapshot().encode().unwrap();
    put("config", "default", &config);
    put("config", "extension", &cat(&[&config, b"future"]));
    for (t, name, payload) in [(1u8, "config", &config), (2, "index", &index_payload), (3, "snapshot", &snapshot)] {
        put("object", &format!("stored-{name}"), &cat(&[&[0, t], &object_seal(&mk, t, payload, 3).unwrap()]));
        put("object", &format!("sealed-{name}"), &cat(&[&[7, t], payload]));
    }

    put("index", "two-packs", &index_payload);
    put("index", "empty", &IndexFile::default().encode());
    let mut superseding = index();
    superseding.supersedes = vec![repo_format::IndexId(Id([11; 32]))];
    put("index", "supersedes", &superseding.encode());

    let trailer = cat(&[&SALT, &131u32.to_le_bytes(), b"FERRYPAK"]);
    put("pack_trailer", "trailer", &trailer);

    let stored = [100u32, 60, 29];
    let payload = header_payload(&stored);
    let area: Vec<u8> = (0..189u32).map(|i| i as u8).collect();
    let whole = pack(&area, &payload);
    let header = &whole[area.len()..whole.len() - 44];
    put("pack_header", "sealed", &cat(&[&189u64.to_le_bytes(), &[1], &payload]));
    put("pack_header", "sealed-empty", &cat(&[&0u64.to_le_bytes(), &[1], &header_payload(&[])]));
    put("pack_header", "stored", &cat(&[&189u64.to_le_bytes(), &[0], header]));
    put("pack", "stored", &cat(&[&[0], &whole]));
    put("pack", "assembled", &cat(&[&[1], &189u16.to_le_bytes(), &[0], &area, &payload]));

    let marker = repo_format::Marker {
        mark_time_ns: 1_700_000_000_000_000_000,
        grace_ns: repo_format::DEFAULT_GC_GRACE_NS,
        packs: vec![repo_format::PackId(Id([1; 32])), repo_format::PackId(Id([2; 32]))],
        superseded: vec![repo_format::IndexId(Id([3; 32]))],
        snapshots: vec![repo_format::SnapshotId(Id([4; 32]))],
        indexes: vec![repo_format::IndexId(Id([3; 32])), repo_format::IndexId(Id([5; 32]))],
    };
    put("marker", "two-packs", &marker.encode());
    put("marker", "empty", &repo_format::Marker::default().encode());
    put("object", "stored-marker", &cat(&[&[0, 6], &object_seal(&mk, 6, &marker.encode(), 3).unwrap()]));

    let tree = tree().encode().unwrap();
    put("tree", "four-nodes", &tree);
    put("tree", "empty", &Tree::default().encode().unwrap());
    put("segment_list", "three", &encode_segment_list(&segments()));
    put("segment_list", "empty", &encode_segment_list(&[]));
    put("snapshot", "full", &snapshot);
    put("snapshot", "default", &Snapshot::default().encode().unwrap());

    for (name, data, level) in [
        ("zstd-text", b"the quick brown fox jumps over the lazy dog ".repeat(20), 3),
        ("zstd-zeros", vec![0; 3000], 1),
        ("raw", b"short".to_vec(), 0),
    ] {
        let mut p = Vec::new();
        compress_into(&data, level, &mut p);
        put("compress", name, &p);
    }
    put("compress", "zstd-tree", &{
        let mut p = Vec::new();
        compress_into(&tree, 3, &mut p);
        p
    });

    let id = Id([0xab; 32]);
    for (name, kind) in [
        ("key", repo_format::FileKind::Key),
        ("snapshot", repo_format::FileKind::Snapshot),
        ("index", repo_format::FileKind::Index),
        ("pack", repo_format::FileKind::Pack),
    ] {
        put("listing", name, path_of(kind, &id).as_bytes());
    }
    put("listing", "staging", format!("data/ab/{}#3", id.to_hex()).as_bytes());
    put("listing", "config", b"config");
    println!("{n} seeds under {}", root.display());
}
