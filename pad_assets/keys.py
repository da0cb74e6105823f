"""Content keys: the one place that derives and verifies every key of the cache.

The keys form a Merkle chain, so a change anywhere up the chain changes every key below it
and nothing else::

    raw key          = sha256(image bytes)
    pipeline key     = H("pipeline", name, canonical parameters, code version)
    preprocessed key = H("preprocessed", raw key, pipeline key)
    tensor key       = H("tensor", preprocessed key, tensor spec)
    model signature  = H("model", adapter class, what the adapter says fixes its output)
    prediction key   = H("prediction", tensor key, model signature, per-card context)

``H`` is sha256 over the canonical JSON of its arguments (``hashing.canonical_json``), so
keys are hex strings, safe as file and HDF5 names and identical on every machine.

Writers derive keys here (the layers, the pipelines, the adapters); readers that must not
trust what they read verify them here too (``verify_link`` for lineage and the fault
tests, ``key_from_record`` for ``cache verify`` and shared shards): one rule, so a check can
never disagree with the code that wrote the item.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .hashing import canonical_json, sha256_bytes


def chain_key(kind: str, *parts: Any) -> str:
    """Hash of a layer name and its parents' keys/parameters (a link of the chain)."""
    return sha256_bytes(canonical_json([kind, *parts]).encode("utf-8"))


def chain_keys(kind: str, firsts: list[str], *rest: Any) -> list[str]:
    """``[chain_key(kind, f, *rest) for f in firsts]``, byte-identical, but the constant
    tail is serialised once per batch instead of once per card (a warm lookup of 500
    cards computes 1,500 keys)."""
    tail = canonical_json(list(rest))[1:-1]
    head = canonical_json([kind])[:-1] + ","
    suffix = ("," + tail if tail else "") + "]"
    return [sha256_bytes((head + json.dumps(f) + suffix).encode("utf-8")) for f in firsts]


def pipeline_key(name: str, parameters: Any, code_version: str) -> str:
    """What identifies a preprocessing pipeline's output (``PreprocessingPipeline``)."""
    return chain_key("pipeline", name, parameters, code_version)


def model_signature(adapter_class: str, *parts: Any) -> str:
    """What identifies a model's output: its adapter class and what fixes its behaviour."""
    return chain_key("model", adapter_class, *parts)


def preprocessed_key(raw_key: str, pipeline_key_: str) -> str:
    return chain_key("preprocessed", raw_key, pipeline_key_)


def preprocessed_keys(raw_keys: Sequence[str], pipeline_key_: str) -> list[str]:
    return chain_keys("preprocessed", list(raw_keys), pipeline_key_)


def tensor_key(preprocessed_key_: str, tensor_spec: dict[str, Any]) -> str:
    return chain_key("tensor", preprocessed_key_, tensor_spec)


def tensor_keys(preprocessed_keys_: Sequence[str], tensor_spec: dict[str, Any]) -> list[str]:
    return chain_keys("tensor", list(preprocessed_keys_), tensor_spec)


def prediction_key(tensor_key_: str, signature: str, context: dict[str, Any]) -> str:
    """The per-card ``context`` (e.g. the card's drug for PLS) is part of the key."""
    return chain_key("prediction", tensor_key_, signature, context)


def prediction_keys(tensor_keys_: Sequence[str], signature: str,
                    contexts: Sequence[dict[str, Any]]) -> list[str]:
    """Prediction keys of a batch; cards with equal contexts share one serialisation."""
    out: list[str | None] = [None] * len(tensor_keys_)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(contexts):
        groups.setdefault(canonical_json(c), []).append(i)
    for idx in groups.values():
        keys = chain_keys("prediction", [tensor_keys_[i] for i in idx], signature,
                          contexts[idx[0]])
        for i, k in zip(idx, keys, strict=True):
            out[i] = k
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------
# verification: the key an item must have, from what its metadata records
#: Layers whose key is the digest of their own payload (sha256 of bytes, or array digest).
CONTENT_KEYED_LAYERS = frozenset({"raw", "manifest", "model_record", "weights", "asset_value"})
#: Layers whose key is a link of the chain over recorded parents and parameters.
DERIVED_LAYERS = ("preprocessed", "tensor", "prediction")


def _need(meta: Mapping[str, Any], name: str) -> Any:
    """A recorded parent key or signature; an empty one is as missing as an absent one."""
    value = meta[name]
    if not value:
        raise KeyError(name)
    return value


def _recorded_pipeline_key(pipe: Mapping[str, Any]) -> str:
    recorded = pipe.get("cache_key")
    if recorded:
        return str(recorded)
    return pipeline_key(pipe["name"], pipe["parameters"], pipe["code_version"])


def key_from_record(layer: str, meta: Mapping[str, Any]) -> str:
    """The key a derived item must have, re-derived from the parents and parameters its
    metadata records (as the layers recorded them when they wrote it).

    Raises ``KeyError``/``TypeError`` when the metadata lacks a part, ``ValueError`` for a
    layer with no derivation rule (content-keyed layers are keyed by their payload digest).
    """
    if layer == "preprocessed":
        return preprocessed_key(_need(meta, "raw_key"),
                                _recorded_pipeline_key(meta["pipeline"]))
    if layer == "tensor":
        if meta["spec"] is None:
            raise KeyError("spec")
        return tensor_key(_need(meta, "preprocessed_key"), meta["spec"])
    if layer == "prediction":
        return prediction_key(_need(meta, "tensor_key"), _need(meta["model"], "signature"),
                              meta.get("context") or {})
    raise ValueError(f"no key rule for layer {layer!r}")


def verify_link(layer: str, key: str, meta: Mapping[str, Any]) -> str:
    """Does the item's recorded input hash to its key? ``ok``, ``mismatch: ...`` or
    ``unverifiable: ...``.

    This is the Merkle property made checkable: the raw key is the sha256 the download
    recorded; each derived key is H(parent key, parameters) over what the item itself
    says its parent and parameters were. A mismatch means the metadata does not describe
    the item (a bug, or a hand-edited index), so the item's lineage cannot be trusted.
    """
    try:
        if layer == "raw":
            expected = str(meta["sha256"])
        elif layer in DERIVED_LAYERS:
            if layer == "preprocessed":
                p = meta["pipeline"]
                recomputed = pipeline_key(p["name"], p["parameters"], p["code_version"])
                if p.get("cache_key") not in (None, recomputed):
                    return ("mismatch: the pipeline's recorded cache key is not H(name, "
                            "parameters, code_version) of its recorded parameters")
            expected = key_from_record(layer, meta)
        else:
            return f"unverifiable: no key rule for layer {layer!r}"
    except (KeyError, TypeError) as exc:
        return f"unverifiable: metadata lacks {exc}"
    return "ok" if expected == key else f"mismatch: recorded inputs hash to {expected}"


def expected_key(layer: str, payload_digest: str | None, meta: Any) -> str | None:
    """The key an item must have: its payload digest (content-keyed layers) or the link
    re-derived from its recorded chain; None when the metadata cannot say."""
    if layer in CONTENT_KEYED_LAYERS:
        return payload_digest
    if not isinstance(meta, Mapping):
        return None
    if layer == "dagster_run":  # the IO manager's record of a run: keyed by the run id
        run_id = meta.get("run_id")
        return chain_key("dagster-run", str(run_id)) if run_id else None
    try:
        return key_from_record(layer, meta)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
