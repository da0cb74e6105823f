"""Access to a remote shard tier through fsspec (any URL; a local directory works).

Why a module of its own: where the tier's files are, how its index is read and checked, and
how a file is published there (temporary name + rename on file systems, one PUT on object
stores) are independent of what push and pull decide to copy.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, InvalidInputError
from ..maintenance import (
    is_hex_key,
)
from ..store import shards as shard_io
from ..store.fs import commit
from . import limits
from .checks import _bundle_rel_ok, _load_json


def _remote(url: str) -> tuple[Any, str]:
    import fsspec

    if not url or not isinstance(url, str):
        raise InvalidInputError(f"remote {url!r}: expected an fsspec URL or a directory path")
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as exc:
        raise InvalidInputError(f"remote {url!r}: {exc}") from exc
    return fs, root.rstrip("/")


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _read_remote_index(fs: Any, root: str, url: str) -> dict[str, Any]:
    path = f"{root}/{limits.REMOTE_INDEX}"
    if not fs.exists(path):
        return {"format": limits.REMOTE_FORMAT, "version": limits.FORMAT_VERSION, "shards": {}}
    with fs.open(path, "rb") as f:
        data = f.read(limits.MAX_JSON_BYTES + 1)
    idx = _load_json(data, f"remote index {url}/{limits.REMOTE_INDEX}")
    if idx.get("format") != limits.REMOTE_FORMAT or not isinstance(idx.get("shards"), dict):
        raise IntegrityError(f"{url}/{limits.REMOTE_INDEX} is not a pad_assets remote index "
                             f"(format {idx.get('format')!r})")
    bad = [f"entry {name!r}: {why}" for name, e in sorted(idx["shards"].items())
           if (why := _remote_entry_problem(e))]
    if bad:
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise IntegrityError(f"remote {url}: {limits.REMOTE_INDEX} has malformed entries, nothing "
                             f"was copied: {'; '.join(bad[:5])}{more}. Expected each entry "
                             "to be an object with 'path' (text), 'datasets' (list of names), "
                             "'sha256' (64 hex) and 'bytes' (a size)")
    return idx


def _remote_entry_problem(e: Any) -> str | None:
    """Why one shard entry of a remote index cannot be used (None when it can)."""
    if not isinstance(e, dict):
        return f"is {type(e).__name__} {str(e)[:40]!r}, expected an object"
    if "path" in e and not isinstance(e["path"], str):
        return f"'path' is {type(e['path']).__name__}, expected text"
    ds = e.get("datasets", [])
    if not isinstance(ds, list) or not all(isinstance(d, str) for d in ds):
        return f"'datasets' is {str(ds)[:40]!r}, expected a list of dataset names"
    if "sha256" in e and e["sha256"] is not None and not is_hex_key(e["sha256"]):
        return f"'sha256' is {str(e['sha256'])[:70]!r}, expected 64 hex digits"
    n = e.get("bytes")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        return f"'bytes' is {str(n)[:40]!r}, expected a non-negative integer"
    return None


def _remote_files(fs: Any, root: str) -> dict[str, str]:
    """shard name -> remote path for every well-named shard file under ``shards/``."""
    base = f"{root}/shards"
    if not fs.exists(base):
        return {}
    out = {}
    for p in fs.find(base):
        rel = p[len(root) + 1:] if p.startswith(root + "/") else p
        name = _bundle_rel_ok(rel)
        if name:
            out[name] = p
    return out


def _write_remote(fs: Any, root: str, rel: str, src: Path | bytes) -> None:
    """Local-style file systems: temporary name, fsync, rename. Object stores: one PUT
    (objects appear whole or not at all)."""
    final = f"{root}/{rel}"
    if _is_local(fs):
        final_p = Path(final)
        tmp_dir = Path(root) / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        final_p.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{final_p.name}.{uuid.uuid4().hex[:8]}{shard_io.PARTIAL_SUFFIX}"
        try:
            with open(tmp, "wb") as out:
                fcntl.flock(out.fileno(), fcntl.LOCK_EX)  # "alive": see clean_dead_partials
                if isinstance(src, bytes):
                    out.write(src)
                else:
                    with open(src, "rb") as fin:
                        shutil.copyfileobj(fin, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            commit(tmp, final_p)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
    if isinstance(src, bytes):
        with fs.open(final, "wb") as out:
            out.write(src)
    else:
        fs.put_file(str(src), final)

