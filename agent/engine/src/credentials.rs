//! Velero's Azure credentials file: the `KEY=VALUE` text of the secret OADP mounts for the
//! `azure` plugin (`AZURE_CREDENTIALS_FILE`, usually `/credentials/cloud`).
//!
//! Recognized: `AZURE_STORAGE_ACCOUNT_ACCESS_KEY` (a storage account key), or
//! `AZURE_TENANT_ID` + `AZURE_CLIENT_ID` + `AZURE_CLIENT_SECRET` (a service principal). Other
//! keys Velero writes there (`AZURE_SUBSCRIPTION_ID`, `AZURE_RESOURCE_GROUP`,
//! `AZURE_CLOUD_NAME`) are accepted and not needed for blob access. Blank lines, `#` comments,
//! an `export ` prefix and quotes around values are tolerated. Errors never echo values.

use anyhow::{Result, bail};

/// How to authenticate to Azure Blob.
#[derive(Clone, PartialEq, Eq)]
pub enum AzureAuth {
    AccessKey(String),
    ServicePrincipal { tenant_id: String, client_id: String, client_secret: String },
}

impl std::fmt::Debug for AzureAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AzureAuth::AccessKey(_) => f.write_str("AccessKey(<redacted>)"),
            AzureAuth::ServicePrincipal { tenant_id, client_id, .. } => {
                write!(
                    f,
                    "ServicePrincipal {{ tenant_id: {tenant_id}, client_id: {client_id}, client_secret: <redacted> }}"
                )
            }
        }
    }
}

/// Parse the text of a Velero Azure credentials file.
pub fn azure_credentials(text: &str) -> Result<AzureAuth> {
    let mut get = std::collections::HashMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            bail!("credentials file line {}: expected KEY=VALUE", n + 1);
        };
        let value = value.trim();
        let value =
            ['"', '\''].iter().find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q))).unwrap_or(value);
        get.insert(key.trim().to_string(), value.to_string());
    }
    let some = |k: &str| get.get(k).filter(|v| !v.is_empty()).cloned();
    if let Some(key) = some("AZURE_STORAGE_ACCOUNT_ACCESS_KEY") {
        return Ok(AzureAuth::AccessKey(key));
    }
    match (some("AZURE_TENANT_ID"), some("AZURE_CLIENT_ID"), some("AZURE_CLIENT_SECRET")) {
        (Some(tenant_id), Some(client_id), Some(client_secret)) => {
            Ok(AzureAuth::ServicePrincipal { tenant_id, client_id, client_secret })
        }
        (t, c, s) if t.is_some() || c.is_some() || s.is_some() => {
            let missing: Vec<_> = [("AZURE_TENANT_ID", t), ("AZURE_CLIENT_ID", c), ("AZURE_CLIENT_SECRET", s)]
                .into_iter()
                .filter(|(_, v)| v.is_none())
                .map(|(k, _)| k)
                .collect();
            bail!("credentials file: a service principal needs {} too", missing.join(" and "))
        }
        _ if get.contains_key("AZURE_FEDERATED_TOKEN_FILE") || get.contains_key("AZURE_CLIENT_CERTIFICATE_PATH") => {
            bail!(
                "credentials file: workload identity and client certificates are not supported; \
                 use AZURE_STORAGE_ACCOUNT_ACCESS_KEY or a client secret"
            )
        }
        _ => bail!(
            "credentials file: no AZURE_STORAGE_ACCOUNT_ACCESS_KEY, nor AZURE_TENANT_ID + AZURE_CLIENT_ID + \
             AZURE_CLIENT_SECRET"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn velero_file_with_an_account_key() {
        let f = "AZURE_SUBSCRIPTION_ID=sub\nAZURE_RESOURCE_GROUP=rg\n# note\nAZURE_CLOUD_NAME=AzurePublicCloud\n\
                 export AZURE_STORAGE_ACCOUNT_ACCESS_KEY=\"s3cr3t==\"\n";
        assert_eq!(azure_credentials(f).unwrap(), AzureAuth::AccessKey("s3cr3t==".into()));
    }

    #[test]
    fn service_principal_and_what_is_missing() {
        let f = "AZURE_TENANT_ID=t\nAZURE_CLIENT_ID=c\nAZURE_CLIENT_SECRET=verysecret\n";
        let a = azure_credentials(f).unwrap();
        assert_eq!(
            a,
            AzureAuth::ServicePrincipal {
                tenant_id: "t".into(),
                client_id: "c".into(),
                client_secret: "verysecret".into()
            }
        );
        assert!(!format!("{a:?}").contains("verysecret"));
        let e = azure_credentials("AZURE_TENANT_ID=t\nAZURE_CLIENT_SECRET=verysecret\n").unwrap_err().to_string();
        assert!(e.contains("AZURE_CLIENT_ID") && !e.contains("verysecret"), "{e}");
    }

    #[test]
    fn useless_or_broken_files_are_named_errors() {
        let e = azure_credentials("AZURE_SUBSCRIPTION_ID=sub\n").unwrap_err().to_string();
        assert!(e.contains("AZURE_STORAGE_ACCOUNT_ACCESS_KEY"), "{e}");
        let e = azure_credentials("AZURE_FEDERATED_TOKEN_FILE=/var/run/token\n").unwrap_err().to_string();
        assert!(e.contains("workload identity"), "{e}");
        let e = azure_credentials("[default]\naws_access_key_id=x\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
