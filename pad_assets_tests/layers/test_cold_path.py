"""The cold path end to end (issue 16): a cold ``apply_model`` reads nothing back from the
shards it writes (downloaded bytes and computed tensors are used as they are), and its
outputs equal a recomputation from the cache and a whole-image decode, truncated card
included."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pad_assets import CachedDataset, PADTensorFlowAdapter
from pad_assets.devtools.emulator import Emulator
from pad_assets.devtools.emulator.catalog import EdgeCases
from pad_assets.hashing import sha256_bytes
from pad_assets.models.base import ModelAdapter, PredictionRecord, TensorSpec
from pad_assets.preprocessing import PADNeuralNetworkPipeline
from pad_assets.store import shards as shard_io
from pad_assets_tests.conftest import point_env_at
from pad_assets_tests.model_fixtures import TINY_DRUG_LABELS

pytest_plugins = ["pad_assets_tests.model_fixtures"]


def test_cold_run_reads_nothing_back_and_matches_a_recompute_from_the_cache(
        emulator: Emulator, tiny_tflite_path: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    point_env_at(emulator, tmp_path / "cache", monkeypatch)
    reads: list[str] = []
    original = shard_io.ShardReader.read

    def counting(self, rel: str, blob_id: str):  # noqa: ANN001, ANN202
        reads.append(blob_id)
        return original(self, rel, blob_id)

    dataset = CachedDataset(EdgeCases.DATASET)
    # a tiny TF Lite classifier of the PAD NN input (no model download, no demo training)
    model = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    monkeypatch.setattr(shard_io.ShardReader, "read", counting)
    cold = dataset.apply_model(model).set_index("card_id")
    assert reads == []  # downloaded bytes and computed tensors were used as they were
    ok = cold[cold["status"] == "ok"]
    assert EdgeCases.TRUNCATED_PNG in ok.index and len(ok) >= 5
    assert bool(ok.loc[EdgeCases.TRUNCATED_PNG, "truncated"])
    assert not ok.drop(EdgeCases.TRUNCATED_PNG)["truncated"].any()
    # use_cache=False: every array again from the raw images in the store (flags from the
    # raw layer), and each against a whole-image decode of those bytes
    reads.clear()
    again = dataset.apply_model(model, use_cache=False).set_index("card_id").loc[ok.index]
    assert not again["cached"].any()  # computed again, not served from the cache
    assert reads and set(reads) <= set(cold["raw_key"].dropna())  # from raw images only
    assert again["prediction"].tolist() == ok["prediction"].tolist()
    assert np.allclose(again["probability"], ok["probability"], rtol=0, atol=1e-12)
    assert again["truncated"].tolist() == ok["truncated"].tolist()
    # each stored prediction records its whole chain and how it was made (what an audit
    # reads): the keys, the model and pipeline descriptions, the tensor spec, the flag
    metas = dataset.store.metas(ok["prediction_key"].tolist())
    desc = model.describe()
    for cid, row in ok.iterrows():
        meta = metas[row["prediction_key"]]
        assert (meta["raw_key"], meta["preprocessed_key"], meta["tensor_key"]) == (
            row["raw_key"], row["preprocessed_key"], row["tensor_key"]), cid
        assert meta["model"] == desc and meta["truncated"] == bool(row["truncated"])
        assert meta["pipeline"] == PADNeuralNetworkPipeline().describe()
        assert meta["spec"]["shape"] and meta["spec"]["dtype"], meta["spec"]
        assert meta["record"]["prediction"] == row["prediction"]
        assert 0 < meta["inference_seconds"] < 60 and meta["created_at"] > 0
        assert meta["context"] == {}  # the NN takes no per-card context (PLS: the drug)
        assert meta["libraries"]["numpy"] == np.__version__
    # warm: every answer from the cache, with the flags and keys the cold run recorded;
    # each hit counts as a use for gc's least-recently-used order (at most once an hour,
    # so the items are made two hours old first)
    with dataset.store.index.transaction() as con:
        con.execute("UPDATE items SET last_used=?", (time.time() - 7200,))
    before_warm = time.time()
    warm = dataset.apply_model(model).set_index("card_id").loc[ok.index]
    assert warm["cached"].all()
    used = dataset.store.index.items(warm["prediction_key"].tolist())
    assert all(e["last_used"] >= before_warm for e in used.values()), used
    assert warm["truncated"].tolist() == ok["truncated"].tolist()
    for col in ("prediction", "raw_key", "preprocessed_key", "tensor_key", "prediction_key"):
        assert warm[col].tolist() == ok[col].tolist(), col
    store = dataset.store
    for cid, row in ok.iterrows():
        raw = store.get(row["raw_key"])
        whole, flag = PADNeuralNetworkPipeline().run(raw)
        assert flag == bool(row["truncated"])
        assert np.array_equal(store.get(row["tensor_key"]), whole), cid
    dataset.close()


def test_many_chunks_each_card_gets_its_own_prediction(tiny_tflite_path: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """~150 cards: a first chunk of 16, then chunks of 64 prepared one ahead while the model
    runs on the last; every card's row, keys and stored record must be its own (the other
    tests have fewer cards than one chunk, so no mutant of the chunking failed them)."""
    from pad_assets.devtools.emulator import DatasetSpec
    from pad_assets.layers import predictions
    from pad_assets_tests.conftest import make_config

    cards = list(range(70000, 70200))  # the manifest publishes ~3/4 of a spec's ids
    with Emulator(make_config([DatasetSpec("chunks", cards)], models=[])) as emu:
        point_env_at(emu, tmp_path / "cache", monkeypatch)
        dataset = CachedDataset("chunks", progress=False)
        model = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
        cold = dataset.apply_model(model)
    assert (cold["status"] == "ok").all() and cold["card_id"].is_unique
    assert len(cold) > predictions.FIRST_CHUNK + 2 * predictions.PREDICT_CHUNK
    assert cold["raw_key"].nunique() == len(cold) == cold["prediction_key"].nunique()
    store = dataset.store
    rows = store.cards("chunks")
    metas = store.metas(cold["prediction_key"].tolist())
    for _, row in cold.iterrows():
        assert row["raw_key"] == rows[row["card_id"]]["raw_key"], row["card_id"]
        alone = model.predict_batch(store.get(row["tensor_key"])[None], [{}])[0]
        assert (row["prediction"], row["probability"]) == (alone.prediction, alone.probability)
        assert metas[row["prediction_key"]]["tensor_key"] == row["tensor_key"]
    dataset.close()


def _other_storage(spec: TensorSpec) -> TensorSpec:
    """The same model input, stored in the other dtype (uint8 <-> float32)."""
    return replace(spec, storage_dtype="float32" if spec.storage_dtype == "uint8" else "uint8")


class _CannotReadOneImage(PADNeuralNetworkPipeline):
    """The lab's NN pipeline, except that one image defeats it (as an image a real pipeline
    cannot handle does)."""

    name = "pad_nn_but_one"

    def __init__(self, bad_key: str) -> None:
        super().__init__()
        self.bad_key = bad_key

    def get_parameters(self) -> dict:
        return {**super().get_parameters(), "bad_key": self.bad_key}

    def run(self, data: bytes, source: str = "image", truncated: bool | None = None):  # noqa: ANN201
        if sha256_bytes(data) == self.bad_key:
            raise ValueError(f"cannot read {source} (truncated={truncated})")
        return super().run(data, source, truncated)


def test_a_card_its_pipeline_cannot_read_is_a_failed_row_keyed_by_its_image(
        emulator: Emulator, tiny_tflite_path: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    point_env_at(emulator, tmp_path / "cache", monkeypatch)
    dataset = CachedDataset(EdgeCases.DATASET)
    dataset.download_and_cache()
    bad_card = EdgeCases.NORMAL[0]
    bad_key = dataset.cards().set_index("card_id").loc[bad_card, "raw_key"]
    model = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    pipeline = _CannotReadOneImage(bad_key)
    for run in ("cold", "again"):  # a failure is never cached: the next run tries again
        out = dataset.apply_model(model, preprocessing=pipeline).set_index("card_id")
        row = out.loc[bad_card]
        assert row["status"] == "failed", run
        # read back from the raw layer, with the flag its download check recorded (the
        # pipeline does not check the bytes a second time)
        assert row["detail"] == ("pad_nn_but_one failed: ValueError: cannot read "
                                 f"raw {bad_key} (truncated=False)")
        assert row["raw_key"] == bad_key and row["label_type"] == model.label_type()
        assert not row["truncated"] and not row["cached"]
        assert out["cached"].dtype == bool and out["truncated"].dtype == bool
        assert row[["preprocessed_key", "tensor_key", "prediction_key"]].isna().all()
        others = out.drop(bad_card)
        assert (others.loc[others["status"] == "ok", "cached"] == (run == "again")).all()
    # the lab's own pipeline on the same images: other keys all the way down, computed anew
    lab = dataset.apply_model(model).set_index("card_id")
    both = others.index[(others["status"] == "ok") & (lab.loc[others.index, "status"] == "ok")]
    assert len(both) >= 5 and not lab.loc[both, "cached"].any()
    for col in ("preprocessed_key", "tensor_key", "prediction_key"):
        assert set(lab.loc[both, col]).isdisjoint(others.loc[both, col]), col
    assert lab.loc[bad_card, "status"] == "ok"
    # a model with another input on the same preprocessed images: its own tensors are made
    spec = model.get_tensor_spec()
    other = _other_storage(spec)
    chain = dataset.derived.ensure(lab.loc[both, "raw_key"].tolist(), PADNeuralNetworkPipeline(),
                                   other)
    assert chain.failed == {} and chain.preprocessed == lab.loc[both, "preprocessed_key"].tolist()
    assert set(chain.tensors).isdisjoint(lab.loc[both, "tensor_key"])
    assert dataset.store.has(chain.tensors) == set(chain.tensors)
    dataset.close()


def test_a_tensor_key_names_the_model_input_it_was_made_for(tiny_tflite_path: Path) -> None:
    """The same preprocessed image made ready for two inputs (here: stored as uint8 or as
    float32) is two tensors; the preprocessed key does not depend on the model."""
    from pad_assets.layers.derived import DerivedLayers

    spec = PADTensorFlowAdapter(model_path=tiny_tflite_path,
                                labels=TINY_DRUG_LABELS).get_tensor_spec()
    raws = ["a" * 64, "b" * 64]
    pre, ten = DerivedLayers.keys_for(raws, PADNeuralNetworkPipeline(), spec)
    other = _other_storage(spec)
    assert other != spec
    pre2, ten2 = DerivedLayers.keys_for(raws, PADNeuralNetworkPipeline(), other)
    assert pre == pre2 and len(set(pre)) == 2
    assert ten is not None and ten2 is not None and set(ten).isdisjoint(ten2)
    assert DerivedLayers.keys_for(raws, PADNeuralNetworkPipeline(), None) == (pre, None)


class _MeanBrightness(ModelAdapter):
    """A researcher's own model in plain numpy: it declares float32 input and does not
    take the cache's uint8 storage, and it records what it was given."""

    name = "mean_brightness"

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[dict]]] = []

    def get_required_preprocessing(self) -> PADNeuralNetworkPipeline:
        return PADNeuralNetworkPipeline()

    def get_tensor_spec(self) -> TensorSpec:
        return TensorSpec((454, 454, 3), dtype="float32", storage_dtype="uint8")

    def prediction_context(self, card: dict) -> dict:
        return {"card": int(card["card_id"])}

    def predict_batch(self, batch, contexts):  # noqa: ANN001, ANN201
        self.batches.append((str(batch.dtype), list(contexts)))
        # in uint8, x * 2 would wrap around at 256: the cast is the layer's promise
        return [PredictionRecord(float((x * 2).mean()), label_type="concentration")
                for x in batch]

    def get_cache_signature(self) -> str:
        return self.signature_of("mean_brightness", 1)


def test_a_researchers_model_gets_its_declared_dtype_and_each_cards_context(
        emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    point_env_at(emulator, tmp_path / "cache", monkeypatch)
    dataset = CachedDataset(EdgeCases.DATASET)
    model = _MeanBrightness()
    out = dataset.apply_model(model).set_index("card_id")
    ok = out[out["status"] == "ok"]
    assert len(ok) >= 5 and {d for d, _ in model.batches} == {"float32"}
    given = [c for _, ctx in model.batches for c in ctx]
    assert sorted(c["card"] for c in given) == sorted(ok.index)
    for cid, row in ok.iterrows():
        tensor = dataset.store.get(row["tensor_key"]).astype(np.float64)
        assert row["prediction"] == pytest.approx((tensor * 2).mean()), cid
    # the result table keeps its types, and each new prediction is stored as one
    assert out["cached"].dtype == bool and out["truncated"].dtype == bool
    layers = {e["layer"] for e in dataset.store.index.items(ok["prediction_key"].tolist()).values()}
    assert layers == {"prediction"}
    dataset.close()
