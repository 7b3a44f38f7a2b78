//! Copying one object: read it from the source, write it to the destination with its metadata,
//! and verify size and MD5 on both sides. An object up to the part size is sent as one
//! PutObject with Content-MD5 (the destination refuses a body that does not match); a larger one
//! as a multipart upload of part-size parts, each with its Content-MD5, aborted on any error.

use aws_sdk_s3::Client;
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};
use meridian_common::errors::chain;

/// Why one object could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading it from the source: {0}")]
    Source(String),
    #[error("writing it to the destination: {0}")]
    Destination(String),
    #[error("the source sent {got} bytes, it announced {announced}")]
    Size { got: u64, announced: u64 },
    #[error("the bytes read have MD5 {computed}, the source's ETag is {etag}")]
    SourceDigest { computed: String, etag: String },
    #[error("the destination answered ETag {answered}, the bytes sent have {expected}")]
    DestinationDigest { answered: String, expected: String },
}

/// The standard headers and user metadata kept with an object.
#[derive(Debug, Default, Clone)]
struct Headers {
    content_type: Option<String>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_encoding: Option<String>,
    content_language: Option<String>,
    expires: Option<DateTime>,
    metadata: Option<std::collections::HashMap<String, String>>,
}

impl Headers {
    fn of(got: &GetObjectOutput) -> Headers {
        Headers {
            content_type: got.content_type.clone(),
            cache_control: got.cache_control.clone(),
            content_disposition: got.content_disposition.clone(),
            content_encoding: got.content_encoding.clone(),
            content_language: got.content_language.clone(),
            expires: got.expires_string().and_then(|s| DateTime::from_str(s, DateTimeFormat::HttpDate).ok()),
            metadata: got.metadata.clone().filter(|m| !m.is_empty()),
        }
    }
}

/// Sets the kept headers on a PutObject or a CreateMultipartUpload request (two builder types
/// with the same setters).
macro_rules! with_headers {
    ($req:expr, $h:expr) => {
        $req.set_content_type($h.content_type.clone())
            .set_cache_control($h.cache_control.clone())
            .set_content_disposition($h.content_disposition.clone())
            .set_content_encoding($h.content_encoding.clone())
            .set_content_language($h.content_language.clone())
            .set_expires($h.expires)
            .set_metadata($h.metadata.clone())
    };
}

/// An ETag without its quotes.
pub fn bare_etag(etag: &str) -> &str {
    etag.trim_matches('"')
}

/// A multipart ETag (`<hex>-<parts>`) is not the MD5 of the bytes.
pub fn is_multipart_etag(etag: &str) -> bool {
    bare_etag(etag).contains('-')
}

/// Copies `key` from `source`/`src_bucket` to `dest`/`dst_bucket`; returns the bytes copied.
pub async fn copy_object(
    source: &Client,
    src_bucket: &str,
    dest: &Client,
    dst_bucket: &str,
    key: &str,
    part_size: u64,
) -> Result<u64, CopyError> {
    let got = source.get_object().bucket(src_bucket).key(key).send().await.map_err(|e| CopyError::Source(chain(&e)))?;
    let announced = got.content_length.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    let source_etag = got.e_tag.as_deref().map(|e| bare_etag(e).to_string()).unwrap_or_default();
    let headers = Headers::of(&got);
    let mut body = BodyReader { body: got.body, leftover: Bytes::new() };
    let mut whole = Md5::new();
    let sent = if announced <= part_size {
        let bytes = body.read_up_to(announced, &mut whole).await?;
        check_size(bytes.len() as u64, announced)?;
        body.check_end(announced).await?;
        put_whole(dest, dst_bucket, key, bytes, &headers).await?;
        announced
    } else {
        let target = Target { client: dest, bucket: dst_bucket, key };
        put_in_parts(&target, &mut body, announced, part_size, &headers, &mut whole).await?
    };
    let computed = hex::encode(whole.finalize());
    if !source_etag.is_empty() && !is_multipart_etag(&source_etag) && source_etag != computed {
        return Err(CopyError::SourceDigest { computed, etag: source_etag });
    }
    Ok(sent)
}

fn check_size(got: u64, announced: u64) -> Result<(), CopyError> {
    if got == announced { Ok(()) } else { Err(CopyError::Size { got, announced }) }
}

/// The source's body read in pieces of a chosen size (its chunks do not fall on part bounds).
struct BodyReader {
    body: ByteStream,
    leftover: Bytes,
}

impl BodyReader {
    /// The next `limit` bytes (fewer only at the end of the body), fed to `whole`.
    async fn read_up_to(&mut self, limit: u64, whole: &mut Md5) -> Result<Bytes, CopyError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut buf = BytesMut::new();
        while buf.len() < limit {
            let mut chunk = if self.leftover.is_empty() {
                match self.body.next().await {
                    Some(chunk) => chunk.map_err(|e| CopyError::Source(chain(&e)))?,
                    None => break,
                }
            } else {
                std::mem::take(&mut self.leftover)
            };
            if chunk.len() > limit - buf.len() {
                self.leftover = chunk.split_off(limit - buf.len());
            }
            buf.extend_from_slice(&chunk);
        }
        whole.update(&buf);
        Ok(buf.freeze())
    }

    /// Fails if the body holds more than was read (the source sent more than it announced).
    async fn check_end(&mut self, read: u64) -> Result<(), CopyError> {
        let more = match self.body.next().await {
            Some(chunk) => chunk.map_err(|e| CopyError::Source(chain(&e)))?.len() + self.leftover.len(),
            None => self.leftover.len(),
        };
        check_size(read + more as u64, read)
    }
}

/// The MD5 of `bytes`: raw, as hex (an ETag) and as base64 (a Content-MD5).
fn content_md5(bytes: &[u8]) -> (Vec<u8>, String, String) {
    let digest = Md5::digest(bytes);
    (digest.to_vec(), hex::encode(digest), base64::engine::general_purpose::STANDARD.encode(digest))
}

fn check_answer(answered: Option<&str>, expected: &str) -> Result<(), CopyError> {
    let answered = answered.map(bare_etag).unwrap_or_default();
    if answered == expected {
        Ok(())
    } else {
        Err(CopyError::DestinationDigest { answered: answered.into(), expected: expected.into() })
    }
}

async fn put_whole(dest: &Client, bucket: &str, key: &str, bytes: Bytes, h: &Headers) -> Result<(), CopyError> {
    let (_, hex_md5, b64_md5) = content_md5(&bytes);
    let req = dest.put_object().bucket(bucket).key(key);
    let out = with_headers!(req, h)
        .content_length(bytes.len() as i64)
        .content_md5(b64_md5)
        .body(ByteStream::from(bytes))
        .send()
        .await
        .map_err(|e| CopyError::Destination(chain(&e)))?;
    check_answer(out.e_tag(), &hex_md5)
}

/// Where a multipart copy goes.
struct Target<'a> {
    client: &'a Client,
    bucket: &'a str,
    key: &'a str,
}

/// Sends `body` as a multipart upload; aborts the upload if anything fails. Returns the bytes sent.
async fn put_in_parts(
    to: &Target<'_>,
    body: &mut BodyReader,
    announced: u64,
    part_size: u64,
    h: &Headers,
    whole: &mut Md5,
) -> Result<u64, CopyError> {
    let req = to.client.create_multipart_upload().bucket(to.bucket).key(to.key);
    let created = with_headers!(req, h).send().await.map_err(|e| CopyError::Destination(chain(&e)))?;
    let upload_id = created.upload_id.unwrap_or_default();
    let result = send_parts(to, &upload_id, body, announced, part_size, whole).await;
    if result.is_err() {
        // Best effort: an upload left behind is only space; the error reported is the first one.
        let _ = to.client.abort_multipart_upload().bucket(to.bucket).key(to.key).upload_id(&upload_id).send().await;
    }
    result
}

async fn send_parts(
    to: &Target<'_>,
    upload_id: &str,
    body: &mut BodyReader,
    announced: u64,
    part_size: u64,
    whole: &mut Md5,
) -> Result<u64, CopyError> {
    let mut parts = Vec::new();
    let mut part_digests = Vec::new();
    let mut sent = 0u64;
    while sent < announced {
        let bytes = body.read_up_to(part_size.min(announced - sent), whole).await?;
        if bytes.is_empty() {
            break; // the source ended early: the size check reports it
        }
        let (digest, hex_md5, b64_md5) = content_md5(&bytes);
        part_digests.extend_from_slice(&digest);
        let number = parts.len() as i32 + 1;
        let len = bytes.len() as u64;
        let out = to
            .client
            .upload_part()
            .bucket(to.bucket)
            .key(to.key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(len as i64)
            .content_md5(b64_md5)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| CopyError::Destination(chain(&e)))?;
        check_answer(out.e_tag(), &hex_md5)?;
        parts.push(CompletedPart::builder().part_number(number).e_tag(hex_md5).build());
        sent += len;
    }
    check_size(sent, announced)?;
    body.check_end(sent).await?;
    let expected = format!("{}-{}", hex::encode(Md5::digest(&part_digests)), parts.len());
    let done = to
        .client
        .complete_multipart_upload()
        .bucket(to.bucket)
        .key(to.key)
        .upload_id(upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .map_err(|e| CopyError::Destination(chain(&e)))?;
    check_answer(done.e_tag(), &expected)?;
    Ok(sent)
}
