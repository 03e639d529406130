import numpy as np
import pytest

from mnist_trainer.nn import Network, cross_entropy, log_softmax, softmax


def test_softmax_and_cross_entropy_are_stable_for_huge_logits():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], np.float32)
    p = softmax(logits)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(p[1], [1 / 3] * 3, rtol=1e-6)
    assert cross_entropy(logits, np.array([0, 1, 0])) == pytest.approx((0 + np.log(3) + np.log(2)) / 3, rel=1e-5)
    # The true class 2e4 below the best: a huge but finite loss, not inf or nan.
    expected = (2e4 + np.log(3) + 2e4 + np.log(2)) / 3
    assert cross_entropy(logits, np.array([1, 0, 2])) == pytest.approx(expected, rel=1e-6)
    assert np.isfinite(log_softmax(logits)).all()


def test_backward_is_finite_for_huge_logits():
    net = Network([np.eye(3, dtype=np.float32) * 1e4], [np.zeros(3, np.float32)])
    x = np.array([[1, -1, 0], [0, 0, 1]], np.float32)
    loss = net.loss_and_backward(net.forward(x), np.array([1, 2]))
    assert np.isfinite(loss) and loss > 1e3
    assert all(np.isfinite(g).all() for g in net.grads)


def _numeric_gradient(f, p, eps=1e-6):
    grad = np.zeros_like(p)
    for i in np.ndindex(p.shape):
        old = p[i]
        p[i] = old + eps
        up = f()
        p[i] = old - eps
        down = f()
        p[i] = old
        grad[i] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_gradients_match_finite_differences_in_float64(dropout):
    rng = np.random.default_rng(0)
    net = Network.initialise([7, 6, 5, 4], rng, dtype=np.float64)
    for b in net.biases:
        b[...] = rng.normal(0, 0.1, b.shape)
    x = rng.normal(size=(9, 7))
    y = rng.integers(0, 4, 9)
    l2 = 0.1

    def loss():  # the same dropout mask on every call: a fresh generator with the same seed
        return net.loss_and_backward(net.forward(x, dropout, np.random.default_rng(1)), y, l2)

    loss()
    analytic = [g.copy() for g in net.grads]
    for p, g in zip(net.params, analytic):
        numeric = _numeric_gradient(loss, p)
        rel = np.abs(numeric - g).max() / max(np.abs(numeric).max(), np.abs(g).max(), 1e-12)
        assert rel < 1e-6, rel


def test_chunked_logits_equal_one_forward_pass():
    rng = np.random.default_rng(0)
    net = Network.initialise([10, 8, 3], rng)
    x = rng.normal(size=(50, 10)).astype(np.float32)
    np.testing.assert_allclose(net.logits(x, chunk=50), net.logits(x, chunk=7), rtol=1e-5, atol=1e-6)
    assert net.logits(x).shape == (50, 3)
