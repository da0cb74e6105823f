"""The index is a cache of the shard files: rebuilt from the shards alone it must equal the
one it replaces, row for row (kinds, dtypes, shapes, sizes, metadata, refs, cards), and a
shard found unindexed after a crash must be indexed with its real path and size.

Written for survivors of the store's mutation run (``.ci/mutation.py store``): the rebuild
tests checked only that keys came back, so a reindex that lost a blob's kind or byte count
passed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pad_assets.hashing import array_digest
from pad_assets.store import CardRecord, ContentStore, NewItem
from pad_assets.store import shards as shard_io
from pad_assets.store.store import INDEX_NAME

TABLES = {
    "shards": "SELECT shard, path, nbytes FROM shards ORDER BY shard",
    "blobs": "SELECT blob, shard, kind, dtype, shape, nbytes FROM blobs ORDER BY blob",
    "items": "SELECT key, layer, blob, shard, meta FROM items ORDER BY key",
    "refs": "SELECT name, key, shard FROM refs ORDER BY name",
    "cards": "SELECT dataset, card_id, raw_key, status, detail, shard FROM cards "
             "ORDER BY dataset, card_id",
}


def _rows(store: ContentStore) -> dict[str, list[tuple]]:
    return {t: [tuple(r) for r in store.index.query(sql)] for t, sql in TABLES.items()}


def _filled(root: Path) -> tuple[ContentStore, dict[str, object]]:
    store = ContentStore(root)
    values: dict[str, object] = {
        "raw": b"\x89PNG not really" * 40,
        "tensor": np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3),
        "features": np.linspace(0, 1, 360, dtype=np.float32),
        "wide": np.arange(12, dtype=np.int64).reshape(3, 4),
    }
    store.put([NewItem("raw-1", "raw", values["raw"], {"md5": "m" * 32}),
               NewItem("t-1", "tensor", values["tensor"], {"spec": {"shape": [5, 6, 3]}})],
              refs=[("manifest/ds", "raw-1")],
              cards=[CardRecord("ds", 7, "raw-1", "ok"),
                     CardRecord("ds", 8, None, "failed", "HTTP 404 for card 8")])
    time.sleep(0.01)
    store.put([NewItem("f-1", "features", values["features"], {}),
               NewItem("w-1", "tensor", values["wide"], {}),
               NewItem("p-1", "prediction", None, {"prediction": "albendazole"})],
              refs=[("asset/ds/prediction/7", "p-1")])
    return store, values


def test_an_index_rebuilt_from_the_shards_equals_the_one_it_replaces(tmp_path: Path) -> None:
    store, values = _filled(tmp_path)
    before = _rows(store)
    assert {r[2] for r in before["blobs"]} == {"bytes", "array"}
    assert sorted(r[5] for r in before["blobs"]) == sorted(
        [len(values["raw"]), 90, 360 * 4, 12 * 8])  # type: ignore[arg-type]
    store.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / (INDEX_NAME + suffix)).unlink(missing_ok=True)

    rebuilt = ContentStore(tmp_path)
    assert _rows(rebuilt) == before
    got = rebuilt.get_many(["raw-1", "t-1", "f-1", "w-1"])
    assert got["raw-1"] == values["raw"]
    for key, name in (("t-1", "tensor"), ("f-1", "features"), ("w-1", "wide")):
        want = values[name]
        assert isinstance(got[key], np.ndarray) and got[key].dtype == want.dtype  # type: ignore[union-attr]
        assert np.array_equal(got[key], want), key  # type: ignore[arg-type]
    assert rebuilt.metas(["p-1"])["p-1"] == {"prediction": "albendazole"}
    rebuilt.close()


def test_a_rebuilt_index_keeps_the_time_of_every_record(tmp_path: Path) -> None:
    # the times come from the shard records (each carries its "ts"), not from when the
    # index was written: gc's LRU order and ref precedence survive a rebuild
    times = {"items": "SELECT key, created, last_used FROM items ORDER BY key",
             "refs": "SELECT name, updated FROM refs ORDER BY name",
             "cards": "SELECT dataset, card_id, updated FROM cards ORDER BY card_id"}
    store, _ = _filled(tmp_path)
    before = {t: [tuple(r) for r in store.index.query(sql)] for t, sql in times.items()}
    assert len(before["items"]) == 5 and len({r[1] for r in before["items"]}) == 2  # 2 puts
    store.close()
    time.sleep(0.01)
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / (INDEX_NAME + suffix)).unlink(missing_ok=True)
    rebuilt = ContentStore(tmp_path)
    assert {t: [tuple(r) for r in rebuilt.index.query(sql)] for t, sql in times.items()} == before
    rebuilt.close()


def test_cards_of_some_ids_are_those_cards_only(tmp_path: Path) -> None:
    store, _ = _filled(tmp_path)
    assert set(store.cards("ds")) == {7, 8}
    assert list(store.cards("ds", [8])) == [8]
    card = store.cards("ds", [8])[8]
    assert (card["raw_key"], card["status"], card["detail"]) == (None, "failed",
                                                                 "HTTP 404 for card 8")
    assert card["updated"] > 0 and store.cards("ds", [7])[7]["status"] == "ok"
    assert store.cards("ds", [99]) == {}
    store.close()


def test_a_shard_left_unindexed_by_a_crash_is_indexed_with_its_path_and_size(
        tmp_path: Path) -> None:
    ContentStore(tmp_path).close()
    arr = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    blob = shard_io.BlobPayload(array_digest(arr), arr, "array")
    shard_io.write_shard(tmp_path, [blob], [
        {"type": "item", "key": "orphan", "layer": "tensor", "blob": blob.blob_id,
         "meta": {"card_id": 5}, "ts": time.time()}])
    store = ContentStore(tmp_path)
    ((shard, rel, nbytes),) = store.index.query("SELECT shard, path, nbytes FROM shards")
    assert (tmp_path / rel).is_file() and nbytes == (tmp_path / rel).stat().st_size
    entry = store.entries(["orphan"])["orphan"]
    assert entry["path"] == rel and entry["shape"] == (2, 3, 4) and np.dtype(entry["dtype"]) == np.uint16
    assert entry["nbytes"] == arr.nbytes and entry["kind"] == "array"
    assert np.array_equal(store.get("orphan"), arr)
    store.close()
