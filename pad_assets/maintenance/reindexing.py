"""``reindex``: rebuild the SQLite index from the shard files alone, swapped in atomically.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CacheCorruptionError
from ..store import ContentStore, index_admin
from ..store import shards as shard_io
from ..store.fs import commit
from ..store.index import Index
from ..store.index_admin import retired_shards
from ..store.queries import count, items_without_blob
from ..store.store import INDEX_NAME
from .locking import maintenance_lock


# ---------------------------------------------------------------------------------------
# reindex
@dataclass
class ReindexReport:
    root: str
    shards: int = 0
    items: int = 0
    refs: int = 0
    cards: int = 0
    unreadable: list[str] = field(default_factory=list)
    dropped_items: list[str] = field(default_factory=list)
    replaced_corrupt_index: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        lines = [f"cache reindex {self.root}: {self.shards} shards, {self.items} items, "
                 f"{self.refs} refs, {self.cards} cards [{self.seconds:.1f} s]"]
        if self.unreadable:
            lines.append(f"  {len(self.unreadable)} unreadable shard files were skipped "
                         f"(e.g. {self.unreadable[:3]}); run `pad-assets cache verify --repair`")
        if self.dropped_items:
            lines.append(f"  {len(self.dropped_items)} item records whose payload no shard "
                         f"holds were left out (e.g. {self.dropped_items[:3]})")
        if self.replaced_corrupt_index:
            lines.append(f"  the old index was unreadable; moved to "
                         f"{self.replaced_corrupt_index}")
        return "\n".join(lines)


_shard_contents = shard_io.read_shard_contents




def reindex(store: ContentStore) -> ReindexReport:
    """Rebuild the index from the shard files alone, then swap it in atomically.

    The rebuild goes into a new SQLite file; its content then replaces the live index's in
    one transaction, so readers in other processes keep their connections and see either
    the old or the new index, never a mix. (Renaming a new file over a WAL database would
    pair it with the old ``-wal``/``-shm`` files that open connections still use, which
    corrupts it.) Only when the live index cannot be read at all is it moved aside and the
    new file renamed into place. Usage times (``last_used``) and shard creation times are
    carried over from the old index when it is readable; item records whose payload no
    shard holds are left out and reported.
    """
    t0 = time.time()
    rep = ReindexReport(str(store.root))
    with maintenance_lock(store, exclusive=True, what="cache reindex"):
        try:
            retired = retired_shards(store.index)
            old_ok = True
        except (sqlite3.DatabaseError, CacheCorruptionError):  # unreadable: moved aside
            retired, old_ok = {}, False
        tmp_path = store.root / f"{INDEX_NAME}.rebuild-{uuid.uuid4().hex[:12]}"
        fresh = Index(tmp_path)
        try:
            index_admin.ensure_retired_table(fresh)
            indexed = _index_files(store, fresh, retired, rep)
            if old_ok:
                try:
                    index_admin.ensure_retired_table(store.index)  # the swap copies it too
                    index_admin.carry_usage(store.index, fresh)
                except sqlite3.DatabaseError:
                    old_ok = False
            _drop_dangling(fresh, rep)
            index_admin.checkpoint(fresh)
            fresh.close()
            swapped = False
            if old_ok:
                try:
                    _swap_content(store, tmp_path, indexed, rep)
                    swapped = True
                except sqlite3.DatabaseError:
                    swapped = False
            if not swapped:
                _swap_file(store, tmp_path, rep)
        finally:
            fresh.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{tmp_path}{suffix}").unlink(missing_ok=True)
        rep.shards, rep.items, rep.refs, rep.cards = (
            count(store.index, t) for t in ("shards", "items", "refs", "cards"))
    rep.seconds = time.time() - t0
    return rep


def _index_files(store: ContentStore, fresh: Index, retired: dict[str, dict[str, Any]],
                 rep: ReindexReport) -> set[str]:
    indexed: set[str] = set()
    for name, rel in sorted(store.shard_files().items()):
        path = store.root / rel
        if name in retired:  # content already moved: keep it known so recover skips it
            index_admin.index_retired_shard(fresh, name, rel, path.stat().st_size,
                                            retired[name])
            indexed.add(name)
            continue
        try:
            records, blobs = _shard_contents(path)
        except Exception as exc:  # unreadable files are verify's business
            rep.unreadable.append(f"{name} ({type(exc).__name__})")
            continue
        fresh.apply_shard(name, rel, path.stat().st_size, records, blobs)
        indexed.add(name)
    return indexed


def _drop_dangling(fresh: Index, rep: ReindexReport) -> None:
    rep.dropped_items = items_without_blob(fresh)
    if rep.dropped_items:
        index_admin.delete_items(fresh, rep.dropped_items)


def _swap_content(store: ContentStore, tmp_path: Path, indexed: set[str],
                  rep: ReindexReport) -> None:
    index_admin.swap_content(store.root / INDEX_NAME, tmp_path, indexed,
                             lambda rel: _shard_contents(store.root / rel),
                             lambda rel: (store.root / rel).stat().st_size,
                             lambda rel: (store.root / rel).is_file(), rep.unreadable)


def _swap_file(store: ContentStore, tmp_path: Path, rep: ReindexReport) -> None:
    """Last resort for an unreadable index: move it (and its WAL files) aside, rename in."""
    store.index.close()
    live = store.root / INDEX_NAME
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = store.root / f"{INDEX_NAME}.corrupt-{stamp}"
    for suffix in ("-wal", "-shm", ""):
        src = Path(f"{live}{suffix}")
        if src.exists():
            os.replace(src, Path(f"{aside}{suffix}"))
    commit(tmp_path, live)
    rep.replaced_corrupt_index = aside.name
    store.index = Index(live)
