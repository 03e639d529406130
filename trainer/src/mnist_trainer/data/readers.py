"""MNIST file readers: the official IDX files, the Kaggle CSVs and Keras' mnist.npz, all validated.

Every reader hashes the decompressed bytes it parses, so a dataset has one identity (`MNIST.sha256`)
whether it was read from .gz files, raw files or the download cache.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import re
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIDE = 28
PIXELS = SIDE * SIDE
GZIP_MAGIC = b"\x1f\x8b"
IDX_UBYTE = 0x08
IDX_LABELS_MAGIC = 0x00000801
IDX_IMAGES_MAGIC = 0x00000803
IDX_KINDS = {IDX_IMAGES_MAGIC: ("images", "pixel"), IDX_LABELS_MAGIC: ("labels", "label")}  # for messages

# Official file name -> the variant with a dot that some mirrors and archives use.
IDX_FILES = {
    "train-images-idx3-ubyte": "train-images.idx3-ubyte",
    "train-labels-idx1-ubyte": "train-labels.idx1-ubyte",
    "t10k-images-idx3-ubyte": "t10k-images.idx3-ubyte",
    "t10k-labels-idx1-ubyte": "t10k-labels.idx1-ubyte",
}
KAGGLE_TRAIN, KAGGLE_TEST, KERAS_NPZ = "train.csv", "test.csv", "mnist.npz"
KERAS_KEYS = ("x_train", "y_train", "x_test", "y_test")
PIXEL_COLUMNS = [f"pixel{i}" for i in range(PIXELS)]
INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")


class DataError(Exception):
    """A dataset file is missing or invalid. str(e) is ONE line naming the file and the problem,
    e.g. "data: /x/train-images-idx3-ubyte.gz: truncated: expected 47040000 pixel bytes, found 1000"."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, shape (N, 28, 28), C-contiguous
    labels: np.ndarray | None  # uint8, shape (N,), values 0..9; None when unlabelled


@dataclass(frozen=True)
class MNIST:
    train: Split  # labelled training set
    test: Split | None  # labelled test set (None for a Kaggle train.csv with no labelled test)
    unlabelled: Split | None  # Kaggle test.csv (pixels only), else None
    files: dict[str, str]  # file name (IDX: the official one, no .gz) -> sha256 of its decompressed bytes
    sha256: str  # dataset identity, see _dataset_sha256
    source: str  # the path it was read from


def _error(path, problem: str) -> DataError:
    # Library messages (zlib, numpy) may span lines; the CLI prints one line per error.
    return DataError(f"data: {path}: {' '.join(problem.split())}")


def _read_bytes(path: Path) -> tuple[bytes, str]:
    """The whole content, gunzipped if it is gzip (by magic bytes), and its sha256."""
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise _error(path, "no such file") from None
    except OSError as e:
        raise _error(path, f"cannot read: {e.strerror or e}") from None
    if content[:2] == GZIP_MAGIC:
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error) as e:
            raise _error(path, f"corrupt gzip: {e}") from None
    return content, hashlib.sha256(content).hexdigest()


def _dataset_sha256(files: dict[str, str]) -> str:
    """Identity of a set of files: the sha256 of their `sha256sum`-style listing, sorted by name."""
    listing = "".join(f"{sha}  {name}\n" for name, sha in sorted(files.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


# --- IDX ---------------------------------------------------------------------------------------

def _parse_idx(path: Path, content: bytes, magic: int) -> np.ndarray:
    kind, unit = IDX_KINDS[magic]
    ndim = magic & 0xFF
    found = int.from_bytes(content[:4], "big")
    if len(content) < 4 or found != magic:
        if content[:2] == b"\0\0" and content[3:4] == bytes([ndim]) and content[2] != IDX_UBYTE:
            raise _error(path, f"IDX element type 0x{content[2]:02x} is not supported "
                               "(only unsigned byte 0x08)")
        raise _error(path, f"bad magic number 0x{found:08x}, expected 0x{magic:08x} (IDX {kind})")
    header = 4 + 4 * ndim
    if len(content) < header:
        raise _error(path, f"truncated: header needs {header} bytes, found {len(content)}")
    dims = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected, body = math.prod(dims), len(content) - header  # exact: dims may be garbage
    if body < expected:
        raise _error(path, f"truncated: expected {expected} {unit} bytes, found {body}")
    if body > expected:
        raise _error(path, f"{body - expected} trailing bytes after the {expected} {unit} bytes")
    return np.frombuffer(content, np.uint8, offset=header).reshape(dims)


def _images(path: Path, content: bytes) -> np.ndarray:
    images = _parse_idx(path, content, IDX_IMAGES_MAGIC)
    if images.shape[1:] != (SIDE, SIDE):
        raise _error(path, f"images are {images.shape[1]}x{images.shape[2]}, expected {SIDE}x{SIDE}")
    return images


def _labels(path: Path, content: bytes) -> np.ndarray:
    labels = _parse_idx(path, content, IDX_LABELS_MAGIC)
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise _error(path, f"label {labels[bad[0]]} at index {bad[0]} is outside 0..9")
    return labels


def read_idx_images(path) -> np.ndarray:
    """Images (N, 28, 28) uint8 from an IDX file, gzipped or raw."""
    path = Path(path)
    return _images(path, _read_bytes(path)[0])


def read_idx_labels(path) -> np.ndarray:
    """Labels (N,) uint8, each 0..9, from an IDX file, gzipped or raw."""
    path = Path(path)
    return _labels(path, _read_bytes(path)[0])


# --- Kaggle CSV --------------------------------------------------------------------------------

def _parse_kaggle_csv(path: Path, content: bytes) -> Split:
    try:
        header = content.partition(b"\n")[0].decode("utf-8-sig")  # -sig: spreadsheets like to add a BOM
    except UnicodeDecodeError:
        raise _error(path, "line 1: not UTF-8 text") from None
    columns = [c.strip().strip('"') for c in header.split(",")]
    if columns not in (["label", *PIXEL_COLUMNS], PIXEL_COLUMNS):
        raise _error(path, "line 1: not a Kaggle MNIST header "
                           "('label,pixel0,...,pixel783' or 'pixel0,...,pixel783')")
    labelled = columns[0] == "label"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty body is reported below, not warned about
            # uint8 makes numpy reject anything outside 0..255 while parsing; bytes parse faster than str.
            table = np.loadtxt(io.BytesIO(content), np.uint8, delimiter=",", comments=None, ndmin=2,
                               skiprows=1, encoding="utf-8")
    except ValueError as e:  # includes UnicodeDecodeError
        raise _csv_problem(path, content, labelled, str(e)) from None
    if table.size == 0:
        raise _error(path, "no data rows")
    if table.shape[1] != len(columns) or (labelled and (table[:, 0] > 9).any()):
        raise _csv_problem(path, content, labelled, f"{table.shape[1]} columns")
    images = np.ascontiguousarray(table[:, -PIXELS:]).reshape(-1, SIDE, SIDE)
    return Split(images, table[:, 0].copy() if labelled else None)


def _csv_problem(path: Path, content: bytes, labelled: bool, fallback: str) -> DataError:
    """Find the first bad line for the error message (slow, but only runs on invalid files)."""
    width = PIXELS + labelled
    body = content.decode("utf-8", errors="replace").partition("\n")[2]
    for number, line in enumerate(body.split("\n"), start=2):
        if not line.strip():
            continue  # numpy skips blank lines too
        fields = line.split(",")
        if len(fields) != width:
            return _error(path, f"line {number}: {len(fields)} columns, expected {width}")
        for column, field in enumerate(fields):
            name = "label" if labelled and column == 0 else f"pixel{column - labelled}"
            if not INTEGER.fullmatch(field):
                return _error(path, f"line {number}: {name} {field.strip()!r} is not an integer")
            limit = 9 if name == "label" else 255
            if not 0 <= int(field) <= limit:
                return _error(path, f"line {number}: {name} {int(field)} is outside 0..{limit}")
    return _error(path, f"cannot parse: {fallback}")


def read_kaggle_csv(path) -> Split:
    """A Kaggle CSV: 'label,pixel0..pixel783' gives a labelled split, 'pixel0..pixel783' an unlabelled one."""
    path = Path(path)
    return _parse_kaggle_csv(path, _read_bytes(path)[0])


# --- Keras npz ---------------------------------------------------------------------------------

def _parse_keras_npz(path: Path, content: bytes) -> tuple[Split, Split]:
    try:
        npz = np.load(io.BytesIO(content), allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _error(path, f"not a valid .npz archive: {e}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise _error(path, "is a single .npy array, expected an .npz archive")
    with npz:
        missing = [key for key in KERAS_KEYS if key not in npz.files]
        if missing:
            raise _error(path, f"missing key {', '.join(missing)} (has: {', '.join(npz.files) or 'nothing'})")
        try:
            arrays = {key: npz[key] for key in KERAS_KEYS}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise _error(path, f"cannot read array: {e}") from None
    return (_keras_split(path, arrays, "train"), _keras_split(path, arrays, "test"))


def _keras_split(path: Path, arrays: dict[str, np.ndarray], part: str) -> Split:
    x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
    if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE):
        raise _error(path, f"x_{part} has shape {x.shape}, expected (N, {SIDE}, {SIDE})")
    if y.shape != (len(x),):
        raise _error(path, f"y_{part} has shape {y.shape}, expected ({len(x)},) to match x_{part}")
    return Split(_as_uint8(path, f"x_{part}", x, 255), _as_uint8(path, f"y_{part}", y, 9))


def _as_uint8(path: Path, key: str, array: np.ndarray, limit: int) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.integer):
        raise _error(path, f"{key} has dtype {array.dtype}, expected integers")
    if array.size and (array.min() < 0 or array.max() > limit):
        raise _error(path, f"{key} has values outside 0..{limit} (min {array.min()}, max {array.max()})")
    return np.ascontiguousarray(array, dtype=np.uint8)


def read_keras_npz(path) -> tuple[Split, Split]:
    """(train, test) from Keras' mnist.npz (keys x_train, y_train, x_test, y_test)."""
    path = Path(path)
    return _parse_keras_npz(path, _read_bytes(path)[0])


# --- a whole dataset ---------------------------------------------------------------------------

def read(source) -> MNIST:
    """MNIST from a directory (IDX files, Kaggle CSVs or mnist.npz) or from one .csv or .npz file."""
    path = Path(source)
    if path.is_dir():
        return _load_directory(path)
    if not path.exists():
        raise _error(path, "no such file or directory")
    if path.suffix.lower() == ".npz":
        return _load_npz(path, path)
    if path.suffix.lower() == ".csv":
        return _load_kaggle(path, path, None)
    raise _error(path, "unsupported file: expected a directory, a Kaggle .csv or a Keras .npz")


def _load_directory(directory: Path) -> MNIST:
    idx = _find_idx(directory)
    if len(idx) == len(IDX_FILES):
        return _load_idx(directory, idx)
    if (directory / KAGGLE_TRAIN).is_file():
        test = directory / KAGGLE_TEST
        return _load_kaggle(directory, directory / KAGGLE_TRAIN, test if test.is_file() else None)
    if (directory / KERAS_NPZ).is_file():
        return _load_npz(directory, directory / KERAS_NPZ)
    wanted = ", ".join(f"{name}[.gz]" for name in IDX_FILES)
    missing = f" (missing: {', '.join(n for n in IDX_FILES if n not in idx)})" if idx else ""
    raise _error(directory, f"no MNIST data found: looked for the four IDX files {wanted}{missing}, "
                            f"a Kaggle {KAGGLE_TRAIN} or a Keras {KERAS_NPZ}")


def _find_idx(directory: Path) -> dict[str, Path]:
    """Official name -> the file present for it, under any accepted spelling."""
    found = {}
    for name, dotted in IDX_FILES.items():
        candidates = [directory / f"{base}{gz}" for base in (name, dotted) for gz in ("", ".gz")]
        present = [p for p in candidates if p.is_file()]
        if present:
            found[name] = present[0]
    return found


def _load_idx(directory: Path, paths: dict[str, Path]) -> MNIST:
    files, arrays = {}, {}
    for name, path in paths.items():
        content, files[name] = _read_bytes(path)  # hashed under the official name, whatever the spelling
        arrays[name] = (_images if "images" in name else _labels)(path, content)
    splits = []
    for part in ("train", "t10k"):
        images, labels = arrays[f"{part}-images-idx3-ubyte"], arrays[f"{part}-labels-idx1-ubyte"]
        if len(images) != len(labels):
            images_name = paths[f"{part}-images-idx3-ubyte"].name
            raise _error(paths[f"{part}-labels-idx1-ubyte"],
                         f"{len(labels)} labels but {images_name} has {len(images)} images")
        splits.append(Split(images, labels))
    return _mnist(splits[0], splits[1], None, files, directory)


def _load_kaggle(source: Path, train_path: Path, test_path: Path | None) -> MNIST:
    files = {}
    content, files[train_path.name] = _read_bytes(train_path)
    train = _parse_kaggle_csv(train_path, content)
    if train.labels is None:
        raise _error(train_path, "has no label column: a training set needs 'label,pixel0,...,pixel783'")
    test = unlabelled = None
    if test_path is not None:
        content, files[test_path.name] = _read_bytes(test_path)
        extra = _parse_kaggle_csv(test_path, content)
        # Kaggle's test.csv has no labels; a labelled one is a real test set.
        test, unlabelled = (extra, None) if extra.labels is not None else (None, extra)
    return _mnist(train, test, unlabelled, files, source)


def _load_npz(source: Path, path: Path) -> MNIST:
    content, sha = _read_bytes(path)
    train, test = _parse_keras_npz(path, content)
    return _mnist(train, test, None, {path.name: sha}, source)


def _mnist(train: Split, test: Split | None, unlabelled: Split | None, files: dict[str, str],
           source: Path) -> MNIST:
    return MNIST(train, test, unlabelled, files, _dataset_sha256(files), str(source))
