"""The model kinds pad_assets runs, registered once: adapter class, pipeline, tensor spec,
label type.

Config (``adapter: pls``), the CLI's model specs (``pls:18``), a PAD model record's
``type`` (``pls``), the Dagster graph (which pipeline and tensor asset a model reads, which
ground truth it is scored against) and lineage all read this table, so a new model type is
one entry here plus its adapter module. Classes are named by import path and imported only
when used: reading the table costs no TensorFlow.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError

if TYPE_CHECKING:
    from ..preprocessing.base import PreprocessingPipeline
    from .base import ModelAdapter


@dataclass(frozen=True)
class ModelKind:
    """One kind of model. ``pipeline``/``tensor_spec`` are None when the model file says
    (custom models: the config names the pipeline, the file declares its input)."""

    name: str  # the config's ``adapter:`` value
    spec_prefix: str  # the CLI's model-spec prefix (``tflite:16``)
    pad_type: str | None  # the ``type`` of a PAD model record of this kind
    adapter: str  # "module:Class"
    path_argument: str  # the adapter's keyword for a local file
    pipeline: str | None
    tensor_spec: str | None  # "module:CONSTANT"
    label_type: str | None  # None: decided by the model's labels
    takes_model_id: bool

    def adapter_class(self) -> type[ModelAdapter]:
        return _load(self.adapter)

    def tensor_spec_dict(self) -> dict[str, Any] | None:
        return _load(self.tensor_spec).as_dict() if self.tensor_spec else None

    def build(self, *, model_id: int | None = None, path: Any = None,
              labels: Any = None, settings: Any = None, name: str | None = None
              ) -> ModelAdapter:
        """The adapter; only the arguments given are passed (the adapters' own defaults
        apply to the rest)."""
        cls = self.adapter_class()
        if not self.takes_model_id:
            return cls(path, **_given(labels=list(labels) if labels else None, name=name))
        args = _given(model_id=model_id, settings=settings, name=name,
                      **{self.path_argument: path})
        if self.name == "pad_tflite":
            args.update(_given(labels=list(labels) if labels else None))
        return cls(**args)


def _given(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


KINDS: dict[str, ModelKind] = {k.name: k for k in (
    ModelKind("pad_tflite", "tflite", "tf_lite", "pad_assets.models.tflite:PADTensorFlowAdapter",
              "model_path", "pad_nn", "pad_assets.models.tflite:PAD_NN_TENSOR_SPEC",
              "drug", True),
    ModelKind("pls", "pls", "pls", "pad_assets.models.pls:PLSModelAdapter",
              "coefficients_path", "pad_pls", "pad_assets.models.pls:PLS_TENSOR_SPEC",
              "concentration", True),
    ModelKind("custom", "custom", None, "pad_assets.models.custom:CustomModelAdapter",
              "path", None, None, None, False),
)}

#: Named pipelines (anything else is a ``module.Class`` import path).
PIPELINES = {
    "pad_nn": "pad_assets.preprocessing.nn:PADNeuralNetworkPipeline",
    "pad_pls": "pad_assets.preprocessing.pls:PADPLSPipeline",
}


def kind(name: str, where: str = "model") -> ModelKind:
    """The kind named ``name`` (a config ``adapter:``), or a clear error listing them."""
    found = KINDS.get(name)
    if found is None:
        raise InvalidInputError(f"{where}: adapter {name!r}: expected one of {tuple(KINDS)}")
    return found


def by_spec_prefix(prefix: str) -> ModelKind | None:
    return next((k for k in KINDS.values() if k.spec_prefix == prefix), None)


def by_pad_type(pad_type: str) -> ModelKind | None:
    """The kind that runs PAD model records of ``type: pad_type``."""
    return next((k for k in KINDS.values() if k.pad_type == pad_type), None)


def default_label_type(name: str) -> str:
    """What a model of this kind predicts when its record does not say (drug names unless
    the kind fixes it)."""
    found = KINDS.get(name)
    return (found.label_type if found else None) or "drug"


def make_pipeline(name: str) -> PreprocessingPipeline:
    """A pipeline by registered name (``pad_nn``) or ``module.Class`` import path."""
    ref = PIPELINES.get(name)
    if ref is None:
        module, _, cls = name.rpartition(".")
        ref = f"{module}:{cls}"
    return _load(ref)()
