"""The PAD neural networks (TF Lite) as a ``ModelAdapter``.

Reproduces the PAD tool's output semantics (label = labels[argmax], probability = softmax at
the argmax, energy = logsumexp, not negated) with two differences that matter for a shared
cache: the weights are verified against the record's SHA256 before use (``resolve_model``),
and the signature is the weights' hash + runtime + labels, so a re-uploaded model under the
same name or id can never hit stale cached predictions.

The interpreter is created lazily, on the first ``predict_batch``: a fully cached run (every
prediction found by key) needs the signature only, which is computed from hashes and
package metadata without building an interpreter or importing TensorFlow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelError
from .base import (
    STATUS_FAILED,
    STATUS_OK,
    ModelAdapter,
    PredictionRecord,
    TensorSpec,
    label_type_of,
    resolve_pad_model,
    softmax_energy,
    standardize_label,
)
from .runtime import MAX_INVOKE_BATCH, TFLiteRunner, load_tflite, tflite_runtime_info

if TYPE_CHECKING:
    from ..preprocessing.base import PreprocessingPipeline
    from ..settings import Settings

#: Bump when the interpretation of model outputs (labels, probability, energy) changes:
#: it is part of the signature, so cached predictions made under old rules are not reused.
INTERPRETATION_VERSION = "1"

#: What PAD networks consume: the 454x454 RGB crop, raw 0..255, stored losslessly as uint8.
PAD_NN_TENSOR_SPEC = TensorSpec(
    shape=(454, 454, 3), dtype="float32", storage_dtype="uint8", layout="NHWC", scale="raw"
)


def file_sha256(path: Path) -> str:
    """sha256 of a model file's bytes; a missing file is a ``ModelError`` naming it."""
    from ..store.fs import file_sha256 as _digest

    try:
        return _digest(path)
    except FileNotFoundError as exc:
        raise ModelError(f"model file not found: {path}") from exc


def safe_name(text: str) -> str:
    """A column/asset-safe name (letters, digits, underscore)."""
    return re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_") or "model"


def records_from_outputs(
    outputs: np.ndarray,
    labels: Sequence[str],
    label_type: str,
    kind: str = "logits",
    source: str = "model",
) -> list[PredictionRecord]:
    """Interpret a batch of classifier outputs the PAD way.

    ``kind`` is "logits" (probability = softmax at the argmax, energy = logsumexp) or
    "probabilities" (probability = the output at the argmax, no energy). Rows holding a
    non-finite value become ``STATUS_FAILED`` records instead of a confident-looking label.
    Concentration labels give the integer value as a float (compared with card quantity).
    """
    z = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    if z.shape[1] != len(labels):
        raise ModelError(
            f"{source}: the model outputs {z.shape[1]} values per item but has "
            f"{len(labels)} labels; labels and weights do not belong together"
        )
    finite = np.isfinite(z).all(axis=1)
    safe = np.where(finite[:, None], z, 0.0)
    if kind == "logits":
        idx, prob, energy = softmax_energy(safe)
    elif kind == "probabilities":
        idx = np.argmax(safe, axis=1)
        prob = safe[np.arange(len(safe)), idx]
        energy = np.full(len(safe), math.nan)
    else:
        raise ModelError(f"{source}: unknown output kind {kind!r}")
    records = []
    for i in range(len(z)):
        row = [float(v) for v in z[i]]
        if not finite[i]:
            records.append(
                PredictionRecord(
                    prediction=None, label_type=label_type, status=STATUS_FAILED,
                    detail=f"{source}: non-finite model output", outputs=row,
                )
            )
            continue
        label = labels[int(idx[i])]
        prediction: Any = float(int(label)) if label_type == "concentration" else label
        records.append(
            PredictionRecord(
                prediction=prediction,
                probability=float(prob[i]),
                energy=None if math.isnan(energy[i]) else float(energy[i]),
                label_type=label_type,
                status=STATUS_OK,
                outputs=row,
            )
        )
    return records


class PADTensorFlowAdapter(ModelAdapter):
    """A PAD TF Lite network, from the PAD API (``model_id``) or a local file (``model_path``).

    With ``model_id`` the record and verified weights come from ``resolve_model`` (cached,
    sha256-checked); labels come from the record unless ``labels`` overrides them. With
    ``model_path`` labels are required, because a ``.tflite`` file does not carry them.
    Labels are standardised (lower-case, spaces to hyphens); all-integer labels make a
    concentration model, anything else a drug classifier (PAD's rule).
    """

    def __init__(
        self,
        model_id: int | None = None,
        model_path: str | Path | None = None,
        labels: list[str] | None = None,
        settings: Settings | None = None,
        refresh: bool = False,
        name: str | None = None,
    ) -> None:
        if (model_id is None) == (model_path is None):
            raise ModelError("PADTensorFlowAdapter needs exactly one of model_id or model_path")
        self.model_id = model_id
        self.record: dict[str, Any] = {}
        if model_id is not None:
            resolved = resolve_pad_model(model_id, "tf_lite", "PADTensorFlowAdapter", settings,
                                         refresh)
            self.record = dict(resolved.record)
            self.weights_path = Path(resolved.weights_path)
            self.weights_sha256 = str(resolved.sha256)
            raw_labels = labels if labels is not None else self.record.get("labels")
            self.name = name or f"pad_nn_{int(model_id)}"
        else:
            self.weights_path = Path(model_path)  # type: ignore[arg-type]
            if not self.weights_path.is_file():
                raise ModelError(f"model file not found: {self.weights_path}")
            self.weights_sha256 = file_sha256(self.weights_path)
            raw_labels = labels
            self.name = name or safe_name(self.weights_path.stem)
        if not raw_labels:
            where = f"PAD model {model_id}'s record" if model_id is not None else "labels="
            raise ModelError(
                f"{self.weights_path}: no labels ({where} is empty); a classifier needs the "
                "list of class names in output order"
            )
        self.original_labels = [str(x) for x in raw_labels]
        self.labels = [standardize_label(x) for x in self.original_labels]
        self._label_type = label_type_of(self.labels)
        self.runtime = tflite_runtime_info()
        self._runner: TFLiteRunner | None = None

    # -- ModelAdapter interface -----------------------------------------------------------
    def get_required_preprocessing(self) -> PreprocessingPipeline:
        from ..preprocessing.nn import PADNeuralNetworkPipeline

        return PADNeuralNetworkPipeline()

    def get_tensor_spec(self) -> TensorSpec:
        return PAD_NN_TENSOR_SPEC

    def label_type(self) -> str:
        return self._label_type

    def get_cache_signature(self) -> str:
        """Weights sha256 + runtime name/version + standardised labels (+ output rules).

        Hashes and package metadata only: a fully cached run never builds an interpreter.
        """
        return self.signature_of(
            self.weights_sha256, self.runtime.as_list(), self.labels, INTERPRETATION_VERSION
        )

    def warm_up(self) -> None:
        """Build the interpreter now (~0.1 s of CPU, XNNPACK set-up and tensor allocation)."""
        self.runner  # noqa: B018 - the property builds it

    @property
    def runner(self) -> TFLiteRunner:
        """The shared interpreter for these weights (built on first access)."""
        if self._runner is None:
            self._runner = load_tflite(self.weights_path, self.weights_sha256)
        return self._runner

    @property
    def interpreter_loaded(self) -> bool:
        return self._runner is not None

    #: Batches may arrive in the storage dtype (uint8): the runner casts while copying.
    accepts_storage_dtype = True

    def predict_logits(self, preprocessed_images: np.ndarray) -> np.ndarray:
        """Raw model outputs, (n, classes), for a batch of stored or float tensors.

        The storage -> float32 cast happens inside the runner, fused into the copy into
        the interpreter's input buffer, so a batch of uint8 tensors never exists as
        float32 (4x its stored size).
        """
        stored = np.asarray(preprocessed_images)
        if stored.ndim == 3:
            stored = stored[None]
        runner = self.runner
        return np.concatenate(
            [runner.run(stored[i : i + MAX_INVOKE_BATCH])
             for i in range(0, len(stored), MAX_INVOKE_BATCH)]
        )

    def predict_batch(
        self, preprocessed_images: np.ndarray, contexts: Sequence[dict[str, Any]] | None = None
    ) -> list[PredictionRecord]:
        if len(preprocessed_images) == 0:
            return []
        logits = self.predict_logits(preprocessed_images)
        return records_from_outputs(
            logits, self.labels, self._label_type, "logits", source=self.name
        )

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            model_id=self.model_id,
            record_name=self.record.get("name"),
            version=self.record.get("version"),
            weights_path=str(self.weights_path),
            weights_sha256=self.weights_sha256,
            weights_url=self.record.get("weights_url"),
            runtime=self.runtime.as_list(),
            labels=list(self.labels),
            label_type=self._label_type,
        )
        return d

    def __repr__(self) -> str:
        src = f"model_id={self.model_id}" if self.model_id is not None else str(self.weights_path)
        return f"PADTensorFlowAdapter({src}, {len(self.labels)} labels, {self._label_type})"


__all__ = [
    "PADTensorFlowAdapter",
    "PAD_NN_TENSOR_SPEC",
    "records_from_outputs",
    "file_sha256",
]
