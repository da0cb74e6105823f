"""``gc``: least-recently-used eviction down to a size or age, protected refs and kept
datasets, and compaction of mostly-dead shards; safe beside readers.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import CacheFullError, IntegrityError, InvalidInputError, PadAssetsError
from ..store import ContentStore, index_admin
from ..store.index_admin import BlobInUse
from ..store.queries import items_with_payload_in, select
from . import footprint
from .common import (
    DEFAULT_COMPACT_THRESHOLD,
    DEFAULT_GRACE_SECONDS,
    EXAMPLES,
    MAX_REWRITE_BYTES,
    MERGE_MIN_SHARDS,
    SHARD_OVERHEAD,
    SMALL_SHARD_BYTES,
    human_bytes,
    parse_duration,
    parse_size,
)
from .locking import maintenance_lock
from .rewrite import clean_partials, purge_retired, rewrite_shards
from .snapshot import _Snapshot


# ---------------------------------------------------------------------------------------
# gc
@dataclass
class GcReport:
    """What ``gc`` evicted (or, with ``dry_run``, would evict) and what it compacted."""

    root: str
    dry_run: bool
    size_before: int = 0
    size_after: int = 0
    live_bytes_before: int = 0
    live_bytes_after: int = 0
    max_size: int | None = None
    evicted: dict[str, int] = field(default_factory=dict)  # layer -> items
    evicted_bytes: int = 0
    evicted_examples: list[str] = field(default_factory=list)
    protected: dict[str, int] = field(default_factory=dict)  # reason -> items
    cards_marked_evicted: int = 0
    compacted: list[str] = field(default_factory=list)
    deleted_shards: list[str] = field(default_factory=list)
    new_shards: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    partials_removed: int = 0
    #: besides the shards: stale artifact files and (with older_than) old report runs
    outside: dict[str, Any] = field(default_factory=dict)
    #: shard -> why it is (or would be) rewritten or deleted
    reasons: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def target_met(self) -> bool:
        return self.max_size is None or self.size_after <= self.max_size

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["target_met"] = self.target_met
        return d

    def __str__(self) -> str:
        verb = "would evict" if self.dry_run else "evicted"
        n = sum(self.evicted.values())
        lines = [f"cache gc {self.root}{' (dry run: nothing changed)' if self.dry_run else ''}:"
                 f" {verb} {n} items {self.evicted or ''} "
                 f"({human_bytes(self.evicted_bytes)} of payload)",
                 f"  size on disk {human_bytes(self.size_before)} -> "
                 f"{'~' if self.dry_run else ''}{human_bytes(self.size_after)}; live payload "
                 f"{human_bytes(self.live_bytes_before)} -> "
                 f"{human_bytes(self.live_bytes_after)}"]
        if self.protected:
            lines.append(f"  protected: {self.protected}")
        verb2 = "would rewrite" if self.dry_run else "rewrote"
        if self.compacted:
            lines.append(f"  {verb2} {len(self.compacted)} shards"
                         + (f" into {len(self.new_shards)} new ones" if self.new_shards else ""))
        if self.deleted_shards:
            lines.append(f"  {'would delete' if self.dry_run else 'deleted'} "
                         f"{len(self.deleted_shards)} shards with no live data")
        why: dict[str, int] = {}
        for r in self.reasons.values():
            why[r] = why.get(r, 0) + 1
        for r, n in sorted(why.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {n} shard(s): {_REASONS.get(r, r)}")
        if self.cards_marked_evicted:
            lines.append(f"  {self.cards_marked_evicted} cards marked 'evicted': their cached "
                         "predictions are still served; a new model or a download fetches "
                         "the image again")
        out = self.outside
        if out.get("stale_artifacts") or out.get("report_runs"):
            lines.append(f"  {'would remove' if self.dry_run else 'removed'} "
                         f"{len(out.get('stale_artifacts', []))} stale artifact files and "
                         f"{len(out.get('report_runs', []))} old report runs "
                         f"({human_bytes(out.get('bytes', 0))})")
        lines += [f"  skipped: {s}" for s in self.skipped]
        if not self.target_met:
            lines.append(f"  warning: still above --max-size {human_bytes(self.max_size or 0)}"
                         ": the rest is protected (refs, kept datasets) or recently used")
        return "\n".join(lines)


#: what each compaction reason means, for the report (``gc --dry-run`` says why)
_REASONS = {
    "no live data": "nothing in it is used any more (evicted or superseded): deleted",
    "merge small shards": "small files merged into one (fewer files to open and sync)",
    "size pressure": "holds dead bytes and the cache is still above --max-size",
}


def _protected(store: ContentStore, snap: _Snapshot, keep_datasets: Sequence[str]
               ) -> dict[str, str]:
    """key -> why it must stay: ref targets, weights of referenced model records, and
    everything chained to the raw images of kept datasets."""
    prot: dict[str, str] = {}
    for name, (key, _) in snap.refs.items():
        kind = name.split("/", 1)[0]
        prot.setdefault(key, f"target of {'an' if kind[:1] in 'aeiou' else 'a'} {kind} ref")
    records = [k for k, why in prot.items()
               if k in snap.items and snap.items[k].layer == "model_record"]
    weights_keys = {k for k, it in snap.items.items() if it.layer == "weights"}
    for k in records:
        try:
            rec = json.loads(store.get_many([k], touch=False)[k])
            sha = str(rec.get("SHA256") or "").lower()
        except (PadAssetsError, ValueError, KeyError, AttributeError):
            # unreadable record: keep every weights file rather than guess
            for w in weights_keys:
                prot.setdefault(w, "weights (model record unreadable)")
            continue
        if sha in weights_keys:
            prot.setdefault(sha, "weights of a model record")
    if keep_datasets:
        keep = set(keep_datasets)
        raw = {r for d, _, r, _, _ in snap.cards if d in keep and r}
        for k, it in snap.items.items():
            if it.raw_key in raw:
                prot.setdefault(k, "kept dataset")
    return prot


def gc(store: ContentStore, max_size: int | str | None = None,
       older_than: float | str | None = None, keep_datasets: Sequence[str] = (),
       dry_run: bool = False, *, compact_threshold: float = DEFAULT_COMPACT_THRESHOLD,
       grace_seconds: float = DEFAULT_GRACE_SECONDS, now: float | None = None) -> GcReport:
    """Evict least-recently-used items, then compact shards and delete dead ones.

    What may go: items that are not protected. Protected are the targets of current refs
    (manifests, model records, Dagster asset values and partitions), weights named by a
    referenced model record, and with ``keep_datasets`` every item chained to those
    datasets' raw images (cards -> raw keys -> items whose metadata records the raw key).
    Which of those go:

    - ``older_than`` (seconds or "30d"): only items unused for that long are eligible;
    - ``max_size`` (bytes or "10GB"): eligible items are evicted in LRU order until the
      cache's estimated size after compaction fits (meta-only items such as predictions
      free nothing and are kept);
    - neither: every eligible item goes, which requires ``keep_datasets`` (a bare ``gc``
      evicts nothing and only compacts, so a typo never empties a shared cache).

    Cards whose raw image was evicted are marked ``evicted`` (``CachedDataset.cards()``
    shows it; the next download fetches the image again). Compaction rewrites shards whose
    live payload is below ``compact_threshold`` of their payload, merges small shards, and
    compacts further (most dead bytes first) while the estimate exceeds ``max_size``.
    ``dry_run`` plans everything and changes nothing.
    """
    t0 = time.time()
    now = time.time() if now is None else now
    if not 0.0 <= compact_threshold <= 1.0:
        raise InvalidInputError(f"compact_threshold {compact_threshold}: expected 0..1")
    limit = parse_size(max_size) if max_size is not None else None
    age = parse_duration(older_than) if older_than is not None else None
    keep = [str(d) for d in keep_datasets]
    rep = GcReport(str(store.root), dry_run, max_size=limit)
    with maintenance_lock(store, exclusive=not dry_run, what="cache gc"):
        if not dry_run:  # leftovers first: on a full disk they are the first free bytes
            rep.partials_removed = len(clean_partials(store))
            purge_retired(store, grace_seconds, wait=False)
        snap = _Snapshot.load(store)
        _check_kept_datasets(store, snap, keep)
        rep.size_before = sum(n for _, n in snap.live_shards().values())
        usage = snap.shard_usage()
        rep.live_bytes_before = sum(u["live"] for u in usage.values())
        # Payloads count at their array size; a shard of compressed arrays (row delta +
        # zstd) is smaller than that, and its "overhead" would come out negative and let
        # the limit pass with items left to evict. Never below zero: with compressed
        # shards the limit holds on disk with room to spare.
        overhead = sum(max(0, u["file"] - u["dead"] - u["live"]) for u in usage.values())
        prot = _protected(store, snap, keep)
        rep.protected = dict(Counter(why for k, why in prot.items() if k in snap.items))
        evict = _plan_evictions(snap, prot, limit, age, bool(keep), now, overhead)
        mark = _account_evictions(rep, snap, evict)
        if dry_run:
            marked = {(d, c) for d, c, _ in mark}
            plan = _plan_compaction(snap, set(evict), compact_threshold, limit, marked)
            _fill_plan(rep, snap, set(evict), plan, marked)
            rep.live_bytes_after = rep.live_bytes_before - rep.evicted_bytes
            rep.outside = footprint.clean(store, age, dry_run=True, now=now)
            rep.seconds = time.time() - t0
            return rep
        _mark_cards_evicted(store, mark, now, "")
        if evict:
            index_admin.delete_items(store.index, evict)
        _compact(store, rep, prot, compact_threshold, limit, grace_seconds, now)
        purge_retired(store, grace_seconds)
        rep.outside = footprint.clean(store, age, dry_run=False, now=now)
        rep.partials_removed += len(clean_partials(store))
        after = _Snapshot.load(store)
        rep.size_after = sum(n for _, n in after.live_shards().values())
        rep.live_bytes_after = sum(u["live"] for u in after.shard_usage().values())
    rep.seconds = time.time() - t0
    return rep


def _check_kept_datasets(store: ContentStore, snap: _Snapshot, keep: list[str]) -> None:
    """Refuse a ``--keep-dataset`` the cache does not hold: a typo would otherwise protect
    nothing and let gc evict the dataset the user meant to keep."""
    known = {d for d, *_ in snap.cards}
    unknown = sorted(set(keep) - known)
    if unknown:
        raise InvalidInputError(
            f"--keep-dataset {unknown}: no such dataset in the cache at {store.root}; "
            f"expected one of {sorted(known) or '(no datasets cached)'}")


def _account_evictions(rep: GcReport, snap: _Snapshot, evict: list[str]
                       ) -> list[tuple[str, int, str]]:
    """Count what evicting ``evict`` frees into ``rep`` (per layer; payload bytes only for
    blobs no surviving item shares) and return the cards whose raw image goes with it,
    so a dry run reports the same numbers the real run produces."""
    refcount = Counter(it.blob for it in snap.items.values() if it.blob)
    freed: set[str] = set()
    for k in evict:
        it = snap.items[k]
        rep.evicted[it.layer] = rep.evicted.get(it.layer, 0) + 1
        if it.blob:
            refcount[it.blob] -= 1
            if refcount[it.blob] == 0:
                freed.add(it.blob)
    rep.evicted_bytes = sum(snap.blobs[b][1] for b in freed if b in snap.blobs)
    rep.evicted_examples = [f"{snap.items[k].layer} {k}" for k in evict[:EXAMPLES]]
    evicted_raw = {k for k in evict if snap.items[k].layer == "raw"}
    mark = [(d, c, r) for d, c, r, st, _ in snap.cards if r in evicted_raw and st == "ok"]
    rep.cards_marked_evicted = len(mark)
    return mark


def _mark_cards_evicted(store: ContentStore, cards: list[tuple[str, int, str]], now: float,
                        why: str) -> None:
    """Mark cards whose raw image gc evicted as ``evicted`` (not deleted): their cached
    predictions stay served and the next download knows to fetch the image again."""
    if not cards:
        return
    from ..store import CardRecord

    stamp_ = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
    store.put(cards=[CardRecord(d, c, r, "evicted", f"raw image evicted by `pad-assets "
                                f"cache gc` at {stamp_} UTC{why}; the next download "
                                "fetches it again") for d, c, r in cards])


def _compact(store: ContentStore, rep: GcReport, prot: dict[str, str], threshold: float,
             limit: int | None, grace: float, now: float) -> None:
    """Plan compaction on the cache as it is after eviction and carry it out, one group
    of shards at a time; a group that cannot be rewritten is reported and skipped, so one
    bad shard never stops the rest of the collection."""
    snap = _Snapshot.load(store)
    plan = _plan_compaction(snap, set(), threshold, limit)
    _fill_plan(rep, snap, set(), plan)
    rep.compacted, rep.deleted_shards = [], []
    # Shards with nothing live go first: deleting them writes nothing, so on a full
    # disk they make the room the rewrites need.
    usage = snap.shard_usage()
    plan.sort(key=lambda p: not all(usage[s]["live"] == 0 and usage[s]["records"] == 0
                                    for s in p[0] if s in usage))
    for group, why in plan:
        try:
            out = _rewrite_on_tight_disk(store, group, f"gc: {why}", prot, limit,
                                         grace, rep, now)
        except (IntegrityError, BlobInUse, OSError) as exc:
            rep.skipped.append(f"shards {group}: {exc}")
            continue
        if out.new_shard:
            rep.new_shards.append(out.new_shard)
            rep.compacted += group
        else:
            rep.deleted_shards += group


def _rewrite_on_tight_disk(store: ContentStore, group: list[str], reason: str,
                           prot: dict[str, str], limit: int | None, grace: float,
                           rep: GcReport, now: float) -> Any:
    """``rewrite_shards``, made to work on a full disk.

    A rewrite needs room for the live part of its shards. When the disk cannot take it:
    first delete the files gc already retired (waiting out their grace period), then,
    under ``max_size`` pressure only, evict the rest of the group's unprotected items so
    the rewrite carries only records and protected payloads (the shard goes whole, as an
    LRU cache on a full disk must). Raises ``CacheFullError`` if even that does not fit.
    """
    try:
        return rewrite_shards(store, group, reason=reason)
    except CacheFullError:
        if purge_retired(store, grace):
            try:
                return rewrite_shards(store, group, reason=reason)
            except CacheFullError:
                pass
        if limit is None:
            raise
    marks = list(dict.fromkeys(_unprotected_in(store, group, prot)))
    if not marks:
        raise CacheFullError(f"cache {store.root}: the disk is full and shards {group} hold "
                             "only protected data (refs, kept datasets)")
    entries = store.index.items(marks)
    evicted_raw = {k for k, e in entries.items() if e["layer"] == "raw"}
    cards = [(d, int(c), r) for d, c, r, st in select(
        store.index, "cards", "dataset", "card_id", "raw_key", "status", status="ok")
        if r in evicted_raw]
    _mark_cards_evicted(store, cards, now, " (disk full)")
    rep.cards_marked_evicted += len(cards)
    index_admin.delete_items(store.index, entries)
    for e in entries.values():
        rep.evicted[e["layer"]] = rep.evicted.get(e["layer"], 0) + 1
    rep.skipped.append(f"shards {group}: the disk could not take their rewrite, so their "
                       f"{len(entries)} unprotected items were evicted with them")
    return rewrite_shards(store, group, reason=reason + " (disk full)")


def _unprotected_in(store: ContentStore, group: list[str], prot: dict[str, str]
                    ) -> list[str]:
    return [k for k in items_with_payload_in(store.index, group) if k not in prot]


def _plan_evictions(snap: _Snapshot, prot: dict[str, str], limit: int | None,
                    age: float | None, have_keep: bool, now: float, overhead: int
                    ) -> list[str]:
    eligible = [it for k, it in snap.items.items() if k not in prot
                and (age is None or it.last_used < now - age)]
    eligible.sort(key=lambda it: (it.last_used, it.created, it.key))
    if limit is None:
        if age is None and not have_keep:
            return []
        return [it.key for it in eligible]
    refcount = Counter(it.blob for it in snap.items.values() if it.blob)
    live = sum(snap.blobs[b][1] for b in refcount if b in snap.blobs)
    out = []
    for it in eligible:
        if live + overhead <= limit:
            break
        if it.blob is None:
            continue  # frees nothing worth the recomputation
        out.append(it.key)
        refcount[it.blob] -= 1
        if refcount[it.blob] == 0 and it.blob in snap.blobs:
            live -= snap.blobs[it.blob][1]
    return out


def _plan_compaction(snap: _Snapshot, evicted: set[str], threshold: float,
                     limit: int | None, marked: set[tuple[str, int]] = frozenset()  # type: ignore[assignment]
                     ) -> list[tuple[list[str], str]]:
    """Groups of shards to rewrite (each group -> one new shard, or none if all dead)."""
    usage = snap.shard_usage(evicted, marked)
    plan: list[tuple[list[str], str]] = []
    chosen: set[str] = set()
    for s, u in sorted(usage.items()):
        if u["live"] == 0 and u["records"] == 0:
            plan.append(([s], "no live data"))
            chosen.add(s)
        elif u["payload"] > 0 and u["live"] < threshold * u["payload"]:
            plan.append(([s], f"only {u['live'] / u['payload']:.0%} of its payload is live"))
            chosen.add(s)
        elif u["file"] >= SMALL_SHARD_BYTES and u["dead"] > (1 - threshold) * u["file"]:
            plan.append(([s], f"{u['dead'] / u['file']:.0%} of the file is dead bytes"))
            chosen.add(s)
    small = [s for s, u in sorted(usage.items()) if s not in chosen and u["file"] <
             SMALL_SHARD_BYTES]
    if len(small) >= MERGE_MIN_SHARDS:
        # many tiny shards (card updates, predictions, refs): one file instead of many
        groups: list[list[str]] = [[]]
        size = 0
        for s in small:
            if groups[-1] and size + usage[s]["file"] > MAX_REWRITE_BYTES:
                groups.append([])
                size = 0
            groups[-1].append(s)
            size += usage[s]["file"]
        for group in groups:
            if len(group) > 1:
                plan.append((group, "merge small shards"))
                chosen |= set(group)
    if limit is not None:
        projected = _projected(usage, plan)
        for s in sorted((s for s in usage if s not in chosen and usage[s]["dead"]),
                        key=lambda s: -usage[s]["dead"]):
            if projected <= limit:
                break
            plan.append(([s], "size pressure"))
            chosen.add(s)
            projected -= usage[s]["file"] - _after(usage[s])
    return plan


def _after(u: dict[str, int]) -> int:
    """Estimated size of a shard's rewrite (0 when nothing in it is live): its live
    payload and records, plus the file's own overhead as far as the file shows it (what
    is neither payload nor record), at most ``SHARD_OVERHEAD``. ``file - dead`` assumed
    the whole 64 kB for every shard, 3.5x the real overhead of a small one: a dry run
    then reported 670 kB where the run left 499 kB."""
    if not (u["live"] or u["records"]):
        return 0
    own = min(SHARD_OVERHEAD, max(0, u["file"] - u["payload"] - u["record_bytes"]))
    return min(u["file"], u["live"] + u["record_bytes"] + own)


def _group_after(usage: dict[str, dict[str, int]], group: list[str]) -> int:
    """Estimated size of the one shard a group is rewritten into: every shard's live
    payload and records, and the file overhead (HDF5 metadata) once, not once per merged
    file: summing ``_after`` over 9 small shards made a dry run report ~150 kB more than
    the real merge left, and warn of a ``--max-size`` the real run then met."""
    afters = [(_after(usage[s]), usage[s]) for s in group if s in usage]
    overheads = [max(0, a - u["live"] - u["record_bytes"]) for a, u in afters if a]
    return sum(a for a, _ in afters) - sum(overheads) + max(overheads, default=0)


def _projected(usage: dict[str, dict[str, int]], plan: list[tuple[list[str], str]]) -> int:
    """Estimated size on disk once ``plan`` is carried out."""
    chosen = {s for g, _ in plan for s in g}
    return (sum(u["file"] for s, u in usage.items() if s not in chosen)
            + sum(_group_after(usage, g) for g, _ in plan))


def _fill_plan(rep: GcReport, snap: _Snapshot, evicted: set[str],
               plan: list[tuple[list[str], str]],
               marked: set[tuple[str, int]] = frozenset()) -> None:  # type: ignore[assignment]
    usage = snap.shard_usage(evicted, marked)
    rep.size_after = _projected(usage, plan)
    for group, why in plan:
        for s in group:
            rep.reasons[s] = why
        if all(usage[s]["live"] == 0 and usage[s]["records"] == 0 for s in group):
            rep.deleted_shards += group
        else:
            rep.compacted += group
