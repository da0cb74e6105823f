"""Issue 19: the whole registry in one code location, a sensor tick that does not scan the
partitions, batch backfills that resume after a kill, the event-log storage the lab uses.

Real parts throughout: the emulator on 127.0.0.1 (``--full-registry`` world), real Dagster
instances on SQLite in a temp folder, a real subprocess killed with SIGKILL.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from pad_assets.dataset import CachedDataset
from pad_assets.devtools.demo_models import demo_model_artifacts
from pad_assets.devtools.emulator import DatasetSpec, Emulator, EmulatorConfig
from pad_assets.devtools.emulator.full_registry import FIXTURE, full_registry_config
from pad_assets.orchestration.assets import DatasetAssetKeys, partitions_for
from pad_assets.orchestration.backfill import BACKFILL_TAG, BATCH_TAG
from pad_assets.orchestration.definitions import build_definitions
from pad_assets.orchestration.resources import PadResource
from pad_assets.orchestration.storage import PadSqliteEventLogStorage
from pad_assets.project_config import LAB_CONFIG, DatasetConfig, load_config
from pad_assets.settings import Settings
from pad_assets_tests.conftest import point_env_at

ROOT = Path(__file__).resolve().parents[2]


def _published_rows() -> dict[str, Counter]:
    """Rows per dataset and file, read from the fixture independently of the emulator."""
    out: dict[str, Counter] = {}
    with gzip.open(FIXTURE, "rt", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            ds, fname = line.split(",", 2)[:2]
            out.setdefault(ds, Counter())[fname] += 1
    return out


def test_lab_config_defines_every_registry_dataset_with_its_own_partitions() -> None:
    project = load_config(LAB_CONFIG)
    published = _published_rows()
    names = [d.name for d in project.datasets]
    assert len(names) == 12 and set(published) <= set(names) and "FHI2022" in names
    defs = build_definitions(project)
    repo = defs.get_repository_def()  # what `dagster definitions validate` resolves
    part_names = set()
    for ds in project.datasets:
        keys = DatasetAssetKeys(ds, project.models)
        node = repo.asset_graph.get(keys.raw)
        assert node.partitions_def.name == f"{ds.key}_cards"
        part_names.add(node.partitions_def.name)
        assert repo.has_job(f"{ds.key}_images_job") and repo.has_sensor_def(f"{ds.key}_new_cards")
    assert len(part_names) == 12
    raw = repo.assets_defs_by_key[DatasetAssetKeys(project.datasets[0], project.models).raw]
    assert raw.backfill_policy == dg.BackfillPolicy.multi_run(project.batch_cards)


def test_full_registry_emulator_serves_each_dataset_as_published(tmp_path: Path) -> None:
    published = _published_rows()
    assert sum(sum(c.values()) for c in published.values()) == 55317
    with Emulator(full_registry_config(models_provider=dict)) as emu:
        s = Settings.from_env(cache_dir=tmp_path / "cache", api_url=emu.base_url,
                              registry_url=emu.registry_url, offline=False)
        for name in ("FHI2020_Stratified_Sampling", "FHI360_FHI360-FHI2020_BalancedData_v1.0",
                     "FHI2021"):
            ds = CachedDataset(name, settings=s, progress=False)
            try:
                m = ds.manifest(refresh=True)
            finally:
                ds.close()
            assert len(m.rows) == sum(published[name].values()), name
            by_file = {f: n for f, n in published[name].items()}
            if name == "FHI2020_Stratified_Sampling":
                assert m.split_counts == {"dev": 5923, "test": 2078}
                assert by_file == {"metadata_dev.csv": 5923, "metadata_test.csv": 2078}
            if name.startswith("FHI360_FHI360"):
                assert set(m.split_counts) == {"dev", "test", "val"}
                assert m.leakage["count"] > 0  # cross-split cards kept as published


def test_sensor_tick_requests_exactly_the_new_cards_without_scanning_partitions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, first, n = "Lab_Scale_DS", 100000, 3000
    spec = DatasetSpec(name, range(first, first + n), publish_md5=False)
    with Emulator(EmulatorConfig(datasets=[spec], models_provider=dict)) as emu:
        point_env_at(emu, tmp_path / "cache", monkeypatch)
        base = load_config()
        project = type(base)((DatasetConfig(name),), base.models)
        ds = project.datasets[0]
        defs = build_definitions(project)
        sensor = defs.resolve_sensor_def(f"{ds.key}_new_cards")
        (tmp_path / "dh").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "dh")) as instance:
            first_tick = sensor(dg.build_sensor_context(instance=instance,
                                                        resources={"pad": PadResource()}))
            (add,) = first_tick.dynamic_partitions_requests
            assert len(add.partition_keys) == n
            instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))

            new_ids = [first + n + 7 * i for i in range(10)]
            emu.add_cards(name, new_ids)
            calls: Counter[str] = Counter()
            real_has = instance.has_dynamic_partition

            def scan(*_a, **_k):
                raise AssertionError("a tick read every partition key")

            def has(pname: str, key: str) -> bool:
                calls["has"] += 1
                return real_has(pname, key)

            monkeypatch.setattr(instance, "get_dynamic_partitions", scan)
            monkeypatch.setattr(instance, "has_dynamic_partition", has)
            tick = sensor(dg.build_sensor_context(instance=instance, cursor=first_tick.cursor,
                                                  resources={"pad": PadResource()}))
            (add,) = tick.dynamic_partitions_requests
            assert list(add.partition_keys) == [str(c) for c in new_ids]
            (req,) = tick.run_requests
            assert req.tags["dagster/asset_partition_range_start"] == str(new_ids[0])
            assert req.tags["dagster/asset_partition_range_end"] == str(new_ids[-1])
            assert calls["has"] == 10  # one indexed lookup per candidate, none per partition
            assert json.loads(tick.cursor)["known"] == n + 10

            quiet = sensor(dg.build_sensor_context(instance=instance, cursor=tick.cursor,
                                                   resources={"pad": PadResource()}))
            assert not quiet.run_requests and "unchanged" in quiet.skip_reason.skip_message
            assert calls["has"] == 10


@pytest.fixture
def slow_emulator(demo_cache_dir: Path):
    config = EmulatorConfig(datasets=[DatasetSpec("Backfill_DS", range(60000, 60008))],
                            latency=0.15,
                            models_provider=lambda: demo_model_artifacts(demo_cache_dir))
    with Emulator(config) as emu:
        yield emu


def test_batch_backfill_resumes_after_a_kill_without_redoing_finished_batches(
        slow_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    point_env_at(slow_emulator, tmp_path / "cache", monkeypatch)
    home = tmp_path / "dh"
    home.mkdir()
    cfg = tmp_path / "lab.yaml"
    cfg.write_text("datasets:\n  - name: Backfill_DS\nmodels:\n"
                   "  - {name: nn_drug, adapter: pad_tflite, model_id: 16}\n"
                   "  - {name: pls_conc, adapter: pls, model_id: 18}\n"
                   "backfill:\n  batch_cards: 2\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "PAD_ASSETS_CONFIG": str(cfg),
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pad_assets.orchestration.backfill", "Backfill_DS",
           "--add-partitions"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    lines = []
    deadline = time.monotonic() + 300
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("batch 1/4 done"):
            proc.send_signal(signal.SIGKILL)
            break
        assert time.monotonic() < deadline, lines
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, lines

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        before = {r.tags[BATCH_TAG]: r.run_id for r in instance.get_runs()
                  if r.status == dg.DagsterRunStatus.SUCCESS and BATCH_TAG in r.tags}
    assert "1/4" in before and len(before) < 4, (before, lines)

    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(before)} batches already done" in again.stdout
    assert f"{4 - len(before)} batches run, {len(before)} skipped" in again.stdout
    project = load_config(cfg)
    ds = project.datasets[0]
    keys = DatasetAssetKeys(ds, project.models)
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        ok = [r for r in instance.get_runs() if r.status == dg.DagsterRunStatus.SUCCESS
              and BATCH_TAG in r.tags]
        per_batch = Counter(r.tags[BATCH_TAG] for r in ok)
        assert per_batch == {"1/4": 1, "2/4": 1, "3/4": 1, "4/4": 1}  # none run twice
        for batch, run_id in before.items():  # finished batches kept their run
            assert {r.run_id for r in ok if r.tags[BATCH_TAG] == batch} == {run_id}
        assert len({r.tags[BACKFILL_TAG] for r in ok}) == 1
        parts = set(instance.get_dynamic_partitions(partitions_for(ds).name))
        assert len(parts) == 8
        for key in keys.image_keys:
            assert instance.get_materialized_partitions(key) == parts, key


def test_pad_event_log_storage_is_read_by_the_stock_storage(tmp_path: Path) -> None:
    """Events written through the lab's storage (kept-open connections, one planned event
    per asset and run) are what the stock SQLite storage (the UI, the CLI) reads."""
    parts = dg.DynamicPartitionsDefinition(name="cards")
    keys = [dg.AssetKey(["ds", n]) for n in ("raw", "pred")]

    @dg.multi_asset(specs=[dg.AssetSpec(k, partitions_def=parts, skippable=True) for k in keys],
                    can_subset=True, partitions_def=parts)
    def images(context):  # noqa: ANN001, ANN202 - Dagster reads the annotation, strings fail
        for k in keys:
            for p in context.partition_keys:
                yield dg.AssetMaterialization(asset_key=k, partition=p, metadata={"card": p})

    job = dg.Definitions(assets=[images], jobs=[dg.define_asset_job(
        "j", selection=dg.AssetSelection.assets(*keys))]).resolve_job_def("j")
    runs_dir = str(tmp_path / "history" / "runs")
    overrides = {"event_log_storage": {"module": "pad_assets.orchestration.storage",
                                       "class": "PadSqliteEventLogStorage",
                                       "config": {"base_dir": runs_dir}}}
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=overrides) as instance:
        assert isinstance(instance.event_log_storage, PadSqliteEventLogStorage)
        pk = [str(i) for i in range(30)]
        instance.add_dynamic_partitions("cards", pk)
        res = job.execute_in_process(instance=instance, tags={
            "dagster/asset_partition_range_start": "0",
            "dagster/asset_partition_range_end": "29"})
        assert res.success
        planned = instance.get_records_for_run(
            res.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED).records
        assert len(planned) == 2  # one per asset for the run, not one per partition
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    stock = SqliteEventLogStorage(runs_dir)
    for k in keys:
        assert stock.get_materialized_partitions(k) == set(pk)
    assert len(stock.get_logs_for_run(res.run_id)) > 60


def test_per_partition_materializations_are_written_in_batches_seen_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step's per-partition materializations are held and written
    ``MATERIALIZATION_BATCH`` at a time, yet the step reads every one it yielded (as the
    image step does between layers), the run log keeps the order they happened in, and
    each asset's latest materialization is the last one yielded."""
    from pad_assets.orchestration import storage

    parts = dg.DynamicPartitionsDefinition(name="cards")
    keys = [dg.AssetKey(["ds", n]) for n in ("raw", "pred")]
    pk = [str(i) for i in range(150)]
    seen: list[int] = []

    @dg.multi_asset(specs=[dg.AssetSpec(k, partitions_def=parts, skippable=True) for k in keys],
                    can_subset=True, partitions_def=parts)
    def images(context):  # noqa: ANN001, ANN202 - Dagster reads the annotation, strings fail
        for k in keys:
            for p in context.partition_keys:
                yield dg.AssetMaterialization(asset_key=k, partition=p, metadata={"card": p})
            seen.append(len(context.instance.event_log_storage.get_latest_storage_id_by_partition(
                k, dg.DagsterEventType.ASSET_MATERIALIZATION, set(pk))))

    writes: list[int] = []
    real = PadSqliteEventLogStorage._write_materializations

    def spy(self, events):  # noqa: ANN001, ANN202
        writes.append(len(events))
        return real(self, events)

    monkeypatch.setattr(PadSqliteEventLogStorage, "_write_materializations", spy)
    job = dg.Definitions(assets=[images], jobs=[dg.define_asset_job(
        "j", selection=dg.AssetSelection.assets(*keys))]).resolve_job_def("j")
    runs_dir = str(tmp_path / "history" / "runs")
    overrides = {"event_log_storage": {"module": "pad_assets.orchestration.storage",
                                       "class": "PadSqliteEventLogStorage",
                                       "config": {"base_dir": runs_dir}}}
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=overrides) as instance:
        instance.add_dynamic_partitions("cards", pk)
        res = job.execute_in_process(instance=instance, tags={
            "dagster/asset_partition_range_start": pk[0],
            "dagster/asset_partition_range_end": pk[-1]})
        assert res.success
        assert seen == [len(pk), len(pk)]  # read back right after yielding
        assert sum(writes) == 2 * len(pk) and max(writes) == storage.MATERIALIZATION_BATCH
        assert len(writes) <= 2 * len(pk) // 10
        logs = instance.get_records_for_run(res.run_id).records
        kinds = [r.event_log_entry.dagster_event_type for r in logs]
        mats = [i for i, t in enumerate(kinds) if t == dg.DagsterEventType.ASSET_MATERIALIZATION]
        assert len(mats) == 2 * len(pk)
        assert max(mats) < kinds.index(dg.DagsterEventType.STEP_SUCCESS)
        order = [(r.event_log_entry.dagster_event.asset_key, r.event_log_entry.dagster_event.
                  partition) for r in logs if r.event_log_entry.dagster_event_type
                 == dg.DagsterEventType.ASSET_MATERIALIZATION]
        assert order == [(k, p) for k in keys for p in pk]
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    stock = SqliteEventLogStorage(runs_dir)
    for k in keys:
        assert stock.get_materialized_partitions(k) == set(pk)
        (rec,) = stock.get_asset_records([k])
        latest = rec.asset_entry.last_materialization_record
        assert latest.event_log_entry.dagster_event.partition == pk[-1]


@pytest.mark.parametrize("bad", ["0", "-5", "many", "true"])
def test_a_bad_backfill_batch_size_is_refused_naming_the_setting(tmp_path: Path, bad: str
                                                                  ) -> None:
    from pad_assets.errors import InvalidInputError

    cfg = tmp_path / "lab.yaml"
    cfg.write_text(f"datasets: [FHI2021]\nbackfill:\n  batch_cards: {bad}\n")
    with pytest.raises(InvalidInputError, match="backfill.batch_cards must be a positive"):
        load_config(cfg)


def test_batched_event_writes_land_in_one_transaction_and_read_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``DAGSTER_EVENT_BATCH_SIZE`` Dagster hands the storage a run's partition events
    as batches; ``store_event_batch`` writes each batch in one transaction per shard, and
    every event is then indexed as if written one by one."""
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "25")
    parts = dg.DynamicPartitionsDefinition(name="cards")

    @dg.asset(partitions_def=parts, backfill_policy=dg.BackfillPolicy.single_run())
    def layer(context):  # noqa: ANN001, ANN202 - Dagster reads the annotation, strings fail
        return dg.MaterializeResult(metadata={"n": len(context.partition_keys)})

    runs_dir = str(tmp_path / "history" / "runs")
    overrides = {"event_log_storage": {"module": "pad_assets.orchestration.storage",
                                       "class": "PadSqliteEventLogStorage",
                                       "config": {"base_dir": runs_dir}}}
    calls: list[int] = []
    real = PadSqliteEventLogStorage.store_event_batch

    def spy(self, events):  # noqa: ANN001, ANN202
        calls.append(len(events))
        return real(self, events)

    monkeypatch.setattr(PadSqliteEventLogStorage, "store_event_batch", spy)
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=overrides) as instance:
        pk = [f"c{i:03d}" for i in range(60)]
        instance.add_dynamic_partitions("cards", pk)
        res = dg.materialize([layer], instance=instance, tags={
            "dagster/asset_partition_range_start": pk[0],
            "dagster/asset_partition_range_end": pk[-1]})
        assert res.success
        assert sum(calls) >= 60 and max(calls) == 25  # batches, not one write per event
        assert instance.get_materialized_partitions(layer.key) == set(pk)
        rec = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=layer.key, asset_partitions=["c007"]),
            limit=1).records
        assert rec and rec[0].asset_materialization.metadata["n"].value == 60
