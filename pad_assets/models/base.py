"""The ``ModelAdapter`` interface and the model-ready tensor spec.

An adapter names the preprocessing it needs, the tensor layout it consumes, and a cache
signature that changes whenever its predictions could change (weights bytes, runtime,
labels), never a name alone. Predictions are cached under
H(model-ready key, signature, per-card context); the context is empty for image-only
models and holds e.g. the drug for PLS, whose prediction depends on it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..keys import model_signature
from ..preprocessing.base import PreprocessingPipeline

STATUS_OK = "ok"
STATUS_UNKNOWN_DRUG = "unknown_drug"
STATUS_FAILED = "failed"


@dataclass(frozen=True)
class TensorSpec:
    """How a preprocessed array becomes a model input.

    ``dtype`` is what the model consumes; ``storage_dtype`` is what the cache keeps. They
    differ only when the cast is lossless (uint8 pixels fed as float32 0..255), which keeps
    model-ready tensors 4x smaller on disk; the cast happens per batch.
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    storage_dtype: str = "float32"
    layout: str = "NHWC"
    scale: str = "raw"  # "raw": values unchanged (PAD networks take 0..255)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    def to_storage(self, preprocessed: np.ndarray) -> np.ndarray:
        """The array the tensor layer stores for one item; refuses lossy or mis-shaped input."""
        arr = np.asarray(preprocessed)
        if tuple(arr.shape) != tuple(self.shape):
            raise ValueError(
                f"preprocessed array has shape {tuple(arr.shape)}, the model expects {self.shape}"
            )
        stored = arr.astype(self.storage_dtype, copy=False)
        if stored.dtype != arr.dtype and not np.array_equal(stored, arr):
            raise ValueError(
                f"casting {arr.dtype} to storage dtype {self.storage_dtype} would lose information"
            )
        return np.ascontiguousarray(stored)

    def to_model(self, stored_batch: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(stored_batch, dtype=self.dtype)


@dataclass
class PredictionRecord:
    """One card's interpreted prediction, as cached and as shown in result tables."""

    prediction: Any
    probability: float | None = None
    energy: float | None = None
    label_type: str = "drug"  # "drug" | "concentration"
    status: str = STATUS_OK
    detail: str = ""
    outputs: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("probability", "energy"):
            v = d[k]
            if v is not None and isinstance(v, float) and math.isnan(v):
                d[k] = None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PredictionRecord:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k in d})


def standardize_label(name: str) -> str:
    """PAD's label standardisation: lower-case, spaces to hyphens."""
    return str(name).strip().lower().replace(" ", "-")


def label_type_of(labels: Sequence[str]) -> str:
    """Concentration if every label parses as an integer, else drug (PAD's rule)."""
    try:
        [int(x) for x in labels]
    except (TypeError, ValueError):
        return "drug"
    return "concentration" if len(labels) else "drug"


class ModelAdapter(ABC):
    """A model the cache can run: preprocessing, tensor spec, batch prediction, signature."""

    #: Short name used in result columns, Dagster asset names and reports.
    name: str = "model"
    #: True if ``predict_batch`` accepts batches in the tensor spec's storage dtype and
    #: casts them itself (cheaper than a float32 copy of the whole batch first).
    accepts_storage_dtype: bool = False

    @abstractmethod
    def get_required_preprocessing(self) -> PreprocessingPipeline:
        """The pipeline whose output this model consumes."""

    @abstractmethod
    def get_tensor_spec(self) -> TensorSpec:
        """Shape and dtype of one model input."""

    @abstractmethod
    def predict_batch(
        self, preprocessed_images: np.ndarray, contexts: Sequence[dict[str, Any]] | None = None
    ) -> list[PredictionRecord]:
        """Predictions for a batch of model-ready inputs (first axis = cards)."""

    @abstractmethod
    def get_cache_signature(self) -> str:
        """Hash of everything that determines outputs: artifact bytes, runtime, labels."""

    def prediction_context(self, card: dict[str, Any]) -> dict[str, Any]:
        """Per-card inputs besides the image (empty for image-only models)."""
        return {}

    def warm_up(self) -> None:
        """Build what ``predict_batch`` needs (an interpreter, a session) now.

        Called by a cold run while its first cards are being downloaded and preprocessed,
        so that the build overlaps that work instead of following it. The default does
        nothing; an adapter whose first ``predict_batch`` builds something overrides it.
        """
        return None

    def describe(self) -> dict[str, Any]:
        """Lineage: what this model is and where it came from."""
        return {"name": self.name, "class": type(self).__qualname__,
                "signature": self.get_cache_signature()}

    def label_type(self) -> str:
        return "drug"

    def actual_label(self, card: dict[str, Any]) -> Any:
        """The ground truth this model is scored against (drug name or quantity)."""
        if self.label_type() == "concentration":
            q = card.get("quantity")
            return None if q is None or (isinstance(q, float) and math.isnan(q)) else float(q)
        drug = card.get("drug")
        return standardize_label(drug) if drug else None

    def signature_of(self, *parts: Any) -> str:
        return model_signature(type(self).__qualname__, *parts)


def resolve_pad_model(model_id: int, expected_type: str, adapter: str, settings: Any = None,
                      refresh: bool = False) -> Any:
    """A PAD model's record and verified weights, refusing a record of another model type."""
    from ..errors import ModelError
    from ..sources.model_artifacts import resolve_model

    resolved = resolve_model(int(model_id), settings=settings, refresh=refresh)
    kind = str(resolved.record.get("type", expected_type))
    if kind != expected_type:
        from .kinds import by_pad_type

        runs = by_pad_type(kind)
        hint = f" (use {runs.adapter.rpartition(':')[2]} for {kind!r})" if runs else ""
        raise ModelError(f"PAD model {model_id} ({resolved.record.get('name')}) has type "
                         f"{kind!r}; {adapter} runs {expected_type!r} models{hint}")
    return resolved


def softmax_energy(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row argmax, softmax probability at the argmax, and logsumexp (PAD's 'energy')."""
    z = np.asarray(logits, dtype=np.float64)
    idx = np.argmax(z, axis=1)
    m = np.max(z, axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1)
    prob = e[np.arange(len(z)), idx] / s
    energy = (m[:, 0] + np.log(s))
    return idx, prob, energy
