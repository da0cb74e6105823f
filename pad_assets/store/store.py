"""``ContentStore``: the content-addressed cache every layer reads and writes.

Items are addressed by content keys (see ``pad_assets.hashing``); their payloads are
deduplicated by a digest of the payload itself, so a model-ready tensor that equals its
preprocessed image, or a card present in two datasets, is stored once. Every read
re-computes the payload digest and refuses an item that does not match.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CacheCorruptionError, CacheFullError, InvalidInputError
from ..hashing import array_digest, sha256_bytes
from . import shards as shard_io
from .index import Index

INDEX_NAME = "index.sqlite3"


@dataclass
class NewItem:
    """An item to write: ``payload`` None means the metadata is the whole item (predictions)."""

    key: str
    layer: str
    payload: np.ndarray | bytes | None
    meta: dict[str, Any] = field(default_factory=dict)
    #: The payload's digest when the caller already computed it (raw images: sha256 of
    #: the bytes); every read still verifies it.
    blob_id: str | None = None


@dataclass
class CardRecord:
    """A dataset's card -> raw key membership (or why the card has none)."""

    dataset: str
    card_id: int
    raw_key: str | None
    status: str  # "ok" | "failed" | ...
    detail: str = ""


#: Layers whose arrays are stored compressed (``shards.codec_for``): the image-like
#: preprocessed arrays and model-ready tensors (0.618 MB per card as is). Raw PNG bytes
#: are compressed already; predictions have no payload.
COMPRESSED_LAYERS = frozenset({"preprocessed", "tensor"})


def payload_blob(payload: np.ndarray | bytes, blob_id: str | None = None,
                 compress: bool = False) -> shard_io.BlobPayload:
    if isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
        return shard_io.BlobPayload(blob_id or sha256_bytes(data),
                                    np.frombuffer(data, dtype=np.uint8), "bytes")
    arr = np.ascontiguousarray(payload)
    if arr.dtype == object:
        raise InvalidInputError("cache payloads must be numeric arrays or bytes, not objects")
    codec = shard_io.codec_for(arr) if compress else ""
    return shard_io.BlobPayload(array_digest(arr), arr, "array", codec)


class ContentStore:
    """Shards + index under one cache directory; safe for many threads and processes."""

    def __init__(self, root: str | Path, recover: bool = True, compress: bool = True) -> None:
        """``compress``: store new preprocessed/tensor arrays with ``shards.DELTA_ZSTD``
        (lossless, ~2x smaller); reads handle both, whatever wrote the shard."""
        self.root = Path(root).expanduser()
        self.compress = compress
        (self.root / "shards").mkdir(parents=True, exist_ok=True)
        self.index = Index(self.root / INDEX_NAME)
        self._reader = shard_io.ShardReader(self.root)
        if recover and self.index.unreadable is None:  # else reindex's business
            self.recover()

    # ---- writing -----------------------------------------------------------------------
    def put(
        self,
        items: Sequence[NewItem] = (),
        refs: Iterable[tuple[str, str]] = (),
        cards: Iterable[CardRecord] = (),
        page_cache: bool = True,
    ) -> str | None:
        """Write one new shard with these items, refs and card records; index it atomically.

        Payloads already stored (same digest) are not written again. Returns the shard
        name, or None when there was nothing to write. ``page_cache=False``: the shard is
        written around the OS page cache (``shards.write_shard(direct=True)``), less CPU
        for payloads this process will not read back.
        """
        now = time.time()
        records: list[dict[str, Any]] = []
        blobs: dict[str, shard_io.BlobPayload] = {}
        # One digest per payload object: a model-ready tensor stored as its preprocessed
        # array is the same object, hashed once (0.4 ms per card on the cold path).
        seen: dict[tuple[int, bool], shard_io.BlobPayload] = {}
        for it in items:
            blob_id = None
            if it.payload is not None:
                compress = self.compress and it.layer in COMPRESSED_LAYERS
                blob = seen.get((id(it.payload), compress)) if it.blob_id is None else None
                if blob is None:
                    blob = payload_blob(it.payload, it.blob_id, compress=compress)
                    seen[(id(it.payload), compress)] = blob
                blob_id = blob.blob_id
                blobs.setdefault(blob_id, blob)
            records.append({"type": "item", "key": it.key, "layer": it.layer, "blob": blob_id,
                            "meta": it.meta, "ts": now})
        records += [{"type": "ref", "name": n, "key": k, "ts": now} for n, k in refs]
        records += [{"type": "card", "dataset": c.dataset, "card_id": int(c.card_id),
                     "raw_key": c.raw_key, "status": c.status, "detail": c.detail, "ts": now}
                    for c in cards]
        if not records:
            return None
        existing = self.index.present_blobs(list(blobs))
        for _attempt in range(3):
            new_blobs = [b for bid, b in blobs.items() if bid not in existing]
            try:
                name, rel, nbytes = shard_io.write_shard(self.root, new_blobs, records,
                                                         direct=not page_cache)
                vanished = self.index.apply_shard(name, rel, nbytes, records,
                                                  [_blob_row(b) for b in new_blobs],
                                                  reused=[b for b in blobs if b in existing])
            except CacheFullError as exc:
                raise self.full_error(exc.detail) from exc
            except sqlite3.OperationalError as exc:
                if "full" not in str(exc):
                    raise
                # The shard file is complete: a later open's recover() indexes it.
                raise self.full_error(f"the index could not grow ({exc})") from exc
            if not vanished:
                return name
            # A gc dropped a payload we meant to reuse: this shard stays unindexed (a
            # later gc removes it) and the next attempt writes those payloads too.
            (self.root / rel).unlink(missing_ok=True)
            existing -= vanished
        raise RuntimeError("cache payloads kept vanishing during a write (a gc running in a "
                           "loop?); nothing was indexed, retry later")

    def full_error(self, what: str) -> CacheFullError:
        """A ``CacheFullError`` naming this cache, its size and what ``gc`` could free."""
        size = dead = 0
        with contextlib.suppress(Exception):  # best effort: the disk is full
            size = int(self.index.query("SELECT COALESCE(SUM(nbytes), 0) FROM shards")[0][0])
            dead = int(self.index.query(
                "SELECT COALESCE(SUM(nbytes), 0) FROM blobs WHERE blob NOT IN "
                "(SELECT blob FROM items WHERE blob IS NOT NULL)")[0][0])
        free = None
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(self.root).free
        where = f"{free / 1e6:.1f} MB free on its disk" if free is not None else "disk full"
        freeable = f"frees {dead / 1e6:.1f} MB of payloads no item uses right away"
        return CacheFullError(
            f"cache {self.root} is full ({size / 1e6:.1f} MB of shards, {where}): {what}. "
            f"`pad-assets cache gc` {freeable}, and `pad-assets cache gc --max-size SIZE` "
            "evicts least-recently-used items down to SIZE (it works on a full disk). "
            "Nothing was half-written.")

    # ---- reading -----------------------------------------------------------------------
    def has(self, keys: Sequence[str]) -> set[str]:
        return self.index.present(keys)

    def metas(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {k: v["meta"] for k, v in self.index.items(keys).items()}

    def entries(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        return self.index.items(keys)

    def get(self, key: str) -> np.ndarray | bytes:
        return self.get_many([key])[key]

    def get_many(self, keys: Sequence[str], touch: bool = True) -> dict[str, np.ndarray | bytes]:
        """Payloads of present keys, each verified against its digest; missing keys are absent."""
        entries = self.index.items(keys)
        out: dict[str, np.ndarray | bytes] = {}
        for key, e in entries.items():
            if e["blob"] is None:
                continue
            out[key] = self._read_verified(key, e)
        if touch and out:
            self.index.touch(list(out))
        return out

    def _read_verified(self, key: str, e: dict[str, Any]) -> np.ndarray | bytes:
        if e["path"] is None:
            raise CacheCorruptionError(
                f"cache item {key} ({e['layer']}) points at blob {e['blob']} that no indexed "
                "shard holds; run `pad-assets cache verify --repair`")
        try:
            arr, kind = self._reader.read(e["path"], e["blob"])
        except (OSError, KeyError) as exc:
            raise CacheCorruptionError(
                f"cache item {key} ({e['layer']}): cannot read blob {e['blob']} from shard "
                f"{e['path']} ({type(exc).__name__}: {exc}); run `pad-assets cache verify --repair`"
            ) from exc
        if kind == "bytes":
            data = arr.tobytes()
            digest = sha256_bytes(data)
            value: np.ndarray | bytes = data
        else:
            digest = array_digest(arr)
            value = arr
        if digest != e["blob"]:
            raise CacheCorruptionError(
                f"cache item {key} ({e['layer']}) in shard {e['path']} failed its checksum "
                f"(expected {e['blob']}, got {digest}); the item was not used. "
                "Run `pad-assets cache verify --repair`.")
        return value

    def ref(self, name: str) -> str | None:
        return self.index.ref(name)

    def cards(self, dataset: str, card_ids: Sequence[int] | None = None
              ) -> dict[int, dict[str, Any]]:
        return self.index.cards(dataset, card_ids)

    # ---- recovery ----------------------------------------------------------------------
    def shard_files(self) -> dict[str, str]:
        """Shard name -> relative path for every complete shard file on disk."""
        found: dict[str, str] = {}
        base = self.root / "shards"
        if not base.exists():
            return found
        for sub in base.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                if f.name.endswith(shard_io.SHARD_SUFFIX):
                    found[f.name[: -len(shard_io.SHARD_SUFFIX)]] = f"shards/{sub.name}/{f.name}"
        return found

    def index_shard_file(self, name: str, rel: str) -> None:
        path = self.root / rel
        records, blobs = shard_io.read_shard_contents(path)
        self.index.apply_shard(name, rel, path.stat().st_size, records, blobs)

    def recover(self) -> list[str]:
        """Index shards that were renamed into place but not indexed (a crash in between),
        and remove stale ``*.partial`` files left by crashed writers."""
        known = set(self.index.shard_paths())
        added = []
        for name, rel in sorted(self.shard_files().items()):
            if name in known:
                continue
            try:
                self.index_shard_file(name, rel)
                added.append(name)
            except (OSError, ValueError, KeyError) as exc:
                # An unreadable shard must not make the whole cache unusable: it is left
                # unindexed for `pad-assets cache verify` to report (and repair).
                warnings.warn(f"cache shard {rel} could not be indexed ({type(exc).__name__}: "
                              f"{exc}); run `pad-assets cache verify`", RuntimeWarning,
                              stacklevel=2)
                continue
        tmp = self.root / "tmp"
        if tmp.exists():
            cutoff = time.time() - 3600
            for f in tmp.iterdir():
                try:
                    if f.name.endswith(shard_io.PARTIAL_SUFFIX) and f.stat().st_mtime < cutoff:
                        f.unlink()
                except OSError:
                    pass
        return added

    def close(self) -> None:
        self._reader.close()
        self.index.close()


def _blob_row(b: shard_io.BlobPayload) -> dict[str, Any]:
    return {"blob": b.blob_id, "kind": b.kind, "dtype": b.array.dtype.str,
            "shape": list(b.array.shape), "nbytes": int(b.array.nbytes)}
