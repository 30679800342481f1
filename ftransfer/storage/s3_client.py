"""The object store's client: where it is, how to reach it, and its errors in ours.

Theory of operation
-------------------
``S3Location`` is what ``serve --store s3://BUCKET[/PREFIX]`` names, with the
endpoint and region beside it. ``connect`` makes one boto3 client for it (boto3 is
the reference S3 client, and its clients are thread-safe: the Store port is
synchronous and runs in worker threads, so one client with a connection pool as
large as the store's thread pool serves every request). Credentials come only from
boto3's standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, ``~/.aws/credentials``, instance roles): never from the command
line, and never logged.

The client is configured for a store reached over a network that may fail:
short connect timeouts, botocore's standard retry mode (a few attempts with
backoff, for throttling and dropped connections), and path-style addressing when
an endpoint is given (what S3-compatible stores such as SeaweedFS and MinIO
expect).

``mapped`` turns whatever botocore raises into the ftransfer error tree (errors.py)
in one place: a missing key is ``NotFound``; refused credentials, a missing
bucket, an unreachable store and every other failure of the store are
``StorageIOError`` (code 40) with a message saying which, so a client sees a clear
reason and the server's operator the same reason in the log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .._records import Record
from ..errors import FtransferError, NotFound, PathRefused, StorageIOError, UsageError

CONNECT_TIMEOUT_S = 5.0
"""How long a connection to the store may take before the attempt fails."""
READ_TIMEOUT_S = 60.0
"""How long the store may be silent on an open request."""
ATTEMPTS = 3
"""botocore's standard retry mode: tries per request (throttling, resets)."""
MAX_KEY_BYTES = 1024
"""S3's longest key, in UTF-8 bytes."""

_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_CREDENTIALS = frozenset(
    {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"}
)


class S3Location(Record):
    """A bucket, a key prefix inside it (may be empty), and how to reach them."""

    bucket: str
    prefix: str = ""
    """Every key starts with this ("" or ending in ``/``)."""
    endpoint: str | None = None
    """The store's URL (None: AWS's own, from the region)."""
    region: str | None = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_store_url(url: str, endpoint: str | None, region: str | None) -> S3Location:
    """``s3://BUCKET[/PREFIX]`` into a location, or UsageError saying what is wrong."""
    if not url.startswith("s3://"):
        raise UsageError(f"--store {url}: expected s3://BUCKET[/PREFIX]")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not 3 <= len(bucket) <= 63 or not all(c.isalnum() or c in ".-" for c in bucket):
        raise UsageError(f"--store {url}: a bucket name is 3 to 63 letters, digits, '.' or '-'")
    prefix = prefix.strip("/")
    return S3Location(
        bucket=bucket, prefix=prefix + "/" if prefix else "", endpoint=endpoint, region=region
    )


def connect(location: S3Location, *, pool: int) -> Any:
    """A boto3 S3 client for ``location`` with ``pool`` connections (imported here:
    boto3 takes a third of a second to import, and only an S3 server needs it)."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"max_attempts": ATTEMPTS, "mode": "standard"},
        max_pool_connections=pool,
        s3={"addressing_style": "path" if location.endpoint else "auto"},
        tcp_keepalive=True,
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=location.endpoint,
        region_name=location.region or session.region_name or "us-east-1",
        config=config,
    )


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("" for anything else)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def translate(exc: Exception, what: str, location: S3Location) -> FtransferError:
    """The ftransfer error for a botocore failure met while handling ``what``."""
    from botocore import exceptions as bx

    if isinstance(exc, FtransferError):
        return exc
    code = error_code(exc)
    if code in _MISSING:
        return NotFound(f"{what}: no such file or directory")
    if code == "NoSuchBucket":
        return StorageIOError(f"the object store has no bucket {location.bucket!r}")
    if code in _CREDENTIALS:
        return StorageIOError(
            f"the object store refused the server's credentials for {location.url} ({code})"
        )
    if code == "KeyTooLongError":
        return PathRefused(f"{what}: longer than the object store allows")
    if isinstance(exc, bx.NoCredentialsError):
        return StorageIOError(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        )
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionError, bx.HTTPClientError)):
        where = location.endpoint or "S3"
        return StorageIOError(f"{what}: the object store at {where} is unreachable")
    if code:
        message = error_message(exc)
        return StorageIOError(f"{what}: the object store failed ({code}: {message})")
    return StorageIOError(f"{what}: the object store failed ({type(exc).__name__})")


def error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", {})
    return str(response.get("Error", {}).get("Message", ""))[:200]


@contextlib.contextmanager
def mapped(what: str, location: S3Location) -> Iterator[None]:
    """Run a store request; raise its failure as an ftransfer error."""
    try:
        yield
    except FtransferError:
        raise
    except Exception as exc:  # botocore raises many unrelated types: map them all
        raise translate(exc, what, location) from None
