"""A killed process leaves none of the local parts it started running (``deployment/reaper``).

A child process starts the real parts (PostgreSQL with initdb + pg_ctl, moto's S3 server, a
dask scheduler and a worker), reports their process ids and waits; the test kills it with
SIGTERM or SIGKILL, so no teardown runs, and then every part's process must be gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STARTER = textwrap.dedent("""
    import json, sys, time
    from contextlib import ExitStack
    from pathlib import Path
    from pad_assets.deployment import localparts as lp
    from pad_assets.deployment.reaper import reaper

    base = Path(sys.argv[1])
    try:
        with ExitStack() as stack:
            stack.enter_context(lp.postgres(base / "pg"))
            s3 = stack.enter_context(lp.s3_server(base / "s3"))
            dask = stack.enter_context(lp.dask_cluster(base / "dask"))
            dask.add_worker("w0", {})
            pids = {"moto": s3.proc.pid, "scheduler": dask.scheduler.pid,
                    "worker": dask.workers["w0"].pid, "reaper": reaper().proc.pid}
            print(json.dumps(pids), flush=True)
            time.sleep(600)
    except lp.PartUnavailable as exc:
        print("UNAVAILABLE", exc, flush=True)
        sys.exit(3)
""")


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for a PID 1 that may not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _postmaster(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_starter_leaves_no_part_running(sig: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="pad-reaper-"))
    os.chmod(base, 0o755)  # the server runs as the postgres user when we are root
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", STARTER, str(base)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: dict[str, int] = {}
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.startswith("UNAVAILABLE") or not line:
            proc.wait(60)
            reason = line.strip() or proc.stderr.read()[-2000:] if proc.stderr else line
            if os.environ.get("CI") or not line.startswith("UNAVAILABLE"):
                pytest.fail(f"the parts did not start: {reason}")
            pytest.skip(f"scale-out part unavailable: {reason}")
        pids = json.loads(line)
        pids["postmaster"] = _postmaster(base / "pg" / "pgdata")
        assert all(_running(p) for p in pids.values()), pids  # all up before the kill

        proc.send_signal(sig)
        proc.wait(30)
        assert proc.returncode == -sig
        deadline = time.time() + 60
        while time.time() < deadline and any(_running(p) for p in pids.values()):
            time.sleep(0.2)
        left = {name: pid for name, pid in pids.items() if _running(pid)}
        assert not left, f"still running after the starter's {signal.Signals(sig).name}: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for pid in pids.values():  # never leave a planted failure's processes behind
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
