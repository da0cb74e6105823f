"""Model adapters: what runs on model-ready tensors, and the signature that keys its output.

Exports resolve lazily (PEP 562 module ``__getattr__``) so ``import pad_assets.models``
stays cheap: TensorFlow, LiteRT, onnxruntime and torch are imported only when a model is
actually loaded, never at package import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import ModelAdapter, PredictionRecord, TensorSpec
    from .custom import CustomModelAdapter
    from .pls import PLSModelAdapter
    from .tflite import PADTensorFlowAdapter

_EXPORTS = {
    "ModelAdapter": ".base",
    "TensorSpec": ".base",
    "PredictionRecord": ".base",
    "PADTensorFlowAdapter": ".tflite",
    "PLSModelAdapter": ".pls",
    "CustomModelAdapter": ".custom",
}

__all__ = [
    "CustomModelAdapter",
    "ModelAdapter",
    "PADTensorFlowAdapter",
    "PLSModelAdapter",
    "PredictionRecord",
    "TensorSpec",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
