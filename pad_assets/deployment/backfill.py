"""A backfill as batch runs that workers share: ``run_backfill`` / ``python -m
pad_assets.deployment.backfill DATASET``.

Why: the image step of a dataset is one multi-asset step per run, so a cluster shares a
backfill's load only when the backfill is split into runs of a batch of cards each and
several of those runs are in flight at once. Each batch run is an ordinary Dagster run
(partition-range tags, stored in the deployment's instance: Postgres), and its image step
executes where the deployment's executor puts it (a dask worker with ``PAD_ASSETS_DASK``).
``parallel`` runs are in flight at once: set it to the number of workers. The same split
is what a UI backfill does with a ``multi_run`` backfill policy; this driver needs no
daemon and no UI, so a script or a cluster job can run it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

from ..errors import InvalidInputError

LOCATION_MODULE = "pad_assets.definitions"


@dataclass
class BatchRun:
    first: str
    last: str
    cards: int
    run_id: str
    success: bool
    seconds: float
    worker: str = ""


@dataclass
class BackfillReport:
    dataset: str
    batch_size: int
    parallel: int
    runs: list[BatchRun] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.success for r in self.runs)

    @property
    def cards(self) -> int:
        return sum(r.cards for r in self.runs if r.success)

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "batch_size": self.batch_size,
                "parallel": self.parallel, "seconds": self.seconds, "ok": self.ok,
                "cards": self.cards, "runs": [r.__dict__ for r in self.runs]}

    def __str__(self) -> str:
        failed = [r.run_id for r in self.runs if not r.success]
        rate = self.cards / self.seconds if self.seconds else 0.0
        return (f"backfill {self.dataset}: {len(self.runs)} batch runs of <= {self.batch_size} "
                f"cards, {self.parallel} in flight; {self.cards} cards in {self.seconds:.1f} s "
                f"({rate:.2f} cards/s)" + (f"; FAILED runs: {failed}" if failed else ""))


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


def _execute_batch(job_name: str, first: str, last: str, tags: dict[str, str]
                   ) -> tuple[str, bool, float]:
    """One batch run in this (pool) process; its steps go where the executor puts them."""
    import dagster as dg
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from ..orchestration.sync import RANGE_END, RANGE_START

    t0 = time.time()
    recon = ReconstructableRepository.for_module(
        LOCATION_MODULE, "defs", working_directory=os.getcwd()).get_reconstructable_job(job_name)
    with dg.DagsterInstance.get() as instance:
        res = dg.execute_job(recon, instance=instance, raise_on_error=False,
                             tags={**tags, RANGE_START: first, RANGE_END: last})
        return res.run_id, res.success, time.time() - t0


def run_backfill(dataset: str, *, batch_size: int = 50, parallel: int = 2,
                 card_ids: Sequence[int] | None = None, tags: dict[str, str] | None = None
                 ) -> BackfillReport:
    """Materialize the image layers of ``card_ids`` (default: the manifest's) as batch runs.

    Adds missing card partitions first. Needs a persistent instance (``$DAGSTER_HOME``;
    Postgres for many machines). A rerun after a failure re-executes every batch: finished
    ones find their items in the worker caches or the tier and cost little.
    """
    import dagster as dg

    from ..orchestration.assets import partitions_for
    from ..orchestration.definitions import images_job_name
    from ..orchestration.resources import PadResource
    from ..orchestration.sync import new_card_keys
    from ..project_config import load_config

    project = load_config()
    ds = next((d for d in project.datasets if d.name == dataset), None)
    if ds is None:
        raise InvalidInputError(f"dataset {dataset!r} is not in the project config; expected "
                                f"one of {[d.name for d in project.datasets]}")
    if card_ids is None:
        card_ids = PadResource().dataset(dataset).manifest().card_ids
    t0 = time.time()
    rep = BackfillReport(dataset, batch_size, parallel)
    part = partitions_for(ds).name
    with dg.DagsterInstance.get() as instance:
        new = new_card_keys(instance, ds, card_ids)
        if new:
            instance.add_dynamic_partitions(part, new)
        ordered = instance.get_dynamic_partitions(part)
    batches = contiguous_batches(ordered, [str(c) for c in card_ids], batch_size)
    job = images_job_name(ds.key)
    backfill_tags = {"pad/backfill": f"{dataset}-{int(t0)}", **(tags or {})}
    with ProcessPoolExecutor(max_workers=parallel, mp_context=get_context("spawn")) as pool:
        futures = [(b, pool.submit(_execute_batch, job, b[0], b[-1], backfill_tags))
                   for b in batches]
        for b, fut in futures:
            run_id, ok, secs = fut.result()
            rep.runs.append(BatchRun(b[0], b[-1], len(b), run_id, ok, secs))
    rep.seconds = time.time() - t0
    return rep


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pad_assets.deployment.backfill",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--parallel", type=int, default=2, help="batch runs in flight")
    ap.add_argument("--cards", default=None, help="comma-separated card ids (default: all)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    cards = [int(c) for c in a.cards.split(",")] if a.cards else None
    rep = run_backfill(a.dataset, batch_size=a.batch_size, parallel=a.parallel, card_ids=cards)
    print(json.dumps(rep.as_dict(), indent=1) if a.json else str(rep))
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
