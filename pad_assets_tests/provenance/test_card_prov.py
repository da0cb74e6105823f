"""Issue 13 (dependencies): one card's provenance as a ``prov`` document and a picture."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from prov.model import ProvDocument

from pad_assets import CachedDataset, CustomModelAdapter
from pad_assets.devtools.emulator import DRUGS, Emulator
from pad_assets.errors import InvalidInputError
from pad_assets.provenance.card_prov import CardProvenance, MissingDependencyError, card_prov
from pad_assets_tests.model_fixtures import write_tiny_onnx

DATASET = "FHI2020_Stratified_Sampling"


@pytest.fixture
def predicted(pad_env: Emulator, tmp_path: Path):
    """A dataset with 4 cards downloaded, 3 of them predicted by two tiny ONNX models."""
    ds = CachedDataset(DATASET, progress=False)
    ids = [int(c) for c in ds.manifest().rows["card_id"][:4]]
    ds.download_and_cache(card_ids=ids)
    models = [CustomModelAdapter(write_tiny_onnx(tmp_path / f"m{s}.onnx", seed=s),
                                 labels=list(DRUGS[:5]), name=f"tiny_{s}") for s in (0, 1)]
    for m in models:
        ds.apply_model(m, card_ids=ids[:3])
    yield ds, ids, models
    ds.close()


def _records(doc: ProvDocument, kind: str) -> list[str]:
    return sorted(str(r.identifier) for r in doc.get_records() if r.get_type().localpart ==
                  kind.capitalize() and r.identifier is not None)


def test_card_prov_is_a_prov_document_of_the_whole_chain(predicted) -> None:
    ds, ids, models = predicted
    cp = card_prov(ds, ids[0])
    assert isinstance(cp, CardProvenance) and isinstance(cp.document, ProvDocument)
    assert cp.n_predictions == 2
    results = ds.apply_model(models[0], card_ids=[ids[0]]).iloc[0]
    entities = _records(cp.document, "entity")
    for key in ("raw", "preprocessed", "tensor", "prediction"):
        assert f"pad:{key}/{results[f'{key}_key']}" in entities
    assert sum(e.startswith("pad:prediction/") for e in entities) == 2  # two models
    assert sum(e.startswith("pad:manifest/") for e in entities) == 1
    activities = _records(cp.document, "activity")
    assert {a.split("/")[0] for a in activities} == {
        "pad:download", "pad:preprocess", "pad:build_tensor", "pad:predict"}
    provn = cp.provn()
    assert provn.startswith("document") and "wasDerivedFrom(" in provn
    assert f"pad:raw/{results['raw_key']}" in provn
    # a PROV tool reads what we serialise: the round trip gives the same document
    assert ProvDocument.deserialize(content=cp.json(), format="json") == cp.document
    # the model filter takes a cached model's name, as ``audit -m`` does
    only = card_prov(ds, ids[0], models=["tiny_1"])
    assert only.n_predictions == 1
    assert "tiny_1" in only.provn() and "model tiny_0" not in only.provn()


def test_a_card_with_only_its_image_and_unknown_cards(predicted) -> None:
    ds, ids, _ = predicted
    cp = card_prov(ds, ids[3])  # downloaded, never predicted
    assert cp.n_predictions == 0
    entities = _records(cp.document, "entity")
    assert [e.split("/")[0] for e in entities] == ["pad:manifest", "pad:raw"]
    assert [a.split("/")[0] for a in _records(cp.document, "activity")] == ["pad:download"]
    with pytest.raises(InvalidInputError, match="card 99999 is not in the cached manifest"):
        card_prov(ds, 99999)
    not_cached = int(ds.manifest().rows["card_id"].iloc[10])
    with pytest.raises(InvalidInputError, match=f"card {not_cached} .*no provenance yet"):
        card_prov(ds, not_cached)


def test_picture_dot_source_needs_only_pydot(predicted, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ds, ids, _ = predicted
    cp = card_prov(ds, ids[0])
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no Graphviz program reachable
    src = cp.picture(tmp_path / "card.dot").decode()
    assert src.startswith("digraph") and "card image" in src and "prediction of tiny_0" in src
    assert (tmp_path / "card.dot").read_text() == src
    with pytest.raises(MissingDependencyError, match=r"Graphviz's 'dot' program.*apt-get "
                                                     r"install graphviz"):
        cp.picture(format="png")
    page = cp._repr_html_()  # a notebook without Graphviz still shows the PROV-N
    assert "No picture" in page and "wasDerivedFrom(" in page
    with pytest.raises(InvalidInputError, match="expected one of png, svg"):
        cp.picture(tmp_path / "card.jpg")


def test_missing_pydot_is_named(predicted, monkeypatch: pytest.MonkeyPatch) -> None:
    ds, ids, _ = predicted
    cp = card_prov(ds, ids[0])
    monkeypatch.setitem(sys.modules, "pydot", None)  # import pydot fails
    monkeypatch.delitem(sys.modules, "prov.dot", raising=False)
    with pytest.raises(MissingDependencyError, match=r"'pydot' package.*pip install"):
        cp.picture(format="dot")


def test_picture_renders_png_and_svg_where_graphviz_is_installed(predicted,
                                                                 tmp_path: Path) -> None:
    """With Graphviz (this project's CI machines have it): real PNG and SVG. Without it
    (pip cannot install a system program, and the project allows no skips): the error that
    names it, which ``test_picture_dot_source_needs_only_pydot`` also forces by PATH."""
    ds, ids, _ = predicted
    cp = card_prov(ds, ids[0])
    if shutil.which("dot") is None:
        with pytest.raises(MissingDependencyError, match="Graphviz"):
            cp.picture(tmp_path / "card.png")
        assert not (tmp_path / "card.png").exists()
        return
    png = cp.picture(tmp_path / "card.png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and (tmp_path / "card.png").read_bytes() == png
    svg = cp.picture(format="svg").decode()
    assert "<svg" in svg and "card image" in svg and "predict tiny_0" in svg
    assert cp._repr_html_().count("<svg") == 1
