"""Mini-batch optimisers and learning-rate schedules, updating parameters in place.

Weight decay here is *decoupled* (Loshchilov & Hutter, AdamW): p -= lr * wd * p, applied to
weight matrices only. Coupled L2 lives in the loss (nn.Network.loss_and_backward).
"""

from __future__ import annotations

import math

import numpy as np


class SGD:
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
            if decay and self.weight_decay:
                p *= 1.0 - lr * self.weight_decay
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


class Adam:
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
            if decay and self.weight_decay:
                p *= 1.0 - lr * self.weight_decay
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


def make_optimizer(name: str, params, *, momentum: float, nesterov: bool, weight_decay: float):
    decay_mask = [p.ndim > 1 for p in params]  # decay weights, never biases
    if name == "sgd":
        return SGD(params, momentum, nesterov, weight_decay, decay_mask)
    if name == "adam":
        return Adam(params, weight_decay=weight_decay, decay_mask=decay_mask)
    raise ValueError(f"unknown optimizer {name!r} (expected sgd or adam)")


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
