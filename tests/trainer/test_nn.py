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


def _randomise(net: Network, rng: np.random.Generator) -> None:
    """Biases, scales and shifts away from their initial 0s and 1s, so that every term is exercised."""
    for b in net.biases:
        b[...] = rng.normal(0, 0.1, b.shape)
    for norm in net.norms:
        norm.gamma[...] = rng.uniform(0.5, 1.5, norm.gamma.shape)
        norm.beta[...] = rng.normal(0, 0.1, norm.beta.shape)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_gradients_match_finite_differences_in_float64(dropout, batch_norm, smoothing):
    rng = np.random.default_rng(0)
    net = Network.initialise([7, 6, 5, 4], rng, dtype=np.float64, batch_norm=batch_norm)
    _randomise(net, rng)
    x = rng.normal(size=(9, 7))
    y = rng.integers(0, 4, 9)
    l2 = 0.1

    def loss():  # the same dropout mask on every call: a fresh generator with the same seed
        logits = net.forward(x, dropout, np.random.default_rng(1), training=True)
        return net.loss_and_backward(logits, y, l2, smoothing)

    loss()
    analytic = [g.copy() for g in net.grads]
    for p, g in zip(net.params, analytic):
        numeric = _numeric_gradient(loss, p)
        scale = max(np.abs(numeric).max(), np.abs(g).max())
        if scale < 1e-8:  # a hidden bias under batch norm: it cancels, and its gradient is exactly 0
            assert batch_norm and not g.any()
            continue
        assert np.abs(numeric - g).max() / scale < 1e-6


def test_label_smoothing_loss_is_cross_entropy_against_the_smoothed_labels():
    rng = np.random.default_rng(0)
    net = Network.initialise([5, 4], rng, dtype=np.float64)
    x, y = rng.normal(size=(6, 5)), rng.integers(0, 4, 6)
    logits = net.forward(x).copy()
    q = np.full((6, 4), 0.2 / 4) + 0.8 * np.eye(4)[y]
    expected = -(q * log_softmax(logits)).sum(axis=1).mean()
    assert net.loss_and_backward(logits, y, smoothing=0.2) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(net.grad_biases[0], (softmax(logits) - q).mean(axis=0), atol=1e-12)


def test_batch_norm_trains_on_batch_statistics_and_infers_with_running_ones():
    rng = np.random.default_rng(0)
    net = Network.initialise([6, 5, 3], rng, batch_norm=True)
    x = (rng.normal(size=(64, 6)) * 3 + 2).astype(np.float32)
    net.forward(x, training=True)
    norm = net.norms[0]
    z = x @ net.weights[0]
    np.testing.assert_allclose(norm.running_mean, 0.1 * z.mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(norm.running_var, 0.9 + 0.1 * z.var(axis=0, ddof=1), rtol=1e-4)
    for _ in range(200):  # the running averages converge to the statistics of this batch
        net.forward(x, training=True)
    np.testing.assert_allclose(norm.running_mean, z.mean(axis=0), rtol=1e-3, atol=1e-4)
    # At inference a row is normalised by the running statistics, alone or in a batch alike.
    np.testing.assert_allclose(net.logits(x[:1]), net.logits(x)[:1], rtol=1e-5, atol=1e-5)


def test_folding_batch_norm_keeps_the_inference_logits():
    rng = np.random.default_rng(0)
    net = Network.initialise([8, 7, 6, 3], rng, batch_norm=True)
    _randomise(net, rng)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    for _ in range(5):
        net.forward(x * rng.uniform(0.5, 2), training=True)  # running statistics unlike a fresh layer's
    folded = net.folded()
    assert folded.norms == [] and len(folded.weights) == 3
    np.testing.assert_allclose(folded.logits(x), net.logits(x), rtol=1e-5, atol=1e-5)


def test_chunked_logits_equal_one_forward_pass():
    rng = np.random.default_rng(0)
    net = Network.initialise([10, 8, 3], rng)
    x = rng.normal(size=(50, 10)).astype(np.float32)
    np.testing.assert_allclose(net.logits(x, chunk=50), net.logits(x, chunk=7), rtol=1e-5, atol=1e-6)
    assert net.logits(x).shape == (50, 3)
