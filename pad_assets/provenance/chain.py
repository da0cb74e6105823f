"""The chain collector: what the cache holds about a card's Merkle chain, read from the
index only (no network, no payload reads, no computation).

One place reads the cache for provenance; the renderers format what it returns:
``lineage.format_lineage`` (one card as text), ``audit.chain_row`` (a CSV row per card x
model) and ``prov_json`` (W3C PROV-JSON, and ``card_prov``'s pictures). A chain is a dict:
``card_id``, the manifest ``row``, ``raw_key`` and the index entries ``raw``,
``preprocessed``, ``tensor``, with ``prediction_key``/``prediction`` (its metadata) and the
cached ``manifest``; ``chain_check`` re-hashes each link against its key.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..errors import (
    CacheCorruptionError,
    InvalidInputError,
)
from ..keys import chain_key, verify_link
from ..models.base import standardize_label
from ..sources.listing import manifest_ref
from ..store import refs as refnames
from ..store.fs import SQL_IN_CHUNK
from ..store.queries import OneOf, Prefix, select

if TYPE_CHECKING:
    from ..dataset import CachedDataset
    from ..models.base import ModelAdapter
    from ..sources.registry import Manifest
    from ..store import ContentStore, NewItem

#: Refs the IO manager writes for each image-layer partition: ``asset/<asset key>/<card>``.
ASSET_REF_PREFIX = refnames.ASSET


#: Refs naming the Dagster run that materialized a partition: ``asset-run/<asset>/<card>``
#: -> a meta-only ``dagster_run`` item holding the run id (see ``dagster_run_records``).
ASSET_RUN_REF_PREFIX = refnames.ASSET_RUN


def iso_time(ts: Any) -> str | None:
    """Epoch seconds as ISO 8601 UTC with microseconds (``None`` stays ``None``)."""
    if ts is None:
        return None
    try:
        value = float(ts)
    except (TypeError, ValueError):
        return str(ts)
    return datetime.fromtimestamp(value, tz=timezone.utc).isoformat(timespec="microseconds"
                                                                    ).replace("+00:00", "Z")


def json_safe(value: Any) -> Any:
    """NaN (pandas' missing value) to None, NumPy scalars to Python ones: JSON-safe."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        with contextlib.suppress(TypeError, ValueError):
            value = value.item()
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value


@dataclass
class CachedManifest:
    """The manifest a dataset's cache holds: its content key, ref, metadata and rows."""

    key: str
    ref: str
    meta: dict[str, Any]
    manifest: Manifest


def cached_manifest(dataset: CachedDataset) -> CachedManifest | None:
    """The dataset's manifest from the cache only (no network), or None.

    The manifest ref names the registry it came from; when the current settings point at
    another registry (an emulator on a new port, a mirror), the newest cached manifest of
    a dataset of that name is used, and its ref says which registry that was.
    """
    from ..sources.registry import Manifest

    store = dataset.store
    ref = manifest_ref(dataset.settings, dataset.name)
    key = store.ref(ref)
    if key is None:
        rows = refnames.newest_for(store.index, refnames.MANIFEST, dataset.name)
        if not rows:
            return None
        ref, key = rows[0]
    entry = store.entries([key]).get(key)
    if entry is None:
        return None
    try:
        data = store.get_many([key], touch=False).get(key)
        if data is None:
            return None
        manifest = Manifest.from_json_bytes(data)  # type: ignore[arg-type]
    except (CacheCorruptionError, ValueError, KeyError):
        return None
    return CachedManifest(key, ref, entry["meta"], manifest)


def dagster_run_records(asset_key: str, partitions: Iterable[str], run_id: str
                        ) -> tuple[list[NewItem], list[tuple[str, str]]]:
    """What to ``store.put`` so lineage can name the Dagster run behind each partition.

    One meta-only ``dagster_run`` item per run (key = H("dagster-run", run id), so every
    asset of the run shares it) and one ``asset-run/<asset key>/<partition>`` ref per
    partition pointing at it. Refs point at a real item, so cache verification sees no
    dangling ref, and the newest run of a partition wins like every ref.
    ``asset_key`` is ``AssetKey.to_user_string()`` (e.g. ``FHI2020/prediction_nn_drug``).
    """
    from ..store import NewItem

    key = chain_key("dagster-run", str(run_id))
    items = [NewItem(key, "dagster_run", None, {"run_id": str(run_id)})]
    refs = [(refnames.asset_run(asset_key, p), key) for p in partitions]
    return items, refs


def dagster_refs(store: ContentStore, keys: Sequence[str], card_id: int
                 ) -> dict[str, list[dict[str, Any]]]:
    """content key -> Dagster partitions of ``card_id`` recorded as pointing at it.

    Best effort and cheap: one query on the refs table, no Dagster import. The run id is
    given when the run was recorded (``dagster_run_records``); otherwise None.
    """
    keys = [k for k in dict.fromkeys(keys) if k]
    if not keys:
        return {}
    found: dict[str, list[dict[str, Any]]] = {}
    suffix = f"/{card_id}"
    names = [n for n in select(store.index, "refs", "name", "key", "updated",
                               key=OneOf(keys), name=Prefix(ASSET_REF_PREFIX))
             if n[0].endswith(suffix)]
    runs = store.index.refs_for(
        [ASSET_RUN_REF_PREFIX + n[len(ASSET_REF_PREFIX):] for n, _, _ in names]) if names else {}
    run_metas = store.metas(sorted(set(runs.values()))) if runs else {}
    for name, key, updated in sorted(names):
        asset = name[len(ASSET_REF_PREFIX):-len(suffix)]
        run_key = runs.get(ASSET_RUN_REF_PREFIX + name[len(ASSET_REF_PREFIX):])
        run_id = (run_metas.get(run_key) or {}).get("run_id") if run_key else None
        found.setdefault(key, []).append({
            "asset_key": asset, "partition": str(card_id), "recorded_at": iso_time(updated),
            "run_id": run_id,
        })
    return found


def prediction_metas_for_raw(store: ContentStore, raw_keys: Iterable[str]
                             ) -> dict[str, dict[str, Any]]:
    """prediction key -> metadata, for every cached prediction made from these raw keys.

    The model's name is its current one (``pad_assets.layers.model_names``): a rename shows
    at once; the name the prediction was made under stays in ``model.recorded_name``.
    """
    from ..layers.model_names import current_names

    out = _prediction_metas(store, raw_keys)
    names = current_names(store)
    for meta in out.values():
        model = meta.get("model")
        if isinstance(model, dict) and names.get(str(model.get("signature"))) not in (
                None, model.get("name")):
            model["recorded_name"] = model.get("name")
            model["name"] = names[str(model["signature"])]
    return out


def _prediction_metas(store: ContentStore, raw_keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    wanted = list(dict.fromkeys(k for k in raw_keys if k))
    out: dict[str, dict[str, Any]] = {}
    if len(wanted) > SQL_IN_CHUNK:
        # A whole dataset: one pass over the prediction rows beats one scan per chunk.
        keep = set(wanted)
        for key, raw, meta in select(store.index, "items", "key", "meta.raw_key", "meta",
                                     layer="prediction"):
            if raw in keep:
                out[key] = json.loads(meta)
        return out
    for key, meta in select(store.index, "items", "key", "meta", layer="prediction",
                            **{"meta.raw_key": OneOf(wanted)}):
        out[key] = json.loads(meta)
    return out


def model_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """What identifies the model of a prediction (from its recorded description)."""
    m = meta.get("model") or {}
    return {
        "name": m.get("name"), "class": m.get("class"), "signature": m.get("signature"),
        "model_id": m.get("model_id"), "record_name": m.get("record_name"),
        "version": m.get("version"),
        "weights_sha256": (m.get("weights_sha256") or m.get("coefficients_sha256")
                           or m.get("sha256")),
        "weights_url": m.get("weights_url"), "runtime": m.get("runtime"),
    }


def cached_models(store: ContentStore, raw_keys: Iterable[str]) -> list[dict[str, Any]]:
    """Distinct models (by signature) with cached predictions for these raw keys.

    Sorted by name then signature, each with the number of predictions found.
    """
    return models_of(prediction_metas_for_raw(store, raw_keys).values())


def models_of(prediction_metas: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``cached_models`` of prediction metadata already read (no second index scan)."""
    by_sig: dict[str, dict[str, Any]] = {}
    for meta in prediction_metas:
        s = model_summary(meta)
        sig = s["signature"] or ""
        entry = by_sig.setdefault(sig, {**s, "predictions": 0})
        entry["predictions"] += 1
    return sorted(by_sig.values(), key=lambda m: (str(m["name"]), str(m["signature"])))


def model_filter(models: Sequence[ModelAdapter | str] | None,
                  available: list[dict[str, Any]]) -> set[str] | None:
    """Signatures to export (None: every cached model).

    An adapter selects its signature; a string selects a cached model by name, by
    signature, or by a signature prefix of at least 8 hex digits, so an audit of a cache
    needs no model files and no network.
    """
    if models is None:
        return None
    wanted: set[str] = set()
    for m in models:
        if not isinstance(m, str):
            wanted.add(m.get_cache_signature())
            continue
        text = m.strip()
        hits = {a["signature"] for a in available
                if text in (a["name"], a["signature"])
                or (len(text) >= 8 and str(a["signature"]).startswith(text))}
        if not hits:
            shown = ", ".join(f"{a['name']} ({str(a['signature'])[:12]})" for a in available)
            raise InvalidInputError(
                f"model {text!r} has no cached prediction for this dataset; expected a model "
                f"name or signature among: {shown or 'none (nothing predicted yet)'}")
        wanted |= hits
    return wanted


def _context_fits(context: dict[str, Any], row: dict[str, Any] | None) -> bool:
    """Whether a prediction's per-card context agrees with this card's manifest row."""
    if not row or not context:
        return True
    drug = context.get("drug")
    if "drug" in context and row.get("drug"):
        return drug == standardize_label(str(row["drug"]))
    return True


def collect_chains(dataset: CachedDataset, models: Sequence[ModelAdapter | str] | None = None,
                   card_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """One dict per card x cached prediction (sorted by card id, model name, signature,
    prediction key), holding the manifest row and the metadata of every layer.
    ``card_ids`` limits it to those cards (one card's PROV reads only its own rows)."""
    store = dataset.store
    cm = cached_manifest(dataset)
    rows: dict[int, dict[str, Any]] = {}
    if cm is not None:
        for r in cm.manifest.rows.to_dict("records"):
            rows[int(r["card_id"])] = r
    cards = store.cards(dataset.name, None if card_ids is None else [int(c) for c in card_ids])
    # evicted images keep their key: their predictions are still cached and auditable
    raw_by_card = {c: v["raw_key"] for c, v in cards.items()
                   if v["status"] in ("ok", "evicted") and v["raw_key"]}
    preds = prediction_metas_for_raw(store, raw_by_card.values())
    # models=None keeps every model: no need to list them
    wanted = None if models is None else model_filter(models, models_of(preds.values()))
    by_raw: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for key, meta in preds.items():
        sig = (meta.get("model") or {}).get("signature")
        if wanted is not None and sig not in wanted:
            continue
        by_raw.setdefault(meta.get("raw_key"), []).append((key, meta))
    parents: set[str] = set()
    for items in by_raw.values():
        for _, meta in items:
            parents.update(k for k in (meta.get("preprocessed_key"), meta.get("tensor_key"))
                           if k)
    entries = store.entries(sorted(parents | set(raw_by_card.values())))
    out: list[dict[str, Any]] = []
    for cid in sorted(raw_by_card):
        rk = raw_by_card[cid]
        row = rows.get(cid)
        candidates = sorted(by_raw.get(rk, []), key=lambda kv: kv[0])
        by_sig: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for key, meta in candidates:
            by_sig.setdefault(str((meta.get("model") or {}).get("signature")), []).append(
                (key, meta))
        for group in by_sig.values():
            fitting = [kv for kv in group if _context_fits(kv[1].get("context") or {}, row)]
            if not fitting and len(group) > 1:
                fitting = group
            for key, meta in fitting:
                out.append({"card_id": cid, "row": row, "raw_key": rk,
                            "raw": entries.get(rk), "prediction_key": key, "prediction": meta,
                            "preprocessed": entries.get(meta.get("preprocessed_key")),
                            "tensor": entries.get(meta.get("tensor_key")),
                            "manifest": cm})
    out.sort(key=lambda c: (c["card_id"], str((c["prediction"].get("model") or {}).get("name")),
                            str((c["prediction"].get("model") or {}).get("signature")),
                            c["prediction_key"]))
    return out


def chain_check(chain: dict[str, Any]) -> tuple[list[str], str]:
    missing: list[str] = []
    problems: list[str] = []
    pred = chain["prediction"]
    links = (("raw", chain["raw_key"], chain["raw"]),
             ("preprocessed", pred.get("preprocessed_key"), chain["preprocessed"]),
             ("tensor", pred.get("tensor_key"), chain["tensor"]))
    for layer, key, entry in links:
        if entry is None:
            missing.append(layer)
            continue
        res = verify_link(layer, key, entry["meta"])
        if res != "ok":
            problems.append(f"{layer}: {res}")
    res = verify_link("prediction", chain["prediction_key"], pred)
    if res != "ok":
        problems.append(f"prediction: {res}")
    pre = chain["preprocessed"]
    if pre is not None and pre["meta"].get("raw_key") != chain["raw_key"]:
        problems.append("preprocessed: recorded raw_key is not the card's raw key")
    if pred.get("raw_key") != chain["raw_key"]:
        problems.append("prediction: recorded raw_key is not the card's raw key")
    return missing, "; ".join(problems) or "ok"


__all__ = [
    "ASSET_REF_PREFIX",
    "ASSET_RUN_REF_PREFIX",
    "CachedManifest",
    "cached_manifest",
    "cached_models",
    "chain_check",
    "collect_chains",
    "dagster_refs",
    "dagster_run_records",
    "iso_time",
    "json_safe",
    "model_filter",
    "model_summary",
    "models_of",
    "prediction_metas_for_raw",
]
