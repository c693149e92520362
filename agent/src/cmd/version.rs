//! `ferry version`: version, architecture, and which code paths the primitives use here.

use anyhow::Result;

use crate::cli::Cli;
use crate::output::print_json;

fn aes_path() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        let aes = std::arch::is_x86_feature_detected!("aes");
        let clmul = std::arch::is_x86_feature_detected!("pclmulqdq");
        let vaes = std::arch::is_x86_feature_detected!("vaes") && std::arch::is_x86_feature_detected!("vpclmulqdq");
        match (aes && clmul, vaes) {
            (true, true) => "aes-ni + clmul (vaes available)",
            (true, false) => "aes-ni + clmul",
            _ => "software (bitsliced)",
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull") {
            "armv8 aes + pmull"
        } else {
            "software (bitsliced)"
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        // POWER8's vcipher/vpmsumd and z's CPACF are not used yet (the aes-gcm crate has no
        // code path for them).
        "software (bitsliced)"
    }
}

/// What `version --json` prints (also part of the bench report).
pub fn info() -> serde_json::Value {
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "arch": std::env::consts::ARCH,
        "os": std::env::consts::OS,
        "endian": if cfg!(target_endian = "big") { "big" } else { "little" },
        "format_version": repo_format::FORMAT_VERSION,
        "blake3": repo_format::hash::path(),
        "aes_gcm": aes_path(),
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
        println!("blake3: {}; aes-256-gcm: {}; zstd {zstd_version}", repo_format::hash::path(), aes_path());
    }
    Ok(crate::exit::OK)
}
