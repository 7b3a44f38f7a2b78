#!/usr/bin/env python3
"""boto3 against a live Meridian server: S3 Object Lock — lock-enabled buckets, the lock
configuration and its default retention, retention and legal hold of versions, deletes by
version refused while locked, GOVERNANCE bypass with and without s3:BypassGovernanceRetention,
COMPLIANCE that cannot be shortened, and the errors.

Usage: boto3_lock.py ENDPOINT_URL WRITER_ID WRITER_SECRET
The admin credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; the bucket
"boto3-lock" (created with lock enabled) and the key "writer" (write grant on it, not an owner)
are made by the test. Exits non-zero with a message naming the failed check. Run by
crates/meridian/tests/clients.rs.
"""

import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

from boto3_check import check, check_eq, expect_client_error, fail, run  # noqa: E402

BUCKET = "boto3-lock"
HOLD_BUCKET = "boto3-lock-hold"
PLAIN_BUCKET = "boto3-lock-plain"


def client(endpoint, key_id=None, secret=None, checksums="when_supported"):
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1},
        request_checksum_calculation=checksums,
    )
    kwargs = {"aws_access_key_id": key_id, "aws_secret_access_key": secret} if key_id else {}
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config, **kwargs)


def in_(seconds):
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)


def check_near(actual, expected, what, slack_s=120):
    if abs((actual - expected).total_seconds()) > slack_s:
        fail(f"{what}: expected about {expected}, got {actual}")


def lock_bucket_and_configuration(s3):
    check_eq(s3.get_bucket_versioning(Bucket=BUCKET).get("Status"), "Enabled", "a lock bucket is versioned")
    config = s3.get_object_lock_configuration(Bucket=BUCKET)["ObjectLockConfiguration"]
    check_eq(config, {"ObjectLockEnabled": "Enabled"}, "lock enabled, no default rule yet")
    expect_client_error(
        lambda: s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Suspended"}),
        "InvalidBucketState", 409, "suspending versioning of a lock bucket")

    s3.create_bucket(Bucket=PLAIN_BUCKET)
    expect_client_error(lambda: s3.get_object_lock_configuration(Bucket=PLAIN_BUCKET),
                        "ObjectLockConfigurationNotFoundError", 404, "no lock configuration")
    enabled = {"ObjectLockEnabled": "Enabled"}
    expect_client_error(lambda: s3.put_object_lock_configuration(Bucket=PLAIN_BUCKET, ObjectLockConfiguration=enabled),
                        "InvalidBucketState", 409, "lock on an unversioned bucket")
    expect_client_error(
        lambda: s3.put_object(Bucket=PLAIN_BUCKET, Key="k", Body=b"x", ObjectLockMode="GOVERNANCE",
                              ObjectLockRetainUntilDate=in_(3600)),
        "InvalidRequest", 400, "lock headers on a bucket without lock")
    s3.put_object(Bucket=PLAIN_BUCKET, Key="k", Body=b"x")
    expect_client_error(lambda: s3.get_object_retention(Bucket=PLAIN_BUCKET, Key="k"), "InvalidRequest", 400,
                        "retention in a bucket without lock")

    def rule(**retention):
        return {"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": retention}}

    for bad, code in [
        (rule(Mode="GOVERNANCE", Days=1, Years=1), "MalformedXML"),
        (rule(Mode="GOVERNANCE"), "MalformedXML"),
        (rule(Days=1), "MalformedXML"),
        (rule(Mode="GOVERNANCE", Days=0), "InvalidArgument"),
        (rule(Mode="COMPLIANCE", Years=101), "InvalidArgument"),
    ]:
        expect_client_error(lambda: s3.put_object_lock_configuration(Bucket=BUCKET, ObjectLockConfiguration=bad),
                            code, 400, f"lock configuration {bad}")
    s3.put_object_lock_configuration(Bucket=BUCKET, ObjectLockConfiguration=rule(Mode="GOVERNANCE", Days=1))
    got = s3.get_object_lock_configuration(Bucket=BUCKET)["ObjectLockConfiguration"]
    check_eq(got, rule(Mode="GOVERNANCE", Days=1), "the default rule reads back")
    print("ok: lock bucket, configuration and its errors")


def default_retention_and_deletes(s3, writer, writer_name):
    v1 = s3.put_object(Bucket=BUCKET, Key="doc", Body=b"one")["VersionId"]
    head = s3.head_object(Bucket=BUCKET, Key="doc", VersionId=v1)
    check_eq(head.get("ObjectLockMode"), "GOVERNANCE", "default mode on the new version")
    check_near(head["ObjectLockRetainUntilDate"], in_(86400), "default retain-until: a day from now")
    retention = s3.get_object_retention(Bucket=BUCKET, Key="doc", VersionId=v1)["Retention"]
    check_eq(retention["Mode"], "GOVERNANCE", "GetObjectRetention mode")
    check_eq(retention["RetainUntilDate"], head["ObjectLockRetainUntilDate"], "GetObjectRetention date")
    got = s3.get_object(Bucket=BUCKET, Key="doc")
    check_eq((got["ObjectLockMode"], got["Body"].read()), ("GOVERNANCE", b"one"), "GET returns the lock headers")

    expect_client_error(lambda: s3.delete_object(Bucket=BUCKET, Key="doc", VersionId=v1), "AccessDenied", 403,
                        "deleting a retained version by id")
    deleted = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "doc", "VersionId": v1}]})
    check_eq([(e["Code"], e["VersionId"]) for e in deleted.get("Errors", [])], [("AccessDenied", v1)],
             "DeleteObjects refuses the retained version")
    marker = s3.delete_object(Bucket=BUCKET, Key="doc")
    check_eq(marker.get("DeleteMarker"), True, "a delete without a version id adds a marker")
    check_eq(s3.get_object(Bucket=BUCKET, Key="doc", VersionId=v1)["Body"].read(), b"one", "the version stays")
    print("ok: default retention applied; deletes by version refused, delete markers allowed")

    # GOVERNANCE bypass: asked for by a key without the permission, it does nothing.
    expect_client_error(
        lambda: writer.delete_object(Bucket=BUCKET, Key="doc", VersionId=v1, BypassGovernanceRetention=True),
        "AccessDenied", 403, "bypass without s3:BypassGovernanceRetention")
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": [f"arn:aws:iam::meridian:user/{writer_name}"]},
        "Action": "s3:BypassGovernanceRetention", "Resource": f"arn:aws:s3:::{BUCKET}/*"}]}
    s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(policy))
    expect_client_error(lambda: writer.delete_object(Bucket=BUCKET, Key="doc", VersionId=v1), "AccessDenied", 403,
                        "the permission alone, without the bypass header")
    writer.delete_object(Bucket=BUCKET, Key="doc", VersionId=v1, BypassGovernanceRetention=True)
    expect_client_error(lambda: s3.head_object(Bucket=BUCKET, Key="doc", VersionId=v1), "404", 404,
                        "the bypassed version is gone")
    # DeleteObjects judges the permission key by key: here the policy allows it under free/ only.
    policy["Statement"][0]["Resource"] = f"arn:aws:s3:::{BUCKET}/free/*"
    s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(policy))
    freed = s3.put_object(Bucket=BUCKET, Key="free/a", Body=b"a")["VersionId"]
    kept = s3.put_object(Bucket=BUCKET, Key="kept/b", Body=b"b")["VersionId"]
    out = writer.delete_objects(Bucket=BUCKET, BypassGovernanceRetention=True, Delete={"Objects": [
        {"Key": "free/a", "VersionId": freed}, {"Key": "kept/b", "VersionId": kept}]})
    check_eq([(d["Key"], d.get("VersionId")) for d in out.get("Deleted", [])], [("free/a", freed)],
             "DeleteObjects bypasses where the policy allows it")
    check_eq([(e["Key"], e["Code"]) for e in out.get("Errors", [])], [("kept/b", "AccessDenied")],
             "and nowhere else")
    s3.delete_bucket_policy(Bucket=BUCKET)
    s3.delete_object(Bucket=BUCKET, Key="kept/b", VersionId=kept, BypassGovernanceRetention=True)

    # The owner (admin) has the permission; shortening GOVERNANCE needs the bypass too.
    v2 = s3.put_object(Bucket=BUCKET, Key="gov", Body=b"two")["VersionId"]
    sooner = {"Mode": "GOVERNANCE", "RetainUntilDate": in_(600)}
    expect_client_error(lambda: s3.put_object_retention(Bucket=BUCKET, Key="gov", VersionId=v2, Retention=sooner),
                        "AccessDenied", 403, "shortening GOVERNANCE without bypass")
    s3.put_object_retention(Bucket=BUCKET, Key="gov", VersionId=v2, Retention=sooner, BypassGovernanceRetention=True)
    got = s3.get_object_retention(Bucket=BUCKET, Key="gov", VersionId=v2)["Retention"]
    check_near(got["RetainUntilDate"], in_(600), "the shortened retention")
    later = {"Mode": "GOVERNANCE", "RetainUntilDate": in_(7200)}
    s3.put_object_retention(Bucket=BUCKET, Key="gov", Retention=later)  # extending needs nothing
    check_near(s3.head_object(Bucket=BUCKET, Key="gov")["ObjectLockRetainUntilDate"], in_(7200),
               "extended retention of the current version, as HEAD shows it")
    s3.put_object_retention(Bucket=BUCKET, Key="gov", VersionId=v2, Retention={}, BypassGovernanceRetention=True)
    expect_client_error(lambda: s3.get_object_retention(Bucket=BUCKET, Key="gov", VersionId=v2),
                        "NoSuchObjectLockConfiguration", 404, "the removed retention")
    s3.delete_object(Bucket=BUCKET, Key="gov", VersionId=v2)
    print("ok: GOVERNANCE bypass with and without the permission, shortened, extended and removed")


def compliance(s3):
    until = in_(3600)
    put = s3.put_object(Bucket=BUCKET, Key="comp", Body=b"kept", ObjectLockMode="COMPLIANCE",
                        ObjectLockRetainUntilDate=until)
    version = put["VersionId"]
    head = s3.head_object(Bucket=BUCKET, Key="comp")
    check_eq(head["ObjectLockMode"], "COMPLIANCE", "explicit headers override the default rule")
    check_near(head["ObjectLockRetainUntilDate"], until, "explicit retain-until", slack_s=2)
    for retention, what in [
        ({"Mode": "COMPLIANCE", "RetainUntilDate": in_(60)}, "shortening COMPLIANCE"),
        ({"Mode": "GOVERNANCE", "RetainUntilDate": in_(7200)}, "turning COMPLIANCE into GOVERNANCE"),
        ({}, "removing COMPLIANCE"),
    ]:
        expect_client_error(
            lambda: s3.put_object_retention(Bucket=BUCKET, Key="comp", VersionId=version, Retention=retention,
                                            BypassGovernanceRetention=True),
            "AccessDenied", 403, what)
    s3.put_object_retention(Bucket=BUCKET, Key="comp", VersionId=version,
                            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": in_(7200)})
    expect_client_error(
        lambda: s3.delete_object(Bucket=BUCKET, Key="comp", VersionId=version, BypassGovernanceRetention=True),
        "AccessDenied", 403, "COMPLIANCE cannot be bypassed")
    expect_client_error(
        lambda: s3.put_object(Bucket=BUCKET, Key="past", Body=b"x", ObjectLockMode="GOVERNANCE",
                              ObjectLockRetainUntilDate=in_(-60)),
        "InvalidArgument", 400, "a retain-until date in the past")
    expect_client_error(lambda: s3.put_object(Bucket=BUCKET, Key="half", Body=b"x", ObjectLockMode="GOVERNANCE"),
                        "InvalidArgument", 400, "a mode without a date")
    print("ok: COMPLIANCE only extends and is never bypassed")


def legal_hold_copy_and_multipart(s3, endpoint):
    s3.create_bucket(Bucket=HOLD_BUCKET, ObjectLockEnabledForBucket=True)
    s3.put_object(Bucket=HOLD_BUCKET, Key="free", Body=b"f")
    expect_client_error(lambda: s3.get_object_legal_hold(Bucket=HOLD_BUCKET, Key="free"),
                        "NoSuchObjectLockConfiguration", 404, "a version that never had a legal hold")
    version = s3.put_object(Bucket=HOLD_BUCKET, Key="held", Body=b"h", ObjectLockLegalHoldStatus="ON")["VersionId"]
    check_eq(s3.head_object(Bucket=HOLD_BUCKET, Key="held").get("ObjectLockLegalHoldStatus"), "ON", "HEAD hold")
    expect_client_error(lambda: s3.get_object_retention(Bucket=HOLD_BUCKET, Key="held"),
                        "NoSuchObjectLockConfiguration", 404, "a hold without a retention")
    expect_client_error(
        lambda: s3.delete_object(Bucket=HOLD_BUCKET, Key="held", VersionId=version, BypassGovernanceRetention=True),
        "AccessDenied", 403, "a legal hold cannot be bypassed")
    s3.put_object_legal_hold(Bucket=HOLD_BUCKET, Key="held", VersionId=version, LegalHold={"Status": "OFF"})
    check_eq(s3.get_object_legal_hold(Bucket=HOLD_BUCKET, Key="held")["LegalHold"]["Status"], "OFF", "hold off")
    check_eq(s3.head_object(Bucket=HOLD_BUCKET, Key="held").get("ObjectLockLegalHoldStatus"), "OFF", "HEAD off")
    s3.put_object_legal_hold(Bucket=HOLD_BUCKET, Key="held", LegalHold={"Status": "ON"})
    check_eq(s3.get_object_legal_hold(Bucket=HOLD_BUCKET, Key="held", VersionId=version)["LegalHold"]["Status"],
             "ON", "hold on again, by the current version")
    expect_client_error(lambda: s3.delete_object(Bucket=HOLD_BUCKET, Key="held", VersionId=version), "AccessDenied",
                        403, "held again")
    s3.put_object_legal_hold(Bucket=HOLD_BUCKET, Key="held", LegalHold={"Status": "OFF"})
    s3.delete_object(Bucket=HOLD_BUCKET, Key="held", VersionId=version)
    print("ok: legal hold on and off")

    # A copy takes the lock it asks for, not its source's.
    s3.put_object(Bucket=HOLD_BUCKET, Key="src", Body=b"s", ObjectLockLegalHoldStatus="ON")
    s3.copy_object(Bucket=HOLD_BUCKET, Key="copy", CopySource={"Bucket": HOLD_BUCKET, "Key": "src"},
                   ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=in_(3600))
    head = s3.head_object(Bucket=HOLD_BUCKET, Key="copy")
    check_eq((head.get("ObjectLockMode"), head.get("ObjectLockLegalHoldStatus")), ("GOVERNANCE", None),
             "the copy's lock")

    upload = s3.create_multipart_upload(Bucket=HOLD_BUCKET, Key="multi", ObjectLockMode="COMPLIANCE",
                                        ObjectLockRetainUntilDate=in_(3600), ObjectLockLegalHoldStatus="ON")
    part = s3.upload_part(Bucket=HOLD_BUCKET, Key="multi", UploadId=upload["UploadId"], PartNumber=1, Body=b"p")
    s3.complete_multipart_upload(Bucket=HOLD_BUCKET, Key="multi", UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    head = s3.head_object(Bucket=HOLD_BUCKET, Key="multi")
    check_eq((head.get("ObjectLockMode"), head.get("ObjectLockLegalHoldStatus")), ("COMPLIANCE", "ON"),
             "the lock of a multipart upload, carried through completion")

    bare = client(endpoint, checksums="when_required")
    expect_client_error(
        lambda: bare.put_object(Bucket=HOLD_BUCKET, Key="bare", Body=b"x", ObjectLockLegalHoldStatus="ON"),
        "InvalidRequest", 400, "a lock PUT without Content-MD5 or a checksum")
    bare.put_object(Bucket=HOLD_BUCKET, Key="bare", Body=b"x")  # no lock asked, no default: fine
    locked = s3.create_multipart_upload(Bucket=HOLD_BUCKET, Key="multi-bare", ObjectLockLegalHoldStatus="ON")
    expect_client_error(
        lambda: bare.upload_part(Bucket=HOLD_BUCKET, Key="multi-bare", UploadId=locked["UploadId"], PartNumber=1,
                                 Body=b"p"),
        "InvalidRequest", 400, "a part of a locked upload without Content-MD5 or a checksum")
    s3.abort_multipart_upload(Bucket=HOLD_BUCKET, Key="multi-bare", UploadId=locked["UploadId"])
    print("ok: lock headers on copy and multipart; Content-MD5 or a checksum required")


def lock_headers_follow_permissions(s3, writer, writer_name):
    """GET and HEAD show a version's retention only to callers allowed s3:GetObjectRetention and
    its legal hold only to those allowed s3:GetObjectLegalHold ("multi" in HOLD_BUCKET has both;
    the writer has no grant there, only what the policy below allows)."""
    def allow(actions):
        return json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": [f"arn:aws:iam::meridian:user/{writer_name}"]},
            "Action": actions, "Resource": [f"arn:aws:s3:::{HOLD_BUCKET}/*"]}]})

    def seen(what):
        head = writer.head_object(Bucket=HOLD_BUCKET, Key="multi")
        got = writer.get_object(Bucket=HOLD_BUCKET, Key="multi")
        got["Body"].read()
        for response, name in ((head, "HEAD"), (got, "GET")):
            shown = (response.get("ObjectLockMode"), "ObjectLockRetainUntilDate" in response,
                     response.get("ObjectLockLegalHoldStatus"))
            check_eq(shown, what, f"lock headers on {name}")

    s3.put_bucket_policy(Bucket=HOLD_BUCKET, Policy=allow(["s3:GetObject"]))
    seen((None, False, None))
    s3.put_bucket_policy(Bucket=HOLD_BUCKET, Policy=allow(["s3:GetObject", "s3:GetObjectRetention"]))
    seen(("COMPLIANCE", True, None))
    s3.put_bucket_policy(Bucket=HOLD_BUCKET,
                         Policy=allow(["s3:GetObject", "s3:GetObjectRetention", "s3:GetObjectLegalHold"]))
    seen(("COMPLIANCE", True, "ON"))
    s3.delete_bucket_policy(Bucket=HOLD_BUCKET)
    head = s3.head_object(Bucket=HOLD_BUCKET, Key="multi")
    check_eq((head.get("ObjectLockMode"), head.get("ObjectLockLegalHoldStatus")), ("COMPLIANCE", "ON"),
             "the admin key sees every lock header")
    print("ok: lock headers only to callers allowed to read the lock")


def main():
    if len(sys.argv) != 4:
        fail("usage: boto3_lock.py ENDPOINT_URL WRITER_ID WRITER_SECRET")
    endpoint = sys.argv[1]
    s3 = client(endpoint)
    writer = client(endpoint, sys.argv[2], sys.argv[3])
    check(writer.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0, "the writer sees the empty bucket")
    lock_bucket_and_configuration(s3)
    default_retention_and_deletes(s3, writer, "writer")
    compliance(s3)
    legal_hold_copy_and_multipart(s3, endpoint)
    lock_headers_follow_permissions(s3, writer, "writer")
    print("object lock checks passed")


if __name__ == "__main__":
    run(main)
