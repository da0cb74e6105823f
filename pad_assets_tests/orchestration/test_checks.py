"""The Dagster checks' failure paths, on a real store: a tensor off its spec fails
``tensor_shape_dtype``, a deleted prediction fails ``prediction_status``, each with ERROR
severity and the card named; the untouched store passes both (so a check that can never
fail, or never pass, is caught).

The checks run inside the image step (orchestration/images.py), which heals what it can
(a rerun recomputes a deleted prediction), so their verdicts are tested here, on the
store state they are given, and the graph tests (orchestration/test_graph.py) show that the
step runs them.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from pad_assets.hashing import array_digest
from pad_assets.keys import chain_key
from pad_assets.orchestration import checks
from pad_assets.orchestration.io_manager import PadStoreIOManager
from pad_assets.store import CardRecord, ContentStore, NewItem

DS = "checks_ds"
CARDS = [62000, 62001, 62002, 62003]
TENSOR = dg.AssetKey([DS, "tensor_tiny"])
PRED = dg.AssetKey([DS, "prediction_tiny"])
SPEC = {"shape": [6, 6, 3], "dtype": "float32", "storage_dtype": "uint8", "layout": "NHWC",
        "scale": "raw"}


def _tensor_item(card: int, arr: np.ndarray) -> NewItem:
    return NewItem(array_digest(arr), "tensor", arr, {"spec": SPEC, "card_id": card})


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    """Every card cached (raw ok), a tensor and an ok prediction per card, partition refs."""
    s = ContentStore(tmp_path / "c")
    raws, tensors, preds = {}, {}, {}
    items: list[NewItem] = []
    for i, c in enumerate(CARDS):
        raw = bytes([i]) * 100
        rk = chain_key("raw-for-test", c)
        raws[c] = rk
        items.append(NewItem(rk, "raw", raw, {}))
        t = _tensor_item(c, np.full((6, 6, 3), i, dtype=np.uint8))
        tensors[str(c)] = t.key
        items.append(t)
        record = {"prediction": "albendazole", "probability": 0.9, "status": "ok"}
        pk = chain_key("prediction-for-test", c)
        preds[str(c)] = pk
        items.append(NewItem(pk, "prediction", None, {"record": record, "card_id": c}))
    s.put(items, cards=[CardRecord(DS, c, raws[c], "ok") for c in CARDS])
    PadStoreIOManager.record_partitions(s, TENSOR, tensors)
    PadStoreIOManager.record_partitions(s, PRED, preds)
    return s


def _cards(store: ContentStore) -> dict:
    return store.cards(DS)


def test_untouched_store_passes_both_checks(store: ContentStore) -> None:
    t = checks.tensor_specs(store, TENSOR, SPEC)
    assert t.passed and t.metadata["checked"].value == len(CARDS)
    p = checks.prediction_status(store, PRED, CARDS, _cards(store))
    assert p.passed and p.metadata["checked"].value == len(CARDS)


def test_a_tensor_off_its_spec_fails_tensor_shape_dtype(store: ContentStore) -> None:
    # card 62002's tensor replaced by a corrupted one: a channel lost, float64 bytes
    bad = _tensor_item(CARDS[2], np.zeros((6, 6), dtype=np.float64))
    store.put([bad], refs=[(f"asset/{TENSOR.to_user_string()}/{CARDS[2]}", bad.key)])
    res = checks.tensor_specs(store, TENSOR, SPEC)
    assert res.passed is False and res.severity == dg.AssetCheckSeverity.ERROR
    assert res.check_name == "tensor_shape_dtype"
    listed = res.metadata["error_cards"].value
    assert set(listed) == {str(CARDS[2])}
    assert "shape (6, 6) dtype <f8, expected (6, 6, 3) uint8" in listed[str(CARDS[2])]

    # and a partition whose tensor item is gone
    with store.index.transaction() as con:
        con.execute("DELETE FROM items WHERE key=?", (bad.key,))
    res = checks.tensor_specs(store, TENSOR, SPEC)
    assert res.passed is False
    assert "missing" in res.metadata["error_cards"].value[str(CARDS[2])]


def test_a_deleted_prediction_fails_prediction_status(store: ContentStore) -> None:
    gone = CARDS[1]
    with store.index.transaction() as con:
        con.execute("DELETE FROM refs WHERE name=?",
                    (f"asset/{PRED.to_user_string()}/{gone}",))
    res = checks.prediction_status(store, PRED, CARDS, _cards(store))
    assert res.passed is False and res.severity == dg.AssetCheckSeverity.ERROR
    listed = res.metadata["error_cards"].value
    assert set(listed) == {str(gone)}
    assert "no prediction recorded although the image is cached" in listed[str(gone)]
    assert res.metadata["status_counts"].value["ok"] == len(CARDS) - 1


def test_explained_gaps_warn_and_name_the_cards(store: ContentStore) -> None:
    """An unknown drug and a card whose download failed: WARN (known, explained)."""
    unknown = NewItem(chain_key("prediction-for-test", "unknown"), "prediction", None,
                      {"record": {"prediction": None, "status": "unknown_drug",
                                  "detail": "drug 'x' not in coefficients"}})
    store.put([unknown], refs=[(f"asset/{PRED.to_user_string()}/{CARDS[0]}", unknown.key)],
              cards=[CardRecord(DS, CARDS[3], None, "failed", "HTTP 404")])
    with store.index.transaction() as con:
        con.execute("DELETE FROM refs WHERE name=?",
                    (f"asset/{PRED.to_user_string()}/{CARDS[3]}",))
    res = checks.prediction_status(store, PRED, CARDS, _cards(store))
    assert res.passed is False and res.severity == dg.AssetCheckSeverity.WARN
    warned = res.metadata["warning_cards"].value
    assert set(warned) == {str(CARDS[0]), str(CARDS[3])}
    assert "unknown_drug" in warned[str(CARDS[0])] and "HTTP 404" in warned[str(CARDS[3])]
    # the one line the UI's check list and the demo show: the cards, and the first reason
    first, second = sorted((CARDS[0], CARDS[3]))
    assert res.description == (
        f"2 warning(s): cards {first}, {second} (card {first}: "
        + ("unknown_drug: drug 'x' not in coefficients)" if first == CARDS[0] else
           "no image (failed: HTTP 404))"))


def test_a_check_line_lists_ten_cards_and_the_first_reason_in_card_order() -> None:
    long = "x" * 100
    res = checks.result(PRED, "c", 12, {}, {str(c): f"r{c} {long}" for c in range(12, 0, -1)})
    assert res.description == ("12 warning(s): cards 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ... "
                               f"(card 1: r1 {'x' * 74}...)")
    assert checks.result(PRED, "c", 3, {}, {}).description == "all 3 checked passed"


def _png(seed: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), seed, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_raw_integrity_takes_the_downloads_evidence_and_reads_the_rest(tmp_path: Path) -> None:
    """Images the step downloaded are judged on their index record (md5 against the manifest,
    sha256 against the key, truncated flag against the download's); the others are read
    back and decoded. Each kind of mismatch is an ERROR naming the card."""
    from pad_assets.hashing import md5_bytes, sha256_bytes

    s = ContentStore(tmp_path / "c")
    raw_key = dg.AssetKey([DS, "raw_image"])
    data = {c: _png(i) for i, c in enumerate(CARDS)}
    data[CARDS[3]] = b"not an image at all"
    keys = {c: sha256_bytes(b) for c, b in data.items()}
    s.put([NewItem(keys[c], "raw", b, {"md5": md5_bytes(b), "sha256": keys[c],
                                       "truncated": False}) for c, b in data.items()])
    md5 = {c: md5_bytes(b) for c, b in data.items()}
    downloaded = {c: False for c in CARDS[:3]}

    ok = checks.raw_integrity(s, raw_key, {c: keys[c] for c in CARDS[:3]}, md5,
                              downloaded=downloaded)
    assert ok.passed
    assert ok.metadata["verified_at_download"].value == 3
    assert ok.metadata["decoded"].value == 0 and ok.metadata["read_back"].value == 0

    bad_md5 = {**md5, CARDS[0]: "0" * 32}  # the manifest says otherwise
    res = checks.raw_integrity(s, raw_key, keys, bad_md5,
                               downloaded={**downloaded, CARDS[1]: True})
    assert res.passed is False and res.severity == dg.AssetCheckSeverity.ERROR
    listed = res.metadata["error_cards"].value
    assert set(listed) == {str(CARDS[0]), str(CARDS[1]), str(CARDS[3])}
    assert "!= manifest" in listed[str(CARDS[0])]
    assert "download found truncated=True" in listed[str(CARDS[1])]
    assert "not a PNG or JPEG" in listed[str(CARDS[3])]  # not downloaded here: decoded
    assert res.metadata["decoded"].value == 0 and res.metadata["read_back"].value == 1
    read = checks.raw_integrity(s, raw_key, {CARDS[2]: keys[CARDS[2]]}, md5)
    assert read.passed and read.metadata["decoded"].value == 1
