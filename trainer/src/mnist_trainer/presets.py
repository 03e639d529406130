"""Named hyperparameter sets for `mnist-train train --preset`. Flags override them.

Figures are measured by bench/ on the project's 2-core reference machine (bench/README.md).
"""

from .train import TrainConfig

PRESETS: dict[str, TrainConfig] = {
    # A smoke test: one small hidden layer, a few epochs.
    "fast": TrainConfig(hidden=(256,), epochs=5, lr=0.05),
    # >= 98.2 % test accuracy in <= 60 s of training.
    # One wide layer and random 2-px shifts (measured: 98.9 % in about 40 s under load).
    "default": TrainConfig(hidden=(512,), epochs=15, lr=0.05, augment="shift"),
    # >= 98.8 % in <= 20 minutes: wide, dropout, affine distortions (Simard et al. 2003).
    "best": TrainConfig(hidden=(1024, 1024), epochs=30, lr=0.05, dropout=0.2, augment="affine"),
}
