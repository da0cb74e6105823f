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
import errno
import gc
import io
import json
import mmap
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import CacheFullError
from .fs import PARTIAL_SUFFIX, commit

SHARD_SUFFIX = ".h5"
RECORDS_DATASET = "records"
BLOBS_GROUP = "blobs"
FORMAT_VERSION = 1

#: Dataset attribute naming how a blob's array is stored; absent: as is (every shard
#: written before 2026-11-30, and payloads that do not compress: PNG bytes, small arrays).
CODEC_ATTR = "codec"
#: Row deltas modulo 2**bits (``x[0], x[1] - x[0], ...`` along the first axis) in a chunk
#: compressed by the Zstandard HDF5 filter at level 1 (``hdf5plugin``). Why this one,
#: measured on 454x454x3 uint8 card crops (2026-11-30, benchmarks/RESULTS.md, B8): plain
#: zstd/lzf/gzip/blosc reach 1.06-1.37x (photo noise is not repetitive), the row delta
#: (PNG's "Up" predictor) makes it 1.9-2.2x for ~0.7 ms of CPU per card to write and
#: ~0.65 ms more to read than an uncompressed chunk; JPEG-LS (fcidecomp) reaches 2.2-2.6x
#: at ~11 ms each way, which the cold path and a second model's reads cannot afford.
#: Lossless by construction (integer wrap-around), and the blob id stays the digest of
#: the array, so keys never depend on how the bytes sit on disk.
DELTA_ZSTD = "delta0-zstd1"
#: Arrays smaller than this are stored as is (nothing to gain, a filter call to pay).
MIN_CODEC_BYTES = 64 << 10


def codec_for(array: np.ndarray) -> str:
    """The storage codec for an array payload: ``DELTA_ZSTD`` for image-like unsigned
    integer arrays (rows of at least 256 values), otherwise "" (stored as is)."""
    if (array.dtype.kind == "u" and array.ndim >= 2 and array.shape[0] >= 2
            and array.nbytes >= MIN_CODEC_BYTES and array.size // array.shape[0] >= 256):
        return DELTA_ZSTD
    return ""


def _filters() -> Any:
    """``hdf5plugin`` registers the Zstandard filter with HDF5 on import (imported only
    when a compressed blob is written or read: ``import pad_assets`` stays light)."""
    import hdf5plugin

    return hdf5plugin


def _row_delta(array: np.ndarray) -> np.ndarray:
    out = np.empty_like(array)
    out[0] = array[0]
    np.subtract(array[1:], array[:-1], out=out[1:])  # unsigned: wraps modulo 2**bits
    return out


def _undo_row_delta(delta: np.ndarray) -> np.ndarray:
    out = np.asarray(delta)
    if not out.flags.writeable:
        out = out.copy()
    for i in range(1, len(out)):  # row by row: vectorised within rows, ~0.3 ms per card
        np.add(out[i - 1], out[i], out=out[i])
    return out


def read_dataset(ds: Any) -> np.ndarray:
    """A blob dataset's array, decoded from its storage codec (old shards: as is).

    Raises ``OSError`` for a codec this version does not know (a newer writer).
    """
    codec = ds.attrs.get(CODEC_ATTR, "")
    if isinstance(codec, bytes):
        codec = codec.decode("utf-8", "replace")
    if not codec:
        return ds[()]
    if codec != DELTA_ZSTD:
        raise OSError(f"blob {ds.name} is stored with codec {codec!r}, unknown to this version "
                      f"of pad_assets (known: {DELTA_ZSTD!r}); upgrade pad_assets to read it")
    _filters()
    return _undo_row_delta(ds[()])


@dataclass(frozen=True)
class BlobPayload:
    """A payload to write: an array (bytes travel as a 1-D uint8 array with kind 'bytes').

    ``codec``: how to store it ("" as is, ``DELTA_ZSTD``); see ``codec_for``.
    """

    blob_id: str
    array: np.ndarray
    kind: str  # "array" | "bytes"
    codec: str = ""


def new_shard_name() -> str:
    """Time-ordered, collision-free across processes and machines."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:16]}"


def shard_relpath(name: str) -> str:
    return f"shards/{name[:6]}/{name}{SHARD_SUFFIX}"


#: Free bytes a shard write leaves on the disk for the index (SQLite WAL pages, journal).
FREE_SPACE_RESERVE = 128 << 10


def _write_bytes(fd: int, data: memoryview) -> int:
    """One ``os.write`` (a seam: tests inject ``OSError(ENOSPC)`` here)."""
    return os.write(fd, data)


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection starts, in any thread, while one is inside.

    Counted, so threads building shards at once do not re-enable it under each other; the
    state before the first one is restored after the last (a caller that disabled gc keeps
    it disabled). Reference counting still frees everything not in a cycle.
    """
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


def _shard_image(name: str, blobs: Iterable[BlobPayload], records: list[dict[str, Any]]
                 ) -> memoryview:
    """The complete HDF5 file as bytes, built in memory (h5py on a ``BytesIO``, no file).

    Why in memory: HDF5 writes its metadata lazily, and on a full disk ``File.flush()``
    crashed the process (SIGSEGV) instead of raising. Built in memory, the only disk write
    is ours (``_write_bytes``), where a full disk is a plain ``OSError`` in Python.

    Cyclic garbage collection is paused meanwhile (``_gc_paused``): on a Python file object
    HDF5 calls back into Python while h5py holds its global lock, and a collection started by
    another thread that frees an h5py object needs that lock: the process deadlocks
    (h5py#2019; it hung a dask worker, download threads beside the worker's own threads).
    """
    buf = io.BytesIO()
    with _gc_paused(), h5py.File(buf, "w", libver="latest", locking=False) as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["shard"] = name
        group = f.create_group(BLOBS_GROUP)
        for blob in blobs:
            arr = np.ascontiguousarray(blob.array)
            if blob.codec == DELTA_ZSTD:
                ds = group.create_dataset(blob.blob_id, data=_row_delta(arr), chunks=arr.shape,
                                          **_filters().Zstd(clevel=1))
                ds.attrs[CODEC_ATTR] = blob.codec
            elif blob.codec:
                raise ValueError(f"unknown storage codec {blob.codec!r}")
            else:
                # contiguous: one write, no chunk index (a chunk is only needed by filters)
                ds = group.create_dataset(blob.blob_id, data=arr)
            ds.attrs["kind"] = blob.kind
        payload = json.dumps(records, sort_keys=True, separators=(",", ":"))
        f.create_dataset(RECORDS_DATASET, data=np.frombuffer(payload.encode(), dtype=np.uint8))
    return buf.getbuffer()  # the buffer itself, not a copy of it (a shard is 10-100 MB)


def _full(root: Path, needed: int, free: int | None, cause: str = "") -> CacheFullError:
    have = f"{free / 1e6:.1f} MB free" if free is not None else "the disk is full"
    detail = f"no space for a {needed / 1e6:.1f} MB shard ({have}{cause})"
    cache = root
    if root.parent.name == "tmp":  # a staging folder of an import or pull: name the cache
        cache = root.parent.parent
        detail += f" while staging in tmp/{root.name}"
    return CacheFullError(
        f"cache {cache}: {detail}; nothing was written. Free space, or run "
        "`pad-assets cache gc --max-size SIZE`", detail)


#: ``O_DIRECT`` (Linux; 0 where the platform has none) and the alignment it needs of the
#: buffer, the file offset and the length (4096 covers 512- and 4096-byte sectors).
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_DIRECT_ALIGN = 4096
#: Smaller shards are written through the page cache (nothing to gain).
_DIRECT_MIN_BYTES = 1 << 20
#: The aligned staging buffer is kept per thread up to this size (a raw batch is <= 48 MB).
_DIRECT_KEEP_BYTES = 64 << 20
_direct_local = threading.local()


def _aligned(image: memoryview) -> memoryview:
    """``image`` copied into a page-aligned buffer, padded to a multiple of
    ``_DIRECT_ALIGN`` (the padding is cut off by the caller's ``ftruncate``)."""
    size = -(-len(image) // _DIRECT_ALIGN) * _DIRECT_ALIGN
    buf = getattr(_direct_local, "buf", None)
    if buf is None or len(buf) < size:
        buf = mmap.mmap(-1, size)  # anonymous mappings are page-aligned
        if size <= _DIRECT_KEEP_BYTES:
            _direct_local.buf = buf
    view = memoryview(buf)[:size]
    view[:len(image)] = image
    return view


def _set_direct(fd: int, on: bool) -> bool:
    """Switch ``O_DIRECT`` on or off for ``fd``; False when the file system refuses it."""
    import fcntl  # POSIX only: called only where os.O_DIRECT exists

    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)
    except OSError:
        return False
    return True


def _write_file(fd: int, image: memoryview, direct: bool) -> None:
    """All of ``image`` into ``fd`` (from offset 0), through ``_write_bytes``.

    ``direct``: bypass the page cache (``O_DIRECT``). Why: a buffered write of a 23 MB raw
    batch costs the writer 5-40 ms of kernel CPU (page allocation, reclaim of other cached
    pages, the copy), 0.3-2.5 ms per card, against ~1 ms per shard direct (measured on
    this machine's ext4, 2026-11-30); and raw images are not read again by the run that
    downloads them. Where the file system refuses it, the write is buffered as before.
    """
    if direct and _O_DIRECT and len(image) >= _DIRECT_MIN_BYTES and _set_direct(fd, True):
        view = _aligned(image)
        try:
            while view:
                n = _write_bytes(fd, view)
                view = view[n:]
                if view and n % _DIRECT_ALIGN:  # a short, unaligned write: go on buffered
                    _set_direct(fd, False)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # accepted at open, refused at write (some FUSE and network file systems)
            _set_direct(fd, False)
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            _write_file(fd, image, direct=False)
            return
        os.ftruncate(fd, len(image))
        return
    view = image
    while view:
        view = view[_write_bytes(fd, view):]


def write_shard(
    root: Path, blobs: Iterable[BlobPayload], records: list[dict[str, Any]],
    direct: bool = False,
) -> tuple[str, str, int]:
    """Write one shard atomically; returns (shard name, relative path, size in bytes).

    Raises ``CacheFullError`` (nothing left behind: the ``.partial`` file is removed at
    once) when the disk cannot take the shard plus ``FREE_SPACE_RESERVE``. ``direct``:
    write it around the page cache (for payloads nobody reads back soon: ``_write_file``).
    """
    name = new_shard_name()
    rel = shard_relpath(name)
    final = root / rel
    tmp_dir = root / "tmp"
    try:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _full(root, 0, 0) from exc
        raise
    image = _shard_image(name, blobs, records)
    free: int | None = None
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(tmp_dir).free
    if free is not None and free < len(image) + FREE_SPACE_RESERVE:
        raise _full(root, len(image), free)
    tmp = tmp_dir / f"{name}{SHARD_SUFFIX}{PARTIAL_SUFFIX}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_file(fd, memoryview(image), direct)
            os.fsync(fd)
        finally:
            os.close(fd)
        commit(tmp, final)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _full(root, len(image), None, f": {exc.strerror}") from exc
        raise
    return name, rel, len(image)


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
            return read_dataset(ds), kind

    def close(self, rel: str | None = None) -> None:
        with self._lock:
            names = [rel] if rel else list(self._files)
            for name in names:
                f = self._files.pop(name, None)
                if f is not None:
                    with contextlib.suppress(Exception):
                        f.close()
