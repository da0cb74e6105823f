"""Shards written around the page cache (``write_shard(direct=True)``, issue 16): the same
file, byte for byte, as a buffered write, whatever the file system says about O_DIRECT."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from pad_assets.store import CardRecord, ContentStore, NewItem
from pad_assets.store import shards as shard_io

BLOB = "b" * 64
RECORDS = [{"type": "item", "key": "k" * 64, "layer": "raw", "blob": BLOB, "meta": {},
            "ts": 0.0}]


def _blob(nbytes: int, seed: int = 0) -> shard_io.BlobPayload:
    data = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)
    return shard_io.BlobPayload(BLOB, data, "bytes")


def _read(root: Path, rel: str) -> np.ndarray:
    reader = shard_io.ShardReader(root)
    try:
        arr, kind = reader.read(rel, BLOB)
    finally:
        reader.close()
    assert kind == "bytes"
    return arr


@pytest.mark.parametrize("nbytes", [10, (1 << 20) + 4097, 3 * (1 << 20)])
def test_direct_and_buffered_shards_hold_the_same_payload(tmp_path: Path, nbytes: int) -> None:
    blob = _blob(nbytes)
    for direct in (False, True):
        root = tmp_path / str(direct)
        _, rel, size = shard_io.write_shard(root, [blob], RECORDS, direct=direct)
        assert (root / rel).stat().st_size == size  # the alignment padding is cut off
        assert np.array_equal(_read(root, rel), blob.array)
        assert shard_io.read_records(root / rel) == RECORDS
        assert not list((root / "tmp").glob("*.partial"))


def test_direct_writes_use_o_direct_where_the_file_system_takes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not shard_io._O_DIRECT:
        pytest.skip("no O_DIRECT on this platform: every shard is written buffered")
    seen: list[bool] = []
    real = shard_io._set_direct
    monkeypatch.setattr(shard_io, "_set_direct",
                        lambda fd, on: seen.append(on) or real(fd, on))  # type: ignore[func-returns-value]
    _, rel, _ = shard_io.write_shard(tmp_path, [_blob(2 << 20)], RECORDS, direct=True)
    assert seen[:1] == [True]
    assert np.array_equal(_read(tmp_path, rel), _blob(2 << 20).array)


def test_refused_or_short_direct_writes_fall_back_to_buffered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = _blob(3 << 20, seed=1)
    # the file system refuses O_DIRECT outright
    monkeypatch.setattr(shard_io, "_set_direct", lambda fd, on: False)
    _, rel, _ = shard_io.write_shard(tmp_path / "a", [blob], RECORDS, direct=True)
    assert np.array_equal(_read(tmp_path / "a", rel), blob.array)
    monkeypatch.undo()
    # ... accepts it at open and refuses the first write (EINVAL), or writes short pieces
    real = shard_io._write_bytes
    calls = [0]

    def einval_once(fd: int, data: memoryview) -> int:
        calls[0] += 1
        if calls[0] == 1:
            raise OSError(errno.EINVAL, "Invalid argument (injected)")
        return real(fd, data)

    def short(fd: int, data: memoryview) -> int:
        return real(fd, data[:1000])  # unaligned pieces

    for i, fake in enumerate((einval_once, short)):
        monkeypatch.setattr(shard_io, "_write_bytes", fake)
        root = tmp_path / f"w{i}"
        _, rel, size = shard_io.write_shard(root, [blob], RECORDS, direct=True)
        assert (root / rel).stat().st_size == size
        assert np.array_equal(_read(root, rel), blob.array)


def test_a_full_disk_during_a_direct_write_is_a_cache_full_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(shard_io, "_write_bytes", full)
    store = ContentStore(tmp_path)
    data = os.urandom(2 << 20)
    from pad_assets.errors import CacheFullError
    from pad_assets.hashing import sha256_bytes

    key = sha256_bytes(data)
    with pytest.raises(CacheFullError):
        store.put([NewItem(key, "raw", data, {}, blob_id=key)],
                  cards=[CardRecord("ds", 1, key, "ok")], page_cache=False)
    assert not list((tmp_path / "tmp").glob("*.partial"))
    monkeypatch.undo()
    store.put([NewItem(key, "raw", data, {}, blob_id=key)],
              cards=[CardRecord("ds", 1, key, "ok")], page_cache=False)
    assert store.get(key) == data
    store.close()
