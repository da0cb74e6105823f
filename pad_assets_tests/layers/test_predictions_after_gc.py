"""Cached results stay usable after ``gc``: a prediction is served from its keys alone.

Real emulator over HTTP serving a tiny TF Lite model, real HDF5 shards, a real ``gc`` to a
budget below the raw layer. The counters are the emulator's own (every request it
answered) and the adapter's ``predict_batch`` calls (every inference).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pad_assets import maintenance as mt
from pad_assets.dataset import CachedDataset
from pad_assets.devtools.emulator import DatasetSpec, Emulator, ModelArtifact
from pad_assets.errors import OfflineError
from pad_assets.models import PADTensorFlowAdapter
from pad_assets_tests.conftest import make_config, point_env_at
from pad_assets_tests.model_fixtures import TINY_DRUG_LABELS

pytest_plugins = ["pad_assets_tests.model_fixtures"]

DATASET = "gc_semantics"
CARDS = list(range(53000, 53012))
MODEL_ID = 91


@pytest.fixture(scope="module")
def emu(tiny_tflite_path: Path) -> Iterator[Emulator]:
    models = [ModelArtifact({"id": MODEL_ID, "name": "tiny_nn", "type": "tf_lite",
                             "labels": TINY_DRUG_LABELS}, "tiny.tflite",
                            tiny_tflite_path.read_bytes())]
    with Emulator(make_config([DatasetSpec(DATASET, CARDS)], models=models)) as e:
        yield e


def _counting(adapter: Any) -> list[int]:
    """Count the adapter's inferences (cards passed to ``predict_batch``)."""
    calls: list[int] = []
    real = adapter.predict_batch

    def predict_batch(batch: Any, contexts: Any) -> Any:
        calls.append(len(batch))
        return real(batch, contexts)

    adapter.predict_batch = predict_batch
    return calls


def test_gc_below_the_raw_layer_keeps_cached_predictions_servable(
        emu: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    point_env_at(emu, cache, monkeypatch)
    ds = CachedDataset(DATASET, progress=False)
    first = ds.apply_model(PADTensorFlowAdapter(model_id=MODEL_ID))
    assert (first["status"] == "ok").all() and not first["cached"].any()

    st = mt.stats(ds.store)
    raw_bytes = st.layers["raw"]["bytes"]
    budget = raw_bytes // 3  # below the raw layer alone: most images must go
    rep = mt.gc(ds.store, max_size=budget, grace_seconds=0.0)
    assert rep.evicted.get("raw", 0) >= len(CARDS) // 2, rep
    assert rep.cards_marked_evicted == rep.evicted["raw"]
    ds.close()

    for offline in (False, True):
        if offline:
            monkeypatch.setenv("PAD_OFFLINE", "1")
        emu.reset_stats()
        ds = CachedDataset(DATASET, progress=False)
        model = PADTensorFlowAdapter(model_id=MODEL_ID)
        calls = _counting(model)
        again = ds.apply_model(model)
        assert emu.stats()["total"] == 0, (offline, emu.stats())
        assert calls == [], (offline, calls)
        assert again["cached"].all()
        cols = ["card_id", "prediction", "probability", "status", "raw_key", "prediction_key"]
        assert again[cols].equals(first[cols]), offline
        ds.close()
    # nothing was downloaded back: the cache stays within the budget gc met
    ds = CachedDataset(DATASET, progress=False)
    assert mt.stats(ds.store).layers.get("raw", {}).get("bytes", 0) <= budget
    ds.close()


def test_after_gc_only_cards_without_a_cached_prediction_need_their_image(
        emu: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model never applied needs the evicted images: offline names exactly those cards;
    online downloads them and runs inference on every card."""
    cache = tmp_path / "cache"
    point_env_at(emu, cache, monkeypatch)
    ds = CachedDataset(DATASET, progress=False)
    ds.apply_model(PADTensorFlowAdapter(model_id=MODEL_ID), card_ids=CARDS[:6])
    ds.download_and_cache()
    rep = mt.gc(ds.store, max_size=1, grace_seconds=0.0)  # evict every image it can
    evicted = [c for c, v in ds.store.cards(DATASET).items() if v["status"] == "evicted"]
    assert len(evicted) == len(CARDS), rep
    ds.close()

    monkeypatch.setenv("PAD_OFFLINE", "1")
    ds = CachedDataset(DATASET, progress=False)
    with pytest.raises(OfflineError) as err:
        ds.apply_model(PADTensorFlowAdapter(model_id=MODEL_ID))
    msg = str(err.value)
    assert all(f"card {c}" in msg for c in CARDS[6:]), msg
    assert not any(f"card {c} " in msg for c in CARDS[:6]), msg
    ds.close()

    monkeypatch.delenv("PAD_OFFLINE")
    emu.reset_stats()
    ds = CachedDataset(DATASET, progress=False)
    model = PADTensorFlowAdapter(model_id=MODEL_ID)
    calls = _counting(model)
    res = ds.apply_model(model)
    assert emu.stats()["image"] == len(CARDS) - 6
    assert sum(calls) == len(CARDS) - 6
    assert res.set_index("card_id").loc[CARDS[:6], "cached"].all()
    assert (res["status"] == "ok").all()
    ds.close()


def test_inference_path_never_imports_tensorflow(tiny_tflite_path: Path) -> None:
    """A cold apply_model of a TF Lite model (download, preprocess, infer) in a fresh
    process runs on ai-edge-litert: TensorFlow is never imported."""
    code = (
        "import sys, json, tempfile\n"
        "from pad_assets.devtools.emulator import DatasetSpec, Emulator\n"
        "from pad_assets_tests.conftest import make_config\n"
        "from pad_assets.dataset import CachedDataset\n"
        "from pad_assets.models import PADTensorFlowAdapter\n"
        "from pad_assets.settings import Settings\n"
        "cfg = make_config([DatasetSpec('no_tf', [53100, 53101, 53102])], models=[])\n"
        "with Emulator(cfg) as emu, tempfile.TemporaryDirectory() as d:\n"
        "    s = Settings(cache_dir=d, api_url=emu.base_url, registry_url=emu.registry_url)\n"
        "    ds = CachedDataset('no_tf', settings=s, progress=False)\n"
        "    m = PADTensorFlowAdapter(model_path=sys.argv[1], labels=sys.argv[2].split(','))\n"
        "    res = ds.apply_model(m)\n"
        "    ds.close()\n"
        "print(json.dumps({'ok': int((res['status'] == 'ok').sum()),\n"
        "                  'tf': 'tensorflow' in sys.modules,\n"
        "                  'litert': 'ai_edge_litert' in sys.modules}))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code, str(tiny_tflite_path),
                          ",".join(TINY_DRUG_LABELS)], capture_output=True, text=True,
                         cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"ok": 3, "tf": False, "litert": True}
