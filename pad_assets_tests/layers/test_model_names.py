"""A model's display name: ``model_names.json`` beside the shards, one entry per signature.

The rename test in ``cli/test_cli.py`` covers it end to end, but its Keras model runs
TensorFlow, which cannot run in mutmut's forked test sessions; these tests pin the file
itself (what audit, lineage, ``cache stats`` and ``cache rm -m`` read) without a model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pad_assets.layers import model_names
from pad_assets.store import ContentStore


def test_names_are_recorded_renamed_read_and_forgotten(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "cache")
    path = Path(store.root) / model_names.FILE_NAME
    assert model_names.current_names(store) == {}  # no file yet

    t0 = time.time()
    model_names.record_name(store, "sigA", "tiny")
    model_names.record_name(store, "sigB", "pls")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) == {"sigA", "sigB"} and data["sigA"]["name"] == "tiny"
    assert t0 <= data["sigA"]["named_at"] <= time.time()
    assert model_names.current_names(store) == {"sigA": "tiny", "sigB": "pls"}

    # the same name again writes nothing (a warm apply_model adds nothing anywhere)
    before = path.read_bytes()
    model_names.record_name(store, "sigA", "tiny")
    assert path.read_bytes() == before
    # a rename replaces the name and its time; the other model keeps its own
    model_names.record_name(store, "sigA", "tiny_v2")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["sigA"]["name"] == "tiny_v2" and data["sigB"] == json.loads(before)["sigB"]
    assert model_names.current_names(store) == {"sigA": "tiny_v2", "sigB": "pls"}

    model_names.forget(store, {"sigA", "sigZ"})
    assert model_names.current_names(store) == {"sigB": "pls"}
    unchanged = path.read_bytes()
    model_names.forget(store, {"sigZ"})  # nothing of it recorded: the file is not rewritten
    assert path.read_bytes() == unchanged
    store.close()


def test_a_damaged_or_foreign_names_file_costs_labels_only(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "cache")
    path = Path(store.root) / model_names.FILE_NAME
    path.write_text('{"sigA": {"name": "tiny"}, "sigB": "not a record", '
                    '"sigC": {"name": ""}, "sigD": {"named_at": 1}}', encoding="utf-8")
    assert model_names.current_names(store) == {"sigA": "tiny"}
    path.write_text('["a", "list"]', encoding="utf-8")
    assert model_names.current_names(store) == {}
    path.write_text("{not json", encoding="utf-8")
    assert model_names.current_names(store) == {}
    model_names.record_name(store, "sigE", "fresh")  # a damaged file is replaced
    assert model_names.current_names(store) == {"sigE": "fresh"}
    path.write_bytes("{\"sigF\": {\"name\": \"caf\u00e9\"}}".encode())
    assert model_names.current_names(store) == {"sigF": "caf\u00e9"}
    store.close()


def test_the_first_name_creates_the_cache_folder(tmp_path: Path) -> None:
    import shutil

    store = ContentStore(tmp_path / "lab" / "cache")
    path = Path(store.root) / model_names.FILE_NAME
    store.close()
    shutil.rmtree(tmp_path / "lab")  # the cache's folders removed under a running process
    model_names.record_name(store, "sigA", "tiny")
    assert json.loads(path.read_text(encoding="utf-8"))["sigA"]["name"] == "tiny"
