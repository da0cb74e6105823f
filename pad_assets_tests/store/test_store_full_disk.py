"""A full disk under ``write_shard`` and ``ContentStore.put``, on a real 2 MB tmpfs.

Each way the disk can be full gets its own test, in-process so the store's mutation run
(``.ci/mutation.py store``) reaches them: the free-space check before the write refuses a
shard that would leave less than ``FREE_SPACE_RESERVE``; the disk filling up during the
write (another process took the space after the check) is the kernel's ENOSPC; no inode
left for the staging folder; and the index unable to grow after the shard was written
(SQLite's "database or disk is full"). In every case the error is a ``CacheFullError``
naming the cache and the numbers, nothing half-written stays behind, and the same write
succeeds once space is freed. Written for the survivors of the store's mutation run: these
branches were reached only by the sharing and fault tests in subprocesses.

A tmpfs needs root to mount; without it these tests skip with a listed reason
(``allowed_skips.txt``), and fail under CI (``CI`` set), so a CI run never skips them. The
injected-ENOSPC variants in ``test_trust_boundaries.py`` and ``test_faults.py`` run
everywhere.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pad_assets.errors import CacheFullError
from pad_assets.maintenance import verify
from pad_assets.store import CardRecord, ContentStore, NewItem
from pad_assets.store import shards as shard_io
from pad_assets.store.index_admin import delete_items

NO_MOUNT = "a real full disk needs a tmpfs mount (root and mount(8))"


def _no_mount() -> None:
    """Skip with the listed reason; under CI (which runs as root) fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"under CI: {NO_MOUNT}")
    pytest.skip(NO_MOUNT)


def _mount(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "disk"
    if not _mount(mnt, "size=2m"):
        _no_mount()
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _free(path: Path) -> int:
    return shutil.disk_usage(path).free


def _fill(mnt: Path, leave: int, name: str = "filler") -> Path:
    """A file taking all but ``leave`` bytes (to the page) of the disk's free space."""
    filler = mnt / name
    with open(filler, "ab") as fh:
        while _free(mnt) > leave:
            try:
                fh.write(b"\0" * min(4096, _free(mnt) - leave))
                fh.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return filler


def _state(root: Path) -> tuple[list[str], list[str]]:
    """Shard files and whatever is in the staging folder."""
    shards = sorted(p.name for p in (root / "shards").rglob("*.h5"))
    tmp = sorted(p.name for p in (root / "tmp").iterdir()) if (root / "tmp").exists() else []
    return shards, tmp


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _store_with_a_dead_payload(root: Path) -> tuple[ContentStore, int]:
    """A cache holding one live item and one payload no item uses any more (its item was
    deleted, as ``cache rm`` does): ``full_error`` reports both sizes."""
    store = ContentStore(root, compress=False)
    store.put([NewItem("k-live", "raw", os.urandom(150_000))])
    dead = os.urandom(250_000)
    store.put([NewItem("k-removed", "raw", dead)])
    delete_items(store.index, ["k-removed"])
    return store, len(dead)


def _shard_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "shards").rglob("*.h5"))


def test_a_shard_that_would_leave_less_than_the_reserve_is_refused_before_writing(
        disk: Path) -> None:
    root = disk / "cache"
    store, dead = _store_with_a_dead_payload(root)
    payload = os.urandom(400_000)
    record = {"type": "item", "key": "k-new", "layer": "raw", "blob": "b" * 64, "meta": {},
              "ts": 1764493200.123456}  # what put records, to a few bytes
    image = len(shard_io._shard_image(shard_io.new_shard_name(), [shard_io.BlobPayload(
        "b" * 64, np.frombuffer(payload, np.uint8), "bytes")], [record]))
    # the shard fits, but would leave only half the reserve for the index
    filler = _fill(disk, image + shard_io.FREE_SPACE_RESERVE // 2)
    free, before = _free(root), _state(root)
    assert image < free < image + shard_io.FREE_SPACE_RESERVE
    with pytest.raises(CacheFullError) as err:
        store.put([NewItem("k-new", "raw", payload)])
    msg = str(err.value)
    assert msg.startswith(f"cache {root} is full ({_mb(_shard_bytes(root))} of shards, "
                          f"{_mb(free)} free on its disk): ")
    assert f"no space for a {_mb(image)} shard ({_mb(free)} free)" in msg
    assert f"`pad-assets cache gc` frees {_mb(dead)} of payloads no item uses" in msg
    assert msg.endswith("Nothing was half-written.")
    assert err.value.__cause__.detail == f"no space for a {_mb(image)} shard ({_mb(free)} free)"
    assert str(err.value.__cause__).startswith(f"cache {root}: {err.value.__cause__.detail}; ")
    assert _state(root) == before and _free(root) == free, "the refused write left a file"
    assert store.has(["k-new"]) == set()
    filler.unlink()
    assert store.put([NewItem("k-new", "raw", payload)])
    assert store.get("k-new") == payload
    store.close()


def test_the_disk_filling_up_during_the_write_is_a_cache_full_error_and_leaves_nothing(
        disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = disk / "cache"
    store, _dead = _store_with_a_dead_payload(root)
    before = _state(root)
    real_write, fillers = shard_io._write_bytes, []

    def another_process_takes_the_space(fd: int, data: memoryview) -> int:
        if not fillers:  # after the free-space check passed: the kernel says ENOSPC
            fillers.append(_fill(disk, 0))
        return real_write(fd, data)

    monkeypatch.setattr(shard_io, "_write_bytes", another_process_takes_the_space)
    with pytest.raises(CacheFullError) as err:
        store.put([NewItem("k-new", "raw", os.urandom(300_000))])
    msg = str(err.value)
    assert msg.startswith(f"cache {root} is full (")
    assert "shard (the disk is full: No space left on device)" in msg, msg
    assert isinstance(err.value.__cause__, CacheFullError)
    assert isinstance(err.value.__cause__.__cause__, OSError)
    assert err.value.__cause__.__cause__.errno == errno.ENOSPC
    assert _state(root) == before, "the partial file of the failed write was left"
    monkeypatch.undo()
    fillers[0].unlink()
    assert store.put([NewItem("k-new", "raw", b"fits now")]) and store.get("k-new") == b"fits now"
    store.close()


def test_no_inode_left_for_the_staging_folder_is_a_cache_full_error(tmp_path: Path) -> None:
    mnt = tmp_path / "disk"
    if not _mount(mnt, "size=2m,nr_inodes=64"):
        _no_mount()
    try:
        root = mnt / "cache"
        store = ContentStore(root)  # a new cache: no staging folder yet
        assert not (root / "tmp").exists()
        n = 0
        while True:  # another program takes every inode left
            try:
                (mnt / f"f{n}").touch()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
            n += 1
        with pytest.raises(CacheFullError) as err:
            store.put([NewItem("k", "raw", b"payload")])
        assert str(err.value).startswith(f"cache {root} is full (")
        assert err.value.__cause__.detail == "no space for a 0.0 MB shard (0.0 MB free)"
        assert isinstance(err.value.__cause__.__cause__, OSError)
        for i in range(n):
            (mnt / f"f{i}").unlink()
        assert store.put([NewItem("k", "raw", b"payload")]) and store.get("k") == b"payload"
        # the staging folder exists now: no inode for the partial file itself
        taken = []
        while True:
            try:
                (mnt / f"g{len(taken)}").touch()
            except OSError:
                break
            taken.append(mnt / f"g{len(taken)}")
        with pytest.raises(CacheFullError) as err:
            store.put([NewItem("k2", "raw", b"payload 2")])
        assert err.value.__cause__.detail.endswith("(the disk is full: No space left on device)")
        assert list((root / "tmp").iterdir()) == [] and store.has(["k2"]) == set()
        for f in taken:
            f.unlink()
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_an_index_that_cannot_grow_is_a_cache_full_error_and_the_shard_is_recovered(
        disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = disk / "cache"
    store = ContentStore(root, compress=False)
    store.put([NewItem("k0", "tensor", np.zeros(12, np.float32))])
    real_write_shard, fillers = shard_io.write_shard, []

    def shard_written_then_the_disk_fills(*args, **kwargs):
        out = real_write_shard(*args, **kwargs)
        fillers.append(_fill(disk, 0))
        return out

    monkeypatch.setattr(shard_io, "write_shard", shard_written_then_the_disk_fills)
    # enough card records that the index must take new pages
    cards = [CardRecord("ds", i, "k1", "ok", "x" * 200) for i in range(3000)]
    with pytest.raises(CacheFullError) as err:
        store.put([NewItem("k1", "tensor", np.arange(12, dtype=np.float32))], cards=cards)
    msg = str(err.value)
    assert f"cache {root} is full (" in msg
    assert "the index could not grow (database or disk is full)" in msg, msg
    assert isinstance(err.value.__cause__, Exception) and "full" in str(err.value.__cause__)
    monkeypatch.undo()
    store.close()
    fillers[0].unlink()
    # the shard file is complete: opening the cache again indexes it
    again = ContentStore(root)
    assert again.get("k1").tolist() == list(range(12)) and len(again.cards("ds")) == 3000
    assert verify(again).ok
    again.close()


def test_a_full_disk_while_staging_an_import_names_the_cache_and_the_staging_folder(
        disk: Path) -> None:
    # sharing (bundle import, pull) writes shards under <cache>/tmp/<staging> first
    cache = disk / "cache"
    staging = cache / "tmp" / "import-1234"
    blob = shard_io.BlobPayload("b" * 64, np.frombuffer(os.urandom(600_000), np.uint8), "bytes")
    filler = _fill(disk, 300_000)
    free = _free(disk)
    with pytest.raises(CacheFullError) as err:
        shard_io.write_shard(staging, [blob], [])
    assert not list((staging / "tmp").iterdir()) and not list(staging.rglob("*.h5"))
    filler.unlink()
    _name, rel, nbytes = shard_io.write_shard(staging, [blob], [])  # the same shard, room now
    assert (staging / rel).stat().st_size == nbytes
    detail = (f"no space for a {_mb(nbytes)} shard ({_mb(free)} free) while staging in "
              "tmp/import-1234")
    assert err.value.detail == detail
    assert str(err.value) == (f"cache {cache}: {detail}; nothing was written. Free space, or "
                              "run `pad-assets cache gc --max-size SIZE`")


def test_gc_on_a_full_disk_deletes_dead_shards_first_to_make_room_for_its_rewrites(
        disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What frees a full disk is ``cache gc``, so it must work there: a shard with nothing
    live is deleted before any rewrite, and the space it frees is what the rewrite of a
    sparse shard needs (rewriting first fails for want of space and skips that shard).
    The dead shard's name sorts last (gc plans in name order), so only gc's ordering puts
    it first."""
    from pad_assets.hashing import sha256_bytes
    from pad_assets.maintenance import gc, retired_shards
    from pad_assets.maintenance import rewrite as rewrite_module
    from pad_assets_tests.maintenance.test_gc_guarantees import _GraceClock

    names = itertools.chain(["20260101T000000-a", "20260101T000000-z"],
                            (f"20260101T000001-new{i}" for i in itertools.count()))
    monkeypatch.setattr(shard_io, "new_shard_name", lambda: next(names))
    root = disk / "cache"
    store = ContentStore(root, compress=False)
    live, gone1, gone2 = (os.urandom(n) for n in (100_000, 350_000, 300_000))
    kept = sha256_bytes(live)
    store.put([NewItem(kept, "raw", live), NewItem(sha256_bytes(gone2), "raw", gone2)])
    store.put([NewItem(sha256_bytes(gone1), "raw", gone1)])
    delete_items(store.index, [sha256_bytes(gone1), sha256_bytes(gone2)])
    shards_before = _state(root)[0]
    assert shards_before == ["20260101T000000-a.h5", "20260101T000000-z.h5"]
    # room for the index, not for the sparse shard's rewrite (100 kB + the reserve)
    _fill(disk, 60_000)
    # gc's clock: each wait for the grace period (30 s) passes at once, and shows what is
    # retired at that moment and why
    retired: list[dict[str, str]] = []
    clock = _GraceClock(lambda: retired.append(
        {s: r["reason"] for s, r in retired_shards(store.index).items()}))
    monkeypatch.setattr(rewrite_module, "time", clock)
    rep = gc(store, grace_seconds=30)
    # the rewrite of "a" failed for want of space; gc waited out the dead shard's grace
    # period, deleted it and rewrote "a"; then waited for "a" in turn
    assert retired == [{"20260101T000000-z": "gc: no live data"},
                       {"20260101T000000-a": "gc: only 25% of its payload is live"}]
    assert clock.slept == [pytest.approx(30, abs=1)] * 2
    assert rep.skipped == []
    assert rep.deleted_shards == ["20260101T000000-z"]
    assert rep.compacted == ["20260101T000000-a"]
    assert rep.reasons == {"20260101T000000-z": "no live data",
                           "20260101T000000-a": "only 25% of its payload is live"}
    assert len(rep.new_shards) == 1 and rep.new_shards[0].startswith("20260101T000001-new")
    assert _state(root)[0] == [f"{rep.new_shards[0]}.h5"]
    assert store.get(kept) == live and verify(store).ok
    store.close()


def test_gc_under_max_size_on_a_full_disk_evicts_the_rest_of_a_shard_it_cannot_rewrite(
        disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--max-size`` (an LRU cache asked to shrink) and no room for a sparse shard's
    rewrite, gc evicts the shard's unprotected items with it and rewrites what must stay
    (a ref's target, the card records): the shard goes whole, the cache stays consistent,
    and the report and the card say why."""
    from pad_assets.hashing import sha256_bytes
    from pad_assets.maintenance import gc, retired_shards
    from pad_assets.maintenance import rewrite as rewrite_module
    from pad_assets_tests.maintenance.test_gc_guarantees import _GraceClock

    root = disk / "cache"
    store = ContentStore(root, compress=False)
    pinned, old, old2, dead = (os.urandom(n) for n in (20_000, 150_000, 150_000, 400_000))
    k_pin, k_old, k_old2, k_dead = (sha256_bytes(b) for b in (pinned, old, old2, dead))
    shard = store.put([NewItem(k_pin, "raw", pinned), NewItem(k_old, "raw", old),
                       NewItem(k_old2, "raw", old2), NewItem(k_dead, "raw", dead)],
                      refs=[("asset/pinned", k_pin)],
                      cards=[CardRecord("ds", 1, k_old, "ok"), CardRecord("ds", 2, k_pin, "ok"),
                             # an API-dump card whose re-download failed keeps its reference
                             CardRecord("ds", 3, k_old2, "failed", "sha256 mismatch")])
    delete_items(store.index, [k_dead])
    # room for the pinned item's rewrite (20 kB + the reserve), not for 320 kB of it
    _fill(disk, 300_000)
    retired_reasons: list[dict[str, str]] = []
    clock = _GraceClock(lambda: retired_reasons.append(
        {s: r["reason"] for s, r in retired_shards(store.index).items()}))
    monkeypatch.setattr(rewrite_module, "time", clock)

    rep = gc(store, max_size="10MB", grace_seconds=30)

    assert rep.skipped == [f"shards [{shard!r}]: the disk could not take their rewrite, so "
                           "their 2 unprotected items were evicted with them"]
    assert rep.evicted == {"raw": 2} and rep.cards_marked_evicted == 1
    assert rep.compacted == [shard] and len(rep.new_shards) == 1
    assert retired_reasons == [{shard: "gc: only 44% of its payload is live (disk full)"}]
    assert store.get(k_pin) == pinned and store.has([k_old, k_old2, k_dead]) == set()
    cards = store.cards("ds")
    assert [cards[c]["status"] for c in (1, 2, 3)] == ["evicted", "ok", "failed"]
    assert re.fullmatch(r"raw image evicted by `pad-assets cache gc` at \d{4}-\d\d-\d\d "
                        r"\d\d:\d\d:\d\d UTC \(disk full\); the next download fetches it "
                        r"again", cards[1]["detail"]), cards[1]["detail"]
    assert f"{shard}.h5" not in _state(root)[0]  # deleted after the grace period
    assert verify(store).ok
    store.close()
