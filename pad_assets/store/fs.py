"""File primitives of the cache, written once: atomic writes, fsync, file digests, locks.

Every file the cache keeps is replaced whole (a reader sees the old or the new file, never
half of one) and is durable before anyone is told it exists: bytes fsynced under a
temporary name in the same folder, renamed over the final name, then the folder fsynced so
the rename itself survives a power cut. The same helpers serve shards, model files, the
index's swap, label names, remotes, audit exports and sharing's bookkeeping.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

#: Suffix of every file that is still being written (``gc`` removes old ones).
PARTIAL_SUFFIX = ".partial"
#: Bound parameters per ``IN (...)``: SQLite's default limit is 999+; stay well under.
SQL_IN_CHUNK = 500

T = TypeVar("T")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new file in ``path`` durable (best effort: some file systems and
    platforms cannot open or fsync a directory, and then there is nothing more to do)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A temporary name beside ``path``, unique per process and thread."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}"
                          f"{PARTIAL_SUFFIX}")


def commit(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Rename a fully written and fsynced ``tmp`` over ``final`` and make that durable."""
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *, tmp: Path | None = None,
                **kw: Any) -> Iterator[Any]:
    """Write ``path`` through a temporary file: the block writes, then the bytes are
    fsynced and renamed in. An exception leaves ``path`` untouched and no temporary file."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp or temp_name(final)
    try:
        with open(tmp, mode, **kw) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        commit(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (bytes, or text as UTF-8), atomically and durably."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 1,
                      tmp: Path | None = None) -> None:
    """``obj`` as sorted, indented JSON with a final newline, written atomically."""
    with atomic_open(path, "w", tmp=tmp, encoding="utf-8") as fh:
        fh.write(json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, streamed (weights files and shards can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def try_flock(fd: int, exclusive: bool = True) -> bool:
    """Take an flock on ``fd`` without waiting: True when taken, False when another
    process holds it. Raises ``OSError`` where the file system has no flock."""
    import fcntl

    flag = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(fd, flag | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def flocked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive, waiting flock on ``path`` (created if missing) for the block
    (without ``fcntl``, i.e. not POSIX, the block runs unlocked: callers rename atomically)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def chunks(seq: Sequence[T], n: int = SQL_IN_CHUNK) -> Iterator[Sequence[T]]:
    """``seq`` in slices of at most ``n`` (for ``IN (...)`` lists and batched work)."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
