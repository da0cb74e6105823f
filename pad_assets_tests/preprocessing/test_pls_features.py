"""PLS features: the vectorised pipeline equals the per-pixel original, card and region level."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from pad_assets.errors import InvalidInputError
from pad_assets.keys import chain_key
from pad_assets.preprocessing import PADPLSPipeline
from pad_assets.preprocessing.pls import (
    PLS_FEATURE_NAMES,
    PLS_REGION_BOXES,
    cos_weight_grid,
    pls_features,
    pls_features_from_rgb,
    region_rgb_means,
)
from pad_assets_tests.pls_reference import (
    card_rgb,
    cosCorrectFactor,
    png_bytes,
    reference_features,
    reference_region_rgb,
    synthetic_card,
)

CARD_SHAPES = ((27, 29), (28, 29))  # the two region shapes of the PAD layout


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)


# ---------------------------------------------------------------- card level parity


@pytest.mark.parametrize("index", range(50))
def test_card_features_equal_reference(index: int) -> None:
    rgb = card_rgb(index)
    expected = reference_features(_bgr(rgb))
    got = pls_features_from_rgb(rgb)
    assert got.dtype == np.int64 and got.shape == (360,)
    np.testing.assert_array_equal(got, expected)


def _uniform_card(rgb_colour: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb_colour, np.uint8), (1220, 730, 3)).copy()


EDGE_CARDS = {
    "all_dark": _uniform_card((0, 0, 0)),
    "near_black": _uniform_card((30, 20, 25)),
    "all_white": _uniform_card((255, 255, 255)),
    "all_saturated": _uniform_card((255, 0, 0)),
    "uniform_colour": _uniform_card((120, 200, 40)),
    "grey": _uniform_card((128, 128, 128)),
}


@pytest.mark.parametrize("name", sorted(EDGE_CARDS))
def test_edge_cards_equal_reference(name: str) -> None:
    rgb = EDGE_CARDS[name]
    expected = reference_features(_bgr(rgb))
    got = pls_features_from_rgb(rgb)
    np.testing.assert_array_equal(got, expected)
    if name == "all_dark":
        assert not got.any()  # everything dropped -> every feature 0
    if name in ("uniform_colour", "all_white", "all_saturated"):
        # one colour everywhere: the mean of the kept pixels is that colour
        np.testing.assert_array_equal(got.reshape(-1, 3), np.tile(rgb[0, 0], (120, 1)))


def test_bgr_entry_point_and_pipeline_agree() -> None:
    rgb = synthetic_card(7)
    from_bgr = pls_features(_bgr(rgb))
    np.testing.assert_array_equal(from_bgr, pls_features_from_rgb(rgb))
    features, truncated = PADPLSPipeline().run(png_bytes(rgb), "card-7")
    assert truncated is False
    np.testing.assert_array_equal(features, from_bgr)


def test_truncated_card_features_equal_reference() -> None:
    from PIL import Image, ImageFile

    rgb = synthetic_card(3)
    data = png_bytes(rgb)
    cut = data[: int(len(data) * 0.6)]
    features, truncated = PADPLSPipeline().run(cut, "cut")
    assert truncated is True
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        import io

        decoded = np.asarray(Image.open(io.BytesIO(cut)).convert("RGB"))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    np.testing.assert_array_equal(features, reference_features(_bgr(decoded)))


# --------------------------------------------------------------- region level parity


def _regions_from_sv(s: np.ndarray, v: np.ndarray, seed: int = 0) -> tuple[np.ndarray, ...]:
    """HSV and BGR stacks with the given S and V planes and random (unrelated) colours.

    The pixel filter only reads S and V, so decoupling them from B, G, R exercises it harder
    than real pixels would (any set of pixels can then carry any colour).
    """
    s = np.asarray(s, np.uint8)
    v = np.asarray(v, np.uint8)
    hsv = np.stack([np.zeros_like(s), s, v], axis=-1)
    bgr = np.random.default_rng(seed).integers(0, 256, hsv.shape, dtype=np.uint8)
    return hsv, bgr


def _assert_regions_match(hsv: np.ndarray, bgr: np.ndarray) -> np.ndarray:
    got = region_rgb_means(hsv, bgr)
    expected = np.array(
        [reference_region_rgb(h, b) for h, b in zip(hsv, bgr, strict=True)],
        dtype=np.int64,
    ).reshape(len(hsv), 3)
    np.testing.assert_array_equal(got, expected)
    return got


@pytest.mark.parametrize("shape", CARD_SHAPES + ((28, 28), (1, 1), (1, 7), (5, 4)))
def test_region_edge_cases(shape: tuple[int, int]) -> None:
    h, w = shape
    zeros = np.zeros((h, w), np.uint8)
    full = np.full((h, w), 255, np.uint8)
    cases = {}
    cases["all_dark"] = (zeros, zeros)
    cases["all_saturated"] = (full, full)
    cases["white_only"] = (zeros, full)  # kept by V alone
    single = zeros.copy()
    single[h // 2, w // 2] = 255
    cases["single_bright_pixel"] = (single, single)
    corner = zeros.copy()
    corner[0, 0] = 255  # weight ~6e-17 at the border: dropped
    cases["single_bright_border_pixel"] = (corner, corner)
    ties = np.full((h, w), 10, np.uint8)
    ties[h // 4 : h - h // 4, w // 4 : w - w // 4] = 200  # equal S over the centre
    cases["ties_at_centre"] = (ties, full)
    white_first = zeros.copy()
    white_first_v = full.copy()
    white_first[(2 * h) // 3 :, :] = 180  # saturated rows only after bright white ones
    cases["white_before_saturated"] = (white_first, white_first_v)
    stairs = np.broadcast_to(np.arange(w, dtype=np.uint8) * 8 + 20, (h, w)).copy()
    cases["increasing_saturation"] = (stairs, full)
    threshold = np.full((h, w), 36, np.uint8)
    cases["just_above_threshold"] = (threshold, np.full((h, w), 71, np.uint8))
    for k, (name, (s, v)) in enumerate(cases.items()):
        hsv, bgr = _regions_from_sv(s[None], v[None], seed=k)
        got = _assert_regions_match(hsv, bgr)
        if name in ("all_dark", "single_bright_border_pixel"):
            assert not got.any(), name


def test_every_kept_pixel_is_averaged_and_the_threshold_is_exact() -> None:
    # The mean is over *every* kept pixel, not only the most saturated ones: a region with
    # one strongly saturated pixel and one weakly saturated pixel averages both. Only a
    # weight of exactly 1 (the centre of an even x even region) can put cS exactly on the
    # threshold; cS == 35 and cV == 70 is dropped (``<=``), one more is kept.
    h = w = 28
    centre = (h // 2, w // 2)
    assert cos_weight_grid(h, w)[centre] == 1.0
    s = np.zeros((h, w), np.uint8)
    v = np.zeros((h, w), np.uint8)
    s[10, 10], v[10, 10] = 250, 250  # strongly saturated: kept
    s[12, 16], v[12, 16] = 120, 90  # weakly saturated: kept as well
    s[centre], v[centre] = 35, 70  # exactly on the threshold: dropped
    hsv, bgr = _regions_from_sv(s[None], v[None], seed=5)
    got = _assert_regions_match(hsv, bgr)
    pair = bgr[0, [10, 12], [10, 16]].astype(float).mean(axis=0)
    np.testing.assert_array_equal(got[0], np.floor(pair[::-1] + 0.5).astype(np.int64))
    s[centre] = 36  # one above: kept, now three pixels
    hsv, bgr = _regions_from_sv(s[None], v[None], seed=5)
    got = _assert_regions_match(hsv, bgr)
    three = bgr[0, [10, 12, centre[0]], [10, 16, centre[1]]].astype(float).mean(axis=0)
    np.testing.assert_array_equal(got[0], np.floor(three[::-1] + 0.5).astype(np.int64))


def test_region_fuzz_small_value_sets() -> None:
    # Values drawn from threshold-adjacent sets make drops near the thresholds frequent.
    rng = np.random.default_rng(20240611)
    levels_s = np.array([0, 0, 0, 1, 35, 36, 37, 50, 51, 100, 200, 254, 255], np.uint8)
    levels_v = np.array([0, 70, 71, 72, 100, 255, 255], np.uint8)
    for trial in range(150):
        h, w = (int(x) for x in rng.integers(1, 31, size=2))
        n = int(rng.integers(1, 4))
        s = rng.choice(levels_s, size=(n, h, w))
        v = rng.choice(levels_v, size=(n, h, w))
        hsv, bgr = _regions_from_sv(s, v, seed=trial)
        _assert_regions_match(hsv, bgr)


def test_region_fuzz_real_colours() -> None:
    rng = np.random.default_rng(7)
    for h, w in CARD_SHAPES:
        bgr = rng.integers(0, 256, size=(40, h, w, 3), dtype=np.uint8)
        bgr[:10] //= 4  # mostly dark regions
        bgr[10:20] = 255 - bgr[10:20] // 8  # bright, nearly unsaturated
        hsv = cv2.cvtColor(bgr.reshape(-1, w, 3), cv2.COLOR_BGR2HSV).reshape(bgr.shape)
        _assert_regions_match(hsv, bgr)


# ------------------------------------------------------------------ geometry, API


def test_weight_grid_is_the_original_math_cos() -> None:
    for h, w in CARD_SHAPES + ((28, 28), (3, 1)):
        grid = cos_weight_grid(h, w)
        cx, cy = h / 2, w / 2
        expected = [
            [cosCorrectFactor(abs(cx - i), abs(cy - j), cx, cy) for j in range(w)] for i in range(h)
        ]
        assert grid.tolist() == expected  # exact float equality
        assert not grid.flags.writeable


def test_layout_matches_original_formulas() -> None:
    assert len(PLS_REGION_BOXES) == 120
    assert PLS_REGION_BOXES[0] == (359, 386, 82, 111)
    assert PLS_REGION_BOXES[-1] == (604, 632, 665, 694)
    lane, region = 4, 3  # lane E (k = 5), region 4
    rs, re_, ls, le = PLS_REGION_BOXES[lane * 10 + region]
    assert (ls, le) == (29 + 53 * 5, 58 + 53 * 5)
    assert (rs, re_) == (359 + math.floor(273 * (3 / 10)), 359 + math.floor(273 * (4 / 10)))
    assert PLS_FEATURE_NAMES[:4] == ("A1-R", "A1-G", "A1-B", "A2-R")
    assert PLS_FEATURE_NAMES[-1] == "L10-B" and len(PLS_FEATURE_NAMES) == 360


def test_pipeline_parameters_and_keys() -> None:
    pipeline = PADPLSPipeline()
    assert pipeline.name == "pad_pls"
    assert pipeline.get_parameters() == {}
    # Version 1 computed other features (a running-maximum pixel selection the lab's code
    # does not run): its cache entries must never be served, so the key must differ.
    assert pipeline.code_version == "2"
    old = chain_key("pipeline", "pad_pls", {"selection": "pad_max_intensity"}, "1")
    assert pipeline.get_cache_key() != old
    assert pipeline.get_cache_key() == PADPLSPipeline().get_cache_key()


def test_bad_inputs_give_clear_errors() -> None:
    with pytest.raises(InvalidInputError, match="too small.*694x632"):
        pls_features(np.zeros((600, 730, 3), np.uint8))
    with pytest.raises(InvalidInputError, match="uint8"):
        pls_features(np.zeros((1220, 730, 3), np.float32))
    with pytest.raises(InvalidInputError, match="same shape"):
        region_rgb_means(np.zeros((1, 3, 3, 3), np.uint8), np.zeros((1, 3, 4, 3), np.uint8))
