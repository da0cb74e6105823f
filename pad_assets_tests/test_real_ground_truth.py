"""pad_assets against the PAD lab's own outputs on real public files (issue 10, point 2).

The files in ``data/real`` (sources and MIT licence in its SOURCES.md) are the lab's: two
real processed cards, their archived PLS features, both real coefficient files and the
archived PLS predictions of 1,982 cards. Nothing here is computed by pad_assets to check
pad_assets: the expected values are the archived ones, or the original code's arithmetic
restated literally in ``pls_reference``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile

from pad_assets import CachedDataset, PLSModelAdapter
from pad_assets.devtools.emulator import CardAttributes, DatasetSpec, Emulator, ModelArtifact
from pad_assets.models.pls import parse_pls_coefficients
from pad_assets.preprocessing import PADNeuralNetworkPipeline, PADPLSPipeline
from pad_assets.preprocessing.pls import PLS_FEATURE_NAMES
from pad_assets_tests.conftest import make_config, point_env_at
from pad_assets_tests.pls_reference import (
    findMaxIntensitiesFiltered,
    fullRoutine,
    reference_coefficients,
    reference_features,
    reference_quantity,
)

REAL = Path(__file__).parent / "data" / "real"
CARDS = {19208: ("ceftriaxone", 50), 25834: ("amoxicillin", 100)}
COEFFICIENT_FILES = ("24fhiPLS1quantity.csv", "pls_fhi360_conc_coefficients.csv")
#: The file whose predictions the lab archived (checked below: exact on all 1,982 cards).
ARCHIVE_COEFFICIENTS = "24fhiPLS1quantity.csv"


def _card_bytes(card_id: int) -> bytes:
    return (REAL / f"{card_id}_processed.png").read_bytes()


def _tolerant_rgb(data: bytes) -> Image.Image:
    """Decoded as pad-analytics does (it sets LOAD_TRUNCATED_IMAGES for the process)."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


@pytest.fixture(scope="module")
def archived_features() -> pd.DataFrame:
    return pd.read_csv(REAL / "10_region_rgb__test__real_cards.csv").set_index("Image")


@pytest.fixture(scope="module")
def pipeline_features() -> dict[int, tuple[np.ndarray, bool]]:
    return {cid: PADPLSPipeline().run(_card_bytes(cid), str(cid)) for cid in CARDS}


# ------------------------------------------------------------------------ PLS features
@pytest.mark.parametrize("card_id", sorted(CARDS))
def test_pls_features_equal_the_archived_rows(
    card_id: int, archived_features: pd.DataFrame, pipeline_features: dict
) -> None:
    features, truncated = pipeline_features[card_id]
    row = archived_features.loc[card_id]
    assert (row["Contains"], int(row["Drug %"])) == CARDS[card_id]
    expected = row[list(PLS_FEATURE_NAMES)].to_numpy(dtype=np.int64)
    agree = int((features == expected).sum())
    assert agree == 360, f"card {card_id}: {agree}/360 features equal the lab's archive"
    assert truncated is (card_id == 19208)  # 19208 is a truncated PNG, decoded tolerantly


@pytest.mark.parametrize("card_id", sorted(CARDS))
def test_per_pixel_reference_equals_the_archived_rows(
    card_id: int, archived_features: pd.DataFrame
) -> None:
    # The reference that the synthetic-card tests trust must itself be right on real data.
    bgr = np.ascontiguousarray(np.asarray(_tolerant_rgb(_card_bytes(card_id)))[..., ::-1])
    expected = archived_features.loc[card_id][list(PLS_FEATURE_NAMES)].to_numpy(np.int64)
    np.testing.assert_array_equal(reference_features(bgr), expected)


# ------------------------------------------------------------------ PLS predictions
@pytest.mark.parametrize("filename", COEFFICIENT_FILES)
def test_both_coefficient_files_reproduce_the_original_arithmetic(
    filename: str, pipeline_features: dict
) -> None:
    """Every drug row of each real file, on both real cards: the adapter's prediction equals
    the original ``pls.quantity`` loop (its own CSV parsing, its own summation order)."""
    model = PLSModelAdapter(coefficients_path=REAL / filename)
    original = reference_coefficients(REAL / filename)
    assert len(original) == len(model.drugs) == 20
    worst = 0.0
    for card_id in CARDS:
        bgr = np.ascontiguousarray(np.asarray(_tolerant_rgb(_card_bytes(card_id)))[..., ::-1])
        f = fullRoutine(bgr, findMaxIntensitiesFiltered, {}, True, 10)
        features = pipeline_features[card_id][0]
        names = list(original)
        records = model.predict_batch(
            np.tile(features, (len(names), 1)), [model.prediction_context({"drug": n})
                                                 for n in names])
        for name, record in zip(names, records, strict=True):
            assert record.status == "ok", (filename, name, record.detail)
            expected = reference_quantity(f, original, name)
            worst = max(worst, abs(record.prediction - expected))
    assert worst <= 1e-9, f"{filename}: max |pad_assets - original| = {worst}"


def test_the_real_cards_predictions_are_the_archived_ones(pipeline_features: dict) -> None:
    archived = pd.read_csv(REAL / "pls_intermediate_results__known_drug.csv").set_index("id")
    model = PLSModelAdapter(coefficients_path=REAL / ARCHIVE_COEFFICIENTS)
    for card_id, (drug, _) in CARDS.items():
        record = model.predict_batch(pipeline_features[card_id][0][None],
                                     [model.prediction_context({"drug": drug})])[0]
        assert archived.loc[card_id, "sample_name"] == drug
        assert abs(record.prediction - archived.loc[card_id, "pred_quantity"]) <= 1e-9


def test_every_archived_prediction_is_reproduced() -> None:
    predictions = pd.read_csv(REAL / "pls_intermediate_results__known_drug.csv")
    features = pd.read_csv(REAL / "10_region_rgb__test__predicted_cards.csv.gz")
    assert len(predictions) == 1982 and list(features["Image"]) == list(predictions["id"])
    model = PLSModelAdapter(coefficients_path=REAL / ARCHIVE_COEFFICIENTS)
    x = features[list(PLS_FEATURE_NAMES)].to_numpy(np.int64)
    contexts = [model.prediction_context({"drug": d}) for d in predictions["sample_name"]]
    records = model.predict_batch(x, contexts)
    assert all(r.status == "ok" for r in records)
    got = np.array([r.prediction for r in records])
    error = np.abs(got - predictions["pred_quantity"].to_numpy())
    assert float(error.max()) <= 1e-9, f"max |error| {error.max()} on card " \
                                       f"{predictions['id'][int(error.argmax())]}"
    # the shipped extract agrees with the real cards' own rows
    real = pd.read_csv(REAL / "10_region_rgb__test__real_cards.csv").set_index("Image")
    extract = features.set_index("Image")
    for card_id in CARDS:
        assert extract.loc[card_id].equals(real.loc[card_id])


def test_the_two_coefficient_files_are_different_models() -> None:
    # Both are real; only 24fhiPLS1quantity.csv produced the archive. If a future file swap
    # made them equal, the coefficient-file test above would silently test one model.
    a, b = (parse_pls_coefficients((REAL / f).read_bytes(), f) for f in COEFFICIENT_FILES)
    assert a.drugs == b.drugs
    assert not np.array_equal(a.coefficients, b.coefficients)


# ------------------------------------------------------------------------ NN tensors
@pytest.mark.parametrize("card_id", sorted(CARDS))
def test_nn_tensor_equals_pillow_crop_and_bicubic_resize(card_id: int) -> None:
    tensor, truncated = PADNeuralNetworkPipeline().run(_card_bytes(card_id), str(card_id))
    image = _tolerant_rgb(_card_bytes(card_id))
    expected = np.asarray(image.crop((71, 359, 707, 849)).resize((454, 454), Image.BICUBIC))
    assert tensor.shape == (454, 454, 3) and tensor.dtype == np.uint8
    np.testing.assert_array_equal(tensor, expected)
    assert truncated is (card_id == 19208)


# ------------------------------------------------- end to end through the emulator
def test_real_cards_served_by_the_emulator_give_the_archived_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emulator serves the two real files (``--real-images``) with their real labels and
    the real coefficient file as model 18; ``apply_model`` gives the lab's numbers."""
    coefficients = (REAL / ARCHIVE_COEFFICIENTS).read_bytes()
    model_18 = ModelArtifact(
        {"id": 18, "name": "24fhiPLS1conc", "type": "pls", "labels": [], "version": "1.0",
         "weights": ARCHIVE_COEFFICIENTS},
        ARCHIVE_COEFFICIENTS, coefficients)
    overrides = {cid: CardAttributes(drug, quantity, "unknown", cid)
                 for cid, (drug, quantity) in CARDS.items()}
    config = make_config([DatasetSpec("real_cards", sorted(CARDS))], models=[model_18],
                         real_images_dir=REAL, card_overrides=overrides)
    archived = pd.read_csv(REAL / "pls_intermediate_results__known_drug.csv").set_index("id")
    with Emulator(config) as emu:
        point_env_at(emu, tmp_path / "cache", monkeypatch)
        dataset = CachedDataset("real_cards")
        results = dataset.apply_model(PLSModelAdapter(model_id=18))
    assert (results["status"] == "ok").all() and len(results) == 2
    for _, row in results.iterrows():
        card_id = int(row["card_id"])
        assert abs(row["prediction"] - archived.loc[card_id, "pred_quantity"]) <= 1e-9
