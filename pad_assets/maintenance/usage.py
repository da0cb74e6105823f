"""``stats``: bytes and items per layer and per dataset, and which shards each dataset uses.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..store import ContentStore
from ..store import refs as refnames
from ..store.queries import select
from .common import (
    human_bytes,
)
from .rewrite import _partials
from .snapshot import _Item, _Snapshot


# ---------------------------------------------------------------------------------------
# stats
@dataclass
class CacheStats:
    """Sizes per layer and per dataset, shard counts and reclaimable space."""

    root: str
    shards: int
    shard_bytes: int
    live_bytes: int
    dead_bytes: int
    items: int
    layers: dict[str, dict[str, int]]
    datasets: dict[str, dict[str, int]]
    refs: dict[str, int]
    orphan_blobs: int
    retired_shards: int
    partial_files: int
    partial_bytes: int
    quarantined_files: int
    quarantined_bytes: int
    #: payload bytes more than one layer references (counted in each of those layers)
    shared_bytes: int = 0
    #: per layer, the part of its bytes another layer also references
    layer_shared: dict[str, int] = field(default_factory=dict)
    #: per model signature: current name, predictions, datasets, weights bytes
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: folders beside the shards (artifacts/, reports/, demo_models/): files and bytes
    folders: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def layers_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([{"layer": k, **v} for k, v in sorted(self.layers.items())])

    def datasets_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([{"dataset": k, **v} for k, v in sorted(self.datasets.items())])

    def __str__(self) -> str:
        lines = [f"cache {self.root}: {self.items} items in {self.shards} shards, "
                 f"{human_bytes(self.shard_bytes)} on disk, {human_bytes(self.live_bytes)} "
                 f"live payload, {human_bytes(self.dead_bytes)} reclaimable by gc"]
        lines.append("per layer:")
        for layer, v in sorted(self.layers.items()):
            lines.append(f"  {layer:<14} {v['items']:>8} items {human_bytes(v['bytes']):>10}")
        if self.datasets:
            lines.append("per dataset (shared images count in each):")
            for ds, v in sorted(self.datasets.items()):
                lines.append(
                    f"  {ds:<30} {v['cards']:>6} cards ({v['ok']} ok, {v['failed']} failed, "
                    f"{v['evicted']} evicted, {v['raw_missing']} raw missing)  raw "
                    f"{human_bytes(v['raw_bytes'])}, {v['derived_items']} derived items "
                    f"{human_bytes(v['derived_bytes'])}")
        if self.refs:
            lines.append(f"refs: {self.refs}")
        extra = []
        if self.orphan_blobs:
            extra.append(f"{self.orphan_blobs} unreferenced payloads")
        if self.retired_shards:
            extra.append(f"{self.retired_shards} retired shards awaiting deletion")
        if self.partial_files:
            extra.append(f"{self.partial_files} partial files "
                         f"({human_bytes(self.partial_bytes)})")
        if self.quarantined_files:
            extra.append(f"{self.quarantined_files} quarantined files "
                         f"({human_bytes(self.quarantined_bytes)}) in quarantine/")
        if extra:
            lines.append("also: " + ", ".join(extra))
        if self.shared_bytes:
            lines.append(f"shared: {human_bytes(self.shared_bytes)} of payload is referenced "
                         "by two layers and stored once (counted in each layer above)")
        for name, v in sorted(self.folders.items()):
            lines.append(f"{name}/: {v['files']} files {human_bytes(v['bytes'])}")
        return "\n".join(lines)


def stats(store: ContentStore) -> CacheStats:
    """Cheap summary from the index alone (no payload is read)."""
    snap = _Snapshot.load(store)
    usage = snap.shard_usage()
    refcount = Counter(it.blob for it in snap.items.values() if it.blob)
    layers: dict[str, dict[str, int]] = {}
    seen: dict[str, set[str]] = defaultdict(set)
    for it in snap.items.values():
        d = layers.setdefault(it.layer, {"items": 0, "bytes": 0})
        d["items"] += 1
        if it.blob and it.blob in snap.blobs and it.blob not in seen[it.layer]:
            seen[it.layer].add(it.blob)
            d["bytes"] += snap.blobs[it.blob][1]
    by_raw: dict[str, list[_Item]] = defaultdict(list)
    for it in snap.items.values():
        if it.raw_key and it.layer != "raw":
            by_raw[it.raw_key].append(it)
    datasets: dict[str, dict[str, int]] = {}
    raws: dict[str, set[str]] = defaultdict(set)
    for d, _, r, status, _ in snap.cards:
        v = datasets.setdefault(d, {"cards": 0, "ok": 0, "failed": 0, "evicted": 0,
                                    "raw_missing": 0, "raw_bytes": 0, "derived_items": 0,
                                    "derived_bytes": 0})
        v["cards"] += 1
        if status == "ok":
            v["ok"] += 1
            if r and r not in snap.items:
                v["raw_missing"] += 1
        elif status == "evicted":
            v["evicted"] += 1
        else:
            v["failed"] += 1
        if r:
            raws[d].add(r)
    for d, rset in raws.items():
        blobs_raw: set[str] = set()
        blobs_der: set[str] = set()
        for r in rset:
            it = snap.items.get(r)
            if it is not None and it.blob:
                blobs_raw.add(it.blob)
            for der in by_raw.get(r, []):
                datasets[d]["derived_items"] += 1
                if der.blob:
                    blobs_der.add(der.blob)
        datasets[d]["raw_bytes"] = sum(snap.blobs[b][1] for b in blobs_raw if b in snap.blobs)
        datasets[d]["derived_bytes"] = sum(snap.blobs[b][1] for b in blobs_der
                                           if b in snap.blobs)
    refs = Counter(name.split("/", 1)[0] for name in snap.refs)
    partials = _partials(store)
    qdir = store.root / "quarantine"
    qfiles = [f for f in qdir.iterdir() if f.is_file()] if qdir.is_dir() else []
    live_shards = snap.live_shards()
    live = sum(u["live"] for u in usage.values())
    shard_bytes = sum(n for _, n in live_shards.values())
    retired_bytes = sum(n for s, (_, n) in snap.shards.items() if s in snap.retired)
    from . import footprint

    shared, layer_shared = footprint.shared_payloads(store)
    return CacheStats(
        root=str(store.root), shards=len(live_shards), shard_bytes=shard_bytes,
        live_bytes=live,
        dead_bytes=sum(u["dead"] for u in usage.values()) + retired_bytes
        + sum(p[1] for p in partials),
        items=len(snap.items), layers=layers, datasets=datasets, refs=dict(refs),
        orphan_blobs=sum(1 for b in snap.blobs if not refcount.get(b)),
        retired_shards=len(snap.retired), partial_files=len(partials),
        partial_bytes=sum(p[1] for p in partials), quarantined_files=len(qfiles),
        quarantined_bytes=sum(f.stat().st_size for f in qfiles), shared_bytes=shared,
        layer_shared=layer_shared, models=footprint.models(store),
        folders=footprint.folders(store))


def dataset_affinity(store: ContentStore) -> dict[str, set[str]]:
    """shard -> datasets whose cards, raw images, derived items, manifests or models it
    holds (push records this so ``pull --dataset`` fetches only what a dataset needs)."""
    index = store.index
    ds_of_raw: dict[str, set[str]] = defaultdict(set)
    out: dict[str, set[str]] = defaultdict(set)
    for d, r, s in select(index, "cards", "dataset", "raw_key", "shard"):
        out[s].add(d)
        if r:
            ds_of_raw[r].add(d)
    blob_shard = dict(select(index, "blobs", "blob", "shard"))
    item_shards: dict[str, tuple[str, str | None]] = {}
    models: dict[str, set[str]] = defaultdict(set)  # model id / weights sha -> datasets
    for key, layer, blob, shard, raw, mid, wsha, csha in select(
            index, "items", "key", "layer", "blob", "shard", "meta.raw_key",
            "meta.model.model_id", "meta.model.weights_sha256",
            "meta.model.coefficients_sha256"):
        item_shards[key] = (shard, blob_shard.get(blob) if blob else None)
        rk = key if layer == "raw" else raw
        dsets = ds_of_raw.get(rk, set()) if rk else set()
        if dsets:
            out[shard] |= dsets
            if blob and blob in blob_shard:
                out[blob_shard[blob]] |= dsets
            if layer == "prediction":
                for m in (mid, wsha, csha):
                    if m is not None:
                        models[str(m)] |= dsets
    for name, key, shard in select(index, "refs", "name", "key", "shard"):
        dsets: set[str] = set()
        if name.startswith(refnames.MANIFEST):
            dsets = {name.rsplit("/", 1)[-1]}
        elif name.startswith(refnames.MODEL_RECORD):
            dsets = models.get(name.rsplit("/", 1)[-1], set())
        for s in (shard, *item_shards.get(key, (None, None))):
            if s and dsets:
                out[s] |= dsets
    for sha, dsets in models.items():
        for s in item_shards.get(sha, (None, None)):
            if s:
                out[s] |= dsets
    return out

