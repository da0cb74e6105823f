"""Fair, paired comparison of several models' results on one dataset.

A difference between two models only means something if both were scored on the same
cards, so every model is scored on the identical item set: the cards that every model
scored (status ``ok``, ground truth known) *and* saw as the same image bytes (same
``raw_key``). One model's failure therefore removes that card for all models, and the
report says how many cards each model lost and why, plus a hash of the item set so two
reports can be checked for comparability at a glance.

Because the items are shared, the statistics are paired: McNemar's exact test on the
discordant cards, Newcombe's paired interval for accuracy differences, and a BCa bootstrap
that resamples *cards* (the same resample for every model) for RMSE differences, so the
interval of a difference reflects the pairing instead of two independent sampling errors.
Single-model accuracies get Wilson intervals. ``statistics`` says why each holds at lab
sizes (40-200 cards).

Modules: ``scoring`` (validation, the item set, per-model metrics), ``statistics``
(intervals and tests, NumPy and the standard library only), ``compare``
(``compare_results``), ``report`` (``ComparisonReport``: text, Markdown, HTML, files,
notebook view), ``figures`` (PNGs drawn without pyplot, a notebook view of them).
"""

from .compare import compare_results
from .figures import Figures, render_figures
from .report import ComparisonReport
from .scoring import (
    LABEL_TYPES,
    PAIRWISE_COLUMNS,
    PER_CLASS_COLUMNS,
    QUANTITY_CLASSES,
    REQUIRED_COLUMNS,
    SUMMARY_COLUMNS,
    item_set_hash,
)
from .statistics import (
    bca_interval,
    cohen_kappa,
    mcnemar_exact_p,
    nearest_class,
    paired_difference_interval,
    rmse_difference_statistic,
    rmse_statistic,
    wilson_interval,
)

__all__ = [
    "LABEL_TYPES", "PAIRWISE_COLUMNS", "PER_CLASS_COLUMNS", "QUANTITY_CLASSES",
    "REQUIRED_COLUMNS", "SUMMARY_COLUMNS", "ComparisonReport", "Figures", "bca_interval",
    "cohen_kappa", "compare_results", "item_set_hash", "mcnemar_exact_p", "nearest_class",
    "paired_difference_interval", "render_figures", "rmse_difference_statistic",
    "rmse_statistic", "wilson_interval",
]
