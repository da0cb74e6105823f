"""Tiny, deterministic models in every supported format, for tests across the project.

Every model computes the same function, so results are comparable across runtimes and
checkable against NumPy: average-pool the (454, 454, 3) raw-pixel input in 56x56 blocks
(-> 8x8x3 = 192 values, row-major H, W, C), then ``logits = pooled @ W + b`` with ``W, b``
drawn from a seed (``tiny_weights``). ``tiny_reference_logits`` is that function in NumPy.

Plain functions build files anywhere (``write_tiny_tflite(path)``...); the pytest fixtures
below build each file once per session. Use them from a test module with::

    pytest_plugins = ["pad_assets_tests.model_fixtures"]

Heavy frameworks (TensorFlow, onnx, torch) are imported inside the functions that need
them, so importing this module is cheap.

PYTEST_DONT_REWRITE: test modules import helpers from here before ``pytest_plugins``
registers it, and it holds no asserts, so assertion rewriting is off (no import warning).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

#: Side of the pooling blocks and the pooled grid: 454 -> 8 (valid pooling, as TF/ONNX do).
TINY_POOL = 56
TINY_GRID = 8
TINY_FEATURES = TINY_GRID * TINY_GRID * 3
#: Default labels (5 classes), in PAD's capitalised spelling: they standardise to
#: albendazole, amoxicillin, benzyl-penicillin, blank, lactose.
TINY_DRUG_LABELS = ["Albendazole", "Amoxicillin", "Benzyl Penicillin", "Blank", "Lactose"]
TINY_CONCENTRATION_LABELS = ["0", "100", "20", "50", "80"]
INPUT_SHAPE = (454, 454, 3)


def tiny_weights(n_classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(W (192, n), b (n,)) float32: logits of order 1 for 0..255 inputs.

    The bias centres the inputs (``(pooled - 127.5) @ W``), so which class wins depends on
    the item rather than on the column sums of ``W``.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.004, (TINY_FEATURES, n_classes)).astype(np.float32)
    b = rng.normal(0.0, 0.1, n_classes) - 127.5 * w.astype(np.float64).sum(axis=0)
    return w, b.astype(np.float32)


def tiny_pool(batch: np.ndarray) -> np.ndarray:
    """(n, 192) float64 block means, in the models' flatten order (H, W, C)."""
    x = np.asarray(batch, dtype=np.float64)
    n = x.shape[0]
    size = TINY_GRID * TINY_POOL
    blocks = x[:, :size, :size, :].reshape(n, TINY_GRID, TINY_POOL, TINY_GRID, TINY_POOL, 3)
    return blocks.mean(axis=(2, 4)).reshape(n, TINY_FEATURES)


def tiny_reference_logits(batch: np.ndarray, n_classes: int = 5, seed: int = 0) -> np.ndarray:
    """What every tiny model outputs for ``batch`` (n, 454, 454, 3), computed in NumPy."""
    w, b = tiny_weights(n_classes, seed)
    return tiny_pool(batch) @ w.astype(np.float64) + b.astype(np.float64)


def nn_batch(n: int = 4, seed: int = 0) -> np.ndarray:
    """A deterministic (n, 454, 454, 3) uint8 batch shaped like PAD NN inputs.

    Each item is a coarse random colour grid (one colour per 56x56 block) plus pixel noise,
    so the tiny models' pooled features, and hence their predicted classes, vary by item.
    """
    rng = np.random.default_rng(seed)
    cells = -(-INPUT_SHAPE[0] // TINY_POOL)  # 9 blocks cover 454 pixels
    coarse = rng.integers(0, 256, (n, cells, cells, 3)).astype(np.int16)
    big = coarse.repeat(TINY_POOL, axis=1).repeat(TINY_POOL, axis=2)
    big = big[:, : INPUT_SHAPE[0], : INPUT_SHAPE[1], :]
    noise = rng.integers(-20, 21, big.shape, dtype=np.int16)
    return np.clip(big + noise, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- Keras / TF Lite
def build_tiny_keras_model(n_classes: int = 5, seed: int = 0, batch_size: int | None = None) -> Any:
    """The tiny model as a Keras 3 model (input (batch_size, 454, 454, 3) float32)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    inp = keras.Input(INPUT_SHAPE, batch_size=batch_size, dtype="float32")
    x = keras.layers.AveragePooling2D(pool_size=TINY_POOL, strides=TINY_POOL)(inp)
    x = keras.layers.Flatten()(x)
    dense = keras.layers.Dense(n_classes)
    out = dense(x)
    model = keras.Model(inp, out)
    w, b = tiny_weights(n_classes, seed)
    dense.set_weights([w, b])
    return model


def write_tiny_tflite(
    path: str | Path, n_classes: int = 5, seed: int = 0, batch_size: int | None = None
) -> Path:
    """Write the tiny model as TF Lite; ``batch_size=None`` gives a dynamic batch dim,
    ``batch_size=1`` a fixed one (like the real PAD models).

    The converted bytes are kept in ``tiny_tflite_cache_dir()`` under a key that hashes this
    file, the TensorFlow version and the arguments: besides saving ~2 s per conversion, a
    process forked from one that already ran TensorFlow (mutmut's test workers) hangs
    forever in the MLIR converter, so such a process must find the model converted."""
    import tensorflow as tf

    key = hashlib.sha256(b"\0".join([
        Path(__file__).read_bytes(), tf.__version__.encode(),
        repr((n_classes, seed, batch_size)).encode()])).hexdigest()[:24]
    cached = tiny_tflite_cache_dir() / f"tiny-{key}.tflite"
    try:
        data = cached.read_bytes()
    except FileNotFoundError:
        model = build_tiny_keras_model(n_classes, seed, batch_size)
        signature = [tf.TensorSpec([batch_size, *INPUT_SHAPE], tf.float32)]
        with tempfile.TemporaryDirectory(prefix="tiny-savedmodel-") as tmp:
            model.export(tmp, format="tf_saved_model", verbose=False, input_signature=signature)
            data = tf.lite.TFLiteConverter.from_saved_model(tmp).convert()
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        os.replace(partial, cached)  # whole or absent for a concurrent reader
    path = Path(path)
    path.write_bytes(data)
    return path


def tiny_tflite_cache_dir() -> Path:
    """Where converted tiny models are kept (``PAD_TEST_MODEL_CACHE``, else the temp dir)."""
    return Path(os.environ.get("PAD_TEST_MODEL_CACHE")
                or Path(tempfile.gettempdir()) / "pad-assets-tiny-tflite")


def write_tiny_keras(path: str | Path, n_classes: int = 5, seed: int = 0) -> Path:
    """Write the tiny model as a Keras v3 ``.keras`` file (loads with safe_mode=True)."""
    path = Path(path)
    with warnings.catch_warnings():
        # Keras 3.15's saver calls np.array on TF variables, which NumPy 2 flags.
        warnings.simplefilter("ignore", DeprecationWarning)
        build_tiny_keras_model(n_classes, seed).save(path)
    return path


# ---------------------------------------------------------------------------- ONNX
def write_tiny_onnx(
    path: str | Path, n_classes: int = 5, seed: int = 0, dynamic_batch: bool = True
) -> Path:
    """Write the tiny model as ONNX (opset 17), built node by node with ``onnx.helper``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = tiny_weights(n_classes, seed)
    batch: Any = "N" if dynamic_batch else 1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *INPUT_SHAPE])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, n_classes])
    nodes = [
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "AveragePool", ["nchw"], ["pooled"],
            kernel_shape=[TINY_POOL, TINY_POOL], strides=[TINY_POOL, TINY_POOL],
        ),
        helper.make_node("Transpose", ["pooled"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["nhwc", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1, TINY_FEATURES], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(b, "b"),
    ]
    graph = helper.make_graph(nodes, "tiny_pad_model", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.10
    onnx.checker.check_model(model)
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path


# ---------------------------------------------------------------------------- PyTorch
@lru_cache(maxsize=1)
def tiny_torch_module_class() -> type:
    """The tiny model as an ``nn.Module`` class (NHWC float input, like PAD tensors).

    Defined on first call so that importing this module does not import torch.
    """
    import torch
    from torch import nn

    class TinyTorchNet(nn.Module):
        def __init__(self, n_classes: int = 5) -> None:
            super().__init__()
            self.fc = nn.Linear(TINY_FEATURES, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.permute(0, 3, 1, 2)
            x = nn.functional.avg_pool2d(x, TINY_POOL, TINY_POOL)
            x = x.permute(0, 2, 3, 1)
            return self.fc(torch.flatten(x, 1))

    TinyTorchNet.__qualname__ = "TinyTorchNet"
    return TinyTorchNet


def make_tiny_torch_module(n_classes: int = 5, seed: int = 0, weights: bool = True) -> Any:
    """A ``TinyTorchNet`` in eval mode, with the tiny weights (or PyTorch's init)."""
    import torch

    module = tiny_torch_module_class()(n_classes)
    if weights:
        w, b = tiny_weights(n_classes, seed)
        with torch.no_grad():
            module.fc.weight.copy_(torch.from_numpy(w.T.copy()))
            module.fc.bias.copy_(torch.from_numpy(b))
    return module.eval()


def write_tiny_torchscript(path: str | Path, n_classes: int = 5, seed: int = 0) -> Path:
    """Write the tiny model as TorchScript (traced; dynamic batch)."""
    import torch

    module = make_tiny_torch_module(n_classes, seed)
    example = torch.zeros((2, *INPUT_SHAPE), dtype=torch.float32)
    traced = torch.jit.trace(module, example)
    path = Path(path)
    traced.save(str(path))
    return path


def write_tiny_state_dict(path: str | Path, n_classes: int = 5, seed: int = 0) -> Path:
    """Write the tiny model's ``state_dict()`` with ``torch.save`` (needs ``module=``)."""
    import torch

    path = Path(path)
    torch.save(make_tiny_torch_module(n_classes, seed).state_dict(), str(path))
    return path


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_nn_batch() -> np.ndarray:
    """(4, 454, 454, 3) uint8 batch."""
    return nn_batch(4)


@pytest.fixture(scope="session")
def tiny_tflite_path(tiny_model_dir: Path) -> Path:
    """Dynamic-batch TF Lite model, 5 classes, seed 0."""
    return write_tiny_tflite(tiny_model_dir / "tiny_dynamic.tflite")


@pytest.fixture(scope="session")
def tiny_tflite_fixed_path(tiny_model_dir: Path) -> Path:
    """Fixed batch-1 TF Lite model (like the real PAD models), 5 classes, seed 0."""
    return write_tiny_tflite(tiny_model_dir / "tiny_fixed.tflite", batch_size=1)


@pytest.fixture(scope="session")
def tiny_tflite_other_weights_path(tiny_model_dir: Path) -> Path:
    """Same architecture as ``tiny_tflite_path``, other weights (seed 1)."""
    return write_tiny_tflite(tiny_model_dir / "tiny_seed1.tflite", seed=1)


@pytest.fixture(scope="session")
def tiny_onnx_path(tiny_model_dir: Path) -> Path:
    pytest.importorskip("onnx")
    return write_tiny_onnx(tiny_model_dir / "tiny.onnx")


@pytest.fixture(scope="session")
def tiny_keras_path(tiny_model_dir: Path) -> Path:
    return write_tiny_keras(tiny_model_dir / "tiny.keras")


@pytest.fixture(scope="session")
def tiny_torchscript_path(tiny_model_dir: Path) -> Path:
    pytest.importorskip("torch")
    return write_tiny_torchscript(tiny_model_dir / "tiny_script.pt")


@pytest.fixture(scope="session")
def tiny_state_dict_path(tiny_model_dir: Path) -> Path:
    pytest.importorskip("torch")
    return write_tiny_state_dict(tiny_model_dir / "tiny_state.pt")
