"""PNG training report: learning curves, confusion matrix and the most confident mistakes.

Figures are built with matplotlib's object API on an Agg canvas, never through pyplot, so the
global backend and pyplot's figure registry are left untouched (safe in servers and tests).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100
GRID_COLUMNS = 8
MIN_GRID_WIDTH = 6.0  # inches: wide enough for the title of a grid with only a few mistakes


def write_report(out_dir: Path, history: list[dict], confusion: np.ndarray,
                 images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                 probabilities: np.ndarray, max_misclassified: int = 64, title: str = "") -> list[Path]:
    """Write learning_curves.png, confusion_matrix.png and misclassified.png; return their paths.
    `title` (the preset and its recipe) heads the learning curves."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Built lazily so only one figure is alive at a time.
    builders = {
        "learning_curves.png": lambda: learning_curves_figure(history, title),
        "confusion_matrix.png": lambda: confusion_figure(np.asarray(confusion)),
        "misclassified.png": lambda: misclassified_figure(images, labels, predictions, probabilities,
                                                          max_misclassified),
    }
    return [_save(build(), out_dir / name) for name, build in builders.items()]


def _new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    # No pyplot means no global registry holding the figure: it is freed once this returns.
    figure.savefig(path, dpi=DPI)
    return path


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of the epochs where `key` was recorded (absent or None is skipped)."""
    points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
    return [e for e, _ in points], [v for _, v in points]


def _best_epoch(history: list[dict]) -> dict | None:
    """The epoch with the best validation accuracy, ties to lower loss (as the trainer picks)."""
    validated = [r for r in history if r.get("val_accuracy") is not None]
    if not validated:
        return None
    return max(validated, key=lambda r: (r["val_accuracy"], -(r.get("val_loss") or 0.0)))


def learning_curves_figure(history: list[dict], title: str = "") -> Figure:
    """Losses (left) and accuracy in % (right) against epoch, best validation epoch marked."""
    figure = _new_figure(11, 4.2)
    if title:
        figure.suptitle(title)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    _plot_losses(loss_axes, history)
    _plot_accuracy(accuracy_axes, history)
    epochs = [r["epoch"] for r in history]
    for axes in (loss_axes, accuracy_axes):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if epochs:
            # Half an epoch of padding gives a single epoch a unit-wide axis with one integer tick.
            axes.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        axes.grid(True, alpha=0.3)
    return figure


def _plot_losses(axes, history: list[dict]) -> None:
    # Markers keep a single-epoch history visible; a one-point line draws nothing.
    # The training loss is the objective on augmented batches, with smoothed labels and L2 if set,
    # so it can sit above the validation loss: say so rather than let the gap read as underfitting.
    axes.plot(*_series(history, "train_loss"), marker="o", markersize=3, label="train (objective, augmented)")
    val_epochs, val_losses = _series(history, "val_loss")
    if val_epochs:
        axes.plot(val_epochs, val_losses, marker="o", markersize=3, label="validation (cross-entropy)")
    axes.set_title("Loss")
    axes.set_ylabel("cross-entropy loss")
    axes.legend()


def _plot_accuracy(axes, history: list[dict]) -> None:
    axes.set_title("Accuracy")
    axes.set_ylabel("accuracy (%)")
    train_epochs, train_accuracy = _series(history, "train_accuracy")
    if train_epochs:
        axes.plot(train_epochs, [100 * a for a in train_accuracy], marker="o", markersize=3,
                  label="train", color="C0")
    best = _best_epoch(history)
    if best is not None:
        val_epochs, val_accuracy = _series(history, "val_accuracy")
        axes.plot(val_epochs, [100 * a for a in val_accuracy], marker="o", markersize=3,
                  label="validation", color="C1")
        best_percent = 100 * best["val_accuracy"]
        axes.axvline(best["epoch"], color="C2", linestyle="--", linewidth=1)
        axes.plot(best["epoch"], best_percent, marker="*", markersize=14, color="C2", linestyle="none",
                  label=f"best {best_percent:.2f}% (epoch {best['epoch']})")
    if train_epochs or best is not None:
        axes.margins(y=0.1)  # room for the best-epoch star at the top of the plot
        axes.legend(loc="lower right")
    else:
        axes.set_yticks([])
        axes.text(0.5, 0.5, "no validation set", transform=axes.transAxes,
                  ha="center", va="center", color="gray")


def confusion_figure(confusion: np.ndarray) -> Figure:
    """Heatmap with every count written in its cell; errors get their own colour scale."""
    n_classes = len(confusion)
    total = confusion.sum()
    accuracy = np.trace(confusion) / total if total else 0.0
    figure = _new_figure(8, 7)
    axes = figure.subplots()
    on_diagonal = np.eye(n_classes, dtype=bool)
    # Correct counts dwarf the errors (~1000 vs ~10), so one shared scale would hide every error:
    # the diagonal gets a plain green scale and the off-diagonal errors a square-root red scale,
    # on which even a single error is clearly darker than an empty cell.
    correct = np.ma.masked_where(~on_diagonal, confusion)
    errors = np.ma.masked_where(on_diagonal | (confusion == 0), confusion)
    most_correct = int(confusion[on_diagonal].max(initial=0))
    most_errors = int(confusion[~on_diagonal].max(initial=0))
    correct_image = axes.imshow(correct, cmap="Greens", norm=Normalize(vmin=0, vmax=max(most_correct, 1)))
    error_image = axes.imshow(errors, cmap="Reds", norm=PowerNorm(0.5, vmin=0, vmax=max(most_errors, 1)))
    colorbar = figure.colorbar(error_image, ax=axes, label="misclassified count", shrink=0.8)
    colorbar.locator = MaxNLocator(integer=True)
    _annotate_counts(axes, confusion, [correct, errors], [correct_image, error_image])
    axes.set_xticks(range(n_classes))
    axes.set_yticks(range(n_classes))
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    axes.set_title(f"Confusion matrix: accuracy {100 * accuracy:.2f}% on {total:,} digits")
    return figure


def _annotate_counts(axes, confusion: np.ndarray, layers, images) -> None:
    """Write each count in its cell, white on dark cells so it stays legible."""
    font_size = 9 if confusion.max() < 10_000 else 7
    for layer, image in zip(layers, images):
        for (row, column), count in np.ndenumerate(confusion):
            if np.ma.is_masked(layer[row, column]):
                continue
            red, green, blue, _ = image.cmap(image.norm(count))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            axes.text(column, row, str(count), ha="center", va="center", fontsize=font_size,
                      color="white" if dark else "black")
    # Zero cells are masked in both layers; write them faintly so the grid reads as complete.
    for row, column in zip(*np.nonzero(confusion == 0)):
        axes.text(column, row, "0", ha="center", va="center", fontsize=font_size, color="0.7")


def misclassified_figure(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                         probabilities: np.ndarray, max_misclassified: int = 64) -> Figure:
    """Grid of wrong predictions, the most confident first, each titled true → pred (p)."""
    if max_misclassified < 1:
        raise ValueError("max_misclassified must be at least 1")
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    wrong = np.flatnonzero(labels != predictions)
    if wrong.size == 0:
        return _message_figure("no misclassified digits")
    confidence = np.asarray(probabilities)[wrong, predictions[wrong]]
    # Stable sort so equally confident mistakes keep their dataset order.
    shown = wrong[np.argsort(-confidence, kind="stable")][:max_misclassified]
    columns = min(GRID_COLUMNS, shown.size)
    rows = math.ceil(shown.size / columns)
    header = 0.7  # inches kept free above the grid for the figure title
    height = 1.75 * rows + header
    # A fixed grid instead of constrained layout: solving the layout of 64 axes takes seconds.
    figure = _new_figure(max(1.6 * columns, MIN_GRID_WIDTH), height, layout=None)
    grid = figure.subplots(rows, columns, squeeze=False,
                           gridspec_kw={"left": 0.01, "right": 0.99, "bottom": 0.01,
                                        "top": 1 - header / height, "hspace": 0.35})
    for axes in grid.ravel():
        # Hidden before drawing: computing 64 sets of unused ticks would dominate the run time.
        axes.set_axis_off()
    for axes, index in zip(grid.ravel(), shown):
        axes.imshow(images[index], cmap="gray_r", interpolation="nearest")
        predicted = predictions[index]
        axes.set_title(f"true {labels[index]} → pred {predicted} ({probabilities[index, predicted]:.2f})",
                       fontsize=8)
    figure.suptitle(f"Misclassified digits: {shown.size} of {wrong.size}, most confident first",
                    y=1 - 0.2 / height, va="top")
    return figure


def _message_figure(message: str) -> Figure:
    figure = _new_figure(4, 2)
    figure.text(0.5, 0.5, message, ha="center", va="center", fontsize=14)
    return figure
