"""Partial PNG decode (issue 16): a pipeline that declares the rows it reads gets only
those rows when the raw layer says the file is complete, with bit-identical outputs, the
same truncated flags and the same error messages as a whole-image decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pad_assets import WhiteBalancedNNPipeline
from pad_assets.errors import InvalidInputError
from pad_assets.preprocessing import PADNeuralNetworkPipeline, decode_image
from pad_assets.preprocessing.decode import check_image, decode_top_rows
from pad_assets_tests.pls_reference import png_bytes, synthetic_card

REAL = Path(__file__).resolve().parents[1] / "data" / "real"


@pytest.fixture(scope="module")
def cards() -> dict[str, bytes]:
    good = png_bytes(synthetic_card(5))
    return {"19208": (REAL / "19208_processed.png").read_bytes(),
            "25834": (REAL / "25834_processed.png").read_bytes(),
            "synthetic": good, "cut_at_60pc": good[: int(len(good) * 0.6)]}


def test_top_rows_are_the_rows_of_a_full_decode(cards: dict[str, bytes]) -> None:
    for name in ("25834", "synthetic"):
        full = np.asarray(decode_image(cards[name]).image)
        for rows in (1, 359, 849, full.shape[0] - 1):
            top = decode_top_rows(cards[name], rows, name)
            assert top is not None and top.size == (full.shape[1], rows)
            assert np.array_equal(np.asarray(top), full[:rows]), (name, rows)
        assert decode_top_rows(cards[name], full.shape[0], name) is None  # nothing to skip


def test_top_rows_refuse_rows_the_file_does_not_have(cards: dict[str, bytes]) -> None:
    cut = cards["cut_at_60pc"]
    full = np.asarray(decode_image(cut).image)
    assert decode_top_rows(cut, full.shape[0] - 1, "cut") is None  # strict decode fails
    top = decode_top_rows(cut, 100, "cut")  # rows before the cut are complete
    assert top is not None and np.array_equal(np.asarray(top), full[:100])


@pytest.mark.parametrize("pipeline", [PADNeuralNetworkPipeline(), WhiteBalancedNNPipeline()],
                         ids=["pad_nn", "white_balanced"])
def test_pipelines_give_the_same_bits_with_the_download_flag(cards: dict[str, bytes],
                                                             pipeline) -> None:  # noqa: ANN001
    for name, data in cards.items():
        flag = check_image(data, name)  # what the raw layer records at download
        assert flag == (name in ("19208", "cut_at_60pc"))
        ref, ref_flag = pipeline.run(data, name)  # whole image, flag from the decode
        got, got_flag = pipeline.run(data, name, truncated=flag)
        assert got_flag == ref_flag == flag
        assert got.dtype == ref.dtype and np.array_equal(got, ref), name


def test_partial_decode_is_only_for_pipelines_that_declare_their_rows() -> None:
    class Flipped(PADNeuralNetworkPipeline):
        name = "flipped"

        def process_image(self, raw_image):  # noqa: ANN001, ANN201
            return super().process_image(raw_image)[::-1]

    assert PADNeuralNetworkPipeline().rows_needed() == 849
    assert WhiteBalancedNNPipeline(patch_box=(10, 900, 60, 950)).rows_needed() == 950
    assert Flipped().rows_needed() is None


def test_errors_are_those_of_the_whole_image(cards: dict[str, bytes]) -> None:
    wide = PADNeuralNetworkPipeline(crop_box=(71, 359, 800, 849))
    with pytest.raises(InvalidInputError) as whole:
        wide.run(cards["25834"])
    with pytest.raises(InvalidInputError) as partial:
        wide.run(cards["25834"], truncated=False)
    assert str(partial.value) == str(whole.value)
    assert "730x1220" in str(partial.value)
