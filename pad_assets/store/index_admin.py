"""Writes to the index that maintenance makes (gc, verify --repair, reindex, ``cache rm``).

The store writes items, refs and cards through ``Index.apply_shard``. What maintenance
changes besides that is here: removing rows, the table of retired shards (files whose
content moved and which wait out a grace period before deletion), the commit of a shard
rewrite, and the rebuild-and-swap of the whole index. Each function is one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .fs import chunks
from .queries import has_table, select

if TYPE_CHECKING:
    from .index import Index

RETIRED_DDL = """
CREATE TABLE IF NOT EXISTS ops_retired_shards (
    shard TEXT PRIMARY KEY, path TEXT NOT NULL, disposition TEXT NOT NULL,
    retired_at REAL NOT NULL, reason TEXT NOT NULL
)"""

#: Every table and its columns, in the order a rebuild copies them.
TABLES = {
    "shards": "shard, path, nbytes, created",
    "blobs": "blob, shard, kind, dtype, shape, nbytes",
    "items": "key, layer, blob, shard, meta, created, last_used",
    "refs": "name, key, updated, shard",
    "cards": "dataset, card_id, raw_key, status, detail, updated, shard",
    "ops_retired_shards": "shard, path, disposition, retired_at, reason",
}


# ---------------------------------------------------------------------------------------
# retired shards
def ensure_retired_table(index: Index) -> None:
    index.query(RETIRED_DDL)


def retired_shards(index: Index) -> dict[str, dict[str, Any]]:
    """Retired shards (read-only: a cache that never retired one has no table, and a
    check must not create one: on a full disk that write is what failed)."""
    if not has_table(index, "retired_shards"):
        return {}
    rows = select(index, "retired_shards", "shard", "path", "disposition", "retired_at",
                  "reason")
    return {s: {"path": p, "disposition": d, "retired_at": t, "reason": r}
            for s, p, d, t, r in rows}


def unretire(index: Index, shard: str) -> None:
    index.query("DELETE FROM ops_retired_shards WHERE shard=?", (shard,))


def forget_shard(index: Index, shard: str) -> None:
    """Drop a shard whose file is gone, and its retirement row."""
    with index.transaction() as con:
        con.execute("DELETE FROM shards WHERE shard=?", (shard,))
        con.execute("DELETE FROM ops_retired_shards WHERE shard=?", (shard,))


# ---------------------------------------------------------------------------------------
# removing rows
def delete_items(index: Index, keys: Iterable[str]) -> None:
    with index.transaction() as con:
        con.executemany("DELETE FROM items WHERE key=?", [(k,) for k in keys])


def remove_rows(index: Index, items: Iterable[str], refs: Iterable[str],
                dataset_cards: str | None = None) -> None:
    """Items, refs and (optionally) every card record of one dataset, in one transaction."""
    with index.transaction() as con:
        con.executemany("DELETE FROM items WHERE key=?", [(k,) for k in items])
        con.executemany("DELETE FROM refs WHERE name=?", [(r,) for r in refs])
        if dataset_cards is not None:
            con.execute("DELETE FROM cards WHERE dataset=?", (dataset_cards,))


def delete_blobs_of_unknown_shards(index: Index) -> None:
    """Payload rows of shards the index does not know."""
    with index.transaction() as con:
        con.execute("DELETE FROM blobs WHERE shard NOT IN (SELECT shard FROM shards)")


def drop_pointers(index: Index, refs: Sequence[str], cards: Sequence[tuple[str, int]],
                  now: float, future_limit: float) -> tuple[set[str], int]:
    """Restamp refs and cards stamped after ``future_limit`` to ``now`` and delete the named
    refs and cards; returns the shards that held any of them (to be rewritten) and how
    many rows were restamped."""
    with index.transaction() as con:
        shards = {r[0] for r in con.execute("SELECT shard FROM refs WHERE updated > ?",
                                            (future_limit,))}
        shards |= {r[0] for r in con.execute("SELECT shard FROM cards WHERE updated > ?",
                                             (future_limit,))}
        future = con.execute("UPDATE refs SET updated=? WHERE updated > ?",
                             (now, future_limit)).rowcount
        future += con.execute("UPDATE cards SET updated=? WHERE updated > ?",
                              (now, future_limit)).rowcount
        for name in refs:
            shards |= {r[0] for r in con.execute("SELECT shard FROM refs WHERE name=?",
                                                 (name,))}
            con.execute("DELETE FROM refs WHERE name=?", (name,))
        for ds, cid in cards:
            shards |= {r[0] for r in con.execute(
                "SELECT shard FROM cards WHERE dataset=? AND card_id=?", (ds, int(cid)))}
            con.execute("DELETE FROM cards WHERE dataset=? AND card_id=?", (ds, int(cid)))
    return shards, future


# ---------------------------------------------------------------------------------------
# a shard rewrite
class BlobInUse(Exception):
    """A blob about to be dropped became the payload of an item nobody expected."""


def commit_rewrite(index: Index, sources: Sequence[str], paths: Mapping[str, str],
                   new: tuple[str, str, int] | None, carried: Mapping[str, str],
                   dead: Sequence[str], lose: set[str], disposition: str, reason: str,
                   exists: Callable[[str], bool], now: float) -> None:
    """Point the index at the rewritten shard ``new`` and retire ``sources``, in one
    transaction. ``carried``: blob -> the source it moved out of; ``dead``: source blobs
    not carried, whose items (``lose``) go. Raises ``BlobInUse`` (nothing changes) if an
    item outside ``lose`` started to use a dead blob meanwhile."""
    with index.transaction() as con:
        for part in chunks(list(dead)):
            marks = ",".join("?" * len(part))
            for (key,) in con.execute(f"SELECT key FROM items WHERE blob IN ({marks})", part):
                if key not in lose:
                    raise BlobInUse(f"item {key} started to use a blob of {list(sources)}")
        marks = ",".join("?" * len(sources))
        if new is not None:
            name, rel, nbytes = new
            con.execute("INSERT OR IGNORE INTO shards(shard, path, nbytes, created) "
                        "VALUES (?,?,?,?)", (name, rel, nbytes, now))
            con.executemany("UPDATE blobs SET shard=? WHERE blob=? AND shard=?",
                            [(name, b, src) for b, src in carried.items()])
        con.execute(f"DELETE FROM blobs WHERE shard IN ({marks})", list(sources))
        con.executemany("DELETE FROM items WHERE key=?", [(k,) for k in lose])
        if new is not None:
            for table in ("items", "refs", "cards"):
                con.execute(f"UPDATE {table} SET shard=? WHERE shard IN ({marks})",
                            (new[0], *sources))
        for s in sources:
            rel = paths.get(s)
            if rel is not None and exists(rel):
                con.execute("INSERT OR REPLACE INTO ops_retired_shards(shard, path, "
                            "disposition, retired_at, reason) VALUES (?,?,?,?,?)",
                            (s, rel, disposition, now, reason))
            else:  # the file is already gone: nothing to wait for
                con.execute("DELETE FROM shards WHERE shard=?", (s,))


# ---------------------------------------------------------------------------------------
# rebuilding the index from the shards
def index_retired_shard(fresh: Index, name: str, rel: str, nbytes: int,
                        retired: Mapping[str, Any]) -> None:
    """Keep a retired shard known to a rebuilt index (so recovery does not revive it)."""
    with fresh.transaction() as con:
        con.execute("INSERT OR IGNORE INTO shards(shard, path, nbytes, created) "
                    "VALUES (?,?,?,?)", (name, rel, nbytes, time.time()))
        con.execute("INSERT OR REPLACE INTO ops_retired_shards VALUES (?,?,?,?,?)",
                    (name, retired["path"], retired["disposition"], retired["retired_at"],
                     retired["reason"]))


def carry_usage(old: Index, fresh: Index) -> None:
    """Last-use times of items and creation times of shards, from the old index."""
    used = select(old, "items", "key", "last_used")
    created = select(old, "shards", "shard", "created")
    with fresh.transaction() as con:
        con.executemany("UPDATE items SET last_used=MAX(last_used, ?) WHERE key=?",
                        [(lu, k) for k, lu in used])
        con.executemany("UPDATE shards SET created=? WHERE shard=?",
                        [(c, s) for s, c in created])


def checkpoint(index: Index) -> None:
    index.query("PRAGMA wal_checkpoint(TRUNCATE)")


ShardReader = Callable[[str], tuple[list[dict[str, Any]], list[dict[str, Any]]]]


def swap_content(live_path: Path, fresh_path: Path, indexed: set[str],
                 read_shard: ShardReader, nbytes_of: Callable[[str], int],
                 exists: Callable[[str], bool], unreadable: list[str]) -> None:
    """Replace the live index's rows by the rebuilt index's, in one transaction of the live
    file (open connections of other processes keep working). Shards a writer indexed after
    the rebuild's scan are kept: read again inside the lock (``read_shard(rel)``)."""
    from .index import Index

    con = sqlite3.connect(live_path, timeout=60.0, isolation_level=None)
    try:
        con.execute("PRAGMA busy_timeout=60000")
        con.execute("ATTACH DATABASE ? AS fresh", (str(fresh_path),))
        con.execute("BEGIN IMMEDIATE")
        try:
            late = [(s, p) for s, p in con.execute("SELECT shard, path FROM main.shards")
                    if s not in indexed and exists(p)]
            for table, cols in TABLES.items():
                con.execute(f"DELETE FROM main.{table}")
                con.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM "
                            f"fresh.{table}")
            for s, p in late:
                try:
                    records, blobs = read_shard(p)
                except Exception:
                    unreadable.append(f"{s} (indexed during the rebuild, unreadable)")
                    continue
                now = time.time()
                con.execute("INSERT OR IGNORE INTO shards(shard, path, nbytes, created) VALUES "
                            "(?,?,?,?)", (s, p, nbytes_of(p), now))
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
