"""Moving live data out of shards (compaction, repair) and retiring the old files.

Data moves before the index does, and the index moves before a file goes (see the
package docstring): this module is the one place that order is implemented.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import IntegrityError
from ..store import ContentStore, index_admin
from ..store import shards as shard_io
from ..store.index_admin import retired_shards
from ..store.queries import OneOf, rows_in_shard, select
from .common import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_PARTIAL_MAX_AGE,
    fsync_dir,
    read_blob_checked,
)


@dataclass
class RewriteOutcome:
    sources: list[str]
    new_shard: str | None
    carried_items: int
    carried_blobs: int
    dropped_blobs: int
    carried_bytes: int


def rewrite_shards(store: ContentStore, sources: Sequence[str], *,
                   disposition: str = "delete", reason: str = "compaction",
                   drop_blobs: Iterable[str] = ()) -> RewriteOutcome:
    """Move the live content of ``sources`` into one new shard and retire the sources.

    Live = what the index still points at: item/ref/card rows whose ``shard`` is a source,
    and blobs stored in a source that some item references (blobs in ``drop_blobs`` never
    are). Payloads are read and digest-checked before they are written; records are rebuilt
    from the index rows (with their original timestamps, so "newest wins" still holds on a
    rebuild). Items whose payload lived in a source but is not carried are removed from the
    index in the same transaction. Raises ``IntegrityError`` if a payload to carry fails its
    check (nothing changes), ``BlobInUse`` if a concurrent writer began to use a blob that
    was about to be dropped (nothing changes).
    """
    index = store.index
    index_admin.ensure_retired_table(index)
    srcs = list(dict.fromkeys(sources))
    paths = dict(select(index, "shards", "shard", "path", shard=OneOf(srcs)))
    drop = set(drop_blobs)
    blob_rows = select(index, "blobs", "blob", "shard", "kind", "dtype", "shape", "nbytes",
                       shard=OneOf(srcs))
    src_blobs = {b[0]: b for b in blob_rows}
    referenced = {r[0] for r in select(index, "items", "blob", distinct=True,
                                       blob=OneOf(list(src_blobs)))}
    carry = {b: row for b, row in src_blobs.items() if b in referenced and b not in drop}
    dead = [b for b in src_blobs if b not in carry]
    # items that lose their payload with this rewrite (corrupt or explicitly dropped blobs)
    lose = {r[0] for r in select(index, "items", "key", blob=OneOf(dead))}
    records = _live_records(index, srcs, lose)
    new = _write_carried(store, paths, carry, records)
    now = time.time()
    try:
        # A put() that deduplicated against a blob we are about to drop makes it live.
        index_admin.commit_rewrite(index, srcs, paths, new,
                                   {b: row[1] for b, row in carry.items()}, dead, lose,
                                   disposition, reason,
                                   lambda rel: (store.root / rel).exists(), now)
    except BaseException:
        if new is not None:
            # The new file is already under shards/, where another process's recover() may
            # have indexed it: never unlink it. Index it instead; it holds copies only, so
            # nothing points at it and the next gc deletes it the safe way.
            with contextlib.suppress(Exception):
                index.apply_shard(new[0], new[1], new[2], records,
                                  [{"blob": b, "kind": r[2], "dtype": r[3],
                                    "shape": json.loads(r[4]), "nbytes": r[5]}
                                   for b, r in carry.items()])
        raise
    return RewriteOutcome(srcs, new[0] if new else None,
                          sum(1 for r in records if r["type"] == "item"), len(carry),
                          len(dead), sum(int(r[5]) for r in carry.values()))


def _live_records(index: Any, srcs: list[str], lose: set[str]) -> list[dict[str, Any]]:
    """The records the new shard carries, rebuilt from the index rows that point at the
    sources (not from the old files, which may be damaged), with their original
    timestamps so "newest wins" still holds on a rebuild; items in ``lose`` are left out."""
    item_rows = select(index, "items", "key", "layer", "blob", "meta", "created",
                       shard=OneOf(srcs))
    ref_rows = select(index, "refs", "name", "key", "updated", shard=OneOf(srcs))
    card_rows = select(index, "cards", "dataset", "card_id", "raw_key", "status", "detail",
                       "updated", shard=OneOf(srcs))
    records: list[dict[str, Any]] = []
    for key, layer, blob, meta, created in item_rows:
        if key in lose:
            continue
        records.append({"type": "item", "key": key, "layer": layer, "blob": blob,
                        "meta": json.loads(meta), "ts": float(created)})
    records += [{"type": "ref", "name": n, "key": k, "ts": float(u)} for n, k, u in ref_rows]
    records += [{"type": "card", "dataset": d, "card_id": int(c), "raw_key": r, "status": s,
                 "detail": det, "ts": float(u)} for d, c, r, s, det, u in card_rows]
    return records


def _write_carried(store: ContentStore, paths: dict[str, str], carry: dict[str, Any],
                   records: list[dict[str, Any]]) -> tuple[str, str, int] | None:
    """Write the new shard: every carried payload read from its source and digest-checked
    before it is written (a bad one raises and nothing changes), stored as new writes are.
    Returns (shard, path, size), or None when nothing is live."""
    import h5py

    for b, row in carry.items():
        rel = paths.get(row[1])
        if rel is None or not (store.root / rel).is_file():
            raise IntegrityError(f"blob {b} must be carried out of shard {row[1]}, but the "
                                 "shard file is gone; run `pad-assets cache verify --repair`")
    handles: dict[str, Any] = {}

    def payloads() -> Iterator[shard_io.BlobPayload]:
        for b, row in carry.items():
            s = row[1]
            f = handles.get(s)
            if f is None:
                f = handles[s] = h5py.File(store.root / paths[s], "r", locking=False)
            try:
                arr, kind = read_blob_checked(f, b)
            except IntegrityError as exc:
                raise IntegrityError(f"shard {s}: {exc}; the shard was left as it is, run "
                                     "`pad-assets cache verify --repair`") from exc
            # stored as new writes are: compressed arrays stay compressed after compaction
            codec = shard_io.codec_for(arr) if kind == "array" and store.compress else ""
            yield shard_io.BlobPayload(b, arr, kind, codec)

    try:
        if records or carry:
            return shard_io.write_shard(store.root, payloads(), records)
        return None
    finally:
        for f in handles.values():
            with contextlib.suppress(Exception):
                f.close()


def purge_retired(store: ContentStore, grace_seconds: float = DEFAULT_GRACE_SECONDS,
                  wait: bool = True) -> list[str]:
    """Delete (or quarantine) retired shard files once their grace period has passed.

    With ``wait`` the call sleeps until the youngest retired shard is old enough. The file
    goes first and the rows after, so a crash in between leaves a row that the next purge
    drops, never an unindexed file that ``recover`` would bring back.
    """
    retired = retired_shards(store.index)
    if not retired:
        return []
    if wait:
        youngest = max(r["retired_at"] for r in retired.values())
        delay = youngest + grace_seconds - time.time()
        if delay > 0:
            time.sleep(delay)
    done = []
    now = time.time()
    for shard, r in sorted(retired.items()):
        if r["retired_at"] + grace_seconds > now:
            continue
        if rows_in_shard(store.index, shard):  # something points here again (should not
            index_admin.unretire(store.index, shard)  # happen): keep it, un-retire
            continue
        path = store.root / r["path"]
        store._reader.close(r["path"])
        if path.exists():
            if r["disposition"] == "quarantine":
                qdir = store.root / "quarantine"
                qdir.mkdir(parents=True, exist_ok=True)
                os.replace(path, qdir / path.name)
            else:
                path.unlink(missing_ok=True)
            fsync_dir(path.parent)
        index_admin.forget_shard(store.index, shard)
        done.append(shard)
    return done


def clean_partials(store: ContentStore, max_age: float = DEFAULT_PARTIAL_MAX_AGE
                   ) -> list[str]:
    """Remove ``tmp/*.partial`` leftovers of crashed writers older than ``max_age``."""
    removed = []
    tmp = store.root / "tmp"
    if not tmp.is_dir():
        return removed
    cutoff = time.time() - max_age
    for f in tmp.iterdir():
        with contextlib.suppress(OSError):
            if shard_io.PARTIAL_SUFFIX not in f.name or f.stat().st_mtime >= cutoff:
                continue
            if f.is_dir():  # staging directory of a crashed import or pull
                shutil.rmtree(f)
            else:
                f.unlink()
            removed.append(f.name)
    return removed


def _partials(store: ContentStore) -> list[tuple[str, int, float]]:
    tmp = store.root / "tmp"
    out = []
    if tmp.is_dir():
        for f in tmp.iterdir():
            with contextlib.suppress(OSError):
                if shard_io.PARTIAL_SUFFIX in f.name:
                    st = f.stat()
                    size = st.st_size if f.is_file() else sum(
                        p.stat().st_size for p in f.rglob("*") if p.is_file())
                    out.append((f.name, size, st.st_mtime))
    return out
