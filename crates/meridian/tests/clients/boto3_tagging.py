#!/usr/bin/env python3
"""boto3 against a live Meridian server: object and bucket tagging, GetObjectAttributes.

Usage: boto3_tagging.py ENDPOINT_URL
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Exits non-zero with a message
naming the failed check. Run by crates/meridian/tests/clients.rs.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


from boto3_check import check, check_eq, client_from_argv, expect_client_error, run  # noqa: E402

MIB = 1024 * 1024
BUCKET = "boto3-tagging"


def tags(response):
    return {t["Key"]: t["Value"] for t in response["TagSet"]}


def tag_set(mapping):
    return {"TagSet": [{"Key": k, "Value": v} for k, v in mapping.items()]}


def main():
    s3 = client_from_argv("boto3_tagging.py")
    s3.create_bucket(Bucket=BUCKET)

    # x-amz-tagging on PUT; the count on GET and HEAD.
    s3.put_object(Bucket=BUCKET, Key="tagged", Body=b"tagged body", Tagging="project=meridian&team=ops%20team")
    check_eq(tags(s3.get_object_tagging(Bucket=BUCKET, Key="tagged")), {"project": "meridian", "team": "ops team"},
             "tags from x-amz-tagging")
    check_eq(s3.get_object(Bucket=BUCKET, Key="tagged").get("TagCount"), 2, "get_object TagCount")
    head = s3.head_object(Bucket=BUCKET, Key="tagged")
    check_eq(head["ResponseMetadata"]["HTTPHeaders"].get("x-amz-tagging-count"), "2", "head x-amz-tagging-count")
    print("ok: x-amz-tagging on put, tag count")

    # PutObjectTagging replaces the tags and nothing else.
    s3.put_object_tagging(Bucket=BUCKET, Key="tagged", Tagging=tag_set({"stage": "prod"}))
    check_eq(tags(s3.get_object_tagging(Bucket=BUCKET, Key="tagged")), {"stage": "prod"}, "replaced tags")
    after = s3.head_object(Bucket=BUCKET, Key="tagged")
    check_eq((after["ETag"], after["LastModified"]), (head["ETag"], head["LastModified"]),
             "tagging keeps the ETag and modification time")
    check_eq(s3.get_object(Bucket=BUCKET, Key="tagged")["Body"].read(), b"tagged body", "bytes kept")
    s3.delete_object_tagging(Bucket=BUCKET, Key="tagged")
    check_eq(s3.get_object_tagging(Bucket=BUCKET, Key="tagged")["TagSet"], [], "deleted tags")
    check("TagCount" not in s3.get_object(Bucket=BUCKET, Key="tagged"), "no TagCount without tags")
    print("ok: put/get/delete object tagging")

    # S3's limits, with its error codes.
    eleven = {f"k{i}": "v" for i in range(11)}
    expect_client_error(lambda: s3.put_object_tagging(Bucket=BUCKET, Key="tagged", Tagging=tag_set(eleven)),
                        "InvalidTag", 400, "11 tags")
    expect_client_error(lambda: s3.put_object_tagging(Bucket=BUCKET, Key="tagged", Tagging=tag_set({"k" * 129: "v"})),
                        "InvalidTag", 400, "a 129-character key")
    expect_client_error(lambda: s3.put_object_tagging(Bucket=BUCKET, Key="tagged", Tagging=tag_set({"k": "v" * 257})),
                        "InvalidTag", 400, "a 257-character value")
    dup = {"TagSet": [{"Key": "k", "Value": "1"}, {"Key": "k", "Value": "2"}]}
    expect_client_error(lambda: s3.put_object_tagging(Bucket=BUCKET, Key="tagged", Tagging=dup),
                        "InvalidTag", 400, "duplicate keys")
    header = "&".join(f"k{i}=v" for i in range(11))
    expect_client_error(lambda: s3.put_object(Bucket=BUCKET, Key="too-many", Body=b"x", Tagging=header),
                        "InvalidTag", 400, "11 tags in x-amz-tagging")
    expect_client_error(lambda: s3.head_object(Bucket=BUCKET, Key="too-many"), "404", 404, "a refused put stores nothing")
    expect_client_error(lambda: s3.put_object_tagging(Bucket=BUCKET, Key="missing", Tagging=tag_set({"a": "b"})),
                        "NoSuchKey", 404, "tagging a missing key")
    s3.put_object_tagging(Bucket=BUCKET, Key="tagged", Tagging=tag_set({f"k{i}": "v" * 256 for i in range(10)}))
    print("ok: tag limits")

    # Copies: tags follow the tagging directive, not the metadata directive.
    s3.put_object_tagging(Bucket=BUCKET, Key="tagged", Tagging=tag_set({"origin": "source"}))
    src = {"Bucket": BUCKET, "Key": "tagged"}
    s3.copy_object(Bucket=BUCKET, Key="copy-default", CopySource=src)
    check_eq(tags(s3.get_object_tagging(Bucket=BUCKET, Key="copy-default")), {"origin": "source"}, "COPY by default")
    s3.copy_object(Bucket=BUCKET, Key="copy-meta", CopySource=src, MetadataDirective="REPLACE", Metadata={"a": "b"})
    check_eq(tags(s3.get_object_tagging(Bucket=BUCKET, Key="copy-meta")), {"origin": "source"},
             "metadata REPLACE keeps the tags")
    s3.copy_object(Bucket=BUCKET, Key="copy-replace", CopySource=src, TaggingDirective="REPLACE", Tagging="new=tag")
    check_eq(tags(s3.get_object_tagging(Bucket=BUCKET, Key="copy-replace")), {"new": "tag"}, "tagging REPLACE")
    print("ok: copy with tagging directives")

    # Multipart: tags given at creation.
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="big", Tagging="kind=multipart", ChecksumAlgorithm="CRC32")
    parts = []
    for number, data in [(1, b"a" * (5 * MIB)), (2, b"b" * 1000)]:
        part = s3.upload_part(Bucket=BUCKET, Key="big", UploadId=upload["UploadId"], PartNumber=number, Body=data,
                              ChecksumAlgorithm="CRC32")
        parts.append({"PartNumber": number, "ETag": part["ETag"], "ChecksumCRC32": part["ChecksumCRC32"]})
    s3.complete_multipart_upload(Bucket=BUCKET, Key="big", UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": parts})
    check_eq(tags(s3.get_object_tagging(Bucket=BUCKET, Key="big")), {"kind": "multipart"}, "multipart tags")
    print("ok: multipart tags")

    # GetObjectAttributes.
    put = s3.put_object(Bucket=BUCKET, Key="attrs", Body=b"attributes", ChecksumAlgorithm="CRC32")
    every = ["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"]
    attrs = s3.get_object_attributes(Bucket=BUCKET, Key="attrs", ObjectAttributes=every)
    check_eq(attrs["ETag"].strip('"'), put["ETag"].strip('"'), "attributes ETag")
    check_eq(attrs["ObjectSize"], 10, "attributes ObjectSize")
    check_eq(attrs["StorageClass"], "STANDARD", "attributes StorageClass")
    check_eq(attrs["Checksum"].get("ChecksumCRC32"), put["ChecksumCRC32"], "attributes checksum")
    check("ObjectParts" not in attrs, "a single-part object has no parts")
    only_size = s3.get_object_attributes(Bucket=BUCKET, Key="attrs", ObjectAttributes=["ObjectSize"])
    check("ETag" not in only_size and only_size["ObjectSize"] == 10, f"only what was asked: {only_size}")
    big = s3.get_object_attributes(Bucket=BUCKET, Key="big", ObjectAttributes=every, MaxParts=1)
    check_eq(big["ObjectSize"], 5 * MIB + 1000, "multipart ObjectSize")
    check(big["ETag"].strip('"').endswith("-2"), f"multipart ETag: {big['ETag']}")
    op = big["ObjectParts"]
    check_eq((op["TotalPartsCount"], op["IsTruncated"], op["NextPartNumberMarker"]), (2, True, 1), "parts page")
    check_eq([(p["PartNumber"], p["Size"]) for p in op["Parts"]], [(1, 5 * MIB)], "first page of parts")
    rest = s3.get_object_attributes(Bucket=BUCKET, Key="big", ObjectAttributes=["ObjectParts"], PartNumberMarker=1)
    check_eq([(p["PartNumber"], p["Size"]) for p in rest["ObjectParts"]["Parts"]], [(2, 1000)], "next page")
    expect_client_error(lambda: s3.get_object_attributes(Bucket=BUCKET, Key="nope", ObjectAttributes=["ETag"]),
                        "NoSuchKey", 404, "attributes of a missing key")
    print("ok: get_object_attributes")

    # Lifecycle rules filtered by tags (and a prefix).
    def expires(key):
        return s3.head_object(Bucket=BUCKET, Key=key)["ResponseMetadata"]["HTTPHeaders"].get("x-meridian-expires-at")

    temp = {"Key": "class", "Value": "temp"}
    rule = {"ID": "temp-logs", "Status": "Enabled", "Expiration": {"Days": 1},
            "Filter": {"And": {"Prefix": "logs/", "Tags": [temp]}}}
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": [rule]})
    got = s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"][0]["Filter"]
    check_eq(got, {"And": {"Prefix": "logs/", "Tags": [temp]}}, "stored tag filter")
    s3.put_object(Bucket=BUCKET, Key="logs/temp", Body=b"x", Tagging="class=temp")
    s3.put_object(Bucket=BUCKET, Key="logs/kept", Body=b"x", Tagging="class=audit")
    s3.put_object(Bucket=BUCKET, Key="other/temp", Body=b"x", Tagging="class=temp")
    check(expires("logs/temp") is not None, "a tagged object under the prefix expires")
    check(expires("logs/kept") is None and expires("other/temp") is None, "others do not")
    s3.put_object_tagging(Bucket=BUCKET, Key="logs/kept", Tagging=tag_set({"class": "temp"}))
    check(expires("logs/kept") is not None, "retagging makes the rule apply")
    abort_rule = {"ID": "bad", "Status": "Enabled", "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                  "Filter": {"Tag": temp}}
    expect_client_error(lambda: s3.put_bucket_lifecycle_configuration(
        Bucket=BUCKET, LifecycleConfiguration={"Rules": [abort_rule]}), "InvalidRequest", 400, "abort with tags")
    s3.delete_bucket_lifecycle(Bucket=BUCKET)
    print("ok: lifecycle tag filters")

    # Bucket tagging.
    expect_client_error(lambda: s3.get_bucket_tagging(Bucket=BUCKET), "NoSuchTagSet", 404, "no bucket tags yet")
    s3.put_bucket_tagging(Bucket=BUCKET, Tagging=tag_set({"cost-center": "42", "env": "test"}))
    check_eq(tags(s3.get_bucket_tagging(Bucket=BUCKET)), {"cost-center": "42", "env": "test"}, "bucket tags")
    fifty_one = {f"k{i}": "v" for i in range(51)}
    expect_client_error(lambda: s3.put_bucket_tagging(Bucket=BUCKET, Tagging=tag_set(fifty_one)),
                        "InvalidTag", 400, "51 bucket tags")
    expect_client_error(lambda: s3.put_bucket_tagging(Bucket=BUCKET, Tagging=tag_set({"aws:x": "v"})),
                        "InvalidTag", 400, "an aws: key")
    s3.delete_bucket_tagging(Bucket=BUCKET)
    expect_client_error(lambda: s3.get_bucket_tagging(Bucket=BUCKET), "NoSuchTagSet", 404, "deleted bucket tags")
    print("ok: bucket tagging")
    print("tagging checks passed")


if __name__ == "__main__":
    run(main)
