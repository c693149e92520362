//! `ferry cat`: print internal objects (decrypted) for inspection and debugging.

use anyhow::{Context, Result, bail};
use repo_format::{Content, IndexId, Segment, TreeId};

use crate::cli::{CatArgs, CatKind, Cli};
use crate::output::print_json;
use crate::repo;
use ferry_engine::select;

pub async fn run(cli: &Cli, a: &CatArgs) -> Result<i32> {
    let r = repo::open(cli).await?;
    let v = match a.kind {
        CatKind::Config => {
            let c = r.config();
            serde_json::json!({
                "id": c.repo_id.to_hex(), "version": repo_format::FORMAT_VERSION, "created": super::time_str(c.created_ns),
                "chunker": { "algorithm": "fastcdc-2020", "min": c.chunker.min, "avg": c.chunker.avg, "max": c.chunker.max },
                "disk_chunk_size": c.fixed_chunk_size, "compression_level": c.compression_level, "pack_size": c.pack_size,
            })
        }
        CatKind::Snapshot => {
            let spec = a.id.as_deref().context("cat snapshot needs an id (or `latest`)")?;
            let (id, s) = select::find(&r, spec, &Default::default()).await?;
            serde_json::json!({
                "id": id.to_string(), "time": super::time_str(s.time_ns), "time_ns": s.time_ns, "tree": s.tree.to_string(),
                "parent": s.parent.map(|p| p.to_string()), "hostname": s.hostname, "username": s.username, "program": s.program,
                "paths": s.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>(),
                "tags": s.tags.iter().map(|(k, v)| serde_json::json!({ "key": k, "value": v })).collect::<Vec<_>>(),
                "summary": crate::output::summary_json(&s.summary),
            })
        }
        CatKind::Index => {
            let id: IndexId = a.id.as_deref().context("cat index needs an index id")?.parse()?;
            let f = r.read_index_file(&id).await?;
            serde_json::json!({
                "packs": f.packs.iter().map(|p| serde_json::json!({
                    "id": p.id.to_string(),
                    "blobs": p.blobs.iter().map(|b| serde_json::json!({
                        "id": b.id.to_string(), "type": b.kind.to_string(), "offset": b.offset,
                        "length": b.stored_len, "raw_length": b.raw_len,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "supersedes": f.supersedes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            })
        }
        CatKind::Tree => {
            let spec = a.id.as_deref().context("cat tree needs a tree id or SNAPSHOT[:PATH]")?;
            r.load_index().await?;
            let tree_id = if spec.len() == 64 && !spec.contains(':') {
                spec.parse::<TreeId>()?
            } else {
                let (snap, path) = spec.split_once(':').unwrap_or((spec, ""));
                let (_, s) = select::find(&r, snap, &Default::default()).await?;
                ferry_engine::select::subtree(&r, s.tree, path).await?
            };
            let t = r.read_tree(&tree_id).await?;
            serde_json::json!({ "id": tree_id.to_string(), "nodes": t.nodes.iter().map(|n| serde_json::json!({
                "name": String::from_utf8_lossy(&n.name), "name_hex": hex::encode(&n.name),
                "type": crate::output::node_type(n.kind), "mode": format!("{:o}", n.mode),
                "uid": n.uid, "gid": n.gid, "size": n.size, "mtime_ns": n.mtime_ns, "ctime_ns": n.ctime_ns,
                "inode": n.ino, "device": n.dev, "links": n.nlink, "rdev": n.rdev,
                "link_target": String::from_utf8_lossy(&n.link_target),
                "xattrs": n.xattrs.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), hex::encode(v))).collect::<std::collections::BTreeMap<_, _>>(),
                "content": match &n.content {
                    Content::None => serde_json::Value::Null,
                    Content::Tree(t) => serde_json::json!({ "subtree": t.to_string() }),
                    Content::Segments(s) => serde_json::Value::Array(s.iter().map(|s| match s {
                        Segment::Blob { id, len } => serde_json::json!({ "blob": id.to_string(), "length": len }),
                        Segment::Zero { len } => serde_json::json!({ "zero": len }),
                        Segment::Indirect { id, len } => serde_json::json!({ "indirect": id.to_string(), "length": len }),
                    }).collect()),
                },
            })).collect::<Vec<_>>() })
        }
    };
    if cli.json {
        print_json(&v);
    } else {
        match serde_json::to_string_pretty(&v) {
            Ok(s) => println!("{s}"),
            Err(e) => bail!("formatting: {e}"),
        }
    }
    Ok(crate::exit::OK)
}
