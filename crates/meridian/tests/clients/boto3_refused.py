#!/usr/bin/env python3
"""boto3 against a live Meridian server: PUTs the server refuses before reading their body leave
the client's connection usable. botocore sends PutObject with `Expect: 100-continue` and skips
the body when the final answer comes first; the server must not then read the next request's
bytes as that body (a bare `400 Bad Request` without S3 XML), and a body it did not read must
not cost the client its answer. Every call here is on one client, so it reuses its connection.

Usage: boto3_refused.py ENDPOINT_URL
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Exits non-zero with a message
naming the failed check. Run by crates/meridian/tests/clients.rs.
"""

import datetime
import io
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from boto3_check import check_eq, client_from_argv, expect_client_error, pattern, run  # noqa: E402

BUCKET = "boto3-refused"
ROUNDS = 20
# Small and medium bodies, and one past the 1 MiB the server reads to keep a connection.
SIZES = [1, 64 * 1024, 3 * 1024 * 1024]


def refused_puts(s3, body):
    """Two PUTs refused before their body is read, each with a file-like body (botocore then
    asks for 100 Continue) and with bytes."""
    expect_client_error(lambda: s3.put_object(Bucket="boto3-refused-missing", Key="k", Body=io.BytesIO(body)),
                        "NoSuchBucket", 404, "a PUT to a bucket that does not exist")
    until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    expect_client_error(lambda: s3.put_object(Bucket=BUCKET, Key="k", Body=body, ObjectLockMode="GOVERNANCE",
                                              ObjectLockRetainUntilDate=until),
                        "InvalidRequest", 400, "lock headers on a bucket without lock")


def later_calls_answer(s3, round_no, size):
    """The same client's next calls get their answers, errors as S3 XML."""
    key = f"r{round_no}-{size}"
    data = pattern(1000 + round_no, key)
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    check_eq(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read(), data, f"{key}: read back")
    expect_client_error(lambda: s3.head_object(Bucket=BUCKET, Key="missing"), "404", 404, f"{key}: HEAD missing")
    expect_client_error(lambda: s3.get_object(Bucket=BUCKET, Key="missing"), "NoSuchKey", 404, f"{key}: GET missing")
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=key)["KeyCount"]
    check_eq(listed, 1, f"{key}: listed")


def main():
    s3 = client_from_argv("boto3_refused.py")
    s3.create_bucket(Bucket=BUCKET)
    bodies = {size: pattern(size, f"refused-{size}") for size in SIZES}
    for round_no in range(ROUNDS):
        for size in SIZES:
            refused_puts(s3, bodies[size])
            later_calls_answer(s3, round_no, size)
    print(f"ok: {ROUNDS} rounds of refused PUTs ({SIZES} bytes) on one client")
    print("refused put checks passed")


if __name__ == "__main__":
    run(main)
