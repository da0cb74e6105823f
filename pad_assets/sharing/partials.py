"""Temporary ``.<name>.<8 hex>.partial`` files of exports and remote copies.

Why a module of its own: a writer holds an flock on its temporary file while it lives, so
a later run can tell a killed writer's leftovers (removed) from a live writer's work (kept).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from ..store import shards as shard_io
from ..store.fs import atomic_write_json

#: ``.<name>.<8 hex>.partial``: the temporary names of exports and remote copies.
_DEAD_PARTIAL = re.compile(r"^\.?.+\.[0-9a-f]{8}" + re.escape(shard_io.PARTIAL_SUFFIX) + "$")


def _hold(path: Path) -> int:
    """Open ``path`` (file or directory) and hold an exclusive flock on it while the writer
    lives: the kernel drops it when the process dies, even by SIGKILL, which is how
    ``clean_dead_partials`` tells a dead writer's leftovers from a live writer's work."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def clean_dead_partials(folder: Path) -> list[str]:
    """Remove ``.<name>.<8 hex>.partial`` files and folders in ``folder`` whose writer is
    gone (a killed export or push): nobody holds their lock. A live writer's are kept."""
    removed: list[str] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if not _DEAD_PARTIAL.match(p.name) or p.is_symlink():
            continue
        try:
            fd = _hold(p)
        except OSError:
            continue  # held by a live writer, or already gone
        try:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p.name)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{shard_io.PARTIAL_SUFFIX}")
    atomic_write_json(path, obj, tmp=tmp)

