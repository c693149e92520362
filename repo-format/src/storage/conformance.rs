//! The storage conformance suite: every backend must pass `run`. The local directory runs it in
//! unit tests; the S3/Azure/GCS backends run the same function against real servers.

use bytes::Bytes;

use super::{FileKind, Storage};
use crate::error::Error;
use crate::id::Id;

pub(crate) use crate::testing::skip;

pub(crate) async fn run(s: &dyn Storage) {
    let a = Id::of_stored(b"a");
    let b = Id::of_stored(b"b");
    // missing objects
    assert!(matches!(s.read(FileKind::Snapshot, &a, 1 << 20).await, Err(Error::NotFound { .. })));
    assert!(matches!(s.read_range(FileKind::Pack, &a, 0, 1).await, Err(Error::NotFound { .. })));
    let mut buf = Vec::new();
    assert!(matches!(s.read_range_into(FileKind::Pack, &a, 0, 1, &mut buf).await, Err(Error::NotFound { .. })));
    assert!(s.list(FileKind::Snapshot).await.unwrap().is_empty());
    // create-only
    s.create(FileKind::Snapshot, &a, Bytes::from_static(b"first")).await.unwrap();
    assert!(matches!(
        s.create(FileKind::Snapshot, &a, Bytes::from_static(b"second")).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(&s.read(FileKind::Snapshot, &a, 1 << 20).await.unwrap()[..], b"first");
    // a read never buffers more than its limit
    assert!(s.read(FileKind::Snapshot, &a, 4).await.unwrap_err().is_corrupt(), "5 bytes read with a limit of 4");
    assert_eq!(&s.read(FileKind::Snapshot, &a, 5).await.unwrap()[..], b"first");
    // the same bytes again: a retry of a create that was stored but not answered
    s.create(FileKind::Snapshot, &a, Bytes::from_static(b"first")).await.unwrap();
    // ranges
    s.create(FileKind::Index, &b, Bytes::from_static(b"0123456789")).await.unwrap();
    assert_eq!(&s.read_range(FileKind::Index, &b, 3, 4).await.unwrap()[..], b"3456");
    // a range running past the end is an error, never a short answer
    assert!(s.read_range(FileKind::Index, &b, 8, 4).await.is_err(), "a short range read must fail");
    // into a buffer: its bytes are exactly the range, whatever it held before (longer, shorter)
    let mut buf = b"older and longer bytes".to_vec();
    s.read_range_into(FileKind::Index, &b, 3, 4, &mut buf).await.unwrap();
    assert_eq!(buf, b"3456");
    s.read_range_into(FileKind::Index, &b, 0, 10, &mut buf).await.unwrap();
    assert_eq!(buf, b"0123456789");
    assert!(s.read_range_into(FileKind::Index, &b, 8, 4, &mut buf).await.is_err(), "a short range read must fail");
    // list by kind only
    let l = s.list(FileKind::Snapshot).await.unwrap();
    assert_eq!(l, vec![(a, 5)]);
    // uploads from a file: one PUT (mapped file) below the threshold, multipart above it;
    // then ranged reads inside them
    let mut packs = Vec::new();
    for len in [20u32 << 20, (66 << 20) + 3] {
        let big: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let pid = Id::of_stored(&big);
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &big).unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        s.upload_file(FileKind::Pack, &pid, f, big.len() as u64).await.unwrap();
        assert!(s.read(FileKind::Pack, &pid, 1 << 30).await.unwrap() == big, "{len} bytes read back");
        let r = s.read_range(FileKind::Pack, &pid, 17 << 20, 100).await.unwrap();
        assert_eq!(&r[..], &big[17 << 20..(17 << 20) + 100]);
        s.read_range_into(FileKind::Pack, &pid, 5 << 20, 3 << 20, &mut buf).await.unwrap();
        assert!(buf[..] == big[5 << 20..8 << 20], "{len} bytes: 3 MiB read into a buffer");
        packs.push((pid, big.len() as u64));
    }
    packs.sort();
    let mut listed = s.list(FileKind::Pack).await.unwrap();
    listed.sort();
    assert_eq!(listed, packs);
    // removal
    s.remove(FileKind::Snapshot, &a).await.unwrap();
    assert!(matches!(s.read(FileKind::Snapshot, &a, 1 << 20).await, Err(Error::NotFound { .. })));
    // concurrent create-only puts of one name: exactly one wins
    let c = Id::of_stored(b"race");
    let results =
        futures::future::join_all((0..8u8).map(|i| s.create(FileKind::Key, &c, Bytes::from(vec![i; 1000])))).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
}

#[tokio::test]
async fn local_directory_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let s = super::ObjectStorage::local(dir.path()).unwrap();
    assert!(s.is_local());
    run(&s).await;
}

/// A unique prefix per test run, so runs against a shared server never see each other.
#[cfg(feature = "cloud")]
fn unique_prefix(what: &str) -> String {
    let mut r = [0u8; 8];
    crate::crypto::random_bytes(&mut r);
    format!("conformance-{what}-{}", hex::encode(r))
}

/// Built without the `cloud` feature (object_store's S3, Azure and GCS clients; the
/// little-endian targets' library stages under qemu, crossbuild/targets.sh), the three cloud
/// backends' tests below do not exist: each is recorded as skipped instead.
#[cfg(not(feature = "cloud"))]
#[test]
fn cloud_backends_conform() {
    for backend in ["S3", "Azure", "GCS"] {
        skip(&format!("{backend}: not built (without the cloud feature)"));
    }
}

/// S3 (moto on loopback in CI): runs when FERRY_TEST_S3_ENDPOINT is set.
#[cfg(feature = "cloud")]
#[tokio::test]
async fn s3_conforms() {
    let (Ok(endpoint), Ok(bucket)) = (std::env::var("FERRY_TEST_S3_ENDPOINT"), std::env::var("FERRY_TEST_S3_BUCKET"))
    else {
        skip("FERRY_TEST_S3_ENDPOINT/FERRY_TEST_S3_BUCKET not set (tests/servers.sh start)");
        return;
    };
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_bucket_name(&bucket)
        .with_region("us-east-1")
        .with_access_key_id(std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "test".into()))
        .with_secret_access_key(std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "test".into()))
        .with_metadata_endpoint("http://127.0.0.1:9")
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()
        .unwrap();
    run(&super::ObjectStorage::new(std::sync::Arc::new(store), &unique_prefix("s3"), endpoint)).await;
}

/// Azure Blob (Azurite on loopback in CI): runs when FERRY_TEST_AZURE_ENDPOINT is set.
#[cfg(feature = "cloud")]
#[tokio::test]
async fn azure_conforms() {
    let (Ok(endpoint), Ok(container)) =
        (std::env::var("FERRY_TEST_AZURE_ENDPOINT"), std::env::var("FERRY_TEST_AZURE_CONTAINER"))
    else {
        skip("FERRY_TEST_AZURE_ENDPOINT/FERRY_TEST_AZURE_CONTAINER not set (tests/servers.sh start)");
        return;
    };
    // Emulator mode reads AZURITE_BLOB_STORAGE_URL (set by tests/servers.sh) for the endpoint.
    let store = object_store::azure::MicrosoftAzureBuilder::new()
        .with_use_emulator(true)
        .with_container_name(&container)
        .build()
        .unwrap();
    let s = super::ObjectStorage::new(std::sync::Arc::new(store), &unique_prefix("azure"), endpoint);
    assert!(!s.is_local(), "requests are not local reads");
    run(&s).await;
}

/// Google Cloud Storage: runs only when FERRY_TEST_GCS_BUCKET names a bucket and
/// GOOGLE_APPLICATION_CREDENTIALS a service-account key that may write it. No GCS server that
/// object_store can talk to is installable here (see the README), so CI never runs this.
#[cfg(feature = "cloud")]
#[tokio::test]
async fn gcs_conforms() {
    let (Ok(bucket), Ok(key)) =
        (std::env::var("FERRY_TEST_GCS_BUCKET"), std::env::var("GOOGLE_APPLICATION_CREDENTIALS"))
    else {
        skip("FERRY_TEST_GCS_BUCKET/GOOGLE_APPLICATION_CREDENTIALS not set (no GCS server here)");
        return;
    };
    let store = object_store::gcp::GoogleCloudStorageBuilder::new()
        .with_bucket_name(&bucket)
        .with_service_account_path(key)
        .build()
        .unwrap();
    run(&super::ObjectStorage::new(std::sync::Arc::new(store), &unique_prefix("gcs"), format!("gs:{bucket}"))).await;
}
