"""Fault injection: SIGKILL mid-write, two writers at once, a flaky server, dead images.

What must hold whatever happens:
* the store stays consistent: every indexed item reads back and verifies, every key
  matches its content (raw key = sha256 of the bytes; derived keys re-hash from their
  recorded inputs), and no derived item exists without its parent;
* a rerun after any failure gives results identical to an uninterrupted run;
* nothing is lost silently: a card that cannot be fetched is reported by id with its
  URL and HTTP status.

Kill trials reuse one worker script (imports ~0.6 s) and small write batches, so a trial
costs about a second and the kill lands between, or inside, shard writes.
"""

from __future__ import annotations

import hashlib
import json
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

import pandas as pd
import pytest

from pad_assets.dataset import CachedDataset
from pad_assets.devtools.emulator import DatasetSpec, EdgeCases, Emulator, EmulatorConfig
from pad_assets.hashing import sha256_bytes
from pad_assets.keys import verify_link
from pad_assets.maintenance import verify
from pad_assets.models import PADTensorFlowAdapter
from pad_assets.provenance.lineage import card_lineage
from pad_assets.settings import Settings
from pad_assets.store import ContentStore
from pad_assets_tests.model_fixtures import TINY_DRUG_LABELS
from pad_assets_tests.workers import wait_ready

pytest_plugins = ["pad_assets_tests.model_fixtures"]

DATASET = "faults12"
CARDS = list(range(60000, 60012))
OVERLAP_A = list(range(61000, 61012))
OVERLAP_B = list(range(61006, 61018))  # shares 61006..61011 with A
COMPARE = ["card_id", "split", "actual", "prediction", "probability", "energy", "status",
           "detail", "truncated", "raw_key", "preprocessed_key", "tensor_key",
           "prediction_key", "model_signature"]
TRIALS = {"download": 7, "preprocess": 7, "predict": 6, "gc": 6}
SEED = 20240611
#: gc trials evict down to this size (the full cache of the 12 cards is ~20 MB).
GC_MAX_SIZE = 9_000_000

# One worker for every phase. Small write batches give several shards per phase, i.e.
# more places for a kill to land; the interpreter is built before READY so the kill
# window is the work itself.
WORKER = textwrap.dedent("""
    import json, sys, time
    phase, cache, api, registry, dataset, model_path, labels = sys.argv[1:8]
    import pad_assets.layers.raw as raw_layer
    import pad_assets.layers.derived as derived
    import pad_assets.layers.predictions as predictions
    raw_layer.WRITE_BATCH_ITEMS = 3
    derived.CHUNK = 4
    predictions.PREDICT_CHUNK = 4
    from pad_assets.dataset import CachedDataset
    from pad_assets.settings import Settings
    from pad_assets.preprocessing.nn import PADNeuralNetworkPipeline
    from pad_assets.models.tflite import PADTensorFlowAdapter
    import os
    after = os.environ.get("PAD_TEST_ENOSPC_AFTER")
    if after is not None:  # a full disk where the test cannot mount one: ENOSPC at the
        import errno       # shard write layer after this many shard writes
        import pad_assets.store.shards as shard_io
        real, writes = shard_io._write_bytes, [0]
        at_least = int(os.environ.get("PAD_TEST_ENOSPC_MIN_BYTES", "0"))
        def _write(fd, data):
            if writes[0] >= int(after) and len(data) >= at_least:
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return real(fd, data)
        real_ws = shard_io.write_shard
        def _write_shard(*a, **k):
            out = real_ws(*a, **k)
            writes[0] += 1
            return out
        shard_io._write_bytes, shard_io.write_shard = _write, _write_shard
    start_at = float(sys.argv[8]) if len(sys.argv) > 8 else 0.0
    s = Settings(cache_dir=cache, api_url=api, registry_url=registry, download_workers=2,
                 http_retries=3)
    ds = CachedDataset(dataset, settings=s, progress=False, workers=2)
    model = PADTensorFlowAdapter(model_path=model_path, labels=json.loads(labels))
    if phase in ("predict", "all"):
        model.runner  # build the interpreter now, not inside the kill window
    while time.time() < start_at:
        time.sleep(0.002)
    print("READY", flush=True)
    t0 = time.perf_counter()
    if phase in ("download", "all"):
        summary = ds.download_and_cache()
        assert not summary.failed, str(summary)
    if phase in ("preprocess", "all"):
        n = sum(len(b.card_ids) for b in ds.get_preprocessed_batch(
            PADNeuralNetworkPipeline(), batch_size=4))
        assert n == len(ds.manifest().rows), n
    if phase in ("predict", "all"):
        df = ds.apply_model(model, batch_size=4)
        assert (df["status"] == "ok").all(), df[["card_id", "status", "detail"]]
    if phase == "gc":
        from pad_assets.maintenance import gc
        print(gc(ds.store, max_size=int(os.environ["PAD_TEST_GC_MAX"]), grace_seconds=0.2),
              file=sys.stderr)
    ds.close()
    print("DONE", time.perf_counter() - t0, flush=True)
""")


# ---------------------------------------------------------------------------- helpers
def _settings(emu: Emulator, cache: Path, **kw: Any) -> Settings:
    kw.setdefault("http_retries", 3)
    return Settings(cache_dir=cache, api_url=emu.base_url, registry_url=emu.registry_url, **kw)


def _spawn(phase: str, cache: Path, emu: Emulator, dataset: str, model: Path,
           start_at: float | None = None, **env_extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", WORKER, phase, str(cache), emu.base_url, emu.registry_url,
            dataset, str(model), json.dumps(TINY_DRUG_LABELS)]
    if start_at is not None:
        argv.append(repr(start_at))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PAD_OFFLINE": "",
           "PAD_TEST_GC_MAX": str(GC_MAX_SIZE), **env_extra}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _shard_count(cache: Path) -> int:
    base = cache / "shards"
    return len(list(base.glob("*/*.h5"))) if base.exists() else 0


def assert_store_consistent(cache: Path, datasets: tuple[str, ...] = (DATASET,),
                            parents: bool = True) -> dict[str, int]:
    """Every indexed item verifies and matches its key; no orphans; counts per layer.

    ``parents=False`` after a gc: LRU eviction may drop a raw image and keep what was
    derived from it (that is a cache, not damage; the card is marked ``evicted``).

    Checked twice: as the kill left it (no recovery) and after the recovery every
    ``ContentStore`` runs on open (indexing renamed-but-unindexed shards).
    """
    counts: dict[str, int] = {}
    for recover in (False, True):
        store = ContentStore(cache, recover=recover)
        try:
            rows = store.index.query("SELECT key, layer, blob, meta FROM items")
            keys = {r[0] for r in rows}
            payloads = store.get_many([r[0] for r in rows], touch=False)  # raises if corrupt
            counts = {}
            for key, layer, blob, meta_text in rows:
                meta = json.loads(meta_text)
                counts[layer] = counts.get(layer, 0) + 1
                if blob is not None:
                    assert key in payloads, f"{layer} item {key} does not read back"
                if layer == "raw":
                    assert sha256_bytes(payloads[key]) == key, f"raw {key} != sha256(bytes)"
                    assert meta["sha256"] == key
                elif layer == "manifest":
                    assert sha256_bytes(payloads[key]) == key
                elif layer in ("preprocessed", "tensor", "prediction"):
                    assert verify_link(layer, key, meta) == "ok", (layer, key)
                    parent = {"preprocessed": "raw_key", "tensor": "preprocessed_key",
                              "prediction": "tensor_key"}[layer]
                    assert meta[parent] in keys or not parents, (
                        f"{layer} {key} has no parent {meta[parent]}")
            for ds in datasets:
                for cid, card in store.cards(ds).items():
                    if card["status"] == "ok":
                        assert card["raw_key"] in keys, f"card {cid} points at a missing item"
            for name, key in store.index.refs().items():
                assert key in keys, f"ref {name} points at a missing item"
            report = verify(store)  # what `pad-assets cache verify` runs
            assert report.ok, f"cache verify reports problems: {report.problems!r}"
        finally:
            store.close()
    return counts


def _frame(df: pd.DataFrame) -> pd.DataFrame:
    return df[COMPARE].sort_values("card_id").reset_index(drop=True)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    config = EmulatorConfig(datasets=[DatasetSpec(DATASET, CARDS),
                                      DatasetSpec("overlap_A", OVERLAP_A),
                                      DatasetSpec("overlap_B", OVERLAP_B)],
                            models_provider=lambda: [])
    with Emulator(config) as e:
        e.warm()  # render every card once: serving is then a memory copy
        yield e


@pytest.fixture(scope="module")
def model(tiny_tflite_path: Path) -> PADTensorFlowAdapter:
    return PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)


@pytest.fixture(scope="module")
def reference(emu: Emulator, model: PADTensorFlowAdapter,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Uninterrupted runs in their own caches: the results every rerun must equal, plus
    template caches (raw only) that the preprocess and predict trials start from."""
    base = tmp_path_factory.mktemp("fault_ref")
    out: dict[str, Any] = {}
    for name in (DATASET, "overlap_A", "overlap_B"):
        ds = CachedDataset(name, settings=_settings(emu, base / f"ref_{name}"), progress=False)
        out[name] = _frame(ds.apply_model(model))
        assert (out[name]["status"] == "ok").all()
        ds.close()
    template = base / "template_raw"
    ds = CachedDataset(DATASET, settings=_settings(emu, template), progress=False)
    assert not ds.download_and_cache().failed
    ds.close()
    out["template_raw"] = template
    full = base / "template_full"  # every layer, in the small shards of the worker
    shutil.copytree(template, full)
    proc = _spawn("all", full, emu, DATASET, model.weights_path)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    out["template_full"] = full
    return out


def _template(phase: str, reference: dict[str, Any]) -> Path | None:
    """The cache a phase starts from (None: empty)."""
    return {"download": None, "gc": reference["template_full"]}.get(
        phase, reference["template_raw"])


# ---------------------------------------------------------------------------- SIGKILL
def _calibrate(phase: str, emu: Emulator, tiny: Path, reference: dict[str, Any],
               tmp: Path) -> tuple[float, int]:
    """Duration of an uninterrupted phase and the shards it writes (for kill points)."""
    cache = tmp / f"calibrate_{phase}"
    if _template(phase, reference) is not None:
        shutil.copytree(_template(phase, reference), cache)
    before = _shard_count(cache)
    proc = _spawn(phase, cache, emu, DATASET, tiny)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    seconds = float(out.split("DONE")[1].split()[0])
    return seconds, _shard_count(cache) - before


@pytest.mark.parametrize("phase", list(TRIALS))
def test_sigkill_at_random_points_leaves_a_consistent_store_and_rerun_is_identical(
        phase: str, emu: Emulator, model: PADTensorFlowAdapter, tiny_tflite_path: Path,
        reference: dict[str, Any], tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}-{phase}")
    duration, shards = _calibrate(phase, emu, tiny_tflite_path, reference, tmp_path)
    if phase == "gc":  # gc removes shards as it writes new ones: kill at random instants
        assert duration > 0.2, f"gc took {duration:.2f} s: too short to kill inside"
    else:
        assert shards >= 3, f"{phase} wrote {shards} shards: too few places to kill"
    killed, partial_states = 0, set()
    attempts = 0
    while killed < TRIALS[phase]:
        attempts += 1
        assert attempts <= 3 * TRIALS[phase], "the worker kept finishing before the kill"
        cache = tmp_path / f"trial{attempts}"
        if _template(phase, reference) is not None:
            shutil.copytree(_template(phase, reference), cache)
        base_shards = _shard_count(cache)
        proc = _spawn(phase, cache, emu, DATASET, tiny_tflite_path)
        try:
            wait_ready(proc)
            if attempts % 2 or phase == "gc":  # a random instant of the phase
                time.sleep(rng.uniform(0.0, 0.85 * duration))
            else:  # just after the n-th shard of the phase appears (+ a few ms: mid-write)
                n = rng.randint(1, max(1, shards - 1))
                deadline = time.time() + 30
                while (_shard_count(cache) - base_shards < n and proc.poll() is None
                       and time.time() < deadline):
                    time.sleep(0.001)
                time.sleep(rng.uniform(0.0, 0.02))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        if proc.returncode != -signal.SIGKILL:
            continue  # finished before the kill: not a trial
        killed += 1
        counts = assert_store_consistent(cache, parents=phase != "gc")
        partial_states.add(tuple(sorted(counts.items())))
        ds = CachedDataset(DATASET, settings=_settings(emu, cache), progress=False)
        try:
            rerun = _frame(ds.apply_model(model))
        finally:
            ds.close()
        pd.testing.assert_frame_equal(rerun, reference[DATASET], check_exact=True)
        assert_store_consistent(cache, parents=phase != "gc")
    # The kills landed at different stages, not all before (or after) the work.
    assert len(partial_states) >= 2, partial_states


# ---------------------------------------------------------------------------- ENOSPC
def _mount_tmpfs(path: Path, size_mb: int) -> bool:
    """A size-limited tmpfs at ``path`` (root with ``mount`` only; False otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    if (os.geteuid() != 0 or shutil.which("mount") is None
            or os.environ.get("PAD_TEST_NO_MOUNT")):  # (the fallback, tried on purpose)
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs",
                           str(path)], capture_output=True).returncode == 0


def _fill(folder: Path, leave: int) -> Path:
    """Take the folder's disk down to about ``leave`` free bytes."""
    filler = folder / "filler"
    with open(filler, "wb") as fh:
        while shutil.disk_usage(folder).free > leave + 65536:
            try:
                fh.write(b"\0" * 65536)
                fh.flush()
            except OSError:
                break
    return filler


#: Free bytes each phase finds: room for some of its shards, not all.
ENOSPC_LEAVE = {"download": 6_000_000, "preprocess": 3_500_000, "predict": 900_000,
                "gc": 300_000}


@pytest.mark.parametrize("phase,inject", [*((p, False) for p in ENOSPC_LEAVE),
                                          ("preprocess", True)],
                         ids=[*ENOSPC_LEAVE, "preprocess_injected"])
def test_a_full_disk_gives_a_clear_error_a_consistent_store_and_identical_reruns(
        phase: str, inject: bool, emu: Emulator, model: PADTensorFlowAdapter,
        tiny_tflite_path: Path, reference: dict[str, Any], tmp_path: Path) -> None:
    """ENOSPC on a real 64 MB tmpfs filled to leave a few MB (where this machine lets the
    test mount), else (and in the ``_injected`` case) an ``OSError(ENOSPC)`` injected at
    the shard write layer after the first shard."""
    mnt = tmp_path / "disk"
    mounted = not inject and _mount_tmpfs(mnt, 64)
    try:
        cache = mnt / "cache"
        template = _template(phase, reference)
        if template is not None:
            shutil.copytree(template, cache)
        extra: dict[str, str] = {}
        filler = None
        if mounted:
            filler = _fill(mnt, ENOSPC_LEAVE[phase])
        else:  # no mount here: ENOSPC injected at the shard write layer
            extra["PAD_TEST_ENOSPC_AFTER"] = "1"
            if phase == "gc":  # a nearly full disk (what a full cache leaves), not a dead one
                extra["PAD_TEST_ENOSPC_MIN_BYTES"] = "256000"
        proc = _spawn(phase, cache, emu, DATASET, tiny_tflite_path, **extra)
        out, err = proc.communicate(timeout=180)
        assert proc.returncode in (0, 1), f"{phase}: killed by signal {-proc.returncode}"
        assert "Segmentation" not in err
        if phase == "gc":  # gc is what frees a full disk: it must succeed there
            assert proc.returncode == 0, err[-3000:]
            assert "skipped" not in err or "evicted with them" in err, err[-3000:]
        else:
            assert proc.returncode == 1 and "CacheFullError" in err, err[-3000:]
            last = err.strip().splitlines()[-1]
            assert str(cache) in last and "gc" in last, last
        assert not list((cache / "tmp").glob("*.partial")), "a failed write left a .partial"
        if filler is not None:
            filler.unlink()
        assert_store_consistent(cache, parents=phase != "gc")  # includes `cache verify`
        ds = CachedDataset(DATASET, settings=_settings(emu, cache), progress=False)
        try:
            rerun = _frame(ds.apply_model(model))
        finally:
            ds.close()
        pd.testing.assert_frame_equal(rerun, reference[DATASET], check_exact=True)
        assert_store_consistent(cache, parents=phase != "gc")
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ---------------------------------------------------------------------------- concurrency
@pytest.mark.parametrize("round_", [1, 2])
def test_two_processes_materializing_overlapping_datasets_at_once(
        round_: int, emu: Emulator, model: PADTensorFlowAdapter, tiny_tflite_path: Path,
        reference: dict[str, Any], tmp_path: Path) -> None:
    cache = tmp_path / "shared_cache"
    start_at = time.time() + 2.0  # both workers start their work at the same instant
    procs = {name: _spawn("all", cache, emu, name, tiny_tflite_path, start_at=start_at)
             for name in ("overlap_A", "overlap_B")}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name} failed:\n{err[-3000:]}"
        assert "locked" not in err.lower() and "DONE" in out, err[-2000:]
    counts = assert_store_consistent(cache, ("overlap_A", "overlap_B"))
    distinct = sorted(set(OVERLAP_A) | set(OVERLAP_B))
    store = ContentStore(cache)
    try:
        # exactly one raw item per distinct card image, and each card resolves to its bytes
        assert counts["raw"] == len(distinct)
        expected = {c: hashlib.sha256(emu.catalog.image_bytes(c)).hexdigest() for c in distinct}
        assert {r[0] for r in store.index.query("SELECT key FROM items WHERE layer='raw'")
                } == set(expected.values())
        for name, ids in (("overlap_A", OVERLAP_A), ("overlap_B", OVERLAP_B)):
            cards = store.cards(name)
            assert sorted(cards) == ids
            for cid in ids:
                assert cards[cid]["status"] == "ok" and cards[cid]["raw_key"] == expected[cid]
                assert sha256_bytes(store.get(cards[cid]["raw_key"])) == expected[cid]
        # one preprocessed + tensor + prediction per distinct image (keys are unique)
        assert counts["preprocessed"] == counts["tensor"] == counts["prediction"] == len(distinct)
        dupes = store.index.query("SELECT key, COUNT(*) FROM items GROUP BY key HAVING COUNT(*) > 1")
        assert dupes == []
    finally:
        store.close()
    # nothing lost: every card of both datasets is fully cached (warm run: no inference)
    calls = []
    original = model.predict_batch

    def counting(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return original(*a, **k)

    model.predict_batch = counting  # type: ignore[method-assign]
    try:
        for name in ("overlap_A", "overlap_B"):
            ds = CachedDataset(name, settings=_settings(emu, cache), progress=False)
            df = ds.apply_model(model)
            ds.close()
            assert df["cached"].all()
            pd.testing.assert_frame_equal(_frame(df), reference[name], check_exact=True)
    finally:
        del model.predict_batch
    assert calls == []


# ---------------------------------------------------------------------------- flaky server
def test_flaky_server_gives_results_identical_to_a_clean_run(
        model: PADTensorFlowAdapter, reference: dict[str, Any], tmp_path: Path) -> None:
    config = EmulatorConfig(datasets=[DatasetSpec(DATASET, CARDS)], models_provider=lambda: [],
                            error_rate=0.2, latency=0.01, truncate_rate=0.1, seed=1234)
    with Emulator(config) as flaky:
        # generous retries: 5xx, cut bodies and resets are all retried, with backoff
        ds = CachedDataset(DATASET, settings=_settings(flaky, tmp_path / "c", http_retries=10),
                           progress=False)
        summary = ds.download_and_cache()
        df = ds.apply_model(model)
        stats = flaky.stats()
        ds.close()
    assert not summary.failed, str(summary)
    assert stats["errors_5xx"] > 0 and stats["truncated"] > 0, stats  # faults did happen
    pd.testing.assert_frame_equal(_frame(df), reference[DATASET], check_exact=True)
    assert_store_consistent(tmp_path / "c")


@pytest.mark.parametrize("download_first", [True, False], ids=["download_first", "cold_apply"])
def test_images_that_keep_failing_are_reported_by_name(model: PADTensorFlowAdapter,
                                                       tmp_path: Path, download_first: bool
                                                       ) -> None:
    # cold_apply: apply_model downloads chunk by chunk inside its prediction pipeline
    with Emulator(EmulatorConfig(slow_seconds=0.2, models_provider=lambda: [])) as edge:
        ds = CachedDataset(EdgeCases.DATASET, settings=_settings(edge, tmp_path / "c"),
                           progress=False)
        summary = ds.download_and_cache() if download_first else None
        df = ds.apply_model(model).set_index("card_id")
        image_requests = edge.stats()["by_path"]
        url = edge.image_url(EdgeCases.MISSING_IMAGE).replace("//var", "/var")
        ds_lineage = card_lineage(ds, EdgeCases.MISSING_IMAGE, model)
        ds.close()
    manifest_ids = [*EdgeCases.ALL, *EdgeCases.NORMAL]
    assert sorted(df.index) == sorted(manifest_ids)  # no card silently dropped
    missing = df.loc[EdgeCases.MISSING_IMAGE]
    assert missing["status"] == "failed"
    assert url in missing["detail"] and "HTTP 404" in missing["detail"]
    if summary is not None:
        assert url in summary.failed[EdgeCases.MISSING_IMAGE]
        assert f"failed card {EdgeCases.MISSING_IMAGE}: GET {url}" in str(summary)
    # every good image was fetched exactly once, whichever path fetched it
    for cid in EdgeCases.NORMAL:
        hits = [n for path, n in image_requests.items() if path.endswith(f"/{cid}_processed.png")]
        assert hits == [1], (cid, hits)
    mismatch = df.loc[EdgeCases.MD5_MISMATCH]
    assert mismatch["status"] == "failed" and "md5 mismatch" in mismatch["detail"]
    ok = [c for c in manifest_ids if c not in (EdgeCases.MISSING_IMAGE, EdgeCases.MD5_MISMATCH)]
    assert (df.loc[ok, "status"] == "ok").all(), df.loc[ok, ["status", "detail"]]
    assert bool(df.loc[EdgeCases.TRUNCATED_PNG, "truncated"]) is True
    assert ds_lineage["raw"]["status"] == "failed" and url in ds_lineage["raw"]["reason"]


def test_a_server_failing_every_request_fails_loudly_then_recovers(
        emu: Emulator, model: PADTensorFlowAdapter, reference: dict[str, Any],
        tmp_path: Path) -> None:
    ds = CachedDataset(DATASET, settings=_settings(emu, tmp_path / "c", http_retries=1),
                       progress=False)
    ds.manifest()
    emu.config.error_rate = 1.0  # every request answers 500 from now on
    try:
        df = ds.apply_model(model).set_index("card_id")
    finally:
        emu.config.error_rate = 0.0
    assert sorted(df.index) == CARDS
    for cid in CARDS:
        detail = df.loc[cid, "detail"]
        assert df.loc[cid, "status"] == "failed"
        assert f"{cid}_processed.png" in detail and "HTTP 500" in detail, detail
    cards = ds.cards().set_index("card_id")
    assert (cards["cache_status"] == "failed").all()
    assert ds.store.index.query("SELECT COUNT(*) FROM items WHERE layer='raw'")[0][0] == 0
    rerun = _frame(ds.apply_model(model))  # the server is back: failed cards are retried
    ds.close()
    pd.testing.assert_frame_equal(rerun, reference[DATASET], check_exact=True)
