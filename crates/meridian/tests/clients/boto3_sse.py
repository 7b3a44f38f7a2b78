#!/usr/bin/env python3
"""boto3 against a live Meridian server started with a keyring (master key, KMS key `app`):
SSE-S3, SSE-KMS and SSE-C, ranges, multipart with SSE-C (boto3's managed transfer), copies
between modes, default bucket encryption.

Usage: boto3_sse.py ENDPOINT_URL
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Exits non-zero with a message
naming the failed check. Run by crates/meridian/tests/clients.rs.
"""

import hashlib
import io
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from boto3.s3.transfer import TransferConfig  # noqa: E402

from boto3_check import check, check_eq, client_from_argv, expect_client_error, pattern, run  # noqa: E402

MIB = 1024 * 1024
BUCKET = "boto3-sse"
KEY_A = bytes([7]) * 32
KEY_B = bytes([8]) * 32


def sse_c(key):
    """boto3 base64-encodes the key and adds its MD5 itself."""
    return {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key}


def copy_source_sse_c(key):
    return {"CopySourceSSECustomerAlgorithm": "AES256", "CopySourceSSECustomerKey": key}


def main():
    s3 = client_from_argv("boto3_sse.py")
    s3.create_bucket(Bucket=BUCKET)
    data = pattern(200_000, 1)

    # SSE-S3: headers on PUT, GET and HEAD; the ETag is the MD5; ranges across 64 KiB chunks.
    put = s3.put_object(Bucket=BUCKET, Key="s3", Body=data, ServerSideEncryption="AES256")
    check_eq(put["ServerSideEncryption"], "AES256", "put SSE-S3")
    check_eq(put["ETag"], '"%s"' % hashlib.md5(data).hexdigest(), "SSE-S3 ETag is the MD5")
    got = s3.get_object(Bucket=BUCKET, Key="s3", Range="bytes=65000-140000")
    check_eq(got["ServerSideEncryption"], "AES256", "get SSE-S3")
    check(got["Body"].read() == data[65000:140001], "SSE-S3 range across chunks")
    check_eq(s3.head_object(Bucket=BUCKET, Key="s3")["ServerSideEncryption"], "AES256", "head SSE-S3")
    print("ok: SSE-S3")

    # SSE-KMS with a keyring key; an unknown one is refused.
    put = s3.put_object(Bucket=BUCKET, Key="kms", Body=data, ServerSideEncryption="aws:kms", SSEKMSKeyId="app")
    check_eq((put["ServerSideEncryption"], put["SSEKMSKeyId"]), ("aws:kms", "app"), "put SSE-KMS")
    check(s3.get_object(Bucket=BUCKET, Key="kms")["Body"].read() == data, "SSE-KMS reads back")
    expect_client_error(lambda: s3.put_object(Bucket=BUCKET, Key="kms2", Body=b"x", ServerSideEncryption="aws:kms",
                                              SSEKMSKeyId="missing"), "KMS.NotFoundException", 400, "unknown KMS key")
    print("ok: SSE-KMS")

    # SSE-C: the key is needed to read, another key is refused with 403.
    put = s3.put_object(Bucket=BUCKET, Key="c", Body=data, **sse_c(KEY_A))
    check_eq(put["SSECustomerAlgorithm"], "AES256", "put SSE-C")
    got = s3.get_object(Bucket=BUCKET, Key="c", Range="bytes=-100", **sse_c(KEY_A))
    check(got["Body"].read() == data[-100:], "SSE-C suffix range")
    expect_client_error(lambda: s3.get_object(Bucket=BUCKET, Key="c", **sse_c(KEY_B)), "AccessDenied", 403,
                        "SSE-C with another key")
    expect_client_error(lambda: s3.get_object(Bucket=BUCKET, Key="c"), "InvalidRequest", 400, "SSE-C without a key")
    print("ok: SSE-C")

    # Copies between modes.
    s3.copy_object(Bucket=BUCKET, Key="c-to-kms", CopySource={"Bucket": BUCKET, "Key": "c"},
                   ServerSideEncryption="aws:kms", SSEKMSKeyId="app", **copy_source_sse_c(KEY_A))
    check(s3.get_object(Bucket=BUCKET, Key="c-to-kms")["Body"].read() == data, "SSE-C copied to SSE-KMS")
    s3.copy_object(Bucket=BUCKET, Key="kms-to-c", CopySource={"Bucket": BUCKET, "Key": "kms"}, **sse_c(KEY_B))
    check(s3.get_object(Bucket=BUCKET, Key="kms-to-c", **sse_c(KEY_B))["Body"].read() == data, "SSE-KMS copied to SSE-C")
    s3.copy_object(Bucket=BUCKET, Key="c-to-plain", CopySource={"Bucket": BUCKET, "Key": "c"}, **copy_source_sse_c(KEY_A))
    head = s3.head_object(Bucket=BUCKET, Key="c-to-plain")
    check("ServerSideEncryption" not in head and "SSECustomerAlgorithm" not in head, "copy without SSE is plain")
    print("ok: copies between modes")

    # Multipart with SSE-C through boto3's managed transfer (every part carries the key).
    big = pattern(12 * MIB + 5, 2)
    config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    s3.upload_fileobj(io.BytesIO(big), BUCKET, "mp-c", ExtraArgs=sse_c(KEY_A), Config=config)
    head = s3.head_object(Bucket=BUCKET, Key="mp-c", **sse_c(KEY_A))
    check(head["ETag"].endswith('-3"'), f"a three-part upload: {head['ETag']}")
    got = s3.get_object(Bucket=BUCKET, Key="mp-c", Range=f"bytes={5 * MIB - 3}-{10 * MIB + 2}", **sse_c(KEY_A))
    check(got["Body"].read() == big[5 * MIB - 3:10 * MIB + 3], "SSE-C range across parts")
    out = io.BytesIO()
    s3.download_fileobj(BUCKET, "mp-c", out, ExtraArgs=sse_c(KEY_A), Config=config)
    check(out.getvalue() == big, "SSE-C multipart object downloads whole")
    print("ok: multipart with SSE-C")

    # Default bucket encryption.
    s3.put_bucket_encryption(Bucket=BUCKET, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    rule = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"][0]
    check_eq(rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"], "AES256", "bucket default")
    check_eq(s3.put_object(Bucket=BUCKET, Key="default", Body=b"d")["ServerSideEncryption"], "AES256",
             "a write asking for nothing gets the default")
    s3.delete_bucket_encryption(Bucket=BUCKET)
    expect_client_error(lambda: s3.get_bucket_encryption(Bucket=BUCKET),
                        "ServerSideEncryptionConfigurationNotFoundError", 404, "no default after delete")
    print("ok: default bucket encryption")
    print("sse checks passed")


if __name__ == "__main__":
    run(main)
