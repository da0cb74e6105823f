"""Model specs as the CLI takes them (``16``, ``pls:18``, ``tflite:/path/m.tflite``,
``custom:/path/model.onnx``, or a model name from the pad_assets config) turned into
adapters, through the registry of model kinds (``models/kinds.py``)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import (
    InvalidInputError,
    ModelError,
)
from ..models import kinds
from ..store.queries import select

if TYPE_CHECKING:
    from ..models.base import ModelAdapter
    from ..settings import Settings
    from ..store import ContentStore


MODEL_SPEC_HELP = (
    "model spec: a PAD model id (e.g. 16; its record's type picks TF Lite or PLS), "
    "'tflite:16', 'pls:18', 'tflite:/path/model.tflite', 'pls:/path/coefs.csv', "
    "'custom:/path/model.onnx', or a model name from the pad_assets config (e.g. nn_drug)"
)


def _labels_from_cache(store: ContentStore, weights_sha256: str) -> list[str] | None:
    rows = select(store.index, "items", "meta", layer="prediction", limit=1,
                  **{"meta.model.weights_sha256": weights_sha256})
    if not rows:
        return None
    labels = (json.loads(rows[0][0]).get("model") or {}).get("labels")
    return list(labels) if labels else None


def resolve_model_spec(spec: str, settings: Settings, store: ContentStore | None = None,
                       labels: Sequence[str] | None = None) -> ModelAdapter:
    """A model adapter from a CLI model spec (see ``MODEL_SPEC_HELP``).

    A bare id looks at the (cached) model record's type, so ``18`` is the PLS model
    without having to say ``pls:``. A ``.tflite`` path without ``labels`` reuses the labels
    recorded with cached predictions of the same weights (by sha256), since a ``.tflite``
    file does not carry its labels.
    """
    from ..store import ContentStore as _Store

    text = str(spec).strip()
    if not text:
        raise InvalidInputError(f"empty model spec: expected {MODEL_SPEC_HELP}")
    prefix, sep, rest = text.partition(":")
    kind = kinds.by_spec_prefix(prefix) if sep else None
    if kind is None:
        rest = text
    store = store or _Store(settings.cache_dir)
    if re.fullmatch(r"\d{1,9}", rest):
        model_id = int(rest)
        if kind is not None and not kind.takes_model_id:
            raise InvalidInputError(f"model spec {spec!r}: {kind.spec_prefix} models are "
                                    "files, not ids")
        if kind is None:
            from ..sources.model_artifacts import model_record

            mtype = str(model_record(model_id, settings, store).get("type") or "tf_lite")
            kind = kinds.by_pad_type(mtype)
            if kind is None:
                runs = [k.pad_type for k in kinds.KINDS.values() if k.pad_type]
                raise ModelError(f"PAD model {model_id} has type {mtype!r}; pad_assets runs "
                                 + " and ".join(f"'{t}'" for t in runs) + " models")
        return kind.build(model_id=model_id, settings=settings, labels=labels)
    path = Path(rest).expanduser()
    tflite = kinds.KINDS["pad_tflite"]
    if kind is None and path.suffix.lower() == ".tflite" and path.is_file():
        kind = tflite
    if kind is tflite:
        from ..models.tflite import file_sha256

        found = list(labels) if labels else _labels_from_cache(store, file_sha256(path))
        if not found:
            raise InvalidInputError(
                f"model spec {spec!r}: a .tflite file carries no labels and no cached "
                "prediction of these weights records them; pass --labels a,b,c")
        return kind.build(path=path, labels=found)
    if kind is not None:
        return kind.build(path=path, labels=labels)
    from ..project_config import load_config

    models = {m.name: m for m in load_config().models}
    if text in models:
        return models[text].build(settings)
    raise InvalidInputError(
        f"model spec {spec!r} is not understood: expected {MODEL_SPEC_HELP}; config models: "
        f"{sorted(models) or 'none'}")


__all__ = [
    "MODEL_SPEC_HELP",
    "resolve_model_spec",
]
