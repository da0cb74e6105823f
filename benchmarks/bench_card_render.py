"""Emulator card rendering speed (moved here from a timed unit test, issue 18).

``python -m benchmarks.bench_card_render [--cards 20]``

Renders ``--cards`` synthetic PAD cards (730x1220 PNG) after one warm-up card and prints
one JSON line: seconds per card against the 0.5 s target (~40 ms on one idle core). The
emulator renders a card per request when no pre-rendered file exists, so this bounds how
fast a cold test or benchmark world can be served. Exit status 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from pad_assets.devtools.emulator.synthetic import card_png

TARGET_SECONDS_PER_CARD = 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=20)
    args = parser.parse_args(argv)
    card_png(10020)  # warm the template and noise pool
    t0 = time.perf_counter()
    for c in range(10020, 10020 + args.cards):
        card_png(c)
    per_card = (time.perf_counter() - t0) / args.cards
    ok = per_card < TARGET_SECONDS_PER_CARD
    print(json.dumps({"benchmark": "card_render", "cards": args.cards,
                      "seconds_per_card": round(per_card, 4),
                      "target": TARGET_SECONDS_PER_CARD, "pass": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
