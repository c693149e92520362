//! Repository locations: a local directory or an object store, named by a URL or a DPA
//! backup location, turned into a `Storage`.
//!
//! * `/path` or `local:/path` — a local directory;
//! * `s3:https://host[:port]/bucket[/prefix]` — any S3-compatible endpoint, path-style requests
//!   (a DPA location with `s3ForcePathStyle: "false"` uses virtual-hosted style instead:
//!   `https://bucket.host[:port]/key`, the AWS SDK's behaviour that Velero inherits);
//! * `s3:bucket[/prefix]` — AWS S3 (a region is then required);
//! * `azure:container[/prefix]` — Azure Blob (account `devstoreaccount1` means the Azurite
//!   emulator);
//! * `gs:bucket[/prefix]` — Google Cloud Storage (a service-account key file).
//!
//! Credentials arrive as values in `CloudOpts` (this crate reads no environment). They are
//! always explicit: when none are given this is an error naming the missing setting, and the clients' instance-metadata endpoints are pointed at a closed
//! loopback port, so nothing ever falls back to a cloud metadata address. Transient errors
//! (5xx, 429, timeouts, resets) are retried with exponential backoff and jitter by
//! object_store's retry layer; permanent ones (403, 404) are not.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use repo_format::ObjectStorage;

use crate::credentials::AzureAuth;

/// A closed port on loopback: where metadata-credential lookups would go (and fail at once).
const NO_METADATA: &str = "http://127.0.0.1:9";

/// Connection settings that apply to every cloud backend.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// Extra trusted CA certificates (PEM), e.g. a DPA's `objectStorage.caCert`.
    pub ca_pem: Option<Vec<u8>>,
    /// Accept any server certificate (explicit opt-in only).
    pub insecure: bool,
}

/// Everything a cloud backend needs besides the location, as values: the engine reads no
/// environment (the CLI fills these from its flags, environment and files; the agent from a
/// backup location and its secret).
#[derive(Debug, Clone, Default)]
pub struct CloudOpts {
    pub region: Option<String>,
    /// AWS access key, secret and session token.
    pub aws: Option<(String, String, Option<String>)>,
    pub azure_account: Option<String>,
    /// Azure authentication from a Velero credentials file.
    pub azure_auth: Option<crate::credentials::AzureAuth>,
    /// A custom Azure Blob endpoint (account `devstoreaccount1` means the Azurite emulator).
    pub azure_endpoint: Option<String>,
    /// A GCS service-account key file.
    pub gcs_service_account: Option<String>,
    /// Where the HTTP client counts its attempts (retries included).
    pub counts: Option<Arc<repo_format::RequestCounts>>,
}

/// A parsed location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(String),
    /// `path_style`: requests to a custom endpoint name the bucket in the path; otherwise in
    /// the host name. Without an endpoint (AWS itself) object_store picks the addressing.
    S3 {
        endpoint: Option<String>,
        bucket: String,
        prefix: String,
        path_style: bool,
    },
    Azure {
        container: String,
        prefix: String,
    },
    Gcs {
        bucket: String,
        prefix: String,
    },
}

fn split_bucket(rest: &str, what: &str, full: &str) -> Result<(String, String)> {
    let rest = rest.trim_matches('/');
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        bail!("repository location {full:?}: no {what} name");
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

impl Location {
    pub fn parse(s: &str) -> Result<Location> {
        if let Some(rest) = s.strip_prefix("s3:") {
            if let Some(after) = rest
                .strip_prefix("https://")
                .map(|a| ("https", a))
                .or_else(|| rest.strip_prefix("http://").map(|a| ("http", a)))
            {
                let (scheme, after) = after;
                let (host, path) = after.split_once('/').unwrap_or((after, ""));
                if host.is_empty() {
                    bail!("repository location {s:?}: no host in the endpoint");
                }
                let (bucket, prefix) = split_bucket(path, "bucket", s)?;
                let endpoint = Some(format!("{scheme}://{host}"));
                return Ok(Location::S3 { endpoint, bucket, prefix, path_style: true });
            }
            let (bucket, prefix) = split_bucket(rest, "bucket", s)?;
            return Ok(Location::S3 { endpoint: None, bucket, prefix, path_style: false });
        }
        if let Some(rest) = s.strip_prefix("azure:") {
            let (container, prefix) = split_bucket(rest, "container", s)?;
            return Ok(Location::Azure { container, prefix });
        }
        if let Some(rest) = s.strip_prefix("gs:").or_else(|| s.strip_prefix("gcs:")) {
            let (bucket, prefix) = split_bucket(rest, "bucket", s)?;
            return Ok(Location::Gcs { bucket, prefix });
        }
        if let Some((scheme, _)) = s.split_once(':') {
            if !scheme.contains('/') && scheme.len() > 1 && scheme != "local" {
                bail!("repository location {s:?}: unknown scheme {scheme:?} (use a path, s3:, azure: or gs:)");
            }
        }
        let path = s.strip_prefix("local:").unwrap_or(s);
        if path.is_empty() {
            bail!("the repository location is empty: set --repo or FERRY_REPOSITORY");
        }
        Ok(Location::Local(path.to_string()))
    }
}

fn client_options(tls: &Tls, http: bool) -> Result<ClientOptions> {
    let mut o = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(120))
        .with_allow_http(http);
    if let Some(pem) = &tls.ca_pem {
        for c in object_store::Certificate::from_pem_bundle(pem).context("the CA certificate is not valid PEM")? {
            o = o.with_root_certificate(c);
        }
    }
    if tls.insecure {
        tracing::warn!("TLS certificate verification is disabled for this repository (insecure)");
        o = o.with_allow_invalid_certificates(true);
    }
    Ok(o)
}

/// Retries of transient failures: 10, with decorrelated jitter from 200 ms growing by up to 2×
/// per retry, capped at 8 s. About 20 s in all on average: an object store that restarts (a
/// MinIO pod rescheduled, a load balancer failing over) within that window costs a pause, not
/// the backup; an endpoint that stays unreachable is an error within about half a minute.
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(8),
            base: 2.0,
        },
        max_retries: 10,
        retry_timeout: Duration::from_secs(120),
    }
}

/// Build the object store for a cloud location; `desc` names it in messages.
pub fn cloud_store(loc: &Location, tls: &Tls, opts: &CloudOpts) -> Result<Arc<dyn ObjectStore>> {
    Ok(match loc {
        Location::S3 { endpoint, bucket, path_style, .. } => {
            let (key, secret, token) = match &opts.aws {
                Some(c) => c.clone(),
                None => bail!("no S3 credentials given (an access key id and secret)"),
            };
            let region = match (endpoint, opts.region.clone()) {
                (_, Some(r)) => r,
                (Some(_), None) => "us-east-1".to_string(),
                (None, None) => bail!("s3:{bucket}: no region given (AWS needs one)"),
            };
            let http = endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));
            let mut b = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region(region)
                .with_access_key_id(key)
                .with_secret_access_key(secret)
                .with_metadata_endpoint(NO_METADATA)
                .with_retry(retry())
                .with_client_options(client_options(tls, http)?);
            if let Some(c) = &opts.counts {
                b = b.with_http_connector(crate::attempts::CountingConnector(c.clone()));
            }
            if let Some(t) = token {
                b = b.with_token(t);
            }
            match endpoint {
                Some(e) if *path_style => b = b.with_endpoint(e).with_virtual_hosted_style_request(false),
                Some(e) => {
                    b = b.with_endpoint(virtual_host_endpoint(e, bucket)?).with_virtual_hosted_style_request(true)
                }
                None => {}
            }
            Arc::new(b.build().with_context(|| format!("configuring S3 bucket {bucket}"))?)
        }
        Location::Azure { container, .. } => {
            let account = opts.azure_account.clone().context("no Azure storage account given")?;
            let auth =
                opts.azure_auth.clone().context("no Azure credentials given (an access key or a service principal)")?;
            let mut b = object_store::azure::MicrosoftAzureBuilder::new()
                .with_container_name(container)
                .with_account(&account)
                .with_msi_endpoint(NO_METADATA)
                .with_retry(retry());
            b = match auth {
                AzureAuth::AccessKey(k) => b.with_access_key(k),
                AzureAuth::ServicePrincipal { tenant_id, client_id, client_secret } => {
                    b.with_client_secret_authorization(client_id, client_secret, tenant_id)
                }
            };
            let endpoint = opts.azure_endpoint.clone();
            let http = endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));
            b = b.with_client_options(client_options(tls, http)?);
            if let Some(c) = &opts.counts {
                b = b.with_http_connector(crate::attempts::CountingConnector(c.clone()));
            }
            if account == "devstoreaccount1" {
                b = b.with_use_emulator(true);
            } else if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            Arc::new(b.build().with_context(|| format!("configuring Azure container {container}"))?)
        }
        Location::Gcs { bucket, .. } => {
            let sa =
                opts.gcs_service_account.clone().context("no GCS credentials given (a service-account key file)")?;
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::new()
                .with_bucket_name(bucket)
                .with_service_account_path(sa)
                .with_retry(retry())
                .with_client_options(client_options(tls, false)?);
            if let Some(c) = &opts.counts {
                b = b.with_http_connector(crate::attempts::CountingConnector(c.clone()));
            }
            Arc::new(b.build().with_context(|| format!("configuring GCS bucket {bucket}"))?)
        }
        Location::Local(_) => bail!("internal: a local path is not a cloud location"),
    })
}

/// `scheme://host[:port]` → `scheme://bucket.host[:port]`, for virtual-hosted-style requests to
/// a custom endpoint. An IP address has no subdomains: that needs path style.
fn virtual_host_endpoint(endpoint: &str, bucket: &str) -> Result<String> {
    let (scheme, host) = endpoint.split_once("://").context("the S3 endpoint has no scheme")?;
    let name = host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
    if name.parse::<std::net::IpAddr>().is_ok() || name.starts_with('[') {
        bail!(
            "S3 endpoint {endpoint}: virtual-hosted-style requests (s3ForcePathStyle false) need a host name, \
             not an IP address: set s3ForcePathStyle: \"true\""
        );
    }
    if bucket.contains('.') && scheme == "https" {
        tracing::warn!("bucket {bucket} has dots: the server's TLS certificate must cover {bucket}.{host}");
    }
    Ok(format!("{scheme}://{bucket}.{host}"))
}

/// The repository storage for a location string (`create`: make a missing local directory).
pub fn storage(location: &str, create: bool, tls: &Tls, opts: &CloudOpts) -> Result<ObjectStorage> {
    storage_of(&Location::parse(location)?, location, create, tls, opts)
}

/// The repository storage for a parsed location; `desc` names it in messages.
pub fn storage_of(loc: &Location, desc: &str, create: bool, tls: &Tls, opts: &CloudOpts) -> Result<ObjectStorage> {
    let location = desc;
    match loc {
        Location::Local(path) => {
            if !create && !std::path::Path::new(path).is_dir() {
                return Err(repo_format::Error::NoRepository { location: path.clone() }.into());
            }
            ObjectStorage::local(std::path::Path::new(path)).with_context(|| format!("repository {path}"))
        }
        Location::S3 { prefix, .. } | Location::Azure { prefix, .. } | Location::Gcs { prefix, .. } => {
            let store = cloud_store(loc, tls, opts).with_context(|| format!("repository {location}"))?;
            Ok(ObjectStorage::new(store, prefix, location))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            Location::parse("s3:http://127.0.0.1:9000/bkt/a/b/").unwrap(),
            Location::S3 {
                endpoint: Some("http://127.0.0.1:9000".into()),
                bucket: "bkt".into(),
                prefix: "a/b".into(),
                path_style: true
            }
        );
        assert_eq!(
            Location::parse("s3:bkt").unwrap(),
            Location::S3 { endpoint: None, bucket: "bkt".into(), prefix: "".into(), path_style: false }
        );
        assert_eq!(
            Location::parse("azure:c/p").unwrap(),
            Location::Azure { container: "c".into(), prefix: "p".into() }
        );
        assert_eq!(Location::parse("gs:b/x/y").unwrap(), Location::Gcs { bucket: "b".into(), prefix: "x/y".into() });
        assert_eq!(Location::parse("/srv/repo").unwrap(), Location::Local("/srv/repo".into()));
        assert_eq!(Location::parse("local:rel/repo").unwrap(), Location::Local("rel/repo".into()));
        for bad in ["s3:", "s3:https:///b", "azure:/", "gs:", "ftp:x", ""] {
            assert!(Location::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn virtual_hosted_endpoints() {
        assert_eq!(virtual_host_endpoint("https://minio.example:9000", "b").unwrap(), "https://b.minio.example:9000");
        assert_eq!(virtual_host_endpoint("http://localhost", "b").unwrap(), "http://b.localhost");
        for ip in ["http://127.0.0.1:9000", "https://10.0.0.1", "http://[::1]:9000"] {
            let e = virtual_host_endpoint(ip, "b").unwrap_err().to_string();
            assert!(e.contains("s3ForcePathStyle") && e.contains(ip), "{e}");
        }
    }

    #[test]
    fn missing_credentials_are_errors_never_a_metadata_lookup() {
        for loc in ["gs:b", "s3:http://127.0.0.1:1/b", "azure:c"] {
            let e = cloud_store(&Location::parse(loc).unwrap(), &Tls::default(), &CloudOpts::default()).unwrap_err();
            assert!(format!("{e:#}").contains("given"), "{loc}: {e:#}");
        }
    }

    #[test]
    fn bad_ca_is_an_error_naming_it() {
        let tls = Tls { ca_pem: Some(b"not a pem".to_vec()), insecure: false };
        let opts = CloudOpts { aws: Some(("k".to_string(), "s".to_string(), None)), ..Default::default() };
        let r = cloud_store(&Location::parse("s3:http://127.0.0.1:1/b").unwrap(), &tls, &opts);
        // from_pem_bundle of garbage yields either an error or no certificate; both are refused
        // or harmless, never a panic.
        if let Err(e) = r {
            assert!(format!("{e:#}").contains("CA certificate"), "{e:#}");
        }
    }
}
