//! How often one S3 request reads the metadata store: a single-node PUT, from the handler
//! through SigV4, the access check and the engine's commit, reads its bucket record once.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
    sign,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use meridian_blob::BlobStore;
use meridian_engine::{Engine, EngineConfig, Metadata, keys};
use meridian_http::{Notes, RequestBody, RequestId, RequestInfo};
use meridian_meta::embedded::{EmbeddedOptions, EmbeddedStore};
use meridian_meta::{KeyValue, MetaResult, MetaStore, RangeRequest, Revision, Txn, TxnResponse, WatchStream};
use meridian_s3::{S3Handler, S3Options, build_service};

/// The embedded store, counting the reads that return one watched key.
struct CountingStore {
    inner: EmbeddedStore,
    watched: Bytes,
    reads: AtomicUsize,
}

impl CountingStore {
    fn count_if_watched(&self, keys: &[Bytes]) {
        if keys.contains(&self.watched) {
            self.reads.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait::async_trait]
impl MetaStore for CountingStore {
    async fn range(&self, req: RangeRequest) -> MetaResult<meridian_meta::RangeResponse> {
        if req.contains(&self.watched) {
            self.reads.fetch_add(1, Ordering::SeqCst);
        }
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

/// A SigV4 `Authorization` (and date and payload hash) for an empty-bodied request.
fn signed_headers(method: &str, url: &str, host: &str, id: &str, secret: &str) -> Vec<(&'static str, String)> {
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
    let signable = SignableRequest::new(method, url, [("host", host)].into_iter(), SignableBody::Bytes(b"")).unwrap();
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

#[tokio::test]
async fn a_single_node_put_reads_its_bucket_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(CountingStore {
        inner: EmbeddedStore::open(&dir.path().join("meta.redb"), EmbeddedOptions::default()).unwrap(),
        watched: keys::bucket("counted"),
        reads: AtomicUsize::new(0),
    });
    let config = EngineConfig { blob_delete_delay: Duration::ZERO, ..Default::default() };
    let engine = Engine::builder(Metadata::single(store.clone()), BlobStore::open(dir.path()).unwrap(), config).build();
    let (_, credential) = engine.create_access_key("writer", true).await.unwrap();
    engine.create_bucket("counted", "writer").await.unwrap();
    let handler = S3Handler::new(build_service(engine.clone(), &S3Options::default()), None);

    let host = "127.0.0.1:9000";
    let url = format!("http://{host}/counted/some-key");
    let mut req = http::Request::put(&url).header("host", host);
    for (name, value) in signed_headers("PUT", &url, host, &credential.access_key_id, &credential.secret) {
        req = req.header(name, value);
    }
    store.reads.store(0, Ordering::SeqCst);
    let resp = handler.handle(req.body(RequestBody::empty()).unwrap(), request_info()).await;

    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(store.reads.load(Ordering::SeqCst), 1, "reads of b/counted during one PUT");
}
