"""B11: one backfill on 1 and on 2 dask workers, each pinned to one core (issue 15).

The deployment of README "Scale-out", started on 127.0.0.1 by ``pad_assets.deployment.
localparts``: PostgreSQL holds the Dagster instance, moto's S3 server the shared tier, a dask
scheduler places the image steps on worker processes (``taskset -c i``: worker i owns core
i). The backfill driver (``pad_assets.orchestration.backfill``) splits ``scaleout_cards`` cards
into batch runs of ``scaleout_batch`` with as many in flight as there are workers. Each
configuration starts from empty worker caches and an empty tier prefix, so both do the same
work: download, preprocess, MobileNetV2 stand-in (model 16), push to the tier.

Target: throughput(2 workers) / throughput(1 worker) >= 1.8. Reported beside it: the
engine's per-batch overhead = a batch run's wall time at the driver minus its image step's
own duration (Dagster run start/finish, Postgres event writes, dask submission, the run
process), median over batches, and the step's median duration.

Needs initdb/pg_ctl (apt-get install postgresql) and ``pip install -e ".[scaleout-test]"``.
The other processes (driver, scheduler, Postgres, S3, emulator) are not pinned: on a
2-core machine they share the workers' cores, which is what the ratio pays for.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import textwrap
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .common import Row, fresh_dir
from .context import Context
from .world import FIRST_CARD


def _step_seconds(instance: Any, run_id: str) -> float:
    stats = instance.get_run_step_stats(run_id)
    return sum((s.end_time or 0) - (s.start_time or 0) for s in stats)


def run_b11(ctx: Context) -> list[Row]:
    import dagster as dg

    from pad_assets.deployment import DAGSTER_YAML
    from pad_assets.deployment import localparts as lp
    from pad_assets.deployment.executor import step_placements
    from pad_assets.orchestration.backfill import backfill

    n = ctx.sizes.scaleout_cards
    batch = ctx.sizes.scaleout_batch
    name = ctx.dataset_for(n)
    cards = list(range(FIRST_CARD, FIRST_CARD + n))
    ncpu = os.cpu_count() or 1
    base = Path(tempfile.mkdtemp(prefix="pad-b11-"))
    os.chmod(base, 0o755)  # PostgreSQL runs as the postgres user when we are root
    saved = dict(os.environ)
    results: dict[int, dict[str, Any]] = {}
    try:
        with ExitStack() as stack:
            pg_url = stack.enter_context(lp.postgres(base / "pg"))
            s3 = stack.enter_context(lp.s3_server(base / "s3"))
            home = fresh_dir(base / "dagster_home")
            shutil.copy(DAGSTER_YAML, home / "dagster.yaml")
            project = base / "project.yaml"
            project.write_text(textwrap.dedent(f"""\
                datasets:
                  - name: {name}
                models:
                  - name: nn_drug
                    adapter: pad_tflite
                    model_id: 16
                """))
            env = {**s3.env, "PAD_API_URL": ctx.emu.base_url,
                   "PAD_REGISTRY_URL": ctx.emu.registry_url, "PAD_ASSETS_CONFIG": str(project),
                   "DAGSTER_HOME": str(home), "PAD_DAGSTER_PG_URL": pg_url,
                   "DAGSTER_DISABLE_TELEMETRY": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
                   "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                  os.environ.get("PYTHONPATH", "")])}
            for workers in (1, 2):
                tier = s3.url(f"b11-{workers}w")
                wenv = {**env, "PAD_TIER_URL": tier}
                ctx.log(f"B11: {n} cards, batches of {batch}, {workers} dask worker(s) pinned "
                        f"to cores {list(range(workers))}")
                with lp.dask_cluster(base / f"dask{workers}", wenv) as dask:
                    for i in range(workers):
                        cache = fresh_dir(base / f"cache-{workers}w-{i}")
                        dask.add_worker(f"w{i}", {**wenv, "PAD_CACHE_DIR": str(cache)},
                                        cpus=[i % ncpu])
                    os.environ.update(wenv)
                    os.environ["PAD_ASSETS_DASK"] = f"existing: {{address: '{dask.address}'}}"
                    os.environ["PAD_CACHE_DIR"] = str(fresh_dir(base / f"driver-{workers}w"))
                    t = time.time()
                    # resume=False: the same cards as the 1-worker pass, run again in full
                    rep = backfill(name, batch_cards=batch, parallel=workers, card_ids=cards,
                                   resume=False)
                    wall = time.time() - t
                    if not rep.ok:
                        raise RuntimeError(f"B11 backfill with {workers} workers failed: {rep}")
                    with dg.DagsterInstance.get() as instance:
                        steps = [_step_seconds(instance, r.run_id) for r in rep.runs]
                        where = Counter(p.worker for r in rep.runs
                                        for p in step_placements(instance, r.run_id))
                    overhead = [r.seconds - s for r, s in zip(rep.runs, steps, strict=True)]
                    results[workers] = {
                        "wall_s": wall, "cards_per_s": n / wall, "batches": len(rep.runs),
                        "step_s_median": statistics.median(steps),
                        "overhead_s_median": statistics.median(overhead),
                        "overhead_s_max": max(overhead),
                        "batch_steps_per_worker": dict(sorted(where.items()))}
                    ctx.log(f"  {workers} worker(s): {wall:.1f} s, {n / wall:.2f} cards/s, "
                            f"per batch: step {results[workers]['step_s_median']:.1f} s, engine "
                            f"overhead {results[workers]['overhead_s_median']:.2f} s (median); "
                            f"batch steps per worker {dict(sorted(where.items()))}")
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(base, ignore_errors=True)
    ratio = results[2]["cards_per_s"] / results[1]["cards_per_s"]
    rows = [Row("B11", f"{n}-card backfill, 2 vs 1 dask workers (1 core each)",
                f"{results[1]['cards_per_s']:.2f} -> {results[2]['cards_per_s']:.2f} cards/s",
                ">= 1.8x", f"{ratio:.2f}x", ratio >= 1.8, details=results)]
    for w in (1, 2):
        r = results[w]
        rows.append(Row("B11", f"engine overhead per batch of {batch} ({w} worker)",
                        f"{r['overhead_s_median']:.2f} s (max {r['overhead_s_max']:.2f})",
                        "-", f"step {r['step_s_median']:.1f} s", None))
    return rows
