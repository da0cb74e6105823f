"""Cache maintenance: verify (and repair), reindex, garbage-collect and compact, stats.

Why a module of its own: the store (``pad_assets.store``) only ever *adds* immutable shards;
everything that removes, moves or re-derives cached data lives here, behind one lock, so the
rules that keep a shared cache safe are written down once:

- **Data moves before the index does, the index moves before a file goes.** Live content of
  a shard is rewritten into a new shard; one SQLite transaction then points every row at
  the new shard and *retires* the old one. A retired shard keeps its ``shards`` row (so
  ``ContentStore.recover`` in another process never re-indexes it as an orphan) and its
  file (so a reader that looked up the old path a moment ago can still open it) for a
  grace period; only then is the file deleted (or moved to ``quarantine/`` when it held
  corrupt data) and the row dropped. Readers that already hold the file open keep working
  after the unlink (POSIX).
- **Nothing unverified is copied.** Every payload that is rewritten is read back and its
  digest checked first; a shard that fails is left alone and reported.
- **Corruption is reported, then repaired from the source of truth:** raw images are
  re-fetched from their recorded ``source_url`` (md5 and sha256 checked); derived items are
  removed so the next ``apply_model`` / ``get_preprocessed_batch`` recomputes them.

The index columns are documented in ``pad_assets.store.index``; this module adds one
table, ``ops_retired_shards`` (shards whose content moved and whose file awaits deletion).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CacheBusyError, IntegrityError, InvalidInputError, PadAssetsError
from ..hashing import array_digest, preprocessed_key, sha256_bytes, tensor_key
from ..store import ContentStore, NewItem
from ..store import shards as shard_io
from ..store.index import Index
from ..store.store import INDEX_NAME

#: Shards whose live payload falls below this fraction of their indexed payload are
#: rewritten by ``gc``. 0.5 bounds the dead space at the size of the live data while
#: rewriting each byte at most ~once per halving (the classic log-structured-store choice).
DEFAULT_COMPACT_THRESHOLD = 0.5
#: How long a retired shard file stays on disk after the index stopped pointing at it. A
#: reader resolves a key to a path and opens the file within microseconds; seconds cover
#: any reader that is not stopped outright.
DEFAULT_GRACE_SECONDS = 2.0
#: ``*.partial`` files younger than this may belong to a live writer and are never removed.
DEFAULT_PARTIAL_MAX_AGE = 3600.0
#: Unindexed shard files younger than this are probably being indexed by their writer.
RECENT_ORPHAN_SECONDS = 60.0
#: Record-only and tiny shards are merged when at least this many are below SMALL_SHARD_BYTES.
SMALL_SHARD_BYTES = 1 << 20
MERGE_MIN_SHARDS = 8
#: Payload bytes per rewritten shard (bounds the size of one compaction output file).
MAX_REWRITE_BYTES = 512 << 20
#: Estimates for what a shard file holds besides payloads (JSON per record, HDF5 metadata).
RECORD_OVERHEAD = 200
SHARD_OVERHEAD = 64 << 10
#: Largest payload a shard may declare for one blob before it is refused unread.
MAX_BLOB_BYTES = 4 << 30
EXAMPLES = 10

RETIRED_DDL = """
CREATE TABLE IF NOT EXISTS ops_retired_shards (
    shard TEXT PRIMARY KEY, path TEXT NOT NULL, disposition TEXT NOT NULL,
    retired_at REAL NOT NULL, reason TEXT NOT NULL
)"""

#: Layers whose key is the digest of their own payload (sha256 of bytes, or array digest).
CONTENT_KEYED_LAYERS = frozenset({"raw", "manifest", "model_record", "weights", "asset_value"})
DERIVED_LAYERS = ("preprocessed", "tensor", "prediction")
KNOWN_LAYERS = CONTENT_KEYED_LAYERS | frozenset(DERIVED_LAYERS)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SHARD_NAME = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{16}$")




# ---------------------------------------------------------------------------------------
# small shared helpers (also used by pad_assets.ops.sharing)
def is_hex_key(value: Any) -> bool:
    return isinstance(value, str) and bool(_HEX64.match(value))


def is_shard_name(value: Any) -> bool:
    """Names ``write_shard`` produces; anything else is refused as a path component."""
    return isinstance(value, str) and bool(_SHARD_NAME.match(value))


def ensure_ops_schema(index: Index) -> None:
    index.query(RETIRED_DDL)


def retired_shards(index: Index) -> dict[str, dict[str, Any]]:
    ensure_ops_schema(index)
    rows = index.query("SELECT shard, path, disposition, retired_at, reason "
                       "FROM ops_retired_shards")
    return {s: {"path": p, "disposition": d, "retired_at": t, "reason": r}
            for s, p, d, t, r in rows}


def payload_digest(value: np.ndarray, kind: str) -> str:
    """The blob id a payload must have: sha256 of bytes, or ``array_digest`` of an array."""
    if kind == "bytes":
        return sha256_bytes(np.ascontiguousarray(value).tobytes())
    return array_digest(value)


def expected_key(layer: str, blob: str | None, meta: dict[str, Any]) -> str | None:
    """The key an item must have, re-derived from its payload or its recorded parents.

    Content-keyed layers are keyed by their payload digest; derived layers by the Merkle
    link of ``pad_assets.hashing`` over the parents and parameters their metadata records.
    None when the metadata does not carry enough to re-derive the key.
    """
    if layer in CONTENT_KEYED_LAYERS:
        return blob
    if not isinstance(meta, dict):
        return None
    if layer == "preprocessed":
        raw = meta.get("raw_key")
        pipe = meta.get("pipeline")
        ck = pipe.get("cache_key") if isinstance(pipe, dict) else None
        return preprocessed_key(raw, ck) if raw and ck else None
    if layer == "tensor":
        pk, spec = meta.get("preprocessed_key"), meta.get("spec")
        return tensor_key(pk, spec) if pk and spec is not None else None
    if layer == "prediction":
        from ..layers.predictions import prediction_key_for

        model = meta.get("model")
        sig = model.get("signature") if isinstance(model, dict) else None
        tk = meta.get("tensor_key")
        if tk and sig:
            return prediction_key_for(tk, sig, meta.get("context") or {})
    return None


def key_problem(key: str, layer: str, blob: str | None, meta: dict[str, Any]) -> str | None:
    """Why an item's key does not match its content or recorded chain (None when it does)."""
    if layer in CONTENT_KEYED_LAYERS and blob is None:
        return f"{layer} item has no payload (expected the payload whose digest is its key)"
    want = expected_key(layer, blob, meta)
    if want is not None and want != key:
        how = "payload digest" if layer in CONTENT_KEYED_LAYERS else "recorded chain"
        return f"{layer} key does not match its {how} (expected {want})"
    return None


def read_blob_checked(f: Any, blob_id: str) -> tuple[np.ndarray, str]:
    """Read ``/blobs/<blob_id>`` from an open shard, refusing anything but a plain numeric
    dataset whose digest equals its name; raises ``IntegrityError`` naming what failed."""
    import h5py

    group = f.get(shard_io.BLOBS_GROUP)
    if group is None:
        raise IntegrityError(f"blob {blob_id}: the shard has no /{shard_io.BLOBS_GROUP} group")
    link = group.get(blob_id, getlink=True)
    if link is None:
        raise IntegrityError(f"blob {blob_id} is not in the shard")
    if not isinstance(link, h5py.HardLink):
        raise IntegrityError(f"blob {blob_id} is a {type(link).__name__}, expected a dataset "
                             "stored in the shard itself")
    ds = group[blob_id]
    if not isinstance(ds, h5py.Dataset):
        raise IntegrityError(f"blob {blob_id} is not a dataset")
    if ds.is_virtual or ds.external:
        raise IntegrityError(f"blob {blob_id} reads its data from outside the shard")
    if ds.dtype.kind not in "biufc":
        raise IntegrityError(f"blob {blob_id} has dtype {ds.dtype}, expected a numeric array")
    if int(ds.size) * int(ds.dtype.itemsize) > MAX_BLOB_BYTES:
        raise IntegrityError(f"blob {blob_id} declares {ds.size} elements, over the limit")
    kind = ds.attrs.get("kind", "array")
    if isinstance(kind, bytes):
        kind = kind.decode("utf-8", "replace")
    if kind not in ("array", "bytes"):
        raise IntegrityError(f"blob {blob_id} has kind {kind!r}, expected 'array' or 'bytes'")
    try:
        arr = ds[()]
    except Exception as exc:  # h5py raises OSError/RuntimeError/ValueError on damaged chunks
        raise IntegrityError(f"blob {blob_id} cannot be read ({type(exc).__name__}: {exc})"
                             ) from exc
    arr = np.asarray(arr)
    if kind == "bytes" and (arr.dtype != np.uint8 or arr.ndim != 1):
        raise IntegrityError(f"blob {blob_id} of kind 'bytes' is {arr.dtype} {arr.shape}, "
                             "expected 1-D uint8")
    digest = payload_digest(arr, kind)
    if digest != blob_id:
        raise IntegrityError(f"blob {blob_id} failed its checksum (payload digest {digest})")
    return arr, kind


def blob_row(blob_id: str, arr: np.ndarray, kind: str) -> dict[str, Any]:
    return {"blob": blob_id, "kind": kind, "dtype": arr.dtype.str, "shape": list(arr.shape),
            "nbytes": int(arr.nbytes)}


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def human_bytes(n: float) -> str:
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
               "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
               "tib": 2**40, "p": 10**15, "pb": 10**15, "pib": 2**50, "ki": 2**10,
               "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str | int | float) -> int:
    """"10GB" -> 10**10 bytes ("GB" is decimal like disk vendors and ``du --si``; "GiB" is
    binary); a bare number is bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0 or not math.isfinite(text):
            raise InvalidInputError(f"size {text!r}: expected a non-negative number of bytes")
        return int(text)
    m = _SIZE.match(str(text))
    unit = (m.group(2) or "").lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise InvalidInputError(f"size {text!r}: expected a number with an optional unit, "
                                "e.g. 500MB, 10GB, 1.5GiB")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str | int | float) -> float:
    """"30d" -> seconds (units s, m, h, d, w; a bare number is seconds)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0 or not math.isfinite(text):
            raise InvalidInputError(f"duration {text!r}: expected a non-negative number of "
                                    "seconds")
        return float(text)
    m = _DURATION.match(str(text))
    if not m:
        raise InvalidInputError(f"duration {text!r}: expected a number with a unit s, m, h, d "
                                "or w, e.g. 30d, 12h")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]


# ---------------------------------------------------------------------------------------
# the maintenance lock
_held: dict[str, list[Any]] = {}
_held_lock = threading.Lock()


@contextlib.contextmanager
def maintenance_lock(store: ContentStore, exclusive: bool, what: str,
                     timeout: float = 600.0) -> Iterator[None]:
    """One writer (gc, verify --repair, reindex) or many readers (verify, export, push) per
    cache, across processes (``flock`` on ``<cache>/maintenance.lock``).

    Re-entrant within a process so a maintenance step may call another. On file systems
    without ``flock`` (some network mounts) the lock degrades to a no-op.
    """
    key = str(store.root.resolve())
    with _held_lock:
        held = _held.get(key)
        if held is not None and (held[1] or not exclusive):
            held[2] += 1
            reentrant = True
        else:
            reentrant = False
    if reentrant:
        try:
            yield
        finally:
            with _held_lock:
                _held[key][2] -= 1
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = store.root / "maintenance.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flag = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, flag | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = path.read_text(errors="replace").strip() or "another process"
                    raise CacheBusyError(
                        f"cache {store.root}: `{what}` waited {timeout:.0f} s for the "
                        f"maintenance lock {path}, held by {holder}; expected it to be free"
                    ) from None
                time.sleep(0.05)
            except OSError:  # flock unsupported here: no cross-process exclusion
                break
        if exclusive:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} ({what}) since {time.ctime()}\n".encode(), 0)
        with _held_lock:
            _held[key] = [fd, exclusive, 1]
        try:
            yield
        finally:
            with _held_lock:
                _held.pop(key, None)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# a snapshot of the index, for planning
@dataclass
class _Item:
    key: str
    layer: str
    blob: str | None
    shard: str
    raw_key: str | None
    last_used: float
    created: float
    meta_bytes: int


@dataclass
class _Snapshot:
    """What the index says, in memory: planning never holds a transaction open."""

    items: dict[str, _Item]
    blobs: dict[str, tuple[str, int]]  # blob -> (shard, nbytes)
    shards: dict[str, tuple[str, int]]  # shard -> (rel path, nbytes)
    refs: dict[str, tuple[str, str]]  # name -> (key, shard)
    cards: list[tuple[str, int, str | None, str, str]]  # dataset, card, raw, status, shard
    retired: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, store: ContentStore) -> _Snapshot:
        q = store.index.query
        items = {}
        for key, layer, blob, shard, raw, lu, cr, mlen in q(
                "SELECT key, layer, blob, shard, json_extract(meta, '$.raw_key'), last_used, "
                "created, length(meta) FROM items"):
            raw_key = key if layer == "raw" else (raw if isinstance(raw, str) else None)
            items[key] = _Item(key, layer, blob, shard, raw_key, float(lu), float(cr),
                               int(mlen or 0))
        blobs = {b: (s, int(n)) for b, s, n in q("SELECT blob, shard, nbytes FROM blobs")}
        shards = {s: (p, int(n)) for s, p, n in q("SELECT shard, path, nbytes FROM shards")}
        refs = {n: (k, s) for n, k, s in q("SELECT name, key, shard FROM refs")}
        cards = [(d, int(c), r, st, s) for d, c, r, st, s in
                 q("SELECT dataset, card_id, raw_key, status, shard FROM cards")]
        return cls(items, blobs, shards, refs, cards, retired_shards(store.index))

    def live_shards(self) -> dict[str, tuple[str, int]]:
        return {s: v for s, v in self.shards.items() if s not in self.retired}

    def shard_usage(self, evicted: set[str] = frozenset(),  # type: ignore[assignment]
                    superseded_cards: set[tuple[str, int]] = frozenset(),  # type: ignore[assignment]
                    ) -> dict[str, dict[str, int]]:
        """Per live shard: indexed payload bytes, live payload bytes, live record counts.

        ``evicted`` items and ``superseded_cards`` (card rows about to be replaced by newer
        records elsewhere) count as dead: that is how a dry run sees the future."""
        refcount: Counter[str] = Counter(
            it.blob for k, it in self.items.items() if it.blob and k not in evicted)
        usage: dict[str, dict[str, int]] = {
            s: {"file": n, "payload": 0, "live": 0, "records": 0, "record_bytes": 0}
            for s, (_, n) in self.live_shards().items()}
        for b, (s, n) in self.blobs.items():
            u = usage.get(s)
            if u is None:
                continue
            u["payload"] += n
            if refcount.get(b):
                u["live"] += n
        for k, it in self.items.items():
            if k not in evicted and it.shard in usage:
                usage[it.shard]["records"] += 1
                usage[it.shard]["record_bytes"] += it.meta_bytes + RECORD_OVERHEAD
        for _, s in self.refs.values():
            if s in usage:
                usage[s]["records"] += 1
                usage[s]["record_bytes"] += RECORD_OVERHEAD
        for d, c, _, _, s in self.cards:
            if s in usage and (d, c) not in superseded_cards:
                usage[s]["records"] += 1
                usage[s]["record_bytes"] += RECORD_OVERHEAD
        for u in usage.values():
            # bytes in the file that nothing live accounts for: dead payload, superseded
            # records, and payloads never indexed (a copy of data already held elsewhere)
            u["dead"] = max(0, u["file"] - u["live"] - u["record_bytes"] - SHARD_OVERHEAD)
        return usage


# ---------------------------------------------------------------------------------------
# rewriting shards (compaction, repair) and retiring the old ones
class _Conflict(Exception):
    """A concurrent writer started using data this rewrite meant to drop: skip the shard."""


@dataclass
class RewriteOutcome:
    sources: list[str]
    new_shard: str | None
    carried_items: int
    carried_blobs: int
    dropped_blobs: int
    carried_bytes: int


def _rows(index: Index, sql: str, values: Sequence[str], extra: Sequence[Any] = ()
          ) -> list[tuple]:
    out: list[tuple] = []
    values = list(values)
    for i in range(0, len(values), 500):
        part = values[i:i + 500]
        marks = ",".join("?" * len(part))
        out += index.query(sql.format(marks=marks), (*part, *extra))
    return out


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
    check (nothing changes), ``_Conflict`` if a concurrent writer began to use a blob that
    was about to be dropped (nothing changes).
    """
    import h5py

    index = store.index
    ensure_ops_schema(index)
    srcs = list(dict.fromkeys(sources))
    paths = dict(_rows(index, "SELECT shard, path FROM shards WHERE shard IN ({marks})", srcs))
    drop = set(drop_blobs)
    blob_rows = _rows(index, "SELECT blob, shard, kind, dtype, shape, nbytes FROM blobs "
                             "WHERE shard IN ({marks})", srcs)
    src_blobs = {b[0]: b for b in blob_rows}
    referenced = {r[0] for r in _rows(index, "SELECT DISTINCT blob FROM items WHERE blob IN "
                                             "({marks})", list(src_blobs))}
    carry = {b: row for b, row in src_blobs.items() if b in referenced and b not in drop}
    dead = [b for b in src_blobs if b not in carry]
    # items that lose their payload with this rewrite (corrupt or explicitly dropped blobs)
    lose = {r[0] for r in _rows(index, "SELECT key FROM items WHERE blob IN ({marks})", dead)}
    item_rows = _rows(index, "SELECT key, layer, blob, meta, created FROM items "
                             "WHERE shard IN ({marks})", srcs)
    ref_rows = _rows(index, "SELECT name, key, updated FROM refs WHERE shard IN ({marks})", srcs)
    card_rows = _rows(index, "SELECT dataset, card_id, raw_key, status, detail, updated "
                             "FROM cards WHERE shard IN ({marks})", srcs)
    records: list[dict[str, Any]] = []
    for key, layer, blob, meta, created in item_rows:
        if key in lose:
            continue
        records.append({"type": "item", "key": key, "layer": layer, "blob": blob,
                        "meta": json.loads(meta), "ts": float(created)})
    records += [{"type": "ref", "name": n, "key": k, "ts": float(u)} for n, k, u in ref_rows]
    records += [{"type": "card", "dataset": d, "card_id": int(c), "raw_key": r, "status": s,
                 "detail": det, "ts": float(u)} for d, c, r, s, det, u in card_rows]
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
            yield shard_io.BlobPayload(b, arr, kind)

    new: tuple[str, str, int] | None = None
    try:
        if records or carry:
            new = shard_io.write_shard(store.root, payloads(), records)
    finally:
        for f in handles.values():
            with contextlib.suppress(Exception):
                f.close()
    now = time.time()
    try:
        with index.transaction() as con:
            # A put() that deduplicated against a blob we are about to drop makes it live.
            for i in range(0, len(dead), 500):
                part = dead[i:i + 500]
                marks = ",".join("?" * len(part))
                for (key,) in con.execute(f"SELECT key FROM items WHERE blob IN ({marks})",
                                          part):
                    if key not in lose:
                        raise _Conflict(f"item {key} started to use a blob of {srcs}")
            marks = ",".join("?" * len(srcs))
            if new is not None:
                name, rel, nbytes = new
                con.execute("INSERT OR IGNORE INTO shards(shard, path, nbytes, created) "
                            "VALUES (?,?,?,?)", (name, rel, nbytes, now))
                con.executemany("UPDATE blobs SET shard=? WHERE blob=? AND shard=?",
                                [(name, b, row[1]) for b, row in carry.items()])
            con.execute(f"DELETE FROM blobs WHERE shard IN ({marks})", srcs)
            con.executemany("DELETE FROM items WHERE key=?", [(k,) for k in lose])
            if new is not None:
                for table in ("items", "refs", "cards"):
                    con.execute(f"UPDATE {table} SET shard=? WHERE shard IN ({marks})",
                                (new[0], *srcs))
            for s in srcs:
                rel = paths.get(s)
                if rel is not None and (store.root / rel).exists():
                    con.execute("INSERT OR REPLACE INTO ops_retired_shards(shard, path, "
                                "disposition, retired_at, reason) VALUES (?,?,?,?,?)",
                                (s, rel, disposition, now, reason))
                else:  # the file is already gone: nothing to wait for
                    con.execute("DELETE FROM shards WHERE shard=?", (s,))
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
        still = store.index.query(
            "SELECT (SELECT COUNT(*) FROM blobs WHERE shard=?) + (SELECT COUNT(*) FROM items "
            "WHERE shard=?) + (SELECT COUNT(*) FROM refs WHERE shard=?) + (SELECT COUNT(*) "
            "FROM cards WHERE shard=?)", (shard,) * 4)[0][0]
        if still:  # something points here again (should not happen): keep it, un-retire
            store.index.query("DELETE FROM ops_retired_shards WHERE shard=?", (shard,))
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
        with store.index.transaction() as con:
            con.execute("DELETE FROM shards WHERE shard=?", (shard,))
            con.execute("DELETE FROM ops_retired_shards WHERE shard=?", (shard,))
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


# ---------------------------------------------------------------------------------------
# verify
@dataclass
class Finding:
    kind: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.detail}"


#: Kinds that are expected states, not damage (they never fail ``verify``).
NOTE_KINDS = {
    "orphan_blob": "payloads no item references (reclaimed by `pad-assets cache gc`)",
    "partial_file": "*.partial files of writers (removed by --repair once an hour old)",
    "recent_orphan_shard": "shard files written moments ago and not yet indexed by their writer",
    "retired_shard": "shards whose content moved; their files are deleted after a grace period",
    "evicted_card": "cards whose raw image `cache gc` evicted (the next download refetches it)",
}
PROBLEM_HELP = {
    "missing_shard": "the index points at a shard file that is gone",
    "unreadable_shard": "a shard file cannot be opened or its records cannot be read",
    "orphan_shard": "a complete shard file the index does not know",
    "corrupt_blob": "a payload fails its checksum or cannot be read",
    "missing_blob": "a payload the index places in a shard is not there",
    "item_unreadable": "an item whose payload is corrupt or missing",
    "key_mismatch": "an item whose key does not match its content or recorded chain",
    "record_missing": "an index row with no record in its shard (a rebuild would lose it)",
    "dangling_ref": "a ref whose target item is not in the cache",
    "card_missing_raw": "a card marked ok whose raw image is not in the cache",
}


@dataclass
class VerifyReport:
    """What ``verify`` found (``problems``), what is normal but worth knowing (``notes``),
    what ``repair`` changed and what it could not fix (``unrepaired``)."""

    root: str
    shards_checked: int = 0
    items_checked: int = 0
    blobs_checked: int = 0
    problems: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)
    repair: bool = False
    repaired: list[str] = field(default_factory=list)
    unrepaired: list[str] = field(default_factory=list)
    remaining: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.problems))

    @property
    def note_counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.notes))

    @property
    def ok(self) -> bool:
        """No damage found, or (after a repair) none left and nothing left unrepaired."""
        if self.repair:
            return not self.remaining and not self.unrepaired
        return not self.problems

    def examples(self, kind: str, n: int = EXAMPLES) -> list[str]:
        return [str(f) for f in self.problems + self.notes if f.kind == kind][:n]

    def as_dict(self) -> dict[str, Any]:
        return {
            "root": self.root, "ok": self.ok, "shards_checked": self.shards_checked,
            "items_checked": self.items_checked, "blobs_checked": self.blobs_checked,
            "problems": {k: {"count": n, "examples": self.examples(k)}
                         for k, n in sorted(self.counts.items())},
            "notes": {k: {"count": n, "examples": self.examples(k)}
                      for k, n in sorted(self.note_counts.items())},
            "repair": self.repair, "repaired": self.repaired, "unrepaired": self.unrepaired,
            "remaining": {k: n for k, n in Counter(f.kind for f in self.remaining).items()},
            "seconds": round(self.seconds, 3),
        }

    def __str__(self) -> str:
        lines = [f"cache verify {self.root}: {self.shards_checked} shards, "
                 f"{self.items_checked} items, {self.blobs_checked} payloads checked "
                 f"[{self.seconds:.1f} s]"]
        if not self.problems:
            lines.append("no problems found")
        for kind, n in sorted(self.counts.items()):
            lines.append(f"problem {kind} ({PROBLEM_HELP.get(kind, kind)}): {n}")
            lines += [f"    e.g. {e}" for e in self.examples(kind, 3)]
        for kind, n in sorted(self.note_counts.items()):
            lines.append(f"note {kind} ({NOTE_KINDS.get(kind, kind)}): {n}")
        if self.repair:
            lines += ["repaired:"] + [f"  - {r}" for r in self.repaired or ["nothing to do"]]
            if self.unrepaired or self.remaining:
                lines.append("could not repair:")
                lines += [f"  - {u}" for u in self.unrepaired]
                for kind, n in sorted(Counter(f.kind for f in self.remaining).items()):
                    ex = next(f for f in self.remaining if f.kind == kind)
                    lines.append(f"  - still {n} {kind}, e.g. {ex}")
        elif self.problems:
            lines.append("run `pad-assets cache verify --repair` to repair")
        return "\n".join(lines)


@dataclass
class _CheckState:
    report: VerifyReport
    bad_blobs: dict[str, str] = field(default_factory=dict)  # blob -> why
    bad_items: dict[str, str] = field(default_factory=dict)  # key -> why
    missing_shards: set[str] = field(default_factory=set)
    unreadable_shards: set[str] = field(default_factory=set)
    record_missing_shards: set[str] = field(default_factory=set)
    orphans: dict[str, str] = field(default_factory=dict)  # name -> rel (complete, old)


def _inspect_orphan(path: Path) -> str | None:
    """None when an unindexed shard is fully readable and every payload checks out."""
    import h5py

    try:
        records = shard_io.read_records(path)
        if not isinstance(records, list):
            return "records are not a list"
        with h5py.File(path, "r", locking=False) as f:
            for b in list(f[shard_io.BLOBS_GROUP].keys()):
                read_blob_checked(f, b)
    except (OSError, KeyError, ValueError, IntegrityError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _check(store: ContentStore) -> _CheckState:
    import h5py

    t0 = time.time()
    st = _CheckState(VerifyReport(str(store.root)))
    rep = st.report
    index = store.index
    retired = retired_shards(index)
    shards = {s: p for s, p in index.query("SELECT shard, path FROM shards") if s not in retired}
    files = store.shard_files()
    for s in retired:
        rep.notes.append(Finding("retired_shard", s, retired[s]["reason"]))
    # shard files the index does not know
    for name, rel in sorted(files.items()):
        if name in shards or name in retired:
            continue
        path = store.root / rel
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime < RECENT_ORPHAN_SECONDS:
                rep.notes.append(Finding("recent_orphan_shard", name, rel))
                continue
        why = _inspect_orphan(path)
        st.orphans[name] = rel
        rep.problems.append(Finding("orphan_shard", name, f"{rel} is not indexed" + (
            f" and is damaged ({why})" if why else " (readable; --repair indexes it)")))
    # payloads, shard by shard
    blobs_by_shard: dict[str, list[str]] = defaultdict(list)
    for b, s in index.query("SELECT blob, shard FROM blobs"):
        blobs_by_shard[s].append(b)
    for s, blist in blobs_by_shard.items():
        if s not in shards and s not in retired:
            for b in blist:
                st.bad_blobs[b] = f"its shard {s} is not in the index"
                rep.problems.append(Finding("missing_blob", b, f"shard {s} is not indexed"))
    records_of: dict[str, tuple[set, set, set]] = {}
    for s, rel in sorted(shards.items()):
        rep.shards_checked += 1
        path = store.root / rel
        if not path.is_file():
            st.missing_shards.add(s)
            rep.problems.append(Finding("missing_shard", s, f"{rel} does not exist"))
            for b in blobs_by_shard.get(s, []):
                st.bad_blobs[b] = f"shard {s} is missing"
            continue
        try:
            f = h5py.File(path, "r", locking=False)
        except Exception as exc:  # h5py: OSError for truncated/garbage files
            st.unreadable_shards.add(s)
            rep.problems.append(Finding("unreadable_shard", s,
                                        f"{rel}: {type(exc).__name__}: {exc}"))
            for b in blobs_by_shard.get(s, []):
                st.bad_blobs[b] = f"shard {s} cannot be opened"
            continue
        with f:
            try:
                raw = f[shard_io.RECORDS_DATASET][()]
                recs = json.loads(bytes(raw).decode())
                records_of[s] = (
                    {r.get("key") for r in recs if r.get("type") == "item"},
                    {r.get("name") for r in recs if r.get("type") == "ref"},
                    {(r.get("dataset"), int(r.get("card_id", -1)))
                     for r in recs if r.get("type") == "card"})
            except Exception as exc:
                st.unreadable_shards.add(s)
                rep.problems.append(Finding("unreadable_shard", s, f"{rel}: records cannot be "
                                            f"read ({type(exc).__name__}: {exc})"))
            for b in blobs_by_shard.get(s, []):
                rep.blobs_checked += 1
                try:
                    read_blob_checked(f, b)
                except IntegrityError as exc:
                    missing = "not in the shard" in str(exc)
                    st.bad_blobs[b] = str(exc)
                    rep.problems.append(Finding("missing_blob" if missing else "corrupt_blob",
                                                b, f"shard {s}: {exc}"))
                except Exception as exc:  # damaged HDF5 metadata
                    st.bad_blobs[b] = f"{type(exc).__name__}: {exc}"
                    rep.problems.append(Finding("corrupt_blob", b, f"shard {s}: "
                                                f"{type(exc).__name__}: {exc}"))
    # items
    present_blobs = {b for (b,) in index.query("SELECT blob FROM blobs")}
    items: set[str] = set()
    for key, layer, blob, meta, shard in index.query(
            "SELECT key, layer, blob, meta, shard FROM items"):
        rep.items_checked += 1
        items.add(key)
        try:
            meta_d = json.loads(meta)
        except ValueError:
            meta_d = {}
        if blob is not None and blob not in present_blobs:
            st.bad_items[key] = f"its payload {blob} is in no indexed shard"
            rep.problems.append(Finding("item_unreadable", key, f"{layer}: payload {blob} "
                                        "is in no indexed shard"))
        elif blob is not None and blob in st.bad_blobs:
            st.bad_items[key] = st.bad_blobs[blob]
            rep.problems.append(Finding("item_unreadable", key, f"{layer}: "
                                        f"{st.bad_blobs[blob]}"))
        why = key_problem(key, layer, blob, meta_d)
        if why:
            st.bad_items.setdefault(key, why)
            rep.problems.append(Finding("key_mismatch", key, why))
        recs = records_of.get(shard)
        if recs is not None and key not in recs[0]:
            st.record_missing_shards.add(shard)
            rep.problems.append(Finding("record_missing", key, f"item row points at shard "
                                        f"{shard}, whose records do not list it"))
    for name, key, shard in index.query("SELECT name, key, shard FROM refs"):
        if key not in items or key in st.bad_items:
            rep.problems.append(Finding("dangling_ref", name, f"target {key} is "
                                        + ("damaged" if key in items else "not cached")))
        recs = records_of.get(shard)
        if recs is not None and name not in recs[1]:
            st.record_missing_shards.add(shard)
            rep.problems.append(Finding("record_missing", name, f"ref row points at shard "
                                        f"{shard}, whose records do not list it"))
    for ds, cid, raw, status, shard in index.query(
            "SELECT dataset, card_id, raw_key, status, shard FROM cards"):
        if status == "evicted":
            rep.notes.append(Finding("evicted_card", f"{ds}/{cid}", f"raw {raw}"))
        elif status == "ok" and raw and (raw not in items or raw in st.bad_items):
            rep.problems.append(Finding("card_missing_raw", f"{ds}/{cid}", f"raw image {raw} "
                                        + ("is damaged" if raw in items else "is not cached")))
        recs = records_of.get(shard)
        if recs is not None and (ds, int(cid)) not in recs[2]:
            st.record_missing_shards.add(shard)
            rep.problems.append(Finding("record_missing", f"{ds}/{cid}", f"card row points "
                                        f"at shard {shard}, whose records do not list it"))
    for (b,) in index.query("SELECT blob FROM blobs WHERE blob NOT IN "
                            "(SELECT blob FROM items WHERE blob IS NOT NULL)"):
        if b not in st.bad_blobs:
            rep.notes.append(Finding("orphan_blob", b, "no item references it"))
    for name, size, mtime in _partials(store):
        rep.notes.append(Finding("partial_file", f"tmp/{name}",
                                 f"{size} bytes, {time.time() - mtime:.0f} s old"))
    rep.seconds = time.time() - t0
    return st


DatasetResolver = Callable[[str], Any]


def verify(store: ContentStore, repair: bool = False,
           dataset_resolver: DatasetResolver | None = None, *, settings: Any = None,
           partial_max_age: float = DEFAULT_PARTIAL_MAX_AGE,
           grace_seconds: float = DEFAULT_GRACE_SECONDS) -> VerifyReport:
    """Check every shard, payload, index row, ref and card; with ``repair``, fix what can be.

    Reads every payload (a full scan: use it after a crash, a disk error, or on a schedule).
    ``repair`` removes what is damaged from the index (good data in the same shard is first
    rewritten into a new shard; damaged shard files go to ``quarantine/``), indexes readable
    orphan shards, re-fetches raw images from their recorded ``source_url`` (sha256 and md5
    must match the original) and leaves derived items to be recomputed lazily by the next
    ``apply_model`` / ``get_preprocessed_batch``. ``dataset_resolver(name)`` returns a
    ``CachedDataset`` sharing this store; with it, cards whose raw image cannot be restored
    from the item's own metadata are downloaded again, and dangling manifest refs are
    re-fetched. ``settings`` (default ``Settings.from_env(cache_dir=store.root)``) says
    which PAD server to re-fetch from.
    """
    t0 = time.time()
    with maintenance_lock(store, exclusive=repair, what="cache verify"
                          + (" --repair" if repair else "")):
        state = _check(store)
        report = state.report
        report.repair = repair
        if repair:
            _repair(store, state, dataset_resolver, settings, partial_max_age, grace_seconds)
            after = _check(store)
            report.remaining = after.report.problems
    report.seconds = time.time() - t0
    return report


def _salvage_orphan(store: ContentStore, name: str, rel: str) -> str:
    """Index a readable orphan shard, or rewrite what is good in a damaged one."""
    import h5py

    path = store.root / rel
    if _inspect_orphan(path) is None:
        store.index_shard_file(name, rel)
        return f"indexed orphan shard {name}"
    good: dict[str, tuple[np.ndarray, str]] = {}
    records: list[dict[str, Any]] = []
    with contextlib.suppress(Exception):
        records = [r for r in shard_io.read_records(path) if isinstance(r, dict)]
    with contextlib.suppress(Exception), h5py.File(path, "r", locking=False) as f:
        for b in list(f[shard_io.BLOBS_GROUP].keys()):
            with contextlib.suppress(Exception):
                good[b] = read_blob_checked(f, b)
    have = store.index.present_blobs([r.get("blob") for r in records
                                      if r.get("type") == "item" and r.get("blob")])
    keep = [r for r in records if r.get("type") != "item" or r.get("blob") is None
            or r.get("blob") in good or r.get("blob") in have]
    blobs = [shard_io.BlobPayload(b, a, k) for b, (a, k) in good.items() if b not in have]
    msg = f"quarantined damaged orphan shard {name}"
    if keep or blobs:
        new, nrel, nbytes = shard_io.write_shard(store.root, blobs, keep)
        store.index.apply_shard(new, nrel, nbytes, keep,
                                [blob_row(b.blob_id, b.array, b.kind) for b in blobs])
        msg += f" after rewriting its {len(blobs)} good payloads and {len(keep)} records " \
               f"into {new}"
    qdir = store.root / "quarantine"
    qdir.mkdir(parents=True, exist_ok=True)
    os.replace(path, qdir / path.name)
    return msg


def _repair(store: ContentStore, st: _CheckState, resolver: DatasetResolver | None,
            settings: Any, partial_max_age: float, grace: float) -> None:
    rep = st.report
    index = store.index
    # 1. orphan shard files
    for name, rel in sorted(st.orphans.items()):
        try:
            rep.repaired.append(_salvage_orphan(store, name, rel))
        except (OSError, PadAssetsError) as exc:
            rep.unrepaired.append(f"orphan shard {name}: {type(exc).__name__}: {exc}")
    # 2. drop damaged items from the index (keep their metadata to restore raw images)
    drop = dict(st.bad_items)
    entries = index.items(list(drop)) if drop else {}
    raw_meta = {k: e["meta"] for k, e in entries.items() if e["layer"] == "raw"}
    derived = Counter(e["layer"] for e in entries.values() if e["layer"] in DERIVED_LAYERS)
    other = Counter(e["layer"] for e in entries.values()
                    if e["layer"] not in DERIVED_LAYERS and e["layer"] != "raw")
    record_shards = {e["shard"] for e in entries.values()}
    record_shards |= {s for (s,) in _rows(index, "SELECT DISTINCT shard FROM items WHERE key "
                                                 "IN ({marks})", list(drop))}
    if drop:
        with index.transaction() as con:
            con.executemany("DELETE FROM items WHERE key=?", [(k,) for k in drop])
    with index.transaction() as con:  # payload rows of shards the index does not know
        con.execute("DELETE FROM blobs WHERE shard NOT IN (SELECT shard FROM shards)")
    # 3. rewrite every shard that holds damaged data or records of dropped items
    damaged = ({s for (b, s) in index.query("SELECT blob, shard FROM blobs")
                if b in st.bad_blobs} | st.missing_shards | st.unreadable_shards)
    affected = (damaged | st.record_missing_shards | record_shards) - set(
        retired_shards(index))
    known = set(index.shard_paths())
    for s in sorted(affected & known):
        bad_here = [b for (b,) in index.query("SELECT blob FROM blobs WHERE shard=?", (s,))
                    if b in st.bad_blobs]
        disposition = "quarantine" if s in damaged else "delete"
        try:
            out = rewrite_shards(store, [s], disposition=disposition, drop_blobs=bad_here,
                                 reason="verify --repair")
        except (IntegrityError, _Conflict, OSError) as exc:
            rep.unrepaired.append(f"shard {s}: could not rewrite its good content ({exc})")
            continue
        what = {"quarantine": "quarantined", "delete": "retired"}[disposition]
        if s in st.missing_shards:
            what = "removed the index entries of missing"
        rep.repaired.append(
            f"{what} shard {s}" + (f"; its good content ({out.carried_items} items, "
                                   f"{out.carried_blobs} payloads, other records) now lives "
                                   f"in {out.new_shard}" if out.new_shard else ""))
    if drop:
        rep.repaired.append(f"removed {len(drop)} damaged items from the index "
                            f"({dict(Counter(e['layer'] for e in entries.values()))})")
    if derived:
        rep.repaired.append(
            f"derived items {dict(derived)} were removed; the next apply_model / "
            "get_preprocessed_batch (or Dagster materialization) recomputes them from raw")
    if other:
        rep.repaired.append(
            f"items {dict(other)} were removed; what a ref still needs is listed below, "
            "weights come back the next time their model is resolved")
    # 4. restore raw images from their recorded source
    unrestored = _restore_raw(store, raw_meta, settings, rep) if raw_meta else {}
    # 5. cards still without raw images, and dangling manifest refs
    present = set(store.has([r for (r,) in index.query(
        "SELECT raw_key FROM cards WHERE status='ok' AND raw_key IS NOT NULL")]))
    missing_cards: dict[str, list[int]] = defaultdict(list)
    for ds, cid, raw in index.query(
            "SELECT dataset, card_id, raw_key FROM cards WHERE status='ok' AND raw_key IS NOT "
            "NULL"):
        if raw not in present:
            missing_cards[ds].append(int(cid))
    for ds, ids in sorted(missing_cards.items()):
        if resolver is None:
            rep.unrepaired.append(
                f"{len(ids)} cards of {ds} have no raw image (e.g. {sorted(ids)[:5]}); run "
                f"`pad-assets download {ds}` or pass dataset_resolver to fetch them")
            continue
        try:
            summary = resolver(ds).download_and_cache(card_ids=sorted(ids),
                                                      refresh_manifest=False)
        except PadAssetsError as exc:
            rep.unrepaired.append(f"{ds}: re-download of {len(ids)} cards failed: {exc}")
            continue
        got = len(summary.downloaded) + len(summary.reused)
        rep.repaired.append(f"{ds}: downloaded {len(summary.downloaded)} missing raw images "
                            f"again ({got}/{len(ids)} cards restored)")
        if summary.failed:
            rep.unrepaired.append(f"{ds}: {len(summary.failed)} cards could not be fetched, "
                                  f"e.g. {sorted(summary.failed.items())[:2]}")
    still_used = {r for (r,) in index.query("SELECT raw_key FROM cards WHERE status='ok'")}
    present_now = store.has(list(unrestored))
    for key, why in sorted(unrestored.items()):
        if key in present_now:
            continue
        if key in still_used:
            rep.unrepaired.append(f"raw item {key}: {why}")
        else:
            rep.repaired.append(f"removed raw item {key} ({why}; no card uses it any more)")
    items_now = store.has([k for (k,) in index.query("SELECT key FROM refs")])
    for name, key in index.query("SELECT name, key FROM refs"):
        if key in items_now:
            continue
        if name.startswith("manifest/") and resolver is not None:
            ds = name.rsplit("/", 1)[-1]
            try:
                resolver(ds).manifest(refresh=True)
                rep.repaired.append(f"re-fetched the manifest of {ds} (ref {name})")
            except PadAssetsError as exc:
                rep.unrepaired.append(f"ref {name}: manifest re-fetch failed: {exc}")
        else:
            hint = ("re-materialize that partition in Dagster" if name.startswith("asset/")
                    else "run its producer again (download, or resolve the model)")
            rep.unrepaired.append(f"ref {name} points at {key}, which is not cached; {hint}")
    # 6. leftovers
    removed = clean_partials(store, partial_max_age)
    if removed:
        rep.repaired.append(f"removed {len(removed)} stale *.partial files")
    purged = purge_retired(store, grace)
    if purged:
        rep.repaired.append(f"deleted or quarantined {len(purged)} retired shard files")


def _restore_raw(store: ContentStore, metas: dict[str, dict[str, Any]], settings: Any,
                 rep: VerifyReport) -> dict[str, str]:
    """Re-fetch raw images by their recorded URL; accept only the original bytes.

    Returns key -> why for the images that could not be restored this way."""
    from ..hashing import md5_bytes
    from ..settings import Settings
    from ..sources.pad_api import PadApiClient

    settings = settings or Settings.from_env(cache_dir=store.root)
    api = PadApiClient(settings)
    todo = [(k, m) for k, m in metas.items() if m.get("source_url")]
    failed = {k: "no source_url in its metadata (download its dataset again)"
              for k, m in metas.items() if not m.get("source_url")}
    restored: list[NewItem] = []

    def fetch(pair: tuple[str, dict[str, Any]]) -> bytes:
        return api.image_bytes(str(pair[1]["source_url"]))

    for (key, meta), result in api.http.map_parallel(fetch, todo):
        url = meta["source_url"]
        if isinstance(result, BaseException):
            if not isinstance(result, (PadAssetsError, ValueError)):
                raise result
            failed[key] = f"re-fetch from {url} failed: {result}"
            continue
        digest = sha256_bytes(result)
        md5 = meta.get("md5")
        if digest != key or (md5 and md5_bytes(result) != md5):
            failed[key] = (f"{url} now serves different bytes (sha256 {digest}); not "
                           "cached, download the dataset again")
            continue
        restored.append(NewItem(key, "raw", result, {**meta, "restored_at": time.time(),
                                                     "restored_by": "cache verify --repair"}))
    for i in range(0, len(restored), 16):
        store.put(restored[i:i + 16])
    if restored:
        rep.repaired.append(f"re-fetched {len(restored)} raw images from their source URL "
                            "(sha256 and md5 equal to the originals)")
    return failed


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
        except sqlite3.DatabaseError:
            retired, old_ok = {}, False
        tmp_path = store.root / f"{INDEX_NAME}.rebuild-{uuid.uuid4().hex[:12]}"
        fresh = Index(tmp_path)
        try:
            ensure_ops_schema(fresh)
            indexed = _index_files(store, fresh, retired, rep)
            if old_ok:
                try:
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
    os.replace(tmp_path, live)
    fsync_dir(store.root)
    rep.replaced_corrupt_index = aside.name
    store.index = Index(live)


# ---------------------------------------------------------------------------------------
# gc
@dataclass
class GcReport:
    """What ``gc`` evicted (or, with ``dry_run``, would evict) and what it compacted."""

    root: str
    dry_run: bool
    size_before: int = 0
    size_after: int = 0
    live_bytes_before: int = 0
    live_bytes_after: int = 0
    max_size: int | None = None
    evicted: dict[str, int] = field(default_factory=dict)  # layer -> items
    evicted_bytes: int = 0
    evicted_examples: list[str] = field(default_factory=list)
    protected: dict[str, int] = field(default_factory=dict)  # reason -> items
    cards_marked_evicted: int = 0
    compacted: list[str] = field(default_factory=list)
    deleted_shards: list[str] = field(default_factory=list)
    new_shards: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    partials_removed: int = 0
    seconds: float = 0.0

    @property
    def target_met(self) -> bool:
        return self.max_size is None or self.size_after <= self.max_size

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["target_met"] = self.target_met
        return d

    def __str__(self) -> str:
        verb = "would evict" if self.dry_run else "evicted"
        n = sum(self.evicted.values())
        lines = [f"cache gc {self.root}{' (dry run: nothing changed)' if self.dry_run else ''}:"
                 f" {verb} {n} items {self.evicted or ''} "
                 f"({human_bytes(self.evicted_bytes)} of payload)",
                 f"  size on disk {human_bytes(self.size_before)} -> "
                 f"{'~' if self.dry_run else ''}{human_bytes(self.size_after)}; live payload "
                 f"{human_bytes(self.live_bytes_before)} -> "
                 f"{human_bytes(self.live_bytes_after)}"]
        if self.protected:
            lines.append(f"  protected: {self.protected}")
        verb2 = "would rewrite" if self.dry_run else "rewrote"
        if self.compacted:
            lines.append(f"  {verb2} {len(self.compacted)} shards"
                         + (f" into {len(self.new_shards)} new ones" if self.new_shards else ""))
        if self.deleted_shards:
            lines.append(f"  {'would delete' if self.dry_run else 'deleted'} "
                         f"{len(self.deleted_shards)} shards with no live data")
        if self.cards_marked_evicted:
            lines.append(f"  {self.cards_marked_evicted} cards marked 'evicted' (their next "
                         "download fetches the image again)")
        lines += [f"  skipped: {s}" for s in self.skipped]
        if not self.target_met:
            lines.append(f"  warning: still above --max-size {human_bytes(self.max_size or 0)}"
                         ": the rest is protected (refs, kept datasets) or recently used")
        return "\n".join(lines)


def _protected(store: ContentStore, snap: _Snapshot, keep_datasets: Sequence[str]
               ) -> dict[str, str]:
    """key -> why it must stay: ref targets, weights of referenced model records, and
    everything chained to the raw images of kept datasets."""
    prot: dict[str, str] = {}
    for name, (key, _) in snap.refs.items():
        prot.setdefault(key, "target of a " + name.split("/", 1)[0] + " ref")
    records = [k for k, why in prot.items()
               if k in snap.items and snap.items[k].layer == "model_record"]
    weights_keys = {k for k, it in snap.items.items() if it.layer == "weights"}
    for k in records:
        try:
            rec = json.loads(store.get_many([k], touch=False)[k])
            sha = str(rec.get("SHA256") or "").lower()
        except (PadAssetsError, ValueError, KeyError, AttributeError):
            # unreadable record: keep every weights file rather than guess
            for w in weights_keys:
                prot.setdefault(w, "weights (model record unreadable)")
            continue
        if sha in weights_keys:
            prot.setdefault(sha, "weights of a model record")
    if keep_datasets:
        keep = set(keep_datasets)
        raw = {r for d, _, r, _, _ in snap.cards if d in keep and r}
        for k, it in snap.items.items():
            if it.raw_key in raw:
                prot.setdefault(k, "kept dataset")
    return prot


def gc(store: ContentStore, max_size: int | str | None = None,
       older_than: float | str | None = None, keep_datasets: Sequence[str] = (),
       dry_run: bool = False, *, compact_threshold: float = DEFAULT_COMPACT_THRESHOLD,
       grace_seconds: float = DEFAULT_GRACE_SECONDS, now: float | None = None) -> GcReport:
    """Evict least-recently-used items, then compact shards and delete dead ones.

    What may go: items that are not protected. Protected are the targets of current refs
    (manifests, model records, Dagster asset values and partitions), weights named by a
    referenced model record, and with ``keep_datasets`` every item chained to those
    datasets' raw images (cards -> raw keys -> items whose metadata records the raw key).
    Which of those go:

    - ``older_than`` (seconds or "30d"): only items unused for that long are eligible;
    - ``max_size`` (bytes or "10GB"): eligible items are evicted in LRU order until the
      cache's estimated size after compaction fits (meta-only items such as predictions
      free nothing and are kept);
    - neither: every eligible item goes, which requires ``keep_datasets`` (a bare ``gc``
      evicts nothing and only compacts, so a typo never empties a shared cache).

    Cards whose raw image was evicted are marked ``evicted`` (``CachedDataset.cards()``
    shows it; the next download fetches the image again). Compaction rewrites shards whose
    live payload is below ``compact_threshold`` of their payload, merges small shards, and
    compacts further (most dead bytes first) while the estimate exceeds ``max_size``.
    ``dry_run`` plans everything and changes nothing.
    """
    t0 = time.time()
    now = time.time() if now is None else now
    if not 0.0 <= compact_threshold <= 1.0:
        raise InvalidInputError(f"compact_threshold {compact_threshold}: expected 0..1")
    limit = parse_size(max_size) if max_size is not None else None
    age = parse_duration(older_than) if older_than is not None else None
    keep = [str(d) for d in keep_datasets]
    rep = GcReport(str(store.root), dry_run, max_size=limit)
    with maintenance_lock(store, exclusive=not dry_run, what="cache gc"):
        snap = _Snapshot.load(store)
        known = {d for d, *_ in snap.cards}
        unknown = sorted(set(keep) - known)
        if unknown:
            raise InvalidInputError(
                f"--keep-dataset {unknown}: no such dataset in the cache at {store.root}; "
                f"expected one of {sorted(known) or '(no datasets cached)'}")
        rep.size_before = sum(n for _, n in snap.live_shards().values())
        usage = snap.shard_usage()
        rep.live_bytes_before = sum(u["live"] for u in usage.values())
        overhead = sum(u["file"] - u["dead"] - u["live"] for u in usage.values())
        prot = _protected(store, snap, keep)
        rep.protected = dict(Counter(why for k, why in prot.items() if k in snap.items))
        evict = _plan_evictions(snap, prot, limit, age, bool(keep), now, overhead)
        refcount = Counter(it.blob for it in snap.items.values() if it.blob)
        freed: set[str] = set()
        for k in evict:
            it = snap.items[k]
            rep.evicted[it.layer] = rep.evicted.get(it.layer, 0) + 1
            if it.blob:
                refcount[it.blob] -= 1
                if refcount[it.blob] == 0:
                    freed.add(it.blob)
        rep.evicted_bytes = sum(snap.blobs[b][1] for b in freed if b in snap.blobs)
        rep.evicted_examples = [f"{snap.items[k].layer} {k}" for k in evict[:EXAMPLES]]
        evicted_raw = {k for k in evict if snap.items[k].layer == "raw"}
        mark = [(d, c, r) for d, c, r, st, _ in snap.cards if r in evicted_raw and st == "ok"]
        rep.cards_marked_evicted = len(mark)
        if dry_run:
            marked = {(d, c) for d, c, _ in mark}
            plan = _plan_compaction(snap, set(evict), compact_threshold, limit, marked)
            _fill_plan(rep, snap, set(evict), plan, marked)
            rep.live_bytes_after = rep.live_bytes_before - rep.evicted_bytes
            rep.seconds = time.time() - t0
            return rep
        if mark:
            from ..store import CardRecord

            stamp_ = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
            store.put(cards=[CardRecord(d, c, r, "evicted", f"raw image evicted by `pad-assets"
                                        f" cache gc` at {stamp_} UTC; the next download "
                                        "fetches it again") for d, c, r in mark])
        if evict:
            with store.index.transaction() as con:
                con.executemany("DELETE FROM items WHERE key=?", [(k,) for k in evict])
        snap = _Snapshot.load(store)
        plan = _plan_compaction(snap, set(), compact_threshold, limit)
        _fill_plan(rep, snap, set(), plan)
        rep.compacted, rep.deleted_shards = [], []
        for group, why in plan:
            try:
                out = rewrite_shards(store, group, reason=f"gc: {why}")
            except (IntegrityError, _Conflict, OSError) as exc:
                rep.skipped.append(f"shards {group}: {exc}")
                continue
            if out.new_shard:
                rep.new_shards.append(out.new_shard)
                rep.compacted += group
            else:
                rep.deleted_shards += group
        purge_retired(store, grace_seconds)
        rep.partials_removed = len(clean_partials(store))
        after = _Snapshot.load(store)
        rep.size_after = sum(n for _, n in after.live_shards().values())
        rep.live_bytes_after = sum(u["live"] for u in after.shard_usage().values())
    rep.seconds = time.time() - t0
    return rep


def _plan_evictions(snap: _Snapshot, prot: dict[str, str], limit: int | None,
                    age: float | None, have_keep: bool, now: float, overhead: int
                    ) -> list[str]:
    eligible = [it for k, it in snap.items.items() if k not in prot
                and (age is None or it.last_used < now - age)]
    eligible.sort(key=lambda it: (it.last_used, it.created, it.key))
    if limit is None:
        if age is None and not have_keep:
            return []
        return [it.key for it in eligible]
    refcount = Counter(it.blob for it in snap.items.values() if it.blob)
    live = sum(snap.blobs[b][1] for b in refcount if b in snap.blobs)
    out = []
    for it in eligible:
        if live + overhead <= limit:
            break
        if it.blob is None:
            continue  # frees nothing worth the recomputation
        out.append(it.key)
        refcount[it.blob] -= 1
        if refcount[it.blob] == 0 and it.blob in snap.blobs:
            live -= snap.blobs[it.blob][1]
    return out


def _plan_compaction(snap: _Snapshot, evicted: set[str], threshold: float,
                     limit: int | None, marked: set[tuple[str, int]] = frozenset()  # type: ignore[assignment]
                     ) -> list[tuple[list[str], str]]:
    """Groups of shards to rewrite (each group -> one new shard, or none if all dead)."""
    usage = snap.shard_usage(evicted, marked)
    plan: list[tuple[list[str], str]] = []
    chosen: set[str] = set()
    for s, u in sorted(usage.items()):
        if u["live"] == 0 and u["records"] == 0:
            plan.append(([s], "no live data"))
            chosen.add(s)
        elif u["payload"] > 0 and u["live"] < threshold * u["payload"]:
            plan.append(([s], f"{u['live'] / u['payload']:.0%} of its payload live"))
            chosen.add(s)
        elif u["file"] >= SMALL_SHARD_BYTES and u["dead"] > (1 - threshold) * u["file"]:
            plan.append(([s], f"{u['dead'] / u['file']:.0%} of the file dead"))
            chosen.add(s)
    small = [s for s, u in sorted(usage.items()) if s not in chosen and u["file"] <
             SMALL_SHARD_BYTES]
    if len(small) >= MERGE_MIN_SHARDS:
        # many tiny shards (card updates, predictions, refs): one file instead of many
        groups: list[list[str]] = [[]]
        size = 0
        for s in small:
            if groups[-1] and size + usage[s]["file"] > MAX_REWRITE_BYTES:
                groups.append([])
                size = 0
            groups[-1].append(s)
            size += usage[s]["file"]
        for group in groups:
            if len(group) > 1:
                plan.append((group, "merge small shards"))
                chosen |= set(group)
    if limit is not None:
        projected = sum(u["file"] if s not in chosen else _after(u) for s, u in usage.items())
        for s in sorted((s for s in usage if s not in chosen and usage[s]["dead"]),
                        key=lambda s: -usage[s]["dead"]):
            if projected <= limit:
                break
            plan.append(([s], "size pressure"))
            chosen.add(s)
            projected -= usage[s]["file"] - _after(usage[s])
    return plan


def _after(u: dict[str, int]) -> int:
    """Estimated size of a shard's rewrite (0 when nothing in it is live)."""
    return u["file"] - u["dead"] if u["live"] or u["records"] else 0


def _fill_plan(rep: GcReport, snap: _Snapshot, evicted: set[str],
               plan: list[tuple[list[str], str]],
               marked: set[tuple[str, int]] = frozenset()) -> None:  # type: ignore[assignment]
    usage = snap.shard_usage(evicted, marked)
    chosen = {s for g, _ in plan for s in g}
    rep.size_after = sum(u["file"] if s not in chosen else _after(u) for s, u in usage.items())
    for group, _ in plan:
        if all(usage[s]["live"] == 0 and usage[s]["records"] == 0 for s in group):
            rep.deleted_shards += group
        else:
            rep.compacted += group


# ---------------------------------------------------------------------------------------
# stats
@dataclass
class CacheStats:
    """Sizes per layer and per dataset, shard counts and reclaimable space."""

    root: str
    shards: int
    shard_bytes: int
    live_bytes: int
    dead_bytes: int
    items: int
    layers: dict[str, dict[str, int]]
    datasets: dict[str, dict[str, int]]
    refs: dict[str, int]
    orphan_blobs: int
    retired_shards: int
    partial_files: int
    partial_bytes: int
    quarantined_files: int
    quarantined_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def layers_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([{"layer": k, **v} for k, v in sorted(self.layers.items())])

    def datasets_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([{"dataset": k, **v} for k, v in sorted(self.datasets.items())])

    def __str__(self) -> str:
        lines = [f"cache {self.root}: {self.items} items in {self.shards} shards, "
                 f"{human_bytes(self.shard_bytes)} on disk, {human_bytes(self.live_bytes)} "
                 f"live payload, {human_bytes(self.dead_bytes)} reclaimable by gc"]
        lines.append("per layer:")
        for layer, v in sorted(self.layers.items()):
            lines.append(f"  {layer:<14} {v['items']:>8} items {human_bytes(v['bytes']):>10}")
        if self.datasets:
            lines.append("per dataset (shared images count in each):")
            for ds, v in sorted(self.datasets.items()):
                lines.append(
                    f"  {ds:<30} {v['cards']:>6} cards ({v['ok']} ok, {v['failed']} failed, "
                    f"{v['evicted']} evicted, {v['raw_missing']} raw missing)  raw "
                    f"{human_bytes(v['raw_bytes'])}, {v['derived_items']} derived items "
                    f"{human_bytes(v['derived_bytes'])}")
        if self.refs:
            lines.append(f"refs: {self.refs}")
        extra = []
        if self.orphan_blobs:
            extra.append(f"{self.orphan_blobs} unreferenced payloads")
        if self.retired_shards:
            extra.append(f"{self.retired_shards} retired shards awaiting deletion")
        if self.partial_files:
            extra.append(f"{self.partial_files} partial files "
                         f"({human_bytes(self.partial_bytes)})")
        if self.quarantined_files:
            extra.append(f"{self.quarantined_files} quarantined files "
                         f"({human_bytes(self.quarantined_bytes)}) in quarantine/")
        if extra:
            lines.append("also: " + ", ".join(extra))
        return "\n".join(lines)


def stats(store: ContentStore) -> CacheStats:
    """Cheap summary from the index alone (no payload is read)."""
    snap = _Snapshot.load(store)
    usage = snap.shard_usage()
    refcount = Counter(it.blob for it in snap.items.values() if it.blob)
    layers: dict[str, dict[str, int]] = {}
    seen: dict[str, set[str]] = defaultdict(set)
    for it in snap.items.values():
        d = layers.setdefault(it.layer, {"items": 0, "bytes": 0})
        d["items"] += 1
        if it.blob and it.blob in snap.blobs and it.blob not in seen[it.layer]:
            seen[it.layer].add(it.blob)
            d["bytes"] += snap.blobs[it.blob][1]
    by_raw: dict[str, list[_Item]] = defaultdict(list)
    for it in snap.items.values():
        if it.raw_key and it.layer != "raw":
            by_raw[it.raw_key].append(it)
    datasets: dict[str, dict[str, int]] = {}
    raws: dict[str, set[str]] = defaultdict(set)
    for d, _, r, status, _ in snap.cards:
        v = datasets.setdefault(d, {"cards": 0, "ok": 0, "failed": 0, "evicted": 0,
                                    "raw_missing": 0, "raw_bytes": 0, "derived_items": 0,
                                    "derived_bytes": 0})
        v["cards"] += 1
        if status == "ok":
            v["ok"] += 1
            if r and r not in snap.items:
                v["raw_missing"] += 1
        elif status == "evicted":
            v["evicted"] += 1
        else:
            v["failed"] += 1
        if r:
            raws[d].add(r)
    for d, rset in raws.items():
        blobs_raw: set[str] = set()
        blobs_der: set[str] = set()
        for r in rset:
            it = snap.items.get(r)
            if it is not None and it.blob:
                blobs_raw.add(it.blob)
            for der in by_raw.get(r, []):
                datasets[d]["derived_items"] += 1
                if der.blob:
                    blobs_der.add(der.blob)
        datasets[d]["raw_bytes"] = sum(snap.blobs[b][1] for b in blobs_raw if b in snap.blobs)
        datasets[d]["derived_bytes"] = sum(snap.blobs[b][1] for b in blobs_der
                                           if b in snap.blobs)
    refs = Counter(name.split("/", 1)[0] for name in snap.refs)
    partials = _partials(store)
    qdir = store.root / "quarantine"
    qfiles = [f for f in qdir.iterdir() if f.is_file()] if qdir.is_dir() else []
    live_shards = snap.live_shards()
    live = sum(u["live"] for u in usage.values())
    shard_bytes = sum(n for _, n in live_shards.values())
    retired_bytes = sum(n for s, (_, n) in snap.shards.items() if s in snap.retired)
    return CacheStats(
        root=str(store.root), shards=len(live_shards), shard_bytes=shard_bytes,
        live_bytes=live,
        dead_bytes=sum(u["dead"] for u in usage.values()) + retired_bytes
        + sum(p[1] for p in partials),
        items=len(snap.items), layers=layers, datasets=datasets, refs=dict(refs),
        orphan_blobs=sum(1 for b in snap.blobs if not refcount.get(b)),
        retired_shards=len(snap.retired), partial_files=len(partials),
        partial_bytes=sum(p[1] for p in partials), quarantined_files=len(qfiles),
        quarantined_bytes=sum(f.stat().st_size for f in qfiles))


def dataset_affinity(store: ContentStore) -> dict[str, set[str]]:
    """shard -> datasets whose cards, raw images, derived items, manifests or models it
    holds (push records this so ``pull --dataset`` fetches only what a dataset needs)."""
    q = store.index.query
    ds_of_raw: dict[str, set[str]] = defaultdict(set)
    out: dict[str, set[str]] = defaultdict(set)
    for d, r, s in q("SELECT dataset, raw_key, shard FROM cards"):
        out[s].add(d)
        if r:
            ds_of_raw[r].add(d)
    blob_shard = dict(q("SELECT blob, shard FROM blobs"))
    item_shards: dict[str, tuple[str, str | None]] = {}
    models: dict[str, set[str]] = defaultdict(set)  # model id / weights sha -> datasets
    for key, layer, blob, shard, raw, mid, wsha, csha in q(
            "SELECT key, layer, blob, shard, json_extract(meta, '$.raw_key'), "
            "json_extract(meta, '$.model.model_id'), json_extract(meta, "
            "'$.model.weights_sha256'), json_extract(meta, '$.model.coefficients_sha256') "
            "FROM items"):
        item_shards[key] = (shard, blob_shard.get(blob) if blob else None)
        rk = key if layer == "raw" else raw
        dsets = ds_of_raw.get(rk, set()) if rk else set()
        if dsets:
            out[shard] |= dsets
            if blob and blob in blob_shard:
                out[blob_shard[blob]] |= dsets
            if layer == "prediction":
                for m in (mid, wsha, csha):
                    if m is not None:
                        models[str(m)] |= dsets
    for name, key, shard in q("SELECT name, key, shard FROM refs"):
        dsets: set[str] = set()
        if name.startswith("manifest/"):
            dsets = {name.rsplit("/", 1)[-1]}
        elif name.startswith("model-record/"):
            dsets = models.get(name.rsplit("/", 1)[-1], set())
        for s in (shard, *item_shards.get(key, (None, None))):
            if s and dsets:
                out[s] |= dsets
    for sha, dsets in models.items():
        for s in item_shards.get(sha, (None, None)):
            if s:
                out[s] |= dsets
    return out


__all__ = [
    "CacheBusyError",
    "CacheStats",
    "DEFAULT_COMPACT_THRESHOLD",
    "DEFAULT_GRACE_SECONDS",
    "Finding",
    "GcReport",
    "ReindexReport",
    "VerifyReport",
    "dataset_affinity",
    "expected_key",
    "gc",
    "human_bytes",
    "key_problem",
    "maintenance_lock",
    "parse_duration",
    "parse_size",
    "purge_retired",
    "read_blob_checked",
    "reindex",
    "rewrite_shards",
    "stats",
    "verify",
]
