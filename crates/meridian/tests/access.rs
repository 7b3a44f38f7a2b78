//! Access keys, per-bucket permissions and public buckets, managed with `meridian admin` and
//! exercised with aws-sdk-rust, boto3 and anonymous HTTP.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use common::admin::{Key, admin, admin_ok, client, create_key};
use common::aws::{AwsCli, TOOL_TIMEOUT};
use common::raw::{send, signed, signed_with};
use common::{ADMIN_TOKEN, Server, body_bytes, client_for, error_code};

async fn bucket_names(s3: &aws_sdk_s3::Client) -> Vec<String> {
    s3.list_buckets().send().await.unwrap().buckets().iter().filter_map(|b| b.name().map(String::from)).collect()
}

#[tokio::test]
async fn three_keys_with_different_grants() {
    let server = Server::start();
    let root = server.client();
    let alice = create_key(&server, "alice", true);
    let bob = create_key(&server, "bob", false);
    let carol = create_key(&server, "carol", false);
    let (a, b, c) = (client(&server, &alice), client(&server, &bob), client(&server, &carol));

    a.create_bucket().bucket("alpha").send().await.unwrap();
    let err = b.create_bucket().bucket("bobs").send().await.unwrap_err();
    assert_eq!(error_code(&err), "AccessDenied", "keys create buckets only when allowed");
    root.create_bucket().bucket("beta").send().await.unwrap();
    root.put_object().bucket("beta").key("secret").body(ByteStream::from_static(b"root only")).send().await.unwrap();
    a.put_object().bucket("alpha").key("doc").body(ByteStream::from_static(b"alice's")).send().await.unwrap();

    // No grant: nothing, and nothing leaks in ListBuckets.
    let err = b.get_object().bucket("alpha").key("doc").send().await.unwrap_err();
    assert_eq!(error_code(&err), "AccessDenied");
    assert!(bucket_names(&b).await.is_empty());
    assert_eq!(bucket_names(&a).await, ["alpha"], "alice sees only what she may read");
    assert_eq!(bucket_names(&root).await, ["alpha", "beta"]);

    admin_ok(&server, &["bucket", "allow", "alpha", "--key", "bob", "--read"]);
    admin_ok(&server, &["bucket", "allow", "alpha", "--key", "carol", "--write"]);
    assert_eq!(body_bytes(b.get_object().bucket("alpha").key("doc").send().await.unwrap()).await, b"alice's");
    assert_eq!(b.list_objects_v2().bucket("alpha").send().await.unwrap().key_count(), Some(1));
    let err = b.put_object().bucket("alpha").key("x").body(ByteStream::from_static(b"x")).send().await.unwrap_err();
    assert_eq!(error_code(&err), "AccessDenied", "read is not write");
    c.put_object().bucket("alpha").key("from-carol").body(ByteStream::from_static(b"c")).send().await.unwrap();
    c.delete_object().bucket("alpha").key("from-carol").send().await.unwrap();
    let err = c.delete_bucket().bucket("alpha").send().await.unwrap_err();
    assert_eq!(error_code(&err), "AccessDenied", "only owners delete buckets");
    let err = c.copy_object().bucket("alpha").key("stolen").copy_source("beta/secret").send().await.unwrap_err();
    assert_eq!(error_code(&err), "AccessDenied", "a copy needs read on its source");
    let err = c.get_object().bucket("beta").key("secret").send().await.unwrap_err();
    assert_eq!(error_code(&err), "AccessDenied");

    // KV endpoints follow the same grants.
    let list = signed_with(&server.addr, "GET", "/alpha?meridian=list", &[], b"", &bob.id, &bob.secret);
    assert_eq!(list.status, 200, "{}", list.text());
    let batch = br#"{"ops":[{"op":"put","key":"k","value":"v"}]}"#;
    let denied = signed_with(&server.addr, "POST", "/alpha?meridian=batch", &[], batch, &bob.id, &bob.secret);
    assert_eq!(denied.status, 403);
    let allowed = signed_with(&server.addr, "POST", "/alpha?meridian=batch", &[], batch, &carol.id, &carol.secret);
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    // A batch is a write: it issues the read-your-writes session cookie at its revision.
    let revision = serde_json::from_slice::<serde_json::Value>(&allowed.body).expect("JSON")["revision"].to_string();
    let cookie = allowed.header("set-cookie").expect("a batch sets the session cookie");
    assert!(cookie.starts_with(&format!("meridian-min-revision={revision};")), "{cookie}");
    // A bucket policy with a Deny would be walked around by the KV endpoints, which do not
    // evaluate policies per key: they are refused to all but the admin while it is there.
    let deny = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":"*","Action":"s3:PutObject",
        "Resource":"arn:aws:s3:::alpha/private/*"}]}"#;
    root.put_bucket_policy().bucket("alpha").policy(deny).send().await.unwrap();
    let private = br#"{"ops":[{"op":"put","key":"private/k","value":"v"}]}"#;
    let refused = signed_with(&server.addr, "POST", "/alpha?meridian=batch", &[], private, &carol.id, &carol.secret);
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(refused.text().contains("Deny statements"), "{}", refused.text());
    let err = c.put_object().bucket("alpha").key("private/k").body(ByteStream::from_static(b"v")).send().await;
    assert_eq!(error_code(&err.unwrap_err()), "AccessDenied", "the S3 API applies the Deny");
    let by_admin = signed(&server.addr, "POST", "/alpha?meridian=batch", &[], batch);
    assert_eq!(by_admin.status, 200, "the admin is not subject to bucket policies: {}", by_admin.text());
    root.delete_bucket_policy().bucket("alpha").send().await.unwrap();
    let again = signed_with(&server.addr, "POST", "/alpha?meridian=batch", &[], batch, &carol.id, &carol.secret);
    assert_eq!(again.status, 200, "{}", again.text());

    // Taking a grant away works at once.
    admin_ok(&server, &["bucket", "deny", "alpha", "--key", "bob", "--read"]);
    let err = b.get_object().bucket("alpha").key("doc").send().await.unwrap_err();
    assert_eq!(error_code(&err), "AccessDenied");

    let info = admin_ok(&server, &["key", "info", "carol"]);
    assert_eq!(info["buckets"][0]["bucket"], "alpha");
    assert_eq!(info["buckets"][0]["write"], true);
    assert!(info.get("secret_access_key").is_none(), "secrets are never shown again");
    let keys = admin_ok(&server, &["key", "list"]);
    let names: Vec<&str> = keys.as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["admin", "alice", "bob", "carol"]);

    // The owner can delete her bucket once empty.
    a.delete_object().bucket("alpha").key("doc").send().await.unwrap();
    a.delete_object().bucket("alpha").key("k").send().await.unwrap();
    a.delete_bucket().bucket("alpha").send().await.unwrap();
}

#[tokio::test]
async fn public_buckets_allow_anonymous_reads_only() {
    let server = Server::start();
    let root = server.client();
    root.create_bucket().bucket("site").send().await.unwrap();
    root.put_object()
        .bucket("site")
        .key("index.html")
        .body(ByteStream::from_static(b"<h1>hi</h1>"))
        .send()
        .await
        .unwrap();
    assert_eq!(send(&server.addr, "GET", "/site/index.html", &[], b"").status, 403, "private by default");

    admin_ok(&server, &["bucket", "public", "site", "--read"]);
    let got = send(&server.addr, "GET", "/site/index.html", &[], b"");
    assert_eq!((got.status, got.body.as_slice()), (200, &b"<h1>hi</h1>"[..]));
    assert_eq!(send(&server.addr, "HEAD", "/site/index.html", &[], b"").status, 200);
    assert_eq!(send(&server.addr, "GET", "/site/missing", &[], b"").status, 404);
    for (method, path) in [
        ("GET", "/site"),
        ("GET", "/site?list-type=2"),
        ("PUT", "/site/evil"),
        ("DELETE", "/site/index.html"),
        ("GET", "/"),
    ] {
        let resp = send(&server.addr, method, path, &[], b"");
        assert_eq!(resp.status, 403, "anonymous {method} {path} must be refused");
    }
    let acl = root.get_bucket_acl().bucket("site").send().await.unwrap();
    let all_users = acl.grants().iter().any(|g| {
        g.grantee().and_then(|e| e.uri()).is_some_and(|u| u.ends_with("AllUsers"))
            && g.permission().map(|p| p.as_str()) == Some("READ")
    });
    assert!(all_users, "GetBucketAcl tells the truth: {acl:?}");
    let object_acl = root.get_object_acl().bucket("site").key("index.html").send().await.unwrap();
    assert_eq!(object_acl.grants().len(), 2);

    root.put_bucket_acl().bucket("site").acl(aws_sdk_s3::types::BucketCannedAcl::Private).send().await.unwrap();
    assert_eq!(send(&server.addr, "GET", "/site/index.html", &[], b"").status, 403);
    let acl = root.get_bucket_acl().bucket("site").send().await.unwrap();
    assert_eq!(acl.grants().len(), 1, "only the owner once private");

    root.create_bucket().bucket("open").acl(aws_sdk_s3::types::BucketCannedAcl::PublicRead).send().await.unwrap();
    root.put_object().bucket("open").key("a").body(ByteStream::from_static(b"A")).send().await.unwrap();
    assert_eq!(send(&server.addr, "GET", "/open/a", &[], b"").status, 200, "public-read on CreateBucket");
    let err = root
        .put_bucket_acl()
        .bucket("open")
        .acl(aws_sdk_s3::types::BucketCannedAcl::PublicReadWrite)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), "NotImplemented", "public writes are never granted by accident");
    assert_eq!(send(&server.addr, "PUT", "/open/b", &[], b"x").status, 403);
}

#[tokio::test]
async fn rotation_grace_and_deletion_take_effect_at_once() {
    let server = Server::start();
    let root = server.client();
    root.create_bucket().bucket("rot").send().await.unwrap();
    let dave = create_key(&server, "dave", false);
    admin_ok(&server, &["bucket", "allow", "rot", "--key", "dave", "--read", "--write"]);
    let old = client(&server, &dave);
    old.put_object().bucket("rot").key("k").body(ByteStream::from_static(b"1")).send().await.unwrap();

    let rotated = admin_ok(&server, &["key", "rotate", "dave", "--grace", "2s"]);
    let new_key = Key {
        id: rotated["access_key_id"].as_str().unwrap().into(),
        secret: rotated["secret_access_key"].as_str().unwrap().into(),
    };
    assert_ne!(new_key.id, dave.id);
    let new = client(&server, &new_key);
    old.get_object().bucket("rot").key("k").send().await.unwrap();
    new.get_object().bucket("rot").key("k").send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = old.get_object().bucket("rot").key("k").send().await.unwrap_err();
    assert_eq!(error_code(&err), "InvalidAccessKeyId", "the old secret expires after the grace period");
    new.get_object().bucket("rot").key("k").send().await.unwrap();

    admin_ok(&server, &["key", "delete", "dave"]);
    let err = new.get_object().bucket("rot").key("k").send().await.unwrap_err();
    assert_eq!(error_code(&err), "InvalidAccessKeyId", "a deleted key stops working at once");
    let buckets = admin_ok(&server, &["bucket", "list"]);
    assert!(buckets[0]["grants"].as_object().unwrap().is_empty(), "its grants are gone too");

    // The admin key survives a restart and the stored keys too.
    let erin = create_key(&server, "erin", false);
    let mut server = server;
    server.restart();
    let erin_client = client_for(&server.endpoint, &erin.id, &erin.secret);
    assert!(erin_client.list_buckets().send().await.unwrap().buckets().is_empty());
    server.client().list_buckets().send().await.unwrap();
}

#[tokio::test]
async fn bad_admin_input_gets_clear_errors() {
    let server = Server::start();
    server.client().create_bucket().bucket("bad").send().await.unwrap();
    let (code, _, err) = admin(&server, &["key", "info", "nobody"]);
    assert_eq!(code, 1);
    assert!(err.contains("no access key named \"nobody\""), "{err}");
    let (code, _, err) = admin(&server, &["key", "create", "has space"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid key name"), "{err}");
    create_key(&server, "frank", false);
    let (code, _, err) = admin(&server, &["key", "create", "frank"]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = admin(&server, &["bucket", "allow", "bad", "--key", "frank"]);
    assert_eq!(code, 2, "a grant naming no permission is a usage error");
    assert!(err.contains("--read, --write, --owner"), "{err}");
    let (code, _, err) = admin(&server, &["bucket", "allow", "bad", "--key", "ghost", "--read"]);
    assert_eq!(code, 1);
    assert!(err.contains("ghost"), "{err}");
    let (code, _, err) = admin(&server, &["bucket", "allow", "nobucket", "--key", "frank", "--read"]);
    assert_eq!(code, 1);
    assert!(err.contains("NoSuchBucket"), "{err}");
    let (code, _, err) = admin(&server, &["key", "delete", "admin"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot be deleted"), "{err}");
    let (code, _, err) = admin(&server, &["key", "rotate", "frank", "--grace", "forever"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid duration \"forever\""), "{err}");

    // The API itself: no token, wrong token, malformed JSON, unknown endpoint.
    let admin_addr = server.admin_url.trim_start_matches("http://").to_string();
    assert_eq!(send(&admin_addr, "GET", "/v1/keys", &[], b"").status, 401);
    assert_eq!(send(&admin_addr, "GET", "/v1/keys", &[("authorization", "Bearer wrong".into())], b"").status, 401);
    let auth = [("authorization", format!("Bearer {ADMIN_TOKEN}"))];
    let resp = send(&admin_addr, "POST", "/v1/keys", &auth, b"{not json");
    assert_eq!(resp.status, 400);
    assert!(resp.text().contains("malformed JSON"), "{}", resp.text());
    let resp = send(&admin_addr, "POST", "/v1/keys", &auth, br#"{"name":"x","colour":"red"}"#);
    assert_eq!(resp.status, 400, "unknown fields are refused: {}", resp.text());
    assert_eq!(send(&admin_addr, "GET", "/v1/nothing", &auth, b"").status, 404);
    let health = send(&admin_addr, "GET", "/health", &[], b"");
    assert_eq!(health.status, 200);
    assert!(health.text().contains("\"ok\""));
}

#[test]
fn boto3_sees_the_same_permissions() {
    let server = Server::start();
    let writer = create_key(&server, "writer", true);
    let reader = create_key(&server, "reader", false);
    let outsider = create_key(&server, "outsider", false);
    let script = r#"
import sys, boto3, botocore
endpoint, w_id, w_secret, r_id, r_secret, o_id, o_secret = sys.argv[1:8]
def client(i, s):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=i, aws_secret_access_key=s, region_name="us-east-1",
                        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
def code(fn):
    try:
        fn()
        return "OK"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
w, r, o = client(w_id, w_secret), client(r_id, r_secret), client(o_id, o_secret)
w.create_bucket(Bucket="shared")
w.put_object(Bucket="shared", Key="k", Body=b"v")
results = {
    "outsider_get": code(lambda: o.get_object(Bucket="shared", Key="k")),
    "outsider_create": code(lambda: o.create_bucket(Bucket="mine")),
    "outsider_sees": [b["Name"] for b in o.list_buckets()["Buckets"]],
}
print(results)
assert results == {"outsider_get": "AccessDenied", "outsider_create": "AccessDenied", "outsider_sees": []}, results
print("READY", flush=True)
sys.stdin.readline()
assert r.get_object(Bucket="shared", Key="k")["Body"].read() == b"v"
assert code(lambda: r.put_object(Bucket="shared", Key="x", Body=b"x")) == "AccessDenied"
assert [b["Name"] for b in r.list_buckets()["Buckets"]] == ["shared"]
print("boto3 permissions OK")
"#;
    let python = common::require_tool("python3", "install Python 3");
    // The reader gets its grant while the script waits, to show it takes effect mid-session.
    let mut child = Command::new(python)
        .args([
            "-c",
            script,
            &server.endpoint,
            &writer.id,
            &writer.secret,
            &reader.id,
            &reader.secret,
            &outsider.id,
            &outsider.secret,
        ])
        .env_remove("AWS_CA_BUNDLE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::{BufRead, Write};
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut seen = String::new();
    while !line.starts_with("READY") {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("boto3 script failed before READY (is boto3 installed? scripts/test.sh installs it)\n{seen}\n{err}");
        }
        seen.push_str(&line);
    }
    admin_ok(&server, &["bucket", "allow", "shared", "--key", "reader", "--read"]);
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "boto3 script failed:\n{seen}{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("boto3 permissions OK"));
}

/// PutBucketAcl's grant headers name keys (`id="NAME"`) and AllUsers READ; they replace the
/// bucket's grants. What has no Meridian equivalent is refused with a clear error.
#[tokio::test]
async fn acl_grant_headers_map_onto_key_grants() {
    use aws_sdk_s3::types::BucketCannedAcl;
    let server = Server::start();
    let root = server.client();
    let (reader, writer) = (create_key(&server, "reader", false), create_key(&server, "writer", false));
    let (r, w) = (client(&server, &reader), client(&server, &writer));
    root.create_bucket().bucket("granted").send().await.unwrap();
    root.put_object().bucket("granted").key("doc").body(ByteStream::from_static(b"shared")).send().await.unwrap();
    let all_users = "uri=\"http://acs.amazonaws.com/groups/global/AllUsers\"";
    root.put_bucket_acl()
        .bucket("granted")
        .grant_read(format!("id=\"reader\", {all_users}"))
        .grant_write("id=\"writer\"")
        .send()
        .await
        .unwrap();
    assert_eq!(body_bytes(r.get_object().bucket("granted").key("doc").send().await.unwrap()).await, b"shared");
    let err = r.put_object().bucket("granted").key("x").body(ByteStream::from_static(b"x")).send().await.unwrap_err();
    assert_eq!(error_code(&err), "AccessDenied", "read is not write");
    w.put_object().bucket("granted").key("w").body(ByteStream::from_static(b"w")).send().await.unwrap();
    assert_eq!(send(&server.addr, "GET", "/granted/doc", &[], b"").status, 200, "AllUsers READ: public");
    let acl = root.get_bucket_acl().bucket("granted").send().await.unwrap();
    let listed: Vec<(String, String)> = acl
        .grants()
        .iter()
        .map(|g| {
            let who = g.grantee().and_then(|e| e.id().or(e.uri())).unwrap_or_default().to_string();
            (who, g.permission().map(|p| p.as_str().to_string()).unwrap_or_default())
        })
        .collect();
    for expected in
        [("reader", "READ"), ("writer", "WRITE"), ("http://acs.amazonaws.com/groups/global/AllUsers", "READ")]
    {
        assert!(listed.contains(&(expected.0.into(), expected.1.into())), "{expected:?} in {listed:?}");
    }

    // The headers replace the ACL: the reader not named again loses its grant.
    root.put_bucket_acl().bucket("granted").grant_full_control("id=\"writer\"").send().await.unwrap();
    let err = r.get_object().bucket("granted").key("doc").send().await.unwrap_err();
    assert_eq!(error_code(&err), "AccessDenied");
    assert_eq!(send(&server.addr, "GET", "/granted/doc", &[], b"").status, 403, "no longer public");
    w.put_bucket_acl().bucket("granted").grant_read("id=\"writer\"").send().await.expect("FULL_CONTROL: an owner");

    let refusals = [
        (root.put_bucket_acl().bucket("granted").grant_read("id=\"nobody\"").send().await, "InvalidArgument"),
        (root.put_bucket_acl().bucket("granted").grant_write(all_users).send().await, "NotImplemented"),
        (root.put_bucket_acl().bucket("granted").grant_read("emailAddress=\"a@b.c\"").send().await, "NotImplemented"),
        (root.put_bucket_acl().bucket("granted").acl(BucketCannedAcl::PublicReadWrite).send().await, "NotImplemented"),
        (
            root.put_bucket_acl().bucket("granted").acl(BucketCannedAcl::AuthenticatedRead).send().await,
            "NotImplemented",
        ),
        (
            root.put_bucket_acl()
                .bucket("granted")
                .acl(BucketCannedAcl::PublicRead)
                .grant_read("id=\"writer\"")
                .send()
                .await,
            "InvalidRequest",
        ),
    ];
    for (i, (result, code)) in refusals.into_iter().enumerate() {
        assert_eq!(error_code(&result.unwrap_err()), code, "refusal {i}");
    }
    let err = root.create_bucket().bucket("with-grants").grant_read("id=\"reader\"").send().await.unwrap_err();
    assert_eq!(error_code(&err), "NotImplemented", "grant headers are not ignored on CreateBucket");
}

/// Bucket policies, Block Public Access and object ownership through boto3, anonymous requests
/// through an UNSIGNED boto3 client (crates/meridian/tests/clients/boto3_policy.py).
#[test]
fn boto3_bucket_policies_public_access_block_and_ownership() {
    let server = Server::start();
    let reader = create_key(&server, "reader", false);
    let writer = create_key(&server, "writer", false);
    let aws = AwsCli::new(&server);
    aws.ok(&["s3api", "create-bucket", "--bucket", "policy-bucket"]);
    admin_ok(&server, &["bucket", "allow", "policy-bucket", "--key", "writer", "--write"]);
    let python = common::require_tool("python3", "install Python 3 (apt-get install python3)");
    let home = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/boto3_policy.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script).args([&server.endpoint, &reader.id, &reader.secret, &writer.id, &writer.secret]);
    common::aws_env_only_ours(&mut cmd, home.path());
    let out = common::run_with_timeout(&mut cmd, TOOL_TIMEOUT);
    let stdout = common::expect_success("boto3_policy.py (is boto3 installed? scripts/test.sh installs it)", &out);
    assert!(stdout.contains("policy checks passed"), "the script ran to the end:\n{stdout}");
}

/// Policy conditions on anonymous plain-HTTP requests, the policy put with the AWS CLI: the
/// client's address against two blocks, aws:SecureTransport, aws:Referer and aws:CurrentTime.
#[test]
fn policy_conditions_on_address_transport_referer_and_time() {
    let server = Server::start();
    let aws = AwsCli::new(&server);
    let bucket = "conditions";
    aws.ok(&["s3api", "create-bucket", "--bucket", bucket]);
    let dirs = ["loopback", "ten-net", "site", "past", "since", "tls-only", "not-ten"];
    let body = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body.path(), b"hello").unwrap();
    for dir in dirs {
        let key = format!("{dir}/x");
        aws.ok(&["s3api", "put-object", "--bucket", bucket, "--key", &key, "--body", body.path().to_str().unwrap()]);
    }
    let allow = |dir: &str, condition: serde_json::Value| {
        serde_json::json!({"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
            "Resource": format!("arn:aws:s3:::{bucket}/{dir}/*"), "Condition": condition})
    };
    let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [
        allow("loopback", serde_json::json!({"IpAddress": {"aws:SourceIp": ["127.0.0.0/8", "::1/128"]}})),
        allow("ten-net", serde_json::json!({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})),
        allow("not-ten", serde_json::json!({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}})),
        allow("site", serde_json::json!({"StringLike": {"aws:Referer": ["https://www.example.com/*"]}})),
        allow("past", serde_json::json!({"DateLessThan": {"aws:CurrentTime": "2001-01-01T00:00:00Z"}})),
        allow("since", serde_json::json!({"DateGreaterThan": {"aws:CurrentTime": "2001-01-01T00:00:00Z"}})),
        allow("tls-only", serde_json::json!({})),
        {"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": format!("arn:aws:s3:::{bucket}/tls-only/*"),
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
    ]});
    let policy_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(policy_file.path(), policy.to_string()).unwrap();
    let file_arg = format!("file://{}", policy_file.path().display());
    aws.ok(&["s3api", "put-bucket-policy", "--bucket", bucket, "--policy", &file_arg]);
    let status = aws.json(&["s3api", "get-bucket-policy-status", "--bucket", bucket]);
    assert_eq!(status["PolicyStatus"]["IsPublic"], true, "{status}");

    let get =
        |dir: &str, headers: &[(&str, String)]| send(&server.addr, "GET", &format!("/{bucket}/{dir}/x"), headers, b"");
    let ok = get("loopback", &[]);
    assert_eq!((ok.status, ok.body.as_slice()), (200, &b"hello"[..]), "127.0.0.1 is in 127.0.0.0/8");
    assert_eq!(get("ten-net", &[]).status, 403, "127.0.0.1 is not in 10.0.0.0/8");
    assert_eq!(get("not-ten", &[]).status, 200, "NotIpAddress");
    assert_eq!(get("site", &[]).status, 403, "no Referer");
    assert_eq!(get("site", &[("referer", "https://evil.example.net/".into())]).status, 403);
    assert_eq!(get("site", &[("referer", "https://www.example.com/page".into())]).status, 200);
    assert_eq!(get("past", &[]).status, 403, "DateLessThan a past time");
    assert_eq!(get("since", &[]).status, 200, "DateGreaterThan a past time");
    let denied = get("tls-only", &[]);
    assert_eq!((denied.status, denied.error_code().as_str()), (403, "AccessDenied"), "plain HTTP is denied");
    // The admin key is not subject to the policy.
    aws.ok(&["s3api", "head-object", "--bucket", bucket, "--key", "tls-only/x"]);

    // A malformed policy through the CLI: MalformedPolicy, and the old policy stays.
    std::fs::write(policy_file.path(), r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject"}]}"#)
        .unwrap();
    let out = aws.run(&["s3api", "put-bucket-policy", "--bucket", bucket, "--policy", &file_arg]);
    let stderr = common::text(&out.stderr);
    assert!(!out.status.success() && stderr.contains("MalformedPolicy"), "{stderr}");
    assert!(stderr.contains("Missing required field Resource"), "{stderr}");
    assert_eq!(get("loopback", &[]).status, 200);
    aws.ok(&["s3api", "delete-bucket-policy", "--bucket", bucket]);
    assert_eq!(get("loopback", &[]).status, 403);
}
