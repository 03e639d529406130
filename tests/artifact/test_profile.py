"""mnist_artifact.profile: the reference profile the trainer writes into a manifest (docs/artifact.md,
"profile") and the service scores live traffic against."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from mnist_artifact import ArtifactError
from mnist_artifact.profile import SHARE_FLOOR, SIGNALS, Profile, build_profile, psi, signal_values


def digits(n: int, seed: int = 0, ink: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """n images with a block of ink of random size and place on faint noise, and random probabilities:
    every signal varies from image to image."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 30, (n, 28, 28)).astype(np.float32)
    for image in pixels:
        height, width = rng.integers(4, 16, 2)
        top, left = rng.integers(0, 28 - height), rng.integers(0, 28 - width)
        image[top : top + height, left : left + width] = ink
    probabilities = rng.dirichlet(np.full(10, 0.3), n).astype(np.float32)
    return pixels.reshape(n, 784), probabilities


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, np.ndarray]:
    return digits(2000)


@pytest.fixture(scope="module")
def section(reference) -> dict:
    return json.loads(json.dumps(build_profile(*reference)))  # as a manifest holds it


def test_a_built_profile_round_trips_through_json_and_profile(reference, section):
    profile = Profile(section)
    assert profile.samples == 2000 and set(profile.shares) == set(SIGNALS)
    assert profile.bins()["predicted_class"] == 10 and profile.edges["predicted_class"] is None
    values = signal_values(*reference)
    bins = profile.bin_indices(values)
    for name in SIGNALS:
        if name != "predicted_class":
            edges = section["signals"][name]["edges"]
            assert edges == sorted(set(edges)) and 1 <= len(edges) <= 9, name
            assert profile.bins()[name] == len(edges) + 1
        # Binning the reference again reproduces its shares: the service bins live values the same way.
        shares = np.bincount(bins[name], minlength=profile.bins()[name]) / 2000
        np.testing.assert_allclose(profile.shares[name], shares, atol=1e-6, err_msg=name)
    assert section["signals"]["predicted_class"]["shares"] == pytest.approx(
        (np.bincount(reference[1].argmax(axis=1), minlength=10) / 2000).tolist(), abs=1e-6)


def test_numeric_edges_are_the_deciles_and_hold_a_tenth_each(section):
    # Continuous signals (confidence, offset) have ten distinct deciles: about a tenth of the images in each bin.
    for name in ("confidence", "offset"):
        assert len(section["signals"][name]["edges"]) == 9
        np.testing.assert_allclose(section["signals"][name]["shares"], 0.1, atol=0.002, err_msg=name)


def test_duplicate_deciles_are_merged():
    pixels, probabilities = digits(100)
    pixels[:95] = 0  # nearly all images blank: every decile of ink and intensity is 0
    section = build_profile(pixels, probabilities)
    for name in ("ink", "intensity", "offset"):
        # One edge, two bins; a value on an edge falls in the bin above it, so the first is empty.
        assert section["signals"][name] == {"edges": [0.0], "shares": [0.0, 1.0]}, name
    assert Profile(section).bins() == {"predicted_class": 10, "confidence": 10, "ink": 2, "intensity": 2, "offset": 2}


def _without_signal(s):
    del s["signals"]["offset"]


def _shares_not_adding_up(s):
    s["signals"]["confidence"]["shares"][0] += 0.1


def _unsorted_edges(s):
    edges = s["signals"]["ink"]["edges"]
    edges[0], edges[1] = edges[1], edges[0]


def _repeated_edge(s):
    s["signals"]["intensity"]["edges"][1] = s["signals"]["intensity"]["edges"][0]


def _nine_categories(s):
    s["signals"]["predicted_class"].update(categories=9, shares=[1 / 9] * 9)


def _categories_and_shares_disagree(s):
    s["signals"]["predicted_class"]["categories"] = 11


INVALID = {  # name: (break a valid section in place, words the error must contain)
    "missing_signal": (_without_signal, "signal 'offset' is missing"),
    "shares_not_adding_up_to_1": (_shares_not_adding_up, "confidence.shares"),
    "negative_share": (lambda s: s["signals"]["ink"]["shares"].__setitem__(0, -0.1), "ink.shares"),
    "unsorted_edges": (_unsorted_edges, "ink.edges"),
    "repeated_edge": (_repeated_edge, "intensity.edges"),
    "infinite_edge": (lambda s: s["signals"]["offset"]["edges"].append(math.inf), "offset.edges"),
    "edges_and_shares_disagree": (lambda s: s["signals"]["offset"]["edges"].pop(), "offset.edges"),
    "wrong_category_count": (_nine_categories, "10 categories"),
    "categories_and_shares_disagree": (_categories_and_shares_disagree, "10 categories"),
    "no_signals": (lambda s: s.pop("signals"), '"signals"'),
    "zero_samples": (lambda s: s.update(samples=0), '"samples"'),
    "samples_not_an_integer": (lambda s: s.update(samples=20.0), '"samples"'),
}


@pytest.mark.parametrize("breakage", sorted(INVALID))
def test_invalid_sections_are_refused_naming_where_and_what(section, breakage):
    broken = copy.deepcopy(section)
    spoil, words = INVALID[breakage]
    spoil(broken)
    with pytest.raises(ArtifactError, match=words) as error:
        Profile(broken, "v/manifest.json: profile")
    assert str(error.value).startswith("v/manifest.json: profile: ") and "\n" not in str(error.value)


@pytest.mark.parametrize("not_a_section", [None, [], "profile", {"samples": 3, "signals": []}])
def test_a_section_that_is_not_an_object_is_refused(not_a_section):
    with pytest.raises(ArtifactError, match="profile"):
        Profile(not_a_section)


def test_bin_indices_agree_with_digitize(section):
    profile = Profile(section)
    rng = np.random.default_rng(1)
    values = {name: rng.uniform(-1, 30, 500) for name in SIGNALS}
    for name in SIGNALS[1:]:  # numeric: the edges themselves included, each belongs to the bin above it
        values[name] = np.concatenate([values[name], profile.edges[name]])
    values["predicted_class"] = rng.integers(0, 10, 500)
    bins = profile.bin_indices(values)
    for name in SIGNALS[1:]:
        np.testing.assert_array_equal(bins[name], np.digitize(values[name], profile.edges[name]), err_msg=name)
    np.testing.assert_array_equal(bins["predicted_class"], values["predicted_class"])


def test_signals_of_hand_made_images():
    blank, full, corner = np.zeros(784, np.float32), np.full(784, 255, np.float32), np.zeros(784, np.float32)
    corner[27 * 28 + 27] = 255  # bottom right
    probabilities = np.array([[0.05] * 9 + [0.55], [0.1] * 10, [0.7, 0.3] + [0] * 8], np.float32)
    values = signal_values(np.stack([blank, full, corner]), probabilities)
    assert values["predicted_class"].tolist() == [9, 0, 0]
    np.testing.assert_allclose(values["confidence"], [0.55, 0.1, 0.7], rtol=1e-6)
    np.testing.assert_allclose(values["ink"], [0, 1, 1 / 784])
    np.testing.assert_allclose(values["intensity"], [0, 1, 1 / 784], rtol=1e-6)
    np.testing.assert_allclose(values["offset"], [0, 0, math.hypot(13.5, 13.5)], atol=1e-5)


def test_offset_is_the_distance_of_the_centre_of_mass():
    image = np.zeros((28, 28), np.float32)
    image[10, 20] = image[10, 22] = 200
    image[12, 21] = 100  # fainter: weighs half as much, and is not ink (< 128)
    centre = ((10 * 200 + 10 * 200 + 12 * 100) / 500, (20 * 200 + 22 * 200 + 21 * 100) / 500)  # (10.4, 21)
    values = signal_values(image.reshape(1, 784), np.full((1, 10), 0.1, np.float32))
    np.testing.assert_allclose(values["offset"], [math.dist(centre, (13.5, 13.5))], rtol=1e-6)
    assert values["ink"][0] == 2 / 784 and values["intensity"][0] == pytest.approx(500 / (784 * 255))


def test_psi_is_zero_for_the_reference_and_large_for_a_shift(reference, section):
    profile = Profile(section)
    rng = np.random.default_rng(2)
    for name, shares in profile.shares.items():
        assert psi(np.round(shares * 1e6), shares) == pytest.approx(0, abs=1e-9), name
        drawn = rng.multinomial(20000, shares / shares.sum())
        assert psi(drawn, shares) < 0.01, name
    # Other images of the same kind score low; fainter, bigger-bodied ink and a confident model score high.
    same = profile.bin_indices(signal_values(*digits(2000, seed=5)))
    pixels, _ = digits(2000, seed=6, ink=110)
    confident = np.tile(np.eye(10, dtype=np.float32)[[3]] * 0.98 + 0.002, (2000, 1))
    shifted = profile.bin_indices(signal_values(pixels, confident))
    for name in SIGNALS:
        bins = profile.bins()[name]
        assert psi(np.bincount(same[name], minlength=bins), profile.shares[name]) < 0.05, name
    for name in ("predicted_class", "confidence", "ink"):
        assert psi(np.bincount(shifted[name], minlength=profile.bins()[name]), profile.shares[name]) > 0.25, name


def test_psi_is_the_documented_sum_with_floored_shares():
    p, q = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    expected = 0.25 * math.log(2) + (-0.25) * math.log(0.5 / 0.75)
    assert psi(np.array([50, 50]), q) == pytest.approx(expected)
    assert psi(np.array([5, 5]), q) == psi(p * 1000, q)  # counts, not shares: only their proportions matter
    # An empty bin on either side counts as SHARE_FLOOR: large, but finite.
    floored = 2 * (0.5 - SHARE_FLOOR) * math.log(0.5 / SHARE_FLOOR) + (SHARE_FLOOR - 1) * math.log(SHARE_FLOOR)
    assert psi(np.array([1, 1, 0]), np.array([0, 0, 1.0])) == pytest.approx(floored, rel=1e-9)
