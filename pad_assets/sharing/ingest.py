"""Taking verified foreign content into the cache (shared by import and pull).

Why a module of its own: verified content is rewritten into fresh local shards (never copied
byte for byte when vetting changed anything), staged outside ``shards/``, moved in in an
order that ``recover`` can always index, then indexed in one transaction.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import IntegrityError
from ..maintenance import (
    EXAMPLES,
    blob_row,
    read_blob_checked,
)
from ..store import ContentStore
from ..store import shards as shard_io
from ..store.fs import commit
from .checks import _Inspected


def _rewrite_into(store: ContentStore, shards: Sequence[_Inspected], staging: Path
                  ) -> list[tuple[str, str, int, list[dict[str, Any]], list[dict[str, Any]]]]:
    """Write the verified content of foreign shards into fresh shards under ``staging``
    (same file system as the cache, outside its ``shards/``: nothing there is visible to
    ``recover`` until the caller moves it in).

    Payloads the cache already holds are not written again; item records the cache already
    holds are skipped; refs and cards go as ``proposals.vet`` left them.
    Payloads are re-read and re-checked while writing, so a file that changed since it was
    inspected fails here instead of entering the cache.

    Refs and card records go into one record-only shard, last in the returned order: the
    caller moves files in that order, so a process killed between two moves leaves shards
    that ``recover`` can index on their own (items with their payloads) and never a card
    or ref pointing at an item whose shard was not moved in yet.
    """
    import h5py

    have_blobs = store.index.present_blobs([b for s in shards for b in s.blobs])
    have_items = store.has([r["key"] for s in shards for r in s.records if r["type"] == "item"])
    written: list[tuple[str, str, int, list[dict[str, Any]], list[dict[str, Any]]]] = []
    pointers = [r for s in shards for r in s.records if r["type"] != "item"]
    try:
        for s in shards:
            records = [r for r in s.records if r["type"] == "item" and r["key"] not in have_items]
            new_blobs = [b for b in s.blobs if b not in have_blobs]
            if not records and not new_blobs:
                continue
            rows: list[dict[str, Any]] = []
            with h5py.File(s.path, "r", locking=False) as f:
                def payloads(f: Any = f, new_blobs: list[str] = new_blobs,
                             rows: list[dict[str, Any]] = rows
                             ) -> Iterator[shard_io.BlobPayload]:
                    for b in new_blobs:
                        arr, kind = read_blob_checked(f, b)
                        rows.append(blob_row(b, arr, kind))
                        yield shard_io.BlobPayload(b, arr, kind)

                name, rel, nbytes = shard_io.write_shard(staging, payloads(), records)
            written.append((name, rel, nbytes, records, rows))
            have_blobs |= set(new_blobs)
        if pointers:
            name, rel, nbytes = shard_io.write_shard(staging, [], pointers)
            written.append((name, rel, nbytes, pointers, []))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


def _ignored_lines(ignored: Sequence[str]) -> str:
    if not ignored:
        return ""
    more = f"\n  ... and {len(ignored) - EXAMPLES} more" if len(ignored) > EXAMPLES else ""
    return (f"\n{len(ignored)} refs/card records not taken (this cache's own are kept; "
            "others did not verify):\n" + "\n".join(f"  {w}" for w in ignored[:EXAMPLES]) + more)


def _payload_reader(store: ContentStore, shards: Sequence[_Inspected]
                    ) -> Callable[[str], bytes | None]:
    """Bytes of an item by key, from the verified foreign shards or else the cache."""
    import h5py

    blob_of = {r["key"]: r.get("blob") for s in shards for r in s.records
               if r["type"] == "item"}
    where = {b: s.path for s in shards for b in s.blobs}

    def read(key: str) -> bytes | None:
        b = blob_of.get(key)
        if b in where:
            with h5py.File(where[b], "r", locking=False) as f:
                arr, kind = read_blob_checked(f, b)
            return arr.tobytes() if kind == "bytes" else None
        try:
            value = store.get_many([key], touch=False).get(key)
        except IntegrityError:
            return None
        return value if isinstance(value, bytes) else None

    return read


def _move_in_and_index(store: ContentStore, staging: Path, written: list[Any]) -> None:
    """Move verified staged shards into the store, in order, then index them in one
    transaction (a crash in between leaves complete shards that ``recover()`` indexes)."""
    for _, rel, *_ in written:
        final = store.root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        commit(staging / rel, final)
    store.index.apply_shards(written)

