//! README claims about disks that the tests above do not cover: `--allocated-blocks` reads only
//! the listed chunks and stores every other chunk as zeros without reading it (JSON and text
//! lists, a device and an image, `--assume-zeroed`), and zero chunks are never stored (neither
//! holes nor zeros written out on disk add to the repository).

use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{Env, Loop, allocated, pseudo_random, same_bytes, sparse};

/// The repository's disk chunk size (the `init` default, 256 KiB).
const C: u64 = 256 << 10;

fn write_at(path: &Path, off: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, off).unwrap();
    f.sync_all().unwrap();
}

fn num(s: &serde_json::Value, field: &str) -> u64 {
    s[field].as_u64().unwrap_or_else(|| panic!("{field} in {s}"))
}

/// Total size of the files of a directory tree (a repository's stored bytes).
fn tree_bytes(root: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        n += if md.is_dir() { tree_bytes(&e.path()) } else { md.len() };
    }
    n
}

/// `image` with every chunk but `keep` zeroed: what a snapshot taken with an allocated-block
/// list touching exactly the chunks `keep` must restore to.
fn only_chunks(image: &[u8], keep: &[u64]) -> Vec<u8> {
    let mut out = vec![0u8; image.len()];
    for &i in keep {
        let r = (i * C) as usize..(((i + 1) * C) as usize).min(image.len());
        out[r.clone()].copy_from_slice(&image[r]);
    }
    out
}

#[test]
fn allocated_block_list_reads_only_listed_chunks_and_the_rest_is_zeros() {
    if !super::can_run() {
        return;
    }
    let e = Env::new();
    let size = 64u64 << 20;
    let img = e.p("vol.img");
    sparse(&img, size);
    let dev = Loop::new(&img);
    // Data the list covers: chunks 4-5 (one range across a chunk boundary) and 40.
    write_at(Path::new(&dev.0), 4 * C + 1000, &pseudo_random(1, (C + 50_000) as usize));
    write_at(Path::new(&dev.0), 40 * C + 4096, &pseudo_random(2, 4096));
    // Stale bytes outside the list (a CSI driver reports them unallocated): never read.
    write_at(Path::new(&dev.0), 20 * C, &pseudo_random(3, C as usize));
    write_at(Path::new(&dev.0), 120 * C + 100, b"stale");
    write_at(Path::new(&dev.0), size - 1, b"x");
    // GetMetadataAllocated output as protobuf's JSON mapping writes it (camelCase, 64-bit
    // numbers as strings), two streamed messages; the second lists an allocated all-zero chunk.
    let list = e.p("allocated.json");
    std::fs::write(
        &list,
        format!(
            "{{\"blockMetadataType\":\"VARIABLE_LENGTH\",\"volumeCapacityBytes\":\"{size}\",\
             \"blockMetadata\":[{{\"byteOffset\":\"{}\",\"sizeBytes\":\"{}\"}}]}}\n\
             {{\"block_metadata\":[{{\"byte_offset\":{},\"size_bytes\":4096}},{{\"byte_offset\":{},\"size_bytes\":{C}}}]}}\n",
            4 * C + 1000,
            C + 50_000,
            40 * C + 4096,
            80 * C
        ),
    )
    .unwrap();
    let s = e.summary(&["backup", &dev.0, "--allocated-blocks", list.to_str().unwrap()]);
    assert_eq!(num(&s, "bytes_read"), 4 * C, "chunks 4, 5, 40 and 80 are read, nothing else: {s}");
    assert_eq!(num(&s, "bytes_total"), size, "{s}");
    assert_eq!(num(&s, "data_blobs_added"), 3, "the listed zero chunk is not stored: {s}");
    let added = num(&s, "bytes_added");
    assert!((3 * C..3 * C + (16 << 10)).contains(&added), "3 chunks and a tree added, not {added}: {s}");

    let source = std::fs::read(&dev.0).unwrap();
    let expected = only_chunks(&source, &[4, 5, 40]);
    assert_ne!(source, expected, "the device holds data outside the list");
    // To a sparse file.
    let out = e.p("restored.img");
    let r = e.summary(&["restore", "latest", "--target", out.to_str().unwrap(), "--verify"]);
    assert_eq!(r["verified"], true, "{r}");
    assert!(std::fs::read(&out).unwrap() == expected, "the restored image is not the listed chunks and zeros");
    assert!(allocated(&out) <= 3 * C + (1 << 20), "unlisted chunks are holes, {} bytes allocated", allocated(&out));
    // To a device holding garbage: unlisted chunks are zeroed ...
    let garbage = pseudo_random(9, size as usize);
    let img2 = e.p("dst.img");
    std::fs::write(&img2, &garbage).unwrap();
    let dst = Loop::new(&img2);
    e.summary(&["restore", "latest", "--target", &dst.0, "--verify"]);
    assert!(std::fs::read(&dst.0).unwrap() == expected, "the restored device is not the listed chunks and zeros");
    // ... unless --assume-zeroed says the device already reads as zeros.
    write_at(Path::new(&dst.0), 0, &garbage);
    e.summary(&["restore", "latest", "--target", &dst.0, "--assume-zeroed"]);
    let got = std::fs::read(&dst.0).unwrap();
    let chunk = |b: &[u8], i: u64| b[(i * C) as usize..((i + 1) * C) as usize].to_vec();
    for i in [4, 5, 40] {
        assert!(chunk(&got, i) == chunk(&expected, i), "chunk {i} was not written");
    }
    for i in [0, 20, 80, 255] {
        assert!(chunk(&got, i) == chunk(&garbage, i), "chunk {i} was written despite --assume-zeroed");
    }
}

#[test]
fn allocated_block_text_list_on_an_image_and_a_list_beyond_the_disk() {
    if !super::can_run() {
        return;
    }
    let e = Env::new();
    let img = e.p("disk.img");
    let data = pseudo_random(5, 16 << 20);
    std::fs::write(&img, &data).unwrap();
    let list = e.p("allocated.txt");
    std::fs::write(&list, "# OFFSET LENGTH\n0x100000 0x40000\n3145728 1   # one byte of chunk 12\n").unwrap();
    let s = e.summary(&["backup", img.to_str().unwrap(), "--allocated-blocks", list.to_str().unwrap()]);
    assert_eq!(num(&s, "bytes_read"), 2 * C, "{s}");
    assert_eq!(num(&s, "data_blobs_added"), 2, "{s}");
    let out = e.p("out.img");
    e.summary(&["restore", "latest", "--target", out.to_str().unwrap(), "--verify"]);
    assert!(std::fs::read(&out).unwrap() == only_chunks(&data, &[4, 12]), "restored image differs");

    // A list reaching past the end of the disk is refused before anything is written.
    let snaps = std::fs::read_dir(e.p("repo/snapshots")).unwrap().count();
    std::fs::write(&list, format!("{} 2\n", (16 << 20) - 1)).unwrap();
    let out =
        e.ferry(&["backup", img.to_str().unwrap(), "--allocated-blocks", list.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("reaches byte {}, beyond the disk's {} bytes", (16 << 20) + 1, 16 << 20)), "{err}");
    assert_eq!(std::fs::read_dir(e.p("repo/snapshots")).unwrap().count(), snaps, "a snapshot was written");
}

#[test]
fn zero_chunks_are_never_stored() {
    if !super::can_run() {
        return;
    }
    let e = Env::new();
    // An image: 256 MiB, holes except 64 MiB of zeros written out (allocated on disk, so read)
    // and 1 MiB of data.
    let img = e.p("zeros.img");
    sparse(&img, 256 << 20);
    write_at(&img, 32 << 20, &vec![0u8; 64 << 20]);
    let data = pseudo_random(6, 1 << 20);
    write_at(&img, 128 << 20, &data);
    assert!(allocated(&img) >= 65 << 20, "the written zeros must be allocated, not holes");
    let before = tree_bytes(&e.p("repo"));
    let s = e.summary(&["backup", img.to_str().unwrap()]);
    assert_eq!(num(&s, "bytes_read"), 65 << 20, "holes are not read, written zeros are: {s}");
    assert_eq!(num(&s, "data_blobs_added"), 4, "only the 4 data chunks are stored: {s}");
    let added = num(&s, "bytes_added");
    assert!(((1 << 20)..(1 << 20) + (16 << 10)).contains(&added), "4 chunks and a tree added: {s}");
    let growth = tree_bytes(&e.p("repo")) - before;
    assert!(((1 << 20)..(1 << 20) + (16 << 10)).contains(&growth), "the repository grew by {growth} bytes");
    assert_eq!(growth, num(&s["requests"], "bytes_up"), "growth is what was uploaded: {s}");
    let out = e.p("out.img");
    e.summary(&["restore", "latest", "--target", out.to_str().unwrap(), "--verify"]);
    assert!(same_bytes(&img, &out));
    assert!(allocated(&out) <= (1 << 20) + (1 << 20), "zero chunks restore as holes: {} allocated", allocated(&out));

    // A block device has no holes to skip: it is read whole, and still only data is stored.
    let vol = e.p("vol.img");
    sparse(&vol, 128 << 20);
    let dev = Loop::new(&vol);
    write_at(Path::new(&dev.0), 100 << 20, &pseudo_random(7, 512 << 10));
    let before = tree_bytes(&e.p("repo"));
    let s = e.summary(&["backup", &dev.0]);
    assert_eq!(num(&s, "bytes_read"), 128 << 20, "{s}");
    assert_eq!(num(&s, "data_blobs_added"), 2, "{s}");
    let growth = tree_bytes(&e.p("repo")) - before;
    assert!(((512 << 10)..(512 << 10) + (16 << 10)).contains(&growth), "the repository grew by {growth} bytes");
    assert_eq!(growth, num(&s["requests"], "bytes_up"), "growth is what was uploaded: {s}");
}
