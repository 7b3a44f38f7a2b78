//! S3 event notifications against a real `meridian server` (a clustered node too, with
//! `MERIDIAN_TEST_CLUSTER=1`): boto3 configures them, aws-sdk-rust writes, and a webhook
//! receiver on a loopback port records what the node POSTs — through target outages and a
//! `kill -9` of the node.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, CompletedMultipartUpload, CompletedPart, Event, FilterRule, FilterRuleName,
    NotificationConfiguration, NotificationConfigurationFilter, QueueConfiguration, S3KeyFilter,
    VersioningConfiguration,
};
use common::{ACCESS_KEY, SECRET_KEY, Server, md5_hex};
use serde_json::Value;

const ARN: &str = "arn:meridian:sqs::hook:webhook";
/// Longest wait for events to arrive (delivery polls every 200 ms; retries back off).
const ARRIVAL: Duration = Duration::from_secs(40);

/// What the receiver has seen: every POST, and the records of those it answered 2xx.
#[derive(Default)]
struct Seen {
    answer: u16,
    posts: usize,
    records: Vec<Value>,
    /// The `Authorization` header of each POST.
    authorizations: Vec<String>,
}

/// A webhook target: a one-thread HTTP/1.1 server answering every POST with `answer`.
struct Receiver {
    addr: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(addr: &str, seen: Arc<Mutex<Seen>>) -> Receiver {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, state) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    serve(stream, &state);
                }
            }
        });
        Receiver { addr, seen, stop, thread: Some(thread) }
    }

    fn url(&self) -> String {
        format!("http://{}/hook?token=secret", self.addr)
    }

    fn set_answer(&self, status: u16) {
        self.seen.lock().unwrap().answer = status;
    }

    fn posts(&self) -> usize {
        self.seen.lock().unwrap().posts
    }

    /// Stops listening: connections are refused from now on.
    fn stop(mut self) -> (String, Arc<Mutex<Seen>>) {
        self.shut();
        (self.addr.clone(), self.seen.clone())
    }

    fn shut(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }

    /// The records received, once there are at least `count` distinct revisions of `bucket`.
    fn wait_for(&self, bucket: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + ARRIVAL;
        loop {
            let records: Vec<Value> = self.seen.lock().unwrap().records.clone();
            let ours: Vec<Value> = records.into_iter().filter(|r| r["s3"]["bucket"]["name"] == bucket).collect();
            let mut revisions: Vec<u64> = ours.iter().map(revision).collect();
            revisions.sort();
            revisions.dedup();
            if revisions.len() >= count {
                return ours;
            }
            assert!(Instant::now() < deadline, "only {} of {count} events arrived: {ours:#?}", revisions.len());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Reads one request (head and Content-Length body) and answers it, closing the connection.
fn serve(stream: TcpStream, seen: &Mutex<Seen>) {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    let mut authorization = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            } else if name.eq_ignore_ascii_case("authorization") {
                authorization = value.trim().to_string();
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let status = {
        let mut seen = seen.lock().unwrap();
        seen.posts += 1;
        seen.authorizations.push(authorization);
        let status = if seen.answer == 0 { 200 } else { seen.answer };
        if (200..300).contains(&status) {
            let batch: Value = serde_json::from_slice(&body).unwrap();
            seen.records.extend(batch["Records"].as_array().unwrap().iter().cloned());
        }
        status
    };
    let mut stream = reader.into_inner();
    let _ = write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

fn revision(record: &Value) -> u64 {
    record["meridian"]["revision"].as_u64().unwrap()
}

/// `(eventName, key, size)` of each record, in arrival order, each revision once.
fn summaries(records: &[Value]) -> Vec<(String, String, u64)> {
    let mut seen = std::collections::HashSet::new();
    records
        .iter()
        .filter(|r| seen.insert(revision(r)))
        .map(|r| {
            let object = &r["s3"]["object"];
            (
                r["eventName"].as_str().unwrap().to_string(),
                object["key"].as_str().unwrap().to_string(),
                object["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn node_with_hook(receiver: &Receiver) -> Server {
    let target = format!("hook={}", receiver.url());
    Server::start_with(&["--notify-webhook", &target, "--notify-webhook-token", "hook=hook-secret"])
}

fn rule(events: &[&str], prefix: Option<&str>, suffix: Option<&str>) -> QueueConfiguration {
    let filters: Vec<FilterRule> = [(FilterRuleName::Prefix, prefix), (FilterRuleName::Suffix, suffix)]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| FilterRule::builder().name(name).value(v).build()))
        .collect();
    let mut builder = QueueConfiguration::builder().queue_arn(ARN);
    for event in events {
        builder = builder.events(Event::from(*event));
    }
    if !filters.is_empty() {
        let key = S3KeyFilter::builder().set_filter_rules(Some(filters)).build();
        builder = builder.filter(NotificationConfigurationFilter::builder().key(key).build());
    }
    builder.build().unwrap()
}

async fn configure(s3: &aws_sdk_s3::Client, bucket: &str, rules: Vec<QueueConfiguration>) {
    let config = NotificationConfiguration::builder().set_queue_configurations(Some(rules)).build();
    s3.put_bucket_notification_configuration().bucket(bucket).notification_configuration(config).send().await.unwrap();
}

async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, data: &[u8]) {
    s3.put_object().bucket(bucket).key(key).body(ByteStream::from(data.to_vec())).send().await.unwrap();
}

#[test]
fn boto3_and_the_aws_cli_configure_notifications_and_get_aws_error_codes() {
    let receiver = Receiver::start("127.0.0.1:0", Arc::default());
    let server = node_with_hook(&receiver);
    let script = r#"
import sys, boto3, botocore
endpoint, key_id, secret = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key_id, aws_secret_access_key=secret,
                  region_name="us-east-1",
                  config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
s3.create_bucket(Bucket="conf")
empty = s3.get_bucket_notification_configuration(Bucket="conf")
assert "QueueConfigurations" not in empty, empty
arn = "arn:meridian:sqs::hook:webhook"
def queue(events, rules=None, arn=arn, id="uploads"):
    q = {"Id": id, "QueueArn": arn, "Events": events}
    if rules:
        q["Filter"] = {"Key": {"FilterRules": [{"Name": n, "Value": v} for n, v in rules]}}
    return q
config = {"QueueConfigurations": [
    queue(["s3:ObjectCreated:*"], [("prefix", "in/"), ("suffix", ".csv")]),
    queue(["s3:ObjectRemoved:Delete", "s3:ObjectRemoved:DeleteMarkerCreated"], id="removals"),
]}
s3.put_bucket_notification_configuration(Bucket="conf", NotificationConfiguration=config)
def normalized(queues):
    for q in queues:
        for r in q.get("Filter", {}).get("Key", {}).get("FilterRules", []):
            r["Name"] = r["Name"].lower()
    return queues
got = s3.get_bucket_notification_configuration(Bucket="conf")
assert normalized(got["QueueConfigurations"]) == config["QueueConfigurations"], got
def refused(cfg):
    try:
        s3.put_bucket_notification_configuration(Bucket="conf", NotificationConfiguration=cfg)
        return ("OK", "")
    except botocore.exceptions.ClientError as e:
        return (e.response["Error"]["Code"], e.response["Error"]["Message"])
cases = {
    "unknown target": {"QueueConfigurations": [queue(["s3:ObjectCreated:*"], arn="arn:meridian:sqs::nope:webhook")]},
    "an AWS queue": {"QueueConfigurations": [queue(["s3:ObjectCreated:*"], arn="arn:aws:sqs:us-east-1:123456789012:q")]},
    "bad event": {"QueueConfigurations": [queue(["s3:ObjectCreated:Sideways"])]},
    "overlap": {"QueueConfigurations": [queue(["s3:ObjectCreated:*"], [("prefix", "a/")]),
                                         queue(["s3:ObjectCreated:Put"], [("prefix", "a/b/")], id="two")]},
    "two prefixes": {"QueueConfigurations": [queue(["s3:ObjectCreated:*"], [("prefix", "a/"), ("prefix", "b/")])]},
    "a topic": {"TopicConfigurations": [{"TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
                                         "Events": ["s3:ObjectCreated:*"]}]},
    "a lambda": {"LambdaFunctionConfigurations": [{"LambdaFunctionArn": "arn:aws:lambda:us-east-1:1:function:f",
                                                   "Events": ["s3:ObjectCreated:*"]}]},
}
expected_words = {"unknown target": "Unable to validate", "an AWS queue": "Unable to validate",
                  "bad event": "not supported", "overlap": "Configurations overlap",
                  "two prefixes": "more than one", "a topic": "QueueConfiguration", "a lambda": "QueueConfiguration"}
for name, cfg in cases.items():
    code, message = refused(cfg)
    assert code == "InvalidArgument", (name, code, message)
    assert expected_words[name] in message, (name, message)
got = s3.get_bucket_notification_configuration(Bucket="conf")
assert normalized(got["QueueConfigurations"]) == config["QueueConfigurations"], "a refusal changed nothing"
s3.put_bucket_notification_configuration(Bucket="conf", NotificationConfiguration={})
assert "QueueConfigurations" not in s3.get_bucket_notification_configuration(Bucket="conf")
try:
    s3.get_bucket_notification_configuration(Bucket="no-such-bucket")
    raise AssertionError("a missing bucket has no configuration")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "NoSuchBucket", e.response
print("boto3 notifications OK")
"#;
    let python = common::require_tool("python3", "install Python 3 with boto3");
    let out = common::run_with_timeout(
        std::process::Command::new(python).args(["-c", script, &server.endpoint, ACCESS_KEY, SECRET_KEY]),
        Duration::from_secs(120),
    );
    let stdout = common::expect_success("boto3 notification script", &out);
    assert!(stdout.contains("boto3 notifications OK"), "{stdout}");

    // The AWS CLI, the same way.
    let cli = common::aws::AwsCli::new(&server);
    let config = format!(
        r#"{{"QueueConfigurations":[{{"Id":"cli","QueueArn":"{ARN}","Events":["s3:ObjectRemoved:*"],
            "Filter":{{"Key":{{"FilterRules":[{{"Name":"suffix","Value":".log"}}]}}}}}}]}}"#
    );
    let put = ["s3api", "put-bucket-notification-configuration", "--bucket", "conf", "--notification-configuration"];
    cli.ok(&[&put[..], &[config.as_str()]].concat());
    let got = cli.json(&["s3api", "get-bucket-notification-configuration", "--bucket", "conf"]);
    let queue = &got["QueueConfigurations"][0];
    assert_eq!((queue["Id"].as_str(), queue["QueueArn"].as_str()), (Some("cli"), Some(ARN)), "{got}");
    assert_eq!(queue["Events"], serde_json::json!(["s3:ObjectRemoved:*"]));
    let unknown = config.replace(ARN, "arn:meridian:sqs::elsewhere:webhook");
    let refused = cli.run(&[&put[..], &[unknown.as_str()]].concat());
    let stderr = common::text(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("(InvalidArgument)"), "{stderr}");

    let none = common::raw::signed(&server.addr, "GET", "/unconfigured?notification", &[], b"");
    assert_eq!(none.status, 404, "{}", none.text());
    let cleared = br#"<NotificationConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>"#;
    let resp = common::raw::signed(&server.addr, "PUT", "/conf?notification", &[], cleared);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let empty = common::raw::signed(&server.addr, "GET", "/conf?notification", &[], b"");
    assert_eq!(empty.status, 200, "{}", empty.text());
    assert!(empty.text().contains("NotificationConfiguration") && !empty.text().contains("Queue"), "{}", empty.text());

    let malformed = b"<NotificationConfiguration><QueueConfiguration><Queue>";
    let resp = common::raw::signed(&server.addr, "PUT", "/conf?notification", &[], malformed);
    assert_eq!((resp.status, resp.error_code()), (400, "MalformedXML".to_string()), "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn events_arrive_in_commit_order_filtered_with_their_revisions() {
    let receiver = Receiver::start("127.0.0.1:0", Arc::default());
    let server = node_with_hook(&receiver);
    let s3 = server.client();
    s3.create_bucket().bucket("events").send().await.unwrap();
    configure(&s3, "events", vec![rule(&["s3:ObjectCreated:*", "s3:ObjectRemoved:*"], Some("logs/"), Some(".txt"))])
        .await;

    put(&s3, "events", "logs/a.txt", b"hello").await;
    put(&s3, "events", "logs/a.png", b"not this suffix").await;
    put(&s3, "events", "other/a.txt", b"not this prefix").await;
    put(&s3, "events", "logs/a.txt", b"hello, world").await;
    s3.copy_object().bucket("events").key("logs/b c.txt").copy_source("events/logs/a.txt").send().await.unwrap();
    let upload = s3.create_multipart_upload().bucket("events").key("logs/c.txt").send().await.unwrap();
    let upload_id = upload.upload_id().unwrap();
    let part = s3
        .upload_part()
        .bucket("events")
        .key("logs/c.txt")
        .upload_id(upload_id)
        .part_number(1)
        .body(ByteStream::from_static(b"part"))
        .send()
        .await
        .unwrap();
    let parts = CompletedMultipartUpload::builder()
        .parts(CompletedPart::builder().part_number(1).e_tag(part.e_tag().unwrap()).build())
        .build();
    s3.complete_multipart_upload()
        .bucket("events")
        .key("logs/c.txt")
        .upload_id(upload_id)
        .multipart_upload(parts)
        .send()
        .await
        .unwrap();
    s3.delete_object().bucket("events").key("logs/a.txt").send().await.unwrap();
    s3.delete_object().bucket("events").key("logs/missing.txt").send().await.unwrap();
    s3.delete_object().bucket("events").key("other/a.txt").send().await.unwrap();

    let records = receiver.wait_for("events", 5);
    let s = |name: &str, key: &str, size: u64| (name.to_string(), key.to_string(), size);
    assert_eq!(
        summaries(&records),
        [
            s("ObjectCreated:Put", "logs/a.txt", 5),
            s("ObjectCreated:Put", "logs/a.txt", 12),
            s("ObjectCreated:Copy", "logs/b+c.txt", 12),
            s("ObjectCreated:CompleteMultipartUpload", "logs/c.txt", 4),
            s("ObjectRemoved:Delete", "logs/a.txt", 0),
        ],
        "events of matching keys only, in commit order (keys form-encoded as S3 does)"
    );
    let revisions: Vec<u64> = records.iter().map(revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "increasing revisions: {revisions:?}");
    for record in &records {
        assert_eq!(record["eventVersion"], "2.1");
        assert_eq!(record["s3"]["object"]["sequencer"], format!("{:016X}", revision(record)));
        assert!(record["eventTime"].as_str().unwrap().ends_with('Z'), "{record}");
    }
    assert_eq!(records[0]["s3"]["object"]["eTag"], md5_hex(b"hello"));
    let authorizations = receiver.seen.lock().unwrap().authorizations.clone();
    assert!(authorizations.iter().all(|a| a == "Bearer hook-secret"), "{authorizations:?}");

    // A versioned bucket: events name the version made or removed.
    s3.create_bucket().bucket("versioned").send().await.unwrap();
    let enabled = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
    s3.put_bucket_versioning().bucket("versioned").versioning_configuration(enabled).send().await.unwrap();
    configure(&s3, "versioned", vec![rule(&["s3:ObjectCreated:*", "s3:ObjectRemoved:*"], None, None)]).await;
    let written = s3.put_object().bucket("versioned").key("doc").body(ByteStream::from_static(b"v1")).send().await;
    let v1 = written.unwrap().version_id().unwrap().to_string();
    let marker = s3.delete_object().bucket("versioned").key("doc").send().await.unwrap();
    let marker = marker.version_id().unwrap().to_string();
    s3.delete_object().bucket("versioned").key("doc").version_id(&v1).send().await.unwrap();
    let records = receiver.wait_for("versioned", 3);
    assert_eq!(
        summaries(&records),
        [
            s("ObjectCreated:Put", "doc", 2),
            s("ObjectRemoved:DeleteMarkerCreated", "doc", 0),
            s("ObjectRemoved:Delete", "doc", 0)
        ]
    );
    let versions: Vec<&str> = records.iter().map(|r| r["s3"]["object"]["versionId"].as_str().unwrap()).collect();
    assert_eq!(versions, [v1.as_str(), marker.as_str(), v1.as_str()]);

    // An expiry (here a TTL, removed by the reaper) is a lifecycle expiration.
    s3.create_bucket().bucket("expiring").send().await.unwrap();
    configure(&s3, "expiring", vec![rule(&["s3:LifecycleExpiration:*"], None, None)]).await;
    let ttl = [("x-meridian-ttl", "1s".to_string())];
    let resp = common::raw::signed(&server.addr, "PUT", "/expiring/brief", &ttl, b"brief");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let records = receiver.wait_for("expiring", 1);
    assert_eq!(summaries(&records), [s("LifecycleExpiration:Delete", "brief", 0)]);

    // Only the bucket's owner configures notifications.
    let outsider = common::admin::create_key(&server, "outsider", false);
    let outsider = common::admin::client(&server, &outsider);
    let config = NotificationConfiguration::builder().build();
    let denied = outsider
        .put_bucket_notification_configuration()
        .bucket("events")
        .notification_configuration(config)
        .send()
        .await;
    assert_eq!(common::error_code(&denied.unwrap_err()), "AccessDenied");
    let denied = outsider.get_bucket_notification_configuration().bucket("events").send().await;
    assert_eq!(common::error_code(&denied.unwrap_err()), "AccessDenied");

    // Nothing more arrives: no event for what matched no rule.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(summaries(&receiver.wait_for("events", 5)).len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_survive_a_failing_target_and_kill_9_in_order_per_key() {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let receiver = Receiver::start("127.0.0.1:0", seen.clone());
    receiver.set_answer(500);
    let mut server = node_with_hook(&receiver);
    let s3 = server.client();
    s3.create_bucket().bucket("durable").send().await.unwrap();
    configure(&s3, "durable", vec![rule(&["s3:ObjectCreated:*"], None, None)]).await;

    // Sizes grow with each write, so a key's events must arrive in growing sizes.
    let mut expected = Vec::new();
    for i in 0..20usize {
        let key = format!("k{}", i % 4);
        put(&s3, "durable", &key, &vec![b'x'; i + 1]).await;
        expected.push((key, i as u64 + 1));
    }
    let deadline = Instant::now() + ARRIVAL;
    while receiver.posts() < 2 {
        assert!(Instant::now() < deadline, "the node never tried the target");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.lock().unwrap().records.is_empty(), "a 500 is no delivery");

    // The target goes away entirely, and the node dies with every event undelivered.
    let (addr, seen) = receiver.stop();
    server.kill9();
    server.restart();
    let s3 = server.client();
    for i in 20..24usize {
        let key = format!("k{}", i % 4);
        put(&s3, "durable", &key, &vec![b'x'; i + 1]).await;
        expected.push((key, i as u64 + 1));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let receiver = Receiver::start(&addr, seen);
    receiver.set_answer(200);

    let records = receiver.wait_for("durable", expected.len());
    let delivered: Vec<(String, u64)> = summaries(&records).into_iter().map(|(_, key, size)| (key, size)).collect();
    let mut sorted = delivered.clone();
    sorted.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(sorted, want, "every acknowledged write, once per revision");
    for key in ["k0", "k1", "k2", "k3"] {
        let sizes: Vec<u64> = delivered.iter().filter(|(k, _)| k == key).map(|(_, size)| *size).collect();
        assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{key}'s events out of order: {sizes:?}");
    }

    // The restarted node counted its deliveries and the failures while the target was away,
    // and its backlog drains to nothing.
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let text = common::metrics::scrape(&server);
        let delivered = common::metrics::sample(&text, "meridian_notify_delivered_total", &[]);
        let failures = common::metrics::sample(&text, "meridian_notify_failures_total", &[]);
        let backlog = common::metrics::sample(&text, "meridian_notify_backlog", &[]);
        if delivered >= expected.len() as f64 && failures >= 1.0 && backlog == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "delivered {delivered}, failures {failures}, backlog {backlog}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTML form upload (POST object, signed by boto3's generate_presigned_post and sent as
/// multipart/form-data) is an `ObjectCreated:Post` event, which a rule can ask for alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_form_upload_is_an_object_created_post_event() {
    let receiver = Receiver::start("127.0.0.1:0", Arc::default());
    let server = node_with_hook(&receiver);
    let s3 = server.client();
    s3.create_bucket().bucket("forms").send().await.unwrap();
    configure(&s3, "forms", vec![rule(&["s3:ObjectCreated:Post"], None, None)]).await;
    put(&s3, "forms", "by-put.txt", b"not a form").await;

    let script = format!(
        r#"import boto3, urllib.request, uuid
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url={endpoint:?}, config=Config(signature_version="s3v4", s3={{"addressing_style": "path"}}))
post = s3.generate_presigned_post("forms", "by-form.txt", ExpiresIn=300)
boundary = uuid.uuid4().hex
parts = [f'--{{boundary}}\r\nContent-Disposition: form-data; name="{{k}}"\r\n\r\n{{v}}\r\n' for k, v in post["fields"].items()]
body = "".join(parts).encode() + (f'--{{boundary}}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
    f'Content-Type: text/plain\r\n\r\nfrom a form\r\n--{{boundary}}--\r\n').encode()
request = urllib.request.Request(post["url"], data=body, method="POST",
    headers={{"Content-Type": f"multipart/form-data; boundary={{boundary}}"}})
print("status", urllib.request.urlopen(request).status)
"#,
        endpoint = server.endpoint
    );
    let python = common::require_tool("python3", "install Python 3 (apt-get install python3)");
    let home = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(python);
    cmd.arg("-c").arg(script);
    common::aws_env_only_ours(&mut cmd, home.path());
    let out = common::run_with_timeout(&mut cmd, Duration::from_secs(60));
    let stdout = common::expect_success("a form upload with boto3's presigned POST", &out);
    assert!(stdout.contains("status 204"), "{stdout}");

    let records = receiver.wait_for("forms", 1);
    let s = |name: &str, key: &str, size: u64| (name.to_string(), key.to_string(), size);
    assert_eq!(summaries(&records), [s("ObjectCreated:Post", "by-form.txt", 11)], "the form upload only");
}
