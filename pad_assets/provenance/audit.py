"""Audit export: every cached prediction of a dataset with its full chain, as CSV and PROV.

Why: a reviewer (or a journal, or a regulator) asks "which bytes, fetched from where,
processed how, by which weights, produced this number?" for *every* prediction behind a
result, not one card at a time. The cache already holds the answer in each item's
metadata; this module writes it out in two forms:

* ``<dataset>_audit.csv``: one row per card x model, every key of the chain, source URL,
  md5 (manifest and downloaded), sha256, fetch time, pipeline + parameters, tensor spec,
  model signature + record, the prediction, library versions, host and creation time,
  plus ``chain_check`` (each link's recorded inputs re-hashed against its key).
* ``<dataset>_prov.json``: the same facts as W3C PROV-JSON
  (https://www.w3.org/Submission/prov-json/): entities (manifest, raw image, preprocessed,
  tensor, prediction, model weights), activities (download, preprocess, build tensor,
  predict), agents (pad_assets with its library versions, on its host) and the relations
  ``wasGeneratedBy``, ``used``, ``wasDerivedFrom``, ``wasAssociatedWith``.

Both are deterministic: rows and records are sorted, relation ids are numbered in that
order, and nothing in them depends on when the export ran, so exporting an unchanged cache
twice gives identical bytes (diffable, hashable). The export reads the index only: no
network, no computation, no payload reads.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..csv_safety import escape_cell
from ..errors import InvalidInputError
from ..hashing import canonical_json, sha256_bytes
from ..keys import verify_link
from ..models.base import standardize_label
from ..store.fs import atomic_open
from .lineage import (
    cached_manifest,
    cached_models,
    iso_time,
    model_summary,
    models_of,
    prediction_metas_for_raw,
    resolve_model_spec,
)

if TYPE_CHECKING:
    from ..dataset import CachedDataset
    from ..models.base import ModelAdapter

PAD_NAMESPACE = "urn:pad-assets:"
PROV_PREFIXES = {
    "pad": PAD_NAMESPACE,
    "prov": "http://www.w3.org/ns/prov#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
}

CSV_COLUMNS = [
    "dataset", "card_id", "split", "drug", "quantity", "actual_label",
    "manifest_key", "manifest_source", "manifest_fetched_at",
    "image_url", "source_url", "md5_manifest", "md5", "md5_matches_manifest", "sha256",
    "raw_key", "raw_bytes", "fetched_at", "raw_truncated",
    "preprocessed_key", "pipeline", "pipeline_class", "pipeline_code_version",
    "pipeline_parameters", "pipeline_cache_key",
    "tensor_key", "tensor_spec",
    "prediction_key", "model_name", "model_class", "model_signature", "model_id",
    "model_record_name", "model_version", "weights_sha256", "weights_url", "model_runtime",
    "context", "prediction", "probability", "energy", "label_type", "status", "detail",
    "truncated", "inference_seconds", "created_at", "host", "platform", "libraries",
    "layers_missing", "chain_check",
]


# ---------------------------------------------------------------------------------------
# collecting the chains
def _model_filter(models: Sequence[ModelAdapter | str] | None,
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
    wanted = None if models is None else _model_filter(models, models_of(preds.values()))
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


def _chain_check(chain: dict[str, Any]) -> tuple[list[str], str]:
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


def _json_cell(value: Any) -> str:
    return "" if value is None else canonical_json(value)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return canonical_json(value)
    return escape_cell(value)  # registry text must not run as a spreadsheet formula


def chain_row(dataset_name: str, chain: dict[str, Any]) -> dict[str, Any]:
    """The CSV row of one card x prediction chain (values, not yet CSV-formatted)."""
    row = chain["row"] or {}
    pred = chain["prediction"]
    raw_meta = (chain["raw"] or {}).get("meta", {})
    pipe = pred.get("pipeline") or {}
    model = pred.get("model") or {}
    summary = model_summary(pred)
    record = pred.get("record") or {}
    cm = chain["manifest"]
    md5_manifest = row.get("md5")
    missing, check = _chain_check(chain)
    label_type = record.get("label_type")
    actual: Any = None
    if label_type == "concentration":
        q = row.get("quantity")
        actual = None if q is None or (isinstance(q, float) and q != q) else float(q)
    elif row.get("drug"):
        actual = standardize_label(str(row["drug"]))
    return {
        "dataset": dataset_name, "card_id": chain["card_id"], "split": row.get("split"),
        "drug": row.get("drug"), "quantity": row.get("quantity"), "actual_label": actual,
        "manifest_key": cm.key if cm else None,
        "manifest_source": (cm.meta.get("source") or cm.manifest.source) if cm else None,
        "manifest_fetched_at": iso_time(cm.meta.get("fetched_at")) if cm else None,
        "image_url": row.get("image_url"), "source_url": raw_meta.get("source_url"),
        "md5_manifest": md5_manifest, "md5": raw_meta.get("md5"),
        "md5_matches_manifest": (None if md5_manifest is None or not raw_meta
                                 else raw_meta.get("md5") == md5_manifest),
        "sha256": raw_meta.get("sha256"), "raw_key": chain["raw_key"],
        "raw_bytes": raw_meta.get("nbytes"), "fetched_at": iso_time(raw_meta.get("fetched_at")),
        "raw_truncated": raw_meta.get("truncated"),
        "preprocessed_key": pred.get("preprocessed_key"), "pipeline": pipe.get("name"),
        "pipeline_class": pipe.get("class"), "pipeline_code_version": pipe.get("code_version"),
        "pipeline_parameters": _json_cell(pipe.get("parameters")),
        "pipeline_cache_key": pipe.get("cache_key"),
        "tensor_key": pred.get("tensor_key"), "tensor_spec": _json_cell(pred.get("spec")),
        "prediction_key": chain["prediction_key"], "model_name": model.get("name"),
        "model_class": model.get("class"), "model_signature": model.get("signature"),
        "model_id": model.get("model_id"), "model_record_name": model.get("record_name"),
        "model_version": model.get("version"), "weights_sha256": summary["weights_sha256"],
        "weights_url": model.get("weights_url"), "model_runtime": _json_cell(model.get("runtime")),
        "context": _json_cell(pred.get("context") or {}),
        "prediction": record.get("prediction"), "probability": record.get("probability"),
        "energy": record.get("energy"), "label_type": label_type,
        "status": record.get("status"), "detail": record.get("detail"),
        "truncated": pred.get("truncated"), "inference_seconds": pred.get("inference_seconds"),
        "created_at": iso_time(pred.get("created_at")), "host": pred.get("host"),
        "platform": pred.get("platform"), "libraries": _json_cell(pred.get("libraries")),
        "layers_missing": ",".join(missing), "chain_check": check,
    }


# ---------------------------------------------------------------------------------------
# PROV-JSON
def _dt(ts: Any) -> dict[str, str] | None:
    iso = iso_time(ts)
    return None if iso is None else {"$": iso, "type": "xsd:dateTime"}


def _attrs(**values: Any) -> dict[str, Any]:
    """PROV-JSON attributes: ``pad:`` names, scalars as they are, structures as canonical
    JSON strings (PROV-JSON values are literals), ``None`` left out."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        qname = name if ":" in name else f"pad:{name}"
        if isinstance(value, dict) and set(value) == {"$", "type"}:
            pass  # a typed literal ({"$": value, "type": "xsd:dateTime"}) as PROV-JSON has it
        elif isinstance(value, (dict, list, tuple)):
            value = canonical_json(value)
        elif isinstance(value, float) and value != value:
            continue
        out[qname] = value
    return out


def _weights_id(model: dict[str, Any]) -> str:
    sha = model.get("weights_sha256") or model.get("coefficients_sha256") or model.get("sha256")
    return f"pad:weights/{sha}" if sha else f"pad:model/{model.get('signature')}"


def _agent_facts(meta: dict[str, Any]) -> tuple[Any, ...]:
    libs = meta.get("libraries") or {}
    return (meta.get("host"), meta.get("platform"), tuple(sorted(libs.items())))


class _ProvDoc:
    """Accumulates a PROV-JSON document; first definition of an id wins (ids are content
    keys, so a later definition describes the same thing). Attributes are built lazily,
    only for ids not yet defined: a dataset has ~10 records per card x model."""

    def __init__(self) -> None:
        self.entity: dict[str, dict[str, Any]] = {}
        self.activity: dict[str, dict[str, Any]] = {}
        self.agent: dict[str, dict[str, Any]] = {}
        self.relations: dict[str, dict[tuple[str, ...], dict[str, Any]]] = {
            "wasGeneratedBy": {}, "used": {}, "wasDerivedFrom": {}, "wasAssociatedWith": {}}
        self._agents: dict[tuple[Any, ...], str] = {}

    def needs(self, kind: str, ident: str) -> bool:
        """Whether ``ident`` is not defined yet (build its attributes only then)."""
        return ident not in getattr(self, kind)

    def add(self, kind: str, ident: str, attrs: dict[str, Any]) -> None:
        getattr(self, kind).setdefault(ident, attrs)

    def relate(self, kind: str, ident: tuple[str, ...], attrs: dict[str, Any]) -> None:
        table = self.relations[kind]
        if ident not in table:
            table[ident] = {k: v for k, v in attrs.items() if v is not None}

    def agent_for(self, meta: dict[str, Any]) -> str:
        """The agent (pad_assets + library versions on a host) that made an item."""
        facts = _agent_facts(meta)
        aid = self._agents.get(facts)
        if aid is not None:
            return aid
        libs = meta.get("libraries") or {}
        aid = f"pad:agent/{sha256_bytes(canonical_json([libs, facts[0], facts[1]]).encode())[:16]}"
        self._agents[facts] = aid
        self.add("agent", aid, _attrs(**{
            "prov:type": {"$": "prov:SoftwareAgent", "type": "prov:QUALIFIED_NAME"},
            "prov:label": f"pad_assets {libs.get('pad_assets', '?')} on {meta.get('host')}",
            "pad_assets_version": libs.get("pad_assets"), "python": libs.get("python"),
            "host": meta.get("host"), "platform": meta.get("platform"), "libraries": libs}))
        return aid

    def associate(self, activity: str, meta: dict[str, Any], plan: str | None = None) -> None:
        agent = self.agent_for(meta)
        self.relate("wasAssociatedWith", (activity, agent), {
            "prov:activity": activity, "prov:agent": agent, "prov:plan": plan})

    def sections(self) -> Iterator[tuple[str, list[tuple[str, Any]]]]:
        """(section, sorted (id, record) pairs) in document order; relation ids numbered
        in the order of their sorted endpoints, so equal inputs give equal ids."""
        yield "prefix", sorted(PROV_PREFIXES.items())
        for kind in ("entity", "activity", "agent"):
            items = getattr(self, kind)
            if items:
                yield kind, [(k, items[k]) for k in sorted(items)]
        for kind, rels in self.relations.items():
            if rels:
                yield kind, [(f"_:{kind}{i + 1}", rels[k]) for i, k in enumerate(sorted(rels))]

    def to_json(self) -> dict[str, Any]:
        return {kind: dict(pairs) for kind, pairs in self.sections()}

    def write(self, fh: Any) -> None:
        """JSON with one record per line: diffable, and fast (the C encoder per record)."""
        dump = json.JSONEncoder(sort_keys=True, ensure_ascii=False, allow_nan=False,
                                separators=(", ", ": ")).encode
        fh.write("{\n")
        sections = list(self.sections())
        for si, (kind, pairs) in enumerate(sections):
            fh.write(f"{dump(kind)}: {{\n")
            for i, (ident, record) in enumerate(pairs):
                sep = "," if i + 1 < len(pairs) else ""
                fh.write(f"  {dump(ident)}: {dump(record)}{sep}\n")
            fh.write("}" + ("," if si + 1 < len(sections) else "") + "\n")
        fh.write("}\n")


def _qualified(qname: str) -> dict[str, str]:
    return {"$": qname, "type": "prov:QUALIFIED_NAME"}


def prov_document(dataset_name: str, chains: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The PROV-JSON document of these chains (see the module docstring for its shape)."""
    return _prov(dataset_name, chains).to_json()


def _prov(dataset_name: str, chains: Sequence[dict[str, Any]]) -> _ProvDoc:
    doc = _ProvDoc()
    cards_of: dict[str, list[int]] = {}
    for chain in chains:
        cards_of.setdefault(chain["prediction_key"], []).append(int(chain["card_id"]))
    for chain in chains:
        _prov_raw(doc, dataset_name, chain)
        _prov_derived(doc, chain)
        _prov_prediction(doc, dataset_name, chain, sorted(set(cards_of[chain["prediction_key"]])))
    return doc


def _prov_raw(doc: _ProvDoc, dataset_name: str, chain: dict[str, Any]) -> None:
    """Manifest -> download -> raw image."""
    rk = chain["raw_key"]
    row = chain["row"] or {}
    cm = chain["manifest"]
    raw_meta = (chain["raw"] or {}).get("meta", {})
    raw_id = f"pad:raw/{rk}"
    download = f"pad:download/{rk}"
    man_id = f"pad:manifest/{cm.key}" if cm is not None else None
    if man_id is not None and doc.needs("entity", man_id):
        doc.add("entity", man_id, _attrs(**{
            "prov:type": _qualified("pad:Manifest"),
            "prov:label": f"manifest of {dataset_name}", "dataset": dataset_name,
            "source": cm.meta.get("source") or cm.manifest.source,
            "fetched_at": _dt(cm.meta.get("fetched_at")), "rows": len(cm.manifest.rows)}))
    if doc.needs("entity", raw_id):
        doc.add("entity", raw_id, _attrs(**{
            "prov:type": _qualified("pad:RawImage"), "prov:label": f"card image {rk[:12]}",
            "sha256": raw_meta.get("sha256") or rk, "md5": raw_meta.get("md5"),
            "md5_manifest": row.get("md5"), "source_url": raw_meta.get("source_url"),
            "bytes": raw_meta.get("nbytes"), "truncated": raw_meta.get("truncated"),
            "cached": chain["raw"] is not None}))
    if chain["raw"] is None:
        return
    fetched = iso_time(raw_meta.get("fetched_at"))
    if doc.needs("activity", download):
        doc.add("activity", download, _attrs(**{
            "prov:type": _qualified("pad:Download"), "prov:endTime": fetched,
            "source_url": raw_meta.get("source_url")}))
    doc.relate("wasGeneratedBy", (raw_id, download), {
        "prov:entity": raw_id, "prov:activity": download, "prov:time": fetched})
    if man_id is not None:
        doc.relate("used", (download, man_id), {"prov:activity": download, "prov:entity": man_id})
    doc.associate(download, raw_meta)


def _prov_derived(doc: _ProvDoc, chain: dict[str, Any]) -> None:
    """Raw -> preprocess -> preprocessed -> build tensor -> tensor."""
    pred = chain["prediction"]
    pk, tk = pred.get("preprocessed_key"), pred.get("tensor_key")
    pre_meta = (chain["preprocessed"] or {}).get("meta") or {}
    ten_meta = (chain["tensor"] or {}).get("meta") or {}
    pipe = pred.get("pipeline") or pre_meta.get("pipeline") or {}
    steps = (
        ("preprocessed", pk, f"pad:raw/{chain['raw_key']}", "preprocess", "pad:Preprocess",
         pre_meta, {"pipeline": pipe.get("name"), "pipeline_class": pipe.get("class"),
                    "code_version": pipe.get("code_version"),
                    "parameters": pipe.get("parameters"),
                    "pipeline_cache_key": pipe.get("cache_key"), "shape": pre_meta.get("shape"),
                    "dtype": pre_meta.get("dtype"), "truncated": pre_meta.get("truncated")}),
        ("tensor", tk, f"pad:preprocessed/{pk}", "build_tensor", "pad:BuildTensor", ten_meta,
         {"spec": pred.get("spec") or ten_meta.get("spec"),
          "truncated": ten_meta.get("truncated")}),
    )
    for layer, key, parent_id, act, act_type, meta, extra in steps:
        if not key:
            continue
        ent, aid = f"pad:{layer}/{key}", f"pad:{act}/{key}"
        when = iso_time(meta.get("created_at")) if meta else None
        if doc.needs("entity", ent):
            doc.add("entity", ent, _attrs(**{
                "prov:type": _qualified(f"pad:{layer.capitalize()}"),
                "prov:label": f"{layer} {key[:12]}", "key": key, "cached": bool(meta),
                **extra}))
        if doc.needs("activity", aid):
            doc.add("activity", aid, _attrs(**{
                "prov:type": _qualified(act_type), "prov:endTime": when,
                "pipeline": pipe.get("name") if layer == "preprocessed" else None}))
        doc.relate("used", (aid, parent_id), {"prov:activity": aid, "prov:entity": parent_id})
        doc.relate("wasGeneratedBy", (ent, aid), {
            "prov:entity": ent, "prov:activity": aid, "prov:time": when})
        doc.relate("wasDerivedFrom", (ent, parent_id), {
            "prov:generatedEntity": ent, "prov:usedEntity": parent_id, "prov:activity": aid})
        if meta:
            doc.associate(aid, meta)


def _prov_prediction(doc: _ProvDoc, dataset_name: str, chain: dict[str, Any],
                     cards: list[int]) -> None:
    """Tensor + model weights -> predict -> prediction."""
    pred = chain["prediction"]
    key = chain["prediction_key"]
    model = pred.get("model") or {}
    record = pred.get("record") or {}
    ent, act, wid = f"pad:prediction/{key}", f"pad:predict/{key}", _weights_id(model)
    end = iso_time(pred.get("created_at"))
    if doc.needs("entity", wid):
        doc.add("entity", wid, _attrs(**{
            "prov:type": _qualified("pad:ModelWeights"),
            "prov:label": f"model {model.get('name')}", "name": model.get("name"),
            "class": model.get("class"), "signature": model.get("signature"),
            "model_id": model.get("model_id"), "record_name": model.get("record_name"),
            "version": model.get("version"),
            "weights_sha256": model_summary(pred)["weights_sha256"],
            "weights_url": model.get("weights_url"), "runtime": model.get("runtime"),
            "labels": model.get("labels"), "label_type": model.get("label_type")}))
    if doc.needs("entity", ent):
        doc.add("entity", ent, _attrs(**{
            "prov:type": _qualified("pad:Prediction"),
            "prov:label": f"prediction of {model.get('name')} for card {cards[0]}",
            "dataset": dataset_name, "card_id": cards[0] if len(cards) == 1 else cards,
            "prediction": record.get("prediction"), "probability": record.get("probability"),
            "energy": record.get("energy"), "label_type": record.get("label_type"),
            "status": record.get("status"), "detail": record.get("detail") or None,
            "model_signature": model.get("signature"), "context": pred.get("context") or {},
            "truncated": pred.get("truncated"), "created_at": _dt(pred.get("created_at"))}))
    if doc.needs("activity", act):
        doc.add("activity", act, _attrs(**{
            "prov:type": _qualified("pad:Predict"), "prov:endTime": end,
            "model": model.get("name"), "inference_seconds": pred.get("inference_seconds")}))
    tk = pred.get("tensor_key")
    if tk:
        tid = f"pad:tensor/{tk}"
        doc.relate("used", (act, tid), {"prov:activity": act, "prov:entity": tid})
        doc.relate("wasDerivedFrom", (ent, tid), {
            "prov:generatedEntity": ent, "prov:usedEntity": tid, "prov:activity": act})
    doc.relate("used", (act, wid), {"prov:activity": act, "prov:entity": wid})
    doc.relate("wasGeneratedBy", (ent, act), {
        "prov:entity": ent, "prov:activity": act, "prov:time": end})
    doc.associate(act, pred, plan=wid)


# ---------------------------------------------------------------------------------------
# export
def export_audit(dataset: CachedDataset, out_dir: str | Path,
                 models: Sequence[ModelAdapter | str] | None = None) -> dict[str, Path]:
    """Write ``<dataset>_audit.csv`` and ``<dataset>_prov.json`` into ``out_dir``.

    ``models``: adapters, or names/signatures of models cached for this dataset; None
    exports every model with cached predictions for the dataset's images. Returns
    ``{"csv": path, "prov": path}``. Reads the index only (no network, no compute).
    """
    chains = collect_chains(dataset, models)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{dataset.name}_audit.csv"
    prov_path = out / f"{dataset.name}_prov.json"
    with atomic_open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for chain in chains:
            writer.writerow({k: _cell(v) for k, v in chain_row(dataset.name, chain).items()})
    with atomic_open(prov_path, "w", encoding="utf-8") as fh:
        _prov(dataset.name, chains).write(fh)
    return {"csv": csv_path, "prov": prov_path}


def audit_dataset(dataset: CachedDataset, output: str | Path,
                  specs: Sequence[str] | None = None) -> tuple[int, dict[str, Path]]:
    """``pad-assets audit``: export the dataset's cached predictions with their chains;
    returns (number of predictions, paths written).

    Model arguments that name a cached model (name or signature) are used as they are, so
    an audit works offline; anything else is resolved as a model spec (may load weights).
    """
    selected: list[ModelAdapter | str] | None = None
    if specs:
        store = dataset.store
        raw = [v["raw_key"] for v in store.cards(dataset.name).values() if v["raw_key"]]
        available = cached_models(store, raw)
        selected = []
        for spec in specs:
            try:
                _model_filter([spec], available)
                selected.append(spec)
                continue
            except InvalidInputError as exc:
                not_cached = str(exc)
            try:
                selected.append(resolve_model_spec(spec, dataset.settings, store))
            except InvalidInputError as exc:
                raise InvalidInputError(f"{not_cached}; nor is it a model spec: {exc}"
                                        ) from None
    paths = export_audit(dataset, output, selected)
    with open(paths["csv"], encoding="utf-8") as fh:
        n = sum(1 for _ in csv.reader(fh)) - 1
    return n, paths


__all__ = [
    "CSV_COLUMNS",
    "chain_row",
    "collect_chains",
    "export_audit",
    "audit_dataset",
    "prov_document",
]

