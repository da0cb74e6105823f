"""Scoring on the identical item set: validation, the item set, per-model metrics.

A difference between two models only means something if both were scored on the same
cards, so every model is scored on the identical item set: the cards that every model
scored (status ``ok``, ground truth known) *and* saw as the same image bytes (same
``raw_key``). One model's failure therefore removes that card for all models, and the
report says how many cards each model lost and why.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InvalidInputError
from ..hashing import canonical_json
from ..models.base import STATUS_OK
from .statistics import nearest_class

#: The PAD concentration classes (percent of the labelled API).
QUANTITY_CLASSES: tuple[float, ...] = (0.0, 20.0, 50.0, 80.0, 100.0)

#: Columns of ``CachedDataset.apply_model`` output that the comparison cannot do without.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "card_id", "status", "actual", "prediction", "label_type", "raw_key",
)
LABEL_TYPES: tuple[str, ...] = ("drug", "concentration")

#: Exclusion reasons besides ``status:<status>``, in the order they are checked.
REASON_ACTUAL = "actual_missing"
REASON_PREDICTION = "prediction_missing"
REASON_RAW_KEY = "raw_key_missing"
REASON_MISMATCH = "raw_key_mismatch"
REASON_OTHER = "excluded_by_other_model"

SUMMARY_COLUMNS: tuple[str, ...] = (
    "model", "label_type", "kind", "n_scored", "accuracy", "accuracy_ci_low",
    "accuracy_ci_high", "rmse", "rmse_ci_low", "rmse_ci_high", "mae", "n_excluded",
    "signature",
)
PAIRWISE_COLUMNS: tuple[str, ...] = (
    "model_a", "model_b", "metric", "diff", "ci_low", "ci_high", "agreement", "kappa",
    "mcnemar_b", "mcnemar_c", "mcnemar_p", "label_type", "value_a", "value_b", "note",
    "ci_method",
)
PER_CLASS_COLUMNS: tuple[str, ...] = (
    "label", "precision", "recall", "f1", "support", "recall_ci_low", "recall_ci_high",
)

_CLASS_ATOL = 1e-9  # a concentration prediction "is" a class value within this tolerance
_BOOT_CHUNK_ELEMENTS = 2_000_000  # bounds the memory of the resample index matrix
_ROUNDING_NOTE = (
    "agreement/kappa after rounding regressor predictions to the nearest quantity class "
    "(ties to the lower class)"
)



@dataclass
class _Scored:
    """One model's predictions and ground truth on the common items, in item order."""

    name: str
    label_type: str
    kind: str  # "classifier" | "regressor"
    signature: str
    y_true: np.ndarray
    y_pred: np.ndarray
    correct: np.ndarray | None  # None for regressors
    sqerr: np.ndarray | None  # None for drug models



def item_set_hash(pairs: Iterable[tuple[int, str]]) -> str:
    """sha256 of the canonical JSON of the sorted ``[card_id, raw_key]`` pairs.

    Spelled out so anyone can recompute it (e.g. from items.csv) without this package:
    ``sha256(json.dumps(sorted_pairs, separators=(",", ":")).encode("utf-8"))``.
    """
    norm = sorted((int(c), str(k)) for c, k in pairs)
    return hashlib.sha256(canonical_json([[c, k] for c, k in norm]).encode("utf-8")).hexdigest()



# ---- validation and the item set -----------------------------------------------------
def _validated(results: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    if not isinstance(results, dict):
        raise InvalidInputError(
            f"results must be a dict of model name -> apply_model DataFrame, got "
            f"{type(results).__name__}"
        )
    if not results:
        raise InvalidInputError(
            "results is empty: expected at least one model name -> apply_model DataFrame"
        )
    out: dict[str, pd.DataFrame] = {}
    for name, df in results.items():
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"model names must be non-empty strings, got {name!r}")
        if not isinstance(df, pd.DataFrame):
            raise InvalidInputError(
                f"results[{name!r}] must be a pandas DataFrame (apply_model output), got "
                f"{type(df).__name__}"
            )
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise InvalidInputError(
                f"results[{name!r}] lacks column(s) {missing}; expected apply_model output "
                f"with at least {list(REQUIRED_COLUMNS)}"
            )
        df = df.reset_index(drop=True).copy()
        try:
            df["card_id"] = [int(v) for v in df["card_id"]]
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"results[{name!r}]: card_id must hold integers ({exc})"
            ) from exc
        dup = sorted(set(df.loc[df["card_id"].duplicated(), "card_id"]))
        if dup:
            shown = ", ".join(map(str, dup[:20])) + (" ..." if len(dup) > 20 else "")
            raise InvalidInputError(
                f"results[{name!r}] has {len(dup)} duplicated card id(s): {shown}; expected "
                "one row per manifest card"
            )
        out[name] = df
    return out


def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        r = pd.isna(v)
    except (TypeError, ValueError):
        return False
    return bool(r) if np.ndim(r) == 0 else False


def _bad_number(v: Any) -> bool:
    """Missing or non-finite: a prediction that cannot be scored numerically."""
    if _missing(v):
        return True
    try:
        return not math.isfinite(float(v))
    except (TypeError, ValueError):
        return False  # not a number at all: left to the label-type check to reject


def _own_reasons(df: pd.DataFrame) -> pd.Series:
    """Per row, why this model alone cannot score the card (None if it can)."""
    out = []
    for status, actual, pred, raw in zip(df["status"], df["actual"], df["prediction"],
                                         df["raw_key"], strict=True):
        if status != STATUS_OK:
            out.append(f"status:{status}")
        elif _missing(actual):
            out.append(REASON_ACTUAL)
        elif _bad_number(pred):
            out.append(REASON_PREDICTION)
        elif _missing(raw):
            out.append(REASON_RAW_KEY)
        else:
            out.append(None)
    return pd.Series(out, index=df.index, dtype=object)


def _exclusions(frames: dict[str, pd.DataFrame], reasons: dict[str, pd.Series],
                common: set[tuple[int, str]]) -> pd.DataFrame:
    """One row per model: rows, ok rows, scored, excluded, then counts per reason."""
    raw_keys: dict[int, set[str]] = {}
    for df in frames.values():
        for cid, raw in zip(df["card_id"], df["raw_key"], strict=True):
            if not _missing(raw):
                raw_keys.setdefault(int(cid), set()).add(str(raw))
    rows, cols = [], []
    for m, df in frames.items():
        counts: dict[str, int] = {}
        for cid, raw, why in zip(df["card_id"], df["raw_key"], reasons[m], strict=True):
            if why is None:
                if (int(cid), str(raw)) in common:
                    continue
                why = REASON_MISMATCH if len(raw_keys[int(cid)]) > 1 else REASON_OTHER
            counts[why] = counts.get(why, 0) + 1
            if why not in cols:
                cols.append(why)
        n_scored = len(df) - sum(counts.values())
        rows.append({"model": m, "n_rows": len(df),
                     "n_ok": int((df["status"] == STATUS_OK).sum()),
                     "n_scored": n_scored, "n_excluded": sum(counts.values()), **counts})
    order = sorted(c for c in cols if c.startswith("status:"))
    order += [c for c in (REASON_ACTUAL, REASON_PREDICTION, REASON_RAW_KEY, REASON_MISMATCH,
                          REASON_OTHER) if c in cols]
    out = pd.DataFrame(rows, columns=["model", "n_rows", "n_ok", "n_scored", "n_excluded",
                                      *order])
    out[order] = out[order].fillna(0).astype(int)
    return out


def _no_common_message(frames: dict[str, pd.DataFrame], reasons: dict[str, pd.Series],
                       eligible: dict[str, set[tuple[int, str]]]) -> str:
    per = "; ".join(
        f"{m}: {int((df['status'] == STATUS_OK).sum())} ok of {len(df)} rows, "
        f"{len(eligible[m])} scorable" for m, df in frames.items()
    )
    return (
        "no card is scorable by every model (expected at least one card with status 'ok', "
        "a known actual and the same raw_key in every frame); per model: " + per
    )


def _label_type(name: str, df: pd.DataFrame) -> str:
    types = sorted({str(v) for v in df["label_type"] if not _missing(v)})
    if len(types) != 1 or types[0] not in LABEL_TYPES:
        raise InvalidInputError(
            f"results[{name!r}]: label_type must be one of {list(LABEL_TYPES)} on every row "
            f"(one model, one label type), found {types}"
        )
    return types[0]


def _score_inputs(name: str, df: pd.DataFrame, label_type: str, ids: list[int],
                  classes: tuple[float, ...]) -> _Scored:
    sig = sorted({str(v) for v in df.get("model_signature", pd.Series(dtype=object))
                  if not _missing(v)})
    rows = df.set_index("card_id").loc[ids]
    if label_type == "drug":
        y_true = np.array([str(v) for v in rows["actual"]], dtype=object)
        y_pred = np.array([str(v) for v in rows["prediction"]], dtype=object)
        return _Scored(name, label_type, "classifier", ", ".join(sig), y_true, y_pred,
                       correct=(y_true == y_pred).astype(np.float64), sqerr=None)
    y_true = _numbers(name, "actual", rows["actual"], ids)
    y_pred = _numbers(name, "prediction", rows["prediction"], ids)
    ok_preds = [v for v, s in zip(df["prediction"], df["status"], strict=True)
                if s == STATUS_OK and not _bad_number(v)]
    all_preds = _numbers(name, "prediction", ok_preds, None)
    cls = np.asarray(classes)
    is_class = np.isclose(all_preds[:, None], cls[None, :], rtol=0, atol=_CLASS_ATOL).any(1)
    kind = "classifier" if bool(is_class.all()) else "regressor"
    correct = (np.isclose(y_pred, y_true, rtol=0, atol=_CLASS_ATOL).astype(np.float64)
               if kind == "classifier" else None)
    return _Scored(name, label_type, kind, ", ".join(sig), y_true, y_pred, correct=correct,
                   sqerr=(y_pred - y_true) ** 2)


def _numbers(name: str, column: str, values: Iterable[Any], ids: list[int] | None
             ) -> np.ndarray:
    vals = list(values)
    try:
        return np.array([float(v) for v in vals], dtype=np.float64)
    except (TypeError, ValueError):
        bad = [(i if ids is None else ids[i], v) for i, v in enumerate(vals)
               if not isinstance(v, (int, float, np.number))]
        raise InvalidInputError(
            f"results[{name!r}] is a concentration model but its {column} column holds "
            f"non-numeric values (card id, value): {bad[:10]}; expected numbers"
        ) from None


def _actual_conflicts(scored: dict[str, _Scored]) -> list[str]:
    """Models of one label type must agree on the ground truth of a shared card."""
    out = []
    for lt in LABEL_TYPES:
        group = [s for s in scored.values() if s.label_type == lt]
        for a, b in combinations(group, 2):
            differ = (a.y_true != b.y_true) if lt == "drug" else ~np.isclose(
                a.y_true, b.y_true, rtol=0, atol=_CLASS_ATOL)
            if differ.any():
                out.append(f"{a.name} and {b.name} disagree on the actual label of "
                           f"{int(differ.sum())} common card(s); were they run on the same "
                           "manifest?")
    return out



# ---- metrics --------------------------------------------------------------------------
def _accuracy(s: _Scored) -> float:
    return float(np.mean(s.correct)) if s.correct is not None else math.nan


def _rmse(s: _Scored) -> float:
    return float(math.sqrt(np.mean(s.sqerr))) if s.sqerr is not None else math.nan


def _num_label(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _class_labels(s: _Scored, classes: tuple[float, ...]) -> list[Any]:
    if s.label_type == "drug":
        return sorted(set(s.y_true) | set(s.y_pred))
    vals = {round(float(v), 9) for v in (*classes, *s.y_true, *s.y_pred)}
    return [_num_label(v) for v in sorted(vals)]


def _confusion(s: _Scored, labels: list[Any]) -> pd.DataFrame:
    """Counts with actual labels as rows and predicted labels as columns."""
    if s.label_type == "drug":
        t, p = list(s.y_true), list(s.y_pred)
    else:
        t = [_num_label(round(float(v), 9)) for v in s.y_true]
        p = [_num_label(round(float(v), 9)) for v in s.y_pred]
    pos = {lab: i for i, lab in enumerate(labels)}
    mat = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(mat, ([pos[v] for v in t], [pos[v] for v in p]), 1)
    return pd.DataFrame(mat, index=pd.Index(labels, name="actual"),
                        columns=pd.Index(labels, name="predicted"))


def _per_class(conf: pd.DataFrame) -> pd.DataFrame:
    """Precision, recall, F1 and support per label, from the confusion matrix.

    Precision is NaN for a label never predicted and recall NaN for a label never true
    (undefined, not zero); F1 = 2tp / (2tp + fp + fn) is defined whenever the label occurs
    at all (NaN for a class value that neither occurs nor is predicted).
    """
    mat = conf.to_numpy()
    tp = np.diag(mat).astype(np.float64)
    predicted, support = mat.sum(axis=0), mat.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        denom = predicted + support  # = 2tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    return pd.DataFrame({"label": list(conf.index), "precision": precision, "recall": recall,
                         "f1": f1, "support": support.astype(np.int64)},
                        columns=list(PER_CLASS_COLUMNS[:5]))


def _agreement_labels(s: _Scored, classes: tuple[float, ...]) -> np.ndarray:
    if s.label_type == "drug":
        return s.y_pred
    return nearest_class(s.y_pred, classes).astype(object)

