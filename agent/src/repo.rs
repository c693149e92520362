//! Opening the repository named on the command line: location, password, cache.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use repo_format::{Counting, ObjectStorage, ReadOnly, Repository, RequestCounts, Storage};

use ferry_engine::location::{CloudOpts, Location, Tls};

use crate::cli::{Cli, FromPasswordArgs};

/// The repository's storage, from `--repo` or `--location`, counting requests. `create`: make a
/// missing local directory (only `init` does).
pub fn storage_for(cli: &Cli, create: bool) -> Result<(Arc<dyn Storage>, Arc<RequestCounts>)> {
    let Some(spec) = &cli.location else {
        let (storage, counts) = storage_at(cli, location(cli)?, create)?;
        return Ok((Arc::new(storage), counts));
    };
    // One set of counters: storage calls counted by `Counting`, HTTP attempts (retries
    // included) by the object store's client.
    let counts = Arc::new(RequestCounts::default());
    let backend = dpa_storage(spec, cli.credentials_file.as_deref(), create, tls(cli)?, counts.clone())?;
    Ok((Arc::new(Counting::with_counts(backend, counts.clone())), counts))
}

/// The storage at `spec`, a location as `--repo` takes (a directory, s3:, azure:, gs:), with
/// credentials from the environment and the command line's TLS options, counting requests.
pub fn storage_at(cli: &Cli, spec: &str, create: bool) -> Result<(Counting<ObjectStorage>, Arc<RequestCounts>)> {
    let counts = Arc::new(RequestCounts::default());
    let loc = Location::parse(spec)?;
    let mut opts = CloudOpts { counts: Some(counts.clone()), ..Default::default() };
    crate::env::fill_cloud_opts(&loc, &mut opts)?;
    let backend = ferry_engine::location::storage_of(&loc, spec, create, &tls(cli)?, &opts)?;
    Ok((Counting::with_counts(backend, counts.clone()), counts))
}

/// `--ca-cert` and `--insecure-skip-tls-verify`.
fn tls(cli: &Cli) -> Result<Tls> {
    let mut tls = Tls { ca_pem: None, insecure: cli.insecure_skip_tls_verify };
    if let Some(f) = &cli.ca_cert {
        tls.ca_pem = Some(std::fs::read(f).with_context(|| format!("reading the CA certificate {}", f.display()))?);
    }
    Ok(tls)
}

/// A DPA backup location (`FILE[#NAME]`) as storage. Credentials come from `cred_file`, else
/// from the file the provider's plugin reads in Velero (`AWS_SHARED_CREDENTIALS_FILE`,
/// `AZURE_CREDENTIALS_FILE`, `GOOGLE_APPLICATION_CREDENTIALS`), else from the environment.
fn dpa_storage(
    spec: &str,
    cred_file: Option<&std::path::Path>,
    create: bool,
    tls: Tls,
    counts: Arc<RequestCounts>,
) -> Result<ObjectStorage> {
    use ferry_engine::dpa::Provider;
    let (file, name) = match spec.rsplit_once('#') {
        Some((f, n)) => (f, Some(n)),
        None => (spec, None),
    };
    let yaml =
        std::fs::read_to_string(file).with_context(|| format!("reading the DataProtectionApplication {file}"))?;
    let l = ferry_engine::dpa::select(&yaml, name).with_context(|| format!("DataProtectionApplication {file}"))?;
    let var = match l.provider {
        Provider::Aws => "AWS_SHARED_CREDENTIALS_FILE",
        Provider::Azure => "AZURE_CREDENTIALS_FILE",
        Provider::Gcp => "GOOGLE_APPLICATION_CREDENTIALS",
    };
    // Velero mounts the credentials file; the provider's plugin finds it through `var`.
    let file_of =
        cred_file.map(|p| p.as_os_str().to_owned()).or_else(|| std::env::var_os(var).filter(|v| !v.is_empty()));
    let (text, gcs_key) = match (&file_of, l.provider) {
        (Some(f), Provider::Gcp) => (None, Some(f.to_string_lossy().into_owned())),
        (Some(f), _) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading the credentials file {}", f.to_string_lossy()))?;
            (Some(text), None)
        }
        (None, _) => (None, None),
    };
    let (loc, mut opts, from_location) = ferry_engine::dpa::reach(&l, text.as_deref(), gcs_key).with_context(|| {
        format!("credentials file {}", file_of.as_deref().map(|f| f.to_string_lossy()).unwrap_or_default())
    })?;
    let tls = Tls { ca_pem: tls.ca_pem.or(from_location.ca_pem), insecure: tls.insecure || from_location.insecure };
    opts.counts = Some(counts);
    let desc = format!("{file}#{} ({:?} {})", l.name, l.provider, l.bucket);
    crate::env::fill_cloud_opts(&loc, &mut opts)?;
    ferry_engine::location::storage_of(&loc, &desc, create, &tls, &opts)
}

/// The location from `--repo` / `FERRY_REPOSITORY` (or a description of `--location`).
pub fn location(cli: &Cli) -> Result<&str> {
    cli.repo
        .as_deref()
        .or(cli.location.as_deref())
        .context("no repository given: set --repo or FERRY_REPOSITORY, or --location DPA_FILE[#NAME]")
}

fn read_password_file(path: &std::path::Path) -> Result<Vec<u8>> {
    let s = std::fs::read(path).with_context(|| format!("reading the password file {}", path.display()))?;
    let line = s.split(|&b| b == b'\n').next().unwrap_or(&[]);
    Ok(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
}

/// The password: FERRY_PASSWORD, then --password-file / FERRY_PASSWORD_FILE, then a prompt.
pub fn password(cli: &Cli, confirm: bool) -> Result<Vec<u8>> {
    ask(
        "FERRY_PASSWORD",
        cli.password_file.as_deref(),
        "enter repository password: ",
        confirm,
        "set FERRY_PASSWORD or FERRY_PASSWORD_FILE, or pass --password-file",
    )
}

/// The other repository's password (`--copy-chunker-params-from`, `--from-repo`):
/// FERRY_FROM_PASSWORD, then --from-password-file / FERRY_FROM_PASSWORD_FILE, then a prompt.
pub fn from_password(from: &FromPasswordArgs) -> Result<Vec<u8>> {
    ask(
        "FERRY_FROM_PASSWORD",
        from.from_password_file.as_deref(),
        "enter the source repository's password: ",
        false,
        "set FERRY_FROM_PASSWORD or FERRY_FROM_PASSWORD_FILE, or pass --from-password-file",
    )
}

/// A new password (key add / passwd): FERRY_NEW_PASSWORD, a file, or a prompt.
pub fn new_password(file: Option<&std::path::Path>) -> Result<Vec<u8>> {
    ask("FERRY_NEW_PASSWORD", file, "enter new password: ", true, "set FERRY_NEW_PASSWORD, or pass --new-password-file")
}

/// A password from the variable `var`, else from `file`, else asked on the terminal (`hint`
/// says what to set when there is none).
fn ask(var: &str, file: Option<&std::path::Path>, msg: &str, confirm: bool, hint: &str) -> Result<Vec<u8>> {
    let (pw, source) = if let Some(p) = std::env::var_os(var) {
        (p.into_encoded_bytes(), var.to_string())
    } else if let Some(f) = file {
        (read_password_file(f)?, format!("the password file {}", f.display()))
    } else {
        (prompt(msg, confirm, hint)?, "the prompt".to_string())
    };
    non_empty(pw, &source)
}

fn non_empty(pw: Vec<u8>, source: &str) -> Result<Vec<u8>> {
    if pw.is_empty() {
        bail!("the password from {source} is empty: an empty password is not allowed");
    }
    Ok(pw)
}

/// Ask on the terminal; without one, an error saying what to set (`hint`).
fn prompt(msg: &str, confirm: bool, hint: &str) -> Result<Vec<u8>> {
    if !std::io::stdin().is_terminal() {
        bail!("no password given: {hint}");
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
    use std::sync::atomic::Ordering::Relaxed;
    let (attempts, failed) = (c.attempts.load(Relaxed), c.failed_attempts.load(Relaxed));
    serde_json::json!({
        "put": put, "get": get, "list": list, "delete": delete, "bytes_up": up, "bytes_down": down,
        // HTTP requests sent (0 for a local directory) and how many failed: attempts above the
        // calls counted before are retries.
        "http_attempts": attempts, "http_failed": failed,
    })
}

/// Open and unlock the repository of the command line.
pub async fn open(cli: &Cli) -> Result<Arc<Repository>> {
    Ok(open_counted(cli).await?.0)
}

/// As `open`, with the request counters of the storage.
pub async fn open_counted(cli: &Cli) -> Result<(Arc<Repository>, Arc<RequestCounts>)> {
    open_with_cache(cli, cache_root(cli)).await
}

/// Open and unlock another repository, read-only (nothing of it can be written through this
/// session): the location `spec` as `--repo` takes it, its password from `from`. Errors name it
/// as `what` (`source repository`).
pub async fn open_other(
    cli: &Cli,
    spec: &str,
    from: &FromPasswordArgs,
    what: &str,
) -> Result<(Arc<Repository>, Arc<RequestCounts>)> {
    let (storage, counts) = storage_at(cli, spec, false).with_context(|| format!("{what} {spec}"))?;
    let pw = from_password(from)?;
    let storage: Arc<dyn Storage> = Arc::new(ReadOnly(storage));
    let repo =
        Repository::open(storage, &pw, cache_root(cli)).await.with_context(|| format!("opening the {what} {spec}"))?;
    Ok((Arc::new(repo), counts))
}

/// As `open_counted`, with the cache at `cache` (or none).
pub async fn open_with_cache(cli: &Cli, cache: Option<PathBuf>) -> Result<(Arc<Repository>, Arc<RequestCounts>)> {
    let loc = location(cli)?;
    let (storage, counts) = storage_for(cli, false)?;
    let pw = password(cli, false)?;
    let repo = Repository::open(storage, &pw, cache).await.with_context(|| format!("opening repository {loc}"))?;
    Ok((Arc::new(repo), counts))
}
