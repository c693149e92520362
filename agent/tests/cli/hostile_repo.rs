//! A hostile repository: objects forged (with the library and the password, or by someone who
//! only controls the bucket) to exhaust memory or time, or to make a root restore plant device
//! nodes, setuid programs or a fake `latest`. Each test names the attack it guards against and
//! asserts the documented exit code, the message, and that memory stayed under a set bound
//! (`prlimit --as`: an allocation beyond it fails and kills the process instead).

use std::path::Path;

use repo_format::{
    BlobKind, BlobLocation, Content, FileKind, Id, IndexFile, IndexPack, Node, NodeType, PackEntry, Segment,
    encode_segment_list,
};

use crate::common::forge::{Forge, T0, ferry_capped, special};
use crate::common::{Env, stderr};

/// Address space allowed to a command that must stay small: the attacks below would need
/// gigabytes; a normal `ferry` of this size needs a few hundred MiB of address space.
const SMALL_AS: u64 = 1536 << 20;

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// Write `len` junk bytes as a file (sparse: costs no disk).
fn junk_object(path: &Path, len: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"junk", 0).unwrap();
}

#[test]
fn huge_junk_objects_under_valid_names_are_refused_unread() {
    if crate::common::under_qemu() {
        return;
    }
    // Before: index and snapshot objects were read whole before their hash was checked, 16 at
    // a time: one 6 GiB junk object cost 6.3 GB of memory.
    let env = Env::new();
    let src = env.path("src");
    crate::common::write(&src.join("f"), b"data");
    env.backup(&src, &[]);
    let hex = Id([0x5a; 32]).to_hex();
    junk_object(&env.repo.join("snapshots").join(&hex), 3 << 30);
    let out = ferry_capped(&env, SMALL_AS, &["snapshots"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "a junk snapshot object is left out, the rest listed: {err}");
    assert!(err.contains(&format!("snapshot {}", &hex[..8])) && err.contains("left out"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 snapshots"));

    junk_object(&env.repo.join("index").join(&hex), 3 << 30);
    let out = ferry_capped(&env, SMALL_AS, &["restore", "latest", "--target", env.path("t").to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(13), "a junk index object is corruption, named: {err}");
    assert!(err.contains(&format!("index {hex}")) && err.contains("over the"), "{err}");
}

#[test]
fn planted_key_files_cost_bounded_time_and_memory() {
    if crate::common::under_qemu() {
        return;
    }
    // Before: key files with the largest Argon2 cost the format allowed (4 GiB, 64 passes) were
    // tried before the real one, any number of them: minutes and 4 GB each, without a password.
    let env = Env::new();
    let key = std::fs::read_dir(env.repo.join("keys")).unwrap().next().unwrap().unwrap().path();
    let real = std::fs::read(&key).unwrap();
    let plant = |m: u32, t: u32, salt: u8| {
        let mut k = real.clone();
        k[12..16].copy_from_slice(&m.to_le_bytes());
        k[16..20].copy_from_slice(&t.to_le_bytes());
        k[24] = salt;
        std::fs::write(env.repo.join("keys").join(Id::of_stored(&k).to_hex()), &k).unwrap();
    };
    for i in 0..20 {
        plant(4 << 20, 64, i); // the old ceiling: refused before any work now
    }
    for i in 0..4 {
        plant(1 << 20, 4, 100 + i); // the new ceiling: 1 GiB, 4 passes
    }
    // The right password opens with the cheap real key first: no planted key is run.
    let out = ferry_capped(&env, SMALL_AS, &["snapshots"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A wrong password runs at most the unlock budget (two of the 1 GiB keys), then says so.
    let t = std::time::Instant::now();
    let out = env.ferry_pw("wrong").args(["snapshots"]).timeout(std::time::Duration::from_secs(300)).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(12), "{err}");
    assert!(err.contains("unlock budget") && err.contains("of the 25 key files"), "{err}");
    eprintln!("wrong password with 24 planted key files: {:.1} s", t.elapsed().as_secs_f64());
}

#[test]
fn a_tree_whose_subtrees_repeat_hits_the_plan_budget() {
    if crate::common::under_qemu() {
        return;
    }
    // Before: a few KB of trees whose entries all point to the same subtree, nested, expanded to
    // billions of entries and drove the restore to the OOM killer.
    let env = Env::empty();
    let f = Forge::init(&env);
    let mut sub = f.tree(vec![f.file(b"leaf", b"x")]);
    for level in 0..4 {
        let nodes = (0..300).map(|i| Forge::dir_node(format!("d{level}-{i:03}").as_bytes(), sub)).collect();
        sub = f.tree(nodes);
    }
    f.snapshot(sub, T0, "dag");
    let target = env.path("t");
    let args = ["restore", "latest", "--max-plan-memory", "256", "--target", target.to_str().unwrap()];
    let out = ferry_capped(&env, SMALL_AS, &args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("restore plan needs more than") && err.contains("--max-plan-memory"), "{err}");
    assert!(!target.exists() || crate::common::list_tree(&target).is_empty(), "nothing restored from a refused plan");
}

#[test]
fn indirect_segment_lists_expanded_per_file_hit_the_plan_budget() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::empty();
    let f = Forge::init(&env);
    let data = f.w.save(BlobKind::Data, b"z").unwrap().id;
    // One list of 100,000 one-byte segments, referenced 1,000 times by each of 100 files.
    let list = f.raw_tree_blob(&encode_segment_list(&vec![Segment::Blob { id: data, len: 1 }; 100_000]));
    let files = (0..100)
        .map(|i| {
            let mut n = Node::new(format!("f{i}").into_bytes(), NodeType::File);
            n.mode = 0o644;
            n.size = 100_000 * 1000;
            n.content = Content::Segments(vec![Segment::Indirect { id: list, len: 100_000 }; 1000]);
            n
        })
        .collect();
    let root = f.tree(files);
    f.snapshot(root, T0, "indirect");
    let t = env.path("t");
    let args = ["restore", "latest", "--max-plan-memory", "256", "--target", t.to_str().unwrap()];
    let out = ferry_capped(&env, SMALL_AS, &args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("restore plan needs more than"), "{err}");
}

#[test]
fn forged_lengths_in_index_and_tree_are_corruption() {
    if crate::common::under_qemu() {
        return;
    }
    // Before: an index entry could claim a 4 GiB blob (read and decrypted whole), and a tree's
    // entry count pre-allocated up to 3 GB of nodes.
    let env = Env::empty();
    let f = Forge::init(&env);
    let mut forged = f.tree(vec![f.file(b"a", b"aaaa")]);
    // A tree blob whose count claims as many entries as its bytes / 4.
    let mut bytes = repo_format::Tree { nodes: vec![f.file(b"b", b"bb")] }.encode().unwrap();
    bytes.resize(64 << 10, 0);
    let count = (bytes.len() / 4 - 1) as u32;
    bytes[..4].copy_from_slice(&count.to_le_bytes());
    let bad_tree = f.raw_tree_blob(&bytes);
    forged = f.tree(vec![f.dir(b"ok", vec![]), Forge::dir_node(b"bad", bad_tree), Forge::dir_node(b"root", forged)]);
    let repo = f.repo.clone();
    f.snapshot(forged, T0, "lengths");
    let target = env.path("t");
    let out = ferry_capped(&env, SMALL_AS, &["restore", "latest", "--target", target.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(13), "{err}");
    assert!(err.contains("tree") && err.contains("count"), "{err}");

    // An index object listing a 4 GiB blob.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let loc: BlobLocation = repo.index().iter().next().unwrap().1;
        let file = IndexFile {
            packs: vec![IndexPack {
                id: loc.pack,
                salt: loc.salt,
                blobs: vec![PackEntry {
                    kind: BlobKind::Data,
                    id: repo_format::BlobId(Id([0xab; 32])),
                    offset: 0,
                    stored_len: u32::MAX,
                    raw_len: u32::MAX,
                }],
            }],
            supersedes: vec![],
        };
        repo.save_index(&file).await.unwrap();
    });
    let out = ferry_capped(&env, SMALL_AS, &["restore", "latest", "--target", target.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(13), "{err}");
    assert!(err.contains("over the blob size limit"), "{err}");
}

#[test]
fn root_restore_refuses_devices_and_setuid_unless_asked() {
    if crate::common::under_qemu() {
        return;
    }
    // Before: a forged snapshot restored as root created device nodes (0666) giving the
    // target's users the node's raw devices, and setuid-root programs.
    let env = Env::empty();
    let f = Forge::init(&env);
    let mut suid = f.file(b"suid", b"#!/bin/sh\n");
    suid.mode = 0o6755;
    let nodes = vec![
        special(b"mem", NodeType::CharDev, 0o666, nix::sys::stat::makedev(1, 1)),
        special(b"disk", NodeType::BlockDev, 0o666, nix::sys::stat::makedev(7, 0)),
        special(b"fifo", NodeType::Fifo, 0o4644, 0),
        suid,
    ];
    let root = f.tree(nodes);
    f.snapshot(root, T0, "devices");
    use std::os::unix::fs::PermissionsExt;
    let t1 = env.path("t1");
    let out = env.restore("latest", &t1, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "refused entries make a partial restore: {err}");
    assert!(err.contains("mem: device node refused") && err.contains("disk: device node refused"), "{err}");
    assert!(!t1.join("mem").exists() && !t1.join("disk").exists());
    assert_eq!(std::fs::metadata(t1.join("suid")).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::symlink_metadata(t1.join("fifo")).unwrap().permissions().mode() & 0o7777, 0o644);

    let t2 = env.path("t2");
    let out = env.restore("latest", &t2, &["--allow-devices", "--keep-setuid"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(t2.join("mem")).unwrap().file_type().is_char_device());
    assert!(std::fs::symlink_metadata(t2.join("disk")).unwrap().file_type().is_block_device());
    assert_eq!(std::fs::metadata(t2.join("suid")).unwrap().permissions().mode() & 0o7777, 0o6755);
}

#[test]
fn a_snapshot_from_the_future_does_not_become_latest() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::empty();
    let f = Forge::init(&env);
    let root = f.tree(vec![f.file(b"which", b"present")]);
    f.snapshot(root, now_ns() - 1_000_000_000, "honest");
    let f = Forge::open(&env);
    let root = f.tree(vec![f.file(b"which", b"forged")]);
    let future = f.snapshot(root, now_ns() + 10 * 365 * 86_400 * 1_000_000_000, "forger");
    let t = env.path("t");
    let out = env.restore("latest", &t, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(std::fs::read(t.join("which")).unwrap(), b"present");
    assert!(err.contains(&future.0.short()) && err.contains("dated in the future"), "{err}");
    // By id it is still reachable.
    let t2 = env.path("t2");
    assert_eq!(env.restore(&future.0.to_hex(), &t2, &[]).status.code(), Some(0));
    assert_eq!(std::fs::read(t2.join("which")).unwrap(), b"forged");
}

#[test]
fn a_file_whose_content_fails_is_emptied_and_listed() {
    if crate::common::under_qemu() {
        return;
    }
    // Before: a restored file whose blob failed was left zero-filled with its original size and
    // time, looking complete; a file whose segments do not add up to its size was restored.
    let env = Env::new();
    let src = env.path("src");
    crate::common::write(&src.join("good"), &crate::common::random_bytes("good", 100_000));
    crate::common::write(&src.join("bad"), &crate::common::random_bytes("bad", 300_000));
    env.backup(&src, &[]);
    // Damage one byte of the 'bad' file's first blob in its pack.
    let f = Forge::open(&env);
    // The largest data blob holds (the start of) 'bad': chunks are at least 256 KiB.
    let (_, loc) =
        f.repo.index().iter().filter(|(_, l)| l.kind == BlobKind::Data).max_by_key(|(_, l)| l.raw_len).unwrap();
    let pack = env.repo.join(repo_format::path_of(FileKind::Pack, &loc.pack.0));
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[loc.offset as usize + 20] ^= 0xff;
    std::fs::write(&pack, &bytes).unwrap();
    drop(f);
    let t = env.path("t");
    let out = env.ferry().args(["restore", "latest", "--json", "--target"]).arg(&t).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let summary = crate::common::summary_of(&out.stdout);
    assert_eq!(summary["incomplete_files"], 1, "{summary}");
    let lines: Vec<_> = crate::common::json_lines(&out.stdout);
    assert!(
        lines.iter().any(|l| l["error"].as_str().is_some_and(|e| e.contains("bad: content incomplete"))),
        "{lines:?}"
    );
    assert_eq!(std::fs::metadata(t.join("bad")).unwrap().len(), 0, "an incomplete file must not look restored");
    assert_eq!(std::fs::read(t.join("good")).unwrap(), crate::common::random_bytes("good", 100_000));
}

#[test]
fn a_file_whose_segments_do_not_cover_its_size_is_refused() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::empty();
    let f = Forge::init(&env);
    let mut short = f.file(b"short", b"12345");
    short.size = 1 << 40; // a terabyte announced, five bytes stored
    let root = f.tree(vec![short, f.file(b"fine", b"fine")]);
    f.snapshot(root, T0, "sizes");
    let t = env.path("t");
    let out = env.restore("latest", &t, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("short: its content covers 5 bytes but its size is 1099511627776"), "{err}");
    assert!(!t.join("short").exists());
    assert_eq!(std::fs::read(t.join("fine")).unwrap(), b"fine");
}

#[test]
fn repository_strings_never_reach_the_terminal_raw() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::empty();
    let f = Forge::init(&env);
    let mut link = special(b"l\x1b[2J", NodeType::Symlink, 0o777, 0);
    link.link_target = b"\x1b]0;pwned\x07".to_vec();
    let root = f.tree(vec![link]);
    f.snapshot(root, T0, "host\x1b[31mred\u{9b}");
    for args in [&["snapshots"][..], &["ls", "-l", "latest"]] {
        let out = env.ferry().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains('\x1b') && !text.contains('\u{9b}') && !text.contains('\x07'), "{args:?}: {text:?}");
        assert!(text.contains("\\u{1b}"), "{args:?}: escaped, not dropped: {text}");
    }
}

#[test]
fn junk_and_nested_object_names_are_ignored() {
    if crate::common::under_qemu() {
        return;
    }
    // Before: one stray name in a listed folder broke every command.
    let env = Env::new();
    let src = env.path("src");
    crate::common::write(&src.join("f"), b"data");
    env.backup(&src, &[]);
    let hex = Id([0x77; 32]).to_hex();
    for rel in [
        "snapshots/README".to_string(),
        format!("snapshots/sub/{hex}"),
        format!("index/nested/{hex}"),
        format!("keys/x/{hex}"),
        format!("data/zz/{hex}"),
        format!("data/77/{}", hex.to_uppercase()),
    ] {
        crate::common::write(&env.repo.join(rel), b"junk");
    }
    let out = env.ferry().args(["snapshots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let t = env.path("t");
    let out = env.restore("latest", &t, &["--verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(t.join("f")).unwrap(), b"data");
}

#[test]
fn a_fifo_planted_under_a_packs_name_fails_the_restore_without_waiting() {
    // Before: object_store's local backend opened the FIFO for reading and waited forever for a
    // writer; a restore (trees are read from packs) hung, as did anything reading that pack.
    let env = Env::new();
    let src = env.path("src");
    crate::common::write(&src.join("f"), b"data");
    env.backup(&src, &[]);
    let mut packs = 0;
    for dir in std::fs::read_dir(env.repo.join("data")).unwrap() {
        for pack in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let pack = pack.unwrap().path();
            std::fs::remove_file(&pack).unwrap();
            nix::unistd::mkfifo(&pack, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            packs += 1;
        }
    }
    assert!(packs > 0);
    let target = env.path("t");
    let out = env
        .ferry()
        .args(["restore", "latest", "--target", target.to_str().unwrap()])
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(13), "a FIFO for a pack is corruption, named: {err}");
    assert!(err.contains("not a regular file"), "{err}");
}
