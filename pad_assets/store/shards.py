"""Immutable HDF5 shard files: written once under a temporary name, fsynced, renamed.

HDF5 has one writer per file, no journal and never returns space on delete, so a shard is
never modified after its rename: a crash mid-write leaves only a ``*.partial`` file that no
reader ever opens, and readers of an old shard keep working while GC writes new ones.

A shard holds payload arrays under ``/blobs/<blob id>`` (one chunk per item) and a JSON
list of records under ``/records`` (items, refs and card memberships), which is all an
index needs to be rebuilt from the shards alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SHARD_SUFFIX = ".h5"
PARTIAL_SUFFIX = ".partial"
RECORDS_DATASET = "records"
BLOBS_GROUP = "blobs"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BlobPayload:
    """A payload to write: an array (bytes travel as a 1-D uint8 array with kind 'bytes')."""

    blob_id: str
    array: np.ndarray
    kind: str  # "array" | "bytes"


def new_shard_name() -> str:
    """Time-ordered, collision-free across processes and machines."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:16]}"


def shard_relpath(name: str) -> str:
    return f"shards/{name[:6]}/{name}{SHARD_SUFFIX}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_shard(
    root: Path, blobs: Iterable[BlobPayload], records: list[dict[str, Any]]
) -> tuple[str, str, int]:
    """Write one shard atomically; returns (shard name, relative path, size in bytes)."""
    name = new_shard_name()
    rel = shard_relpath(name)
    final = root / rel
    tmp_dir = root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{name}{SHARD_SUFFIX}{PARTIAL_SUFFIX}"
    try:
        with h5py.File(tmp, "w", libver="latest", locking=False) as f:
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["shard"] = name
            group = f.create_group(BLOBS_GROUP)
            for blob in blobs:
                arr = np.ascontiguousarray(blob.array)
                ds = group.create_dataset(
                    blob.blob_id, data=arr, chunks=arr.shape if arr.size else None
                )
                ds.attrs["kind"] = blob.kind
            payload = json.dumps(records, sort_keys=True, separators=(",", ":"))
            f.create_dataset(RECORDS_DATASET, data=np.frombuffer(payload.encode(), dtype=np.uint8))
            f.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return name, rel, final.stat().st_size


def read_records(path: Path) -> list[dict[str, Any]]:
    with h5py.File(path, "r", locking=False) as f:
        raw = f[RECORDS_DATASET][()]
    return json.loads(bytes(raw).decode())


def read_shard_contents(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A shard's records and its blobs' index rows: everything an index needs from it."""
    with h5py.File(path, "r", locking=False) as f:
        records = json.loads(bytes(f[RECORDS_DATASET][()]).decode())
        blobs = [{"blob": bid, "kind": str(ds.attrs.get("kind", "array")),
                  "dtype": ds.dtype.str, "shape": list(ds.shape),
                  "nbytes": int(ds.size * ds.dtype.itemsize)}
                 for bid, ds in f[BLOBS_GROUP].items()]
    return records, blobs


class ShardReader:
    """Per-process LRU of open read-only shard handles (opening HDF5 costs ~1 ms)."""

    def __init__(self, root: Path, max_open: int = 16) -> None:
        self._root = root
        self._max_open = max_open
        self._files: OrderedDict[str, h5py.File] = OrderedDict()
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _handle(self, rel: str) -> h5py.File:
        if os.getpid() != self._pid:  # forked child: never share HDF5 handles
            self._files = OrderedDict()
            self._pid = os.getpid()
        f = self._files.get(rel)
        if f is not None and f.id.valid:
            self._files.move_to_end(rel)
            return f
        f = h5py.File(self._root / rel, "r", locking=False)
        self._files[rel] = f
        while len(self._files) > self._max_open:
            _, old = self._files.popitem(last=False)
            with contextlib.suppress(Exception):  # closing a deleted file's handle is harmless
                old.close()
        return f

    def read(self, rel: str, blob_id: str) -> tuple[np.ndarray, str]:
        with self._lock:
            ds = self._handle(rel)[BLOBS_GROUP][blob_id]
            kind = str(ds.attrs.get("kind", "array"))
            return ds[()], kind

    def close(self, rel: str | None = None) -> None:
        with self._lock:
            names = [rel] if rel else list(self._files)
            for name in names:
                f = self._files.pop(name, None)
                if f is not None:
                    with contextlib.suppress(Exception):
                        f.close()
