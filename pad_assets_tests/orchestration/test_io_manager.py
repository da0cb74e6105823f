"""``PadStoreIOManager`` on a real store: every partition loads its own value, and the
partitions with no value are named, not silently swapped for another's.

The whole graph (orchestration/test_graph.py) loads predictions through this class too; here
each partition's value says which card it belongs to, so a mapping that is off by one (a
bug the graph tests once let through: 404 tests passed) fails on the first card.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from pad_assets.errors import InvalidInputError
from pad_assets.hashing import sha256_bytes
from pad_assets.orchestration.io_manager import (
    UNPARTITIONED,
    PadStoreIOManager,
    asset_ref,
    decode_value,
    encode_value,
)
from pad_assets.store import ContentStore, NewItem

CARDS = [str(c) for c in range(61000, 61007)]
PRED = dg.AssetKey(["io_ds", "prediction_tiny"])
TENSOR = dg.AssetKey(["io_ds", "tensor_tiny"])


def _predictions(store: ContentStore, cards: list[str]) -> dict[str, str]:
    """Meta-only prediction items (as the batch step writes them), one per card."""
    items, keys = [], {}
    for i, c in enumerate(cards):
        meta = {"card_id": int(c), "prediction": f"drug{i % 3}", "probability": 0.5 + i / 100}
        key = sha256_bytes(json.dumps(meta, sort_keys=True).encode())
        items.append(NewItem(key, "prediction", None, meta))
        keys[c] = key
    store.put(items)
    return keys


def _tensors(store: ContentStore, cards: list[str]) -> dict[str, str]:
    """Array items whose every value is the card's position, so an array names its card."""
    items, keys = [], {}
    for i, c in enumerate(cards):
        arr = np.full((4, 4, 3), i, dtype=np.uint8)
        payload, _ = encode_value(arr)
        from pad_assets.hashing import array_digest

        key = array_digest(payload)
        items.append(NewItem(key, "tensor", payload, {"card_id": int(c)}))
        keys[c] = key
    store.put(items)
    return keys


def test_every_partition_loads_the_value_of_its_own_card(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "c")
    pred_keys, tensor_keys = _predictions(store, CARDS), _tensors(store, CARDS)
    PadStoreIOManager.record_partitions(store, PRED, pred_keys, run_id="run-1")
    PadStoreIOManager.record_partitions(store, TENSOR, tensor_keys)

    preds = PadStoreIOManager.load_partitions(store, PRED, CARDS)
    assert sorted(preds) == CARDS
    for card, value in preds.items():
        assert value["card_id"] == int(card), f"partition {card} loaded card {value['card_id']}"
    tensors = PadStoreIOManager.load_partitions(store, TENSOR, CARDS)
    for i, card in enumerate(CARDS):
        assert np.array_equal(tensors[card], np.full((4, 4, 3), i, dtype=np.uint8)), card
    # a sub-range (what a backfill of some cards asks for) maps the same way
    some = CARDS[2:5]
    assert {c: v["card_id"] for c, v in
            PadStoreIOManager.load_partitions(store, PRED, some).items()} == {
        c: int(c) for c in some}


def test_partitions_with_no_value_are_named_and_left_out(tmp_path: Path, caplog) -> None:
    store = ContentStore(tmp_path / "c")
    keys = _predictions(store, CARDS)
    recorded = dict(list(keys.items())[:4])  # the last three cards were never materialized
    PadStoreIOManager.record_partitions(store, PRED, recorded)
    # one recorded partition whose item is gone (evicted by gc since)
    gone = CARDS[1]
    with store.index.transaction() as con:
        con.execute("DELETE FROM items WHERE key=?", (keys[gone],))
    log = logging.getLogger("pad_assets.test_io_manager")
    with caplog.at_level(logging.WARNING, logger=log.name):
        got = PadStoreIOManager.load_partitions(store, PRED, CARDS, log=log)
    assert sorted(got) == sorted(c for c in recorded if c != gone)
    assert all(v["card_id"] == int(c) for c, v in got.items())
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "io_ds/prediction_tiny: 4 partition(s) have no value in the store" in warning
    assert str(sorted([gone, *CARDS[4:]])[:5]) in warning


def test_an_unmaterialized_dataset_asset_is_an_error_naming_it(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "c")
    with pytest.raises(InvalidInputError, match="asset io_ds/model_comparison has not been "
                                                "materialized into the pad_assets store"):
        PadStoreIOManager.load_partitions(store, dg.AssetKey(["io_ds", "model_comparison"]),
                                          [None])


def test_values_round_trip_without_pickle(tmp_path: Path) -> None:
    """handle_output's encodings (DataFrame, JSON, bytes, array) decode to equal values;
    anything else is refused by name."""
    frame = pd.DataFrame({"card_id": [1, 2], "prediction": ["a", "b"], "p": [0.25, 0.75]})
    for value in (frame, {"summary": [1, 2], "path": "r.md"}, b"\x00bytes", np.arange(6)):
        payload, fmt = encode_value(value)
        back = decode_value(payload, fmt, {})
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(back, value)
        elif isinstance(value, np.ndarray):
            assert np.array_equal(back, value)
        else:
            assert back == value
    with pytest.raises(InvalidInputError, match="cannot store a set"):
        encode_value({1, 2})
    assert asset_ref(PRED, None).endswith(f"/{UNPARTITIONED}")


def test_handle_output_then_load_input_through_dagster_contexts(tmp_path: Path,
                                                                monkeypatch) -> None:
    """The unpartitioned path as Dagster drives it (build_output/input_context)."""
    from pad_assets.orchestration.resources import PadResource

    monkeypatch.setenv("PAD_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("PAD_OFFLINE", "1")
    manager = PadStoreIOManager(pad=PadResource())
    key = dg.AssetKey(["io_ds", "manifest"])
    value = {"cards": [int(c) for c in CARDS], "dataset": "io_ds"}
    out_ctx = dg.build_output_context(asset_key=key, run_id="r1")
    manager.handle_output(out_ctx, value)
    in_ctx = dg.build_input_context(asset_key=key)
    assert manager.load_input(in_ctx) == value
