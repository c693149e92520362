//! The CLI's edge: settings the engine takes as values, gathered here from the environment.
//!
//! | variable | used for |
//! |---|---|
//! | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` | S3 keys |
//! | `AWS_SHARED_CREDENTIALS_FILE`, `AWS_PROFILE` | S3 keys from a credentials file |
//! | `AWS_REGION`, `AWS_DEFAULT_REGION` | the S3 region |
//! | `AZURE_STORAGE_ACCOUNT`, `AZURE_STORAGE_KEY`, `AZURE_STORAGE_ENDPOINT` | Azure Blob |
//! | `GOOGLE_APPLICATION_CREDENTIALS` | a GCS service-account key file |
//! | `FERRY_CHUNK_QUEUE` | chunks queued between reader and workers (tuning) |
//! | `FERRY_PARALLEL_CHUNKING` | `1`/`0`: chunk a big file with several threads or one (tuning) |
//! | `FERRY_INDEX_KEYS` | `1`/`0`: a backup knows stored data blobs by key only or whole (tuning) |
//!
//! Values already set (from a DPA location or its credentials file) are kept.

use anyhow::{Context, Result, bail};
use ferry_engine::credentials::AzureAuth;
use ferry_engine::location::{CloudOpts, Location};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Explicit AWS credentials from the environment: keys, or a shared credentials file + profile.
fn aws_credentials() -> Result<(String, String, Option<String>)> {
    if let (Some(k), Some(s)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok((k, s, env("AWS_SESSION_TOKEN")));
    }
    if let Some(file) = env("AWS_SHARED_CREDENTIALS_FILE") {
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let ini =
            std::fs::read_to_string(&file).with_context(|| format!("reading AWS_SHARED_CREDENTIALS_FILE {file}"))?;
        let c =
            ferry_engine::dpa::aws_credentials(&ini, &profile).with_context(|| format!("credentials file {file}"))?;
        return Ok((c.access_key_id, c.secret_access_key, c.session_token));
    }
    bail!(
        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_SHARED_CREDENTIALS_FILE (and AWS_PROFILE)"
    )
}

/// Fill what `loc` needs and `opts` lacks from the environment; an error names what to set.
pub fn fill_cloud_opts(loc: &Location, opts: &mut CloudOpts) -> Result<()> {
    match loc {
        Location::Local(_) => {}
        Location::S3 { endpoint, bucket, .. } => {
            if opts.aws.is_none() {
                opts.aws = Some(aws_credentials()?);
            }
            if opts.region.is_none() {
                opts.region = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION"));
            }
            if opts.region.is_none() && endpoint.is_none() {
                bail!("s3:{bucket}: no region: set AWS_REGION (AWS needs it)");
            }
        }
        Location::Azure { .. } => {
            if opts.azure_account.is_none() {
                opts.azure_account = Some(
                    env("AZURE_STORAGE_ACCOUNT")
                        .context("no Azure storage account: set AZURE_STORAGE_ACCOUNT (and AZURE_STORAGE_KEY)")?,
                );
            }
            if opts.azure_auth.is_none() {
                opts.azure_auth = Some(AzureAuth::AccessKey(env("AZURE_STORAGE_KEY").context(
                    "no Azure credentials: set AZURE_STORAGE_KEY, or AZURE_CREDENTIALS_FILE for a DPA location",
                )?));
            }
            if opts.azure_endpoint.is_none() {
                opts.azure_endpoint = env("AZURE_STORAGE_ENDPOINT");
            }
        }
        Location::Gcs { .. } => {
            if opts.gcs_service_account.is_none() {
                opts.gcs_service_account =
                    Some(env("GOOGLE_APPLICATION_CREDENTIALS").context(
                        "no GCS credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file",
                    )?);
            }
        }
    }
    Ok(())
}

/// The engine's limits, with `FERRY_CHUNK_QUEUE`, `FERRY_PARALLEL_CHUNKING` (`1` or `0`: chunk a
/// big file with several threads or one, whatever the number of workers) and `FERRY_INDEX_KEYS`
/// (`1` or `0`: a backup knows stored data blobs by key only or by their whole entries, whatever
/// the index's size) applied.
pub fn limits() -> ferry_engine::job::Limits {
    let mut l = ferry_engine::job::Limits::default();
    if let Some(q) = env("FERRY_CHUNK_QUEUE").and_then(|v| v.parse::<usize>().ok()) {
        l.chunk_queue = q.max(1);
    }
    l.parallel_chunking = env("FERRY_PARALLEL_CHUNKING").map(|v| v != "0");
    l.index_keys = env("FERRY_INDEX_KEYS").map(|v| v != "0");
    l
}
