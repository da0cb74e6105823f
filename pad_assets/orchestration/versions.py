"""Each asset's ``code_version``, derived from what determines its values.

Dagster marks an asset partition "unsynced" when the code version it was materialized with
differs from the definition's. A constant version hides every change, so each layer's
version is a short hash of exactly what its content keys depend on:

- raw image: the download/verification rules (``RAW_CODE_VERSION``);
- preprocessed: the pipeline's name, parameters and code version;
- tensor: the pipeline plus the tensor spec;
- prediction: the model's cache signature (weights bytes, runtime, labels), which is what
  makes a re-uploaded model give new prediction keys.

The graph must load without network access, so a model's signature is computed from the
cache alone (offline). A model the cache does not hold for the configured PAD API (never
resolved on this machine, or another ``PAD_API_URL``) gets no code version: Dagster then
claims nothing about it, rather than marking every partition unsynced. A run always tags
its events with the version computed from the objects it actually used (``*_version_of``),
so definitions and events agree once the cache holds the model.
"""

from __future__ import annotations

import functools
from typing import Any

from ..errors import PadAssetsError
from ..keys import chain_key
from ..project_config import ModelConfig

RAW_CODE_VERSION = "raw-1"
MANIFEST_CODE_VERSION = "manifest-1"
COMPARISON_CODE_VERSION = "comparison-1"
_N = 16  # hex digits shown: enough to tell versions apart, short enough to read in the UI


def _short(kind: str, *parts: Any) -> str:
    return f"{kind}-{chain_key(kind, *parts)[:_N]}"


def pipeline_version_of(describe: dict[str, Any]) -> str:
    """Version of a preprocessed layer from ``pipeline.describe()``."""
    return _short("pre", describe["name"], describe["parameters"], describe["code_version"])


def tensor_version_of(pipeline_describe: dict[str, Any], spec: dict[str, Any]) -> str:
    return _short("tensor", pipeline_version_of(pipeline_describe), spec)


def prediction_version_of(signature: str) -> str:
    return f"model-{signature[:_N]}"


@functools.cache
def pipeline_describe(name: str) -> dict[str, Any]:
    from ..models.kinds import make_pipeline

    return make_pipeline(name).describe()


def static_tensor_spec(m: ModelConfig) -> dict[str, Any] | None:
    """The tensor spec fixed by the model's kind; None when the model file declares it."""
    from ..models.kinds import kind

    return kind(m.adapter).tensor_spec_dict()


def cached_adapter(m: ModelConfig, settings: Any) -> Any | None:
    """The model's adapter built from the local cache only, or None when the cache does not
    hold it yet (never a network request while the graph loads)."""
    from dataclasses import replace

    try:
        return m.build(replace(settings, offline=True))
    except (PadAssetsError, OSError):
        return None  # not resolved on this machine yet: see prediction_code_version


def prediction_code_version(m: ModelConfig, settings: Any) -> str | None:
    adapter = cached_adapter(m, settings)
    return None if adapter is None else prediction_version_of(adapter.get_cache_signature())


def tensor_code_version(m: ModelConfig, settings: Any) -> str | None:
    spec = static_tensor_spec(m)
    if spec is None:
        adapter = cached_adapter(m, settings)
        if adapter is None:
            return None
        spec = adapter.get_tensor_spec().as_dict()
    return tensor_version_of(pipeline_describe(m.pipeline), spec)


def preprocessed_code_version(pipeline: str) -> str:
    return pipeline_version_of(pipeline_describe(pipeline))
