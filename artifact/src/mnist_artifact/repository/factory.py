"""Opening a model repository by its location: a directory, or s3://bucket/prefix. boto3 is imported
only when a bucket is opened, so that a directory needs numpy and Pillow alone (MLServer's
repository/factory.py does the same)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from .base import Repository, S3Location
from .local import LocalRepository

SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):/")  # s3://, gs://, and typos such as s3:/bucket
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's bucket naming rules



def parse_location(name: str, text: str) -> Path | S3Location:
    """MODEL_DIR / --model-dir: a local directory or s3://bucket/prefix. Any other URI (gs://, a typo
    such as s3:/bucket) is a ValueError naming `name`, never taken as a relative path."""
    scheme = SCHEME.match(text)
    if scheme is None:
        return Path(text)
    if not text.startswith("s3://"):
        raise ValueError(f"{name} {text!r}: unsupported scheme {scheme.group(1)!r}; a model repository is a local "
                         "directory or s3://bucket/prefix (Google Cloud Storage, MinIO, Ceph: s3:// with "
                         "AWS_ENDPOINT_URL_S3)")
    bucket, _, prefix = text.removeprefix("s3://").partition("/")
    if not BUCKET.fullmatch(bucket):
        raise ValueError(f"{name} {text!r}: {bucket!r} is not a bucket name (3-63 characters: a-z, 0-9, '.', '-')")
    return S3Location(bucket, prefix.strip("/"))


def open_repository(location: Path | S3Location, *, cache_dir: Path | None = None,
                    on_request: Callable[[str], None] | None = None) -> Repository:
    """The repository at `location`. For a bucket, versions are downloaded into `cache_dir` (kept
    for the next start), or into a temporary directory deleted after each read; `on_request(operation)`
    is called before each request to the store."""
    if isinstance(location, S3Location):
        from .s3 import S3Repository  # boto3 is imported only by who uses a bucket

        return S3Repository(location, cache_dir=cache_dir, on_request=on_request)
    return LocalRepository(Path(location))
