//! The test origin answers what the edge's tests rely on.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meridian_test_origin::{Echo, OriginConfig, Script, TestOrigin, pattern, sticker_bytes};
use sha2::{Digest, Sha256};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn origin(instance: &str, region: &str) -> TestOrigin {
    TestOrigin::start(OriginConfig { instance: instance.into(), region: region.into() }).await.expect("origin starts")
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> (http::response::Parts, Bytes) {
    let resp = client.request(req).await.expect("origin answers");
    let (parts, body) = resp.into_parts();
    (parts, body.collect().await.expect("body").to_bytes())
}

async fn get(client: &HttpClient, url: String, accept: Option<&str>) -> (http::response::Parts, Bytes) {
    let mut req = Request::get(url);
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    send(client, req.body(Full::default()).expect("request")).await
}

#[tokio::test]
async fn echoes_method_path_headers_and_body_hash_and_counts() {
    let origin = origin("i1", "ams").await;
    let body = vec![7u8; 300_000];
    let req = Request::post(format!("{}/write/x?y=1", origin.url()))
        .header("x-test", "yes")
        .body(Full::new(Bytes::from(body.clone())))
        .expect("request");
    let (parts, bytes) = send(&client(), req).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["x-origin-instance"], "i1");
    let echo: Echo = serde_json::from_slice(&bytes).expect("echo JSON");
    assert_eq!((echo.method.as_str(), echo.path.as_str(), echo.region.as_str()), ("POST", "/write/x?y=1", "ams"));
    assert_eq!(echo.headers["x-test"], "yes");
    assert_eq!(echo.body_len, 300_000);
    assert_eq!(echo.body_sha256, hex::encode(Sha256::digest(&body)));
    assert_eq!(origin.request_count(), 1);
    assert_eq!(origin.count_path("/write/x"), 1);
}

#[tokio::test]
async fn avatars_stickers_and_patterns() {
    let origin = origin("i1", "ams").await;
    let client = client();
    let (parts, png) = get(&client, format!("{}/avatar/aoi.png", origin.url()), None).await;
    assert_eq!(parts.headers["content-type"], "image/png");
    assert_eq!(parts.headers["x-meridian-store"], "ttl=1h");
    assert_eq!(png, meridian_test_origin::avatar("aoi.png"));

    let url = format!("{}/sticker/aoi/grin.png?source=stickers/aoi/grin.png", origin.url());
    for (accept, format) in
        [("image/avif,image/webp,*/*", "image/avif"), ("image/webp,*/*", "image/webp"), ("*/*", "image/png")]
    {
        let (parts, bytes) = get(&client, url.clone(), Some(accept)).await;
        assert_eq!(parts.headers["content-type"], format);
        assert_eq!(parts.headers["vary"], "Accept");
        assert_eq!(parts.headers["x-meridian-derived-from"], "stickers/aoi/grin.png");
        assert_eq!(bytes, sticker_bytes("stickers/aoi/grin.png", format));
    }

    let (parts, bytes) = get(&client, format!("{}/big?bytes=200000&store=ttl%3D5m", origin.url()), None).await;
    assert_eq!(parts.headers["x-meridian-store"], "ttl=5m");
    assert_eq!(bytes, pattern(200_000));
}

#[tokio::test]
async fn replays_only_where_asked_and_never_to_a_fallback_delivery() {
    let origin = origin("i1", "ams").await;
    let client = client();
    let url = format!("{}/w?replay=region%3Dsjc&replay_in=ams&replay_cache=%2Fw%2F*&replay_cache_ttl=30", origin.url());
    let (parts, _) = get(&client, url.clone(), None).await;
    assert_eq!(parts.status, StatusCode::CONFLICT);
    assert_eq!(parts.headers["fly-replay"], "region=sjc");
    assert_eq!(parts.headers["fly-replay-cache"], "/w/*");
    assert_eq!(parts.headers["fly-replay-cache-ttl-secs"], "30");

    let fallback =
        Request::get(url).header("fly-replay-failed", "reason=timeout").body(Full::default()).expect("request");
    assert_eq!(send(&client, fallback).await.0.status, StatusCode::OK);

    let (parts, _) = get(&client, format!("{}/w?replay=region%3Dsjc&replay_in=iad", origin.url()), None).await;
    assert_eq!(parts.status, StatusCode::OK, "not a region that replays");

    let json = r#"{"region":"sjc"}"#;
    let encoded: String = form_urlencoded::byte_serialize(json.as_bytes()).collect();
    let (parts, body) = get(&client, format!("{}/w?replay_json={encoded}", origin.url()), None).await;
    assert_eq!(parts.headers["content-type"], "application/vnd.fly.replay+json");
    assert_eq!(body, json.as_bytes());

    origin.set_script(Script::Replay("elsewhere=true".into()));
    assert_eq!(get(&client, format!("{}/any", origin.url()), None).await.0.headers["fly-replay"], "elsewhere=true");
    origin.set_script(Script::Fail(503));
    assert_eq!(get(&client, format!("{}/any", origin.url()), None).await.0.status, StatusCode::SERVICE_UNAVAILABLE);
}
