//! S3 from a real browser (headless Chromium) on another origin: CORS preflights and
//! responses from the bucket's rules, presigned uploads.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::types::{CorsConfiguration, CorsRule};
use common::browser::{Browser, serve_page};
use common::{Server, body_bytes, error_code};

fn presigned() -> PresigningConfig {
    PresigningConfig::expires_in(Duration::from_secs(300)).unwrap()
}

/// The page's `fetch` of `url` with `init` (a JavaScript object literal): `"<status> <body>"`,
/// or `"refused: <message>"` when the browser refuses the request.
fn fetch(browser: &mut Browser, url: &str, init: &str) -> String {
    let script = format!(
        "fetch({url:?}, {init}).then(async r => r.status + ' ' + (r.headers.get('ETag') || '') + ' ' + await r.text(), e => 'refused: ' + e.message)"
    );
    browser.eval(&script).as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_page_on_another_origin_uploads_with_a_presigned_put_and_reads_it_back() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("web").send().await.unwrap();
    let allowed = serve_page("<html><body>uploader</body></html>");
    let other = serve_page("<html><body>someone else</body></html>");
    let rule = CorsRule::builder()
        .allowed_origins(&allowed)
        .allowed_methods("PUT")
        .allowed_methods("GET")
        .allowed_headers("*")
        .expose_headers("ETag")
        .max_age_seconds(60)
        .build()
        .unwrap();
    let cors = CorsConfiguration::builder().cors_rules(rule).build().unwrap();
    s3.put_bucket_cors().bucket("web").cors_configuration(cors).send().await.unwrap();

    let put_url = s3.put_object().bucket("web").key("from-browser.txt").presigned(presigned()).await.unwrap();
    let get_url = s3.get_object().bucket("web").key("from-browser.txt").presigned(presigned()).await.unwrap();
    let mut browser = Browser::start();
    browser.navigate(&allowed);
    browser.wait_for("document.body && document.body.innerText == 'uploader'", Duration::from_secs(20));
    // A PUT is not a "simple" request: the browser sends a preflight first.
    let put = fetch(&mut browser, put_url.uri(), "{method: 'PUT', body: 'hello from a browser'}");
    assert!(put.starts_with("200 \""), "the upload, with its ETag exposed: {put}");
    let got = fetch(&mut browser, get_url.uri(), "{}");
    assert!(got.starts_with("200 ") && got.ends_with(" hello from a browser"), "{got}");
    let stored = s3.get_object().bucket("web").key("from-browser.txt").send().await.unwrap();
    assert_eq!(body_bytes(stored).await, b"hello from a browser");

    // Another origin: the preflight is refused, so the browser never sends the PUT.
    let put_url = s3.put_object().bucket("web").key("from-elsewhere.txt").presigned(presigned()).await.unwrap();
    browser.navigate(&other);
    browser.wait_for("document.body && document.body.innerText == 'someone else'", Duration::from_secs(20));
    let refused = fetch(&mut browser, put_url.uri(), "{method: 'PUT', body: 'sneaky'}");
    assert!(refused.starts_with("refused: "), "{refused}");
    let err = s3.head_object().bucket("web").key("from-elsewhere.txt").send().await.unwrap_err();
    assert_eq!(common::error_status(&err), 404, "nothing was written from the other origin");
    // And reads from it are withheld from the page (the object exists; no CORS headers).
    let got = fetch(&mut browser, get_url.uri(), "{}");
    assert!(got.starts_with("refused: "), "{got}");
}

#[tokio::test]
async fn cors_configuration_and_preflights_follow_s3() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("cors").send().await.unwrap();
    let preflight = |origin: &str, method: &str, headers: &str| {
        let mut h = vec![("Origin", origin.to_string()), ("Access-Control-Request-Method", method.to_string())];
        if !headers.is_empty() {
            h.push(("Access-Control-Request-Headers", headers.to_string()));
        }
        common::raw::send(&server.addr, "OPTIONS", "/cors/some/key", &h, b"")
    };
    let resp = preflight("https://app.example.com", "PUT", "");
    assert_eq!((resp.status, resp.error_code().as_str()), (403, "CORSResponse"), "no rules yet: {}", resp.text());
    let err = s3.get_bucket_cors().bucket("cors").send().await.unwrap_err();
    assert_eq!(error_code(&err), "NoSuchCORSConfiguration");

    let rule = |origin: &str, method: &str| {
        CorsRule::builder()
            .allowed_origins(origin)
            .allowed_methods(method)
            .allowed_headers("content-type")
            .allowed_headers("x-amz-*")
            .expose_headers("x-amz-request-id")
            .max_age_seconds(600)
            .build()
            .unwrap()
    };
    let config = CorsConfiguration::builder()
        .cors_rules(rule("https://*.example.com", "PUT"))
        .cors_rules(rule("*", "GET"))
        .build()
        .unwrap();
    s3.put_bucket_cors().bucket("cors").cors_configuration(config).send().await.unwrap();
    let got = s3.get_bucket_cors().bucket("cors").send().await.unwrap();
    assert_eq!(got.cors_rules().len(), 2);
    assert_eq!(got.cors_rules()[0].allowed_origins(), ["https://*.example.com"]);
    assert_eq!(got.cors_rules()[1].max_age_seconds(), Some(600));

    let resp = preflight("https://app.example.com", "PUT", "Content-Type, X-Amz-Date");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(resp.header("access-control-allow-methods"), Some("PUT"));
    assert_eq!(resp.header("access-control-allow-headers"), Some("Content-Type, X-Amz-Date"));
    assert_eq!(resp.header("access-control-max-age"), Some("600"));
    assert_eq!(resp.header("access-control-allow-credentials"), Some("true"));
    for (origin, method, headers) in [
        ("https://app.example.com", "PUT", "authorization"),
        ("https://app.example.org", "PUT", ""),
        ("https://app.example.com", "DELETE", ""),
    ] {
        let resp = preflight(origin, method, headers);
        assert_eq!((resp.status, resp.error_code().as_str()), (403, "CORSResponse"), "{origin} {method} {headers}");
    }
    let any = preflight("https://anyone.net", "GET", "");
    assert_eq!((any.status, any.header("access-control-allow-origin")), (200, Some("*")));
    assert_eq!(any.header("access-control-allow-credentials"), None);
    let resp =
        common::raw::send(&server.addr, "OPTIONS", "/cors/k", &[("Access-Control-Request-Method", "GET".into())], b"");
    assert_eq!((resp.status, resp.error_code().as_str()), (400, "BadRequest"), "no Origin");
    let asks = [("Origin", "https://a.net".to_string()), ("Access-Control-Request-Method", "GET".to_string())];
    let missing = common::raw::send(&server.addr, "OPTIONS", "/nosuchbucket/k", &asks, b"");
    assert_eq!((missing.status, missing.error_code().as_str()), (404, "NoSuchBucket"));

    // Actual requests: the matching rule's headers, on errors too.
    let get =
        common::raw::signed(&server.addr, "GET", "/cors/missing", &[("origin", "https://anyone.net".into())], b"");
    assert_eq!((get.status, get.header("access-control-allow-origin")), (404, Some("*")));
    assert_eq!(get.header("access-control-expose-headers"), Some("x-amz-request-id"));
    let put = common::raw::signed(&server.addr, "PUT", "/cors/k", &[("origin", "https://anyone.net".into())], b"x");
    assert_eq!((put.status, put.header("access-control-allow-origin")), (200, None), "no rule allows PUT from it");

    let bad = CorsConfiguration::builder().cors_rules(rule("*", "PATCH")).build().unwrap();
    let err = s3.put_bucket_cors().bucket("cors").cors_configuration(bad).send().await.unwrap_err();
    assert_eq!(error_code(&err), "InvalidRequest");
    s3.delete_bucket_cors().bucket("cors").send().await.unwrap();
    let err = s3.get_bucket_cors().bucket("cors").send().await.unwrap_err();
    assert_eq!(error_code(&err), "NoSuchCORSConfiguration");
    let resp = preflight("https://anyone.net", "GET", "");
    assert_eq!(resp.status, 403);
}

/// A presigned POST form from boto3's generate_presigned_post: `{"url": ..., "fields": {...}}`.
fn presigned_post(server: &Server, bucket: &str, key: &str) -> serde_json::Value {
    let python = common::require_tool("python3", "install Python 3 with boto3 (scripts/test.sh does)");
    let home = tempfile::tempdir().unwrap();
    let script = format!(
        "import boto3, json\n\
         from botocore.config import Config\n\
         s3 = boto3.client('s3', endpoint_url={endpoint:?}, config=Config(signature_version='s3v4', s3={{'addressing_style': 'path'}}))\n\
         print(json.dumps(s3.generate_presigned_post({bucket:?}, {key:?}, \
             Fields={{'success_action_status': '201', 'Content-Type': 'text/plain'}}, \
             Conditions=[{{'success_action_status': '201'}}, ['starts-with', '$Content-Type', 'text/'], ['content-length-range', 1, 4096]], \
             ExpiresIn=300)))",
        endpoint = server.endpoint
    );
    let mut cmd = std::process::Command::new(python);
    cmd.arg("-c").arg(script);
    common::aws_env_only_ours(&mut cmd, home.path());
    let out = common::run_with_timeout(&mut cmd, Duration::from_secs(60));
    serde_json::from_str(&common::expect_success("generate_presigned_post", &out)).unwrap()
}

#[tokio::test]
async fn a_page_on_another_origin_uploads_with_a_signed_form() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("forms").send().await.unwrap();
    let post = presigned_post(&server, "forms", "from-form.txt");
    let hidden: String = post["fields"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, value)| format!("<input type=hidden name=\"{name}\" value=\"{}\">", value.as_str().unwrap()))
        .collect();
    let page = format!(
        "<html><body><form id=upload method=post enctype=multipart/form-data action=\"{}\">{hidden}\
         <input id=file type=file name=file></form>ready</body></html>",
        post["url"].as_str().unwrap()
    );
    let origin = serve_page(&page);
    let mut browser = Browser::start();
    browser.navigate(&origin);
    browser.wait_for("document.getElementById('upload') != null", Duration::from_secs(20));
    // A file chosen as a user would (DataTransfer), then the form submitted: a navigation.
    browser.eval(
        "(() => { const t = new DataTransfer(); \
           t.items.add(new File(['hello from a form'], 'hello.txt', {type: 'text/plain'})); \
           document.getElementById('file').files = t.files; \
           document.getElementById('upload').submit(); return true; })()",
    );
    let answer = browser.wait_for(
        "document.documentElement && document.documentElement.textContent.includes('from-form.txt') \
           && document.documentElement.textContent",
        Duration::from_secs(20),
    );
    let answer = answer.as_str().unwrap_or_default().to_string();
    assert!(answer.contains("forms") && answer.contains("from-form.txt"), "the PostResponse: {answer}");
    let stored = s3.get_object().bucket("forms").key("from-form.txt").send().await.unwrap();
    assert_eq!(stored.content_type(), Some("text/plain"));
    assert_eq!(body_bytes(stored).await, b"hello from a form");
}
