"""What a version saw on its validation split: the reference profile that drift is measured against.

Five signals of each instance, cheap enough to compute on every request (docs/artifact.md, "profile"):

    predicted_class  the label the model predicts (10 categories)
    confidence       the probability of that label
    ink              the share of pixels at least half dark (>= 128 of 255)
    intensity        the mean pixel, 0..1
    offset           how far the ink's centre of mass lies from the image's centre, in pixels

All on the model's 28x28 input, after the service's preprocessing, MNIST polarity (ink high). The
trainer writes `build_profile` into the manifest; the service bins live traffic with the same edges
and scores a window of it against the reference shares with the population stability index (`psi`).
"""

from __future__ import annotations

import numpy as np

from .format import LABELS, PIXELS, SIDE, ArtifactError

SIGNALS = ("predicted_class", "confidence", "ink", "intensity", "offset")
CATEGORICAL = {"predicted_class": len(LABELS)}
QUANTILES = np.linspace(0, 1, 11)[1:-1]  # deciles: each numeric bin holds a tenth of the reference
SHARE_FLOOR = 1e-4  # an empty bin's share in PSI's logarithm (either side): large, but finite
INK_LEVEL = 128

_COORDINATES = np.arange(SIDE, dtype=np.float32) - (SIDE - 1) / 2  # from the centre, in pixels
_ROWS = np.repeat(_COORDINATES, SIDE)  # each flat pixel's row and column
_COLUMNS = np.tile(_COORDINATES, SIDE)


def signal_values(pixels: np.ndarray, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Each signal's value for each instance: pixels (N, 784) on 0..255, probabilities (N, 10)."""
    mass = pixels.sum(axis=1)
    safe_mass = np.where(mass > 0, mass, 1)  # a blank image's centre is the centre itself
    rows, columns = (pixels @ _ROWS) / safe_mass, (pixels @ _COLUMNS) / safe_mass
    return {
        "predicted_class": probabilities.argmax(axis=1),
        "confidence": probabilities.max(axis=1),
        "ink": np.count_nonzero(pixels >= INK_LEVEL, axis=1) / PIXELS,
        "intensity": mass / (PIXELS * 255),
        "offset": np.hypot(rows, columns),
    }


def build_profile(pixels: np.ndarray, probabilities: np.ndarray) -> dict:
    """The manifest's "profile" section: per signal, its bins and the share of instances in each."""
    values = signal_values(pixels, probabilities)
    signals = {}
    for name in SIGNALS:
        if name in CATEGORICAL:
            counts = np.bincount(values[name], minlength=CATEGORICAL[name])
            signals[name] = {"categories": CATEGORICAL[name], "shares": _shares(counts)}
        else:
            edges = np.unique(np.quantile(values[name], QUANTILES)).tolist()
            counts = np.bincount(np.searchsorted(edges, values[name], side="right"), minlength=len(edges) + 1)
            signals[name] = {"edges": edges, "shares": _shares(counts)}
    return {"samples": len(pixels), "signals": signals}


def _shares(counts: np.ndarray) -> list[float]:
    return [round(c, 6) for c in (counts / max(counts.sum(), 1)).tolist()]


class Profile:
    """A version's reference profile, checked: bins live values as the trainer binned the reference."""

    def __init__(self, section, where: str = "profile"):
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ArtifactError(f"{where}: {what}")

        need(isinstance(section, dict) and isinstance(section.get("signals"), dict), '"signals" must be an object')
        need(type(section.get("samples")) is int and section["samples"] > 0, '"samples" must be a positive integer')
        self.samples = section["samples"]
        self.edges: dict[str, np.ndarray | None] = {}
        self.shares: dict[str, np.ndarray] = {}
        for name in SIGNALS:
            signal = section["signals"].get(name)
            need(isinstance(signal, dict), f"signal {name!r} is missing")
            shares = signal.get("shares")
            need(isinstance(shares, list) and all(type(s) in (int, float) and 0 <= s <= 1 for s in shares)
                 and abs(sum(shares) - 1) < 1e-3, f"{name}.shares must be shares in [0, 1] that add up to 1")
            if name in CATEGORICAL:
                need(signal.get("categories") == CATEGORICAL[name] == len(shares),
                     f"{name} must have {CATEGORICAL[name]} categories and as many shares")
                self.edges[name] = None
            else:
                edges = signal.get("edges")
                need(isinstance(edges, list) and all(type(e) in (int, float) and np.isfinite(e) for e in edges)
                     and edges == sorted(set(edges)) and len(shares) == len(edges) + 1,
                     f"{name}.edges must be increasing finite numbers, one fewer than its shares")
                self.edges[name] = np.asarray(edges, dtype=np.float64)
            self.shares[name] = np.asarray(shares, dtype=np.float64)

    def bins(self) -> dict[str, int]:
        """How many bins each signal has."""
        return {name: len(shares) for name, shares in self.shares.items()}

    def bin_indices(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The bin of each instance's value of each signal (signal_values' output)."""
        return {name: values[name] if edges is None else np.searchsorted(edges, values[name], side="right")
                for name, edges in self.edges.items()}


def psi(counts: np.ndarray, reference: np.ndarray) -> float:
    """Population stability index of observed bin counts against reference shares:
    sum((p - q) * ln(p / q)), each share floored at SHARE_FLOOR. 0 when they agree; above 0.25 is
    the usual "significant shift" threshold (docs/artifact.md, "profile")."""
    counts = np.asarray(counts)
    p = np.maximum(counts / max(counts.sum(), 1), SHARE_FLOOR)
    q = np.maximum(reference, SHARE_FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))
