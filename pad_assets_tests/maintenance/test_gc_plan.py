"""gc's compaction plan and its size estimate, rule by rule, at the boundaries.

The plan decides from sizes alone (``_Snapshot.shard_usage``: file, payload, live payload,
records), and its rules only bite on shards of a megabyte and more and on merge groups of
hundreds of megabytes: sizes no fast test writes to disk. So most tests here give a real
``gc(dry_run=True)`` on a real (empty) cache a snapshot of what an index of such shards
says, and read the plan from its public report; the last ones run gc for real on real
shard files (size pressure, the age boundary, the lock, the grace period).

Every number below follows from the documented estimate (``_after``, ``_group_after``): a
shard's rewrite holds its live payload, its records (``RECORD_OVERHEAD`` each) and its own
file overhead as far as the file shows it, at most ``SHARD_OVERHEAD``; a merged group pays
that overhead once. (These were survivors of the mutation run: see the README.)
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pad_assets import maintenance as mt
from pad_assets.errors import CacheBusyError, InvalidInputError
from pad_assets.hashing import sha256_bytes
from pad_assets.maintenance import collection, locking
from pad_assets.maintenance import rewrite as rewrite_module
from pad_assets.maintenance.snapshot import _Item, _Snapshot
from pad_assets.store import ContentStore, NewItem
from pad_assets.store.index_admin import delete_items
from pad_assets_tests.maintenance.test_gc_guarantees import _GraceClock

MiB = 1 << 20
OVERHEAD = mt.SHARD_OVERHEAD  # 65,536
REC = mt.RECORD_OVERHEAD  # 200 per record


@dataclass
class Shard:
    """What the index says of one shard file: its size, the payloads stored in it (live
    ones have an item, dead ones none) and items without payload (meta-only records)."""

    file: int
    live: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    meta_only: int = 0


def _snapshot(shards: dict[str, Shard], last_used: float) -> _Snapshot:
    items, blobs, files = {}, {}, {}
    for s, sh in shards.items():
        files[s] = (f"shards/{s}.h5", sh.file)
        for i, n in enumerate(sh.live + sh.dead):
            blobs[f"{s}-b{i}"] = (s, n)
            if i < len(sh.live):
                items[f"{s}-k{i}"] = _Item(f"{s}-k{i}", "preprocessed", f"{s}-b{i}", s, None,
                                           last_used, last_used, 0)
        for j in range(sh.meta_only):
            items[f"{s}-m{j}"] = _Item(f"{s}-m{j}", "prediction", None, s, None, last_used,
                                       last_used, 0)
    return _Snapshot(items, blobs, files, {}, [], {})


def _dry_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shards: dict[str, Shard],
             **kwargs) -> mt.GcReport:
    """``gc(dry_run=True)`` on a real cache whose index says ``shards``."""
    snap = _snapshot(shards, last_used=time.time())
    monkeypatch.setattr(collection._Snapshot, "load", classmethod(lambda cls, store: snap))
    return mt.gc(ContentStore(tmp_path / "c"), dry_run=True, **kwargs)


def test_each_rule_at_its_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rep = _dry_run(tmp_path, monkeypatch, {
        # nothing live, no records: deleted
        "empty": Shard(300_000, dead=[200_000]),
        # a one-byte payload, dead, beside a record: the live-payload rule applies
        "tiny": Shard(70_000, dead=[1], meta_only=1),
        # the dead-bytes rule starts at SMALL_SHARD_BYTES itself: 1 MiB - 100,000 - 200 -
        # 65,536 = 882,840 dead bytes, 84 % (payload not indexed: a copy held elsewhere)
        "at-1MiB": Shard(MiB, live=[100_000]),
        # exactly half the file dead is not "more than half" (2 MiB - 982,840 - 200 -
        # 65,536 = 1,048,576 dead bytes); one byte more dead is
        "half-dead": Shard(2 * MiB, live=[982_840]),
        "half-dead+1": Shard(2 * MiB, live=[982_839]),
        # 11 % dead: kept
        "mostly-live": Shard(2 * MiB, live=[1_800_000]),
    })
    assert rep.reasons == {
        "empty": "no live data",
        "tiny": "only 0% of its payload is live",
        "at-1MiB": "84% of the file is dead bytes",
        "half-dead+1": "50% of the file is dead bytes",
    }
    assert rep.deleted_shards == ["empty"]
    assert sorted(rep.compacted) == ["at-1MiB", "half-dead+1", "tiny"]


def test_small_shards_merge_only_below_one_mebibyte_and_eight_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = {f"s{i}": Shard(100_000, live=[90_000]) for i in range(8)}
    # exactly SMALL_SHARD_BYTES is not small (and 8 % dead is no reason to rewrite it);
    # small shards that a rule already chose are not merged as well
    rep = _dry_run(tmp_path, monkeypatch, small | {
        "big": Shard(MiB, live=[900_000]), "empty": Shard(100_000, dead=[50_000]),
        "sparse": Shard(100_000, live=[10_000], dead=[60_000])})
    assert rep.reasons == {s: "merge small shards" for s in small} | {
        "empty": "no live data", "sparse": "only 14% of its payload is live"}
    # seven are left alone
    rep = _dry_run(tmp_path, monkeypatch, {f"s{i}": Shard(100_000, live=[90_000])
                                           for i in range(7)})
    assert rep.reasons == {}


@pytest.mark.parametrize("count, merged", [(513, 512), (514, 514)])
def test_merge_groups_stop_at_max_rewrite_bytes_and_a_lone_rest_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int, merged: int) -> None:
    """512 shards of 512 KiB make exactly MAX_REWRITE_BYTES (256 MiB): one group. The 513th
    starts a new group; alone it is not worth a rewrite, two of them are."""
    shards = {f"s{i:04d}": Shard(512 << 10, live=[400_000]) for i in range(count)}
    assert mt.MAX_REWRITE_BYTES == 512 * (512 << 10)
    rep = _dry_run(tmp_path, monkeypatch, shards)
    assert sorted(rep.reasons) == sorted(shards)[:merged]
    assert set(rep.reasons.values()) == {"merge small shards"}


def test_the_dry_run_estimate_sums_live_data_records_and_one_overhead_per_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rep = _dry_run(tmp_path, monkeypatch, {
        "untouched": Shard(2_000_000, live=[1_900_000]),
        "empty": Shard(300_000, dead=[200_000]),
        # records only: 3 x 200 B, and the file's own overhead, 230,000 - 200,000 - 600
        "records": Shard(230_000, dead=[200_000], meta_only=3),
        **{f"s{i}": Shard(100_000, live=[30_000]) for i in range(8)},
    })
    assert rep.deleted_shards == ["empty"]
    assert "records" in rep.compacted  # carries its records: rewritten, not deleted
    assert rep.reasons["records"] == "only 0% of its payload is live"
    merged = 8 * (30_000 + REC) + OVERHEAD
    assert rep.size_after == 2_000_000 + 0 + (3 * REC + 29_400) + merged
    assert rep.evicted == {} and rep.size_before == 2_000_000 + 300_000 + 230_000 + 800_000


# three shards with dead bytes; what each rewrite would save (file - estimate):
# a: 600,000 - (400,000 + 200 + 65,536) = 134,264; b: 600,000 - 315,736 = 284,264;
# c: 500,000 - 495,736 = 4,264
PRESSURE = {"a": Shard(600_000, live=[400_000], dead=[60_000]),
            "b": Shard(600_000, live=[250_000], dead=[200_000]),
            "c": Shard(500_000, live=[430_000])}


@pytest.mark.parametrize("limit, chosen, after", [
    (1_500_000, ["b"], 1_700_000 - 284_264),
    (1_700_000 - 284_264, ["b"], 1_700_000 - 284_264),  # exactly at the limit: enough
    (1_300_000, ["a", "b"], 1_700_000 - 284_264 - 134_264),
])
def test_size_pressure_rewrites_the_shards_with_most_dead_bytes_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int, chosen: list[str],
        after: int) -> None:
    """Nothing needs evicting (live data and overhead fit the limit); the dead bytes do
    not, so gc rewrites shards, most dead bytes first, until the estimate fits."""
    rep = _dry_run(tmp_path, monkeypatch, PRESSURE, max_size=limit)
    assert rep.evicted == {}
    assert rep.reasons == {s: "size pressure" for s in chosen}
    assert rep.size_after == after and rep.target_met


def test_size_pressure_never_plans_a_shard_twice(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``holey`` is rewritten for its dead bytes, ``d`` for its dead payload, and the small
    shards are merged; under size pressure only what no rule chose yet is added (``holey``
    and ``d`` have the most dead bytes: 1,931,416 and 814,264; ``big`` 734,264)."""
    shards = {"big": Shard(2_000_000, live=[1_200_000], dead=[500_000]),
              "holey": Shard(2 * MiB, live=[100_000]),
              "d": Shard(900_000, live=[20_000], dead=[800_000]),
              **{f"s{i}": Shard(30_000 + REC + OVERHEAD, live=[30_000]) for i in range(8)}}
    # eviction is off the table (nothing is a year old): compaction alone must do it
    rep = _dry_run(tmp_path, monkeypatch, shards, max_size=2_000_000, older_than="365d")
    assert rep.evicted == {}
    assert rep.reasons == {"d": "only 2% of its payload is live", "big": "size pressure",
                           "holey": "92% of the file is dead bytes",
                           **{f"s{i}": "merge small shards" for i in range(8)}}
    assert rep.size_after == ((1_200_000 + REC + OVERHEAD) + (20_000 + REC + OVERHEAD)
                              + (100_000 + REC + OVERHEAD) + (8 * (30_000 + REC) + OVERHEAD))


def test_a_kept_dataset_the_cache_does_not_hold_is_refused_by_name(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "c")
    with pytest.raises(InvalidInputError) as err:
        mt.gc(store, keep_datasets=["FHI2020"], dry_run=True)
    assert str(err.value) == (f"--keep-dataset ['FHI2020']: no such dataset in the cache at "
                              f"{store.root}; expected one of (no datasets cached)")


# ---------------------------------------------------------------------------------------
# on real shard files
def _rng_bytes(n: int, seed: int) -> bytes:
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _sparse_shard(store: ContentStore, live: int, dead: int, seed: int) -> tuple[str, str]:
    """One shard holding a live payload and a dead one (its item deleted, as ``cache rm``
    does); returns the live key and the shard."""
    a, b = _rng_bytes(live, seed), _rng_bytes(dead, seed + 1)
    store.put([NewItem(sha256_bytes(a), "raw", a), NewItem(sha256_bytes(b), "raw", b)])
    delete_items(store.index, [sha256_bytes(b)])
    key = sha256_bytes(a)
    return key, store.index.items([key])[key]["shard"]


def test_gc_under_size_pressure_rewrites_the_shard_the_dry_run_named(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "c", compress=False)
    ka, sa = _sparse_shard(store, 400_000, 120_000, 1)
    kb, sb = _sparse_shard(store, 400_000, 250_000, 3)
    before = mt.gc(store, dry_run=True).size_before
    limit = before - 150_000  # a's dead bytes are not enough, b's are

    plan = mt.gc(store, max_size=limit, dry_run=True)
    rep = mt.gc(store, max_size=limit, grace_seconds=0)

    assert plan.reasons == rep.reasons == {sb: "size pressure"}
    assert rep.evicted == {} and rep.compacted == [sb]
    assert rep.size_after <= limit and rep.target_met
    assert sum(p.stat().st_size for p in (store.root / "shards").rglob("*.h5")) == rep.size_after
    assert store.get(ka) == _rng_bytes(400_000, 1) and store.get(kb) == _rng_bytes(400_000, 3)
    assert mt.verify(store).ok


def test_older_than_means_strictly_older(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "c")
    old, edge = b"unused for an hour and a second" * 100, b"unused for exactly an hour" * 100
    store.put([NewItem(sha256_bytes(old), "raw", old), NewItem(sha256_bytes(edge), "raw", edge)])
    now = time.time()
    with store.index.transaction() as con:
        con.execute("UPDATE items SET last_used=? WHERE key=?", (now - 3601, sha256_bytes(old)))
        con.execute("UPDATE items SET last_used=? WHERE key=?", (now - 3600, sha256_bytes(edge)))
    rep = mt.gc(store, older_than=3600, now=now, grace_seconds=0)
    assert rep.evicted == {"raw": 1}
    assert store.has([sha256_bytes(old), sha256_bytes(edge)]) == {sha256_bytes(edge)}


_READER = """
import sys, time
from pad_assets.maintenance.locking import maintenance_lock
from pad_assets.store import ContentStore
with maintenance_lock(ContentStore(sys.argv[1]), exclusive=False, what="cache verify"):
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_a_dry_run_shares_the_lock_with_readers_and_a_real_run_waits_for_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process verifies the cache (a shared hold of the maintenance lock): a dry
    run plans beside it; a real gc waits for it and then names itself in the error."""
    store = ContentStore(tmp_path / "c", compress=False)
    _sparse_shard(store, 40_000, 60_000, 5)
    monkeypatch.setattr(collection, "maintenance_lock",
                        functools.partial(locking.maintenance_lock, timeout=0.5))
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(store.root)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline() == "holding\n"
        assert mt.gc(store, dry_run=True).compacted  # ran beside the reader
        with pytest.raises(CacheBusyError, match=r"`cache gc` waited 0 s for the maintenance "
                                                 r"lock .*maintenance\.lock"):
            mt.gc(store, grace_seconds=0)
    finally:
        reader.communicate("done\n", timeout=30)
    assert mt.gc(store, grace_seconds=0).compacted  # and runs once the reader is done


def test_gc_waits_out_the_grace_period_once_not_for_what_an_earlier_run_retired(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard an earlier rewrite retired a moment ago is still in its grace period when gc
    starts: gc deletes it at the end, with its own, in one wait (a wait at the start too
    would hold the exclusive lock for a second grace period)."""
    store = ContentStore(tmp_path / "c", compress=False)
    k1, s1 = _sparse_shard(store, 50_000, 60_000, 7)
    _, s2 = _sparse_shard(store, 50_000, 60_000, 9)
    s1_file = store.root / store.index.items([k1])[k1]["path"]
    at_wait: list[tuple[bool, dict[str, str]]] = []  # s1's file there? why each retired
    clock = _GraceClock(lambda: at_wait.append((s1_file.exists(), {
        s: r["reason"] for s, r in mt.retired_shards(store.index).items()})))
    monkeypatch.setattr(rewrite_module, "time", clock)
    mt.rewrite_shards(store, [s1], reason="an earlier compaction")
    clock.offset += 10  # ten seconds later
    assert set(mt.retired_shards(store.index)) == {s1}

    rep = mt.gc(store, grace_seconds=60)

    assert rep.compacted == [s2]
    assert clock.slept == [pytest.approx(60, abs=1)]
    assert at_wait == [(True, {s1: "an earlier compaction",
                               s2: "gc: only 45% of its payload is live"})]
    assert mt.retired_shards(store.index) == {}
    left = {p.stem for p in (store.root / "shards").rglob("*.h5")}
    assert left == {rep.new_shards[0], store.index.items([k1])[k1]["shard"]} and s1 not in left
