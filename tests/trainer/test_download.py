import gzip
import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from idx_files import IDX_NAMES, idx_bytes, write_idx_dataset
from mnist_trainer import data
from mnist_trainer.data import DataError, download
from mnist_trainer.data.download import DownloadError


class Mirror:
    """A real HTTP server on 127.0.0.1 serving `files` (URL path -> bytes) and recording requests."""

    def __init__(self, files: dict[str, bytes], headers: dict[str, str] | None = None):
        self.files, self.headers, self.requests = files, headers or {}, []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                mirror.requests.append(self.path)
                body = mirror.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                for key, value in mirror.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def url(self, prefix: str = "/mnist/") -> str:
        return f"http://127.0.0.1:{self.server.server_port}{prefix}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A tiny IDX dataset standing in for the official files: name -> decompressed bytes."""
    arrays = write_idx_dataset(tmp_path / "source", n_train=60, n_test=20, gz=False)
    contents = {name: idx_bytes(array) for name, array in arrays.items()}
    monkeypatch.setattr(download, "OFFICIAL_SHA256", {n: hashlib.sha256(c).hexdigest() for n, c in contents.items()})
    return contents


@pytest.fixture
def serve():
    """serve(files) starts a Mirror; all are stopped after the test."""
    mirrors = []

    def start(files, headers=None):
        mirrors.append(Mirror(files, headers))
        return mirrors[-1]

    yield start
    for mirror in mirrors:
        mirror.close()


def gz_files(contents: dict[str, bytes], prefix="/mnist/") -> dict[str, bytes]:
    return {f"{prefix}{name}.gz": gzip.compress(content) for name, content in contents.items()}


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_cache_holds(cache: Path, contents: dict[str, bytes]):
    assert sorted(p.name for p in cache.iterdir()) == sorted(contents)  # no .gz, no temporary files
    for name, content in contents.items():
        assert (cache / name).read_bytes() == content


def test_download_caches_and_reuses(tmp_path, tiny, serve):
    mirror = serve(gz_files(tiny))
    cache = tmp_path / "cache" / "nested"
    base = mirror.url().rstrip("/")  # a base URL without the trailing slash works too
    assert download.ensure_official_files(cache_dir=cache, mirrors=[base]) == cache
    assert_cache_holds(cache, tiny)
    assert sorted(mirror.requests) == sorted(f"/mnist/{name}.gz" for name in IDX_NAMES)

    assert download.ensure_official_files(cache_dir=cache, mirrors=[base]) == cache
    assert len(mirror.requests) == 4  # everything came from the cache


def test_gz_served_with_content_encoding_gzip(tmp_path, tiny, serve):
    mirror = serve(gz_files(tiny), headers={"Content-Encoding": "gzip"})  # requests gunzips these itself
    download.ensure_official_files(cache_dir=tmp_path / "cache", mirrors=[mirror.url()])
    assert_cache_holds(tmp_path / "cache", tiny)


def test_only_bad_cached_files_are_downloaded_again(tmp_path, tiny, serve):
    mirror = serve(gz_files(tiny))
    cache = tmp_path / "cache"
    download.ensure_official_files(cache_dir=cache, mirrors=[mirror.url()])
    damaged = bytearray(tiny["t10k-images-idx3-ubyte"])
    damaged[100] ^= 1
    (cache / "t10k-images-idx3-ubyte").write_bytes(damaged)
    download.ensure_official_files(cache_dir=cache, mirrors=[mirror.url()])
    assert mirror.requests[4:] == ["/mnist/t10k-images-idx3-ubyte.gz"]
    assert_cache_holds(cache, tiny)


def test_falls_back_when_first_mirror_serves_corrupted_files(tmp_path, tiny, serve):
    corrupted = {}
    for name, content in tiny.items():
        changed = bytearray(content)
        changed[-1] ^= 0xFF  # still valid gzip, but the sha256 is wrong
        corrupted[name] = bytes(changed)
    bad, good = serve(gz_files(corrupted)), serve(gz_files(tiny))
    cache = tmp_path / "cache"
    download.ensure_official_files(cache_dir=cache, mirrors=[bad.url(), good.url()])
    assert_cache_holds(cache, tiny)
    assert len(bad.requests) == len(good.requests) == 4


@pytest.mark.parametrize("broken", ["404", "corrupt gzip", "connection refused", "timeout"])
def test_falls_back_to_the_next_mirror(tmp_path, tiny, serve, broken, request):
    good = serve(gz_files(tiny))
    if broken == "404":
        first = serve({}).url()
    elif broken == "corrupt gzip":
        first = serve({p: gz[: len(gz) // 2] for p, gz in gz_files(tiny).items()}).url()
    elif broken == "connection refused":
        first = f"http://127.0.0.1:{unused_port()}/mnist/"
    else:
        listener = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
        request.addfinalizer(listener.close)
        first = f"http://127.0.0.1:{listener.getsockname()[1]}/mnist/"
    cache = tmp_path / "cache"
    download.ensure_official_files(cache_dir=cache, mirrors=[first, good.url()], timeout=0.2)
    assert_cache_holds(cache, tiny)
    assert len(good.requests) == 4


def test_all_mirrors_bad(tmp_path, tiny, serve):
    corrupted = gz_files({name: content[:-1] + b"\x01" for name, content in tiny.items()})
    first, second = serve({}), serve(corrupted)
    refused = f"http://127.0.0.1:{unused_port()}/m"
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts connections, never answers
        silent = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        cache = tmp_path / "cache"
        with pytest.raises(DownloadError) as excinfo:
            download.ensure_official_files(cache_dir=cache, mirrors=[first.url(), second.url(), refused, silent],
                                           timeout=0.5)
    message = str(excinfo.value)
    assert isinstance(excinfo.value, DataError)
    assert "\n" not in message
    assert message.startswith("could not download MNIST train-images-idx3-ubyte.gz from 4 mirrors (")
    assert f"{silent}train-images-idx3-ubyte.gz: timed out after 0.5 s)" in message
    assert f"{first.url()}train-images-idx3-ubyte.gz: HTTP 404 Not Found" in message
    assert f"{second.url()}train-images-idx3-ubyte.gz: sha256 mismatch" in message
    assert f"{refused}/train-images-idx3-ubyte.gz: connection refused" in message
    assert "MNIST_DIR" in message and "MNIST_MIRRORS" in message
    assert list(cache.iterdir()) == []  # neither the corrupted file nor a temporary file


def test_connection_refused_is_reported_clearly(tmp_path, tiny):
    url = f"http://127.0.0.1:{unused_port()}/mnist"
    with pytest.raises(DownloadError) as excinfo:
        download.ensure_official_files(cache_dir=tmp_path, mirrors=[url])
    assert str(excinfo.value).startswith(
        f"could not download MNIST train-images-idx3-ubyte.gz from 1 mirror ({url}/train-images-idx3-ubyte.gz: "
        "connection refused); set MNIST_DIR")


def test_unwritable_cache_is_a_download_error(tmp_path, tiny):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(DownloadError, match="cannot create the MNIST cache .*MNIST_CACHE_DIR"):
        download.ensure_official_files(cache_dir=tmp_path / "file" / "cache", mirrors=["http://127.0.0.1:9/"])


def test_progress_bar_goes_to_stderr(tmp_path, tiny, serve, capsys):
    mirror = serve(gz_files(tiny))
    download.ensure_official_files(cache_dir=tmp_path / "quiet", mirrors=[mirror.url()])
    assert capsys.readouterr() == ("", "")
    download.ensure_official_files(cache_dir=tmp_path / "loud", mirrors=[mirror.url()], progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "train-images-idx3-ubyte.gz" in err


def test_load_downloads_end_to_end(tmp_path, tiny, serve):
    mirror = serve(gz_files(tiny))
    cache = tmp_path / "cache"
    mnist = data.load(None, mirrors=[mirror.url()], cache_dir=cache)
    assert mnist.source == str(cache)
    assert mnist.train.images.shape == (60, 28, 28) and mnist.test.images.shape == (20, 28, 28)
    np.testing.assert_array_equal(mnist.test.labels, np.frombuffer(tiny["t10k-labels-idx1-ubyte"][8:], np.uint8))
    assert mnist.files == download.OFFICIAL_SHA256
    assert mnist.sha256 == data.load(tmp_path / "source").sha256  # same identity as the local copy


def test_load_uses_environment_defaults(tmp_path, tiny, serve, monkeypatch):
    mirror = serve(gz_files(tiny))
    monkeypatch.setenv("MNIST_CACHE_DIR", str(tmp_path / "env-cache"))
    monkeypatch.setenv("MNIST_MIRRORS", f"http://127.0.0.1:{unused_port()}/, {mirror.url()}")
    assert data.load(None).source == str(tmp_path / "env-cache")
    assert len(mirror.requests) == 4


def test_environment(monkeypatch):
    monkeypatch.delenv("MNIST_CACHE_DIR", raising=False)
    monkeypatch.delenv("MNIST_MIRRORS", raising=False)
    assert download.default_cache_dir().parts[-2:] == ("mnist-mlp", "mnist")
    assert download.mirrors_from_env() == download.DEFAULT_MIRRORS
    monkeypatch.setenv("MNIST_CACHE_DIR", "/somewhere/cache")
    monkeypatch.setenv("MNIST_MIRRORS", " http://a/ ,,http://b ")
    assert download.default_cache_dir() == Path("/somewhere/cache")
    assert download.mirrors_from_env() == ["http://a/", "http://b"]
    monkeypatch.setenv("MNIST_MIRRORS", " , ")
    assert download.mirrors_from_env() == download.DEFAULT_MIRRORS

