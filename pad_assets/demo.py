"""The main job, end to end: ``pad-assets demo``.

Starts the built-in PAD API emulator (unless ``--external``: then PAD_API_URL and
PAD_REGISTRY_URL are used as set), and runs the Dagster graph into a persistent
``DAGSTER_HOME``: refresh the manifest, add new cards as partitions, materialize the image
layers of every card in one batched run, then the model comparison and integrity checks.
Afterwards ``dagster dev`` shows the runs, partitions and lineage. A second run is
incremental: only what changed is downloaded or computed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEMO_PORT = 18765


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _emulator(cards: int, external: bool, port: int) -> Iterator[Any]:
    if external:
        yield None
        return
    from .emulator import Emulator, EmulatorConfig

    # A fixed port keeps the registry URL (part of the manifest's cache ref) stable across
    # demo runs, so the second run is incremental; fall back to any free port.
    emu = Emulator(EmulatorConfig.with_cards(cards), port=port if _port_free(port) else 0)
    emu.start()
    os.environ["PAD_API_URL"] = emu.base_url
    os.environ["PAD_REGISTRY_URL"] = emu.registry_url
    try:
        yield emu
    finally:
        emu.stop()


def _log_config() -> dict[str, Any]:
    return {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run(dataset: str, cards: int, external: bool, port: int, dagster_home: Path,
        out: Any = sys.stdout) -> dict[str, Any]:
    """Run the main job; returns what it did (for tests and the printed summary)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").touch()  # default SQLite storage under DAGSTER_HOME
    warnings.filterwarnings("ignore", category=Warning, module="dagster")
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    os.environ["DAGSTER_HOME"] = str(dagster_home.resolve())
    t0 = time.time()
    with _emulator(cards, external, port) as emu:
        import dagster as dg

        from .orchestration.assets import partitions_for
        from .orchestration.config import DatasetConfig, load_config
        from .orchestration.definitions import (
            build_definitions,
            comparison_job_name,
            images_job_name,
        )
        from .orchestration.sync import new_card_keys, range_tags
        from .settings import Settings

        project = load_config()
        ds = next((d for d in project.datasets if d.name == dataset), DatasetConfig(dataset))
        project = type(project)((ds,), project.models)
        defs = build_definitions(project)
        settings = Settings.from_env()
        print(f"pad_assets demo: dataset {dataset}, cache {settings.cache_dir}, "
              f"DAGSTER_HOME {dagster_home}", file=out)
        if emu is not None:
            print(f"  emulator: {emu.base_url} ({cards} synthetic cards; demo models are built "
                  "offline on first use, ~1 min, then cached)", file=out)
        with dg.DagsterInstance.get() as instance:
            defs.resolve_job_def("refresh_manifests_job").execute_in_process(
                instance=instance, run_config=_log_config())
            from .dataset import CachedDataset

            dataset_obj = CachedDataset(dataset, settings=settings, progress=False)
            card_ids = dataset_obj.manifest().card_ids
            dataset_obj.close()
            new = new_card_keys(instance, ds, card_ids)
            if new:
                instance.add_dynamic_partitions(partitions_for(ds).name, new)
            keys = instance.get_dynamic_partitions(partitions_for(ds).name)
            print(f"  manifest: {len(card_ids)} cards, {len(new)} new partitions", file=out)
            stats0 = emu.stats() if emu else None
            t1 = time.time()
            images = defs.resolve_job_def(images_job_name(ds.key)).execute_in_process(
                instance=instance, tags=range_tags(keys), run_config=_log_config())
            t_images = time.time() - t1
            stats1 = emu.stats() if emu else None
            comparison = defs.resolve_job_def(comparison_job_name(ds.key)).execute_in_process(
                instance=instance, run_config=_log_config(), raise_on_error=True)
            value = comparison.asset_value([ds.key, "model_comparison"])
            checks = [(e.check_name, e.asset_key.to_user_string(), e.passed)
                      for e in comparison.get_asset_check_evaluations()]
        downloaded = (stats1["image"] - stats0["image"]) if emu else None
        print(f"  images run {images.run_id[:8]}: {len(keys)} cards x "
              f"{len(list(defs.resolve_job_def(images_job_name(ds.key)).asset_layer.selected_asset_keys))}"
              f" assets in {t_images:.1f} s"
              + (f", {downloaded} images downloaded" if downloaded is not None else ""), file=out)
        for name, key, passed in checks:
            print(f"  check {key}:{name}: {'passed' if passed else 'FAILED'}", file=out)
        print("\nModel comparison (identical cards for every model, item set "
              f"{value['item_set_hash'][:12]}):", file=out)
        import pandas as pd

        print(pd.DataFrame(value["summary"]).to_string(index=False), file=out)
        if value["pairwise"]:
            cols = [c for c in ("model_a", "model_b", "metric", "diff", "ci_low", "ci_high",
                                "mcnemar_p") if c in value["pairwise"][0]]
            print(pd.DataFrame(value["pairwise"])[cols].to_string(index=False), file=out)
        print(f"\nReport: {value['report_path']}", file=out)
        shapes = _registry_shapes(settings, out)
        print(f"Done in {time.time() - t0:.1f} s. Explore: DAGSTER_HOME={dagster_home.resolve()} "
              "dagster dev  (then open http://127.0.0.1:3000)", file=out)
        return {"images_run": images.run_id, "downloaded": downloaded, "partitions": len(keys),
                "checks": checks, "comparison": value, "registry_shapes": shapes}


def _registry_shapes(settings: Any, out: Any) -> dict[str, dict[str, Any]]:
    """The registry listing, and the published shape of each real-extract dataset."""
    from .dataset import CachedDataset

    listing = CachedDataset.list_datasets(settings=settings)
    print(f"\nRegistry: {len(listing)} dataset(s) (`pad-assets datasets`)", file=out)
    shapes = {}
    for name in listing["name"]:
        if not str(name).endswith("_extract"):
            continue
        ds = CachedDataset(str(name), settings=settings, progress=False)
        try:
            m = ds.manifest()
        finally:
            ds.close()
        shapes[str(name)] = {"rows": len(m.rows), "splits": m.split_counts,
                             "cards": len(m.card_ids), "leakage": m.leakage["count"]}
        kinds = "/".join(sorted({f["shape"] for f in m.files.values() if "shape" in f}))
        print(f"  {name}: {len(m.rows)} published rows {m.split_counts}, "
              f"{len(m.card_ids)} cards, leakage {m.leakage['count']}, shape {kinds}"
              + (f", extra columns {len(m.extra_columns)}" if m.extra_columns else ""),
              file=out)
    return shapes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pad-assets demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="FHI2020_Stratified_Sampling")
    p.add_argument("--cards", type=int, default=48, help="emulator dataset size (default 48)")
    p.add_argument("--external", action="store_true",
                   help="use PAD_API_URL / PAD_REGISTRY_URL as set instead of the emulator")
    p.add_argument("--port", type=int, default=DEMO_PORT, help="emulator port (0: any)")
    p.add_argument("--dagster-home", type=Path,
                   default=Path(os.environ.get("DAGSTER_HOME") or ".dagster_home"))
    args = p.parse_args(argv)
    run(args.dataset, args.cards, args.external, args.port, args.dagster_home)
    return 0
