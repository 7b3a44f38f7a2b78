//! How often one S3 request reads the metadata store: a single-node PUT, from the handler
//! through SigV4, the access check and the engine's commit, reads its bucket record and its
//! key once, in a versioned bucket too.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
    sign,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use meridian_blob::BlobStore;
use meridian_engine::iam::Credential;
use meridian_engine::{Engine, EngineConfig, Metadata, keys};
use meridian_http::{ClientTls, Notes, RequestBody, RequestId, RequestInfo};
use meridian_meta::embedded::{EmbeddedOptions, EmbeddedStore};
use meridian_meta::{KeyValue, MetaResult, MetaStore, RangeRequest, Revision, Txn, TxnResponse, WatchStream};
use meridian_s3::cors::Cors;
use meridian_s3::forward::Forwarder;
use meridian_s3::{S3Handler, S3Options, build_service};

/// The embedded store, counting the reads that return the watched keys.
struct CountingStore {
    inner: EmbeddedStore,
    watched: Mutex<HashMap<Bytes, usize>>,
}

impl CountingStore {
    fn watch(&self, key: Bytes) {
        self.watched.lock().unwrap().insert(key, 0);
    }

    fn reads(&self, key: &Bytes) -> usize {
        self.watched.lock().unwrap()[key]
    }

    fn count(&self, read: impl Fn(&Bytes) -> bool) {
        for (key, reads) in self.watched.lock().unwrap().iter_mut() {
            if read(key) {
                *reads += 1;
            }
        }
    }

    fn count_if_watched(&self, keys: &[Bytes]) {
        self.count(|key| keys.contains(key));
    }
}

#[async_trait::async_trait]
impl MetaStore for CountingStore {
    async fn range(&self, req: RangeRequest) -> MetaResult<meridian_meta::RangeResponse> {
        self.count(|key| req.contains(key));
        self.inner.range(req).await
    }

    async fn get_many(&self, keys: &[Bytes]) -> MetaResult<(Vec<Option<KeyValue>>, Revision)> {
        self.count_if_watched(keys);
        self.inner.get_many(keys).await
    }

    async fn txn(&self, txn: Txn) -> MetaResult<TxnResponse> {
        self.inner.txn(txn).await
    }

    async fn current_revision(&self) -> MetaResult<Revision> {
        self.inner.current_revision().await
    }

    async fn watch(&self, range: RangeRequest, from: Revision) -> MetaResult<WatchStream> {
        self.inner.watch(range, from).await
    }
}

/// A SigV4 `Authorization` (and date and payload hash) for an empty-bodied request with these
/// headers.
fn signed_headers(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    id: &str,
    secret: &str,
) -> Vec<(&'static str, String)> {
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    let identity = aws_credential_types::Credentials::new(id, secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(method, url, headers.iter().copied(), SignableBody::Bytes(b"")).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions.into_parts().0.into_iter().map(|h| (h.name(), h.value().to_string())).collect()
}

fn request_info() -> RequestInfo {
    RequestInfo {
        id: RequestId::random(),
        peer: "127.0.0.1:1".parse().unwrap(),
        secure: false,
        listener: "s3",
        notes: Notes::default(),
    }
}

/// A node over a counting store, with a key `writer` and its bucket `counted`.
struct Node {
    engine: Engine,
    store: Arc<CountingStore>,
    credential: Credential,
    _dir: tempfile::TempDir,
}

async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(CountingStore {
        inner: EmbeddedStore::open(&dir.path().join("meta.redb"), EmbeddedOptions::default()).unwrap(),
        watched: Mutex::default(),
    });
    let config = EngineConfig { blob_delete_delay: Duration::ZERO, ..Default::default() };
    let engine = Engine::builder(Metadata::single(store.clone()), BlobStore::open(dir.path()).unwrap(), config).build();
    let (_, credential) = engine.create_access_key("writer", true).await.unwrap();
    engine.create_bucket("counted", "writer").await.unwrap();
    store.watch(keys::bucket("counted"));
    store.watch(keys::key_id(&credential.access_key_id));
    Node { engine, store, credential, _dir: dir }
}

/// Sends a signed PUT of `counted/some-key` through `handler`, path style.
async fn put(handler: &S3Handler, credential: &Credential) -> http::StatusCode {
    put_at(handler, credential, "127.0.0.1:9000", "/counted/some-key").await
}

async fn put_at(handler: &S3Handler, credential: &Credential, host: &str, path: &str) -> http::StatusCode {
    put_with(handler, credential, &[("host", host)], path).await
}

/// Sends a signed PUT of `path` with `headers` (`host` first) through `handler`.
async fn put_with(
    handler: &S3Handler,
    credential: &Credential,
    headers: &[(&str, &str)],
    path: &str,
) -> http::StatusCode {
    let url = format!("http://{}{path}", headers[0].1);
    let mut req = http::Request::put(&url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    for (name, value) in signed_headers("PUT", &url, headers, &credential.access_key_id, &credential.secret) {
        req = req.header(name, value);
    }
    handler.handle(req.body(RequestBody::empty()).unwrap(), request_info()).await.status()
}

#[tokio::test]
async fn a_single_node_put_reads_its_bucket_record_and_its_key_once() {
    let node = node().await;
    let handler = S3Handler::new(
        build_service(node.engine.clone(), &S3Options::default()),
        Cors::new(node.engine.clone(), None),
        None,
    );

    assert_eq!(put(&handler, &node.credential).await, http::StatusCode::OK);
    assert_eq!(node.store.reads(&keys::bucket("counted")), 1, "reads of the bucket record");
    assert_eq!(node.store.reads(&keys::key_id(&node.credential.access_key_id)), 1, "reads of the key");
}

#[tokio::test]
async fn a_put_in_a_versioned_bucket_reads_its_bucket_record_once() {
    let node = node().await;
    node.engine.set_versioning("counted", meridian_engine::record::Versioning::Enabled).await.unwrap();
    let handler = S3Handler::new(
        build_service(node.engine.clone(), &S3Options::default()),
        Cors::new(node.engine.clone(), None),
        None,
    );

    for round in 1..=2 {
        node.store.watch(keys::bucket("counted"));
        assert_eq!(put(&handler, &node.credential).await, http::StatusCode::OK);
        // The engine plans the new version with the record the access check read.
        assert_eq!(node.store.reads(&keys::bucket("counted")), 1, "reads of the bucket record, PUT {round}");
    }
    let everything = meridian_engine::versions::VersionListRequest { max_keys: 1000, ..Default::default() };
    let versions = node.engine.list_versions("counted", &everything).await.unwrap();
    assert_eq!(versions.versions.len(), 2, "each PUT made a version");
}

#[tokio::test]
async fn a_copy_within_a_bucket_reads_its_bucket_record_once() {
    let node = node().await;
    let handler = S3Handler::new(
        build_service(node.engine.clone(), &S3Options::default()),
        Cors::new(node.engine.clone(), None),
        None,
    );
    assert_eq!(put(&handler, &node.credential).await, http::StatusCode::OK);
    node.store.watch(keys::bucket("counted"));

    let headers = [("host", "127.0.0.1:9000"), ("x-amz-copy-source", "counted/some-key")];
    assert_eq!(put_with(&handler, &node.credential, &headers, "/counted/copy").await, http::StatusCode::OK);
    assert_eq!(node.store.reads(&keys::bucket("counted")), 1, "reads of the bucket record");
}

#[tokio::test]
async fn a_put_served_after_the_forwarding_decision_reads_its_bucket_record_once() {
    let node = node().await;
    let tls = ClientTls::new(None).unwrap();
    let forwarder = Forwarder::new(node.engine.clone(), None, &tls, "test-token");
    let handler = S3Handler::new(
        build_service(node.engine.clone(), &S3Options::default()),
        Cors::new(node.engine.clone(), None),
        Some(forwarder),
    );

    assert_eq!(put(&handler, &node.credential).await, http::StatusCode::OK);
    assert_eq!(node.store.reads(&keys::bucket("counted")), 1, "reads of the bucket record");
    assert_eq!(node.store.reads(&keys::key_id(&node.credential.access_key_id)), 1, "reads of the key");
}

#[tokio::test]
async fn the_forwarder_and_s3s_agree_on_a_virtual_host_bucket() {
    let node = node().await;
    let tls = ClientTls::new(None).unwrap();
    let domain = Some("s3.test".to_string());
    let forwarder = Forwarder::new(node.engine.clone(), domain.clone(), &tls, "test-token");
    let options = S3Options { domain, ..Default::default() };
    let handler = S3Handler::new(
        build_service(node.engine.clone(), &options),
        Cors::new(node.engine.clone(), None),
        Some(forwarder),
    );

    assert_eq!(put_at(&handler, &node.credential, "counted.s3.test:9000", "/vh-key").await, http::StatusCode::OK);
    // One read: the forwarder's, which the access check and the write reuse because s3s
    // routed the request to the same bucket.
    assert_eq!(node.store.reads(&keys::bucket("counted")), 1, "reads of the bucket record");
    let stored = node.engine.head_object(meridian_engine::GetRequest {
        bucket: "counted".into(),
        key: "vh-key".into(),
        ..Default::default()
    });
    assert!(stored.await.is_ok());
}
