"""Issue 17 acceptance: the lab's researcher block, run verbatim against the emulator.

Only the environment points at the emulator (``point_env_at``) and the working folder holds
what a researcher would have: a TorchScript ``my_pytorch_model.pth`` (tiny, taking PAD's
NHWC 454x454x3 float input) with, in the first variant, a sidecar labels file. ``my_params``
is a plain dict. The dataset mixes synthetic cards with the two real cards (19208, a
truncated PNG, and 25834).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pad_assets import (
    CachedDataset,
    CustomModelAdapter,
    CustomResearchPipeline,
    PADNeuralNetworkPipeline,
    PADTensorFlowAdapter,
)
from pad_assets.devtools.demo_models import demo_model_artifacts
from pad_assets.devtools.emulator import DRUGS, DatasetSpec, Emulator, EmulatorConfig
from pad_assets.devtools.emulator.synthetic import CardAttributes
from pad_assets.models import custom as custom_mod
from pad_assets.models.labels import UnlabelledModelWarning
from pad_assets_tests.conftest import point_env_at
from pad_assets_tests.model_fixtures import tiny_reference_logits, write_tiny_torchscript

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

DATASET = "FHI2020_Stratified_Sampling"
REAL = Path(__file__).parents[1] / "data" / "real"
REAL_CARDS = {19208: CardAttributes("ceftriaxone", 50, "unknown", 19208),
              25834: CardAttributes("amoxicillin", 100, "unknown", 25834)}
CARD_IDS = [*range(10000, 10016), *REAL_CARDS]
MY_LABELS = list(DRUGS[:5])

#: What a researcher writes: PAD's crop and size, white-balanced on the card's paper.
MY_PARAMS = {"crop_box": [71, 359, 707, 849], "size": [454, 454], "resample": "bicubic",
             "white_balance": True}


@pytest.fixture(scope="module")
def emulator(demo_cache_dir: Path) -> Iterator[Emulator]:
    config = EmulatorConfig(datasets=[DatasetSpec(DATASET, CARD_IDS)], real_images_dir=REAL,
                            card_overrides=REAL_CARDS,
                            models_provider=lambda: demo_model_artifacts(demo_cache_dir))
    with Emulator(config) as emu:
        yield emu


def _workdir(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             seed: int) -> Path:
    point_env_at(emulator, tmp_path / "cache", monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(custom_mod, "_WARNED_UNLABELLED", set())  # any test order
    write_tiny_torchscript(tmp_path / "my_pytorch_model.pth", n_classes=5, seed=seed)
    return tmp_path


@pytest.fixture
def labelled(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = _workdir(emulator, tmp_path, monkeypatch, seed=0)
    (work / "my_pytorch_model.labels.txt").write_text("\n".join(MY_LABELS) + "\n")
    return work


@pytest.fixture
def unlabelled(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return _workdir(emulator, tmp_path, monkeypatch, seed=2)


def _stored_tensors(dataset: CachedDataset, keys: list[str]) -> np.ndarray:
    got = dataset.store.get_many(keys)
    return np.stack([np.asarray(got[k]) for k in keys])


def _check_common(dataset, pad_model, results_pad, results_std, results_custom) -> None:  # noqa: ANN001
    n = len(CARD_IDS)
    assert len(results_pad) == len(results_std) == len(results_custom) == n
    assert (results_pad["status"] == "ok").all()
    assert (results_pad["prediction"] == results_pad["actual"]).mean() >= 0.8
    # the standard pipeline spelled out is the model's default: the same cached chain
    assert results_std["cached"].all()
    assert list(results_std["prediction_key"]) == list(results_pad["prediction_key"])
    # the researcher's pipeline: its own preprocessed items, the PAD model run on them
    assert set(results_custom["pipeline"]) == {"custom_research"}
    assert (results_custom["status"] == "ok").all()
    assert not set(results_custom["preprocessed_key"]) & set(results_std["preprocessed_key"])
    assert list(results_custom["truncated"]) == list(results_std["truncated"])
    assert results_custom.set_index("card_id").loc[19208, "truncated"]
    white = _stored_tensors(dataset, list(results_custom["tensor_key"]))
    plain = _stored_tensors(dataset, list(results_std["tensor_key"]))
    assert white.shape == plain.shape == (n, 454, 454, 3) and not np.array_equal(white, plain)
    meta = dataset.store.entries(list(results_custom["preprocessed_key"]))
    params = next(iter(meta.values()))["meta"]["pipeline"]["parameters"]
    assert params["white_balance"] == {"patch_box": [285, 165, 340, 255], "min_background": 64}
    # predictions really come from the white-balanced tensors
    logits = pad_model.predict_logits(white)
    assert list(results_custom["prediction"]) == [pad_model.labels[int(k)]
                                                  for k in logits.argmax(1)]


def _custom_results(dataset: CachedDataset, custom_model: CustomModelAdapter):  # noqa: ANN202
    """The block reassigns ``results_custom``; the custom model's table, warm from cache."""
    again = dataset.apply_model(custom_model)
    assert again["cached"].all()  # computed inside the block, not here
    return again


def test_lab_block_verbatim_with_sidecar_labels(labelled: Path, emulator: Emulator) -> None:
    my_params = dict(MY_PARAMS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnlabelledModelWarning)
        # ---- the lab's block, verbatim --------------------------------------------------
        dataset = CachedDataset("FHI2020_Stratified_Sampling")
        dataset.download_and_cache()
        pad_model = PADTensorFlowAdapter(model_id=16)
        custom_model = CustomModelAdapter("my_pytorch_model.pth")
        results_pad = dataset.apply_model(pad_model)
        results_custom = dataset.apply_model(custom_model)
        standard_prep = PADNeuralNetworkPipeline()
        custom_prep = CustomResearchPipeline(my_params)
        results_std = dataset.apply_model(pad_model, preprocessing=standard_prep)
        results_custom = dataset.apply_model(pad_model, preprocessing=custom_prep)
        # ---------------------------------------------------------------------------------
    _check_common(dataset, pad_model, results_pad, results_std, results_custom)

    assert custom_model.labels == MY_LABELS
    source = custom_model.describe()["label_source"]
    assert source["kind"] == "sidecar" and source["where"] == "{stem}.labels.txt"
    assert source["path"] == str(labelled / "my_pytorch_model.labels.txt")
    mine = _custom_results(dataset, custom_model)
    assert (mine["status"] == "ok").all() and set(mine["label_type"]) == {"drug"}
    tensors = _stored_tensors(dataset, list(mine["tensor_key"]))
    expected = [MY_LABELS[int(k)] for k in tiny_reference_logits(tensors).argmax(1)]
    assert list(mine["prediction"]) == expected
    assert list(mine["actual"]) == list(results_pad["actual"])
    # the custom model shares the PAD model's default tensors: nothing recomputed
    assert list(mine["tensor_key"]) == list(results_std["tensor_key"])
    report = dataset.compare_models([pad_model, custom_model])
    assert report.n_items == len(CARD_IDS)


def test_lab_block_verbatim_without_labels(unlabelled: Path, emulator: Emulator) -> None:
    my_params = dict(MY_PARAMS)
    with pytest.warns(UnlabelledModelWarning) as caught:
        # ---- the lab's block, verbatim --------------------------------------------------
        dataset = CachedDataset("FHI2020_Stratified_Sampling")
        dataset.download_and_cache()
        pad_model = PADTensorFlowAdapter(model_id=16)
        custom_model = CustomModelAdapter("my_pytorch_model.pth")
        results_pad = dataset.apply_model(pad_model)
        results_custom = dataset.apply_model(custom_model)
        standard_prep = PADNeuralNetworkPipeline()
        custom_prep = CustomResearchPipeline(my_params)
        results_std = dataset.apply_model(pad_model, preprocessing=standard_prep)
        results_custom = dataset.apply_model(pad_model, preprocessing=custom_prep)
        # ---------------------------------------------------------------------------------
    unlabelled_warnings = [w for w in caught if w.category is UnlabelledModelWarning]
    assert len(unlabelled_warnings) == 1
    message = str(unlabelled_warnings[0].message)
    assert "my_pytorch_model.pth" in message and "class indices" in message
    for way in ("model file's own metadata", "sidecar", "PAD model record"):
        assert way in message
    _check_common(dataset, pad_model, results_pad, results_std, results_custom)

    assert custom_model.class_indices
    mine = _custom_results(dataset, custom_model)
    tensors = _stored_tensors(dataset, list(mine["tensor_key"]))
    expected = [str(int(k)) for k in tiny_reference_logits(tensors, seed=2).argmax(1)]
    assert list(mine["prediction"]) == expected
    assert mine["actual"].isna().all() and (mine["status"] == "ok").all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnlabelledModelWarning)
        CustomModelAdapter("my_pytorch_model.pth")  # once per model signature


def test_custom_adapter_from_a_pad_record(labelled: Path, emulator: Emulator) -> None:
    """Built from a PAD model record, the record's labels are the source."""
    pad_model = PADTensorFlowAdapter(model_id=16)
    custom = CustomModelAdapter.from_pad_model(16)
    assert custom.labels == pad_model.labels
    assert custom.label_source.kind == "pad_record"
    assert custom.describe()["record_id"] == 16
    assert custom.sha256 == pad_model.weights_sha256
    dataset = CachedDataset(DATASET)
    a = dataset.apply_model(pad_model, card_ids=[10000, 10001, 25834])
    b = dataset.apply_model(custom, card_ids=[10000, 10001, 25834])
    assert list(a["prediction"]) == list(b["prediction"])
    np.testing.assert_allclose(list(a["probability"]), list(b["probability"]), rtol=1e-6)
