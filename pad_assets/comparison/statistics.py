"""Statistics that hold at lab sizes (40-200 cards), each testable on its own.

Why these estimators (a percentile bootstrap of an accuracy gives [1, 1] at n = 42 when a
model is right on every card, which claims a certainty 42 cards cannot give):

* **Accuracy: Wilson score interval.** Its coverage stays close to 95% at small n and it
  never collapses at 0 or 1 successes (42/42 gives [0.916, 1]); Clopper-Pearson is the
  exact-coverage alternative but is conservative (wider than needed, ~97-99% actual
  coverage at these sizes), which would hide real differences between models. Brown, Cai
  and DasGupta (2001) recommend Wilson for small n.
* **Paired accuracy difference: Newcombe's square-and-add interval** (Newcombe 1998,
  method 10), built from the two Wilson intervals and the correlation of the paired table;
  recommended by Fagerland, Lydersen and Laake (2014) for paired proportions. It stays
  informative when two models agree on every card (b = c = 0), where any bootstrap of the
  difference gives [0, 0].
* **RMSE and its paired difference: BCa bootstrap** (Efron 1987): bias-corrected and
  accelerated percentiles, second-order accurate where the plain percentile interval of a
  skewed statistic like RMSE is not. Cards are resampled with one shared resample for
  every model (same seed, same item count), so intervals of differences are paired.
* **McNemar's exact test** on the discordant cards (the binomial tail, exact integers).

Only NumPy and the standard library (``statistics.NormalDist``) are used, so scipy stays a
test-only reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from statistics import NormalDist
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



# ---- intervals -------------------------------------------------------------------------
_CHUNK_ELEMENTS = 2_000_000  # bounds the memory of a resample (or jackknife) index matrix
_NORMAL = NormalDist()


def _z(confidence: float) -> float:
    if not 0.0 < float(confidence) < 1.0:
        raise InvalidInputError(f"confidence must be between 0 and 1, got {confidence!r}")
    return _NORMAL.inv_cdf(0.5 + float(confidence) / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = 0.95
                    ) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (NaNs when ``n == 0``)."""
    k, n = int(successes), int(n)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise InvalidInputError(f"wilson_interval needs 0 <= successes <= n, got {k} of {n}")
    if n == 0:
        return math.nan, math.nan
    z = _z(confidence)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exact at the edges (rounding would otherwise leave 1 - 1e-16 for 42/42).
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def paired_difference_interval(both: int, only_a: int, only_b: int, neither: int,
                               confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's square-and-add interval of ``p_a - p_b`` from a paired 2x2 table.

    ``both``: cards both models got right; ``only_a``/``only_b``: right for one model only
    (McNemar's b and c); ``neither``: wrong for both. Newcombe (1998) method 10, with the
    continuity-corrected correlation ``phi`` he specifies; matches Fagerland, Lydersen and
    Laake, *Statistical Analysis of Contingency Tables* (2017), ch. 8.
    """
    cells = [int(v) for v in (both, only_a, only_b, neither)]
    if min(cells) < 0:
        raise InvalidInputError(f"paired 2x2 counts must be >= 0, got {cells}")
    n11, n12, n21, n22 = cells
    n = sum(cells)
    if n == 0:
        return math.nan, math.nan
    pa, pb = (n11 + n12) / n, (n11 + n21) / n
    la, ua = wilson_interval(n11 + n12, n, confidence)
    lb, ub = wilson_interval(n11 + n21, n, confidence)
    marg = (n11 + n12) * (n21 + n22) * (n11 + n21) * (n12 + n22)
    ad_bc = n11 * n22 - n12 * n21
    num = max(ad_bc - n / 2, 0.0) if ad_bc > 0 else float(ad_bc)
    phi = num / math.sqrt(marg) if marg else 0.0
    d = pa - pb
    lo = d - math.sqrt(max(0.0, (pa - la) ** 2 - 2 * phi * (pa - la) * (ub - pb)
                           + (ub - pb) ** 2))
    hi = d + math.sqrt(max(0.0, (ua - pa) ** 2 - 2 * phi * (ua - pa) * (pb - lb)
                           + (pb - lb) ** 2))
    return max(-1.0, lo), min(1.0, hi)


Statistic = Callable[..., np.ndarray]


def bca_interval(data: Sequence[np.ndarray], statistic: Statistic, n_resamples: int = 2000,
                 seed: int = 0, confidence: float = 0.95,
                 jackknife: np.ndarray | None = None) -> tuple[float, float]:
    """BCa bootstrap interval of ``statistic(*data)``, resampling items jointly.

    ``data``: 1-d arrays of equal length, one value per item; every array is resampled with
    the *same* indices (paired), so a difference of two models' metrics keeps its pairing.
    ``statistic(*arrays, axis=-1)`` must reduce along ``axis`` (vectorised, like
    ``scipy.stats.bootstrap`` with ``vectorized=True``). The resamples depend only on
    ``(seed, n items, n_resamples)``, so every call with one seed sees the same resamples.
    ``jackknife``: the statistic with each item left out, when the caller can compute it
    in O(n) (for RMSE, from leave-one-out means); otherwise it is computed by evaluating
    ``statistic`` n times, which costs O(n^2). NaNs when ``n_resamples == 0`` or there are
    fewer than 2 items.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in data]
    if not arrays or any(a.ndim != 1 or len(a) != len(arrays[0]) for a in arrays):
        raise InvalidInputError("bca_interval needs 1-d arrays of one equal length")
    n = len(arrays[0])
    z = _z(confidence)
    if n_resamples < 0:
        raise InvalidInputError(f"n_resamples must be >= 0, got {n_resamples}")
    if n_resamples == 0 or n < 2:
        return math.nan, math.nan
    theta = float(statistic(*arrays, axis=-1))
    boot = _resampled(arrays, statistic, n_resamples, seed)
    jack = (_jackknife(arrays, statistic) if jackknife is None
            else np.asarray(jackknife, dtype=np.float64))
    if jack.shape != (n,):
        raise InvalidInputError(f"jackknife must hold one value per item ({n}), got "
                                f"shape {jack.shape}")
    # Bias correction: ties count half, so a bootstrap distribution that is a point mass at
    # theta gives z0 = 0 (and the interval [theta, theta]) instead of an infinite z0.
    below = (np.count_nonzero(boot < theta) + 0.5 * np.count_nonzero(boot == theta)) / len(boot)
    if not 0.0 < below < 1.0:  # theta outside the bootstrap distribution: BCa undefined
        lo, hi = np.percentile(boot, [50 * (1 - confidence), 50 * (1 + confidence)])
        return float(lo), float(hi)
    z0 = _NORMAL.inv_cdf(below)
    dev = jack.mean() - jack
    denom = 6.0 * float(np.sum(dev ** 2)) ** 1.5
    accel = float(np.sum(dev ** 3)) / denom if denom > 0 else 0.0
    qs = []
    for zq in (-z, z):
        shifted = z0 + zq
        qs.append(100 * _NORMAL.cdf(z0 + shifted / (1 - accel * shifted)))
    lo, hi = np.percentile(boot, qs)
    return float(lo), float(hi)


def _resampled(arrays: list[np.ndarray], statistic: Statistic, n_resamples: int, seed: int
               ) -> np.ndarray:
    """The statistic on each bootstrap resample, drawn in memory-bounded chunks."""
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    out = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, min(n_resamples, _CHUNK_ELEMENTS // n))
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = statistic(*(a[idx] for a in arrays), axis=-1)
    return out


def _jackknife(arrays: list[np.ndarray], statistic: Statistic) -> np.ndarray:
    """The statistic with each item left out in turn, in memory-bounded chunks."""
    n = len(arrays[0])
    out = np.empty(n, dtype=np.float64)
    cols = np.arange(n - 1)
    chunk = max(1, _CHUNK_ELEMENTS // max(n - 1, 1))
    for start in range(0, n, chunk):
        left_out = np.arange(start, min(start + chunk, n))
        idx = cols[None, :] + (cols[None, :] >= left_out[:, None])
        out[start:start + len(left_out)] = statistic(*(a[idx] for a in arrays), axis=-1)
    return out


def rmse_statistic(sqerr: np.ndarray, axis: int = -1) -> np.ndarray:
    """RMSE from per-item squared errors (vectorised for ``bca_interval``)."""
    return np.sqrt(np.mean(sqerr, axis=axis))


def rmse_jackknife(*sqerrs: np.ndarray) -> np.ndarray:
    """Leave-one-out RMSE (one array) or RMSE difference (two arrays), in O(n)."""
    loo = [np.sqrt((np.sum(se) - se) / (len(se) - 1)) for se in
           (np.asarray(a, dtype=np.float64) for a in sqerrs)]
    return loo[0] if len(loo) == 1 else loo[0] - loo[1]


def rmse_difference_statistic(sqerr_a: np.ndarray, sqerr_b: np.ndarray, axis: int = -1
                              ) -> np.ndarray:
    """RMSE(a) - RMSE(b) on the same items (vectorised for ``bca_interval``)."""
    return rmse_statistic(sqerr_a, axis) - rmse_statistic(sqerr_b, axis)
