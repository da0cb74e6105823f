"""Time the vectorised PLS features against the per-pixel original on synthetic cards.

Usage: ``python benchmarks/bench_pls.py [--cards N]``
(run from the repository root). Prints one ``metric: value`` line per metric; the
identical-features line is the point of the exercise, the ratio is the reason for it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pad_assets.preprocessing.pls import pls_features_from_rgb  # noqa: E402
from pad_assets_tests.pls_reference import card_rgb, reference_features  # noqa: E402


def _median_of(fn, repeats: int) -> float:
    """Median of a few runs (not the best: the reference gets a single, unflattered run)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=20, help="number of synthetic cards")
    parser.add_argument("--repeats", type=int, default=5, help="vectorised runs per card")
    args = parser.parse_args(argv)

    cards = [card_rgb(i) for i in range(args.cards)]
    pls_features_from_rgb(cards[0])  # warm-up: cv2 import, weight grids

    fast_times, ref_times, identical = [], [], 0
    for rgb in cards:
        fast_times.append(_median_of(lambda rgb=rgb: pls_features_from_rgb(rgb), args.repeats))
        fast = pls_features_from_rgb(rgb)
        start = time.perf_counter()
        # The reference includes the RGB->BGR conversion the original did not need.
        ref = reference_features(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        ref_times.append(time.perf_counter() - start)
        identical += int(np.array_equal(fast, ref))

    fast_ms = statistics.median(fast_times) * 1e3
    ref_ms = statistics.median(ref_times) * 1e3
    print(f"cards: {args.cards}")
    print(f"vectorised_ms_per_card_median: {fast_ms:.2f}")
    print(f"reference_ms_per_card_median: {ref_ms:.1f}")
    print(f"speedup: {ref_ms / fast_ms:.0f}x")
    print(f"identical_features: {identical}/{args.cards}")
    return 0 if identical == args.cards else 1


if __name__ == "__main__":
    sys.exit(main())
