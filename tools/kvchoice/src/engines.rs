//! The three candidate engines behind one small interface that mirrors what
//! `crates/meta/src/embedded.rs` does with redb: one writer that applies a batch of logical
//! transactions in a single durable commit, and readers that take a read snapshot per call.
//!
//! Every engine is configured for durability on every commit:
//! - redb: `Durability::Immediate` (the default, set explicitly);
//! - fjall: `PersistMode::SyncAll` on every write transaction (journal `fsync`);
//! - SQLite: `journal_mode=WAL`, `synchronous=FULL`.
//!
//! Each engine gets a 64 MiB cache (redb page cache, fjall block cache, SQLite page cache per
//! connection), the size the embedded store uses today.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::data::{HISTORY, Txn, decode_header, encode_log, encode_record};

/// 64 MiB unless `KVCHOICE_CACHE_MB` says otherwise (a diagnostic knob).
fn cache_bytes() -> usize {
    std::env::var("KVCHOICE_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(64)
        << 20
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Redb,
    /// redb with `set_quick_repair(true)` on every commit (fast recovery after a crash, slower
    /// commits). Same file format and read path as `Redb`.
    RedbQuickRepair,
    Fjall,
    Sqlite,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Redb => "redb",
            Kind::RedbQuickRepair => "redb+quick_repair",
            Kind::Fjall => "fjall",
            Kind::Sqlite => "sqlite",
        }
    }

    pub fn parse(s: &str) -> Kind {
        match s {
            "redb" => Kind::Redb,
            "redb+quick_repair" => Kind::RedbQuickRepair,
            "fjall" => Kind::Fjall,
            "sqlite" => Kind::Sqlite,
            other => panic!("unknown engine {other}"),
        }
    }
}

pub trait Store: Send + Sync {
    /// The single writer. Only one may exist at a time.
    fn writer(&self) -> Box<dyn Writer + '_>;
    /// A reader for one thread.
    fn reader(&self) -> Box<dyn Reader + '_>;
}

pub trait Writer: Send {
    /// Applies `txns` in order in ONE durable commit; pushes each one's revision to `revs`.
    /// Each transaction reads its key, compares (here: decodes the version) and writes the
    /// record, an index key and a history-log entry keyed by the new revision.
    fn commit(&mut self, txns: &[Txn], revs: &mut Vec<u64>);
    /// Bulk-loads records `range` (no history) in one durable commit.
    fn load(&mut self, range: std::ops::Range<u64>);
    /// The newest committed revision.
    fn revision(&mut self) -> u64;
}

pub trait Reader: Send {
    /// Point get in its own read snapshot; returns the value length.
    fn get(&mut self, key: &[u8]) -> Option<usize>;
    /// Reads (and copies out) up to `limit` pairs in `[start, end)` in one read snapshot.
    fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> usize;
}

/// Opens (creating if needed) the store of `kind` in directory `dir`.
pub fn open(kind: Kind, dir: &Path) -> Box<dyn Store> {
    std::fs::create_dir_all(dir).expect("create store dir");
    match kind {
        Kind::Redb => Box::new(RedbStore::open(dir, false)),
        Kind::RedbQuickRepair => Box::new(RedbStore::open(dir, true)),
        Kind::Fjall => Box::new(FjallStore::open(dir)),
        Kind::Sqlite => Box::new(SqliteStore::open(dir)),
    }
}

fn trim_start(oldest: &mut u64, newest: u64) -> std::ops::Range<u64> {
    let from = *oldest;
    while *oldest + HISTORY <= newest {
        *oldest += 1;
    }
    from..*oldest
}

// ----- redb ------------------------------------------------------------------------------------

mod redb_impl {
    use super::*;
    use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

    const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
    const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

    pub struct RedbStore {
        db: Arc<Database>,
        quick_repair: bool,
    }

    impl RedbStore {
        pub fn open(dir: &Path, quick_repair: bool) -> Self {
            let db = Database::builder()
                .set_cache_size(cache_bytes())
                .create(dir.join("db.redb"))
                .expect("redb open");
            let w = db.begin_write().expect("begin_write");
            {
                w.open_table(KV).expect("kv");
                w.open_table(LOG).expect("log");
                w.open_table(META).expect("meta");
            }
            w.commit().expect("commit");
            RedbStore {
                db: Arc::new(db),
                quick_repair,
            }
        }
    }

    impl Store for RedbStore {
        fn writer(&self) -> Box<dyn Writer + '_> {
            let r = self.db.begin_read().expect("begin_read");
            let log = r.open_table(LOG).expect("log");
            let meta = r.open_table(META).expect("meta");
            let rev = meta
                .get("revision")
                .expect("get")
                .map(|v| v.value())
                .unwrap_or(0);
            let oldest = log
                .first()
                .expect("first")
                .map(|(k, _)| k.value())
                .unwrap_or(rev + 1);
            Box::new(RedbWriter {
                db: &self.db,
                quick_repair: self.quick_repair,
                oldest,
            })
        }

        fn reader(&self) -> Box<dyn Reader + '_> {
            Box::new(RedbReader { db: &self.db })
        }
    }

    struct RedbWriter<'a> {
        db: &'a Database,
        quick_repair: bool,
        oldest: u64,
    }

    impl RedbWriter<'_> {
        fn begin(&self) -> redb::WriteTransaction {
            let mut w = self.db.begin_write().expect("begin_write");
            w.set_durability(Durability::Immediate).expect("durability");
            w.set_quick_repair(self.quick_repair);
            w
        }
    }

    impl Writer for RedbWriter<'_> {
        fn commit(&mut self, txns: &[Txn], revs: &mut Vec<u64>) {
            let w = self.begin();
            {
                let mut kv = w.open_table(KV).expect("kv");
                let mut log = w.open_table(LOG).expect("log");
                let mut meta = w.open_table(META).expect("meta");
                let mut rev = meta
                    .get("revision")
                    .expect("get")
                    .map(|v| v.value())
                    .unwrap_or(0);
                for t in txns {
                    let cur = kv
                        .get(t.key.as_slice())
                        .expect("get")
                        .map(|v| decode_header(v.value()));
                    rev += 1;
                    let record = encode_record(cur, rev, &t.body);
                    kv.insert(t.key.as_slice(), record.as_slice())
                        .expect("insert");
                    kv.insert(t.index_key.as_slice(), rev.to_be_bytes().as_slice())
                        .expect("insert");
                    log.insert(rev, encode_log(t, &record).as_slice())
                        .expect("insert");
                    revs.push(rev);
                }
                meta.insert("revision", rev).expect("insert");
                for old in trim_start(&mut self.oldest, rev) {
                    log.remove(old).expect("remove");
                }
            }
            w.commit().expect("commit");
        }

        fn load(&mut self, range: std::ops::Range<u64>) {
            let w = self.begin();
            {
                let mut kv = w.open_table(KV).expect("kv");
                for i in range {
                    let (k, v) = crate::data::loaded_record(i);
                    kv.insert(k.as_slice(), v.as_slice()).expect("insert");
                }
            }
            w.commit().expect("commit");
        }

        fn revision(&mut self) -> u64 {
            let r = self.db.begin_read().expect("begin_read");
            let meta = r.open_table(META).expect("meta");
            meta.get("revision")
                .expect("get")
                .map(|v| v.value())
                .unwrap_or(0)
        }
    }

    struct RedbReader<'a> {
        db: &'a Database,
    }

    impl Reader for RedbReader<'_> {
        fn get(&mut self, key: &[u8]) -> Option<usize> {
            let r = self.db.begin_read().expect("begin_read");
            let kv = r.open_table(KV).expect("kv");
            kv.get(key).expect("get").map(|v| v.value().len())
        }

        fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> usize {
            let r = self.db.begin_read().expect("begin_read");
            let kv = r.open_table(KV).expect("kv");
            let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(limit);
            for entry in kv.range::<&[u8]>(start..end).expect("range").take(limit) {
                let (k, v) = entry.expect("entry");
                out.push((k.value().to_vec(), v.value().to_vec()));
            }
            out.len()
        }
    }
}
use redb_impl::RedbStore;

// ----- fjall -----------------------------------------------------------------------------------

mod fjall_impl {
    use super::*;
    use fjall::{
        KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase,
        SingleWriterTxKeyspace,
    };

    pub struct FjallStore {
        db: SingleWriterTxDatabase,
        kv: SingleWriterTxKeyspace,
        log: SingleWriterTxKeyspace,
        meta: SingleWriterTxKeyspace,
    }

    impl FjallStore {
        pub fn open(dir: &Path) -> Self {
            let db = SingleWriterTxDatabase::builder(dir)
                .cache_size(cache_bytes() as u64)
                .open()
                .expect("fjall open");
            let kv = db
                .keyspace("kv", KeyspaceCreateOptions::default)
                .expect("kv");
            let log = db
                .keyspace("log", KeyspaceCreateOptions::default)
                .expect("log");
            let meta = db
                .keyspace("meta", KeyspaceCreateOptions::default)
                .expect("meta");
            FjallStore { db, kv, log, meta }
        }

        fn read_revision(&self, r: &impl Readable) -> u64 {
            r.get(&self.meta, "revision")
                .expect("get")
                .map(|v| u64::from_be_bytes(v[..8].try_into().expect("u64")))
                .unwrap_or(0)
        }
    }

    impl Store for FjallStore {
        fn writer(&self) -> Box<dyn Writer + '_> {
            let snap = self.db.read_tx();
            let rev = self.read_revision(&snap);
            let oldest = match snap.first_key_value(&self.log) {
                Some(g) => {
                    let (k, _) = g.into_inner().expect("first");
                    u64::from_be_bytes(k[..8].try_into().expect("u64"))
                }
                None => rev + 1,
            };
            Box::new(FjallWriter {
                store: self,
                oldest,
            })
        }

        fn reader(&self) -> Box<dyn Reader + '_> {
            Box::new(FjallReader { store: self })
        }
    }

    struct FjallWriter<'a> {
        store: &'a FjallStore,
        oldest: u64,
    }

    impl Writer for FjallWriter<'_> {
        fn commit(&mut self, txns: &[Txn], revs: &mut Vec<u64>) {
            let s = self.store;
            let mut w = s.db.write_tx().durability(Some(PersistMode::SyncAll));
            let mut rev = s.read_revision(&w);
            for t in txns {
                let cur = w
                    .get(&s.kv, t.key.as_slice())
                    .expect("get")
                    .map(|v| decode_header(&v));
                rev += 1;
                let record = encode_record(cur, rev, &t.body);
                let entry = encode_log(t, &record);
                w.insert(&s.kv, t.key.as_slice(), record);
                w.insert(&s.kv, t.index_key.as_slice(), rev.to_be_bytes());
                w.insert(&s.log, rev.to_be_bytes(), entry);
                revs.push(rev);
            }
            w.insert(&s.meta, "revision", rev.to_be_bytes());
            for old in trim_start(&mut self.oldest, rev) {
                w.remove(&s.log, old.to_be_bytes());
            }
            w.commit().expect("commit");
        }

        fn load(&mut self, range: std::ops::Range<u64>) {
            let s = self.store;
            let mut w = s.db.write_tx().durability(Some(PersistMode::SyncAll));
            for i in range {
                let (k, v) = crate::data::loaded_record(i);
                w.insert(&s.kv, k, v);
            }
            w.commit().expect("commit");
        }

        fn revision(&mut self) -> u64 {
            self.store.read_revision(&self.store.db.read_tx())
        }
    }

    struct FjallReader<'a> {
        store: &'a FjallStore,
    }

    impl Reader for FjallReader<'_> {
        fn get(&mut self, key: &[u8]) -> Option<usize> {
            let snap = self.store.db.read_tx();
            snap.get(&self.store.kv, key).expect("get").map(|v| v.len())
        }

        fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> usize {
            let snap = self.store.db.read_tx();
            let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(limit);
            for g in snap.range(&self.store.kv, start..end).take(limit) {
                let (k, v) = g.into_inner().expect("entry");
                out.push((k.to_vec(), v.to_vec()));
            }
            out.len()
        }
    }
}
use fjall_impl::FjallStore;

// ----- SQLite ----------------------------------------------------------------------------------

mod sqlite_impl {
    use super::*;
    use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

    pub struct SqliteStore {
        path: PathBuf,
    }

    fn connect(path: &Path) -> Connection {
        let c = Connection::open(path).expect("sqlite open");
        c.busy_timeout(std::time::Duration::from_secs(10))
            .expect("busy_timeout");
        let mode: String = c
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .expect("wal");
        assert_eq!(mode, "wal");
        c.pragma_update(None, "synchronous", "FULL")
            .expect("synchronous");
        c.pragma_update(None, "cache_size", -((cache_bytes() / 1024) as i64))
            .expect("cache_size");
        c
    }

    impl SqliteStore {
        pub fn open(dir: &Path) -> Self {
            let path = dir.join("db.sqlite");
            let c = connect(&path);
            c.execute_batch(
                "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS log (rev INTEGER PRIMARY KEY, v BLOB NOT NULL);
                 CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, v INTEGER NOT NULL);",
            )
            .expect("schema");
            SqliteStore { path }
        }
    }

    impl Store for SqliteStore {
        fn writer(&self) -> Box<dyn Writer + '_> {
            let conn = connect(&self.path);
            let rev = read_revision(&conn);
            let oldest: u64 = conn
                .query_row("SELECT min(rev) FROM log", [], |r| {
                    r.get::<_, Option<i64>>(0)
                })
                .expect("min")
                .map(|v| v as u64)
                .unwrap_or(rev + 1);
            Box::new(SqliteWriter { conn, oldest })
        }

        fn reader(&self) -> Box<dyn Reader + '_> {
            Box::new(SqliteReader {
                conn: connect(&self.path),
            })
        }
    }

    fn read_revision(c: &Connection) -> u64 {
        c.prepare_cached("SELECT v FROM meta WHERE name = 'revision'")
            .expect("prepare")
            .query_row([], |r| r.get::<_, i64>(0))
            .optional()
            .expect("revision")
            .map(|v| v as u64)
            .unwrap_or(0)
    }

    struct SqliteWriter {
        conn: Connection,
        oldest: u64,
    }

    impl Writer for SqliteWriter {
        fn commit(&mut self, txns: &[Txn], revs: &mut Vec<u64>) {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .expect("begin");
            {
                let mut rev = read_revision(&tx);
                let mut get = tx
                    .prepare_cached("SELECT v FROM kv WHERE k = ?1")
                    .expect("prepare");
                let mut put = tx
                    .prepare_cached(
                        "INSERT INTO kv (k, v) VALUES (?1, ?2) \
                         ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                    )
                    .expect("prepare");
                let mut log = tx
                    .prepare_cached("INSERT INTO log (rev, v) VALUES (?1, ?2)")
                    .expect("prepare");
                for t in txns {
                    let cur = get
                        .query_row([t.key.as_slice()], |r| {
                            Ok(decode_header(r.get_ref(0)?.as_blob()?))
                        })
                        .optional()
                        .expect("get");
                    rev += 1;
                    let record = encode_record(cur, rev, &t.body);
                    put.execute(params![t.key.as_slice(), record.as_slice()])
                        .expect("put");
                    put.execute(params![
                        t.index_key.as_slice(),
                        rev.to_be_bytes().as_slice()
                    ])
                    .expect("put");
                    log.execute(params![rev as i64, encode_log(t, &record).as_slice()])
                        .expect("log");
                    revs.push(rev);
                }
                tx.prepare_cached(
                    "INSERT INTO meta (name, v) VALUES ('revision', ?1) \
                     ON CONFLICT (name) DO UPDATE SET v = excluded.v",
                )
                .expect("prepare")
                .execute([rev as i64])
                .expect("meta");
                let trimmed = trim_start(&mut self.oldest, rev);
                if !trimmed.is_empty() {
                    tx.prepare_cached("DELETE FROM log WHERE rev < ?1")
                        .expect("prepare")
                        .execute([trimmed.end as i64])
                        .expect("trim");
                }
            }
            tx.commit().expect("commit");
        }

        fn load(&mut self, range: std::ops::Range<u64>) {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .expect("begin");
            {
                let mut put = tx
                    .prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")
                    .expect("prepare");
                for i in range {
                    let (k, v) = crate::data::loaded_record(i);
                    put.execute(params![k, v]).expect("put");
                }
            }
            tx.commit().expect("commit");
        }

        fn revision(&mut self) -> u64 {
            read_revision(&self.conn)
        }
    }

    struct SqliteReader {
        conn: Connection,
    }

    impl Reader for SqliteReader {
        fn get(&mut self, key: &[u8]) -> Option<usize> {
            self.conn
                .prepare_cached("SELECT v FROM kv WHERE k = ?1")
                .expect("prepare")
                .query_row([key], |r| Ok(r.get_ref(0)?.as_blob()?.len()))
                .optional()
                .expect("get")
        }

        fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> usize {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT k, v FROM kv WHERE k >= ?1 AND k < ?2 ORDER BY k LIMIT ?3")
                .expect("prepare");
            let mut rows = stmt
                .query(params![start, end, limit as i64])
                .expect("query");
            let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(limit);
            while let Some(r) = rows.next().expect("row") {
                out.push((
                    r.get_ref(0)
                        .and_then(|v| Ok(v.as_blob()?.to_vec()))
                        .expect("k"),
                    r.get_ref(1)
                        .and_then(|v| Ok(v.as_blob()?.to_vec()))
                        .expect("v"),
                ));
            }
            out.len()
        }
    }
}
use sqlite_impl::SqliteStore;
