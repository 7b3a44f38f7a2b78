//! Multipart uploads: create, upload part (also by copy), complete, abort, list parts, list
//! uploads. Each part is its own blob; completing an upload writes one object record that lists
//! the part blobs in order, so no bytes are copied.

use meridian_meta::{Compare, Op, RangeRequest, Revision, Txn};

use crate::checksum::{self, ChecksumAlgorithm, StoredChecksum, decode_checksum};
use crate::conditions::{ReadConditions, WriteConditions};
use crate::crypt::{CustomerKey, Encryption, Protection};
use crate::error::{EngineError, EngineResult};
use crate::ingest::{Body, IngestLimits, IngestedData, Integrity};
use crate::lifecycle::{earliest, object_expiry, upload_abort};
use crate::object::{ByteRange, ExtraTxn, GetRequest, with_expiry_index};
use crate::record::{self, DataLayout, ObjectHeaders, ObjectRecord, PartLayout, PartRecord, UploadRecord};
use crate::{Engine, keys, now_ms, validate_key};

/// S3's limits on part numbers.
pub const MAX_PART_NUMBER: u32 = 10_000;

/// One entry of a CompleteMultipartUpload request.
#[derive(Clone, Debug)]
pub struct CompletePart {
    pub part_number: u32,
    /// Unquoted.
    pub etag: String,
    /// The part's checksum as the client lists it, base64 (verified against what we stored).
    pub checksum: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ListPartsPage {
    pub upload: Option<UploadRecord>,
    pub parts: Vec<(u32, PartRecord)>,
    pub is_truncated: bool,
    pub next_marker: Option<u32>,
}

#[derive(Clone, Debug, Default)]
pub struct ListUploadsRequest {
    pub prefix: String,
    pub delimiter: Option<String>,
    pub key_marker: Option<String>,
    pub upload_id_marker: Option<String>,
    pub max_uploads: usize,
}

#[derive(Clone, Debug)]
pub struct UploadSummary {
    pub key: String,
    pub upload_id: String,
    pub initiated_ms: i64,
}

#[derive(Clone, Debug, Default)]
pub struct ListUploadsPage {
    pub uploads: Vec<UploadSummary>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    pub next_key_marker: Option<String>,
    pub next_upload_id_marker: Option<String>,
}

fn check_part_number(part_number: u32) -> EngineResult<()> {
    if part_number == 0 || part_number > MAX_PART_NUMBER {
        return Err(EngineError::InvalidArgument(format!(
            "part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive (got {part_number})"
        )));
    }
    Ok(())
}

impl Engine {
    pub async fn create_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        headers: ObjectHeaders,
        checksum_algorithm: Option<ChecksumAlgorithm>,
        full_object_checksum: bool,
        protection: Option<Protection>,
    ) -> EngineResult<UploadRecord> {
        validate_key(key)?;
        headers.validate()?;
        let (bucket_record, bucket_revision) = self.writable_bucket(bucket).await?;
        crate::object_lock::check_requested(&bucket_record, &headers.lock)?;
        self.check_residency(bucket, &bucket_record)?;
        let (encryption, _) = self.new_sealing(self.protection_for(protection, &bucket_record).as_ref())?;
        let initiated_ms = now_ms();
        let upload = UploadRecord {
            key: key.to_string(),
            upload_id: hex::encode(rand::random::<[u8; 16]>()),
            initiated_ms,
            headers,
            checksum_algorithm,
            full_object_checksum,
            expires_at_ms: None,
            abort_at_ms: upload_abort(&bucket_record.lifecycle, key, initiated_ms),
            encryption: encryption.map(|e| e.without_key()),
        };
        let upload_key = keys::upload(bucket, key, &upload.upload_id);
        let txn = Txn::new()
            .when(Compare::mod_revision_is(keys::bucket(bucket), bucket_revision))
            .then(Op::put(upload_key.clone(), record::encode(&upload)));
        let txn = with_expiry_index(txn, &upload_key, None, upload.abort_at_ms);
        if !self.meta().txn(txn).await?.succeeded {
            return Err(EngineError::NoSuchBucket);
        }
        Ok(upload)
    }

    async fn upload(&self, bucket: &str, key: &str, upload_id: &str) -> EngineResult<(UploadRecord, Revision)> {
        self.bucket(bucket).await?;
        self.upload_record(bucket, key, upload_id).await
    }

    /// The upload a part is stored for, and its bucket's record (where the part's bytes go,
    /// whether it will be locked). Refused in a bucket pinned to another region, so no part's
    /// bytes land here.
    async fn upload_for_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> EngineResult<(UploadRecord, crate::record::BucketRecord)> {
        let (record, _) = self.bucket(bucket).await?;
        self.check_residency(bucket, &record)?;
        Ok((self.upload_record(bucket, key, upload_id).await?.0, record))
    }

    /// The upload's record, read without its bucket's (which the callers have checked).
    async fn upload_record(&self, bucket: &str, key: &str, upload_id: &str) -> EngineResult<(UploadRecord, Revision)> {
        let kv = self.meta().get(&keys::upload(bucket, key, upload_id)).await?.ok_or(EngineError::NoSuchUpload)?;
        Ok((record::decode(&kv.value)?, kv.mod_revision))
    }

    /// Stores one part. Re-uploading a part number replaces it.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Body,
        mut integrity: Integrity,
        customer_key: Option<&CustomerKey>,
    ) -> EngineResult<(PartRecord, Option<Encryption>)> {
        check_part_number(part_number)?;
        let (upload, bucket_record) = self.upload_for_part(bucket, key, upload_id).await?;
        // As S3: the parts of an object that will be locked need an integrity value of their own.
        let locked = !upload.headers.lock.is_empty()
            || bucket_record.object_lock.as_ref().is_some_and(|c| c.default_retention.is_some());
        if locked && !integrity.declared() {
            return Err(EngineError::InvalidRequest(
                "Content-MD5 OR x-amz-checksum- HTTP header is required for Put Part requests with Object Lock parameters"
                    .into(),
            ));
        }
        if integrity.algorithm.is_none() {
            integrity.algorithm = upload.checksum_algorithm;
        }
        let location = bucket_record.location;
        self.store_part(bucket, key, upload_id, part_number, (&upload, &location), body, integrity, customer_key).await
    }

    /// Ingests one part's bytes (sealed under a data key of its own when the upload is
    /// encrypted) and commits its record.
    #[allow(clippy::too_many_arguments)]
    async fn store_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        (upload, location): (&UploadRecord, &crate::record::Location),
        body: Body,
        integrity: Integrity,
        customer_key: Option<&CustomerKey>,
    ) -> EngineResult<(PartRecord, Option<Encryption>)> {
        crate::crypt::check_plain_read(upload.encryption.as_ref(), customer_key)?;
        let (wrapped_key, sealing) = match &upload.encryption {
            Some(encryption) => {
                let (wrapped, key) = self.config().keyring.new_part_key(encryption, customer_key)?;
                (Some(wrapped), Some(key))
            }
            None => (None, None),
        };
        let limits = IngestLimits {
            inline_max: 0,
            max_size: self.config().max_object_size,
            blob_id: None,
            sealing: sealing.clone(),
        };
        let (ingested, holders) = self.ingest_placed(bucket, location, body, integrity, limits).await?;
        let IngestedData::Blob(blob) = ingested.data else {
            return Err(EngineError::Corrupt("a part was not written to a blob".into()));
        };
        let part = PartRecord {
            size: ingested.size,
            etag: Engine::etag_of(upload.encryption.as_ref(), sealing.as_ref(), &ingested.md5),
            modified_ms: now_ms(),
            blob,
            digests: ingested.digests,
            holders,
            checksum: ingested.checksum,
            wrapped_key,
        };
        self.commit_part(bucket, key, upload_id, part_number, &part).await?;
        Ok((part, upload.encryption.clone()))
    }

    /// UploadPartCopy: a part made from (a range of) an existing object.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_part_copy(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        src_bucket: &str,
        src_key: &str,
        src_version_id: Option<String>,
        range: Option<ByteRange>,
        source_conditions: ReadConditions,
        (source_key, customer_key): (Option<CustomerKey>, Option<&CustomerKey>),
    ) -> EngineResult<(PartRecord, Option<Encryption>)> {
        check_part_number(part_number)?;
        let (upload, bucket_record) = self.upload_for_part(bucket, key, upload_id).await?;
        let location = bucket_record.location;
        let source = self
            .get_object(GetRequest {
                bucket: src_bucket.into(),
                key: src_key.into(),
                range,
                version_id: src_version_id,
                customer_key: source_key,
                ..Default::default()
            })
            .await?;
        source_conditions.check_copy_source(&source.record)?;
        let integrity = Integrity { algorithm: upload.checksum_algorithm, ..Default::default() };
        self.store_part(bucket, key, upload_id, part_number, (&upload, &location), source.body, integrity, customer_key)
            .await
    }

    async fn commit_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        part: &PartRecord,
    ) -> EngineResult<()> {
        let upload_key = keys::upload(bucket, key, upload_id);
        let part_key = keys::part(upload_id, part_number);
        loop {
            let old = self.meta().get(&part_key).await?;
            let old_blob = match &old {
                Some(kv) => Some(record::decode::<PartRecord>(&kv.value)?.blob),
                None => None,
            };
            let mut txn = Txn::new()
                .when(Compare::exists(upload_key.clone()))
                .when(Compare::mod_revision_is(part_key.clone(), old.as_ref().map_or(0, |kv| kv.mod_revision)))
                .then(Op::put(part_key.clone(), record::encode(part)))
                .then(Op::put(keys::blob_ref(part.blob), part_key.clone()))
                .or_read(upload_key.clone());
            if let Some(old_blob) = old_blob {
                txn = txn.then(Op::delete(keys::blob_ref(old_blob)));
            }
            let resp = self.meta().txn(txn).await?;
            if resp.succeeded {
                if let Some(old_blob) = old_blob {
                    self.delete_blobs_later(vec![old_blob]);
                }
                return Ok(());
            }
            if resp.failure_reads.first().is_none_or(Option::is_none) {
                self.delete_blobs_now(vec![part.blob]);
                self.forget_copies(&part.holders, part.blob);
                return Err(EngineError::NoSuchUpload);
            }
        }
    }

    async fn all_parts(&self, upload_id: &str) -> EngineResult<Vec<(u32, PartRecord, Revision)>> {
        let resp = self.meta().range(RangeRequest::prefix(keys::parts_prefix(upload_id))).await?;
        resp.kvs
            .iter()
            .map(|kv| {
                let (_, number) =
                    keys::parse_part_key(&kv.key).ok_or_else(|| EngineError::Corrupt("bad part key".into()))?;
                Ok((number, record::decode(&kv.value)?, kv.mod_revision))
            })
            .collect()
    }

    /// Completes an upload into an object. Parts not listed are discarded.
    pub async fn complete_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        listed: &[CompletePart],
        conditions: &WriteConditions,
    ) -> EngineResult<(ObjectRecord, Revision)> {
        let (upload, upload_revision) = self.upload(bucket, key, upload_id).await?;
        let (bucket_record, bucket_revision) = self.writable_bucket(bucket).await?;
        self.check_residency(bucket, &bucket_record)?;
        let stored = self.all_parts(upload_id).await?;
        let chosen = self.choose_parts(&stored, listed)?;

        let mut md5s = Vec::with_capacity(chosen.len() * 16);
        for part in &chosen {
            md5s.extend(hex::decode(&part.etag).map_err(|_| EngineError::Corrupt("bad part etag".into()))?);
        }
        let checksum = object_checksum(&upload, &chosen);
        let record = ObjectRecord {
            size: chosen.iter().map(|p| p.size).sum(),
            etag: format!("{}-{}", checksum::md5_hex(&md5s), chosen.len()),
            modified_ms: now_ms(),
            headers: upload.headers.clone(),
            checksum,
            data: DataLayout::Parts {
                parts: chosen
                    .iter()
                    .map(|p| PartLayout {
                        blob: p.blob,
                        size: p.size,
                        digests: p.digests.clone(),
                        holders: p.holders.clone(),
                        wrapped_key: p.wrapped_key.clone(),
                    })
                    .collect(),
            },
            encryption: upload.encryption.clone(),
            expires_at_ms: earliest(
                upload.expires_at_ms,
                object_expiry(&bucket_record.lifecycle, key, &upload.headers.tags, now_ms()),
            ),
            version: None,
        };
        let used: std::collections::HashSet<_> = chosen.iter().map(|p| p.blob).collect();
        let unused: Vec<_> = stored.iter().map(|(_, p, _)| p.blob).filter(|b| !used.contains(b)).collect();

        let upload_key = keys::upload(bucket, key, upload_id);
        let mut extra = ExtraTxn::seen_bucket(&bucket_record, bucket_revision);
        extra.ops.extend(self.repair_op(bucket, key, &bucket_record, &record).await?);
        let completed = crate::notify::EventKind::CompleteMultipartUpload;
        extra.notify(bucket, &bucket_record, key, completed, &record);
        extra.compares.push(Compare::mod_revision_is(upload_key.clone(), upload_revision));
        extra.ops.push(Op::delete(upload_key.clone()));
        if let Some(at) = upload.abort_at_ms {
            extra.ops.push(Op::delete(keys::expiry(at, &upload_key)));
        }
        for (number, _, revision) in &stored {
            extra.compares.push(Compare::mod_revision_is(keys::part(upload_id, *number), *revision));
            extra.ops.push(Op::delete(keys::part(upload_id, *number)));
        }
        for blob in &unused {
            extra.ops.push(Op::delete(keys::blob_ref(*blob)));
        }
        let (bucket_name, key_name, id) = (bucket.to_string(), key.to_string(), upload_id.to_string());
        let snapshot: Vec<(u32, Revision)> = stored.iter().map(|(n, _, r)| (*n, *r)).collect();
        extra.still_valid = Some(Box::new(move |engine: &Engine| {
            let (b, k, u, snapshot) = (bucket_name.clone(), key_name.clone(), id.clone(), snapshot.clone());
            Box::pin(async move {
                let (_, revision) = engine.upload(&b, &k, &u).await?;
                let now: Vec<(u32, Revision)> = engine.all_parts(&u).await?.iter().map(|(n, _, r)| (*n, *r)).collect();
                if revision != upload_revision || now != snapshot {
                    // A part was added or replaced meanwhile: the client must complete again.
                    return Err(EngineError::InvalidPart("the upload changed while it was being completed".into()));
                }
                Ok(())
            })
        }));
        // Unlike other writes, a failed completion must not delete the part blobs: the upload
        // still owns them and may be completed again.
        let (revision, version) = self.try_commit_object(bucket, key, &record, None, conditions, extra).await?;
        self.delete_blobs_later(unused);
        self.write_through(bucket_record.shadow.as_ref(), bucket, key).await?;
        Ok((ObjectRecord { version, ..record }, revision))
    }

    fn choose_parts(
        &self,
        stored: &[(u32, PartRecord, Revision)],
        listed: &[CompletePart],
    ) -> EngineResult<Vec<PartRecord>> {
        if listed.is_empty() {
            return Err(EngineError::InvalidRequest("You must specify at least one part".into()));
        }
        if listed.windows(2).any(|pair| pair[1].part_number <= pair[0].part_number) {
            return Err(EngineError::InvalidPartOrder);
        }
        let mut chosen: Vec<PartRecord> = Vec::with_capacity(listed.len());
        for (i, want) in listed.iter().enumerate() {
            let part = stored
                .iter()
                .find(|(n, _, _)| *n == want.part_number)
                .map(|(_, p, _)| p)
                .filter(|p| p.etag == want.etag.trim_matches('"'))
                .ok_or_else(|| {
                    EngineError::InvalidPart(format!(
                        "One or more of the specified parts could not be found or the specified entity tag might not have matched the part's entity tag (part {})",
                        want.part_number
                    ))
                })?;
            if let (Some(claimed), Some(stored)) = (&want.checksum, &part.checksum)
                && decode_checksum(stored.algorithm, claimed)? != stored.raw
            {
                return Err(EngineError::InvalidPart(format!(
                    "the {} checksum listed for part {} does not match the part",
                    stored.algorithm.name(),
                    want.part_number
                )));
            }
            let is_last = i + 1 == listed.len();
            if !is_last && part.size < self.config().min_part_size {
                return Err(EngineError::EntityTooSmall {
                    part: want.part_number,
                    size: part.size,
                    min: self.config().min_part_size,
                });
            }
            chosen.push(part.clone());
        }
        Ok(chosen)
    }

    /// Abandons an upload and frees its parts.
    pub async fn abort_multipart_upload(&self, bucket: &str, key: &str, upload_id: &str) -> EngineResult<()> {
        let (_, upload_revision) = self.upload(bucket, key, upload_id).await?;
        let stored = self.all_parts(upload_id).await?;
        let upload_key = keys::upload(bucket, key, upload_id);
        let mut txn =
            Txn::new().when(Compare::mod_revision_is(upload_key.clone(), upload_revision)).then(Op::delete(upload_key));
        for (number, part, _) in &stored {
            txn = txn.then(Op::delete(keys::part(upload_id, *number))).then(Op::delete(keys::blob_ref(part.blob)));
        }
        if !self.meta().txn(txn).await?.succeeded {
            return Err(EngineError::NoSuchUpload);
        }
        // Parts uploaded concurrently with the abort are caught by the orphan scan.
        self.delete_blobs_later(stored.into_iter().map(|(_, p, _)| p.blob).collect());
        Ok(())
    }

    pub async fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number_marker: u32,
        max_parts: usize,
    ) -> EngineResult<ListPartsPage> {
        let (upload, _) = self.upload(bucket, key, upload_id).await?;
        let max_parts = max_parts.clamp(1, 1000);
        let all = self.all_parts(upload_id).await?;
        let mut parts: Vec<(u32, PartRecord)> =
            all.into_iter().filter(|(n, _, _)| *n > part_number_marker).map(|(n, p, _)| (n, p)).collect();
        let is_truncated = parts.len() > max_parts;
        parts.truncate(max_parts);
        let next_marker = parts.last().map(|(n, _)| *n);
        Ok(ListPartsPage { upload: Some(upload), parts, is_truncated, next_marker })
    }

    pub async fn list_multipart_uploads(
        &self,
        bucket: &str,
        req: &ListUploadsRequest,
    ) -> EngineResult<ListUploadsPage> {
        self.bucket(bucket).await?;
        let base = keys::uploads_prefix(bucket);
        let max = req.max_uploads.clamp(1, 1000);
        let mut range = RangeRequest::prefix(format!("{base}{}", req.prefix));
        if let Some(marker) = &req.key_marker {
            // Uploads of the marker key after the upload-id marker, then later keys.
            range = match &req.upload_id_marker {
                Some(id) => range.after(keys::upload(bucket, marker, id)),
                None => range.from(keys::past_uploads_of(bucket, marker)),
            };
        }
        let resp = self.meta().range(range).await?;
        let mut page = ListUploadsPage::default();
        let delimiter = req.delimiter.as_deref().filter(|d| !d.is_empty());
        for kv in &resp.kvs {
            let upload: UploadRecord = record::decode(&kv.value)?;
            if page.uploads.len() + page.common_prefixes.len() >= max {
                page.is_truncated = true;
                break;
            }
            if let Some(d) = delimiter
                && let Some(rest) = upload.key.strip_prefix(req.prefix.as_str())
                && let Some(at) = rest.find(d)
            {
                let prefix = format!("{}{}", req.prefix, &rest[..at + d.len()]);
                if page.common_prefixes.last() != Some(&prefix) {
                    page.common_prefixes.push(prefix);
                }
                continue;
            }
            page.next_key_marker = Some(upload.key.clone());
            page.next_upload_id_marker = Some(upload.upload_id.clone());
            page.uploads.push(UploadSummary {
                key: upload.key,
                upload_id: upload.upload_id,
                initiated_ms: upload.initiated_ms,
            });
        }
        Ok(page)
    }
}

/// The whole object's checksum from its parts', when the upload chose an algorithm.
fn object_checksum(upload: &UploadRecord, parts: &[PartRecord]) -> Option<StoredChecksum> {
    let algorithm = upload.checksum_algorithm?;
    let mut raw_parts = Vec::with_capacity(parts.len());
    for part in parts {
        let stored = part.checksum.as_ref().filter(|c| c.algorithm == algorithm)?;
        raw_parts.push((stored.raw.clone(), part.size));
    }
    let full_object = upload.full_object_checksum || algorithm == ChecksumAlgorithm::Crc64nvme;
    Some(checksum::combine_parts(algorithm, &raw_parts, full_object))
}
