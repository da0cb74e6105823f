"""Issue 5 acceptance: the Dagster graph over the real emulator, store and instance."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import h5py
import pytest

from pad_assets.dataset import CachedDataset
from pad_assets.devtools.demo_models import demo_model_artifacts
from pad_assets.devtools.emulator import DatasetSpec, Emulator, EmulatorConfig
from pad_assets.orchestration.assets import DatasetAssetKeys, partitions_for
from pad_assets.orchestration.definitions import (
    build_definitions,
    images_job_name,
)
from pad_assets.orchestration.resources import PadResource
from pad_assets.orchestration.sync import range_tags
from pad_assets.project_config import DatasetConfig, load_config
from pad_assets.settings import Settings
from pad_assets_tests.conftest import point_env_at

ROOT = Path(__file__).resolve().parents[2]
DS = "Dagster_DS"
FIRST = 50000


@pytest.fixture(scope="module")
def emulator(demo_cache_dir: Path):
    models_dir = demo_cache_dir
    config = EmulatorConfig(datasets=[DatasetSpec(DS, range(FIRST, FIRST + 12))],
                            models_provider=lambda: demo_model_artifacts(models_dir))
    with Emulator(config) as emu:
        yield emu


@pytest.fixture
def env(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    point_env_at(emulator, tmp_path / "cache", monkeypatch)
    return Settings.from_env()


def _mk(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _project():
    base = load_config()
    return type(base)((DatasetConfig(DS),), base.models)


def _add_all_partitions(instance: dg.DagsterInstance, settings: Settings) -> list[str]:
    ids = CachedDataset(DS, settings=settings, progress=False).manifest(refresh=True).card_ids
    ds = DatasetConfig(DS)
    keys = [str(c) for c in ids]
    instance.add_dynamic_partitions(partitions_for(ds).name, keys)
    return keys


def _all_assets(defs: dg.Definitions) -> list:
    return list(defs.assets or []) + list(defs.asset_checks or [])


def _resources():
    pad = PadResource()
    from pad_assets.orchestration.io_manager import PadStoreIOManager

    return {"pad": pad, "pad_io_manager": PadStoreIOManager(pad=pad)}


def _materialize_everything(instance: dg.DagsterInstance, settings: Settings):
    project = _project()
    defs = build_definitions(project)
    keys = DatasetAssetKeys(project.datasets[0], project.models)
    assets = _all_assets(defs)
    dg.materialize(assets, instance=instance, resources=_resources(), selection=[keys.manifest])
    parts = _add_all_partitions(instance, settings)
    res = dg.materialize(assets, instance=instance, resources=_resources(),
                         selection=keys.image_keys, tags=range_tags(parts))
    assert res.success
    return defs, keys, parts


def _partition_event(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records
    assert records, f"no materialization of {key.to_user_string()} partition {partition}"
    return records[0].asset_materialization


def test_whole_graph_materializes_and_lineage_leads_to_the_raw_md5(
        env: Settings, emulator: Emulator, tmp_path: Path) -> None:
    with dg.instance_for_test(temp_dir=_mk(tmp_path / "dh")) as instance:
        defs, keys, parts = _materialize_everything(instance, env)
        comp = dg.materialize(_all_assets(defs), instance=instance, resources=_resources(),
                              selection=[keys.comparison])
        value = comp.asset_value(keys.comparison)
        assert value["summary"] and Path(value["report_path"]).is_file()

        card = parts[3]
        model = _project().models[0]
        pred = _partition_event(instance, keys.prediction(model), card)
        meta = {k: v.value for k, v in pred.metadata.items()}
        assert pred.tags["dagster/data_version"] == meta["prediction_key"]
        # what every card of the run shares is the run's "shared facts" observation of the
        # asset, which the card's event links to
        run_id = pred_run_id(instance, keys, model, card)
        assert f"/runs/{run_id}" in meta["shared_facts"]
        (facts,) = [{k: v.value for k, v in r.asset_observation.metadata.items()}
                    for r in instance.fetch_observations(keys.prediction(model), limit=20).records
                    if r.run_id == run_id and r.partition_key is None]
        assert facts["model_signature"] and facts["model_record"]["weights_sha256"]
        assert facts["libraries"]["numpy"] and facts["pipeline_parameters"]
        assert facts["code_version"] == pred.tags["dagster/code_version"]
        assert "model_record" not in meta and "libraries" not in meta
        raw = _partition_event(instance, keys.raw, card)
        raw_meta = {k: v.value for k, v in raw.metadata.items()}
        assert raw.tags["dagster/data_version"] == meta["raw_key"] == raw_meta["raw_key"]
        manifest = CachedDataset(DS, settings=env, progress=False).manifest().rows
        md5 = manifest.set_index("card_id").loc[int(card), "md5"]
        assert raw_meta["md5"] == meta["raw_md5"] == md5
        pre = _partition_event(instance, keys.preprocessed(model.pipeline), card)
        assert {k: v.value for k, v in pre.metadata.items()}["raw_key"] == meta["raw_key"]
        # the CLI's lineage names the Dagster run behind the prediction
        from pad_assets.models.tflite import PADTensorFlowAdapter

        chain = CachedDataset(DS, settings=env, progress=False).lineage(
            int(card), PADTensorFlowAdapter(model_id=16, settings=env))
        assert chain["prediction"]["run_id"] == pred_run_id(instance, keys, model, card)
        # one event per partition per asset, each with its own metadata
        all_pred = instance.fetch_materializations(keys.prediction(model), limit=100).records
        assert len(all_pred) == len(parts)
        assert len({r.asset_materialization.tags["dagster/data_version"] for r in all_pred}) \
            == len({r.partition_key for r in all_pred})


def pred_run_id(instance: dg.DagsterInstance, keys: DatasetAssetKeys, model, card: str) -> str:
    return instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=keys.prediction(model), asset_partitions=[card]),
        limit=1).records[0].run_id


def test_dagster_and_cached_dataset_share_one_cache(env: Settings, emulator: Emulator,
                                                   tmp_path: Path) -> None:
    from pad_assets.models.pls import PLSModelAdapter
    from pad_assets.models.tflite import PADTensorFlowAdapter

    with dg.instance_for_test(temp_dir=_mk(tmp_path / "dh")) as instance:
        _materialize_everything(instance, env)
    ds = CachedDataset(DS, settings=env, progress=False)
    before = ds.store.index.query("SELECT COUNT(*) FROM items")[0][0]
    emulator.reset_stats()
    for adapter in (PADTensorFlowAdapter(model_id=16, settings=env),
                    PLSModelAdapter(model_id=18, settings=env)):
        res = ds.apply_model(adapter)
        assert res["cached"].all(), "CachedDataset recomputed what Dagster materialized"
    assert ds.store.index.query("SELECT COUNT(*) FROM items")[0][0] == before
    assert emulator.stats()["total"] == 0

    # the other way round: a notebook fills a fresh cache, Dagster computes nothing new
    other = Settings.from_env(cache_dir=tmp_path / "cache2")
    ds2 = CachedDataset(DS, settings=other, progress=False)
    ds2.download_and_cache()
    for adapter in (PADTensorFlowAdapter(model_id=16, settings=other),
                    PADTensorFlowAdapter(model_id=17, settings=other),
                    PLSModelAdapter(model_id=18, settings=other)):
        ds2.apply_model(adapter)
    layers_before = dict(ds2.store.index.query(
        "SELECT layer, COUNT(*) FROM items GROUP BY layer"))
    emulator.reset_stats()
    os.environ["PAD_CACHE_DIR"] = str(tmp_path / "cache2")
    with dg.instance_for_test(temp_dir=_mk(tmp_path / "dh2")) as instance:
        _materialize_everything(instance, other)
    layers_after = dict(ds2.store.index.query(
        "SELECT layer, COUNT(*) FROM items GROUP BY layer"))
    for layer in ("raw", "preprocessed", "tensor", "prediction"):
        assert layers_after[layer] == layers_before[layer], layer
    assert emulator.stats()["image"] == 0


def test_sensor_tick_adds_exactly_the_new_cards_and_their_run_downloads_them(
        env: Settings, emulator: Emulator, tmp_path: Path) -> None:
    project = _project()
    defs = build_definitions(project)
    ds = project.datasets[0]
    with dg.instance_for_test(temp_dir=_mk(tmp_path / "dh")) as instance:
        _materialize_everything(instance, env)
        sensor = defs.resolve_sensor_def(f"{ds.key}_new_cards")
        ctx = dg.build_sensor_context(instance=instance, resources={"pad": PadResource()})
        quiet = sensor(ctx)
        assert not quiet.run_requests and quiet.skip_reason

        new_ids = list(range(FIRST + 100, FIRST + 110))
        emulator.add_cards(DS, new_ids)
        ctx = dg.build_sensor_context(instance=instance, resources={"pad": PadResource()},
                                      cursor=quiet.cursor)
        result = sensor(ctx)
        (add,) = result.dynamic_partitions_requests
        assert sorted(add.partition_keys) == [str(c) for c in new_ids]
        (req,) = result.run_requests
        assert json.loads(result.cursor)["known"] == 22
        instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
        emulator.reset_stats()
        run = defs.resolve_job_def(images_job_name(ds.key)).execute_in_process(
            instance=instance, tags=dict(req.tags), asset_selection=req.asset_selection)
        assert run.success
        assert emulator.stats()["image"] == 10
        keys = DatasetAssetKeys(ds, project.models)
        preds = instance.fetch_materializations(keys.prediction(project.models[0]),
                                                limit=100).records
        assert {r.partition_key for r in preds} >= {str(c) for c in new_ids}


def test_checks_run_with_every_images_run_and_fail_on_a_corrupted_item(
        env: Settings, emulator: Emulator, tmp_path: Path) -> None:
    project = _project()
    ds = project.datasets[0]
    with dg.instance_for_test(temp_dir=_mk(tmp_path / "dh")) as instance:
        defs, keys, parts = _materialize_everything(instance, env)
        job = defs.resolve_job_def(images_job_name(ds.key))
        ok = job.execute_in_process(instance=instance, tags=range_tags(parts))
        evals = {(e.asset_key, e.check_name): e for e in ok.get_asset_check_evaluations()}
        # every check of every image layer ran in the images run itself (none skipped)
        assert len(evals) == 1 + 1 + 2 + 3, sorted(evals)
        assert evals[(keys.raw, "raw_integrity")].passed
        assert evals[(keys.raw, "raw_integrity")].metadata["checked"].value == len(parts)
        # a rerun over unchanged content records nothing new and says so
        assert not ok.get_asset_materialization_events()
        logs = " ".join(e.user_message for e in instance.all_logs(ok.run_id))
        assert f"0 new, {len(parts)} unchanged" in logs

        store = CachedDataset(DS, settings=env, progress=False).store
        raw_key = store.cards(DS)[int(parts[0])]["raw_key"]
        entry = store.entries([raw_key])[raw_key]
        store.close()
        with h5py.File(env.cache_dir / entry["path"], "r+", locking=False) as f:
            ds_ = f["blobs"][entry["blob"]]
            data = ds_[()]
            data[1000] ^= 0xFF
            ds_[...] = data
        bad = job.execute_in_process(instance=instance, raise_on_error=False,
                                     tags=range_tags(parts))
        evals = {e.check_name: e for e in bad.get_asset_check_evaluations()}
        assert evals["raw_integrity"].passed is False
        assert evals["raw_integrity"].severity == dg.AssetCheckSeverity.ERROR
        listed = evals["raw_integrity"].metadata["error_cards"].value
        assert "failed its checksum" in listed[parts[0]]


def test_definitions_validate() -> None:
    proc = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate",
                           "-w", "workspace.yaml"], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_webserver_serves_the_asset_graph(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml",
                             "-h", "127.0.0.1", "-p", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        query = json.dumps({"query": "{ assetNodes { assetKey { path } } }"}).encode()
        deadline = time.time() + 150
        nodes = None
        while time.time() < deadline and proc.poll() is None:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=query,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=10) as resp:
                    nodes = json.loads(resp.read())["data"]["assetNodes"]
                if nodes:
                    break
            except (OSError, KeyError, TypeError):
                pass
            time.sleep(1)
        paths = {"/".join(n["assetKey"]["path"]) for n in nodes or []}
        assert "FHI2020_Stratified_Sampling/prediction_nn_drug" in paths, paths
        assert "FHI2020_Stratified_Sampling/model_comparison" in paths
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
