//! Access keys and per-bucket permissions.
//!
//! Keys live in the metadata store, so a key works on every node the moment it is created and
//! stops working everywhere the moment it is deleted: nothing is cached. A key has a name (what
//! grants refer to) and one or more credentials (access key id + secret); rotating adds a new
//! credential and lets the old one expire after a grace period.
//!
//! SigV4 verification needs the secret itself (the signing key is derived from it per day,
//! region and service), so the secret is stored; it is shown once, at creation or rotation, and
//! no API returns it again.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_meta::{Compare, Op, RangeRequest, Revision, Txn};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, EngineResult};
use crate::record::{self, BucketRecord};
use crate::{Engine, keys, now_ms};

/// The name of the key configured on the server (AWS_* variables or generated at first start).
pub const ADMIN_KEY: &str = "admin";
/// Longest grace period of a rotation.
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub access_key_id: String,
    pub secret: String,
    pub created_ms: i64,
    /// Set on credentials replaced by a rotation: valid until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
}

impl Credential {
    fn is_valid(&self, now: i64) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now)
    }

    fn generate() -> Credential {
        Credential {
            access_key_id: random_string("MK", 18, KEY_ID_CHARS),
            secret: random_string("", 40, SECRET_CHARS),
            created_ms: now_ms(),
            expires_at_ms: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub name: String,
    pub created_ms: i64,
    /// May do everything, on every bucket.
    #[serde(default)]
    pub admin: bool,
    /// May create buckets (and then owns them).
    #[serde(default)]
    pub can_create_buckets: bool,
    pub credentials: Vec<Credential>,
}

impl KeyRecord {
    /// The key's access key ids that are valid now.
    pub fn access_key_ids(&self) -> Vec<String> {
        let now = now_ms();
        self.credentials.iter().filter(|c| c.is_valid(now)).map(|c| c.access_key_id.clone()).collect()
    }
}

/// What a key may do on a bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(default)]
    pub read: bool,
    #[serde(default)]
    pub write: bool,
    #[serde(default)]
    pub owner: bool,
}

impl Grant {
    pub fn is_empty(&self) -> bool {
        !(self.read || self.write || self.owner)
    }
}

/// The kind of access a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read objects and list.
    Read,
    /// Create, overwrite and delete objects.
    Write,
    /// Change the bucket itself: delete it, its ACL, its lifecycle.
    Owner,
}

/// Whether `key` (`None`: anonymous) may do `access` on `bucket`.
pub fn authorize(key: Option<&KeyRecord>, bucket: &BucketRecord, access: Access) -> bool {
    let Some(key) = key else {
        return access == Access::Read && bucket.acl_allows_public_read();
    };
    if key.admin {
        return true;
    }
    let grant = bucket.grants.get(&key.name).copied().unwrap_or_default();
    let owns = grant.owner || bucket.owner == key.name;
    match access {
        Access::Read => owns || grant.read || grant.write,
        Access::Write => owns || grant.write,
        Access::Owner => owns,
    }
}

/// Key names: 1–64 characters from `A-Z a-z 0-9 . _ -`.
pub fn validate_key_name(name: &str) -> EngineResult<()> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(EngineError::InvalidArgument(format!(
            "invalid key name {name:?}: use 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'"
        )));
    }
    Ok(())
}

const KEY_ID_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const SECRET_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn random_string(prefix: &str, len: usize, alphabet: &[u8]) -> String {
    let mut out = String::from(prefix);
    for _ in 0..len {
        out.push(alphabet[rand::random_range(0..alphabet.len())] as char);
    }
    out
}

/// Writing a key: its record, and a copy under each of its credentials' access key ids (what a
/// request's signature check reads).
trait PutKey {
    fn then_put_key(self, key: &KeyRecord) -> Txn;
}

impl PutKey for Txn {
    fn then_put_key(self, key: &KeyRecord) -> Txn {
        let encoded = record::encode(key);
        let txn = self.then(Op::put(keys::key_name(&key.name), encoded.clone()));
        key.credentials.iter().fold(txn, |txn, c| txn.then(Op::put(keys::key_id(&c.access_key_id), encoded.clone())))
    }
}

impl Engine {
    async fn read_key(&self, name: &str) -> EngineResult<Option<(KeyRecord, Revision)>> {
        match self.get_for_access(&keys::key_name(name)).await? {
            Some(kv) => Ok(Some((record::decode(&kv.value)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    /// A key by name.
    pub async fn access_key(&self, name: &str) -> EngineResult<KeyRecord> {
        validate_key_name(name)?;
        self.read_key(name).await?.map(|(k, _)| k).ok_or_else(|| EngineError::NoSuchAccessKey(name.to_string()))
    }

    /// The key owning a valid credential with this access key id, and its secret: one read, as
    /// every credential's entry holds a copy of its key's record.
    pub async fn credential(&self, access_key_id: &str) -> EngineResult<Option<(KeyRecord, String)>> {
        let Some(kv) = self.get_for_access(&keys::key_id(access_key_id)).await? else { return Ok(None) };
        let key = match record::decode::<KeyRecord>(&kv.value) {
            Ok(key) => key,
            // Written before entries carried the record: just the key's name.
            Err(_) => match self.read_key(&String::from_utf8_lossy(&kv.value)).await? {
                Some((key, _)) => key,
                None => return Ok(None),
            },
        };
        let now = now_ms();
        let secret = key
            .credentials
            .iter()
            .find(|c| c.access_key_id == access_key_id && c.is_valid(now))
            .map(|c| c.secret.clone());
        Ok(secret.map(|s| (key, s)))
    }

    /// Creates a key with a fresh credential, returned once.
    pub async fn create_access_key(
        &self,
        name: &str,
        can_create_buckets: bool,
    ) -> EngineResult<(KeyRecord, Credential)> {
        validate_key_name(name)?;
        let credential = Credential::generate();
        let key = KeyRecord {
            name: name.to_string(),
            created_ms: now_ms(),
            admin: false,
            can_create_buckets,
            credentials: vec![credential.clone()],
        };
        let txn = Txn::new()
            .when(Compare::absent(keys::key_name(name)))
            .when(Compare::absent(keys::key_id(&credential.access_key_id)))
            .then_put_key(&key);
        if !self.meta().txn(txn).await?.succeeded {
            return Err(EngineError::AccessKeyExists(name.to_string()));
        }
        Ok((key, credential))
    }

    /// Makes the configured credential the admin key's (idempotent; called at start).
    pub async fn ensure_admin_key(&self, access_key_id: &str, secret: &str) -> EngineResult<()> {
        loop {
            let current = self.read_key(ADMIN_KEY).await?;
            let revision = current.as_ref().map_or(0, |(_, r)| *r);
            let mut key = current.map(|(k, _)| k).unwrap_or_else(|| KeyRecord {
                name: ADMIN_KEY.into(),
                created_ms: now_ms(),
                admin: true,
                can_create_buckets: true,
                credentials: Vec::new(),
            });
            if key
                .credentials
                .iter()
                .any(|c| c.access_key_id == access_key_id && c.secret == secret && c.expires_at_ms.is_none())
            {
                return Ok(());
            }
            let replaced: Vec<String> = key.credentials.iter().map(|c| c.access_key_id.clone()).collect();
            key.admin = true;
            key.credentials = vec![Credential {
                access_key_id: access_key_id.to_string(),
                secret: secret.to_string(),
                created_ms: now_ms(),
                expires_at_ms: None,
            }];
            let mut txn = Txn::new().when(Compare::mod_revision_is(keys::key_name(ADMIN_KEY), revision));
            for id in replaced.iter().filter(|id| id.as_str() != access_key_id) {
                txn = txn.then(Op::delete(keys::key_id(id)));
            }
            txn = txn.then_put_key(&key);
            if self.meta().txn(txn).await?.succeeded {
                return Ok(());
            }
        }
    }

    pub async fn list_access_keys(&self) -> EngineResult<Vec<KeyRecord>> {
        let resp = self.meta().range(RangeRequest::prefix(keys::KEY_NAMES_PREFIX)).await?;
        resp.kvs.iter().map(|kv| record::decode(&kv.value)).collect()
    }

    /// Deletes a key and its credentials; requests signed with it fail from now on. Its grants
    /// are removed from every bucket.
    pub async fn delete_access_key(&self, name: &str) -> EngineResult<()> {
        if name == ADMIN_KEY {
            return Err(EngineError::InvalidArgument(
                "the admin key comes from the server's configuration (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY); it cannot be deleted".into(),
            ));
        }
        loop {
            let (key, revision) =
                self.read_key(name).await?.ok_or_else(|| EngineError::NoSuchAccessKey(name.to_string()))?;
            let mut txn = Txn::new()
                .when(Compare::mod_revision_is(keys::key_name(name), revision))
                .then(Op::delete(keys::key_name(name)));
            for c in &key.credentials {
                txn = txn.then(Op::delete(keys::key_id(&c.access_key_id)));
            }
            if self.meta().txn(txn).await?.succeeded {
                break;
            }
        }
        for (bucket, record) in self.list_buckets().await? {
            if record.grants.contains_key(name) {
                self.update_bucket(&bucket, |r| {
                    r.grants.remove(name);
                    Ok(())
                })
                .await?;
            }
        }
        self.settle().await
    }

    /// Adds a new credential to a key; the current ones stay valid for `grace`.
    pub async fn rotate_access_key(&self, name: &str, grace: Duration) -> EngineResult<Credential> {
        if grace > MAX_GRACE {
            return Err(EngineError::InvalidArgument("the grace period is at most 30 days".into()));
        }
        if name == ADMIN_KEY {
            return Err(EngineError::InvalidArgument(
                "rotate the admin key by restarting the server with new AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".into(),
            ));
        }
        loop {
            let (mut key, revision) =
                self.read_key(name).await?.ok_or_else(|| EngineError::NoSuchAccessKey(name.to_string()))?;
            let now = now_ms();
            let until = now + grace.as_millis() as i64;
            let (keep, gone): (Vec<Credential>, Vec<Credential>) =
                key.credentials.into_iter().partition(|c| c.is_valid(now));
            key.credentials = keep
                .into_iter()
                .map(|mut c| {
                    c.expires_at_ms = Some(c.expires_at_ms.map_or(until, |at| at.min(until)));
                    c
                })
                .collect();
            let fresh = Credential::generate();
            key.credentials.push(fresh.clone());
            let mut txn = Txn::new()
                .when(Compare::mod_revision_is(keys::key_name(name), revision))
                .when(Compare::absent(keys::key_id(&fresh.access_key_id)))
                .then_put_key(&key);
            for c in &gone {
                txn = txn.then(Op::delete(keys::key_id(&c.access_key_id)));
            }
            if self.meta().txn(txn).await?.succeeded {
                self.settle().await?;
                return Ok(fresh);
            }
        }
    }

    /// Lets a key create buckets, or not.
    pub async fn set_key_can_create_buckets(&self, name: &str, allowed: bool) -> EngineResult<KeyRecord> {
        loop {
            let (mut key, revision) =
                self.read_key(name).await?.ok_or_else(|| EngineError::NoSuchAccessKey(name.to_string()))?;
            key.can_create_buckets = allowed;
            let txn = Txn::new().when(Compare::mod_revision_is(keys::key_name(name), revision)).then_put_key(&key);
            if self.meta().txn(txn).await?.succeeded {
                self.settle().await?;
                return Ok(key);
            }
        }
    }

    /// Changes a bucket record with `change`, retrying on concurrent changes.
    pub(crate) async fn update_bucket(
        &self,
        bucket: &str,
        change: impl Fn(&mut BucketRecord) -> EngineResult<()>,
    ) -> EngineResult<BucketRecord> {
        loop {
            let (mut record, revision) = self.bucket(bucket).await?;
            change(&mut record)?;
            let txn = Txn::new()
                .when(Compare::mod_revision_is(keys::bucket(bucket), revision))
                .then(Op::put(keys::bucket(bucket), record::encode(&record)));
            if self.meta().txn(txn).await?.succeeded {
                return Ok(record);
            }
        }
    }

    /// Adds (`allow`) or removes (`!allow`) the permissions set in `grant` for key `name`.
    pub async fn set_grant(&self, bucket: &str, name: &str, grant: Grant, allow: bool) -> EngineResult<BucketRecord> {
        if grant.is_empty() {
            return Err(EngineError::InvalidArgument("name at least one of read, write or owner".into()));
        }
        self.access_key(name).await?;
        let record = self
            .update_bucket(bucket, |record| {
                let entry = record.grants.entry(name.to_string()).or_default();
                if allow {
                    entry.read |= grant.read;
                    entry.write |= grant.write;
                    entry.owner |= grant.owner;
                } else {
                    entry.read &= !grant.read;
                    entry.write &= !grant.write;
                    entry.owner &= !grant.owner;
                }
                if entry.is_empty() {
                    record.grants.remove(name);
                }
                Ok(())
            })
            .await?;
        self.settle().await?;
        Ok(record)
    }

    /// Makes anonymous GET/HEAD of a bucket's objects allowed (or not). Listing and writes
    /// always need a key.
    pub async fn set_public_read(&self, bucket: &str, public: bool) -> EngineResult<BucketRecord> {
        let record = self
            .update_bucket(bucket, |record| {
                if public {
                    refuse_public_acl(record)?;
                }
                record.public_read = public;
                Ok(())
            })
            .await?;
        self.settle().await?;
        Ok(record)
    }

    /// Replaces every grant of the bucket and its public-read flag at once (S3's PutBucketAcl
    /// with grant headers); each key named must exist.
    pub async fn replace_acl(&self, bucket: &str, grants: Grants, public: bool) -> EngineResult<BucketRecord> {
        for name in grants.keys() {
            self.access_key(name).await?;
        }
        let grants: Grants = grants.into_iter().filter(|(_, g)| !g.is_empty()).collect();
        let record = self
            .update_bucket(bucket, |record| {
                if record.acls_disabled() {
                    return Err(EngineError::AccessControlListNotSupported);
                }
                if public {
                    refuse_public_acl(record)?;
                }
                record.grants = grants.clone();
                record.public_read = public;
                Ok(())
            })
            .await?;
        self.settle().await?;
        Ok(record)
    }
}

/// A public ACL is refused while the bucket's public access block blocks them or ACLs are
/// disabled, as S3 does.
fn refuse_public_acl(record: &BucketRecord) -> EngineResult<()> {
    if record.acls_disabled() {
        return Err(EngineError::AccessControlListNotSupported);
    }
    if record.blocks(|b| b.block_public_acls) {
        return Err(EngineError::AccessDenied("the bucket's public access block refuses public ACLs".into()));
    }
    Ok(())
}

/// Grants as stored in a bucket record.
pub type Grants = BTreeMap<String, Grant>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credentials_written_before_entries_carried_the_record_still_verify() {
        let dir = tempfile::tempdir().unwrap();
        let meta =
            meridian_meta::embedded::EmbeddedStore::open(&dir.path().join("m.redb"), Default::default()).unwrap();
        let engine = Engine::builder(
            crate::Metadata::single(std::sync::Arc::new(meta)),
            meridian_blob::BlobStore::open(dir.path()).unwrap(),
            Default::default(),
        )
        .build();
        let (key, credential) = engine.create_access_key("old", false).await.unwrap();
        let id = &credential.access_key_id;
        // The earlier layout: the access key id's entry names the key.
        let txn = Txn::new().then(Op::put(keys::key_id(id), bytes::Bytes::from_static(b"old")));
        engine.meta().txn(txn).await.unwrap();
        assert_eq!(engine.credential(id).await.unwrap(), Some((key, credential.secret.clone())));
        engine.delete_access_key("old").await.unwrap();
        assert_eq!(engine.credential(id).await.unwrap(), None);
    }

    fn bucket(owner: &str, grants: &[(&str, Grant)], public_read: bool) -> BucketRecord {
        BucketRecord {
            owner: owner.into(),
            grants: grants.iter().map(|(k, g)| (k.to_string(), *g)).collect(),
            public_read,
            ..Default::default()
        }
    }

    fn key(name: &str, admin: bool) -> KeyRecord {
        KeyRecord { name: name.into(), created_ms: 0, admin, can_create_buckets: false, credentials: Vec::new() }
    }

    #[test]
    fn permissions() {
        let reader = Grant { read: true, ..Default::default() };
        let writer = Grant { write: true, ..Default::default() };
        let b = bucket("alice", &[("bob", reader), ("carol", writer)], false);
        let (alice, bob, carol, dave, root) =
            (key("alice", false), key("bob", false), key("carol", false), key("dave", false), key("admin", true));
        for access in [Access::Read, Access::Write, Access::Owner] {
            assert!(authorize(Some(&alice), &b, access), "the creator owns the bucket");
            assert!(authorize(Some(&root), &b, access));
            assert!(!authorize(Some(&dave), &b, access), "no grant, no access");
            assert!(!authorize(None, &b, access), "private bucket");
        }
        assert!(authorize(Some(&bob), &b, Access::Read));
        assert!(!authorize(Some(&bob), &b, Access::Write));
        assert!(authorize(Some(&carol), &b, Access::Write));
        assert!(!authorize(Some(&carol), &b, Access::Owner));
        let public = bucket("alice", &[], true);
        assert!(authorize(None, &public, Access::Read));
        assert!(!authorize(None, &public, Access::Write));
    }

    #[test]
    fn key_names() {
        assert!(validate_key_name("app-1.prod_x").is_ok());
        for bad in ["", "has space", "slash/y", &"k".repeat(65)] {
            assert!(validate_key_name(bad).is_err(), "{bad:?}");
        }
    }
}
