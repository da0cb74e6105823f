"""B6: the Dagster graph vs the same work through ``CachedDataset``, beside Dagster's floor.

Measurements in one process, each on its own fresh cache and fresh Dagster instance
(``DagsterInstance.local_temp``: SQLite run/event-log/schedule storage in a temp folder, with
the event log the lab's ``dagster.yaml`` configures, ``PadSqliteEventLogStorage``: Dagster's
SQLite event log with kept-open connections and one planned event per asset and run), in-process
execution like ``pad-assets demo``:

* Dagster: the project's own ``build_definitions`` (one dataset, model id 16 = the
  MobileNetV2 stand-in): ``refresh_manifests_job``, then the images job over every partition
  as ONE run (range tags). Adding the dynamic partitions is
  timed separately (it is the sensor's work, not the run's).
* CachedDataset: ``download_and_cache()`` + ``apply_model(model 16)`` on the same cards.
* Floor: the same asset keys, partitions definition, specs, jobs and run shape, whose bodies
  do no work: the manifest asset returns its recorded metadata and the images step re-yields
  the exact ``AssetMaterialization`` events (same partitions, metadata and data-version tags)
  that the real run recorded. What is left is Dagster's own bookkeeping. Measured on the
  lab's storage, on Dagster's stock SQLite storage and in memory.

Targets (issue 19): Dagster <= 1.25 x CachedDataset; floor <= 5 ms per asset-partition.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .common import Row, fresh_dir, timed
from .context import Context
from .world import FIRST_CARD, settings_for

LOG_CONFIG = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def _project(name: str) -> Any:
    from pad_assets.project_config import DatasetConfig, ModelConfig, ProjectConfig

    return ProjectConfig((DatasetConfig(name),),
                         (ModelConfig("nn_drug", "pad_tflite", model_id=16, pipeline="pad_nn"),))


def _assets_def(defs: Any, key: Any) -> Any:
    for attr in ("resolve_assets_def", "get_assets_def"):
        fn = getattr(defs, attr, None)
        if fn is not None:
            return fn(key)
    raise RuntimeError("cannot find the assets definition")


def floor_definitions(real_defs: Any, project: Any, manifest_meta: dict[str, Any],
                      events: dict[Any, list[Any]]) -> Any:
    """The real graph's keys, specs, partitions and jobs, with bodies that do no work."""
    import dagster as dg

    from pad_assets.orchestration.assets import DatasetAssetKeys, partitions_for
    from pad_assets.orchestration.definitions import images_job_name

    ds = project.datasets[0]
    keys = DatasetAssetKeys(ds, project.models)
    parts = partitions_for(ds)
    real_images = _assets_def(real_defs, keys.raw)

    # No annotations on the asset functions: Dagster resolves them at definition time and
    # this module's ``from __future__ import annotations`` makes them unresolvable strings.
    @dg.asset(key=keys.manifest, group_name=ds.key, code_version="1")
    def manifest():  # noqa: ANN202
        return dg.MaterializeResult(metadata=manifest_meta)

    @dg.multi_asset(name=f"{ds.key}_images", specs=list(real_images.specs), can_subset=True,
                    partitions_def=parts, backfill_policy=dg.BackfillPolicy.single_run())
    def images(context):  # noqa: ANN001, ANN202
        wanted = set(context.partition_keys)
        selected = set(context.selected_asset_keys)
        for key in keys.image_keys:
            if key not in selected:
                continue
            for ev in events[key]:
                if ev.partition in wanted:
                    yield ev

    jobs = [dg.define_asset_job("refresh_manifests_job",
                                selection=dg.AssetSelection.assets(keys.manifest)),
            dg.define_asset_job(images_job_name(ds.key),
                                selection=dg.AssetSelection.assets(*keys.image_keys))]
    return dg.Definitions(assets=[manifest, images], jobs=jobs)


def _instance(home: Path, lab: bool = True) -> Any:
    import dagster as dg

    from pad_assets.orchestration.storage import instance_overrides

    return dg.DagsterInstance.local_temp(tempdir=str(home),
                                         overrides=instance_overrides(home) if lab else None)


def _run_graph(defs: Any, instance: Any, project: Any, part_keys: list[str]) -> dict[str, Any]:
    from pad_assets.orchestration.assets import partitions_for
    from pad_assets.orchestration.definitions import images_job_name
    from pad_assets.orchestration.sync import range_tags

    ds = project.datasets[0]
    add = timed(lambda: instance.add_dynamic_partitions(partitions_for(ds).name, part_keys))
    man = timed(lambda: defs.resolve_job_def("refresh_manifests_job").execute_in_process(
        instance=instance, run_config=LOG_CONFIG))
    img = timed(lambda: defs.resolve_job_def(images_job_name(ds.key)).execute_in_process(
        instance=instance, tags=range_tags(part_keys), run_config=LOG_CONFIG))
    if not (man.value.success and img.value.success):
        raise RuntimeError("a Dagster run failed")
    return {"add_partitions_s": add.wall, "manifest_job_s": man.wall, "images_job_s": img.wall,
            "total_s": man.wall + img.wall, "cpu_s": man.cpu + img.cpu,
            "load": [man.load_before, img.load_after], "images_run_id": img.value.run_id}


def _recorded_events(instance: Any, project: Any, n: int) -> tuple[dict[str, Any], dict]:
    import dagster as dg

    from pad_assets.orchestration.assets import DatasetAssetKeys

    keys = DatasetAssetKeys(project.datasets[0], project.models)
    events: dict[Any, list[Any]] = {}
    for key in keys.image_keys:
        recs = instance.fetch_materializations(key, limit=n + 10, ascending=True).records
        events[key] = [dg.AssetMaterialization(
            asset_key=key, partition=m.partition, metadata=m.metadata,
            tags={"dagster/data_version": (m.tags or {}).get("dagster/data_version", "")})
            for m in (r.asset_materialization for r in recs) if m is not None]
    man = instance.fetch_materializations(keys.manifest, limit=1).records
    manifest_meta = dict(man[0].asset_materialization.metadata) if man else {}
    return manifest_meta, events


def run_b6(ctx: Context) -> list[Row]:
    import dagster as dg

    from pad_assets import CachedDataset, PADTensorFlowAdapter
    from pad_assets.models.runtime import clear_runner_cache
    from pad_assets.orchestration.definitions import build_definitions
    from pad_assets.orchestration.io_manager import PadStoreIOManager
    from pad_assets.orchestration.resources import PadResource

    warnings.filterwarnings("ignore", module="dagster")
    warnings.filterwarnings("ignore", message=".*beta.*")
    n = ctx.sizes.dagster_cards
    name = ctx.dataset_for(n)
    project = _project(name)
    part_keys = [str(c) for c in range(FIRST_CARD, FIRST_CARD + n)]
    n_assets = 4
    # Warm-up, not timed: the first in-process run pays Dagster's lazy imports, SQLite schema
    # creation code paths and LiteRT's import; 2 partitions of the real graph, thrown away.
    ctx.log("B6 warm-up: the real graph on 2 partitions (not timed)")
    wcache = fresh_dir(ctx.caches / "b6_warmup")
    wpad = PadResource(cache_dir=str(wcache), api_url=ctx.emu.base_url,
                       registry_url=ctx.emu.registry_url, offline=False)
    wdefs = build_definitions(project, resources={"pad": wpad,
                                                  "pad_io_manager": PadStoreIOManager(pad=wpad)})
    with _instance(fresh_dir(ctx.out / "dagster" / "warmup")) as instance:
        _run_graph(wdefs, instance, project, part_keys[:2])
    fresh_dir(wcache)
    reps = []
    for r in range(ctx.sizes.dagster_reps):
        # ---- Dagster, the project's graph
        ctx.log(f"B6 rep {r + 1}: Dagster images job over {n} partitions (SQLite, temp dir)")
        cache = fresh_dir(ctx.caches / "b6_dagster")
        home = fresh_dir(ctx.out / "dagster" / "real")
        pad = PadResource(cache_dir=str(cache), api_url=ctx.emu.base_url,
                          registry_url=ctx.emu.registry_url, offline=False)
        defs = build_definitions(project, resources={"pad": pad,
                                                     "pad_io_manager": PadStoreIOManager(pad=pad)})
        clear_runner_cache()
        with _instance(home) as instance:
            real = _run_graph(defs, instance, project, part_keys)
            manifest_meta, events = _recorded_events(instance, project, n)
        n_events = sum(len(v) for v in events.values())
        ctx.log(f"  Dagster {real['total_s']:.1f} s ({n_events} materializations)")

        # ---- the same work through CachedDataset
        ctx.log(f"B6 rep {r + 1}: CachedDataset download_and_cache + apply_model, {n} cards")
        cd_cache = fresh_dir(ctx.caches / "b6_cd")
        clear_runner_cache()

        def cd(cd_cache: Path = cd_cache) -> Any:
            s = settings_for(ctx.emu, cd_cache)
            d = CachedDataset(name, settings=s, progress=False)
            try:
                d.download_and_cache()
                return d.apply_model(PADTensorFlowAdapter(model_id=16, settings=s))
            finally:
                d.close()

        cdt = timed(cd)
        ctx.log(f"  CachedDataset {cdt.wall:.1f} s")

        # ---- the floor: same graph, empty bodies, same events
        ctx.log(f"B6 rep {r + 1}: Dagster floor (same graph and events, empty bodies)")
        fdefs = floor_definitions(defs, project, manifest_meta, events)
        fhome = fresh_dir(ctx.out / "dagster" / "floor")
        with _instance(fhome) as instance:
            floor = _run_graph(fdefs, instance, project, part_keys)
            _, fevents = _recorded_events(instance, project, n)
        f_events = sum(len(v) for v in fevents.values())
        ctx.log(f"  floor {floor['total_s']:.1f} s ({f_events} materializations)")
        ctx.log(f"B6 rep {r + 1}: floor again on Dagster's stock SQLite event log")
        with _instance(fresh_dir(ctx.out / "dagster" / "floor_stock"), lab=False) as instance:
            floor_stock = _run_graph(fdefs, instance, project, part_keys)
        ctx.log(f"  stock-SQLite floor {floor_stock['total_s']:.1f} s")

        # ---- the floor on an in-memory instance, for what storage changes (info)
        ctx.log(f"B6 rep {r + 1}: floor again on DagsterInstance.ephemeral() (in-memory)")
        with dg.DagsterInstance.ephemeral() as instance:
            floor_mem = _run_graph(fdefs, instance, project, part_keys)
        ctx.log(f"  in-memory floor {floor_mem['total_s']:.1f} s")
        if not ctx.keep_caches:
            for p in (cache, cd_cache):
                fresh_dir(p)
        reps.append({"dagster": real, "cached_dataset_s": cdt.wall, "cached_dataset_cpu_s": cdt.cpu,
                     "cd_load": [cdt.load_before, cdt.load_after], "floor": floor,
                     "floor_in_memory": floor_mem, "floor_stock_sqlite": floor_stock,
                     "events_real": n_events,
                     "events_floor": f_events,
                     "ok_cards": int((cdt.value["status"] == "ok").sum())})

    from .common import median

    d = median([x["dagster"]["total_s"] for x in reps])
    c = median([x["cached_dataset_s"] for x in reps])
    f = median([x["floor"]["total_s"] for x in reps])

    def per(key: str) -> float:
        return median([x[key]["images_job_s"] for x in reps]) / (n * n_assets) * 1e3

    fl, fs, fm = per("floor"), per("floor_stock_sqlite"), per("floor_in_memory")
    rows = [
        Row("B6", f"Dagster graph, {n} cards, 1 run (lab SQLite event log)",
            f"Dagster {d:.1f} s; CachedDataset {c:.1f} s; floor {f:.1f} s",
            "D <= 1.25 x CD", f"{d / c:.2f}x", d <= 1.25 * c,
            {"reps": reps, "n_assets_per_partition": n_assets}),
        Row("B6'", "Dagster floor per asset-partition (lab SQLite event log)",
            f"{fl:.1f} ms; Dagster's stock SQLite {fs:.1f} ms; in-memory {fm:.1f} ms",
            "<= 5 ms", f"{fl / 5:.2f} of 5 ms", fl <= 5.0),
        Row("B6''", "Dagster overhead beyond CD + floor",
            f"{d - c - f:+.1f} s ({(d - c - f) / n * 1e3:+.1f} ms/card)", "reported", "-", None),
    ]
    return rows
