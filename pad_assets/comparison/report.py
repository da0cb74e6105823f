"""``ComparisonReport``: the tables, figures and item set of one comparison, as text,
Markdown, HTML and files."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..csv_safety import escape_frame
from ..errors import InvalidInputError
from .figures import Figures, render_figures
from .scoring import QUANTITY_CLASSES, _missing


#: What the intervals are, in one line (text, Markdown and HTML say the same).
def _ci_line(n_bootstrap: int, seed: int) -> str:
    boot = (f"BCa bootstrap, {n_bootstrap} resamples of the common cards (one shared "
            f"resample for every model), seed {seed}" if n_bootstrap else
            "not computed (n_bootstrap=0)")
    return ("95% intervals: Wilson for accuracies and per-class accuracy; Newcombe's paired "
            f"interval for accuracy differences; RMSE and RMSE differences: {boot}")


#: Lists the files ``write`` put in a folder, so a later report there removes exactly the
#: ones it does not rewrite (a reused folder never shows a stale figure) and nothing else.
_MANIFEST = ".pad_report_files.json"


@dataclass(eq=False)
class ComparisonReport:
    """Everything a comparison found, as tables, figures and the audited item set.

    ``diff`` in ``pairwise`` is always ``model_a - model_b``: positive is better for
    accuracy and worse for RMSE. Concentration-classifier pairs get two rows (accuracy,
    with McNemar, and RMSE); pairs of different label types are not compared (they are
    scored against different ground truths). ``ci_method`` names each row's interval.
    In a notebook the report shows itself as HTML (tables and figures).
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
    #: Per model, (actual, predicted) on the common items in ``card_ids`` order (numeric
    #: for concentration models, labels for drug models): what the scatter plot draws.
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict,
                                                             repr=False)
    #: Cards published in more than one compared split: ``{"count", "card_ids", ...}``.
    leakage: dict[str, Any] = field(default_factory=dict)
    _figures: Figures | None = field(default=None, repr=False)

    @property
    def figures(self) -> Figures:
        """The report's PNG figures keyed by file name (a mapping of name -> PNG bytes).

        Shown as images in a notebook. Rendered on first use and kept: drawing costs far
        more than the statistics, and a terminal or notebook user who only reads the
        tables should not pay for it.
        """
        if self._figures is None:
            self._figures = render_figures(self)
        return self._figures

    # -- text ---------------------------------------------------------------------------
    def __str__(self) -> str:
        """Compact text: one line per model and per pair, each value with its interval."""
        summary = pd.DataFrame({
            "model": self.summary["model"], "label": self.summary["label_type"],
            "kind": self.summary["kind"], "n": self.summary["n_scored"],
            "accuracy [95% CI]": [_with_interval(r.accuracy, r.accuracy_ci_low,
                                                 r.accuracy_ci_high)
                                  for r in self.summary.itertuples()],
            "RMSE [95% CI]": [_with_interval(r.rmse, r.rmse_ci_low, r.rmse_ci_high)
                              for r in self.summary.itertuples()],
            "MAE": [_fmt_cell(v) for v in self.summary["mae"]],
            "excluded": self.summary["n_excluded"],
            "signature": self.summary["signature"].map(lambda s: _short(s, 12)),
        })
        summary = summary[[c for c in summary if not (summary[c] == "").all()]]
        lines = [
            f"Model comparison on {self.dataset}: {self.n_items} common item(s), "
            f"item set {_short(self.item_set_hash, 16)}",
            "",
            summary.to_string(index=False),
            "",
        ]
        if self.pairwise.empty:
            lines.append("Pairwise: none (fewer than two models of the same label type)")
        else:
            pw = pd.DataFrame({
                "pair (a - b)": [f"{r.model_a} - {r.model_b}" for r in self.pairwise.itertuples()],
                "metric": self.pairwise["metric"],
                "diff [95% CI]": [_with_interval(r.diff, r.ci_low, r.ci_high)
                                  for r in self.pairwise.itertuples()],
                "CI": self.pairwise["ci_method"],
                "agree": [_fmt_cell(v) for v in self.pairwise["agreement"]],
                "kappa": [_fmt_cell(v) for v in self.pairwise["kappa"]],
                "McNemar b/c p": ["" if pd.isna(r.mcnemar_b) else
                                  f"{r.mcnemar_b}/{r.mcnemar_c} {r.mcnemar_p:.3g}"
                                  for r in self.pairwise.itertuples()],
            })
            lines += [pw.to_string(index=False)]
        lines += ["", _ci_line(self.n_bootstrap, self.seed)]
        if self.leakage:
            lines.append(leakage_line(self.leakage))
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
            *([f"- {leakage_line(self.leakage)}"] if self.leakage else []),
            f"- {_ci_line(self.n_bootstrap, self.seed)}",
            "",
        ]
        figs = self.figures
        if self.warnings:
            out += ["## Warnings", ""] + [f"- {_md_escape(w)}" for w in self.warnings] + [""]
        out += ["## Summary", "", _md_table(self.summary), "",
                "[summary.csv](summary.csv)", ""]
        out += [f"![{figs.captions['summary.png']}](summary.png)", ""]
        out += ["## Pairwise comparisons", ""]
        if self.pairwise.empty:
            out += ["No pairs: fewer than two models of the same label type.", ""]
        else:
            out += [
                "`diff` = model_a - model_b (higher accuracy is better, lower RMSE is "
                "better); `ci_low`/`ci_high`: 95% interval of the paired difference "
                "(`ci_method`); McNemar: exact two-sided binomial test on the discordant "
                "cards (`b`: only model_a right, `c`: only model_b right).",
                "",
                _md_table(self.pairwise), "", "[pairwise.csv](pairwise.csv)", "",
            ]
            out += [f"![{figs.captions['paired_differences.png']}](paired_differences.png)",
                    ""]
        for name in ("predicted_vs_actual.png", "per_class_accuracy.png"):
            if name in figs:
                out += [f"![{figs.captions[name]}]({name})", ""]
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

    def _html_body(self, h: int = 1) -> list[str]:
        """The report as HTML elements, headings starting at ``<h{h}>``."""

        def table(df: pd.DataFrame) -> str:
            return _fmt_frame(df).to_html(index=False, border=0, na_rep="", escape=True)

        def img(name: str) -> str:
            return f"<p>{figs.img_tag(name)}</p>" if name in figs else ""

        e = html.escape
        figs = self.figures
        h1, h2, h3 = (f"h{min(h + i, 6)}" for i in range(3))
        parts = [
            f"<{h1}>Model comparison: {e(self.dataset)}</{h1}><ul>",
            f"<li>Items scored, identical for every model: <b>{self.n_items}</b> card(s)</li>",
            f"<li>Item set hash: <code>{e(self.item_set_hash)}</code> (sha256 of the "
            "canonical JSON of the sorted [card_id, raw_key] pairs)</li>",
            f"<li>Card ids: {e(_id_preview(self.card_ids))}</li>",
            *([f"<li>{e(leakage_line(self.leakage))}</li>"] if self.leakage else []),
            f"<li>{e(_ci_line(self.n_bootstrap, self.seed))}</li></ul>",
        ]
        if self.warnings:
            parts += [f"<{h2}>Warnings</{h2}><ul>"] + [f"<li>{e(w)}</li>"
                                                       for w in self.warnings]
            parts += ["</ul>"]
        parts += [f"<{h2}>Summary</{h2}>", table(self.summary), img("summary.png"),
                  f"<{h2}>Pairwise comparisons</{h2}>"]
        if self.pairwise.empty:
            parts.append("<p>No pairs: fewer than two models of the same label type.</p>")
        else:
            parts += ["<p>diff = model_a - model_b; 95% interval of the paired difference "
                      "(ci_method); McNemar exact test on the discordant cards.</p>",
                      table(self.pairwise), img("paired_differences.png")]
        parts += [img("predicted_vs_actual.png"), img("per_class_accuracy.png"),
                  f"<{h2}>Excluded cards per model</{h2}>", table(self.exclusions),
                  f"<{h2}>Per model</{h2}>"]
        for m in self.models:
            parts.append(f"<{h3}>{e(m)}</{h3}>")
            if m in self.per_class:
                parts.append(table(self.per_class[m]))
            parts.append(img(f"confusion_{self.files.get(m, _slug(m))}.png"))
        return [p for p in parts if p]

    def to_html(self) -> str:
        """A self-contained HTML page (figures embedded as base64 PNG)."""
        return "\n".join([
            "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            f"<title>Model comparison: {html.escape(self.dataset)}</title>",
            "<style>body{font-family:sans-serif;margin:2em;max-width:80em}"
            "table{border-collapse:collapse;margin:0.5em 0}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
            "code{background:#f4f4f4}</style></head><body>",
            *self._html_body(1), "</body></html>"])

    def _repr_html_(self) -> str:
        """Notebook view: the report's tables and figures inline (no page scaffolding)."""
        return '<div class="pad-comparison">' + "\n".join(self._html_body(3)) + "</div>"

    # -- files --------------------------------------------------------------------------
    def write(self, directory: Path | str) -> Path:
        """Write report.md, report.html, every figure (PNG) and every table (CSV).

        Returns the path of ``report.md``. Report files of an earlier comparison in the
        same folder that this report does not rewrite (a model that is gone, a figure
        this comparison has no use for) are removed, so the folder never mixes reports.
        Only files a report wrote there (listed in ``.pad_report_files.json``) are ever
        removed: anything else in the folder is left alone.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        previous = _previous_files(directory)
        written: set[str] = set()

        def csv(df: pd.DataFrame, name: str, **kw: Any) -> None:
            escape_frame(df).to_csv(directory / name, index=kw.pop("index", False), **kw)
            written.add(name)

        for name, data in self.figures.items():
            (directory / name).write_bytes(data)
            written.add(name)
        csv(self.summary, "summary.csv")
        csv(self.pairwise, "pairwise.csv")
        csv(self.exclusions, "exclusions.csv")
        csv(self.items, "items.csv")
        for m, df in self.per_class.items():
            csv(df, f"per_class_{self.files.get(m, _slug(m))}.csv")
        for m, df in self.confusion.items():
            csv(df, f"confusion_{self.files.get(m, _slug(m))}.csv", index=True,
                index_label="actual\\predicted")
        (directory / "report.html").write_text(self.to_html(), encoding="utf-8")
        md = directory / "report.md"
        md.write_text(self.to_markdown(), encoding="utf-8")
        written |= {"report.html", "report.md"}
        for name in sorted(previous - written):
            (directory / name).unlink(missing_ok=True)
        (directory / _MANIFEST).write_text(json.dumps(sorted(written), indent=1) + "\n",
                                           encoding="utf-8")
        return md


def _previous_files(directory: Path) -> set[str]:
    """Plain file names an earlier ``write`` listed in this folder (never a path)."""
    path = directory / _MANIFEST
    if not path.is_file():
        return set()
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(
            f"{path} is not the JSON list of file names a comparison report writes ({exc}); "
            "remove it or choose another output folder") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidInputError(f"{path}: expected a JSON list of file names")
    return {n for n in names if n == Path(n).name and n not in ("", ".", "..")}


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


def _with_interval(value: Any, lo: Any, hi: Any) -> str:
    if _missing(value) or (isinstance(value, float) and value != value):
        return ""
    if _missing(lo) or _missing(hi) or lo != lo or hi != hi:
        return _fmt_cell(value)
    return f"{_fmt_cell(value)} [{_fmt_cell(lo)}, {_fmt_cell(hi)}]"


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


def leakage_line(leak: dict[str, Any]) -> str:
    """One line naming the cards published in more than one of the compared splits."""
    ids = list(leak.get("card_ids") or [])
    shown = ", ".join(map(str, ids[:20])) + (" ..." if len(ids) > 20 else "")
    return (f"Leakage: {int(leak.get('count', 0))} card(s) published in more than one "
            "compared split" + (f": {shown}" if ids else ""))
