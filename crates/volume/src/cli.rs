//! `meridian volume ...`: clap types and the async entry point, so the `meridian` binary can
//! embed them as a subcommand (`meridian volume create|serve|...`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio::net::TcpListener;
use tracing::{info, warn};

use meridian_common::size::format_size;

use crate::crypt::VolumeKey;
use crate::error::{Result, VolumeError};
use crate::format::{self, Layout};
use crate::gc::{Gc, GcConfig};
use crate::manage;
use crate::nbd::{self, Export};
use crate::s3::{S3Config, S3Store};
use crate::store::ObjectStore;
use crate::volume::{Volume, WriterConfig};

/// Where the volume's bucket is.
#[derive(Debug, Clone, Args)]
pub struct BucketArgs {
    /// S3 endpoint URL (Meridian, MinIO, R2...). Omit for AWS.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint: Option<String>,
    /// Bucket holding the volume.
    #[arg(long, env = "MERIDIAN_VOLUME_BUCKET")]
    pub bucket: String,
    /// Key prefix inside the bucket; the volume lives under PREFIX + NAME + "/".
    #[arg(long, env = "MERIDIAN_VOLUME_PREFIX", default_value = "")]
    pub prefix: String,
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub access_key: String,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub secret_key: String,
    /// CA certificates (PEM) to trust, besides the system's, for an https:// endpoint.
    #[arg(long, env = "MERIDIAN_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The volume's encryption key: a file (mode 0600) of 64 hex digits. `create` with it makes
    /// an encrypted volume; every other command needs it for an encrypted one.
    #[arg(long, env = "MERIDIAN_VOLUME_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// While a key rotation is in progress (`rotate-key`, until GC has sealed every object
    /// again): the key being retired, besides the current one in --encryption-key-file.
    #[arg(long, env = "MERIDIAN_VOLUME_OLD_KEY_FILE")]
    pub old_key_file: Option<PathBuf>,
}

impl BucketArgs {
    pub fn s3(&self) -> Result<S3Store> {
        Ok(S3Store::new(&S3Config {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            bucket: self.bucket.clone(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            ca_file: self.ca_file.clone(),
        })?)
    }

    pub fn store(&self) -> Result<Arc<dyn ObjectStore>> {
        Ok(Arc::new(self.s3()?))
    }

    pub fn layout(&self, name: &str) -> Result<Layout> {
        Layout::new(&self.prefix, name)
    }

    /// The key from `--encryption-key-file`, if given.
    pub fn key(&self) -> Result<Option<Arc<VolumeKey>>> {
        key_from(self.encryption_key_file.as_deref())
    }

    /// The key from `--old-key-file`, if given.
    pub fn old_key(&self) -> Result<Option<Arc<VolumeKey>>> {
        key_from(self.old_key_file.as_deref())
    }

    /// The store and layout of volume `name`, through its encryption when it has some (a
    /// missing or wrong key is refused here).
    pub async fn volume(&self, name: &str) -> Result<(Arc<dyn ObjectStore>, Layout)> {
        let layout = self.layout(name)?;
        let store = manage::volume_store_rotating(self.store()?, &layout, self.key()?, self.old_key()?).await?;
        let layout = manage::resolve_layout(store.as_ref(), &layout).await?;
        Ok((store, layout))
    }
}

fn key_from(path: Option<&std::path::Path>) -> Result<Option<Arc<VolumeKey>>> {
    path.map(|path| VolumeKey::from_file(path).map(Arc::new)).transpose()
}

/// `meridian volume`.
#[derive(Debug, Args)]
pub struct VolumeCommand {
    #[command(subcommand)]
    pub command: VolumeSubcommand,
}

#[derive(Debug, Subcommand)]
pub enum VolumeSubcommand {
    /// Record a new volume in the bucket.
    Create {
        name: String,
        /// Size, e.g. 100GiB (a multiple of 4 KiB).
        #[arg(long)]
        size: String,
        /// Target data per log object.
        #[arg(long, default_value = "4MiB")]
        object_size: String,
        /// Create the bucket first if it does not exist.
        #[arg(long)]
        create_bucket: bool,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// Serve the volume over NBD (takes the writer lease).
    Serve(Box<ServeArgs>),
    /// Record the current end of the log as a snapshot.
    Snapshot {
        name: String,
        /// Snapshot name (default: generated).
        #[arg(long)]
        label: Option<String>,
        /// Remove the snapshot LABEL instead of creating one.
        #[arg(long, requires = "label")]
        delete: bool,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// List snapshots.
    Snapshots {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// Make the disk what it was at a snapshot (offline; later snapshots are kept).
    Rollback {
        name: String,
        /// Snapshot label.
        #[arg(long)]
        to: String,
        #[arg(long)]
        force_takeover: bool,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// Write the disk (now or at a snapshot) to a raw image; needs only read access.
    Export {
        name: String,
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// Show objects, live and garbage bytes, snapshots and the writer.
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// Collect garbage now (offline: takes the writer lease).
    Gc {
        name: String,
        /// How long a dead object waits before removal, e.g. 30s (see docs/volumes.md).
        #[arg(long, default_value = "30s", value_parser = duration_arg)]
        grace: Duration,
        #[arg(long)]
        force_takeover: bool,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// Create NEW as a writable copy of SOURCE (at SOURCE@SNAPSHOT, else at its current durable
    /// end) in constant time: no data is copied; NEW reads SOURCE's log objects up to that
    /// point, whose GC keeps them, and diverges independently.
    Fork {
        /// SOURCE or SOURCE@SNAPSHOT.
        source: String,
        new: String,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// Delete the volume and every object it owns (offline: takes the writer lease). Refused
    /// while it is served or while forks read its objects.
    Delete {
        name: String,
        #[arg(long)]
        force_takeover: bool,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// Start moving an encrypted volume to a new key (offline: takes the writer lease). From
    /// then on everything is sealed under the new key; GC (`gc`, or serve's) seals the older
    /// objects again, and until it has, commands need both keys (--encryption-key-file NEW
    /// --old-key-file OLD). `inspect` tells when the old key is no longer needed.
    RotateKey {
        name: String,
        /// The new key: a file (mode 0600) of 64 hex digits. The current key is
        /// --encryption-key-file.
        #[arg(long)]
        new_key_file: PathBuf,
        #[arg(long)]
        force_takeover: bool,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// Change the size (offline). Grow, then grow the filesystem (e.g. resize2fs).
    Resize {
        name: String,
        #[arg(long)]
        size: String,
        #[arg(long)]
        allow_shrink: bool,
        #[arg(long)]
        force_takeover: bool,
        #[command(flatten)]
        bucket: BucketArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    pub name: String,
    /// Address for NBD clients (port 0 picks a free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub listen: String,
    /// Directory for the local extent map (rebuilt on each start).
    #[arg(long, env = "MERIDIAN_VOLUME_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// Memory for cached extent-map pages, in MiB.
    #[arg(long, default_value_t = 4)]
    pub map_cache_mib: usize,
    /// Log objects uploading at once.
    #[arg(long, default_value_t = 6)]
    pub uploads: usize,
    /// Writes the local write-back journal (in --cache-dir) absorbs before it starts uploading
    /// them; overwrites of the same sectors merge there. Disk use stays under about twice this.
    #[arg(long, default_value = "8GiB")]
    pub journal_size: String,
    /// Uploaded data kept on local disk (the journal files of recent cuts) to serve reads of it
    /// without a GET; 0 disables.
    #[arg(long, default_value = "8GiB")]
    pub cache_size: String,
    /// How far past a sequential stream's last read its windows are fetched in the background,
    /// rounded up to 4 MiB windows, at most 64MiB; 0 fetches only what reads ask for. Memory:
    /// four windows more than this.
    #[arg(long, default_value = "16MiB")]
    pub read_ahead: String,
    /// Unflushed writes this old are uploaded even without a FLUSH (what a crash of `serve` can
    /// lose at most; flushed writes are never lost), e.g. 30s. At least 1s.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    pub max_dirty_age: Duration,
    /// Lease time-to-live; renewed every third of it. At least 3s.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    pub lease_ttl: Duration,
    /// Take the lease even if another writer seems alive. Only if it is certainly dead.
    #[arg(long)]
    pub force_takeover: bool,
    /// If another writer holds the lease, wait and take over when it stops renewing it (its
    /// TTL ran out, or its process on this host is gone), then serve from the last FLUSH.
    #[arg(long, conflicts_with = "force_takeover")]
    pub standby: bool,
    /// Time between GC passes, e.g. 60s (0 disables background GC).
    #[arg(long, default_value = "60s", value_parser = duration_arg)]
    pub gc_interval: Duration,
    /// How long a dead object waits before background GC removes it.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    pub gc_grace: Duration,
    /// Write a checkpoint after this much log data.
    #[arg(long, default_value = "1GiB")]
    pub checkpoint_every: String,
    /// Serve this volume's Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9500;
    /// port 0 picks a free port, printed). No authentication: bind it to loopback or a trusted
    /// network.
    #[arg(long, env = "MERIDIAN_VOLUME_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub bucket: BucketArgs,
}

/// Durations on the command line: Meridian's one duration grammar (`30s`, `1m30s`; a bare number
/// is seconds, so `--gc-interval 60` still means a minute).
fn duration_arg(text: &str) -> std::result::Result<Duration, meridian_common::duration::DurationError> {
    meridian_common::duration::parse_duration(text)
}

/// The cache directory of commands without `--cache-dir` (gc, resize) and of `serve` without
/// it: `MERIDIAN_VOLUME_CACHE`, else the user's cache directory.
fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MERIDIAN_VOLUME_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("meridian/volumes");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache/meridian/volumes");
    }
    std::env::temp_dir().join("meridian-volumes")
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| VolumeError::Invalid(e.to_string()))
}

fn holder(extra: &str) -> String {
    format!("{}:{} ({extra})", crate::lease::hostname(), std::process::id())
}

/// Runs one `meridian volume` command.
pub async fn run(cmd: VolumeCommand) -> Result<()> {
    match cmd.command {
        VolumeSubcommand::Create { name, size, object_size, create_bucket, bucket } => {
            let size = format::parse_size(&size)?;
            let object_bytes = format::parse_size(&object_size)?;
            let key = bucket.key()?;
            let s3 = bucket.s3()?;
            if create_bucket {
                s3.create_bucket().await?;
            }
            let m =
                manage::create_with_key(&s3, &bucket.layout(&name)?, &name, size, object_bytes, key.as_deref()).await?;
            println!(
                "created volume {name}: {} ({} bytes) at s3://{}/{}{name}/{}",
                format_size(m.size),
                m.size,
                bucket.bucket,
                bucket.prefix,
                if m.encryption.is_some() { ", encrypted" } else { "" }
            );
        }
        VolumeSubcommand::Serve(args) => serve(*args).await?,
        VolumeSubcommand::Fork { source, new, bucket } => {
            let (name, at) = match source.split_once('@') {
                Some((name, snap)) => (name, Some(snap)),
                None => (source.as_str(), None),
            };
            let layout = bucket.layout(name)?;
            let m = manage::fork(bucket.store()?, bucket.key()?, &layout, at, &new, GcConfig::default().grace).await?;
            let point = m.parent.as_ref().map_or(0, |p| p.seq);
            println!("forked {source} into {new} ({}) at log position {point}", format_size(m.size));
        }
        VolumeSubcommand::Snapshot { name, label, delete, bucket } => {
            let (store, layout) = bucket.volume(&name).await?;
            if delete {
                let label = label.unwrap_or_default();
                manage::delete_snapshot(store.as_ref(), &layout, &label).await?;
                println!("deleted snapshot {label}");
            } else {
                let s = manage::snapshot(store.as_ref(), &layout, label.as_deref(), Duration::from_secs(30)).await?;
                println!("snapshot {} at log position {}", s.label, s.seq);
            }
        }
        VolumeSubcommand::Snapshots { name, json, bucket } => {
            let (store, layout) = bucket.volume(&name).await?;
            let snaps = manage::list_snapshots(store.as_ref(), &layout).await?;
            if json {
                println!("{}", to_json(&snaps)?);
            } else {
                println!("{:<32} {:>12} {:>12}", "LABEL", "POSITION", "CREATED");
                for s in snaps {
                    println!("{:<32} {:>12} {:>12}", s.label, s.seq, s.created_unix);
                }
            }
        }
        VolumeSubcommand::Rollback { name, to, force_takeover, bucket } => {
            let mut cfg = WriterConfig::new(default_cache_dir(), holder("rollback"));
            cfg.force_takeover = force_takeover;
            let (store, layout) = bucket.volume(&name).await?;
            let seq = manage::rollback(store, &layout, &to, cfg).await?;
            println!("rolled {name} back to snapshot {to} (new log position {seq})");
        }
        VolumeSubcommand::Export { name, at, output, bucket } => {
            let (store, layout) = bucket.volume(&name).await?;
            let st = manage::export(store.as_ref(), &layout, at.as_deref(), &output).await?;
            println!(
                "exported {} ({} mapped) at log position {} to {}",
                format_size(st.size),
                format_size(st.mapped_bytes),
                st.seq,
                output.display()
            );
        }
        VolumeSubcommand::Inspect { name, json, bucket } => {
            let (store, layout) = bucket.volume(&name).await?;
            let i = manage::inspect(store.as_ref(), &layout).await?;
            if json {
                println!("{}", to_json(&i)?);
            } else {
                print_inspection(&i);
            }
        }
        VolumeSubcommand::Gc { name, grace, force_takeover, bucket } => {
            gc_offline(&name, grace, force_takeover, &bucket).await?
        }
        VolumeSubcommand::Delete { name, force_takeover, bucket } => {
            let mut cfg = WriterConfig::new(default_cache_dir(), holder("delete"));
            cfg.force_takeover = force_takeover;
            let store = manage::volume_store_rotating(
                bucket.store()?,
                &bucket.layout(&name)?,
                bucket.key()?,
                bucket.old_key()?,
            )
            .await?;
            let d = manage::delete(store, &bucket.layout(&name)?, &cfg).await?;
            println!("deleted volume {name}: {} objects ({})", d.objects, format_size(d.bytes));
        }
        VolumeSubcommand::RotateKey { name, new_key_file, force_takeover, bucket } => {
            let old = bucket.key()?.ok_or_else(|| {
                VolumeError::Invalid("rotate-key needs the current key: pass it with --encryption-key-file".into())
            })?;
            let new = VolumeKey::from_file(&new_key_file)?;
            let mut cfg = WriterConfig::new(default_cache_dir(), holder("rotate-key"));
            cfg.force_takeover = force_takeover;
            let m = manage::rotate_key(bucket.store()?, &bucket.layout(&name)?, old, &new, &cfg).await?;
            let generation = m.encryption.as_ref().map_or(0, |e| e.generation);
            println!(
                "{name} now seals everything under key generation {generation}; until GC (`meridian volume gc {name}`, \
                 or serve's) has sealed the older objects again, pass the new key with --encryption-key-file and the \
                 old one with --old-key-file; `meridian volume inspect {name}` tells when the old key is no longer needed"
            );
        }
        VolumeSubcommand::Resize { name, size, allow_shrink, force_takeover, bucket } => {
            let size = format::parse_size(&size)?;
            let mut cfg = WriterConfig::new(default_cache_dir(), holder("resize"));
            cfg.force_takeover = force_takeover;
            let (store, layout) = bucket.volume(&name).await?;
            let m = manage::resize(store, &layout, size, cfg, allow_shrink).await?;
            println!("{name} is now {} ({} bytes)", format_size(m.size), m.size);
        }
    }
    Ok(())
}

fn print_inspection(i: &manage::Inspection) {
    let m = &i.manifest;
    println!("volume      {} (id {})", m.name, m.volume_id);
    println!("size        {} ({} bytes)", format_size(m.size), m.size);
    println!("log         {} objects, {}, end at {}", i.log_objects, format_size(i.log_bytes), i.end);
    println!(
        "checkpoints {} ({}), replay starts at {}",
        i.checkpoints,
        format_size(i.checkpoint_bytes),
        i.base_checkpoint
    );
    println!("live        {}", format_size(i.live_bytes));
    println!("garbage     {}", format_size(i.garbage_bytes));
    match &i.lease {
        Some(l) if i.lease_live => println!("writer      {} (epoch {}), active", l.holder, l.epoch),
        Some(l) => println!("writer      none (last: {} epoch {})", l.holder, l.epoch),
        None => println!("writer      none"),
    }
    if let Some(k) = &i.keys {
        let state = match (k.rotating_from, k.retired) {
            (Some(from), _) => format!(
                "rotating from generation {from}: {} objects still sealed under it; keep both keys until gc has sealed \
                 them again",
                k.objects_under_old_key
            ),
            (None, Some(old)) => format!("the old key (generation {old}) is no longer needed"),
            (None, None) => "no rotation".to_string(),
        };
        println!(
            "encryption  {}, key generation {}; {state}",
            m.encryption.as_ref().map_or("", |e| &e.cipher),
            k.generation
        );
    }
    println!("snapshots   {}", i.snapshots.len());
    for s in &i.snapshots {
        println!("  {:<30} at {}", s.label, s.seq);
    }
}

async fn gc_offline(name: &str, grace: Duration, force: bool, bucket: &BucketArgs) -> Result<()> {
    let mut cfg = WriterConfig::new(default_cache_dir(), holder("gc"));
    cfg.force_takeover = force;
    let (store, layout) = bucket.volume(name).await?;
    let vol = Volume::open(store, layout, cfg).await?;
    let gc_cfg = GcConfig { grace, ..GcConfig::default() };
    let mut gc = Gc::new();
    let mut first_stats = (0, false);
    let res = async {
        let first = gc.run(&vol, &gc_cfg).await?;
        first_stats = (first.resealed, first.rotation_finished);
        if first.pending > 0 {
            println!(
                "rewrote {} objects; waiting {grace:?} before removing {} dead objects",
                first.rewritten_objects, first.pending
            );
            tokio::time::sleep(grace).await;
        }
        gc.run(&vol, &gc_cfg).await
    }
    .await;
    vol.close().await?;
    let r = res?;
    let (first_resealed, first_finished) = first_stats;
    println!(
        "gc done: log {} for {} live; deleted {}, tombstoned {}, checkpoints deleted {}",
        format_size(r.log_bytes),
        format_size(r.live_bytes),
        r.deleted,
        r.tombstoned,
        r.checkpoints_deleted
    );
    if r.resealed > 0 || r.rotation_finished {
        println!("key rotation: sealed {} objects again under the new key", first_resealed + r.resealed);
    }
    if r.rotation_finished || first_finished {
        println!("key rotation complete: the old key is no longer needed");
    }
    Ok(())
}

/// How often a standby looks at the lease (sooner when it is about to expire).
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// Opens the volume once its lease is free: while another writer holds it, waits and retries.
async fn open_standby(store: Arc<dyn ObjectStore>, layout: Layout, cfg: WriterConfig) -> Result<Arc<Volume>> {
    let mut announced = false;
    loop {
        match Volume::open(store.clone(), layout.clone(), cfg.clone()).await {
            Err(VolumeError::LeaseHeld { holder, epoch, remaining_secs }) => {
                if !announced {
                    println!(
                        "meridian volume: standing by: served by {holder} (epoch {epoch}); taking over when its lease \
                         runs out"
                    );
                    announced = true;
                }
                let wait = Duration::from_secs(remaining_secs).clamp(Duration::from_millis(200), STANDBY_POLL);
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    if !crate::allocator::fix_thresholds() {
        tracing::debug!("allocator thresholds left as they are (not glibc)");
    }
    let listener = TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    let mut cfg =
        WriterConfig::new(args.cache_dir.clone().unwrap_or_else(default_cache_dir), holder(&format!("nbd://{addr}")));
    cfg.cache_pages = (args.map_cache_mib.max(1) << 20) / 4096;
    cfg.uploads = args.uploads.max(1);
    cfg.lease_ttl = args.lease_ttl.max(Duration::from_secs(3));
    cfg.force_takeover = args.force_takeover;
    cfg.checkpoint_bytes = format::parse_size(&args.checkpoint_every)?;
    cfg.journal_bytes = format::parse_size(&args.journal_size)?;
    cfg.cache_bytes = format::parse_size(&args.cache_size)?;
    cfg.read_ahead_bytes = format::parse_size(&args.read_ahead)?;
    cfg.max_dirty_age = args.max_dirty_age.max(Duration::from_secs(1));
    let (store, layout) = args.bucket.volume(&args.name).await?;
    let vol =
        if args.standby { open_standby(store, layout, cfg).await? } else { Volume::open(store, layout, cfg).await? };
    tokio::spawn(vol.clone().run_background());
    if !args.gc_interval.is_zero() {
        let (vol, interval) = (vol.clone(), args.gc_interval);
        let gc_cfg = GcConfig { grace: args.gc_grace, ..GcConfig::default() };
        tokio::spawn(async move {
            let mut gc = Gc::new();
            loop {
                tokio::time::sleep(interval).await;
                if let Err(e) = gc.run(&vol, &gc_cfg).await {
                    if vol.is_failed() {
                        return;
                    }
                    warn!(error = %e, "gc pass failed");
                }
            }
        });
    }
    let (stop_metrics, metrics_stopped) = tokio::sync::watch::channel(false);
    if let Some(addr) = args.metrics_listen {
        serve_metrics(addr, vol.clone(), metrics_stopped).await?;
    }
    let export = Export {
        name: args.name.clone(),
        description: format!("meridian volume {}", args.name),
        volume: vol.clone(),
        read_only: false,
    };
    // Before the line below, so a signal sent as soon as it appears is caught.
    let signalled = meridian_http::shutdown_signal();
    // Tests and scripts read this line to learn the port.
    println!("meridian volume: serving {} ({} bytes) on nbd://{addr}/{}", args.name, vol.size(), args.name);
    let failed = {
        let vol = vol.clone();
        async move { vol.wait_failed().await }
    };
    let stop = async {
        tokio::select! {
            _ = signalled => None,
            why = failed => Some(why),
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<Option<String>>();
    let server = nbd::serve(listener, export, async move {
        let why = stop.await;
        let _ = tx.send(why);
    });
    server.await?;
    let _ = stop_metrics.send(true);
    match rx.await.ok().flatten() {
        Some(why) => Err(VolumeError::Failed(why)),
        None => {
            info!("shutting down: flushing, checkpointing, releasing the lease");
            vol.close().await
        }
    }
}

/// Serves `GET /metrics` for `vol` on `addr` through the shared HTTP layer (admin limits)
/// until `stopped` turns true.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    vol: Arc<Volume>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| VolumeError::Invalid(format!("cannot listen on {addr} for metrics (--metrics-listen): {e}")))?;
    // Tests and scripts read this line to learn the port.
    println!("meridian volume: metrics on http://{}/metrics", listener.local_addr()?);
    let handler = meridian_http::handler_fn(move |req, info| {
        let vol = vol.clone();
        async move {
            info.notes.set_operation("metrics");
            metrics_response(&vol, &req)
        }
    });
    let server = meridian_http::Server::new(meridian_http::Policy::admin());
    tokio::spawn(async move {
        let until_stopped = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        if let Err(e) = server.serve(listener, handler, until_stopped).await {
            warn!(error = %e, "the metrics listener failed");
        }
    });
    Ok(())
}

fn metrics_response<B>(vol: &Volume, req: &http::Request<B>) -> http::Response<meridian_http::ResponseBody> {
    use http::StatusCode;
    if req.uri().path() != "/metrics" {
        return meridian_http::text_response(StatusCode::NOT_FOUND, "only /metrics is served here");
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return meridian_http::text_response(StatusCode::METHOD_NOT_ALLOWED, "use GET");
    }
    match vol.metrics().encode(vol.backlog()) {
        Ok(text) => {
            let mut resp = http::Response::new(meridian_http::full(text));
            resp.headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
            resp
        }
        Err(e) => meridian_http::text_response(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding failed: {e}")),
    }
}
