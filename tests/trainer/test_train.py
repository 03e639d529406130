import numpy as np
import pytest
from trainer_helpers import learnable_digits

from mnist_trainer import MLP
from mnist_trainer.augment import random_affine, random_shift
from mnist_trainer.nn import Network
from mnist_trainer.train import Interrupted, TrainConfig, fit, to_input

SMALL = TrainConfig(hidden=(32,), epochs=3, batch_size=32, lr=0.05)


def test_fit_learns_a_learnable_task():
    x, y = learnable_digits(600)
    xv, yv = learnable_digits(200, seed=1)
    model = MLP(config=SMALL).fit(x, y, validation=(xv, yv))
    assert model.evaluate(xv, yv)["accuracy"] > 0.95
    assert model.predict_proba(xv).shape == (200, 10)
    np.testing.assert_allclose(model.predict_proba(xv).sum(axis=1), 1, rtol=1e-5)
    assert (model.predict(xv) == model.predict_proba(xv).argmax(axis=1)).all()


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.05), ("adam", 1e-3), ("rmsprop", 1e-3), ("adagrad", 0.02)])
def test_every_optimiser_learns_the_task(optimizer, lr):
    x, y = learnable_digits(600)
    xv, yv = learnable_digits(200, seed=1)
    model = MLP(config=SMALL.replace(optimizer=optimizer, lr=lr)).fit(x, y)
    assert model.evaluate(xv, yv)["accuracy"] > 0.95, optimizer


def test_batch_norm_ema_and_label_smoothing_train_and_publish_plain_layers(tmp_path):
    x, y = learnable_digits(600)
    xv, yv = learnable_digits(200, seed=1)
    config = SMALL.replace(hidden=(32, 16), batch_norm=True, ema=0.99, label_smoothing=0.1, epochs=4)
    model = MLP(config=config).fit(x, y, validation=(xv, yv))
    assert model.network.norms and model.evaluate(xv, yv)["accuracy"] > 0.95
    arrays = model.arrays()
    assert sorted(arrays) == ["W1", "W2", "W3", "b1", "b2", "b3"]
    plain = Network([arrays["W1"], arrays["W2"], arrays["W3"]], [arrays["b1"], arrays["b2"], arrays["b3"]])
    xt = to_input(xv)
    np.testing.assert_allclose(plain.logits(xt), model.network.logits(xt), rtol=1e-5, atol=1e-5)


def test_ema_publishes_the_average_not_the_last_weights():
    x, y = learnable_digits(300)
    raw = fit(x, y, SMALL.replace(schedule="constant"))
    averaged = fit(x, y, SMALL.replace(schedule="constant", ema=0.9))
    # Same seed, same steps: the averaged weights trail the raw ones, close but not equal.
    assert not np.array_equal(raw.network.weights[0], averaged.network.weights[0])
    np.testing.assert_allclose(raw.network.weights[0], averaged.network.weights[0], atol=0.1)


@pytest.mark.parametrize("config", [SMALL, SMALL.replace(optimizer="adam", lr=1e-3, dropout=0.2,
                                                         augment="affine", weight_decay=1e-2, l2=1e-4),
                                    SMALL.replace(batch_norm=True, ema=0.99, label_smoothing=0.1)])
def test_same_seed_gives_identical_weights(config):
    x, y = learnable_digits(300)
    a = MLP(config=config).fit(x, y).arrays()
    b = MLP(config=config).fit(x, y).arrays()
    c = MLP(config=config.replace(seed=1)).fit(x, y).arrays()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["W1"], c["W1"])


def test_best_epoch_is_kept_and_early_stopping_stops():
    x, y = learnable_digits(300)
    noise_x, noise_y = learnable_digits(100, seed=2)
    noise_y = np.random.default_rng(3).integers(0, 10, 100)  # validation labels unrelated to images
    config = SMALL.replace(epochs=30, patience=2, schedule="constant")
    result = fit(x, y, config, validation=(noise_x, noise_y))
    scores = [(r["val_accuracy"], -r["val_loss"]) for r in result.history]
    assert result.best_epoch == 1 + scores.index(max(scores))
    assert len(result.history) < 30
    assert len(result.history) - result.best_epoch == 2  # stopped exactly `patience` epochs later
    # The returned network is the best epoch's, not the last one's.
    val_acc = (result.network.logits(to_input(noise_x)).argmax(axis=1) == noise_y).mean()
    assert val_acc == pytest.approx(result.history[result.best_epoch - 1]["val_accuracy"])


def test_should_stop_interrupts_at_a_batch_boundary():
    x, y = learnable_digits(300)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 5

    with pytest.raises(Interrupted, match="epoch 1, batch 5"):
        fit(x, y, SMALL, should_stop=stop)


def test_batch_larger_than_data_is_a_clear_error():
    x, y = learnable_digits(10)
    with pytest.raises(ValueError, match="batch size"):
        fit(x, y, SMALL)


def test_to_input_normalises_like_the_manifest_says():
    pixels = np.array([[0, 255, 128]], np.uint8)
    np.testing.assert_allclose(to_input(pixels), ((pixels / 255) - 0.1307) / 0.3081, rtol=1e-6)
    assert to_input(pixels).dtype == np.float32


def test_random_shift_moves_ink_without_losing_it():
    images = np.zeros((50, 28, 28), np.uint8)
    images[:, 10:18, 10:18] = np.arange(64, dtype=np.uint8).reshape(8, 8) + 1
    shifted = random_shift(images, np.random.default_rng(0), max_shift=2)
    assert (shifted.sum(axis=(1, 2)) == images.sum(axis=(1, 2))).all()
    for img, out in zip(images, shifted):
        ys, xs = np.nonzero(out)
        dy, dx = ys.min() - 10, xs.min() - 10
        assert abs(dy) <= 2 and abs(dx) <= 2
        np.testing.assert_array_equal(np.roll(img, (dy, dx), axis=(0, 1)), out)
    assert len({tuple(np.argwhere(s)[0]) for s in shifted}) > 5  # shifts really vary


def test_affine_with_no_distortion_is_the_identity_and_keeps_shape():
    images = learnable_digits(8)[0]
    same = random_affine(images, np.random.default_rng(0), max_rotation=0, max_scale=0, max_shear=0, max_shift=0)
    np.testing.assert_array_equal(same, images)
    warped = random_affine(images, np.random.default_rng(0))
    assert warped.shape == images.shape and warped.dtype == np.uint8
    assert not np.array_equal(warped, images)


def test_describe_names_the_recipe():
    text = TrainConfig(hidden=(1024, 1024), batch_norm=True, augment="elastic", ema=0.999).describe()
    assert text.startswith("784-1024-1024-10, sgd lr 0.05, batch 128, 10 epochs")
    assert "batch norm" in text and "elastic augmentation" in text and "EMA 0.999" in text
    assert "dropout" not in TrainConfig().describe()
