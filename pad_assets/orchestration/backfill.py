"""A full-dataset backfill as batch runs that a lab can watch, and resume after a kill.

``python -m pad_assets.orchestration.backfill DATASET [--batch-cards N]`` (or
``backfill_in_batches`` from Python) splits the dataset's partitions (card ids, in the order
they were added) into consecutive batches of ``batch_cards`` and runs the images job once
per batch (one step per batch: the cards' four layers and their checks). Each run carries
the tags ``pad/backfill`` (an id derived from the dataset, the batch size and the
partition keys) and ``pad/batch`` (``i/n``), so the UI's Runs page filtered by the backfill
tag shows the progress, and this command prints a line per batch (cards, new
materializations, seconds, ETA).

Resume: run the same command again. Batches whose run SUCCEEDED (found by tag: one runs
query, no per-partition scan) are skipped; a batch whose process was killed left a run that
is not SUCCESS and is run again (its cards already in the content cache are looked up, not
recomputed; unchanged partitions get no new event).

Dagster's own backfills (the UI's "Materialize all") use the same batch size through the
image step's ``BackfillPolicy.multi_run(batch_cards)``; this command is for a terminal, a
cron job or a benchmark, without the daemon.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from ..project_config import DatasetConfig, ProjectConfig
from .assets import partitions_for
from .sync import range_tags

BACKFILL_TAG = "pad/backfill"
BATCH_TAG = "pad/batch"


@dataclass
class BackfillReport:
    backfill_id: str
    batches: int
    skipped: list[int] = field(default_factory=list)  # 1-based batch numbers already done
    ran: list[int] = field(default_factory=list)
    run_ids: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0


def backfill_id(ds: DatasetConfig, batch_cards: int, keys: Sequence[str]) -> str:
    digest = hashlib.sha256("\n".join([ds.key, str(batch_cards), *keys]).encode()).hexdigest()
    return f"{ds.key}-{digest[:12]}"


def batches_of(keys: Sequence[str], batch_cards: int) -> list[list[str]]:
    return [list(keys[i:i + batch_cards]) for i in range(0, len(keys), batch_cards)]


def finished_batches(instance: dg.DagsterInstance, bid: str) -> set[int]:
    """Batch numbers of this backfill whose run succeeded (one query over run tags)."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_TAG: bid},
                                                   statuses=[dg.DagsterRunStatus.SUCCESS]))
    return {int(r.tags[BATCH_TAG].split("/")[0]) for r in runs if BATCH_TAG in r.tags}


def backfill_in_batches(defs: dg.Definitions, instance: dg.DagsterInstance,
                        project: ProjectConfig, ds: DatasetConfig,
                        batch_cards: int | None = None,
                        progress: Callable[[str], None] | None = None,
                        run_config: dict[str, Any] | None = None,
                        tags: dict[str, str] | None = None) -> BackfillReport:
    """Materialize every partition of ``ds``'s image layers, batch by batch (see module)."""
    from .definitions import images_job_name

    say = progress or (lambda _line: None)
    size = batch_cards or project.batch_cards
    keys = list(instance.get_dynamic_partitions(partitions_for(ds).name))
    bid = backfill_id(ds, size, keys)
    plan = batches_of(keys, size)
    done = finished_batches(instance, bid)
    report = BackfillReport(bid, len(plan), skipped=sorted(done))
    job = defs.resolve_job_def(images_job_name(ds.key))
    say(f"backfill {bid}: {len(keys)} cards of {ds.name} in {len(plan)} batches of "
        f"{size}; {len(done)} batches already done")
    t0 = time.perf_counter()
    cards_done = sum(len(plan[i - 1]) for i in done)
    ran_cards = 0
    for i, batch in enumerate(plan, start=1):
        if i in done:
            continue
        t = time.perf_counter()
        result = job.execute_in_process(
            instance=instance, run_config=run_config,
            tags={**(tags or {}), **range_tags(batch), BACKFILL_TAG: bid,
                  BATCH_TAG: f"{i}/{len(plan)}"}, raise_on_error=True)
        report.ran.append(i)
        report.run_ids[i] = result.run_id
        cards_done += len(batch)
        ran_cards += len(batch)
        elapsed = time.perf_counter() - t0
        left = len(keys) - cards_done
        eta = elapsed / ran_cards * left if ran_cards else 0.0
        new = len(result.get_asset_materialization_events())
        say(f"batch {i}/{len(plan)} done: cards {batch[0]}..{batch[-1]} ({len(batch)}), "
            f"{new} new materializations, {time.perf_counter() - t:.1f} s; "
            f"{cards_done}/{len(keys)} cards, ETA {eta:.0f} s")
    report.seconds = time.perf_counter() - t0
    return report


def main(argv: list[str] | None = None) -> int:
    from ..project_config import load_config
    from .definitions import build_definitions

    p = argparse.ArgumentParser(prog="python -m pad_assets.orchestration.backfill",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="a dataset of the config (PAD_ASSETS_CONFIG)")
    p.add_argument("--batch-cards", type=int, default=None,
                   help="cards per run (default: the config's backfill.batch_cards)")
    p.add_argument("--add-partitions", action="store_true",
                   help="first add the manifest's cards as partitions (what the sensor does)")
    args = p.parse_args(argv)
    project = load_config()
    ds = next((d for d in project.datasets if d.name == args.dataset), None)
    if ds is None:
        print(f"dataset {args.dataset!r} is not in the config; configured: "
              f"{[d.name for d in project.datasets]}", file=sys.stderr)
        return 2
    if args.batch_cards is not None and args.batch_cards < 1:
        print("--batch-cards must be a positive integer", file=sys.stderr)
        return 2
    defs = build_definitions(project)
    log = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with dg.DagsterInstance.get() as instance:
        if args.add_partitions:
            add_manifest_partitions(instance, ds)
        report = backfill_in_batches(defs, instance, project, ds, args.batch_cards,
                                     progress=lambda line: print(line, flush=True),
                                     run_config=log)
    print(f"backfill {report.backfill_id}: {len(report.ran)} batches run, "
          f"{len(report.skipped)} skipped (already done), {report.seconds:.1f} s", flush=True)
    return 0


def add_manifest_partitions(instance: dg.DagsterInstance, ds: DatasetConfig) -> list[str]:
    """Add the manifest's new cards as partitions (one read of the keys, then one insert)."""
    from ..settings import Settings
    from .resources import PadResource
    from .sync import new_card_keys

    dataset = PadResource().dataset(ds.name)
    try:
        card_ids = dataset.manifest(refresh=not Settings.from_env().offline).card_ids
    finally:
        dataset.close()
    new = new_card_keys(instance, ds, card_ids)
    if new:
        instance.add_dynamic_partitions(partitions_for(ds).name, new)
    return new


if __name__ == "__main__":
    raise SystemExit(main())
