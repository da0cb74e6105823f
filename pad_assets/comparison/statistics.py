"""Paired statistics for the model comparison: small, exact, and testable on their own.

Kept apart from scoring so each estimator can be checked against an independent reference
(scipy, textbook values) without building a report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InvalidInputError


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
                  classes: Sequence[float] = (0.0, 20.0, 50.0, 80.0, 100.0)) -> np.ndarray:
    """Each value snapped to the nearest class (ties go to the lower class)."""
    v = np.asarray(list(values), dtype=np.float64)
    cls = np.sort(np.asarray(classes, dtype=np.float64))
    if v.size == 0:
        return v
    return cls[np.argmin(np.abs(v[:, None] - cls[None, :]), axis=1)]

