"""``PadStoreIOManager`` as Dagster drives it, checked by what it leaves in the store: the
content key and format of each value, the partition its ref names, the run that lineage
reports, and the warning a partial range of partitions gives.

Written for the survivors of the IO manager's mutation run (``.ci/mutation.py io_manager``):
each assertion below fails for a change of the code that the round-trip tests let through.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from pad_assets.errors import InvalidInputError
from pad_assets.hashing import array_digest, sha256_bytes
from pad_assets.orchestration.io_manager import PadStoreIOManager, asset_ref, encode_value
from pad_assets.orchestration.resources import PadResource
from pad_assets.provenance.lineage import dagster_refs
from pad_assets.store import ContentStore, NewItem

KEY = dg.AssetKey(["io_out", "model_comparison"])
PRED = dg.AssetKey(["io_out", "prediction_tiny"])
CARDS = [str(c) for c in range(63000, 63008)]


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PadStoreIOManager:
    monkeypatch.setenv("PAD_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("PAD_OFFLINE", "1")
    return PadStoreIOManager(pad=PadResource())


def _write(manager: PadStoreIOManager, value: object, key: dg.AssetKey = KEY,
           run_id: str = "run-7", **ctx: object) -> dict[str, object]:
    out = dg.build_output_context(asset_key=key, run_id=run_id, **ctx)
    manager.handle_output(out, value)
    return {k: getattr(v, "value", v) for k, v in out.get_logged_metadata().items()}


def _item(tmp_path: Path, ckey: str) -> dict:
    store = ContentStore(tmp_path / "c")
    try:
        return store.entries([ckey])[ckey]
    finally:
        store.close()


def _ref(tmp_path: Path, name: str) -> str | None:
    store = ContentStore(tmp_path / "c")
    try:
        return store.index.refs_for([name]).get(name)
    finally:
        store.close()


def test_each_value_is_stored_under_its_content_key_with_its_format(
        manager: PadStoreIOManager, tmp_path: Path) -> None:
    summary = {"scored": 12, "models": ["nn", "pls"]}
    meta = _write(manager, summary)
    payload = json.dumps(summary, sort_keys=True).encode()
    assert meta == {"pad/content_key": sha256_bytes(payload), "pad/format": "json"}
    item = _item(tmp_path, sha256_bytes(payload))
    assert item["layer"] == "asset_value"
    assert item["meta"]["format"] == "json" and item["meta"]["asset"] == "io_out/model_comparison"
    assert item["meta"]["run_id"] == "run-7" and item["meta"]["written_at"] > 0
    assert _ref(tmp_path, asset_ref(KEY, None)) == sha256_bytes(payload)

    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    meta = _write(manager, arr)
    assert meta == {"pad/content_key": array_digest(arr), "pad/format": "ndarray"}
    assert _item(tmp_path, array_digest(arr))["meta"]["format"] == "ndarray"
    raw = bytearray(b"\x00report bytes")
    meta = _write(manager, raw)
    assert meta == {"pad/content_key": sha256_bytes(bytes(raw)), "pad/format": "bytes"}
    loaded = manager.load_input(dg.build_input_context(asset_key=KEY))
    assert loaded == bytes(raw) and type(loaded) is bytes


def test_the_same_mapping_is_one_item_whatever_its_key_order(
        manager: PadStoreIOManager, tmp_path: Path) -> None:
    a = _write(manager, {"b": 1, "a": {"d": 2, "c": 3}})
    b = _write(manager, {"a": {"c": 3, "d": 2}, "b": 1})
    assert a["pad/content_key"] == b["pad/content_key"]
    # values JSON cannot hold as such are stored as their text, not refused mid-run
    when = datetime(2026, 11, 30, 6, 30)
    _write(manager, {"refreshed_at": when, "path": Path("report/summary.md")})
    assert manager.load_input(dg.build_input_context(asset_key=KEY)) == {
        "refreshed_at": "2026-11-30 06:30:00", "path": "report/summary.md"}
    with pytest.raises(InvalidInputError, match=r"PadStoreIOManager cannot store a set: "
                       r"expected a DataFrame, ndarray, bytes or JSON-like value \(values are "
                       r"never pickled\)"):
        encode_value({1, 2})


def test_frames_are_stored_as_their_columns_without_the_index(
        manager: PadStoreIOManager) -> None:
    frame = pd.DataFrame({"card_id": [63001, 63002], "prediction": ["a", "b"],
                          "scored_at": pd.to_datetime(["2026-11-30", "2026-12-01"])},
                         index=[10, 11])
    payload, fmt = encode_value(frame)
    schema = json.loads(payload)["schema"]
    assert fmt == "dataframe"
    assert [f["name"] for f in schema["fields"]] == ["card_id", "prediction", "scored_at"]
    assert "primaryKey" not in schema
    _write(manager, frame)
    back = manager.load_input(dg.build_input_context(asset_key=KEY))
    want = frame.reset_index(drop=True)
    pd.testing.assert_frame_equal(back.drop(columns="scored_at"),
                                  want.drop(columns="scored_at"))
    assert list(back["scored_at"]) == list(want["scored_at"])  # same instants (any unit)


def test_a_partitioned_output_is_recorded_under_its_partition(
        manager: PadStoreIOManager, tmp_path: Path) -> None:
    parts = dg.StaticPartitionsDefinition(CARDS)
    meta = _write(manager, {"card_id": int(CARDS[3])}, key=PRED, partition_key=CARDS[3],
                  asset_partitions_def=parts)
    assert _ref(tmp_path, asset_ref(PRED, CARDS[3])) == meta["pad/content_key"]
    assert _ref(tmp_path, asset_ref(PRED, None)) is None
    with pytest.raises(InvalidInputError, match=r"io_out/prediction_tiny: one value for 3 "
                       r"partitions; image layers record one value per partition with "
                       r"record_partitions"):
        _write(manager, {"x": 1}, key=PRED, asset_partitions_def=parts,
               asset_partition_key_range=dg.PartitionKeyRange(CARDS[0], CARDS[2]))
    # None means "nothing to store": no item, no ref
    _write(manager, None, key=KEY)
    assert _ref(tmp_path, asset_ref(KEY, None)) is None


def test_a_range_of_partitions_loads_through_dagster_and_names_the_missing_ones(
        manager: PadStoreIOManager, tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "c")
    metas = {c: {"card_id": int(c), "prediction": f"drug{i}"} for i, c in enumerate(CARDS)}
    keys = {c: sha256_bytes(json.dumps(m, sort_keys=True).encode()) for c, m in metas.items()}
    store.put([NewItem(keys[c], "prediction", None, metas[c]) for c in CARDS[:1]])
    PadStoreIOManager.record_partitions(store, PRED, {CARDS[0]: keys[CARDS[0]]},
                                        run_id="run-42")
    store.close()
    ctx = dg.build_input_context(asset_key=PRED,
                                 asset_partitions_def=dg.StaticPartitionsDefinition(CARDS),
                                 asset_partition_key_range=dg.PartitionKeyRange(CARDS[0],
                                                                                CARDS[-1]))
    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = seen.append  # type: ignore[method-assign]
    ctx.log.addHandler(handler)  # the run's log, where Dagster shows the warning
    got = manager.load_input(ctx)
    assert got == {CARDS[0]: metas[CARDS[0]]}
    warned = [r.getMessage() for r in seen if "have no value" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].endswith(f"io_out/prediction_tiny: 7 partition(s) have no value in the "
                              f"store, e.g. {sorted(CARDS[1:])[:5]}")

    # lineage names the run that recorded the partition (one dagster_run item per run)
    store = ContentStore(tmp_path / "c")
    (entry,) = dagster_refs(store, [keys[CARDS[0]]], int(CARDS[0]))[keys[CARDS[0]]]
    assert entry["asset_key"] == "io_out/prediction_tiny" and entry["run_id"] == "run-42"
    (run_item,) = store.index.query("SELECT meta FROM items WHERE layer='dagster_run'")
    assert json.loads(run_item[0]) == {"run_id": "run-42"}
    store.close()
