//! `ferry init`: create a repository.

use anyhow::{Context, Result};
use repo_format::{ChunkerParams, InitOptions, KdfParams, RepoConfig, Repository};

use crate::cli::{Cli, InitArgs};
use crate::output::print_json;
use crate::repo;

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

pub fn key_label() -> String {
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let user = nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.name).unwrap_or_default();
    format!("{user}@{host}")
}

pub async fn run(cli: &Cli, a: &InitArgs) -> Result<i32> {
    let loc = repo::location(cli)?;
    let (storage, _) = repo::storage_for(cli, true)?;
    let mut config = RepoConfig::new(now_ns());
    config.compression_level = a.compression;
    config.pack_size = a.pack_size_mib.saturating_mul(1 << 20);
    config.chunker =
        ChunkerParams { min: a.chunk_avg_kib * 256, avg: a.chunk_avg_kib * 1024, max: a.chunk_avg_kib * 4096 };
    config.fixed_chunk_size = a.disk_chunk_kib.saturating_mul(1024);
    config.gc_grace_ns = u64::try_from(a.gc_grace.as_nanos()).unwrap_or(u64::MAX);
    // The other repository's id key and chunk sizes: blob ids and chunk boundaries match, so
    // copies between the two deduplicate (FORMAT.md §4.1).
    let other = match &a.copy_chunker_params_from {
        Some(spec) => {
            let (other, _) = repo::open_other(cli, spec, &a.from, "repository of --copy-chunker-params-from").await?;
            config.chunker = other.config().chunker;
            config.fixed_chunk_size = other.config().fixed_chunk_size;
            Some(other)
        }
        None => None,
    };
    config.validate().context("repository parameters")?;
    let kdf = KdfParams { m_cost: a.kdf_memory, t_cost: a.kdf_iterations, p_cost: 1 };
    let pw = repo::password(cli, true)?;
    let opts = InitOptions { id_key_from: other.as_ref().map(|o| o.master_key()) };
    let r = Repository::init_with(storage, &pw, kdf, config, &key_label(), opts)
        .await
        .with_context(|| format!("creating repository {loc}"))?;
    let from = a.copy_chunker_params_from.as_deref();
    if cli.json {
        let mut line = serde_json::json!({
            "message_type": "initialized", "id": r.config().repo_id.to_hex(), "repository": loc,
        });
        if let Some(from) = from {
            line["chunker_params_from"] = from.into();
        }
        print_json(&line);
    } else if !cli.quiet {
        println!("created ferry repository {} at {loc}", r.config().repo_id.short());
        if let Some(from) = from {
            println!("It shares the id key and chunk sizes of {from}: `ferry copy` between them deduplicates.");
        }
        println!("Keep the password safe: data in the repository cannot be read without it.");
    }
    Ok(crate::exit::OK)
}
