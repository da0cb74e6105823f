"""The preprocessed and model-ready layers as an auditor reads them: each item's lineage
(raw key, pipeline, spec, truncated flag, shape and dtype), what a call computed, the raw
layer's flags carried through, reads counted for gc's LRU order, and failures that leave
no key behind. Real images from the emulator, a real store; ``DerivedLayers.ensure`` is
the call ``get_preprocessed_batch``, ``apply_model`` and the Dagster assets share.
(Written for survivors of the layers mutation run in ``derived.py``.)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pad_assets import CachedDataset, PADTensorFlowAdapter
from pad_assets.devtools.emulator import Emulator
from pad_assets.devtools.emulator.catalog import EdgeCases
from pad_assets.preprocessing import PADNeuralNetworkPipeline
from pad_assets_tests.conftest import point_env_at
from pad_assets_tests.layers.test_cold_path import _CannotReadOneImage
from pad_assets_tests.model_fixtures import TINY_DRUG_LABELS

pytest_plugins = ["pad_assets_tests.model_fixtures"]


@pytest.fixture
def downloaded(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    point_env_at(emulator, tmp_path / "cache", monkeypatch)
    dataset = CachedDataset(EdgeCases.DATASET, progress=False)
    dataset.download_and_cache()
    cards = dataset.cards()
    ok = cards[cards["cache_status"] == "ok"].drop_duplicates("card_id")
    yield dataset, dict(zip(ok["card_id"], ok["raw_key"], strict=True))
    dataset.close()


def test_each_item_records_its_lineage_and_a_second_call_computes_nothing(
        downloaded, tiny_tflite_path: Path) -> None:
    dataset, raw = downloaded
    ids = sorted(raw)
    keys = [raw[c] for c in ids]
    pipeline = PADNeuralNetworkPipeline()
    spec = PADTensorFlowAdapter(model_path=tiny_tflite_path,
                                labels=TINY_DRUG_LABELS).get_tensor_spec()
    store = dataset.store
    # the raw images were last read two hours ago (reads are recorded at most hourly)
    with store.index.transaction() as con:
        con.execute("UPDATE items SET last_used=?", (time.time() - 7200,))
    before = time.time()

    first = dataset.derived.ensure(keys, pipeline, spec)

    assert (first.computed_preprocessed, first.computed_tensors) == (len(keys), len(keys))
    assert first.failed == {}
    truncated = [c == EdgeCases.TRUNCATED_PNG for c in ids]
    assert first.truncated == truncated and any(truncated)
    entries = store.index.items(first.preprocessed + first.tensors)
    assert {entries[k]["layer"] for k in first.preprocessed} == {"preprocessed"}
    assert {entries[k]["layer"] for k in first.tensors} == {"tensor"}
    for n, (r, p, t) in enumerate(zip(keys, first.preprocessed, first.tensors, strict=True)):
        pre_meta, ten_meta = entries[p]["meta"], entries[t]["meta"]
        arr = store.get(p)
        assert {k: pre_meta[k] for k in ("raw_key", "pipeline", "truncated", "shape",
                                         "dtype")} == {
            "raw_key": r, "pipeline": pipeline.describe(), "truncated": truncated[n],
            "shape": list(arr.shape), "dtype": arr.dtype.str}
        assert {k: ten_meta[k] for k in ("preprocessed_key", "raw_key", "spec",
                                         "truncated")} == {
            "preprocessed_key": p, "raw_key": r, "spec": spec.as_dict(),
            "truncated": truncated[n]}
        assert np.array_equal(store.get(t), spec.to_storage(arr))
    # the raw images read to compute them count as used (gc evicts the least recent)
    assert all(e["last_used"] >= before for e in store.index.items(keys).values())

    again = dataset.derived.ensure(keys, pipeline, spec)
    assert (again.computed_preprocessed, again.computed_tensors) == (0, 0)
    assert (again.preprocessed, again.tensors) == (first.preprocessed, first.tensors)
    assert again.truncated == truncated  # the flags come back from the cached items
    # a new spec on cached preprocessed images computes tensors only
    other = type(spec)(spec.shape, dtype="float32", storage_dtype="float32")
    third = dataset.derived.ensure(keys, pipeline, other)
    assert (third.computed_preprocessed, third.computed_tensors) == (0, len(keys))
    assert third.truncated == truncated
    redo = dataset.derived.ensure(keys, pipeline, spec, recompute=True)
    assert (redo.computed_preprocessed, redo.computed_tensors) == (len(keys), len(keys))
    assert redo.tensors == first.tensors


def test_a_failure_leaves_no_key_and_names_the_raw_image(downloaded,
                                                         tiny_tflite_path: Path) -> None:
    dataset, raw = downloaded
    ids = sorted(raw)
    bad = ids.index(EdgeCases.NORMAL[0])
    keys = [raw[c] for c in ids]
    spec = PADTensorFlowAdapter(model_path=tiny_tflite_path,
                                labels=TINY_DRUG_LABELS).get_tensor_spec()
    chain = dataset.derived.ensure(keys, _CannotReadOneImage(keys[bad]), spec)
    assert chain.failed == {bad: "pad_nn_but_one failed: ValueError: cannot read "
                                 f"raw {keys[bad]} (truncated=False)"}
    assert chain.preprocessed[bad] is None and chain.tensors[bad] is None
    assert all(k is not None for n, k in enumerate(chain.preprocessed + chain.tensors)
               if n % len(keys) != bad)
    assert chain.computed_preprocessed == chain.computed_tensors == len(keys) - 1
    # a raw image that is not in the cache is a failure too, named by its key
    gone = "0" * 64
    chain = dataset.derived.ensure([keys[0], gone], PADNeuralNetworkPipeline())
    assert chain.failed == {1: f"raw item {gone} is not in the cache"}
    assert chain.preprocessed[1] is None and chain.preprocessed[0] is not None
