//! `meridian admin`: manage access keys and bucket permissions through the admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(flatten)]
    pub connection: AdminConnection,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Access keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Buckets and their permissions.
    #[command(subcommand)]
    Bucket(BucketCommand),
    /// Sites the web edge serves (stored in the cluster: every node and region serves them).
    #[command(subcommand)]
    Site(SiteCommand),
}

#[derive(Subcommand, Debug)]
pub enum SiteCommand {
    /// Create or replace a site: a host name and/or URL path prefix served from a bucket.
    Put(Box<SiteArgs>),
    /// Show a site.
    Get { name: String },
    /// List the stored sites.
    List,
    /// Delete a site; the edge stops serving it.
    Delete { name: String },
}

#[derive(Args, Debug)]
pub struct SiteArgs {
    pub name: String,
    /// The bucket the site serves.
    #[arg(long)]
    pub bucket: String,
    /// Serve only requests for this host name (any host when absent).
    #[arg(long)]
    pub host: Option<String>,
    /// Serve requests under this URL path, e.g. /file/christine-static (default: /).
    #[arg(long)]
    pub path_prefix: Option<String>,
    /// Prepended to the rest of the path to form object keys.
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Cache-Control for objects stored without one.
    #[arg(long)]
    pub cache_control: Option<String>,
    /// Index document for "directories" (default: index.html).
    #[arg(long)]
    pub index_document: Option<String>,
    /// Key served with status 404 for missing keys.
    #[arg(long)]
    pub error_document: Option<String>,
    /// An origin instance: REGION=URL (its id is REGION-N, N counting that region's
    /// instances from 1) or REGION/ID=URL. Repeat for more instances and regions; the site
    /// then sends what its bucket does not have, and every write, to its origin app.
    #[arg(long = "origin", value_name = "REGION[/ID]=URL")]
    pub origins: Vec<String>,
    /// The edge URL of a region of the origin, REGION=URL (default: the edges the region's
    /// nodes publish in the cluster).
    #[arg(long = "origin-edge", value_name = "REGION=URL")]
    pub origin_edges: Vec<String>,
    /// Pin a session to the region of its last replayed write for this many seconds.
    #[arg(long)]
    pub pin_seconds: Option<u64>,
    /// How long a session's read waits for its last write's revision (ms; default 2000).
    #[arg(long)]
    pub revision_wait_ms: Option<u64>,
}

/// One region of `--origin`/`--origin-edge`: name, edge URL, instances.
type OriginRegionArgs = (String, Option<String>, Vec<Value>);

/// The index of region `name` in `regions`, added when new.
fn region_at(name: &str, regions: &mut Vec<OriginRegionArgs>) -> usize {
    if let Some(i) = regions.iter().position(|r| r.0 == name) {
        return i;
    }
    regions.push((name.to_string(), None, Vec::new()));
    regions.len() - 1
}

impl SiteArgs {
    /// The `origin` of the site's JSON body (null without `--origin`/`--origin-edge`).
    fn origin(&self) -> Result<Value, CliError> {
        let usage = |what: &str, arg: &str| {
            CliError::Usage(format!(
                "invalid {what} {arg:?}: use {}",
                match what {
                    "--origin" => "REGION=URL or REGION/ID=URL",
                    _ => "REGION=URL",
                }
            ))
        };
        let mut regions: Vec<OriginRegionArgs> = Vec::new();
        for arg in &self.origins {
            let (target, url) = arg.split_once('=').ok_or_else(|| usage("--origin", arg))?;
            let (region, id) = match target.split_once('/') {
                Some((region, id)) => (region, Some(id.to_string())),
                None => (target, None),
            };
            let i = region_at(region, &mut regions);
            let id = id.unwrap_or_else(|| format!("{region}-{}", regions[i].2.len() + 1));
            regions[i].2.push(json!({"id": id, "url": url}));
        }
        for arg in &self.origin_edges {
            let (region, url) = arg.split_once('=').ok_or_else(|| usage("--origin-edge", arg))?;
            let i = region_at(region, &mut regions);
            regions[i].1 = Some(url.to_string());
        }
        if regions.is_empty() {
            if self.pin_seconds.is_some() || self.revision_wait_ms.is_some() {
                return Err(CliError::Usage("--pin-seconds and --revision-wait-ms need an --origin".into()));
            }
            return Ok(Value::Null);
        }
        let region: Vec<Value> = regions
            .into_iter()
            .map(|(name, edge, instances)| json!({"name": name, "edge": edge, "instances": instances}))
            .collect();
        Ok(json!({"region": region, "pin_seconds": self.pin_seconds, "revision_wait_ms": self.revision_wait_ms}))
    }
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a key; prints its id and secret once.
    Create {
        name: String,
        /// Allow the key to create buckets (it then owns them).
        #[arg(long)]
        can_create_buckets: bool,
    },
    /// List keys.
    List,
    /// Show a key and the buckets it can use.
    Info { name: String },
    /// Delete a key; requests signed with it fail at once.
    Delete { name: String },
    /// Issue a new secret; the old one keeps working for the grace period.
    Rotate {
        name: String,
        /// How long the old credential stays valid, e.g. 1h (default: 0, invalid at once).
        #[arg(long, default_value = "0")]
        grace: String,
    },
    /// Allow or forbid creating buckets.
    Set {
        name: String,
        #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
        can_create_buckets: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BucketCommand {
    /// List buckets with owners, grants and public access.
    List,
    /// Create a bucket owned by a key.
    Create {
        name: String,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        public_read: bool,
        /// Where its bytes live: global (default), global;replicas=N, pinned:REGION or
        /// multi:R1,R2[;quorum=N].
        #[arg(long)]
        location: Option<String>,
    },
    /// Keep each object of a global bucket in this many regions: the writer's plus copies
    /// made in the background in the nearest others (1: the writer's only). Objects already
    /// written get their copies too.
    Replicas { bucket: String, count: u32 },
    /// Delete an empty bucket (one holding objects or unfinished multipart uploads is refused,
    /// as S3's DeleteBucket does: delete or expire them first).
    Delete { name: String },
    /// Grant a key permissions on a bucket.
    Allow(GrantArgs),
    /// Take permissions away from a key.
    Deny(GrantArgs),
    /// Record a versioned bucket as it is now, in constant time; read it later with
    /// `?snapshot=NAME` (or `x-meridian-snapshot: NAME`) on S3 GET, HEAD and listings.
    Snapshot {
        bucket: String,
        /// The snapshot's name (default: the time, like 20261206t101500.123z).
        #[arg(long)]
        name: Option<String>,
    },
    /// List a bucket's snapshots.
    Snapshots { bucket: String },
    /// Delete a snapshot (BUCKET@NAME); bytes only it kept are freed.
    DeleteSnapshot { target: String },
    /// Create bucket NEW as a copy-on-write fork of SOURCE (or SOURCE@SNAPSHOT): it starts with
    /// the source's objects, without copying any bytes, and then diverges on its own.
    Fork {
        source: String,
        new: String,
        /// The key that owns the fork (default: the source's owner).
        #[arg(long)]
        owner: Option<String>,
    },
    /// List the objects of BUCKET, or of BUCKET@SNAPSHOT as the snapshot shows them.
    Ls {
        target: String,
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Put the bucket in front of a bucket of another S3 service while moving in: keys missing
    /// here are read from it (and stored here), listings merge both; with --write-through,
    /// writes and deletes reach it too. --remove ends it (the migration is done).
    Shadow(ShadowArgs),
    /// Make objects readable without credentials (GET/HEAD only), or private again.
    Public {
        bucket: String,
        #[arg(long, conflicts_with = "private", required_unless_present = "private")]
        read: bool,
        #[arg(long)]
        private: bool,
    },
}

#[derive(Args)]
pub struct ShadowArgs {
    pub bucket: String,
    /// Stop consulting the source: reads, listings and writes are this bucket's alone.
    #[arg(long, conflicts_with_all = ["endpoint", "source_bucket", "write_through"])]
    pub remove: bool,
    /// URL of the source S3 service, e.g. https://s3.example.com.
    #[arg(long, required_unless_present = "remove")]
    pub endpoint: Option<String>,
    /// The bucket in the source service.
    #[arg(long, required_unless_present = "remove")]
    pub source_bucket: Option<String>,
    /// The source's region (signing).
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Access key id for the source.
    #[arg(long, env = "MERIDIAN_SHADOW_ACCESS_KEY", required_unless_present = "remove")]
    pub access_key: Option<String>,
    /// Secret key for the source (prefer the environment: a flag shows in `ps`).
    #[arg(long, env = "MERIDIAN_SHADOW_SECRET_KEY", hide_env_values = true, required_unless_present = "remove")]
    pub secret_key: Option<String>,
    /// Also apply PUT, DELETE, copies and completed multipart uploads to the source.
    #[arg(long)]
    pub write_through: bool,
}

/// Like a derived `Debug`, without the secret.
impl std::fmt::Debug for ShadowArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowArgs")
            .field("bucket", &self.bucket)
            .field("remove", &self.remove)
            .field("endpoint", &self.endpoint)
            .field("source_bucket", &self.source_bucket)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &self.secret_key.as_ref().map(|_| "<redacted>"))
            .field("write_through", &self.write_through)
            .finish()
    }
}

#[derive(Args, Debug)]
pub struct GrantArgs {
    pub bucket: String,
    #[arg(long)]
    pub key: String,
    #[arg(long)]
    pub read: bool,
    #[arg(long)]
    pub write: bool,
    #[arg(long)]
    pub owner: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the admin API at {url}: {message} (is the server running? set --url or MERIDIAN_ADMIN_URL)")]
    Connect { url: String, message: String },
    #[error("{code}: {message}")]
    Api { status: u16, code: String, message: String },
}

fn token(args: &AdminConnection) -> Result<String, CliError> {
    if let Some(t) = &args.token {
        return Ok(t.clone());
    }
    let path = args.data.join("admin-token");
    std::fs::read_to_string(&path).map(|t| t.trim().to_string()).map_err(|_| {
        CliError::Usage(format!(
            "no admin token: pass --token, set MERIDIAN_ADMIN_TOKEN, or run from a node's directory (looked for {})",
            path.display()
        ))
    })
}

async fn call(args: &AdminConnection, method: &str, path: &str, body: Option<Value>) -> Result<Value, CliError> {
    let token = token(args)?;
    let url = format!("{}{}", args.url.trim_end_matches('/'), path);
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(&url)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(payload)))
        .map_err(|e| CliError::Usage(format!("invalid admin URL {url}: {e}")))?;
    let tls = meridian_http::ClientTls::new(args.ca_file.as_deref())
        .map_err(|e| CliError::Usage(format!("cannot use --ca-file: {e}")))?;
    let connector = meridian_http::client::connector(&tls, std::time::Duration::from_secs(10), false);
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let resp =
        client.request(req).await.map_err(|e| CliError::Connect { url: args.url.clone(), message: e.to_string() })?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| CliError::Connect { url: args.url.clone(), message: e.to_string() })?
        .to_bytes();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let code = value["error"]["code"].as_str().unwrap_or("Error").to_string();
        let message = value["error"]["message"].as_str().unwrap_or("request failed").to_string();
        return Err(CliError::Api { status: status.as_u16(), code, message });
    }
    Ok(value)
}

fn enc(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn execute(command: &AdminCommand, args: &AdminConnection) -> Result<(Value, String), CliError> {
    Ok(match command {
        AdminCommand::Site(site) => return execute_site(site, args).await,
        AdminCommand::Key(KeyCommand::Create { name, can_create_buckets }) => {
            let v =
                call(args, "POST", "/v1/keys", Some(json!({ "name": name, "can_create_buckets": can_create_buckets })))
                    .await?;
            let text = format!(
                "Key {}\nAccess key id:     {}\nSecret access key: {}\n(The secret is shown only now.)",
                v["name"].as_str().unwrap_or_default(),
                v["access_key_id"].as_str().unwrap_or_default(),
                v["secret_access_key"].as_str().unwrap_or_default()
            );
            (v, text)
        }
        AdminCommand::Key(KeyCommand::List) => {
            let v = call(args, "GET", "/v1/keys", None).await?;
            let mut text = format!("{:<24} {:<22} {:<8} {}", "NAME", "ACCESS KEY ID", "ADMIN", "CREATE BUCKETS");
            for k in v.as_array().into_iter().flatten() {
                let ids: Vec<&str> =
                    k["access_key_ids"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                text.push_str(&format!(
                    "\n{:<24} {:<22} {:<8} {}",
                    k["name"].as_str().unwrap_or_default(),
                    ids.join(","),
                    k["admin"].as_bool().unwrap_or(false),
                    k["can_create_buckets"].as_bool().unwrap_or(false)
                ));
            }
            (v, text)
        }
        AdminCommand::Key(KeyCommand::Info { name }) => {
            let v = call(args, "GET", &format!("/v1/keys/{}", enc(name)), None).await?;
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            (v, text)
        }
        AdminCommand::Key(KeyCommand::Delete { name }) => {
            let v = call(args, "DELETE", &format!("/v1/keys/{}", enc(name)), None).await?;
            (v, format!("Deleted key {name}."))
        }
        AdminCommand::Key(KeyCommand::Rotate { name, grace }) => {
            let v =
                call(args, "POST", &format!("/v1/keys/{}/rotate", enc(name)), Some(json!({ "grace": grace }))).await?;
            let text = format!(
                "New credential for {name}\nAccess key id:     {}\nSecret access key: {}\nThe previous credential stays valid for {grace}.",
                v["access_key_id"].as_str().unwrap_or_default(),
                v["secret_access_key"].as_str().unwrap_or_default()
            );
            (v, text)
        }
        AdminCommand::Key(KeyCommand::Set { name, can_create_buckets }) => {
            let v = call(
                args,
                "PATCH",
                &format!("/v1/keys/{}", enc(name)),
                Some(json!({ "can_create_buckets": can_create_buckets })),
            )
            .await?;
            (v, format!("Key {name}: can create buckets = {can_create_buckets}."))
        }
        AdminCommand::Bucket(BucketCommand::List) => {
            let v = call(args, "GET", "/v1/buckets", None).await?;
            let mut text = format!("{:<32} {:<20} {:<7} {}", "BUCKET", "OWNER", "PUBLIC", "GRANTS");
            for b in v.as_array().into_iter().flatten() {
                let grants: Vec<String> = b["grants"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, g)| {
                        let flags: Vec<&str> =
                            ["read", "write", "owner"].into_iter().filter(|f| g[*f].as_bool() == Some(true)).collect();
                        format!("{k}:{}", flags.join("+"))
                    })
                    .collect();
                text.push_str(&format!(
                    "\n{:<32} {:<20} {:<7} {}",
                    b["name"].as_str().unwrap_or_default(),
                    b["owner"].as_str().unwrap_or_default(),
                    b["public_read"].as_bool().unwrap_or(false),
                    grants.join(" ")
                ));
                if let Some(shadow) = b["shadow"].as_object() {
                    let field = |name: &str| shadow.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
                    let through = shadow.get("write_through").and_then(Value::as_bool).unwrap_or(false);
                    let mode = if through { "write-through" } else { "read-through" };
                    text.push_str(&format!("  (shadows {}/{}, {mode})", field("endpoint"), field("bucket")));
                }
            }
            (v, text)
        }
        AdminCommand::Bucket(BucketCommand::Create { name, owner, public_read, location }) => {
            let body = json!({ "name": name, "owner": owner, "public_read": public_read, "location": location });
            let v = call(args, "POST", "/v1/buckets", Some(body)).await?;
            (v, format!("Created bucket {name}."))
        }
        AdminCommand::Bucket(BucketCommand::Replicas { bucket, count }) => {
            let path = format!("/v1/buckets/{}/replicas", enc(bucket));
            let v = call(args, "POST", &path, Some(json!({ "replicas": count }))).await?;
            (v, format!("Bucket {bucket}: each object is kept in {count} region(s)."))
        }
        AdminCommand::Bucket(BucketCommand::Delete { name }) => {
            let v = call(args, "DELETE", &format!("/v1/buckets/{}", enc(name)), None).await?;
            (v, format!("Deleted bucket {name}."))
        }
        AdminCommand::Bucket(BucketCommand::Allow(g)) | AdminCommand::Bucket(BucketCommand::Deny(g)) => {
            if !(g.read || g.write || g.owner) {
                return Err(CliError::Usage("name at least one of --read, --write, --owner".into()));
            }
            let action =
                if matches!(command, AdminCommand::Bucket(BucketCommand::Allow(_))) { "allow" } else { "deny" };
            let body = json!({ "key": g.key, "read": g.read, "write": g.write, "owner": g.owner });
            let v = call(args, "POST", &format!("/v1/buckets/{}/{action}", enc(&g.bucket)), Some(body)).await?;
            let grant = &v["grants"][&g.key];
            let now: Vec<&str> =
                ["read", "write", "owner"].into_iter().filter(|f| grant[*f].as_bool() == Some(true)).collect();
            (
                v.clone(),
                format!(
                    "Key {} on bucket {} now has: {}",
                    g.key,
                    g.bucket,
                    if now.is_empty() { "nothing".into() } else { now.join(", ") }
                ),
            )
        }
        AdminCommand::Bucket(BucketCommand::Snapshot { bucket, name }) => {
            let path = format!("/v1/buckets/{}/snapshots", enc(bucket));
            let v = call(args, "POST", &path, Some(json!({ "name": name }))).await?;
            let text =
                format!("Snapshot {bucket}@{} at revision {}.", v["name"].as_str().unwrap_or_default(), v["revision"]);
            (v, text)
        }
        AdminCommand::Bucket(BucketCommand::Snapshots { bucket }) => {
            let v = call(args, "GET", &format!("/v1/buckets/{}/snapshots", enc(bucket)), None).await?;
            let mut text = format!("{:<32} {:>10} {:<24} {}", "NAME", "REVISION", "CREATED", "FORKS");
            for snap in v.as_array().into_iter().flatten() {
                let forks: Vec<&str> =
                    snap["forks"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                text.push_str(&format!(
                    "\n{:<32} {:>10} {:<24} {}",
                    snap["name"].as_str().unwrap_or_default(),
                    snap["revision"],
                    format_ms(snap["created_ms"].as_i64().unwrap_or_default()),
                    forks.join(",")
                ));
            }
            (v, text)
        }
        AdminCommand::Bucket(BucketCommand::DeleteSnapshot { target }) => {
            let (bucket, name) = split_target(target)?;
            let name = name.ok_or_else(|| CliError::Usage(format!("name the snapshot: {bucket}@NAME")))?;
            let path = format!("/v1/buckets/{}/snapshots/{}", enc(bucket), enc(name));
            let v = call(args, "DELETE", &path, None).await?;
            (v, format!("Deleted snapshot {bucket}@{name}."))
        }
        AdminCommand::Bucket(BucketCommand::Fork { source, new, owner }) => {
            let (bucket, snapshot) = split_target(source)?;
            let body = json!({ "name": new, "snapshot": snapshot, "owner": owner });
            let v = call(args, "POST", &format!("/v1/buckets/{}/forks", enc(bucket)), Some(body)).await?;
            let from = v["fork_of"].as_str().unwrap_or(source).to_string();
            (v, format!("Created bucket {new}, a fork of {from}."))
        }
        AdminCommand::Bucket(BucketCommand::Ls { target, prefix }) => return list_objects(args, target, prefix).await,
        AdminCommand::Bucket(BucketCommand::Shadow(shadow)) => return execute_shadow(shadow, args).await,
        AdminCommand::Bucket(BucketCommand::Public { bucket, read, .. }) => {
            let v = call(args, "POST", &format!("/v1/buckets/{}/public", enc(bucket)), Some(json!({ "read": read })))
                .await?;
            let state = if *read { "public (anonymous GET/HEAD of objects)" } else { "private" };
            (v, format!("Bucket {bucket} is now {state}."))
        }
    })
}

/// Unix milliseconds as RFC 3339 (UTC), to the second.
fn format_ms(ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000));
    at.ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// `BUCKET` or `BUCKET@SNAPSHOT`.
fn split_target(target: &str) -> Result<(&str, Option<&str>), CliError> {
    match target.split_once('@') {
        Some((bucket, "")) => Err(CliError::Usage(format!("{bucket}@ names no snapshot"))),
        Some((bucket, snapshot)) => Ok((bucket, Some(snapshot))),
        None => Ok((target, None)),
    }
}

/// Most pages `ls` reads (of 1,000 objects each).
const MAX_LIST_PAGES: usize = 10_000;

/// Every object of `BUCKET[@SNAPSHOT]` under `prefix`, a page at a time.
async fn list_objects(args: &AdminConnection, target: &str, prefix: &str) -> Result<(Value, String), CliError> {
    let (bucket, snapshot) = split_target(target)?;
    let path = format!("/v1/buckets/{}/objects", enc(bucket));
    let mut objects = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..MAX_LIST_PAGES {
        let body = json!({ "prefix": prefix, "after": after, "snapshot": snapshot });
        let page = call(args, "POST", &path, Some(body)).await?;
        objects.extend(page["objects"].as_array().cloned().unwrap_or_default());
        after = page["next_after"].as_str().map(str::to_string);
        if after.is_none() {
            break;
        }
    }
    let mut text = format!("{:<48} {:>12} {:<24} {}", "KEY", "SIZE", "MODIFIED", "VERSION");
    for o in &objects {
        text.push_str(&format!(
            "\n{:<48} {:>12} {:<24} {}",
            o["key"].as_str().unwrap_or_default(),
            o["size"],
            format_ms(o["modified_ms"].as_i64().unwrap_or_default()),
            o["version_id"].as_str().unwrap_or("-")
        ));
    }
    Ok((Value::Array(objects), text))
}

async fn execute_shadow(shadow: &ShadowArgs, args: &AdminConnection) -> Result<(Value, String), CliError> {
    let path = format!("/v1/buckets/{}/shadow", enc(&shadow.bucket));
    if shadow.remove {
        let v = call(args, "DELETE", &path, None).await?;
        return Ok((v, format!("Bucket {} no longer shadows another bucket.", shadow.bucket)));
    }
    let body = json!({
        "endpoint": shadow.endpoint, "bucket": shadow.source_bucket, "region": shadow.region,
        "access_key": shadow.access_key, "secret_key": shadow.secret_key, "write_through": shadow.write_through,
    });
    let v = call(args, "PUT", &path, Some(body)).await?;
    let text = format!(
        "Bucket {} now shadows {}/{} (write-through {}).",
        shadow.bucket,
        v["shadow"]["endpoint"].as_str().unwrap_or_default().trim_end_matches('/'),
        v["shadow"]["bucket"].as_str().unwrap_or_default(),
        if shadow.write_through { "on" } else { "off" }
    );
    Ok((v, text))
}

fn site_text(site: &Value) -> String {
    let field = |name: &str| site[name].as_str().unwrap_or("-").to_string();
    format!(
        "{:<20} {:<24} {:<28} {}/{}",
        field("name"),
        field("host"),
        field("path_prefix"),
        field("bucket"),
        site["key_prefix"].as_str().unwrap_or("")
    )
}

async fn execute_site(command: &SiteCommand, args: &AdminConnection) -> Result<(Value, String), CliError> {
    let header = format!("{:<20} {:<24} {:<28} {}", "SITE", "HOST", "PATH PREFIX", "BUCKET/KEY PREFIX");
    Ok(match command {
        SiteCommand::Put(site) => {
            let body = json!({
                "bucket": site.bucket,
                "host": site.host,
                "path_prefix": site.path_prefix,
                "key_prefix": site.key_prefix.clone().unwrap_or_default(),
                "cache_control": site.cache_control,
                "index_document": site.index_document,
                "error_document": site.error_document,
                "origin": site.origin()?,
            });
            let v = call(args, "PUT", &format!("/v1/sites/{}", enc(&site.name)), Some(body)).await?;
            let text = format!("Site {} saved.\n{header}\n{}", site.name, site_text(&v));
            (v, text)
        }
        SiteCommand::Get { name } => {
            let v = call(args, "GET", &format!("/v1/sites/{}", enc(name)), None).await?;
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            (v, text)
        }
        SiteCommand::List => {
            let v = call(args, "GET", "/v1/sites", None).await?;
            let mut text = header;
            for site in v.as_array().into_iter().flatten() {
                text.push('\n');
                text.push_str(&site_text(site));
            }
            (v, text)
        }
        SiteCommand::Delete { name } => {
            let v = call(args, "DELETE", &format!("/v1/sites/{}", enc(name)), None).await?;
            (v, format!("Deleted site {name}."))
        }
    })
}

/// Runs the command; prints the answer (JSON with --json) and returns the exit status:
/// 0 success, 1 the API refused, 2 usage or connection problem.
pub async fn run(args: AdminArgs) -> ExitCode {
    match execute(&args.command, &args.connection).await {
        Ok((value, text)) => {
            if args.connection.json {
                println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
            } else {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e @ CliError::Api { .. }) => {
            eprintln!("meridian admin: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("meridian admin: {e}");
            ExitCode::from(2)
        }
    }
}

/// `meridian cluster status`.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub admin: AdminConnection,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// How to reach a node's admin API (shared by `meridian cluster`).
#[derive(Args, Debug, Clone)]
pub struct AdminConnection {
    /// The admin API of a node.
    #[arg(long, env = "MERIDIAN_ADMIN_URL", default_value = "http://127.0.0.1:9401", global = true)]
    pub url: String,
    /// A PEM file of CA certificates to trust (besides the system's) for an https:// URL.
    #[arg(long, env = "MERIDIAN_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// The admin token. Default: MERIDIAN_ADMIN_TOKEN, else the file admin-token in --data.
    #[arg(long, env = "MERIDIAN_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Data directory of a local node, to read its admin-token file.
    #[arg(long, default_value = "meridian-data", global = true)]
    pub data: PathBuf,
    /// Print the raw JSON answer.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Regions and nodes: health, measured replication lag and cache use.
    Status,
    /// Remove a node that left for good from the cluster's list of nodes.
    Forget {
        /// The node's id (the NODE column of `meridian cluster status`).
        node: String,
        /// Also when the node still heartbeats (it registers again at its next heartbeat
        /// unless it is stopped).
        #[arg(long)]
        force: bool,
    },
}

/// Formats the answer of `GET /v1/cluster` as a table.
pub fn cluster_table(v: &Value) -> String {
    let mut text = format!(
        "Asked node {} in region {} (metadata revision {})\n{:<12} {:<16} {:<28} {:<8} {:>10} {:>8} {:>22} {:>9}",
        v["node"].as_str().unwrap_or_default(),
        v["region"].as_str().unwrap_or_default(),
        v["revision"],
        "REGION",
        "NODE",
        "URL",
        "HEALTH",
        "HEARTBEAT",
        "LAG",
        "CACHE",
        "HIT RATE"
    );
    let mut nodes: Vec<&Value> = v["nodes"].as_array().into_iter().flatten().collect();
    nodes.sort_by_key(|n| {
        (n["region"].as_str().unwrap_or_default().to_string(), n["id"].as_str().unwrap_or_default().to_string())
    });
    for n in nodes {
        let cache = &n["cache"];
        let (hits, misses) = (cache["hits"].as_u64().unwrap_or(0), cache["misses"].as_u64().unwrap_or(0));
        let rate = if hits + misses == 0 {
            "-".to_string()
        } else {
            format!("{:.0}%", 100.0 * hits as f64 / (hits + misses) as f64)
        };
        text.push_str(&format!(
            "\n{:<12} {:<16} {:<28} {:<8} {:>8.1}s {:>8} {:>22} {:>9}",
            n["region"].as_str().unwrap_or_default(),
            n["id"].as_str().unwrap_or_default(),
            n["advertise_url"].as_str().unwrap_or_default(),
            if n["healthy"].as_bool() == Some(true) { "up" } else { "DOWN" },
            n["heartbeat_age_ms"].as_i64().unwrap_or(0) as f64 / 1000.0,
            lag_cell(&n["lag_ms"]),
            format!(
                "{} / {}",
                meridian_common::size::format_size(cache["bytes"].as_u64().unwrap_or(0)),
                meridian_common::size::format_size(cache["max_bytes"].as_u64().unwrap_or(0))
            ),
            rate
        ));
    }
    text
}

/// A node's measured replication lag (seconds), or `-` when it has none (a single node, or
/// before its first measurement).
fn lag_cell(lag_ms: &Value) -> String {
    match lag_ms.as_u64() {
        Some(ms) => format!("{:.3}s", ms as f64 / 1000.0),
        None => "-".to_string(),
    }
}

pub async fn run_cluster(args: ClusterArgs) -> ExitCode {
    let result = match &args.command {
        ClusterCommand::Status => call(&args.admin, "GET", "/v1/cluster", None).await.map(|v| {
            let text = cluster_table(&v);
            (v, text)
        }),
        ClusterCommand::Forget { node, force } => {
            let path = format!("/v1/cluster/nodes/{}/forget", enc(node));
            call(&args.admin, "POST", &path, Some(json!({ "force": force }))).await.map(|v| {
                let region = v["forgotten"]["region"].as_str().unwrap_or_default().to_string();
                (v, format!("Forgot node {node} (region {region})."))
            })
        }
    };
    match result {
        Ok((v, text)) => {
            if args.admin.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meridian cluster: {e}");
            ExitCode::from(if matches!(e, CliError::Api { .. }) { 1 } else { 2 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_flags_become_the_sites_origin() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            site: SiteArgs,
        }
        let parse = |args: &[&str]| {
            let mut all = vec!["site", "www", "--bucket", "www"];
            all.extend_from_slice(args);
            Cli::parse_from(all).site.origin()
        };
        let origin = parse(&[
            "--origin=ams=http://a:1",
            "--origin=ams=http://a:2",
            "--origin=sjc/app-7=http://s:1",
            "--origin-edge=sjc=http://sjc-edge:8080",
            "--pin-seconds=30",
        ])
        .expect("valid");
        assert_eq!(origin["region"][0]["instances"][1], json!({"id": "ams-2", "url": "http://a:2"}));
        assert_eq!(origin["region"][1]["instances"][0]["id"], "app-7");
        assert_eq!(origin["region"][1]["edge"], "http://sjc-edge:8080");
        assert_eq!(origin["pin_seconds"], 30);
        assert_eq!(parse(&[]).expect("no origin"), Value::Null);
        assert!(parse(&["--origin=http://a:1"]).is_err_and(|e| e.to_string().contains("REGION=URL")));
        assert!(parse(&["--pin-seconds=3"]).is_err(), "options need an origin");
    }

    #[test]
    fn the_lag_column_shows_each_nodes_measured_lag_in_seconds() {
        let node = |id: &str, lag: Option<u64>| {
            let mut n = serde_json::json!({
                "id": id, "region": "r", "advertise_url": "http://x", "healthy": true, "heartbeat_age_ms": 500,
                "cache": { "bytes": 0, "max_bytes": 0, "hits": 0, "misses": 0 }
            });
            if let Some(ms) = lag {
                n["lag_ms"] = ms.into();
            }
            n
        };
        let status = serde_json::json!({
            "node": "a", "region": "r", "revision": 9,
            "nodes": [node("a", Some(1234)), node("b", None)]
        });
        let table = cluster_table(&status);
        let row = |id: &str| {
            let mut rows = table.lines().filter(|l| l.starts_with("r "));
            rows.find(|l| l.contains(&format!(" {id} "))).unwrap_or_default().to_string()
        };
        assert!(row("a").contains(" 1.234s "), "{table}");
        assert!(row("b").contains("      - "), "{table}");
    }
}
