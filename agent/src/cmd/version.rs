//! `ferry version`: version, architecture, and which code paths the primitives use here.

use anyhow::Result;

use crate::cli::Cli;
use crate::output::print_json;

/// What `version --json` prints (also part of the bench report).
pub fn info() -> serde_json::Value {
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "arch": std::env::consts::ARCH,
        "os": std::env::consts::OS,
        "endian": if cfg!(target_endian = "big") { "big" } else { "little" },
        "format_version": repo_format::FORMAT_VERSION,
        "blake3": repo_format::hash::path(),
        "aes_gcm": repo_format::aes_gcm_path(),
        "zstd": zstd::zstd_safe::version_string(),
    })
}

pub fn run(cli: &Cli) -> Result<i32> {
    let zstd_version = zstd::zstd_safe::version_string();
    let v = info();
    if cli.json {
        print_json(&v);
    } else {
        println!(
            "ferry {} {} ({}-endian)",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH,
            v["endian"].as_str().unwrap_or("")
        );
        println!("repository format {}", repo_format::FORMAT_VERSION);
        println!(
            "blake3: {}; aes-256-gcm: {}; zstd {zstd_version}",
            repo_format::hash::path(),
            repo_format::aes_gcm_path()
        );
    }
    Ok(crate::exit::OK)
}
