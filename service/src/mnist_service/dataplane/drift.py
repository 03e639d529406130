"""Drift statistics: does live traffic still look like the data a version was trained on?

Each process keeps, per served version that has a reference profile (mnist_artifact.profile), the
bins of the last DRIFT_WINDOW instances of each signal, and scores the window against the version's
reference shares with the population stability index: `mnist_drift_score{model_version, signal}`,
published once the window is full (README.md, "Drift", says what the scores mean and when they
alarm). Instances are gathered into small batches first: computing the signals for 32 instances at
once costs about what it costs for one.
"""

from __future__ import annotations

import numpy as np

from mnist_artifact import Model
from mnist_artifact.format import PIXELS
from mnist_artifact.profile import SIGNALS, Profile, psi, signal_values

from .. import metrics

BATCH = 32  # instances gathered before their signals are computed and the scores refreshed
CLASSES = 10


class DriftMonitor:
    """The windows of one process, by version; `window` instances each (0: no drift statistics)."""

    def __init__(self, window: int):
        self.window = window
        self.windows: dict[int, VersionWindow] = {}

    def observe(self, model: Model, pixels: np.ndarray, probabilities: np.ndarray) -> None:
        profile = model.profile
        if not self.window or profile is None:
            return
        window = self.windows.get(model.version)
        if window is None or window.profile is not profile:  # a version re-published under its number
            window = self.windows[model.version] = VersionWindow(model.version, profile, self.window)
        window.add(pixels, probabilities)


class VersionWindow:
    """The last `size` instances of one version, as bins of each signal, and their scores."""

    def __init__(self, version: int, profile: Profile, size: int):
        self.profile, self.size, self.filled, self.position = profile, size, 0, 0
        self.bins = {name: np.zeros(size, dtype=np.int16) for name in SIGNALS}
        self.pending_pixels = np.empty((BATCH, PIXELS), dtype=np.float32)
        self.pending_probabilities = np.empty((BATCH, CLASSES), dtype=np.float32)
        self.pending = 0
        self.gauges = {name: metrics.DRIFT_SCORE.labels(str(version), name) for name in SIGNALS}

    def add(self, pixels: np.ndarray, probabilities: np.ndarray) -> None:
        if len(pixels) == 1 and self.pending < BATCH:  # the common case: one row copied, nothing computed
            self.pending_pixels[self.pending] = pixels[0]
            self.pending_probabilities[self.pending] = probabilities[0]
            self.pending += 1
            if self.pending == BATCH:
                self._take(self.pending_pixels, self.pending_probabilities)
            return
        if self.pending:
            self._take(self.pending_pixels[:self.pending], self.pending_probabilities[:self.pending])
        self._take(pixels[-self.size:], probabilities[-self.size:])

    def _take(self, pixels: np.ndarray, probabilities: np.ndarray) -> None:
        """Put these instances' bins into the window (the oldest leave it) and refresh the scores."""
        self.pending = 0
        places = (self.position + np.arange(len(pixels))) % self.size
        for name, bins in self.profile.bin_indices(signal_values(pixels, probabilities)).items():
            self.bins[name][places] = bins
        self.position = (self.position + len(pixels)) % self.size
        self.filled = min(self.size, self.filled + len(pixels))
        for name, score in (self.scores() or {}).items():
            self.gauges[name].set(score)

    def scores(self) -> dict[str, float] | None:
        """Each signal's score against the reference, or None until the window is full."""
        if self.filled < self.size:
            return None
        return {name: psi(np.bincount(self.bins[name], minlength=count), self.profile.shares[name])
                for name, count in self.profile.bins().items()}
