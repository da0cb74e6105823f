"""A watchdog that stops the local parts when the process that started them dies.

Why: ``localparts`` starts PostgreSQL, moto's S3 server and dask processes for tests and
benchmarks; their context managers stop them, but a test run that is SIGTERMed or SIGKILLed
runs no teardown, and the parts lived on (a postmaster, a moto server, dask workers holding
ports and memory). Linux's ``PR_SET_PDEATHSIG`` does not cover this: ``pg_ctl`` daemonizes
the postmaster (its parent is gone at once) and ``runuser`` (the server runs as ``postgres``
when we are root) clears the setting on the change of user.

So each process that starts parts gets one watchdog (``python -m
pad_assets.deployment.reaper``), in a session of its own so a signal to the starter's
process group does not reach it. The starter keeps the write end of the watchdog's stdin and
tells it, one JSON line each, what to undo: a process group to kill (every part is started
in a session of its own, so its children, such as Dagster's log tailers in a dask worker,
go too) or a command to run (``pg_ctl stop``). A part stopped normally is dropped from the
list. When the starter dies, however it dies, the kernel closes the pipe; the watchdog reads
EOF and undoes what is left: commands first, then SIGTERM to each group, SIGKILL after
``GRACE`` seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

GRACE = 5.0


# ------------------------------------------------------------------- the starter's side
class Reaper:
    """The starter's handle on its watchdog (one per process: ``reaper()``)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pad_assets.deployment.reaper", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                [p for p in [_package_root(), os.environ.get("PYTHONPATH", "")] if p])})
        self._pipe: IO[bytes] = self.proc.stdin  # type: ignore[assignment]

    def _send(self, msg: dict[str, Any]) -> None:
        with self._lock:
            self._pipe.write((json.dumps(msg) + "\n").encode())
            self._pipe.flush()

    def kill_group_on_death(self, pgid: int) -> int:
        """Kill process group ``pgid`` if this process dies first; returns a token."""
        token = next(self._ids)
        self._send({"op": "add", "id": token, "group": pgid})
        return token

    def run_on_death(self, cmd: Sequence[str]) -> int:
        """Run ``cmd`` if this process dies first; returns a token."""
        token = next(self._ids)
        self._send({"op": "add", "id": token, "run": list(cmd)})
        return token

    def forget(self, token: int) -> None:
        """The part was stopped normally: nothing to undo for it."""
        with contextlib.suppress(OSError, ValueError):
            self._send({"op": "drop", "id": token})

    def close(self) -> None:
        """Normal exit: the watchdog undoes what is left (nothing, when every part was
        stopped) and exits."""
        with contextlib.suppress(OSError, ValueError):
            self._pipe.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(GRACE + 10)


_REAPER: Reaper | None = None
_REAPER_PID = 0


def reaper() -> Reaper:
    """This process's watchdog, started on first use (a forked child gets its own)."""
    global _REAPER, _REAPER_PID
    if _REAPER is None or os.getpid() != _REAPER_PID or _REAPER.proc.poll() is not None:
        _REAPER, _REAPER_PID = Reaper(), os.getpid()
        atexit.register(_REAPER.close)
    return _REAPER


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------- the watchdog's side
def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def undo(entries: dict[int, dict[str, Any]], grace: float = GRACE) -> None:
    """Run the commands, then SIGTERM every group and SIGKILL those still alive."""
    for e in entries.values():
        if "run" in e:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(e["run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=60, check=False)
    groups = [int(e["group"]) for e in entries.values() if "group" in e]
    for g in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(g, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and any(_alive(g) for g in groups):
        time.sleep(0.1)
    for g in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(g, signal.SIGKILL)


def watch(stream: IO[bytes]) -> dict[int, dict[str, Any]]:
    """Read the starter's instructions until EOF; returns what is left to undo."""
    entries: dict[int, dict[str, Any]] = {}
    for raw in stream:
        try:
            msg = json.loads(raw)
        except ValueError:
            print(f"reaper: ignoring a line that is not JSON: {raw[:200]!r}", file=sys.stderr)
            continue
        if msg.get("op") == "add":
            entries[int(msg["id"])] = msg
        elif msg.get("op") == "drop":
            entries.pop(int(msg["id"]), None)
    return entries


def main() -> int:
    # the starter's terminal or process group may be signalled as it dies: this process
    # must outlive it long enough to clean up
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    undo(watch(sys.stdin.buffer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
