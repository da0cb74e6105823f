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
from .statistics import cohen_kappa, mcnemar_exact_p

_BOOT_CHUNK_ELEMENTS = 2_000_000  # bounds the memory of the resample index matrix


def compare_results(results: dict[str, pd.DataFrame], dataset: str, n_bootstrap: int = 2000,
                    seed: int = 0,
                    quantity_classes: Sequence[float] = QUANTITY_CLASSES) -> ComparisonReport:
    """Score every model on the identical item set and compare them pairwise.

    ``results`` maps a model name to its ``CachedDataset.apply_model`` frame. An item is a
    card that every model scored (status ``ok``, ground truth known) from the same image
    bytes; the others are excluded for every model and counted per model and reason.
    ``n_bootstrap=0`` skips the bootstrap (intervals are NaN). ``quantity_classes`` decides
    whether a concentration model is a classifier (every prediction is a class value) or a
    regressor (scored by RMSE/MAE only; rounded to the nearest class for agreement).

    Raises ``InvalidInputError`` (a ``ValueError``) for an empty ``results``, a frame
    missing columns or repeating a card id, a model mixing label types, and when no card
    is scorable by every model.
    """
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

    boot = _bootstrap(scored, len(common), int(n_bootstrap), seed)
    summary_rows, per_class, confusion = [], {}, {}
    for m in names:
        s = scored[m]
        row: dict[str, Any] = {"model": m, "label_type": s.label_type, "kind": s.kind,
                               "n_scored": len(common)}
        row.update(_metric_with_ci("accuracy", _accuracy(s), boot.get((m, "accuracy"))))
        row.update(_metric_with_ci("rmse", _rmse(s), boot.get((m, "rmse"))))
        row["mae"] = (float(np.mean(np.abs(s.y_pred - s.y_true)))
                      if s.sqerr is not None else math.nan)
        row["n_excluded"] = int(exclusions.set_index("model").loc[m, "n_excluded"])
        row["signature"] = s.signature
        summary_rows.append(row)
        if s.kind == "classifier":
            labels = _class_labels(s, classes)
            confusion[m] = _confusion(s, labels)
            per_class[m] = _per_class(confusion[m])
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
        warnings=warn, files=files,
    )
    return report



def _metric_with_ci(metric: str, value: float, samples: np.ndarray | None) -> dict[str, float]:
    lo, hi = _percentile_ci(samples)
    return {metric: value, f"{metric}_ci_low": lo, f"{metric}_ci_high": hi}


def _percentile_ci(samples: np.ndarray | None) -> tuple[float, float]:
    if samples is None or len(samples) == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return float(lo), float(hi)



def _bootstrap(scored: dict[str, _Scored], n_items: int, n_bootstrap: int, seed: int
               ) -> dict[tuple[str, str], np.ndarray]:
    """Per (model, metric) the metric on each resample; one resample serves every model.

    Sharing the resampled card indices is what makes differences *paired*. Resamples are
    drawn in chunks to bound memory; results depend only on (seed, n_items, n_bootstrap).
    """
    per_item: dict[tuple[str, str], np.ndarray] = {}
    for m, s in scored.items():
        if s.correct is not None:
            per_item[(m, "accuracy")] = s.correct
        if s.sqerr is not None:
            per_item[(m, "rmse")] = s.sqerr
    if n_bootstrap == 0:
        return {}
    rng = np.random.default_rng(seed)
    out = {k: np.empty(n_bootstrap, dtype=np.float64) for k in per_item}
    chunk = max(1, min(n_bootstrap, _BOOT_CHUNK_ELEMENTS // max(n_items, 1)))
    for start in range(0, n_bootstrap, chunk):
        stop = min(start + chunk, n_bootstrap)
        idx = rng.integers(0, n_items, size=(stop - start, n_items))
        for k, v in per_item.items():
            out[k][start:stop] = v[idx].mean(axis=1)
    for k in out:
        if k[1] == "rmse":
            out[k] = np.sqrt(out[k])
    return out



def _pairwise(names: list[str], scored: dict[str, _Scored],
              boot: dict[tuple[str, str], np.ndarray], classes: tuple[float, ...]
              ) -> pd.DataFrame:
    rows = []
    for a_name, b_name in combinations(names, 2):
        a, b = scored[a_name], scored[b_name]
        if a.label_type != b.label_type:
            continue  # different ground truths: nothing to compare
        la, lb = _agreement_labels(a, classes), _agreement_labels(b, classes)
        base = {"model_a": a_name, "model_b": b_name, "label_type": a.label_type,
                "agreement": float(np.mean(la == lb)), "kappa": cohen_kappa(la, lb)}
        note = _ROUNDING_NOTE if "regressor" in (a.kind, b.kind) else ""
        metrics = []
        if a.kind == b.kind == "classifier":
            metrics.append("accuracy")
        if a.label_type == "concentration":
            metrics.append("rmse")
        for metric in metrics:
            fn = _accuracy if metric == "accuracy" else _rmse
            va, vb = fn(a), fn(b)
            ba, bb = boot.get((a_name, metric)), boot.get((b_name, metric))
            lo, hi = _percentile_ci(None if ba is None or bb is None else ba - bb)
            row = {**base, "metric": metric, "value_a": va, "value_b": vb, "diff": va - vb,
                   "ci_low": lo, "ci_high": hi, "note": note,
                   "mcnemar_b": None, "mcnemar_c": None, "mcnemar_p": math.nan}
            if metric == "accuracy":
                assert a.correct is not None and b.correct is not None
                ca, cb = a.correct.astype(bool), b.correct.astype(bool)
                nb, nc = int(np.sum(ca & ~cb)), int(np.sum(~ca & cb))
                row.update(mcnemar_b=nb, mcnemar_c=nc, mcnemar_p=mcnemar_exact_p(nb, nc))
            rows.append(row)
    out = pd.DataFrame(rows, columns=list(PAIRWISE_COLUMNS))
    for c in ("mcnemar_b", "mcnemar_c"):
        out[c] = out[c].astype("Int64")
    for c in ("diff", "ci_low", "ci_high", "agreement", "kappa", "mcnemar_p", "value_a",
              "value_b"):
        out[c] = out[c].astype(np.float64)
    return out

