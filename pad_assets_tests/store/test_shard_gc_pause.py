"""Shard building pauses cyclic garbage collection (h5py#2019: a collection in another thread
that frees an h5py object waits on h5py's global lock while the shard's HDF5 write, holding
that lock, waits on Python: the process hangs; seen in a dask worker)."""

from __future__ import annotations

import gc
import threading

import numpy as np

from pad_assets.store import shards
from pad_assets.store.shards import BlobPayload, _gc_paused, _shard_image


def test_no_collection_starts_while_a_shard_is_built(monkeypatch) -> None:
    seen: list[bool] = []
    real_file = shards.h5py.File

    def spying_file(*args, **kwargs):
        seen.append(gc.isenabled())
        return real_file(*args, **kwargs)

    monkeypatch.setattr(shards.h5py, "File", spying_file)
    assert gc.isenabled()
    image = _shard_image("s", [BlobPayload("b", np.arange(10, dtype=np.uint8), "bytes")], [])
    assert seen == [False] and gc.isenabled() and len(image) > 0


def test_pauses_nest_across_threads_and_restore_the_callers_state() -> None:
    entered, leave = threading.Event(), threading.Event()

    def other() -> None:
        with _gc_paused():
            entered.set()
            leave.wait(10)

    t = threading.Thread(target=other)
    with _gc_paused():
        t.start()
        assert entered.wait(10)
    assert not gc.isenabled()  # the other thread is still inside: gc stays off
    leave.set()
    t.join(10)
    assert gc.isenabled()
    gc.disable()
    try:
        with _gc_paused():
            pass
        assert not gc.isenabled()  # a caller that had disabled gc keeps it disabled
    finally:
        gc.enable()
