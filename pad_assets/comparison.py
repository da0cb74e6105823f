"""Fair, paired comparison of several models' results on one dataset.

A difference between two models only means something if both were scored on the same
cards, so every model is scored on the identical item set: the cards that every model
scored (status ``ok``, ground truth known) *and* saw as the same image bytes (same
``raw_key``). One model's failure therefore removes that card for all models, and the
report says how many cards each model lost and why, plus a hash of the item set so two
reports can be checked for comparability at a glance.

Because the items are shared, the statistics are paired: McNemar's exact test on the
discordant cards, and a bootstrap that resamples *cards* (the same resample for every
model), so the interval of a difference reflects the pairing instead of two independent
sampling errors.

Only NumPy, pandas and matplotlib are used (the exact binomial tail is computed with
``math.comb``), so the comparison needs nothing beyond the package's dependencies.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import math
import re
import warnings as _warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import InvalidInputError
from .hashing import canonical_json
from .models.base import STATUS_OK

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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
)
PER_CLASS_COLUMNS: tuple[str, ...] = ("label", "precision", "recall", "f1", "support")

_CLASS_ATOL = 1e-9  # a concentration prediction "is" a class value within this tolerance
_BOOT_CHUNK_ELEMENTS = 2_000_000  # bounds the memory of the resample index matrix
_ROUNDING_NOTE = (
    "agreement/kappa after rounding regressor predictions to the nearest quantity class "
    "(ties to the lower class)"
)


# ---- the report ----------------------------------------------------------------------
@dataclass(eq=False)
class ComparisonReport:
    """Everything a comparison found, as tables, figures and the audited item set.

    ``diff`` in ``pairwise`` is always ``model_a - model_b``: positive is better for
    accuracy and worse for RMSE. Concentration-classifier pairs get two rows (accuracy,
    with McNemar, and RMSE); pairs of different label types are not compared (they are
    scored against different ground truths).
    """

    dataset: str
    models: list[str]
    label_types: dict[str, str]
    kinds: dict[str, str]
    n_items: int
    card_ids: list[int]
    item_set_hash: str
    items: pd.DataFrame
    exclusions: pd.DataFrame
    summary: pd.DataFrame
    per_class: dict[str, pd.DataFrame]
    confusion: dict[str, pd.DataFrame]
    pairwise: pd.DataFrame
    n_bootstrap: int
    seed: int
    quantity_classes: tuple[float, ...] = QUANTITY_CLASSES
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # model -> file-name stem
    _figures: dict[str, bytes] | None = field(default=None, repr=False)

    @property
    def figures(self) -> dict[str, bytes]:
        """PNG bytes keyed by file name (``summary.png``, ``confusion_<model>.png``).

        Rendered on first use and kept: drawing costs far more than the statistics, and a
        terminal or notebook user who only reads the tables should not pay for it.
        """
        if self._figures is None:
            self._figures = render_figures(self)
        return self._figures

    # -- text ---------------------------------------------------------------------------
    def __str__(self) -> str:
        summary = self.summary.copy()
        summary["signature"] = summary["signature"].map(lambda s: _short(s, 12))
        keep = [c for c in ("model", "label_type", "kind", "n_scored", "accuracy", "rmse",
                            "mae", "n_excluded", "signature") if c in summary]
        lines = [
            f"Model comparison on {self.dataset}: {self.n_items} common item(s), "
            f"item set {_short(self.item_set_hash, 16)}",
            "",
            "Summary:",
            summary[keep].to_string(index=False, float_format=lambda v: f"{v:.4g}"),
            "",
        ]
        if self.pairwise.empty:
            lines.append("Pairwise: none (fewer than two models of the same label type)")
        else:
            cols = ["model_a", "model_b", "metric", "diff", "ci_low", "ci_high", "agreement",
                    "kappa", "mcnemar_b", "mcnemar_c", "mcnemar_p"]
            lines += ["Pairwise (diff = a - b, 95% paired bootstrap CI):",
                      self.pairwise[cols].to_string(index=False,
                                                    float_format=lambda v: f"{v:.4g}")]
        for w in self.warnings:
            lines.append(f"warning: {w}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The report as Markdown; image and CSV links are relative to ``write``'s folder."""
        out = [f"# Model comparison: {_md_escape(self.dataset)}", ""]
        out += [
            f"- Items scored, identical for every model: **{self.n_items}** card(s) "
            "(status ok, ground truth known and the same image bytes for every model)",
            f"- Item set hash: `{self.item_set_hash}` (sha256 of the canonical JSON of the "
            "sorted `[card_id, raw_key]` pairs; list in [items.csv](items.csv))",
            f"- Card ids: {_id_preview(self.card_ids)}",
            f"- Paired bootstrap: {self.n_bootstrap} resamples of the common items, seed "
            f"{self.seed}, 95% percentile intervals",
            "",
        ]
        if self.warnings:
            out += ["## Warnings", ""] + [f"- {_md_escape(w)}" for w in self.warnings] + [""]
        out += ["## Summary", "", _md_table(self.summary), "",
                "[summary.csv](summary.csv)", ""]
        out += ["![Summary metrics with 95% bootstrap intervals](summary.png)", ""]
        out += ["## Pairwise comparisons", ""]
        if self.pairwise.empty:
            out += ["No pairs: fewer than two models of the same label type.", ""]
        else:
            out += [
                "`diff` = model_a - model_b (higher accuracy is better, lower RMSE is "
                "better); `ci_low`/`ci_high`: 95% paired bootstrap interval of the "
                "difference; McNemar: exact two-sided binomial test on the discordant "
                "cards (`b`: only model_a right, `c`: only model_b right).",
                "",
                _md_table(self.pairwise), "", "[pairwise.csv](pairwise.csv)", "",
            ]
        out += ["## Excluded cards per model", "",
                "Each card is counted once, under the first reason that applies.", "",
                _md_table(self.exclusions), "", "[exclusions.csv](exclusions.csv)", ""]
        out += ["## Per model", ""]
        for m in self.models:
            stem = self.files.get(m, _slug(m))
            out += [f"### {_md_escape(m)}", ""]
            if m in self.per_class:
                out += [_md_table(self.per_class[m]), "",
                        f"[per_class_{stem}.csv](per_class_{stem}.csv) · "
                        f"[confusion_{stem}.csv](confusion_{stem}.csv)", ""]
            else:
                out += ["Regressor: scored by RMSE and MAE only (no class table).", ""]
            if m in self.confusion:
                out += [f"![Confusion matrix of {_md_escape(m)}](confusion_{stem}.png)", ""]
        return "\n".join(out)

    def to_html(self) -> str:
        """A self-contained HTML page (figures embedded as base64 PNG)."""

        def img(name: str, alt: str) -> str:
            data = base64.b64encode(self.figures[name]).decode("ascii")
            return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'

        def table(df: pd.DataFrame) -> str:
            return _fmt_frame(df).to_html(index=False, border=0, na_rep="", escape=True)

        e = html.escape
        parts = [
            "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            f"<title>Model comparison: {e(self.dataset)}</title>",
            "<style>body{font-family:sans-serif;margin:2em;max-width:80em}"
            "table{border-collapse:collapse;margin:0.5em 0}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
            "code{background:#f4f4f4}</style></head><body>",
            f"<h1>Model comparison: {e(self.dataset)}</h1><ul>",
            f"<li>Items scored, identical for every model: <b>{self.n_items}</b> card(s)</li>",
            f"<li>Item set hash: <code>{e(self.item_set_hash)}</code> (sha256 of the "
            "canonical JSON of the sorted [card_id, raw_key] pairs)</li>",
            f"<li>Card ids: {e(_id_preview(self.card_ids))}</li>",
            f"<li>Paired bootstrap: {self.n_bootstrap} resamples, seed {self.seed}, "
            "95% percentile intervals</li></ul>",
        ]
        if self.warnings:
            parts += ["<h2>Warnings</h2><ul>"] + [f"<li>{e(w)}</li>" for w in self.warnings]
            parts += ["</ul>"]
        parts += ["<h2>Summary</h2>", table(self.summary)]
        if "summary.png" in self.figures:
            parts.append(img("summary.png", "Summary metrics with 95% bootstrap intervals"))
        parts.append("<h2>Pairwise comparisons</h2>")
        if self.pairwise.empty:
            parts.append("<p>No pairs: fewer than two models of the same label type.</p>")
        else:
            parts += ["<p>diff = model_a - model_b; 95% paired bootstrap interval; McNemar "
                      "exact test on the discordant cards.</p>", table(self.pairwise)]
        parts += ["<h2>Excluded cards per model</h2>", table(self.exclusions),
                  "<h2>Per model</h2>"]
        for m in self.models:
            parts.append(f"<h3>{e(m)}</h3>")
            if m in self.per_class:
                parts.append(table(self.per_class[m]))
            png = f"confusion_{self.files.get(m, _slug(m))}.png"
            if png in self.figures:
                parts.append(img(png, f"Confusion matrix of {m}"))
        parts.append("</body></html>")
        return "\n".join(parts)

    # -- files --------------------------------------------------------------------------
    def write(self, directory: Path | str) -> Path:
        """Write report.md, report.html, every figure (PNG) and every table (CSV).

        Returns the path of ``report.md``. Files of an earlier report in the same folder
        are overwritten, not deleted; the Markdown links only to this report's files.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self.figures.items():
            (directory / name).write_bytes(data)
        self.summary.to_csv(directory / "summary.csv", index=False)
        self.pairwise.to_csv(directory / "pairwise.csv", index=False)
        self.exclusions.to_csv(directory / "exclusions.csv", index=False)
        self.items.to_csv(directory / "items.csv", index=False)
        for m, df in self.per_class.items():
            df.to_csv(directory / f"per_class_{self.files.get(m, _slug(m))}.csv", index=False)
        for m, df in self.confusion.items():
            df.to_csv(directory / f"confusion_{self.files.get(m, _slug(m))}.csv",
                      index_label="actual\\predicted")
        (directory / "report.html").write_text(self.to_html(), encoding="utf-8")
        md = directory / "report.md"
        md.write_text(self.to_markdown(), encoding="utf-8")
        return md


# ---- statistics (public: small, exact, and testable on their own) ---------------------
def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c``.

    Under H0 each discordant card is equally likely to favour either model, so
    ``min(b, c) ~ Binomial(b + c, 1/2)``; p = min(1, 2 * P(X <= min(b, c))). Exact integer
    arithmetic keeps it right for small counts, where the chi-square version is not.
    """
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise InvalidInputError(f"McNemar counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def cohen_kappa(a: Sequence[Any] | np.ndarray, b: Sequence[Any] | np.ndarray) -> float:
    """Cohen's kappa of two label sequences: agreement corrected for chance.

    NaN when chance agreement is already 1 (both sequences constant and equal), where
    kappa is undefined rather than perfect.
    """
    a_arr, b_arr = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise InvalidInputError(
            f"cohen_kappa needs two 1-d sequences of equal length, got {a_arr.shape} and "
            f"{b_arr.shape}"
        )
    n = len(a_arr)
    if n == 0:
        return math.nan
    po = float(np.mean(a_arr == b_arr))
    pa = pd.Series(a_arr).value_counts() / n
    pb = pd.Series(b_arr).value_counts() / n
    pe = float(sum(pa[k] * pb.get(k, 0.0) for k in pa.index))
    if pe >= 1.0 - 1e-12:
        return math.nan
    return (po - pe) / (1.0 - pe)


def nearest_class(values: Iterable[float],
                  classes: Sequence[float] = QUANTITY_CLASSES) -> np.ndarray:
    """Each value snapped to the nearest class (ties go to the lower class)."""
    v = np.asarray(list(values), dtype=np.float64)
    cls = np.sort(np.asarray(classes, dtype=np.float64))
    if v.size == 0:
        return v
    return cls[np.argmin(np.abs(v[:, None] - cls[None, :]), axis=1)]


# ---- the comparison ------------------------------------------------------------------
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
                        columns=list(PER_CLASS_COLUMNS))


def _agreement_labels(s: _Scored, classes: tuple[float, ...]) -> np.ndarray:
    if s.label_type == "drug":
        return s.y_pred
    return nearest_class(s.y_pred, classes).astype(object)


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


# ---- figures ---------------------------------------------------------------------------
def render_figures(report: ComparisonReport) -> dict[str, bytes]:
    """PNG bytes of every figure, keyed by file name (``summary.png``, ``confusion_*.png``).

    Drawn on an explicit Agg canvas (``FigureCanvasAgg``) without pyplot: no display is
    ever needed, and the caller's pyplot backend (e.g. a notebook's inline backend) is left
    untouched, which a global ``matplotlib.use("Agg")`` would not do.
    """
    figures = {"summary.png": _png(lambda fig: _draw_summary(fig, report),
                                   _summary_size(report))}
    for m, conf in report.confusion.items():
        k = len(conf)
        size = (max(4.0, 0.55 * k + 2.5), max(3.5, 0.5 * k + 2.0))
        figures[f"confusion_{report.files[m]}.png"] = _png(
            lambda fig, m=m, conf=conf: _draw_confusion(fig, m, conf), size)
    return figures


def _png(draw: Callable[[Figure], None], size: tuple[float, float]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)  # attaches the Agg canvas: rendering never touches a GUI
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _summary_panels(report: ComparisonReport) -> list[tuple[str, str, list[str]]]:
    """(label type, metric, models) per panel: accuracy for classifiers, RMSE for
    concentration models."""
    panels = []
    for lt in LABEL_TYPES:
        ms = [m for m in report.models if report.label_types[m] == lt]
        if not ms:
            continue
        if lt == "concentration":
            panels.append((lt, "rmse", ms))
        cls = [m for m in ms if report.kinds[m] == "classifier"]
        if cls:
            panels.append((lt, "accuracy", cls))
    return panels


def _summary_size(report: ComparisonReport) -> tuple[float, float]:
    panels = _summary_panels(report)
    widest = max(len(p[2]) for p in panels)
    return (max(4.5, 1.0 * widest + 2.5) * len(panels), 4.0)


def _draw_summary(fig: Figure, report: ComparisonReport) -> None:
    panels = _summary_panels(report)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    s = report.summary.set_index("model")
    for ax, (lt, metric, ms) in zip(axes, panels, strict=True):
        vals = s.loc[ms, metric].to_numpy(dtype=float)
        lo = s.loc[ms, f"{metric}_ci_low"].to_numpy(dtype=float)
        hi = s.loc[ms, f"{metric}_ci_high"].to_numpy(dtype=float)
        x = np.arange(len(ms))
        err = None
        if np.isfinite(lo).all() and np.isfinite(hi).all():
            err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
        ax.bar(x, vals, yerr=err, capsize=4, color="#4c72b0")
        ax.set_xticks(x)
        ax.set_xticklabels(ms, rotation=30, ha="right")
        better = "higher is better" if metric == "accuracy" else "lower is better"
        ax.set_title(f"{lt}: {metric} ({better})", fontsize=10)
        if metric == "accuracy":
            ax.set_ylim(0, 1.05)
        _annotate_bars(ax, x, vals)
    fig.suptitle(f"{report.dataset}: {report.n_items} common items, 95% paired bootstrap CI",
                 fontsize=10, y=1.03)


def _annotate_bars(ax: Axes, x: np.ndarray, vals: np.ndarray) -> None:
    for xi, v in zip(x, vals, strict=True):
        if np.isfinite(v):
            ax.annotate(f"{v:.3g}", (xi, 0), ha="center", va="bottom", fontsize=8,
                        color="white", xytext=(0, 3), textcoords="offset points")


def _draw_confusion(fig: Figure, model: str, conf: pd.DataFrame) -> None:
    ax = fig.subplots()
    mat = conf.to_numpy()
    rows = mat.sum(axis=1, keepdims=True)
    frac = np.divide(mat, rows, out=np.zeros(mat.shape, dtype=float), where=rows > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    labels = [str(v) for v in conf.index]
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            if mat[i, j]:
                ax.text(j, i, str(mat[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black")
    ax.set_title(f"{model}: confusion (n={int(mat.sum())}; colour = row fraction)",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


# ---- formatting helpers --------------------------------------------------------------
def _slug(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z._-]+", "_", name).strip("._-") or "model"


def _file_stems(names: list[str]) -> dict[str, str]:
    """A distinct, file-safe stem per model (two names may slug alike)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for n in names:
        stem, i = _slug(n), 2
        while stem.lower() in used:  # case-insensitive file systems
            stem, i = f"{_slug(n)}_{i}", i + 1
        used.add(stem.lower())
        out[n] = stem
    return out


def _short(text: Any, n: int) -> str:
    s = "" if _missing(text) else str(text)
    return s if len(s) <= n else s[:n] + "…"


def _id_preview(ids: list[int], limit: int = 30) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (f", … ({len(ids)} in all)" if len(ids) > limit else "")


def _fmt_cell(v: Any) -> str:
    if _missing(v):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)


def _fmt_frame(df: pd.DataFrame) -> pd.DataFrame:
    return df.apply(lambda col: col.map(_fmt_cell)) if len(df) else df.astype(str)


def _md_escape(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(df: pd.DataFrame) -> str:
    """A GitHub-style Markdown table (no ``tabulate`` dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(_md_escape(c) for c in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_md_escape(_fmt_cell(v)) for v in row) + " |")
    return "\n".join(lines)
