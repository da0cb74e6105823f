"""NN preprocessing: bit-for-bit Pillow crop + bicubic resize, keys, errors, the example."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image, ImageFile

from pad_assets.errors import InvalidInputError
from pad_assets.preprocessing import (
    FunctionPipeline,
    PADNeuralNetworkPipeline,
    WhiteBalancedNNPipeline,
)
from pad_assets.preprocessing.examples import PAPER_PATCH_BOX
from pad_assets_tests.pad_tool_reference import pad_tool_nn
from pad_assets_tests.pls_reference import card_rgb, png_bytes


def _card_bytes(index: int) -> bytes:
    """Even indices: the emulator's realistic PNGs; odd: harsher synthetic edge cases."""
    if index % 2 == 0:
        from pad_assets.devtools.emulator.synthetic import card_png

        return card_png(2000 + index)
    return png_bytes(card_rgb(index))


@pytest.fixture
def truncated_png() -> Iterator[bytes]:
    data = _card_bytes(1)
    yield data[: int(len(data) * 0.6)]


@pytest.mark.parametrize("index", range(12))
def test_output_equals_pad_tool_bit_for_bit(index: int) -> None:
    data = _card_bytes(index)
    out, truncated = PADNeuralNetworkPipeline().run(data, f"card-{index}")
    assert truncated is False
    assert out.dtype == np.uint8 and out.shape == (454, 454, 3)
    np.testing.assert_array_equal(out, pad_tool_nn(data))


def test_truncated_png_equals_pad_tool_with_tolerance(truncated_png: bytes) -> None:
    with pytest.raises(OSError):  # really truncated: a strict decode fails
        pad_tool_nn(truncated_png, tolerant=False)
    out, truncated = PADNeuralNetworkPipeline().run(truncated_png, "cut")
    assert truncated is True
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    np.testing.assert_array_equal(out, pad_tool_nn(truncated_png, tolerant=True))
    # the cut lies inside the crop: some output rows are the black fill of missing data
    assert (out[-1] == 0).all()


def test_cache_keys_follow_parameters() -> None:
    default = PADNeuralNetworkPipeline()
    assert default.name == "pad_nn" and default.code_version == "1"
    assert default.get_parameters() == {
        "crop_box": [71, 359, 707, 849],
        "size": [454, 454],
        "resample": "bicubic",
    }
    same = PADNeuralNetworkPipeline(crop_box=[71, 359, 707, 849], size=(454, 454))
    assert same.get_cache_key() == default.get_cache_key()
    assert PADNeuralNetworkPipeline(resample="BICUBIC").get_cache_key() == default.get_cache_key()
    others = [
        PADNeuralNetworkPipeline(crop_box=(70, 359, 707, 849)),
        PADNeuralNetworkPipeline(size=(224, 224)),
        PADNeuralNetworkPipeline(resample="lanczos"),
    ]
    keys = {p.get_cache_key() for p in others} | {default.get_cache_key()}
    assert len(keys) == 4


def test_overridden_parameters_are_applied() -> None:
    data = _card_bytes(3)
    pipeline = PADNeuralNetworkPipeline(
        crop_box=(0, 0, 730, 1220), size=(100, 200), resample="nearest"
    )
    out, _ = pipeline.run(data)
    assert out.shape == (200, 100, 3)
    expected = Image.open(io.BytesIO(data)).convert("RGB").resize((100, 200), Image.NEAREST)
    np.testing.assert_array_equal(out, np.asarray(expected))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop_box": (1, 2, 3)}, "'crop_box' must be 4 integers"),
        ({"crop_box": (0, 0, 10.5, 10)}, "'crop_box' must be 4 integers"),
        ({"crop_box": "0,0,10,10"}, "'crop_box' must be 4 integers"),
        ({"crop_box": (True, 0, 10, 10)}, "'crop_box' must be 4 integers"),
        ({"crop_box": (10, 0, 5, 10)}, "'crop_box' must satisfy"),
        ({"crop_box": (-1, 0, 5, 10)}, "'crop_box' must satisfy"),
        ({"size": (454,)}, "'size' must be 2 integers"),
        ({"size": (0, 454)}, "'size' must be two positive integers"),
        ({"size": (454, -3)}, "'size' must be two positive integers"),
        ({"resample": "cubic"}, "'resample' must be one of"),
        ({"resample": 3}, "'resample' must be one of"),
    ],
)
def test_bad_parameters_give_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        PADNeuralNetworkPipeline(**kwargs)


def test_crop_box_outside_image_is_refused() -> None:
    data = png_bytes(np.zeros((400, 300, 3), np.uint8))
    with pytest.raises(
        InvalidInputError, match=r"'crop_box'.*does not fit inside the image of 300x400"
    ):
        PADNeuralNetworkPipeline().run(data)


def test_numpy_integers_are_accepted_and_canonical() -> None:
    p = PADNeuralNetworkPipeline(crop_box=np.array([71, 359, 707, 849]), size=(np.int64(454), 454))
    assert p.get_cache_key() == PADNeuralNetworkPipeline().get_cache_key()


# ------------------------------------------------------------------ example pipelines


def test_white_balance_neutralises_the_paper_and_has_its_own_key() -> None:
    rgb = card_rgb(5).astype(np.float32)
    cast = np.clip(rgb * np.array([1.15, 1.0, 0.8], np.float32), 0, 255).astype(np.uint8)
    pipeline = WhiteBalancedNNPipeline()
    gains = pipeline.channel_gains(cast.astype(np.float32))
    left, upper, right, lower = PAPER_PATCH_BOX
    paper = np.median(cast[upper:lower, left:right].reshape(-1, 3), axis=0) * gains
    assert np.ptp(paper) < 1e-3  # neutral after balancing
    out, truncated = pipeline.run(png_bytes(cast))
    assert out.shape == (454, 454, 3) and out.dtype == np.uint8 and truncated is False
    keys = {
        pipeline.get_cache_key(),
        PADNeuralNetworkPipeline().get_cache_key(),
        WhiteBalancedNNPipeline(patch_box=(290, 170, 330, 250)).get_cache_key(),
    }
    assert len(keys) == 3
    assert pipeline.get_parameters()["patch_box"] == list(PAPER_PATCH_BOX)


def test_white_balance_refuses_a_dark_patch() -> None:
    with pytest.raises(InvalidInputError, match="paper patch"):
        WhiteBalancedNNPipeline().run(png_bytes(np.zeros((1220, 730, 3), np.uint8)))
    with pytest.raises(InvalidInputError, match="'patch_box'"):
        WhiteBalancedNNPipeline(patch_box=(5, 5, 1, 1))
    with pytest.raises(InvalidInputError, match="min_background"):
        WhiteBalancedNNPipeline(min_background=0)


def test_function_pipeline_docstring_example() -> None:
    def lanes_grey(image: Image.Image, box: list[int], size: list[int]) -> np.ndarray:
        return np.asarray(image.crop(tuple(box)).convert("L").resize(tuple(size)))

    pipeline = FunctionPipeline(
        lanes_grey, name="lanes_grey", code_version="1", box=[71, 359, 707, 849], size=[227, 227]
    )
    array, truncated = pipeline.run(_card_bytes(2))
    assert array.shape == (227, 227) and array.dtype == np.uint8 and truncated is False
    bigger = FunctionPipeline(
        lanes_grey, name="lanes_grey", code_version="1", box=[71, 359, 707, 849], size=[454, 454]
    )
    assert bigger.get_cache_key() != pipeline.get_cache_key()
