"""The training loop: shuffled mini-batches, schedule, early stopping, best checkpoint."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import augment as aug
from .nn import Network, cross_entropy
from .optim import OPTIMIZERS, ExponentialAverage, learning_rate, make_optimizer

# Training images, augmented as in training, that set batch norm's statistics for averaged weights:
# the layer after a batch norm learned to read activations of augmented images, not clean ones.
STATISTICS_IMAGES = 10_000

# Input normalisation, recorded in the manifest: x = (pixel * PIXEL_SCALE - MEAN) / STD.
PIXEL_SCALE = 1.0 / 255.0
MEAN = 0.1307  # MNIST training-set pixel mean and standard deviation, on the [0, 1] scale
STD = 0.3081


def to_input(pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Raw 0..255 pixels, shape (N, 28, 28) or (N, 784), to normalised float32 rows (N, 784)."""
    flat = pixels.reshape(len(pixels), -1)
    out = np.multiply(flat, np.float32(PIXEL_SCALE), out=out, dtype=np.float32)
    out -= np.float32(MEAN)
    out /= np.float32(STD)
    return out


@dataclass
class TrainConfig:
    """Hyperparameters; the CLI's flags and presets map onto these fields one to one."""

    hidden: tuple[int, ...] = (256,)
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adam | rmsprop | adagrad
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0  # decoupled (AdamW-style), weights only
    l2: float = 0.0  # coupled, part of the loss
    dropout: float = 0.0
    batch_norm: bool = False  # on hidden layers, folded into the affine layers when published
    label_smoothing: float = 0.0
    ema: float = 0.0  # decay of an exponential moving average of the weights, published; 0 = off
    schedule: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0
    step_epochs: int = 10  # step schedule: multiply lr by step_gamma every step_epochs
    step_gamma: float = 0.1
    augment: str = "none"  # a name in augment.AUGMENTATIONS
    patience: int = 0  # early stopping: epochs without a better validation score; 0 = off
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first hyperparameter that is out of range."""
        checks = [
            (self.optimizer in OPTIMIZERS,
             f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.schedule in ("cosine", "step", "constant"),
             f"schedule must be cosine, step or constant, got {self.schedule!r}"),
            (self.augment in aug.AUGMENTATIONS,
             f"augment must be one of {', '.join(aug.AUGMENTATIONS)}, got {self.augment!r}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (0 <= self.ema < 1, f"ema must be in [0, 1) (0: off), got {self.ema}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0 and self.l2 >= 0, "weight_decay and l2 must be >= 0"),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
            (all(h >= 1 for h in self.hidden), f"hidden layer sizes must be >= 1, got {self.hidden}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def describe(self) -> str:
        """The recipe in one line, e.g. for a report's title."""
        parts = ["-".join(map(str, (784, *self.hidden, 10))), f"{self.optimizer} lr {self.lr:g}",
                 f"batch {self.batch_size}", f"{self.epochs} epochs"]
        optional = [(self.batch_norm, "batch norm"), (self.dropout, f"dropout {self.dropout:g}"),
                    (self.augment != "none", f"{self.augment} augmentation"),
                    (self.label_smoothing, f"label smoothing {self.label_smoothing:g}"),
                    (self.ema, f"EMA {self.ema:g}"), (self.weight_decay, f"weight decay {self.weight_decay:g}"),
                    (self.l2, f"L2 {self.l2:g}")]
        return ", ".join(parts + [text for on, text in optional if on])

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d


class Interrupted(Exception):
    """Training was asked to stop (SIGINT/SIGTERM) and stopped at a batch boundary."""


@dataclass
class TrainResult:
    network: Network  # holds the best checkpoint's parameters (the averaged ones with ema)
    history: list[dict]
    best_epoch: int
    seconds: float


def evaluate(network: Network, x: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(loss, accuracy) of normalised inputs x."""
    logits = network.logits(x)
    return cross_entropy(logits, labels), float((logits.argmax(axis=1) == labels).mean())


def fit(images: np.ndarray, labels: np.ndarray, config: TrainConfig, *,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
        on_epoch: Callable[[dict], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    """Train a fresh network on uint8 images (N, 28, 28) and labels; select the best epoch on
    `validation` (uint8 images, labels) if given, else keep the last epoch."""
    config.validate()
    seeds = np.random.SeedSequence(config.seed).spawn(5)
    init_rng, shuffle_rng, dropout_rng, augment_rng, statistics_rng = (np.random.default_rng(s) for s in seeds)
    n, batch_size = len(images), config.batch_size
    steps_per_epoch = n // batch_size  # the last partial batch is dropped, as is common
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {batch_size} is larger than the training set ({n} images)")
    total_steps = steps_per_epoch * config.epochs

    sizes = [images[0].size, *config.hidden, 10]
    network = Network.initialise(sizes, init_rng, batch_norm=config.batch_norm)
    optimizer = make_optimizer(config.optimizer, network.params, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.weight_decay)
    average = ExponentialAverage(network.params, config.ema) if config.ema else None
    averaged = _averaged_network(network, average) if average else None
    published = averaged or network  # what is evaluated, checkpointed and returned
    augment = aug.AUGMENTATIONS[config.augment]
    val_x = to_input(validation[0]) if validation is not None else None
    statistics_x = None
    if averaged and config.batch_norm:
        sample = images[statistics_rng.permutation(n)[:STATISTICS_IMAGES]]
        if augment is not None:  # a batch at a time: augmenting 10,000 at once peaks at ~700 MiB
            sample = np.concatenate([augment(sample[i : i + batch_size], statistics_rng)
                                     for i in range(0, len(sample), batch_size)])
        statistics_x = to_input(sample)
    x_batch = np.empty((batch_size, images[0].size), np.float32)

    history, best, best_state, since_best = [], None, None, 0
    started = time.perf_counter()
    step = 0
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        order = shuffle_rng.permutation(n)
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            if should_stop():
                raise Interrupted(f"stopped in epoch {epoch}, batch {i}")
            idx = order[i * batch_size : (i + 1) * batch_size]
            batch = images[idx]
            if augment is not None:
                batch = augment(batch, augment_rng)
            to_input(batch, out=x_batch)
            lr = learning_rate(step, total_steps, base_lr=config.lr,
                               warmup_steps=int(config.warmup_epochs * steps_per_epoch),
                               schedule=config.schedule, step_every=config.step_epochs * steps_per_epoch,
                               step_gamma=config.step_gamma)
            logits = network.forward(x_batch, config.dropout, dropout_rng, training=True)
            loss_sum += network.loss_and_backward(logits, labels[idx], config.l2, config.label_smoothing)
            optimizer.step(network.grads, lr)
            if average is not None:
                average.step()
            step += 1
            if on_batch is not None:
                on_batch(i + 1)

        record = {"epoch": epoch, "train_loss": loss_sum / steps_per_epoch, "val_loss": None,
                  "val_accuracy": None, "lr": lr,
                  "samples_per_second": steps_per_epoch * batch_size / (time.perf_counter() - epoch_started),
                  "elapsed": 0.0}
        if statistics_x is not None:
            averaged.recompute_statistics(statistics_x)
        if val_x is not None:
            record["val_loss"], record["val_accuracy"] = evaluate(published, val_x, validation[1])
        record["elapsed"] = time.perf_counter() - started
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)

        score = (record["val_accuracy"], -record["val_loss"]) if val_x is not None else (epoch, 0)
        if best is None or score > best:
            best, best_state, since_best = score, [p.copy() for p in published.state], 0
            best_epoch = epoch
        else:
            since_best += 1
            if config.patience and since_best >= config.patience:
                break

    for p, saved in zip(published.state, best_state):
        p[...] = saved
    return TrainResult(published, history, best_epoch, time.perf_counter() - started)


def _averaged_network(network: Network, average: ExponentialAverage) -> Network:
    """A network whose parameters are the average's arrays (params order: W and b of each layer,
    then gamma and beta of each batch norm), with running statistics of its own."""
    arrays, n = average.average, len(network.weights)
    averaged = Network(arrays[0 : 2 * n : 2], arrays[1 : 2 * n : 2], batch_norm=bool(network.norms))
    for norm, gamma, beta in zip(averaged.norms, arrays[2 * n :: 2], arrays[2 * n + 1 :: 2]):
        norm.gamma, norm.beta = gamma, beta
    return averaged
