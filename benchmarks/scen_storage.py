"""B6 storage: Dagster's per-partition floor on Dagster's stock SQLite event log ("sqlite"),
the lab's (``PadSqliteEventLogStorage``, "lab sqlite", what B6' reports), in-memory and
Postgres storage.

Optional (``--postgres``): needs PostgreSQL server binaries (``initdb``, ``pg_ctl``) and the
``dagster-postgres`` + ``psycopg2-binary`` packages (psycopg 3 trips over dagster-postgres'
``NOTIFY ... :param``), looked up in the environment first,
then in ``<out>/pydeps`` (e.g. ``pip install --no-deps --target benchmarks/out/pydeps
dagster-postgres==<dagster's 0.x twin> psycopg2-binary``: a dev-only install that leaves the
project's environment alone). A throwaway cluster is created under ``<out>/pg``, listening on
127.0.0.1 only, and stopped at the end.

The real graph runs once on ``storage_cards`` cards (SQLite) to record its events; then the
floor graph (empty bodies re-yielding those events, see ``scen_dagster``) runs on each
storage. Reported: floor time per partition per asset.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import Row, fresh_dir
from .context import Context
from .world import FIRST_CARD


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def postgres_cluster(root: Path) -> Iterator[dict[str, Any]]:
    """A temporary PostgreSQL cluster on 127.0.0.1 (run as user ``postgres`` when root)."""
    for tool in ("initdb", "pg_ctl"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: PostgreSQL server binaries are needed")
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    root = fresh_dir(root)
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if as_root:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    user = "postgres" if as_root else os.environ.get("USER", "postgres")
    port = _free_port()
    subprocess.run([*prefix, "initdb", "-D", str(data), "-U", user, "-A", "trust"],
                   check=True, capture_output=True)
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=on"
    subprocess.run([*prefix, "pg_ctl", "-D", str(data), "-o", opts, "-l", str(root / "log"),
                    "-w", "start"], check=True, capture_output=True)
    try:
        subprocess.run([*prefix, "psql", "-h", "127.0.0.1", "-p", str(port), "-U", user,
                        "-c", "CREATE DATABASE dagster_bench"], check=True, capture_output=True)
        db: dict[str, Any] = {"username": user, "password": "", "hostname": "127.0.0.1",
                              "db_name": "dagster_bench", "port": port}
        try:  # dagster-postgres' NOTIFY with a bound parameter fails under psycopg 3
            import psycopg2  # noqa: F401

            db["scheme"] = "postgresql+psycopg2"
        except ImportError:
            pass
        yield db
    finally:
        subprocess.run([*prefix, "pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"],
                       check=False, capture_output=True)


def _import_dagster_postgres(out: Path) -> None:
    try:
        import dagster_postgres  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(out / "pydeps"))
        import dagster_postgres  # noqa: F401


def run_b6_storage(ctx: Context) -> list[Row]:
    import dagster as dg

    from pad_assets.models.runtime import clear_runner_cache
    from pad_assets.orchestration.definitions import build_definitions
    from pad_assets.orchestration.io_manager import PadStoreIOManager
    from pad_assets.orchestration.resources import PadResource

    from .scen_dagster import (
        _instance,
        _project,
        _recorded_events,
        _run_graph,
        floor_definitions,
    )

    n = ctx.sizes.storage_cards
    name = ctx.dataset_for(n)
    project = _project(name)
    part_keys = [str(c) for c in range(FIRST_CARD, FIRST_CARD + n)]
    ctx.log(f"B6 storage: the real graph on {n} partitions to record its events")
    cache = fresh_dir(ctx.caches / "b6s_real")
    pad = PadResource(cache_dir=str(cache), api_url=ctx.emu.base_url,
                      registry_url=ctx.emu.registry_url, offline=False)
    defs = build_definitions(project, resources={"pad": pad,
                                                 "pad_io_manager": PadStoreIOManager(pad=pad)})
    clear_runner_cache()
    with dg.DagsterInstance.local_temp(tempdir=str(fresh_dir(ctx.out / "dagster" / "s_real"))
                                       ) as instance:
        real = _run_graph(defs, instance, project, part_keys)
        manifest_meta, events = _recorded_events(instance, project, n)
    fresh_dir(cache)
    fdefs = floor_definitions(defs, project, manifest_meta, events)
    per = n * 4
    results: dict[str, dict[str, Any]] = {}
    with dg.DagsterInstance.local_temp(tempdir=str(fresh_dir(ctx.out / "dagster" / "s_sqlite"))
                                       ) as instance:
        results["sqlite"] = _run_graph(fdefs, instance, project, part_keys)
    with _instance(fresh_dir(ctx.out / "dagster" / "s_lab")) as instance:
        results["lab sqlite"] = _run_graph(fdefs, instance, project, part_keys)
    with dg.DagsterInstance.ephemeral() as instance:
        results["in-memory"] = _run_graph(fdefs, instance, project, part_keys)
    pg_error = None
    try:
        _import_dagster_postgres(ctx.out)
        with postgres_cluster(ctx.out / "pg") as db:
            overrides = {"storage": {"postgres": {"postgres_db": db}}}
            tmp = fresh_dir(ctx.out / "dagster" / "s_pg")
            with dg.DagsterInstance.local_temp(tempdir=str(tmp), overrides=overrides) as inst:
                time.sleep(0.5)
                results["postgres"] = _run_graph(fdefs, inst, project, part_keys)
    except Exception as exc:  # optional: report why it was not measured
        pg_error = f"{type(exc).__name__}: {exc}"[:300]
        ctx.log(f"  postgres floor not measured: {pg_error}")
    rows = []
    for storage, res in results.items():
        ctx.log(f"  floor on {storage}: {res['total_s']:.1f} s "
                f"({res['images_job_s'] / per * 1e3:.1f} ms per partition per asset)")
        rows.append(Row("B6 storage", f"Dagster floor on {storage}, {n} partitions x 4 assets",
                        f"{res['images_job_s'] / per * 1e3:.1f} ms per partition per asset "
                        f"(images run {res['images_job_s']:.1f} s, add partitions "
                        f"{res['add_partitions_s']:.2f} s)", "reported", "-", None,
                        {"floor": res, "real_sqlite": real if storage == "sqlite" else None}))
    if pg_error:
        rows.append(Row("B6 storage", "Dagster floor on postgres", "not measured", "reported",
                        "-", None, {"error": pg_error}))
    return rows
