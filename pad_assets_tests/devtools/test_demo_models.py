"""The SYNTHETIC demo models: they build offline, they work, and a rebuild is never needed.

The first run of the suite trains them (~30-60 s on 2 cores); the build is kept in
pytest's cache folder (``.pytest_cache/d/pad_demo_models``), so later runs only read it
back. Accuracy is measured through the real adapters on the emulator's own card ids
(10000...), which are disjoint from the training (900000...) and build-time evaluation
(950000...) ids.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pad_assets.devtools import demo_models
from pad_assets.devtools.emulator import synthetic
from pad_assets.models.base import STATUS_OK, STATUS_UNKNOWN_DRUG, standardize_label
from pad_assets.models.pls import PLSModelAdapter
from pad_assets.models.tflite import PADTensorFlowAdapter
from pad_assets.preprocessing.nn import PADNeuralNetworkPipeline
from pad_assets.preprocessing.pls import PADPLSPipeline

HELD_OUT_IDS = list(range(10_000, 10_120))


@pytest.fixture(scope="session")
def demo(demo_cache_dir: Path) -> dict[str, object]:
    started = time.perf_counter()
    artifacts = demo_models.demo_model_artifacts(demo_cache_dir)
    seconds = time.perf_counter() - started
    report = demo_models.demo_model_report(demo_cache_dir)
    print(f"demo models ready in {seconds:.1f} s; build report: {report}")
    return {"artifacts": {a.record["id"]: a for a in artifacts}, "report": report}


@pytest.fixture(scope="session")
def held_out() -> dict[str, object]:
    """NN inputs, PLS features and labels of 120 emulator cards (rendered once)."""
    nn, pls = PADNeuralNetworkPipeline(), PADPLSPipeline()
    images = [Image.fromarray(synthetic.render_card(c)) for c in HELD_OUT_IDS]
    attrs = [synthetic.card_attributes(c) for c in HELD_OUT_IDS]
    return {
        "nn": np.stack([nn.process_image(im) for im in images]),
        "pls": np.stack([pls.process_image(im) for im in images]),
        "cards": [{"drug": a.drug, "quantity": a.quantity} for a in attrs],
    }


def _write(artifact: object, folder: Path) -> Path:
    path = folder / artifact.filename  # type: ignore[attr-defined]
    path.write_bytes(artifact.data)  # type: ignore[attr-defined]
    return path


def test_records_look_like_pad_records(demo: dict[str, object]) -> None:
    arts = demo["artifacts"]
    assert sorted(arts) == [16, 17, 18]
    names = {i: a.record["name"] for i, a in arts.items()}
    assert names == {16: "24fhiNN1classifyAPI", 17: "24fhiNN1concAPI", 18: "24fhiPLS1conc"}
    for art in arts.values():
        rec = art.record
        for key in ("id", "name", "type", "labels", "version", "architecture", "image_size",
                    "description", "drugs", "drugs_size", "lanes_excluded", "weights", "test",
                    "training_set", "brightness", "image_mean"):
            assert key in rec, key
        assert "SYNTHETIC" in rec["description"]
        assert rec["weights"] == art.filename and rec["version"] == "1.0"
        assert rec["training_set"] == "FHI2020_Stratified_Sampling"
        assert rec["drugs_size"] == len(rec["drugs"])
    clf = arts[16].record
    assert clf["type"] == "tf_lite" and clf["image_size"] == "454x454"
    assert "Amoxicillin" in clf["labels"] and "Benzyl Penicillin" in clf["labels"]
    assert [standardize_label(x) for x in clf["labels"]] == list(synthetic.DRUGS)
    assert arts[17].record["labels"] == ["0", "100", "20", "50", "80"]
    assert arts[18].record["type"] == "pls"
    assert arts[16].filename.endswith(".tflite") and arts[18].filename.endswith(".csv")


def test_classifier_and_concentration_work_on_held_out_cards(
    demo: dict[str, object], held_out: dict[str, object], tmp_path: Path
) -> None:
    arts = demo["artifacts"]
    clf = PADTensorFlowAdapter(
        model_path=_write(arts[16], tmp_path), labels=arts[16].record["labels"]
    )
    conc = PADTensorFlowAdapter(
        model_path=_write(arts[17], tmp_path), labels=arts[17].record["labels"]
    )
    x, cards = held_out["nn"], held_out["cards"]
    spec = clf.get_tensor_spec()
    stored = np.stack([spec.to_storage(item) for item in x])

    drug_pred = [r.prediction for r in clf.predict_batch(stored)]
    drug_true = [clf.actual_label(c) for c in cards]
    drug_acc = float(np.mean([p == t for p, t in zip(drug_pred, drug_true, strict=True)]))

    conc_pred = [r.prediction for r in conc.predict_batch(stored)]
    conc_true = [conc.actual_label(c) for c in cards]
    conc_acc = float(np.mean([p == t for p, t in zip(conc_pred, conc_true, strict=True)]))
    majority = max(conc_true.count(v) for v in set(conc_true)) / len(conc_true)
    print(f"held-out: drug accuracy {drug_acc:.3f}, concentration accuracy {conc_acc:.3f} "
          f"(majority class {majority:.3f}) on {len(cards)} cards")
    assert drug_acc >= 0.90
    assert conc_acc >= max(0.5, majority + 0.2)


def test_pls_fits_held_out_cards(
    demo: dict[str, object], held_out: dict[str, object], tmp_path: Path
) -> None:
    art = demo["artifacts"][18]
    path = _write(art, tmp_path)
    assert path.read_bytes().startswith(b'"albendazole","')  # the real file's quoted layout
    adapter = PLSModelAdapter(coefficients_path=path)
    assert adapter.drugs == [d for d in synthetic.DRUGS if d not in demo_models.PLS_EXCLUDED]
    cards = held_out["cards"]
    contexts = [adapter.prediction_context(c) for c in cards]
    records = adapter.predict_batch(held_out["pls"], contexts)
    errors = [
        r.prediction - c["quantity"] for r, c in zip(records, cards, strict=True)
        if r.status == STATUS_OK
    ]
    rmse = float(np.sqrt(np.mean(np.square(errors))))
    print(f"held-out PLS RMSE {rmse:.2f} on {len(errors)} cards")
    assert len(errors) > 80 and rmse < 15.0
    for rec, card in zip(records, cards, strict=True):
        if card["drug"] in demo_models.PLS_EXCLUDED:
            assert rec.status == STATUS_UNKNOWN_DRUG and rec.prediction is None


def test_warm_calls_never_train_again_and_are_identical(
    demo: dict[str, object], demo_cache_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a warm call trained the demo models again")

    monkeypatch.setattr(demo_models, "build_demo_models", no_training)
    again = demo_models.demo_model_artifacts(demo_cache_dir)
    first = {a.filename: a.data for a in demo["artifacts"].values()}
    assert {a.filename: a.data for a in again} == first

    # A fresh cache folder in the same process is filled from the in-process memo.
    fresh = tmp_path / "fresh_cache"
    copied = demo_models.demo_model_artifacts(fresh)
    assert {a.filename: a.data for a in copied} == first
    (folder,) = [p for p in fresh.iterdir() if p.is_dir()]
    assert (folder / "manifest.json").is_file()

    # A damaged file is detected by its sha256 and replaced, never served.
    victim = folder / "24fhiNN1classifyAPI.tflite"
    victim.write_bytes(b"garbage")
    repaired = demo_models.demo_model_artifacts(fresh)
    assert {a.filename: a.data for a in repaired} == first
    want = hashlib.sha256(first["24fhiNN1classifyAPI.tflite"]).hexdigest()
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == want


def test_build_key_tracks_parameters() -> None:
    base = demo_models.build_key()
    assert base == demo_models.build_key(demo_models.DemoParams())
    assert demo_models.build_key(demo_models.DemoParams(seed=1)) != base
    assert demo_models.build_key(demo_models.DemoParams(cards_per_drug=5)) != base


def test_build_key_tracks_the_training_code(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Edit the training code and the cached models are rebuilt; edit only its words and
    they are not (the key hashes code, never a version string someone must remember)."""
    from pad_assets.hashing import code_digest

    src = Path(demo_models.__file__).read_text(encoding="utf-8")
    assert code_digest(src) == code_digest(src.replace("    seed: int = 0\n",
                                                       "    seed: int = 0  # the seed\n"))
    docless = src.replace('"""Everything that determines the demo models\' bytes', '"""Other')
    assert docless != src and code_digest(docless) == code_digest(src)
    changed = src.replace("    learning_rate: float = 3e-3", "    learning_rate: float = 2e-3")
    assert changed != src and code_digest(changed) != code_digest(src)

    # every module that decides the models' bytes is in the key: a change in any one of them
    # (here: a copy of the renderer, edited) changes the digest
    assert set(demo_models.TRAINING_CODE) >= {"pad_assets.devtools.demo_models",
                                              "pad_assets.devtools.emulator.synthetic",
                                              "pad_assets.preprocessing.nn",
                                              "pad_assets.preprocessing.pls"}
    import sys

    renderer = Path(synthetic.__file__).read_text(encoding="utf-8")
    (tmp_path / "renderer_copy.py").write_text(renderer)
    (tmp_path / "renderer_edit.py").write_text(renderer + "\nEXTRA_NOISE = 0.1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        a = demo_models.training_code_digest(("renderer_copy",))
        b = demo_models.training_code_digest(("renderer_edit",))
    finally:
        sys.path.remove(str(tmp_path))
    assert a != b
    base = demo_models.build_key()
    monkeypatch.setattr(demo_models, "training_code_digest", lambda: "edited code")
    assert demo_models.build_key() != base


def test_pad_labels_standardise_back() -> None:
    for drug in synthetic.DRUGS:
        assert standardize_label(demo_models.pad_label(drug)) == drug
    assert demo_models.pad_label("benzyl-penicillin") == "Benzyl Penicillin"
    assert demo_models.demo_labels_standardised() == list(synthetic.DRUGS)


def test_pooling_matches_the_model_stem() -> None:
    x = np.random.default_rng(0).integers(0, 256, (2, 454, 454, 3), dtype=np.uint8)
    ref = x[:, :448, :448].astype(np.float64).reshape(2, 28, 16, 28, 16, 3).mean(axis=(2, 4))
    np.testing.assert_array_equal(demo_models.pool_nn_input(x), ref.astype(np.float32))
