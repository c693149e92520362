//! The filesystem round trip against real object-storage servers on loopback: moto
//! for S3 and Azurite for Azure Blob, started by `tests/servers.sh`. Skipped (with a message)
//! when their endpoints are not in the environment. No GCS server that object_store can talk to
//! exists in the registries this project can use, so GCS is covered by unit tests only.

use crate::common::tree::compare_trees;
use crate::common::{Env, stderr};

pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )
}

/// The moto endpoint and bucket from `tests/servers.sh start`, or `None` (with a message) when
/// the servers are not running.
pub(crate) fn moto() -> Option<(String, String)> {
    match (std::env::var("FERRY_TEST_S3_ENDPOINT"), std::env::var("FERRY_TEST_S3_BUCKET")) {
        (Ok(e), Ok(b)) => Some((e, b)),
        _ => {
            crate::common::skip("FERRY_TEST_S3_ENDPOINT not set (tests/servers.sh start)");
            None
        }
    }
}

fn round_trip(location: &str) {
    let env = Env::at(location);
    let src = env.path("src");
    std::fs::create_dir(&src).unwrap();
    crate::fidelity::build(&src);
    let s = env.backup(&src, &[]);
    assert_eq!(crate::common::num(&s, "errors"), 0, "{s}");
    let requests = &s["requests"];
    assert!(requests["put"].as_u64().unwrap() >= 3, "packs, index and snapshot were PUT: {requests}");
    let target = env.path("target");
    let out = env.restore("latest", &target, &["--verify", "--allow-devices", "--keep-setuid"]);
    assert_eq!(out.status.code(), Some(0), "restore from {location}: {}", stderr(&out));
    let diffs = compare_trees(&src, &target);
    assert!(diffs.is_empty(), "restored tree from {location} differs:\n{}", diffs.join("\n"));
    // A second, unchanged backup costs no LIST beyond opening the repository and no pack PUT.
    let s2 = env.backup(&src, &[]);
    assert_eq!(crate::common::num(&s2, "data_blobs_added"), 0, "{s2}");
    // check --read-data reads every pack through the object store and finds nothing wrong.
    let out = env.ferry().args(["check", "--json", "--read-data"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "check on {location}: {}", stderr(&out));
    let c = crate::common::summary_of(&out.stdout);
    assert!(c["ok"] == true && crate::common::num(&c, "packs_read") >= 1, "{c}");
    assert_eq!(crate::common::num(&c, "packs_read"), crate::common::num(&c, "packs"), "{c}");
    // forget, prune (mark, then sweep) and repair index through the object store.
    let other = env.path("other");
    crate::common::write(&other.join("x"), &crate::common::random_bytes("cloud-gc", 300 << 10));
    let gone = env.backup(&other, &[])["snapshot_id"].as_str().unwrap().to_string();
    for args in [&["forget", &gone, "--prune"][..], &["prune", "--sweep-now"], &["repair", "index"]] {
        let out = env.ferry().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?} on {location}: {}", stderr(&out));
    }
    let out = env.ferry().args(["check", "--json", "--read-data"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "check after prune on {location}: {}", stderr(&out));
    let c = crate::common::summary_of(&out.stdout);
    assert_eq!(crate::common::num(&c, "unreferenced_packs"), 0, "{c}");
    let target = env.path("target-after-prune");
    let out = env.restore("latest", &target, &["--allow-devices", "--keep-setuid"]);
    assert_eq!(out.status.code(), Some(0), "restore after prune from {location}: {}", stderr(&out));
    assert!(compare_trees(&src, &target).is_empty());
}

#[test]
fn filesystem_round_trip_on_s3() {
    if crate::common::under_qemu() {
        return;
    }
    let Some((endpoint, bucket)) = moto() else { return };
    round_trip(&format!("s3:{endpoint}/{bucket}/{}", unique("e2e")));
}

#[test]
fn filesystem_round_trip_on_azure() {
    if crate::common::under_qemu() {
        return;
    }
    let Ok(container) = std::env::var("FERRY_TEST_AZURE_CONTAINER") else {
        crate::common::skip("FERRY_TEST_AZURE_CONTAINER not set (tests/servers.sh start)");
        return;
    };
    round_trip(&format!("azure:{container}/{}", unique("e2e")));
}

#[test]
fn verbose_levels_keep_the_http_libraries_quiet_until_the_third() {
    let Some((endpoint, bucket)) = moto() else { return };
    let env = Env::at(&format!("s3:{endpoint}/{bucket}/{}", unique("verbose")));
    let log = |v: &str| stderr(&env.ferry().args([v, "snapshots"]).output().unwrap());
    // -vv: Ferry's debug lines, none of the HTTP client's (one per connection and request).
    let two = log("-vv");
    assert!(two.contains("open files limit"), "Ferry's own debug line is missing at -vv:\n{two}");
    assert!(!two.contains("connecting to"), "the HTTP client's debug lines at -vv:\n{two}");
    // -vvv: theirs too.
    let three = log("-vvv");
    assert!(three.contains("connecting to"), "no HTTP client debug line at -vvv:\n{three}");
}

#[test]
fn bad_credentials_and_missing_bucket_are_named_errors() {
    if crate::common::under_qemu() {
        return;
    }
    let Ok(endpoint) = std::env::var("FERRY_TEST_S3_ENDPOINT") else {
        crate::common::skip("FERRY_TEST_S3_ENDPOINT not set (tests/servers.sh start)");
        return;
    };
    let at = |loc: String| {
        let mut env = Env::empty();
        env.repo = loc.into();
        env
    };
    // A bucket that does not exist.
    let env = at(format!("s3:{endpoint}/no-such-bucket-{}/r", std::process::id()));
    let out = env.ferry().args(["snapshots"]).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("no-such-bucket"), "{}", stderr(&out));
    // No credentials at all: an error naming the settings, never a metadata-server lookup.
    let env = at(format!("s3:{endpoint}/ferry-test/x"));
    let out = env
        .ferry()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SHARED_CREDENTIALS_FILE")
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("AWS_ACCESS_KEY_ID"), "{}", stderr(&out));
    // An unreachable endpoint fails within a bounded time, naming the location.
    let t = std::time::Instant::now();
    let env = at("s3:http://127.0.0.1:9/ferry-test/x".into());
    let out = env.ferry().args(["snapshots"]).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("127.0.0.1:9"), "{}", stderr(&out));
    assert!(t.elapsed() < std::time::Duration::from_secs(180), "took {:?}", t.elapsed());
}

/// `cmd` run in a private mount namespace where /etc/hosts also maps `name` to 127.0.0.1: how a
/// test reaches a virtual-hosted-style bucket (`bucket.localhost`) on a loopback server without
/// touching the machine's name resolution.
fn with_host_alias(env: &Env, name: &str, inner: &std::process::Command) -> std::process::Command {
    let hosts = env.path("hosts");
    let mut text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    text.push_str(&format!("\n127.0.0.1 {name}\n"));
    std::fs::write(&hosts, text).unwrap();
    let mut c = std::process::Command::new("unshare");
    c.args(["--mount", "sh", "-c", "mount --bind \"$0\" /etc/hosts && exec \"$@\""]).arg(&hosts);
    c.arg(inner.get_program()).args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// A DataProtectionApplication with two AWS locations on the same bucket and prefix: one with
/// path-style requests to 127.0.0.1, one with virtual-hosted style to localhost (Velero's
/// default, `s3ForcePathStyle: "false"`), and credentials from a Velero INI file with a profile.
#[test]
fn dpa_location_on_s3_path_and_virtual_hosted_style() {
    if crate::common::under_qemu() {
        return;
    }
    let Some((endpoint, bucket)) = moto() else { return };
    let port = endpoint.rsplit(':').next().unwrap();
    let env = Env::empty();
    let prefix = unique("dpa");
    let dpa = env.path("dpa.yaml");
    std::fs::write(
        &dpa,
        format!(
            "apiVersion: oadp.openshift.io/v1alpha1
kind: DataProtectionApplication
metadata: {{name: dpa, namespace: openshift-adp}}
spec:
  backupLocations:
  - name: paths
    velero:
      provider: aws
      objectStorage: {{bucket: {bucket}, prefix: {prefix}}}
      config: {{region: us-east-1, s3Url: \"http://127.0.0.1:{port}\", s3ForcePathStyle: \"true\", profile: ferry}}
      credential: {{name: cloud-credentials, key: cloud}}
  - name: vhost
    velero:
      provider: aws
      objectStorage: {{bucket: {bucket}, prefix: {prefix}}}
      config: {{region: us-east-1, s3Url: \"http://localhost:{port}/\", profile: ferry}}
      credential: {{name: cloud-credentials, key: cloud}}
"
        ),
    )
    .unwrap();
    let creds = env.path("cloud");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = nope\n\n[ferry]\naws_access_key_id = test\naws_secret_access_key = test\n",
    )
    .unwrap();
    // Credentials only from the file: none in the environment.
    let ferry = |loc: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        for v in ["FERRY_REPOSITORY", "FERRY_PASSWORD_FILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            c.env_remove(v);
        }
        c.env_remove("AWS_SHARED_CREDENTIALS_FILE").env("FERRY_PASSWORD", "pw").env("FERRY_CACHE_DIR", &env.cache);
        c.arg("--location").arg(format!("{}#{loc}", dpa.display())).arg("--credentials-file").arg(&creds);
        c
    };
    let out = ferry("paths").args(["init", "--kdf-memory", "64", "--kdf-iterations", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "init: {}", stderr(&out));
    let src = env.path("src");
    std::fs::create_dir(&src).unwrap();
    crate::fidelity::build(&src);
    let out = ferry("paths").args(["backup", "--json"]).arg(&src).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "backup: {}", stderr(&out));

    // Virtual-hosted style names the bucket in the host: without an alias it cannot resolve.
    let out = ferry("vhost").arg("snapshots").output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains(&format!("{bucket}.localhost")), "{}", stderr(&out));
    // With the alias it reaches the same repository the path-style location wrote.
    let alias = format!("{bucket}.localhost");
    let mut cmd = ferry("vhost");
    cmd.args(["restore", "latest", "--verify", "--allow-devices", "--keep-setuid", "--target"]).arg(env.path("target"));
    let out = with_host_alias(&env, &alias, &cmd).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "virtual-hosted restore: {}", stderr(&out));
    let diffs = compare_trees(&src, &env.path("target"));
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// An Azure location of a DPA with Velero's KEY=VALUE credentials file (AZURE_CREDENTIALS_FILE).
#[test]
fn dpa_location_on_azure_with_velero_credentials_file() {
    if crate::common::under_qemu() {
        return;
    }
    let (Ok(container), Ok(key)) = (std::env::var("FERRY_TEST_AZURE_CONTAINER"), std::env::var("AZURE_STORAGE_KEY"))
    else {
        crate::common::skip("FERRY_TEST_AZURE_CONTAINER not set (tests/servers.sh start)");
        return;
    };
    let env = Env::empty();
    let dpa = env.path("dpa.yaml");
    std::fs::write(
        &dpa,
        format!(
            "apiVersion: oadp.openshift.io/v1alpha1
kind: DataProtectionApplication
spec:
  backupLocations:
  - velero:
      provider: azure
      default: true
      objectStorage: {{bucket: {container}, prefix: {}}}
      config: {{storageAccount: devstoreaccount1, resourceGroup: rg}}
      credential: {{name: cloud-credentials-azure, key: cloud}}
",
            unique("dpa")
        ),
    )
    .unwrap();
    let creds = env.path("cloud");
    let run = |secret: &str, args: &[&str]| {
        std::fs::write(
            &creds,
            format!("AZURE_SUBSCRIPTION_ID=sub\nAZURE_RESOURCE_GROUP=rg\nAZURE_STORAGE_ACCOUNT_ACCESS_KEY={secret}\n"),
        )
        .unwrap();
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        c.env_remove("AZURE_STORAGE_KEY").env_remove("FERRY_REPOSITORY").env("FERRY_PASSWORD", "pw");
        c.env("AZURE_CREDENTIALS_FILE", &creds).env("FERRY_CACHE_DIR", &env.cache);
        c.arg("--location").arg(&dpa).args(args);
        c.output().unwrap()
    };
    let out = run(&key, &["init", "--kdf-memory", "64", "--kdf-iterations", "1"]);
    assert_eq!(out.status.code(), Some(0), "init: {}", stderr(&out));
    let src = env.path("src");
    std::fs::create_dir(&src).unwrap();
    crate::fidelity::build(&src);
    let out = run(&key, &["backup", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "backup: {}", stderr(&out));
    let target = env.path("target");
    let out = run(
        &key,
        &["restore", "latest", "--verify", "--allow-devices", "--keep-setuid", "--target", target.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "restore: {}", stderr(&out));
    let diffs = compare_trees(&src, &target);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    // A wrong key in the file: refused by the server, named, with a hint.
    let wrong = "d3JvbmcgYXp1cml0ZSBrZXkgd3JvbmcgYXp1cml0ZSBrZXkgd3JvbmcgYXp1cml0ZSBrZXk=";
    let out = run(wrong, &["snapshots"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("devstoreaccount1") || stderr(&out).contains("Azure"), "{}", stderr(&out));
    assert!(stderr(&out).contains("check the credentials"), "{}", stderr(&out));
}
