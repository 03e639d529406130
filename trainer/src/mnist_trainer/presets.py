"""Named hyperparameter sets for `mnist-train train --preset`. Flags override them.

Times are training seconds on the project's 2-core reference machine; on another machine they scale
by its machine factor (`bench/run machine`; bench/README.md, "Budgets and the machine factor").
"""

from .train import TrainConfig

PRESETS: dict[str, TrainConfig] = {
    # A smoke test: one small hidden layer, a few epochs (about 1.5 s).
    "fast": TrainConfig(hidden=(256,), epochs=5, lr=0.05),
    # >= 99.0 % test accuracy (mean of 3 seeds) in <= 60 s of training; what `docker compose up` trains.
    # One wide layer, random affine warps, batch norm, label smoothing and a weight average; batches
    # of 256 (20 % faster an epoch than 128 here) at twice the learning rate.
    "default": TrainConfig(hidden=(800,), epochs=32, batch_size=256, lr=0.1, augment="affine",
                           batch_norm=True, label_smoothing=0.1, ema=0.999),
    # >= 99.35 % on every seed in <= 15 minutes: three hidden layers and elastic distortions (Simard et al.
    # 2003) with affine ones and stroke-thickness changes, regenerated every batch, for as many epochs as
    # fit; the weight average spans about 23 epochs of the decaying learning rate's tail.
    "best": TrainConfig(hidden=(1024, 1024, 1024), epochs=120, batch_size=256, lr=0.1, augment="elastic",
                        batch_norm=True, label_smoothing=0.1, ema=0.9998),
}
