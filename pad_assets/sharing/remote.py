"""Access to a remote shard tier through fsspec (any URL; a local directory works).

Why a module of its own: where the tier's files are, how its index is read and checked, and
how a file is published there (temporary name + rename on file systems, one PUT on object
stores) are independent of what push and pull decide to copy.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, InvalidInputError
from ..maintenance import (
    is_hex_key,
    is_shard_name,
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
    """Every published shard of the remote: ``{"shards": {name: entry}}``.

    Entries come from the immutable per-shard entry objects under ``index/`` (what push
    writes, see ``publish_entry``) and, for remotes written before those existed, from a
    legacy ``index.json``. Several entries of one shard (pushed from several machines, or
    with more datasets later) are merged: datasets are united; sha256 and size must agree,
    else the shard is marked ``conflict`` and no pull takes it. A malformed entry is refused
    with the remote and the shard named, before anything is copied.
    """
    _fresh_listing(fs, root)
    shards: dict[str, dict[str, Any]] = {}
    bad: list[str] = []
    legacy = f"{root}/{limits.REMOTE_INDEX}"
    if fs.exists(legacy):
        with fs.open(legacy, "rb") as f:
            data = f.read(limits.MAX_JSON_BYTES + 1)
        idx = _load_json(data, f"remote index {url}/{limits.REMOTE_INDEX}")
        if idx.get("format") != limits.REMOTE_FORMAT or not isinstance(idx.get("shards"), dict):
            raise IntegrityError(f"{url}/{limits.REMOTE_INDEX} is not a pad_assets remote "
                                 f"index (format {idx.get('format')!r})")
        bad += [f"entry {name!r}: {why}" for name, e in sorted(idx["shards"].items())
                if (why := _remote_entry_problem(e))]
        if not bad:
            shards = {n: dict(e) for n, e in idx["shards"].items()}
    objects = _entry_objects(fs, root)
    blobs = fs.cat(sorted(objects.values())) if objects else {}
    for name, path in sorted(objects.items()):
        shard = name.rsplit(".", 1)[0]
        try:
            e = _load_json(blobs.get(path) or b"", f"entry {path}")
        except IntegrityError as exc:
            bad.append(f"entry {shard!r}: {exc}")
            continue
        why = _remote_entry_problem(e) or _entry_object_problem(shard, e)
        if why:
            bad.append(f"entry {shard!r}: {why}")
            continue
        _merge_entry(shards, shard, e)
    if bad:
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise IntegrityError(f"remote {url}: the shard index has malformed entries, nothing "
                             f"was copied: {'; '.join(bad[:5])}{more}. Expected each entry "
                             "to be an object with 'path' (text), 'datasets' (list of names), "
                             "'sha256' (64 hex) and 'bytes' (a size)")
    return {"format": limits.REMOTE_FORMAT, "version": limits.FORMAT_VERSION,
            "shards": shards}


def _merge_entry(shards: dict[str, dict[str, Any]], name: str, e: dict[str, Any]) -> None:
    old = shards.get(name)
    if old is None:
        shards[name] = {k: v for k, v in e.items() if k not in ("format", "version", "shard")}
        return
    old["datasets"] = sorted(set(old.get("datasets", [])) | set(e.get("datasets", [])))
    for k in ("sha256", "bytes"):
        if old.get(k) is None:
            old[k] = e.get(k)
        elif e.get(k) is not None and e[k] != old[k]:
            old["conflict"] = (f"entries disagree on {k} ({old[k]} and {e[k]}): two different "
                               "files were published under one name")


def _entry_object_problem(shard: str, e: dict[str, Any]) -> str | None:
    """An entry object must name its shard, where it is, its sha256 and its size."""
    if e.get("format") != limits.ENTRY_FORMAT:
        return f"format {e.get('format')!r}, expected {limits.ENTRY_FORMAT!r}"
    if e.get("shard") != shard or e.get("path") != shard_io.shard_relpath(shard):
        return (f"names shard {e.get('shard')!r} at {e.get('path')!r}, expected "
                f"{shard_io.shard_relpath(shard)}")
    if not is_hex_key(e.get("sha256")) or e.get("bytes") is None:
        return "has no sha256 or size (an entry is written only after a verified copy)"
    return None


def _entry_objects(fs: Any, root: str) -> dict[str, str]:
    """``<shard>.<16 hex>`` -> remote path of every entry object under ``index/``."""
    base = f"{root}/{limits.ENTRY_DIR}"
    if not fs.exists(base):
        return {}
    out = {}
    for p in fs.find(base):
        m = _ENTRY_NAME.match(p.rsplit("/", 1)[-1])
        if m and is_shard_name(m.group(1)):
            out[f"{m.group(1)}.{m.group(2)}"] = p
    return out


_ENTRY_NAME = re.compile(r"^(.+)\.([0-9a-f]{16})\.json$")


def _fresh_listing(fs: Any, root: str) -> None:
    """Forget fsspec's cached listings: other machines publish while this process lives.
    s3fs caches directory listings per file-system instance (instances are shared) and
    answers "not found" for a file missing from a cached listing of its folder; clearing
    only ``root`` leaves its sub-folders' listings (``index/<prefix>/``) stale."""
    del root  # every listing under the tier may be stale, not only the root's
    fs.invalidate_cache()  # a no-op on file systems without a listing cache


def entry_rel(name: str, entry: dict[str, Any]) -> str:
    """Where an entry object lives: named by a digest of what it says, so writing the same
    entry twice (a retried push, two machines pushing one shard) is the same object."""
    said = {k: entry.get(k) for k in ("shard", "path", "sha256", "bytes", "datasets")}
    digest = hashlib.sha256(json.dumps(said, sort_keys=True).encode()).hexdigest()[:16]
    return f"{limits.ENTRY_DIR}/{name[:6]}/{name}.{digest}.json"


def publish_entry(fs: Any, root: str, name: str, sha256: str, nbytes: int,
                  datasets: list[str], pushed_from: str) -> str:
    """Write one immutable entry object for a shard whose bytes are on the remote and
    verified; returns its relative path. This is what makes a shard visible to pulls."""
    entry = {"format": limits.ENTRY_FORMAT, "version": limits.FORMAT_VERSION, "shard": name,
             "path": shard_io.shard_relpath(name), "sha256": sha256, "bytes": nbytes,
             "datasets": sorted(datasets), "pushed_at": time.time(),
             "pushed_from": pushed_from}
    rel = entry_rel(name, entry)
    _write_remote(fs, root, rel, json.dumps(entry, indent=1, sort_keys=True).encode())
    return rel


def remote_sha256(fs: Any, path: str) -> tuple[str, int]:
    """sha256 and size of a remote file, read back from the remote (not from a cache)."""
    h = hashlib.sha256()
    n = 0
    with fs.open(path, "rb", cache_type="none") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def remote_index(url: str) -> dict[str, dict[str, Any]]:
    """Shard name -> merged entry of every shard published on a remote (for tools, tests)."""
    fs, root = _remote(url)
    return _read_remote_index(fs, root, url)["shards"]


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
    """shard name -> remote path for every well-named shard file under ``shards/``
    (published or not: a file without an entry object is not yet, or never, published)."""
    _fresh_listing(fs, root)
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

