//! `meridian server`: opens the stores, builds the engine and serves S3.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use meridian_blob::BlobStore;
use meridian_engine::{Engine, EngineConfig};
use meridian_meta::embedded::{EmbeddedOptions, EmbeddedStore};
use meridian_s3::{S3Options, ServerLimits};

use crate::config::{self, CredentialSource, FileConfig};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Data directory (metadata database and object bytes). Default: ./meridian-data
    #[arg(long, env = "MERIDIAN_DATA")]
    data: Option<PathBuf>,
    /// Address for the S3 endpoint; port 0 picks a free port. Default: 127.0.0.1:9400
    #[arg(long, env = "MERIDIAN_LISTEN")]
    listen: Option<SocketAddr>,
    /// A TOML file with any of these settings (flags win over the file).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve virtual-host-style requests (bucket.DOMAIN) as well as path-style ones.
    #[arg(long)]
    domain: Option<String>,
    /// Region name reported to clients. Default: us-east-1
    #[arg(long)]
    region: Option<String>,
    /// Store objects up to this many bytes inline in the metadata store. Default: 32768
    #[arg(long)]
    inline_max: Option<usize>,
    /// Log format: text or json. Default: text (logs go to stderr; RUST_LOG sets the level)
    #[arg(long)]
    log_format: Option<String>,
    /// Revisions of change history kept for watches. Default: 100000
    #[arg(long, hide = true)]
    history_revisions: Option<u64>,
}

struct Settings {
    data: PathBuf,
    listen: SocketAddr,
    domain: Option<String>,
    region: String,
    inline_max: usize,
    limits: ServerLimits,
    log_format: String,
    history_revisions: u64,
}

fn settings(args: ServerArgs) -> anyhow::Result<Settings> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let mut limits = ServerLimits::default();
    if let Some(n) = file.max_connections {
        limits.max_connections = n;
    }
    if let Some(secs) = file.idle_timeout_secs {
        limits.idle_timeout = Duration::from_secs(secs);
    }
    let default_listen: SocketAddr = config::DEFAULT_LISTEN.parse().context("default listen address")?;
    Ok(Settings {
        data: args.data.or(file.data).unwrap_or_else(|| PathBuf::from(config::DEFAULT_DATA)),
        listen: args.listen.or(file.listen).unwrap_or(default_listen),
        domain: args.domain.or(file.domain),
        region: args.region.or(file.region).unwrap_or_else(|| "us-east-1".into()),
        inline_max: args.inline_max.or(file.inline_max).unwrap_or(EngineConfig::default().inline_max),
        limits,
        log_format: args.log_format.or(file.log_format).unwrap_or_else(|| "text".into()),
        history_revisions: args
            .history_revisions
            .or(file.history_revisions)
            .unwrap_or(EmbeddedOptions::default().history_revisions)
            .max(1),
    })
}

fn init_logging(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,s3s=off,hyper=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("unknown log format {other:?}: use text or json"),
    }
    Ok(())
}

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let settings = settings(args)?;
    init_logging(&settings.log_format)?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let started = SystemTime::now();
    std::fs::create_dir_all(&settings.data)
        .with_context(|| format!("cannot create the data directory {}", settings.data.display()))?;
    let meta_path = settings.data.join("meta.redb");
    let options = EmbeddedOptions { history_revisions: settings.history_revisions, ..EmbeddedOptions::default() };
    let meta = EmbeddedStore::open(&meta_path, options).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the metadata database {}: {e} (is another meridian server using this data directory?)",
            meta_path.display()
        )
    })?;
    let blobs = BlobStore::open(&settings.data).context("cannot open the blob store")?;
    let engine_config = EngineConfig { inline_max: settings.inline_max, ..EngineConfig::default() };
    let engine = Engine::new(Arc::new(meta), blobs, engine_config);

    let (creds, source) = config::admin_credentials(&settings.data)?;
    let auth =
        meridian_s3::auth::StaticKeys::new().with_key(creds.access_key_id.clone(), creds.secret_access_key.clone());
    let options = S3Options { domain: settings.domain.clone(), region: settings.region.clone() };
    let service = meridian_s3::build_service(engine.clone(), auth, &options);

    let listener = tokio::net::TcpListener::bind(settings.listen).await.with_context(|| {
        format!("cannot listen on {} (is the port in use? pass --listen ADDR:PORT)", settings.listen)
    })?;
    let addr = listener.local_addr()?;
    print_banner(&settings, addr, &creds, &source);

    collect_orphans_in_background(engine.clone(), started);
    engine.spawn_reaper(Duration::from_millis(250));
    meridian_s3::serve(listener, service, settings.limits.clone(), shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

fn print_banner(settings: &Settings, addr: SocketAddr, creds: &config::Credentials, source: &CredentialSource) {
    println!("Meridian {} is running.", env!("CARGO_PKG_VERSION"));
    println!("S3 endpoint: http://{addr}");
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
        "Try: AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY=... aws --endpoint-url http://{addr} s3 mb s3://my-bucket",
        creds.access_key_id
    );
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

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
