"""The maintenance lock: one exclusive holder (repair, gc, reindex) or many shared ones.

A file lock beside the index, so the rules hold across processes, plus an in-process
registry so one thread's nested calls do not deadlock on themselves.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..errors import CacheBusyError
from ..store import ContentStore
from ..store.fs import try_flock

# ---------------------------------------------------------------------------------------
# the maintenance lock
_held: dict[str, list[Any]] = {}
_held_lock = threading.Lock()


@contextlib.contextmanager
def maintenance_lock(store: ContentStore, exclusive: bool, what: str,
                     timeout: float = 600.0) -> Iterator[None]:
    """One writer (gc, verify --repair, reindex) or many readers (verify, export, push) per
    cache, across processes (``flock`` on ``<cache>/maintenance.lock``).

    Re-entrant within a process so a maintenance step may call another. On file systems
    without ``flock`` (some network mounts) the lock degrades to a no-op.
    """
    key = str(store.root.resolve())
    with _held_lock:
        held = _held.get(key)
        if held is not None and (held[1] or not exclusive):
            held[2] += 1
            reentrant = True
        else:
            reentrant = False
    if reentrant:
        try:
            yield
        finally:
            with _held_lock:
                _held[key][2] -= 1
        return
    try:
        import fcntl  # noqa: F401  (try_flock's)
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = store.root / "maintenance.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = try_flock(fd, exclusive)
            except OSError:  # flock unsupported here: no cross-process exclusion
                break
            if got:
                break
            if time.monotonic() > deadline:
                holder = path.read_text(errors="replace").strip() or "another process"
                raise CacheBusyError(
                    f"cache {store.root}: `{what}` waited {timeout:.0f} s for the "
                    f"maintenance lock {path}, held by {holder}; expected it to be free")
            time.sleep(0.05)
        if exclusive:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} ({what}) since {time.ctime()}\n".encode(), 0)
        with _held_lock:
            _held[key] = [fd, exclusive, 1]
        try:
            yield
        finally:
            with _held_lock:
                _held.pop(key, None)
    finally:
        os.close(fd)
