"""Researchers' own models (TF Lite, ONNX, Keras, PyTorch) behind the same cache.

A researcher comparing a new network with PAD's gets the same caching and lineage by
pointing ``CustomModelAdapter`` at a file. The runtime is chosen by extension:

=============  =====================================================================
``.tflite``    LiteRT / tf.lite (``runtime.py``: one interpreter per weights hash)
``.onnx``      onnxruntime, CPU execution provider
``.keras``     ``keras.models.load_model(..., safe_mode=True)`` (no Lambda bytecode)
``.pt/.pth``   TorchScript (``torch.jit.load``) or a state dict read with
               ``torch.load(..., weights_only=True)`` into the ``module`` you pass
=============  =====================================================================

Security: model files travel between people like cache shards do, so nothing here
unpickles arbitrary objects. A ``.pt`` that is neither TorchScript nor a plain tensor
dictionary is refused, as is a state dict without a ``module`` to load it into.
``torch.export`` archives (``.pt2``) are deliberately not supported: ``torch.export.load``
(torch 2.13) reads parts of them with ``weights_only=False``, i.e. arbitrary unpickling.

The signature covers the file's bytes, the runtime and its version, labels and where they
came from, output kind and input spec (and, for a state dict, the module's class and
structure), and is computed without loading the model or importing its framework.

Labels are found the way researchers ship them (``labels.py``): ``labels=`` wins, then a PAD
model record (``from_pad_model``), then the file's own metadata, then a sidecar file
(``<stem>.labels.json``, ``<stem>.labels.txt``, ``labels.txt``). With none of those, a
classifier predicts class indices as strings (``"0"``, ``"1"``, ...: categorical, like drug
names, so never confused with concentration numbers) and warns once per model signature.
"""

from __future__ import annotations

import importlib.util
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import ModelError
from ..hashing import sha256_bytes
from .base import (
    STATUS_FAILED,
    STATUS_OK,
    ModelAdapter,
    PredictionRecord,
    TensorSpec,
    label_type_of,
    standardize_label,
)
from .labels import (
    LabelSource,
    UnlabelledModelWarning,
    describe_source,
    how_to_give_labels,
    resolve_labels,
)
from .runtime import (
    MAX_INVOKE_BATCH,
    RuntimeInfo,
    available_cores,
    installed_version,
    load_tflite,
    tflite_runtime_info,
)
from .tflite import (
    INTERPRETATION_VERSION,
    PAD_NN_TENSOR_SPEC,
    file_sha256,
    records_from_outputs,
    safe_name,
)

if TYPE_CHECKING:
    import torch

    from ..preprocessing.base import PreprocessingPipeline
    from ..settings import Settings

OutputKind = Literal["logits", "probabilities", "regression"]

#: Extension -> runtime family.
SUPPORTED_EXTENSIONS: dict[str, str] = {
    ".tflite": "tflite",
    ".onnx": "onnx",
    ".keras": "keras",
    ".pt": "torch",
    ".pth": "torch",
}

_ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def _missing(package: str, extra: str) -> ModelError:
    return ModelError(
        f"{package} is not installed; it is needed for this model file: "
        f"pip install pad_assets[{extra}]"
    )


def runtime_for(kind: str) -> RuntimeInfo:
    """Runtime name and version for a family, from package metadata only (no import)."""
    if kind == "tflite":
        return tflite_runtime_info()
    if kind == "onnx":
        if importlib.util.find_spec("onnxruntime") is None:
            raise _missing("onnxruntime", "onnx")
        return RuntimeInfo("onnxruntime", installed_version("onnxruntime", "onnxruntime-gpu") or "unknown")
    if kind == "keras":
        if importlib.util.find_spec("keras") is None:
            raise _missing("keras (TensorFlow)", "all")
        keras_v = installed_version("keras", "tf-keras") or "unknown"
        tf_v = installed_version("tensorflow", "tensorflow-cpu") or "none"
        return RuntimeInfo("keras", f"{keras_v}+tensorflow-{tf_v}")
    if kind == "torch":
        if importlib.util.find_spec("torch") is None:
            raise _missing("torch", "torch")
        return RuntimeInfo("torch", installed_version("torch") or "unknown")
    raise ModelError(f"unknown runtime family {kind!r}")


def torch_file_format(path: Path) -> str:
    """'torchscript' or 'state_dict', from the archive layout (nothing is unpickled).

    TorchScript archives hold a ``code/`` folder (and ``constants.pkl``); ``torch.save``
    archives hold only ``data.pkl`` and tensor storages. Legacy non-zip files are treated
    as ``torch.save`` output, which ``weights_only=True`` then accepts or refuses.
    """
    if not zipfile.is_zipfile(path):
        return "state_dict"
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return "state_dict"


def _batches(batch: np.ndarray, size: int) -> list[np.ndarray]:
    return [batch[i : i + size] for i in range(0, batch.shape[0], size)]


#: Signatures of unlabelled models already warned about in this process (once each).
_WARNED_UNLABELLED: set[str] = set()

#: ``label_type`` of class-index predictions: categorical, like drug names.
CLASS_INDEX_LABEL_TYPE = "drug"


class CustomModelAdapter(ModelAdapter):
    """A user's model file behind the cache, with PAD's NN preprocessing by default.

    ``output`` says how to read the model's output: ``"logits"`` (PAD semantics: softmax
    probability and logsumexp energy), ``"probabilities"`` (already softmaxed) or
    ``"regression"`` (one number per item, compared with card quantity).

    Classifier labels (output order) are found as researchers ship them, first found wins:
    ``labels=``; the PAD model record (``from_pad_model`` or ``record=``); the file's own
    metadata (ONNX ``metadata_props['labels']``, TorchScript extra file ``labels.txt`` /
    ``labels.json``, a ``.keras`` archive's ``metadata.json``/``config.json`` ``labels``, a
    TF Lite associated ``labels.txt``); a sidecar ``<stem>.labels.json`` /
    ``<stem>.labels.txt`` / ``labels.txt`` next to the file. Two automatic sources that
    disagree are an error. All-integer labels make a concentration classifier. With no
    labels at all, predictions are class indices ``"0"``, ``"1"``, ... (``actual`` is then
    unknown, so such a model is not scored) and an ``UnlabelledModelWarning`` is issued once
    per model signature. A label count that does not match the output width is an error.
    ``label_source`` says where the labels came from; it is in the signature and lineage.

    The default input is PAD's (454, 454, 3) crop, raw 0..255 float32 (stored as uint8); a
    custom ``preprocessing`` needs an ``input_spec`` describing what it returns, unless it
    describes itself (``CustomResearchPipeline.tensor_spec()``). Arrays are fed as the spec
    describes (NHWC for the default): a PyTorch model that wants NCHW should permute inside
    ``forward`` or get a pipeline that returns CHW.

    For a state dict, ``module`` receives the file's weights in place (``load_state_dict``,
    strict) on the first prediction; its class and ``repr`` enter the signature, but not
    the code of its ``forward``: rename the class or pass another ``name`` after changing it.
    """

    def __init__(
        self,
        path: str | Path,
        preprocessing: PreprocessingPipeline | None = None,
        labels: list[str] | None = None,
        input_spec: TensorSpec | None = None,
        module: torch.nn.Module | None = None,
        name: str | None = None,
        output: OutputKind = "logits",
        record: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        ext = self.path.suffix.lower()
        if ext not in SUPPORTED_EXTENSIONS:
            raise ModelError(
                f"{self.path}: unsupported model file type {ext or '(no extension)'!r}; "
                f"supported: {', '.join(sorted(SUPPORTED_EXTENSIONS))} "
                "(TF Lite, ONNX, Keras v3, PyTorch TorchScript or state dict)"
            )
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        if output not in ("logits", "probabilities", "regression"):
            raise ModelError(
                f"{self.path}: output must be 'logits', 'probabilities' or 'regression', "
                f"got {output!r}"
            )
        self.kind = SUPPORTED_EXTENSIONS[ext]
        self.output = output
        self.runtime = runtime_for(self.kind)
        # the format is part of the default name: tiny.onnx and tiny.tflite are two models
        self.name = name or safe_name(f"{self.path.stem}_{ext.lstrip('.')}")
        self.sha256 = file_sha256(self.path)
        self.record: dict[str, Any] = dict(record) if record else {}

        if preprocessing is not None and input_spec is None:
            described = getattr(preprocessing, "tensor_spec", None)
            if not callable(described):
                raise ModelError(
                    f"{self.path}: a custom preprocessing pipeline needs input_spec= (the "
                    "shape and dtype of the arrays it returns)"
                )
            input_spec = described()
        self._preprocessing = preprocessing
        self.input_spec = input_spec or PAD_NN_TENSOR_SPEC

        if output == "regression":
            self.label_source = LabelSource(None, "not_applicable", "regression", "", None)
            self.labels: list[str] = []
            self._label_type = "concentration"
        else:
            self.label_source = resolve_labels(self.path, self.kind, labels, self.record)
            found = self.label_source.labels
            self.labels = [standardize_label(x) for x in found] if found else []
            self._label_type = label_type_of(self.labels) if found else CLASS_INDEX_LABEL_TYPE

        self._module = self._torch_module(module)
        self._model: Any = None
        self._dynamic_batch = True
        if self.class_indices:
            self._warn_unlabelled()

    def _torch_module(self, module: torch.nn.Module | None) -> torch.nn.Module | None:
        """The ``nn.Module`` a state dict loads into (its class and repr join the model's
        identity); refused where it cannot apply, ignored with a warning for TorchScript."""
        self.torch_format: str | None = None
        self._module_identity: list[str] | None = None
        if self.kind != "torch":
            if module is not None:
                raise ModelError(f"{self.path}: module= only applies to PyTorch state dict "
                                 "files")
            return None
        self.torch_format = torch_file_format(self.path)
        if self.torch_format != "state_dict":
            if module is not None:
                warnings.warn(
                    f"{self.path} is {self.torch_format} (it carries its own code); "
                    "module= is ignored",
                    stacklevel=3,
                )
            return None
        if module is None:
            raise ModelError(
                f"{self.path}: this is a PyTorch state dict (torch.save output), not "
                "TorchScript; pass module= (an nn.Module of the right architecture) "
                "to load it into, or save the model with torch.jit.script/trace"
            )
        cls = type(module)
        self._module_identity = [
            f"{cls.__module__}.{cls.__qualname__}",
            sha256_bytes(repr(module).encode("utf-8")),
        ]
        return module

    @classmethod
    def from_pad_model(
        cls,
        model_id: int,
        settings: Settings | None = None,
        refresh: bool = False,
        **kwargs: Any,
    ) -> CustomModelAdapter:
        """A PAD model's verified weights run as a custom model, labelled by its record.

        The record and weights are fetched once and sha256-checked (``resolve_model``); the
        record's ``labels`` are the label source unless ``labels=`` is given. Useful to run
        a PAD network under another pipeline or runtime than ``PADTensorFlowAdapter``'s.
        """
        from ..sources.model_artifacts import resolve_model

        resolved = resolve_model(int(model_id), settings=settings, refresh=refresh)
        record = dict(resolved.record)
        record.setdefault("id", int(model_id))
        kwargs.setdefault("name", f"custom_pad_{int(model_id)}")
        return cls(resolved.weights_path, record=record, **kwargs)

    @property
    def class_indices(self) -> bool:
        """True when no labels were found: predictions are class indices."""
        return self.label_source.kind == "class_index"

    def _warn_unlabelled(self) -> None:
        signature = self.get_cache_signature()
        if signature in _WARNED_UNLABELLED:
            return
        _WARNED_UNLABELLED.add(signature)
        warnings.warn(
            f"{self.path}: no labels found, so predictions are class indices ('0', '1', ... "
            f"in output order) and cannot be scored; {how_to_give_labels(self.path)}",
            UnlabelledModelWarning,
            stacklevel=3,
        )

    # -- ModelAdapter interface -----------------------------------------------------------
    def get_required_preprocessing(self) -> PreprocessingPipeline:
        if self._preprocessing is not None:
            return self._preprocessing
        from ..preprocessing.nn import PADNeuralNetworkPipeline

        return PADNeuralNetworkPipeline()

    def get_tensor_spec(self) -> TensorSpec:
        return self.input_spec

    def label_type(self) -> str:
        return self._label_type

    def actual_label(self, card: dict[str, Any]) -> Any:
        """Unknown for class-index predictions: index 3 means nothing without labels."""
        if self.class_indices:
            return None
        return super().actual_label(card)

    def get_cache_signature(self) -> str:
        """File sha256, runtime + version, labels and their source (kind, machine-independent
        name, content hash), output kind, input spec, and for a state dict the module's
        class and structure (its code is not in the file)."""
        return self.signature_of(
            self.sha256,
            self.runtime.as_list(),
            self.labels,
            self.label_source.signature_part(),
            self.output,
            self.input_spec.as_dict(),
            self._module_identity,
            INTERPRETATION_VERSION,
        )

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    # -- loading, per family --------------------------------------------------------------
    def _load(self) -> Any:
        if self._model is None:
            loader = {
                "tflite": self._load_tflite,
                "onnx": self._load_onnx,
                "keras": self._load_keras,
                "torch": self._load_torch,
            }[self.kind]
            self._model = loader()
        return self._model

    def _load_tflite(self) -> Any:
        return load_tflite(self.path, self.sha256)

    def _load_onnx(self) -> Any:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise _missing("onnxruntime", "onnx") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = available_cores()
        opts.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelError(f"{self.path}: not a loadable ONNX model ({exc})") from exc
        first = session.get_inputs()[0]
        self._dynamic_batch = not isinstance(first.shape[0], int) if first.shape else False
        self._onnx_input = first.name
        self._onnx_dtype = _ONNX_DTYPES.get(first.type, np.float32)
        return session

    def _load_keras(self) -> Any:
        try:
            import keras
        except ImportError as exc:
            raise _missing("keras (TensorFlow)", "all") from exc
        try:
            return keras.models.load_model(self.path, safe_mode=True, compile=False)
        except Exception as exc:
            raise ModelError(
                f"{self.path}: cannot load Keras model with safe_mode=True ({exc})"
            ) from exc

    def _load_torch(self) -> Any:
        try:
            import torch
        except ImportError as exc:
            raise _missing("torch", "torch") from exc
        if self.torch_format == "torchscript":
            try:
                model = torch.jit.load(str(self.path), map_location="cpu")
            except Exception as exc:
                raise ModelError(f"{self.path}: not a loadable TorchScript file ({exc})") from exc
        else:
            try:
                state = torch.load(str(self.path), map_location="cpu", weights_only=True)
            except Exception as exc:
                raise ModelError(
                    f"{self.path}: refused: not a plain state dict loadable with "
                    f"weights_only=True ({type(exc).__name__}: {exc}); pad_assets never "
                    "unpickles arbitrary objects: save model.state_dict() or TorchScript"
                ) from exc
            if isinstance(state, dict):
                for key in ("state_dict", "model_state_dict"):
                    if isinstance(state.get(key), dict):
                        state = state[key]
                        break
            if not isinstance(state, dict):
                raise ModelError(
                    f"{self.path}: expected a state dict (name -> tensor), got "
                    f"{type(state).__name__}"
                )
            model = self._module
            assert model is not None  # checked in __init__
            try:
                model.load_state_dict(state, strict=True)
            except Exception as exc:
                raise ModelError(
                    f"{self.path}: state dict does not fit {type(model).__qualname__} ({exc})"
                ) from exc
        model.eval()
        return model

    # -- inference ----------------------------------------------------------------------
    def predict_outputs(self, preprocessed_images: np.ndarray) -> np.ndarray:
        """Raw model outputs, (n, k), for a batch of stored or model-dtype tensors.

        Cast to the model dtype chunk by chunk (see ``PADTensorFlowAdapter.predict_logits``).
        """
        stored = np.asarray(preprocessed_images)
        if stored.ndim == len(self.input_spec.shape):
            stored = stored[None]
        if len(stored) > MAX_INVOKE_BATCH:
            return np.concatenate(
                [
                    self.predict_outputs(stored[i : i + MAX_INVOKE_BATCH])
                    for i in range(0, len(stored), MAX_INVOKE_BATCH)
                ]
            )
        batch = self.input_spec.to_model(stored)
        model = self._load()
        if self.kind == "tflite":
            out = model.run(batch)
        elif self.kind == "onnx":
            chunks = _batches(batch, MAX_INVOKE_BATCH if self._dynamic_batch else 1)
            out = np.concatenate(
                [
                    np.asarray(
                        model.run(None, {self._onnx_input: c.astype(self._onnx_dtype, copy=False)})[0]
                    )
                    for c in chunks
                ]
            )
        elif self.kind == "keras":
            import keras

            outs = []
            for c in _batches(batch, MAX_INVOKE_BATCH):
                y = model(c, training=False)
                # Eager TF tensors convert directly; other Keras backends via keras.ops.
                outs.append(y.numpy() if hasattr(y, "numpy") else keras.ops.convert_to_numpy(y))
            out = np.concatenate(outs)
        else:
            import torch

            outs = []
            with torch.inference_mode():
                for c in _batches(batch, MAX_INVOKE_BATCH):
                    y = model(torch.from_numpy(np.ascontiguousarray(c)))
                    if isinstance(y, (tuple, list)):
                        y = y[0]
                    outs.append(y.detach().cpu().numpy())
            out = np.concatenate(outs)
        return np.asarray(out).reshape(batch.shape[0], -1)

    def predict_batch(
        self, preprocessed_images: np.ndarray, contexts: Sequence[dict[str, Any]] | None = None
    ) -> list[PredictionRecord]:
        if len(preprocessed_images) == 0:
            return []
        out = self.predict_outputs(preprocessed_images)
        if self.output != "regression":
            if self.class_indices:
                indices = [str(i) for i in range(out.shape[1])]
                return records_from_outputs(out, indices, self._label_type, self.output,
                                            self.name)
            if out.shape[1] != len(self.labels):
                raise ModelError(
                    f"{self.name}: the model outputs {out.shape[1]} values per item but has "
                    f"{len(self.labels)} labels (from {describe_source(self.label_source)}); "
                    "labels and weights do not belong together"
                )
            return records_from_outputs(out, self.labels, self._label_type, self.output,
                                        self.name)
        if out.shape[1] != 1:
            raise ModelError(
                f"{self.name}: a regression model must output one value per item, got "
                f"{out.shape[1]}"
            )
        records = []
        for v in out[:, 0].astype(np.float64):
            ok = bool(np.isfinite(v))
            records.append(
                PredictionRecord(
                    prediction=float(v) if ok else None,
                    label_type="concentration",
                    status=STATUS_OK if ok else STATUS_FAILED,
                    detail="" if ok else f"{self.name}: non-finite model output",
                    outputs=[float(v)],
                )
            )
        return records

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            path=str(self.path),
            sha256=self.sha256,
            format=self.torch_format or self.kind,
            runtime=self.runtime.as_list(),
            labels=list(self.labels),
            label_type=self._label_type,
            label_source=self.label_source.lineage(),
            record_id=self.record.get("id") if self.record else None,
            output=self.output,
            input_spec=self.input_spec.as_dict(),
            module=self._module_identity[0] if self._module_identity else None,
        )
        return d

    def __repr__(self) -> str:
        return f"CustomModelAdapter({self.path}, {self.kind}, {self.output})"
