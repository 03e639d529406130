import math

import numpy as np
import pytest

from mnist_trainer.optim import SGD, AdaGrad, Adam, ExponentialAverage, RMSprop, learning_rate, make_optimizer

TARGET = np.array([1.0, -2.0, 3.0])


def _quadratic_gradient(p):
    """Gradient of f(p) = 0.5 * ||p - TARGET||^2."""
    return p - TARGET


@pytest.mark.parametrize("nesterov, expected", [(False, 0.1), (True, 0.19)])
def test_sgd_first_step_matches_the_formula(nesterov, expected):
    p = np.zeros(3)
    SGD([p], momentum=0.9, nesterov=nesterov).step([_quadratic_gradient(p)], lr=0.1)
    # v = g; plain: p -= lr * v; Nesterov: p -= lr * (g + mu * v) = lr * 1.9 * g
    np.testing.assert_allclose(p, expected * TARGET)


def test_adam_first_step_is_lr_times_the_sign():
    p = np.zeros(3)
    Adam([p]).step([_quadratic_gradient(p)], lr=0.01)
    np.testing.assert_allclose(p, 0.01 * np.sign(TARGET), rtol=1e-6)


def test_rmsprop_steps_match_the_formula():
    p = np.zeros(3)
    opt = RMSprop([p], rho=0.9, eps=0.0)
    g1 = _quadratic_gradient(p)  # -TARGET
    opt.step([g1.copy()], lr=0.01)
    # v = 0.1 * g^2, so the first step is lr * g / (sqrt(0.1) |g|) = lr * sign / sqrt(0.1)
    np.testing.assert_allclose(p, 0.01 * np.sign(TARGET) / math.sqrt(0.1), rtol=1e-6)
    g2 = _quadratic_gradient(p)
    expected = p - 0.01 * g2 / np.sqrt(0.9 * 0.1 * g1**2 + 0.1 * g2**2)
    opt.step([g2.copy()], lr=0.01)
    np.testing.assert_allclose(p, expected, rtol=1e-6)


def test_adagrad_steps_match_the_formula():
    p = np.zeros(3)
    opt = AdaGrad([p], eps=0.0)
    g1 = _quadratic_gradient(p)
    opt.step([g1.copy()], lr=0.5)
    np.testing.assert_allclose(p, 0.5 * np.sign(TARGET), rtol=1e-6)  # G = g^2: a step of lr * sign
    g2 = _quadratic_gradient(p)
    expected = p - 0.5 * g2 / np.sqrt(g1**2 + g2**2)  # the sum of squares only grows
    opt.step([g2.copy()], lr=0.5)
    np.testing.assert_allclose(p, expected, rtol=1e-6)


@pytest.mark.parametrize("name, lr", [("sgd", 0.01), ("adam", 0.01), ("rmsprop", 0.01), ("adagrad", 0.5)])
def test_optimisers_converge_on_a_quadratic(name, lr):
    p = np.zeros(3)
    opt = make_optimizer(name, [p], momentum=0.9, nesterov=True, weight_decay=0.0)
    for step in range(2000):  # RMSprop's steps stay about lr long, so it settles as lr decays
        opt.step([_quadratic_gradient(p)], lr=lr / (1 + step / 100) if name == "rmsprop" else lr)
    np.testing.assert_allclose(p, TARGET, atol=1e-3)


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop", "adagrad"])
def test_decoupled_weight_decay_shrinks_weights_but_not_biases(name):
    w, b = np.ones((2, 2)), np.ones(2)
    opt = make_optimizer(name, [w, b], momentum=0.0, nesterov=False, weight_decay=0.5)
    opt.step([np.zeros_like(w), np.zeros_like(b)], lr=0.1)
    np.testing.assert_allclose(w, 0.95)
    np.testing.assert_array_equal(b, 1.0)


def test_unknown_optimizer_is_rejected():
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lbfgs", [np.zeros(1)], momentum=0, nesterov=False, weight_decay=0)


def test_warmup_then_cosine():
    kw = dict(base_lr=1.0, warmup_steps=10, schedule="cosine")
    assert learning_rate(0, 110, **kw) == pytest.approx(0.1)
    assert learning_rate(9, 110, **kw) == pytest.approx(1.0)
    assert learning_rate(10, 110, **kw) == pytest.approx(1.0)
    assert learning_rate(60, 110, **kw) == pytest.approx(0.5)
    assert learning_rate(110, 110, **kw) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(60, 110, **kw, min_lr_ratio=0.1) == pytest.approx(0.55)


def test_step_and_constant_schedules():
    assert learning_rate(0, 100, base_lr=1.0, warmup_steps=0, schedule="step", step_every=30) == 1.0
    assert learning_rate(30, 100, base_lr=1.0, warmup_steps=0, schedule="step", step_every=30) == pytest.approx(0.1)
    assert learning_rate(95, 100, base_lr=1.0, warmup_steps=0, schedule="step", step_every=30,
                         step_gamma=0.5) == pytest.approx(0.125)
    assert learning_rate(57, 100, base_lr=0.3, warmup_steps=0, schedule="constant") == 0.3
    with pytest.raises(ValueError):
        learning_rate(0, 1, base_lr=1.0, warmup_steps=0, schedule="linear")
    assert math.isfinite(learning_rate(5, 0, base_lr=1.0, warmup_steps=0, schedule="cosine"))


def test_exponential_average_follows_its_formula():
    p = np.zeros(2)
    average = ExponentialAverage([p], decay=0.99, every=2)
    expected = np.zeros(2)
    for step in range(1, 201):
        p[...] = step  # the parameter moves; the average trails it
        average.step()
        if step % 2 == 0:
            n = step // 2
            d = min(0.99**2, (1 + n) / (10 + n))
            expected = d * expected + (1 - d) * p
    np.testing.assert_allclose(average.average[0], expected)
    assert 150 < average.average[0][0] < 200
