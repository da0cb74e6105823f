"""Model comparison: identical item sets, hand-checked metrics, paired statistics, report files."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pad_assets.comparison import (
    PAIRWISE_COLUMNS,
    SUMMARY_COLUMNS,
    ComparisonReport,
    bca_interval,
    cohen_kappa,
    compare_results,
    item_set_hash,
    mcnemar_exact_p,
    nearest_class,
    paired_difference_interval,
    rmse_difference_statistic,
    rmse_statistic,
    wilson_interval,
)
from pad_assets.errors import InvalidInputError, PadAssetsError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

Row = tuple  # (card_id, actual, prediction[, status[, raw_key]])


def frame(model: str, label_type: str, rows: Sequence[Row], signature: str | None = None
          ) -> pd.DataFrame:
    """An ``apply_model``-shaped frame; raw_key defaults to a key derived from the card id."""
    out = []
    for r in rows:
        cid, actual, pred = r[0], r[1], r[2]
        status = r[3] if len(r) > 3 else "ok"
        raw = r[4] if len(r) > 4 else f"raw{cid:04d}"
        out.append({
            "card_id": cid, "split": "test", "drug": None, "quantity": None, "actual": actual,
            "model": model, "pipeline": "p", "prediction": pred if status == "ok" else None,
            "probability": 0.9, "energy": 1.0, "label_type": label_type, "status": status,
            "detail": "", "truncated": False, "raw_key": raw, "preprocessed_key": "pk",
            "tensor_key": "tk", "prediction_key": "prk", "cached": True,
            "model_signature": signature or f"sig-{model}",
        })
    return pd.DataFrame(out)


def drug_frame(model: str, actual: Sequence[str], pred: Sequence[str]) -> pd.DataFrame:
    return frame(model, "drug", [(i + 1, a, p) for i, (a, p) in enumerate(zip(actual, pred,
                                                                               strict=True))])


def row_of(df: pd.DataFrame, **match: Any) -> pd.Series:
    sel = df
    for k, v in match.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, f"expected one row matching {match}, got {len(sel)}"
    return sel.iloc[0]


# ---- per-model metrics against hand computation ---------------------------------------
def test_drug_accuracy_per_class_and_confusion_by_hand() -> None:
    df = drug_frame("nn", ["a", "a", "b", "b", "c"], ["a", "b", "b", "b", "a"])
    rep = compare_results({"nn": df}, "ds", n_bootstrap=50)
    s = row_of(rep.summary, model="nn")
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["label_type"] == "drug" and s["kind"] == "classifier" and s["n_scored"] == 5
    assert math.isnan(s["rmse"]) and math.isnan(s["mae"])
    conf = rep.confusion["nn"]
    assert list(conf.index) == ["a", "b", "c"] and list(conf.columns) == ["a", "b", "c"]
    assert conf.to_numpy().tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    pc = rep.per_class["nn"].set_index("label")
    assert pc.loc["a", ["precision", "recall", "f1"]].tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert pc.loc["b", ["precision", "recall", "f1"]].tolist() == pytest.approx([2 / 3, 1, 0.8])
    assert math.isnan(pc.loc["c", "precision"])  # never predicted: undefined, not 0
    assert pc.loc["c", "recall"] == 0 and pc.loc["c", "f1"] == 0
    assert pc["support"].tolist() == [2, 2, 1]
    assert rep.pairwise.empty and list(rep.pairwise.columns) == list(PAIRWISE_COLUMNS)
    assert list(rep.summary.columns) == list(SUMMARY_COLUMNS)


def test_concentration_classifier_and_regressor_by_hand() -> None:
    actual = [50.0, 50.0, 80.0, 50.0]
    cls = frame("cnn", "concentration", [(i + 1, a, p) for i, (a, p) in
                                         enumerate(zip(actual, [50.0, 20.0, 80.0, 100.0],
                                                       strict=True))])
    pls = frame("pls", "concentration", [(i + 1, a, p) for i, (a, p) in
                                         enumerate(zip(actual, [47.5, 33.0, 80.0, 60.0],
                                                       strict=True))])
    rep = compare_results({"cnn": cls, "pls": pls}, "ds", n_bootstrap=100)
    c, p = row_of(rep.summary, model="cnn"), row_of(rep.summary, model="pls")
    assert (c["kind"], p["kind"]) == ("classifier", "regressor")
    assert c["rmse"] == pytest.approx(math.sqrt((30**2 + 50**2) / 4))
    assert c["mae"] == pytest.approx((30 + 50) / 4)
    assert c["accuracy"] == pytest.approx(0.5)
    assert p["rmse"] == pytest.approx(math.sqrt((2.5**2 + 17**2 + 10**2) / 4))
    assert p["mae"] == pytest.approx((2.5 + 17 + 10) / 4)
    assert math.isnan(p["accuracy"])  # a regressor has no accuracy
    assert "cnn" in rep.confusion and "pls" not in rep.confusion
    assert list(rep.confusion["cnn"].index) == [0, 20, 50, 80, 100]  # every class, numeric order
    # classifier vs regressor: RMSE only, agreement after rounding 47.5->50, 33->20, 60->50
    assert rep.pairwise["metric"].tolist() == ["rmse"]
    pw = rep.pairwise.iloc[0]
    assert pw["diff"] == pytest.approx(c["rmse"] - p["rmse"])
    assert pw["agreement"] == pytest.approx(3 / 4)
    assert "rounding" in pw["note"]
    assert pd.isna(pw["mcnemar_b"]) and math.isnan(pw["mcnemar_p"])


def test_two_concentration_classifiers_get_accuracy_and_rmse_rows() -> None:
    a = frame("a", "concentration", [(1, 50.0, 50.0), (2, 20.0, 20.0), (3, 80.0, 100.0)])
    b = frame("b", "concentration", [(1, 50.0, 80.0), (2, 20.0, 20.0), (3, 80.0, 80.0)])
    rep = compare_results({"a": a, "b": b}, "ds", n_bootstrap=50)
    assert rep.pairwise["metric"].tolist() == ["accuracy", "rmse"]
    acc = row_of(rep.pairwise, metric="accuracy")
    assert (acc["mcnemar_b"], acc["mcnemar_c"]) == (1, 1) and acc["mcnemar_p"] == 1.0
    rmse = row_of(rep.pairwise, metric="rmse")
    assert rmse["diff"] == pytest.approx(math.sqrt(400 / 3) - math.sqrt(900 / 3))
    assert pd.isna(rmse["mcnemar_b"])  # McNemar tests accuracy, so only on that row
    assert rmse["note"] == ""


def test_nearest_class_ties_go_down() -> None:
    assert nearest_class([-5, 9.9, 10, 35, 35.1, 64.9, 65, 120]).tolist() == [
        0, 0, 0, 20, 50, 50, 50, 100]


# ---- fairness: the identical item set ----------------------------------------------------
def test_every_model_is_scored_on_the_identical_item_set() -> None:
    truth = {1: "a", 2: "b", 3: "a", 4: "b", 5: "a", 6: "b", 7: "a"}
    a_rows = [(c, t, t) for c, t in truth.items()]  # always right ...
    a_rows[2] = (3, "a", None, "failed")  # ... but failed on card 3
    b_rows = [(c, t, "a") for c, t in truth.items()]
    b_rows[4] = (5, "a", None, "unknown_drug")
    b_rows[5] = (6, None, "a")  # no ground truth on card 6
    conc = frame("conc", "concentration", [(c, 50.0, 50.0) for c in truth])
    rep = compare_results({"A": frame("A", "drug", a_rows), "B": frame("B", "drug", b_rows),
                           "conc": conc}, "ds", n_bootstrap=20)
    assert rep.card_ids == [1, 2, 4, 7] and rep.n_items == 4
    assert rep.summary["n_scored"].tolist() == [4, 4, 4]
    assert rep.summary["n_excluded"].tolist() == [3, 3, 3]
    # A's correct answers on 5 and 6 do not count: B could not score them.
    assert row_of(rep.summary, model="A")["accuracy"] == 1.0
    assert row_of(rep.summary, model="B")["accuracy"] == pytest.approx(2 / 4)
    ex = rep.exclusions.set_index("model")
    assert ex.loc["A", "status:failed"] == 1 and ex.loc["A", "excluded_by_other_model"] == 2
    assert ex.loc["B", "status:unknown_drug"] == 1 and ex.loc["B", "actual_missing"] == 1
    assert ex.loc["B", "excluded_by_other_model"] == 1
    assert ex.loc["conc", "excluded_by_other_model"] == 3
    assert (ex["n_scored"] + ex["n_excluded"] == ex["n_rows"]).all()
    assert ex.loc["B", "n_ok"] == 6
    # drug vs concentration models share the items but are never compared with each other
    assert set(zip(rep.pairwise["model_a"], rep.pairwise["model_b"], strict=True)) == {("A", "B")}


def test_cards_seen_as_different_images_are_excluded_for_every_model() -> None:
    a = frame("a", "drug", [(1, "x", "x"), (2, "y", "y"), (3, "x", "y")])
    b = frame("b", "drug", [(1, "x", "x"), (2, "y", "y", "ok", "other-bytes"), (3, "x", "x")])
    rep = compare_results({"a": a, "b": b}, "ds", n_bootstrap=20)
    assert rep.card_ids == [1, 3]
    ex = rep.exclusions.set_index("model")
    assert ex.loc["a", "raw_key_mismatch"] == 1 and ex.loc["b", "raw_key_mismatch"] == 1


def test_item_set_hash_is_stable_and_tracks_image_content() -> None:
    a = drug_frame("a", ["x", "y", "x"], ["x", "y", "y"])
    b = drug_frame("b", ["x", "y", "x"], ["x", "x", "x"])
    rep = compare_results({"a": a, "b": b}, "ds", n_bootstrap=10)
    expected = hashlib.sha256(json.dumps([[1, "raw0001"], [2, "raw0002"], [3, "raw0003"]],
                                         separators=(",", ":")).encode("utf-8")).hexdigest()
    assert rep.item_set_hash == expected == item_set_hash([(3, "raw0003"), (1, "raw0001"),
                                                           (2, "raw0002")])
    shuffled = compare_results({"b": b.iloc[::-1], "a": a.sample(frac=1, random_state=1)},
                               "ds", n_bootstrap=10)
    assert shuffled.item_set_hash == rep.item_set_hash
    a2, b2 = a.copy(), b.copy()
    a2.loc[a2["card_id"] == 2, "raw_key"] = "re-photographed"
    b2.loc[b2["card_id"] == 2, "raw_key"] = "re-photographed"
    changed = compare_results({"a": a2, "b": b2}, "ds", n_bootstrap=10)
    assert changed.card_ids == rep.card_ids and changed.item_set_hash != rep.item_set_hash


# ---- paired statistics ----------------------------------------------------------------
def test_mcnemar_exact_by_hand_and_against_scipy() -> None:
    assert mcnemar_exact_p(1, 7) == pytest.approx(2 * (1 + 8) / 2**8)  # 0.0703125
    assert mcnemar_exact_p(7, 1) == mcnemar_exact_p(1, 7)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(4, 4) == 1.0
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)
    with pytest.raises(InvalidInputError):
        mcnemar_exact_p(-1, 2)
    from scipy import stats  # the test extra installs it: a reference, never skipped

    for b in range(0, 16):
        for c in range(0, 16):
            if b + c:
                ref = stats.binomtest(min(b, c), b + c, 0.5).pvalue
                assert mcnemar_exact_p(b, c) == pytest.approx(ref, rel=1e-9), (b, c)


def test_mcnemar_counts_come_from_the_discordant_cards() -> None:
    truth = ["a"] * 10
    a = drug_frame("a", truth, ["a"] * 9 + ["b"])  # wrong on card 10 only
    b = drug_frame("b", truth, ["b"] * 4 + ["a"] * 5 + ["b"])  # wrong on 1-4 and 10
    pw = compare_results({"a": a, "b": b}, "ds", n_bootstrap=50).pairwise.iloc[0]
    assert (pw["mcnemar_b"], pw["mcnemar_c"]) == (4, 0)
    assert pw["mcnemar_p"] == pytest.approx(2 / 16)
    assert pw["diff"] == pytest.approx(0.9 - 0.5)
    assert pw["agreement"] == pytest.approx(6 / 10)


def test_cohen_kappa_by_hand() -> None:
    # Two raters, 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> kappa 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(["y"] * 4, ["y"] * 4))  # chance agreement 1: undefined
    rep = compare_results({"a": drug_frame("a", a, a), "b": drug_frame("b", a, b)}, "ds",
                          n_bootstrap=10)
    assert rep.pairwise.iloc[0]["kappa"] == pytest.approx(0.4)
    assert rep.pairwise.iloc[0]["agreement"] == pytest.approx(0.7)


def _conc_pair(seed: int = 0, n_bootstrap: int = 2000) -> ComparisonReport:
    """A concentration classifier and a PLS-like regressor on 42 cards (lab size)."""
    rng = np.random.default_rng(11)
    actual = rng.choice([20.0, 50.0, 80.0, 100.0], size=42)
    cls = [a if rng.random() < 0.7 else float(rng.choice([20.0, 50.0, 80.0, 100.0]))
           for a in actual]
    reg = [float(a + rng.normal(0, 12)) for a in actual]
    return compare_results(
        {"cnn": frame("cnn", "concentration", [(i + 1, a, p) for i, (a, p) in
                                               enumerate(zip(actual, cls, strict=True))]),
         "pls": frame("pls", "concentration", [(i + 1, a, p) for i, (a, p) in
                                               enumerate(zip(actual, reg, strict=True))])},
        "ds", n_bootstrap=n_bootstrap, seed=seed)


def test_wilson_interval_against_scipy_and_where_a_bootstrap_collapses() -> None:
    from scipy import stats  # test extra: an independent reference, never skipped

    for n in (1, 2, 5, 17, 42, 100):
        for k in range(n + 1):
            ref = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
            assert wilson_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert wilson_interval(0, 0) == (pytest.approx(math.nan, nan_ok=True),) * 2
    with pytest.raises(InvalidInputError):
        wilson_interval(5, 4)
    # A model right on all 42 cards: a percentile bootstrap gives [1, 1]; Wilson does not.
    truth = ["a", "b", "c"] * 14
    rep = compare_results({"m": drug_frame("m", truth, truth)}, "ds", n_bootstrap=200)
    s = row_of(rep.summary, model="m")
    assert s["accuracy"] == 1.0 and s["accuracy_ci_high"] == 1.0
    assert s["accuracy_ci_low"] == pytest.approx(0.91620, abs=1e-5)  # 42/(42 + 1.96^2)
    pc = rep.per_class["m"].set_index("label")  # per-class accuracy: Wilson on 14 cards
    ref = stats.binomtest(14, 14).proportion_ci(0.95, method="wilson")
    assert pc.loc["a", ["recall_ci_low", "recall_ci_high"]].tolist() == pytest.approx(
        [ref.low, ref.high])


def test_newcombe_paired_interval_matches_the_textbook() -> None:
    """Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017),
    ch. 8, the Cavo et al. (2012) table [[59, 6], [16, 80]]: Newcombe square-and-add
    -0.0621 (-0.1186 to -0.0046); McNemar exact conditional P = 0.052479."""
    lo, hi = paired_difference_interval(59, 6, 16, 80)
    assert (round(lo, 4), round(hi, 4)) == (-0.1186, -0.0046)
    assert mcnemar_exact_p(6, 16) == pytest.approx(0.052479, abs=5e-7)
    # Two models that agree on all 42 cards: no bootstrap could give more than [0, 0].
    lo0, hi0 = paired_difference_interval(40, 0, 0, 2)
    assert lo0 < 0 < hi0 and lo0 == pytest.approx(-hi0) and 0.05 < hi0 < 0.15
    with pytest.raises(InvalidInputError):
        paired_difference_interval(1, -1, 0, 0)
    # In a report: the accuracy row of a pair uses exactly this interval.
    truth = ["a"] * 10 + ["b"] * 10
    pa = truth[:]
    pb = ["a"] * 20
    rep = compare_results({"a": drug_frame("a", truth, pa), "b": drug_frame("b", truth, pb)},
                          "ds", n_bootstrap=0)
    pw = row_of(rep.pairwise, metric="accuracy")
    assert (pw["ci_low"], pw["ci_high"]) == pytest.approx(paired_difference_interval(10, 10, 0, 0))
    assert pw["ci_method"] == "newcombe" and pw["ci_low"] <= pw["diff"] <= pw["ci_high"]


def test_bca_matches_scipy_for_rmse_and_paired_rmse_difference() -> None:
    from scipy import stats

    rng = np.random.default_rng(5)
    se_a = rng.exponential(100, size=42) ** 2 / 50  # skewed, like squared errors
    se_b = se_a * rng.uniform(0.3, 1.7, size=42)
    for data, stat, paired in (((se_a,), rmse_statistic, False),
                               ((se_a, se_b), rmse_difference_statistic, True)):
        mine = bca_interval(list(data), stat, n_resamples=20000, seed=1)
        ref = stats.bootstrap(data, stat, n_resamples=20000, method="BCa", paired=paired,
                              vectorized=True, random_state=np.random.default_rng(2)
                              ).confidence_interval
        width = ref.high - ref.low
        # Different resamples: equal up to Monte Carlo error (a few % of the width).
        assert mine[0] == pytest.approx(ref.low, abs=0.04 * width)
        assert mine[1] == pytest.approx(ref.high, abs=0.04 * width)
    # BCa is not the percentile interval: RMSE is skewed and the correction is visible.
    pct = stats.bootstrap((se_a,), rmse_statistic, n_resamples=20000, method="percentile",
                          vectorized=True, random_state=np.random.default_rng(1)
                          ).confidence_interval
    bca = bca_interval([se_a], rmse_statistic, n_resamples=20000, seed=1)
    assert bca[0] - pct.low > 0.02 * (pct.high - pct.low)
    # A point-mass bootstrap distribution (every card equal) gives the point, not NaN.
    assert bca_interval([np.full(42, 4.0)], rmse_statistic, 500) == (2.0, 2.0)
    assert all(math.isnan(v) for v in bca_interval([se_a], rmse_statistic, 0))


def test_rmse_intervals_are_bca_paired_and_reproducible() -> None:
    rep = _conc_pair(seed=7)
    s = rep.summary.set_index("model")
    pw = row_of(rep.pairwise, metric="rmse")
    assert pw["ci_method"] == "bca" and pw["ci_low"] <= pw["diff"] <= pw["ci_high"]
    # The report's intervals are bca_interval on its own per-card squared errors, one
    # shared resample (same seed) for the models and for the pair.
    sq = {m: (pred - act) ** 2 for m, (act, pred) in rep.scores.items()}
    assert (s.loc["pls", "rmse_ci_low"], s.loc["pls", "rmse_ci_high"]) == pytest.approx(
        bca_interval([sq["pls"]], rmse_statistic, 2000, seed=7))
    assert (pw["ci_low"], pw["ci_high"]) == pytest.approx(
        bca_interval([sq["cnn"], sq["pls"]], rmse_difference_statistic, 2000, seed=7))
    for m in ("cnn", "pls"):
        assert s.loc[m, "rmse_ci_low"] <= s.loc[m, "rmse"] <= s.loc[m, "rmse_ci_high"]
    again = _conc_pair(seed=7)
    pd.testing.assert_frame_equal(rep.pairwise, again.pairwise)
    other = row_of(_conc_pair(seed=8).pairwise, metric="rmse")
    assert (other["ci_low"], other["ci_high"]) != (pw["ci_low"], pw["ci_high"])


def test_no_bootstrap_leaves_only_rmse_intervals_empty() -> None:
    rep = _conc_pair(n_bootstrap=0)
    assert math.isnan(row_of(rep.pairwise, metric="rmse")["ci_low"])
    assert rep.summary["rmse_ci_low"].isna().all()
    acc = row_of(rep.summary, model="cnn")  # Wilson needs no resampling
    assert acc["accuracy_ci_low"] < acc["accuracy"] < acc["accuracy_ci_high"]
    assert "not computed (n_bootstrap=0)" in str(rep)


# ---- edge cases ----------------------------------------------------------------------
def test_empty_results_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="results is empty") as info:
        compare_results({}, "ds")
    assert isinstance(info.value, PadAssetsError)


def test_no_common_items_lists_per_model_ok_counts() -> None:
    a = frame("a", "drug", [(1, "x", "x"), (2, "x", None, "failed")])
    b = frame("b", "drug", [(1, "x", None, "failed"), (2, "x", "x")])
    with pytest.raises(ValueError, match="no card is scorable by every model") as info:
        compare_results({"a": a, "b": b}, "ds")
    assert "a: 1 ok of 2 rows" in str(info.value) and "b: 1 ok of 2 rows" in str(info.value)


def test_duplicated_card_ids_are_refused() -> None:
    df = frame("a", "drug", [(1, "x", "x"), (2, "y", "y"), (1, "x", "y")])
    with pytest.raises(InvalidInputError, match=r"results\['a'\] has 1 duplicated card id.*: 1"):
        compare_results({"a": df}, "ds")


def test_malformed_inputs_name_what_was_expected() -> None:
    good = drug_frame("a", ["x"], ["x"])
    with pytest.raises(InvalidInputError, match="lacks column.*raw_key"):
        compare_results({"a": good.drop(columns=["raw_key"])}, "ds")
    with pytest.raises(InvalidInputError, match="must be a pandas DataFrame"):
        compare_results({"a": [1, 2]}, "ds")  # type: ignore[dict-item]
    mixed = good.copy()
    mixed = pd.concat([mixed, frame("a", "concentration", [(2, 50.0, 50.0)])])
    with pytest.raises(InvalidInputError, match="one model, one label type"):
        compare_results({"a": mixed}, "ds")
    with pytest.raises(InvalidInputError, match="n_bootstrap"):
        compare_results({"a": good}, "ds", n_bootstrap=-1)
    bad = frame("c", "concentration", [(1, 50.0, "fifty")])
    with pytest.raises(InvalidInputError, match="non-numeric"):
        compare_results({"c": bad}, "ds")


def test_single_model_has_no_pairwise_rows_and_prints() -> None:
    rep = compare_results({"only": drug_frame("only", ["x", "y"], ["x", "x"])}, "ds",
                          n_bootstrap=10)
    assert rep.pairwise.empty
    text = str(rep)
    assert "only" in text and "Pairwise: none" in text and rep.item_set_hash[:16] in text


def test_disagreeing_ground_truth_is_warned_about() -> None:
    a = drug_frame("a", ["x", "y"], ["x", "y"])
    b = drug_frame("b", ["x", "z"], ["x", "y"])
    with pytest.warns(UserWarning, match="disagree on the actual label of 1"):
        rep = compare_results({"a": a, "b": b}, "ds", n_bootstrap=10)
    assert rep.warnings and "disagree" in rep.to_markdown()


# ---- report files and figures --------------------------------------------------------
@pytest.fixture(scope="module")
def mixed_report() -> ComparisonReport:
    actual = [50.0, 20.0, 80.0, 100.0, 0.0, 50.0]
    drugs = ["amoxicillin", "ceftriaxone", "amoxicillin", "lactose", "ceftriaxone", "lactose"]
    results = {
        "nn drug": drug_frame("nn drug", drugs, drugs[:3] + ["amoxicillin"] + drugs[4:]),
        "nn|drug v2": drug_frame("nn|drug v2", drugs, ["amoxicillin"] * 6),
        "nn conc": frame("nn conc", "concentration",
                         [(i + 1, a, p) for i, (a, p) in enumerate(
                             zip(actual, [50.0, 20.0, 50.0, 100.0, 0.0, 80.0], strict=True))]),
        "pls": frame("pls", "concentration",
                     [(i + 1, a, a + d) for i, (a, d) in enumerate(
                         zip(actual, [3.0, -4.5, 10.0, -12.0, 6.0, 1.0], strict=True))]),
    }
    return compare_results(results, "FHI2020_test", n_bootstrap=200, seed=1)


def test_report_writes_markdown_html_pngs_and_csvs(mixed_report: ComparisonReport,
                                                   tmp_path: Path) -> None:
    rep = mixed_report
    md_path = rep.write(tmp_path / "out")
    assert md_path == tmp_path / "out" / "report.md"
    files = {p.name for p in md_path.parent.iterdir()}
    stems = rep.files
    assert stems["nn|drug v2"] == "nn_drug_v2" and stems["nn drug"] == "nn_drug"
    expected = {"report.md", "report.html", "summary.png", "summary.csv", "pairwise.csv",
                "exclusions.csv", "items.csv"}
    for m in ("nn drug", "nn|drug v2", "nn conc"):
        expected |= {f"confusion_{stems[m]}.png", f"confusion_{stems[m]}.csv",
                     f"per_class_{stems[m]}.csv"}
    assert expected <= files
    assert not any("pls" in f for f in files if f.startswith(("confusion", "per_class")))
    for name in (f for f in files if f.endswith(".png")):
        assert (md_path.parent / name).read_bytes().startswith(PNG_MAGIC)
    assert set(rep.figures) == {f for f in files if f.endswith(".png")}

    summary = pd.read_csv(md_path.parent / "summary.csv")
    assert summary.columns.tolist() == list(SUMMARY_COLUMNS)
    assert summary["model"].tolist() == ["nn drug", "nn|drug v2", "nn conc", "pls"]
    pairwise = pd.read_csv(md_path.parent / "pairwise.csv")
    assert pairwise.columns.tolist() == list(PAIRWISE_COLUMNS)
    assert pairwise[["model_a", "model_b", "metric"]].values.tolist() == [
        ["nn drug", "nn|drug v2", "accuracy"], ["nn conc", "pls", "rmse"]]
    items = pd.read_csv(md_path.parent / "items.csv")
    assert item_set_hash(zip(items["card_id"], items["raw_key"], strict=True)) == rep.item_set_hash
    conf = pd.read_csv(md_path.parent / f"confusion_{stems['nn conc']}.csv", index_col=0)
    assert conf.to_numpy().sum() == rep.n_items

    md = md_path.read_text(encoding="utf-8")
    assert "FHI2020_test" in md and rep.item_set_hash in md and f"**{rep.n_items}**" in md
    assert "](summary.png)" in md and f"](confusion_{stems['nn conc']}.png)" in md
    assert "nn\\|drug v2" in md  # pipes in names do not break the Markdown tables
    assert "## Excluded cards per model" in md and "| model | n_rows |" in md
    assert md == rep.to_markdown()

    page = (md_path.parent / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == len(rep.figures)
    assert 'src="http' not in page and "<link" not in page  # self-contained
    b64 = page.split("data:image/png;base64,", 1)[1].split('"', 1)[0]
    assert base64.b64decode(b64) == rep.figures["summary.png"]
    assert rep.item_set_hash in page


def test_str_shows_summary_and_pairwise(mixed_report: ComparisonReport) -> None:
    text = str(mixed_report)
    assert "nn|drug v2" in text and "FHI2020_test" in text and "McNemar b/c p" in text
    acc = row_of(mixed_report.summary, model="nn drug")  # value [low, high] on one line
    assert (f"{acc['accuracy']:.4g} [{acc['accuracy_ci_low']:.4g}, "
            f"{acc['accuracy_ci_high']:.4g}]") in text
    assert "Wilson" in text and "Newcombe" in text and "BCa" in text


def test_figures_render_on_agg_without_display_or_pyplot(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """No display and pyplot made unimportable: figures still render, through the Agg canvas,
    and the global backend setting (a notebook's inline backend, say) is left untouched."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # any pyplot import fails
    calls = []
    original = FigureCanvasAgg.draw

    def spy(self: FigureCanvasAgg) -> None:
        calls.append(type(self).__name__)
        original(self)

    monkeypatch.setattr(FigureCanvasAgg, "draw", spy)
    backend_before = dict.__getitem__(matplotlib.rcParams, "backend")
    rep = compare_results({"m": drug_frame("m", ["x", "y", "y"], ["x", "x", "y"])}, "ds",
                          n_bootstrap=10)
    figs = rep.figures
    assert set(figs) == {"summary.png", "confusion_m.png", "per_class_accuracy.png"}
    assert all(b.startswith(PNG_MAGIC) for b in figs.values())
    assert calls and set(calls) == {"FigureCanvasAgg"}
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend_before
    assert rep.figures is figs  # rendered once, then kept


# ---- what the figures show ---------------------------------------------------------------
@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Keeps each matplotlib Figure that ``render_figures`` draws, by file name."""
    from pad_assets.comparison import figures as figmod

    kept: dict[str, Any] = {}
    original = figmod._png

    def keep(draw: Any, size: tuple[float, float]) -> bytes:
        def recording(fig: Any) -> None:
            draw(fig)
            kept[f"#{len(kept)}"] = fig
        return original(recording, size)

    monkeypatch.setattr(figmod, "_png", keep)
    return kept


def _by_name(rep: ComparisonReport, kept: dict[str, Any]) -> dict[str, Any]:
    figs = rep.figures  # renders, in file-name order
    return dict(zip(figs, kept.values(), strict=True))


def test_figures_show_differences_scatter_and_per_class_without_empty_classes(
        drawn: dict[str, Any]) -> None:
    rep = _conc_pair(seed=3)  # classes 20..100 occur; class 0 never occurs nor is predicted
    figs = _by_name(rep, drawn)
    assert set(figs) == {"summary.png", "paired_differences.png", "predicted_vs_actual.png",
                         "per_class_accuracy.png", "confusion_cnn.png"}
    # paired differences: one panel (RMSE), the CI drawn from the pairwise row
    (ax,) = figs["paired_differences.png"].axes
    pw = row_of(rep.pairwise, metric="rmse")
    ci_lines = [line for line in ax.lines if len(line.get_xdata()) == 2
                and line.get_ydata()[0] == line.get_ydata()[1]]
    assert [tuple(line.get_xdata()) for line in ci_lines] == [
        pytest.approx((pw["ci_low"], pw["ci_high"]))]
    assert "cnn − pls" in ax.get_yticklabels()[0].get_text()
    # predicted vs actual: a panel per concentration model, a point per card; the
    # regressor's y values are its predictions exactly, x the labels up to the jitter
    ax_cnn, ax_pls = figs["predicted_vs_actual.png"].axes
    actual, pred = rep.scores["pls"]
    pts = ax_pls.collections[0].get_offsets()
    assert len(pts) == rep.n_items == len(ax_cnn.collections[0].get_offsets())
    assert np.allclose(pts[:, 1], pred) and np.abs(pts[:, 0] - actual).max() <= 2.5 + 1e-9
    # per-class accuracy: only the classes present, each with its support
    (ax,) = figs["per_class_accuracy.png"].axes
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    support = rep.per_class["cnn"].set_index("label")["support"]
    assert support[0] == 0 and [t.split("\n")[0] for t in ticks] == ["20", "50", "80", "100"]
    assert ticks[0] == f"20\nn={support[20]}"
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx(rep.per_class["cnn"].set_index("label").loc[
        [20, 50, 80, 100], "recall"].tolist())
    # confusion: the empty class 0 is left out of the picture (the CSV keeps it)
    conf_ax = figs["confusion_cnn.png"].axes[0]
    assert [t.get_text() for t in conf_ax.get_yticklabels()] == ["20", "50", "80", "100"]
    assert list(rep.confusion["cnn"].index) == [0, 20, 50, 80, 100]


def test_every_model_keeps_one_distinct_colour(mixed_report: ComparisonReport,
                                               drawn: dict[str, Any]) -> None:
    from matplotlib.colors import to_hex

    from pad_assets.comparison.figures import model_colours

    assert len(set(model_colours([f"m{i}" for i in range(18)]).values())) == 18
    colours = model_colours(mixed_report.models)
    figs = _by_name(dataclasses.replace(mixed_report, _figures=None), drawn)  # fresh render
    drug_ax = figs["per_class_accuracy.png"].axes[0]
    bar_colours = {to_hex(p.get_facecolor()) for p in drug_ax.patches}
    assert bar_colours == {colours["nn drug"].lower(), colours["nn|drug v2"].lower()}
    summary_colours = {to_hex(line.get_color()) for ax in figs["summary.png"].axes
                       for line in ax.lines if line.get_marker() == "o"}
    assert summary_colours == {c.lower() for c in colours.values()}


def test_figures_and_report_show_themselves_in_a_notebook(mixed_report: ComparisonReport
                                                          ) -> None:
    figs = mixed_report.figures
    assert isinstance(figs, Mapping) and figs["summary.png"].startswith(PNG_MAGIC)
    page = figs._repr_html_()
    assert page.count("<img") == len(figs) and page.count("<figcaption>") == len(figs)
    first = page.split("base64,", 1)[1].split('"', 1)[0]
    assert base64.b64decode(first) == figs[next(iter(figs))]
    view = mixed_report._repr_html_()
    assert "<html" not in view and "<!DOCTYPE" not in view  # a fragment, not a page
    assert view.count("data:image/png;base64,") == len(figs)
    assert view.count("<table") == 3 + len(mixed_report.per_class)  # summary, pairwise, excl.
    assert mixed_report.item_set_hash in view and "Newcombe" in view


def test_html_escapes_model_names() -> None:
    name = "<script>alert(1)</script>"
    rep = compare_results({name: drug_frame(name, ["x", "y"], ["x", "x"])}, "ds",
                          n_bootstrap=10)
    assert "<script>" not in rep._repr_html_() and "&lt;script&gt;" in rep._repr_html_()


def test_rewriting_a_report_folder_removes_only_its_own_stale_files(tmp_path: Path) -> None:
    a = drug_frame("a", ["x", "y", "x"], ["x", "y", "y"])
    b = drug_frame("b", ["x", "y", "x"], ["x", "x", "x"])
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "confusion_mine.png").write_bytes(b"not a report's")  # a name a report could use
    compare_results({"a": a, "b": b}, "ds", n_bootstrap=10).write(out)
    assert {"confusion_b.png", "paired_differences.png"} <= {p.name for p in out.iterdir()}
    compare_results({"a": a}, "ds", n_bootstrap=10).write(out)
    names = {p.name for p in out.iterdir()}
    assert "confusion_b.png" not in names and "per_class_b.csv" not in names
    assert "paired_differences.png" not in names  # one model: no pairs, no stale picture
    assert {"notes.txt", "confusion_mine.png", "confusion_a.png", "report.md"} <= names
    assert (out / "confusion_mine.png").read_bytes() == b"not a report's"
    (out / ".pad_report_files.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="pad_report_files.json"):
        compare_results({"a": a}, "ds", n_bootstrap=10).write(out)
