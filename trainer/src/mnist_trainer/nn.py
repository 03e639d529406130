"""The network: a ReLU multilayer perceptron, its loss and its gradients, in plain NumPy.

Notation (per layer l = 1..L, batch of B rows):
    a_0 = x
    z_l = a_{l-1} @ W_l + b_l
    a_l = relu(z_l) * mask_l / keep      (inverted dropout, training only, hidden layers)
    logits = z_L
    loss = mean_i( logsumexp(z_L[i]) - z_L[i, y_i] ) + (l2 / 2) * sum_l ||W_l||^2

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


class Network:
    """Parameters and the forward/backward pass of an MLP with ReLU hidden layers."""

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray]):
        self.weights = weights
        self.biases = biases
        self.sizes = [weights[0].shape[0]] + [w.shape[1] for w in weights]
        self.dtype = weights[0].dtype
        self.grad_weights = [np.zeros_like(w) for w in weights]
        self.grad_biases = [np.zeros_like(b) for b in biases]
        self._capacity = 0

    @classmethod
    def initialise(cls, sizes: list[int], rng: np.random.Generator, dtype=np.float32):
        return cls(*he_init(sizes, rng, dtype))

    @property
    def params(self) -> list[np.ndarray]:
        return [p for pair in zip(self.weights, self.biases) for p in pair]

    @property
    def grads(self) -> list[np.ndarray]:
        return [g for pair in zip(self.grad_weights, self.grad_biases) for g in pair]

    def _reserve(self, batch: int) -> None:
        """Allocate activation, mask and gradient buffers for batches of up to `batch` rows."""
        if batch <= self._capacity:
            return
        self._z = [np.empty((batch, n), self.dtype) for n in self.sizes[1:]]
        self._mask = [np.empty((batch, n), self.dtype) for n in self.sizes[1:-1]]
        self._dz = [np.empty((batch, n), self.dtype) for n in self.sizes[1:]]
        self._capacity = batch

    # -- forward ---------------------------------------------------------------------------

    def forward(self, x: np.ndarray, dropout: float = 0.0, rng: np.random.Generator | None = None):
        """Logits for a batch. With dropout > 0 (training), hidden units are dropped and rescaled.

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

    # -- loss and backward ----------------------------------------------------------------

    def loss_and_backward(self, logits: np.ndarray, labels: np.ndarray, l2: float = 0.0) -> float:
        """Softmax cross-entropy of the last forward pass; fills self.grads. Returns the loss."""
        batch = len(labels)
        rows = np.arange(batch)
        dz = self._dz[-1][:batch]
        # loss_i = logsumexp(z_i) - z_i[y_i], with the row max subtracted so exp cannot overflow;
        # d loss / d logits = (softmax(z) - onehot(y)) / B.
        np.subtract(logits, logits.max(axis=1, keepdims=True), out=dz)
        target = dz[rows, labels].astype(np.float64)
        np.exp(dz, out=dz)
        sums = dz.sum(axis=1, keepdims=True)
        loss = float((np.log(sums[:, 0], dtype=np.float64) - target).mean())
        dz /= sums
        dz[rows, labels] -= 1.0
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

    # -- inference ------------------------------------------------------------------------

    def logits(self, x: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """Logits for any number of rows, evaluated in chunks to bound memory."""
        out = np.empty((len(x), self.sizes[-1]), self.dtype)
        for start in range(0, len(x), chunk):
            out[start : start + chunk] = self.forward(x[start : start + chunk])
        return out
