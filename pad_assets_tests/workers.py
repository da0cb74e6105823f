"""Helpers for tests that run the cache in worker subprocesses (kill and fault trials)."""

from __future__ import annotations

import select
import subprocess

import pytest


def wait_ready(proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    """Wait (bounded) until a worker has imported everything and printed ``READY``.

    Kill trials time their SIGKILL from this line, so start-up cost never decides where a
    kill lands; a worker that dies first fails the test with its stderr.
    """
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        pytest.fail(f"worker not ready after {timeout} s")
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.wait(timeout=30)
        pytest.fail(f"worker failed before READY: {line!r}\n"
                    f"{proc.stderr.read()[-3000:] if proc.stderr else ''}")
