//! Opening the repository named on the command line: location, password, cache.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use repo_format::{Counting, ObjectStorage, Repository, RequestCounts, Storage};

use crate::cli::Cli;

/// The storage behind a location string (a local directory for now), counting requests.
/// `create`: make a missing local directory (only `init` does).
pub fn storage_for(location: &str, create: bool) -> Result<(Arc<dyn Storage>, Arc<RequestCounts>)> {
    let s = Counting::new(backend_for(location, create)?);
    let counts = s.counts();
    Ok((Arc::new(s), counts))
}

fn backend_for(location: &str, create: bool) -> Result<ObjectStorage> {
    if let Some((scheme, _)) = location.split_once(':') {
        if matches!(scheme, "s3" | "azure" | "gs" | "gcs" | "sftp" | "rest") {
            bail!(
                "repository location {location:?}: {scheme} is not supported by this build yet; use a local directory"
            );
        }
    }
    let path = location.strip_prefix("local:").unwrap_or(location);
    if path.is_empty() {
        bail!("the repository location is empty: set --repo or FERRY_REPOSITORY");
    }
    // Only `init` creates the directory; anything else on a missing one is "no repository".
    if !create && !std::path::Path::new(path).is_dir() {
        return Err(repo_format::Error::NoRepository { location: path.to_string() }.into());
    }
    ObjectStorage::local(std::path::Path::new(path)).with_context(|| format!("repository {path}"))
}

/// The location from `--repo` / `FERRY_REPOSITORY`.
pub fn location(cli: &Cli) -> Result<&str> {
    cli.repo.as_deref().context("no repository given: set --repo or FERRY_REPOSITORY")
}

fn read_password_file(path: &std::path::Path) -> Result<Vec<u8>> {
    let s = std::fs::read(path).with_context(|| format!("reading the password file {}", path.display()))?;
    let line = s.split(|&b| b == b'\n').next().unwrap_or(&[]);
    Ok(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
}

/// The password: FERRY_PASSWORD, then --password-file / FERRY_PASSWORD_FILE, then a prompt.
pub fn password(cli: &Cli, confirm: bool) -> Result<Vec<u8>> {
    let pw = if let Some(p) = std::env::var_os("FERRY_PASSWORD") {
        p.into_encoded_bytes()
    } else if let Some(f) = &cli.password_file {
        read_password_file(f)?
    } else {
        prompt("enter repository password: ", confirm)?
    };
    non_empty(pw, "FERRY_PASSWORD / the password file")
}

/// A new password (key add / passwd): FERRY_NEW_PASSWORD, a file, or a prompt.
pub fn new_password(file: Option<&std::path::Path>) -> Result<Vec<u8>> {
    let pw = if let Some(p) = std::env::var_os("FERRY_NEW_PASSWORD") {
        p.into_encoded_bytes()
    } else if let Some(f) = file {
        read_password_file(f)?
    } else {
        prompt("enter new password: ", true)?
    };
    non_empty(pw, "FERRY_NEW_PASSWORD / the new password file")
}

fn non_empty(pw: Vec<u8>, source: &str) -> Result<Vec<u8>> {
    if pw.is_empty() {
        bail!("the password from {source} is empty: an empty password is not allowed");
    }
    Ok(pw)
}

fn prompt(msg: &str, confirm: bool) -> Result<Vec<u8>> {
    if !std::io::stdin().is_terminal() {
        bail!("no password given: set FERRY_PASSWORD or FERRY_PASSWORD_FILE, or pass --password-file");
    }
    let p = rpassword::prompt_password(msg).context("reading the password")?;
    if confirm && rpassword::prompt_password("enter the password again: ").context("reading the password")? != p {
        bail!("the passwords do not match");
    }
    if p.is_empty() {
        bail!("an empty password is not allowed");
    }
    Ok(p.into_bytes())
}

/// The cache root, or `None` with --no-cache.
pub fn cache_root(cli: &Cli) -> Option<PathBuf> {
    if cli.no_cache {
        return None;
    }
    if let Some(d) = &cli.cache_dir {
        return Some(d.clone());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ferry"))
}

/// Requests made so far, as JSON (for summaries).
pub fn counts_json(c: &RequestCounts) -> serde_json::Value {
    let [put, get, list, delete, up, down] = c.snapshot();
    serde_json::json!({ "put": put, "get": get, "list": list, "delete": delete, "bytes_up": up, "bytes_down": down })
}

/// Open and unlock the repository of the command line.
pub async fn open(cli: &Cli) -> Result<Arc<Repository>> {
    Ok(open_counted(cli).await?.0)
}

/// As `open`, with the request counters of the storage.
pub async fn open_counted(cli: &Cli) -> Result<(Arc<Repository>, Arc<RequestCounts>)> {
    let loc = location(cli)?;
    let (storage, counts) = storage_for(loc, false)?;
    let pw = password(cli, false)?;
    let repo =
        Repository::open(storage, &pw, cache_root(cli)).await.with_context(|| format!("opening repository {loc}"))?;
    Ok((Arc::new(repo), counts))
}
