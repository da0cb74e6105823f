"""Baseline of B1 and B4: the released PAD tool itself, ``pad-analytics`` 0.2.2, unmodified.

``pad_analytics.padanalytics.predict(card_id, model_id)`` does, for every card:

1. ``get_card(card_id)``: ``requests.get(f"{API_URL}/cards/{id}")`` -> ``pd.json_normalize``;
2. ``get_model(model_id)``: ``GET /neural-networks/{id}`` -> ``pd.json_normalize``; the
   weights file is downloaded only if ``os.path.exists(model_file)`` is false;
3. ``get_model(model_id)`` AGAIN to "fix label names";
4. ``nn_predict(image_url, model_file, labels)``: ``requests.get(image_url)``, PIL open,
   ``crop((71, 359, 707, 849))``, ``resize((454, 454), Image.BICUBIC)``, float32 reshape, a
   NEW ``tf.lite.Interpreter(model_path=...)`` + ``allocate_tensors()``, ``set_tensor``,
   ``invoke``, ``tf.nn.softmax`` and ``tf.reduce_logsumexp``.

It runs in its own virtualenv (``real_tool.py``), in a child process, against the same
emulator as pad_assets with only its host rewritten. The child times each ``predict`` call
(wall and its own CPU time); the first card is run once untimed first (weights download,
TensorFlow start-up), as before. Until 2026-11-30 the baseline was a statement-by-statement
re-implementation of the steps above, run in the benchmark process; RESULTS.md compares the
two timings.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import real_tool


def standardize_names(name: Any) -> str:
    """pad-analytics' label standardisation (lower case, spaces to hyphens)."""
    return str(name).lower().replace(" ", "-")


def time_baseline(base_url: str, workdir: Path, card_ids: Sequence[int], model_id: int
                  ) -> dict[str, Any]:
    """Per-card wall and CPU times of the real tool's ``predict`` over ``card_ids``.

    ``workdir`` is where the tool's virtualenv lives (``<workdir>/../pad-analytics-0.2.2``,
    i.e. ``benchmarks/out``); the tool itself runs in a fresh temporary directory.
    """
    python = real_tool.ensure_venv(Path(workdir).parent)
    doc = real_tool.predict(python, base_url, [int(c) for c in card_ids], [model_id],
                            warmup=True)
    results = doc["results"]
    times = [r["seconds"] for r in results]
    cpu = [r["cpu_seconds"] for r in results]
    return {"cards": len(times), "per_card_s": times, "per_card_cpu_s": cpu,
            "median_s": statistics.median(times), "mean_s": statistics.fmean(times),
            "median_cpu_s": statistics.median(cpu), "tool": doc["pad_analytics_version"],
            "labels": {int(r["card_id"]): standardize_names(r["prediction"][0])
                       for r in results}}
