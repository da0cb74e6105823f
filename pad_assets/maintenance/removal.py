"""``cache rm``: remove one dataset, model or preprocessing pipeline from a cache.

What ``huggingface-cli delete-cache`` and ``dvc gc`` give their users: a removal named by
what the user thinks in (a dataset, a model, a pipeline) rather than by age or size. The
selection follows the key chain (raw -> preprocessed -> tensor -> prediction); what another
dataset still uses stays (an image two datasets share is kept for the other one). Rows go
from the index in one transaction, then ``gc``'s compaction rewrites the shards that held
them, so the space comes back and a rebuild of the index from the shards cannot resurrect
them.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInputError
from ..layers.model_names import current_names, forget
from ..store import ContentStore
from ..store import refs as refnames
from ..store.index_admin import remove_rows
from ..store.queries import select
from . import gc
from .common import human_bytes
from .locking import maintenance_lock
from .snapshot import _Snapshot


@dataclass
class RemovalReport:
    """What ``remove`` took out (or, with ``dry_run``, would take out)."""

    root: str
    what: str
    dry_run: bool
    items: dict[str, int] = field(default_factory=dict)  # layer -> items
    freed_bytes: int = 0
    cards: int = 0
    refs: list[str] = field(default_factory=list)
    kept_shared: int = 0  # raw images another dataset still lists
    size_before: int = 0
    size_after: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        n = sum(self.items.values())
        lines = [f"cache rm {self.what}{' (dry run: nothing changed)' if self.dry_run else ''}:"
                 f" {verb} {n} items {self.items or ''} ({human_bytes(self.freed_bytes)} of "
                 f"payload), {self.cards} card records, {len(self.refs)} refs"]
        if self.kept_shared:
            lines.append(f"  kept {self.kept_shared} images another dataset also lists")
        if not self.dry_run:
            lines.append(f"  size on disk {human_bytes(self.size_before)} -> "
                         f"{human_bytes(self.size_after)}")
        return "\n".join(lines)


def _meta(store: ContentStore, layer: str, fields: dict[str, str]) -> list[tuple[Any, ...]]:
    cols = ["meta." + p.removeprefix("$.") for p in fields.values()]
    return select(store.index, "items", "key", *cols, layer=layer)


def _by_dataset(store: ContentStore, snap: _Snapshot, dataset: str
                ) -> tuple[set[str], set[str], int, int]:
    datasets = {d for d, *_ in snap.cards} | {n.rsplit("/", 1)[-1] for n in snap.refs
                                               if n.startswith(refnames.MANIFEST)}
    if dataset not in datasets:
        raise InvalidInputError(f"dataset {dataset!r} is not in the cache at {store.root}; "
                                f"expected one of {sorted(datasets) or '(none cached)'}")
    mine = {r for d, _, r, _, _ in snap.cards if d == dataset and r}
    others = {r for d, _, r, _, _ in snap.cards if d != dataset and r}
    drop_raw = mine - others
    keys = {k for k, it in snap.items.items() if it.raw_key in drop_raw}
    refs = {n for n in snap.refs if n.startswith(refnames.MANIFEST) and refnames.last_segment(n) == dataset}
    # the manifest items those refs name, unless another ref names them too
    other_targets = {k for n, (k, _) in snap.refs.items() if n not in refs}
    keys |= {snap.refs[n][0] for n in refs} - other_targets
    ncards = sum(1 for d, *_ in snap.cards if d == dataset)
    return keys, refs, ncards, len(mine & others)


def _by_model(store: ContentStore, model: str) -> tuple[set[str], set[str]]:
    """The model's prediction keys and its signatures."""
    rows = _meta(store, "prediction", {"sig": "$.model.signature", "name": "$.model.name"})
    names = current_names(store)
    sigs: dict[str, str] = {}
    for _, sig, name in rows:
        if sig:
            sigs[str(sig)] = names.get(str(sig), str(name))
    text = model.strip()
    hit = {s for s, n in sigs.items()
           if text in (n, s) or (len(text) >= 8 and s.startswith(text))}
    if not hit:
        shown = ", ".join(f"{n} ({s[:12]})" for s, n in sorted(sigs.items(), key=lambda x: x[1]))
        raise InvalidInputError(f"model {model!r} has no cached prediction; expected a model "
                                f"name or signature among: {shown or '(none cached)'}")
    return {k for k, sig, _ in rows if str(sig) in hit}, hit


def _by_pipeline(store: ContentStore, pipeline: str) -> set[str]:
    pre = {k for k, name in _meta(store, "preprocessed", {"n": "$.pipeline.name"})
           if name == pipeline}
    if not pre:
        known = sorted({str(n) for _, n in _meta(store, "preprocessed", {"n": "$.pipeline.name"})
                        if n})
        raise InvalidInputError(f"pipeline {pipeline!r} has no cached item; expected one of "
                                f"{known or '(none cached)'}")
    ten = {k for k, p in _meta(store, "tensor", {"p": "$.preprocessed_key"}) if p in pre}
    pred = {k for k, t in _meta(store, "prediction", {"t": "$.tensor_key"}) if t in ten}
    return pre | ten | pred


def remove(store: ContentStore, *, dataset: str | None = None, model: str | None = None,
           pipeline: str | None = None, dry_run: bool = False,
           grace_seconds: float | None = None) -> RemovalReport:
    """Remove everything cached for exactly one of ``dataset``, ``model``, ``pipeline``.

    - ``dataset``: its card records, manifest ref, and every item chained to its images
      (raw, preprocessed, tensors, predictions) that no other cached dataset lists;
    - ``model`` (name, signature or a signature prefix of >= 8 hex digits): its predictions;
    - ``pipeline`` (name): its preprocessed items and the tensors and predictions made
      from them.

    Unknown names raise ``InvalidInputError`` listing what the cache holds. Model records,
    weights and other datasets' data are never touched.
    """
    chosen = [(k, v) for k, v in (("dataset", dataset), ("model", model),
                                  ("pipeline", pipeline)) if v is not None]
    if len(chosen) != 1:
        raise InvalidInputError("cache rm: expected exactly one of --dataset, --model, "
                                f"--pipeline; got {[k for k, _ in chosen] or 'none'}")
    kind, value = chosen[0]
    t0 = time.time()
    rep = RemovalReport(str(store.root), f"--{kind} {value}", dry_run)
    with maintenance_lock(store, exclusive=not dry_run, what="cache rm"):
        snap = _Snapshot.load(store)
        rep.size_before = sum(n for _, n in snap.live_shards().values())
        refs: set[str] = set()
        signatures: set[str] = set()
        if kind == "dataset":
            keys, refs, rep.cards, rep.kept_shared = _by_dataset(store, snap, str(value))
        elif kind == "model":
            keys, signatures = _by_model(store, str(value))
        else:
            keys = _by_pipeline(store, str(value))
        keys &= set(snap.items)
        rep.items = dict(Counter(snap.items[k].layer for k in keys))
        rep.refs = sorted(refs)
        left = Counter(it.blob for k, it in snap.items.items() if it.blob and k not in keys)
        freed = {snap.items[k].blob for k in keys if snap.items[k].blob} - set(left)
        rep.freed_bytes = sum(snap.blobs[b][1] for b in freed if b in snap.blobs)
        if dry_run:
            rep.seconds = time.time() - t0
            return rep
        remove_rows(store.index, sorted(keys), sorted(refs),
                    dataset_cards=value if kind == "dataset" else None)
        if signatures:
            forget(store, signatures)
        # compaction rewrites the shards that held the rows: the bytes come back and a
        # reindex from the shards cannot bring the removed rows back
        kw = {} if grace_seconds is None else {"grace_seconds": grace_seconds}
        after = gc(store, **kw)
        rep.size_after = after.size_after
    rep.seconds = time.time() - t0
    return rep


def describe(store: ContentStore) -> dict[str, Any]:
    """What ``cache rm`` can name: datasets, models (current name -> signature), pipelines."""
    snap = _Snapshot.load(store)
    names = current_names(store)
    models: dict[str, str] = {}
    for _, sig, name in _meta(store, "prediction", {"s": "$.model.signature",
                                                     "n": "$.model.name"}):
        if sig:
            models[str(sig)] = names.get(str(sig), str(name))
    pipelines = sorted({str(n) for _, n in _meta(store, "preprocessed", {"n": "$.pipeline.name"})
                        if n})
    return {"datasets": sorted({d for d, *_ in snap.cards}), "models": models,
            "pipelines": pipelines}


__all__ = ["RemovalReport", "describe", "remove"]
