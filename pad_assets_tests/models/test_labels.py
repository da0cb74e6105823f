"""CustomModelAdapter labels, found as researchers ship them: file metadata (ONNX, TorchScript,
Keras, TF Lite), sidecars, PAD records; precedence, conflicts, signature, lineage, and class
indices with a one-time warning when there are none."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pad_assets.errors import ModelError
from pad_assets.models import custom as custom_mod
from pad_assets.models.base import standardize_label
from pad_assets.models.custom import CustomModelAdapter
from pad_assets.models.labels import UnlabelledModelWarning, onnx_metadata, parse_label_data
from pad_assets_tests.model_fixtures import (
    TINY_DRUG_LABELS,
    make_tiny_torch_module,
    nn_batch,
    tiny_reference_logits,
    write_tiny_keras,
    write_tiny_onnx,
    write_tiny_tflite,
)

pytest_plugins = ["pad_assets_tests.model_fixtures"]
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

STANDARD = [standardize_label(x) for x in TINY_DRUG_LABELS]
OTHER = ["a", "b", "c", "d", "e"]


@pytest.fixture(autouse=True)
def fresh_warning_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the 'once per signature' registry empty (tests run in any order)."""
    monkeypatch.setattr(custom_mod, "_WARNED_UNLABELLED", set())


@pytest.fixture
def onnx_dir(tmp_path: Path, tiny_onnx_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copyfile(tiny_onnx_path, folder / "net.onnx")
    return folder


def _expected(batch: np.ndarray, labels: list[str], seed: int = 0) -> list[str]:
    return [labels[int(k)] for k in tiny_reference_logits(batch, seed=seed).argmax(1)]


def _lines(labels: list[str]) -> str:
    return "\n".join(labels) + "\n"


# ---------------------------------------------------------------------------- sidecars
def test_sidecar_patterns_in_order(onnx_dir: Path, tiny_nn_batch: np.ndarray) -> None:
    model = onnx_dir / "net.onnx"
    (onnx_dir / "labels.txt").write_text(_lines(OTHER))
    folder_wide = CustomModelAdapter(model)
    assert folder_wide.labels == OTHER
    assert folder_wide.label_source.kind == "sidecar"
    assert folder_wide.label_source.where == "labels.txt"
    assert [r.prediction for r in folder_wide.predict_batch(tiny_nn_batch)] == _expected(
        tiny_nn_batch, OTHER)

    (onnx_dir / "net.labels.txt").write_text(_lines(TINY_DRUG_LABELS))
    specific = CustomModelAdapter(model)
    assert specific.labels == STANDARD and specific.label_source.where == "{stem}.labels.txt"
    assert [r.prediction for r in specific.predict_batch(tiny_nn_batch)] == _expected(
        tiny_nn_batch, STANDARD)

    (onnx_dir / "net.labels.json").write_text(json.dumps({"labels": list(reversed(OTHER))}))
    as_json = CustomModelAdapter(model)
    assert as_json.labels == list(reversed(OTHER))
    assert as_json.label_source.where == "{stem}.labels.json"
    sigs = {a.get_cache_signature() for a in (folder_wide, specific, as_json)}
    assert len(sigs) == 3


def test_sidecar_content_is_in_the_signature_and_the_folder_is_not(
    onnx_dir: Path, tmp_path: Path
) -> None:
    sidecar = onnx_dir / "net.labels.txt"
    sidecar.write_text(_lines(TINY_DRUG_LABELS))
    first = CustomModelAdapter(onnx_dir / "net.onnx")
    # the same labels after standardisation, other bytes: a different source content
    sidecar.write_text(_lines([x.lower() for x in TINY_DRUG_LABELS]) + "\n\n")
    respelled = CustomModelAdapter(onnx_dir / "net.onnx")
    assert respelled.labels == first.labels
    assert respelled.get_cache_signature() != first.get_cache_signature()
    sidecar.write_text(_lines(TINY_DRUG_LABELS))
    moved = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(onnx_dir, moved)
    (moved / "net.onnx").rename(moved / "renamed.onnx")
    (moved / "net.labels.txt").rename(moved / "renamed.labels.txt")
    again = CustomModelAdapter(moved / "renamed.onnx", name="net")
    assert again.get_cache_signature() == first.get_cache_signature()
    assert CustomModelAdapter(onnx_dir / "net.onnx").get_cache_signature() == (
        first.get_cache_signature())


def test_lineage_names_the_source(onnx_dir: Path) -> None:
    sidecar = onnx_dir / "net.labels.txt"
    sidecar.write_text(_lines(TINY_DRUG_LABELS))
    d = CustomModelAdapter(onnx_dir / "net.onnx").describe()
    assert d["label_source"] == {
        "kind": "sidecar", "where": "{stem}.labels.txt", "path": str(sidecar),
        "sha256": hashlib.sha256(sidecar.read_bytes()).hexdigest(),
    }
    assert d["labels"] == STANDARD
    explicit = CustomModelAdapter(onnx_dir / "net.onnx", labels=OTHER).describe()
    assert explicit["label_source"]["kind"] == "explicit" and explicit["labels"] == OTHER


@pytest.mark.parametrize(("content", "expected"), [
    (json.dumps(OTHER), OTHER),
    (json.dumps({"class_names": OTHER}), OTHER),
    (json.dumps({str(i): x for i, x in reversed(list(enumerate(OTHER)))}), OTHER),
    (json.dumps([0, 20, 50, 80, 100]), ["0", "20", "50", "80", "100"]),
])
def test_json_sidecar_forms(onnx_dir: Path, content: str, expected: list[str]) -> None:
    (onnx_dir / "net.labels.json").write_text(content)
    assert CustomModelAdapter(onnx_dir / "net.onnx").labels == expected


@pytest.mark.parametrize(("name", "content", "message"), [
    ("net.labels.json", '{"0": "a", "2": "b"}', "indices 0..1 exactly once"),
    ("net.labels.json", "[1, 2", "not valid JSON"),
    ("net.labels.json", '[true, "b"]', "must be strings"),
    ("net.labels.txt", "\n \n", "holds no labels"),
    ("labels.txt", b"\xff\xfe\x00bad", "UTF-8"),
])
def test_bad_label_files_are_named(onnx_dir: Path, name: str, content: str | bytes,
                                   message: str) -> None:
    path = onnx_dir / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ModelError, match=message) as info:
        CustomModelAdapter(onnx_dir / "net.onnx")
    assert name in str(info.value)


# ---------------------------------------------------------------------------- in the file
def _onnx_with_props(path: Path, props: dict[str, str]) -> Path:
    import onnx

    model = onnx.load(str(write_tiny_onnx(path)))
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("value", [
    json.dumps(TINY_DRUG_LABELS),
    str(dict(enumerate(TINY_DRUG_LABELS))),  # "{0: 'Albendazole', ...}", as some exporters do
    ",".join(TINY_DRUG_LABELS),
])
def test_onnx_metadata_props(tmp_path: Path, tiny_nn_batch: np.ndarray, value: str) -> None:
    pytest.importorskip("onnx")
    import onnx

    key = "names" if value.startswith("{") else "labels"
    path = _onnx_with_props(tmp_path / "meta.onnx", {"producer": "lab", key: value})
    assert onnx_metadata(path) == {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    adapter = CustomModelAdapter(path)
    assert adapter.labels == STANDARD
    assert adapter.label_source.kind == "embedded"
    assert adapter.label_source.where == f"metadata_props[{key!r}]"
    assert [r.prediction for r in adapter.predict_batch(tiny_nn_batch)] == _expected(
        tiny_nn_batch, STANDARD)


def test_torchscript_extra_files(tmp_path: Path, tiny_nn_batch: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    traced = torch.jit.trace(make_tiny_torch_module(), torch.zeros((1, 454, 454, 3)))
    path = tmp_path / "scripted.pth"
    torch.jit.save(traced, str(path), _extra_files={"labels.txt": _lines(TINY_DRUG_LABELS)})
    adapter = CustomModelAdapter(path)
    assert adapter.labels == STANDARD
    assert (adapter.label_source.kind, adapter.label_source.where) == (
        "embedded", "extra/labels.txt")
    assert [r.prediction for r in adapter.predict_batch(tiny_nn_batch)] == _expected(
        tiny_nn_batch, STANDARD)
    # what torch itself reads back is what was used
    files = {"labels.txt": ""}
    torch.jit.load(str(path), _extra_files=files)
    assert parse_label_data(files["labels.txt"], "x", "text") == TINY_DRUG_LABELS


def _rezip(path: Path, member: str, edit) -> None:  # noqa: ANN001
    buf = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, edit(data) if info.filename == member else data)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize(("member", "scope", "key"), [
    ("metadata.json", "", "labels"),
    ("config.json", "", "class_names"),
    ("config.json", "config.", "labels"),
])
def test_keras_archive_metadata(tmp_path: Path, tiny_nn_batch: np.ndarray, member: str,
                                scope: str, key: str) -> None:
    path = write_tiny_keras(tmp_path / "net.keras")

    def add_labels(data: bytes) -> bytes:
        doc = json.loads(data)
        (doc["config"] if scope else doc)[key] = TINY_DRUG_LABELS
        return json.dumps(doc).encode()

    _rezip(path, member, add_labels)
    adapter = CustomModelAdapter(path)
    assert adapter.labels == STANDARD
    assert adapter.label_source.where == f"{member} {scope}{key}"
    assert [r.prediction for r in adapter.predict_batch(tiny_nn_batch)] == _expected(
        tiny_nn_batch, STANDARD)


def test_tflite_associated_label_file(tmp_path: Path, tiny_nn_batch: np.ndarray) -> None:
    """TF Lite Metadata writers append a zip of associated files; the model still loads."""
    plain = write_tiny_tflite(tmp_path / "plain.tflite")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("labelmap.txt", _lines(TINY_DRUG_LABELS))
    packed = tmp_path / "packed.tflite"
    packed.write_bytes(plain.read_bytes() + buf.getvalue())
    adapter = CustomModelAdapter(packed)
    assert adapter.labels == STANDARD
    assert adapter.label_source.where == "associated file labelmap.txt"
    assert [r.prediction for r in adapter.predict_batch(tiny_nn_batch)] == _expected(
        tiny_nn_batch, STANDARD)


# ---------------------------------------------------------------------------- precedence
def test_precedence_and_conflicts(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    path = _onnx_with_props(tmp_path / "net.onnx", {"labels": json.dumps(TINY_DRUG_LABELS)})
    sidecar = tmp_path / "net.labels.txt"
    sidecar.write_text(_lines([x.upper() for x in TINY_DRUG_LABELS]))  # agrees once standardised
    agreed = CustomModelAdapter(path)
    assert agreed.label_source.kind == "embedded" and agreed.labels == STANDARD

    sidecar.write_text(_lines(OTHER))
    with pytest.raises(ModelError) as info:
        CustomModelAdapter(path)
    message = str(info.value)
    assert "the model file's metadata_props['labels']" in message
    assert f"sidecar {sidecar}" in message
    assert "labels=" in message
    explicit = CustomModelAdapter(path, labels=OTHER)  # explicit wins, nothing else read
    assert explicit.labels == OTHER and explicit.label_source.kind == "explicit"

    sidecar.unlink()
    record = {"id": 99, "name": "net", "labels": OTHER}
    from_record = CustomModelAdapter(path, record={**record, "labels": TINY_DRUG_LABELS})
    assert from_record.label_source.kind == "pad_record" and from_record.labels == STANDARD
    assert from_record.label_source.where == "PAD model record 99"
    with pytest.raises(ModelError, match="PAD model record 99"):
        CustomModelAdapter(path, record=record)  # record vs embedded disagree


def test_regression_reads_no_labels(onnx_dir: Path, tmp_path: Path) -> None:
    (onnx_dir / "labels.txt").write_text("not\nfor\nregression\n")
    one = write_tiny_onnx(onnx_dir / "reg.onnx", n_classes=1, seed=4)
    reg = CustomModelAdapter(one, output="regression")
    assert reg.labels == [] and reg.label_source.kind == "not_applicable"


# ---------------------------------------------------------------------------- none at all
def test_no_labels_gives_class_indices_and_warns_once(
    onnx_dir: Path, tmp_path: Path, tiny_nn_batch: np.ndarray
) -> None:
    with pytest.warns(UnlabelledModelWarning) as caught:
        adapter = CustomModelAdapter(onnx_dir / "net.onnx")
    assert len(caught) == 1
    message = str(caught[0].message)
    for way in ("metadata_props", "_extra_files", "net.onnx", "'net.labels.txt'",
                "'labels.txt'", "'net.labels.json'", "from_pad_model", "labels=["):
        assert way in message, way
    assert adapter.class_indices and adapter.labels == []
    records = adapter.predict_batch(tiny_nn_batch)
    indices = [str(i) for i in range(5)]
    assert [r.prediction for r in records] == _expected(tiny_nn_batch, indices)
    assert all(isinstance(r.prediction, str) and r.label_type == "drug" for r in records)
    assert adapter.actual_label({"drug": "amoxicillin", "quantity": 50}) is None
    assert adapter.describe()["label_source"]["kind"] == "class_index"

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnlabelledModelWarning)
        again = CustomModelAdapter(onnx_dir / "net.onnx")  # same signature: no second warning
    assert again.get_cache_signature() == adapter.get_cache_signature()
    other = write_tiny_onnx(tmp_path / "other.onnx", seed=3)
    with pytest.warns(UnlabelledModelWarning):
        CustomModelAdapter(other)  # another model: warned about too
    labelled = CustomModelAdapter(onnx_dir / "net.onnx", labels=TINY_DRUG_LABELS)
    assert labelled.get_cache_signature() != adapter.get_cache_signature()


def test_label_count_mismatch_is_an_error(onnx_dir: Path) -> None:
    (onnx_dir / "net.labels.txt").write_text("a\nb\nc\n")
    adapter = CustomModelAdapter(onnx_dir / "net.onnx")
    with pytest.raises(ModelError, match="outputs 5 values per item but has 3 labels") as info:
        adapter.predict_batch(nn_batch(2))
    assert f"sidecar {onnx_dir / 'net.labels.txt'}" in str(info.value)
