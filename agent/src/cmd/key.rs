//! `ferry key list|add|remove|passwd`: several passwords per repository, no data rewritten.

use anyhow::{Context, Result};
use repo_format::{KdfParams, KeyId, Repository};

use crate::cli::{Cli, KeyArgs, KeyCommand};
use crate::output::print_json;
use crate::repo;

pub async fn run(cli: &Cli, a: &KeyArgs) -> Result<i32> {
    let r = repo::open(cli).await?;
    match &a.cmd {
        KeyCommand::List => list(cli, &r).await?,
        KeyCommand::Add(n) => {
            let pw = repo::new_password(n.new_password_file.as_deref())?;
            let kdf = KdfParams { m_cost: n.kdf_memory, t_cost: n.kdf_iterations, p_cost: 1 };
            let id = r.add_key(&pw, kdf, &super::init::key_label()).await.context("adding a key")?;
            report(cli, "added", &id);
        }
        KeyCommand::Remove { id } => {
            let keys = r.keys().await?;
            let hits: Vec<KeyId> =
                keys.iter().filter(|k| k.id.to_string().starts_with(&id.to_ascii_lowercase())).map(|k| k.id).collect();
            let kid = match hits.as_slice() {
                [one] => *one,
                [] => anyhow::bail!("no key {id} (see `ferry key list`)"),
                _ => anyhow::bail!("key prefix {id} is ambiguous: give more digits"),
            };
            r.remove_key(&kid).await.with_context(|| format!("removing key {}", kid.0.short()))?;
            report(cli, "removed", &kid);
        }
        KeyCommand::Passwd(n) => {
            let pw = repo::new_password(n.new_password_file.as_deref())?;
            let kdf = KdfParams { m_cost: n.kdf_memory, t_cost: n.kdf_iterations, p_cost: 1 };
            let mut r = Repository::open(r.storage().clone(), &repo::password(cli, false)?, None).await?;
            let id = r.change_password(&pw, kdf, &super::init::key_label()).await.context("changing the password")?;
            report(cli, "changed password; new key", &id);
        }
    }
    Ok(crate::exit::OK)
}

fn report(cli: &Cli, what: &str, id: &KeyId) {
    if cli.json {
        print_json(&serde_json::json!({ "message_type": "key", "action": what, "id": id.to_string() }));
    } else if !cli.quiet {
        println!("{what} {}", id.0.short());
    }
}

async fn list(cli: &Cli, r: &Repository) -> Result<()> {
    let keys = r.keys().await?;
    if cli.json {
        print_json(&serde_json::Value::Array(
            keys.iter()
                .map(|k| serde_json::json!({
                    "id": k.id.to_string(), "current": k.current, "label": k.label, "created": super::time_str(k.created_ns),
                    "kdf": { "algorithm": "argon2id", "memory_kib": k.kdf.m_cost, "iterations": k.kdf.t_cost, "lanes": k.kdf.p_cost },
                }))
                .collect(),
        ));
        return Ok(());
    }
    println!(" {:<10} {:<24} {:<21} kdf", "id", "label", "created");
    for k in keys {
        println!(
            "{}{:<10} {:<24} {:<21} argon2id m={}KiB t={} p={}",
            if k.current { '*' } else { ' ' },
            k.id.0.short(),
            crate::output::escape(&k.label),
            super::time_str(k.created_ns),
            k.kdf.m_cost,
            k.kdf.t_cost,
            k.kdf.p_cost
        );
    }
    Ok(())
}
