//! `ferry snapshots`: list snapshots matching the filters, oldest first.

use anyhow::Result;

use crate::cli::{Cli, FilterArgs};
use crate::output::{escape, print_json};
use crate::repo;
use ferry_engine::select;

pub async fn run(cli: &Cli, f: &FilterArgs) -> Result<i32> {
    let f = &f.filter();
    let r = repo::open(cli).await?;
    let mut rows = Vec::new();
    for (id, s) in r.snapshots().await? {
        if select::matches(&s, f)? {
            rows.push((id, s));
        }
    }
    if cli.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(id, s)| {
                serde_json::json!({
                    "id": id.to_string(), "short_id": id.0.short(), "time": super::time_str(s.time_ns),
                    "time_ns": s.time_ns, "tree": s.tree.to_string(), "parent": s.parent.map(|p| p.to_string()),
                    "hostname": s.hostname, "username": s.username, "program": s.program,
                    "paths": s.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>(),
                    "tags": s.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
                    "summary": {
                        "files_new": s.summary.files_new, "files_changed": s.summary.files_changed,
                        "files_unchanged": s.summary.files_unchanged, "bytes_total": s.summary.bytes_total,
                        "bytes_added": s.summary.bytes_added, "errors": s.summary.errors,
                    },
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(v));
        return Ok(crate::exit::OK);
    }
    println!("{:<10} {:<21} {:<16} {:<30} paths", "id", "time", "host", "tags");
    for (id, s) in &rows {
        let tags: Vec<String> = s.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let paths: Vec<String> = s.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        // Hostnames, tags and paths come from the repository: no control character reaches
        // the terminal.
        println!(
            "{:<10} {:<21} {:<16} {:<30} {}",
            id.0.short(),
            super::time_str(s.time_ns),
            escape(&s.hostname),
            escape(&tags.join(",")),
            escape(&paths.join(" "))
        );
    }
    println!("{} snapshots", rows.len());
    Ok(crate::exit::OK)
}
