//! Reading an OADP `DataProtectionApplication` (DPA) to find where backups go.
//!
//! A DPA (`apiVersion: oadp.openshift.io/v1alpha1`, `kind: DataProtectionApplication`) lists its
//! backup locations in `spec.backupLocations`; each item holds either a Velero
//! `BackupStorageLocationSpec` under `velero:` or a CloudStorage reference under `bucket:`.
//! This module parses such a YAML document, validates every location the way OADP should have
//! (each problem is a one-line error naming the field path, e.g.
//! `spec.backupLocations[1].velero.objectStorage.bucket: missing`), and selects one location
//! (`FILE#name`, or the one marked `default: true`, or the only one). It also reads Velero's
//! INI credentials file (`[profile]` sections with `aws_access_key_id` / `aws_secret_access_key`).
//!
//! It never contacts a cluster or the network: it only reads the text it is given. So a
//! CloudStorage reference (`bucket:`), which only the cluster can resolve, is reported as an
//! error, and credential secrets are named (`credential`) but never fetched. It never panics on
//! any input, and its error messages never echo credential values.

use anyhow::{Result, anyhow, bail};
use serde_yaml_ng::{Mapping, Value};
use std::fmt;

/// The only `apiVersion` a DPA is served as.
const DPA_API_VERSION: &str = "oadp.openshift.io/v1alpha1";
const DPA_KIND: &str = "DataProtectionApplication";
/// Region used for S3-compatible stores (`s3Url` set) that name none.
const DEFAULT_S3_REGION: &str = "us-east-1";
/// AWS credentials-file profile used when `config.profile` is not set.
const DEFAULT_AWS_PROFILE: &str = "default";

/// The object-store provider of a backup location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Aws,
    Azure,
    Gcp,
}

impl Provider {
    /// Accepts `aws`, `azure`, `gcp` and the Velero plugin spellings `velero.io/aws` etc.
    fn from_name(s: &str) -> Option<Self> {
        match s.trim().strip_prefix("velero.io/").unwrap_or(s.trim()) {
            "aws" => Some(Self::Aws),
            "azure" => Some(Self::Azure),
            "gcp" => Some(Self::Gcp),
            _ => None,
        }
    }

    /// The short name, as written in a DPA.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aws => "aws",
            Self::Azure => "azure",
            Self::Gcp => "gcp",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated backup location of a DPA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// `backupLocations[].name`, else `velero.name`, else `"default"`.
    pub name: String,
    pub provider: Provider,
    /// `objectStorage.bucket` (the container, for Azure).
    pub bucket: String,
    /// `objectStorage.prefix`; `None` when absent or empty.
    pub prefix: Option<String>,
    /// `objectStorage.caCert`, base64-decoded: a PEM bundle with at least one certificate.
    pub ca_cert: Option<Vec<u8>>,
    /// `config.region`; for `aws` with `s3Url` and no region this is `us-east-1`.
    pub region: Option<String>,
    /// `config.s3Url` (an S3-compatible endpoint such as MinIO, ODF or IBM COS).
    pub s3_url: Option<String>,
    /// `config.s3ForcePathStyle`.
    pub s3_force_path_style: bool,
    /// `config.insecureSkipTLSVerify`.
    pub insecure_skip_tls_verify: bool,
    /// `config.profile`; for `aws` without one this is `"default"`.
    pub profile: Option<String>,
    /// `config.storageAccount` (required for `azure`).
    pub azure_storage_account: Option<String>,
    /// `config.resourceGroup`.
    pub azure_resource_group: Option<String>,
    /// `credential.name` / `credential.key`: the Secret holding the credentials file. The CLI
    /// only names it; the node agent reads it through the API.
    pub credential: Option<(String, String)>,
    /// `objectStorage.caCertRef` (Velero 1.18): the Secret and key holding the CA bundle.
    pub ca_cert_ref: Option<(String, String)>,
    /// `velero.default`: this location is the DPA's default one.
    pub default: bool,
}

/// How to reach a backup location's bucket: the repository location (its prefix as the
/// location names it), the cloud options and TLS settings. `credentials` is the text of the
/// credentials file Velero would mount (the INI file for `aws`, the `AZURE_*` lines for
/// `azure`); `gcs_key_file` the path of a service-account key for `gcp`. With no credentials
/// the object store finds none: nothing here reads the environment.
pub fn reach(
    l: &Location,
    credentials: Option<&str>,
    gcs_key_file: Option<String>,
) -> Result<(crate::location::Location, crate::location::CloudOpts, crate::location::Tls)> {
    use crate::location::{CloudOpts, Location as Loc, Tls};
    let tls = Tls { ca_pem: l.ca_cert.clone(), insecure: l.insecure_skip_tls_verify };
    let prefix = l.prefix.clone().unwrap_or_default();
    let mut opts = CloudOpts { region: l.region.clone(), ..Default::default() };
    let loc = match l.provider {
        Provider::Aws => {
            if let Some(text) = credentials {
                let profile = l.profile.as_deref().unwrap_or(DEFAULT_AWS_PROFILE);
                let c = aws_credentials(text, profile)?;
                opts.aws = Some((c.access_key_id, c.secret_access_key, c.session_token));
            }
            Loc::S3 {
                endpoint: l.s3_url.clone().map(|u| u.trim_end_matches('/').to_string()),
                bucket: l.bucket.clone(),
                prefix,
                path_style: l.s3_force_path_style,
            }
        }
        Provider::Azure => {
            opts.azure_account = l.azure_storage_account.clone();
            if let Some(text) = credentials {
                opts.azure_auth = Some(crate::credentials::azure_credentials(text)?);
            }
            Loc::Azure { container: l.bucket.clone(), prefix }
        }
        Provider::Gcp => {
            opts.gcs_service_account = gcs_key_file;
            Loc::Gcs { bucket: l.bucket.clone(), prefix }
        }
    };
    Ok((loc, opts, tls))
}

/// Keys from one profile of Velero's AWS credentials file.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Parses a DPA and validates every `spec.backupLocations[]` entry; the first invalid entry is
/// the error.
pub fn parse(yaml: &str) -> Result<Vec<Location>> {
    let doc = load(yaml)?;
    let items = backup_locations(&doc)?;
    items.iter().enumerate().map(|(i, item)| location(i, item)).collect()
}

/// Selects one backup location. With `name` (from `FILE#name`): the entry of that name (only
/// that entry has to be valid). Without: the entry marked `default: true`, else the only entry;
/// otherwise an error listing the names.
pub fn select(yaml: &str, name: Option<&str>) -> Result<Location> {
    match name {
        Some(wanted) => {
            let doc = load(yaml)?;
            let items = backup_locations(&doc)?;
            let names: Vec<String> = items.iter().map(loose_name).collect();
            let hits: Vec<usize> =
                names.iter().enumerate().filter(|(_, n)| n.as_str() == wanted).map(|(i, _)| i).collect();
            match hits.as_slice() {
                [] => bail!("spec.backupLocations: no location named {wanted:?} (available: {})", list(&names)),
                [i] => match items.get(*i) {
                    Some(item) => location(*i, item),
                    None => bail!("spec.backupLocations[{i}]: missing"),
                },
                many => bail!(
                    "spec.backupLocations: name {wanted:?} is used by several locations (indexes {}); names must be unique",
                    many.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        None => {
            let mut all = parse(yaml)?;
            let names: Vec<String> = all.iter().map(|l| l.name.clone()).collect();
            let defaults: Vec<usize> = all.iter().enumerate().filter(|(_, l)| l.default).map(|(i, _)| i).collect();
            let pick = match (defaults.as_slice(), all.len()) {
                ([i], _) => *i,
                ([], 1) => 0,
                ([], n) => bail!(
                    "spec.backupLocations: {n} locations and none marked default: true; pick one with FILE#name (available: {})",
                    list(&names)
                ),
                (many, _) => bail!(
                    "spec.backupLocations: several locations marked default: true ({}); pick one with FILE#name",
                    list(&many.iter().filter_map(|i| names.get(*i).cloned()).collect::<Vec<_>>())
                ),
            };
            if pick < all.len() { Ok(all.swap_remove(pick)) } else { bail!("spec.backupLocations[{pick}]: missing") }
        }
    }
}

/// Reads `profile` (empty: `default`) from Velero's AWS INI credentials file: `[profile]`
/// sections (also `[profile NAME]`), `aws_access_key_id`, `aws_secret_access_key` and an
/// optional `aws_session_token`. Blank lines, `#`/`;` comments (whole-line, or after whitespace)
/// and whitespace around `=` are tolerated; keys match case-insensitively; a repeated section
/// adds to the earlier one and a later key wins. Errors never echo values.
pub fn aws_credentials(ini: &str, profile: &str) -> Result<AwsCredentials> {
    let wanted = match profile.trim() {
        "" => DEFAULT_AWS_PROFILE,
        p => p,
    };
    let mut sections: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut access_key_id = None;
    let mut secret_access_key = None;
    let mut session_token = None;
    for (n, raw) in ini.lines().enumerate() {
        let lineno = n + 1;
        let line = raw.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(inner) = strip_inline_comment(rest).trim_end().strip_suffix(']') else {
                bail!("credentials file line {lineno}: section header without closing ']'");
            };
            let inner = inner.trim();
            let inner = inner.strip_prefix("profile ").map(str::trim).unwrap_or(inner);
            if inner.is_empty() {
                bail!("credentials file line {lineno}: empty section name");
            }
            if !sections.iter().any(|s| s == inner) {
                sections.push(inner.to_string());
            }
            current = Some(inner.to_string());
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!("credentials file line {lineno}: expected [profile] or key = value");
        };
        let key = key.trim();
        if key.is_empty() {
            bail!("credentials file line {lineno}: empty key before '='");
        }
        if current.as_deref() != Some(wanted) {
            continue;
        }
        let value = strip_inline_comment(value).trim().to_string();
        if key.eq_ignore_ascii_case("aws_access_key_id") {
            access_key_id = Some(value);
        } else if key.eq_ignore_ascii_case("aws_secret_access_key") {
            secret_access_key = Some(value);
        } else if key.eq_ignore_ascii_case("aws_session_token") {
            session_token = Some(value);
        }
    }
    if !sections.iter().any(|s| s == wanted) {
        bail!("credentials file: no [{wanted}] profile (found: {})", list(&sections));
    }
    let required = |v: Option<String>, key: &str| -> Result<String> {
        match v {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => bail!("credentials file [{wanted}]: {key} is empty"),
            None => bail!("credentials file [{wanted}]: {key} missing"),
        }
    };
    Ok(AwsCredentials {
        access_key_id: required(access_key_id, "aws_access_key_id")?,
        secret_access_key: required(secret_access_key, "aws_secret_access_key")?,
        session_token: session_token.filter(|t| !t.is_empty()),
    })
}

/// Cuts a `#` or `;` comment that follows whitespace (`key = value  # note`).
fn strip_inline_comment(s: &str) -> &str {
    let mut prev_ws = false;
    for (i, c) in s.char_indices() {
        if prev_ws && (c == '#' || c == ';') {
            return s.get(..i).unwrap_or(s);
        }
        prev_ws = c.is_whitespace();
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The DPA document

/// Parses the YAML text and checks that it is a DataProtectionApplication.
fn load(yaml: &str) -> Result<Value> {
    let doc: Value = serde_yaml_ng::from_str(yaml).map_err(|e| anyhow!("DPA YAML: {}", one_line(&e.to_string())))?;
    let doc = untag(&doc).clone();
    let Value::Mapping(top) = &doc else {
        bail!("DPA: expected a {DPA_KIND} object (a YAML mapping), got {}", describe(&doc));
    };
    match field(top, "kind") {
        None => bail!("kind: missing (expected {DPA_KIND})"),
        Some(Value::String(k)) if k == DPA_KIND => {}
        Some(other) => bail!("kind: expected {DPA_KIND}, got {} (not a DataProtectionApplication)", show(other)),
    }
    match field(top, "apiVersion") {
        None => bail!("apiVersion: missing (expected {DPA_API_VERSION})"),
        Some(Value::String(v)) if v == DPA_API_VERSION => {}
        Some(other) => bail!("apiVersion: expected {DPA_API_VERSION}, got {}", show(other)),
    }
    Ok(doc)
}

/// `spec.backupLocations`, a non-empty list.
fn backup_locations(doc: &Value) -> Result<&[Value]> {
    let Value::Mapping(top) = doc else {
        bail!("DPA: expected a YAML mapping");
    };
    let spec = match field(top, "spec") {
        None => bail!("spec: missing"),
        Some(Value::Mapping(m)) => m,
        Some(other) => bail!("spec: expected a mapping, got {}", describe(other)),
    };
    match field(spec, "backupLocations") {
        None => bail!("spec.backupLocations: missing (the DPA has no backup location)"),
        Some(Value::Sequence(s)) if s.is_empty() => {
            bail!("spec.backupLocations: empty (the DPA has no backup location)")
        }
        Some(Value::Sequence(s)) => Ok(s.as_slice()),
        Some(other) => bail!("spec.backupLocations: expected a list, got {}", describe(other)),
    }
}

/// The name an entry is known by, without validating anything else.
fn loose_name(item: &Value) -> String {
    let Value::Mapping(m) = untag(item) else {
        return "default".to_string();
    };
    let from = |m: &Mapping| field(m, "name").and_then(scalar).filter(|s| !s.is_empty());
    from(m)
        .or_else(|| match field(m, "velero") {
            Some(Value::Mapping(v)) => from(v),
            _ => None,
        })
        .unwrap_or_else(|| "default".to_string())
}

/// Validates entry `i` of `spec.backupLocations`.
fn location(i: usize, item: &Value) -> Result<Location> {
    let p = format!("spec.backupLocations[{i}]");
    let Value::Mapping(item) = untag(item) else {
        bail!("{p}: expected a mapping, got {}", describe(item));
    };
    let velero = field(item, "velero");
    let bucket = field(item, "bucket");
    let velero = match (velero, bucket) {
        (Some(_), Some(_)) => {
            bail!("{p}: has both velero and bucket; exactly one is allowed (OADP: \"cannot have both\")")
        }
        (None, None) => bail!(
            "{p}: has neither velero nor bucket; exactly one is required (OADP: \"BackupLocation must have velero or bucket configuration\")"
        ),
        (None, Some(b)) => {
            let reference = match b {
                Value::Mapping(b) => match field(b, "cloudStorageRef") {
                    Some(Value::Mapping(r)) => field(r, "name").and_then(scalar),
                    _ => None,
                },
                _ => None,
            };
            match reference {
                Some(r) => bail!(
                    "{p}.bucket: CloudStorage reference {r:?} needs a cluster to resolve; Ferry reads only velero: locations (give the bucket under velero.objectStorage)"
                ),
                None => bail!(
                    "{p}.bucket: CloudStorage references need a cluster to resolve; Ferry reads only velero: locations (give the bucket under velero.objectStorage)"
                ),
            }
        }
        (Some(Value::Mapping(v)), None) => v,
        (Some(other), None) => bail!("{p}.velero: expected a mapping, got {}", describe(other)),
    };
    let pv = format!("{p}.velero");

    let name = match opt_string(item, "name", &p)? {
        Some(n) => n,
        None => opt_string(velero, "name", &pv)?.unwrap_or_else(|| "default".to_string()),
    };
    velero_spec(velero, &pv, name)
}

/// A Velero `BackupStorageLocation`'s spec (a JSON object as the API serves it), validated as
/// a DPA's `velero:` entry is; errors name the field from `spec.` on. `name` is the object's.
pub fn backup_storage_location(name: &str, spec: &serde_json::Value) -> Result<Location> {
    let v: Value = serde_yaml_ng::to_value(spec).map_err(|e| anyhow!("spec: {e}"))?;
    match untag(&v) {
        Value::Mapping(m) => velero_spec(m, "spec", name.to_string()),
        other => bail!("spec: expected an object, got {}", describe(other)),
    }
}

/// A BackupStorageLocationSpec at `pv` (for error messages).
fn velero_spec(velero: &Mapping, pv: &str, name: String) -> Result<Location> {
    let pv = pv.to_string();
    let provider = match opt_string(velero, "provider", &pv)? {
        None => bail!("{pv}.provider: missing (expected aws, azure or gcp)"),
        Some(s) => Provider::from_name(&s)
            .ok_or_else(|| anyhow!("{pv}.provider: unknown provider {s:?} (expected aws, azure or gcp)"))?,
    };
    let default = match field(velero, "default") {
        None => false,
        Some(v) => bool_value(v, &format!("{pv}.default"))?,
    };

    let pos = format!("{pv}.objectStorage");
    let object_storage = match field(velero, "objectStorage") {
        None => bail!("{pos}: missing (it holds the bucket)"),
        Some(Value::Mapping(m)) => m,
        Some(other) => bail!("{pos}: expected a mapping, got {}", describe(other)),
    };
    let bucket = opt_string(object_storage, "bucket", &pos)?.ok_or_else(|| anyhow!("{pos}.bucket: missing"))?;
    let prefix = opt_string(object_storage, "prefix", &pos)?;
    let ca_cert = match opt_string(object_storage, "caCert", &pos)? {
        None => None,
        Some(b64) => Some(ca_cert(&b64, &format!("{pos}.caCert"))?),
    };
    let ca_cert_ref = secret_key_ref(object_storage, "caCertRef", &pos)?;
    if ca_cert.is_some() && ca_cert_ref.is_some() {
        bail!("{pos}: has both caCert and caCertRef; set one (Velero refuses both)");
    }

    let pc = format!("{pv}.config");
    let empty = Mapping::new();
    let config = match field(velero, "config") {
        None => &empty,
        Some(Value::Mapping(m)) => m,
        Some(other) => bail!("{pc}: expected a mapping, got {}", describe(other)),
    };
    let mut region = opt_string(config, "region", &pc)?;
    let s3_url = opt_string(config, "s3Url", &pc)?;
    if let Some(url) = &s3_url {
        let lower = url.to_ascii_lowercase();
        let host = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
        if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
            bail!("{pc}.s3Url: expected an http:// or https:// URL, got {url:?}");
        }
    }
    let s3_force_path_style = opt_bool(config, "s3ForcePathStyle", &pc)?;
    let insecure_skip_tls_verify = opt_bool(config, "insecureSkipTLSVerify", &pc)?;
    let mut profile = opt_string(config, "profile", &pc)?;
    let azure_storage_account = opt_string(config, "storageAccount", &pc)?;
    let azure_resource_group = opt_string(config, "resourceGroup", &pc)?;

    match provider {
        Provider::Aws => {
            if region.is_none() {
                if s3_url.is_none() {
                    bail!(
                        "{pc}.region: missing (required for provider aws without s3Url; S3-compatible stores set s3Url)"
                    );
                }
                region = Some(DEFAULT_S3_REGION.to_string());
            }
            if profile.is_none() {
                profile = Some(DEFAULT_AWS_PROFILE.to_string());
            }
        }
        Provider::Azure => {
            if azure_storage_account.is_none() {
                bail!("{pc}.storageAccount: missing (required for provider azure)");
            }
        }
        Provider::Gcp => {}
    }

    let credential = secret_key_ref(velero, "credential", &pv)?;

    Ok(Location {
        name,
        provider,
        bucket,
        prefix,
        ca_cert,
        region,
        s3_url,
        s3_force_path_style,
        insecure_skip_tls_verify,
        profile,
        azure_storage_account,
        azure_resource_group,
        credential,
        ca_cert_ref,
        default,
    })
}

/// A `SecretKeySelector` (`{name, key}`) at `parent.key`, if present.
fn secret_key_ref(parent: &Mapping, key: &str, path: &str) -> Result<Option<(String, String)>> {
    let p = format!("{path}.{key}");
    match field(parent, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Mapping(c)) => {
            let n = opt_string(c, "name", &p)?.ok_or_else(|| anyhow!("{p}.name: missing (the Secret's name)"))?;
            let k = opt_string(c, "key", &p)?.ok_or_else(|| anyhow!("{p}.key: missing (the key inside the Secret)"))?;
            Ok(Some((n, k)))
        }
        Some(other) => bail!("{p}: expected a mapping, got {}", describe(other)),
    }
}

/// Decodes `caCert` (base64 of a PEM bundle) and checks that it holds a certificate.
fn ca_cert(b64: &str, path: &str) -> Result<Vec<u8>> {
    if b64.trim_start().starts_with("-----BEGIN") {
        bail!("{path}: looks like raw PEM; caCert must be the base64 encoding of the PEM");
    }
    let pem = base64_decode(b64).map_err(|e| anyhow!("{path}: not valid base64 ({e})"))?;
    let text = String::from_utf8_lossy(&pem);
    let begin = text.find("-----BEGIN CERTIFICATE-----");
    let has_cert = begin.is_some_and(|b| text.get(b..).is_some_and(|rest| rest.contains("-----END CERTIFICATE-----")));
    if !has_cert {
        bail!(
            "{path}: decoded data is not a PEM certificate (no -----BEGIN CERTIFICATE----- ... -----END CERTIFICATE----- block)"
        );
    }
    Ok(pem)
}

/// Standard-alphabet base64 (as Kubernetes writes `[]byte` fields); whitespace (line-wrapped
/// YAML block scalars) is skipped and padding may be left out.
fn base64_decode(s: &str) -> std::result::Result<Vec<u8>, String> {
    use base64::Engine;
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err("empty".to_string());
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(compact.as_bytes()).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Small YAML helpers

/// Looks through YAML tags (`!!str x`, `!Custom x`).
fn untag(mut v: &Value) -> &Value {
    while let Value::Tagged(t) = v {
        v = &t.value;
    }
    v
}

/// A field of a mapping, with `null` treated as absent.
fn field<'a>(m: &'a Mapping, key: &str) -> Option<&'a Value> {
    match m.get(key).map(untag) {
        None | Some(Value::Null) => None,
        some => some,
    }
}

/// A string or number as text.
fn scalar(v: &Value) -> Option<String> {
    match untag(v) {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An optional string field; empty strings count as absent.
fn opt_string(m: &Mapping, key: &str, path: &str) -> Result<Option<String>> {
    match field(m, key) {
        None => Ok(None),
        Some(v) => match scalar(v) {
            Some(s) if s.trim().is_empty() => Ok(None),
            Some(s) => Ok(Some(s)),
            None => bail!("{path}.{key}: expected a string, got {}", describe(v)),
        },
    }
}

fn opt_bool(m: &Mapping, key: &str, path: &str) -> Result<bool> {
    match field(m, key) {
        None => Ok(false),
        Some(v) => bool_value(v, &format!("{path}.{key}")),
    }
}

/// `true`/`false` as a YAML bool or as a string (DPA config values are strings).
fn bool_value(v: &Value, path: &str) -> Result<bool> {
    match untag(v) {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        other => bail!("{path}: expected true or false, got {}", show(other)),
    }
}

/// What kind of YAML value this is, for messages.
fn describe(v: &Value) -> &'static str {
    match untag(v) {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A scalar quoted for a message (escaped, so one line), or its kind.
fn show(v: &Value) -> String {
    match untag(v) {
        Value::String(s) => format!("{:?}", truncate(s)),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => describe(other).to_string(),
    }
}

fn truncate(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", s.get(..i).unwrap_or_default()),
        None => s.to_string(),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn list(names: &[String]) -> String {
    if names.is_empty() { "none".to_string() } else { names.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// base64 of a (syntactically) PEM certificate; content is irrelevant to this module.
    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2FUZXN0\n-----END CERTIFICATE-----\n";

    fn b64(data: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    fn realistic() -> String {
        format!(
            r#"apiVersion: oadp.openshift.io/v1alpha1
kind: DataProtectionApplication
metadata:
  name: dpa
  namespace: openshift-adp
spec:
  configuration:
    velero:
      defaultPlugins: [openshift, aws, gcp, azure, csi, kubevirt]
    nodeAgent:
      enable: true
      uploaderType: kopia
  backupLocations:
  - name: minio
    velero:
      provider: aws
      objectStorage:
        bucket: oadp-backups
        prefix: cluster-a
        caCert: {ca}
      config:
        s3Url: "https://minio.example:9000"
        s3ForcePathStyle: "true"
        insecureSkipTLSVerify: "false"
        profile: minio
      credential:
        name: cloud-credentials
        key: cloud
  - name: gcp-dr
    velero:
      provider: velero.io/gcp
      default: true
      objectStorage: {{bucket: gcp-bucket, prefix: velero}}
      credential: {{name: cloud-credentials-gcp, key: cloud}}
  - name: azure
    velero:
      provider: azure
      objectStorage:
        bucket: backups-container
      config:
        resourceGroup: rg-backups
        storageAccount: ferrystore
        subscriptionId: 00000000-0000-0000-0000-000000000000
      credential:
        name: cloud-credentials-azure
        key: cloud
  snapshotLocations:
  - velero: {{provider: aws, config: {{region: minio, profile: default}}}}
"#,
            ca = b64(PEM.as_bytes())
        )
    }

    /// A one-location DPA whose `velero:` body is `velero` (indented 6 spaces).
    fn one(velero: &str) -> String {
        format!(
            "apiVersion: oadp.openshift.io/v1alpha1\nkind: DataProtectionApplication\nspec:\n  backupLocations:\n  - name: loc\n    velero:\n{velero}"
        )
    }

    const AWS_OK: &str = "      provider: aws\n      objectStorage: {bucket: b}\n      config: {region: eu-west-1}\n";

    fn err(yaml: &str) -> String {
        let e = parse(yaml).expect_err("expected an error").to_string();
        assert!(!e.contains('\n'), "error is not one line: {e}");
        e
    }

    fn assert_err(yaml: &str, needles: &[&str]) {
        let e = err(yaml);
        for n in needles {
            assert!(e.contains(n), "error {e:?} lacks {n:?}");
        }
    }

    #[test]
    fn realistic_dpa_parses_all_locations() {
        let locs = parse(&realistic()).unwrap();
        assert_eq!(locs.len(), 3);

        let m = &locs[0];
        assert_eq!(m.name, "minio");
        assert_eq!(m.provider, Provider::Aws);
        assert_eq!(m.bucket, "oadp-backups");
        assert_eq!(m.prefix.as_deref(), Some("cluster-a"));
        assert_eq!(m.ca_cert.as_deref(), Some(PEM.as_bytes()));
        assert_eq!(m.region.as_deref(), Some("us-east-1"), "s3Url default region");
        assert_eq!(m.s3_url.as_deref(), Some("https://minio.example:9000"));
        assert!(m.s3_force_path_style);
        assert!(!m.insecure_skip_tls_verify);
        assert_eq!(m.profile.as_deref(), Some("minio"));
        assert_eq!(m.credential, Some(("cloud-credentials".into(), "cloud".into())));
        assert!(!m.default);

        let g = &locs[1];
        assert_eq!(g.name, "gcp-dr");
        assert_eq!(g.provider, Provider::Gcp);
        assert_eq!(g.bucket, "gcp-bucket");
        assert_eq!(g.prefix.as_deref(), Some("velero"));
        assert_eq!(g.region, None);
        assert_eq!(g.profile, None);
        assert_eq!(g.ca_cert, None);
        assert!(g.default);

        let a = &locs[2];
        assert_eq!(a.provider, Provider::Azure);
        assert_eq!(a.bucket, "backups-container");
        assert_eq!(a.prefix, None);
        assert_eq!(a.azure_storage_account.as_deref(), Some("ferrystore"));
        assert_eq!(a.azure_resource_group.as_deref(), Some("rg-backups"));
        assert_eq!(a.credential, Some(("cloud-credentials-azure".into(), "cloud".into())));
    }

    #[test]
    fn select_by_name_and_by_default() {
        let y = realistic();
        assert_eq!(select(&y, Some("minio")).unwrap().bucket, "oadp-backups");
        assert_eq!(select(&y, Some("azure")).unwrap().provider, Provider::Azure);
        assert_eq!(select(&y, None).unwrap().name, "gcp-dr");
        let e = select(&y, Some("nope")).unwrap_err().to_string();
        assert!(e.contains("\"nope\"") && e.contains("minio, gcp-dr, azure"), "{e}");
    }

    #[test]
    fn select_only_location_without_default() {
        let l = select(&one(AWS_OK), None).unwrap();
        assert_eq!(l.name, "loc");
        assert_eq!(l.region.as_deref(), Some("eu-west-1"));
        assert_eq!(l.profile.as_deref(), Some("default"));
    }

    #[test]
    fn select_without_default_among_several_lists_names() {
        let y = realistic().replace("      default: true\n", "");
        let e = select(&y, None).unwrap_err().to_string();
        assert!(e.contains("none marked default"), "{e}");
        assert!(e.contains("minio, gcp-dr, azure"), "{e}");
        assert!(e.contains("FILE#name"), "{e}");
    }

    #[test]
    fn select_with_several_defaults_is_an_error() {
        let y = realistic().replace("      provider: azure\n", "      provider: azure\n      default: \"true\"\n");
        let e = select(&y, None).unwrap_err().to_string();
        assert!(e.contains("several") && e.contains("gcp-dr, azure"), "{e}");
    }

    #[test]
    fn select_duplicate_name_is_ambiguous() {
        let y = realistic().replace("name: azure", "name: minio");
        let e = select(&y, Some("minio")).unwrap_err().to_string();
        assert!(e.contains("several") && e.contains("0, 2"), "{e}");
    }

    #[test]
    fn unnamed_location_is_default_or_velero_name() {
        let y = one(AWS_OK).replace("  - name: loc\n", "  - \n");
        assert_eq!(parse(&y).unwrap()[0].name, "default");
        assert!(select(&y, Some("default")).is_ok());
        let y = one(&format!("      name: inner\n{AWS_OK}")).replace("  - name: loc\n", "  - \n");
        assert_eq!(parse(&y).unwrap()[0].name, "inner");
    }

    #[test]
    fn select_by_name_ignores_other_broken_entries() {
        let y = realistic().replace(
            "  snapshotLocations:",
            "  - name: cs\n    bucket:\n      cloudStorageRef: {name: my-cloudstorage}\n  snapshotLocations:",
        );
        assert_eq!(select(&y, Some("minio")).unwrap().name, "minio");
        let e = select(&y, None).unwrap_err().to_string();
        assert!(e.contains("spec.backupLocations[3].bucket"), "{e}");
        let e = select(&y, Some("cs")).unwrap_err().to_string();
        assert!(e.contains("my-cloudstorage") && e.contains("CloudStorage"), "{e}");
    }

    #[test]
    fn both_velero_and_bucket() {
        let y =
            realistic().replace("  - name: gcp-dr\n", "  - name: gcp-dr\n    bucket: {cloudStorageRef: {name: x}}\n");
        assert_err(&y, &["spec.backupLocations[1]:", "both velero and bucket"]);
    }

    #[test]
    fn neither_velero_nor_bucket() {
        let y = realistic().replace("  snapshotLocations:", "  - name: empty\n  snapshotLocations:");
        assert_err(&y, &["spec.backupLocations[3]:", "neither velero nor bucket"]);
        let y = realistic().replace("  snapshotLocations:", "  - name: empty\n    velero:\n  snapshotLocations:");
        assert_err(&y, &["spec.backupLocations[3]:", "neither"]);
    }

    #[test]
    fn cloudstorage_reference_is_reported() {
        let y = one(AWS_OK).replace(
            "    velero:\n",
            "    bucket:\n      cloudStorageRef: {name: acme-cs}\n      default: true\n    unused:\n",
        );
        assert_err(&y, &["spec.backupLocations[0].bucket:", "\"acme-cs\"", "cluster"]);
    }

    #[test]
    fn providers_and_plugin_spellings() {
        for (p, want) in [
            ("aws", Provider::Aws),
            ("velero.io/aws", Provider::Aws),
            ("gcp", Provider::Gcp),
            ("velero.io/gcp", Provider::Gcp),
            ("azure", Provider::Azure),
            ("velero.io/azure", Provider::Azure),
        ] {
            let y = one(&format!(
                "      provider: {p}\n      objectStorage: {{bucket: b}}\n      config: {{region: r, storageAccount: sa}}\n"
            ));
            assert_eq!(parse(&y).unwrap()[0].provider, want, "{p}");
        }
        assert_eq!(Provider::Azure.to_string(), "azure");
    }

    #[test]
    fn unknown_or_missing_provider() {
        assert_err(
            &one(&AWS_OK.replace("provider: aws", "provider: openstack")),
            &["spec.backupLocations[0].velero.provider:", "\"openstack\""],
        );
        assert_err(
            &one(&AWS_OK.replace("provider: aws", "provider: AWS")),
            &["spec.backupLocations[0].velero.provider:", "unknown"],
        );
        assert_err(
            &one(&AWS_OK.replace("      provider: aws\n", "")),
            &["spec.backupLocations[0].velero.provider: missing"],
        );
    }

    #[test]
    fn missing_bucket() {
        let y = realistic().replace("bucket: gcp-bucket, ", "");
        assert_err(&y, &["spec.backupLocations[1].velero.objectStorage.bucket: missing"]);
        let y = realistic().replace("bucket: gcp-bucket", "bucket: \"\"");
        assert_err(&y, &["spec.backupLocations[1].velero.objectStorage.bucket: missing"]);
        assert_err(&one("      provider: gcp\n"), &["spec.backupLocations[0].velero.objectStorage: missing"]);
        assert_err(
            &one("      provider: gcp\n      objectStorage: {bucket: [a]}\n"),
            &["spec.backupLocations[0].velero.objectStorage.bucket: expected a string"],
        );
    }

    #[test]
    fn aws_region_rules() {
        // AWS itself: region required.
        assert_err(
            &one("      provider: aws\n      objectStorage: {bucket: b}\n"),
            &["spec.backupLocations[0].velero.config.region: missing", "s3Url"],
        );
        assert_err(
            &one("      provider: aws\n      objectStorage: {bucket: b}\n      config: {s3ForcePathStyle: true}\n"),
            &["spec.backupLocations[0].velero.config.region: missing"],
        );
        // S3-compatible: region optional, defaults to us-east-1; a given one is kept.
        let y = one(
            "      provider: aws\n      objectStorage: {bucket: b}\n      config: {s3Url: 'http://10.0.0.1:9000'}\n",
        );
        assert_eq!(parse(&y).unwrap()[0].region.as_deref(), Some("us-east-1"));
        let y = one(
            "      provider: aws\n      objectStorage: {bucket: b}\n      config: {s3Url: 'https://s3.eu-de.cloud-object-storage.appdomain.cloud', region: eu-de}\n",
        );
        assert_eq!(parse(&y).unwrap()[0].region.as_deref(), Some("eu-de"));
    }

    #[test]
    fn s3_url_must_be_http() {
        assert_err(
            &one("      provider: aws\n      objectStorage: {bucket: b}\n      config: {s3Url: 'minio:9000'}\n"),
            &["spec.backupLocations[0].velero.config.s3Url:", "\"minio:9000\""],
        );
        assert_err(
            &one("      provider: aws\n      objectStorage: {bucket: b}\n      config: {s3Url: 'https://'}\n"),
            &["velero.config.s3Url:"],
        );
    }

    #[test]
    fn azure_needs_storage_account() {
        let y = realistic().replace("        storageAccount: ferrystore\n", "");
        assert_err(&y, &["spec.backupLocations[2].velero.config.storageAccount: missing", "azure"]);
        assert_err(
            &one("      provider: azure\n      objectStorage: {bucket: c}\n"),
            &["spec.backupLocations[0].velero.config.storageAccount: missing"],
        );
    }

    #[test]
    fn ca_cert_must_be_base64_pem() {
        let with =
            |ca: &str| one(&format!("      provider: gcp\n      objectStorage: {{bucket: b, caCert: \"{ca}\"}}\n"));
        assert_err(&with("not*base64!"), &["spec.backupLocations[0].velero.objectStorage.caCert:", "not valid base64"]);
        assert_err(&with("QUJD="), &["caCert:", "not valid base64"]);
        assert_err(&with("QUJDRA"), &["caCert:", "not a PEM certificate"]);
        assert_err(&with(&b64(b"-----BEGIN CERTIFICATE-----\nno end\n")), &["caCert:", "not a PEM"]);
        assert_err(&with("-----BEGIN CERTIFICATE-----"), &["caCert:", "raw PEM"]);
        // Line-wrapped base64 (a YAML block scalar) is fine.
        let wrapped: String = b64(PEM.as_bytes())
            .as_bytes()
            .chunks(20)
            .map(|c| format!("          {}\n", String::from_utf8_lossy(c)))
            .collect();
        let y =
            one(&format!("      provider: gcp\n      objectStorage:\n        bucket: b\n        caCert: |\n{wrapped}"));
        assert_eq!(parse(&y).unwrap()[0].ca_cert.as_deref(), Some(PEM.as_bytes()));
    }

    #[test]
    fn bool_fields_accept_true_false_only() {
        let with = |cfg: &str| {
            one(&format!(
                "      provider: aws\n      objectStorage: {{bucket: b}}\n      config: {{region: r, {cfg}}}\n"
            ))
        };
        let l = &parse(&with("s3ForcePathStyle: true, insecureSkipTLSVerify: 'True'")).unwrap()[0];
        assert!(l.s3_force_path_style && l.insecure_skip_tls_verify);
        let l = &parse(&with("s3ForcePathStyle: 'false', insecureSkipTLSVerify: false")).unwrap()[0];
        assert!(!l.s3_force_path_style && !l.insecure_skip_tls_verify);
        assert_err(
            &with("s3ForcePathStyle: 'yes'"),
            &["spec.backupLocations[0].velero.config.s3ForcePathStyle:", "\"yes\""],
        );
        assert_err(
            &with("insecureSkipTLSVerify: 1"),
            &["spec.backupLocations[0].velero.config.insecureSkipTLSVerify:", "got 1"],
        );
        assert_err(
            &one(&format!("      default: maybe\n{AWS_OK}")),
            &["spec.backupLocations[0].velero.default:", "\"maybe\""],
        );
    }

    #[test]
    fn credential_needs_name_and_key() {
        assert_err(
            &one(&format!("{AWS_OK}      credential: {{name: s}}\n")),
            &["spec.backupLocations[0].velero.credential.key: missing"],
        );
        assert_err(
            &one(&format!("{AWS_OK}      credential: s\n")),
            &["spec.backupLocations[0].velero.credential: expected a mapping"],
        );
    }

    #[test]
    fn not_a_dpa() {
        assert_err(
            &realistic().replace("kind: DataProtectionApplication", "kind: BackupStorageLocation"),
            &["kind:", "\"BackupStorageLocation\"", "not a DataProtectionApplication"],
        );
        assert_err(&realistic().replace("kind: DataProtectionApplication\n", ""), &["kind: missing"]);
        assert_err(
            &realistic().replace("oadp.openshift.io/v1alpha1", "velero.io/v1"),
            &["apiVersion:", "\"velero.io/v1\""],
        );
        assert_err("- a\n- b\n", &["DPA:", "a list"]);
        assert_err("", &["DPA:"]);
        assert_err("just text", &["DPA:", "a string"]);
    }

    #[test]
    fn no_backup_locations() {
        let head = "apiVersion: oadp.openshift.io/v1alpha1\nkind: DataProtectionApplication\n";
        assert_err(head, &["spec: missing"]);
        assert_err(&format!("{head}spec: 3\n"), &["spec: expected a mapping"]);
        assert_err(&format!("{head}spec:\n  configuration: {{}}\n"), &["spec.backupLocations: missing"]);
        assert_err(&format!("{head}spec:\n  backupLocations: []\n"), &["spec.backupLocations: empty"]);
        assert_err(
            &format!("{head}spec:\n  backupLocations: {{velero: {{}}}}\n"),
            &["spec.backupLocations: expected a list"],
        );
        assert_err(
            &format!("{head}spec:\n  backupLocations: [42]\n"),
            &["spec.backupLocations[0]: expected a mapping"],
        );
    }

    #[test]
    fn yaml_syntax_error_has_line_and_column() {
        let y = realistic().replace("        bucket: backups-container\n", "        bucket: [oops\n");
        let e = err(&y);
        assert!(e.starts_with("DPA YAML:") && e.contains("line") && e.contains("column"), "{e}");
        let e = err("kind: DataProtectionApplication\n\tspec: 1\n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn never_panics() {
        let full = realistic();
        let mut inputs: Vec<String> = full.char_indices().map(|(i, _)| full[..i].to_string()).collect();
        let deep = format!(
            "apiVersion: oadp.openshift.io/v1alpha1\nkind: DataProtectionApplication\nspec: {}",
            "[".repeat(10_000)
        );
        inputs.extend([
            deep,
            "---\n---\n".into(),
            "~".into(),
            "\u{feff}\0\u{1}\u{ffff}".into(),
            "a: &x [*x, *x]".into(),
            "spec: !!binary AAAA\nkind: !Custom DataProtectionApplication".into(),
            one("      provider: !!str aws\n      objectStorage: !tag {bucket: 123}\n      config: {region: 1.5}\n"),
            one("      provider: aws\n      objectStorage: {bucket: b, caCert: '===='}\n"),
            one("      provider: aws\n      objectStorage: {bucket: b, caCert: 'Q'}\n"),
            one("      provider: [aws]\n"),
            one("      config: {?: x}\n"),
        ]);
        for y in &inputs {
            let _ = parse(y);
            let _ = select(y, None);
            let _ = select(y, Some("minio"));
            let _ = aws_credentials(y, "default");
        }
        // Tags are looked through; numbers are accepted as strings.
        let l = &parse(&inputs[inputs.len() - 5]).unwrap()[0];
        assert_eq!((l.bucket.as_str(), l.region.as_deref()), ("123", Some("1.5")));
    }

    #[test]
    fn base64_decoding() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar", PEM] {
            let enc = b64(s.as_bytes());
            if s.is_empty() {
                assert!(base64_decode(&enc).is_err());
                continue;
            }
            assert_eq!(base64_decode(&enc).unwrap(), s.as_bytes(), "{enc}");
            assert_eq!(base64_decode(enc.trim_end_matches('=')).unwrap(), s.as_bytes());
            let spaced: String = enc.chars().flat_map(|c| [c, '\n']).collect();
            assert_eq!(base64_decode(&spaced).unwrap(), s.as_bytes());
        }
        assert!(base64_decode("Zg==Zg==").is_err());
        assert!(base64_decode("Z").is_err());
        assert!(base64_decode("Zm9v_-").is_err());
    }

    const INI: &str = "\u{feff}# Velero credentials (Secret cloud-credentials, key cloud)\n\
[default]\n\
aws_access_key_id=AKIADEFAULT\n\
aws_secret_access_key=secret/default+key\n\
\n\
; MinIO\r\n\
[ minio ]\r\n\
  aws_access_key_id = minio-user   # the console user\r\n\
  AWS_SECRET_ACCESS_KEY =  minio-pass  \r\n\
aws_session_token = token==\r\n\
[profile ibm]\n\
aws_access_key_id=ibm-id\n\
region = us-south\n\
[broken]\n\
aws_access_key_id=\n\
aws_secret_access_key=x\n";

    #[test]
    fn ini_profiles() {
        let d = aws_credentials(INI, "default").unwrap();
        assert_eq!(d.access_key_id, "AKIADEFAULT");
        assert_eq!(d.secret_access_key, "secret/default+key");
        assert_eq!(d.session_token, None);
        assert_eq!(aws_credentials(INI, "").unwrap(), d);

        let m = aws_credentials(INI, "minio").unwrap();
        assert_eq!(m.access_key_id, "minio-user");
        assert_eq!(m.secret_access_key, "minio-pass");
        assert_eq!(m.session_token.as_deref(), Some("token=="));
    }

    #[test]
    fn ini_errors_name_profile_and_key() {
        let e = aws_credentials(INI, "ibm").unwrap_err().to_string();
        assert!(e.contains("[ibm]") && e.contains("aws_secret_access_key missing"), "{e}");
        let e = aws_credentials(INI, "broken").unwrap_err().to_string();
        assert!(e.contains("[broken]") && e.contains("aws_access_key_id is empty"), "{e}");
        let e = aws_credentials(INI, "prod").unwrap_err().to_string();
        assert!(e.contains("[prod]") && e.contains("default, minio, ibm, broken"), "{e}");
        let e = aws_credentials("", "default").unwrap_err().to_string();
        assert!(e.contains("found: none"), "{e}");
    }

    #[test]
    fn ini_syntax_errors_do_not_echo_values() {
        let e = aws_credentials("[default]\nsupersecretvalue\n", "default").unwrap_err().to_string();
        assert!(e.contains("line 2") && !e.contains("supersecret"), "{e}");
        let e = aws_credentials("[default\n", "default").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("']'"), "{e}");
        let e = aws_credentials("[]\n", "default").unwrap_err().to_string();
        assert!(e.contains("empty section"), "{e}");
    }

    #[test]
    fn ini_repeated_section_merges_and_debug_redacts() {
        let ini =
            "[default]\naws_access_key_id=a\n[other]\naws_access_key_id=o\n[default]\naws_secret_access_key=s3cr3t\n";
        let c = aws_credentials(ini, "default").unwrap();
        assert_eq!((c.access_key_id.as_str(), c.secret_access_key.as_str()), ("a", "s3cr3t"));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t") && dbg.contains("redacted"), "{dbg}");
    }
}
