"""Provenance of one card: every link of its Merkle chain, read back from the cache.

Why a module of its own: a cached prediction is only as trustworthy as the chain behind it
(which bytes, from which URL, checked against which md5, through which pipeline and
parameters, into which tensor layout, by which weights and runtime, on which host). Every
layer's item records its parents' keys and parameters, so the chain can be re-read and
*re-hashed* from the index alone: ``card_lineage`` never downloads and never computes a
layer, and each link says whether its recorded inputs still hash to its key
(``key_check``). Missing layers are reported as missing, never raised: "this card was never
preprocessed" is an answer, not an error.

Used by ``CachedDataset.lineage`` and the ``pad-assets lineage DATASET CARD_ID`` command
(``pad_assets.cli.records``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import (
    CacheCorruptionError,
)
from ..hashing import sha256_bytes
from ..keys import prediction_key, preprocessed_key, tensor_key, verify_link
from ..sources.urls import card_id_of
from .chain import (
    cached_manifest,
    dagster_refs,
    iso_time,
    json_safe,
    model_summary,
    prediction_metas_for_raw,
)

if TYPE_CHECKING:
    from ..dataset import CachedDataset
    from ..models.base import ModelAdapter
    from ..preprocessing.base import PreprocessingPipeline
    from ..store import ContentStore


_MANIFEST_FIELDS = ("card_id", "split", "drug", "quantity", "sample_id", "camera", "md5",
                    "image_url", "image_name")
_RECORD_FIELDS = ("prediction", "probability", "energy", "label_type", "status", "detail")


# ---------------------------------------------------------------------------------------
# small helpers (shared with pad_assets.provenance.audit)


# ---------------------------------------------------------------------------------------
# cached manifest


def _manifest_section(dataset: CachedDataset, card_id: int
                      ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    cm = cached_manifest(dataset)
    if cm is None:
        return {"status": "missing",
                "reason": f"no manifest of {dataset.name!r} is cached (run download first)"
                }, None
    rows = cm.manifest.rows
    match = rows[rows["card_id"] == card_id]
    section: dict[str, Any] = {
        "status": "present" if len(match) else "card not in manifest",
        "key": cm.key, "ref": cm.ref, "source": cm.meta.get("source") or cm.manifest.source,
        "fetched_at": iso_time(cm.meta.get("fetched_at")), "rows": len(rows),
    }
    if cm.meta.get("warnings"):
        section["warnings"] = list(cm.meta["warnings"])
    if not len(match):
        return section, None
    row = {k: json_safe(v) for k, v in match.iloc[0].to_dict().items()}
    section["row"] = {k: row.get(k) for k in _MANIFEST_FIELDS}
    return section, row


# ---------------------------------------------------------------------------------------
# Dagster partitions that point at an item (refs written by the IO manager)


# ---------------------------------------------------------------------------------------
# predictions cached for raw keys, and the models behind them


# ---------------------------------------------------------------------------------------
# the chain of one card
def _stamp_fields(meta: dict[str, Any]) -> dict[str, Any]:
    return {"created_at": iso_time(meta.get("created_at")), "host": meta.get("host"),
            "platform": meta.get("platform"), "libraries": meta.get("libraries")}


def _verify_payload(store: ContentStore, key: str, raw: bool = False) -> str:
    try:
        got = store.get_many([key], touch=False).get(key)
    except CacheCorruptionError as exc:
        return f"failed: {exc}"
    if got is None:
        return "failed: payload not readable"
    if raw and sha256_bytes(got) != key:  # type: ignore[arg-type]
        return "failed: sha256 of the stored bytes differs from the raw key"
    return "ok"


def _raw_section(store: ContentStore, card: dict[str, Any] | None, row: dict[str, Any] | None,
                 verify: bool) -> dict[str, Any]:
    md5_manifest = (row or {}).get("md5")
    if card is None:
        return {"status": "missing", "reason": "the card's image was never downloaded "
                "into this cache", "md5_manifest": md5_manifest,
                "image_url": (row or {}).get("image_url")}
    if card.get("status") == "evicted" and card.get("raw_key"):
        # gc removed the bytes, the key stays: what was derived from it is still cached
        return {"status": "evicted", "key": card["raw_key"], "reason": card.get("detail"),
                "recorded_at": iso_time(card.get("updated")), "md5_manifest": md5_manifest,
                "image_url": (row or {}).get("image_url")}
    if card.get("status") != "ok" or not card.get("raw_key"):
        return {"status": "failed", "reason": card.get("detail") or card.get("status"),
                "recorded_at": iso_time(card.get("updated")), "md5_manifest": md5_manifest,
                "image_url": (row or {}).get("image_url")}
    key = card["raw_key"]
    entry = store.entries([key]).get(key)
    if entry is None:
        return {"status": "missing", "key": key, "reason": "the card record names this raw "
                "item but the index no longer holds it (garbage-collected?)",
                "md5_manifest": md5_manifest}
    meta = entry["meta"]
    section: dict[str, Any] = {
        "status": "present", "key": key, "sha256": meta.get("sha256"), "md5": meta.get("md5"),
        "md5_manifest": md5_manifest,
        "md5_matches_manifest": None if md5_manifest is None else meta.get("md5") == md5_manifest,
        "source_url": meta.get("source_url"), "image_url": (row or {}).get("image_url"),
        "fetched_at": iso_time(meta.get("fetched_at")),
        "bytes": meta.get("nbytes", entry.get("nbytes")), "truncated": bool(meta.get("truncated")),
        "first_seen_as": {"dataset": meta.get("first_dataset"),
                          "card_id": meta.get("first_card_id")},
        "card_detail": card.get("detail") or "",
        **_stamp_fields(meta), "key_check": verify_link("raw", key, meta),
    }
    if verify:
        section["verified"] = _verify_payload(store, key, raw=True)
    return section


def _layer_section(store: ContentStore, layer: str, key: str, entry: dict[str, Any] | None,
                   expected_parent: tuple[str, str] | None, verify: bool,
                   missing_reason: str) -> dict[str, Any]:
    if entry is None:
        return {"status": "missing", "key": key, "reason": missing_reason}
    meta = entry["meta"]
    section: dict[str, Any] = {"status": "present", "key": key}
    if layer == "preprocessed":
        p = meta.get("pipeline") or {}
        section["pipeline"] = {k: p.get(k) for k in ("name", "class", "code_version",
                                                     "parameters", "cache_key")}
        section["shape"] = meta.get("shape")
        section["dtype"] = meta.get("dtype")
    elif layer == "tensor":
        section["spec"] = meta.get("spec")
    section["truncated"] = bool(meta.get("truncated"))
    section.update(_stamp_fields(meta))
    section["key_check"] = verify_link(layer, key, meta)
    if expected_parent is not None:
        field_name, parent = expected_parent
        if meta.get(field_name) != parent:
            section["key_check"] = (f"mismatch: recorded {field_name} {meta.get(field_name)} "
                                    f"is not this card's {parent}")
    if verify:
        section["verified"] = _verify_payload(store, key)
    return section


def _prediction_section(key: str, meta: dict[str, Any] | None, missing_reason: str,
                        matched_by: str = "key") -> dict[str, Any]:
    if meta is None:
        return {"status": "missing", "key": key, "reason": missing_reason}
    record = meta.get("record") or {}
    section: dict[str, Any] = {
        "status": "present", "key": key,
        "record": {k: record.get(k) for k in _RECORD_FIELDS},
        "context": meta.get("context") or {},
        "model_signature": (meta.get("model") or {}).get("signature"),
        "model": meta.get("model"),
        "pipeline": (meta.get("pipeline") or {}).get("name"),
        "truncated": bool(meta.get("truncated")),
        "inference_seconds": meta.get("inference_seconds"),
        **_stamp_fields(meta),
        "run_id": meta.get("run_id"),
        "key_check": verify_link("prediction", key, meta),
    }
    if matched_by != "key":
        section["matched_by"] = matched_by
    return section


def _model_sections(dataset: CachedDataset, adapter: ModelAdapter,
                    preprocessing: PreprocessingPipeline | None, raw_key: str | None,
                    row: dict[str, Any] | None, verify: bool) -> dict[str, Any]:
    store = dataset.store
    pipeline = preprocessing or adapter.get_required_preprocessing()
    spec = adapter.get_tensor_spec()
    signature = adapter.get_cache_signature()
    out: dict[str, Any] = {"model": {"name": adapter.name, "class": type(adapter).__qualname__,
                                     "signature": signature, "description": adapter.describe()}}
    if raw_key is None:
        why = "no raw image is cached for this card"
        out["preprocessed"] = {"status": "missing", "reason": why,
                               "pipeline": pipeline.describe()}
        out["tensor"] = {"status": "missing", "reason": why, "spec": spec.as_dict()}
        out["prediction"] = {"status": "missing", "reason": why}
        return out
    pre = preprocessed_key(raw_key, pipeline.get_cache_key())
    ten = tensor_key(pre, spec.as_dict())
    context = adapter.prediction_context(row) if row is not None else None
    pred = prediction_key(ten, signature, context) if context is not None else None
    entries = store.entries([k for k in (pre, ten, pred) if k])
    out["preprocessed"] = _layer_section(
        store, "preprocessed", pre, entries.get(pre), ("raw_key", raw_key), verify,
        f"not cached: {pipeline.name} was never run on this image in this cache")
    if out["preprocessed"]["status"] == "missing":
        out["preprocessed"]["pipeline"] = pipeline.describe()
    out["tensor"] = _layer_section(
        store, "tensor", ten, entries.get(ten), ("preprocessed_key", pre), verify,
        "not cached: no model with this tensor spec ran on this card here")
    if out["tensor"]["status"] == "missing":
        out["tensor"]["spec"] = spec.as_dict()
    meta = entries[pred]["meta"] if pred and pred in entries else None
    matched_by = "key"
    if meta is None:
        # Same image and model, but another context or pipeline (e.g. the card was not in
        # the cached manifest, or a non-default preprocessing was used): say so.
        others = {k: m for k, m in prediction_metas_for_raw(store, [raw_key]).items()
                  if (m.get("model") or {}).get("signature") == signature}
        if others:
            pred, meta = sorted(others.items())[0]
            matched_by = ("raw key + model signature (context or pipeline differ from the "
                          "card's; see context/pipeline)")
    reason = ("not cached: this model never predicted this card in this cache"
              if context is not None else "card not in the cached manifest, so the "
              "per-card context (e.g. the drug for PLS) and prediction key are unknown")
    out["prediction"] = _prediction_section(pred or "", meta, reason, matched_by)
    if meta is not None:
        out["prediction"]["signature_matches_model"] = (
            (meta.get("model") or {}).get("signature") == signature)
    return out


def card_lineage(dataset: CachedDataset, card_id: int,
                 model_adapter: ModelAdapter | None = None, *,
                 preprocessing: PreprocessingPipeline | None = None,
                 verify: bool = False) -> dict[str, Any]:
    """The provenance chain of one card, from the cache alone (no network, no compute).

    Sections: ``manifest`` (row, manifest content key and fetch time), ``raw`` (sha256,
    md5 vs manifest, source URL, fetch time, size, truncated flag), and with
    ``model_adapter``: ``model`` (signature and description), ``preprocessed`` (pipeline
    name, parameters, code version, key), ``tensor`` (spec, key) and ``prediction`` (record,
    model signature and description, libraries, host, created_at, Dagster partitions).
    Without a model, ``cached_predictions`` lists every model's cached prediction for the
    image. A layer that is not cached has ``status: missing`` and a reason. Every present
    layer has ``key_check`` (its recorded inputs re-hashed against its key); ``verify=True``
    also reads and checksums the payloads.
    """
    cid = card_id_of(card_id)
    store = dataset.store
    manifest, row = _manifest_section(dataset, cid)
    out: dict[str, Any] = {"dataset": dataset.name, "card_id": cid,
                           "cache_dir": str(dataset.settings.cache_dir), "manifest": manifest}
    card = store.cards(dataset.name).get(cid)
    if card is None and row is None and manifest["status"] != "missing":
        out["status"] = "unknown card"
    raw = _raw_section(store, card, row, verify)
    out["raw"] = raw
    raw_key = raw.get("key") if raw["status"] in ("present", "evicted") else None
    if model_adapter is not None:
        out.update(_model_sections(dataset, model_adapter, preprocessing, raw_key, row, verify))
    elif raw_key is not None:
        preds = prediction_metas_for_raw(store, [raw_key])
        out["cached_predictions"] = [
            {"key": k, "model": model_summary(m), "pipeline": (m.get("pipeline") or {}).get("name"),
             "context": m.get("context") or {},
             "record": {f: (m.get("record") or {}).get(f) for f in _RECORD_FIELDS},
             "created_at": iso_time(m.get("created_at")),
             "key_check": verify_link("prediction", k, m)}
            for k, m in sorted(preds.items(), key=lambda kv: (
                str((kv[1].get("model") or {}).get("name")), kv[0]))]
    # Dagster partitions that recorded these items (cheap: one query on refs).
    sections = [s for s in ("raw", "preprocessed", "tensor", "prediction") if s in out]
    keys = [out[s].get("key") for s in sections if out[s].get("status") == "present"]
    refs = dagster_refs(store, [k for k in keys if k], cid)
    for s in sections:
        k = out[s].get("key")
        if k in refs:
            out[s]["dagster"] = refs[k]
            if s == "prediction" and not out[s].get("run_id"):
                runs = [r["run_id"] for r in refs[k] if r.get("run_id")]
                out[s]["run_id"] = runs[-1] if runs else None
    return out


# ---------------------------------------------------------------------------------------
# readable text
def _fmt_scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    return str(value)


def _render(lines: list[str], name: str, value: Any, indent: int) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            lines.append(f"{pad}{name}: {{}}")
            return
        lines.append(f"{pad}{name}:")
        for k, v in value.items():
            _render(lines, str(k), v, indent + 2)
    elif isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            shown = ", ".join(_fmt_scalar(v) for v in value[:12])
            more = f", ... (+{len(value) - 12} more)" if len(value) > 12 else ""
            lines.append(f"{pad}{name}: [{shown}{more}]")
        else:
            lines.append(f"{pad}{name}:")
            for i, v in enumerate(value):
                _render(lines, f"- [{i}]", v, indent + 2)
    else:
        lines.append(f"{pad}{name}: {_fmt_scalar(value)}")


def format_lineage(lineage: dict[str, Any]) -> str:
    """The chain as indented text, one section per layer, top (manifest) to bottom."""
    lines = [f"card {lineage['card_id']} of dataset {lineage['dataset']} "
             f"(cache {lineage['cache_dir']})"]
    if lineage.get("status"):
        lines.append(f"  status: {lineage['status']}")
    last_libraries: Any = None
    for section in ("manifest", "raw", "model", "preprocessed", "tensor", "prediction"):
        sec = lineage.get(section)
        if sec is None:
            continue
        if sec.get("libraries") is not None:
            # Printed once; later layers made with the same versions just say so.
            if sec["libraries"] == last_libraries:
                sec = {**sec, "libraries": "same as above"}
            else:
                last_libraries = sec["libraries"]
        head = section.upper()
        if "status" in sec:
            head += f" [{sec['status']}]"
        if sec.get("key"):
            head += f" {sec['key']}"
        lines.append(head)
        for k, v in sec.items():
            if k in ("status", "key") or v is None:
                continue
            if section == "model" and k == "description":
                v = {dk: dv for dk, dv in v.items() if dk not in ("name", "class", "signature")}
            _render(lines, k, v, 2)
    if "cached_predictions" in lineage:
        preds = lineage["cached_predictions"]
        lines.append(f"CACHED PREDICTIONS [{len(preds)}]")
        for p in preds:
            r = p["record"]
            lines.append(f"  {p['model']['name']} ({p['model']['signature']}): "
                         f"{_fmt_scalar(r.get('prediction'))} p={_fmt_scalar(r.get('probability'))}"
                         f" status={r.get('status')} key={p['key']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# model specs (CLI)


__all__ = ["card_id_of", "card_lineage", "format_lineage"]
