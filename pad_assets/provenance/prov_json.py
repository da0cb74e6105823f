"""PROV-JSON: the chains of ``chain.collect_chains`` as a W3C PROV document.

Entities (manifest, raw image, preprocessed, tensor, prediction, model weights), activities
(download, preprocess, build tensor, predict), agents (pad_assets with its library
versions, on its host) and the relations ``wasGeneratedBy``, ``used``, ``wasDerivedFrom``,
``wasAssociatedWith``. Deterministic: the same chains give the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..hashing import canonical_json, sha256_bytes
from .lineage import (
    iso_time,
    model_summary,
)

if TYPE_CHECKING:
    pass


PAD_NAMESPACE = "urn:pad-assets:"


PROV_PREFIXES = {
    "pad": PAD_NAMESPACE,
    "prov": "http://www.w3.org/ns/prov#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
}


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
    return prov_doc(dataset_name, chains).to_json()


def prov_doc(dataset_name: str, chains: Sequence[dict[str, Any]]) -> _ProvDoc:
    doc = _ProvDoc()
    cards_of: dict[str, list[int]] = {}
    for chain in chains:
        cards_of.setdefault(chain["prediction_key"], []).append(int(chain["card_id"]))
    for chain in chains:
        prov_raw(doc, dataset_name, chain)
        _prov_derived(doc, chain)
        _prov_prediction(doc, dataset_name, chain, sorted(set(cards_of[chain["prediction_key"]])))
    return doc


def prov_raw(doc: _ProvDoc, dataset_name: str, chain: dict[str, Any]) -> None:
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


__all__ = [
    "PAD_NAMESPACE",
    "PROV_PREFIXES",
    "prov_doc",
    "prov_document",
    "prov_raw",
]
