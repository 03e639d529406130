"""Mini-batch optimisers and learning-rate schedules, updating parameters in place.

Weight decay here is *decoupled* (Loshchilov & Hutter, AdamW): p -= lr * wd * p, applied to
weight matrices only. Coupled L2 lives in the loss (nn.Network.loss_and_backward).
"""

from __future__ import annotations

import math

import numpy as np


class _Decay:
    """Decoupled weight decay, applied before each step (weights only: `decay_mask`)."""

    def _decay(self, p: np.ndarray, decay: bool, lr: float) -> None:
        if decay and self.weight_decay:
            p *= 1.0 - lr * self.weight_decay


class SGD(_Decay):
    """SGD with (optionally Nesterov) momentum: v = mu*v + g; p -= lr * (g + mu*v | v)."""

    def __init__(self, params, momentum=0.9, nesterov=False, weight_decay=0.0, decay_mask=None):
        self.params = params
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.decay_mask = decay_mask or [True] * len(params)
        self.velocity = [np.zeros_like(p) for p in params]

    def step(self, grads, lr: float) -> None:
        mu = self.momentum
        for p, g, v, decay in zip(self.params, grads, self.velocity, self.decay_mask):
            self._decay(p, decay, lr)
            if mu:
                v *= mu
                v += g
                if self.nesterov:
                    g += mu * v  # g is scratch from here on: it becomes the Nesterov step
                    g *= -lr
                else:
                    np.multiply(v, -lr, out=g)
            else:
                g *= -lr
            p += g


class AdaGrad(_Decay):
    """AdaGrad (Duchi et al. 2011): G += g^2; p -= lr * g / (sqrt(G) + eps). Steps shrink as
    squared gradients accumulate, per parameter."""

    def __init__(self, params, eps=1e-8, weight_decay=0.0, decay_mask=None):
        self.params, self.eps, self.weight_decay = params, eps, weight_decay
        self.decay_mask = decay_mask or [True] * len(params)
        self.sum_squares = [np.zeros_like(p) for p in params]

    def step(self, grads, lr: float) -> None:
        for p, g, s, decay in zip(self.params, grads, self.sum_squares, self.decay_mask):
            self._decay(p, decay, lr)
            s += g * g
            _scaled_step(p, g, s, self.eps, lr)


class RMSprop(_Decay):
    """RMSprop (Hinton, Coursera lecture 6e): v = rho*v + (1-rho)*g^2; p -= lr * g / (sqrt(v) + eps).
    AdaGrad with a moving average in place of the sum, so steps do not vanish."""

    def __init__(self, params, rho=0.9, eps=1e-8, weight_decay=0.0, decay_mask=None):
        self.params, self.rho, self.eps, self.weight_decay = params, rho, eps, weight_decay
        self.decay_mask = decay_mask or [True] * len(params)
        self.mean_squares = [np.zeros_like(p) for p in params]

    def step(self, grads, lr: float) -> None:
        for p, g, v, decay in zip(self.params, grads, self.mean_squares, self.decay_mask):
            self._decay(p, decay, lr)
            v *= self.rho
            v += (1 - self.rho) * g * g
            _scaled_step(p, g, v, self.eps, lr)


def _scaled_step(p: np.ndarray, g: np.ndarray, squares: np.ndarray, eps: float, lr: float) -> None:
    """p -= lr * g / (sqrt(squares) + eps), with g as scratch."""
    denominator = np.sqrt(squares)
    denominator += eps
    g /= denominator
    g *= -lr
    p += g


class Adam(_Decay):
    """Adam (Kingma & Ba) with decoupled weight decay (AdamW)."""

    def __init__(self, params, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decay_mask=None):
        self.params = params
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.weight_decay = weight_decay
        self.decay_mask = decay_mask or [True] * len(params)
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads, lr: float) -> None:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        # Bias corrections folded into the step size (as in the paper's final algorithm).
        step = lr * math.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for p, g, m, v, decay in zip(self.params, grads, self.m, self.v, self.decay_mask):
            self._decay(p, decay, lr)
            m *= b1
            m += (1 - b1) * g
            v *= b2
            np.square(g, out=g)  # g is scratch from here on
            g *= 1 - b2
            v += g
            np.sqrt(v, out=g)
            g += self.eps
            np.divide(m, g, out=g)
            g *= -step
            p += g


class ExponentialAverage:
    """An exponential moving average of parameters (Polyak averaging as in TensorFlow's
    ExponentialMovingAverage): avg = d * avg + (1 - d) * p after every `every`-th step, with
    d = min(decay ** every, (1 + n) / (10 + n)) after n updates, so that early averages are not
    dominated by the initial weights. Updating every few steps costs a fraction of the memory
    traffic of updating every step and averages over the same horizon."""

    def __init__(self, params, decay: float, every: int = 4):
        self.params, self.decay, self.every = params, decay, every
        self.average = [p.copy() for p in params]
        self._scratch = [np.empty_like(p) for p in params]
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps % self.every:
            return
        n = self.steps // self.every  # updates so far, this one included
        d = min(self.decay**self.every, (1 + n) / (10 + n))
        for avg, p, scratch in zip(self.average, self.params, self._scratch):
            np.subtract(p, avg, out=scratch)
            scratch *= 1 - d
            avg += scratch


ADAPTIVE = {"adam": Adam, "rmsprop": RMSprop, "adagrad": AdaGrad}
OPTIMIZERS = ("sgd", *ADAPTIVE)


def make_optimizer(name: str, params, *, momentum: float, nesterov: bool, weight_decay: float):
    decay_mask = [p.ndim > 1 for p in params]  # decay weights, never biases
    if name == "sgd":
        return SGD(params, momentum, nesterov, weight_decay, decay_mask)
    if name in ADAPTIVE:
        return ADAPTIVE[name](params, weight_decay=weight_decay, decay_mask=decay_mask)
    raise ValueError(f"unknown optimizer {name!r} (expected {', '.join(OPTIMIZERS)})")


def learning_rate(step: int, total_steps: int, *, base_lr: float, warmup_steps: int,
                  schedule: str, min_lr_ratio: float = 0.0, step_every: int = 0,
                  step_gamma: float = 0.1) -> float:
    """Linear warm-up to base_lr, then cosine (to base_lr * min_lr_ratio), step or constant."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        floor = base_lr * min_lr_ratio
        return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return base_lr * step_gamma ** ((step - warmup_steps) // max(1, step_every))
    if schedule == "constant":
        return base_lr
    raise ValueError(f"unknown schedule {schedule!r} (expected cosine, step or constant)")
