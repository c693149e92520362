//! `ferry ls`: the entries of a snapshot, recursively, optionally below a path.

use std::path::{Path, PathBuf};

use anyhow::Result;
use repo_format::{Content, Node, NodeType};

use crate::cli::{Cli, LsArgs};
use crate::output::print_json;
use crate::repo;
use ferry_engine::fsmeta::path_of;
use ferry_engine::select;

fn type_char(k: NodeType) -> char {
    match k {
        NodeType::File => '-',
        NodeType::Dir => 'd',
        NodeType::Symlink => 'l',
        NodeType::Fifo => 'p',
        NodeType::CharDev => 'c',
        NodeType::BlockDev => 'b',
        NodeType::Socket => 's',
    }
}

pub async fn run(cli: &Cli, a: &LsArgs) -> Result<i32> {
    let r = repo::open(cli).await?;
    // Listing reads trees only.
    r.load_index_selecting(repo_format::Selection::Trees).await?;
    let (id, snap) = select::find(&r, &a.snapshot, &a.filter.filter()).await?;
    let base = PathBuf::from(a.path.as_deref().unwrap_or("").trim_matches('/'));
    let start = select::subtree(&r, snap.tree, &base.to_string_lossy()).await?;
    if cli.json {
        print_json(
            &serde_json::json!({ "message_type": "snapshot", "id": id.to_string(), "time": super::time_str(snap.time_ns) }),
        );
    }
    let mut stack = vec![(start, base)];
    while let Some((tree_id, dir)) = stack.pop() {
        let tree = r.read_tree(&tree_id).await?;
        for n in tree.nodes.iter().rev() {
            if let (NodeType::Dir, Content::Tree(t)) = (n.kind, &n.content) {
                stack.push((*t, dir.join(path_of(&n.name))));
            }
        }
        for n in &tree.nodes {
            print_node(cli.json, a.long, &dir.join(path_of(&n.name)), n);
        }
    }
    Ok(crate::exit::OK)
}

fn print_node(json: bool, long: bool, p: &Path, n: &Node) {
    let raw = format!("/{}", p.display());
    // One line per entry for people: newlines and other control characters escaped (JSON
    // output carries the name as it is).
    let path = if json { raw } else { crate::output::escape(&raw).into_owned() };
    if json {
        print_json(&serde_json::json!({
            "message_type": "node", "path": path, "type": crate::output::node_type(n.kind),
            "mode": n.mode, "uid": n.uid, "gid": n.gid, "size": n.size, "mtime_ns": n.mtime_ns,
            "link_target": (n.kind == NodeType::Symlink).then(|| String::from_utf8_lossy(&n.link_target).into_owned()),
        }));
    } else if long {
        let target = if n.kind == NodeType::Symlink {
            format!(" -> {}", crate::output::escape(&String::from_utf8_lossy(&n.link_target)))
        } else {
            String::new()
        };
        println!(
            "{}{:04o} {:>6} {:>6} {:>12} {} {path}{target}",
            type_char(n.kind),
            n.mode,
            n.uid,
            n.gid,
            n.size,
            super::time_str(n.mtime_ns)
        );
    } else {
        println!("{path}");
    }
}
