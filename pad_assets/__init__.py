"""pad_assets: cached, reproducible, auditable data assets for PAD research.

``import pad_assets`` is light (no TensorFlow, no Dagster): public names are resolved on
first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CachedDataset": "pad_assets.dataset",
    "Settings": "pad_assets.settings",
    "PreprocessingPipeline": "pad_assets.preprocessing.base",
    "FunctionPipeline": "pad_assets.preprocessing.base",
    "PADNeuralNetworkPipeline": "pad_assets.preprocessing.nn",
    "PADPLSPipeline": "pad_assets.preprocessing.pls",
    "WhiteBalancedNNPipeline": "pad_assets.preprocessing.examples",
    "CustomResearchPipeline": "pad_assets.preprocessing.research",
    "ModelAdapter": "pad_assets.models.base",
    "TensorSpec": "pad_assets.models.base",
    "PredictionRecord": "pad_assets.models.base",
    "PADTensorFlowAdapter": "pad_assets.models.tflite",
    "PLSModelAdapter": "pad_assets.models.pls",
    "CustomModelAdapter": "pad_assets.models.custom",
    "ContentStore": "pad_assets.store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pad_assets' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
