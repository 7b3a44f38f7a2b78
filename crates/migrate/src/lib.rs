//! `meridian migrate`: copies every object of a bucket in any S3 service (AWS, MinIO, Ceph RGW,
//! R2, another Meridian…) into a Meridian bucket, through both services' S3 APIs.
//!
//! The source is listed in key order; the destination is listed alongside (a merge of two
//! sorted listings), so an object the destination already holds with the same size and ETag is
//! not copied again. Up to `--parallel` objects are copied at once, each verified
//! (`copy.rs`). The checkpoint (`checkpoint.rs`) records the last key up to which every object
//! is handled; a run started again with the same checkpoint file lists from there.

mod checkpoint;
mod copy;
mod progress;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::DateTime;
use clap::Args;
use meridian_common::errors::chain;
use meridian_common::size::format_size;
use meridian_s3_client::S3Endpoint;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub use checkpoint::{Checkpoint, CheckpointError, Failure};
pub use copy::CopyError;
use progress::{Figures, Progress, format_duration};

/// S3's smallest part (all but the last) and largest part.
const MIN_PART: u64 = 5 << 20;
const MAX_PART: u64 = 5 << 30;
/// Attempts per object before it is reported as failed.
const ATTEMPTS: u32 = 3;
/// How often the checkpoint is written (when something moved) and the progress redrawn.
const TICK: Duration = Duration::from_secs(1);

#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    /// The source service's endpoint URL (omit for AWS).
    #[arg(long, env = "MERIDIAN_MIGRATE_SOURCE_ENDPOINT")]
    pub source_endpoint: Option<String>,
    /// The bucket to copy from.
    #[arg(long)]
    pub source_bucket: String,
    /// Copy only the keys starting with this prefix (keys keep their names).
    #[arg(long, default_value = "")]
    pub source_prefix: String,
    #[arg(long, default_value = "us-east-1")]
    pub source_region: String,
    /// The source's access key id (prefer the environment variable).
    #[arg(long, env = "MERIDIAN_MIGRATE_SOURCE_ACCESS_KEY", hide_env_values = true)]
    pub source_access_key: String,
    #[arg(long, env = "MERIDIAN_MIGRATE_SOURCE_SECRET_KEY", hide_env_values = true)]
    pub source_secret_key: String,
    /// PEM CA certificates to trust for an https:// source besides the system's roots.
    #[arg(long)]
    pub source_ca_file: Option<PathBuf>,
    /// The Meridian node's S3 endpoint.
    #[arg(long, env = "MERIDIAN_ENDPOINT", default_value = "http://127.0.0.1:9400")]
    pub endpoint: String,
    /// The Meridian bucket to copy into (it must exist).
    #[arg(long)]
    pub bucket: String,
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub access_key: String,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub secret_key: String,
    /// PEM CA certificates to trust for an https:// Meridian endpoint.
    #[arg(long, env = "MERIDIAN_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The checkpoint file: written as the copy goes; a run with the same file resumes there.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Objects copied at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: u16,
    /// Objects larger than this are sent as multipart uploads of parts this size (5MiB to 5GiB).
    #[arg(long, default_value = "16MiB", value_parser = parse_part_size)]
    pub part_size: u64,
    /// Without a terminal: print a progress line this often.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    pub progress_every: Duration,
}

fn parse_part_size(text: &str) -> Result<u64, String> {
    let size = meridian_common::size::parse_size(text).map_err(|e| e.to_string())?;
    if (MIN_PART..=MAX_PART).contains(&size) {
        Ok(size)
    } else {
        Err(format!("a part is 5MiB to 5GiB (S3's limits), not {}", format_size(size)))
    }
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    meridian_common::duration::parse_duration(text).map_err(|e| e.to_string())
}

/// Why a migration stopped before the end of the listing.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    CaFile(#[from] meridian_s3_client::CaFileError),
    #[error("cannot list the {side} bucket {bucket}: {reason}")]
    List { side: &'static str, bucket: String, reason: String },
    #[error("a copy task stopped: {0}")]
    Task(String),
    #[error("the destination bucket {bucket} is not usable: {reason}")]
    Destination { bucket: String, reason: String },
}

/// Runs `meridian migrate` on its own runtime. Exit code 0: everything copied or present;
/// 1: some objects could not be copied (listed in the report); 2: the migration stopped.
pub fn cli_main(args: MigrateArgs) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(migrate(&args)) {
        Ok(cp) => {
            print!("{}", report(&cp));
            if cp.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The final report: totals of the pass, then every failure kept.
pub fn report(cp: &Checkpoint) -> String {
    let mut text = format!(
        "migrated {} into {}: {} objects: {} copied ({}), {} already present ({}), {} failed\n",
        cp.source,
        cp.destination,
        cp.passed,
        cp.copied,
        format_size(cp.copied_bytes),
        cp.present,
        format_size(cp.present_bytes),
        cp.failed
    );
    for f in &cp.failures {
        text.push_str(&format!("could not copy {}: {}\n", f.key, f.reason));
    }
    if cp.failed > cp.failures.len() as u64 {
        text.push_str(&format!("… and {} more failures\n", cp.failed - cp.failures.len() as u64));
    }
    text
}

/// One object of a listing.
#[derive(Debug, Clone)]
struct Entry {
    key: String,
    size: u64,
    etag: String,
    modified: Option<DateTime>,
}

/// A listing of a bucket in key order, page by page, from after a key.
struct Listing {
    client: Client,
    side: &'static str,
    bucket: String,
    prefix: String,
    start_after: Option<String>,
    token: Option<String>,
    done: bool,
}

impl Listing {
    fn new(client: &Client, side: &'static str, bucket: &str, prefix: &str, after: Option<String>) -> Listing {
        Listing {
            client: client.clone(),
            side,
            bucket: bucket.into(),
            prefix: prefix.into(),
            start_after: after,
            token: None,
            done: false,
        }
    }

    /// The next page; `None` after the last.
    async fn next_page(&mut self) -> Result<Option<Vec<Entry>>, MigrateError> {
        if self.done {
            return Ok(None);
        }
        let mut req = self.client.list_objects_v2().bucket(&self.bucket).set_continuation_token(self.token.take());
        if !self.prefix.is_empty() {
            req = req.prefix(&self.prefix);
        }
        let out = req.set_start_after(self.start_after.clone()).send().await.map_err(|e| MigrateError::List {
            side: self.side,
            bucket: self.bucket.clone(),
            reason: chain(&e),
        })?;
        self.token = out.next_continuation_token.clone().filter(|_| out.is_truncated == Some(true));
        self.done = self.token.is_none();
        let entries = out
            .contents
            .unwrap_or_default()
            .into_iter()
            .filter_map(|o| {
                Some(Entry {
                    key: o.key?,
                    size: o.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    etag: o.e_tag.as_deref().map(copy::bare_etag).unwrap_or_default().to_string(),
                    modified: o.last_modified,
                })
            })
            .collect();
        Ok(Some(entries))
    }
}

/// The destination's listing walked alongside the source's (both in key order).
struct DestinationCursor {
    listing: Listing,
    ahead: VecDeque<Entry>,
}

impl DestinationCursor {
    /// The destination's object named `key`, if any. Keys must be asked in increasing order.
    async fn find(&mut self, key: &str) -> Result<Option<Entry>, MigrateError> {
        loop {
            while self.ahead.front().is_some_and(|e| e.key.as_str() < key) {
                self.ahead.pop_front();
            }
            if !self.ahead.is_empty() {
                break;
            }
            match self.listing.next_page().await? {
                Some(page) => self.ahead.extend(page),
                None => return Ok(None),
            }
        }
        Ok(self.ahead.front().filter(|e| e.key == key).cloned())
    }
}

/// The destination already holds this copy: same size and ETag, or — where one side has a
/// multipart ETag, which says nothing of the bytes — same size and written no earlier than the
/// source's object.
fn already_present(src: &Entry, dst: &Entry) -> bool {
    if src.size != dst.size {
        return false;
    }
    if src.etag == dst.etag {
        return true;
    }
    let opaque = copy::is_multipart_etag(&src.etag) || copy::is_multipart_etag(&dst.etag);
    opaque && matches!((src.modified, dst.modified), (Some(s), Some(d)) if d.secs() >= s.secs())
}

/// A source object in listing order, with what the destination holds.
struct Item {
    seq: u64,
    entry: Entry,
    present: bool,
}

enum Outcome {
    Copied(u64),
    Present(u64),
    Failed(String),
}

/// Lists the source from `after` and sends every object, with whether the destination already
/// holds it, to `items`.
async fn list_source(
    mut source: Listing,
    mut destination: DestinationCursor,
    items: mpsc::Sender<Item>,
) -> Result<(), MigrateError> {
    let mut seq = 0;
    while let Some(page) = source.next_page().await? {
        for entry in page {
            let present = destination.find(&entry.key).await?.is_some_and(|dst| already_present(&entry, &dst));
            if items.send(Item { seq, entry, present }).await.is_err() {
                return Ok(()); // the run stopped
            }
            seq += 1;
        }
    }
    Ok(())
}

/// Counts the source's objects and bytes (for the progress bar's total and time left).
async fn count_source(mut source: Listing) -> Result<(u64, u64), MigrateError> {
    let (mut objects, mut bytes) = (0, 0);
    while let Some(page) = source.next_page().await? {
        objects += page.len() as u64;
        bytes += page.iter().map(|e| e.size).sum::<u64>();
    }
    Ok((objects, bytes))
}

/// Applies outcomes to the checkpoint in listing order, so `after` only moves past an object
/// once every object before it is handled.
struct Tracker {
    cp: Checkpoint,
    next: u64,
    waiting: BTreeMap<u64, (String, Outcome)>,
    figures: Figures,
    dirty: bool,
}

impl Tracker {
    fn complete(&mut self, seq: u64, key: String, outcome: Outcome) {
        self.waiting.insert(seq, (key, outcome));
        while let Some((key, outcome)) = self.waiting.remove(&self.next) {
            self.apply(key, outcome);
            self.next += 1;
        }
    }

    fn apply(&mut self, key: String, outcome: Outcome) {
        let cp = &mut self.cp;
        match outcome {
            Outcome::Copied(bytes) => {
                cp.copied += 1;
                cp.copied_bytes += bytes;
                self.figures.bytes_this_run += bytes;
            }
            Outcome::Present(bytes) => {
                cp.present += 1;
                cp.present_bytes += bytes;
                self.figures.bytes_this_run += bytes;
            }
            Outcome::Failed(reason) => cp.record_failure(&key, reason),
        }
        cp.passed += 1;
        cp.after = Some(key);
        self.figures.passed = cp.passed;
        self.figures.passed_this_run += 1;
        self.dirty = true;
    }
}

/// Copies one object, trying again after a failure (the error of the last attempt is reported).
async fn copy_with_retries(source: Arc<Side>, dest: Arc<Side>, key: &str, part_size: u64) -> Outcome {
    let mut attempt = 1;
    loop {
        match copy::copy_object(&source.client, &source.bucket, &dest.client, &dest.bucket, key, part_size).await {
            Ok(bytes) => return Outcome::Copied(bytes),
            Err(e) if attempt >= ATTEMPTS => return Outcome::Failed(e.to_string()),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                attempt += 1;
            }
        }
    }
}

/// A bucket and the client reaching it.
struct Side {
    client: Client,
    bucket: String,
}

fn clients(args: &MigrateArgs) -> Result<(Side, Side), MigrateError> {
    let source = S3Endpoint {
        endpoint: args.source_endpoint.clone(),
        region: args.source_region.clone(),
        access_key: args.source_access_key.clone(),
        secret_key: args.source_secret_key.clone(),
        ca_file: args.source_ca_file.clone(),
    };
    let dest = S3Endpoint {
        endpoint: Some(args.endpoint.clone()),
        region: args.region.clone(),
        access_key: args.access_key.clone(),
        secret_key: args.secret_key.clone(),
        ca_file: args.ca_file.clone(),
    };
    Ok((
        Side { client: meridian_s3_client::client(&source, "migrate-source")?, bucket: args.source_bucket.clone() },
        Side { client: meridian_s3_client::client(&dest, "migrate-destination")?, bucket: args.bucket.clone() },
    ))
}

/// Runs the migration to the end of the source's listing; returns the final checkpoint.
pub async fn migrate(args: &MigrateArgs) -> Result<Checkpoint, MigrateError> {
    let source_name =
        format!("{}/{}/{}", args.source_endpoint.as_deref().unwrap_or("aws"), args.source_bucket, args.source_prefix);
    let dest_name = format!("{}/{}", args.endpoint, args.bucket);
    let cp = Checkpoint::load(&args.checkpoint, &source_name, &dest_name)?;
    let (source, dest) = clients(args)?;
    dest.client
        .head_bucket()
        .bucket(&dest.bucket)
        .send()
        .await
        .map_err(|e| MigrateError::Destination { bucket: dest.bucket.clone(), reason: chain(&e) })?;
    if let Some(after) = &cp.after {
        eprintln!("migrate: resuming after {after:?} ({} objects handled before)", cp.passed);
    }
    let prefix = &args.source_prefix;
    let census = tokio::spawn(count_source(Listing::new(&source.client, "source", &source.bucket, prefix, None)));
    let (items_tx, items) = mpsc::channel(usize::from(args.parallel) * 4);
    let source_listing = Listing::new(&source.client, "source", &source.bucket, prefix, cp.after.clone());
    let dest_listing = Listing::new(&dest.client, "destination", &dest.bucket, prefix, cp.after.clone());
    let cursor = DestinationCursor { listing: dest_listing, ahead: VecDeque::new() };
    let lister = tokio::spawn(list_source(source_listing, cursor, items_tx));
    let figures = Figures { passed: cp.passed, ..Default::default() };
    let mut tracker = Tracker { cp, next: 0, waiting: BTreeMap::new(), figures, dirty: false };
    let run = Run { source: Arc::new(source), dest: Arc::new(dest), args };
    let result = run.drive(items, &mut tracker, census).await;
    let listed = match lister.await {
        Ok(listed) => listed,
        Err(e) => Err(MigrateError::List { side: "source", bucket: args.source_bucket.clone(), reason: e.to_string() }),
    };
    let cp = &mut tracker.cp;
    cp.finished = result.is_ok() && listed.is_ok();
    cp.save(&args.checkpoint)?;
    listed?;
    result?;
    Ok(tracker.cp)
}

struct Run<'a> {
    source: Arc<Side>,
    dest: Arc<Side>,
    args: &'a MigrateArgs,
}

impl Run<'_> {
    /// Dispatches the listed objects to at most `--parallel` copies, applies their outcomes,
    /// writes the checkpoint and redraws the progress every tick.
    async fn drive(
        &self,
        mut items: mpsc::Receiver<Item>,
        tracker: &mut Tracker,
        mut census: tokio::task::JoinHandle<Result<(u64, u64), MigrateError>>,
    ) -> Result<(), MigrateError> {
        let mut progress = Progress::new(self.args.progress_every);
        let mut running = JoinSet::new();
        let mut tick = tokio::time::interval(TICK);
        let mut listed_all = false;
        let mut counted = false;
        while !(listed_all && running.is_empty()) {
            let room = running.len() < usize::from(self.args.parallel);
            tokio::select! {
                item = items.recv(), if room && !listed_all => match item {
                    Some(item) if item.present => {
                        tracker.complete(item.seq, item.entry.key, Outcome::Present(item.entry.size));
                    }
                    Some(item) => self.spawn_copy(&mut running, item),
                    None => listed_all = true,
                },
                Some(done) = running.join_next() => {
                    let (seq, key, outcome) = done.map_err(|e| MigrateError::Task(e.to_string()))?;
                    tracker.complete(seq, key, outcome);
                }
                counted_now = &mut census, if !counted => {
                    counted = true;
                    // Without the count the bar only has no total; the copy goes on.
                    tracker.figures.total = counted_now.ok().and_then(Result::ok);
                }
                _ = tick.tick() => {
                    if tracker.dirty {
                        tracker.cp.save(&self.args.checkpoint)?;
                        tracker.dirty = false;
                    }
                    progress.update(&tracker.figures);
                }
            }
        }
        census.abort();
        progress.update(&tracker.figures);
        progress.finish();
        let secs = progress.elapsed().as_secs_f64().max(0.001);
        let f = &tracker.figures;
        eprintln!(
            "migrate: this run handled {} objects ({}) in {}: {:.0} objects/s, {:.2} MiB/s",
            f.passed_this_run,
            format_size(f.bytes_this_run),
            format_duration(progress.elapsed()),
            f.passed_this_run as f64 / secs,
            f.bytes_this_run as f64 / secs / (1 << 20) as f64
        );
        Ok(())
    }

    fn spawn_copy(&self, running: &mut JoinSet<(u64, String, Outcome)>, item: Item) {
        let (source, dest, part_size) = (self.source.clone(), self.dest.clone(), self.args.part_size);
        running.spawn(async move {
            let outcome = copy_with_retries(source, dest, &item.entry.key, part_size).await;
            (item.seq, item.entry.key, outcome)
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(size: u64, etag: &str, modified: i64) -> Entry {
        Entry { key: "k".into(), size, etag: etag.into(), modified: Some(DateTime::from_secs(modified)) }
    }

    #[test]
    fn an_object_is_present_with_the_same_size_and_etag_or_a_newer_multipart_copy() {
        let plain = entry(10, "aa", 100);
        assert!(already_present(&plain, &entry(10, "aa", 50)));
        assert!(!already_present(&plain, &entry(10, "bb", 200)), "same size, other bytes");
        assert!(!already_present(&plain, &entry(11, "aa", 200)));
        assert!(already_present(&plain, &entry(10, "cc-2", 100)), "multipart copy written after");
        assert!(!already_present(&plain, &entry(10, "cc-2", 99)), "multipart copy older than the source");
        assert!(!already_present(&entry(10, "dd-3", 100), &entry(10, "aa", 99)));
    }

    #[test]
    fn part_sizes_stay_within_s3_limits() {
        assert_eq!(parse_part_size("16MiB"), Ok(16 << 20));
        assert!(parse_part_size("1MiB").unwrap_err().contains("5MiB to 5GiB"));
        assert!(parse_part_size("6GiB").is_err());
    }
}
