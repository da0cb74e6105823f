"""Baseline: today's per-card flow of the public PAD tool, re-implemented faithfully.

``pad_analytics.padanalytics.predict(card_id, model_id)`` does, for every card:

1. ``get_card(card_id)``: ``requests.get(f"{API_URL}/cards/{id}")`` -> ``pd.json_normalize``;
2. ``get_model(model_id)``: ``GET /neural-networks/{id}`` -> ``pd.json_normalize``; the
   weights file is downloaded only if ``os.path.exists(model_file)`` is false;
3. ``get_model(model_id)`` AGAIN to "fix label names";
4. ``nn_predict(image_url, model_file, labels)``: ``requests.get(image_url)``,
   ``Image.open(BytesIO(content))``, ``crop((71, 359, 707, 849))``,
   ``resize((454, 454), Image.BICUBIC)``,
   ``np.asarray(img).flatten().reshape(1, 454, 454, 3).astype(np.float32)``, a NEW
   ``tf.lite.Interpreter(model_path=...)`` + ``allocate_tensors()``, ``set_tensor``,
   ``invoke``, ``tf.nn.softmax`` and ``tf.reduce_logsumexp``.

Plain ``requests.get`` (no session: a new connection per request) and the default
interpreter threads, as in the original. The original sets
``ImageFile.LOAD_TRUNCATED_IMAGES = True`` at import for the whole process; here it is set
only while the baseline runs and restored afterwards, so it cannot change how pad_assets
decodes in the same benchmark process.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def standardize_names(name: Any) -> str:
    return str(name).lower().replace(" ", "-")


@contextlib.contextmanager
def truncated_tolerance() -> Iterator[None]:
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


class PadAnalyticsBaseline:
    """``predict(card_id, model_id)`` of pad-analytics against ``base_url``."""

    def __init__(self, base_url: str, workdir: Path) -> None:
        self.pad_url = base_url.rstrip("/") + "/"
        self.api_url = f"{base_url.rstrip('/')}/api/v2"
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def get_data_api(self, request_url: str) -> Any:
        import pandas as pd
        import requests

        r = requests.get(url=request_url, verify=False)
        r.raise_for_status()
        return pd.json_normalize(r.json())

    def get_card(self, card_id: int) -> Any:
        return self.get_data_api(f"{self.api_url}/cards/{card_id}")

    def get_model(self, model_id: int) -> Any:
        return self.get_data_api(f"{self.api_url}/neural-networks/{model_id}")

    def download(self, url: str, path: Path) -> None:
        import requests

        response = requests.get(url, stream=True, verify=False)
        response.raise_for_status()
        with open(path, "wb") as f:
            for chunk in response.iter_content(1024):
                f.write(chunk)

    def nn_predict(self, image_url: str, model_path: str, labels: Sequence[str]) -> tuple:
        import numpy as np
        import requests
        import tensorflow as tf
        from PIL import Image

        response = requests.get(image_url)
        response.raise_for_status()
        img = Image.open(io.BytesIO(response.content))
        img = img.crop((71, 359, 71 + 636, 359 + 490))
        img = img.resize((454, 454), Image.BICUBIC)
        im = np.asarray(img).flatten().reshape(1, 454, 454, 3).astype(np.float32)
        interpreter = tf.lite.Interpreter(model_path=model_path)
        interpreter.allocate_tensors()
        input_details = interpreter.get_input_details()
        output_details = interpreter.get_output_details()
        interpreter.set_tensor(input_details[0]["index"], im)
        interpreter.invoke()
        result = interpreter.get_tensor(output_details[0]["index"])
        num_label = np.argmax(result[0])
        prediction = labels[num_label]
        probability = tf.nn.softmax(result[0])[num_label].numpy()
        energy = tf.reduce_logsumexp(result[0], -1)
        return prediction, probability, energy.numpy()

    def predict(self, card_id: int, model_id: int) -> tuple[Any, tuple]:
        card_df = self.get_card(card_id)
        model_df = self.get_model(model_id)
        model_url = model_df.weights_url.values[0]
        model_file = str(self.workdir / os.path.basename(model_url))
        if not os.path.exists(model_file):
            self.download(model_url, Path(model_file))
        labels = model_df.labels[0]
        try:
            labels = list(map(int, labels))
            labels_type = "concentration"
        except (TypeError, ValueError):
            labels = list(map(standardize_names, labels))
            labels_type = "api"
        actual_api = standardize_names(card_df.sample_name.values[0])
        actual = card_df.quantity.values[0] if labels_type == "concentration" else actual_api
        labels = list(map(standardize_names, self.get_model(model_id).labels.values[0]))
        image_url = self.pad_url + card_df.processed_file_location.values[0]
        return actual, self.nn_predict(image_url, model_file, labels)


def time_baseline(base_url: str, workdir: Path, card_ids: Sequence[int], model_id: int
                  ) -> dict[str, Any]:
    """Per-card wall times of ``predict`` over ``card_ids`` (the model file already local).

    The first card downloads the weights (the original's ``os.path.exists`` check); it is
    run once before timing so every timed card sees the steady state.
    """
    base = PadAnalyticsBaseline(base_url, workdir)
    times: list[float] = []
    cpu: list[float] = []
    preds = []
    with truncated_tolerance():
        base.predict(int(card_ids[0]), model_id)  # weights download + TF warm-up
        for cid in card_ids:
            c0 = time.process_time()
            t0 = time.perf_counter()
            preds.append(base.predict(int(cid), model_id))
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {"cards": len(times), "per_card_s": times, "per_card_cpu_s": cpu,
            "median_s": statistics.median(times), "mean_s": statistics.fmean(times),
            "median_cpu_s": statistics.median(cpu),
            "labels": {int(c): p[1][0] for c, p in zip(card_ids, preds, strict=True)}}
