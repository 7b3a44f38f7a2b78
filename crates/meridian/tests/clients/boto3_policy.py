#!/usr/bin/env python3
"""boto3 against a live Meridian server: bucket policies, Block Public Access and object ownership,
with anonymous requests from an UNSIGNED client.

Usage: boto3_policy.py ENDPOINT_URL READER_ID READER_SECRET WRITER_ID WRITER_SECRET
The admin credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; the keys "reader" (no
grant) and "writer" (write grant on the bucket once it exists: the test gives it before the
second phase) are created by the test. Exits non-zero with a message naming the failed check.
Run by crates/meridian/tests/access.rs.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import boto3  # noqa: E402
from botocore import UNSIGNED  # noqa: E402
from botocore.config import Config  # noqa: E402

from boto3_check import check_eq, expect_client_error, fail, run  # noqa: E402

BUCKET = "policy-bucket"
ARN = f"arn:aws:s3:::{BUCKET}"


def client(endpoint, key_id=None, secret=None, unsigned=False):
    config = Config(
        signature_version=UNSIGNED if unsigned else "s3v4",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1},
    )
    kwargs = {"aws_access_key_id": key_id, "aws_secret_access_key": secret} if key_id else {}
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config, **kwargs)


def user(name):
    return {"AWS": [f"arn:aws:iam::meridian:user/{name}"]}


POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Sid": "PublicPrefix", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
         "Resource": f"{ARN}/public/*"},
        {"Sid": "ReaderListsHome", "Effect": "Allow", "Principal": user("reader"), "Action": "s3:ListBucket",
         "Resource": ARN, "Condition": {"StringLike": {"s3:prefix": ["home/*"]}}},
        {"Sid": "ReaderReadsHome", "Effect": "Allow", "Principal": user("reader"), "Action": ["s3:Get*"],
         "Resource": f"{ARN}/home/*"},
        {"Sid": "NoDeletes", "Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject",
         "Resource": f"{ARN}/*"},
    ],
}

# Readers of home/ only: not public.
PRIVATE_POLICY = {"Version": "2012-10-17", "Statement": [POLICY["Statement"][2]]}


def keys(listing):
    return [o["Key"] for o in listing.get("Contents", [])]


def main():
    if len(sys.argv) != 6:
        fail("usage: boto3_policy.py ENDPOINT_URL READER_ID READER_SECRET WRITER_ID WRITER_SECRET")
    endpoint = sys.argv[1]
    admin = client(endpoint)
    anon = client(endpoint, unsigned=True)
    reader = client(endpoint, sys.argv[2], sys.argv[3])
    writer = client(endpoint, sys.argv[4], sys.argv[5])

    for key in ["public/a.txt", "private/b.txt", "home/r/x"]:
        admin.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    expect_client_error(lambda: anon.get_object(Bucket=BUCKET, Key="public/a.txt"), "AccessDenied", 403,
                        "anonymous GET without a policy")
    expect_client_error(lambda: admin.get_bucket_policy(Bucket=BUCKET), "NoSuchBucketPolicy", 404, "no policy yet")
    expect_client_error(lambda: admin.get_bucket_policy_status(Bucket=BUCKET), "NoSuchBucketPolicy", 404,
                        "no policy status yet")

    # Malformed policies are refused with MalformedPolicy and a specific message.
    for bad, words in [
        ("{not json", "valid JSON"),
        (json.dumps({"Statement": [dict(POLICY["Statement"][0], Action="iam:PassRole")]}), "invalid action"),
        (json.dumps({"Statement": [dict(POLICY["Statement"][0], Principal=user("nobody"))]}), "no key named"),
        (json.dumps({"Statement": [dict(POLICY["Statement"][0], Resource="arn:aws:s3:::other/*")]}),
         "invalid resource"),
    ]:
        err = expect_client_error(lambda: admin.put_bucket_policy(Bucket=BUCKET, Policy=bad), "MalformedPolicy",
                                  400, f"malformed policy ({words})")
        message = err.response["Error"].get("Message", "")
        if words not in message:
            fail(f"MalformedPolicy message {message!r} does not say {words!r}")
    print("ok: malformed policies refused")

    admin.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(POLICY))
    check_eq(json.loads(admin.get_bucket_policy(Bucket=BUCKET)["Policy"]), POLICY, "GetBucketPolicy")
    check_eq(admin.get_bucket_policy_status(Bucket=BUCKET)["PolicyStatus"]["IsPublic"], True, "public policy")

    # The public prefix: anonymous GET and HEAD there, nothing else.
    check_eq(anon.get_object(Bucket=BUCKET, Key="public/a.txt")["Body"].read(), b"public/a.txt", "anonymous GET")
    check_eq(anon.head_object(Bucket=BUCKET, Key="public/a.txt")["ContentLength"], 12, "anonymous HEAD")
    for what, call in [
        ("GET outside the prefix", lambda: anon.get_object(Bucket=BUCKET, Key="private/b.txt")),
        ("PUT into the prefix", lambda: anon.put_object(Bucket=BUCKET, Key="public/new", Body=b"x")),
        ("DELETE in the prefix", lambda: anon.delete_object(Bucket=BUCKET, Key="public/a.txt")),
        ("listing", lambda: anon.list_objects_v2(Bucket=BUCKET, Prefix="public/")),
        ("GetBucketPolicy", lambda: anon.get_bucket_policy(Bucket=BUCKET)),
    ]:
        expect_client_error(call, "AccessDenied", 403, f"anonymous {what}")
    print("ok: a public prefix lets anonymous GETs of that prefix through and nothing else")

    # A key without any grant: what the policy allows it, with the s3:prefix condition.
    check_eq(keys(reader.list_objects_v2(Bucket=BUCKET, Prefix="home/")), ["home/r/x"], "reader lists home/")
    check_eq(reader.get_object(Bucket=BUCKET, Key="home/r/x")["Body"].read(), b"home/r/x", "reader reads home/")
    for what, call in [
        ("list without a prefix", lambda: reader.list_objects_v2(Bucket=BUCKET)),
        ("list private/", lambda: reader.list_objects_v2(Bucket=BUCKET, Prefix="private/")),
        ("get private/", lambda: reader.get_object(Bucket=BUCKET, Key="private/b.txt")),
        ("put home/", lambda: reader.put_object(Bucket=BUCKET, Key="home/r/y", Body=b"y")),
    ]:
        expect_client_error(call, "AccessDenied", 403, f"reader {what}")

    # The explicit Deny beats the writer's grant; the admin key is not subject to policies.
    writer.put_object(Bucket=BUCKET, Key="home/w", Body=b"w")
    expect_client_error(lambda: writer.delete_object(Bucket=BUCKET, Key="home/w"), "AccessDenied", 403,
                        "Deny beats a write grant")
    admin.delete_object(Bucket=BUCKET, Key="home/w")
    print("ok: policy allows for keys without grants, explicit deny wins over grants")

    # Block Public Access.
    expect_client_error(lambda: admin.get_public_access_block(Bucket=BUCKET),
                        "NoSuchPublicAccessBlockConfiguration", 404, "no public access block yet")
    admin.put_public_access_block(Bucket=BUCKET, PublicAccessBlockConfiguration={"RestrictPublicBuckets": True})
    check_eq(admin.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"],
             {"BlockPublicAcls": False, "IgnorePublicAcls": False, "BlockPublicPolicy": False,
              "RestrictPublicBuckets": True}, "GetPublicAccessBlock")
    expect_client_error(lambda: anon.get_object(Bucket=BUCKET, Key="public/a.txt"), "AccessDenied", 403,
                        "RestrictPublicBuckets: the public policy no longer lets anonymous requests in")
    check_eq(reader.get_object(Bucket=BUCKET, Key="home/r/x")["Body"].read(), b"home/r/x",
             "RestrictPublicBuckets leaves keys alone")

    admin.put_public_access_block(Bucket=BUCKET, PublicAccessBlockConfiguration={"BlockPublicPolicy": True})
    check_eq(anon.get_object(Bucket=BUCKET, Key="public/a.txt")["Body"].read(), b"public/a.txt",
             "an existing public policy keeps working under BlockPublicPolicy")
    expect_client_error(lambda: admin.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(POLICY)), "AccessDenied",
                        403, "BlockPublicPolicy refuses a public policy")
    admin.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(PRIVATE_POLICY))
    check_eq(admin.get_bucket_policy_status(Bucket=BUCKET)["PolicyStatus"]["IsPublic"], False, "private policy")

    admin.put_public_access_block(Bucket=BUCKET, PublicAccessBlockConfiguration={"BlockPublicAcls": True})
    expect_client_error(lambda: admin.put_bucket_acl(Bucket=BUCKET, ACL="public-read"), "AccessDenied", 403,
                        "BlockPublicAcls refuses a public ACL")
    admin.put_public_access_block(Bucket=BUCKET, PublicAccessBlockConfiguration={"IgnorePublicAcls": False})
    admin.put_bucket_acl(Bucket=BUCKET, ACL="public-read")
    check_eq(anon.get_object(Bucket=BUCKET, Key="private/b.txt")["Body"].read(), b"private/b.txt",
             "the public-read ACL")
    admin.put_public_access_block(Bucket=BUCKET, PublicAccessBlockConfiguration={"IgnorePublicAcls": True})
    expect_client_error(lambda: anon.get_object(Bucket=BUCKET, Key="private/b.txt"), "AccessDenied", 403,
                        "IgnorePublicAcls: the public ACL allows nothing")
    admin.delete_public_access_block(Bucket=BUCKET)
    expect_client_error(lambda: admin.get_public_access_block(Bucket=BUCKET),
                        "NoSuchPublicAccessBlockConfiguration", 404, "public access block deleted")
    print("ok: public access block")

    # Object ownership.
    expect_client_error(lambda: admin.get_bucket_ownership_controls(Bucket=BUCKET),
                        "OwnershipControlsNotFoundError", 404, "no ownership controls yet")
    enforced = {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    expect_client_error(lambda: admin.put_bucket_ownership_controls(Bucket=BUCKET, OwnershipControls=enforced),
                        "InvalidBucketAclWithObjectOwnership", 400, "BucketOwnerEnforced with a public ACL")
    admin.put_bucket_acl(Bucket=BUCKET, ACL="private")
    admin.put_bucket_ownership_controls(Bucket=BUCKET, OwnershipControls=enforced)
    check_eq(admin.get_bucket_ownership_controls(Bucket=BUCKET)["OwnershipControls"], enforced,
             "GetBucketOwnershipControls")
    expect_client_error(lambda: admin.put_bucket_acl(Bucket=BUCKET, ACL="public-read"),
                        "AccessControlListNotSupported", 400, "ACLs disabled: PutBucketAcl")
    expect_client_error(lambda: admin.put_object_acl(Bucket=BUCKET, Key="home/r/x", ACL="public-read"),
                        "AccessControlListNotSupported", 400, "ACLs disabled: PutObjectAcl")
    # Object writes may name only bucket-owner-full-control while ACLs are disabled.
    admin.put_object(Bucket=BUCKET, Key="acl/owner", Body=b"o", ACL="bucket-owner-full-control")
    expect_client_error(lambda: admin.put_object(Bucket=BUCKET, Key="acl/private", Body=b"p", ACL="private"),
                        "AccessControlListNotSupported", 400, "ACLs disabled: PutObject with an ACL")
    expect_client_error(lambda: admin.copy_object(Bucket=BUCKET, Key="acl/copy", ACL="public-read",
                                                  CopySource={"Bucket": BUCKET, "Key": "acl/owner"}),
                        "AccessControlListNotSupported", 400, "ACLs disabled: CopyObject with an ACL")
    expect_client_error(lambda: admin.create_multipart_upload(Bucket=BUCKET, Key="acl/mp", ACL="private"),
                        "AccessControlListNotSupported", 400, "ACLs disabled: CreateMultipartUpload with an ACL")
    expect_client_error(lambda: admin.head_object(Bucket=BUCKET, Key="acl/private"), "404", 404,
                        "a refused write stores nothing")
    admin.get_bucket_acl(Bucket=BUCKET)
    admin.delete_bucket_ownership_controls(Bucket=BUCKET)
    expect_client_error(lambda: admin.get_bucket_ownership_controls(Bucket=BUCKET),
                        "OwnershipControlsNotFoundError", 404, "ownership controls deleted")
    admin.put_object(Bucket=BUCKET, Key="acl/private", Body=b"p", ACL="private")
    admin.put_object(Bucket=BUCKET, Key="acl/owner", Body=b"o", ACL="bucket-owner-full-control")
    expect_client_error(lambda: admin.put_object(Bucket=BUCKET, Key="acl/public", Body=b"x", ACL="public-read"),
                        "NotImplemented", 501, "object ACLs beyond the bucket's grants")
    print("ok: ownership controls")

    admin.delete_bucket_policy(Bucket=BUCKET)
    expect_client_error(lambda: admin.get_bucket_policy(Bucket=BUCKET), "NoSuchBucketPolicy", 404, "policy deleted")
    expect_client_error(lambda: reader.get_object(Bucket=BUCKET, Key="home/r/x"), "AccessDenied", 403,
                        "without the policy the reader has nothing")
    print("policy checks passed")


if __name__ == "__main__":
    run(main)
