"""Runs the released PAD tool (``pad-analytics``) unmodified, inside its own virtualenv.

Executed by ``benchmarks/real_tool.py`` with the venv's interpreter; imports nothing from
pad_assets (the venv does not have it). Two modes, each writing one JSON document:

* ``predict``: ``pad_analytics.padanalytics.predict(card_id, model_id)`` per card and model,
  timed per call, against the project's emulator. The tool hard-codes
  ``https://pad.crc.nd.edu`` (``API_URL``, a local ``pad_url`` in ``predict``, and the
  weights URL it receives); the only change made is that host: every URL that starts with
  it is rewritten to the emulator's base URL, at the two doors the tool's HTTP goes through
  (``requests`` sessions and ``urllib.request.urlretrieve``). Its algorithms, its parsing
  and its prints are left alone (its prints go to stderr so stdout stays clean).
* ``pls-features``: ``regionRoutine.fullRoutine(img, intensityFind.findMaxIntensitiesFiltered,
  {}, True, 10)`` on PNG files read with ``cv.imread``, exactly as ``pls.quantity`` calls it;
  the call alone is timed (B5's baseline).

Run in a fresh working directory: ``predict`` saves model weights under their basename in
the current directory and reuses any file of that name that is already there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

REAL_HOST = "https://pad.crc.nd.edu"


def _install_host_rewrite(base_url: str) -> dict[str, int]:
    """Send the tool's requests to ``base_url`` instead of the PAD server; count them."""
    import urllib.request

    import requests

    base = base_url.rstrip("/")
    counts = {"rewritten": 0, "other": 0}

    def rewrite(url: str) -> str:
        if isinstance(url, str) and url.startswith(REAL_HOST):
            counts["rewritten"] += 1
            return base + url[len(REAL_HOST):]
        counts["other"] += 1
        return url

    session_request = requests.sessions.Session.request

    def request(self, method, url, *args, **kwargs):  # noqa: ANN001, ANN202
        return session_request(self, method, rewrite(url), *args, **kwargs)

    requests.sessions.Session.request = request
    urlretrieve = urllib.request.urlretrieve

    def retrieve(url, *args, **kwargs):  # noqa: ANN001, ANN202
        return urlretrieve(rewrite(url), *args, **kwargs)

    urllib.request.urlretrieve = retrieve
    return counts


def _plain(value):  # noqa: ANN001, ANN202
    """JSON-able copy of the tool's return values (numpy scalars, tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def predict_mode(args: argparse.Namespace) -> dict:
    counts = _install_host_rewrite(args.base_url)
    with contextlib.redirect_stdout(sys.stderr):
        from pad_analytics import padanalytics as pad

    out = []
    for model_id in args.models:
        if args.warmup:  # weights download + TensorFlow start-up, not timed
            with contextlib.redirect_stdout(sys.stderr):
                pad.predict(args.cards[0], model_id)
        for card_id in args.cards:
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):
                actual, prediction = pad.predict(card_id, model_id)
            wall = time.perf_counter() - t0
            out.append({"card_id": card_id, "model_id": model_id, "actual": _plain(actual),
                        "prediction": _plain(prediction), "seconds": wall,
                        "cpu_seconds": time.process_time() - cpu0})
    return {"results": out, "requests": counts}


def features_mode(args: argparse.Namespace) -> dict:
    import cv2 as cv

    with contextlib.redirect_stdout(sys.stderr):
        from pad_analytics import intensityFind, regionRoutine

    names = [f"{letter}{region + 1}-{colour}" for letter in "ABCDEFGHIJKL"
             for region in range(10) for colour in "RGB"]
    out = []
    for path in args.images:
        img = cv.imread(path)
        if img is None:
            raise SystemExit(f"{path}: cv.imread could not read it")
        t0 = time.perf_counter()
        f = regionRoutine.fullRoutine(img, intensityFind.findMaxIntensitiesFiltered, {}, True, 10)
        seconds = time.perf_counter() - t0
        out.append({"image": path, "features": [int(f[n]) for n in names], "seconds": seconds})
    return {"results": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("predict")
    p.add_argument("--base-url", required=True)
    p.add_argument("--cards", type=int, nargs="+", required=True)
    p.add_argument("--models", type=int, nargs="+", required=True)
    p.add_argument("--warmup", action="store_true", help="one untimed call per model first")
    f = sub.add_parser("pls-features")
    f.add_argument("images", nargs="+")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    from importlib.metadata import version

    doc = predict_mode(args) if args.mode == "predict" else features_mode(args)
    doc.update(pad_analytics_version=version("pad-analytics"), python=sys.version.split()[0],
               cwd=os.getcwd())
    with open(args.out, "w") as fh:
        json.dump(doc, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
