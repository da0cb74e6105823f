"""Run the pad_assets benchmarks B1-B8 against the local PAD API emulator.

    python -m benchmarks.run            # the issue's sizes (~30-40 min on 2 cores)
    python -m benchmarks.run --quick    # small sizes, a smoke run of a few minutes
    python -m benchmarks.run --only B9  # lab scale (issue 19; B9, B10 run only when named)

Prints one table (scenario, measured, target, ratio, PASS/MISS), writes the run as JSON to
``benchmarks/out/results-<date>.json`` (and ``latest.json``). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

if __package__ in (None, ""):  # ``python benchmarks/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import world  # noqa: E402
from benchmarks.common import Row, loadavg, machine_info, table  # noqa: E402
from benchmarks.context import Context, Sizes  # noqa: E402

SCENARIOS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B6PG", "B11", "B9", "B10")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    p.add_argument("--only", default="", help="comma-separated scenarios, e.g. B1,B2,B8 "
                   "(B2, B3, B4, B8 need B1's cache and run B1 too)")
    p.add_argument("--real-images", type=Path, default=None, metavar="DIR",
                   help="serve the real *.png files of DIR (cycled over the cards) instead "
                        "of synthetic cards, e.g. /work/shared/reference/images")
    p.add_argument("--latency", type=float, default=0.0,
                   help="seconds the emulator adds to every request (default 0)")
    p.add_argument("--render-on-request", action="store_true",
                   help="let the emulator render synthetic cards per request (its CPU then "
                        "competes with the client) instead of serving pre-rendered files")
    p.add_argument("--reps", type=int, default=None,
                   help="repetitions of B1 and B4 (default 3, quick 2)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    p.add_argument("--keep-caches", action="store_true", help="keep per-scenario caches")
    p.add_argument("--postgres", action="store_true",
                   help="also measure Dagster's floor on a throwaway local PostgreSQL cluster "
                        "(scenario B6PG; needs initdb/pg_ctl and dagster-postgres, see README) "
                        "and run B11 (scale-out on dask workers; also with --only B11)")
    p.add_argument("--no-patched", action="store_true",
                   help="do not re-measure a missed target with the proposed core patches")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore")
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.reps:
        sizes.reps = args.reps
    only = [s.strip().upper() for s in args.only.split(",") if s.strip()] or [
        s for s in SCENARIOS
        if (s not in ("B6PG", "B11") or args.postgres) and s not in ("B9", "B10")]
    bad = sorted(set(only) - set(SCENARIOS))
    if bad:
        print(f"unknown scenario(s) {bad}; known: {SCENARIOS}", file=sys.stderr)
        return 2
    if {"B2", "B3", "B4", "B8"} & set(only) and "B1" not in only:
        only.insert(0, "B1")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    log(f"machine: {machine['nproc']} cpus ({machine['cpu_model']}), {machine['ram_gb']} GB, "
        f"load {machine['loadavg_start']}; mode {'quick' if args.quick else 'full'}")
    log("setup: models and card files")
    models = world.bench_models(out, log)
    needed = max([sizes.cards] * bool({"B1", "B2", "B3", "B4", "B8"} & set(only))
                 + [sizes.dagster_cards] * ("B6" in only)
                 + [sizes.storage_cards] * ("B6PG" in only)
                 + [sizes.scaleout_cards] * ("B11" in only)
                 + [max(sizes.memory_sizes)] * ("B7" in only) + [1])
    folder = world.card_folder(out, needed, args.real_images, log)
    datasets = {world.dataset_name(n): n for n in
                sorted({sizes.cards, sizes.dagster_cards, sizes.storage_cards, sizes.scaleout_cards,
                        *sizes.memory_sizes})
                if n <= needed}
    emu = world.start_emulator(folder, datasets, models, out, args.latency,
                               args.render_on_request)
    log(f"emulator {emu.base_url}: datasets {datasets}; computing manifest md5s")
    t = time.time()
    emu.warm()
    log(f"  manifests ready in {time.time() - t:.1f} s")
    ctx = Context(out=out, sizes=sizes, emu=emu, models=models, datasets=datasets,
                  latency=args.latency, keep_caches=args.keep_caches, t0=started)
    ctx.shared["patched"] = not args.no_patched
    from benchmarks import patches

    log(f"proposed changes already in the core: {patches.in_core() or 'none'}; "
        f"measured as 'patched': {patches.effective(patches.ALL) or 'none'}")

    from benchmarks import (
        scen_cache,
        scen_dagster,
        scen_lab,
        scen_memory,
        scen_pls,
        scen_scaleout,
        scen_storage,
    )

    plan = [
        ("B1", scen_cache.run_b1_b2),
        ("B8", scen_cache.run_b8),
        ("B3", scen_cache.run_b3),
        ("B4", scen_cache.run_b4),
        ("B5", scen_pls.run_b5),
        ("B6", scen_dagster.run_b6),
        ("B7", scen_memory.run_b7),
        ("B6PG", scen_storage.run_b6_storage),
        ("B11", scen_scaleout.run_b11),
        ("B9", scen_lab.run_b9),
        ("B10", scen_lab.run_b10),
    ]
    rows: list[Row] = []
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    try:
        for name, fn in plan:
            if name not in only:
                continue
            t = time.time()
            try:
                got = fn(ctx)
                if name == "B1" and "B2" not in only:
                    got = [r for r in got if not r.scenario.startswith("B2")]
                rows += got
            except Exception as exc:  # report and go on with the other scenarios
                errors[name] = "".join(traceback.format_exception(exc))[-4000:]
                log(f"{name} FAILED: {type(exc).__name__}: {exc}")
                rows.append(Row(name, "error", f"{type(exc).__name__}: {exc}"[:80], "-", "-",
                                False))
            timings[name] = time.time() - t
            log(f"{name} done in {timings[name]:.1f} s; load {loadavg()}")
    finally:
        if "b1_ds" in ctx.shared:
            ctx.shared["b1_ds"].close()
        emu.stop()
    total = time.time() - started
    machine["loadavg_end"] = loadavg()
    text = table(rows)
    print(text)
    print(f"\ntotal {total / 60:.1f} min; load average start {machine['loadavg_start']}, "
          f"end {machine['loadavg_end']}; {machine['nproc']} cpus, {machine['ram_gb']} GB, "
          f"{machine['cpu_model']}")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    from benchmarks import patches

    doc = {"mode": "quick" if args.quick else "full", "argv": sys.argv[1:],
           "patches_in_core": patches.in_core(),
           "patches_measured": patches.effective(patches.ALL),
           "machine": machine, "sizes": vars(sizes), "total_s": total,
           "scenario_seconds": timings, "rows": [r.as_dict() for r in rows],
           "errors": errors, "real_images": str(args.real_images) if args.real_images else None,
           "latency": args.latency, "table": text}
    world.dump_json(out / f"results-{stamp}.json", doc)
    world.dump_json(out / "latest.json", doc)
    print(f"JSON: {out / f'results-{stamp}.json'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
