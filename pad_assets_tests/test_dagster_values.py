"""Dagster outputs compared by value with what a notebook gets for the same cards.

Every prediction partition that the graph materialized, loaded back through the IO manager
(as ``model_comparison`` loads it), must be the prediction ``apply_model`` returns for that
partition's card: same content key, label, probability and status. A partition -> value
mapping shifted by one card anywhere (the batch step, ``record_partitions`` or
``load_partitions``) fails here on the first card; the other graph tests only check that
values exist. The notebook's ``compare_models(output_dir=)`` scores the same predictions.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from pad_assets.dataset import CachedDataset
from pad_assets.emulator import DatasetSpec, Emulator, EmulatorConfig
from pad_assets.models.demo_models import demo_model_artifacts
from pad_assets.orchestration.assets import DatasetAssetKeys, partitions_for
from pad_assets.orchestration.config import DatasetConfig, load_config
from pad_assets.orchestration.definitions import build_definitions
from pad_assets.orchestration.io_manager import PadStoreIOManager, asset_ref
from pad_assets.orchestration.resources import PadResource
from pad_assets.orchestration.sync import range_tags
from pad_assets.settings import Settings
from pad_assets_tests.conftest import point_env_at

DS = "Dagster_values"
IDS = list(range(50500, 50510))


@pytest.fixture(scope="module")
def emulator(demo_cache_dir: Path):
    config = EmulatorConfig(datasets=[DatasetSpec(DS, IDS)],
                            models_provider=lambda: demo_model_artifacts(demo_cache_dir))
    with Emulator(config) as emu:
        yield emu


def test_every_prediction_partition_is_apply_models_prediction_for_its_card(
        emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    point_env_at(emulator, tmp_path / "cache", monkeypatch)
    env = Settings.from_env()
    base = load_config()
    project = type(base)((DatasetConfig(DS),), base.models)
    defs = build_definitions(project)
    keys = DatasetAssetKeys(project.datasets[0], project.models)
    assets = list(defs.assets or []) + list(defs.asset_checks or [])
    pad = PadResource()
    resources = {"pad": pad, "pad_io_manager": PadStoreIOManager(pad=pad)}
    (tmp_path / "dh").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dh")) as instance:
        dg.materialize(assets, instance=instance, resources=resources,
                       selection=[keys.manifest])
        ds = CachedDataset(DS, settings=env, progress=False)
        parts = [str(c) for c in ds.manifest(refresh=True).card_ids]
        assert sorted(int(p) for p in parts) == IDS
        instance.add_dynamic_partitions(partitions_for(project.datasets[0]).name, parts)
        run = dg.materialize(assets, instance=instance, resources=resources,
                             selection=keys.image_keys, tags=range_tags(parts))
        assert run.success

    store = ds.store
    checked = 0
    frames = {}
    for m in project.models:
        key = keys.prediction(m)
        loaded = PadStoreIOManager.load_partitions(store, key, parts)
        targets = store.index.refs_for([asset_ref(key, p) for p in parts])
        emulator.reset_stats()
        notebook = ds.apply_model(m.build(env)).set_index("card_id")
        frames[m.name] = notebook
        assert notebook["cached"].all(), f"{m.name}: the notebook recomputed Dagster's work"
        assert emulator.stats()["total"] == 0
        assert sorted(loaded) == sorted(parts), f"{m.name}: partitions without a value"
        for p in parts:
            row = notebook.loc[int(p)]
            value = loaded[p]
            rec = value["record"]
            where = f"{m.name} partition {p}"
            assert targets[asset_ref(key, p)] == row["prediction_key"], where
            assert value["raw_key"] == row["raw_key"], where
            assert rec["status"] == row["status"], where
            if rec["prediction"] is None:
                assert pd.isna(row["prediction"]), where
            else:
                assert rec["prediction"] == row["prediction"], where
            if rec.get("probability") is not None:
                assert rec["probability"] == pytest.approx(float(row["probability"])), where
            checked += 1
    assert checked == len(parts) * len(project.models)
    # the cards are not all alike, so a shifted mapping cannot pass by luck
    drug_model = next(m for m in project.models if m.adapter == "pad_tflite")
    raw_keys = {loaded_value["raw_key"] for loaded_value in PadStoreIOManager.load_partitions(
        store, keys.prediction(drug_model), parts).values()}
    assert len(raw_keys) == len(parts)

    # the notebook's comparison over the same cards, written where asked, reads the same
    # predictions (all cached)
    emulator.reset_stats()
    out = tmp_path / "report"
    report = ds.compare_models([m.build(env) for m in project.models], output_dir=out)
    assert emulator.stats()["total"] == 0
    scored = {int(c) for c in report.card_ids}
    every_ok = set.intersection(*({int(c) for c in f.index[f["status"] == "ok"]}
                                  for f in frames.values()))
    assert scored and scored == every_ok
    written = {p.name for p in out.rglob("*") if p.is_file()}
    assert any(n.endswith(".md") for n in written) and any(n.endswith(".csv") for n in written)
    ds.close()
