import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idx_files import IDX_NAMES, idx_bytes, random_mnist, write_file, write_idx_dataset
from mnist_trainer import data
from mnist_trainer.data import DataError, Split, download

HEADER = ",".join(f"pixel{i}" for i in range(784))


def assert_data_error(excinfo, path, *fragments):
    """The message is one line, names the file and says what is wrong."""
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def kaggle_lines(images, labels=None) -> list[str]:
    rows = images.reshape(len(images), -1).astype(int)
    if labels is None:
        return [HEADER, *(",".join(map(str, r)) for r in rows)]
    return ["label," + HEADER, *(",".join(map(str, [l, *r])) for l, r in zip(labels, rows))]


def write_lines(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.write_text(newline.join(lines) + newline, newline="")
    return path


def write_npz(path: Path, n_train=30, n_test=10, **overrides) -> dict[str, np.ndarray]:
    x_train, y_train = random_mnist(n_train, 0)
    x_test, y_test = random_mnist(n_test, 1)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, **overrides}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


# --- IDX ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    arrays = write_idx_dataset(tmp_path, n_train=7, n_test=3, gz=gz)
    suffix = ".gz" if gz else ""
    images = data.read_idx_images(tmp_path / f"train-images-idx3-ubyte{suffix}")
    labels = data.read_idx_labels(tmp_path / f"train-labels-idx1-ubyte{suffix}")
    assert images.dtype == np.uint8 and images.shape == (7, 28, 28) and images.flags.c_contiguous
    np.testing.assert_array_equal(images, arrays["train-images-idx3-ubyte"])
    assert labels.dtype == np.uint8 and labels.shape == (7,)
    np.testing.assert_array_equal(labels, arrays["train-labels-idx1-ubyte"])


def test_gzip_is_detected_by_content_not_name(tmp_path):
    images, labels = random_mnist(4, 0)
    (tmp_path / "images").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "labels.gz").write_bytes(idx_bytes(labels))  # raw despite the name
    np.testing.assert_array_equal(data.read_idx_images(tmp_path / "images"), images)
    np.testing.assert_array_equal(data.read_idx_labels(tmp_path / "labels.gz"), labels)


def test_empty_idx_files_are_valid(tmp_path):
    images = np.zeros((0, 28, 28), np.uint8)
    (tmp_path / "images").write_bytes(idx_bytes(images))
    assert data.read_idx_images(tmp_path / "images").shape == (0, 28, 28)


GOOD_IMAGES = idx_bytes(random_mnist(2, 0)[0])  # 16-byte header + 1568 pixels
GOOD_LABELS = idx_bytes(np.array([3, 7], np.uint8))


@pytest.mark.parametrize("reader, content, fragments", [
    ("images", GOOD_LABELS, ["bad magic number 0x00000801, expected 0x00000803"]),
    ("labels", GOOD_IMAGES, ["bad magic number 0x00000803, expected 0x00000801"]),
    ("images", b"\x00\x00\x0d\x03" + GOOD_IMAGES[4:], ["element type 0x0d"]),
    ("images", b"PK\x03\x04" + GOOD_IMAGES[4:], ["bad magic number"]),
    ("images", b"", ["bad magic number"]),
    ("images", GOOD_IMAGES[:10], ["truncated: header needs 16 bytes, found 10"]),
    ("images", idx_bytes(np.zeros((2, 27, 28), np.uint8)), ["images are 27x28, expected 28x28"]),
    ("images", GOOD_IMAGES[:1000], ["truncated: expected 1568 pixel bytes, found 984"]),
    ("images", GOOD_IMAGES + b"\x00\x00\x00", ["3 trailing bytes"]),
    ("labels", GOOD_LABELS[:-1], ["truncated: expected 2 label bytes, found 1"]),
    ("labels", GOOD_LABELS + b"x", ["1 trailing bytes"]),
    ("labels", idx_bytes(np.array([3, 10], np.uint8)), ["label 10 at index 1 is outside 0..9"]),
])
@pytest.mark.parametrize("gz", [True, False])
def test_invalid_idx_file(tmp_path, reader, content, fragments, gz):
    path = write_file(tmp_path / "file", content, gz)
    read = data.read_idx_images if reader == "images" else data.read_idx_labels
    with pytest.raises(DataError) as excinfo:
        read(path)
    assert_data_error(excinfo, path, *fragments)


@pytest.mark.parametrize("damage", [
    lambda gz: gz[: len(gz) // 2],  # cut off: EOFError
    lambda gz: gz[:20] + bytes(b ^ 0xFF for b in gz[20:40]) + gz[40:],  # zlib.error
    lambda gz: gz[:-8] + bytes(b ^ 0xFF for b in gz[-8:-4]) + gz[-4:],  # CRC mismatch
    lambda gz: gz[:3] + b"\xff" + gz[4:],  # reserved flag bits
])
def test_corrupt_gzip(tmp_path, damage):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(damage(gzip.compress(GOOD_IMAGES)))
    with pytest.raises(DataError) as excinfo:
        data.read_idx_images(path)
    assert_data_error(excinfo, path, "corrupt gzip")


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as excinfo:
        data.read_idx_images(tmp_path / "nope")
    assert_data_error(excinfo, tmp_path / "nope", "no such file")


# --- load: IDX directories ---------------------------------------------------------------------

def test_load_idx_directory(tmp_path):
    arrays = write_idx_dataset(tmp_path, n_train=60, n_test=20, seed=3)
    mnist = data.load(tmp_path)
    np.testing.assert_array_equal(mnist.train.images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(mnist.train.labels, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(mnist.test.images, arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(mnist.test.labels, arrays["t10k-labels-idx1-ubyte"])
    assert mnist.unlabelled is None
    assert mnist.source == str(tmp_path)
    assert mnist.files == {name: sha(idx_bytes(a)) for name, a in arrays.items()}
    listing = "".join(f"{mnist.files[name]}  {name}\n" for name in sorted(mnist.files))
    assert mnist.sha256 == sha(listing.encode())


def test_dataset_identity_does_not_depend_on_compression_or_spelling(tmp_path):
    write_idx_dataset(tmp_path / "gz", gz=True)
    write_idx_dataset(tmp_path / "raw", gz=False)
    write_idx_dataset(tmp_path / "dotted", gz=False)
    for name in IDX_NAMES:  # train-images-idx3-ubyte -> train-images.idx3-ubyte, one of them gzipped
        dotted = name.replace("-idx", ".idx")
        if name.startswith("t10k-labels"):
            (tmp_path / "dotted" / name).rename(tmp_path / "dotted" / dotted)
        else:
            content = (tmp_path / "dotted" / name).read_bytes()
            (tmp_path / "dotted" / name).unlink()
            (tmp_path / "dotted" / f"{dotted}.gz").write_bytes(gzip.compress(content))
    loaded = [data.load(tmp_path / d) for d in ("gz", "raw", "dotted")]
    assert loaded[0].files == loaded[1].files == loaded[2].files
    assert loaded[0].sha256 == loaded[1].sha256 == loaded[2].sha256
    write_idx_dataset(tmp_path / "other", seed=1)
    assert data.load(tmp_path / "other").sha256 != loaded[0].sha256


@pytest.mark.parametrize("name, content, fragment", [
    ("train-images-idx3-ubyte", idx_bytes(np.zeros((60, 28, 27), np.uint8)), "images are 28x27"),
    ("train-labels-idx1-ubyte", idx_bytes(np.full(60, 10, np.uint8)), "label 10"),
    ("t10k-images-idx3-ubyte", b"garbage", "bad magic number"),
    ("t10k-labels-idx1-ubyte", idx_bytes(np.zeros(19, np.uint8)),
     "19 labels but t10k-images-idx3-ubyte.gz has 20 images"),
    ("train-labels-idx1-ubyte", idx_bytes(np.zeros(61, np.uint8)), "61 labels but train-images-idx3-ubyte.gz has 60"),
])
def test_load_reports_the_bad_file(tmp_path, name, content, fragment):
    write_idx_dataset(tmp_path, n_train=60, n_test=20)
    path = write_file(tmp_path / name, content, gz=True)
    with pytest.raises(DataError) as excinfo:
        data.load(tmp_path)
    assert_data_error(excinfo, path, fragment)


def test_load_directory_with_some_idx_files_missing(tmp_path):
    write_idx_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as excinfo:
        data.load(tmp_path)
    assert_data_error(excinfo, tmp_path, "missing: t10k-labels-idx1-ubyte)")


def test_load_empty_directory_says_what_it_looked_for(tmp_path):
    with pytest.raises(DataError) as excinfo:
        data.load(tmp_path)
    assert_data_error(excinfo, tmp_path, "no MNIST data found", "train-images-idx3-ubyte[.gz]", "train.csv",
                      "mnist.npz")
    assert "missing" not in str(excinfo.value)


@pytest.mark.parametrize("name, fragment", [("nothing-here", "no such file or directory"),
                                            ("notes.txt", "unsupported file")])
def test_load_bad_source(tmp_path, name, fragment):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError) as excinfo:
        data.load(tmp_path / name)
    assert_data_error(excinfo, tmp_path / name, fragment)


# --- Kaggle CSV --------------------------------------------------------------------------------

def test_kaggle_directory_round_trip(tmp_path):
    images, labels = random_mnist(12, 0)
    unlabelled, _ = random_mnist(5, 1)
    write_lines(tmp_path / "train.csv", kaggle_lines(images, labels))
    write_lines(tmp_path / "test.csv", kaggle_lines(unlabelled))
    mnist = data.load(tmp_path)
    np.testing.assert_array_equal(mnist.train.images, images)
    np.testing.assert_array_equal(mnist.train.labels, labels)
    assert mnist.train.images.dtype == np.uint8 and mnist.train.images.flags.c_contiguous
    assert mnist.test is None
    np.testing.assert_array_equal(mnist.unlabelled.images, unlabelled)
    assert mnist.unlabelled.labels is None
    assert mnist.files == {"train.csv": sha((tmp_path / "train.csv").read_bytes()),
                           "test.csv": sha((tmp_path / "test.csv").read_bytes())}


def test_kaggle_labelled_test_csv_is_a_test_set(tmp_path):
    images, labels = random_mnist(6, 0)
    write_lines(tmp_path / "train.csv", kaggle_lines(images, labels))
    write_lines(tmp_path / "test.csv", kaggle_lines(images[:2], labels[:2]))
    mnist = data.load(tmp_path)
    np.testing.assert_array_equal(mnist.test.labels, labels[:2])
    assert mnist.unlabelled is None


def test_kaggle_train_csv_file_with_crlf_and_bom(tmp_path):
    images, labels = random_mnist(3, 0)
    path = tmp_path / "digits.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(kaggle_lines(images, labels)) + "\r\n").encode())
    mnist = data.load(path)
    np.testing.assert_array_equal(mnist.train.images, images)
    np.testing.assert_array_equal(mnist.train.labels, labels)
    assert (mnist.test, mnist.unlabelled) == (None, None)
    assert list(mnist.files) == ["digits.csv"]


def test_read_unlabelled_kaggle_csv(tmp_path):
    images, _ = random_mnist(4, 0)
    split = data.read_kaggle_csv(write_lines(tmp_path / "test.csv", kaggle_lines(images)))
    np.testing.assert_array_equal(split.images, images)
    assert split.labels is None


def test_unlabelled_csv_cannot_be_a_training_set(tmp_path):
    path = write_lines(tmp_path / "test.csv", kaggle_lines(random_mnist(2, 0)[0]))
    with pytest.raises(DataError) as excinfo:
        data.load(path)
    assert_data_error(excinfo, path, "no label column")


def _replace(lines, line_number, old, new):
    """Replace the first `old` field after the label on a 1-based line."""
    fields = lines[line_number - 1].split(",")
    fields[fields.index(old, 1)] = new
    lines[line_number - 1] = ",".join(fields)


def _bad_csv(kind):
    images, labels = random_mnist(4, 0)
    images[2, 0, :3] = [7, 8, 9]  # line 4, pixel0..2: fields to damage
    lines = kaggle_lines(images, labels)
    if kind == "short row":
        lines[3] = lines[3].rsplit(",", 1)[0]
    elif kind == "long row":
        lines[3] += ",0"
    elif kind == "word":
        _replace(lines, 4, "8", "abc")
    elif kind == "float":
        _replace(lines, 4, "8", "1.5")
    elif kind == "empty field":
        _replace(lines, 4, "8", "")
    elif kind == "pixel 256":
        _replace(lines, 4, "8", "256")
    elif kind == "pixel -1":
        _replace(lines, 4, "8", "-1")
    elif kind == "label 10":
        lines[3] = "10" + lines[3][lines[3].index(","):]
    elif kind == "header":
        lines[0] = lines[0].replace("pixel5,", "pixel_5,")
    elif kind == "no rows":
        lines = lines[:1]
    return lines


@pytest.mark.parametrize("kind, fragment", [
    ("short row", "line 4: 784 columns, expected 785"),
    ("long row", "line 4: 786 columns, expected 785"),
    ("word", "line 4: pixel1 'abc' is not an integer"),
    ("float", "line 4: pixel1 '1.5' is not an integer"),
    ("empty field", "line 4: pixel1 '' is not an integer"),
    ("pixel 256", "line 4: pixel1 256 is outside 0..255"),
    ("pixel -1", "line 4: pixel1 -1 is outside 0..255"),
    ("label 10", "line 4: label 10 is outside 0..9"),
    ("header", "line 1: not a Kaggle MNIST header"),
    ("no rows", "no data rows"),
])
def test_invalid_kaggle_csv(tmp_path, kind, fragment):
    path = write_lines(tmp_path / "train.csv", _bad_csv(kind))
    with pytest.raises(DataError) as excinfo:
        data.read_kaggle_csv(path)
    assert_data_error(excinfo, path, fragment)


def test_kaggle_error_line_numbers_count_blank_lines(tmp_path):
    lines = _bad_csv("pixel 256")
    lines.insert(2, "")
    path = write_lines(tmp_path / "train.csv", lines)
    with pytest.raises(DataError) as excinfo:
        data.load(tmp_path)
    assert_data_error(excinfo, path, "line 5: pixel1 256")


# --- Keras npz ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_keras_npz_round_trip(tmp_path, dtype):
    x_train, y_train = random_mnist(30, 0)
    x_test, y_test = random_mnist(10, 1)
    np.savez(tmp_path / "mnist.npz", x_train=x_train.astype(dtype), y_train=y_train.astype(dtype),
             x_test=x_test.astype(dtype), y_test=y_test.astype(dtype))
    train, test = data.read_keras_npz(tmp_path / "mnist.npz")
    for split, (x, y) in ((train, (x_train, y_train)), (test, (x_test, y_test))):
        assert split.images.dtype == split.labels.dtype == np.uint8 and split.images.flags.c_contiguous
        np.testing.assert_array_equal(split.images, x)
        np.testing.assert_array_equal(split.labels, y)
    for source in (tmp_path, tmp_path / "mnist.npz"):
        mnist = data.load(source)
        np.testing.assert_array_equal(mnist.test.labels, y_test)
        assert mnist.files == {"mnist.npz": sha((tmp_path / "mnist.npz").read_bytes())}
        assert mnist.source == str(source)


@pytest.mark.parametrize("overrides, fragment", [
    ({"y_test": None}, "missing key y_test (has: x_train, y_train, x_test)"),
    ({"x_train": np.zeros((30, 28, 27), np.uint8)}, "x_train has shape (30, 28, 27), expected (N, 28, 28)"),
    ({"x_test": np.zeros((10, 784), np.uint8)}, "x_test has shape (10, 784)"),
    ({"x_train": np.zeros((30, 28, 28), np.float32)}, "x_train has dtype float32, expected integers"),
    ({"x_train": np.full((30, 28, 28), 300, np.int32)}, "x_train has values outside 0..255"),
    ({"x_train": np.full((30, 28, 28), -1, np.int8)}, "x_train has values outside 0..255"),
    ({"y_train": np.full(30, 10, np.uint8)}, "y_train has values outside 0..9"),
    ({"y_test": np.zeros(9, np.uint8)}, "y_test has shape (9,), expected (10,) to match x_test"),
    ({"x_test": np.array(["a"] * 10, object)}, "cannot read array"),
])
def test_invalid_keras_npz(tmp_path, overrides, fragment):
    path = tmp_path / "mnist.npz"
    write_npz(path, **overrides)
    with pytest.raises(DataError) as excinfo:
        data.load(path)
    assert_data_error(excinfo, path, fragment)


@pytest.mark.parametrize("content, fragment", [
    (b"not a zip file at all", "not a valid .npz archive"),
    (b"PK\x03\x04 truncated zip", "not a valid .npz archive"),
])
def test_npz_that_is_not_an_archive(tmp_path, content, fragment):
    path = tmp_path / "mnist.npz"
    path.write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        data.read_keras_npz(path)
    assert_data_error(excinfo, path, fragment)


def test_single_npy_array_is_rejected(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(3, np.uint8))
    path = tmp_path / "mnist.npz"
    (tmp_path / "x.npy").rename(path)
    with pytest.raises(DataError) as excinfo:
        data.read_keras_npz(path)
    assert_data_error(excinfo, path, "single .npy array")


# --- split_validation --------------------------------------------------------------------------

def numbered_split(n: int, labelled: bool = True) -> Split:
    """Image i holds i in its first two pixels, so every image can be told apart."""
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    return Split(images, (np.arange(n) % 10).astype(np.uint8) if labelled else None)


def ids(split: Split) -> np.ndarray:
    return split.images[:, 0, 0].astype(int) * 256 + split.images[:, 0, 1]


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 600), fraction=st.floats(0, 0.999), seed=st.integers(0, 2**32 - 1))
def test_split_validation_partitions_the_split(n, fraction, seed):
    size = int(fraction * n)
    split = numbered_split(n)
    rest, validation = data.split_validation(split, size, seed)
    assert (len(rest.images), len(validation.images)) == (n - size, size)
    assert not set(ids(rest)) & set(ids(validation))
    np.testing.assert_array_equal(np.sort(np.concatenate([ids(rest), ids(validation)])), np.arange(n))
    for part in (rest, validation):  # labels travel with their images
        np.testing.assert_array_equal(part.labels, ids(part) % 10)
        assert part.images.shape[1:] == (28, 28) and part.images.dtype == np.uint8


def test_split_validation_is_seeded():
    split = numbered_split(1000)
    first = ids(data.split_validation(split, 100, seed=7)[1])
    np.testing.assert_array_equal(first, ids(data.split_validation(split, 100, seed=7)[1]))
    assert not np.array_equal(first, ids(data.split_validation(split, 100, seed=8)[1]))
    assert not np.array_equal(first, np.arange(100))  # shuffled, not the first 100


def test_split_validation_size_zero():
    split = numbered_split(10)
    rest, validation = data.split_validation(split, 0, seed=0)
    assert rest is split
    assert validation.images.shape == (0, 28, 28) and validation.images.dtype == np.uint8
    assert validation.labels.shape == (0,) and validation.labels.dtype == np.uint8


def test_split_validation_unlabelled():
    rest, validation = data.split_validation(numbered_split(10, labelled=False), 3, seed=0)
    assert rest.labels is None and validation.labels is None
    assert len(validation.images) == 3


@pytest.mark.parametrize("size", [10, 11, -1])
def test_split_validation_rejects_impossible_sizes(size):
    with pytest.raises(ValueError, match=r"validation size must be between 0 and 9 \(the training set has 10") as e:
        data.split_validation(numbered_split(10), size, seed=0)
    assert not isinstance(e.value, DataError)


# --- the real MNIST files ----------------------------------------------------------------------

def test_real_mnist(mnist_dir):
    directory = mnist_dir
    mnist = data.load(directory)
    assert mnist.train.images.shape == (60000, 28, 28) and mnist.train.labels.shape == (60000,)
    assert mnist.test.images.shape == (10000, 28, 28) and mnist.test.labels.shape == (10000,)
    assert set(np.unique(mnist.train.labels)) == set(range(10))
    assert mnist.unlabelled is None
    sums = directory / "SHA256SUMS.raw"
    if sums.exists():
        expected = dict(reversed(line.split()) for line in sums.read_text().splitlines()
                        if line.strip() and not line.startswith("#"))
        assert mnist.files == expected
    assert mnist.files == download.OFFICIAL_SHA256  # the hashes the downloader verifies
