"""The content store: atomic shards, verified reads, dedup, rebuildable index, crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from pad_assets.errors import CacheCorruptionError, InvalidInputError
from pad_assets.hashing import array_digest
from pad_assets.store import CardRecord, ContentStore, NewItem
from pad_assets.store.store import INDEX_NAME


def _arr(seed: int, shape=(454, 454, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_put_get_roundtrip_bytes_arrays_and_meta_only(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    a = _arr(1)
    store.put([NewItem("t1", "tensor", a, {"x": 1}), NewItem("r1", "raw", b"png-bytes", {}),
               NewItem("p1", "prediction", None, {"record": {"prediction": "amoxicillin"}})],
              refs=[("manifest/x", "r1")], cards=[CardRecord("ds", 7, "r1", "ok")])
    assert np.array_equal(store.get("t1"), a)
    assert store.get("r1") == b"png-bytes"
    assert store.metas(["p1"])["p1"]["record"]["prediction"] == "amoxicillin"
    assert store.ref("manifest/x") == "r1"
    assert store.cards("ds")[7]["raw_key"] == "r1"
    assert store.has(["t1", "r1", "p1", "nope"]) == {"t1", "r1", "p1"}
    # a meta-only item has no blob: reading payloads leaves it out rather than failing
    assert store.entries(["p1"])["p1"]["blob"] is None
    assert set(store.get_many(["t1", "p1", "r1"])) == {"t1", "r1"}


def test_refs_under_a_prefix_are_exactly_those_in_name_order(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    store.put([NewItem("k1", "prediction", None, {}), NewItem("k2", "prediction", None, {})],
              refs=[("asset/ds/prediction/8", "k2"), ("asset/ds/prediction/10", "k1"),
                    ("asset/ds/raw/8", "k1"), ("asset/ds2/prediction/8", "k1")])
    got = store.index.refs("asset/ds/prediction/")
    assert list(got.items()) == [("asset/ds/prediction/10", "k1"),
                                 ("asset/ds/prediction/8", "k2")]
    assert store.index.refs("asset/ds/") == {**got, "asset/ds/raw/8": "k1"}
    assert store.index.refs("nothing/") == {}
    store.close()


def test_ref_prefixes_are_exact_not_patterns(tmp_path: Path) -> None:
    """``_`` and ``%`` in a dataset name are characters, and case matters: a prefix query
    for ``FHI_A`` takes nothing of ``FHIxA`` or ``fhi_a`` (SQL ``LIKE`` would take both)."""
    from pad_assets.store.queries import Prefix, select
    from pad_assets.store.refs import newest_for

    store = ContentStore(tmp_path)
    store.put([NewItem("k1", "manifest", None, {}), NewItem("k2", "manifest", None, {}),
               NewItem("k3", "manifest", None, {})],
              refs=[("asset/FHI_A/raw/1", "k1"), ("asset/FHIxA/raw/1", "k2"),
                    ("asset/fhi_a/raw/1", "k3"), ("asset/50%/raw/1", "k1"),
                    ("manifest/srv1/FHI_A", "k1"), ("manifest/srv2/FHIxA", "k2"),
                    ("manifest/srv3/fhi_a", "k3")])
    assert store.index.refs("asset/FHI_A/") == {"asset/FHI_A/raw/1": "k1"}
    assert store.index.refs("asset/50%") == {"asset/50%/raw/1": "k1"}
    assert [n for n, _ in store.index.refs_newest_first("asset/FHI_")] == ["asset/FHI_A/raw/1"]
    assert store.index.refs_ending("manifest/", "FHI_A") == [("manifest/srv1/FHI_A", "k1")]
    assert newest_for(store.index, "manifest/", "fhi_a") == [("manifest/srv3/fhi_a", "k3")]
    assert select(store.index, "refs", "name", name=Prefix("asset/FHI_")) == [
        ("asset/FHI_A/raw/1",)]
    store.close()


def test_identical_payloads_are_stored_once(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    a = _arr(2)
    store.put([NewItem("pre", "preprocessed", a, {})])
    store.put([NewItem("ten", "tensor", a.copy(), {})])
    blobs = store.index.query("SELECT COUNT(*) FROM blobs")[0][0]
    assert blobs == 1
    second_shard = store.index.query("SELECT COUNT(*) FROM shards")[0][0]
    assert second_shard == 2  # the second shard holds only the item record
    assert np.array_equal(store.get("ten"), a)


def test_index_rebuilds_from_shards_alone(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    store.put([NewItem("k", "raw", b"abc", {"md5": "m"})], refs=[("ref/a", "k")],
              cards=[CardRecord("ds", 1, "k", "ok")])
    time.sleep(0.01)
    store.put([NewItem("k2", "raw", b"def", {})], refs=[("ref/a", "k2")],
              cards=[CardRecord("ds", 1, "k2", "ok")])
    store.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / (INDEX_NAME + suffix)).unlink(missing_ok=True)
    rebuilt = ContentStore(tmp_path)
    assert rebuilt.has(["k", "k2"]) == {"k", "k2"}
    assert rebuilt.ref("ref/a") == "k2"  # newest ref wins
    assert rebuilt.cards("ds")[1]["raw_key"] == "k2"
    assert rebuilt.metas(["k"])["k"]["md5"] == "m"


def test_corrupted_shard_is_detected_on_read(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    a = _arr(3, (64, 64, 3))
    store.put([NewItem("t", "tensor", a, {})])
    rel = store.entries(["t"])["t"]["path"]
    store.close()
    with h5py.File(tmp_path / rel, "r+", locking=False) as f:  # simulate bit rot in place
        ds = f["blobs"][list(f["blobs"].keys())[0]]
        data = ds[()]
        data[0, 0, 0] ^= 0xFF
        ds[...] = data
    store = ContentStore(tmp_path)
    with pytest.raises(CacheCorruptionError, match="failed its checksum"):
        store.get("t")


def test_object_payloads_are_refused(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    with pytest.raises(InvalidInputError, match="numeric arrays or bytes"):
        store.put([NewItem("x", "tensor", np.array([{"a": 1}], dtype=object), {})])
    assert store.has(["x"]) == set()


def test_unindexed_shard_is_recovered_on_open(tmp_path: Path) -> None:
    """A crash between the rename and the index transaction leaves a complete shard that
    the next open indexes; a half-written ``.partial`` file is never indexed."""
    from pad_assets.store import shards as shard_io

    ContentStore(tmp_path).close()
    shard_io.write_shard(tmp_path, [shard_io.BlobPayload("b" * 64, np.zeros(3, np.uint8),
                                                         "array")],
                         [{"type": "item", "key": "orphan", "layer": "tensor", "blob": "b" * 64,
                           "meta": {}, "ts": time.time()}])
    (tmp_path / "tmp" / "junk.h5.partial").write_bytes(b"half")
    store = ContentStore(tmp_path)
    assert store.has(["orphan"]) == {"orphan"}


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from pad_assets.store import ContentStore, NewItem
    store = ContentStore(sys.argv[1])
    i = 0
    while True:
        arr = np.full((200, 200, 3), i % 256, dtype=np.uint8)
        store.put([NewItem(f"k{i}", "tensor", arr, {"i": i})])
        print(i, flush=True)
        i += 1
""")


@pytest.mark.parametrize("before_kill", [1, 12])
def test_sigkill_while_writing_loses_nothing_committed(tmp_path: Path, before_kill: int) -> None:
    """Killed after ``before_kill`` puts returned (read from its stdout, not timed: under
    load a fixed sleep can kill it before its first commit and assert on nothing)."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    seen = []
    try:
        while len(seen) < before_kill:
            line = proc.stdout.readline()
            assert line, "the writer exited before committing"
            seen.append(int(line))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    committed = seen + [int(x) for x in out.split()]
    assert committed[:before_kill] == list(range(before_kill))
    store = ContentStore(tmp_path)
    keys = [f"k{i}" for i in committed]
    assert store.has(keys) == set(keys)
    for k in keys:  # every indexed item reads back and verifies
        arr = store.get(k)
        assert int(arr[0, 0, 0]) == int(k[1:]) % 256
    for entry in store.index.query("SELECT key FROM items"):
        store.get(entry[0])


def test_put_writes_again_a_payload_that_vanished_since_it_was_seen(tmp_path: Path) -> None:
    """A concurrent gc can drop a payload between the writer's dedup check and its index
    transaction; the item must not end up pointing at nothing."""
    from pad_assets.hashing import array_digest

    store = ContentStore(tmp_path)
    a = _arr(5, (8, 8, 3))
    store.index.present_blobs = lambda blobs: {array_digest(a)}  # stale: "already stored"
    store.put([NewItem("k", "tensor", a, {})])
    assert np.array_equal(store.get("k"), a)
    assert len(store.shard_files()) == 1  # the first, unindexed attempt was removed


def test_batched_chain_keys_equal_one_by_one_keys() -> None:
    from pad_assets.keys import chain_key, chain_keys, prediction_key, prediction_keys

    firsts = ["0" * 64, "f" * 64, "a\\\"b"]
    rest = ({"shape": [454, 454, 3], "dtype": "float32"}, "sig", [1, 2.5, None])
    assert chain_keys("tensor", firsts, *rest) == [chain_key("tensor", f, *rest) for f in firsts]
    assert chain_keys("x", firsts) == [chain_key("x", f) for f in firsts]
    contexts = [{"drug": "amoxicillin"}, {}, {"drug": "amoxicillin"}]
    assert prediction_keys(firsts, "s", contexts) == [
        prediction_key(t, "s", c) for t, c in zip(firsts, contexts, strict=True)]


_OPEN_TOGETHER = textwrap.dedent("""
    import multiprocessing as mp, sys, tempfile, time
    from pathlib import Path
    from pad_assets.store import ContentStore

    def opener(root, start, q):
        while time.time() < start:
            pass
        try:
            ContentStore(Path(root)).close()
            q.put("")
        except Exception as exc:
            q.put(repr(exc))

    ctx = mp.get_context("fork")  # a fresh interpreter with no threads: fork is safe here
    errors = []
    for trial in range(int(sys.argv[1])):
        root = tempfile.mkdtemp(dir=sys.argv[2])
        q = ctx.Queue()
        start = time.time() + 0.2
        procs = [ctx.Process(target=opener, args=(root, start, q)) for _ in range(6)]
        for p in procs:
            p.start()
        errors += [e for e in (q.get(timeout=60) for _ in procs) if e]
        for p in procs:
            p.join()
    print(len(errors), errors[:1])
""")


def test_processes_opening_a_new_cache_at_the_same_instant_all_succeed(tmp_path: Path) -> None:
    # Converting a fresh index to WAL answers SQLITE_BUSY without waiting; before the retry,
    # about one trial in three failed with "database is locked".
    out = subprocess.run([sys.executable, "-c", _OPEN_TOGETHER, "15", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert out.strip() == "0 []", out


# --- written for survivors of the store's mutation run (.ci/mutation.py store) -----------
def test_reads_record_use_at_most_once_an_hour_and_only_when_asked(tmp_path: Path) -> None:
    # gc evicts least-recently-used items first: last_used is what it orders by
    store = ContentStore(tmp_path)
    store.put([NewItem(k, "tensor", np.full(4, i, np.uint8)) for i, k in enumerate("abcd")])
    now = time.time()
    ages = {"a": 7200, "b": 7200, "c": 600, "d": 7200}
    with store.index.transaction() as con:
        con.executemany("UPDATE items SET last_used=? WHERE key=?",
                        [(now - age, k) for k, age in ages.items()])
    before = {k: e["last_used"] for k, e in store.entries(list(ages)).items()}
    assert set(store.get_many(["a", "c"])) == {"a", "c"}  # touch=True: the default
    assert set(store.get_many(["b"], touch=False)) == {"b"}
    after = {k: e["last_used"] for k, e in store.entries(list(ages)).items()}
    assert after["a"] >= now  # read now, last recorded two hours ago
    assert after["c"] == before["c"]  # recorded ten minutes ago: once an hour is enough
    assert after["b"] == before["b"]  # read with touch=False (verify, export)
    assert after["d"] == before["d"]  # not read
    e = store.entries(["a"])["a"]
    (created, last_used, shard), = store.index.query(
        "SELECT created, last_used, shard FROM items WHERE key='a'")
    assert (e["created"], e["last_used"], e["shard"]) == (created, last_used, shard)
    store.close()


def test_opening_a_cache_indexes_orphan_shards_and_removes_only_stale_partials(
        tmp_path: Path) -> None:
    from pad_assets.store import shards as shard_io

    known = ContentStore(tmp_path)
    known.put([NewItem("indexed", "tensor", np.zeros(2, np.uint8))])
    known.close()
    time.sleep(1.1)  # shard names start with the second: the orphan sorts after the known one
    arr = np.arange(6, dtype=np.uint8)
    blob = shard_io.BlobPayload(array_digest(arr), arr, "array")
    good, _, _ = shard_io.write_shard(tmp_path, [blob], [
        {"type": "item", "key": "orphan", "layer": "tensor", "blob": blob.blob_id, "meta": {},
         "ts": time.time()}])
    bad = tmp_path / "shards" / "000000" / "00000000T000000-unreadable.h5"
    bad.parent.mkdir()
    bad.write_bytes(b"not hdf5")  # sorts first: one bad shard must not stop the others
    tmp = tmp_path / "tmp"
    stale, fresh = tmp / "old.h5.partial", tmp / "new.h5.partial"  # crashed / writing now
    staging = tmp / "import-1"  # an import's staging folder, older than an hour
    staging.mkdir()
    for f in (stale, fresh):
        f.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    for f in (stale, staging):
        os.utime(f, (two_hours_ago, two_hours_ago))

    store = ContentStore(tmp_path, recover=False)  # verify's and reindex's way to open
    assert store.has(["orphan"]) == set() and stale.exists()
    with pytest.warns(RuntimeWarning, match="000000/00000000T000000-unreadable.h5"):
        assert store.recover() == [good]
    assert np.array_equal(store.get("orphan"), arr)
    assert not stale.exists() and fresh.exists() and staging.exists()
    store.close()


def test_an_interrupted_shard_write_leaves_no_partial_and_raises_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pad_assets.store import shards as shard_io

    store = ContentStore(tmp_path)
    store.put([NewItem("k0", "tensor", np.zeros(3, np.uint8))])

    def interrupted(fd: int, data: memoryview) -> int:
        os.write(fd, data[:100])  # part of the shard is on disk when Ctrl-C arrives
        raise KeyboardInterrupt

    monkeypatch.setattr(shard_io, "_write_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.put([NewItem("k1", "tensor", np.ones(3, np.uint8))])
    assert list((tmp_path / "tmp").iterdir()) == []
    monkeypatch.undo()
    assert store.has(["k0", "k1"]) == {"k0"}
    store.close()


def test_lock_waits_retry_only_locked_or_busy_errors_until_the_deadline() -> None:
    import sqlite3

    from pad_assets.store import index as index_mod

    calls: list[int] = []

    def locked_twice() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "done"

    assert index_mod._retry_locked(locked_twice, deadline_s=5.0) == "done" and len(calls) == 3

    def broken() -> None:
        calls.append(1)
        raise sqlite3.OperationalError("disk I/O error")

    calls.clear()
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        index_mod._retry_locked(broken, deadline_s=5.0)
    assert len(calls) == 1

    def always_busy() -> None:
        calls.append(1)
        raise sqlite3.OperationalError("database is busy")

    calls.clear()
    with pytest.raises(sqlite3.OperationalError, match="busy"):
        index_mod._retry_locked(always_busy, deadline_s=0.05)
    assert len(calls) >= 2  # retried until the deadline, then raised


def test_each_index_connection_waits_the_documented_time_for_a_lock(tmp_path: Path) -> None:
    from pad_assets.store import index as index_mod

    store = ContentStore(tmp_path)
    (wait_ms,), = store.index.query("PRAGMA busy_timeout")
    assert wait_ms == int(index_mod._LOCK_WAIT_S * 1000)
    store.close()


def test_one_index_connection_and_shard_handle_per_thread_and_process(tmp_path: Path) -> None:
    # Why it matters: apply_shard checks inside its write transaction that reused payloads
    # still exist (a concurrent gc); that read must use the transaction's connection. A
    # forked child (process pools, dask) must never use its parent's SQLite or HDF5 handles.
    import threading

    store = ContentStore(tmp_path)
    store.put([NewItem("k", "tensor", np.arange(4, dtype=np.uint8))])
    idx, reader = store.index, store._reader
    rel = store.entries(["k"])["k"]["path"]
    store.get("k")
    handle = reader._handle(rel)
    assert reader._handle(rel) is handle  # kept open: opening HDF5 costs ~1 ms
    with idx.transaction() as con:
        assert idx._connect() is con
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(idx._connect()))
    thread.start()
    thread.join()
    assert other[0] is not con and idx._connect() is con
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports, then leaves without running any cleanup
        try:
            ok = (idx._connect() is not con and idx._connect() is idx._connect()
                  and reader._handle(rel) is not handle
                  and np.array_equal(store.get("k"), np.arange(4, dtype=np.uint8)))
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.close(w)
    store.close()


def test_a_shard_written_around_the_page_cache_reads_back_the_same(tmp_path: Path) -> None:
    # put(page_cache=False) takes the O_DIRECT path for shards of 1 MB and more (buffered
    # where the file system refuses it): the same bytes either way
    store = ContentStore(tmp_path)
    big = np.random.default_rng(3).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    store.put([NewItem("big", "raw", big)], page_cache=False)
    store.put([NewItem("small", "raw", b"small")], page_cache=False)
    assert store.get("big") == big and store.get("small") == b"small"
    rel = store.entries(["big"])["big"]["path"]
    assert (tmp_path / rel).stat().st_size == store.index.query(
        "SELECT nbytes FROM shards WHERE path=?", (rel,))[0][0]
    store.close()
