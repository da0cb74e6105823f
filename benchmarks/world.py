"""The benchmark's world: card files, the MobileNetV2 stand-in models, the emulator.

* Cards: 730x1220 RGB PNGs of ~1.5 MB. By default the emulator's own synthetic cards
  (``synthetic.card_png``), rendered ONCE into ``<out>/cards/<tag>/{id}_processed.png`` and
  served through the emulator's static-file path (``real_images_dir``). A real image host
  serves static files; rendering on request would add ~65 ms of emulator CPU per image on
  the same 2 cores as the client under test, for the baseline and pad_assets alike.
  ``--real-images DIR``: the real files of DIR are served instead, cycled over the card ids;
  each copy gets a distinct ``tEXt`` chunk after ``IHDR`` (same pixels, same decode cost,
  unique bytes and md5), otherwise the raw layer would rightly deduplicate them.
* Models: ``keras.applications.MobileNetV2(weights=None, input_shape=(454, 454, 3))``
  converted with ``tf.lite.TFLiteConverter.from_keras_model`` (dynamic batch dimension),
  cached under ``<out>/models/`` keyed by TensorFlow/Keras versions. Built in a subprocess so
  the benchmark process never imports Keras/TensorFlow's training stack.
* Emulator: in-process, 127.0.0.1, no demo models (they would also claim ids 16-18); the
  MobileNetV2 models are published as ids 16 (23 drug labels) and 17 (5 concentration
  labels, a different network) with ``emu.add_model``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIRST_CARD = 10000
CONCENTRATION_LABELS = ["0", "100", "20", "50", "80"]


# ---------------------------------------------------------------------------- cards
def _png_with_text(data: bytes, text: str) -> bytes:
    """``data`` with a tEXt chunk inserted right after IHDR (pixels untouched)."""
    sig, ihdr_len = data[:8], struct.unpack(">I", data[8:12])[0]
    end = 8 + 12 + ihdr_len
    payload = b"Comment\x00" + text.encode()
    chunk = struct.pack(">I", len(payload)) + b"tEXt" + payload
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + payload) & 0xFFFFFFFF)
    return sig + data[8:end] + chunk + data[end:]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def card_folder(out: Path, n_cards: int, real_images: Path | None = None,
                log: Any = print) -> Path:
    """A folder holding ``{id}_processed.png`` for ids FIRST_CARD .. FIRST_CARD+n-1."""
    import numpy as np

    from pad_assets.devtools.emulator import synthetic

    ids = range(FIRST_CARD, FIRST_CARD + n_cards)
    if real_images is None:
        folder = out / "cards" / f"{synthetic.RENDERER_VERSION}-np{np.__version__}"
        sources: list[bytes] = []
    else:
        files = sorted(Path(real_images).glob("*.png"))
        if not files:
            raise SystemExit(f"--real-images {real_images}: no *.png files")
        digest = hashlib.sha256(b"".join(f.name.encode() + f.read_bytes()[:4096]
                                         for f in files)).hexdigest()[:12]
        folder = out / "cards" / f"real-{digest}"
        sources = [f.read_bytes() for f in files]
    folder.mkdir(parents=True, exist_ok=True)
    todo = [c for c in ids if not (folder / f"{c}_processed.png").is_file()]
    if not todo:
        return folder

    def make(cid: int) -> None:
        if sources:
            data = _png_with_text(sources[(cid - FIRST_CARD) % len(sources)],
                                  f"pad_assets benchmark copy for card {cid}")
        else:
            a = synthetic.card_attributes(cid)
            data = synthetic.card_png(cid, drug=a.drug, quantity=a.quantity, camera=a.camera)
        _write_atomic(folder / f"{cid}_processed.png", data)

    log(f"  writing {len(todo)} card files into {folder} (once; reused by later runs)")
    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        for i, _ in enumerate(pool.map(make, todo), 1):
            if i % 500 == 0:
                log(f"    {i}/{len(todo)}")
    return folder


# ---------------------------------------------------------------------------- models
_BUILD_SCRIPT = r"""
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, tensorflow as tf
classes, seed, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
keras.utils.set_random_seed(seed)
model = keras.applications.MobileNetV2(weights=None, input_shape=(454, 454, 3),
                                       classes=classes, classifier_activation=None)
data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
tmp = path + ".tmp"
open(tmp, "wb").write(data)
os.replace(tmp, path)
print(json.dumps({"params": int(model.count_params()), "bytes": len(data)}))
"""


def tf_versions() -> str:
    from importlib.metadata import version

    return f"tf{version('tensorflow')}-keras{version('keras')}"


def mobilenet_tflite(out: Path, classes: int, seed: int, log: Any = print) -> Path:
    """Path of the cached MobileNetV2 .tflite (built once per TF/Keras version)."""
    path = out / "models" / f"mobilenetv2_454_c{classes}_s{seed}_{tf_versions()}.tflite"
    if path.is_file() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"  converting MobileNetV2(454x454, {classes} classes, seed {seed}) to TF Lite ...")
    proc = subprocess.run([sys.executable, "-c", _BUILD_SCRIPT, str(classes), str(seed),
                           str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not path.is_file():
        raise SystemExit(f"model conversion failed:\n{proc.stderr[-3000:]}")
    return path


@dataclass
class BenchModel:
    model_id: int
    name: str
    path: Path
    labels: list[str]

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    def artifact(self) -> Any:
        from pad_assets.devtools.emulator import ModelArtifact

        record = {"id": self.model_id, "name": self.name, "type": "tf_lite",
                  "labels": list(self.labels), "version": "1.0",
                  "architecture": "MobileNetV2 (random weights, benchmark stand-in)",
                  "image_size": 454,
                  "description": "SYNTHETIC benchmark stand-in of realistic cost"}
        return ModelArtifact(record=record, filename=self.path.name, data=self.data)


def bench_models(out: Path, log: Any = print) -> dict[int, BenchModel]:
    from pad_assets.devtools.emulator.synthetic import DRUGS

    return {
        16: BenchModel(16, "bench_mobilenetv2_drug", mobilenet_tflite(out, 23, 0, log),
                       list(DRUGS)),
        17: BenchModel(17, "bench_mobilenetv2_conc", mobilenet_tflite(out, 5, 1, log),
                       list(CONCENTRATION_LABELS)),
    }


# ---------------------------------------------------------------------------- emulator
def dataset_name(n: int, tag: str = "") -> str:
    return f"bench_{tag}{n}"


def start_emulator(folder: Path, sizes: dict[str, int], models: dict[int, BenchModel],
                   out: Path, latency: float = 0.0, render_on_request: bool = False,
                   in_process: bool = False) -> Any:
    """An emulator with one registry dataset per entry of ``sizes`` (name -> first n cards).

    By default it is served by a child process (``emulator_process``), so that neither
    client measured side by side shares an interpreter with the server; ``in_process``
    builds it here (the child itself, and tools that time a client in a child process).
    """
    if not in_process:
        from .emulator_process import EmulatorProcess

        return EmulatorProcess({"folder": str(folder), "datasets": sizes, "out": str(out),
                                "latency": latency, "render_on_request": render_on_request})
    from pad_assets.devtools.emulator import DatasetSpec, Emulator, EmulatorConfig

    datasets = [DatasetSpec(name, range(FIRST_CARD, FIRST_CARD + n),
                            description=f"benchmark dataset of {n} cards")
                for name, n in sizes.items()]
    config = EmulatorConfig(datasets=datasets, latency=latency,
                            real_images_dir=None if render_on_request else folder,
                            models_provider=list, md5_cache_dir=out / "md5")
    emu = Emulator(config)
    for m in models.values():
        emu.add_model(m.artifact())
    emu.start()
    return emu


def settings_for(emu: Any, cache_dir: Path) -> Any:
    from pad_assets.settings import Settings

    return Settings.from_env(cache_dir=cache_dir, api_url=emu.base_url,
                             registry_url=emu.registry_url, offline=False)


def dump_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())
