//! The edge's origin fall-through on the real binary: a site whose misses go to the test origin
//! app, write-back of `x-meridian-store` answers, single flight, and `kill -9` in the middle of
//! a write-back.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Server;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meridian_test_origin::{Echo, OriginConfig, TestOrigin, avatar, pattern};

const BUCKET: &str = "avatars";

struct Edge {
    server: Server,
    web: String,
    origin: TestOrigin,
    _config: tempfile::TempDir,
}

/// A node whose site `avatars` (bucket `avatars`, mounted at `/`) falls through to a test
/// origin in the node's region.
async fn start() -> Edge {
    let origin = TestOrigin::start(OriginConfig { instance: "app-1".into(), region: "us-east-1".into() })
        .await
        .expect("origin starts");
    let web_port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("meridian.toml");
    let text = format!(
        "web_listen = \"127.0.0.1:{web_port}\"\n\
         [[site]]\nname = \"avatars\"\nbucket = \"{BUCKET}\"\n\
         [[origin]]\nsite = \"avatars\"\n\
         [[origin.region]]\nname = \"us-east-1\"\ninstances = [{{ id = \"app-1\", url = \"{}\" }}]\n",
        origin.url()
    );
    std::fs::write(&config, text).expect("write config");
    let server = Server::start_with(&["--config", config.to_str().expect("path"), "--region", "us-east-1"]);
    server.client().create_bucket().bucket(BUCKET).send().await.expect("create bucket");
    Edge { server, web: format!("http://127.0.0.1:{web_port}"), origin, _config: dir }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(url: String) -> (http::response::Parts, Bytes) {
    let req = Request::get(url).header("host", "avatars.example").body(Full::default()).expect("request");
    let resp = client().request(req).await.expect("edge answers");
    let (parts, body) = resp.into_parts();
    (parts, body.collect().await.expect("body").to_bytes())
}

/// The stored object's bytes, once the write-back has committed (polled for up to 10 s).
async fn stored(edge: &Edge, key: &str) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match edge.server.client().get_object().bucket(BUCKET).key(key).send().await {
            Ok(out) => return Some(common::body_bytes(out).await),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_key_falls_through_to_the_origin_and_is_stored_for_the_next_reader() {
    let edge = start().await;
    let (parts, body) = get(format!("{}/avatar/aoi.png", edge.web)).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["content-type"], "image/png");
    assert!(!parts.headers.contains_key("x-meridian-store"), "the directive is the edge's, not the client's");
    assert_eq!(body, avatar("aoi.png"));
    let asked = edge.origin.received();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].path_and_query, "/avatar/aoi.png", "the original path");
    assert_eq!(asked[0].headers["x-forwarded-host"], "avatars.example");
    assert_eq!(asked[0].headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(asked[0].headers["x-forwarded-proto"], "http");

    assert_eq!(stored(&edge, "avatar/aoi.png").await.map(|b| b == avatar("aoi.png")), Some(true));
    let (parts, again) = get(format!("{}/avatar/aoi.png", edge.web)).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(again, body);
    assert!(parts.headers.contains_key("etag"), "served from the bucket");
    assert_eq!(edge.origin.request_count(), 1, "the second reader never reached the origin");

    // Answers without the directive are passed through, not stored; other methods go to the origin.
    let (_, echo) = get(format!("{}/profile/42", edge.web)).await;
    let echo: Echo = serde_json::from_slice(&echo).expect("echo");
    assert_eq!(echo.path, "/profile/42");
    let req = Request::post(format!("{}/profile/42", edge.web)).body(Full::new(Bytes::from_static(b"name=aoi")));
    let resp = client().request(req.expect("request")).await.expect("edge answers");
    let echo: Echo = serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes()).expect("echo");
    assert_eq!((echo.method.as_str(), echo.body_len), ("POST", 8));
    assert!(edge.server.client().head_object().bucket(BUCKET).key("profile/42").send().await.is_err());
}

/// The node's edge streams an upload to the origin while the client sends it: the client holds
/// its last 64 KiB until the (slowly reading) origin has 2 MiB; the origin's digest matches.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_reach_the_origin_while_the_client_is_still_sending() {
    use sha2::Digest;
    let edge = start().await;
    let body = common::pattern(3 << 20, 7);
    let url = format!("{}/profile/upload?read_ms=1", edge.web);
    let up = meridian_test_origin::upload::upload_holding_the_end(&url, "avatars.example", &body, 2 << 20, || {
        edge.origin.body_bytes()
    })
    .await;
    assert_eq!(up.status, StatusCode::OK);
    let echo: Echo = serde_json::from_slice(&up.body).expect("echo");
    assert_eq!((echo.method.as_str(), echo.body_len), ("POST", 3 << 20));
    assert_eq!(echo.body_sha256, hex::encode(sha2::Sha256::digest(&body)));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_misses_on_one_key_send_one_origin_request() {
    let edge = start().await;
    let url = format!("{}/avatar/crowd.png?sleep_ms=400", edge.web);
    let answers = futures::future::join_all((0..8).map(|_| get(url.clone()))).await;
    for (parts, body) in &answers {
        assert_eq!(parts.status, StatusCode::OK);
        assert!(body == &avatar("crowd.png"));
    }
    assert_eq!(edge.origin.count_path("/avatar/crowd.png"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_during_a_write_back_stores_nothing_half() {
    let mut edge = start().await;
    let len = 8 << 20;
    // 128 chunks of 64 KiB, 20 ms apart: the answer takes about 2.5 s.
    let url = format!("{}/big/video.bin?bytes={len}&chunk_ms=20&store=ttl%3D1h", edge.web);
    let req = Request::get(url).body(Full::default()).expect("request");
    let resp = client().request(req).await.expect("edge answers");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut received = 0usize;
    while received < 1 << 20 {
        let frame = body.frame().await.expect("a frame").expect("streaming");
        received += frame.data_ref().map_or(0, Bytes::len);
    }
    edge.server.kill9();
    drop(body);
    edge.server.restart();
    match edge.server.client().get_object().bucket(BUCKET).key("big/video.bin").send().await {
        Ok(out) => assert!(common::body_bytes(out).await == pattern(len), "stored, so stored whole"),
        Err(err) => assert_eq!(common::error_code(&err), "NoSuchKey"),
    }
    // After the restart the key falls through again and is stored whole.
    let (parts, bytes) = get(format!("{}/big/video.bin?bytes={len}&store=ttl%3D1h", edge.web)).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(bytes.len(), len);
    assert_eq!(stored(&edge, "big/video.bin").await.map(|b| b == pattern(len)), Some(true));
}

async fn get_accepting(edge: &Edge, accept: &str) -> (http::response::Parts, Bytes) {
    let url = format!("{}/sticker/aoi/grin.png?source=stickers/aoi/grin.png", edge.web);
    let req = Request::get(url).header("accept", accept).body(Full::default()).expect("request");
    let resp = client().request(req).await.expect("edge answers");
    let (parts, body) = resp.into_parts();
    (parts, body.collect().await.expect("body").to_bytes())
}

/// Waits until `n` variants of the sticker are stored.
async fn variants_stored(edge: &Edge, n: usize) {
    variants_stored_at(edge, "sticker/aoi/grin.png;vary=", n).await;
}

/// Waits until `n` objects under `prefix` (a key's variants) are stored.
async fn variants_stored_at(edge: &Edge, prefix: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = edge.server.client().list_objects_v2().bucket(BUCKET).prefix(prefix).send().await;
        let count = listed.map(|l| l.contents().len()).unwrap_or(0);
        if count >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{count} of {n} variants stored after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_that_vary_by_accept_are_cached_per_variant_until_their_source_changes() {
    use aws_sdk_s3::primitives::ByteStream;
    let edge = start().await;
    let s3 = edge.server.client();
    let put_source = |bytes: &'static [u8]| {
        s3.put_object().bucket(BUCKET).key("stickers/aoi/grin.png").body(ByteStream::from_static(bytes)).send()
    };
    put_source(b"source v1").await.expect("put source");
    let asked = || edge.origin.count_path("/sticker/aoi/grin.png");

    let (parts, webp) = get_accepting(&edge, "image/webp,*/*").await;
    assert_eq!(parts.headers["content-type"], "image/webp");
    assert!(webp == meridian_test_origin::sticker_bytes("stickers/aoi/grin.png", "image/webp"));
    variants_stored(&edge, 1).await;
    let (parts, _) = get_accepting(&edge, "image/avif,image/webp,*/*").await;
    assert_eq!(parts.headers["content-type"], "image/avif");
    variants_stored(&edge, 2).await;
    assert_eq!(asked(), 2);

    let (parts, cached) = get_accepting(&edge, "*/* , IMAGE/WEBP").await;
    assert_eq!((parts.status, parts.headers["content-type"].to_str().expect("text")), (StatusCode::OK, "image/webp"));
    assert_eq!(parts.headers["vary"], "accept");
    assert!(parts.headers.contains_key("etag"), "served from the bucket");
    assert!(cached == webp);
    let (parts, _) = get_accepting(&edge, "image/avif,image/webp,*/*").await;
    assert_eq!(parts.headers["content-type"], "image/avif");
    assert_eq!(asked(), 2, "both variants came from the edge's cache");

    put_source(b"source v2").await.expect("overwrite source");
    get_accepting(&edge, "image/webp,*/*").await;
    assert_eq!(asked(), 3, "overwriting the source invalidated the variant");
    s3.delete_object().bucket(BUCKET).key("stickers/aoi/grin.png").send().await.expect("delete source");
    get_accepting(&edge, "image/avif,image/webp,*/*").await;
    assert_eq!(asked(), 4, "deleting the source invalidated the other variant");
}

/// The page of the browser test: an avatar the bucket does not have yet, and a sticker from a
/// "resizer" that converts to WebP or PNG by `Accept`.
const AVATAR_PAGE: &str = r#"<!doctype html><html><body>
<img id="avatar" src="/avatar/browser.png">
<img id="sticker" src="/sticker/aoi/wave.png?source=stickers/aoi/wave.png&formats=image/webp,image/png">
</body></html>"#;

/// Debian's headless Chromium loads a page from the edge: the avatar falls through to the
/// origin and is stored, the sticker comes back as the WebP variant for the browser's own
/// `Accept`, and both decode in the browser.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_browser_gets_fallen_through_avatars_stored_and_stickers_as_webp() {
    use aws_sdk_s3::primitives::ByteStream;
    let edge = start().await;
    let s3 = edge.server.client();
    let objects = [
        ("stickers/aoi/wave.png", "image/png", b"source".as_slice()),
        ("page/index.html", "text/html", AVATAR_PAGE.as_bytes()),
    ];
    for (key, content_type, bytes) in objects {
        let body = ByteStream::from(bytes.to_vec());
        s3.put_object().bucket(BUCKET).key(key).content_type(content_type).body(body).send().await.expect("put");
    }

    let page = format!("{}/page/", edge.web);
    let widths = tokio::task::spawn_blocking(move || {
        let mut browser = common::browser::Browser::start();
        browser.navigate(&page);
        let loaded = "[...document.images].length == 2 && [...document.images].every(i => i.complete)";
        assert_eq!(browser.wait_for(loaded, Duration::from_secs(30)), serde_json::json!(true), "the images loaded");
        browser.eval("[...document.images].map(i => i.naturalWidth)")
    })
    .await
    .expect("browser");
    let avatar_width = common::browser::png_size(&avatar("browser.png")).0;
    assert_eq!(widths, serde_json::json!([avatar_width, meridian_test_origin::WEBP_SIDE]), "both images decoded");

    // The avatar fell through once and is now in the bucket.
    assert_eq!(edge.origin.count_path("/avatar/browser.png"), 1);
    assert_eq!(stored(&edge, "avatar/browser.png").await.map(|b| b == avatar("browser.png")), Some(true));

    // The sticker: the origin saw Chromium's image Accept, answered WebP, and the edge stored
    // that variant; the same Accept now gets those bytes from the bucket, not the origin.
    let asked = edge.origin.received();
    let sticker =
        asked.iter().find(|r| r.path_and_query.starts_with("/sticker/")).expect("the sticker reached the origin");
    let accept = sticker.headers["accept"].to_str().expect("text").to_string();
    assert!(accept.contains("image/webp") && accept.contains("image/avif"), "Chromium's image Accept: {accept}");
    variants_stored_at(&edge, "sticker/aoi/wave.png;vary=", 1).await;
    let listed = s3.list_objects_v2().bucket(BUCKET).prefix("sticker/aoi/wave.png;vary=").send().await.expect("list");
    let variant = listed.contents()[0].key().expect("key").to_string();
    let head = s3.head_object().bucket(BUCKET).key(&variant).send().await.expect("head variant");
    assert_eq!(head.content_type(), Some("image/webp"));
    let url = format!("{}/sticker/aoi/wave.png?source=stickers/aoi/wave.png&formats=image/webp,image/png", edge.web);
    let req = Request::get(url).header("accept", &accept).body(Full::default()).expect("request");
    let (parts, body) = client().request(req).await.expect("edge answers").into_parts();
    assert_eq!(parts.headers["content-type"], "image/webp");
    assert!(parts.headers.contains_key("etag"), "served from the bucket");
    assert!(
        body.collect().await.expect("body").to_bytes()
            == meridian_test_origin::sticker_bytes("stickers/aoi/wave.png", "image/webp")
    );
    assert_eq!(edge.origin.count_path("/sticker/aoi/wave.png"), 1, "one origin request for the sticker");
}

/// Node `i`'s configuration for [`heavy_a_session_is_held_for_its_write_revision_in_every_region`]:
/// site `app` whose origin is this region's test origin; the other regions through their edges.
fn region_config(i: usize, web_ports: &[u16], origins: &[TestOrigin]) -> String {
    use common::wan_cluster::REGIONS;
    let mut text = format!(
        "web_listen = \"127.0.0.1:{}\"\n[[site]]\nname = \"app\"\nbucket = \"app\"\n\
         [[origin]]\nsite = \"app\"\nrevision_wait_ms = 3000\n",
        web_ports[i]
    );
    for (j, region) in REGIONS.iter().enumerate() {
        text.push_str(&format!("[[origin.region]]\nname = \"{region}\"\n"));
        if i == j {
            text.push_str(&format!(
                "instances = [{{ id = \"{}\", url = \"{}\" }}]\n",
                origins[j].instance(),
                origins[j].url()
            ));
        } else {
            text.push_str(&format!("edge = \"http://127.0.0.1:{}\"\n", web_ports[j]));
        }
    }
    text
}

/// Read your own writes by revision, on three regions behind the WAN proxy: the origin in
/// region a answers a write with its revision, the edge turns it into the session cookie, and
/// region b's edge holds the session's read until its view has that revision (then region b's
/// local view has the object); a revision region b cannot reach within the site's wait sends
/// the read to region a's edge.
#[tokio::test(flavor = "multi_thread")]
async fn heavy_a_session_is_held_for_its_write_revision_in_every_region() {
    use common::raw;
    use common::wan_cluster::{REGIONS, WanCluster};
    let mut origins = Vec::new();
    for (i, region) in REGIONS.iter().enumerate() {
        let config = OriginConfig { instance: format!("app-{i}"), region: region.to_string() };
        origins.push(TestOrigin::start(config).await.expect("origin starts"));
    }
    let free_port = || std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let web_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let configs: Vec<String> = (0..3)
        .map(|i| {
            let path = dir.path().join(format!("region-{i}.toml"));
            std::fs::write(&path, region_config(i, &web_ports, &origins)).expect("write config");
            path.display().to_string()
        })
        .collect();
    let link = meridian_wan::LinkConfig::one_way(Duration::from_millis(20));
    let cluster = WanCluster::start_each(link, |i| vec!["--config".into(), configs[i].clone()]).await;
    cluster.client(0).create_bucket().bucket("app").send().await.expect("create bucket");
    // The etcd leader's messages now reach the other members late: they apply writes late.
    let leader = cluster.etcd.wait_for_leader(Duration::from_secs(10));
    cluster.etcd_links[leader].set_config(meridian_wan::LinkConfig::one_way(Duration::from_millis(300)));
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let web = |i: usize| format!("127.0.0.1:{}", web_ports[i]);

    // The origin of region a writes through Meridian and answers with the write's revision.
    let written = raw::signed(&a.addr, "PUT", "/app/profile/aoi.json", &[], b"{\"name\":\"aoi\"}");
    assert_eq!(written.status, 200, "{}", written.text());
    let revision: u64 = written.header("x-meridian-revision").expect("revision").parse().expect("number");
    let saved = raw::send(&web(0), "POST", &format!("/profile/aoi?revision={revision}"), &[], b"name=aoi");
    assert_eq!((saved.status, saved.header("x-origin-region")), (200, Some("region-a")));
    assert!(saved.header("x-meridian-revision").is_none(), "the revision is the edge's, not the client's");
    let cookie = saved.header("set-cookie").expect("the session cookie").to_string();
    assert_eq!(
        cookie,
        format!("meridian-edge-revision={revision}:region-a; Max-Age=300; Path=/; HttpOnly; SameSite=Lax")
    );
    let session = cookie.split(';').next().expect("name=value").to_string();

    // Right after, region b's edge holds the session's read until its view has the write.
    let read = raw::send(&web(1), "GET", "/api/me", &[("cookie", session.clone())], &[]);
    assert_eq!((read.status, read.header("x-origin-region")), (200, Some("region-b")));
    let hold = read.header("x-meridian-revision-hold").expect("the read was held");
    assert!(hold.starts_with("reached;waited_ms="), "{hold}");
    let local =
        raw::signed(&b.addr, "GET", "/app/profile/aoi.json", &[("x-meridian-consistency", "local".into())], &[]);
    assert_eq!((local.status, local.text().as_str()), (200, "{\"name\":\"aoi\"}"), "region b's local view has it");

    // A revision region b's view does not reach within the wait: region a's edge answers.
    let far = format!("meridian-edge-revision={}:region-a", revision + 1_000_000_000);
    let started = Instant::now();
    let read = raw::send(&web(1), "GET", "/api/me", &[("cookie", far)], &[]);
    assert_eq!((read.status, read.header("x-origin-region")), (200, Some("region-a")));
    let hold = read.header("x-meridian-revision-hold").expect("held");
    assert!(hold.starts_with("replayed;region=region-a;waited_ms="), "{hold}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "held for the site's wait first: {hold}, {:?}",
        started.elapsed()
    );
    // Behind its own region's write, there is nowhere to go: served here after the wait.
    let own = format!("meridian-edge-revision={}:region-b", revision + 1_000_000_000);
    let read = raw::send(&web(1), "GET", "/api/me", &[("cookie", own)], &[]);
    assert_eq!(read.header("x-origin-region"), Some("region-b"));
    assert!(read.header("x-meridian-revision-hold").is_some_and(|h| h.starts_with("behind;")));
    // Without the cookie nothing is held.
    let read = raw::send(&web(1), "GET", "/api/me", &[], &[]);
    assert_eq!((read.status, read.header("x-meridian-revision-hold")), (200, None));
}
