"""Time the vectorised PLS features against the released PAD tool on synthetic cards.

Usage: ``python benchmarks/bench_pls.py [--cards N] [--reference]`` (run from the repository
root). The baseline is ``pad-analytics`` 0.2.2 itself, unmodified, in its own virtualenv
(``real_tool.py``; created on first use): its ``regionRoutine.fullRoutine(img,
intensityFind.findMaxIntensitiesFiltered, {}, True, 10)`` on each card's PNG as
``cv.imread`` reads it, the call alone timed in the child process. pad_assets:
``pls_features_from_rgb`` on the same pixels (decoded RGB), median of a few runs.
``--reference`` also times the project's per-pixel test reference
(``pad_assets_tests/pls_reference.py``), to show what it costs next to the real tool.

Prints one ``metric: value`` line per metric; the identical-features line is the point of
the exercise, the ratio is the reason for it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import real_tool  # noqa: E402
from pad_assets.preprocessing.pls import pls_features_from_rgb  # noqa: E402
from pad_assets_tests.pls_reference import card_rgb, png_bytes, reference_features  # noqa: E402


def _median_of(fn, repeats: int) -> float:
    """Median of a few runs (not the best: the baseline gets a single, unflattered run)."""
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
    parser.add_argument("--reference", action="store_true",
                        help="also time the per-pixel test reference")
    parser.add_argument("--out", type=Path, default=real_tool.DEFAULT_OUT,
                        help="where the pad-analytics virtualenv lives")
    args = parser.parse_args(argv)

    python = real_tool.ensure_venv(args.out, lambda m: print(m, file=sys.stderr))
    cards = [card_rgb(i) for i in range(args.cards)]
    pls_features_from_rgb(cards[0])  # warm-up: cv2 import, weight grids

    with tempfile.TemporaryDirectory(prefix="bench-pls-") as tmp:
        paths = []
        for i, rgb in enumerate(cards):
            paths.append(Path(tmp) / f"{i}.png")
            paths[-1].write_bytes(png_bytes(rgb))
        tool = real_tool.pls_features(python, paths)["results"]

    fast_times, tool_times, ref_times, identical, identical_ref = [], [], [], 0, 0
    for rgb, t in zip(cards, tool, strict=True):
        fast_times.append(_median_of(lambda rgb=rgb: pls_features_from_rgb(rgb), args.repeats))
        fast = pls_features_from_rgb(rgb)
        tool_times.append(t["seconds"])
        identical += int(np.array_equal(fast, np.array(t["features"], dtype=np.int64)))
        if args.reference:
            start = time.perf_counter()
            ref = reference_features(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            ref_times.append(time.perf_counter() - start)
            identical_ref += int(np.array_equal(fast, ref))

    fast_ms = statistics.median(fast_times) * 1e3
    tool_ms = statistics.median(tool_times) * 1e3
    print(f"cards: {args.cards}")
    print("baseline: pad-analytics 0.2.2 regionRoutine.fullRoutine (real tool, own venv)")
    print(f"vectorised_ms_per_card_median: {fast_ms:.2f}")
    print(f"real_tool_ms_per_card_median: {tool_ms:.1f}")
    print(f"speedup: {tool_ms / fast_ms:.0f}x")
    print(f"identical_features: {identical}/{args.cards}")
    if args.reference:
        print(f"reference_ms_per_card_median: {statistics.median(ref_times) * 1e3:.1f}")
        print(f"identical_to_reference: {identical_ref}/{args.cards}")
    ok = identical == args.cards and (not args.reference or identical_ref == args.cards)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
