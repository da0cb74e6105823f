"""B9 and B10: the whole lab in one Dagster deployment (issue 19).

B9: FHI2020_Stratified_Sampling at its published size (8,001 cards; ``--quick``: its first
200 rows) served by the emulator's full-registry world (published ids, splits and labels,
SYNTHETIC pixels rendered on request), models 16 (MobileNetV2 stand-in, realistic cost) and
18 (the real PLS coefficient file), empty cache, the lab's event-log storage
(``PadSqliteEventLogStorage``) in a temp DAGSTER_HOME:

* Dagster: ``refresh_manifests_job``, partitions added, then ``orchestration.backfill`` (batch
  runs of ``Sizes.lab_batch`` cards): wall, CPU, peak RSS of this process (``ru_maxrss``; the
  in-process emulator included), event-log bytes on disk, materializations.
* Second full run with nothing new: the images job over every partition as ONE run: wall
  and new image-partition materializations (target < 60 s and 0).
* The same work through ``CachedDataset`` on a fresh cache (``download_and_cache`` +
  ``apply_model`` 16 and 18), after the Dagster cache is deleted (disk: ~17 GB at 8,001).

B10: every registry dataset configured (``orchestration/lab_config.yaml``: 12 datasets, the
11 the emulator serves at full size): ``dagster definitions validate`` (subprocess), code
location import, adding every dataset's partitions (53,580 cards), a real
``dagster-webserver``'s GraphQL listing the partition statuses of the largest dataset's raw
asset (8,901 partitions, 1,000 materialized; median of 3), and a new-cards sensor tick on
it with 10 new cards.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .common import Row, fresh_dir, median, timed
from .context import Context

FHI2020 = "FHI2020_Stratified_Sampling"
LARGEST = "FHI360_FHI360-FHI2020_BalancedData_v1.0"
LOG_CONFIG = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
PLS_FILE = Path(__file__).resolve().parents[1] / "pad_assets_tests" / "data" / "real" / \
    "24fhiPLS1quantity.csv"


def pls_artifact() -> Any:
    """Model 18 as the emulator publishes it: the lab's real PLS coefficient file."""
    import csv
    import io

    from pad_assets.devtools.emulator import ModelArtifact

    data = PLS_FILE.read_bytes()
    drugs = [r[0] for r in csv.reader(io.StringIO(data.decode())) if r]
    record = {"id": 18, "name": "24fhiPLS1quantity", "type": "pls", "labels": [],
              "version": "1.0", "image_size": "730x1220", "drugs": drugs,
              "drugs_size": len(drugs), "weights": PLS_FILE.name,
              "description": "the lab's real PLS coefficients (benchmark)"}
    return ModelArtifact(record=record, filename=PLS_FILE.name, data=data)


def _lab_emulator(ctx: Context, **kwargs: Any) -> Any:
    from pad_assets.devtools.emulator import Emulator
    from pad_assets.devtools.emulator.full_registry import full_registry_config

    config = full_registry_config(models_provider=list,
                                          md5_cache_dir=ctx.out / "md5", **kwargs)
    emu = Emulator(config)
    emu.add_model(ctx.models[16].artifact())
    emu.add_model(pls_artifact())
    emu.start()
    return emu


def _pad(emu: Any, cache: Path) -> dict[str, Any]:
    from pad_assets.orchestration.io_manager import PadStoreIOManager
    from pad_assets.orchestration.resources import PadResource

    pad = PadResource(cache_dir=str(cache), api_url=emu.base_url,
                      registry_url=emu.registry_url, offline=False)
    return {"pad": pad, "pad_io_manager": PadStoreIOManager(pad=pad)}


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_b9(ctx: Context) -> list[Row]:
    import dagster as dg

    from pad_assets import CachedDataset, PADTensorFlowAdapter, PLSModelAdapter
    from pad_assets.models.runtime import clear_runner_cache
    from pad_assets.orchestration.assets import DatasetAssetKeys, partitions_for
    from pad_assets.orchestration.backfill import backfill
    from pad_assets.orchestration.definitions import build_definitions, images_job_name
    from pad_assets.orchestration.storage import instance_overrides
    from pad_assets.orchestration.sync import new_card_keys, range_tags
    from pad_assets.project_config import DatasetConfig, ModelConfig, ProjectConfig

    n = ctx.sizes.lab_cards
    ctx.log(f"B9: emulator, {FHI2020} first {n} rows (published ids; md5s rendered once, "
            "memoised in out/md5)")
    emu = _lab_emulator(ctx, md5=True, only={FHI2020}, limit=n)
    try:
        warm = timed(emu.warm)
        ctx.log(f"  manifest md5s ready in {warm.wall:.1f} s")
        ds = DatasetConfig(FHI2020)
        project = ProjectConfig((ds,), (
            ModelConfig("nn_drug", "pad_tflite", model_id=16, pipeline="pad_nn"),
            ModelConfig("pls_conc", "pls", model_id=18, pipeline="pad_pls")),
            batch_cards=ctx.sizes.lab_batch)
        keys = DatasetAssetKeys(ds, project.models)
        cache = fresh_dir(ctx.caches / "b9_dagster")
        home = fresh_dir(ctx.out / "dagster" / "b9")
        defs = build_definitions(project, resources=_pad(emu, cache))
        clear_runner_cache()
        rss0 = _peak_rss_mb()
        with dg.DagsterInstance.local_temp(tempdir=str(home),
                                           overrides=instance_overrides(home)) as instance:
            def first() -> Any:
                defs.resolve_job_def("refresh_manifests_job").execute_in_process(
                    instance=instance, run_config=LOG_CONFIG)
                with CachedDataset(FHI2020, settings=_pad(emu, cache)["pad"].settings(),
                                   progress=False) as d:
                    ids = d.manifest().card_ids
                instance.add_dynamic_partitions(partitions_for(ds).name,
                                                new_card_keys(instance, ds, ids))
                rep = backfill(ds, project=project, defs=defs, instance=instance,
                               progress=ctx.log, run_config=LOG_CONFIG)
                if not rep.ok:
                    raise RuntimeError(f"B9 backfill failed: {rep}")
                return rep

            full = timed(first)
            events = sum(len(instance.get_materialized_partitions(k)) for k in keys.image_keys)
            parts = list(instance.get_dynamic_partitions(partitions_for(ds).name))
            ctx.log(f"  Dagster full run {full.wall:.1f} s, {events} image partitions")
            second = timed(lambda: defs.resolve_job_def(images_job_name(ds.key))
                           .execute_in_process(instance=instance, run_config=LOG_CONFIG,
                                               tags=range_tags(parts)))
            new = len(second.value.get_asset_materialization_events())
            ctx.log(f"  second run {second.wall:.1f} s, {new} new materializations")
        log_bytes = _dir_bytes(home)
        rss = _peak_rss_mb()
        cache_bytes = _dir_bytes(cache)
        fresh_dir(cache)

        ctx.log(f"B9: the same work through CachedDataset ({n} cards, fresh cache)")
        cd_cache = fresh_dir(ctx.caches / "b9_cd")
        clear_runner_cache()

        def cd() -> Any:
            s = _pad(emu, cd_cache)["pad"].settings()
            with CachedDataset(FHI2020, settings=s, progress=False) as d:
                d.download_and_cache()
                d.apply_model(PADTensorFlowAdapter(model_id=16, settings=s))
                return d.apply_model(PLSModelAdapter(model_id=18, settings=s))

        cdt = timed(cd)
        fresh_dir(cd_cache)
        ctx.log(f"  CachedDataset {cdt.wall:.1f} s")
    finally:
        emu.stop()
    ratio = full.wall / cdt.wall
    details = {"cards": len(parts), "dagster_s": full.wall, "dagster_cpu_s": full.cpu,
               "cached_dataset_s": cdt.wall, "cached_dataset_cpu_s": cdt.cpu,
               "second_run_s": second.wall, "second_run_new": new,
               "peak_rss_mb": rss, "rss_before_mb": rss0, "event_log_bytes": log_bytes,
               "cache_bytes": cache_bytes, "image_partitions": events,
               "batches": full.value.batches, "batch_cards": project.batch_cards,
               "manifest_md5_s": warm.wall, "load": [full.load_before, cdt.load_after]}
    return [
        Row("B9", f"{FHI2020} {len(parts)} cards, models 16+18, empty cache, batch runs",
            f"Dagster {full.wall:.0f} s; CachedDataset {cdt.wall:.0f} s",
            "reported (B6 target 1.25x)", f"{ratio:.2f}x", None, details),
        Row("B9'", "second full run, nothing new",
            f"{second.wall:.1f} s, {new} new image-partition materializations",
            "< 60 s and 0", f"{second.wall / 60:.2f} of 60 s", second.wall < 60 and new == 0),
        Row("B9''", "peak RSS / event log / cache",
            f"{rss:.0f} MB peak (process); event log {log_bytes / 1e6:.1f} MB; "
            f"cache {cache_bytes / 1e9:.2f} GB", "reported", "-", None),
    ]


# ------------------------------------------------------------------------------------ B10
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _graphql(port: int, query: str, variables: dict[str, Any] | None = None) -> Any:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        doc = json.loads(resp.read())
    if doc.get("errors"):
        raise RuntimeError(f"GraphQL errors: {doc['errors']}")
    return doc["data"]


STATUSES = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
  ... on AssetNode { assetPartitionStatuses {
    ... on DefaultPartitionStatuses { materializedPartitions failedPartitions
                                      unmaterializedPartitions materializingPartitions } } } } }"""


def _timed_subprocess(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd}: exit {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, proc.stdout


def run_b10(ctx: Context) -> list[Row]:
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    from pad_assets import CachedDataset
    from pad_assets.devtools.demo import _prepare_home
    from pad_assets.orchestration.assets import DatasetAssetKeys, partitions_for
    from pad_assets.orchestration.definitions import build_definitions
    from pad_assets.orchestration.resources import PadResource
    from pad_assets.project_config import LAB_CONFIG, load_config

    emu = _lab_emulator(ctx, md5=False)
    home = _prepare_home(fresh_dir(ctx.out / "dagster" / "b10"))
    cache = fresh_dir(ctx.caches / "b10")
    env = {**os.environ, "DAGSTER_HOME": str(home), "PAD_ASSETS_CONFIG": str(LAB_CONFIG),
           "PAD_API_URL": emu.base_url, "PAD_REGISTRY_URL": emu.registry_url,
           "PAD_CACHE_DIR": str(cache), "DAGSTER_DISABLE_TELEMETRY": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    rows: list[Row] = []
    web = None
    try:
        ctx.log("B10: dagster definitions validate (12 datasets)")
        validate, _ = _timed_subprocess(
            ["dagster", "definitions", "validate", "-m", "pad_assets.definitions"], env, home)
        load, out = _timed_subprocess([sys.executable, "-c", (
            "import time; t = time.perf_counter(); import pad_assets.definitions as d; "
            "r = d.defs.get_repository_def(); r.get_all_jobs(); "
            "print(len(r.asset_graph.get_all_asset_keys()), time.perf_counter() - t)")],
            env, home)
        n_assets, load_inproc = out.split()
        ctx.log(f"  validate {validate:.1f} s; code location {float(load_inproc):.2f} s "
                f"in-process ({load:.1f} s with interpreter start), {n_assets} assets")

        project = load_config(LAB_CONFIG)
        settings = PadResource(cache_dir=str(cache), api_url=emu.base_url,
                               registry_url=emu.registry_url, offline=False).settings()
        served = {d.name for d in emu.catalog.config.datasets}
        total = 0
        t = time.perf_counter()
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
            for ds in project.datasets:
                if ds.name not in served:
                    continue
                with CachedDataset(ds.name, settings=settings, progress=False) as d:
                    ids = [str(c) for c in d.manifest(refresh=True).card_ids]
                instance.add_dynamic_partitions(partitions_for(ds).name, ids)
                total += len(ids)
            add_s = time.perf_counter() - t
            big = next(d for d in project.datasets if d.name == LARGEST)
            keys = DatasetAssetKeys(big, project.models)
            big_parts = instance.get_dynamic_partitions(partitions_for(big).name)
            t = time.perf_counter()
            for p in big_parts[:1000]:
                instance.report_runless_asset_event(dg.AssetMaterialization(keys.raw,
                                                                            partition=p))
            mat_s = time.perf_counter() - t
        ctx.log(f"  {total} partitions added in {add_s:.1f} s (manifests included); "
                f"1,000 raw materializations reported in {mat_s:.1f} s")

        port = _free_port()
        t = time.perf_counter()
        web = subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-m",
                                "pad_assets.definitions", "-h", "127.0.0.1", "-p", str(port)],
                               env=env, cwd=home, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
        while True:
            try:
                if _graphql(port, "{ assetNodes { id } }")["assetNodes"]:
                    break
            except OSError:
                time.sleep(0.5)
            if time.perf_counter() - t > 600:
                raise RuntimeError("dagster-webserver did not serve the graph in 600 s")
        web_s = time.perf_counter() - t
        times = []
        for _ in range(3):
            t = time.perf_counter()
            doc = _graphql(port, STATUSES, {"key": {"path": list(keys.raw.path)}})
            times.append(time.perf_counter() - t)
        st = doc["assetNodeOrError"]["assetPartitionStatuses"]
        n_mat = sum(1 for _ in st["materializedPartitions"])
        n_missing = len(st["unmaterializedPartitions"])
        gql = median(times)
        ctx.log(f"  webserver up in {web_s:.1f} s; statuses of {len(big_parts)} partitions "
                f"in {gql:.2f} s ({n_mat} materialized ranges/keys, {n_missing} missing)")

        pad = PadResource(cache_dir=str(cache), api_url=emu.base_url,
                          registry_url=emu.registry_url, offline=False)
        defs = build_definitions(project, resources={"pad": pad})
        sensor = defs.resolve_sensor_def(f"{big.key}_new_cards")
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
            boot = sensor(dg.build_sensor_context(instance=instance, resources={"pad": pad}))
            new_ids = [90_000_000 + i for i in range(10)]
            emu.add_cards(LARGEST, new_ids)
            t = time.perf_counter()
            tick = sensor(dg.build_sensor_context(instance=instance, cursor=boot.cursor,
                                                  resources={"pad": pad}))
            tick_s = time.perf_counter() - t
        requested = list(tick.dynamic_partitions_requests[0].partition_keys) \
            if tick.dynamic_partitions_requests else []
        exact = requested == [str(c) for c in new_ids]
        ctx.log(f"  sensor tick {tick_s:.2f} s, requested {len(requested)} (exact: {exact})")
    finally:
        if web is not None:
            os.killpg(web.pid, signal.SIGTERM)
            web.wait(timeout=60)
        emu.stop()
    details = {"validate_s": validate, "load_s": float(load_inproc), "load_with_python_s": load,
               "assets": int(n_assets), "partitions": total, "add_partitions_s": add_s,
               "webserver_up_s": web_s, "graphql_s": times, "largest_partitions": len(big_parts),
               "sensor_tick_s": tick_s, "sensor_requested": len(requested)}
    rows += [
        Row("B10", f"12 datasets, {total} partitions: definitions validate / load",
            f"validate {validate:.1f} s; load {float(load_inproc):.2f} s; webserver up "
            f"{web_s:.1f} s", "reported", "-", None, details),
        Row("B10'", f"GraphQL partition statuses, {len(big_parts)}-partition asset",
            f"{gql:.2f} s (median of 3)", "< 3 s", f"{gql / 3:.2f} of 3 s", gql < 3),
        Row("B10''", f"sensor tick, {len(big_parts)} cards + 10 new",
            f"{tick_s:.2f} s, requested {len(requested)}", "< 2 s, exactly the 10",
            f"{tick_s / 2:.2f} of 2 s", tick_s < 2 and exact),
    ]
    return rows
