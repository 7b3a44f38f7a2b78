#!/usr/bin/env python3
"""boto3 against a live Meridian server.

Usage: boto3_check.py ENDPOINT_URL
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Exits non-zero with a message
naming the failed check on any mismatch. Run by crates/meridian/tests/clients.rs.
"""

import hashlib
import io
import sys
import urllib.error
import urllib.request

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

MIB = 1024 * 1024
BUCKET = "boto3-check"


def fail(message):
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def check_eq(actual, expected, what):
    if actual != expected:
        fail(f"{what}: expected {expected!r}, got {actual!r}")


def expect_client_error(fn, code, status, what):
    """Runs fn, which must raise ClientError with this code and HTTP status."""
    try:
        fn()
    except ClientError as err:
        got_code = err.response.get("Error", {}).get("Code")
        got_status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        check_eq((got_code, got_status), (code, status), f"{what}: error code and status")
        return err
    fail(f"{what}: expected ClientError {code} ({status}), but the call succeeded")


def pattern(size, seed):
    """Deterministic bytes (not random-looking, but no two MiB blocks are equal)."""
    out = bytearray()
    block = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{block}".encode()).digest() * 2048  # 64 KiB
        block += 1
    return bytes(out[:size])


def main():
    if len(sys.argv) != 2:
        fail("usage: boto3_check.py ENDPOINT_URL")
    endpoint = sys.argv[1]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        ),
    )

    # Buckets.
    s3.create_bucket(Bucket=BUCKET)
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    check(BUCKET in names, f"list_buckets does not show {BUCKET}: {names}")
    s3.head_bucket(Bucket=BUCKET)
    print("ok: create_bucket / list_buckets / head_bucket")

    # Put / get / head with metadata and standard headers.
    body = b"hello from boto3\n"
    put = s3.put_object(
        Bucket=BUCKET,
        Key="dir/hello.txt",
        Body=body,
        ContentType="text/plain; charset=utf-8",
        CacheControl="max-age=60",
        ContentDisposition='attachment; filename="hello.txt"',
        Metadata={"color": "blue", "owner": "boto3"},
    )
    etag = '"' + hashlib.md5(body).hexdigest() + '"'
    check_eq(put["ETag"], etag, "put_object ETag")
    got = s3.get_object(Bucket=BUCKET, Key="dir/hello.txt")
    check_eq(got["Body"].read(), body, "get_object body")
    check_eq(got["ContentType"], "text/plain; charset=utf-8", "get_object ContentType")
    check_eq(got["Metadata"], {"color": "blue", "owner": "boto3"}, "get_object Metadata")
    check_eq(got["ETag"], etag, "get_object ETag")
    head = s3.head_object(Bucket=BUCKET, Key="dir/hello.txt")
    check_eq(head["ContentLength"], len(body), "head_object ContentLength")
    check_eq(head["ETag"], etag, "head_object ETag")
    check_eq(head["Metadata"], {"color": "blue", "owner": "boto3"}, "head_object Metadata")
    check_eq(head["CacheControl"], "max-age=60", "head_object CacheControl")
    check_eq(
        head["ContentDisposition"], 'attachment; filename="hello.txt"', "head_object ContentDisposition"
    )
    print("ok: put_object / get_object / head_object with metadata")

    # Ranged get.
    ranged = s3.get_object(Bucket=BUCKET, Key="dir/hello.txt", Range="bytes=6-9")
    check_eq(ranged["ResponseMetadata"]["HTTPStatusCode"], 206, "ranged get status")
    check_eq(ranged["Body"].read(), body[6:10], "ranged get body")
    check_eq(ranged["ContentRange"], f"bytes 6-9/{len(body)}", "ranged get ContentRange")
    suffix = s3.get_object(Bucket=BUCKET, Key="dir/hello.txt", Range="bytes=-5")
    check_eq(suffix["Body"].read(), body[-5:], "suffix range body")
    expect_client_error(
        lambda: s3.get_object(Bucket=BUCKET, Key="dir/hello.txt", Range="bytes=1000-2000"),
        "InvalidRange",
        416,
        "range past the end",
    )
    print("ok: ranged get_object")

    # Multipart through the transfer manager.
    big = pattern(13 * MIB + 123, 7)
    config = TransferConfig(
        multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=3
    )
    s3.upload_fileobj(
        io.BytesIO(big),
        BUCKET,
        "big/multipart.bin",
        ExtraArgs={"ContentType": "application/octet-stream", "Metadata": {"kind": "multipart"}},
        Config=config,
    )
    head = s3.head_object(Bucket=BUCKET, Key="big/multipart.bin")
    check_eq(head["ContentLength"], len(big), "multipart object size")
    check(head["ETag"].endswith('-3"'), f"multipart ETag should end in -3, got {head['ETag']}")
    check_eq(head["Metadata"], {"kind": "multipart"}, "multipart object metadata")
    out = io.BytesIO()
    s3.download_fileobj(BUCKET, "big/multipart.bin", out, Config=config)
    check(out.getvalue() == big, "multipart object downloaded (ranged, in parallel) differs")
    whole = s3.get_object(Bucket=BUCKET, Key="big/multipart.bin")["Body"].read()
    check(hashlib.md5(whole).digest() == hashlib.md5(big).digest(), "multipart object body differs")
    print("ok: upload_fileobj multipart / download_fileobj")

    # Paginated listing.
    page_keys = [f"page/{i:03d}" for i in range(23)]
    for key in page_keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    paginator = s3.get_paginator("list_objects_v2")
    pages = list(
        paginator.paginate(Bucket=BUCKET, Prefix="page/", PaginationConfig={"PageSize": 5})
    )
    check_eq(len(pages), 5, "number of list_objects_v2 pages of 5 for 23 keys")
    listed = [o["Key"] for p in pages for o in p.get("Contents", [])]
    check_eq(listed, page_keys, "paginated keys")
    check(all(o["Size"] == 8 for p in pages for o in p["Contents"]), "listed sizes")
    tops = list(paginator.paginate(Bucket=BUCKET, Delimiter="/", PaginationConfig={"PageSize": 1}))
    prefixes = [c["Prefix"] for p in tops for c in p.get("CommonPrefixes", [])]
    check_eq(prefixes, ["big/", "dir/", "page/"], "CommonPrefixes with delimiter across pages")
    print("ok: list_objects_v2 paginator")

    # Copy.
    s3.copy_object(
        Bucket=BUCKET,
        Key="copy/hello.txt",
        CopySource={"Bucket": BUCKET, "Key": "dir/hello.txt"},
    )
    copied = s3.get_object(Bucket=BUCKET, Key="copy/hello.txt")
    check_eq(copied["Body"].read(), body, "copied body")
    check_eq(copied["Metadata"], {"color": "blue", "owner": "boto3"}, "copied metadata (COPY)")
    s3.copy_object(
        Bucket=BUCKET,
        Key="copy/replaced.txt",
        CopySource={"Bucket": BUCKET, "Key": "dir/hello.txt"},
        MetadataDirective="REPLACE",
        Metadata={"new": "yes"},
        ContentType="text/x-new",
    )
    replaced = s3.head_object(Bucket=BUCKET, Key="copy/replaced.txt")
    check_eq(replaced["Metadata"], {"new": "yes"}, "metadata after REPLACE copy")
    check_eq(replaced["ContentType"], "text/x-new", "content type after REPLACE copy")
    print("ok: copy_object")

    # Batch delete.
    doomed = page_keys[:10] + ["page/does-not-exist"]
    result = s3.delete_objects(
        Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in doomed], "Quiet": False}
    )
    deleted = sorted(d["Key"] for d in result.get("Deleted", []))
    check_eq(deleted, sorted(doomed), "delete_objects Deleted")
    check_eq(result.get("Errors", []), [], "delete_objects Errors")
    remaining = [
        o["Key"]
        for p in paginator.paginate(Bucket=BUCKET, Prefix="page/")
        for o in p.get("Contents", [])
    ]
    check_eq(remaining, page_keys[10:], "keys left after delete_objects")
    print("ok: delete_objects")

    # Presigned GET fetched by a plain HTTP client.
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "dir/hello.txt"}, ExpiresIn=300
    )
    check("X-Amz-Signature=" in url, f"presigned URL is not SigV4: {url}")
    with urllib.request.urlopen(url, timeout=30) as response:
        check_eq(response.status, 200, "presigned GET status")
        check_eq(response.read(), body, "presigned GET body")
    tampered = url.replace("dir/hello.txt", "copy/hello.txt")
    try:
        urllib.request.urlopen(tampered, timeout=30)
        fail("a presigned URL for one key must not work for another")
    except urllib.error.HTTPError as err:
        check_eq(err.code, 403, "tampered presigned URL status")
    print("ok: presigned GET")

    # Create-only put.
    s3.put_object(Bucket=BUCKET, Key="once.txt", Body=b"first", IfNoneMatch="*")
    expect_client_error(
        lambda: s3.put_object(Bucket=BUCKET, Key="once.txt", Body=b"second", IfNoneMatch="*"),
        "PreconditionFailed",
        412,
        "second put with IfNoneMatch='*'",
    )
    check_eq(
        s3.get_object(Bucket=BUCKET, Key="once.txt")["Body"].read(),
        b"first",
        "body after refused create-only put",
    )
    print("ok: put_object IfNoneMatch='*'")

    # Errors.
    expect_client_error(
        lambda: s3.get_object(Bucket=BUCKET, Key="no/such/key"), "NoSuchKey", 404, "missing key"
    )
    expect_client_error(
        lambda: s3.get_object(Bucket="no-such-bucket-here", Key="k"),
        "NoSuchBucket",
        404,
        "missing bucket (get_object)",
    )
    expect_client_error(
        lambda: s3.list_objects_v2(Bucket="no-such-bucket-here"),
        "NoSuchBucket",
        404,
        "missing bucket (list_objects_v2)",
    )
    # HEAD responses have no body, so botocore reports the status as the code.
    expect_client_error(
        lambda: s3.head_object(Bucket=BUCKET, Key="no/such/key"), "404", 404, "head missing key"
    )
    expect_client_error(
        lambda: s3.delete_bucket(Bucket=BUCKET), "BucketNotEmpty", 409, "delete non-empty bucket"
    )
    print("ok: error cases")

    # Clean up: empty the bucket and delete it.
    for page in paginator.paginate(Bucket=BUCKET):
        objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if objects:
            s3.delete_objects(Bucket=BUCKET, Delete={"Objects": objects, "Quiet": True})
    s3.delete_bucket(Bucket=BUCKET)
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    check(BUCKET not in names, "bucket still listed after delete_bucket")
    print("ok: cleanup / delete_bucket")
    print("boto3 checks passed")


def run(main):
    """Runs a check script's main; any unexpected exception is a failure with its traceback."""
    try:
        main()
    except SystemExit:
        raise
    except Exception as err:
        import traceback

        traceback.print_exc()
        fail(f"unexpected {type(err).__name__}: {err}")


def client_from_argv(script):
    """The boto3 S3 client of the endpoint given as the only argument (path style, no retries)."""
    if len(sys.argv) != 2:
        fail(f"usage: {script} ENDPOINT_URL")
    return boto3.client(
        "s3",
        endpoint_url=sys.argv[1],
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


if __name__ == "__main__":
    run(main)
