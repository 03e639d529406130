"""A model repository in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, GCS's XML API): s3://bucket/prefix.

Same layout as a directory (local.py), written so that readers never see half a version:

    publish   1. claim the next number: PUT <name>/<v>/.claim with If-None-Match: * (a 412 means
                 another publisher has it: take the next); the claim stays, so the number is never reused
              2. PUT the weights and the report
              3. PUT manifest.json, last (If-None-Match: *): from now on <v> is a version
    labels    GET labels.json and its ETag, PUT it back with If-Match: <ETag> (If-None-Match: * when
              there was none); a 412 means another promoter wrote first: read again and retry
    poll      one ListObjectsV2 of <name>/ (one more per 1,000 objects): the complete versions with
              their manifests' ETags, and labels.json's ETag, so changes cost no download

Credentials, region and endpoint come from boto3's default chain (AWS_* variables, profiles, web
identity such as IRSA). boto3 >= 1.36 sends CRC checksums that GCS and older MinIO reject: checksums
are sent and validated only when an operation requires them, unless AWS_REQUEST_CHECKSUM_CALCULATION /
AWS_RESPONSE_CHECKSUM_VALIDATION say otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from .. import format
from ..format import ArtifactError
from .base import Repository, RepositoryError, S3Location, Snapshot, json_bytes, labels_document, stage

CLAIM = ".claim"
CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict"}  # 412, and 409 while a write is in flight
LABEL_ATTEMPTS = 8
DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
          "AllAccessDisabled"}


@dataclass
class Listing:
    manifests: dict[int, str] = field(default_factory=dict)  # complete version -> its manifest's ETag
    numbers: set[int] = field(default_factory=set)  # every number in use, complete or not
    labels: str | None = None  # labels.json's ETag


def client_config(environ=os.environ) -> Config:
    """Timeouts and retries (standard mode: exponential backoff with jitter, throttling included),
    checksums only when required unless the environment says otherwise, and path-style addressing
    with a custom endpoint (MinIO and most self-hosted stores have no per-bucket DNS names)."""
    options = {"retries": {"mode": "standard", "max_attempts": 3}, "connect_timeout": 3, "read_timeout": 20}
    if not environ.get("AWS_REQUEST_CHECKSUM_CALCULATION"):
        options["request_checksum_calculation"] = "when_required"
    if not environ.get("AWS_RESPONSE_CHECKSUM_VALIDATION"):
        options["response_checksum_validation"] = "when_required"
    if environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL"):
        options["s3"] = {"addressing_style": "path"}
    return Config(**options)


class S3Repository(Repository):
    def __init__(self, location: S3Location, *, cache_dir: Path | None = None, cache_versions: int = 8,
                 on_request: Callable[[str], None] | None = None):
        self.bucket, self.prefix = location.bucket, f"{location.prefix}/" if location.prefix else ""
        self.uri = str(location)
        self.client = boto3.session.Session().client("s3", config=client_config())
        self.cache_dir, self.cache_versions = cache_dir, cache_versions
        if on_request is not None:
            self.client.meta.events.register(
                "before-send.s3", lambda event_name, **_: on_request(event_name.rsplit(".", 1)[-1]))

    def __str__(self) -> str:
        return self.uri

    def location(self, name: str, version: int | None = None) -> str:
        return f"s3://{self.bucket}/{self._key(name)}" + ("" if version is None else f"/{version}")

    def _key(self, name: str, *parts: object) -> str:
        return "/".join([f"{self.prefix}{name}", *map(str, parts)])

    # -- requests, and what their failures mean -------------------------------------------------

    def _error(self, operation: str, e: Exception) -> RepositoryError:
        where = f"{self.uri} ({self.client.meta.endpoint_url})"
        if isinstance(e, ClientError):
            code, status = _code(e), e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                cause = f"bucket {self.bucket!r} does not exist"
            elif code in DENIED or status == 403:
                cause = (f"access to bucket {self.bucket!r} denied ({code}): "
                         "check the AWS credentials and the bucket's policy")
            else:
                cause = f"{code or 'error'} (HTTP {status}) from bucket {self.bucket!r}"
        elif isinstance(e, NoCredentialsError):
            cause = ("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                     "or a workload identity")
        else:
            cause = f"cannot reach the store: {e}"
        return RepositoryError(operation, f"{where}: {operation}: {cause}")

    def _call(self, operation: str, method: str, **kwargs) -> dict:
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError) as e:
            raise self._error(operation, e) from None

    def _get(self, operation: str, key: str) -> tuple[bytes, str] | None:
        """(body, ETag) of `key`, None when there is no such object."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read(), response["ETag"]
        except ClientError as e:
            if _code(e) == "NoSuchKey":
                return None
            raise self._error(operation, e) from None
        except BotoCoreError as e:
            raise self._error(operation, e) from None

    def _put_if(self, operation: str, key: str, body: bytes, **condition) -> bool:
        """PUT under a condition (IfNoneMatch="*" or IfMatch=etag); False when it does not hold."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **condition)
            return True
        except ClientError as e:
            if _code(e) in CONFLICT:
                return False
            raise self._error(operation, e) from None
        except BotoCoreError as e:
            raise self._error(operation, e) from None

    # -- reading ----------------------------------------------------------------------------------

    def _list(self, name: str) -> Listing:
        listing, root = Listing(), self._key(name) + "/"
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root):
                for item in page.get("Contents", []):
                    head, _, rest = item["Key"][len(root):].partition("/")
                    if head == format.LABELS_FILE and not rest:
                        listing.labels = item["ETag"]
                    elif format.is_version(head) and rest:
                        listing.numbers.add(int(head))
                        if rest == format.MANIFEST:
                            listing.manifests[int(head)] = item["ETag"]
        except (ClientError, BotoCoreError) as e:
            raise self._error("list", e) from None
        return listing

    def snapshot(self, name: str) -> Snapshot:
        listing = self._list(name)
        return Snapshot(listing.manifests, listing.labels)

    def read_manifest(self, name: str, version: int) -> dict:
        body = self._manifest_bytes(name, version)[0]
        return format.parse_manifest(body, self.location(name, version))

    def _manifest_bytes(self, name: str, version: int) -> tuple[bytes, str]:
        found = self._get("download", self._key(name, version, format.MANIFEST))
        if found is None:
            raise ArtifactError(f"model {name!r} has no version {version} in {self.uri}")
        return found

    def load(self, name: str, version: int) -> tuple[dict, dict]:
        """Download into the cache (a copy already there is used when its manifest is the same object,
        and verified again), verify, and keep it for the next start."""
        manifest, etag = self._manifest_bytes(name, version)
        try:
            if self.cache_dir is None:
                with tempfile.TemporaryDirectory(prefix="mnist-model-") as scratch:
                    return self._download(name, version, manifest, Path(scratch) / str(version))
            return self._load_cached(name, version, manifest, etag)
        except OSError as e:  # the local disk, not the store: full, read-only, not a directory
            where = self.cache_dir or "a temporary directory"
            raise RepositoryError("download", f"{self.location(name, version)}: download: cannot write {where}: "
                                  f"{e.strerror or e}") from None

    def _load_cached(self, name: str, version: int, manifest: bytes, etag: str) -> tuple[dict, dict]:
        models = self.cache_dir / name
        entry = models / etag.strip('"') / str(version)  # a rewritten manifest is a new entry, never an edit
        # Every worker of a pod shares the cache: another may evict this entry while it is read here
        # (format.load then fails as for a damaged copy: downloaded again), and never touches a
        # download in progress (_evict).
        if (entry / format.WEIGHTS).is_file():
            try:
                result = self._verified(name, version, entry)
                with contextlib.suppress(OSError):
                    os.utime(entry)
                return result
            except ArtifactError:
                shutil.rmtree(entry.parent, ignore_errors=True)  # a damaged copy: download again
        models.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=format.TEMP_PREFIX, dir=models))
        try:
            result = self._download(name, version, manifest, scratch / str(version))
            entry.parent.mkdir(exist_ok=True)
            try:
                os.rename(scratch / str(version), entry)
            except OSError:
                pass  # another worker cached the same object first
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self._evict(models)
        return result

    def _download(self, name: str, version: int, manifest: bytes, directory: Path) -> tuple[dict, dict]:
        directory.mkdir(parents=True)
        (directory / format.MANIFEST).write_bytes(manifest)
        key = self._key(name, version, format.WEIGHTS)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            with open(directory / format.WEIGHTS, "wb") as f:
                shutil.copyfileobj(body, f, 1 << 20)
        except ClientError as e:
            if _code(e) != "NoSuchKey":
                raise self._error("download", e) from None
        except BotoCoreError as e:
            raise self._error("download", e) from None
        return self._verified(name, version, directory)

    def _verified(self, name: str, version: int, directory: Path) -> tuple[dict, dict]:
        """format.load, its messages naming the object in the bucket rather than the local copy."""
        try:
            return format.load(directory)
        except ArtifactError as e:
            raise ArtifactError(str(e).replace(str(directory), self.location(name, version))) from None

    def _evict(self, models: Path) -> None:
        """Keep the `cache_versions` most recently used copies."""
        entries = []
        for parent in _listing(models):
            if parent.name.startswith(format.TEMP_PREFIX):
                continue  # a download in progress, of this worker or another
            for entry in _listing(parent):
                try:
                    if format.is_version(entry.name):
                        entries.append((entry.stat().st_mtime, entry))
                except OSError:
                    continue  # removed by another worker meanwhile
        for _, entry in sorted(entries, reverse=True)[self.cache_versions:]:
            shutil.rmtree(entry.parent, ignore_errors=True)

    def read_labels(self, name: str) -> format.VersionLabels:
        return self._labels(name)[0]

    def _labels(self, name: str) -> tuple[format.VersionLabels, str | None]:
        found = self._get("labels", self._key(name, format.LABELS_FILE))
        if found is None:
            return format.VersionLabels(), None
        where = self.location(name) + "/" + format.LABELS_FILE
        try:
            document = json.loads(found[0])
        except ValueError as e:
            raise ArtifactError(f"{where}: cannot read labels: {e}") from None
        return format.check_labels(document, where), found[1]

    # -- writing ----------------------------------------------------------------------------------

    def update_labels(self, name, change):
        key = self._key(name, format.LABELS_FILE)
        for attempt in range(LABEL_ATTEMPTS):
            current, etag = self._labels(name)
            labels = change(current)
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            if self._put_if("labels", key, labels_document(labels), **condition):
                return labels
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))  # another promoter wrote first
        raise ArtifactError(f"{self.location(name)}/{format.LABELS_FILE} changed {LABEL_ATTEMPTS} times while "
                            "this command tried to update it; nothing was changed: run it again")

    def publish(self, name, arrays, manifest, write_extras=None) -> int:
        with tempfile.TemporaryDirectory(prefix="mnist-publish-") as scratch:
            staging = Path(scratch)
            manifest = stage(staging, arrays, manifest, write_extras)
            version = self._claim(name)
            uploaded = []
            try:
                for path in sorted(p for p in staging.rglob("*") if p.is_file()):
                    uploaded.append(self._key(name, version, path.relative_to(staging).as_posix()))
                    with open(path, "rb") as body:
                        self._call("upload", "put_object", Key=uploaded[-1], Body=body)
                document = json_bytes({**manifest, "version": version})
                if not self._put_if("upload", self._key(name, version, format.MANIFEST), document, IfNoneMatch="*"):
                    raise ArtifactError(f"{self.location(name, version)}: a manifest appeared under a claimed version")
            except BaseException:
                self._delete(uploaded)  # never a version without its manifest; tidy what was sent
                raise
            return version

    def _delete(self, keys: list[str]) -> None:
        """Best effort: the claim stays, so the number is not reused; a store that is down keeps the rest."""
        for key in keys:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except (ClientError, BotoCoreError):
                return

    def _claim(self, name: str) -> int:
        """The next free number, claimed so that no other publisher can take it."""
        version = max(self._list(name).numbers, default=0) + 1
        claim = json_bytes({"host": socket.gethostname(), "pid": os.getpid(),
                            "claimed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        while not self._put_if("upload", self._key(name, version, CLAIM), claim, IfNoneMatch="*"):
            version += 1
        return version

    def write_object(self, relative: str, data: bytes) -> str:
        self._call("upload", "put_object", Key=f"{self.prefix}{relative}", Body=data)
        return f"s3://{self.bucket}/{self.prefix}{relative}"


def _code(e: ClientError) -> str:
    return e.response.get("Error", {}).get("Code", "")


def _listing(directory: Path) -> list[Path]:
    """The entries of `directory`; none when another worker removed it meanwhile (Path.glob raises)."""
    try:
        return list(directory.iterdir())
    except OSError:
        return []
