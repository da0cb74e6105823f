"""Issues 3 and 4 acceptance: the researcher workflow, run as written against the emulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pad_assets import (
    CachedDataset,
    CustomModelAdapter,
    PADNeuralNetworkPipeline,
    PADPLSPipeline,
    PADTensorFlowAdapter,
    PLSModelAdapter,
)
from pad_assets.devtools.demo_models import PLS_EXCLUDED, demo_model_artifacts
from pad_assets.devtools.emulator import DRUGS, DatasetSpec, Emulator, EmulatorConfig
from pad_assets_tests.conftest import point_env_at
from pad_assets_tests.model_fixtures import write_tiny_onnx

DATASET = "FHI2020_Stratified_Sampling"


@pytest.fixture(scope="module")
def emulator(demo_cache_dir: Path):
    config = EmulatorConfig(datasets=[DatasetSpec(DATASET, range(10000, 10024))],
                            models_provider=lambda: demo_model_artifacts(demo_cache_dir))
    with Emulator(config) as emu:
        yield emu


@pytest.fixture
def researcher(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Only the environment points at the emulator; the working dir holds my_model.onnx."""
    point_env_at(emulator, tmp_path / "cache", monkeypatch)
    monkeypatch.chdir(tmp_path)
    write_tiny_onnx(tmp_path / "my_model.onnx", n_classes=5)
    return tmp_path


def _count(dataset: CachedDataset, layer: str) -> int:
    return dataset.store.index.query("SELECT COUNT(*) FROM items WHERE layer=?", (layer,))[0][0]


def _count_predict_calls(adapter, calls: list[int]) -> None:
    original = adapter.predict_batch

    def counting(x, contexts=None):
        calls.append(len(x))
        return original(x, contexts)

    adapter.predict_batch = counting


def test_the_researcher_workflow_as_written(researcher: Path, emulator: Emulator) -> None:
    dataset = CachedDataset("FHI2020_Stratified_Sampling")
    dataset.download_and_cache()
    pad_model = PADTensorFlowAdapter(model_id=16)
    custom_model = CustomModelAdapter("my_model.onnx", labels=DRUGS[:5])
    results_pad = dataset.apply_model(pad_model)
    pre_items = _count(dataset, "preprocessed")
    emulator.reset_stats()
    results_custom = dataset.apply_model(custom_model)
    # a second model on the same dataset: no download, no preprocessing
    assert emulator.stats()["image"] == 0
    assert _count(dataset, "preprocessed") == pre_items
    results_std = dataset.apply_model(pad_model, preprocessing=PADNeuralNetworkPipeline())
    report = dataset.compare_models([pad_model, custom_model])

    assert len(results_pad) == len(results_custom) == 24
    assert (results_pad["status"] == "ok").all()
    assert (results_pad["prediction"] == results_pad["actual"]).mean() >= 0.9
    assert results_std["cached"].all()  # the default pipeline, spelled out: same keys
    assert list(results_std["prediction_key"]) == list(results_pad["prediction_key"])
    assert report.n_items == 24 and set(report.summary["model"]) == {pad_model.name,
                                                                     custom_model.name}
    out = report.write(researcher / "report")
    assert out.is_file() and (researcher / "report" / "report.html").is_file()


def test_warm_apply_model_makes_no_request_and_runs_no_inference(researcher: Path,
                                                                 emulator: Emulator) -> None:
    dataset = CachedDataset(DATASET)
    pad_model = PADTensorFlowAdapter(model_id=16)
    cold = dataset.apply_model(pad_model)
    emulator.reset_stats()
    warm_model = PADTensorFlowAdapter(model_id=16)  # a new process would build a new one
    calls: list[int] = []
    _count_predict_calls(warm_model, calls)
    warm = CachedDataset(DATASET).apply_model(warm_model)
    assert emulator.stats()["total"] == 0
    assert calls == []
    assert warm["cached"].all()
    assert warm[["card_id", "prediction", "probability", "prediction_key"]].equals(
        cold[["card_id", "prediction", "probability", "prediction_key"]])


def test_second_model_reuses_tensors_and_pls_is_per_card_drug(researcher: Path,
                                                              emulator: Emulator) -> None:
    dataset = CachedDataset(DATASET)
    dataset.apply_model(PADTensorFlowAdapter(model_id=16))
    tensors = _count(dataset, "tensor")
    conc = dataset.apply_model(PADTensorFlowAdapter(model_id=17))
    assert _count(dataset, "tensor") == tensors  # same pipeline and spec: shared tensors
    assert set(conc["label_type"]) == {"concentration"}
    pls = dataset.apply_model(PLSModelAdapter(model_id=18))
    unknown = pls[pls["status"] == "unknown_drug"]
    assert (pls.loc[pls["status"] == "ok", "prediction"].notna()).all()
    # exactly the cards whose drug has no PLS row (the demo file, like the real one, has no
    # row for the controls): in these 24 cards, three swiped-but-not-run cards
    drugs = dataset.manifest().rows.set_index("card_id")["drug"]
    expected = sorted(int(c) for c, d in drugs.items() if d in PLS_EXCLUDED)
    assert expected == [10014, 10015, 10016]
    assert sorted(int(c) for c in unknown["card_id"]) == expected
    assert unknown["prediction"].isna().all()
    for detail in unknown["detail"]:
        # explicit status naming the drug and the names tried, never -1
        assert "'swiped-but-not-run' not in coefficients" in detail and "tried" in detail
    assert not (pls["prediction"] == -1).any()


def test_use_cache_false_recomputes_and_replaces_nothing(researcher: Path) -> None:
    dataset = CachedDataset(DATASET)
    model = PADTensorFlowAdapter(model_id=16)
    first = dataset.apply_model(model)
    before = set(dataset.store.index.query("SELECT key, blob, shard FROM items"))
    calls: list[int] = []
    _count_predict_calls(model, calls)
    again = dataset.apply_model(model, use_cache=False)
    assert sum(calls) == 24 and not again["cached"].any()
    after = set(dataset.store.index.query("SELECT key, blob, shard FROM items"))
    assert before == after  # same keys, same places: nothing overwritten, nothing added
    assert np.allclose(first["probability"].astype(float), again["probability"].astype(float))


def test_second_pipeline_downloads_nothing_and_parameters_scope_the_keys(
        researcher: Path, emulator: Emulator) -> None:
    dataset = CachedDataset(DATASET)
    dataset.download_and_cache()
    emulator.reset_stats()
    nn_ids, nn_keys = _run(dataset, PADNeuralNetworkPipeline())
    pls_ids, pls_keys = _run(dataset, PADPLSPipeline())
    assert emulator.stats()["image"] == 0
    assert nn_ids == pls_ids == dataset.manifest().card_ids  # deterministic manifest order

    items = _count(dataset, "preprocessed")
    assert _run(dataset, PADNeuralNetworkPipeline())[1] == nn_keys  # a rerun computes nothing
    assert _count(dataset, "preprocessed") == items

    _, smaller = _run(dataset, PADNeuralNetworkPipeline(size=(224, 224)))
    assert set(smaller).isdisjoint(nn_keys)  # that pipeline's keys changed...
    assert _run(dataset, PADPLSPipeline())[1] == pls_keys  # ...and no other pipeline's
    assert _count(dataset, "preprocessed") == items + 24


def _run(dataset: CachedDataset, pipeline) -> tuple[list[int], list[str]]:
    ids: list[int] = []
    keys: list[str] = []
    for batch in dataset.get_preprocessed_batch(pipeline, batch_size=5):
        assert batch.arrays.shape[0] == len(batch.card_ids) <= 5
        ids += batch.card_ids
        keys += batch.keys
    return ids, keys
