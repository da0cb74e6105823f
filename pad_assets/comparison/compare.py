"""``compare_results``: score every model on the identical item set, compare pairwise."""

from __future__ import annotations

import math
import warnings as _warnings
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InvalidInputError
from .published import number_published_rows, restore_card_ids
from .report import ComparisonReport, _file_stems
from .scoring import (
    _ROUNDING_NOTE,
    PAIRWISE_COLUMNS,
    QUANTITY_CLASSES,
    SUMMARY_COLUMNS,
    _accuracy,
    _actual_conflicts,
    _agreement_labels,
    _class_labels,
    _confusion,
    _exclusions,
    _label_type,
    _no_common_message,
    _own_reasons,
    _per_class,
    _rmse,
    _score_inputs,
    _Scored,
    _validated,
    item_set_hash,
)
from .statistics import (
    bca_interval,
    cohen_kappa,
    mcnemar_exact_p,
    paired_difference_interval,
    rmse_difference_statistic,
    rmse_jackknife,
    rmse_statistic,
    wilson_interval,
)


def _model_scores(m: str, s: Any, n_scored: int, exclusions: pd.DataFrame, boot: Any,
                  classes: tuple[float, ...]
                  ) -> tuple[dict[str, Any], tuple[pd.DataFrame, pd.DataFrame] | None]:
    """One model's summary row, and for a classifier its confusion matrix and per-class
    table (recall with Wilson intervals)."""
    row: dict[str, Any] = {"model": m, "label_type": s.label_type, "kind": s.kind,
                           "n_scored": n_scored}
    row.update(_with_ci("accuracy", _accuracy(s), _accuracy_ci(s)))
    row.update(_with_ci("rmse", _rmse(s), boot.rmse(s)))
    row["mae"] = (float(np.mean(np.abs(s.y_pred - s.y_true)))
                  if s.sqerr is not None else math.nan)
    row["n_excluded"] = int(exclusions.set_index("model").loc[m, "n_excluded"])
    row["signature"] = s.signature
    if s.kind != "classifier":
        return row, None
    confusion = _confusion(s, _class_labels(s, classes))
    per_class = _per_class(confusion)
    cis = [wilson_interval(int(confusion.iloc[i, i]), int(n_true))
           for i, n_true in enumerate(per_class["support"])]
    per_class["recall_ci_low"] = [lo for lo, _ in cis]
    per_class["recall_ci_high"] = [hi for _, hi in cis]
    return row, (confusion, per_class)


def compare_results(results: dict[str, pd.DataFrame], dataset: str, n_bootstrap: int = 2000,
                    seed: int = 0,
                    quantity_classes: Sequence[float] = QUANTITY_CLASSES,
                    leakage: dict[str, Any] | None = None) -> ComparisonReport:
    """Score every model on the identical item set and compare them pairwise.

    ``results`` maps a model name to its ``CachedDataset.apply_model`` frame. An item is a
    card that every model scored (status ``ok``, ground truth known) from the same image
    bytes; the others are excluded for every model and counted per model and reason.
    Intervals (95%): Wilson for accuracies, Newcombe's paired interval for accuracy
    differences, BCa bootstrap (``n_bootstrap`` resamples of the cards, one shared
    resample for every model, ``seed``) for RMSE and RMSE differences; ``n_bootstrap=0``
    skips the bootstrap (RMSE intervals are NaN). See ``statistics`` for why each.
    ``quantity_classes`` decides
    whether a concentration model is a classifier (every prediction is a class value) or a
    regressor (scored by RMSE/MAE only; rounded to the nearest class for agreement).

    Raises ``InvalidInputError`` (a ``ValueError``) for an empty ``results``, a frame
    missing columns or repeating a card id, a model mixing label types, and when no card
    is scorable by every model.
    """
    # One item per published row (``published.py``); ``leakage`` goes into the report.
    results, published = number_published_rows(results)
    frames = _validated(results)
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) \
            or n_bootstrap < 0:
        raise InvalidInputError(f"n_bootstrap must be an int >= 0, got {n_bootstrap!r}")
    classes = tuple(sorted(float(c) for c in quantity_classes))
    if not classes:
        raise InvalidInputError("quantity_classes must hold at least one class value")
    names = list(frames)

    reasons = {m: _own_reasons(df) for m, df in frames.items()}
    eligible = {m: {(int(r.card_id), str(r.raw_key)) for r in df[reasons[m].isna()].itertuples()}
                for m, df in frames.items()}
    common = sorted(set.intersection(*eligible.values()))
    if not common:
        raise InvalidInputError(_no_common_message(frames, reasons, eligible))
    common_ids = [cid for cid, _ in common]
    common_set = set(common)
    exclusions = _exclusions(frames, reasons, common_set)

    label_types = {m: _label_type(m, df) for m, df in frames.items()}
    scored = {m: _score_inputs(m, frames[m], label_types[m], common_ids, classes)
              for m in names}
    warn = _actual_conflicts(scored)
    for w in warn:
        _warnings.warn(w, stacklevel=2)

    boot = _Bootstrap(int(n_bootstrap), seed)
    summary_rows, per_class, confusion = [], {}, {}
    for m in names:
        row, tables = _model_scores(m, scored[m], len(common), exclusions, boot, classes)
        summary_rows.append(row)
        if tables is not None:
            confusion[m], per_class[m] = tables
    summary = pd.DataFrame(summary_rows, columns=list(SUMMARY_COLUMNS))
    pairwise = _pairwise(names, scored, boot, classes)
    items = pd.DataFrame(common, columns=["card_id", "raw_key"])
    files = _file_stems(names)
    report = ComparisonReport(
        dataset=str(dataset), models=names, label_types=label_types,
        kinds={m: scored[m].kind for m in names}, n_items=len(common), card_ids=common_ids,
        item_set_hash=item_set_hash(common), items=items, exclusions=exclusions,
        summary=summary, per_class=per_class, confusion=confusion, pairwise=pairwise,
        n_bootstrap=int(n_bootstrap), seed=seed, quantity_classes=classes,
        warnings=warn, files=files, leakage=dict(leakage or {}),
        scores={m: (scored[m].y_true, scored[m].y_pred) for m in names},
    )
    if published is not None:
        restore_card_ids(report, published)
    return report



class _Bootstrap:
    """BCa intervals of RMSE and of RMSE differences, one shared resample for all models.

    Every call draws its resamples from ``seed`` with the same item count, so the same
    resampled cards serve every model and every pair (the pairing the differences need).
    """

    def __init__(self, n_resamples: int, seed: int) -> None:
        self.n, self.seed = n_resamples, seed

    def rmse(self, s: _Scored) -> tuple[float, float]:
        if s.sqerr is None:
            return math.nan, math.nan
        return bca_interval([s.sqerr], rmse_statistic, self.n, self.seed,
                            jackknife=rmse_jackknife(s.sqerr) if len(s.sqerr) > 1 else None)

    def rmse_difference(self, a: _Scored, b: _Scored) -> tuple[float, float]:
        assert a.sqerr is not None and b.sqerr is not None
        jack = rmse_jackknife(a.sqerr, b.sqerr) if len(a.sqerr) > 1 else None
        return bca_interval([a.sqerr, b.sqerr], rmse_difference_statistic, self.n, self.seed,
                            jackknife=jack)


def _with_ci(metric: str, value: float, ci: tuple[float, float]) -> dict[str, float]:
    return {metric: value, f"{metric}_ci_low": ci[0], f"{metric}_ci_high": ci[1]}


def _accuracy_ci(s: _Scored) -> tuple[float, float]:
    if s.correct is None:
        return math.nan, math.nan
    return wilson_interval(int(s.correct.sum()), len(s.correct))


def _paired_table(a: _Scored, b: _Scored) -> tuple[int, int, int, int]:
    """(both right, only a right, only b right, both wrong) on the common items."""
    assert a.correct is not None and b.correct is not None
    ca, cb = a.correct.astype(bool), b.correct.astype(bool)
    return (int(np.sum(ca & cb)), int(np.sum(ca & ~cb)), int(np.sum(~ca & cb)),
            int(np.sum(~ca & ~cb)))


def _pairwise(names: list[str], scored: dict[str, _Scored], boot: _Bootstrap,
              classes: tuple[float, ...]) -> pd.DataFrame:
    rows = []
    for a_name, b_name in combinations(names, 2):
        a, b = scored[a_name], scored[b_name]
        if a.label_type != b.label_type:
            continue  # different ground truths: nothing to compare
        la, lb = _agreement_labels(a, classes), _agreement_labels(b, classes)
        base = {"model_a": a_name, "model_b": b_name, "label_type": a.label_type,
                "agreement": float(np.mean(la == lb)), "kappa": cohen_kappa(la, lb)}
        note = _ROUNDING_NOTE if "regressor" in (a.kind, b.kind) else ""
        if a.kind == b.kind == "classifier":
            both, nb, nc, neither = _paired_table(a, b)
            lo, hi = paired_difference_interval(both, nb, nc, neither)
            va, vb = _accuracy(a), _accuracy(b)
            rows.append({**base, "metric": "accuracy", "value_a": va, "value_b": vb,
                         "diff": va - vb, "ci_low": lo, "ci_high": hi, "ci_method": "newcombe",
                         "note": note, "mcnemar_b": nb, "mcnemar_c": nc,
                         "mcnemar_p": mcnemar_exact_p(nb, nc)})
        if a.label_type == "concentration":
            lo, hi = boot.rmse_difference(a, b)
            va, vb = _rmse(a), _rmse(b)
            rows.append({**base, "metric": "rmse", "value_a": va, "value_b": vb,
                         "diff": va - vb, "ci_low": lo, "ci_high": hi, "ci_method": "bca",
                         "note": note, "mcnemar_b": None, "mcnemar_c": None,
                         "mcnemar_p": math.nan})
    out = pd.DataFrame(rows, columns=list(PAIRWISE_COLUMNS))
    for c in ("mcnemar_b", "mcnemar_c"):
        out[c] = out[c].astype("Int64")
    for c in ("diff", "ci_low", "ci_high", "agreement", "kappa", "mcnemar_p", "value_a",
              "value_b"):
        out[c] = out[c].astype(np.float64)
    return out
