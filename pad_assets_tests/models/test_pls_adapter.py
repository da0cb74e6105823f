"""PLSModelAdapter: both real coefficient formats, parity with the original loop, refusals.

The coefficient files are written here, in the two layouts of the real PAD files (quoted
values with hyphenated names and LF; unquoted values with spaced names and CRLF), so the
suite needs nothing outside the project.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pad_assets.errors import ModelError
from pad_assets.models.base import STATUS_OK, STATUS_UNKNOWN_DRUG
from pad_assets.models.pls import (
    PLSModelAdapter,
    drug_name_candidates,
    parse_pls_coefficients,
    pls_predict,
)

DRUGS = ["albendazole", "benzyl penicillin", "ferrous sulfate", "ripe", "tetracycline"]


def _coefficients(seed: int = 0) -> dict[str, tuple[float, list[float]]]:
    rng = np.random.default_rng(seed)
    return {
        d: (float(rng.normal(30, 40)), [float(v) for v in rng.normal(0, 0.1, 360)])
        for d in DRUGS
    }


def write_quoted_hyphenated(path: Path, coef: dict[str, tuple[float, list[float]]]) -> Path:
    """Like 24fhiPLS1quantity.csv: every field quoted, hyphenated names, LF."""
    lines = []
    for drug, (intercept, values) in coef.items():
        fields = [drug.replace(" ", "-"), repr(intercept), *map(repr, values)]
        lines.append(",".join(f'"{f}"' for f in fields))
    path.write_bytes(("\n".join(lines) + "\n").encode())
    return path


def write_spaced_crlf(path: Path, coef: dict[str, tuple[float, list[float]]]) -> Path:
    """Like pls_fhi360_conc_coefficients.csv: unquoted, spaced names, CRLF."""
    lines = [",".join([drug, repr(i), *map(repr, v)]) for drug, (i, v) in coef.items()]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


def reference_parse(path: Path) -> dict[str, list[float]]:
    """An independent, naive reader: lower-case name -> [intercept, coef...]."""
    out = {}
    for line in path.read_bytes().decode().splitlines():
        if line.strip():
            fields = [f.strip().strip('"') for f in line.split(",")]
            out[fields[0].lower()] = [float(x) for x in fields[1:]]
    return out


def reference_prediction(features: list[int], coefficients: list[float]) -> float:
    """The original tool's loop: start at the intercept, add feature * coef in order."""
    concentration = coefficients[0]
    for i, feature in enumerate(features):
        concentration += float(feature) * coefficients[i + 1]
    return concentration


@pytest.fixture()
def coef() -> dict[str, tuple[float, list[float]]]:
    return _coefficients()


@pytest.fixture()
def quoted(tmp_path: Path, coef: dict[str, tuple[float, list[float]]]) -> Path:
    return write_quoted_hyphenated(tmp_path / "24fhiPLS1quantity.csv", coef)


@pytest.fixture()
def spaced(tmp_path: Path, coef: dict[str, tuple[float, list[float]]]) -> Path:
    return write_spaced_crlf(tmp_path / "pls_fhi360_conc_coefficients.csv", coef)


def _features(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 360)).astype(np.int64)


def test_both_formats_parse_to_the_same_model(quoted: Path, spaced: Path) -> None:
    a, b = PLSModelAdapter(coefficients_path=quoted), PLSModelAdapter(coefficients_path=spaced)
    expected = ["albendazole", "benzyl-penicillin", "ferrous-sulfate", "ripe", "tetracycline"]
    assert a.drugs == b.drugs == expected
    assert b"\r\n" in spaced.read_bytes() and b'"' in quoted.read_bytes()
    for drug in expected:
        ia, ca = a.coefficients.as_dict()[drug]
        ib, cb = b.coefficients.as_dict()[drug]
        assert ia == ib and np.array_equal(ca, cb) and ca.shape == (360,)
    # Different bytes, so different signatures (the signature hashes the file, not values).
    assert a.get_cache_signature() != b.get_cache_signature()


@pytest.mark.parametrize("layout", ["quoted", "spaced"])
def test_predictions_equal_the_sequential_loop(layout: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(layout)
    adapter = PLSModelAdapter(coefficients_path=path)
    ref_coef = reference_parse(path)
    x = _features(40)
    names = [DRUGS[i % len(DRUGS)] for i in range(len(x))]
    contexts = [adapter.prediction_context({"drug": n}) for n in names]
    stored = np.stack([adapter.get_tensor_spec().to_storage(row) for row in x])
    records = adapter.predict_batch(stored, contexts)
    for i, rec in enumerate(records):
        key = names[i] if layout == "spaced" else names[i].replace(" ", "-")
        want = reference_prediction(x[i].tolist(), ref_coef[key])
        assert rec.status == STATUS_OK and rec.label_type == "concentration"
        assert abs(rec.prediction - want) <= 1e-9
        assert rec.prediction == want  # a sequential scan: bit-identical, not just close


def test_one_by_one_equals_batch(quoted: Path) -> None:
    adapter = PLSModelAdapter(coefficients_path=quoted)
    x = _features(7, seed=5)
    ctx = [{"drug": "ripe"}] * 7
    batch = [r.prediction for r in adapter.predict_batch(x, ctx)]
    single = [adapter.predict_batch(x[i], [ctx[i]])[0].prediction for i in range(7)]
    assert batch == single


def test_pls_predict_matches_loop_on_real_scale_values() -> None:
    rng = np.random.default_rng(9)
    x = rng.integers(0, 256, (25, 360))
    coefs = rng.normal(0, 0.2, (25, 360))
    intercepts = rng.normal(40, 50, 25)
    got = pls_predict(x, intercepts, coefs)
    for i in range(25):
        want = reference_prediction(x[i].tolist(), [intercepts[i], *coefs[i].tolist()])
        assert got[i] == want


def test_unknown_drug_is_explicit(quoted: Path, coef) -> None:
    adapter = PLSModelAdapter(coefficients_path=quoted)
    x = _features(3)
    ctx = [{"drug": "ripe"}, adapter.prediction_context({"sample_name": "Unobtainium Salt"}), {}]
    ok, unknown, missing = adapter.predict_batch(x, ctx)
    assert ok.status == STATUS_OK
    intercept, values = coef["ripe"]
    assert ok.prediction == reference_prediction(x[0].tolist(), [intercept, *values])
    # the unknown drug gets no number at all (the old tool's -1 was a number), and the
    # third card (no drug recorded) is not scored with some other drug's row either
    assert unknown.status == STATUS_UNKNOWN_DRUG and unknown.prediction is None
    assert unknown.probability is None and unknown.energy is None and unknown.outputs == []
    assert missing.prediction is None
    assert "drug 'unobtainium-salt' not in coefficients" in unknown.detail
    assert "tried names: ['unobtainium-salt', 'unobtainium salt']" in unknown.detail
    assert "known: ['albendazole'" in unknown.detail
    assert missing.status == STATUS_UNKNOWN_DRUG and "no drug" in missing.detail


@pytest.mark.parametrize(
    "name", ["Benzyl Penicillin", "benzyl-penicillin", "BENZYL PENICILLIN", " benzyl penicillin "]
)
def test_drug_name_spellings_match(spaced: Path, quoted: Path, name: str) -> None:
    for path in (spaced, quoted):
        adapter = PLSModelAdapter(coefficients_path=path)
        ctx = adapter.prediction_context({"drug": name})
        assert ctx == {"drug": "benzyl-penicillin"}
        (rec,) = adapter.predict_batch(_features(1), [ctx])
        assert rec.status == STATUS_OK
        row, tried = adapter.coefficients.lookup(name)
        assert row == 1 and tried[0] == "benzyl-penicillin"


def test_candidates_order() -> None:
    assert drug_name_candidates("Ferrous Sulfate") == ["ferrous-sulfate", "ferrous sulfate"]
    assert drug_name_candidates("ripe") == ["ripe"]


def test_interface(quoted: Path) -> None:
    adapter = PLSModelAdapter(coefficients_path=quoted)
    spec = adapter.get_tensor_spec()
    assert spec.shape == (360,) and spec.dtype == "float64" and spec.storage_dtype == "int64"
    stored = spec.to_storage(_features(1)[0])
    assert stored.dtype == np.int64
    with pytest.raises(ValueError, match="lose information"):
        spec.to_storage(np.full(360, 1.5))
    assert type(adapter.get_required_preprocessing()).__name__ == "PADPLSPipeline"
    assert adapter.label_type() == "concentration"
    assert adapter.actual_label({"drug": "ripe", "quantity": 80}) == 80.0
    assert adapter.name == "24fhiPLS1quantity"
    with pytest.raises(ModelError, match="contexts"):
        adapter.predict_batch(_features(2))
    assert adapter.predict_batch(_features(0), []) == []


def test_signature_tracks_bytes_not_path(
    tmp_path: Path, coef: dict[str, tuple[float, list[float]]], quoted: Path
) -> None:
    base = PLSModelAdapter(coefficients_path=quoted)
    same = PLSModelAdapter(coefficients_path=write_quoted_hyphenated(tmp_path / "other.csv", coef))
    assert base.get_cache_signature() == same.get_cache_signature()
    changed = dict(coef)
    intercept, values = changed["ripe"]
    changed["ripe"] = (intercept, [*values[:-1], values[-1] + 1e-6])
    edited = PLSModelAdapter(coefficients_path=write_quoted_hyphenated(tmp_path / "e.csv", changed))
    assert edited.get_cache_signature() != base.get_cache_signature()


def _row(name: str, n_values: int = 361) -> str:
    return ",".join([name, *(["0.5"] * n_values)])


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (_row("a") + "\n" + _row("b", 9) + "\n", r"line 2: expected 362 fields .* got 10"),
        (_row("a", 400) + "\n", r"line 1: expected 362 fields .* got 401"),
        (
            _row("a") + "\n" + _row("b").replace("0.5", "abc", 1) + "\n",
            r"line 2, field 2 \(intercept\) of drug 'b': 'abc' is not a number",
        ),
        (
            _row("a").rsplit(",", 1)[0] + ",1.2.3\n",
            r"line 1, field 362 \(coefficient 360\) of drug 'a': '1.2.3' is not a number",
        ),
        (_row("a").replace("0.5", "nan", 1) + "\n", r"line 1, field 2 .* not finite"),
        (_row("Ripe") + "\n" + _row("ripe") + "\n", r"line 2: drug 'ripe' .* already defined on line 1"),
        ("\n\n", r"no coefficient rows"),
        (_row("") + "\n", r"line 1: empty drug name"),
    ],
)
def test_malformed_files_are_refused(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ModelError, match=pattern) as info:
        PLSModelAdapter(coefficients_path=path)
    assert str(path) in str(info.value)


def test_not_utf8_and_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not UTF-8"):
        parse_pls_coefficients(b"\xff\xfe\x00bad", "x.csv")
    with pytest.raises(ModelError, match="not found"):
        PLSModelAdapter(coefficients_path=tmp_path / "missing.csv")
    with pytest.raises(ModelError, match="exactly one"):
        PLSModelAdapter()


def test_model_id_uses_resolved_record(quoted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pad_assets.sources import model_artifacts

    record = {"id": 18, "name": "24fhiPLS1conc", "type": "pls", "labels": []}
    monkeypatch.setattr(
        model_artifacts,
        "resolve_model",
        lambda model_id, settings=None, refresh=False: model_artifacts.ResolvedModel(
            record, quoted, "0" * 64
        ),
    )
    adapter = PLSModelAdapter(model_id=18)
    assert adapter.name == "pad_pls_18"
    assert adapter.get_cache_signature() == PLSModelAdapter(coefficients_path=quoted).get_cache_signature()
    monkeypatch.setattr(
        model_artifacts,
        "resolve_model",
        lambda *a, **k: model_artifacts.ResolvedModel({**record, "type": "tf_lite"}, quoted, "0"),
    )
    with pytest.raises(ModelError, match="runs 'pls' models"):
        PLSModelAdapter(model_id=16)


def test_context_falls_back_to_sample_name_and_ignores_nan(quoted: Path) -> None:
    adapter = PLSModelAdapter(coefficients_path=quoted)
    assert adapter.prediction_context({"sample_name": "Ferrous Sulfate"}) == {
        "drug": "ferrous-sulfate"
    }
    assert adapter.prediction_context({"drug": float("nan")}) == {"drug": None}
    assert adapter.prediction_context({}) == {"drug": None}
