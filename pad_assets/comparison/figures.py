"""PNG figures of a comparison report, drawn without pyplot, and a notebook view of them.

Each figure answers one question the report is for:

* ``summary.png``: how good is each model (accuracy or RMSE with its 95% interval)?
* ``paired_differences.png``: is model A better than model B on the same cards (the paired
  difference with its interval, and McNemar's p for accuracy)?
* ``predicted_vs_actual.png``: where does a concentration model go wrong (each card's
  prediction against its labelled concentration)?
* ``per_class_accuracy.png``: which drugs or concentrations does each classifier get
  right (per-class accuracy with Wilson intervals; only classes present in the items)?
* ``confusion_<model>.png``: what is each class mistaken for?

Every model keeps one colour across all figures; classes that neither occur nor are
predicted are left out of the pictures (the CSV tables keep every class).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .scoring import LABEL_TYPES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .report import ComparisonReport

#: Colour-blind-safe qualitative palette (Okabe-Ito), then matplotlib's tab10 beyond 8 models.
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
            "#000000", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
            "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


class Figures(Mapping[str, bytes]):
    """PNG bytes keyed by file name, shown as images in a notebook.

    A read-only mapping (``figures["summary.png"]``, ``.items()``), so code that wrote the
    PNGs to files keeps working; ``_repr_html_`` embeds every PNG with its caption.
    """

    def __init__(self, pngs: dict[str, bytes], captions: dict[str, str]) -> None:
        self._pngs = dict(pngs)
        self.captions = {k: captions.get(k, k) for k in self._pngs}

    def __getitem__(self, name: str) -> bytes:
        return self._pngs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pngs)

    def __len__(self) -> int:
        return len(self._pngs)

    def __repr__(self) -> str:
        return f"Figures({list(self._pngs)})"

    def img_tag(self, name: str) -> str:
        """An ``<img>`` with the PNG embedded as base64 (self-contained HTML)."""
        data = base64.b64encode(self._pngs[name]).decode("ascii")
        alt = html.escape(self.captions[name])
        return (f'<img alt="{alt}" style="max-width:100%" '
                f'src="data:image/png;base64,{data}">')

    def _repr_html_(self) -> str:
        return "\n".join(
            f"<figure>{self.img_tag(n)}<figcaption>{html.escape(self.captions[n])}"
            "</figcaption></figure>" for n in self._pngs)


def model_colours(models: list[str]) -> dict[str, str]:
    """One distinct colour per model, in report order (the same in every figure)."""
    return {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(models)}


def render_figures(report: ComparisonReport) -> Figures:
    """Every figure of the report (see the module docstring), keyed by file name.

    Drawn on an explicit Agg canvas (``FigureCanvasAgg``) without pyplot: no display is
    ever needed, and the caller's pyplot backend (e.g. a notebook's inline backend) is left
    untouched, which a global ``matplotlib.use("Agg")`` would not do.
    """
    colours = model_colours(report.models)
    pngs: dict[str, bytes] = {}
    captions: dict[str, str] = {}

    def add(name: str, caption: str, draw: Callable[[Figure], None],
            size: tuple[float, float]) -> None:
        pngs[name] = _png(draw, size)
        captions[name] = caption

    panels = _summary_panels(report)
    add("summary.png", "Each model's accuracy (Wilson 95% CI) or RMSE (BCa bootstrap 95% CI)",
        lambda fig: _draw_summary(fig, report, colours, panels),
        (max(4.5, 0.9 * max(len(p[2]) for p in panels) + 2.5) * len(panels), 4.0))
    if len(report.pairwise):
        metrics = list(dict.fromkeys(report.pairwise["metric"]))
        rows = len(report.pairwise)
        add("paired_differences.png",
            "Paired differences model_a - model_b on the same cards with 95% CIs "
            "(Newcombe for accuracy, BCa bootstrap for RMSE)",
            lambda fig: _draw_differences(fig, report, metrics),
            (7.5, 1.0 + 1.3 * len(metrics) + 0.55 * rows))
    conc = [m for m in report.models if report.label_types[m] == "concentration"]
    if conc:
        add("predicted_vs_actual.png",
            "Predicted against labelled concentration, one point per card (jittered)",
            lambda fig: _draw_scatter(fig, report, conc, colours),
            (4.2 * len(conc) + 0.5, 4.2))
    groups = [(lt, [m for m in report.models if m in report.per_class
                    and report.label_types[m] == lt]) for lt in LABEL_TYPES]
    groups = [(lt, ms) for lt, ms in groups if ms]
    if groups:
        widths = [len(_present_labels(report, ms)) * (0.35 * len(ms) + 0.3) + 2.0
                  for _, ms in groups]
        add("per_class_accuracy.png",
            "Per-class accuracy (recall) with Wilson 95% CIs; n = cards of that class",
            lambda fig: _draw_per_class(fig, report, groups, colours),
            (max(5.0, sum(widths)), 4.2))
    for m, conf in report.confusion.items():
        k = len(_nonempty(conf))
        add(f"confusion_{report.files[m]}.png", f"Confusion matrix of {m} (row fractions)",
            lambda fig, m=m, conf=conf: _draw_confusion(fig, m, _nonempty(conf)),
            (max(4.0, 0.55 * k + 2.5), max(3.5, 0.5 * k + 2.0)))
    return Figures(pngs, captions)


def _png(draw: Callable[[Figure], None], size: tuple[float, float]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # attaches the Agg canvas: rendering never touches a GUI
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


# ---- summary ---------------------------------------------------------------------------
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


def _draw_summary(fig: Figure, report: ComparisonReport, colours: dict[str, str],
                  panels: list[tuple[str, str, list[str]]]) -> None:
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    s = report.summary.set_index("model")
    for ax, (lt, metric, ms) in zip(axes, panels, strict=True):
        vals = s.loc[ms, metric].to_numpy(dtype=float)
        lo = s.loc[ms, f"{metric}_ci_low"].to_numpy(dtype=float)
        hi = s.loc[ms, f"{metric}_ci_high"].to_numpy(dtype=float)
        x = np.arange(len(ms))
        for i, m in enumerate(ms):
            if np.isfinite(lo[i]) and np.isfinite(hi[i]):
                ax.errorbar(x[i], vals[i], yerr=[[max(vals[i] - lo[i], 0)],
                                                  [max(hi[i] - vals[i], 0)]],
                            fmt="o", color=colours[m], capsize=5, markersize=8, lw=2)
            else:
                ax.plot(x[i], vals[i], "o", color=colours[m], markersize=8)
            ax.annotate(f"{vals[i]:.3g}", (x[i], vals[i]), xytext=(8, 0),
                        textcoords="offset points", va="center", fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels(ms, rotation=30, ha="right")
        ax.set_xlim(-0.6, len(ms) - 0.4)
        if metric == "accuracy":
            ax.set_ylim(0, 1.05)
            ax.set_title(f"{lt}: accuracy (higher is better)\n95% Wilson CI", fontsize=9)
        else:
            ax.set_ylim(bottom=0)
            ax.set_title(f"{lt}: RMSE (lower is better)\n95% BCa bootstrap CI", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{report.dataset}: {report.n_items} common cards", fontsize=10)


# ---- paired differences ----------------------------------------------------------------
def _draw_differences(fig: Figure, report: ComparisonReport, metrics: list[str]) -> None:
    counts = [int((report.pairwise["metric"] == m).sum()) for m in metrics]
    axes = fig.subplots(len(metrics), 1, squeeze=False, height_ratios=counts)[:, 0]
    for ax, metric in zip(axes, metrics, strict=True):
        rows = report.pairwise[report.pairwise["metric"] == metric].reset_index(drop=True)
        y = np.arange(len(rows))[::-1]
        ax.axvline(0, color="#888888", lw=1, ls="--")
        labels = []
        for yi, r in zip(y, rows.itertuples(), strict=True):
            excludes_zero = np.isfinite(r.ci_low) and (r.ci_low > 0 or r.ci_high < 0)
            colour = "#D55E00" if excludes_zero else "#0072B2"
            if np.isfinite(r.ci_low) and np.isfinite(r.ci_high):
                ax.plot([r.ci_low, r.ci_high], [yi, yi], color=colour, lw=2.5)
            ax.plot(r.diff, yi, "o", color=colour, markersize=7)
            detail = f"{r.diff:+.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}]"
            if metric == "accuracy" and pd.notna(r.mcnemar_p):
                detail += f", McNemar p={r.mcnemar_p:.2g}"
            labels.append(f"{r.model_a} − {r.model_b}\n{detail}")
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        if metric == "accuracy":
            ax.set_xlabel("accuracy(model_a) − accuracy(model_b)   (> 0: model_a better)",
                          fontsize=8)
            ax.set_title("accuracy difference, 95% Newcombe paired CI", fontsize=9)
        else:
            ax.set_xlabel("RMSE(model_a) − RMSE(model_b)   (< 0: model_a better)", fontsize=8)
            ax.set_title("RMSE difference, 95% BCa paired bootstrap CI", fontsize=9)
        lim = np.nanmax(np.abs(np.r_[rows["ci_low"], rows["ci_high"], rows["diff"]]))
        lim = float(lim) * 1.1 if np.isfinite(lim) and lim > 0 else 1.0
        ax.set_xlim(-lim, lim)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{report.dataset}: paired differences on the {report.n_items} common cards"
                 " (orange: the CI excludes 0)", fontsize=9)


# ---- predicted vs actual ---------------------------------------------------------------
def _draw_scatter(fig: Figure, report: ComparisonReport, models: list[str],
                  colours: dict[str, str]) -> None:
    axes = fig.subplots(1, len(models), squeeze=False, sharex=True, sharey=True)[0]
    classes = np.asarray(report.quantity_classes, dtype=float)
    span = float(classes.max() - classes.min()) if len(classes) > 1 else 100.0
    jitter = 0.025 * span
    rng = np.random.default_rng(0)  # fixed jitter: the same report gives the same picture
    s = report.summary.set_index("model")
    for ax, m in zip(axes, models, strict=True):
        y_true, y_pred = report.scores[m]
        x = y_true + rng.uniform(-jitter, jitter, len(y_true))
        yj = y_pred + (rng.uniform(-jitter, jitter, len(y_pred))
                       if report.kinds[m] == "classifier" else 0.0)
        lo = min(classes.min(), float(np.min(y_pred))) - 2 * jitter
        hi = max(classes.max(), float(np.max(y_pred))) + 2 * jitter
        ax.plot([lo, hi], [lo, hi], color="#888888", lw=1, ls="--", label="perfect")
        ax.scatter(x, yj, s=22, alpha=0.7, color=colours[m], edgecolors="none")
        ax.set_xticks(classes)
        ax.set_xlabel("labelled concentration (%)", fontsize=8)
        ax.set_title(f"{m} ({report.kinds[m]})\nRMSE {s.loc[m, 'rmse']:.3g}, "
                     f"MAE {s.loc[m, 'mae']:.3g}, n={len(y_true)}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("predicted concentration (%)", fontsize=8)


# ---- per-class accuracy ------------------------------------------------------------------
def _present_labels(report: ComparisonReport, models: list[str]) -> list[object]:
    """Classes that occur among the items (support > 0): no empty classes drawn."""
    first = report.per_class[models[0]]
    return [lab for lab, n in zip(first["label"], first["support"], strict=True) if n > 0]


def _draw_per_class(fig: Figure, report: ComparisonReport,
                    groups: list[tuple[str, list[str]]], colours: dict[str, str]) -> None:
    widths = [max(1, len(_present_labels(report, ms))) * (len(ms) + 1) for _, ms in groups]
    axes = fig.subplots(1, len(groups), squeeze=False, width_ratios=widths)[0]
    for ax, (lt, ms) in zip(axes, groups, strict=True):
        labels = _present_labels(report, ms)
        x = np.arange(len(labels))
        width = 0.8 / len(ms)
        for i, m in enumerate(ms):
            pc = report.per_class[m].set_index("label").loc[labels]
            acc = pc["recall"].to_numpy(dtype=float)
            err = np.vstack([np.clip(acc - pc["recall_ci_low"].to_numpy(dtype=float), 0, None),
                             np.clip(pc["recall_ci_high"].to_numpy(dtype=float) - acc, 0,
                                     None)])
            ax.bar(x - 0.4 + width * (i + 0.5), acc, width * 0.9, yerr=err, capsize=2,
                   color=colours[m], label=m, error_kw={"lw": 1, "ecolor": "#333333"})
        support = report.per_class[ms[0]].set_index("label").loc[labels, "support"]
        ax.set_xticks(x)
        ax.set_xticklabels([f"{lab}\nn={int(n)}" for lab, n in zip(labels, support,
                                                                    strict=True)],
                           fontsize=7.5, rotation=0 if len(labels) <= 6 else 45)
        ax.set_ylim(0, 1.22)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel("accuracy within class (recall)", fontsize=8)
        ax.set_title(f"{lt} classes", fontsize=9)
        ax.legend(fontsize=7, loc="upper center", ncol=min(len(ms), 4), framealpha=0.9)
        ax.grid(axis="y", alpha=0.3)


# ---- confusion ---------------------------------------------------------------------------
def _nonempty(conf: pd.DataFrame) -> pd.DataFrame:
    """Drop classes that neither occur nor are predicted (an all-zero row and column)."""
    mat = conf.to_numpy()
    keep = (mat.sum(axis=0) + mat.sum(axis=1)) > 0
    return conf.loc[keep, keep]


def _draw_confusion(fig: Figure, model: str, conf: pd.DataFrame) -> None:
    ax: Axes = fig.subplots()
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
