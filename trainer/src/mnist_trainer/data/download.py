"""Download the four official MNIST files into a local cache, verified by sha256.

The cache holds the files decompressed under their official names, so it is itself a directory
`data.load` reads. Files are checked against OFFICIAL_SHA256 on every use and only ever appear
under their final name complete and verified (written to a temporary file, then renamed).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import sys
import tempfile
import zlib
from pathlib import Path

import platformdirs
import requests
from tqdm import tqdm

from mnist_artifact.format import sha256_file

from .readers import GZIP_MAGIC, DataError

OFFICIAL_SHA256 = {  # sha256 of the decompressed files (public facts; same as SHA256SUMS.raw)
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
DEFAULT_MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                   "https://storage.googleapis.com/cvdf-datasets/mnist/"]
CHUNK = 1 << 16
ERRNO_TEXT = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
DOWNLOAD_HINT = "set MNIST_DIR or pass --data DIR to use a local copy, or MNIST_MIRRORS to use another mirror"
CACHE_HINT = "set MNIST_CACHE_DIR to another directory or MNIST_DIR to use a local copy"


class DownloadError(DataError):
    """The official files could not be downloaded or cached (one-line message)."""


def default_cache_dir() -> Path:
    """$MNIST_CACHE_DIR if set, else the user's cache directory for mnist-mlp."""
    configured = os.environ.get("MNIST_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_cache_dir("mnist-mlp")) / "mnist"


def mirrors_from_env() -> list[str]:
    """Base URLs from $MNIST_MIRRORS (comma-separated), else DEFAULT_MIRRORS."""
    configured = [m.strip() for m in os.environ.get("MNIST_MIRRORS", "").split(",") if m.strip()]
    return configured or list(DEFAULT_MIRRORS)


def ensure_official_files(cache_dir=None, mirrors=None, *, timeout=30.0, progress=False) -> Path:
    """Make sure the cache holds the four verified official files; returns the cache directory.

    Files already cached with the right sha256 are kept; the others are fetched from the first
    mirror that serves them intact. `mirrors` None or empty means mirrors_from_env().
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    mirrors = list(mirrors or mirrors_from_env())
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the MNIST cache {cache}: {e.strerror or e}; "
                            f"{CACHE_HINT}") from None
    for name, sha in OFFICIAL_SHA256.items():
        target = cache / name
        if not (target.is_file() and sha256_file(target) == sha):
            _install(target, _download(f"{name}.gz", sha, mirrors, timeout, progress))
    return cache


def _download(filename: str, sha: str, mirrors: list[str], timeout: float, progress: bool) -> bytes:
    """The decompressed, verified content of `filename` from the first mirror that has it intact."""
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        try:
            content = _get(url, timeout, progress)
            # Servers that send .gz files with Content-Encoding: gzip get them gunzipped by requests.
            if content[:2] == GZIP_MAGIC:
                content = gzip.decompress(content)
        except requests.RequestException as e:
            failures.append(f"{url}: {_reason(e, timeout)}")
            continue
        except (OSError, EOFError, zlib.error) as e:
            failures.append(f"{url}: corrupt gzip ({e})")
            continue
        if hashlib.sha256(content).hexdigest() == sha:
            return content
        failures.append(f"{url}: sha256 mismatch")
    count = f"{len(mirrors)} mirror{'s' if len(mirrors) != 1 else ''}"
    raise DownloadError(f"could not download MNIST {filename} from {count} ({'; '.join(failures)}); "
                        f"{DOWNLOAD_HINT}")


def _get(url: str, timeout: float, progress: bool) -> bytes:
    with requests.get(url, timeout=timeout, stream=True) as response:
        response.raise_for_status()
        size = int(response.headers.get("Content-Length", 0)) or None
        body = bytearray()
        with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=url.rsplit("/", 1)[-1],
                  file=sys.stderr, disable=not progress) as bar:
            for chunk in response.iter_content(CHUNK):
                body += chunk
                bar.update(len(chunk))
        return bytes(body)


def _reason(error: requests.RequestException, timeout: float) -> str:
    """A short reason for a failed request; requests' own messages are long nested reprs."""
    if isinstance(error, requests.HTTPError):
        return f"HTTP {error.response.status_code} {error.response.reason}"
    if isinstance(error, requests.Timeout):
        return f"timed out after {timeout:g} s"
    errno_text = ERRNO_TEXT.search(str(error))
    if errno_text:
        return errno_text.group(1).strip().lower()
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _install(target: Path, content: bytes) -> None:
    """Write content to target atomically: readers never see a partial file under the final name."""
    temp = None
    try:
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".part",
                                         delete=False) as f:
            temp = Path(f.name)
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        # No directory fsync: a rename lost in a crash only means downloading the file again.
        os.replace(temp, target)
    except OSError as e:
        raise DownloadError(f"cannot write {target}: {e.strerror or e}; {CACHE_HINT}") from None
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)  # already renamed when all went well
