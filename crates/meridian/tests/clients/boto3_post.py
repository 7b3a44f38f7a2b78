#!/usr/bin/env python3
"""Browser-style form uploads (POST object) with policies from boto3's generate_presigned_post.

Usage: boto3_post.py ENDPOINT_URL
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Exits non-zero with a message
naming the failed check. Run by crates/meridian/tests/clients.rs.
"""

import base64
import json
import os
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import urllib3  # noqa: E402

from boto3_check import check, check_eq, client_from_argv, fail, run  # noqa: E402

BUCKET = "boto3-post"
HTTP = urllib3.PoolManager(retries=False)


def post(post, body, filename="hello.txt", extra=None):
    """Submits the form as a browser would: the policy's fields, then the file last."""
    fields = list(post["fields"].items()) + list((extra or {}).items())
    fields.append(("file", (filename, body, "text/plain")))
    data, content_type = urllib3.encode_multipart_formdata(fields)
    return HTTP.request("POST", post["url"], body=data, headers={"Content-Type": content_type}, redirect=False)


def error_code(resp):
    text = resp.data.decode(errors="replace")
    return text.split("<Code>")[1].split("</Code>")[0] if "<Code>" in text else text


def main():
    s3 = client_from_argv("boto3_post.py")
    s3.create_bucket(Bucket=BUCKET)
    conditions = [
        {"success_action_status": "201"},
        ["starts-with", "$Content-Type", "text/"],
        ["content-length-range", 1, 1024],
    ]
    fields = {"success_action_status": "201", "Content-Type": "text/plain"}
    form = s3.generate_presigned_post(BUCKET, "uploads/hello.txt", Fields=fields, Conditions=conditions,
                                      ExpiresIn=300)

    resp = post(form, b"hello from a form")
    check_eq(resp.status, 201, f"201 as asked: {resp.data!r}")
    text = resp.data.decode()
    check("<Key>uploads/hello.txt</Key>" in text and "<ETag>" in text, f"PostResponse: {text}")
    got = s3.get_object(Bucket=BUCKET, Key="uploads/hello.txt")
    check_eq(got["Body"].read(), b"hello from a form", "the uploaded bytes")
    check_eq(got["ContentType"], "text/plain", "the form's Content-Type")
    print("ok: form upload with success_action_status 201")

    templated = s3.generate_presigned_post(BUCKET, "uploads/${filename}")
    resp = post(templated, b"named by the file")
    check_eq((resp.status, error_code(resp)), (501, "NotImplemented"), "${filename} is refused, not stored")

    resp = post(form, b"x" * 2000, filename="big.txt")
    check_eq((resp.status, error_code(resp)), (400, "EntityTooLarge"), "over content-length-range")
    small = s3.generate_presigned_post(BUCKET, "small", Conditions=[["content-length-range", 10, 100]])
    resp = post(small, b"tiny")
    check_eq((resp.status, error_code(resp)), (400, "EntityTooSmall"), "under content-length-range")
    wrong_type = dict(form, fields=dict(form["fields"], **{"Content-Type": "image/png"}))
    resp = post(wrong_type, b"not text", filename="img.png")
    check_eq((resp.status, error_code(resp)), (403, "AccessDenied"), "starts-with violated")
    resp = post(form, b"sneaky", extra={"x-amz-meta-extra": "not in the policy"})
    check_eq((resp.status, error_code(resp)), (403, "AccessDenied"), "a field the policy does not name")
    policy = json.loads(base64.b64decode(form["fields"]["policy"]))
    policy["conditions"] = [c for c in policy["conditions"] if not (isinstance(c, list) and c[0] == "content-length-range")]
    forged = dict(form, fields=dict(form["fields"], policy=base64.b64encode(json.dumps(policy).encode()).decode()))
    resp = post(forged, b"x" * 2000, filename="forged.txt")
    check_eq((resp.status, error_code(resp)), (403, "SignatureDoesNotMatch"), "a policy changed after signing")
    s3.delete_object(Bucket=BUCKET, Key="uploads/hello.txt")
    for key in ["uploads/hello.txt", "uploads/${filename}", "small"]:
        try:
            s3.head_object(Bucket=BUCKET, Key=key)
            fail(f"a refused form stored {key}")
        except s3.exceptions.ClientError:
            pass
    print("ok: policy conditions and signature enforced")

    plain = s3.generate_presigned_post(BUCKET, "plain.txt")
    resp = post(plain, b"plain")
    check_eq(resp.status, 204, "204 by default")
    redirect = "http://example.test/done?from=form"
    to_page = s3.generate_presigned_post(BUCKET, "redirected.txt", Fields={"success_action_redirect": redirect},
                                         Conditions=[{"success_action_redirect": redirect}])
    resp = post(to_page, b"redirected")
    check_eq(resp.status, 303, "303 to success_action_redirect")
    location = urllib.parse.urlparse(resp.headers["Location"])
    query = urllib.parse.parse_qs(location.query)
    check_eq((location.netloc, query["key"], query["bucket"]), ("example.test", ["redirected.txt"], [BUCKET]),
             "redirect target")
    head = s3.head_object(Bucket=BUCKET, Key="redirected.txt")
    check_eq(query["etag"][0].strip('"'), head["ETag"].strip('"'), "the redirect carries the ETag")
    expired = s3.generate_presigned_post(BUCKET, "late.txt", ExpiresIn=-60)
    resp = post(expired, b"late")
    check_eq((resp.status, error_code(resp)), (403, "AccessDenied"), "an expired policy")
    anonymous = {"url": form["url"], "fields": {"key": "anon.txt"}}
    resp = post(anonymous, b"anonymous")
    check_eq((resp.status, error_code(resp)), (403, "AccessDenied"), "an unsigned form")
    print("ok: success_action_redirect, default status, expiry, anonymous")
    print("post checks passed")


if __name__ == "__main__":
    run(main)
