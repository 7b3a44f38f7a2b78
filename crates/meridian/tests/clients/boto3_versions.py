#!/usr/bin/env python3
"""boto3 against a live Meridian server: S3 versioning — version ids, delete markers, the
paginator of ListObjectVersions, tags and ACLs of a version, DeleteObjects by version.

Usage: boto3_versions.py ENDPOINT_URL
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Exits non-zero with a message
naming the failed check. Run by crates/meridian/tests/clients.rs.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


from boto3_check import check, check_eq, client_from_argv, expect_client_error, run  # noqa: E402

BUCKET = "boto3-versions"


def main():
    s3 = client_from_argv("boto3_versions.py")
    s3.create_bucket(Bucket=BUCKET)
    check("Status" not in s3.get_bucket_versioning(Bucket=BUCKET), "no status before versioning")
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    check_eq(s3.get_bucket_versioning(Bucket=BUCKET).get("Status"), "Enabled", "versioning status")

    ids = [s3.put_object(Bucket=BUCKET, Key="doc", Body=f"body {n}".encode())["VersionId"] for n in range(3)]
    check_eq(len(set(ids)), 3, "three distinct version ids")
    for n, version in enumerate(ids):
        body = s3.get_object(Bucket=BUCKET, Key="doc", VersionId=version)["Body"].read()
        check_eq(body, f"body {n}".encode(), f"version {n} by id")
    print("ok: version ids on put and get")

    # Tags of an old version are its own.
    s3.put_object_tagging(Bucket=BUCKET, Key="doc", VersionId=ids[0], Tagging={"TagSet": [{"Key": "v", "Value": "0"}]})
    old = s3.get_object_tagging(Bucket=BUCKET, Key="doc", VersionId=ids[0])
    check_eq((old["VersionId"], old["TagSet"]), (ids[0], [{"Key": "v", "Value": "0"}]), "tags of version 0")
    check_eq(s3.get_object_tagging(Bucket=BUCKET, Key="doc")["TagSet"], [], "the current version has no tags")
    check_eq(s3.get_object_acl(Bucket=BUCKET, Key="doc", VersionId=ids[1])["Grants"][0]["Permission"], "FULL_CONTROL",
             "ACL of a version")
    print("ok: tagging and ACL by version")

    marker = s3.delete_object(Bucket=BUCKET, Key="doc")
    check_eq(marker.get("DeleteMarker"), True, "a delete makes a marker")
    expect_client_error(lambda: s3.get_object(Bucket=BUCKET, Key="doc"), "NoSuchKey", 404, "get behind a marker")
    expect_client_error(lambda: s3.head_object(Bucket=BUCKET, Key="doc", VersionId=marker["VersionId"]),
                        "405", 405, "head of a marker by id")

    # 25 keys x 2 versions, through the paginator in pages of 7.
    for n in range(25):
        for _ in range(2):
            s3.put_object(Bucket=BUCKET, Key=f"many/{n:02}", Body=b"x")
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix="many/",
                                                              PaginationConfig={"PageSize": 7})
    listed = [(v["Key"], v["VersionId"], v["IsLatest"]) for page in pages for v in page.get("Versions", [])]
    check_eq(len(listed), 50, "every version listed once")
    check_eq(len(set(listed)), 50, "no version listed twice")
    check_eq(sum(1 for _, _, latest in listed if latest), 25, "one latest version per key")
    all_versions = s3.list_object_versions(Bucket=BUCKET, Prefix="doc")
    check_eq([m["VersionId"] for m in all_versions["DeleteMarkers"]], [marker["VersionId"]], "the marker is listed")
    check_eq([v["VersionId"] for v in all_versions["Versions"]], ids[::-1], "versions newest first")
    print("ok: ListObjectVersions pages, markers")

    # DeleteObjects with version ids removes them for good; the marker's removal restores the key.
    objects = [{"Key": "doc", "VersionId": ids[2]}, {"Key": "doc", "VersionId": marker["VersionId"]}]
    out = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": objects})
    check_eq(sorted(d["VersionId"] for d in out["Deleted"]), sorted(o["VersionId"] for o in objects), "deleted ids")
    check_eq(s3.get_object(Bucket=BUCKET, Key="doc")["Body"].read(), b"body 1", "the previous version is current")
    expect_client_error(lambda: s3.get_object(Bucket=BUCKET, Key="doc", VersionId=ids[2]), "NoSuchVersion", 404,
                        "a deleted version")
    print("ok: DeleteObjects by version")
    print("versioning checks passed")


if __name__ == "__main__":
    run(main)
