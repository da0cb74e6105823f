"""``cache gc``'s report is the store's own arithmetic, and ``--dry-run`` predicts the run.

Two identical copies of one cache: ``gc --dry-run`` on one, the same ``gc`` on the other.
Every figure the dry run reports (what goes per layer, payload bytes freed, cards marked,
which shards are deleted or rewritten and why, live bytes after) must be what the real run
then does, and each must equal what the test computes from the items it wrote. The mutation
run of ``maintenance/collection.py`` found these figures unchecked (a refcount off by one,
a dry run that deleted old report runs, a size estimate that added dead bytes: all passed).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from pad_assets import maintenance as mt
from pad_assets.hashing import sha256_bytes
from pad_assets.store import CardRecord, ContentStore, NewItem
from pad_assets_tests.maintenance.test_gc_guarantees import _mixed_shards

NOW = 1_900_000_000.0  # 2030-03-17 17:46:40 UTC
KEEP_BYTES, DROP_BYTES, SHARED_BYTES = 20_000, 60_000, 30_000
ROUNDS, PER_ROUND = 4, 3


def _payload(rng: np.random.Generator, n: int) -> bytes:
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def _fill(root: Path) -> dict[str, object]:
    """ROUNDS shards; each holds PER_ROUND cards of dataset "keep" (20 kB raw) and of
    "drop" (60 kB raw). Besides: one "drop" image is the target of a ref (protected); an
    unchained item shares its payload with a kept one (evicting it frees no bytes); a
    shard of only "drop" images (deleted whole); an old report run."""
    store = ContentStore(root)
    keep, drop = _mixed_shards(store, rounds=ROUNDS)  # 3 cards of each per shard
    rng = np.random.default_rng(8)
    only_drop = []
    for i in range(2):
        big = _payload(rng, DROP_BYTES)
        kb = sha256_bytes(big)
        store.put([NewItem(kb, "raw", big, {})], cards=[CardRecord("drop", 100 + i, kb, "ok")])
        only_drop.append(kb)
    shared = _payload(rng, SHARED_BYTES)
    kept_pre, loose = "pre-of-keep-0", "loose-copy"
    store.put([NewItem(kept_pre, "preprocessed", shared, {"raw_key": keep[0]}),
               NewItem(loose, "preprocessed", shared, {})])
    store.put(refs=[("asset/drop/raw_image/0", drop[0])])
    old = NOW - 90 * 86400
    with store.index.transaction() as con:
        con.execute("UPDATE items SET last_used=?, created=?", (old, old))
    run = root / "reports" / "keep" / "run-1"
    run.mkdir(parents=True)
    (run / "report.md").write_text("old report\n")
    os.utime(run, (old, old))
    store.close()
    return {"keep": keep, "drop": drop, "only_drop": only_drop, "loose": loose,
            "kept_pre": kept_pre}


def _cards(store: ContentStore, dataset: str) -> dict[int, tuple[str, str, str]]:
    return {c: (v["status"], v["raw_key"], v.get("detail") or "")
            for c, v in store.cards(dataset).items()}


def test_dry_run_reports_exactly_what_the_real_run_then_does(tmp_path: Path) -> None:
    made = _fill(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    dry_store, real_store = ContentStore(tmp_path / "a"), ContentStore(tmp_path / "b")
    before = {Path(r[0]).stem for r in dry_store.index.query("SELECT path FROM shards")}
    kw = {"keep_datasets": ["keep"], "older_than": "30d", "now": NOW}
    for root in (tmp_path / "a", tmp_path / "b"):  # a crashed writer's leftover, hours old
        # (after opening: opening a store removes the stale ones it finds)
        (root / "tmp").mkdir(exist_ok=True)
        partial = root / "tmp" / "crashed-write.h5.partial"
        partial.write_bytes(b"half a shard")
        os.utime(partial, (time.time() - 3 * 3600,) * 2)

    t0 = time.time()
    dry = mt.gc(dry_store, dry_run=True, **kw)
    real = mt.gc(real_store, grace_seconds=0, **kw)
    took = time.time() - t0

    # what goes: every unprotected "drop" image and the loose copy, and nothing else
    drop, only_drop = made["drop"], made["only_drop"]
    evicted_drop = [k for k in drop[1:] + only_drop]
    assert dry.evicted == real.evicted == {"raw": len(evicted_drop), "preprocessed": 1}
    assert real_store.has(evicted_drop + [made["loose"]]) == set()
    assert real_store.has([drop[0], made["kept_pre"], *made["keep"]]) == {
        drop[0], made["kept_pre"], *made["keep"]}
    assert dry.protected == real.protected == {
        "kept dataset": len(made["keep"]) + 1, "target of an asset ref": 1}
    # bytes freed: the images' payloads; the loose copy's blob stays (a kept item has it)
    assert dry.evicted_bytes == real.evicted_bytes == DROP_BYTES * len(evicted_drop)
    assert dry.live_bytes_before == real.live_bytes_before == (
        KEEP_BYTES * len(made["keep"]) + DROP_BYTES * (len(drop) + len(only_drop))
        + SHARED_BYTES)
    assert dry.live_bytes_after == real.live_bytes_after == (
        dry.live_bytes_before - dry.evicted_bytes)
    assert dry.evicted_examples == real.evicted_examples and len(dry.evicted_examples) > 0

    # cards: marked evicted (not deleted), raw key kept, stamped with gc's clock
    stamp = "2030-03-17 17:46:40"
    cards = _cards(real_store, "drop")
    assert dry.cards_marked_evicted == real.cards_marked_evicted == len(evicted_drop)
    assert cards[0] == ("ok", drop[0], "")
    for c, (status, raw, detail) in cards.items():
        if c == 0:
            continue
        assert status == "evicted" and raw in evicted_drop, c
        assert detail == (f"raw image evicted by `pad-assets cache gc` at {stamp} UTC; the "
                          "next download fetches it again")
    assert all(s == "ok" for s, _, _ in _cards(real_store, "keep").values())
    assert _cards(dry_store, "drop") == {c: ("ok", r, "") for c, (_, r, _) in cards.items()}

    # shards: the two of only "drop" images are deleted; the mixed ones keep 25 % of their
    # payload and are rewritten, except the first (its protected image keeps it at 50 %)
    assert set(dry.deleted_shards) == set(real.deleted_shards)
    assert len(real.deleted_shards) == len(only_drop)
    assert set(dry.compacted) == set(real.compacted) and len(real.compacted) == ROUNDS - 1
    assert dry.reasons == real.reasons
    assert {s: dry.reasons[s] for s in dry.deleted_shards} == {
        s: "no live data" for s in real.deleted_shards}
    assert {s: dry.reasons[s] for s in dry.compacted} == {
        s: "only 25% of its payload is live" for s in real.compacted}
    assert len(real.new_shards) == ROUNDS - 1 and not real.skipped
    after = {Path(r[0]).stem for r in real_store.index.query("SELECT path FROM shards")}
    assert set(real.deleted_shards) | set(real.compacted) <= before
    assert not (set(real.deleted_shards) | set(real.compacted)) & after
    assert set(real.new_shards) <= after and real.new_shards
    assert dry.new_shards == [] and {Path(r[0]).stem for r in dry_store.index.query(
        "SELECT path FROM shards")} == before
    # the size estimate: each rewritten shard keeps its file minus its dead bytes
    assert real.size_after < real.size_before
    assert abs(dry.size_after - real.size_after) <= 0.05 * real.size_after, (
        dry.size_after, real.size_after)

    # the old report run: listed by the dry run, removed only by the real run
    assert dry.outside["report_runs"] == real.outside["report_runs"] == [
        str(Path("reports") / "keep" / "run-1")]
    assert (tmp_path / "a" / "reports" / "keep" / "run-1").is_dir()
    assert not (tmp_path / "b" / "reports" / "keep" / "run-1").exists()

    # the crashed writer's partial file: a dry run leaves it, the run removes and counts it
    assert (dry.partials_removed, real.partials_removed) == (0, 1)
    assert (tmp_path / "a" / "tmp" / "crashed-write.h5.partial").exists()
    assert not (tmp_path / "b" / "tmp" / "crashed-write.h5.partial").exists()
    assert dry.root == str(dry_store.root) and dry.dry_run and not real.dry_run
    assert 0 <= dry.seconds <= took and 0 <= real.seconds <= took
    assert mt.verify(real_store).ok
    text = str(dry)
    assert f"would evict {len(evicted_drop) + 1} items" in text
    assert f"would delete {len(only_drop)} shards with no live data" in text
    dry_store.close()
    real_store.close()


def test_a_size_limit_is_reported_and_met_the_same_way_in_both(tmp_path: Path) -> None:
    """``max_size``: LRU eviction until the estimate fits; the dry run's estimate meets
    the limit exactly when the real run does, and the report names the limit."""
    made = _fill(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    dry_store, real_store = ContentStore(tmp_path / "a"), ContentStore(tmp_path / "b")
    drop = made["drop"] + made["only_drop"]
    # the "drop" images least recently used: they go first, oldest first
    with real_store.index.transaction() as con:
        for i, k in enumerate(drop):
            con.execute("UPDATE items SET last_used=? WHERE key=?", (NOW - 200 * 86400 + i, k))
    with dry_store.index.transaction() as con:
        for i, k in enumerate(drop):
            con.execute("UPDATE items SET last_used=? WHERE key=?", (NOW - 200 * 86400 + i, k))
    size = sum(f.stat().st_size for f in (tmp_path / "a").rglob("*.h5"))
    limit = size - 3 * DROP_BYTES
    dry = mt.gc(dry_store, max_size=limit, dry_run=True, now=NOW)
    real = mt.gc(real_store, max_size=limit, grace_seconds=0, now=NOW)
    assert dry.max_size == real.max_size == limit
    assert dry.evicted == real.evicted and set(dry.evicted) == {"raw"}
    assert dry.evicted_examples == real.evicted_examples
    assert real.target_met and real.size_after <= limit
    # the dry run's estimate is close: one merged file's overhead counted once (it was
    # once per merged shard: ~150 kB more, and a warning that the limit was missed); the
    # real run also merges the shard its card marks were written to
    assert abs(dry.size_after - real.size_after) <= 0.05 * real.size_after, (
        dry.size_after, real.size_after)
    assert dry.target_met and "still above" not in str(dry)
    assert set(dry.compacted) < set(real.compacted)
    assert set(real.compacted) - set(dry.compacted) == set(real.reasons) - set(dry.reasons)
    gone = drop[1:]  # drop[0] is the ref's target
    n = real.evicted["raw"]
    assert real_store.has(gone[:n]) == set() and real_store.has(gone[n:]) == set(gone[n:])
    dry_store.close()
    real_store.close()


def test_the_report_reads_as_printed_by_cache_gc() -> None:
    """``pad-assets cache gc`` prints ``str(report)``: every line, for a run and a dry run."""
    from pad_assets.maintenance.collection import GcReport

    rep = GcReport("/c", False, size_before=2_500_000, size_after=1_200_000,
                   live_bytes_before=2_000_000, live_bytes_after=900_000, max_size=1_000_000,
                   evicted={"raw": 3, "tensor": 2}, evicted_bytes=1_100_000,
                   protected={"kept dataset": 4}, cards_marked_evicted=3,
                   compacted=["s1", "s2", "s3"], deleted_shards=["s4"], new_shards=["n1"],
                   skipped=["shards ['s9']: disk full"],
                   outside={"stale_artifacts": ["a.tflite"], "report_runs": ["r/1", "r/2"],
                            "bytes": 4_500},
                   reasons={"s1": "merge small shards", "s2": "merge small shards",
                            "s3": "only 20% of its payload is live", "s4": "no live data"})
    assert str(rep) == "\n".join([
        "cache gc /c: evicted 5 items {'raw': 3, 'tensor': 2} (1.1 MB of payload)",
        "  size on disk 2.5 MB -> 1.2 MB; live payload 2.0 MB -> 900.0 KB",
        "  protected: {'kept dataset': 4}",
        "  rewrote 3 shards into 1 new ones",
        "  deleted 1 shards with no live data",
        "    2 shard(s): small files merged into one (fewer files to open and sync)",
        "    1 shard(s): nothing in it is used any more (evicted or superseded): deleted",
        "    1 shard(s): only 20% of its payload is live",
        "  3 cards marked 'evicted': their cached predictions are still served; a new model "
        "or a download fetches the image again",
        "  removed 1 stale artifact files and 2 old report runs (4.5 KB)",
        "  skipped: shards ['s9']: disk full",
        "  warning: still above --max-size 1.0 MB: the rest is protected (refs, kept "
        "datasets) or recently used"])
    assert rep.as_dict()["target_met"] is False

    dry = GcReport("/c", True, size_before=2_000, size_after=1_500, max_size=1_500,
                   compacted=["s1"], reasons={"s1": "size pressure"})
    assert str(dry) == "\n".join([
        "cache gc /c (dry run: nothing changed): would evict 0 items  (0 B of payload)",
        "  size on disk 2.0 KB -> ~1.5 KB; live payload 0 B -> 0 B",
        "  would rewrite 1 shards",
        "    1 shard(s): holds dead bytes and the cache is still above --max-size"])
    assert dry.target_met and dry.as_dict()["target_met"] is True
    stale = GcReport("/c", True, deleted_shards=["s4"], outside={"stale_artifacts": ["x"]})
    assert str(stale).splitlines()[2:] == [
        "  would delete 1 shards with no live data",
        "  would remove 1 stale artifact files and 0 old report runs (0 B)"]
    # reasons: the most frequent first, then by name; old report runs alone are reported
    runs = GcReport("/c", False, outside={"report_runs": ["r/1"], "bytes": 10},
                    reasons={"a": "no live data", "b": "no live data", "c": "size pressure",
                             "d": "merge small shards"})
    assert str(runs).splitlines()[2:] == [
        "    2 shard(s): nothing in it is used any more (evicted or superseded): deleted",
        "    1 shard(s): small files merged into one (fewer files to open and sync)",
        "    1 shard(s): holds dead bytes and the cache is still above --max-size",
        "  removed 0 stale artifact files and 1 old report runs (10 B)"]


def test_compact_threshold_is_a_fraction_from_0_to_1(tmp_path: Path) -> None:
    import pytest

    from pad_assets.errors import InvalidInputError

    store = ContentStore(tmp_path / "c")
    for ok in (0.0, 1.0):
        assert mt.gc(store, dry_run=True, compact_threshold=ok).evicted == {}
    for bad in (-0.01, 1.01, 2.0):
        with pytest.raises(InvalidInputError, match=rf"compact_threshold {bad}: expected 0..1"):
            mt.gc(store, dry_run=True, compact_threshold=bad)
    store.close()
