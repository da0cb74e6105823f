"""Cache operations: verify/repair, reindex, gc/compaction, stats and the CLI.

Real HDF5 shards in ``tmp_path``, a real emulator over HTTP for re-fetching, tiny datasets.
Damage is done the way disks and people do it: bytes flipped inside a payload (h5py r+),
files truncated or deleted, stray files dropped into the cache.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from pad_assets import maintenance as mt
from pad_assets.cli import main as cli_main
from pad_assets.dataset import CachedDataset, manifest_ref
from pad_assets.devtools.emulator import DatasetSpec, Emulator, EmulatorConfig
from pad_assets.errors import CacheCorruptionError, InvalidInputError
from pad_assets.hashing import sha256_bytes
from pad_assets.preprocessing.nn import PADNeuralNetworkPipeline
from pad_assets.settings import Settings
from pad_assets.store import CardRecord, ContentStore, NewItem
from pad_assets.store import shards as shard_io
from pad_assets.store.store import INDEX_NAME
from pad_assets_tests.conftest import point_env_at
from pad_assets_tests.model_fixtures import TINY_DRUG_LABELS, write_tiny_tflite

A, B = "opsA", "opsB"
A_IDS = list(range(51000, 51006))
B_IDS = list(range(51100, 51108))


@pytest.fixture(scope="module")
def emu() -> Emulator:
    config = EmulatorConfig(datasets=[DatasetSpec(A, A_IDS), DatasetSpec(B, B_IDS)],
                            models_provider=lambda: [])
    with Emulator(config) as e:
        yield e


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """A researcher's model file (the tiny TF Lite model: LiteRT is a core dependency, so
    these tests run on every install; the ONNX runtime's own tests are in
    models/test_custom.py)."""
    from pad_assets.models.custom import CustomModelAdapter

    path = write_tiny_tflite(tmp_path_factory.mktemp("ops_models") / "tiny.tflite")
    return CustomModelAdapter(path, labels=TINY_DRUG_LABELS)


def _settings(emu: Emulator, cache: Path, **kw) -> Settings:
    return Settings(cache_dir=cache, api_url=emu.base_url, registry_url=emu.registry_url,
                    http_retries=1, **kw)


def _filled(emu: Emulator, cache: Path, model, b_too: bool = False) -> CachedDataset:
    """Dataset A downloaded with every layer (raw, preprocessed, tensor, prediction)."""
    ds = CachedDataset(A, settings=_settings(emu, cache), progress=False)
    ds.download_and_cache()
    ds.apply_model(model)
    if b_too:
        CachedDataset(B, settings=ds.settings, store=ds.store, progress=False).download_and_cache()
    return ds


def _tables(store: ContentStore) -> dict[str, list[tuple]]:
    q = store.index.query
    return {
        "shards": sorted(q("SELECT shard, path, nbytes, created FROM shards")),
        "blobs": sorted(q("SELECT blob, shard, kind, dtype, shape, nbytes FROM blobs")),
        "items": sorted(q("SELECT key, layer, blob, shard, meta, created, last_used FROM items")),
        "refs": sorted(q("SELECT name, key, updated, shard FROM refs")),
        "cards": sorted(q("SELECT dataset, card_id, raw_key, status, detail, updated, shard "
                          "FROM cards")),
    }


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and p.name != "maintenance.lock" and not p.name.startswith(INDEX_NAME)}


def _flip_blob(store: ContentStore, key: str) -> str:
    """Flip one byte inside an item's payload in place (bit rot); returns the shard path."""
    e = store.entries([key])[key]
    path = store.root / e["path"]
    store.close()
    with h5py.File(path, "r+", locking=False) as f:
        ds = f["blobs"][e["blob"]]
        data = ds[()]
        flat = data.reshape(-1)
        flat[len(flat) // 2] ^= 0xFF
        ds[...] = data
    return e["path"]


def _raw_keys(store: ContentStore, dataset: str) -> dict[int, str]:
    return {c: v["raw_key"] for c, v in store.cards(dataset).items() if v["raw_key"]}


# ---------------------------------------------------------------------------------------
# verify / repair
def test_flipped_bytes_fail_reads_and_verify_then_repair_refetches_raw_and_recomputes(
        emu: Emulator, tiny_model, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    ds = _filled(emu, cache, tiny_model)
    before = ds.apply_model(tiny_model)
    raws = _raw_keys(ds.store, A)
    victim_card, victim_raw = sorted(raws.items())[0]
    pipe = PADNeuralNetworkPipeline()
    pre_key = ds.derived.keys_for([raws[A_IDS[1]]], pipe, None)[0][0]
    ds.close()
    _flip_blob(ContentStore(cache), victim_raw)
    _flip_blob(ContentStore(cache), pre_key)

    store = ContentStore(cache)
    with pytest.raises(CacheCorruptionError, match="failed its checksum"):
        store.get(victim_raw)
    with pytest.raises(CacheCorruptionError):
        store.get(pre_key)
    report = mt.verify(store)
    assert not report.ok
    assert report.counts["corrupt_blob"] == 2
    assert report.counts["item_unreadable"] >= 3  # raw + preprocessed + tensor (same payload)
    assert report.counts["card_missing_raw"] == 1
    assert victim_raw in " ".join(report.examples("corrupt_blob"))
    assert "verify --repair" in str(report)

    emu.reset_stats()
    fixed = mt.verify(store, repair=True, settings=_settings(emu, cache), grace_seconds=0.05)
    assert fixed.ok, str(fixed)
    assert emu.stats()["image"] == 1  # only the damaged raw image was fetched again
    assert "re-fetched 1 raw images" in str(fixed)
    assert "recomputes them" in str(fixed)
    assert sha256_bytes(store.get(victim_raw)) == victim_raw
    assert list((cache / "quarantine").iterdir()), "damaged shards are kept for forensics"
    assert mt.verify(store).ok
    assert store.cards(A)[victim_card]["raw_key"] == victim_raw

    # the derived layers come back lazily, bit for bit
    ds = CachedDataset(A, settings=_settings(emu, cache), store=store, progress=False)
    assert pre_key not in store.has([pre_key])
    batches = list(ds.get_preprocessed_batch(pipe, batch_size=8))
    assert pre_key in store.has([pre_key])
    assert sum(len(b.card_ids) for b in batches) == len(A_IDS)
    after = ds.apply_model(tiny_model)
    assert after["prediction"].tolist() == before["prediction"].tolist()
    assert emu.stats()["image"] == 1
    ds.close()


def test_truncated_and_deleted_shards_are_found_and_repaired(
        emu: Emulator, tiny_model, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    ds = _filled(emu, cache, tiny_model)
    raws = _raw_keys(ds.store, A)
    entries = ds.store.entries(list(raws.values()))
    raw_shard = {e["path"] for e in entries.values()}
    assert len(raw_shard) == 1  # one download batch
    pipe = PADNeuralNetworkPipeline()
    pre_keys = ds.derived.keys_for(list(raws.values()), pipe, None)[0]
    pre_shard = {e["path"] for e in ds.store.entries(pre_keys).values()}
    ds.close()
    raw_path = cache / raw_shard.pop()
    with open(raw_path, "r+b") as f:  # a crash or a full disk cut the file short
        f.truncate(raw_path.stat().st_size // 3)
    (cache / pre_shard.pop()).unlink()  # someone deleted a file

    store = ContentStore(cache)
    with pytest.raises(CacheCorruptionError, match="cannot read blob"):
        store.get(next(iter(raws.values())))
    with pytest.raises(CacheCorruptionError):
        store.get(pre_keys[0])
    report = mt.verify(store)
    assert report.counts.get("unreadable_shard") == 1
    assert report.counts.get("missing_shard") == 1
    assert report.counts["card_missing_raw"] == len(A_IDS)

    emu.reset_stats()
    fixed = mt.verify(store, repair=True, settings=_settings(emu, cache), grace_seconds=0.05)
    assert fixed.ok, str(fixed)
    assert emu.stats()["image"] == len(A_IDS)
    assert {sha256_bytes(v) for v in store.get_many(list(raws.values())).values()} \
        == set(raws.values())
    assert store.cards(A) and all(v["status"] == "ok" for v in store.cards(A).values())
    # the rebuilt index agrees: the card records survived the truncated shard
    mt.reindex(store)
    assert mt.verify(store).ok
    assert len(store.cards(A)) == len(A_IDS)
    ds = CachedDataset(A, settings=_settings(emu, cache), store=store, progress=False)
    res = ds.apply_model(tiny_model)
    assert (res["status"] == "ok").all()
    assert emu.stats()["image"] == len(A_IDS)
    ds.close()


def test_orphans_partials_bad_keys_and_dataset_resolver(emu: Emulator, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    store = ContentStore(cache)
    # a complete shard that was never indexed (crash between rename and index)
    orphan_key = sha256_bytes(b"orphan payload")
    name, rel, _ = shard_io.write_shard(cache, [shard_io.BlobPayload(
        orphan_key, np.frombuffer(b"orphan payload", np.uint8), "bytes")],
        [{"type": "item", "key": orphan_key, "layer": "raw", "blob": orphan_key, "meta": {},
          "ts": time.time()}])
    # garbage with a shard's name, a stale partial, and a raw item under a wrong key
    junk = cache / "shards" / "200001" / "20000101T000000-00000000deadbeef.h5"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"not hdf5 at all" * 100)
    partial = cache / "tmp" / "x.h5.partial"
    partial.write_bytes(b"half")
    old = time.time() - 2 * 3600
    for p in (cache / rel, junk, partial):
        os.utime(p, (old, old))
    wrong = "ab" * 32
    store.put([NewItem(wrong, "raw", b"bytes whose sha256 is not the key", {})],
              cards=[CardRecord(A, A_IDS[0], wrong, "ok")])

    report = mt.verify(store)
    assert report.counts["orphan_shard"] == 2
    assert report.counts["key_mismatch"] == 1
    assert report.note_counts["partial_file"] == 1
    calls = []

    def resolver(name: str) -> CachedDataset:
        calls.append(name)
        return CachedDataset(name, settings=_settings(emu, cache), store=store, progress=False)

    fixed = mt.verify(store, repair=True, dataset_resolver=resolver,
                      settings=_settings(emu, cache), grace_seconds=0.05)
    text = str(fixed)
    assert "indexed orphan shard" in text and "quarantined damaged orphan shard" in text
    assert store.get(orphan_key) == b"orphan payload"
    assert wrong not in store.has([wrong])
    assert calls == [A], "the card whose raw item was bad is downloaded again"
    assert sha256_bytes(store.get(store.cards(A)[A_IDS[0]]["raw_key"])) \
        == store.cards(A)[A_IDS[0]]["raw_key"]
    assert not partial.exists() and not junk.exists()
    assert (cache / "quarantine" / junk.name).exists()
    assert fixed.ok, text
    assert mt.verify(store).ok


def test_reindex_reproduces_the_index_and_readers_keep_working(
        emu: Emulator, tiny_model, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    ds = _filled(emu, cache, tiny_model, b_too=True)
    original = _tables(ds.store)
    reader = ContentStore(cache)  # another "process" with an open index connection
    keys = [k for (k,) in reader.index.query("SELECT key FROM items WHERE blob IS NOT NULL")]
    assert len(reader.get_many(keys)) == len(keys)
    report = mt.reindex(ds.store)
    assert not report.unreadable and not report.dropped_items
    assert _tables(ds.store) == original
    assert len(reader.get_many(keys)) == len(keys)  # old connection, new content
    # from nothing: the index file is gone; shards alone give the same content back
    ds.close()
    reader.close()
    for suffix in ("", "-wal", "-shm"):
        (cache / (INDEX_NAME + suffix)).unlink(missing_ok=True)
    bare = ContentStore(cache, recover=False)
    mt.reindex(bare)
    rebuilt = _tables(bare)
    for table in ("blobs", "refs", "cards"):
        assert rebuilt[table] == original[table], table
    assert [r[:6] for r in rebuilt["items"]] == [r[:6] for r in original["items"]]
    assert [r[:3] for r in rebuilt["shards"]] == [r[:3] for r in original["shards"]]
    assert mt.verify(bare).ok


# ---------------------------------------------------------------------------------------
# gc
def test_gc_dry_run_age_size_and_keep_dataset(emu: Emulator, tiny_model, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    ds = _filled(emu, cache, tiny_model, b_too=True)
    store = ds.store
    tables, files = _tables(store), _files(cache)
    plan = mt.gc(store, keep_datasets=[A], dry_run=True)
    assert plan.evicted == {"raw": len(B_IDS)}
    assert _tables(store) == tables and _files(cache) == files, "dry run changed something"

    with pytest.raises(InvalidInputError) as typo:
        mt.gc(store, keep_datasets=["opsTypo"])
    assert str(typo.value) == (f"--keep-dataset ['opsTypo']: no such dataset in the cache at "
                               f"{store.root}; expected one of {sorted([A, B])}")
    assert mt.gc(store, grace_seconds=0.05).evicted == {}  # no criteria: nothing evicted

    # age: B's images were last used 40 days ago, the rest is fresh
    b_raw = list(_raw_keys(store, B).values())
    old = time.time() - 40 * 86400
    with store.index.transaction() as con:
        con.executemany("UPDATE items SET last_used=? WHERE key=?", [(old, k) for k in b_raw])
    aged = mt.gc(store, older_than="30d", grace_seconds=0.05)
    assert aged.evicted == {"raw": len(B_IDS)}
    assert aged.cards_marked_evicted == len(B_IDS)
    assert store.has(b_raw) == set()
    assert all(v["status"] == "evicted" for v in store.cards(B).values())
    assert aged.size_after < aged.size_before
    assert mt.verify(store).ok  # evicted cards are a note, not a problem
    b = CachedDataset(B, settings=ds.settings, store=store, progress=False)
    emu.reset_stats()
    again = b.download_and_cache()
    assert len(again.downloaded) == len(B_IDS) and emu.stats()["image"] == len(B_IDS)

    # size: LRU first, refs protected, meta-only predictions kept, target met
    a_raw = set(_raw_keys(store, A).values())
    b_raw = set(_raw_keys(store, B).values())
    everything_else = [k for (k,) in store.index.query("SELECT key FROM items")
                       if k not in b_raw]
    store.index.touch(everything_else, older_than=0.0)  # A used just now: B goes first
    st = mt.stats(store)
    target = st.shard_bytes - st.datasets[B]["raw_bytes"] // 2
    sized = mt.gc(store, max_size=target, grace_seconds=0.05)
    assert sized.target_met and sized.size_after <= target
    assert set(sized.evicted) == {"raw"}
    assert store.has(list(a_raw)) == a_raw
    assert store.ref(manifest_ref(ds.settings, A))
    assert len(store.has([k for (k,) in store.index.query(
        "SELECT key FROM items WHERE layer='prediction'")])) == len(A_IDS)

    # keep-dataset: everything not chained to A goes; A stays whole and readable
    kept = mt.gc(store, keep_datasets=[A], grace_seconds=0.05)
    layers = dict(store.index.query("SELECT layer, COUNT(*) FROM items GROUP BY layer"))
    assert layers["raw"] == len(A_IDS) and layers["prediction"] == len(A_IDS)
    assert layers["tensor"] == len(A_IDS) and layers["preprocessed"] == len(A_IDS)
    assert kept.size_after <= kept.size_before
    assert mt.verify(store).ok
    emu.reset_stats()
    res = ds.apply_model(tiny_model)
    assert res["cached"].all() and emu.stats()["total"] == 0
    ds.close()


def _interleaved(store: ContentStore, rounds: int, per_round: int = 3, seed: int = 0
                 ) -> tuple[list[str], list[str]]:
    """Shards that each mix a kept dataset's items with (larger) items of another."""
    rng = np.random.default_rng(seed)
    keep, drop = [], []
    for r in range(rounds):
        items, cards = [], []
        for i in range(per_round):
            small = rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()
            big = rng.integers(0, 256, 60_000, dtype=np.uint8).tobytes()
            ks, kb = sha256_bytes(small), sha256_bytes(big)
            items += [NewItem(ks, "raw", small, {}), NewItem(kb, "raw", big, {})]
            cid = seed * 10_000 + r * 100 + i
            cards += [CardRecord("keep", cid, ks, "ok"), CardRecord("drop", cid, kb, "ok")]
            keep.append(ks)
            drop.append(kb)
        store.put(items, cards=cards)
    return keep, drop


def test_compaction_rewrites_sparse_shards_and_keeps_every_live_item(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "c")
    keep, drop = _interleaved(store, rounds=10)
    before = {r[0] for r in store.index.query("SELECT path FROM shards")}
    report = mt.gc(store, keep_datasets=["keep"], grace_seconds=0.05)
    assert report.evicted == {"raw": len(drop)}
    assert len(report.compacted) == 10 and report.new_shards
    after = {r[0] for r in store.index.query("SELECT path FROM shards")}
    assert not (before & after)
    for rel in before:
        assert not (store.root / rel).exists(), "old shard files are deleted"
    got = store.get_many(keep)
    assert {sha256_bytes(v) for v in got.values()} == set(keep)
    assert store.has(drop) == set()
    assert report.size_after < report.size_before * 0.45
    assert mt.verify(store).ok
    snap = mt.stats(store)
    assert snap.dead_bytes == 0 and snap.retired_shards == 0
    # the index rebuilt from the compacted shards agrees
    tables = _tables(store)
    mt.reindex(store)
    assert _tables(store) == tables


READER = textwrap.dedent("""
    import json, random, sys, time
    from pathlib import Path
    from pad_assets.hashing import sha256_bytes
    from pad_assets.store import ContentStore
    root, keys_file, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    keys = json.loads(Path(keys_file).read_text())
    store = ContentStore(root)
    reads, errors, first = 0, [], None
    while not stop.exists():
        part = random.sample(keys, 4)
        try:
            got = store.get_many(part)
            bad = [k for k in part if k not in got or sha256_bytes(got[k]) != k]
            if bad:
                errors.append(f"missing or wrong: {bad}")
            reads += len(part)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        if reads and first is None:
            first = time.time()
            Path(stop.parent / "reading").write_text("1")
    print(json.dumps({"reads": reads, "errors": errors[:5], "n_errors": len(errors)}))
""")


def test_gc_while_another_process_reads_gives_the_reader_no_errors(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "c")
    keep, _ = _interleaved(store, rounds=8)
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps(keep))
    stop = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, "-c", READER, str(store.root), str(keys_file),
                             str(stop)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 30
        while not (tmp_path / "reading").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "reader did not start"
            time.sleep(0.05)
        rewritten = 0
        for seed in range(1, 4):  # three rounds of eviction + compaction under the reader
            _interleaved(store, rounds=4, seed=seed)
            report = mt.gc(store, keep_datasets=["keep"], grace_seconds=0.3)
            rewritten += len(report.compacted)
        assert rewritten >= 8
    finally:
        stop.write_text("1")
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["n_errors"] == 0, result["errors"]
    assert result["reads"] > 50
    assert mt.verify(store).ok


def test_stats_per_layer_and_dataset(emu: Emulator, tiny_model, tmp_path: Path) -> None:
    ds = _filled(emu, tmp_path / "c", tiny_model, b_too=True)
    st = mt.stats(ds.store)
    assert st.layers["raw"]["items"] == len(A_IDS) + len(B_IDS)
    assert st.layers["prediction"] == {"items": len(A_IDS), "bytes": 0}
    assert st.datasets[A]["cards"] == len(A_IDS) and st.datasets[A]["derived_items"] \
        == 3 * len(A_IDS)
    assert st.datasets[B]["derived_items"] == 0 and st.datasets[B]["raw_bytes"] > 0
    assert st.shards >= 3 and st.dead_bytes == 0
    assert st.refs == {"manifest": 2}
    assert set(st.layers_frame()["layer"]) >= {"raw", "tensor", "prediction"}
    assert "per dataset" in str(st)
    ds.close()


def test_sizes_and_durations_parse_and_bad_ones_name_the_input() -> None:
    assert mt.parse_size("10GB") == 10 * 10**9
    assert mt.parse_size("500MB") == 500 * 10**6
    assert mt.parse_size("1.5GiB") == int(1.5 * 2**30)
    assert mt.parse_size("123") == 123
    assert mt.parse_duration("30d") == 30 * 86400
    assert mt.parse_duration("12h") == 12 * 3600
    assert mt.parse_duration("90") == 90
    with pytest.raises(InvalidInputError, match="'ten GB'"):
        mt.parse_size("ten GB")
    with pytest.raises(InvalidInputError, match="'3 fortnights'"):
        mt.parse_duration("3 fortnights")


# ---------------------------------------------------------------------------------------
# the CLI
def test_cli_end_to_end(emu: Emulator, tiny_model, tmp_path: Path, capsys,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    cache, other = tmp_path / "c", tmp_path / "other"
    point_env_at(emu, cache, monkeypatch)

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli_main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("download", A, "-q")
    assert code == 0 and f"{A}: {len(A_IDS)} cards, {len(A_IDS)} downloaded" in out
    ds = CachedDataset(A, progress=False)
    ds.apply_model(tiny_model)
    raw = _raw_keys(ds.store, A)[A_IDS[0]]
    ds.close()
    code, out, _ = run("cache", "stats")
    assert code == 0 and "per layer" in out
    code, out, _ = run("cache", "stats", "--json", "--cache-dir", str(cache))
    assert code == 0 and json.loads(out)["layers"]["raw"]["items"] == len(A_IDS)
    assert run("cache", "verify")[0] == 0
    assert run("cache", "reindex")[0] == 0

    _flip_blob(ContentStore(cache), raw)
    code, out, err = run("cache", "verify", "--json")
    assert code == 1 and json.loads(out)["problems"]["corrupt_blob"]["count"] == 1
    assert "problems found" in err
    code, out, err = run("cache", "verify", "--repair")
    assert code == 0, out + err
    assert "re-fetched 1 raw images" in out

    code, out, _ = run("cache", "gc", "--max-size", "1GB", "--older-than", "30d", "--dry-run")
    assert code == 0 and "dry run" in out
    code, _, err = run("cache", "gc", "--keep-dataset", "nope")
    assert code == 1 and "'nope'" in err and "Traceback" not in err
    code, _, err = run("cache", "gc", "--max-size", "lots")
    assert code == 1 and "size 'lots'" in err

    bundle = tmp_path / "a.tar"
    code, out, _ = run("cache", "export", "--dataset", A, "--layers", "raw,predictions",
                       "-o", str(bundle))
    assert code == 0 and bundle.is_file()
    code, out, _ = run("cache", "import", str(bundle), "--cache-dir", str(other))
    assert code == 0 and "imported" in out
    assert ContentStore(other).has([raw]) == {raw}
    remote = tmp_path / "remote"
    assert run("cache", "push", str(remote))[0] == 0
    code, out, _ = run("cache", "pull", f"file://{remote}", "--dataset", A, "--cache-dir",
                       str(tmp_path / "third"))
    assert code == 0 and "pulled" in out
    code, _, err = run("cache", "pull", str(remote), "--dataset", "opsZ")
    assert code == 1 and "opsZ" in err

    assert run("cache")[0] == 2  # usage error: no action
    assert run("nonsense")[0] == 2
    # lineage is another module's; the dispatch reaches it with parsed arguments
    code, out, err = run("lineage", A, str(A_IDS[0]))
    assert code == 0, err
    assert f"card {A_IDS[0]} of {A}" in out and raw[:12] in out  # this card's raw key
    assert _raw_keys(ContentStore(cache), A)[A_IDS[1]][:12] not in out  # not another's
    code, out, err = run("lineage", A, str(A_IDS[0]), "--json")
    assert code == 0, err
    assert json.loads(out)["raw"]["key"] == raw

    # the installed console script, as a user types it
    proc = subprocess.run(["pad-assets", "cache", "stats", "--cache-dir", str(cache)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "per layer" in proc.stdout
    proc = subprocess.run(["pad-assets", "cache", "verify", "--cache-dir",
                           str(tmp_path / "empty")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "no problems found" in proc.stdout


def test_index_rows_survive_a_corrupt_live_index_via_file_swap(tmp_path: Path) -> None:
    """When the live index cannot be read at all, reindex moves it aside and renames a
    rebuilt one into place (the only case where a file swap is safe)."""
    store = ContentStore(tmp_path / "c")
    keep, drop = _interleaved(store, rounds=2)
    store.index.close()
    idx = store.root / INDEX_NAME
    for suffix in ("-wal", "-shm"):
        Path(f"{idx}{suffix}").unlink(missing_ok=True)
    idx.write_bytes(b"this is not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        store.index.query("SELECT COUNT(*) FROM items")
    report = mt.reindex(store)
    assert report.replaced_corrupt_index
    assert store.has(keep + drop) == set(keep + drop)
    assert mt.verify(store).ok
