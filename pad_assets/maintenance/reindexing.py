"""``reindex``: rebuild the SQLite index from the shard files alone, swapped in atomically.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CacheCorruptionError
from ..store import ContentStore
from ..store import shards as shard_io
from ..store.fs import commit
from ..store.index import Index
from ..store.store import INDEX_NAME
from .common import ensure_ops_schema, retired_shards
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


_TABLES = {
    "shards": "shard, path, nbytes, created",
    "blobs": "blob, shard, kind, dtype, shape, nbytes",
    "items": "key, layer, blob, shard, meta, created, last_used",
    "refs": "name, key, updated, shard",
    "cards": "dataset, card_id, raw_key, status, detail, updated, shard",
    "ops_retired_shards": "shard, path, disposition, retired_at, reason",
}


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
            ensure_ops_schema(fresh)
            indexed = _index_files(store, fresh, retired, rep)
            if old_ok:
                try:
                    ensure_ops_schema(store.index)  # the swap copies this table too
                    _carry_usage(store, fresh)
                except sqlite3.DatabaseError:
                    old_ok = False
            _drop_dangling(fresh, rep)
            fresh.query("PRAGMA wal_checkpoint(TRUNCATE)")
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
        q = store.index.query
        rep.shards = q("SELECT COUNT(*) FROM shards")[0][0]
        rep.items = q("SELECT COUNT(*) FROM items")[0][0]
        rep.refs = q("SELECT COUNT(*) FROM refs")[0][0]
        rep.cards = q("SELECT COUNT(*) FROM cards")[0][0]
    rep.seconds = time.time() - t0
    return rep


def _index_files(store: ContentStore, fresh: Index, retired: dict[str, dict[str, Any]],
                 rep: ReindexReport) -> set[str]:
    indexed: set[str] = set()
    for name, rel in sorted(store.shard_files().items()):
        path = store.root / rel
        if name in retired:  # content already moved: keep it known so recover skips it
            r = retired[name]
            with fresh.transaction() as con:
                con.execute("INSERT OR IGNORE INTO shards(shard, path, nbytes, created) "
                            "VALUES (?,?,?,?)", (name, rel, path.stat().st_size, time.time()))
                con.execute("INSERT OR REPLACE INTO ops_retired_shards VALUES (?,?,?,?,?)",
                            (name, r["path"], r["disposition"], r["retired_at"], r["reason"]))
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


def _carry_usage(store: ContentStore, fresh: Index) -> None:
    old = store.index.query("SELECT key, last_used FROM items")
    created = store.index.query("SELECT shard, created FROM shards")
    with fresh.transaction() as con:
        con.executemany("UPDATE items SET last_used=MAX(last_used, ?) WHERE key=?",
                        [(lu, k) for k, lu in old])
        con.executemany("UPDATE shards SET created=? WHERE shard=?",
                        [(c, s) for s, c in created])


def _drop_dangling(fresh: Index, rep: ReindexReport) -> None:
    rows = fresh.query("SELECT key FROM items WHERE blob IS NOT NULL AND blob NOT IN "
                       "(SELECT blob FROM blobs)")
    rep.dropped_items = [k for (k,) in rows]
    if rows:
        with fresh.transaction() as con:
            con.executemany("DELETE FROM items WHERE key=?", rows)


def _swap_content(store: ContentStore, tmp_path: Path, indexed: set[str],
                  rep: ReindexReport) -> None:
    con = sqlite3.connect(store.root / INDEX_NAME, timeout=60.0, isolation_level=None)
    try:
        con.execute("PRAGMA busy_timeout=60000")
        con.execute("ATTACH DATABASE ? AS fresh", (str(tmp_path),))
        con.execute("BEGIN IMMEDIATE")
        try:
            # shards indexed by a writer after the scan: keep them (read inside the lock)
            late = [(s, p) for s, p in con.execute("SELECT shard, path FROM main.shards")
                    if s not in indexed and (store.root / p).is_file()]
            for table, cols in _TABLES.items():
                con.execute(f"DELETE FROM main.{table}")
                con.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM "
                            f"fresh.{table}")
            for s, p in late:
                try:
                    records, blobs = _shard_contents(store.root / p)
                except Exception:
                    rep.unreadable.append(f"{s} (indexed during the rebuild, unreadable)")
                    continue
                now = time.time()
                con.execute("INSERT OR IGNORE INTO shards(shard, path, nbytes, created) VALUES "
                            "(?,?,?,?)", (s, p, (store.root / p).stat().st_size, now))
                con.executemany(
                    "INSERT OR IGNORE INTO blobs(blob, shard, kind, dtype, shape, nbytes) "
                    "VALUES (?,?,?,?,?,?)",
                    [(b["blob"], s, b["kind"], b["dtype"], json.dumps(b["shape"]), b["nbytes"])
                     for b in blobs])
                Index._apply_records(con, s, records, now)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("DETACH DATABASE fresh")
    finally:
        con.close()


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
