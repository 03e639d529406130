"""Pixel attributions for the served MLP, "why this digit": exact gradients and integrated gradients, in NumPy.

Integrated gradients (Sundararajan, Taly and Yan 2017, "Axiomatic Attribution for Deep Networks"):

    IG_i(x) = (x_i - x'_i) * integral_0^1 dF(x' + alpha (x - x')) / dx_i  d alpha

with F the target class's logit z_target (pre-softmax), x the 0..255 pixels and x' the baseline (0: black,
MNIST's background). Completeness: sum_i IG_i(x) = F(x) - F(x'). Gradient x input is x_i * dF/dx_i.

F is the forward pass of mnist_artifact.Model: x0 = (pixel * scale - mean) / std, h_l = ReLU(h_{l-1} W_l + b_l)
for the hidden layers, z = h_{L-1} W_L + b_L. Its gradient is backpropagated by hand: start from row
`target` of W_L^T, then at each hidden layer keep the units that are on (pre-activation > 0) and multiply
by W_l^T; the input normalisation adds the factor scale / std.
"""

from __future__ import annotations

import numpy as np

from mnist_artifact.preprocess import png_data_url

DEFAULT_STEPS = 256  # the fewest (of 32, 64, 128, 256) for completeness within 1 %: tests/service/test_explain.py


def _batch(model, pixels, targets) -> tuple[np.ndarray, np.ndarray]:
    """Pixels as (N, 784) and targets as (N,) class indices (an int applies to every row)."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 1:
        pixels = pixels[None, :]
    n_in, n_out = model.weights[0].shape[0], model.weights[-1].shape[1]
    if pixels.ndim != 2 or pixels.shape[1] != n_in:
        raise ValueError(f"pixels must be (N, {n_in}), got {pixels.shape}")
    targets = np.asarray(targets)
    if not np.issubdtype(targets.dtype, np.integer):
        raise ValueError("targets must be integer class indices")
    targets = np.broadcast_to(targets, (pixels.shape[0],)).astype(np.intp)
    if targets.size and (targets.min() < 0 or targets.max() >= n_out):
        raise ValueError(f"targets must be class indices in 0..{n_out - 1}")
    return pixels, targets


def logits_and_gradients(model, pixels, targets) -> tuple[np.ndarray, np.ndarray]:
    """The logits z (N, 10) and dz_target/dpixel (N, 784), exact by backpropagation.

    At a ReLU kink (pre-activation exactly 0) the derivative taken is 0, as in the forward's max(x, 0).
    """
    pixels, targets = _batch(model, pixels, targets)
    on = []  # per hidden layer: which units are on (h > 0)
    logits = model.logits(pixels, on)  # the served forward pass itself
    g = model.weights[-1].T[targets]  # dz_target/dh_{L-1} = column `target` of W_L
    for l in range(len(model.weights) - 2, -1, -1):
        g *= on[l]  # through ReLU: dh/da = 1 where the unit is on, else 0
        g = g @ model.weights[l].T  # through the affine layer: da/dh_{l-1} = W_l^T
    g *= model.dtype.type(np.float64(model.scale) / np.float64(model.std))  # x0 = (pixel * scale - mean) / std
    return logits, g


def integrated_gradients(model, pixels, targets, steps: int = DEFAULT_STEPS, baseline=0) -> np.ndarray:
    """IG attributions (N, 784), float64: (x - x') times the mean gradient along the straight path from x'.

    Midpoint rule: gradients at alpha = (k + 1/2) / steps, k = 0..steps-1, averaged in float64. Along the path
    the gradient of a ReLU network is piecewise constant, so the sum is exact except in the cells where a unit
    switches on or off (an error of up to half a cell times the jump, each): it shrinks like 1 / steps. The
    trapezoid rule has the same bound for one evaluation more. baseline: a scalar or (784,) or (N, 784) pixels.
    All N * steps path points go through one batched forward and backward pass: memory grows with both
    (a peak of 2.7 MB per digit at 256 steps through 784-800-10, measured with tracemalloc).
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    pixels, targets = _batch(model, pixels, targets)
    n, n_in = pixels.shape
    x = pixels.astype(np.float64)
    x_base = np.broadcast_to(np.asarray(baseline, dtype=np.float64), x.shape)
    delta = x - x_base
    dtype = model.dtype  # the path in the forward's dtype: half the memory of float64
    alphas = ((np.arange(steps) + 0.5) / steps).astype(dtype)
    path = x_base.astype(dtype)[:, None, :] + alphas[None, :, None] * delta.astype(dtype)[:, None, :]
    _, g = logits_and_gradients(model, path.reshape(n * steps, n_in), np.repeat(targets, steps))
    return delta * g.reshape(n, steps, n_in).mean(axis=1, dtype=np.float64)


def gradient_times_input(model, pixels, targets) -> np.ndarray:
    """pixel * dz_target/dpixel (N, 784): one forward and backward pass; sums to z(x) - z(0) only if z is linear."""
    pixels, targets = _batch(model, pixels, targets)
    _, g = logits_and_gradients(model, pixels, targets)
    return g * pixels


METHODS = {"integrated_gradients": integrated_gradients, "gradient_x_input": gradient_times_input}
DEFAULT_METHOD = "integrated_gradients"
MAX_STEPS = 1024


def explanation_objects(model, pixels, probabilities, method: str, target: int | None, steps: int) -> list[dict]:
    """One {"method", "target", "attributions" (28 rows of 28), "heatmap" (PNG data: URL), "sum"} per
    instance, for `target` or each instance's predicted class; integrated gradients adds "steps" and
    "logit_difference" = z(x) - z(black), which "sum" equals within about 1 % (completeness)."""
    targets = probabilities.argmax(axis=1) if target is None else np.full(len(pixels), target)
    if method == "integrated_gradients":
        attributions = integrated_gradients(model, pixels, targets, steps)
        logits = model.logits(np.concatenate([pixels, np.zeros_like(pixels[:1])]))
        differences = logits[:-1][np.arange(len(pixels)), targets] - logits[-1][targets]
    else:
        attributions, differences = gradient_times_input(model, pixels, targets), None
    objects = []
    for i, (a, t) in enumerate(zip(attributions, targets.tolist())):
        item = {"method": method, "target": t, "attributions": a.reshape(28, 28).astype(np.float32),
                "heatmap": heatmap_data_url(a), "sum": float(a.sum())}
        if differences is not None:
            item |= {"steps": steps, "logit_difference": float(differences[i])}
        objects.append(item)
    return objects

# The diverging colour map: negative -> blue, 0 -> white, positive -> red (ColorBrewer RdBu's ends).
BLUE = np.array([33, 102, 172], dtype=np.float64)
WHITE = np.array([255, 255, 255], dtype=np.float64)
RED = np.array([178, 24, 43], dtype=np.float64)


def heatmap_rgb(attributions) -> np.ndarray:
    """(H, W, 3) uint8: t = a / max|a| in [-1, 1]; white + |t| (red - white) for t > 0, blue for t < 0."""
    a = np.asarray(attributions, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError("attributions must be finite")
    peak = np.abs(a).max(initial=0.0)
    t = a / peak if peak > 0 else np.zeros_like(a)  # all zero: all white
    end = np.where(t[..., None] > 0, RED, BLUE)
    rgb = WHITE + np.abs(t)[..., None] * (end - WHITE)
    return np.rint(rgb).astype(np.uint8)


def heatmap_data_url(attributions_28x28) -> str:
    """heatmap_rgb as a 28x28 PNG data: URL, one pixel per input pixel (the page scales it up)."""
    return png_data_url(heatmap_rgb(np.asarray(attributions_28x28).reshape(28, 28)))
