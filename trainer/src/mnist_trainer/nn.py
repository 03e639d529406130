"""The network: a ReLU multilayer perceptron, its loss and its gradients, in plain NumPy.

Notation (per layer l = 1..L, batch of B rows):
    a_0 = x
    z_l = a_{l-1} @ W_l + b_l
    y_l = gamma_l * (z_l - mu_l) / sqrt(var_l + eps) + beta_l   (batch norm, hidden layers, optional:
          mu, var of the batch in training, their running averages at inference; else y_l = z_l)
    a_l = relu(y_l) * mask_l / keep      (inverted dropout, training only, hidden layers)
    logits = z_L
    q_i = (1 - s) * onehot(y_i) + s / K  (label smoothing s over K classes; s = 0: the labels)
    loss = mean_i( logsumexp(z_L[i]) - q_i . z_L[i] ) + (l2 / 2) * sum_l ||W_l||^2

Batch norm is for training only: `folded()` turns the network into plain affine + ReLU layers with
the same inference logits (Ioffe & Szegedy 2015), which is what gets published.

Every buffer is allocated once for the largest batch and reused: the training loop does no
allocation per step beyond what NumPy does internally.
"""

from __future__ import annotations

import numpy as np


def he_init(sizes: list[int], rng: np.random.Generator, dtype=np.float32):
    """He et al. (2015) normal initialisation for ReLU layers; biases start at zero."""
    weights = [
        (rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(dtype)
        for n_in, n_out in zip(sizes[:-1], sizes[1:])
    ]
    biases = [np.zeros(n_out, dtype=dtype) for n_out in sizes[1:]]
    return weights, biases


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis (log-sum-exp with the max subtracted)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels; finite for any finite logits."""
    logp = log_softmax(logits)
    return float(-logp[np.arange(len(labels)), labels].mean(dtype=np.float64))


BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # running average: r = m * r + (1 - m) * batch statistic


class BatchNorm:
    """Scale, shift and running statistics of one hidden layer's batch normalisation."""

    def __init__(self, n: int, dtype):
        self.momentum = BN_MOMENTUM
        self.gamma, self.beta = np.ones(n, dtype), np.zeros(n, dtype)
        self.grad_gamma, self.grad_beta = np.zeros(n, dtype), np.zeros(n, dtype)
        self.running_mean, self.running_var = np.zeros(n, dtype), np.ones(n, dtype)

    def scale(self) -> np.ndarray:
        """gamma / sqrt(var + eps) with the running variance: the inference-time multiplier."""
        return self.gamma / np.sqrt(self.running_var + BN_EPS)


class Network:
    """Parameters and the forward/backward pass of an MLP with ReLU hidden layers."""

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray], batch_norm: bool = False):
        self.weights = weights
        self.biases = biases
        self.sizes = [weights[0].shape[0]] + [w.shape[1] for w in weights]
        self.dtype = weights[0].dtype
        self.grad_weights = [np.zeros_like(w) for w in weights]
        self.grad_biases = [np.zeros_like(b) for b in biases]
        self.norms = [BatchNorm(n, self.dtype) for n in self.sizes[1:-1]] if batch_norm else []
        self._capacity = 0

    @classmethod
    def initialise(cls, sizes: list[int], rng: np.random.Generator, dtype=np.float32, batch_norm: bool = False):
        return cls(*he_init(sizes, rng, dtype), batch_norm=batch_norm)

    @property
    def params(self) -> list[np.ndarray]:
        pairs = [*zip(self.weights, self.biases), *((n.gamma, n.beta) for n in self.norms)]
        return [p for pair in pairs for p in pair]

    @property
    def grads(self) -> list[np.ndarray]:
        pairs = [*zip(self.grad_weights, self.grad_biases), *((n.grad_gamma, n.grad_beta) for n in self.norms)]
        return [g for pair in pairs for g in pair]

    @property
    def state(self) -> list[np.ndarray]:
        """Everything inference depends on: the parameters and the running statistics."""
        return self.params + [r for n in self.norms for r in (n.running_mean, n.running_var)]

    def folded(self) -> Network:
        """The same inference function as plain affine layers: batch norm folded into W and b,
        W' = W * gamma / sqrt(var + eps), b' = (b - mean) * gamma / sqrt(var + eps) + beta."""
        weights, biases = [w.copy() for w in self.weights], [b.copy() for b in self.biases]
        for l, norm in enumerate(self.norms):
            scale = norm.scale()
            weights[l] *= scale
            biases[l] = (biases[l] - norm.running_mean) * scale + norm.beta
        return Network(weights, biases)

    def _reserve(self, batch: int) -> None:
        """Allocate activation, mask and gradient buffers for batches of up to `batch` rows."""
        if batch <= self._capacity:
            return
        self._z = [np.empty((batch, n), self.dtype) for n in self.sizes[1:]]
        self._x_hat = [np.empty((batch, n.gamma.size), self.dtype) for n in self.norms]
        self._inv_std = [np.empty(n.gamma.size, self.dtype) for n in self.norms]
        self._mask = [np.empty((batch, n), self.dtype) for n in self.sizes[1:-1]]
        self._dz = [np.empty((batch, n), self.dtype) for n in self.sizes[1:]]
        self._capacity = batch

    # -- forward ---------------------------------------------------------------------------

    def forward(self, x: np.ndarray, dropout: float = 0.0, rng: np.random.Generator | None = None,
                training: bool = False):
        """Logits for a batch. In training, batch norm uses the batch's statistics (and updates the
        running ones); with dropout > 0, hidden units are dropped and rescaled.

        Returns a view into an internal buffer: copy it if it must outlive the next call.
        """
        batch = len(x)
        self._reserve(batch)
        self._x = x
        self._dropout = dropout
        a = x
        last = len(self.weights) - 1
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = self._z[l][:batch]
            np.matmul(a, w, out=z)
            z += b
            if l < last:
                if self.norms:
                    self._normalise(l, z, training)
                np.maximum(z, 0, out=z)  # relu in place: z now holds a_l
                if dropout > 0:
                    keep = 1.0 - dropout
                    mask = self._mask[l][:batch]
                    rng.random(out=mask, dtype=self.dtype)
                    np.less(mask, keep, out=mask)  # 1.0 keep, 0.0 drop
                    mask *= 1.0 / keep
                    z *= mask
            a = z
        return a

    def _normalise(self, l: int, z: np.ndarray, training: bool) -> None:
        """z <- gamma * (z - mean) / sqrt(var + eps) + beta, in place; keeps x_hat for backward."""
        norm = self.norms[l]
        if training:
            mean, var = z.mean(axis=0), z.var(axis=0)
            m = norm.momentum
            norm.running_mean *= m
            norm.running_mean += (1 - m) * mean
            norm.running_var *= m
            norm.running_var += (1 - m) * var * len(z) / max(len(z) - 1, 1)  # unbiased, as PyTorch
            inv_std = self._inv_std[l]
            np.divide(1.0, np.sqrt(var + BN_EPS), out=inv_std)
            z -= mean
            z *= inv_std
            self._x_hat[l][: len(z)] = z
            z *= norm.gamma
            z += norm.beta
        else:  # the folded form, so that folded() and this agree to rounding
            scale = norm.scale()
            z *= scale
            z += norm.beta - norm.running_mean * scale

    def recompute_statistics(self, x: np.ndarray, chunk: int = 1000) -> None:
        """Running statistics set to the average of the batch statistics over x, in chunks: for
        weights that were averaged after training (their activations are not the ones the running
        averages followed)."""
        for k, start in enumerate(range(0, len(x), chunk), start=1):
            for norm in self.norms:
                norm.momentum = 1 - 1 / k  # a cumulative mean: the k-th chunk weighs 1/k
            self.forward(x[start : start + chunk], training=True)
        for norm in self.norms:
            norm.momentum = BN_MOMENTUM

    # -- loss and backward ----------------------------------------------------------------

    def loss_and_backward(self, logits: np.ndarray, labels: np.ndarray, l2: float = 0.0,
                          smoothing: float = 0.0) -> float:
        """Softmax cross-entropy of the last forward pass against labels smoothed by `smoothing`;
        fills self.grads. Returns the loss."""
        batch, classes = logits.shape
        rows = np.arange(batch)
        dz = self._dz[-1][:batch]
        # loss_i = logsumexp(z_i) - q_i . z_i, with the row max subtracted so exp cannot overflow;
        # d loss / d logits = (softmax(z) - q) / B.
        np.subtract(logits, logits.max(axis=1, keepdims=True), out=dz)
        target = (1 - smoothing) * dz[rows, labels].astype(np.float64)
        if smoothing:
            target += smoothing / classes * dz.sum(axis=1, dtype=np.float64)
        np.exp(dz, out=dz)
        sums = dz.sum(axis=1, keepdims=True)
        loss = float((np.log(sums[:, 0], dtype=np.float64) - target).mean())
        dz /= sums
        if smoothing:
            dz -= smoothing / classes
        dz[rows, labels] -= 1.0 - smoothing
        dz *= 1.0 / batch
        if l2 > 0:
            loss += 0.5 * l2 * sum(float(np.vdot(w, w)) for w in self.weights)
        self._backward(l2)
        return loss

    def _backward(self, l2: float) -> None:
        batch = len(self._x)
        for l in range(len(self.weights) - 1, -1, -1):
            dz = self._dz[l][:batch]
            a_prev = self._x if l == 0 else self._z[l - 1][:batch]
            np.matmul(a_prev.T, dz, out=self.grad_weights[l])
            np.sum(dz, axis=0, out=self.grad_biases[l])
            if self.norms and l < len(self.norms):
                self.grad_biases[l][...] = 0  # see _normalise_backward: keeps b_l at 0, not at rounding noise
            if l2 > 0:
                self.grad_weights[l] += l2 * self.weights[l]
            if l == 0:
                break
            # Back through layer l-1's dropout and ReLU. a_prev already carries the dropout
            # scaling, so a_prev > 0 is exactly where the unit was active and kept.
            da = self._dz[l - 1][:batch]
            np.matmul(dz, self.weights[l].T, out=da)
            if self._dropout > 0:
                da *= self._mask[l - 1][:batch]
            da *= a_prev > 0
            if self.norms:
                self._normalise_backward(l - 1, da)

    def _normalise_backward(self, l: int, dy: np.ndarray) -> None:
        """dy (d loss / d y_l) <- d loss / d z_l, in place; fills gamma's and beta's gradients.
        dz = gamma / std * (dy - mean(dy) - x_hat * mean(dy * x_hat)). z's mean is subtracted, so
        b_l has no effect in training: its gradient is exactly 0."""
        norm, x_hat, batch = self.norms[l], self._x_hat[l][: len(dy)], len(dy)
        np.sum(dy, axis=0, out=norm.grad_beta)
        np.einsum("ij,ij->j", dy, x_hat, out=norm.grad_gamma)
        dy -= norm.grad_beta / batch
        dy -= x_hat * (norm.grad_gamma / batch)
        dy *= norm.gamma * self._inv_std[l]

    # -- inference ------------------------------------------------------------------------

    def logits(self, x: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """Logits for any number of rows, evaluated in chunks to bound memory."""
        out = np.empty((len(x), self.sizes[-1]), self.dtype)
        for start in range(0, len(x), chunk):
            out[start : start + chunk] = self.forward(x[start : start + chunk])
        return out
