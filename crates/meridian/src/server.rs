//! `meridian server`: opens the stores, builds the engine and serves S3.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use meridian_admin::health::Probe;
use meridian_blob::BlobStore;
use meridian_engine::{Engine, EngineConfig, Metadata};
use meridian_http::{ClientTls, Policy, ServerTls, TlsFiles};
use meridian_meta::embedded::{EmbeddedOptions, EmbeddedStore};
use meridian_s3::S3Options;

use crate::config::{self, CredentialSource, FileConfig};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Data directory (metadata database and object bytes). Default: ./meridian-data
    #[arg(long, env = "MERIDIAN_DATA")]
    data: Option<PathBuf>,
    /// Address for the S3 endpoint; port 0 picks a free port. Default: 127.0.0.1:9400
    #[arg(long, env = "MERIDIAN_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address for the admin API (keys, permissions, health). Default: 127.0.0.1:9401
    #[arg(long, env = "MERIDIAN_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Address for the web edge (buckets and sites served as websites over plain HTTP, or HTTPS
    /// with --tls-cert). Default: no edge
    #[arg(long, env = "MERIDIAN_WEB_LISTEN")]
    web_listen: Option<SocketAddr>,
    /// URL other regions' edges reach this node's web edge at (request replays); published in
    /// the cluster. Default: http(s)://<web listen address>
    #[arg(long, env = "MERIDIAN_WEB_ADVERTISE")]
    web_advertise: Option<String>,
    /// Serve public-read buckets that have a website configuration at BUCKET.DOMAIN on the
    /// web edge.
    #[arg(long, env = "MERIDIAN_WEB_DOMAIN")]
    web_domain: Option<String>,
    /// A TOML file with any of these settings (flags win over the file).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve virtual-host-style requests (bucket.DOMAIN) as well as path-style ones.
    #[arg(long)]
    domain: Option<String>,
    /// This node's region: object bytes written here stay in it; reported to S3 clients too.
    /// Default: us-east-1
    #[arg(long, env = "MERIDIAN_REGION")]
    region: Option<String>,
    /// This node's id in the cluster. Default: generated once and kept in DATA/node-id
    #[arg(long, env = "MERIDIAN_NODE_ID")]
    node_id: Option<String>,
    /// URL other nodes reach this node at (peer traffic). Default: http://<listen address>
    #[arg(long, env = "MERIDIAN_ADVERTISE")]
    advertise: Option<String>,
    /// etcd client URLs, comma-separated (closest first): join a cluster whose metadata lives
    /// in etcd instead of the embedded database.
    #[arg(long, env = "MERIDIAN_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// Key prefix of this cluster in etcd. Default: /meridian/
    #[arg(long, env = "MERIDIAN_ETCD_NAMESPACE")]
    etcd_namespace: Option<String>,
    /// Client certificate (PEM) this node presents to etcd over https://, for etcd run with
    /// --client-cert-auth.
    #[arg(long, env = "MERIDIAN_ETCD_CERT", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert.
    #[arg(long, env = "MERIDIAN_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// Shared secret that nodes present to each other (required with --etcd).
    #[arg(long, env = "MERIDIAN_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,
    /// Most bytes kept in the cache of objects held by other regions (a size: 10GiB, 500MB or
    /// a number of bytes). Default: 10GiB
    #[arg(long, value_parser = meridian_common::size::parse_size)]
    cache_max_bytes: Option<u64>,
    /// Objects up to this size are copied to every region right after they are written.
    /// Default: 128KiB
    #[arg(long, value_parser = meridian_common::size::parse_size)]
    replicate_small_bytes: Option<u64>,
    /// Store objects up to this size inline in the metadata store. Default: 32KiB (1KiB with
    /// --etcd)
    #[arg(long, value_parser = meridian_common::size::parse_size)]
    inline_max: Option<u64>,
    /// TLS certificate chain (PEM) for every listener; with --tls-key, the node speaks only
    /// HTTPS. Reloaded when the file changes or on SIGHUP.
    #[arg(long, env = "MERIDIAN_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) matching --tls-cert.
    #[arg(long, env = "MERIDIAN_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) to trust, besides the system's, when this node connects to other
    /// nodes and to etcd over https://.
    #[arg(long, env = "MERIDIAN_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Log format: text or json. Default: text (logs go to stderr; RUST_LOG sets the level)
    #[arg(long)]
    log_format: Option<String>,
    /// Revisions of change history kept for watches (older `since` values get 410).
    /// Default: 100000
    #[arg(long)]
    history_revisions: Option<u64>,
    /// A read-only token accepted (besides the admin token) for GET /metrics and the status page
    /// (/status) on the admin listener, and for nothing else there.
    #[arg(long, env = "MERIDIAN_STATUS_TOKEN", hide_env_values = true)]
    status_token: Option<String>,
    /// Also serve GET /metrics on this address, WITHOUT a token: for a private network only.
    #[arg(long, env = "MERIDIAN_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Print the effective configuration (defaults, file, environment and flags merged) as
    /// TOML, with secrets redacted, and exit.
    #[arg(long)]
    print_config: bool,
    /// A cluster node whose metadata view lags more than this (measured replication lag) is
    /// not ready (/ready answers 503). A duration: 10s, 500ms. Default: 10s
    #[arg(long, env = "MERIDIAN_READY_MAX_LAG", value_parser = meridian_common::duration::parse_duration)]
    ready_max_lag: Option<Duration>,
    /// A node holding copies of objects' bytes that has been silent this long counts as lost:
    /// buckets that keep several copies (replicas, multi-region) get new ones made elsewhere.
    /// A duration: 10m, 30s. Default: 10m
    #[arg(long, env = "MERIDIAN_HOLDER_LOST_AFTER", value_parser = meridian_common::duration::parse_duration)]
    holder_lost_after: Option<Duration>,
    /// A webhook target for S3 event notifications, NAME=URL (repeatable; the environment
    /// variable takes a comma-separated list). Buckets name it as the QueueArn
    /// arn:meridian:sqs::NAME:webhook. Give every node of a cluster the same targets.
    #[arg(long = "notify-webhook", env = "MERIDIAN_NOTIFY_WEBHOOK", value_delimiter = ',', value_name = "NAME=URL")]
    notify_webhook: Vec<String>,
    /// A bearer token sent (`Authorization: Bearer TOKEN`) to a webhook target, NAME=TOKEN
    /// (repeatable; comma-separated in the environment variable).
    #[arg(
        long = "notify-webhook-token",
        env = "MERIDIAN_NOTIFY_WEBHOOK_TOKEN",
        value_delimiter = ',',
        value_name = "NAME=TOKEN",
        hide_env_values = true
    )]
    notify_webhook_token: Vec<String>,
    #[command(flatten)]
    blob_s3: BlobS3Args,
    #[command(flatten)]
    sse: SseArgs,
}

/// Encryption at rest (docs/encryption.md).
#[derive(Args, Debug)]
struct SseArgs {
    /// Keyring file (owner-only): `master <id> <64 hex>` lines (the last, or the one named by a
    /// `current <id>` line, wraps new SSE-S3 data keys) and `kms <name> <64 hex>` lines (keys
    /// SSE-KMS requests may name).
    #[arg(long, env = "MERIDIAN_SSE_KEYRING")]
    sse_keyring: Option<PathBuf>,
    /// A master key (64 hex digits) given in the environment instead of a file; its id is `env`.
    #[arg(long = "sse-master-key-from-env", env = "MERIDIAN_SSE_MASTER_KEY", hide_env_values = true, hide = true)]
    sse_master_key: Option<String>,
    /// Encrypt every new object (SSE-S3) that asks for nothing else; needs a master key.
    #[arg(long, env = "MERIDIAN_ENCRYPT_ALL")]
    encrypt_all: bool,
}

/// Where object bytes go instead of DATA/blobs.
#[derive(Args, Debug)]
struct BlobS3Args {
    /// Keep object bytes in this bucket of an S3 service instead of DATA/blobs; every node of
    /// a region given the same bucket and prefix shares them. Default: none (the local disk)
    #[arg(long, env = "MERIDIAN_BLOB_S3_BUCKET")]
    blob_s3_bucket: Option<String>,
    /// Endpoint URL of the blob bucket's S3 service. Default: AWS
    #[arg(long, env = "MERIDIAN_BLOB_S3_ENDPOINT")]
    blob_s3_endpoint: Option<String>,
    /// Key prefix of this store's objects in the blob bucket. Default: none
    #[arg(long, env = "MERIDIAN_BLOB_S3_PREFIX")]
    blob_s3_prefix: Option<String>,
    /// Region the blob bucket's requests are signed for. Default: us-east-1
    #[arg(long, env = "MERIDIAN_BLOB_S3_REGION")]
    blob_s3_region: Option<String>,
    /// Access key id for the blob bucket.
    #[arg(long, env = "MERIDIAN_BLOB_S3_ACCESS_KEY")]
    blob_s3_access_key: Option<String>,
    /// Secret key for the blob bucket (prefer the environment variable).
    #[arg(long, env = "MERIDIAN_BLOB_S3_SECRET_KEY", hide_env_values = true)]
    blob_s3_secret_key: Option<String>,
    /// CA certificates (PEM) to trust, besides the system's, for an https:// blob endpoint.
    #[arg(long, env = "MERIDIAN_BLOB_S3_CA_FILE")]
    blob_s3_ca_file: Option<PathBuf>,
    /// With a blob bucket: how old a blob or upload that no metadata refers to must be before
    /// the orphan scan, which runs this often, removes it. A duration. Default: 1h
    #[arg(long, env = "MERIDIAN_BLOB_ORPHAN_GRACE", value_parser = meridian_common::duration::parse_duration)]
    blob_orphan_grace: Option<Duration>,
}

/// Orphan scans of a shared blob store wait this long by default (far longer than any request
/// may take between its last byte and its metadata commit).
const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// On etcd, only small values are stored inline: etcd's database is meant to stay small, and
/// larger objects reach other regions through the cache instead.
const ETCD_INLINE_MAX: usize = 1024;

struct Settings {
    cache_max_bytes: u64,
    replicate_small_bytes: u64,
    etcd: Vec<String>,
    etcd_namespace: String,
    etcd_identity: Option<meridian_meta_etcd::ClientIdentityFiles>,
    cluster_token: Option<String>,
    node_id: Option<String>,
    advertise: Option<String>,
    data: PathBuf,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    web_listen: Option<SocketAddr>,
    web_advertise: Option<String>,
    web_domain: Option<String>,
    sites: Vec<meridian_engine::website::SiteRecord>,
    origins: Vec<meridian_edge::origin::SiteOrigin>,
    domain: Option<String>,
    region: String,
    inline_max: usize,
    s3_policy: Policy,
    admin_policy: Policy,
    web_policy: Policy,
    tls: Option<TlsFiles>,
    ca_file: Option<PathBuf>,
    log_format: String,
    history_revisions: u64,
    readiness: meridian_engine::health::ReadinessLimits,
    holder_lost_after: Duration,
    status_token: Option<String>,
    metrics_listen: Option<SocketAddr>,
    /// Object bytes in an S3 bucket instead of the data directory.
    blob_s3: Option<meridian_blob::s3::S3BackendConfig>,
    keyring: Arc<meridian_engine::crypt::Keyring>,
    encrypt_all: bool,
    orphan_grace: Duration,
    /// Webhook targets of event notifications, by name.
    webhooks: std::collections::BTreeMap<String, String>,
    /// Bearer tokens of webhook targets, by name.
    webhook_tokens: std::collections::BTreeMap<String, String>,
    /// The same settings as a config file would write them, secrets redacted (`--print-config`).
    printable: FileConfig,
}

fn settings(args: ServerArgs) -> anyhow::Result<Settings> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let s3_policy = file.apply_limits(Policy::s3());
    let admin_policy = file.apply_limits(Policy::admin());
    let web_policy = file.apply_limits(Policy::web());
    let orphan_grace = args
        .blob_s3
        .blob_orphan_grace
        .or(file.blob_orphan_grace_secs.map(Duration::from_secs))
        .unwrap_or(DEFAULT_ORPHAN_GRACE);
    let blob_s3 = blob_s3_settings(args.blob_s3, &file, orphan_grace)?;
    let keyring = config::load_keyring(args.sse.sse_keyring.as_deref(), args.sse.sse_master_key.as_deref())?;
    if args.sse.encrypt_all && keyring.current_master().is_none() {
        anyhow::bail!(
            "--encrypt-all needs a master key: a keyring (--sse-keyring) with a `master` line, or MERIDIAN_SSE_MASTER_KEY"
        );
    }
    let tls = match (args.tls_cert.or(file.tls_cert.clone()), args.tls_key.or(file.tls_key.clone())) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => anyhow::bail!(
            "TLS needs both a certificate and a key: set tls_cert and tls_key (or --tls-cert and --tls-key)"
        ),
    };
    let default_listen: SocketAddr = config::DEFAULT_LISTEN.parse().context("default listen address")?;
    let etcd = if args.etcd.is_empty() { file.etcd.clone() } else { args.etcd };
    let etcd_identity = match (args.etcd_cert.or(file.etcd_cert.clone()), args.etcd_key.or(file.etcd_key.clone())) {
        (Some(cert), Some(key)) => Some(meridian_meta_etcd::ClientIdentityFiles { cert, key }),
        (None, None) => None,
        _ => anyhow::bail!(
            "an etcd client certificate needs its key: set etcd_cert and etcd_key (or --etcd-cert and --etcd-key)"
        ),
    };
    let cluster_token = args.cluster_token.or(file.cluster_token);
    if !etcd.is_empty() && cluster_token.is_none() {
        anyhow::bail!(
            "a node of a cluster (--etcd) needs the cluster's shared secret: set MERIDIAN_CLUSTER_TOKEN (the same on every node)"
        );
    }
    let status_token = args.status_token.or(file.status_token);
    if status_token.as_deref().is_some_and(|t| t.trim().len() < 8) {
        anyhow::bail!(
            "the status token (--status-token, MERIDIAN_STATUS_TOKEN, status_token) must be at least 8 characters"
        );
    }
    let web_advertise = args.web_advertise.or(file.web_advertise);
    if let Some(url) = &web_advertise {
        meridian_common::origin::check_url("web advertise (--web-advertise)", url)?;
    }
    let webhooks =
        config::webhooks(if args.notify_webhook.is_empty() { &file.notify_webhook } else { &args.notify_webhook })?;
    let inline_default = if etcd.is_empty() { EngineConfig::default().inline_max } else { ETCD_INLINE_MAX };
    let limits = FileConfig {
        max_connections: file.max_connections,
        max_connections_per_address: file.max_connections_per_address,
        idle_timeout_secs: file.idle_timeout_secs,
        header_read_timeout_ms: file.header_read_timeout_ms,
        drain_deadline_secs: file.drain_deadline_secs,
        ..FileConfig::default()
    };
    let mut settings = Settings {
        cache_max_bytes: args
            .cache_max_bytes
            .or(file.cache_max_bytes.map(u64::from))
            .unwrap_or(meridian_blob::cache::DEFAULT_MAX_BYTES),
        replicate_small_bytes: args
            .replicate_small_bytes
            .or(file.replicate_small_bytes.map(u64::from))
            .unwrap_or(128 << 10),
        etcd,
        etcd_namespace: args
            .etcd_namespace
            .or(file.etcd_namespace)
            .unwrap_or_else(|| meridian_meta_etcd::DEFAULT_NAMESPACE.to_string()),
        etcd_identity,
        cluster_token,
        node_id: args.node_id.or(file.node_id),
        advertise: args.advertise.or(file.advertise),
        data: args.data.or(file.data).unwrap_or_else(|| PathBuf::from(config::DEFAULT_DATA)),
        listen: args.listen.or(file.listen).unwrap_or(default_listen),
        admin_listen: args
            .admin_listen
            .or(file.admin_listen)
            .unwrap_or(config::DEFAULT_ADMIN_LISTEN.parse().context("default admin listen address")?),
        web_listen: args.web_listen.or(file.web_listen),
        web_advertise,
        web_domain: args.web_domain.or(file.web_domain),
        sites: file.sites,
        origins: file.origins,
        domain: args.domain.or(file.domain),
        region: args.region.or(file.region).unwrap_or_else(|| "us-east-1".into()),
        inline_max: match args.inline_max.or(file.inline_max.map(u64::from)) {
            Some(bytes) => usize::try_from(bytes).context("--inline-max is too large for this machine")?,
            None => inline_default,
        },
        s3_policy,
        admin_policy,
        web_policy,
        tls,
        ca_file: args.ca_file.or(file.ca_file),
        log_format: args.log_format.or(file.log_format).unwrap_or_else(|| "text".into()),
        history_revisions: args
            .history_revisions
            .or(file.history_revisions)
            .unwrap_or(EmbeddedOptions::default().history_revisions)
            .max(1),
        readiness: meridian_engine::health::ReadinessLimits {
            max_view_lag: args
                .ready_max_lag
                .or(file.ready_max_lag_ms.map(Duration::from_millis))
                .unwrap_or(meridian_engine::health::DEFAULT_MAX_VIEW_LAG),
            ..Default::default()
        },
        holder_lost_after: args
            .holder_lost_after
            .or(file.holder_lost_after_ms.map(Duration::from_millis))
            .unwrap_or(EngineConfig::default().holder_lost_after),
        status_token,
        metrics_listen: args.metrics_listen.or(file.metrics_listen),
        blob_s3,
        keyring: Arc::new(keyring),
        encrypt_all: args.sse.encrypt_all,
        orphan_grace,
        webhook_tokens: config::webhook_tokens(
            if args.notify_webhook_token.is_empty() { &file.notify_webhook_token } else { &args.notify_webhook_token },
            &webhooks,
        )?,
        webhooks,
        printable: FileConfig::default(),
    };
    settings.printable = settings.printable_config(limits);
    Ok(settings)
}

/// The blob bucket from flags, environment and file; `None` without a bucket. A bucket needs
/// both keys.
fn blob_s3_settings(
    args: BlobS3Args,
    file: &FileConfig,
    grace: Duration,
) -> anyhow::Result<Option<meridian_blob::s3::S3BackendConfig>> {
    let Some(bucket) = args.blob_s3_bucket.or(file.blob_s3_bucket.clone()) else {
        return Ok(None);
    };
    let (Some(access_key), Some(secret_key)) = (
        args.blob_s3_access_key.or(file.blob_s3_access_key.clone()),
        args.blob_s3_secret_key.or(file.blob_s3_secret_key.clone()),
    ) else {
        anyhow::bail!(
            "a blob bucket needs its keys: set MERIDIAN_BLOB_S3_ACCESS_KEY and MERIDIAN_BLOB_S3_SECRET_KEY (or blob_s3_access_key and blob_s3_secret_key)"
        );
    };
    if grace < Duration::from_secs(1) {
        anyhow::bail!("the orphan grace period (--blob-orphan-grace) must be at least 1s");
    }
    Ok(Some(meridian_blob::s3::S3BackendConfig {
        endpoint: meridian_s3_client::S3Endpoint {
            endpoint: args.blob_s3_endpoint.or(file.blob_s3_endpoint.clone()),
            region: args.blob_s3_region.or(file.blob_s3_region.clone()).unwrap_or_else(|| "us-east-1".into()),
            access_key,
            secret_key,
            ca_file: args.blob_s3_ca_file.or(file.blob_s3_ca_file.clone()),
        },
        bucket,
        prefix: args.blob_s3_prefix.or(file.blob_s3_prefix.clone()).unwrap_or_default(),
        part_size: meridian_blob::s3::DEFAULT_PART_SIZE,
        // Half the grace: a write must end with time to spare for its commit.
        max_write_age: grace / 2,
    }))
}

/// The node's blob store: the bucket of `--blob-s3-bucket`, else the data directory.
async fn open_blob_store(settings: &Settings) -> anyhow::Result<BlobStore> {
    let Some(s3) = &settings.blob_s3 else {
        return BlobStore::open(&settings.data).context("cannot open the blob store");
    };
    let backend = meridian_blob::s3::S3Backend::open(s3)
        .await
        .with_context(|| format!("cannot open the blob bucket {}", s3.bucket))?;
    Ok(BlobStore::with_backend(&settings.data, Arc::new(backend)))
}

impl Settings {
    /// These settings in the config file's shape, every secret replaced by [`config::REDACTED`];
    /// `limits` are the file's listener limits (each listener keeps its own defaults otherwise).
    fn printable_config(&self, limits: FileConfig) -> FileConfig {
        FileConfig {
            data: Some(self.data.clone()),
            listen: Some(self.listen),
            admin_listen: Some(self.admin_listen),
            domain: self.domain.clone(),
            region: Some(self.region.clone()),
            node_id: self.node_id.clone(),
            advertise: self.advertise.clone(),
            etcd: self.etcd.clone(),
            etcd_namespace: Some(self.etcd_namespace.clone()),
            etcd_cert: self.etcd_identity.as_ref().map(|files| files.cert.clone()),
            etcd_key: self.etcd_identity.as_ref().map(|files| files.key.clone()),
            cluster_token: self.cluster_token.as_ref().map(|_| config::REDACTED.to_string()),
            cache_max_bytes: Some(config::ByteSize(self.cache_max_bytes)),
            replicate_small_bytes: Some(config::ByteSize(self.replicate_small_bytes)),
            inline_max: Some(config::ByteSize(self.inline_max as u64)),
            tls_cert: self.tls.as_ref().map(|files| files.cert.clone()),
            tls_key: self.tls.as_ref().map(|files| files.key.clone()),
            ca_file: self.ca_file.clone(),
            log_format: Some(self.log_format.clone()),
            history_revisions: Some(self.history_revisions),
            status_token: self.status_token.as_ref().map(|_| config::REDACTED.to_string()),
            metrics_listen: self.metrics_listen,
            web_listen: self.web_listen,
            web_advertise: self.web_advertise.clone(),
            web_domain: self.web_domain.clone(),
            sites: self.sites.clone(),
            origins: self.origins.clone(),
            ready_max_lag_ms: Some(self.readiness.max_view_lag.as_millis() as u64),
            holder_lost_after_ms: Some(self.holder_lost_after.as_millis() as u64),
            blob_s3_bucket: self.blob_s3.as_ref().map(|s3| s3.bucket.clone()),
            blob_s3_endpoint: self.blob_s3.as_ref().and_then(|s3| s3.endpoint.endpoint.clone()),
            blob_s3_prefix: self.blob_s3.as_ref().map(|s3| s3.prefix.clone()),
            blob_s3_region: self.blob_s3.as_ref().map(|s3| s3.endpoint.region.clone()),
            blob_s3_access_key: self.blob_s3.as_ref().map(|s3| s3.endpoint.access_key.clone()),
            blob_s3_secret_key: self.blob_s3.as_ref().map(|_| config::REDACTED.to_string()),
            blob_s3_ca_file: self.blob_s3.as_ref().and_then(|s3| s3.endpoint.ca_file.clone()),
            blob_orphan_grace_secs: self.blob_s3.as_ref().map(|_| self.orphan_grace.as_secs()),
            notify_webhook: self.webhooks.iter().map(|(name, url)| config::printable_webhook(name, url)).collect(),
            notify_webhook_token: self
                .webhook_tokens
                .keys()
                .map(|name| format!("{name}={}", config::REDACTED))
                .collect(),
            ..limits
        }
    }
}

/// Logs go to stderr through a writer thread ([`crate::log_writer`]): request threads only
/// append a formatted line to a buffer (the access log writes one per request) that the writer
/// thread writes every few milliseconds; nothing is dropped. Colours only on a terminal. The
/// guard writes what is buffered when dropped.
fn init_logging(format: &str) -> anyhow::Result<crate::log_writer::FlushGuard> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,s3s=off,hyper=warn"));
    let (writer, guard) = crate::log_writer::stderr().context("cannot start the log writer thread")?;
    let access_sink = writer.clone();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    meridian_http::structured_access_log(format == "json");
    meridian_http::text_access_log_to(move |line| {
        use std::io::Write;
        // The batched writer never fails; a lost access line is not worth failing a request.
        let _ = (&access_sink).write_all(line);
    });
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("unknown log format {other:?}: use text or json"),
    }
    Ok(guard)
}

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let print_config = args.print_config;
    let settings = settings(args)?;
    if print_config {
        print!("{}", toml::to_string(&settings.printable).context("cannot format the configuration")?);
        return Ok(());
    }
    let _flush_logs_at_exit = init_logging(&settings.log_format)?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let started = SystemTime::now();
    // Registered before anything is announced: a SIGTERM sent as soon as the node prints its
    // addresses must stop it gracefully, not kill it.
    let signalled = meridian_http::shutdown_signal();
    config::open_data_dir(&settings.data)?;
    let metrics = Arc::new(meridian_metrics::Metrics::new());
    let metadata = open_metadata(&settings, &metrics).await?;
    let blobs = open_blob_store(&settings).await?;
    let node_id = match &settings.node_id {
        Some(id) => id.clone(),
        None => config::node_id(&settings.data)?,
    };
    let node = meridian_engine::record::Holder { node: node_id.clone(), region: settings.region.clone(), store: None };
    let engine_config = EngineConfig {
        inline_max: settings.inline_max,
        node,
        holder_lost_after: settings.holder_lost_after,
        keyring: settings.keyring.clone(),
        encrypt_all: settings.encrypt_all,
        ..EngineConfig::default()
    };
    let client_tls = ClientTls::new(settings.ca_file.as_deref()).context("cannot use the CA file (ca_file)")?;
    let server_tls = match &settings.tls {
        Some(files) => Some(ServerTls::load(files.clone()).context("cannot use the TLS certificate and key")?),
        None => None,
    };
    let scheme = if server_tls.is_some() { "https" } else { "http" };
    let mut builder = Engine::builder(metadata.clone(), blobs, engine_config)
        .reaper(Duration::from_millis(250))
        .metrics(metrics.engine.clone());
    let cache = match &settings.cluster_token {
        Some(token) => {
            let access = meridian_blob::PeerAccess::new(token.clone(), client_tls.clone());
            let (reader, cache) = peer_reader(&metadata, &settings, access, &metrics)?;
            crate::metrics::watch_cache(&metrics, cache.clone());
            builder = builder.remote_reader(reader, settings.replicate_small_bytes);
            Some(cache)
        }
        None => None,
    };
    if !settings.webhooks.is_empty() {
        let poster = meridian_http::client::Poster::new(&client_tls, Duration::from_secs(5));
        let authorizations =
            settings.webhook_tokens.iter().map(|(name, token)| (name.clone(), format!("Bearer {token}"))).collect();
        let sender = Arc::new(crate::notify::WebhookPoster { poster, authorizations });
        builder = builder.webhooks(meridian_engine::notify::Webhooks { targets: settings.webhooks.clone(), sender });
    }
    let engine = builder.build();

    let (creds, source) = config::admin_credentials(&settings.data)?;
    engine
        .ensure_admin_key(&creds.access_key_id, &creds.secret_access_key)
        .await
        .context("cannot record the admin key in the metadata store")?;
    let options = S3Options { domain: settings.domain.clone(), region: settings.region.clone() };
    let service = meridian_s3::build_service(engine.clone(), &options);

    let peer_endpoint = settings
        .cluster_token
        .as_ref()
        .map(|token| PeerEndpoint { blobs: engine.blobs().clone(), token: token.clone() });
    let listener = tokio::net::TcpListener::bind(settings.listen).await.with_context(|| {
        format!("cannot listen on {} (is the port in use? pass --listen ADDR:PORT)", settings.listen)
    })?;
    let addr = listener.local_addr()?;
    let admin_listener = tokio::net::TcpListener::bind(settings.admin_listen).await.with_context(|| {
        format!("cannot listen on {} for the admin API (pass --admin-listen ADDR:PORT)", settings.admin_listen)
    })?;
    let admin_addr = admin_listener.local_addr()?;
    let web_listener = match settings.web_listen {
        Some(web_listen) => Some(tokio::net::TcpListener::bind(web_listen).await.with_context(|| {
            format!("cannot listen on {web_listen} for the web edge (pass --web-listen ADDR:PORT)")
        })?),
        None => None,
    };
    let (admin_token, token_generated) = config::admin_token(&settings.data)?;
    let advertise = settings.advertise.clone().unwrap_or_else(|| format!("{scheme}://{addr}"));
    let web_url = match &web_listener {
        Some(web) => Some(settings.web_advertise.clone().unwrap_or(format!("{scheme}://{}", web.local_addr()?))),
        None => None,
    };
    println!("Node: {node_id} in region {} (peers reach it at {advertise})", settings.region);
    let region = settings.region.clone();
    let started_ms = meridian_engine::now_ms();
    // Registered before the endpoints are printed: once a node says it is up, every node of
    // the cluster knows it (and its region).
    engine
        .start_heartbeat(move || {
            let cache = cache.as_ref().map(|c| {
                let stats = c.stats();
                meridian_engine::cluster::CacheUse {
                    bytes: stats.bytes_cached,
                    max_bytes: c.options().max_bytes,
                    hits: stats.hits,
                    misses: stats.misses,
                }
            });
            meridian_engine::cluster::NodeRecord {
                id: node_id.clone(),
                region: region.clone(),
                advertise_url: advertise.clone(),
                web_url: web_url.clone(),
                started_ms,
                version: env!("CARGO_PKG_VERSION").to_string(),
                cache: cache.unwrap_or_default(),
                ..Default::default()
            }
        })
        .await;
    print_banner(&settings, &format!("{scheme}://{addr}"), &creds, &source);
    println!("Admin API: {scheme}://{admin_addr}");
    if let Some(web) = &web_listener {
        println!("Web edge: {scheme}://{}", web.local_addr()?);
    }
    if token_generated {
        println!(
            "Admin token: {admin_token} (generated now, saved in {})",
            settings.data.join("admin-token").display()
        );
    }
    let readiness = Arc::new(meridian_engine::health::ReadinessProbe::new(engine.clone(), settings.readiness.clone()));
    let page_tokens = std::iter::once(admin_token.clone()).chain(settings.status_token.clone()).collect();
    let status_page =
        Arc::new(meridian_admin::status::StatusPage::new(Arc::clone(&readiness), Arc::clone(&metrics), page_tokens));
    let admin = meridian_admin::AdminApi::new(admin_token, Arc::clone(&readiness))
        .with_status_page(Arc::clone(&status_page))
        .status_token(settings.status_token.clone())
        .metrics(Arc::clone(&metrics));
    let metrics_listener = match settings.metrics_listen {
        Some(addr) => {
            let listener = crate::metrics::bind_metrics_listener(addr).await?;
            println!("Metrics: {scheme}://{}/metrics (no token: keep this address private)", listener.local_addr()?);
            Some(listener)
        }
        None => None,
    };
    let edge_options = meridian_edge::EdgeOptions {
        web_domain: settings.web_domain.clone(),
        sites: settings.sites.clone(),
        origins: settings.origins.clone(),
        region: settings.region.clone(),
        peer_token: settings.cluster_token.clone(),
    };
    let edge = meridian_edge::Edge::start(engine.clone(), edge_options).await.context("invalid web edge settings")?;

    match engine.blobs().shared_id() {
        Some(_) => collect_orphans_periodically(engine.clone(), settings.orphan_grace),
        None => collect_orphans_in_background(engine.clone(), started),
    }
    let forwarder = peer_endpoint.as_ref().map(|peer| {
        meridian_s3::forward::Forwarder::new(engine.clone(), settings.domain.clone(), &client_tls, &peer.token)
    });
    let node = NodeHandler {
        s3: meridian_s3::S3Handler::new(
            service,
            meridian_s3::cors::Cors::new(engine.clone(), settings.domain.clone()),
            forwarder,
        ),
        peer: peer_endpoint,
        readiness: Arc::clone(&readiness),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let s3_server = crate::metrics::observed_server(&metrics, settings.s3_policy.clone())
        .tls(server_tls.clone())
        .observer(status_page.errors());
    let admin_server = crate::metrics::observed_server(&metrics, settings.admin_policy.clone())
        .tls(server_tls.clone())
        .observer(status_page.errors());
    let s3 = s3_server.serve(listener, node, until_stopped(stopped.clone()));
    let admin = admin_server.serve(admin_listener, admin, until_stopped(stopped.clone()));
    let metrics_only = async {
        let Some(listener) = metrics_listener else { return Ok(()) };
        let policy = meridian_http::Policy { name: "metrics", ..settings.admin_policy.clone() };
        let server = crate::metrics::observed_server(&metrics, policy).tls(server_tls.clone());
        crate::metrics::serve_metrics(Arc::clone(&metrics), server, listener, until_stopped(stopped.clone())).await
    };
    let web = async {
        let Some(web_listener) = web_listener else { return Ok(()) };
        let server = crate::metrics::observed_server(&metrics, settings.web_policy.clone())
            .tls(server_tls.clone())
            .observer(status_page.errors());
        let web = WebHandler { edge, readiness: Arc::clone(&readiness) };
        server.serve(web_listener, web, until_stopped(stopped.clone())).await
    };
    let signal = async move {
        signalled.await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    };
    let (s3, admin, metrics_only, web, ()) = tokio::join!(s3, admin, metrics_only, web, signal);
    s3.context("the S3 listener failed")?;
    admin.context("the admin listener failed")?;
    metrics_only.context("the metrics listener failed")?;
    web.context("the web edge listener failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// The node-to-node endpoint (`/_meridian/...`): the local blob store and the cluster token
/// peers must present. It shares the S3 port; bucket names cannot start with `_`, so it never
/// shadows S3.
struct PeerEndpoint {
    blobs: BlobStore,
    token: String,
}

/// What the S3 port serves: liveness and readiness (`/_meridian/health`, `/_meridian/ready`,
/// open), the node-to-node endpoint (the rest of `/_meridian/`, with the cluster token), and S3
/// (with KV) for everything else.
struct NodeHandler {
    s3: meridian_s3::S3Handler,
    peer: Option<PeerEndpoint>,
    readiness: Arc<meridian_engine::health::ReadinessProbe>,
}

impl meridian_http::Handler for NodeHandler {
    async fn handle(
        &self,
        req: http::Request<meridian_http::RequestBody>,
        info: meridian_http::RequestInfo,
    ) -> http::Response<meridian_http::ResponseBody> {
        if !req.uri().path().starts_with("/_meridian/") {
            return self.s3.handle(req, info).await;
        }
        if let Some(probe) = Probe::from_request(req.method(), req.uri().path(), "/_meridian") {
            info.notes.set_operation(probe.operation());
            return meridian_admin::health::answer(probe, &self.readiness).await.map(meridian_http::boxed);
        }
        info.notes.set_operation("peer.blob");
        match &self.peer {
            Some(peer) => {
                info.notes.set_principal("peer");
                meridian_blob::serve_blob_request(&peer.blobs, &peer.token, req).await.map(meridian_http::boxed)
            }
            None => meridian_http::text_response(http::StatusCode::NOT_FOUND, "this node is not part of a cluster"),
        }
    }
}

/// What the web port serves: liveness and readiness under the reserved prefix
/// (`/_meridian/health`, `/_meridian/ready`, open, as on the S3 port), the edge for everything else.
struct WebHandler {
    edge: meridian_edge::Edge,
    readiness: Arc<meridian_engine::health::ReadinessProbe>,
}

impl meridian_http::Handler for WebHandler {
    async fn handle(
        &self,
        req: http::Request<meridian_http::RequestBody>,
        info: meridian_http::RequestInfo,
    ) -> http::Response<meridian_http::ResponseBody> {
        if let Some(probe) = Probe::from_request(req.method(), req.uri().path(), "/_meridian") {
            info.notes.set_operation(probe.operation());
            return meridian_admin::health::answer(probe, &self.readiness).await.map(meridian_http::boxed);
        }
        self.edge.handle(req, info).await
    }
}

/// Reads of bytes held elsewhere go through a local chunk cache (small objects written in other
/// regions are copied into it right after they are written: see `--replicate-small-bytes`).
fn peer_reader(
    metadata: &Metadata,
    settings: &Settings,
    access: meridian_blob::PeerAccess,
    metrics: &meridian_metrics::Metrics,
) -> anyhow::Result<(Arc<meridian_engine::peer::PeerReader>, meridian_blob::ChunkCache)> {
    let options = meridian_blob::CacheOptions {
        max_bytes: settings.cache_max_bytes,
        chunk_size: meridian_engine::CHUNK_SIZE,
        ..Default::default()
    };
    let dir = settings.data.join("cache");
    let cache = meridian_blob::ChunkCache::open(&dir, options)
        .with_context(|| format!("cannot open the cache in {}", dir.display()))?;
    let reader = meridian_engine::peer::PeerReader::new(
        Arc::clone(metadata.store()),
        settings.region.clone(),
        cache.clone(),
        access,
    )
    .metrics(metrics.cache.clone());
    Ok((Arc::new(reader), cache))
}

/// The metadata store: etcd (replicated: local reads from the nearest member) when the node
/// joins a cluster, else the embedded database (a single store).
async fn open_metadata(settings: &Settings, metrics: &meridian_metrics::Metrics) -> anyhow::Result<Metadata> {
    if settings.etcd.is_empty() {
        let path = settings.data.join("meta.redb");
        let options = EmbeddedOptions {
            history_revisions: settings.history_revisions,
            metrics: metrics.embedded.clone(),
            ..EmbeddedOptions::default()
        };
        let store = EmbeddedStore::open(&path, options).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the metadata database {}: {e} (is another meridian server using this data directory?)",
                path.display()
            )
        })?;
        return Ok(Metadata::single(Arc::new(store)));
    }
    let mut options =
        meridian_meta_etcd::EtcdOptions::new(settings.etcd.clone()).namespace(settings.etcd_namespace.clone());
    // The one CA file of the node: etcd's https:// endpoints are checked against it too.
    options.ca_file = settings.ca_file.clone();
    options.metrics = metrics.etcd.clone();
    options.client_identity = settings.etcd_identity.clone();
    let store = meridian_meta_etcd::EtcdStore::connect(options)
        .await
        .with_context(|| format!("cannot reach etcd at {}", settings.etcd.join(",")))?;
    tracing::info!(endpoints = %settings.etcd.join(","), namespace = %settings.etcd_namespace, "metadata in etcd");
    Ok(Metadata::replicated(Arc::new(store.clone()), Arc::new(EtcdViews::new(&store))))
}

/// Local and at-least reads from the nearest etcd member; strong reads through the leader.
struct EtcdViews {
    local: Arc<dyn meridian_meta::MetaStore>,
    strong: Arc<dyn meridian_meta::MetaStore>,
    serializable: meridian_meta_etcd::EtcdStore,
}

impl EtcdViews {
    fn new(store: &meridian_meta_etcd::EtcdStore) -> Self {
        use meridian_meta_etcd::ReadMode;
        let serializable = store.with_read_mode(ReadMode::Serializable);
        EtcdViews {
            local: Arc::new(serializable.clone()),
            strong: Arc::new(store.with_read_mode(ReadMode::Linearizable)),
            serializable,
        }
    }
}

#[async_trait::async_trait]
impl meridian_engine::ReadViews for EtcdViews {
    async fn wait_applied(
        &self,
        revision: meridian_meta::Revision,
        timeout: std::time::Duration,
    ) -> Result<(), String> {
        self.serializable.wait_applied(revision, timeout).await.map_err(|lagging| lagging.join(", "))
    }

    async fn applied_revisions(&self) -> Result<meridian_engine::lag::AppliedRevisions, String> {
        let applied = self.serializable.applied_revisions().await.map_err(|e| e.to_string())?;
        Ok(meridian_engine::lag::AppliedRevisions { newest: applied.newest, local: applied.local })
    }

    fn view(&self, consistency: meridian_engine::Consistency) -> Arc<dyn meridian_meta::MetaStore> {
        use meridian_engine::Consistency;
        match consistency {
            Consistency::Strong => Arc::clone(&self.strong),
            Consistency::Local => Arc::clone(&self.local),
            Consistency::AtLeast(revision) => Arc::new(self.serializable.at_least(revision)),
        }
    }
}

fn print_banner(settings: &Settings, endpoint: &str, creds: &config::Credentials, source: &CredentialSource) {
    println!("Meridian {} is running.", env!("CARGO_PKG_VERSION"));
    println!("S3 endpoint: {endpoint}");
    println!("Data directory: {}", settings.data.display());
    println!("Region: {}", settings.region);
    println!("Access key: {}", creds.access_key_id);
    match source {
        CredentialSource::Environment => println!("Secret key: (from AWS_SECRET_ACCESS_KEY)"),
        CredentialSource::Stored(path) => println!("Secret key: stored in {}", path.display()),
        CredentialSource::Generated(path) => {
            println!("Secret key: {} (generated now, saved in {})", creds.secret_access_key, path.display());
        }
    }
    println!(
        "Try: AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY=... aws --endpoint-url {endpoint} s3 mb s3://my-bucket",
        creds.access_key_id
    );
}

/// Removes what crashes of any node left in a shared blob store — blobs no metadata refers to,
/// unfinished multipart uploads — once they are `grace` old, every `grace`. Writes of other
/// nodes in flight are younger than that (a blob appears just before its commit, and a write
/// that took half the grace fails instead of finishing).
fn collect_orphans_periodically(engine: Engine, grace: Duration) {
    tokio::spawn(async move {
        loop {
            let cutoff = SystemTime::now().checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
            match engine.collect_orphan_blobs(cutoff).await {
                Ok((0, _)) => {}
                Ok((count, bytes)) => tracing::info!(count, bytes, "removed orphaned blobs from the shared blob store"),
                Err(err) => tracing::warn!(error = %err, "orphan blob collection failed"),
            }
            tokio::time::sleep(grace).await;
        }
    });
}

/// Removes blob files a crash left without metadata. Only files from before this process
/// started are considered (minus a margin for coarse file times), so in-flight writes are safe.
fn collect_orphans_in_background(engine: Engine, started: SystemTime) {
    let cutoff = started.checked_sub(Duration::from_secs(2)).unwrap_or(started);
    tokio::spawn(async move {
        match engine.collect_orphan_blobs(cutoff).await {
            Ok((0, _)) => {}
            Ok((count, bytes)) => tracing::info!(count, bytes, "removed orphaned blobs left by an earlier run"),
            Err(err) => tracing::warn!(error = %err, "orphan blob collection failed"),
        }
    });
}
