"""Model repositories: where the trainer publishes versions and the service reads them (docs/artifact.md).

A repository is a local directory (local.py) or a prefix of an S3-compatible bucket (s3.py), opened
by its location (factory.py) and driven through one interface (base.py). Both hold the same
layout and both hand a version over only after format.load has verified it:

    <root>/<name>/<version>/manifest.json + weights.npz (+ report/)
    <root>/<name>/labels.json

A version is published atomically for readers: it becomes visible once its manifest exists, and the
manifest is written last. Two publishers at once get distinct version numbers, and two label changes
at once never lose one of them.
"""

from .base import Repository, RepositoryError, S3Location, Snapshot
from .factory import open_repository, parse_location
from .local import LocalRepository, stamp

__all__ = ["LocalRepository", "Repository", "RepositoryError", "S3Location", "Snapshot", "open_repository",
           "parse_location", "stamp"]
