"""Events as gzip-compressed JSON Lines files, for those without an event broker: a directory or an
s3:// location, written through the repository code the models use (mnist_artifact.repository).

Each process writes its own files, one a batch, each whole or not at all:

    <location>/<yyyy>/<mm>/<dd>/<hh>/<yyyymmddThhmmss.ffffff>Z-<host>-<pid>-<n>.jsonl.gz

one structured-mode CloudEvent a line (README.md shows how to read a week of them back).
"""

from __future__ import annotations

import gzip
import os
import socket
import time

from mnist_artifact.repository import Repository

COMPRESS_LEVEL = 6


class FileSink:
    def __init__(self, repository: Repository):
        self.repository = repository
        self.prefix = f"{socket.gethostname()}-{os.getpid()}"
        self.files = 0

    def __str__(self) -> str:
        return str(self.repository)

    def write(self, lines: list[bytes]) -> str:
        """Write one file of these lines; returns where it went. RepositoryError or OSError when it cannot."""
        now = time.time()
        hour = time.strftime("%Y/%m/%d/%H", time.gmtime(now))
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
        self.files += 1
        data = gzip.compress(b"".join(lines), compresslevel=COMPRESS_LEVEL, mtime=int(now))
        return self.repository.write_object(f"{hour}/{stamp}-{self.prefix}-{self.files}.jsonl.gz", data)
