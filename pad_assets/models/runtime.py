"""TF Lite interpreters: which runtime, one interpreter per weights file, batched invoke.

Why a module of its own: building an interpreter costs tens to hundreds of milliseconds
(flatbuffer parse, XNNPACK delegate set-up, tensor allocation), so it must happen once per
process and weights file, never per image; and the runtime's identity (name + version)
belongs in every prediction signature because two runtimes (or two versions of one) can
give different logits for the same weights.

LiteRT (``ai_edge_litert``, TF Lite's successor package) is preferred when installed: it is
the runtime Google maintains for ``.tflite`` files and it imports in a fraction of the time
TensorFlow takes. ``tf.lite.Interpreter`` is the fallback. The choice is made from installed
package metadata alone (no import), so a cache signature can name the runtime without
loading it.

Nothing heavy is imported at module import time: ``import pad_assets`` stays light.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError

# TensorFlow's C++ INFO/WARNING lines (CUDA probing on CPU-only machines) drown the
# researcher's output; errors still print. A value set by the user wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Largest batch given to one ``invoke``: bounds the interpreter's arena (activations of a
#: 454x454 network grow linearly with the batch) while keeping per-invoke overhead small.
MAX_INVOKE_BATCH = 4  # a 454x454 MobileNetV2 arena: ~480 MB at 16, ~110 MB at 4

#: Items per TF Lite ``invoke`` when the batch dimension is dynamic. Measured on 2 cores
#: (MobileNetV2 454x454, XNNPACK, 2 threads, 2026-11-30): 32.7-34.8 ms of CPU per image at
#: 1, 35.9-36.2 at 2, 39.2-41.8 at 4, with bit-identical logits; a batch-1 arena is also
#: the smallest. Larger batches only pay where per-invoke overhead dominates (tiny models).
TFLITE_INVOKE_BATCH = 1


@dataclass(frozen=True)
class RuntimeInfo:
    """Name and version of an inference runtime, as they enter cache signatures."""

    name: str
    version: str

    def as_list(self) -> list[str]:
        return [self.name, self.version]


def installed_version(*distributions: str) -> str | None:
    """Version of the first installed distribution among ``distributions`` (no import)."""
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def available_cores() -> int:
    """CPU cores this process may use (respects affinity masks and container CPU sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def tflite_runtime_info() -> RuntimeInfo:
    """The TF Lite runtime ``load_tflite`` will use, from package metadata only.

    Raises ``ModelError`` when neither LiteRT nor TensorFlow is installed.
    """
    if importlib.util.find_spec("ai_edge_litert") is not None:
        version = installed_version("ai-edge-litert", "ai-edge-litert-nightly")
        return RuntimeInfo("ai-edge-litert", version or "unknown")
    if importlib.util.find_spec("tensorflow") is not None:
        version = installed_version("tensorflow", "tensorflow-cpu", "tf-nightly")
        return RuntimeInfo("tensorflow-lite", version or "unknown")
    raise ModelError(
        "no TF Lite runtime installed: install LiteRT (pip install ai-edge-litert) "
        "or TensorFlow"
    )


def interpreter_class(runtime: RuntimeInfo) -> Any:
    """The ``Interpreter`` class of ``runtime`` (imports LiteRT or TensorFlow: heavy)."""
    if runtime.name == "ai-edge-litert":
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:  # installed but broken: say so rather than switch runtimes
            raise ModelError(
                f"ai-edge-litert {runtime.version} is installed but cannot be imported "
                f"({exc}); reinstall it or uninstall it to fall back to tf.lite"
            ) from exc
        return Interpreter
    import tensorflow as tf

    return tf.lite.Interpreter


class TFLiteRunner:
    """One interpreter and the bookkeeping to run batches through it.

    Interpreters are not thread-safe, so every run holds this runner's lock; separate
    processes (multiprocessing, Dagster's process executor) get their own runner because
    the cache is keyed by process id.

    Batches: when the input's batch dimension is dynamic (``shape_signature[0] == -1``), the
    input is resized to the batch (at most ``TFLITE_INVOKE_BATCH`` per invoke) and tensors
    re-allocated only when the size changes; otherwise items are invoked one at a time on
    the same interpreter. Real PAD models have a fixed batch of 1, so they take the loop.
    """

    def __init__(self, model_path: Path, sha256: str, num_threads: int | None = None):
        self.model_path = Path(model_path)
        self.sha256 = sha256
        self.runtime = tflite_runtime_info()
        self.num_threads = num_threads or available_cores()
        cls = interpreter_class(self.runtime)
        # The interpreter is built from the very bytes that were hashed: weights that do
        # not hash to the sha256 in the model's signature never run, so no prediction is
        # stored under a signature its weights do not have (a copy changed on disk).
        try:
            content = self.model_path.read_bytes()
        except OSError as exc:
            raise ModelError(f"model file not found or unreadable: {self.model_path} "
                             f"({exc})") from exc
        got = hashlib.sha256(content).hexdigest()
        if got != sha256:
            raise ModelError(
                f"{self.model_path}: the weights file has sha256 {got}, but the model was "
                f"verified as {sha256} (its cache signature); the file changed after it was "
                "checked, so it is not run. Load the model again (a PAD model's copy is "
                "restored from the cache) or run `pad-assets cache verify --repair`")
        self._content = content  # the interpreter reads from this buffer: keep it alive
        try:
            self.interpreter = cls(model_content=content, num_threads=self.num_threads)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise ModelError(
                f"{self.model_path}: not a loadable TF Lite model ({type(exc).__name__}: {exc})"
            ) from exc
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1:
            raise ModelError(
                f"{self.model_path}: expected a model with one input tensor, found {len(inputs)}"
            )
        self._input = inputs[0]
        self._output_index = outputs[0]["index"]
        signature = self._input.get("shape_signature", self._input["shape"])
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in signature)
        self.dynamic_batch = len(self.input_shape) > 0 and self.input_shape[0] == -1
        self._current_batch = int(self._input["shape"][0]) if len(self._input["shape"]) else 1
        self._lock = threading.Lock()
        self.invocations = 0  # number of invoke() calls; tests and benchmarks read it

    # -- quantisation: PAD models take float32, but a user's int8 model should still run --
    def _to_input(self, batch: np.ndarray) -> np.ndarray:
        dtype = self._input["dtype"]
        scale, zero_point = self._input.get("quantization", (0.0, 0))
        if np.issubdtype(dtype, np.integer) and scale:
            info = np.iinfo(dtype)
            q = np.round(batch.astype(np.float64) / scale + zero_point)
            return np.ascontiguousarray(np.clip(q, info.min, info.max).astype(dtype))
        return np.ascontiguousarray(batch, dtype=dtype)

    def _from_output(self, out: np.ndarray) -> np.ndarray:
        details = self.interpreter.get_output_details()[0]
        scale, zero_point = details.get("quantization", (0.0, 0))
        if np.issubdtype(out.dtype, np.integer) and scale:
            return (out.astype(np.float64) - zero_point) * scale
        return np.array(out, copy=True)

    def _check_item_shape(self, batch: np.ndarray) -> None:
        expected = self.input_shape[1:]
        got = tuple(batch.shape[1:])
        if len(expected) != len(got) or any(e not in (-1, g) for e, g in zip(expected, got, strict=True)):
            raise ModelError(
                f"{self.model_path}: input items have shape {got}, the model expects "
                f"{tuple(expected)}"
            )

    def _invoke(self, chunk: np.ndarray) -> np.ndarray:
        index = self._input["index"]
        n = chunk.shape[0]
        if n != self._current_batch:
            self.interpreter.resize_tensor_input(index, [n, *chunk.shape[1:]])
            self.interpreter.allocate_tensors()
            self._current_batch = n
        dtype = self._input["dtype"]
        scale, _ = self._input.get("quantization", (0.0, 0))
        if np.issubdtype(dtype, np.integer) and scale:
            self.interpreter.set_tensor(index, self._to_input(chunk))
        else:
            # Cast while copying into the interpreter's own input buffer: one pass over
            # the data instead of a float32 temporary plus set_tensor's copy.
            view = self.interpreter.tensor(index)()
            np.copyto(view, chunk, casting="unsafe")
            del view  # the interpreter refuses to run while its buffer is referenced
        self.interpreter.invoke()
        self.invocations += 1
        return self._from_output(self.interpreter.get_tensor(self._output_index))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Model outputs for a batch (first axis = items), as an (n, ...) array."""
        batch = np.asarray(batch)
        if batch.ndim != len(self.input_shape):
            raise ModelError(
                f"{self.model_path}: got a batch of rank {batch.ndim}, the model input has "
                f"rank {len(self.input_shape)} (shape {self.input_shape})"
            )
        self._check_item_shape(batch)
        if batch.shape[0] == 0:
            raise ModelError(f"{self.model_path}: empty batch")
        outs: list[np.ndarray] = []
        with self._lock:
            if self.dynamic_batch:
                for start in range(0, batch.shape[0], TFLITE_INVOKE_BATCH):
                    outs.append(self._invoke(batch[start : start + TFLITE_INVOKE_BATCH]))
            else:
                fixed = self.input_shape[0]
                if fixed != 1:
                    raise ModelError(
                        f"{self.model_path}: fixed batch dimension {fixed} is not supported "
                        "(expected 1 or dynamic)"
                    )
                for i in range(batch.shape[0]):
                    outs.append(self._invoke(batch[i : i + 1]))
        return np.concatenate(outs, axis=0)


_RUNNERS: dict[tuple[int, str, int], TFLiteRunner] = {}
_RUNNERS_LOCK = threading.Lock()


def load_tflite(model_path: str | Path, sha256: str, num_threads: int | None = None) -> TFLiteRunner:
    """The process's runner for this weights file, built on first use.

    Keyed by (process id, weights sha256, threads): the same weights reached through two
    paths share one interpreter, and a forked child never reuses its parent's.
    """
    threads = num_threads or available_cores()
    key = (os.getpid(), sha256, threads)
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(key)
        if runner is None:
            runner = TFLiteRunner(Path(model_path), sha256, threads)
            _RUNNERS[key] = runner
        return runner


def cached_runner_count() -> int:
    """How many interpreters this process holds (for tests asserting 'never per image')."""
    pid = os.getpid()
    with _RUNNERS_LOCK:
        return sum(1 for k in _RUNNERS if k[0] == pid)


def clear_runner_cache() -> None:
    """Drop every cached interpreter (frees memory; the next predict rebuilds)."""
    with _RUNNERS_LOCK:
        _RUNNERS.clear()
