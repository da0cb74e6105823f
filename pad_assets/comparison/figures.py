"""PNG figures of a comparison report, drawn without pyplot."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .scoring import LABEL_TYPES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .report import ComparisonReport


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


