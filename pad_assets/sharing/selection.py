"""Which cached items belong to a dataset (for export): one SQL pass over the index.

Why a module of its own: "what does this dataset consist of" (cards, raw images, the
derived items chained to them, the manifest, the model records and weights of its
predictions) is a question of the index, separate from how the answer is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError
from ..store import ContentStore
from ..store import refs as refnames
from ..store.queries import OneOf, each, select
from . import limits


def parse_layers(layers: str | Sequence[str]) -> list[str]:
    """"raw,tensors" or ["raw", "predictions"] -> index layer names, validated."""
    names = layers.split(",") if isinstance(layers, str) else list(layers)
    out = []
    for n in names:
        n = str(n).strip().lower()
        if not n:
            continue
        if n not in limits.LAYER_ALIASES:
            raise InvalidInputError(f"layer {n!r}: expected some of raw, preprocessed, "
                                    "tensors, predictions")
        out.append(limits.LAYER_ALIASES[n])
    if not out:
        raise InvalidInputError(f"layers {layers!r}: expected at least one layer")
    return list(dict.fromkeys(out))


@dataclass
class _Selection:
    items: dict[str, dict[str, Any]]  # key -> {layer, blob, meta, created}
    refs: list[tuple[str, str, float]]
    cards: list[dict[str, Any]]


def _select_dataset(store: ContentStore, dataset: str, layers: Sequence[str]) -> _Selection:
    index = store.index
    cards = select(index, "cards", "card_id", "raw_key", "status", "detail", "updated",
                   dataset=dataset)
    if not cards:
        known = sorted(each(select(index, "cards", "dataset", distinct=True)))
        raise InvalidInputError(
            f"dataset {dataset!r} has no cards in the cache at {store.root}; expected one of "
            f"{known or '(none: run `pad-assets download DATASET` first)'}")
    raw = {r for _, r, *_ in cards if r}
    want = set(layers)
    items: dict[str, dict[str, Any]] = {}

    def add(key: str, layer: str, blob: str | None, meta: str, created: float) -> None:
        items[key] = {"layer": layer, "blob": blob, "meta": json.loads(meta),
                      "created": float(created)}

    model_ids: set[str] = set()
    weights: set[str] = set()
    for key, layer, blob, meta, created, rk in select(
            index, "items", "key", "layer", "blob", "meta", "created", "meta.raw_key",
            layer=OneOf(("raw", "preprocessed", "tensor", "prediction"))):
        rkey = key if layer == "raw" else rk
        if layer not in want or rkey not in raw:
            continue
        add(key, layer, blob, meta, created)
        if layer == "prediction":
            model = items[key]["meta"].get("model") or {}
            if model.get("model_id") is not None:
                model_ids.add(str(model["model_id"]))
            for f in ("weights_sha256", "coefficients_sha256"):
                if model.get(f):
                    weights.add(str(model[f]))
    refs: list[tuple[str, str, float]] = []
    for name, key, updated in select(index, "refs", "name", "key", "updated"):
        tail = name.rsplit("/", 1)[-1]
        if (name.startswith(refnames.MANIFEST) and tail == dataset) or (
                name.startswith(refnames.MODEL_RECORD) and tail in model_ids):
            refs.append((name, key, float(updated)))
    extra = {k for _, k, _ in refs} | weights
    for key, layer, blob, meta, created in _select_keys(store, extra):
        add(key, layer, blob, meta, created)
    refs = [r for r in refs if r[1] in items]
    card_recs = [{"type": "card", "dataset": dataset, "card_id": int(c), "raw_key": r,
                  "status": s, "detail": d, "ts": float(u)} for c, r, s, d, u in cards]
    return _Selection(items, refs, card_recs)


def _select_keys(store: ContentStore, keys: set[str]) -> list[tuple]:
    return select(store.index, "items", "key", "layer", "blob", "meta", "created",
                  key=OneOf(sorted(keys)))

