import numpy as np
import pytest
from matplotlib.image import imread

from mnist_trainer.metrics import confusion_matrix
from mnist_trainer.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPORT_FILES = ["learning_curves.png", "confusion_matrix.png", "misclassified.png"]


def _history(epochs: int, validated: bool = True) -> list[dict]:
    rng = np.random.default_rng(epochs)
    return [{"epoch": e,
             "train_loss": 1.0 / e,
             "val_loss": 1.1 / e if validated else None,
             "val_accuracy": float(rng.uniform(0.9, 0.99)) if validated else None,
             "lr": 0.05 / e}
            for e in range(1, epochs + 1)]


def _predictions(n: int, error_rate: float, seed: int = 0):
    """Random digits, labels and softmax-like probabilities whose argmax errs at `error_rate`."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    wrong = rng.random(n) < error_rate
    predictions = np.where(wrong, (labels + rng.integers(1, 10, size=n)) % 10, labels)
    probabilities = rng.dirichlet(np.ones(10), size=n)
    probabilities[np.arange(n), predictions] += 1.0  # make the prediction the argmax
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return images, labels, predictions, probabilities


def _write(out_dir, history, images, labels, predictions, probabilities, **kwargs):
    return write_report(out_dir, history, confusion_matrix(labels, predictions),
                        images, labels, predictions, probabilities, **kwargs)


def _assert_valid_png(path, min_bytes=5_000):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > min_bytes
    height, width = imread(path).shape[:2]
    assert 150 <= height <= 2000 and 300 <= width <= 2000


def test_writes_the_three_figures_into_a_new_directory(tmp_path):
    out_dir = tmp_path / "nested" / "report"
    paths = _write(out_dir, _history(12), *_predictions(500, error_rate=0.2))
    assert paths == [out_dir / name for name in REPORT_FILES]
    for path in paths:
        _assert_valid_png(path)


def test_the_recipe_heads_the_learning_curves(tmp_path):
    plain = _write(tmp_path / "plain", _history(3), *_predictions(200, 0.2))[0]
    titled = _write(tmp_path / "titled", _history(3), *_predictions(200, 0.2),
                    title="preset best: 784-1024-1024-10, batch norm, elastic augmentation")[0]
    assert not np.array_equal(imread(titled), imread(plain))  # the same figure size, a title drawn in it


def test_misclassified_grid_is_capped(tmp_path):
    few = _write(tmp_path / "few", _history(3), *_predictions(500, 0.2), max_misclassified=8)[2]
    many = _write(tmp_path / "many", _history(3), *_predictions(500, 0.2), max_misclassified=64)[2]
    assert imread(few).shape[0] < imread(many).shape[0]  # one row of 8 versus eight rows


def test_no_mistakes_still_writes_a_misclassified_image(tmp_path):
    images, labels, _, probabilities = _predictions(50, error_rate=0.0)
    paths = _write(tmp_path, _history(5), images, labels, labels, probabilities)
    for path in paths:
        _assert_valid_png(path, min_bytes=2_000)


@pytest.mark.parametrize("history", [_history(1), _history(1, validated=False),
                                     _history(6, validated=False)],
                         ids=["one-epoch", "one-epoch-no-validation", "no-validation"])
def test_short_and_unvalidated_histories(tmp_path, history):
    paths = _write(tmp_path, history, *_predictions(100, error_rate=0.1))
    _assert_valid_png(paths[0])


def test_rejects_a_non_positive_misclassified_limit(tmp_path):
    with pytest.raises(ValueError):
        _write(tmp_path, _history(2), *_predictions(20, 0.5), max_misclassified=0)
