"""The deployment profile's daemon: a queued run is dequeued and completes.

PostgreSQL (initdb + pg_ctl on 127.0.0.1) holds the instance configured by the documented
``dagster.yaml`` verbatim (QueuedRunCoordinator); ``dagster job launch`` queues a run of the
real code location (``pad_assets.definitions``: the manifests job against the PAD API
emulator); it stays QUEUED until ``dagster-daemon run`` starts, which dequeues and launches
it; the run succeeds and its manifest materialization is in Postgres.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from pad_assets.deployment import DAGSTER_YAML
from pad_assets.deployment import localparts as lp
from pad_assets.devtools.emulator import DatasetSpec, Emulator
from pad_assets_tests.conftest import make_config
from pad_assets_tests.deployment.test_scaleout import start_part

ROOT = Path(__file__).resolve().parents[2]
DS = "daemon_ds"


@pytest.fixture
def deployment(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="pad-daemon-"))
    os.chmod(base, 0o755)  # the server runs as the postgres user when we are root
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, base, True)
        emu = stack.enter_context(Emulator(make_config([DatasetSpec(DS, range(74000, 74004))],
                                                       models=[])))
        pg_url = start_part(stack, lp.postgres(base / "pg"))
        home = base / "dagster_home"
        home.mkdir()
        shutil.copy(DAGSTER_YAML, home / "dagster.yaml")  # the documented profile, verbatim
        project = base / "project.yaml"
        project.write_text(f"datasets:\n  - name: {DS}\n")
        workspace = base / "workspace.yaml"
        workspace.write_text("load_from:\n  - python_module:\n"
                             "      module_name: pad_assets.definitions\n"
                             f"      working_directory: {ROOT}\n")
        env = {"PAD_API_URL": emu.base_url, "PAD_REGISTRY_URL": emu.registry_url,
               "PAD_ASSETS_CONFIG": str(project), "DAGSTER_HOME": str(home),
               "PAD_DAGSTER_PG_URL": pg_url, "PAD_CACHE_DIR": str(base / "cache"),
               "DAGSTER_DISABLE_TELEMETRY": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("PAD_ASSETS_DASK", raising=False)
        monkeypatch.delenv("PAD_TIER_URL", raising=False)
        yield {"base": base, "env": env, "workspace": workspace, "stack": stack}


def test_a_queued_run_is_dequeued_by_the_daemon_and_completes(
        deployment: dict[str, Any]) -> None:
    import dagster as dg

    dagster = Path(sys.executable).with_name("dagster")
    launch = subprocess.run([str(dagster), "job", "launch", "-w", str(deployment["workspace"]),
                             "-j", "refresh_manifests_job"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, **deployment["env"]})
    assert launch.returncode == 0, launch.stdout[-2000:] + launch.stderr[-3000:]
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        runs = instance.get_runs()
        assert len(runs) == 1, runs
        run_id = runs[0].run_id
        # no daemon yet: the coordinator only queued it
        time.sleep(2)
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.QUEUED

    _start_daemon = lp.dagster_daemon(deployment["base"] / "daemon", deployment["workspace"],
                                      deployment["env"])
    try:
        deployment["stack"].enter_context(_start_daemon)
    except lp.PartUnavailable as exc:
        pytest.fail(f"dagster-daemon did not start: {exc}")
    deadline = time.time() + 420
    with dg.DagsterInstance.get() as instance:
        while time.time() < deadline:
            status = instance.get_run_by_id(run_id).status
            if status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
                          dg.DagsterRunStatus.CANCELED):
                break
            time.sleep(1)
        log = (deployment["base"] / "daemon" / "daemon.log").read_text(errors="replace")
        assert status == dg.DagsterRunStatus.SUCCESS, (status, log[-3000:])
        kinds = [e.dagster_event.event_type for e in instance.all_logs(run_id)
                 if e.dagster_event is not None]
        # queued by the CLI, launched by the daemon (STARTING is the launch), then ran
        order = [dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING,
                 dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS]
        assert all(k in kinds for k in order), kinds
        assert [kinds.index(k) for k in order] == sorted(kinds.index(k) for k in order), kinds
        # the daemon that did it wrote its heartbeats to the same Postgres
        assert "QUEUED_RUN_COORDINATOR" in instance.get_daemon_heartbeats(), (
            instance.get_daemon_heartbeats().keys())
        manifest = dg.AssetKey([DS, "manifest"])
        assert instance.get_latest_materialization_event(manifest) is not None
        assert instance.get_latest_materialization_event(manifest).run_id == run_id
