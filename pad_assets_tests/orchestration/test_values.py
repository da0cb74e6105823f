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
from pad_assets.devtools.demo_models import demo_model_artifacts
from pad_assets.devtools.emulator import DatasetSpec, Emulator, EmulatorConfig
from pad_assets.orchestration.assets import DatasetAssetKeys, partitions_for
from pad_assets.orchestration.definitions import build_definitions
from pad_assets.orchestration.io_manager import PadStoreIOManager, asset_ref
from pad_assets.orchestration.resources import PadResource
from pad_assets.orchestration.sync import range_tags
from pad_assets.project_config import DatasetConfig, load_config
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


def test_refresh_manifests_schedule_runs_its_job_and_the_new_cards_are_listed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The nightly schedule, as the daemon would tick it, then its job: the cached manifest
    of every configured dataset is replaced by the server's current one."""
    name = "Dagster_refresh"
    config = EmulatorConfig(datasets=[DatasetSpec(name, range(50600, 50604))],
                            models_provider=lambda: [])
    with Emulator(config) as emu:
        point_env_at(emu, tmp_path / "cache", monkeypatch)
        env = Settings.from_env()
        base = load_config()
        defs = build_definitions(type(base)((DatasetConfig(name),), base.models))
        schedule = defs.resolve_schedule_def("refresh_manifests")
        assert schedule.cron_schedule == "0 2 * * *"
        (tmp_path / "dh").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "dh")) as instance:
            ctx = dg.build_schedule_context(instance=instance)
            requests = schedule.evaluate_tick(ctx).run_requests
            assert len(requests) == 1 and schedule.job_name == "refresh_manifests_job"
            job = defs.resolve_job_def(schedule.job_name)
            assert job.execute_in_process(instance=instance, tags=requests[0].tags).success
            cached = CachedDataset(name, settings=env, progress=False)
            assert sorted(cached.manifest().card_ids) == list(range(50600, 50604))

            emu.add_cards(name, [50610, 50611])
            emu.reset_stats()
            assert job.execute_in_process(instance=instance).success
            assert emu.stats()["registry"] >= 1 and emu.stats()["image"] == 0
            again = CachedDataset(name, settings=env, progress=False)
            assert sorted(again.manifest().card_ids) == [50600, 50601, 50602, 50603, 50610,
                                                         50611]
            cached.close()
            again.close()
