"""SIGKILL at random points of ``cache import``, ``cache push`` and ``cache pull``
(issue 12's fault-injection acceptance, for the sharing operations).

Each trial starts a worker process, kills it at a seeded random instant of the operation
(or just after its n-th shard file appears), then checks that

* the cache stays consistent: ``cache verify`` is clean both as the kill left it and after
  the recovery every open runs (for push: the pushing cache, which push never writes);
* a rerun gives exactly what an uninterrupted run gives: the same items, refs and card
  records (import, pull), the same remote shard set with every file's sha256 as listed,
  and a pull of it equal to a pull of a clean push (push);
* a killed push leaves no ``.partial`` in the remote once the rerun is done.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pad_assets import sharing
from pad_assets.dataset import CachedDataset
from pad_assets.devtools.emulator import DatasetSpec, Emulator, EmulatorConfig
from pad_assets.maintenance import verify
from pad_assets.settings import Settings
from pad_assets.sharing.remote import remote_index
from pad_assets.store import ContentStore
from pad_assets.store.fs import file_sha256
from pad_assets_tests.workers import wait_ready

DATASET = "sharekill"
CARDS = list(range(54000, 54016))
KILLS = 5
SEED = 20261130
OPS = ("import", "push", "pull")

WORKER = textwrap.dedent("""
    import sys, time
    op, cache, target = sys.argv[1:4]
    from pad_assets import sharing
    from pad_assets.store import ContentStore
    store = ContentStore(cache)
    print("READY", flush=True)
    t0 = time.perf_counter()
    if op == "import":
        sharing.import_bundle(store, target)
    elif op == "push":
        sharing.push(store, target)
    else:
        sharing.pull(store, target)
    print("DONE", time.perf_counter() - t0, flush=True)
""")


def _spawn(op: str, cache: Path, target: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PAD_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", WORKER, op, str(cache), str(target)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _files(folder: Path) -> int:
    return len(list((folder / "shards").glob("*/*.h5"))) if (folder / "shards").exists() else 0


def _logical(cache: Path) -> dict[str, Any]:
    """What a cache holds, independent of shard names: items, refs, card records."""
    store = ContentStore(cache)
    try:
        q = store.index.query
        return {"items": sorted(q("SELECT key, layer, blob FROM items")),
                "refs": store.index.refs(),
                "cards": sorted(q("SELECT dataset, card_id, raw_key, status, detail "
                                  "FROM cards"))}
    finally:
        store.close()


def _assert_verify_clean(cache: Path) -> None:
    for recover in (False, True):
        store = ContentStore(cache, recover=recover)
        try:
            report = verify(store)
            assert report.ok, f"verify (recover={recover}): {report.problems!r}"
        finally:
            store.close()


def _remote_state(remote: Path) -> dict[str, str]:
    """shard name -> sha256, checked against the files themselves."""
    out = {}
    for name, e in remote_index(str(remote)).items():
        assert file_sha256(remote / e["path"]) == e["sha256"], name
        out[name] = e["sha256"]
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A source cache (raw images in many small shards), bundles of it (directory and tar,
    many shards each), a clean remote, and the results of uninterrupted runs."""
    import pad_assets.layers.raw as raw_layer

    base = tmp_path_factory.mktemp("share_kill")
    config = EmulatorConfig(datasets=[DatasetSpec(DATASET, CARDS)], models_provider=lambda: [])
    with Emulator(config) as emu:
        src = base / "source"
        settings = Settings(cache_dir=src, api_url=emu.base_url,
                            registry_url=emu.registry_url, http_retries=2)
        old_batch = raw_layer.WRITE_BATCH_ITEMS
        raw_layer.WRITE_BATCH_ITEMS = 2
        try:
            ds = CachedDataset(DATASET, settings=settings, progress=False)
            assert not ds.download_and_cache().failed
            ds.close()
        finally:
            raw_layer.WRITE_BATCH_ITEMS = old_batch
    store = ContentStore(src)
    total = sum(p.stat().st_size for p in (src / "shards").rglob("*.h5"))
    old_shard = sharing.limits.BUNDLE_SHARD_BYTES
    sharing.limits.BUNDLE_SHARD_BYTES = max(1, total // 8)
    try:
        sharing.export_bundle(store, DATASET, out=base / "bundle")
        sharing.export_bundle(store, DATASET, out=base / "bundle.tar")
    finally:
        sharing.limits.BUNDLE_SHARD_BYTES = old_shard
    remote = base / "remote_clean"
    sharing.push(store, str(remote))
    store.close()
    clean_import = base / "clean_import"
    sharing.import_bundle(ContentStore(clean_import), base / "bundle")
    clean_pull = base / "clean_pull"
    sharing.pull(ContentStore(clean_pull), str(remote))
    yield {"source": src, "bundle": base / "bundle", "tar": base / "bundle.tar",
           "remote": remote, "remote_state": _remote_state(remote),
           "import": _logical(clean_import), "pull": _logical(clean_pull)}


def _calibrate(op: str, world: dict[str, Any], tmp: Path) -> float:
    cache, target = _trial_paths(op, world, tmp / f"calibrate_{op}", 0)
    proc = _spawn(op, cache, target)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return float(out.split("DONE")[1].split()[0])


def _trial_paths(op: str, world: dict[str, Any], where: Path, attempt: int
                 ) -> tuple[Path, Path]:
    """(cache the worker opens, what it imports from / pushes to / pulls from)."""
    where.mkdir(parents=True)
    if op == "import":
        return where / "cache", world["tar" if attempt % 2 else "bundle"]
    if op == "push":
        return world["source"], where / "remote"
    return where / "cache", world["remote"]


def _rerun_and_compare(op: str, world: dict[str, Any], cache: Path, target: Path,
                       where: Path) -> None:
    if op == "import":
        _assert_verify_clean(cache)
        sharing.import_bundle(ContentStore(cache), target)
        _assert_verify_clean(cache)
        assert _logical(cache) == world["import"]
    elif op == "pull":
        _assert_verify_clean(cache)
        sharing.pull(ContentStore(cache), str(target))
        _assert_verify_clean(cache)
        assert _logical(cache) == world["pull"]
    else:
        _assert_verify_clean(cache)  # the pushing cache
        sharing.push(ContentStore(cache), str(target))
        assert _remote_state(target) == world["remote_state"]
        assert not list((target / "tmp").glob("*.partial")), "a killed push's partials stay"
        fresh = where / "pulled_back"
        sharing.pull(ContentStore(fresh), str(target))
        assert _logical(fresh) == world["pull"]


@pytest.mark.parametrize("op", OPS)
def test_sigkill_during_sharing_leaves_a_clean_cache_and_rerun_is_identical(
        op: str, world: dict[str, Any], tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}-{op}")
    duration = _calibrate(op, world, tmp_path)
    killed, attempts, stages = 0, 0, set()
    while killed < KILLS:
        attempts += 1
        assert attempts <= 4 * KILLS, "the worker kept finishing before the kill"
        where = tmp_path / f"trial{attempts}"
        cache, target = _trial_paths(op, world, where, attempts)
        watch = target if op == "push" else cache
        proc = _spawn(op, cache, target)
        try:
            wait_ready(proc)
            if attempts % 2:  # a random instant of the operation
                time.sleep(rng.uniform(0.0, 0.9 * duration))
            else:  # just after the n-th shard file appears (+ a few ms: mid-write)
                n = rng.randint(1, 6)
                deadline = time.time() + 30
                while _files(watch) < n and proc.poll() is None and time.time() < deadline:
                    time.sleep(0.001)
                time.sleep(rng.uniform(0.0, 0.01))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        if proc.returncode != -signal.SIGKILL:
            shutil.rmtree(where, ignore_errors=True)
            continue  # finished before the kill: not a trial
        killed += 1
        stages.add(_files(watch))
        _rerun_and_compare(op, world, cache, target, where)
        shutil.rmtree(where, ignore_errors=True)
    # the kills landed at different stages of the work, not all before (or after) it
    assert len(stages) >= 2, stages
    print(f"\n{op}: {killed} kills in {attempts} attempts (run {duration:.2f} s); shard "
          f"files present at the kills: {sorted(stages)}")
