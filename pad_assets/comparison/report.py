"""``ComparisonReport``: the tables, figures and item set of one comparison, as text,
Markdown, HTML and files."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .figures import render_figures
from .scoring import QUANTITY_CLASSES, _missing


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

