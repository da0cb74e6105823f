"""Refs and card records from elsewhere are proposals, never orders.

Items are content: their key is re-derived from their payload or recorded chain, so a
bundle or a remote cannot make an item lie. Refs (``manifest/...``, ``model-record/...``,
``asset/...``) and card records (dataset, card id -> raw key) are different: they are
*pointers* that say what a source currently says, and nothing in their own bytes proves
them. A bundle that names a model record with reversed labels, a manifest for another
dataset, or swaps two cards' raw keys would otherwise rewrite what every later run reads;
stamped with a future time, it would even beat every later refresh ("newest wins").

So a pointer that arrives from elsewhere is kept only when

* this cache has no pointer of that name yet (local truth is never overridden; a proposal
  equal to the local pointer is harmless and kept), and
* its target verifies against content: a manifest ref's manifest names that dataset; a
  model-record ref's record has that model id and its ``SHA256`` is a weights item present
  in the bundle or the cache; a card's raw image has the md5 the dataset's manifest lists
  for that card (md5 computed from the bytes, never taken from metadata); and
* the source does not contradict itself (two different targets for one pointer).

Every kept record is stamped no later than now, so a clock set ahead (or year 3000) never
pins a pointer: the next local refresh wins. Whatever is dropped is reported with why.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..hashing import md5_bytes
from ..store import ContentStore
from ..store import refs as refnames


class ForeignShard(Protocol):
    """What ``vet`` needs of a verified foreign shard (``sharing.checks._Inspected``)."""

    name: str
    records: list[dict[str, Any]]
    blobs: dict[str, dict[str, Any]]
    md5: dict[str, str]


@dataclass
class Vetting:
    """Outcome of ``vet``: why each dropped proposal was dropped, and which shards changed
    (records dropped or re-stamped), by index in the list given to ``vet``."""

    ignored: list[str] = field(default_factory=list)
    changed: set[int] = field(default_factory=set)


#: payload bytes of an item key, from the foreign shards or the cache (None when absent)
PayloadReader = Callable[[str], "bytes | None"]


def vet(store: ContentStore, shards: Sequence[ForeignShard], read_payload: PayloadReader,
        dataset: str | None = None, now: float | None = None) -> Vetting:
    """Drop the ref and card records of ``shards`` that may not enter this cache (see the
    module docstring) and clamp every record's timestamp to ``now``, in place.

    ``dataset``: the one dataset a bundle is for; refs to another dataset's manifest are
    then dropped too.
    """
    now = time.time() if now is None else now
    out = Vetting()
    layer_of, json_of = _content_lookups(store, shards, read_payload)
    accepted_refs = _vet_refs(store, shards, dataset, layer_of, json_of, out)
    accepted_cards = _vet_cards(store, shards, accepted_refs, layer_of, json_of,
                                read_payload, out)
    _apply_vetting(shards, accepted_refs, accepted_cards, now, out)
    return out


def _content_lookups(store: ContentStore, shards: Sequence[ForeignShard],
                     read_payload: PayloadReader
                     ) -> tuple[Callable[[str], str | None], Callable[[str], Any]]:
    """(layer of a key, parsed JSON payload of a key): what a proposal is checked against,
    looked up first in what arrived, then in this cache; a payload that is not JSON is
    None, so a proposal resting on it is refused rather than raising."""
    foreign_items = {r["key"]: r for s in shards for r in s.records if r["type"] == "item"}
    local_entries: dict[str, dict[str, Any]] = {}

    def layer_of(key: str) -> str | None:
        if key in foreign_items:
            return foreign_items[key]["layer"]
        if key not in local_entries:
            got = store.index.items([key]).get(key)
            local_entries[key] = got or {}
        return local_entries[key].get("layer")

    def json_of(key: str) -> Any:
        data = read_payload(key)
        if data is None:
            return None
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None

    return layer_of, json_of


def _vet_refs(store: ContentStore, shards: Sequence[ForeignShard], dataset: str | None,
              layer_of: Callable[[str], str | None], json_of: Callable[[str], Any],
              out: Vetting) -> dict[str, str]:
    """Ref proposals: one target per name, never another dataset's manifest, never
    overriding a local ref, and a target of the kind the ref names. Returns the accepted
    refs (name -> key); refused ones are added to ``out.ignored`` with the reason."""
    ref_targets: dict[str, set[str]] = defaultdict(set)
    for s in shards:
        for r in s.records:
            if r["type"] == "ref":
                ref_targets[r["name"]].add(r["key"])
    local_refs = store.index.refs_for(list(ref_targets))
    accepted_refs: dict[str, str] = {}
    for name, targets in ref_targets.items():
        local = local_refs.get(name)
        tail = name.rsplit("/", 1)[-1]
        if len(targets) > 1:
            why = f"proposes {len(targets)} different targets"
        elif name.startswith(refnames.MANIFEST) and dataset is not None and tail != dataset:
            why = f"names dataset {tail!r}, but this bundle is for {dataset!r}"
        elif local is not None:
            why = None if local in targets else f"this cache already names {local}; kept"
        else:
            why = _ref_problem(name, next(iter(targets)), dataset, layer_of, json_of)
        if why:
            out.ignored.append(f"ref {name}: {why}")
        else:
            accepted_refs[name] = next(iter(targets))
    return accepted_refs


def _vet_cards(store: ContentStore, shards: Sequence[ForeignShard],
               accepted_refs: dict[str, str], layer_of: Callable[[str], str | None],
               json_of: Callable[[str], Any], read_payload: PayloadReader,
               out: Vetting) -> set[tuple[str, int]]:
    """Card proposals: one raw image per card, never replacing a usable local mapping,
    only verified images, checked against the dataset's manifest md5s. Returns the
    accepted (dataset, card_id); refused ones are added to ``out.ignored``."""
    card_targets: dict[tuple[str, int], set[tuple[str | None, str]]] = defaultdict(set)
    for s in shards:
        for r in s.records:
            if r["type"] == "card":
                card_targets[(r["dataset"], int(r["card_id"]))].add((r.get("raw_key"),
                                                                      r["status"]))
    md5_of_blob = {b: m for s in shards for b, m in s.md5.items()}
    manifests = _manifest_md5s(store, {d for d, _ in card_targets}, accepted_refs, json_of)
    accepted_cards: set[tuple[str, int]] = set()
    by_dataset: dict[str, list[int]] = defaultdict(list)
    for d, c in card_targets:
        by_dataset[d].append(c)
    for d, ids in by_dataset.items():
        local_cards = store.index.cards(d, ids)
        present = store.has([v["raw_key"] for v in local_cards.values() if v["raw_key"]])
        for c in ids:
            proposals = card_targets[(d, c)]
            cur = local_cards.get(c)
            usable = cur is not None and cur["status"] == "ok" and cur["raw_key"] in present
            raw, status = next(iter(proposals))
            if len(proposals) > 1:
                why = f"proposes {len(proposals)} different raw images"
            elif usable:
                why = None if (raw, status) == (cur["raw_key"], "ok") else \
                    f"this cache already maps it to {cur['raw_key']}; kept"  # type: ignore[index]
            elif status != "ok" or not raw:
                why = f"status {status!r}: only verified images are taken from elsewhere"
            else:
                why = _card_problem(d, c, raw, layer_of, read_payload, md5_of_blob,
                                    manifests.get(d))
            if why:
                out.ignored.append(f"card {d}/{c}: {why}")
            else:
                accepted_cards.add((d, c))
    return accepted_cards


def _apply_vetting(shards: Sequence[ForeignShard], accepted_refs: dict[str, str],
                   accepted_cards: set[tuple[str, int]], now: float, out: Vetting) -> None:
    """Drop refused ref and card records from the shards in place and clamp every
    record's clock to ``now`` (a stamp from the future would win "newest wins" forever);
    ``out.changed`` lists the shards that must be rewritten."""
    for i, s in enumerate(shards):
        kept: list[dict[str, Any]] = []
        for r in s.records:
            t = r["type"]
            if (t == "ref" and r["name"] not in accepted_refs) or (
                    t == "card" and (r["dataset"], int(r["card_id"])) not in accepted_cards):
                out.changed.add(i)
                continue
            if float(r["ts"]) > now:
                r = {**r, "ts": now}
                out.changed.add(i)
            kept.append(r)
        s.records[:] = kept


def _ref_problem(name: str, key: str, dataset: str | None,
                 layer_of: Callable[[str], str | None], json_of: Callable[[str], Any]
                 ) -> str | None:
    tail = name.rsplit("/", 1)[-1]
    layer = layer_of(key)
    if layer is None:
        return f"its target {key} is neither in what arrived nor in this cache"
    if name.startswith(refnames.MANIFEST):
        if dataset is not None and tail != dataset:
            return f"names dataset {tail!r}, but this bundle is for {dataset!r}"
        if layer != "manifest":
            return f"points at a {layer} item, expected a manifest"
        doc = json_of(key)
        if not isinstance(doc, dict) or doc.get("dataset") != tail:
            got = doc.get("dataset") if isinstance(doc, dict) else None
            return f"its manifest is for dataset {got!r}, not {tail!r}"
        return None
    if name.startswith(refnames.MODEL_RECORD):
        if layer != "model_record":
            return f"points at a {layer} item, expected a model record"
        doc = json_of(key)
        if not isinstance(doc, dict):
            return "its model record is not a JSON object"
        rid = doc.get("id")
        if rid is not None and str(rid) != tail:
            return f"its record is for model {rid!r}, not {tail!r}"
        sha = str(doc.get("SHA256") or "").lower()
        if not sha:
            return "its record has no SHA256 to check the weights against"
        if layer_of(sha) != "weights":
            return (f"its record's weights (sha256 {sha}) are neither in what arrived nor in "
                    "this cache, so the record cannot be checked against them")
        return None
    if name.startswith(refnames.ASSET):
        return None  # a Dagster materialization of content that is present and keyed
    if name.startswith(refnames.ASSET_RUN):
        if layer != "dagster_run":
            return f"points at a {layer} item, expected the record of a Dagster run"
        return None  # which run materialized a partition (its key is the run id's)
    return "unknown kind of ref (expected manifest/, model-record/, asset/ or asset-run/)"


def _manifest_md5s(store: ContentStore, datasets: set[str], accepted_refs: dict[str, str],
                   json_of: Callable[[str], Any]) -> dict[str, list[dict[int, str | None]]]:
    """dataset -> card id -> md5, from every manifest this cache (or an accepted proposal)
    names for it."""
    out: dict[str, list[dict[int, str | None]]] = {}
    if not datasets:
        return out
    names = dict(store.index.refs(refnames.MANIFEST))
    names.update({n: k for n, k in accepted_refs.items() if n.startswith(refnames.MANIFEST)})
    for name, key in names.items():
        ds = name.rsplit("/", 1)[-1]
        if ds not in datasets:
            continue
        doc = json_of(key)
        if not isinstance(doc, dict) or doc.get("dataset") != ds:
            continue
        rows = doc.get("rows") if isinstance(doc.get("rows"), list) else []
        table: dict[int, str | None] = {}
        for row in rows:
            if isinstance(row, dict):
                try:
                    table[int(row.get("card_id"))] = row.get("md5") or None
                except (TypeError, ValueError):
                    continue
        out.setdefault(ds, []).append(table)
    return out


def _card_problem(dataset: str, card_id: int, raw: str,
                  layer_of: Callable[[str], str | None], read_payload: PayloadReader,
                  md5_of_blob: dict[str, str], manifests: list[dict[int, str | None]] | None
                  ) -> str | None:
    if layer_of(raw) != "raw":
        return f"its raw image {raw} is neither in what arrived nor in this cache"
    if not manifests:
        return f"no manifest of {dataset} is known to check its image against"
    listed = [m[card_id] for m in manifests if card_id in m]
    if not listed:
        return f"the manifest of {dataset} does not list it"
    wanted = {m for m in listed if m}
    if not wanted:
        return f"the manifest of {dataset} gives no md5 to check its image against"
    md5 = md5_of_blob.get(raw)
    if md5 is None:
        data = read_payload(raw)
        if data is None:
            return f"its raw image {raw} cannot be read"
        md5 = md5_bytes(data)
    if md5 not in wanted:
        return (f"its raw image {raw} has md5 {md5}, the manifest of {dataset} says "
                f"{sorted(wanted)[0]}")
    return None


__all__ = ["ForeignShard", "Vetting", "vet"]
