"""The elastic augmentation and stroke thickness (random_shift and random_affine: test_train.py)."""

import numpy as np
import pytest

from mnist_trainer.augment import (
    AUGMENTATIONS,
    _bilinear,
    elastic_field,
    gaussian_matrix,
    random_elastic,
    random_thickness,
)

NO_AFFINE = {"max_rotation": 0, "max_scale": 0, "max_shear": 0, "max_shift": 0}


def rings(n, seed=0):
    """Anti-aliased rings of random radius and stroke width near the centre: digit-like "0"s."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:28, 0:28]
    cy, cx = 13.5 + rng.uniform(-1, 1, (2, n, 1, 1))
    radius, width = rng.uniform(5, 8, (n, 1, 1)), rng.uniform(1.5, 3, (n, 1, 1))
    distance = np.abs(np.hypot(y - cy, x - cx) - radius)
    return np.clip(255 * (width / 2 + 0.5 - distance), 0, 255).astype(np.uint8)


def vertical_line(width, rows=slice(6, 22)):
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, rows, 13 : 13 + width] = 255
    return image


class FixedUniform:
    """An rng whose uniform() returns `value` everywhere: forces random_thickness's t."""

    def __init__(self, value):
        self.value = value

    def uniform(self, low, high, size):
        return np.full(size, self.value)


def ink(images):
    return images.astype(np.int64).sum(axis=(1, 2))


def centre_of_mass(images):
    weights = images.astype(np.float64)
    grid = np.arange(28)
    total = weights.sum(axis=(1, 2))
    return np.stack([weights.sum(axis=2) @ grid / total, weights.sum(axis=1) @ grid / total], axis=1)


# --- random_elastic ----------------------------------------------------------------------------

def test_elastic_keeps_shape_and_dtype_and_changes_the_images():
    images = rings(16)
    out = random_elastic(images, np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == np.uint8
    assert all(not np.array_equal(a, b) for a, b in zip(out, images))


def test_elastic_without_distortion_is_the_identity():
    images = rings(8)
    out = random_elastic(images, np.random.default_rng(0), alpha=0, **NO_AFFINE)
    np.testing.assert_array_equal(out, images)


def test_elastic_is_reproducible_from_the_seed():
    images = rings(8)
    first = random_elastic(images, np.random.default_rng(7))
    np.testing.assert_array_equal(first, random_elastic(images, np.random.default_rng(7)))
    assert not np.array_equal(first, random_elastic(images, np.random.default_rng(8)))


def test_elastic_field_has_simards_size():
    field = elastic_field(500, np.random.default_rng(0), alpha=34, sigma=4)
    assert field.shape == (2, 500, 28, 28) and field.dtype == np.float32
    rms = np.sqrt((field[:, :, 6:22, 6:22] ** 2).mean(axis=(1, 2, 3)))  # per component, away from the border
    assert ((1.2 < rms) & (rms < 1.6)).all()  # theory: 34 * sqrt(1/3) / (2 * 4 * sqrt(pi)) = 1.38 px
    assert abs(field.mean()) < 0.05
    half = elastic_field(500, np.random.default_rng(0), alpha=17, sigma=4)
    np.testing.assert_allclose(half, field / 2, atol=1e-5)


def test_elastic_field_is_smooth():
    dy = elastic_field(200, np.random.default_rng(0))[0]
    neighbour_step = np.abs(np.diff(dy, axis=2)).mean()
    assert neighbour_step < 0.25 * np.abs(dy).mean()  # neighbours move together: a warp, not noise


def test_gaussian_matrix_blurs_with_unit_weight():
    blur = gaussian_matrix(4.0)
    np.testing.assert_allclose(blur, blur.T)
    np.testing.assert_allclose((blur @ np.ones(28))[12:16], 1, atol=1e-3)  # a constant stays, away from the edge
    assert blur[14, 14] > blur[14, 18] > blur[14, 22] > 0


def test_elastic_roughly_keeps_ink_and_centre():
    images = rings(300)
    for out in (random_elastic(images, np.random.default_rng(0), **NO_AFFINE),
                random_elastic(images, np.random.default_rng(0))):
        ratio = ink(out) / ink(images)
        assert 0.9 < ratio.mean() < 1.1
        assert (ratio > 0.4).all() and (ratio < 2.5).all()
        moved = centre_of_mass(out) - centre_of_mass(images)
        assert np.abs(moved.mean(axis=0)).max() < 0.3  # no drift on average
        assert np.abs(moved).max() < 6


def test_elastic_shear_slants_a_vertical_line_horizontally():
    line = np.repeat(vertical_line(2), 20, axis=0)
    out = random_elastic(line, np.random.default_rng(0), alpha=0, **{**NO_AFFINE, "max_shear": 0.3})
    rows = np.flatnonzero(line[0].sum(axis=1))
    slopes = []
    for image in out:
        np.testing.assert_array_equal(np.flatnonzero(image.sum(axis=1)), rows)  # rows unchanged: horizontal
        column = image[rows] @ np.arange(28) / image[rows].sum(axis=1)  # the line's x in each row
        slope, offset = np.polyfit(rows, column, 1)
        np.testing.assert_allclose(column, slope * rows + offset, atol=0.1)  # a straight slanted line
        slopes.append(slope)
    assert np.abs(slopes).max() <= 0.3 and np.ptp(slopes) > 0.2  # within max_shear, varying per image


def pixel_grid(images, dx=0.0):
    """Sampling coordinates (y, x) of every pixel of `images`, shifted right by dx."""
    y, x = np.mgrid[0:28, 0:28].astype(np.float32)
    return np.stack([np.broadcast_to(y, images.shape), np.broadcast_to(x + dx, images.shape)])


def test_bilinear_gathers_from_each_images_own_pixels():
    images = rings(3, seed=1)
    np.testing.assert_array_equal(_bilinear(images, pixel_grid(images)), images)
    half = _bilinear(images, pixel_grid(images, dx=0.5)).astype(int)
    expected = (images[:, :, :-1].astype(int) + images[:, :, 1:]) / 2
    assert np.abs(half[:, :, :-1] - expected).max() <= 0.5
    np.testing.assert_array_equal(half[:, :, -1], np.rint(images[:, :, -1] / 2))  # beyond the edge reads as 0


def test_bilinear_reads_the_right_image_in_a_large_batch():
    images = np.repeat(rings(3, seed=2), 6_300, axis=0)  # 18,900 > 2**24 / 900: float32 indices would be off
    np.testing.assert_array_equal(_bilinear(images, pixel_grid(images)), images)


# --- random_thickness --------------------------------------------------------------------------

@pytest.mark.parametrize("width, t, expected", [(2, 1.0, 4), (4, 1.0, 6), (3, -1.0, 1), (5, -1.0, 3)])
def test_thickness_widens_or_narrows_a_line_by_a_pixel_per_side(width, t, expected):
    out = random_thickness(vertical_line(width), FixedUniform(t))[0]
    assert (out[14] == 255).sum() == expected and (out[14] > 0).sum() == expected


def test_thickness_is_fractional():
    out = random_thickness(vertical_line(2), FixedUniform(0.5))[0]
    np.testing.assert_array_equal(out[14, 11:17], [0, 128, 255, 255, 128, 0])
    np.testing.assert_array_equal(random_thickness(vertical_line(2), FixedUniform(0.0)), vertical_line(2))


def test_bolder_adds_ink_and_thinner_removes_it_pixel_by_pixel():
    images = rings(50)
    bolder = random_thickness(images, FixedUniform(0.7))
    thinner = random_thickness(images, FixedUniform(-0.7))
    assert bolder.dtype == thinner.dtype == np.uint8
    assert (bolder >= images).all() and (ink(bolder) > ink(images)).all()  # no wrap-around past 255
    assert (thinner <= images).all() and (ink(thinner) < ink(images)).all()


def test_random_thickness_goes_both_ways():
    images = rings(200)
    change = ink(random_thickness(images, np.random.default_rng(0))) - ink(images)
    assert (change > 0).sum() > 50 and (change < 0).sum() > 50


# --- the registered augmentation ---------------------------------------------------------------

def test_elastic_is_registered_beside_the_others():
    assert list(AUGMENTATIONS) == ["none", "shift", "affine", "elastic"]
    images = rings(32)
    out = AUGMENTATIONS["elastic"](images, np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, AUGMENTATIONS["elastic"](images, np.random.default_rng(0)))
    assert 0.7 < ink(out).sum() / ink(images).sum() < 1.4
