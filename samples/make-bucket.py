"""Create an S3 bucket once the store answers (a new SeaweedFS takes a few seconds).

    python3 samples/make-bucket.py http://127.0.0.1:8333 files

Credentials come from the AWS environment variables, as for ``ftransfer serve``;
a bucket that exists already is fine.
"""

from __future__ import annotations

import sys
import time

import boto3


def main(endpoint: str, bucket: str) -> int:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket=bucket)
            print(f"created bucket {bucket}")
            return 0
        except Exception as exc:
            if "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc):
                print(f"bucket {bucket} exists")
                return 0
            if time.monotonic() > deadline:
                print(f"make-bucket: {exc}", file=sys.stderr)
                return 1
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
