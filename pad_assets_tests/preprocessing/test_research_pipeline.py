"""CustomResearchPipeline: the PAD NN pipeline as one configuration, bit for bit, on real cards;
every parameter in the key; clear refusals; the same predictions through the cache."""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pad_assets import CachedDataset, CustomModelAdapter, CustomResearchPipeline
from pad_assets.devtools.demo_models import demo_model_artifacts
from pad_assets.devtools.emulator import DatasetSpec, Emulator, EmulatorConfig
from pad_assets.devtools.emulator.synthetic import CardAttributes
from pad_assets.errors import InvalidInputError
from pad_assets.keys import chain_key
from pad_assets.models.tflite import PADTensorFlowAdapter
from pad_assets.preprocessing import (
    PAD_NN_RESEARCH_PARAMS,
    PADNeuralNetworkPipeline,
    WhiteBalancedNNPipeline,
)
from pad_assets_tests.conftest import point_env_at
from pad_assets_tests.model_fixtures import TINY_DRUG_LABELS, tiny_reference_logits
from pad_assets_tests.pad_tool_reference import pad_tool_nn

pytest_plugins = ["pad_assets_tests.model_fixtures"]
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

REAL = Path(__file__).parents[1] / "data" / "real"
#: Real cards (SOURCES.md beside them) -> is the PNG truncated?
REAL_CARDS = {19208: True, 25834: False}
REAL_LABELS = {19208: CardAttributes("ceftriaxone", 50, "unknown", 19208),
               25834: CardAttributes("amoxicillin", 100, "unknown", 25834)}

#: The PAD NN pipeline written out as a CustomResearchPipeline configuration, exactly as the
#: README and the module docstring show it.
PAD_NN_AS_RESEARCH: dict[str, Any] = {
    "crop_box": [71, 359, 707, 849], "size": [454, 454], "resample": "bicubic",
    "colour_space": "rgb", "white_balance": None, "channel_order": "rgb",
    "normalisation": "none", "layout": "hwc", "dtype": "uint8",
}

#: One changed setting per parameter (a float dtype where normalisation needs it).
VARIANTS: dict[str, dict[str, Any]] = {
    "crop_box": {"crop_box": [70, 359, 706, 849]},
    "crop_box_none": {"crop_box": None, "size": [454, 454]},
    "size": {"size": [224, 224]},
    "size_none": {"size": None},
    "resample": {"resample": "bilinear"},
    "colour_space": {"colour_space": "grey"},
    "colour_space_hsv": {"colour_space": "hsv"},
    "white_balance": {"white_balance": True},
    "white_balance_patch": {"white_balance": {"patch_box": [290, 170, 330, 250]}},
    "channel_order": {"channel_order": "bgr"},
    "normalisation": {"normalisation": "unit", "dtype": "float32"},
    "normalisation_imagenet": {"normalisation": "imagenet", "dtype": "float32"},
    "normalisation_dict": {"normalisation": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]},
                           "dtype": "float32"},
    "layout": {"layout": "chw"},
    "dtype": {"dtype": "float32"},
    "dtype_half": {"dtype": "float16"},
}


def _real(card_id: int) -> bytes:
    return (REAL / f"{card_id}_processed.png").read_bytes()


# ---------------------------------------------------------------------------- bit identity
@pytest.mark.parametrize("card_id", sorted(REAL_CARDS))
def test_pad_nn_configuration_gives_identical_bytes_on_real_cards(card_id: int) -> None:
    data = _real(card_id)
    std, std_truncated = PADNeuralNetworkPipeline().run(data, str(card_id))
    for pipeline in (CustomResearchPipeline(PAD_NN_AS_RESEARCH),
                     CustomResearchPipeline(**PAD_NN_AS_RESEARCH),
                     CustomResearchPipeline(PAD_NN_RESEARCH_PARAMS),
                     CustomResearchPipeline({})):
        out, truncated = pipeline.run(data, str(card_id))
        assert truncated is std_truncated is REAL_CARDS[card_id]
        assert (out.dtype, out.shape, out.flags.c_contiguous) == (np.uint8, (454, 454, 3), True)
        assert out.tobytes() == std.tobytes()
    # and both are the PAD tool's own array (not merely equal to each other)
    assert std.tobytes() == pad_tool_nn(data, tolerant=True).tobytes()


def test_pad_nn_params_constant_is_the_documented_dict() -> None:
    assert PAD_NN_RESEARCH_PARAMS == PAD_NN_AS_RESEARCH
    assert CustomResearchPipeline(PAD_NN_AS_RESEARCH).get_parameters() == PAD_NN_AS_RESEARCH
    import pad_assets.preprocessing.research as research

    assert '"crop_box": [71, 359, 707, 849], "size": [454, 454]' in research.__doc__
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert '"crop_box": [71, 359, 707, 849], "size": [454, 454]' in readme


@pytest.mark.parametrize("card_id", sorted(REAL_CARDS))
def test_white_balance_configuration_equals_the_example_pipeline(card_id: int) -> None:
    data = _real(card_id)
    example, _ = WhiteBalancedNNPipeline().run(data)
    research, _ = CustomResearchPipeline({"white_balance": True}).run(data)
    assert research.tobytes() == example.tobytes()
    plain, _ = PADNeuralNetworkPipeline().run(data)
    assert research.tobytes() != plain.tobytes()


# ---------------------------------------------------------------------------- cache keys
def test_cache_key_differs_only_where_parameters_differ() -> None:
    std = PADNeuralNetworkPipeline()
    mine = CustomResearchPipeline(PAD_NN_AS_RESEARCH)
    for p in (std, mine):  # both keys derived by the one rule of PreprocessingPipeline
        assert p.get_cache_key() == chain_key("pipeline", p.name, p.get_parameters(),
                                              p.code_version)
    shared = std.get_parameters()
    params = mine.get_parameters()
    assert {k: params[k] for k in shared} == shared  # same names, same values
    assert set(params) - set(shared) == {"colour_space", "white_balance", "channel_order",
                                         "normalisation", "layout", "dtype"}
    assert (mine.name, std.name) == ("custom_research", "pad_nn")
    assert mine.code_version == std.code_version
    assert mine.get_cache_key() != std.get_cache_key()
    # Give the research key the PAD pipeline's name and parameters and it is the PAD key:
    # nothing else (no object identity, no defaults left out) enters it.
    assert chain_key("pipeline", std.name, shared, mine.code_version) == std.get_cache_key()


def test_equal_parameters_equal_keys_however_written() -> None:
    key = CustomResearchPipeline(PAD_NN_AS_RESEARCH).get_cache_key()
    assert CustomResearchPipeline({}).get_cache_key() == key
    assert CustomResearchPipeline().get_cache_key() == key
    assert CustomResearchPipeline({"size": (454, 454)},
                                  crop_box=np.array([71, 359, 707, 849])).get_cache_key() == key
    assert CustomResearchPipeline({"resample": "BICUBIC", "white_balance": False,
                                   "normalisation": None}).get_cache_key() == key
    wb = CustomResearchPipeline({"white_balance": True})
    assert wb.get_parameters()["white_balance"] == {"patch_box": [285, 165, 340, 255],
                                                    "min_background": 64}
    assert CustomResearchPipeline(
        white_balance={"patch_box": [285, 165, 340, 255]}).get_cache_key() == wb.get_cache_key()
    rebuilt = CustomResearchPipeline(wb.describe()["parameters"])
    assert rebuilt.get_cache_key() == wb.get_cache_key()
    assert pickle.loads(pickle.dumps(wb)).get_cache_key() == wb.get_cache_key()


def test_every_parameter_changes_the_key_and_the_array() -> None:
    data = _real(25834)
    base = CustomResearchPipeline(PAD_NN_AS_RESEARCH)
    base_out, _ = base.run(data)
    keys = {"base": base.get_cache_key()}
    for label, change in VARIANTS.items():
        pipeline = CustomResearchPipeline({**PAD_NN_AS_RESEARCH, **change})
        keys[label] = pipeline.get_cache_key()
        out, _ = pipeline.run(data)
        same = out.shape == base_out.shape and out.dtype == base_out.dtype and (
            out.tobytes() == base_out.tobytes())
        assert not same, f"{label}: output unchanged"
    assert len(set(keys.values())) == len(keys), "two configurations share a key"


def test_outputs_follow_the_parameters() -> None:
    data = _real(25834)
    rgb, _ = CustomResearchPipeline().run(data)
    chw = CustomResearchPipeline(layout="chw").run(data)[0]
    np.testing.assert_array_equal(chw, rgb.transpose(2, 0, 1))
    bgr = CustomResearchPipeline(channel_order="bgr").run(data)[0]
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])
    unit = CustomResearchPipeline(normalisation="unit", dtype="float32").run(data)[0]
    np.testing.assert_allclose(unit, rgb / 255.0, atol=1e-7)
    assert unit.dtype == np.float32
    imagenet = CustomResearchPipeline(normalisation="imagenet", dtype="float32").run(data)[0]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(imagenet, (rgb / 255.0 - mean) / std, atol=1e-5)
    symmetric = CustomResearchPipeline(normalisation="symmetric", dtype="float16").run(data)[0]
    assert symmetric.dtype == np.float16
    np.testing.assert_allclose(symmetric, rgb / 127.5 - 1, atol=1e-3)
    grey = CustomResearchPipeline(colour_space="grey", size=[100, 50]).run(data)[0]
    assert grey.shape == (50, 100, 1)
    expected = Image.open(io.BytesIO(data)).convert("RGB").crop((71, 359, 707, 849)).resize(
        (100, 50), Image.BICUBIC).convert("L")
    np.testing.assert_array_equal(grey[:, :, 0], np.asarray(expected))
    whole = CustomResearchPipeline(crop_box=None, size=None).run(data)[0]
    assert whole.shape == (1220, 730, 3)
    crop_only = CustomResearchPipeline(size=None).run(data)[0]
    assert crop_only.shape == (490, 636, 3)


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(("params", "names"), [
    ({"sise": [224, 224]}, ["'sise'", "did you mean 'size'"]),
    ({"size": [0, 224]}, ["'size'", "positive"]),
    ({"size": [224.5, 224]}, ["'size'", "2 integers"]),
    ({"crop_box": "71,359,707,849"}, ["'crop_box'", "4 integers"]),
    ({"crop_box": [100, 0, 50, 10]}, ["'crop_box'", "left < right"]),
    ({"resample": "cubic"}, ["'resample'", "bicubic"]),
    ({"colour_space": "lab"}, ["'colour_space'", "grey"]),
    ({"white_balance": "yes"}, ["'white_balance'", "patch_box"]),
    ({"white_balance": {"patch": [1, 2, 3, 4]}}, ["'white_balance'", "unknown: ['patch']"]),
    ({"white_balance": {"min_background": 0}}, ["'white_balance.min_background'", "1..255"]),
    ({"channel_order": "grb"}, ["'channel_order'", "'bgr'"]),
    ({"channel_order": "bgr", "colour_space": "grey"}, ["'channel_order'", "only for RGB"]),
    ({"normalisation": "zscore"}, ["'normalisation'", "imagenet"]),
    ({"normalisation": {"mean": [0.5] * 3}, "dtype": "float32"}, ["'normalisation'", "'std'"]),
    ({"normalisation": {"mean": [0.5] * 3, "std": [0, 1, 1]}, "dtype": "float32"},
     ["'normalisation.std'", "positive"]),
    ({"normalisation": "unit"}, ["'dtype'", "float32", "not integers"]),
    ({"layout": "nhwc"}, ["'layout'", "'chw'"]),
    ({"dtype": "int16"}, ["'dtype'", "uint8"]),
])
def test_bad_parameters_are_named(params: dict[str, Any], names: list[str]) -> None:
    with pytest.raises(InvalidInputError) as info:
        CustomResearchPipeline(params)
    for text in names:
        assert text in str(info.value)


def test_other_refusals() -> None:
    with pytest.raises(InvalidInputError, match=r"\['size'\] given both"):
        CustomResearchPipeline({"size": [1, 1]}, size=[2, 2])
    with pytest.raises(InvalidInputError, match="must be a dict"):
        CustomResearchPipeline([("size", [1, 1])])  # type: ignore[arg-type]
    big = CustomResearchPipeline(crop_box=[0, 0, 800, 100])
    with pytest.raises(InvalidInputError, match="'crop_box'.*does not fit"):
        big.run(_real(25834))
    with pytest.raises(InvalidInputError, match="'size' is None"):
        CustomResearchPipeline(size=None).tensor_spec()


# ---------------------------------------------------------------------------- with models
def test_tensor_spec_feeds_a_custom_model(tiny_torchscript_path: Path) -> None:
    prep = CustomResearchPipeline(normalisation="unit", dtype="float32")
    spec = prep.tensor_spec()
    assert (spec.shape, spec.dtype, spec.storage_dtype, spec.layout, spec.scale) == (
        (454, 454, 3), "float32", "float32", "NHWC", "unit")
    model = CustomModelAdapter(tiny_torchscript_path, preprocessing=prep, labels=TINY_DRUG_LABELS)
    assert model.get_tensor_spec() == spec and model.get_required_preprocessing() is prep
    arrays = np.stack([prep.run(_real(c))[0] for c in sorted(REAL_CARDS)])
    outputs = [r.outputs for r in model.predict_batch(arrays)]
    np.testing.assert_allclose(outputs, tiny_reference_logits(arrays), rtol=1e-5, atol=1e-5)
    chw = CustomResearchPipeline(layout="chw", colour_space="grey").tensor_spec()
    assert (chw.shape, chw.storage_dtype, chw.dtype, chw.layout) == (
        (1, 454, 454), "uint8", "float32", "NCHW")


@pytest.fixture(scope="module")
def real_cards_emulator(demo_cache_dir: Path) -> Iterator[Emulator]:
    config = EmulatorConfig(datasets=[DatasetSpec("Real_Cards", sorted(REAL_CARDS))],
                            real_images_dir=REAL, card_overrides=REAL_LABELS,
                            models_provider=lambda: demo_model_artifacts(demo_cache_dir))
    with Emulator(config) as emu:
        yield emu


def test_same_outputs_through_the_cache_on_real_cards(
    real_cards_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_env_at(real_cards_emulator, tmp_path / "cache", monkeypatch)
    dataset = CachedDataset("Real_Cards")
    model = PADTensorFlowAdapter(model_id=16)
    std = dataset.apply_model(model, preprocessing=PADNeuralNetworkPipeline())
    mine = dataset.apply_model(model, preprocessing=CustomResearchPipeline(PAD_NN_AS_RESEARCH))
    assert list(std["card_id"]) == list(mine["card_id"]) == sorted(REAL_CARDS)
    assert (std["status"] == "ok").all() and (mine["status"] == "ok").all()
    for col in ("prediction", "probability", "energy", "truncated", "raw_key"):
        assert list(mine[col]) == list(std[col]), col
    assert list(std["truncated"]) == [REAL_CARDS[c] for c in sorted(REAL_CARDS)]
    assert set(mine["pipeline"]) == {"custom_research"}
    for col in ("preprocessed_key", "tensor_key", "prediction_key"):
        assert not set(mine[col]) & set(std[col]), f"{col} shared between the pipelines"
    for a, b in zip(std["preprocessed_key"], mine["preprocessed_key"], strict=True):
        assert np.asarray(dataset.store.get(a)).tobytes() == np.asarray(
            dataset.store.get(b)).tobytes()
    meta = dataset.store.entries(list(mine["preprocessed_key"]))
    for entry in meta.values():
        assert entry["meta"]["pipeline"]["parameters"] == PAD_NN_AS_RESEARCH
