//! Repositories from BackupStorageLocations, read through the API only.
//!
//! A location's repository lives under `<prefix>/ferry/` of its bucket (one repository per
//! location: volumes of every namespace deduplicate against each other). Credentials come from
//! the Secret the location names in `spec.credential`, else from OADP's default Secret
//! `cloud-credentials` (key `cloud`) if it exists; the CA bundle from `caCert` or the Secret of
//! `caCertRef`; the password from the agent's password Secret. A missing repository is created.
//! Nothing is read from the node's environment or files.
//!
//! Opened repositories are kept, keyed by the resource versions of the location and of every
//! Secret read, so a changed location or rotated credential opens anew; each job reloads the
//! index itself. Opening a location is one at a time: jobs that start together wait for the
//! first to open its repository instead of each deriving the key (32 MiB and a fraction of a second of
//! CPU each).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};
use repo_format::{Counting, KdfParams, RepoConfig, Repository, RequestCounts, Storage};

use ferry_engine::dpa::Provider;
use ferry_engine::location::{Location, storage_of};

use crate::types::BackupStorageLocation;

/// The Secret OADP creates for a location that names none, and its key.
const DEFAULT_CREDENTIALS: (&str, &str) = ("cloud-credentials", "cloud");

/// Where the agent finds its repositories' password.
#[derive(Debug, Clone)]
pub struct PasswordRef {
    pub secret: String,
    pub key: String,
}

/// Opened repositories by location.
pub struct Repos {
    client: Client,
    namespace: String,
    password: PasswordRef,
    state_dir: PathBuf,
    counts: Arc<RequestCounts>,
    /// Location name -> (versions key, repository).
    open: Mutex<HashMap<String, (String, Arc<Repository>)>>,
    /// Per location name: held while its repository is looked up and opened (a slow or
    /// unreachable location does not hold up the others).
    opening: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Repositories opened (a metric).
    opens: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Repos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repos").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl Repos {
    /// Every repository's storage requests, and the repositories opened, are counted in
    /// `metrics`.
    pub fn new(
        client: Client,
        namespace: &str,
        password: PasswordRef,
        state_dir: PathBuf,
        metrics: &crate::metrics::Metrics,
    ) -> Repos {
        Repos {
            client,
            namespace: namespace.into(),
            password,
            state_dir,
            counts: metrics.requests.clone(),
            open: Mutex::new(HashMap::new()),
            opening: Mutex::new(HashMap::new()),
            opens: metrics.repository_opens.clone(),
        }
    }

    /// A Secret's key, naming both in the error when either is missing.
    async fn secret_key(&self, name: &str, key: &str, why: &str) -> Result<(Vec<u8>, String)> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let ns = &self.namespace;
        let s = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading Secret {ns}/{name} ({why})"))?
            .ok_or_else(|| anyhow!("Secret {ns}/{name} ({why}) not found: create it with the key {key:?}"))?;
        let version = s.resource_version().unwrap_or_default();
        let data = s.data.and_then(|mut d| d.remove(key)).map(|b| b.0);
        let data = data
            .or_else(|| s.string_data.and_then(|mut d| d.remove(key)).map(String::into_bytes))
            .ok_or_else(|| anyhow!("Secret {ns}/{name} ({why}) has no key {key:?}"))?;
        Ok((data, version))
    }

    /// The repository of location `name`, created if missing.
    pub async fn get(&self, name: &str) -> Result<Arc<Repository>> {
        let ns = &self.namespace;
        let what = format!("BackupStorageLocation {ns}/{name}");
        let bsl = Api::<BackupStorageLocation>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .with_context(|| format!("reading {what}"))?
            .ok_or_else(|| anyhow!("{what} (spec.backupStorageLocation) not found"))?;
        let spec = serde_json::Value::Object(bsl.spec.fields.clone());
        let loc = ferry_engine::dpa::backup_storage_location(name, &spec).with_context(|| what.clone())?;
        let mut versions = bsl.resource_version().unwrap_or_default();

        let credentials = match &loc.credential {
            Some((s, k)) => Some(self.secret_key(s, k, &format!("spec.credential of {what}")).await?),
            None => {
                let (s, k) = DEFAULT_CREDENTIALS;
                self.secret_key(s, k, "default credentials").await.ok()
            }
        };
        let mut text = None;
        let mut gcs_key = None;
        if let Some((bytes, v)) = credentials {
            versions.push_str(&format!("/{v}"));
            if loc.provider == Provider::Gcp {
                // The GCS client reads a key file: keep it beside the agent's state, owner-only.
                let dir = self.state_dir.join("credentials");
                std::fs::create_dir_all(&dir)?;
                let path = dir.join(format!("{name}.json"));
                write_private(&path, &bytes)?;
                gcs_key = Some(path.to_string_lossy().into_owned());
            } else {
                text = Some(String::from_utf8(bytes).map_err(|_| anyhow!("{what}: its credentials are not text"))?);
            }
        }
        let (mut target, mut opts, mut tls) =
            ferry_engine::dpa::reach(&loc, text.as_deref(), gcs_key).with_context(|| format!("{what}: credentials"))?;
        if let Some((s, k)) = &loc.ca_cert_ref {
            let (pem, v) = self.secret_key(s, k, &format!("spec.objectStorage.caCertRef of {what}")).await?;
            versions.push_str(&format!("/{v}"));
            tls.ca_pem = Some(pem);
        }
        let (password, v) =
            self.secret_key(&self.password.secret, &self.password.key, "the repository password").await?;
        versions.push_str(&format!("/{v}"));

        let lock = self.opening.lock().expect("repos lock").entry(name.into()).or_default().clone();
        let _opening = lock.lock().await;
        if let Some((key, repo)) = self.open.lock().expect("repos lock").get(name) {
            if *key == versions {
                return Ok(repo.clone());
            }
        }
        match &mut target {
            Location::S3 { prefix, .. } | Location::Azure { prefix, .. } | Location::Gcs { prefix, .. } => {
                *prefix = if prefix.is_empty() { "ferry".into() } else { format!("{prefix}/ferry") };
            }
            Location::Local(path) => path.push_str("/ferry"),
        }
        let desc = format!("{what} ({} bucket {})", loc.provider, loc.bucket);
        opts.counts = Some(self.counts.clone());
        let backend = storage_of(&target, &desc, false, &tls, &opts)?;
        let storage: Arc<dyn Storage> = Arc::new(Counting::with_counts(backend, self.counts.clone()));
        let cache = Some(self.state_dir.join("cache"));
        let repo = match Repository::open(storage.clone(), &password, cache.clone()).await {
            Ok(r) => r,
            Err(repo_format::Error::NoRepository { .. }) => {
                let kdf = KdfParams::default();
                let config = RepoConfig::new(now_ns());
                match Repository::init(storage.clone(), &password, kdf, config, "ferry-agent").await {
                    Ok(_) => {}
                    // Another agent created it first.
                    Err(e) if Repository::open(storage.clone(), &password, None).await.is_ok() => {
                        tracing::debug!("repository of {what} created by another agent: {e}");
                    }
                    Err(e) => return Err(anyhow::Error::from(e).context(format!("creating the repository of {what}"))),
                }
                Repository::open(storage, &password, cache)
                    .await
                    .with_context(|| format!("opening the repository of {what}"))?
            }
            Err(e) => {
                return Err(anyhow::Error::from(e).context(format!(
                    "opening the repository of {what} (is the password in Secret {}/{} the repository's?)",
                    self.namespace, self.password.secret
                )));
            }
        };
        self.opens.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let repo = Arc::new(repo);
        self.open.lock().expect("repos lock").insert(name.into(), (versions, repo.clone()));
        Ok(repo)
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    Ok(())
}
