"""A consistent snapshot of the index that gc and stats plan from, taken in one read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..store import ContentStore
from ..store.queries import select
from .common import RECORD_OVERHEAD, SHARD_OVERHEAD, retired_shards


# ---------------------------------------------------------------------------------------
# a snapshot of the index, for planning
@dataclass
class _Item:
    key: str
    layer: str
    blob: str | None
    shard: str
    raw_key: str | None
    last_used: float
    created: float
    meta_bytes: int


@dataclass
class _Snapshot:
    """What the index says, in memory: planning never holds a transaction open."""

    items: dict[str, _Item]
    blobs: dict[str, tuple[str, int]]  # blob -> (shard, nbytes)
    shards: dict[str, tuple[str, int]]  # shard -> (rel path, nbytes)
    refs: dict[str, tuple[str, str]]  # name -> (key, shard)
    cards: list[tuple[str, int, str | None, str, str]]  # dataset, card, raw, status, shard
    retired: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, store: ContentStore) -> _Snapshot:
        index = store.index
        items = {}
        for key, layer, blob, shard, raw, lu, cr, mlen in select(
                index, "items", "key", "layer", "blob", "shard", "meta.raw_key", "last_used",
                "created", "len(meta)"):
            raw_key = key if layer == "raw" else (raw if isinstance(raw, str) else None)
            items[key] = _Item(key, layer, blob, shard, raw_key, float(lu), float(cr),
                               int(mlen or 0))
        blobs = {b: (s, int(n)) for b, s, n in select(index, "blobs", "blob", "shard", "nbytes")}
        shards = {s: (p, int(n)) for s, p, n in select(index, "shards", "shard", "path",
                                                       "nbytes")}
        refs = {n: (k, s) for n, k, s in select(index, "refs", "name", "key", "shard")}
        cards = [(d, int(c), r, st, s) for d, c, r, st, s in
                 select(index, "cards", "dataset", "card_id", "raw_key", "status", "shard")]
        return cls(items, blobs, shards, refs, cards, retired_shards(store.index))

    def live_shards(self) -> dict[str, tuple[str, int]]:
        return {s: v for s, v in self.shards.items() if s not in self.retired}

    def shard_usage(self, evicted: set[str] = frozenset(),  # type: ignore[assignment]
                    superseded_cards: set[tuple[str, int]] = frozenset(),  # type: ignore[assignment]
                    ) -> dict[str, dict[str, int]]:
        """Per live shard: indexed payload bytes, live payload bytes, live record counts.

        ``evicted`` items and ``superseded_cards`` (card rows about to be replaced by newer
        records elsewhere) count as dead: that is how a dry run sees the future."""
        refcount: Counter[str] = Counter(
            it.blob for k, it in self.items.items() if it.blob and k not in evicted)
        usage: dict[str, dict[str, int]] = {
            s: {"file": n, "payload": 0, "live": 0, "records": 0, "record_bytes": 0}
            for s, (_, n) in self.live_shards().items()}
        for b, (s, n) in self.blobs.items():
            u = usage.get(s)
            if u is None:
                continue
            u["payload"] += n
            if refcount.get(b):
                u["live"] += n
        for k, it in self.items.items():
            if k not in evicted and it.shard in usage:
                usage[it.shard]["records"] += 1
                usage[it.shard]["record_bytes"] += it.meta_bytes + RECORD_OVERHEAD
        for _, s in self.refs.values():
            if s in usage:
                usage[s]["records"] += 1
                usage[s]["record_bytes"] += RECORD_OVERHEAD
        for d, c, _, _, s in self.cards:
            if s in usage and (d, c) not in superseded_cards:
                usage[s]["records"] += 1
                usage[s]["record_bytes"] += RECORD_OVERHEAD
        for u in usage.values():
            # bytes in the file that nothing live accounts for: dead payload, superseded
            # records, and payloads never indexed (a copy of data already held elsewhere)
            u["dead"] = max(0, u["file"] - u["live"] - u["record_bytes"] - SHARD_OVERHEAD)
        return usage
