//! `--ca-cert` and `--insecure-skip-tls-verify` (and a DPA location's `caCert` and
//! `insecureSkipTLSVerify`) against a real TLS endpoint on 127.0.0.1: a TLS-terminating proxy
//! (rustls, in this test process) in front of the moto S3 server of `tests/servers.sh`, with a
//! throwaway CA and server certificate made by the `openssl` command. The proxy records whether
//! each connection began with a TLS handshake, so a silent fallback to plaintext would be seen.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::common::devices::run;
use crate::common::{Env, compare_trees, stderr, write};

/// A CA and a server certificate for 127.0.0.1 signed by it (PEM files in `dir`).
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=ferry test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    );
    (cert, key)
}

fn make_pki(dir: &Path) -> Pki {
    let (ca, ca_key) = make_ca(dir, "ca");
    let (other_ca, _) = make_ca(dir, "other-ca");
    let (key, csr, cert, ext) =
        (dir.join("server.key"), dir.join("server.csr"), dir.join("server.pem"), dir.join("server.ext"));
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let p = |x: &PathBuf| x.to_str().unwrap().to_string();
    run(
        "openssl",
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p(&key),
            "-out",
            &p(&csr),
        ],
    );
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&ca),
            "-CAkey",
            &p(&ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p(&ext),
            "-out",
            &p(&cert),
        ],
    );
    Pki { ca, other_ca, cert, key }
}

/// A TLS-terminating TCP proxy on 127.0.0.1 forwarding to `upstream` in plaintext.
struct TlsProxy {
    port: u16,
    /// Connections whose first byte was a TLS handshake record.
    tls: Arc<AtomicUsize>,
    /// Connections that began with anything else (closed at once).
    plaintext: Arc<AtomicUsize>,
    /// Handshakes that completed (the client accepted the certificate).
    established: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

impl TlsProxy {
    fn start(pki: &Pki, upstream: SocketAddr) -> TlsProxy {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&pki.cert).unwrap().collect::<Result<_, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tls, plaintext, established) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let counters = (tls.clone(), plaintext.clone(), established.clone());
        rt.spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { continue };
                let (acceptor, (tls, plaintext, established)) = (acceptor.clone(), counters.clone());
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    match conn.peek(&mut first).await {
                        Ok(1) if first[0] == 0x16 => tls.fetch_add(1, SeqCst),
                        Ok(_) | Err(_) => return plaintext.fetch_add(1, SeqCst),
                    };
                    let Ok(mut client) = acceptor.accept(conn).await else { return 0 };
                    established.fetch_add(1, SeqCst);
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return 0 };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    0
                });
            }
        });
        TlsProxy { port, tls, plaintext, established, _rt: rt }
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )
}

/// `ferry --repo env.repo` with the test password and cache, the given TLS arguments, and no
/// extra trust from the environment.
fn ferry(env: &Env, tls: &[&std::ffi::OsStr]) -> assert_cmd::Command {
    let mut c = env.ferry();
    c.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR").env_remove("AWS_CA_BUNDLE");
    c.args(tls);
    c
}

#[test]
fn tls_ca_cert_and_insecure_skip_verify_against_a_real_tls_endpoint() {
    if crate::common::under_qemu() {
        return;
    }
    let (Ok(endpoint), Ok(bucket)) = (std::env::var("FERRY_TEST_S3_ENDPOINT"), std::env::var("FERRY_TEST_S3_BUCKET"))
    else {
        crate::common::skip("FERRY_TEST_S3_ENDPOINT not set (tests/servers.sh start)");
        return;
    };
    let upstream: SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    let mut env = Env::empty();
    let pki = make_pki(env.tmp.path());
    let proxy = TlsProxy::start(&pki, upstream);
    let location = format!("s3:https://127.0.0.1:{}/{bucket}/{}", proxy.port, unique("tls"));
    env.repo = PathBuf::from(&location);
    let (ca, other_ca) = (pki.ca.as_os_str(), pki.other_ca.as_os_str());
    let with_ca = [std::ffi::OsStr::new("--ca-cert"), ca];
    let insecure = [std::ffi::OsStr::new("--insecure-skip-tls-verify")];

    // Without the CA: a certificate error, non-zero, naming the location; nothing created.
    let out = ferry(&env, &[]).args(["init", "--kdf-memory", "64", "--kdf-iterations", "1"]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{}", proxy.port)), "the error names the endpoint: {err}");
    assert!(err.to_lowercase().contains("certificate"), "the error says the certificate is the problem: {err}");
    assert!(err.contains("--ca-cert FILE"), "the error says what to do: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(proxy.tls.load(SeqCst) >= 1, "the client spoke TLS");
    assert_eq!(proxy.established.load(SeqCst), 0, "no handshake may complete with an unknown CA");
    // Another CA is no better.
    let out = ferry(&env, &[std::ffi::OsStr::new("--ca-cert"), other_ca])
        .args(["init", "--kdf-memory", "64", "--kdf-iterations", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(proxy.established.load(SeqCst), 0, "a handshake completed with the wrong CA");

    // With --ca-cert: init, backup, restore all work over TLS.
    let out = ferry(&env, &with_ca).args(["init", "--kdf-memory", "64", "--kdf-iterations", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "init with --ca-cert: {}", stderr(&out));
    let src = env.path("src");
    write(&src.join("a"), b"over TLS");
    write(&src.join("dir/b"), &crate::common::random_bytes("tls", 300_000));
    let out = ferry(&env, &with_ca).args(["backup", "--json"]).arg(&src).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "backup with --ca-cert: {}", stderr(&out));
    let established = proxy.established.load(SeqCst);
    assert!(established >= 1, "the backup went through the TLS proxy");
    let target = env.path("target");
    let out = ferry(&env, &with_ca).args(["restore", "latest", "--verify", "--target"]).arg(&target).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "restore with --ca-cert: {}", stderr(&out));
    let diffs = compare_trees(&src, &target);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));

    // With --insecure-skip-tls-verify (and no CA): works, still over TLS.
    let before = proxy.established.load(SeqCst);
    let out = ferry(&env, &insecure).args(["snapshots", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "--insecure-skip-tls-verify: {}", stderr(&out));
    assert!(stderr(&out).contains("TLS certificate verification is disabled"), "a warning says so: {}", stderr(&out));
    let snaps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    assert!(proxy.established.load(SeqCst) > before, "the insecure run still used TLS");

    // A DPA location: caCert (base64 of the PEM) and insecureSkipTLSVerify.
    let prefix = location.rsplit('/').next().unwrap().to_string();
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&pki.ca).unwrap())
    };
    let dpa = env.path("dpa.yaml");
    let loc = |name: &str, extra_os: &str, extra_cfg: &str| {
        format!(
            "  - name: {name}
    velero:
      provider: aws
      objectStorage: {{bucket: {bucket}, prefix: {prefix}{extra_os}}}
      config: {{region: us-east-1, s3Url: \"https://127.0.0.1:{}\", s3ForcePathStyle: \"true\"{extra_cfg}}}
",
            proxy.port
        )
    };
    std::fs::write(
        &dpa,
        format!(
            "apiVersion: oadp.openshift.io/v1alpha1\nkind: DataProtectionApplication\nspec:\n  backupLocations:\n{}{}{}",
            loc("plain", "", ""),
            loc("ca", &format!(", caCert: {b64}"), ""),
            loc("insecure", "", ", insecureSkipTLSVerify: \"true\""),
        ),
    )
    .unwrap();
    let creds = env.path("cloud");
    std::fs::write(&creds, "[default]\naws_access_key_id = test\naws_secret_access_key = test\n").unwrap();
    let dpa_run = |name: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        for v in ["FERRY_REPOSITORY", "FERRY_PASSWORD_FILE", "SSL_CERT_FILE", "SSL_CERT_DIR"] {
            c.env_remove(v);
        }
        c.env("FERRY_PASSWORD", crate::common::PASSWORD).env("FERRY_CACHE_DIR", &env.cache);
        c.arg("--location").arg(format!("{}#{name}", dpa.display())).arg("--credentials-file").arg(&creds);
        c.args(["snapshots", "--json"]).output().unwrap()
    };
    let out = dpa_run("plain");
    assert_eq!(out.status.code(), Some(1), "a DPA location without caCert: {}", stderr(&out));
    assert!(stderr(&out).to_lowercase().contains("certificate"), "{}", stderr(&out));
    for name in ["ca", "insecure"] {
        let out = dpa_run(name);
        assert_eq!(out.status.code(), Some(0), "DPA location {name}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1, "DPA location {name}: {v}");
    }

    // https:// to a server that speaks plain HTTP: an error, never a silent downgrade.
    let plain = format!("s3:https://{upstream}/{bucket}/{prefix}");
    let mut plain_env = Env::empty();
    plain_env.repo = PathBuf::from(&plain);
    // (Even when verification is off; each such failure costs the 10 retries, so only this one.)
    let out = ferry(&plain_env, &insecure).arg("snapshots").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "https to a plaintext server: {}", stderr(&out));
    assert_eq!(proxy.plaintext.load(SeqCst), 0, "a client connected to the TLS endpoint without TLS");
}
