"""``verify``: every shard, payload, index row, ref and card checked; ``--repair`` fixes
what it can from the source of truth (re-fetch raw, drop derived for lazy recompute).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CacheCorruptionError, IntegrityError, PadAssetsError
from ..hashing import sha256_bytes
from ..store import ContentStore, NewItem, index_admin
from ..store import refs as refnames
from ..store import shards as shard_io
from ..store.index_admin import BlobInUse
from ..store.queries import NotNull, OneOf, each, orphan_blobs, select
from .common import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_PARTIAL_MAX_AGE,
    DERIVED_LAYERS,
    EXAMPLES,
    RECENT_ORPHAN_SECONDS,
    blob_row,
    key_problem,
    read_blob_checked,
    retired_shards,
)
from .contradictions import HELP as CONTRADICTION_HELP
from .contradictions import find_contradictions, repair_contradictions
from .locking import maintenance_lock
from .rewrite import _partials, clean_partials, purge_retired, rewrite_shards


# ---------------------------------------------------------------------------------------
# verify
@dataclass
class Finding:
    kind: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.detail}"


#: Kinds that are expected states, not damage (they never fail ``verify``).
NOTE_KINDS = {
    "orphan_blob": "payloads no item references (reclaimed by `pad-assets cache gc`)",
    "partial_file": "*.partial files of writers (removed by --repair once an hour old)",
    "recent_orphan_shard": "shard files written moments ago and not yet indexed by their writer",
    "retired_shard": "shards whose content moved; their files are deleted after a grace period",
    "evicted_card": "cards whose raw image `cache gc` evicted (the next download refetches it)",
}
PROBLEM_HELP = {
    "missing_shard": "the index points at a shard file that is gone",
    "unreadable_shard": "a shard file cannot be opened or its records cannot be read",
    "orphan_shard": "a complete shard file the index does not know",
    "corrupt_blob": "a payload fails its checksum or cannot be read",
    "missing_blob": "a payload the index places in a shard is not there",
    "item_unreadable": "an item whose payload is corrupt or missing",
    "key_mismatch": "an item whose key does not match its content or recorded chain",
    "record_missing": "an index row with no record in its shard (a rebuild would lose it)",
    "dangling_ref": "a ref whose target item is not in the cache",
    "card_missing_raw": "a card marked ok whose raw image is not in the cache",
    **CONTRADICTION_HELP,
    "artifact_mismatch": "a model weights copy in artifacts/ whose bytes are not its sha256",
}


@dataclass
class VerifyReport:
    """What ``verify`` found (``problems``), what is normal but worth knowing (``notes``),
    what ``repair`` changed and what it could not fix (``unrepaired``)."""

    root: str
    shards_checked: int = 0
    items_checked: int = 0
    blobs_checked: int = 0
    problems: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)
    repair: bool = False
    repaired: list[str] = field(default_factory=list)
    unrepaired: list[str] = field(default_factory=list)
    remaining: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.problems))

    @property
    def note_counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.notes))

    @property
    def ok(self) -> bool:
        """No damage found, or (after a repair) none left and nothing left unrepaired."""
        if self.repair:
            return not self.remaining and not self.unrepaired
        return not self.problems

    def examples(self, kind: str, n: int = EXAMPLES) -> list[str]:
        return [str(f) for f in self.problems + self.notes if f.kind == kind][:n]

    def as_dict(self) -> dict[str, Any]:
        return {
            "root": self.root, "ok": self.ok, "shards_checked": self.shards_checked,
            "items_checked": self.items_checked, "blobs_checked": self.blobs_checked,
            "problems": {k: {"count": n, "examples": self.examples(k)}
                         for k, n in sorted(self.counts.items())},
            "notes": {k: {"count": n, "examples": self.examples(k)}
                      for k, n in sorted(self.note_counts.items())},
            "repair": self.repair, "repaired": self.repaired, "unrepaired": self.unrepaired,
            "remaining": {k: n for k, n in Counter(f.kind for f in self.remaining).items()},
            "seconds": round(self.seconds, 3),
        }

    def __str__(self) -> str:
        lines = [f"cache verify {self.root}: {self.shards_checked} shards, "
                 f"{self.items_checked} items, {self.blobs_checked} payloads checked "
                 f"[{self.seconds:.1f} s]"]
        if not self.problems:
            lines.append("no problems found")
        for kind, n in sorted(self.counts.items()):
            lines.append(f"problem {kind} ({PROBLEM_HELP.get(kind, kind)}): {n}")
            lines += [f"    e.g. {e}" for e in self.examples(kind, 3)]
        for kind, n in sorted(self.note_counts.items()):
            lines.append(f"note {kind} ({NOTE_KINDS.get(kind, kind)}): {n}")
        if self.repair:
            lines += ["repaired:"] + [f"  - {r}" for r in self.repaired or ["nothing to do"]]
            if self.unrepaired or self.remaining:
                lines.append("could not repair:")
                lines += [f"  - {u}" for u in self.unrepaired]
                for kind, n in sorted(Counter(f.kind for f in self.remaining).items()):
                    ex = next(f for f in self.remaining if f.kind == kind)
                    lines.append(f"  - still {n} {kind}, e.g. {ex}")
        elif self.problems:
            lines.append("run `pad-assets cache verify --repair` to repair")
        return "\n".join(lines)


@dataclass
class _CheckState:
    report: VerifyReport
    bad_blobs: dict[str, str] = field(default_factory=dict)  # blob -> why
    bad_items: dict[str, str] = field(default_factory=dict)  # key -> why
    missing_shards: set[str] = field(default_factory=set)
    unreadable_shards: set[str] = field(default_factory=set)
    record_missing_shards: set[str] = field(default_factory=set)
    orphans: dict[str, str] = field(default_factory=dict)  # name -> rel (complete, old)
    bad_artifacts: list[Path] = field(default_factory=list)


def _inspect_orphan(path: Path) -> str | None:
    """None when an unindexed shard is fully readable and every payload checks out."""
    import h5py

    try:
        records = shard_io.read_records(path)
        if not isinstance(records, list):
            return "records are not a list"
        with h5py.File(path, "r", locking=False) as f:
            for b in list(f[shard_io.BLOBS_GROUP].keys()):
                read_blob_checked(f, b)
    except (OSError, KeyError, ValueError, IntegrityError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _check(store: ContentStore, progress: Callable[[int, int], None] | None = None
           ) -> _CheckState:
    """Check the cache read-only and collect what is wrong into a ``_CheckState`` that
    ``--repair`` acts on: shard files, payloads, index rows, refs, cards, artifacts."""
    t0 = time.time()
    st = _CheckState(VerifyReport(str(store.root)))
    rep = st.report
    index = store.index
    retired = retired_shards(index)
    shards = {s: p for s, p in select(index, "shards", "shard", "path") if s not in retired}
    files = store.shard_files()
    for s in retired:
        rep.notes.append(Finding("retired_shard", s, retired[s]["reason"]))
    _check_orphan_shards(store, st, shards, retired, files)
    blobs_by_shard = _blobs_by_shard(index, st, shards, retired)
    records_of = _check_shards(store, st, shards, blobs_by_shard, progress)
    items = _check_items(index, st, records_of)
    _check_refs_and_cards(index, st, items, records_of)
    for b in orphan_blobs(index):
        if b not in st.bad_blobs:
            rep.notes.append(Finding("orphan_blob", b, "no item references it"))
    for name, size, mtime in _partials(store):
        rep.notes.append(Finding("partial_file", f"tmp/{name}",
                                 f"{size} bytes, {time.time() - mtime:.0f} s old"))
    rep.problems += [Finding(*f) for f in find_contradictions(store, set(st.bad_items))]
    _check_artifacts(store, st)
    rep.seconds = time.time() - t0
    return st


def _check_orphan_shards(store: ContentStore, st: _CheckState, shards: dict[str, str],
                         retired: dict[str, Any], files: dict[str, str]) -> None:
    """Shard files the index does not know: damaged leftovers of a crash, or readable
    shards ``--repair`` can index. A very recent one is a writer still at work: noted only."""
    rep = st.report
    for name, rel in sorted(files.items()):
        if name in shards or name in retired:
            continue
        path = store.root / rel
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime < RECENT_ORPHAN_SECONDS:
                rep.notes.append(Finding("recent_orphan_shard", name, rel))
                continue
        why = _inspect_orphan(path)
        st.orphans[name] = rel
        rep.problems.append(Finding("orphan_shard", name, f"{rel} is not indexed" + (
            f" and is damaged ({why})" if why else " (readable; --repair indexes it)")))


def _blobs_by_shard(index: Any, st: _CheckState, shards: dict[str, str],
                    retired: dict[str, Any]) -> dict[str, list[str]]:
    """Indexed payloads grouped by shard; payloads of a shard the index does not list
    are reported at once, since no file will be opened for them."""
    blobs_by_shard: dict[str, list[str]] = defaultdict(list)
    for b, s in select(index, "blobs", "blob", "shard"):
        blobs_by_shard[s].append(b)
    for s, blist in blobs_by_shard.items():
        if s not in shards and s not in retired:
            for b in blist:
                st.bad_blobs[b] = f"its shard {s} is not in the index"
                st.report.problems.append(Finding("missing_blob", b, f"shard {s} is not indexed"))
    return blobs_by_shard


def _check_shards(store: ContentStore, st: _CheckState, shards: dict[str, str],
                  blobs_by_shard: dict[str, list[str]],
                  progress: Callable[[int, int], None] | None
                  ) -> dict[str, tuple[set, set, set]]:
    """Open every indexed shard: a missing or unopenable file makes all its payloads bad.
    Returns each readable shard's records (item keys, ref names, cards) for the
    cross-check of index rows against the shards that should list them."""
    import h5py

    rep = st.report
    records_of: dict[str, tuple[set, set, set]] = {}
    for s, rel in sorted(shards.items()):
        if progress is not None:
            progress(rep.shards_checked, len(shards))
        rep.shards_checked += 1
        path = store.root / rel
        if not path.is_file():
            st.missing_shards.add(s)
            rep.problems.append(Finding("missing_shard", s, f"{rel} does not exist"))
            for b in blobs_by_shard.get(s, []):
                st.bad_blobs[b] = f"shard {s} is missing"
            continue
        try:
            f = h5py.File(path, "r", locking=False)
        except Exception as exc:  # h5py: OSError for truncated/garbage files
            st.unreadable_shards.add(s)
            rep.problems.append(Finding("unreadable_shard", s,
                                        f"{rel}: {type(exc).__name__}: {exc}"))
            for b in blobs_by_shard.get(s, []):
                st.bad_blobs[b] = f"shard {s} cannot be opened"
            continue
        with f:
            _check_shard_contents(f, s, rel, blobs_by_shard.get(s, []), st, records_of)
    return records_of


def _check_shard_contents(f: Any, s: str, rel: str, blobs: list[str], st: _CheckState,
                          records_of: dict[str, tuple[set, set, set]]) -> None:
    """One open shard: its records must parse, and every payload the index places in it
    must be there and hash to its name."""
    rep = st.report
    try:
        raw = f[shard_io.RECORDS_DATASET][()]
        recs = json.loads(bytes(raw).decode())
        records_of[s] = (
            {r.get("key") for r in recs if r.get("type") == "item"},
            {r.get("name") for r in recs if r.get("type") == "ref"},
            {(r.get("dataset"), int(r.get("card_id", -1)))
             for r in recs if r.get("type") == "card"})
    except Exception as exc:
        st.unreadable_shards.add(s)
        rep.problems.append(Finding("unreadable_shard", s, f"{rel}: records cannot be "
                                    f"read ({type(exc).__name__}: {exc})"))
    for b in blobs:
        rep.blobs_checked += 1
        try:
            read_blob_checked(f, b)
        except IntegrityError as exc:
            missing = "not in the shard" in str(exc)
            st.bad_blobs[b] = str(exc)
            rep.problems.append(Finding("missing_blob" if missing else "corrupt_blob",
                                        b, f"shard {s}: {exc}"))
        except Exception as exc:  # damaged HDF5 metadata
            st.bad_blobs[b] = f"{type(exc).__name__}: {exc}"
            rep.problems.append(Finding("corrupt_blob", b, f"shard {s}: "
                                        f"{type(exc).__name__}: {exc}"))


def _check_items(index: Any, st: _CheckState, records_of: dict[str, tuple[set, set, set]]
                 ) -> set[str]:
    """Every item row: its payload present and sound, its key matching what it holds,
    and its shard listing it. Returns the keys of all items, for refs and cards."""
    rep = st.report
    present_blobs = set(each(select(index, "blobs", "blob")))
    items: set[str] = set()
    for key, layer, blob, meta, shard in select(index, "items", "key", "layer", "blob", "meta",
                                                "shard"):
        rep.items_checked += 1
        items.add(key)
        try:
            meta_d = json.loads(meta)
        except ValueError:
            meta_d = {}
        if blob is not None and blob not in present_blobs:
            st.bad_items[key] = f"its payload {blob} is in no indexed shard"
            rep.problems.append(Finding("item_unreadable", key, f"{layer}: payload {blob} "
                                        "is in no indexed shard"))
        elif blob is not None and blob in st.bad_blobs:
            st.bad_items[key] = st.bad_blobs[blob]
            rep.problems.append(Finding("item_unreadable", key, f"{layer}: "
                                        f"{st.bad_blobs[blob]}"))
        why = key_problem(key, layer, blob, meta_d)
        if why:
            st.bad_items.setdefault(key, why)
            rep.problems.append(Finding("key_mismatch", key, why))
        recs = records_of.get(shard)
        if recs is not None and key not in recs[0]:
            st.record_missing_shards.add(shard)
            rep.problems.append(Finding("record_missing", key, f"item row points at shard "
                                        f"{shard}, whose records do not list it"))
    return items


def _check_refs_and_cards(index: Any, st: _CheckState, items: set[str],
                          records_of: dict[str, tuple[set, set, set]]) -> None:
    """Refs and cards must point at sound items and be listed by their shard; an evicted
    card is expected (gc did it) and only noted."""
    rep = st.report
    for name, key, shard in select(index, "refs", "name", "key", "shard"):
        if key not in items or key in st.bad_items:
            rep.problems.append(Finding("dangling_ref", name, f"target {key} is "
                                        + ("damaged" if key in items else "not cached")))
        recs = records_of.get(shard)
        if recs is not None and name not in recs[1]:
            st.record_missing_shards.add(shard)
            rep.problems.append(Finding("record_missing", name, f"ref row points at shard "
                                        f"{shard}, whose records do not list it"))
    for ds, cid, raw, status, shard in select(index, "cards", "dataset", "card_id", "raw_key",
                                              "status", "shard"):
        if status == "evicted":
            rep.notes.append(Finding("evicted_card", f"{ds}/{cid}", f"raw {raw}"))
        elif status == "ok" and raw and (raw not in items or raw in st.bad_items):
            rep.problems.append(Finding("card_missing_raw", f"{ds}/{cid}", f"raw image {raw} "
                                        + ("is damaged" if raw in items else "is not cached")))
        recs = records_of.get(shard)
        if recs is not None and (ds, int(cid)) not in recs[2]:
            st.record_missing_shards.add(shard)
            rep.problems.append(Finding("record_missing", f"{ds}/{cid}", f"card row points "
                                        f"at shard {shard}, whose records do not list it"))


def _check_artifacts(store: ContentStore, st: _CheckState) -> None:
    """Weights copies in ``<cache>/artifacts/`` (what model runtimes load) must hash to the
    sha256 their name carries: a changed copy would predict under the right signature."""
    from ..sources.model_artifacts import artifact_problem

    folder = store.root / "artifacts"
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        why = artifact_problem(path)
        if why:
            st.bad_artifacts.append(path)
            st.report.problems.append(Finding("artifact_mismatch", f"artifacts/{path.name}",
                                              why))


DatasetResolver = Callable[[str], Any]


def verify(store: ContentStore, repair: bool = False,
           dataset_resolver: DatasetResolver | None = None, *, settings: Any = None,
           partial_max_age: float = DEFAULT_PARTIAL_MAX_AGE,
           grace_seconds: float = DEFAULT_GRACE_SECONDS,
           progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check every shard, payload, index row, ref and card; with ``repair``, fix what can be.

    ``progress(done, total)`` is called per shard of the first scan (the CLI's bar).

    Reads every payload (a full scan: use it after a crash, a disk error, or on a schedule).
    ``repair`` removes what is damaged from the index (good data in the same shard is first
    rewritten into a new shard; damaged shard files go to ``quarantine/``), indexes readable
    orphan shards, re-fetches raw images from their recorded ``source_url`` (sha256 and md5
    must match the original) and leaves derived items to be recomputed lazily by the next
    ``apply_model`` / ``get_preprocessed_batch``. ``dataset_resolver(name)`` returns a
    ``CachedDataset`` sharing this store; with it, cards whose raw image cannot be restored
    from the item's own metadata are downloaded again, and dangling manifest refs are
    re-fetched. ``settings`` (default ``Settings.from_env(cache_dir=store.root)``) says
    which PAD server to re-fetch from.
    """
    t0 = time.time()
    with maintenance_lock(store, exclusive=repair, what="cache verify"
                          + (" --repair" if repair else "")), _index_damage_is_clear(store):
        state = _check(store, progress)
        report = state.report
        report.repair = repair
        if repair:
            _repair(store, state, dataset_resolver, settings, partial_max_age, grace_seconds)
            after = _check(store)
            report.remaining = after.report.problems
    report.seconds = time.time() - t0
    return report


@contextlib.contextmanager
def _index_damage_is_clear(store: ContentStore) -> Any:
    """SQLite's "database disk image is malformed" becomes an error that names the fix."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and "malformed" not in str(exc):
            raise
        raise CacheCorruptionError(
            f"the cache index {store.index.path} is damaged ({type(exc).__name__}: {exc}); "
            "run `pad-assets cache reindex` to rebuild it from the shard files, then "
            "`pad-assets cache verify` again") from exc


def _salvage_orphan(store: ContentStore, name: str, rel: str) -> str:
    """Index a readable orphan shard, or rewrite what is good in a damaged one."""
    import h5py

    path = store.root / rel
    if _inspect_orphan(path) is None:
        store.index_shard_file(name, rel)
        return f"indexed orphan shard {name}"
    good: dict[str, tuple[np.ndarray, str]] = {}
    records: list[dict[str, Any]] = []
    with contextlib.suppress(Exception):
        records = [r for r in shard_io.read_records(path) if isinstance(r, dict)]
    with contextlib.suppress(Exception), h5py.File(path, "r", locking=False) as f:
        for b in list(f[shard_io.BLOBS_GROUP].keys()):
            with contextlib.suppress(Exception):
                good[b] = read_blob_checked(f, b)
    have = store.index.present_blobs([r.get("blob") for r in records
                                      if r.get("type") == "item" and r.get("blob")])
    keep = [r for r in records if r.get("type") != "item" or r.get("blob") is None
            or r.get("blob") in good or r.get("blob") in have]
    blobs = [shard_io.BlobPayload(b, a, k) for b, (a, k) in good.items() if b not in have]
    msg = f"quarantined damaged orphan shard {name}"
    if keep or blobs:
        new, nrel, nbytes = shard_io.write_shard(store.root, blobs, keep)
        store.index.apply_shard(new, nrel, nbytes, keep,
                                [blob_row(b.blob_id, b.array, b.kind) for b in blobs])
        msg += f" after rewriting its {len(blobs)} good payloads and {len(keep)} records " \
               f"into {new}"
    qdir = store.root / "quarantine"
    qdir.mkdir(parents=True, exist_ok=True)
    os.replace(path, qdir / path.name)
    return msg


def _repair(store: ContentStore, st: _CheckState, resolver: DatasetResolver | None,
            settings: Any, partial_max_age: float, grace: float) -> None:
    """Fix what ``_check`` found, in an order where each step makes room for the next:
    salvage orphans, drop damaged items, rewrite their shards, then restore from the
    sources of truth (raw images, manifests, models), then clear leftovers."""
    rep = st.report
    # 1. orphan shard files
    for name, rel in sorted(st.orphans.items()):
        try:
            rep.repaired.append(_salvage_orphan(store, name, rel))
        except (OSError, PadAssetsError) as exc:
            rep.unrepaired.append(f"orphan shard {name}: {type(exc).__name__}: {exc}")
    # 2. drop damaged items from the index (keep their metadata to restore raw images)
    drop = dict(st.bad_items)
    entries, record_shards = _drop_damaged_items(store, drop)
    raw_meta = {k: e["meta"] for k, e in entries.items() if e["layer"] == "raw"}
    # 3. rewrite every shard that holds damaged data or records of dropped items
    _rewrite_damaged_shards(store, st, record_shards)
    _report_dropped(rep, drop, entries)
    # 4. restore raw images from their recorded source
    unrestored = _restore_raw(store, raw_meta, settings, rep) if raw_meta else {}
    # 5. cards still without raw images, and dangling manifest refs
    _refetch_missing_cards(store, resolver, rep)
    _settle_unrestored(store, unrestored, rep)
    _repair_models(store, st, settings, rep)
    _repair_dangling_refs(store, resolver, rep)
    # 5b. refs and cards that contradict their content, or are stamped in the future
    fixed, unfixed = repair_contradictions(store, rep.problems, resolver)
    rep.repaired += fixed
    rep.unrepaired += unfixed
    # 6. leftovers
    removed = clean_partials(store, partial_max_age)
    if removed:
        rep.repaired.append(f"removed {len(removed)} stale *.partial files")
    purged = purge_retired(store, grace)
    if purged:
        rep.repaired.append(f"deleted or quarantined {len(purged)} retired shard files")


def _drop_damaged_items(store: ContentStore, drop: dict[str, str]
                        ) -> tuple[dict[str, Any], set[str]]:
    """Remove damaged items (and payload rows of shards the index no longer lists) from
    the index. Returns their index entries, read first because raw images are restored
    from their metadata, and the shards whose records still list them (to be rewritten)."""
    index = store.index
    entries = index.items(list(drop)) if drop else {}
    record_shards = {e["shard"] for e in entries.values()}
    record_shards |= set(each(select(index, "items", "shard", distinct=True,
                                     key=OneOf(list(drop)))))
    if drop:
        index_admin.delete_items(index, drop)
    index_admin.delete_blobs_of_unknown_shards(index)
    return entries, record_shards


def _rewrite_damaged_shards(store: ContentStore, st: _CheckState, record_shards: set[str]
                            ) -> None:
    """Rewrite each shard holding damaged payloads or records of dropped items: its good
    content moves to a new shard, a damaged file is quarantined (kept for a post-mortem),
    a sound one retired. A shard that cannot be rewritten is reported, not fatal."""
    rep, index = st.report, store.index
    damaged = ({s for (b, s) in select(index, "blobs", "blob", "shard")
                if b in st.bad_blobs} | st.missing_shards | st.unreadable_shards)
    affected = (damaged | st.record_missing_shards | record_shards) - set(
        retired_shards(index))
    known = set(index.shard_paths())
    for s in sorted(affected & known):
        bad_here = [b for b in each(select(index, "blobs", "blob", shard=s))
                    if b in st.bad_blobs]
        disposition = "quarantine" if s in damaged else "delete"
        try:
            out = rewrite_shards(store, [s], disposition=disposition, drop_blobs=bad_here,
                                 reason="verify --repair")
        except (IntegrityError, BlobInUse, OSError) as exc:
            rep.unrepaired.append(f"shard {s}: could not rewrite its good content ({exc})")
            continue
        what = {"quarantine": "quarantined", "delete": "retired"}[disposition]
        if s in st.missing_shards:
            what = "removed the index entries of missing"
        rep.repaired.append(
            f"{what} shard {s}" + (f"; its good content ({out.carried_items} items, "
                                   f"{out.carried_blobs} payloads, other records) now lives "
                                   f"in {out.new_shard}" if out.new_shard else ""))


def _report_dropped(rep: VerifyReport, drop: dict[str, str], entries: dict[str, Any]
                    ) -> None:
    """Say what the dropped items were and how each kind comes back: derived items are
    recomputed lazily, others through their ref or model."""
    derived = Counter(e["layer"] for e in entries.values() if e["layer"] in DERIVED_LAYERS)
    other = Counter(e["layer"] for e in entries.values()
                    if e["layer"] not in DERIVED_LAYERS and e["layer"] != "raw")
    if drop:
        rep.repaired.append(f"removed {len(drop)} damaged items from the index "
                            f"({dict(Counter(e['layer'] for e in entries.values()))})")
    if derived:
        rep.repaired.append(
            f"derived items {dict(derived)} were removed; the next apply_model / "
            "get_preprocessed_batch (or Dagster materialization) recomputes them from raw")
    if other:
        rep.repaired.append(
            f"items {dict(other)} were removed; what a ref still needs is listed below, "
            "weights come back the next time their model is resolved")


def _refetch_missing_cards(store: ContentStore, resolver: DatasetResolver | None,
                           rep: VerifyReport) -> None:
    """Cards still without their raw image: downloaded again through ``resolver`` (the
    PAD API is the source of truth), or reported with the command that fetches them."""
    ok_cards = select(store.index, "cards", "dataset", "card_id", "raw_key", status="ok",
                      raw_key=NotNull())
    present = set(store.has([r for _, _, r in ok_cards]))
    missing_cards: dict[str, list[int]] = defaultdict(list)
    for ds, cid, raw in ok_cards:
        if raw not in present:
            missing_cards[ds].append(int(cid))
    for ds, ids in sorted(missing_cards.items()):
        if resolver is None:
            rep.unrepaired.append(
                f"{len(ids)} cards of {ds} have no raw image (e.g. {sorted(ids)[:5]}); run "
                f"`pad-assets download {ds}` or pass dataset_resolver to fetch them")
            continue
        try:
            summary = resolver(ds).download_and_cache(card_ids=sorted(ids),
                                                      refresh_manifest=False)
        except PadAssetsError as exc:
            rep.unrepaired.append(f"{ds}: re-download of {len(ids)} cards failed: {exc}")
            continue
        got = len(summary.downloaded) + len(summary.reused)
        rep.repaired.append(f"{ds}: downloaded {len(summary.downloaded)} missing raw images "
                            f"again ({got}/{len(ids)} cards restored)")
        if summary.failed:
            rep.unrepaired.append(f"{ds}: {len(summary.failed)} cards could not be fetched, "
                                  f"e.g. {sorted(summary.failed.items())[:2]}")


def _settle_unrestored(store: ContentStore, unrestored: dict[str, str], rep: VerifyReport
                       ) -> None:
    """A raw image that could not be restored is a problem only while a card uses it;
    otherwise its removal was the repair."""
    still_used = set(each(select(store.index, "cards", "raw_key", status="ok")))
    present_now = store.has(list(unrestored))
    for key, why in sorted(unrestored.items()):
        if key in present_now:
            continue
        if key in still_used:
            rep.unrepaired.append(f"raw item {key}: {why}")
        else:
            rep.repaired.append(f"removed raw item {key} ({why}; no card uses it any more)")


def _repair_dangling_refs(store: ContentStore, resolver: DatasetResolver | None,
                          rep: VerifyReport) -> None:
    """Refs whose target is gone: a manifest is fetched again; for other refs only their
    producer can remake the target, so the report says which one to run."""
    ref_rows = select(store.index, "refs", "name", "key")
    items_now = store.has([k for _, k in ref_rows])
    for name, key in ref_rows:
        if key in items_now:
            continue
        if name.startswith(refnames.MODEL_RECORD):
            continue  # reported by _repair_models
        if name.startswith(refnames.MANIFEST) and resolver is not None:
            ds = name.rsplit("/", 1)[-1]
            try:
                resolver(ds).manifest(refresh=True)
                rep.repaired.append(f"re-fetched the manifest of {ds} (ref {name})")
            except PadAssetsError as exc:
                rep.unrepaired.append(f"ref {name}: manifest re-fetch failed: {exc}")
        else:
            hint = ("re-materialize that partition in Dagster" if name.startswith(refnames.ASSET)
                    else "run its producer again (download, or resolve the model)")
            rep.unrepaired.append(f"ref {name} points at {key}, which is not cached; {hint}")


def _repair_models(store: ContentStore, st: _CheckState, settings: Any,
                   rep: VerifyReport) -> None:
    """Weights copies that fail their hash, and model records or weights a lost shard took.

    A bad copy is rewritten from the stored weights (or removed, to be fetched again). A
    ``model-record/<server>/<id>`` ref whose record or weights are gone is re-resolved
    from that server (record and weights sha256-checked as on first use); offline, the
    exact missing items are listed.
    """
    import dataclasses

    from ..settings import Settings
    from ..sources.listing import identity
    from ..sources.model_artifacts import artifact_problem, resolve_model
    from ..store.fs import atomic_write

    for path in st.bad_artifacts:
        sha = path.name.split(".", 1)[0]
        try:
            if sha in store.has([sha]):
                atomic_write(path, store.get(sha))  # verified on read
                rep.repaired.append(f"rewrote artifacts/{path.name} from the stored weights")
            else:
                path.unlink(missing_ok=True)
                rep.repaired.append(f"removed artifacts/{path.name} (not the weights its "
                                    "name promises; the next model load fetches them)")
        except (OSError, PadAssetsError) as exc:
            rep.unrepaired.append(f"artifacts/{path.name}: {type(exc).__name__}: {exc}")
        if artifact_problem(path):
            rep.unrepaired.append(f"artifacts/{path.name} still fails its hash")
    base = settings or Settings.from_env(cache_dir=store.root)
    for name, key in store.index.refs(refnames.MODEL_RECORD).items():
        server, _, mid = name[len(refnames.MODEL_RECORD):].rpartition("/")
        missing = _model_missing(store, key)
        if not missing:
            continue
        if not mid.isdigit() or not server:
            rep.unrepaired.append(f"ref {name}: {', '.join(missing)}; not a model ref "
                                  "this version can resolve")
            continue
        # Refs name the server by its identity (no port): the configured server when it is
        # that one (an emulator on today's port), else the identity itself.
        url = base.api_url if identity(base.api_url) == server else server
        here = dataclasses.replace(base, api_url=url, cache_dir=store.root)
        try:
            resolve_model(int(mid), settings=here, refresh=not here.offline, store=store)
        except PadAssetsError as exc:
            how = ("offline mode is on: run once online (or import a bundle holding them)"
                   if here.offline else f"re-resolving it from {server} failed: {exc}")
            rep.unrepaired.append(f"model {mid} of {server}: {', '.join(missing)}; {how}")
            continue
        left = _model_missing(store, store.index.ref(name) or key)
        if left:
            rep.unrepaired.append(f"model {mid} of {server}: still {', '.join(left)}")
        else:
            rep.repaired.append(f"re-resolved model {mid} from {server} ({', '.join(missing)}"
                                "; record and weights sha256-checked)")


def _model_missing(store: ContentStore, record_key: str) -> list[str]:
    """What of a model record and its weights the cache lacks (empty: both present)."""
    got = store.get_many([record_key], touch=False) if record_key in store.has(
        [record_key]) else {}
    if record_key not in got:
        return [f"its record {record_key} is not cached"]
    try:
        sha = str(json.loads(got[record_key]).get("SHA256") or "").lower()
    except (ValueError, AttributeError):
        return [f"its record {record_key} is not valid JSON"]
    if sha and sha not in store.has([sha]):
        return [f"its weights {sha} are not cached"]
    return []


def _restore_raw(store: ContentStore, metas: dict[str, dict[str, Any]], settings: Any,
                 rep: VerifyReport) -> dict[str, str]:
    """Re-fetch raw images by their recorded URL; accept only the original bytes.

    Returns key -> why for the images that could not be restored this way."""
    from ..hashing import md5_bytes
    from ..settings import Settings
    from ..sources.pad_api import PadApiClient

    settings = settings or Settings.from_env(cache_dir=store.root)
    api = PadApiClient(settings)
    todo = [(k, m) for k, m in metas.items() if m.get("source_url")]
    failed = {k: "no source_url in its metadata (download its dataset again)"
              for k, m in metas.items() if not m.get("source_url")}
    restored: list[NewItem] = []

    def fetch(pair: tuple[str, dict[str, Any]]) -> bytes:
        return api.image_bytes(str(pair[1]["source_url"]))

    for (key, meta), result in api.http.map_parallel(fetch, todo):
        url = meta["source_url"]
        if isinstance(result, BaseException):
            if not isinstance(result, (PadAssetsError, ValueError)):
                raise result
            failed[key] = f"re-fetch from {url} failed: {result}"
            continue
        digest = sha256_bytes(result)
        md5 = meta.get("md5")
        if digest != key or (md5 and md5_bytes(result) != md5):
            failed[key] = (f"{url} now serves different bytes (sha256 {digest}); not "
                           "cached, download the dataset again")
            continue
        restored.append(NewItem(key, "raw", result, {**meta, "restored_at": time.time(),
                                                     "restored_by": "cache verify --repair"}))
    for i in range(0, len(restored), 16):
        store.put(restored[i:i + 16])
    if restored:
        rep.repaired.append(f"re-fetched {len(restored)} raw images from their source URL "
                            "(sha256 and md5 equal to the originals)")
    return failed
