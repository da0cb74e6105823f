"""A dataset's backfill as batch runs: watched, resumed after a kill, shared by workers.

``python -m pad_assets.orchestration.backfill DATASET [--batch-cards N] [--parallel N]``
(or ``backfill(...)`` from Python) splits the dataset's card partitions (in the order they
were added) into batches of ``batch_cards`` and runs the images job once per batch (one
step per batch: the cards' four layers and their checks), printing a line per finished
batch (cards, new materializations, seconds, ETA).

Why one driver for one machine and for a cluster: batching, resume and progress are the
same; only where a batch run executes differs.

- **In this process** (``parallel=1``, no dask executor configured, or ``defs`` given):
  ``execute_in_process``, the cheapest on one machine (no process start per run).
- **Through the code location's executor** (``parallel > 1`` or ``PAD_ASSETS_DASK`` set):
  ``execute_job`` of ``pad_assets.definitions`` in a pool of ``parallel`` processes, so
  ``parallel`` runs are in flight at once and their image steps go where the deployment's
  executor puts them (a dask worker: README "Scale-out"). Set it to the number of workers.
  This needs a persistent instance (``$DAGSTER_HOME``; PostgreSQL for many machines).

Each run carries the tags ``pad/backfill`` (an id derived from the dataset, the batch size
and the batches' partition keys) and ``pad/batch`` (``i/n``), so the UI's Runs page filtered
by the backfill tag shows the progress. Resume: run the same command again. Batches whose
run SUCCEEDED (found by tag: one runs query, no per-partition scan) are skipped; a batch
whose run failed or was killed is run again (its cards already in a content cache or the
shared tier are looked up, not recomputed; unchanged partitions get no new event).
``resume=False`` (``--no-resume``) runs every batch again under a new backfill id.

Dagster's own backfills (the UI's "Materialize all") use the same batch size through the
image step's ``BackfillPolicy.multi_run(batch_cards)``; this driver needs no daemon and no
UI, so a terminal, a cron job, a cluster job or a benchmark can run it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Any

import dagster as dg

from ..errors import InvalidInputError
from ..project_config import DatasetConfig, ProjectConfig
from .assets import partitions_for
from .sync import range_tags

BACKFILL_TAG = "pad/backfill"
BATCH_TAG = "pad/batch"
#: the code location a run outside this process reconstructs its job from
LOCATION_MODULE = "pad_assets.definitions"


@dataclass
class BatchRun:
    """One batch's run: ``index`` is 1-based, ``first``..``last`` its partition range."""

    index: int
    first: str
    last: str
    cards: int
    run_id: str
    success: bool
    seconds: float
    new_materializations: int = 0
    error: str = ""  # a failed run's first step error (the whole trace is in its log)


@dataclass
class BackfillReport:
    backfill_id: str
    dataset: str
    batch_cards: int
    parallel: int
    batches: int
    skipped: list[int] = field(default_factory=list)  # 1-based batch numbers already done
    runs: list[BatchRun] = field(default_factory=list)  # in batch order
    seconds: float = 0.0

    @property
    def ran(self) -> list[int]:
        return [r.index for r in self.runs]

    @property
    def run_ids(self) -> dict[int, str]:
        return {r.index: r.run_id for r in self.runs}

    @property
    def failed(self) -> list[BatchRun]:
        return [r for r in self.runs if not r.success]

    @property
    def ok(self) -> bool:
        """Every batch of the backfill has a successful run (now or before)."""
        return not self.failed and len(self.skipped) + len(self.runs) == self.batches

    @property
    def cards(self) -> int:
        """Cards materialized by this invocation's successful runs."""
        return sum(r.cards for r in self.runs if r.success)

    def as_dict(self) -> dict[str, Any]:
        return {"backfill_id": self.backfill_id, "dataset": self.dataset,
                "batch_cards": self.batch_cards, "parallel": self.parallel,
                "batches": self.batches, "skipped": self.skipped, "seconds": self.seconds,
                "ok": self.ok, "cards": self.cards, "runs": [asdict(r) for r in self.runs]}

    def __str__(self) -> str:
        rate = self.cards / self.seconds if self.seconds else 0.0
        failed = [f"{r.index}/{self.batches} ({r.run_id})" for r in self.failed]
        return (f"backfill {self.backfill_id}: {len(self.runs)} batches run, "
                f"{len(self.skipped)} skipped (already done), {self.parallel} in flight; "
                f"{self.cards} cards in {self.seconds:.1f} s ({rate:.2f} cards/s)"
                + (f"; FAILED batches: {', '.join(failed)}" if failed else ""))


def backfill_id(ds: DatasetConfig, batch_cards: int, keys: Sequence[str]) -> str:
    digest = hashlib.sha256("\n".join([ds.key, str(batch_cards), *keys]).encode()).hexdigest()
    return f"{ds.key}-{digest[:12]}"


def contiguous_batches(ordered: Sequence[str], wanted: Sequence[str], size: int
                       ) -> list[list[str]]:
    """Batches of at most ``size`` wanted keys, each contiguous in ``ordered`` (the
    instance's partition order), so each is one partition-range run."""
    if size < 1:
        raise InvalidInputError(f"batch size {size}: expected a positive number of cards")
    want = set(wanted)
    out: list[list[str]] = []
    cur: list[str] = []
    for k in ordered:
        if k in want:
            cur.append(k)
            if len(cur) == size:
                out.append(cur)
                cur = []
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def finished_batches(instance: dg.DagsterInstance, bid: str) -> set[int]:
    """Batch numbers of this backfill whose run succeeded (one query over run tags)."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_TAG: bid},
                                                   statuses=[dg.DagsterRunStatus.SUCCESS]))
    return {int(r.tags[BATCH_TAG].split("/")[0]) for r in runs if BATCH_TAG in r.tags}


# ------------------------------------------------------------------ where a batch runs
Launch = Callable[[str, list[tuple[int, list[str], dict[str, str]]]],
                  Iterator[tuple[int, str, bool, float, int, str]]]


def _first_error(res: Any) -> str:
    """The innermost cause of a failed run's first failure event, on one line."""
    for ev in res.all_events:
        if ev.event_type_value not in ("STEP_FAILURE", "PIPELINE_FAILURE"):
            continue
        data = ev.step_failure_data if ev.event_type_value == "STEP_FAILURE" \
            else ev.job_failure_data
        err = getattr(data, "error", None)
        while err is not None and err.cause is not None:
            err = err.cause
        if err is not None:
            return " ".join(err.message.split())[:500]
        return ev.message or ""
    return ""


def _in_process(defs: dg.Definitions, instance: dg.DagsterInstance,
                run_config: dict[str, Any] | None) -> Launch:
    def launch(job_name: str, todo: list[tuple[int, list[str], dict[str, str]]]
               ) -> Iterator[tuple[int, str, bool, float, int, str]]:
        job = defs.resolve_job_def(job_name)
        for i, batch, tags in todo:
            t = time.perf_counter()
            res = job.execute_in_process(instance=instance, run_config=run_config,
                                         tags={**tags, **range_tags(batch)},
                                         raise_on_error=False)
            yield (i, res.run_id, res.success, time.perf_counter() - t,
                   len(res.get_asset_materialization_events()),
                   "" if res.success else _first_error(res))
    return launch


def _execute_batch(instance_ref: Any, job_name: str, batch: list[str], tags: dict[str, str],
                   run_config: dict[str, Any] | None) -> tuple[str, bool, float, int, str]:
    """One batch run in a pool process; its steps go where the location's executor puts
    them (a dask worker with ``PAD_ASSETS_DASK``)."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    t0 = time.perf_counter()
    recon = ReconstructableRepository.for_module(
        LOCATION_MODULE, "defs", working_directory=os.getcwd()).get_reconstructable_job(job_name)
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        res = dg.execute_job(recon, instance=instance, raise_on_error=False,
                             run_config=run_config, tags={**tags, **range_tags(batch)})
        new = len(res.get_asset_materialization_events())
        return (res.run_id, res.success, time.perf_counter() - t0, new,
                "" if res.success else _first_error(res))


def _through_location(instance: dg.DagsterInstance, parallel: int,
                      run_config: dict[str, Any] | None) -> Launch:
    if not instance.is_persistent:
        raise InvalidInputError("a backfill through the code location's executor needs a "
                                "persistent Dagster instance (DAGSTER_HOME; PostgreSQL for "
                                "many machines), not an ephemeral one")
    ref = instance.get_ref()

    def launch(job_name: str, todo: list[tuple[int, list[str], dict[str, str]]]
               ) -> Iterator[tuple[int, str, bool, float, int, str]]:
        # spawn: a fresh interpreter per pool process (no forked Dagster/HDF5 state)
        with ProcessPoolExecutor(max_workers=parallel, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_execute_batch, ref, job_name, batch, tags, run_config): i
                       for i, batch, tags in todo}
            for fut in as_completed(futures):
                yield (futures[fut], *fut.result())
    return launch


# --------------------------------------------------------------------------- the driver
def backfill(dataset: str | DatasetConfig, *, batch_cards: int | None = None,
             parallel: int = 1, card_ids: Sequence[int] | None = None,
             add_partitions: bool = False, resume: bool = True,
             progress: Callable[[str], None] | None = None,
             run_config: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
             project: ProjectConfig | None = None, defs: dg.Definitions | None = None,
             instance: dg.DagsterInstance | None = None) -> BackfillReport:
    """Materialize the image layers of ``dataset``'s cards batch by batch (see module).

    ``card_ids``: these cards (missing partitions are added first); default: every
    partition of the dataset, after adding the manifest's new cards if ``add_partitions``.
    ``defs``: run batches in this process with these definitions (their resources);
    default: ``build_definitions(project)`` in this process when ``parallel == 1`` and no
    dask executor is configured, else the code location ``pad_assets.definitions`` through
    its executor. ``instance``: default ``DagsterInstance.get()``.
    """
    from ..deployment.executor import dask_cluster_config
    from ..project_config import load_config
    from .definitions import build_definitions, images_job_name
    from .sync import new_card_keys

    project = project or load_config()
    ds = dataset if isinstance(dataset, DatasetConfig) else next(
        (d for d in project.datasets if d.name == dataset), None)
    if ds is None:
        raise InvalidInputError(f"dataset {dataset!r} is not in the project config; expected "
                                f"one of {[d.name for d in project.datasets]}")
    if parallel < 1:
        raise InvalidInputError(f"parallel {parallel}: expected a positive number of runs")
    size = batch_cards or project.batch_cards
    in_process = defs is not None or (parallel == 1 and dask_cluster_config() is None)
    if defs is not None and parallel > 1:
        raise InvalidInputError("parallel batch runs execute through the code location's "
                                "executor; pass defs=None (or parallel=1)")
    say = progress or (lambda _line: None)
    with (dg.DagsterInstance.get() if instance is None else nullcontext(instance)) as inst:
        part = partitions_for(ds).name
        if add_partitions and card_ids is None:
            add_manifest_partitions(inst, ds)
        if card_ids is not None:
            new = new_card_keys(inst, ds, card_ids)
            if new:
                inst.add_dynamic_partitions(part, new)
        ordered = list(inst.get_dynamic_partitions(part))
        wanted = ordered if card_ids is None else [str(int(c)) for c in card_ids]
        plan = contiguous_batches(ordered, wanted, size)
        keys = [k for b in plan for k in b]
        bid = backfill_id(ds, size, keys)
        if not resume:
            bid = f"{bid}-{time.time_ns() // 1_000_000}"
        done = finished_batches(inst, bid) if resume else set()
        report = BackfillReport(bid, ds.name, size, parallel, len(plan),
                                skipped=sorted(i for i in done if i <= len(plan)))
        say(f"backfill {bid}: {len(keys)} cards of {ds.name} in {len(plan)} batches of "
            f"{size}; {len(report.skipped)} batches already done; {parallel} in flight")
        launch = (_in_process(defs or build_definitions(project), inst, run_config)
                  if in_process else _through_location(inst, parallel, run_config))
        todo = [(i, b, {**(tags or {}), BACKFILL_TAG: bid, BATCH_TAG: f"{i}/{len(plan)}"})
                for i, b in enumerate(plan, start=1) if i not in done]
        t0 = time.perf_counter()
        cards_done = sum(len(plan[i - 1]) for i in report.skipped)
        ran_cards = 0
        for i, run_id, ok, secs, new, error in launch(images_job_name(ds.key), todo):
            batch = plan[i - 1]
            report.runs.append(BatchRun(i, batch[0], batch[-1], len(batch), run_id, ok,
                                        secs, new, error))
            ran_cards += len(batch)
            if ok:
                cards_done += len(batch)
            elapsed = time.perf_counter() - t0
            left = len(keys) - cards_done
            eta = elapsed / ran_cards * left if ran_cards else 0.0
            say(f"batch {i}/{len(plan)} {'done' if ok else 'FAILED'}: cards "
                f"{batch[0]}..{batch[-1]} ({len(batch)}), {new} new materializations, "
                f"{secs:.1f} s, run {run_id}; {cards_done}/{len(keys)} cards, ETA {eta:.0f} s"
                + (f"; error: {error}" if error else ""))
        report.runs.sort(key=lambda r: r.index)
        report.seconds = time.perf_counter() - t0
    return report


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


# ------------------------------------------------------------------------------ the CLI
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pad_assets.orchestration.backfill",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="a dataset of the config (PAD_ASSETS_CONFIG)")
    p.add_argument("--batch-cards", type=_positive, default=None,
                   help="cards per run (default: the config's backfill.batch_cards)")
    p.add_argument("--parallel", type=_positive, default=1,
                   help="batch runs in flight (default 1; on dask: the number of workers)")
    p.add_argument("--add-partitions", action="store_true",
                   help="first add the manifest's cards as partitions (what the sensor does)")
    p.add_argument("--cards", default=None,
                   help="comma-separated card ids (added as partitions; default: all)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="run every batch again under a new backfill id")
    p.add_argument("--json", action="store_true", help="print the report as JSON at the end")
    args = p.parse_args(argv)
    try:
        cards = [int(c) for c in args.cards.split(",")] if args.cards else None
    except ValueError:
        print(f"--cards {args.cards!r}: expected comma-separated card ids", file=sys.stderr)
        return 2
    log = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    try:
        report = backfill(args.dataset, batch_cards=args.batch_cards, parallel=args.parallel,
                          card_ids=cards, add_partitions=args.add_partitions,
                          resume=args.resume, progress=lambda line: print(line, flush=True),
                          run_config=log)
    except InvalidInputError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), indent=1) if args.json else str(report), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
