"""Read-through and write-back between a worker's local cache and the shared tier.

Why: on many machines, each worker keeps its own local cache (SQLite and HDF5 stay on local
disk) and the tier on object storage is the only thing they share. Before a batch, the
worker pulls the dataset's published shards it lacks (what other workers computed: its
cache then serves those items without recomputing or downloading them); after a batch
succeeds, it pushes what it wrote. Both are the verified ``pull``/``push`` of
``pad_assets.sharing``: a worker killed mid-batch publishes nothing of that batch, and the
rerun (on any worker) completes it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import IntegrityError
from ..sharing import pull, push
from ..sharing.remote import remote_index
from ..store import ContentStore
from .localdisk import require_local_disk


def pull_dataset(store: ContentStore, tier_url: str, dataset: str, strict: bool = True
                 ) -> Any:
    """Pull the dataset's shards this cache lacks (None when the tier has none yet).

    ``strict=False``: shards that fail verification are left out and listed in the
    report's ``failed`` (the batch then recomputes what they held) instead of raising."""
    entries = remote_index(tier_url)
    if not any(dataset in e.get("datasets", []) for e in entries.values()):
        return None
    return pull(store, tier_url, dataset=dataset, strict=strict)


@contextmanager
def tier_batch(cache_dir: Any, tier_url: str | None, dataset: str, log: Any = None
               ) -> Iterator[dict[str, Any]]:
    """Around one batch: pull-through before, push after success (no-op without a tier).

    Yields a dict that receives ``pulled``/``pushed`` shard counts and seconds, for the
    step's metadata."""
    stats: dict[str, Any] = {}
    if not tier_url:
        yield stats
        return
    require_local_disk(cache_dir, "cache folder (PAD_CACHE_DIR) of a worker using a tier")
    t0 = time.time()
    store = ContentStore(cache_dir)
    try:
        got = pull_dataset(store, tier_url, dataset, strict=False)
    finally:
        store.close()
    stats.update(pulled=len(got.pulled) if got else 0, pull_seconds=time.time() - t0,
                 refused=list(got.failed) if got else [])
    for why in stats["refused"][:20]:  # not taken; this batch recomputes what they held
        if log is not None:
            log.warning(f"tier {tier_url}: shard not taken: {why}")
        else:
            warnings.warn(f"tier {tier_url}: shard not taken: {why}", stacklevel=2)
    if log is not None:
        log.info(f"tier {tier_url}: pulled {stats['pulled']} shards of {dataset}")
    yield stats
    t1 = time.time()
    store = ContentStore(cache_dir)
    try:
        rep = push(store, tier_url)
    finally:
        store.close()
    if rep.skipped:
        raise IntegrityError(f"push to {tier_url} left shards out: {rep.skipped[:3]}")
    stats.update(pushed=len(rep.pushed), push_seconds=time.time() - t1)
    if log is not None:
        log.info(f"tier {tier_url}: pushed {len(rep.pushed)} shards")


__all__ = ["pull_dataset", "tier_batch"]
