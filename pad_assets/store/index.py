"""The SQLite index: content key -> shard location, checksum, size and metadata.

WAL mode lets many readers run beside one writer across processes; a busy timeout turns
lock contention into waiting rather than errors. The index is a cache of what the shards
say: ``rebuild`` recreates it from the shards' own records.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import CacheCorruptionError, CacheFullError
from .fs import chunks

SCHEMA = """
CREATE TABLE IF NOT EXISTS shards (
    shard TEXT PRIMARY KEY, path TEXT NOT NULL, nbytes INTEGER NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    blob TEXT PRIMARY KEY, shard TEXT NOT NULL, kind TEXT NOT NULL, dtype TEXT NOT NULL,
    shape TEXT NOT NULL, nbytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY, layer TEXT NOT NULL, blob TEXT, shard TEXT NOT NULL,
    meta TEXT NOT NULL, created REAL NOT NULL, last_used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_layer ON items(layer);
CREATE INDEX IF NOT EXISTS items_blob ON items(blob);
CREATE TABLE IF NOT EXISTS refs (
    name TEXT PRIMARY KEY, key TEXT NOT NULL, updated REAL NOT NULL, shard TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cards (
    dataset TEXT NOT NULL, card_id INTEGER NOT NULL, raw_key TEXT, status TEXT NOT NULL,
    detail TEXT NOT NULL, updated REAL NOT NULL, shard TEXT NOT NULL,
    PRIMARY KEY (dataset, card_id)
);
"""

_LOCK_WAIT_S = 60.0


#: Refs under a prefix, exactly: ``LIKE`` would treat ``_`` and ``%`` in a name as
#: wildcards and compare ASCII case-insensitively (dataset ``FHI2020_X`` would take refs of
#: ``fhi2020-x``). A range on the name's binary order is exact and uses the primary key.
_UNDER = "name >= ? AND name < ?"


def _under(prefix: str) -> tuple[str, str]:
    """Bounds of the names starting with ``prefix``: no character sorts above U+10FFFF."""
    return prefix, prefix + "\U0010ffff"


def _retry_locked(step: Callable[[], Any], deadline_s: float = _LOCK_WAIT_S) -> Any:
    """Run ``step``, retrying while SQLite reports a lock it would not wait for itself.

    The busy timeout covers ordinary contention, but SQLite answers ``SQLITE_BUSY`` at once,
    without calling the busy handler, while another process switches a new database to WAL
    or recovers its WAL index. Two processes opening a fresh cache together hit exactly that.
    """
    end = time.monotonic() + deadline_s
    pause = 0.005
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if ("locked" not in text and "busy" not in text) or time.monotonic() > end:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def _switch_to_wal(con: sqlite3.Connection) -> None:
    mode = str(con.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
    if mode != "wal":  # SQLite reports a refused switch by answering the old mode
        raise sqlite3.OperationalError(f"database is locked: journal mode stayed {mode!r}")


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return any(w in text for w in ("not a database", "malformed", "encrypted", "corrupt"))


def _disk_full(path: Path, exc: Exception) -> CacheFullError | None:
    """A ``CacheFullError`` when ``exc`` is SQLite failing because the disk is full.

    SQLite says "database or disk is full", or only "disk I/O error" when it cannot create
    the WAL's shared-memory file; the free space tells which.
    """
    text = str(exc)
    if "full" not in text and "disk I/O" not in text:
        return None
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return None
    if "full" not in text and free > (1 << 20):
        return None
    return CacheFullError(
        f"cache {path.parent}: its disk is full ({free} bytes free), so the index {path.name} "
        f"cannot be opened or written ({text}). Free a little space on that disk, then run "
        "`pad-assets cache gc --max-size SIZE`")


def _open_wal(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with a busy timeout, safe when many processes open at once."""
    try:
        return _open_wal_unchecked(path)
    except sqlite3.OperationalError as exc:
        full = _disk_full(path, exc)
        if full is not None:
            raise full from exc
        raise


def _open_wal_unchecked(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=_LOCK_WAIT_S, isolation_level=None)
    try:
        con.execute(f"PRAGMA busy_timeout={int(_LOCK_WAIT_S * 1000)}")
        # journal_mode is persistent: only the first opener converts the file.
        mode = _retry_locked(lambda: con.execute("PRAGMA journal_mode").fetchone()[0])
        if str(mode).lower() != "wal":
            _retry_locked(lambda: _switch_to_wal(con))
        con.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        con.close()
        raise
    return con


class Index:
    """Thread-safe (one connection per thread) and process-safe (WAL + busy timeout)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        #: Why the index file cannot be read at all (a zeroed header, garbage), or None.
        #: Such an index is still constructed, so ``reindex`` can move it aside and rebuild
        #: it; every other use raises ``CacheCorruptionError`` saying so.
        self.unreadable: str | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # executescript manages its own transaction; the statements are idempotent.
            _retry_locked(lambda: self._connect().executescript(SCHEMA))
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) or not _is_damage(exc):
                raise
            self.unreadable = f"{type(exc).__name__}: {exc}"

    def _connect(self) -> sqlite3.Connection:
        if self.unreadable is not None:
            raise CacheCorruptionError(
                f"the cache index {self.path} cannot be read ({self.unreadable}); run "
                "`pad-assets cache reindex` to move it aside and rebuild it from the shard "
                "files (nothing cached is lost: the shards hold every record)")
        con = getattr(self._local, "con", None)
        pid = getattr(self._local, "pid", None)
        if con is None or pid != os.getpid():
            con = _open_wal(self.path)
            self._local.con = con
            self._local.pid = os.getpid()
        return con

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        else:
            con.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._connect().execute(sql, params).fetchall()

    # ---- writes --------------------------------------------------------------------------
    def apply_shard(self, shard: str, rel: str, nbytes: int, records: list[dict[str, Any]],
                    blobs: Iterable[dict[str, Any]], reused: Sequence[str] = ()) -> set[str]:
        """Index one shard's blobs and records in a single transaction (all or nothing).

        ``reused`` are payloads the records point at but the shard does not hold, because
        they were already stored. If any vanished since (a concurrent gc), nothing is
        indexed and the missing ids are returned, so the writer can store them again.
        """
        now = time.time()
        with self.transaction() as con:
            if reused:
                # same connection, so this reads inside the write transaction
                missing = set(reused) - {r[0] for r in self._select_in(
                    "SELECT blob FROM blobs WHERE blob IN ({marks})", reused)}
                if missing:
                    return missing
            self._insert_shard(con, shard, rel, nbytes, records, blobs, now)
        return set()

    def _insert_shard(self, con: sqlite3.Connection, shard: str, rel: str, nbytes: int,
                      records: list[dict[str, Any]], blobs: Iterable[dict[str, Any]],
                      now: float) -> None:
        con.execute(
            "INSERT OR IGNORE INTO shards(shard, path, nbytes, created) VALUES (?,?,?,?)",
            (shard, rel, nbytes, now),
        )
        con.executemany(
            "INSERT OR IGNORE INTO blobs(blob, shard, kind, dtype, shape, nbytes) "
            "VALUES (?,?,?,?,?,?)",
            [(b["blob"], shard, b["kind"], b["dtype"], json.dumps(b["shape"]), b["nbytes"])
             for b in blobs],
        )
        self._apply_records(con, shard, records, now)

    def apply_shards(self, shards: Sequence[tuple[str, str, int, list[dict[str, Any]],
                                                   list[dict[str, Any]]]]) -> None:
        """Index several shards, each ``(shard, rel, nbytes, records, blobs)`` as for
        ``apply_shard``, in one transaction: a bundle import becomes visible all at once or
        not at all."""
        now = time.time()
        with self.transaction() as con:
            for shard, rel, nbytes, records, blobs in shards:
                self._insert_shard(con, shard, rel, nbytes, records, blobs, now)

    @staticmethod
    def _apply_records(con: sqlite3.Connection, shard: str, records: list[dict[str, Any]],
                       now: float) -> None:
        items, refs, cards = [], [], []
        for r in records:
            t = r.get("type")
            if t == "item":
                ts = float(r.get("ts", now))
                items.append((r["key"], r["layer"], r.get("blob"), shard,
                              json.dumps(r.get("meta", {}), sort_keys=True), ts, ts))
            elif t == "ref":
                refs.append((r["name"], r["key"], float(r["ts"]), shard))
            elif t == "card":
                cards.append((r["dataset"], int(r["card_id"]), r.get("raw_key"), r["status"],
                              r.get("detail", ""), float(r["ts"]), shard))
        con.executemany(
            "INSERT OR IGNORE INTO items(key, layer, blob, shard, meta, created, last_used) "
            "VALUES (?,?,?,?,?,?,?)", items)
        # Mutable pointers: the newest record wins, whatever order shards are indexed in.
        con.executemany(
            "INSERT INTO refs(name, key, updated, shard) VALUES (?,?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET key=excluded.key, updated=excluded.updated, "
            "shard=excluded.shard WHERE excluded.updated >= refs.updated", refs)
        con.executemany(
            "INSERT INTO cards(dataset, card_id, raw_key, status, detail, updated, shard) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(dataset, card_id) DO UPDATE SET "
            "raw_key=excluded.raw_key, status=excluded.status, detail=excluded.detail, "
            "updated=excluded.updated, shard=excluded.shard WHERE excluded.updated >= cards.updated",
            cards)

    def touch(self, keys: Sequence[str], older_than: float = 3600.0) -> None:
        """Record use for LRU cleanup, at most once an hour per item (reads stay read-only)."""
        if not keys:
            return
        now = time.time()
        with self.transaction() as con:
            for part in chunks(list(keys)):
                marks = ",".join("?" * len(part))
                con.execute(
                    f"UPDATE items SET last_used=? WHERE key IN ({marks}) AND last_used < ?",
                    (now, *part, now - older_than),
                )

    # ---- reads ---------------------------------------------------------------------------
    def items(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """key -> {layer, blob, shard, path, meta, kind, dtype, shape, nbytes} for keys present."""
        out: dict[str, dict[str, Any]] = {}
        rows = self._select_in(
            "SELECT i.key, i.layer, i.blob, i.meta, b.shard, s.path, b.kind, b.dtype, "
            "b.shape, b.nbytes, i.created, i.last_used FROM items i "
            "LEFT JOIN blobs b ON b.blob = i.blob LEFT JOIN shards s ON s.shard = b.shard "
            "WHERE i.key IN ({marks})", keys)
        for (key, layer, blob, meta, bshard, path, kind, dtype, shape, nbytes,
             created, last_used) in rows:
            out[key] = {
                "layer": layer, "blob": blob, "meta": json.loads(meta), "shard": bshard,
                "path": path, "kind": kind, "dtype": dtype,
                "shape": tuple(json.loads(shape)) if shape else None, "nbytes": nbytes,
                "created": created, "last_used": last_used,
            }
        return out

    def _select_in(self, sql: str, values: Sequence[Any], params: Sequence[Any] = ()
                   ) -> Iterator[tuple]:
        """Rows of ``sql`` (``params`` first, then one ``{marks}`` placeholder) for all
        values, in chunks."""
        con = self._connect()
        for part in chunks(list(dict.fromkeys(values))):
            yield from con.execute(sql.format(marks=",".join("?" * len(part))),
                                   (*params, *part))

    def json_fields(self, keys: Sequence[str], *paths: str) -> dict[str, tuple[Any, ...]]:
        """key -> the JSON values at ``paths`` ('$.record', ...) of each present item's meta,
        extracted by SQLite: a warm lookup need not parse every ~3 kB lineage meta."""
        cols = ", ".join("json_extract(meta, ?)" for _ in paths)
        return {row[0]: row[1:] for row in self._select_in(
            f"SELECT key, {cols} FROM items WHERE key IN ({{marks}})", keys, paths)}

    def present(self, keys: Sequence[str]) -> set[str]:
        return {r[0] for r in self._select_in("SELECT key FROM items WHERE key IN ({marks})",
                                               keys)}

    def present_blobs(self, blobs: Sequence[str]) -> set[str]:
        return {r[0] for r in self._select_in("SELECT blob FROM blobs WHERE blob IN ({marks})",
                                               blobs)}

    def ref(self, name: str) -> str | None:
        row = self._connect().execute("SELECT key FROM refs WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def refs(self, prefix: str = "") -> dict[str, str]:
        """``{name: key}`` of the refs whose name starts with ``prefix``, in name order."""
        rows = self._connect().execute(
            f"SELECT name, key FROM refs WHERE {_UNDER} ORDER BY name", _under(prefix))
        return dict(rows.fetchall())

    def refs_newest_first(self, prefix: str) -> list[tuple[str, str]]:
        """``(name, key)`` of the refs under ``prefix``, most recently moved first."""
        return self._connect().execute(
            f"SELECT name, key FROM refs WHERE {_UNDER} ORDER BY updated DESC",
            _under(prefix)).fetchall()

    def refs_ending(self, prefix: str, last: str) -> list[tuple[str, str]]:
        """``(name, key)`` of refs under ``prefix`` whose name ends with ``/last``, newest
        first."""
        tail = "/" + last
        return self._connect().execute(
            f"SELECT name, key FROM refs WHERE {_UNDER} AND substr(name, -?) = ? "
            "ORDER BY updated DESC", (*_under(prefix), len(tail), tail)).fetchall()

    def refs_for(self, names: Sequence[str]) -> dict[str, str]:
        return dict(self._select_in("SELECT name, key FROM refs WHERE name IN ({marks})", names))

    def cards(self, dataset: str, card_ids: Sequence[int] | None = None
              ) -> dict[int, dict[str, Any]]:
        """Card records of ``dataset``; only those of ``card_ids`` when given (a chunk of a
        large dataset need not read the whole table)."""
        sql = "SELECT card_id, raw_key, status, detail, updated FROM cards WHERE dataset=?"
        if card_ids is None:
            rows = self._connect().execute(sql, (dataset,)).fetchall()
        else:
            rows = list(self._select_in(sql + " AND card_id IN ({marks})",
                                        [int(c) for c in card_ids], (dataset,)))
        return {int(c): {"raw_key": k, "status": s, "detail": d, "updated": u}
                for c, k, s, d, u in rows}

    def shard_paths(self) -> dict[str, str]:
        return dict(self._connect().execute("SELECT shard, path FROM shards").fetchall())

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
