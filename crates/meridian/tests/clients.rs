//! Real third-party clients against a live `meridian server`: the AWS CLI, boto3, rclone and
//! s3fs.
//! Every tool must be installed (scripts/test.sh installs them); a missing one fails the test.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::aws::{AwsCli, TOOL_TIMEOUT};
use common::{Server, body_bytes, expect_success, md5_hex, pattern, require_tool, run_with_timeout, text};

const MIB: usize = 1 << 20;

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Every file under `root` by relative path (with `/`), with its bytes.
fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("under root");
                let rel = rel.to_str().expect("utf-8 name").replace('\\', "/");
                out.insert(rel, std::fs::read(&path).expect("read file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn write_file(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, data).expect("write file");
}

/// Compares two trees by name and bytes, reporting differences by name and size (not by dumping
/// megabytes of content).
fn assert_same_tree(expected: &BTreeMap<String, Vec<u8>>, actual: &BTreeMap<String, Vec<u8>>, what: &str) {
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(actual), names(expected), "{what}: file names differ");
    for (name, data) in expected {
        let got = &actual[name];
        assert!(
            got == data,
            "{what}: {name} differs: {} bytes (md5 {}) instead of {} bytes (md5 {})",
            got.len(),
            md5_hex(got),
            data.len(),
            md5_hex(data)
        );
    }
}

/// Keys and sizes in a bucket, read with aws-sdk-rust (an independent check of what a tool did).
async fn list_all(s3: &aws_sdk_s3::Client, bucket: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let mut pages = s3.list_objects_v2().bucket(bucket).into_paginator().send();
    while let Some(page) = pages.next().await {
        for object in page.expect("list page").contents() {
            out.insert(object.key().expect("key").to_string(), object.size().expect("size"));
        }
    }
    out
}

async fn sdk_get(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    body_bytes(
        s3.get_object().bucket(bucket).key(key).send().await.unwrap_or_else(|e| panic!("get {bucket}/{key}: {e:?}")),
    )
    .await
}

/// Lines of `aws s3 sync`/`cp` output that report a transfer or deletion.
fn transfer_lines(stdout: &str) -> Vec<String> {
    let mut lines: Vec<String> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("upload:") || l.starts_with("download:") || l.starts_with("copy:") || l.starts_with("delete:")
        })
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn aws_cli_s3_commands() {
    let server = Server::start();
    let s3 = server.client();
    let aws = AwsCli::new(&server);
    let work = tempfile::tempdir().expect("temp dir");
    let work = work.path();

    aws.ok(&["s3", "mb", "s3://cli-bucket"]);
    s3.head_bucket().bucket("cli-bucket").send().await.expect("bucket made by `aws s3 mb` exists");
    let listing = aws.ok(&["s3", "ls"]);
    assert!(listing.lines().any(|l| l.trim_end().ends_with(" cli-bucket")), "`aws s3 ls` shows the bucket: {listing}");

    // cp up: a small file and a 20 MiB one, which the CLI uploads in 8 MiB parts.
    let small = pattern(1234, 1);
    let big = pattern(20 * MIB, 2);
    write_file(work, "up/small.txt", &small);
    write_file(work, "up/big.bin", &big);
    let cp = ["--no-progress", "--only-show-errors"];
    aws.ok(
        &[&["s3", "cp", path_str(&work.join("up/small.txt")), "s3://cli-bucket/docs/small.txt"][..], &cp[..]].concat()
    );
    aws.ok(&[&["s3", "cp", path_str(&work.join("up/big.bin")), "s3://cli-bucket/big/big.bin"][..], &cp[..]].concat());
    assert_eq!(sdk_get(&s3, "cli-bucket", "docs/small.txt").await, small);
    let head = s3.head_object().bucket("cli-bucket").key("big/big.bin").send().await.unwrap();
    assert_eq!(head.content_length(), Some(big.len() as i64));
    assert!(
        head.e_tag().unwrap_or_default().ends_with("-3\""),
        "20 MiB went up as a 3-part multipart upload: {:?}",
        head.e_tag()
    );
    assert!(sdk_get(&s3, "cli-bucket", "big/big.bin").await == big);

    // cp down.
    aws.ok(&[&["s3", "cp", "s3://cli-bucket/docs/small.txt", path_str(&work.join("down/small.txt"))][..], &cp[..]]
        .concat());
    aws.ok(&[&["s3", "cp", "s3://cli-bucket/big/big.bin", path_str(&work.join("down/big.bin"))][..], &cp[..]].concat());
    assert_eq!(std::fs::read(work.join("down/small.txt")).unwrap(), small);
    assert!(std::fs::read(work.join("down/big.bin")).unwrap() == big);

    // ls, not recursive: the top level shows prefixes only.
    let top = aws.ok(&["s3", "ls", "s3://cli-bucket/"]);
    let mut top_lines: Vec<&str> = top.lines().map(str::trim).collect();
    top_lines.sort();
    assert_eq!(top_lines, ["PRE big/", "PRE docs/"], "{top}");
    let docs = aws.ok(&["s3", "ls", "s3://cli-bucket/docs/"]);
    assert!(
        docs.lines().any(|l| l.trim_end().ends_with(" 1234 small.txt")),
        "`aws s3 ls s3://cli-bucket/docs/` shows the file and its size: {docs}"
    );
    let recursive = aws.ok(&["s3", "ls", "--recursive", "s3://cli-bucket"]);
    let mut listed: Vec<(String, String)> = recursive
        .lines()
        .map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(parts.len(), 4, "date time size key: {l}");
            (parts[3].to_string(), parts[2].to_string())
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [("big/big.bin".to_string(), (20 * MIB).to_string()), ("docs/small.txt".to_string(), "1234".to_string())]
    );

    // sync up a tree with nested prefixes, then again: nothing to do.
    let src = work.join("tree");
    let mut tree = BTreeMap::new();
    tree.insert("a.txt".to_string(), b"alpha\n".to_vec());
    tree.insert("sub/b.txt".to_string(), pattern(70_000, 3));
    tree.insert("sub/deeper/c.bin".to_string(), pattern(300_000, 4));
    tree.insert("sub/deeper/empty".to_string(), Vec::new());
    tree.insert("with space/d e.txt".to_string(), b"spaces".to_vec());
    // An hour old: the CLI re-uploads a file whose mtime is newer than the object's
    // LastModified, and S3 reports LastModified to the second, so a file written in the same
    // second as its upload would make the no-op resync below flaky.
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for (name, data) in &tree {
        write_file(&src, name, data);
        std::fs::File::options()
            .write(true)
            .open(src.join(name))
            .and_then(|f| f.set_modified(an_hour_ago))
            .expect("set mtime");
    }
    let sync_up = ["s3", "sync", "--no-progress", path_str(&src), "s3://cli-bucket/tree"];
    let out = aws.ok(&sync_up);
    let uploads = transfer_lines(&out);
    assert_eq!(uploads.len(), tree.len(), "first sync uploads every file: {out}");
    assert!(uploads.iter().all(|l| l.starts_with("upload:")), "{out}");
    let remote: BTreeMap<String, i64> = list_all(&s3, "cli-bucket")
        .await
        .into_iter()
        .filter_map(|(k, size)| k.strip_prefix("tree/").map(|k| (k.to_string(), size)))
        .collect();
    let expected: BTreeMap<String, i64> = tree.iter().map(|(k, v)| (k.clone(), v.len() as i64)).collect();
    assert_eq!(remote, expected, "keys and sizes after sync");
    for (name, data) in &tree {
        assert!(&sdk_get(&s3, "cli-bucket", &format!("tree/{name}")).await == data, "{name}");
    }
    let out = aws.ok(&sync_up);
    assert_eq!(transfer_lines(&out), Vec::<String>::new(), "second sync transfers nothing");

    // sync down into a fresh folder, then again: nothing to do.
    let down = work.join("tree-down");
    let sync_down = ["s3", "sync", "--no-progress", "s3://cli-bucket/tree", path_str(&down)];
    let out = aws.ok(&sync_down);
    assert_eq!(transfer_lines(&out).len(), tree.len(), "{out}");
    assert_same_tree(&tree, &read_tree(&down), "aws s3 sync down");
    let out = aws.ok(&sync_down);
    assert_eq!(transfer_lines(&out), Vec::<String>::new(), "second sync down transfers nothing");

    // A changed and a removed file: sync --delete transfers exactly those.
    write_file(&src, "a.txt", b"alpha, longer now\n");
    std::fs::remove_file(src.join("sub/b.txt")).unwrap();
    let out = aws.ok(&[&sync_up[..], &["--delete"]].concat());
    let lines = transfer_lines(&out);
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("delete: s3://cli-bucket/tree/sub/b.txt"), "{out}");
    assert!(lines[1].starts_with("upload: ") && lines[1].ends_with(" to s3://cli-bucket/tree/a.txt"), "{out}");
    assert_eq!(sdk_get(&s3, "cli-bucket", "tree/a.txt").await, b"alpha, longer now\n");
    assert!(!list_all(&s3, "cli-bucket").await.contains_key("tree/sub/b.txt"));

    // rm --recursive empties the bucket; rb removes it.
    aws.ok(&["s3", "rm", "--recursive", "--only-show-errors", "s3://cli-bucket"]);
    assert_eq!(list_all(&s3, "cli-bucket").await, BTreeMap::new());
    aws.ok(&["s3", "rb", "s3://cli-bucket"]);
    let err = s3.head_bucket().bucket("cli-bucket").send().await.unwrap_err();
    assert_eq!(common::error_status(&err), 404, "bucket gone after `aws s3 rb`");
}

#[tokio::test]
async fn aws_cli_s3api_commands() {
    let server = Server::start();
    let s3 = server.client();
    let aws = AwsCli::new(&server);
    let work = tempfile::tempdir().expect("temp dir");
    let work = work.path();
    let b = "api-bucket";

    aws.json(&["s3api", "create-bucket", "--bucket", b]);

    // put-object with metadata and content type; head-object reports them.
    let body = b"0123456789abcdefghij";
    write_file(work, "body.txt", body);
    let put = aws.json(&[
        "s3api",
        "put-object",
        "--bucket",
        b,
        "--key",
        "docs/meta.txt",
        "--body",
        path_str(&work.join("body.txt")),
        "--content-type",
        "text/x-meridian",
        "--cache-control",
        "no-cache",
        "--metadata",
        "color=red,shape=round",
    ]);
    let etag = format!("\"{}\"", md5_hex(body));
    assert_eq!(put["ETag"], etag.as_str(), "{put}");
    let head = aws.json(&["s3api", "head-object", "--bucket", b, "--key", "docs/meta.txt"]);
    assert_eq!(head["ContentLength"], body.len(), "{head}");
    assert_eq!(head["ContentType"], "text/x-meridian", "{head}");
    assert_eq!(head["CacheControl"], "no-cache", "{head}");
    assert_eq!(head["ETag"], etag.as_str(), "{head}");
    assert_eq!(head["Metadata"], serde_json::json!({"color": "red", "shape": "round"}), "{head}");
    assert!(head["LastModified"].is_string(), "{head}");

    // get-object with a range.
    let ranged_path = work.join("ranged.out");
    let got = aws.json(&[
        "s3api",
        "get-object",
        "--bucket",
        b,
        "--key",
        "docs/meta.txt",
        "--range",
        "bytes=5-9",
        path_str(&ranged_path),
    ]);
    assert_eq!(got["ContentRange"], "bytes 5-9/20", "{got}");
    assert_eq!(got["ContentLength"], 5, "{got}");
    assert_eq!(std::fs::read(&ranged_path).unwrap(), b"56789");

    // list-objects-v2 with a delimiter.
    for key in ["a/1", "a/2", "b/x/1", "top"] {
        s3.put_object().bucket(b).key(key).body(key.as_bytes().to_vec().into()).send().await.unwrap();
    }
    let list = aws.json(&["s3api", "list-objects-v2", "--bucket", b, "--delimiter", "/"]);
    let prefixes: Vec<&str> = list["CommonPrefixes"]
        .as_array()
        .unwrap_or_else(|| panic!("CommonPrefixes: {list}"))
        .iter()
        .map(|p| p["Prefix"].as_str().unwrap())
        .collect();
    assert_eq!(prefixes, ["a/", "b/", "docs/"], "{list}");
    let keys: Vec<&str> = list["Contents"]
        .as_array()
        .unwrap_or_else(|| panic!("Contents: {list}"))
        .iter()
        .map(|o| o["Key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["top"], "{list}");
    let list = aws.json(&["s3api", "list-objects-v2", "--bucket", b, "--prefix", "a/", "--delimiter", "/"]);
    let keys: Vec<&str> = list["Contents"]
        .as_array()
        .unwrap_or_else(|| panic!("Contents: {list}"))
        .iter()
        .map(|o| o["Key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["a/1", "a/2"], "{list}");

    // copy-object keeps the metadata by default.
    let copy = aws.json(&[
        "s3api",
        "copy-object",
        "--bucket",
        b,
        "--key",
        "docs/copy.txt",
        "--copy-source",
        &format!("{b}/docs/meta.txt"),
    ]);
    assert_eq!(copy["CopyObjectResult"]["ETag"], etag.as_str(), "{copy}");
    let copied = s3.get_object().bucket(b).key("docs/copy.txt").send().await.unwrap();
    assert_eq!(copied.content_type(), Some("text/x-meridian"));
    assert_eq!(copied.metadata().and_then(|m| m.get("color")).map(String::as_str), Some("red"));
    assert_eq!(body_bytes(copied).await, body);

    // delete-objects.
    let deleted = aws.json(&[
        "s3api",
        "delete-objects",
        "--bucket",
        b,
        "--delete",
        r#"{"Objects":[{"Key":"a/1"},{"Key":"a/2"},{"Key":"never-existed"}]}"#,
    ]);
    let mut gone: Vec<&str> = deleted["Deleted"]
        .as_array()
        .unwrap_or_else(|| panic!("Deleted: {deleted}"))
        .iter()
        .map(|d| d["Key"].as_str().unwrap())
        .collect();
    gone.sort();
    assert_eq!(gone, ["a/1", "a/2", "never-existed"], "{deleted}");
    assert!(deleted.get("Errors").is_none(), "{deleted}");
    let remaining: Vec<String> = list_all(&s3, b).await.into_keys().collect();
    assert_eq!(remaining, ["b/x/1", "docs/copy.txt", "docs/meta.txt", "top"]);

    // A multipart upload, step by step.
    let part1 = pattern(5 * MIB, 10);
    let part2 = pattern(777, 11);
    write_file(work, "part1", &part1);
    write_file(work, "part2", &part2);
    let created = aws.json(&[
        "s3api",
        "create-multipart-upload",
        "--bucket",
        b,
        "--key",
        "mp/object.bin",
        "--content-type",
        "application/x-parts",
    ]);
    let upload_id = created["UploadId"].as_str().unwrap_or_else(|| panic!("UploadId: {created}")).to_string();
    let mut parts = Vec::new();
    for (number, file, data) in [(1, "part1", &part1), (2, "part2", &part2)] {
        let out = aws.json(&[
            "s3api",
            "upload-part",
            "--bucket",
            b,
            "--key",
            "mp/object.bin",
            "--upload-id",
            &upload_id,
            "--part-number",
            &number.to_string(),
            "--body",
            path_str(&work.join(file)),
        ]);
        assert_eq!(out["ETag"], format!("\"{}\"", md5_hex(data)).as_str(), "{out}");
        parts.push(serde_json::json!({"PartNumber": number, "ETag": out["ETag"]}));
    }
    let listed_parts =
        aws.json(&["s3api", "list-parts", "--bucket", b, "--key", "mp/object.bin", "--upload-id", &upload_id]);
    assert_eq!(listed_parts["Parts"].as_array().map(Vec::len), Some(2), "{listed_parts}");
    let completed = aws.json(&[
        "s3api",
        "complete-multipart-upload",
        "--bucket",
        b,
        "--key",
        "mp/object.bin",
        "--upload-id",
        &upload_id,
        "--multipart-upload",
        &serde_json::json!({ "Parts": parts }).to_string(),
    ]);
    let mut md5s = hex::decode(md5_hex(&part1)).unwrap();
    md5s.extend(hex::decode(md5_hex(&part2)).unwrap());
    assert_eq!(completed["ETag"], format!("\"{}-2\"", md5_hex(&md5s)).as_str(), "{completed}");
    let whole = sdk_get(&s3, b, "mp/object.bin").await;
    assert!(whole == [part1.as_slice(), part2.as_slice()].concat());
    let head = aws.json(&["s3api", "head-object", "--bucket", b, "--key", "mp/object.bin"]);
    assert_eq!(head["ContentType"], "application/x-parts", "{head}");
    assert_eq!(head["ContentLength"], part1.len() + part2.len(), "{head}");

    // Errors: a missing key, a missing bucket.
    let out =
        aws.run(&["s3api", "get-object", "--bucket", b, "--key", "no/such/key", path_str(&work.join("missing.out"))]);
    assert!(!out.status.success(), "get-object of a missing key must fail");
    assert!(text(&out.stderr).contains("NoSuchKey"), "stderr names NoSuchKey: {}", text(&out.stderr));
    let out = aws.run(&["s3api", "list-objects-v2", "--bucket", "no-such-bucket-x"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("NoSuchBucket"), "stderr names NoSuchBucket: {}", text(&out.stderr));
    let out = aws.run(&["s3api", "delete-bucket", "--bucket", b]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("BucketNotEmpty"), "{}", text(&out.stderr));
}

/// Runs `tests/clients/SCRIPT` with boto3 against a fresh server; it prints `DONE` as its last
/// check.
fn run_boto3_script(script: &str, done: &str) {
    run_boto3_script_on(script, done, &[]);
}

/// [`run_boto3_script`] against a server started with `server_args`.
fn run_boto3_script_on(script: &str, done: &str, server_args: &[&str]) {
    let python = require_tool("python3", "install Python 3 (apt-get install python3)");
    let probe = run_with_timeout(Command::new(&python).args(["-c", "import boto3"]), Duration::from_secs(60));
    assert!(
        probe.status.success(),
        "boto3 is not installed for {}: run scripts/test.sh (it pip-installs boto3 and awscli), \
         or `python3 -m pip install boto3`\n{}",
        python.display(),
        text(&probe.stderr)
    );
    let server = Server::start_with(server_args);
    run_boto3_script_against(&server, script, &[], done);
}

/// Runs `tests/clients/SCRIPT ENDPOINT ARGS...` with boto3 against `server`; it prints `done`
/// as its last check.
fn run_boto3_script_against(server: &Server, script: &str, args: &[&str], done: &str) {
    let python = require_tool("python3", "install Python 3 (apt-get install python3)");
    let home = tempfile::tempdir().expect("temp dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients").join(script);
    let mut cmd = Command::new(&python);
    cmd.arg(&script).arg(&server.endpoint).args(args);
    common::aws_env_only_ours(&mut cmd, home.path());
    cmd.env("PYTHONUNBUFFERED", "1");
    let out = run_with_timeout(&mut cmd, TOOL_TIMEOUT);
    println!("{}", text(&out.stdout));
    eprintln!("{}", text(&out.stderr));
    expect_success(&script.display().to_string(), &out);
    assert!(text(&out.stdout).contains(done), "the script ran to the end");
}

#[test]
fn boto3_script() {
    run_boto3_script("boto3_check.py", "boto3 checks passed");
}

/// Object and bucket tagging and GetObjectAttributes through boto3.
#[test]
fn boto3_tagging_and_attributes() {
    run_boto3_script("boto3_tagging.py", "tagging checks passed");
}

/// S3 versioning through boto3: ids, markers, the ListObjectVersions paginator, version tags.
#[test]
fn boto3_versioning() {
    run_boto3_script("boto3_versions.py", "versioning checks passed");
}

/// PUTs refused before their body is read (botocore sends `Expect: 100-continue`), with small,
/// medium and large bodies, 20 rounds on one boto3 client: every later call on it is answered.
#[test]
fn boto3_refused_puts_keep_the_client_working() {
    run_boto3_script("boto3_refused.py", "refused put checks passed");
}

/// S3 Object Lock through boto3 (crates/meridian/tests/clients/boto3_lock.py): default
/// retention, deletes by version refused, GOVERNANCE bypass with and without the permission,
/// COMPLIANCE, legal hold, lock headers on copy and multipart, the errors; then the AWS CLI's
/// put-object-lock-configuration and get-object-retention.
#[test]
fn boto3_and_aws_cli_object_lock() {
    let server = Server::start();
    let aws = AwsCli::new(&server);
    aws.ok(&["s3api", "create-bucket", "--bucket", "boto3-lock", "--object-lock-enabled-for-bucket"]);
    let writer = common::admin::create_key(&server, "writer", false);
    common::admin::admin_ok(&server, &["bucket", "allow", "boto3-lock", "--key", "writer", "--write"]);
    run_boto3_script_against(&server, "boto3_lock.py", &[&writer.id, &writer.secret], "object lock checks passed");

    let bucket = "cli-lock";
    aws.ok(&["s3api", "create-bucket", "--bucket", bucket, "--object-lock-enabled-for-bucket"]);
    let rule = r#"{"ObjectLockEnabled":"Enabled","Rule":{"DefaultRetention":{"Mode":"COMPLIANCE","Days":2}}}"#;
    aws.ok(&["s3api", "put-object-lock-configuration", "--bucket", bucket, "--object-lock-configuration", rule]);
    let config = aws.json(&["s3api", "get-object-lock-configuration", "--bucket", bucket]);
    assert_eq!(config["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]["Days"], 2, "{config}");
    let body = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body.path(), b"kept").unwrap();
    let body_path = body.path().to_str().unwrap();
    let put = aws.json(&["s3api", "put-object", "--bucket", bucket, "--key", "k", "--body", body_path]);
    let version = put["VersionId"].as_str().expect("a version id").to_string();
    let retention = aws.json(&["s3api", "get-object-retention", "--bucket", bucket, "--key", "k"]);
    assert_eq!(retention["Retention"]["Mode"], "COMPLIANCE", "{retention}");
    let until = retention["Retention"]["RetainUntilDate"].as_str().expect("a date");
    let until = time::OffsetDateTime::parse(until, &time::format_description::well_known::Rfc3339).unwrap();
    let days = (until - time::OffsetDateTime::now_utc()).whole_hours();
    assert!((47..=48).contains(&days), "two days of retention: {until}");
    let refused = aws.run(&["s3api", "delete-object", "--bucket", bucket, "--key", "k", "--version-id", &version]);
    assert!(!refused.status.success() && text(&refused.stderr).contains("AccessDenied"), "{}", text(&refused.stderr));
}

/// Server-side encryption (SSE-S3, SSE-KMS, SSE-C, multipart, copies, bucket default) through
/// boto3, on a node with a keyring.
#[test]
fn boto3_server_side_encryption() {
    let keys = tempfile::tempdir().expect("temp dir");
    let keyring = common::sse_keyring(keys.path());
    run_boto3_script_on("boto3_sse.py", "sse checks passed", &["--sse-keyring", path_str(&keyring)]);
}

/// Browser-style form uploads (POST object) with boto3's generate_presigned_post.
#[test]
fn boto3_post_object() {
    run_boto3_script("boto3_post.py", "post checks passed");
}

/// rclone configured entirely through environment variables (remote name `meridian`).
struct Rclone {
    bin: PathBuf,
    endpoint: String,
    home: tempfile::TempDir,
}

impl Rclone {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = common::rclone_command(&self.bin, self.home.path(), &self.endpoint);
        cmd.args(args)
            // Files over 32 MiB go up as multipart uploads in 16 MiB parts.
            .env("RCLONE_CONFIG_MERIDIAN_UPLOAD_CUTOFF", "32Mi")
            .env("RCLONE_CONFIG_MERIDIAN_CHUNK_SIZE", "16Mi")
            .env("RCLONE_CACHE_DIR", self.home.path().join("cache"));
        run_with_timeout(&mut cmd, TOOL_TIMEOUT)
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        expect_success(&format!("rclone {}", args.join(" ")), &out);
        out
    }

    /// `rclone check` must succeed and report every file matching.
    fn check(&self, local: &Path, remote: &str, files: usize) {
        let out = self.ok(&["check", path_str(local), remote]);
        let log = text(&out.stderr);
        assert!(log.contains("0 differences found"), "rclone check: {log}");
        assert!(log.contains(&format!("{files} matching files")), "rclone check matched all {files} files: {log}");
    }
}

/// Deterministic, fast-to-make bytes for big files: each MiB is a distinct pattern block.
fn big_data(len: usize, seed: u64) -> Vec<u8> {
    let block = pattern(MIB, seed);
    let mut out = Vec::with_capacity(len);
    let mut index = 0u64;
    while out.len() < len {
        let take = (len - out.len()).min(MIB);
        let start = out.len();
        out.extend_from_slice(&block[..take]);
        let stamp = (seed << 32 | index).to_le_bytes();
        let n = stamp.len().min(take);
        out[start..start + n].copy_from_slice(&stamp[..n]);
        index += 1;
    }
    out
}

#[tokio::test]
async fn rclone_copy_check_sync() {
    let bin = require_tool("rclone", "apt-get install rclone");
    let server = Server::start();
    let s3 = server.client();
    let rclone = Rclone { bin, endpoint: server.endpoint.clone(), home: tempfile::tempdir().expect("temp dir") };
    let work = tempfile::tempdir().expect("temp dir");
    let local = work.path().join("local");

    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert("top.txt".into(), b"top level\n".to_vec());
    files.insert("empty.txt".into(), Vec::new());
    files.insert("a/zero".into(), Vec::new());
    files.insert("a/b/c/deep.txt".into(), b"deep down\n".to_vec());
    files.insert("a/b/medium.bin".into(), pattern(200_000, 5));
    files.insert("a/b/also-empty".into(), Vec::new());
    files.insert("with space.txt".into(), b"a name with a space".to_vec());
    files.insert("dir with space/ünïcødé ✓.txt".into(), "héllo".as_bytes().to_vec());
    files.insert("日本語/ファイル.txt".into(), "こんにちは".as_bytes().to_vec());
    files.insert("emoji 🚀/plus+and&amp=.bin".into(), pattern(40_000, 6));
    files.insert("big/100mib.bin".into(), big_data(100 * MIB, 7));
    for (name, data) in &files {
        write_file(&local, name, data);
    }
    let remote = "meridian:rclone-bucket";

    rclone.ok(&["copy", path_str(&local), remote]);
    rclone.check(&local, remote, files.len());
    let listed = list_all(&s3, "rclone-bucket").await;
    let expected: BTreeMap<String, i64> = files.iter().map(|(k, v)| (k.clone(), v.len() as i64)).collect();
    assert_eq!(listed, expected, "what rclone copy stored, seen by aws-sdk-rust");
    let head = s3.head_object().bucket("rclone-bucket").key("big/100mib.bin").send().await.unwrap();
    assert!(
        head.e_tag().unwrap_or_default().ends_with("-7\""),
        "100 MiB went up in 7 parts of 16 MiB: {:?}",
        head.e_tag()
    );
    assert_eq!(md5_hex(&sdk_get(&s3, "rclone-bucket", "big/100mib.bin").await), md5_hex(&files["big/100mib.bin"]));

    // Change, remove and add files locally, then sync.
    let changed_top = b"top level, edited to a different length\n".to_vec();
    let mut changed_medium = files["a/b/medium.bin"].clone();
    changed_medium[1000] ^= 0xff; // same size, different bytes
    write_file(&local, "top.txt", &changed_top);
    write_file(&local, "a/b/medium.bin", &changed_medium);
    std::fs::remove_file(local.join("with space.txt")).unwrap();
    std::fs::remove_file(local.join("a/zero")).unwrap();
    write_file(&local, "new/added.txt", b"added later");
    files.insert("top.txt".into(), changed_top.clone());
    files.insert("a/b/medium.bin".into(), changed_medium.clone());
    files.remove("with space.txt");
    files.remove("a/zero");
    files.insert("new/added.txt".into(), b"added later".to_vec());

    rclone.ok(&["sync", path_str(&local), remote]);
    rclone.check(&local, remote, files.len());
    let listed: Vec<String> = list_all(&s3, "rclone-bucket").await.into_keys().collect();
    assert_eq!(listed, files.keys().cloned().collect::<Vec<_>>(), "keys after rclone sync");
    assert_eq!(sdk_get(&s3, "rclone-bucket", "top.txt").await, changed_top);
    assert!(sdk_get(&s3, "rclone-bucket", "a/b/medium.bin").await == changed_medium);

    // Copy everything back down into a fresh folder and compare byte for byte.
    let down = work.path().join("down");
    rclone.ok(&["copy", remote, path_str(&down)]);
    assert_same_tree(&files, &read_tree(&down), "rclone copy down");
    assert_same_tree(&read_tree(&local), &read_tree(&down), "local vs downloaded");
}

/// rclone's `--s3-versions`: an overwritten file's old version is listed with its time suffix
/// and copied back down with its old bytes.
#[tokio::test]
async fn rclone_lists_and_restores_old_versions() {
    let bin = require_tool("rclone", "apt-get install rclone");
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("rclone-versions").send().await.unwrap();
    let enabled = aws_sdk_s3::types::VersioningConfiguration::builder()
        .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
        .build();
    s3.put_bucket_versioning().bucket("rclone-versions").versioning_configuration(enabled).send().await.unwrap();
    for draft in ["first draft", "second draft"] {
        let body = aws_sdk_s3::primitives::ByteStream::from_static(draft.as_bytes());
        s3.put_object().bucket("rclone-versions").key("notes.txt").body(body).send().await.unwrap();
    }
    let rclone = Rclone { bin, endpoint: server.endpoint.clone(), home: tempfile::tempdir().expect("temp dir") };
    let listed = rclone.ok(&["lsf", "--s3-versions", "meridian:rclone-versions"]);
    let mut names: Vec<String> = text(&listed.stdout).lines().map(str::to_string).collect();
    names.sort();
    assert_eq!(names.len(), 2, "the current file and one old version: {names:?}");
    assert_eq!(names[1], "notes.txt");
    assert!(names[0].starts_with("notes-v") && names[0].ends_with(".txt"), "{names:?}");
    let down = tempfile::tempdir().expect("temp dir");
    let restored = down.path().join("restored.txt");
    let old = format!("meridian:rclone-versions/{}", names[0]);
    rclone.ok(&["copyto", "--s3-versions", &old, path_str(&restored)]);
    assert_eq!(std::fs::read(&restored).unwrap(), b"first draft");
}

/// restic keeps its repository in a Meridian bucket: `init` creates the bucket, two backups
/// (the second after changes), `check --read-data` reads every pack back and verifies it, and
/// restoring the first snapshot gives back the first tree byte for byte.
#[test]
fn restic_backs_up_checks_and_restores() {
    let bin = require_tool("restic", "apt-get install restic");
    let server = Server::start();
    let home = tempfile::tempdir().expect("temp dir");
    let source = home.path().join("source");
    write_file(&source, "docs/readme.txt", b"restic keeps this");
    write_file(&source, "data/big.bin", &big_data(3 * MIB, 1));
    for n in 0..20 {
        write_file(&source, &format!("many/{n:02}.txt"), format!("file {n}").as_bytes());
    }
    let first = read_tree(&source);
    let restic = |args: &[&str]| -> String {
        let mut cmd = Command::new(&bin);
        cmd.args(args)
            .env_clear()
            .env("HOME", home.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_ACCESS_KEY_ID", common::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY)
            .env("RESTIC_PASSWORD", "a test repository password")
            .env("RESTIC_REPOSITORY", format!("s3:{}/restic-repo", server.endpoint))
            .env("RESTIC_CACHE_DIR", home.path().join("cache"));
        expect_success(&format!("restic {args:?}"), &run_with_timeout(&mut cmd, TOOL_TIMEOUT))
    };
    restic(&["init"]);
    restic(&["backup", "--host", "test", path_str(&source)]);
    write_file(&source, "docs/readme.txt", b"changed after the first backup");
    std::fs::remove_file(source.join("many/07.txt")).expect("remove");
    write_file(&source, "data/new.bin", &big_data(MIB, 2));
    restic(&["backup", "--host", "test", path_str(&source)]);
    let snapshots: serde_json::Value = serde_json::from_str(&restic(&["snapshots", "--json"])).expect("JSON");
    let ids: Vec<&str> = snapshots.as_array().expect("a list").iter().filter_map(|s| s["short_id"].as_str()).collect();
    assert_eq!(ids.len(), 2, "{snapshots}");
    let checked = restic(&["check", "--read-data"]);
    assert!(checked.contains("no errors were found"), "{checked}");
    let target = home.path().join("restored");
    restic(&["restore", ids[0], "--target", path_str(&target)]);
    assert_same_tree(&first, &read_tree(&target.join(source.strip_prefix("/").expect("absolute"))), "restored");
}

/// s3fs (FUSE) mounts a bucket: files written through the mount read back through S3 (the AWS
/// CLI), objects put through S3 read back through the mount, and renames and deletes through
/// the mount show in S3. Without /dev/fuse or s3fs the test fails, naming what is missing.
#[test]
fn s3fs_mounts_a_bucket() {
    let s3fs = require_tool("s3fs", "apt-get install -y s3fs");
    let server = Server::start();
    let aws = AwsCli::new(&server);
    let bucket = "s3fs-bucket";
    aws.ok(&["s3api", "create-bucket", "--bucket", bucket]);
    let tmp = tempfile::tempdir().expect("temp dir");
    let passwd = tmp.path().join("passwd");
    std::fs::write(&passwd, format!("{}:{}\n", common::ACCESS_KEY, common::SECRET_KEY)).expect("write passwd");
    std::fs::set_permissions(&passwd, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600))
        .expect("chmod passwd");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mount point");
    let options = format!(
        "use_path_request_style,url={},passwd_file={},sigv4,endpoint=us-east-1,stat_cache_expire=1,retries=1",
        server.endpoint,
        passwd.display()
    );
    let mount = common::fuse::Mount::start(&s3fs, &[bucket, path_str(&mnt), "-f", "-o", &options], &mnt, || {
        common::fuse::is_mountpoint(&mnt)
    });

    // Through the mount, then through S3.
    let big = pattern(3 * MIB + 17, 5);
    std::fs::write(mnt.join("hello.txt"), b"written through s3fs").expect("write through the mount");
    std::fs::create_dir(mnt.join("dir")).expect("mkdir through the mount");
    std::fs::write(mnt.join("dir/big.bin"), &big).expect("write a larger file");
    let out = tmp.path().join("out");
    aws.ok(&["s3api", "get-object", "--bucket", bucket, "--key", "hello.txt", path_str(&out)]);
    assert_eq!(std::fs::read(&out).unwrap(), b"written through s3fs");
    aws.ok(&["s3api", "get-object", "--bucket", bucket, "--key", "dir/big.bin", path_str(&out)]);
    assert_eq!(md5_hex(&std::fs::read(&out).unwrap()), md5_hex(&big), "the larger file's bytes");

    // Through S3, then through the mount.
    let src = tmp.path().join("src");
    std::fs::write(&src, b"put through S3").unwrap();
    aws.ok(&["s3api", "put-object", "--bucket", bucket, "--key", "dir/from-s3.txt", "--body", path_str(&src)]);
    let mut names: Vec<String> = std::fs::read_dir(mnt.join("dir"))
        .expect("list through the mount")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["big.bin", "from-s3.txt"]);
    assert_eq!(std::fs::read(mnt.join("dir/from-s3.txt")).unwrap(), b"put through S3");

    // A rename and a delete through the mount.
    std::fs::rename(mnt.join("hello.txt"), mnt.join("renamed.txt")).expect("rename through the mount");
    std::fs::remove_file(mnt.join("dir/big.bin")).expect("delete through the mount");
    mount.finish();
    let listing = aws.json(&["s3api", "list-objects-v2", "--bucket", bucket]);
    let keys: Vec<&str> = listing["Contents"].as_array().unwrap().iter().map(|o| o["Key"].as_str().unwrap()).collect();
    assert!(keys.contains(&"renamed.txt") && keys.contains(&"dir/from-s3.txt"), "{keys:?}");
    assert!(!keys.contains(&"hello.txt") && !keys.contains(&"dir/big.bin"), "{keys:?}");
}
