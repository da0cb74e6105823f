"""What arrives from a colleague or a remote is a proposal, never an order (issue 12).

Each test reproduces one defect of the fault and hostile-input campaign:

* defect 1: a bundle (or a pulled shard) "for" one dataset that carries a model-record ref
  with reversed labels, a manifest ref for another dataset and card records swapping two
  cards' raw keys, all stamped year 3000, must not change what the cache says: local refs
  stay, unverifiable facts are ignored, foreign timestamps never beat local truth, and
  ``verify`` notices a ref or card that contradicts its content;
* defect 5: imports have resource limits checked while streaming, before writing;
* defect 12 (remote part): a remote ``index.json`` with entries of the wrong type gives a
  clear error naming the remote and the entry, and leaves no ``.partial`` behind;
* defect 13: a killed export's ``.NAME.*.partial`` leftovers are cleaned by the next export.
"""

from __future__ import annotations

import fcntl
import io
import json
import shutil
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from pad_assets import maintenance as mt
from pad_assets import sharing
from pad_assets.dataset import CachedDataset, manifest_ref
from pad_assets.devtools.emulator import DatasetSpec, Emulator, ModelArtifact
from pad_assets.errors import IntegrityError
from pad_assets.hashing import sha256_bytes
from pad_assets.settings import Settings
from pad_assets.sharing import export_bundle, import_bundle, pull, push
from pad_assets.sharing.remote import _remote, publish_entry, remote_index
from pad_assets.sources.model_artifacts import record_ref
from pad_assets.store import CardRecord, ContentStore
from pad_assets.store import shards as shard_io
from pad_assets.store.fs import file_sha256
from pad_assets_tests.conftest import make_config
from pad_assets_tests.model_fixtures import TINY_DRUG_LABELS

pytest_plugins = ["pad_assets_tests.model_fixtures"]

DS, OTHER = "trustA", "trustB"
DS_IDS = list(range(53000, 53006))
OTHER_IDS = list(range(53100, 53103))
MODEL_ID = 932
YEAR_3000 = 32503680000.0


@pytest.fixture(scope="module")
def emu(tiny_tflite_path: Path) -> Emulator:
    model = ModelArtifact(
        record={"id": MODEL_ID, "name": "tiny_trust", "type": "tf_lite",
                "labels": TINY_DRUG_LABELS, "version": "1"},
        filename="tiny_trust.tflite", data=Path(tiny_tflite_path).read_bytes())
    config = make_config([DatasetSpec(DS, DS_IDS), DatasetSpec(OTHER, OTHER_IDS)],
                         models=[model])
    with Emulator(config) as e:
        yield e


def _settings(emu: Emulator, cache: Path, offline: bool = False) -> Settings:
    return Settings(cache_dir=cache, api_url=emu.base_url, registry_url=emu.registry_url,
                    offline=offline, http_retries=1)


def _adapter(settings: Settings, refresh: bool = False):
    from pad_assets.models.tflite import PADTensorFlowAdapter

    return PADTensorFlowAdapter(model_id=MODEL_ID, settings=settings, refresh=refresh)


def _fill(emu: Emulator, cache: Path):
    """A cache with DS predicted by the PAD model and OTHER downloaded; its results."""
    s = _settings(emu, cache)
    ds = CachedDataset(DS, settings=s, progress=False)
    ds.download_and_cache()
    results = ds.apply_model(_adapter(s))
    CachedDataset(OTHER, settings=s, store=ds.store, progress=False).download_and_cache()
    ds.close()
    return results


@pytest.fixture(scope="module")
def source(emu: Emulator, tmp_path_factory: pytest.TempPathFactory) -> dict:
    cache = tmp_path_factory.mktemp("trust_src") / "cache"
    return {"cache": cache, "results": _fill(emu, cache)}


def _truth(store: ContentStore) -> dict:
    """What the cache currently says: refs, card -> raw key (the facts a bundle may not
    override)."""
    return {"refs": store.index.refs(),
            "cards": {(d, c): (r, s) for d, c, r, s in store.index.query(
                "SELECT dataset, card_id, raw_key, status FROM cards")}}


def _hostile_shard(src: ContentStore, emu: Emulator, root: Path) -> tuple[str, str]:
    """Write the campaign's 28 KB poison: a model record with reversed labels (same
    weights sha256), a manifest ref for OTHER pointing at DS's manifest, and two DS cards
    swapping raw keys, all stamped year 3000. Returns (shard name, relative path)."""
    s = _settings(emu, src.root)
    rec_key = src.ref(record_ref(s, MODEL_ID))
    record = json.loads(src.get(rec_key))
    record["labels"] = list(reversed(record["labels"]))
    data = json.dumps(record, sort_keys=True).encode()
    evil_key = sha256_bytes(data)
    blob = shard_io.BlobPayload(evil_key, np.frombuffer(data, dtype=np.uint8), "bytes")
    cards = src.cards(DS)
    a, b = DS_IDS[0], DS_IDS[1]
    records = [
        {"type": "item", "key": evil_key, "layer": "model_record", "blob": evil_key,
         "meta": {"model_id": MODEL_ID}, "ts": YEAR_3000},
        {"type": "ref", "name": record_ref(s, MODEL_ID), "key": evil_key,
         "ts": YEAR_3000},
        {"type": "ref", "name": manifest_ref(s, OTHER), "key": src.ref(manifest_ref(s, DS)),
         "ts": YEAR_3000},
        {"type": "card", "dataset": DS, "card_id": a, "raw_key": cards[b]["raw_key"],
         "status": "ok", "detail": "", "ts": YEAR_3000},
        {"type": "card", "dataset": DS, "card_id": b, "raw_key": cards[a]["raw_key"],
         "status": "ok", "detail": "", "ts": YEAR_3000},
    ]
    name, rel, _ = shard_io.write_shard(root, [blob], records)
    shutil.rmtree(root / "tmp", ignore_errors=True)
    return name, rel


def _poisoned_bundle(source: dict, emu: Emulator, tmp_path: Path) -> Path:
    src = ContentStore(source["cache"])
    bundle = tmp_path / "poisoned"
    export_bundle(src, DS, out=bundle)
    _, rel = _hostile_shard(src, emu, bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["files"].append({"path": rel, "sha256": file_sha256(bundle / rel),
                              "bytes": (bundle / rel).stat().st_size})
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    src.close()
    return bundle


def _assert_unpoisoned(emu: Emulator, cache: Path, before: dict, baseline) -> None:
    store = ContentStore(cache)
    after = _truth(store)
    assert after["cards"] == before["cards"], "a card record was overridden"
    for name, key in before["refs"].items():
        assert after["refs"][name] == key, f"local ref {name} was overridden"
    s = _settings(emu, cache)
    assert store.index.query("SELECT MAX(updated) FROM refs")[0][0] < YEAR_3000 / 2
    assert store.index.query("SELECT MAX(updated) FROM cards")[0][0] < YEAR_3000 / 2
    assert store.index.query("SELECT MAX(created) FROM items")[0][0] < YEAR_3000 / 2
    report = mt.verify(store)
    assert report.ok, report.problems
    store.close()
    ds = CachedDataset(DS, settings=s, progress=False)
    results = ds.apply_model(_adapter(s))
    assert results["prediction"].tolist() == baseline["prediction"].tolist()
    assert results["raw_key"].tolist() == baseline["raw_key"].tolist()
    ds.close()


def test_a_poisoned_bundle_cannot_override_local_refs_cards_or_clocks(
        emu: Emulator, source: dict, tmp_path: Path) -> None:
    bundle = _poisoned_bundle(source, emu, tmp_path)
    victim = tmp_path / "victim"
    baseline = _fill(emu, victim)
    store = ContentStore(victim)
    before = _truth(store)
    report = import_bundle(store, bundle)
    store.close()
    text = str(report)
    s = _settings(emu, victim)
    for fact in (f"ref {record_ref(s, MODEL_ID)}", f"ref {manifest_ref(s, OTHER)}",
                 f"card {DS}/{DS_IDS[0]}", f"card {DS}/{DS_IDS[1]}"):
        assert fact in text, f"{fact!r} not reported as ignored:\n{text}"
    _assert_unpoisoned(emu, victim, before, baseline)


def test_each_hostile_fact_alone_is_refused_for_its_own_reason(
        emu: Emulator, source: dict, tmp_path: Path) -> None:
    """The poison without the honest records beside it: each fact meets its own check."""
    cache = tmp_path / "victim"
    shutil.copytree(source["cache"], cache)
    src = ContentStore(source["cache"])
    bundle = tmp_path / "hostile_only"
    _, rel = _hostile_shard(src, emu, bundle)
    (bundle / "bundle.json").write_text(json.dumps({
        "format": sharing.BUNDLE_FORMAT, "version": sharing.FORMAT_VERSION, "dataset": DS,
        "files": [{"path": rel, "sha256": file_sha256(bundle / rel)}]}))
    src.close()
    s = _settings(emu, cache)
    store = ContentStore(cache)
    before = _truth(store)
    why = {w.split(": ", 1)[0]: w.split(": ", 1)[1] for w in import_bundle(store, bundle).ignored}
    assert "already names" in why[f"ref {record_ref(s, MODEL_ID)}"]
    assert "this bundle is for" in why[f"ref {manifest_ref(s, OTHER)}"]
    assert "already maps it to" in why[f"card {DS}/{DS_IDS[0]}"]
    assert _truth(store) == before
    # with no local record for the pair, the swap meets the manifest's md5
    store.index.query("DELETE FROM cards WHERE dataset=? AND card_id IN (?, ?)",
                      (DS, DS_IDS[0], DS_IDS[1]))
    why = {w.split(": ", 1)[0]: w.split(": ", 1)[1] for w in import_bundle(store, bundle).ignored}
    for cid in DS_IDS[:2]:
        assert "the manifest of trustA says" in why[f"card {DS}/{cid}"], why
    assert store.cards(DS, DS_IDS[:2]) == {}
    store.close()


def test_a_poisoned_bundle_into_an_empty_cache_keeps_only_what_verifies(
        emu: Emulator, source: dict, tmp_path: Path) -> None:
    """With no local truth the proposals are checked against content: the swapped cards
    fail the manifest's md5, the foreign manifest ref names another dataset, and the two
    contradicting model records cancel out; what a server says later always wins."""
    bundle = _poisoned_bundle(source, emu, tmp_path)
    store = ContentStore(tmp_path / "fresh")
    import_bundle(store, bundle)
    s = _settings(emu, store.root)
    src = ContentStore(source["cache"])
    want = {c: v["raw_key"] for c, v in src.cards(DS).items()}
    got = store.cards(DS)
    for cid in DS_IDS[:2]:  # the swapped pair: refused (md5 mismatch), so re-downloaded
        assert got.get(cid, {}).get("raw_key") in (None, want[cid])
    for cid in DS_IDS[2:]:
        assert got[cid]["raw_key"] == want[cid]
    assert store.ref(manifest_ref(s, OTHER)) is None
    assert store.index.query("SELECT MAX(updated) FROM refs")[0][0] < YEAR_3000 / 2
    assert mt.verify(store).ok
    store.close()
    adapter = _adapter(s, refresh=True)
    assert adapter.original_labels == TINY_DRUG_LABELS
    ds = CachedDataset(DS, settings=s, progress=False)
    results = ds.apply_model(_adapter(s))
    assert results["prediction"].tolist() == source["results"]["prediction"].tolist()
    ds.close()


def test_a_poisoned_remote_shard_cannot_override_local_truth_through_pull(
        emu: Emulator, source: dict, tmp_path: Path) -> None:
    src = ContentStore(source["cache"])
    remote = tmp_path / "remote"
    push(src, str(remote))
    name, rel = _hostile_shard(src, emu, remote)
    fs, root = _remote(str(remote))  # published as any pusher publishes
    publish_entry(fs, root, name, file_sha256(remote / rel), (remote / rel).stat().st_size,
                  [DS], "hostile")
    src.close()
    victim = tmp_path / "victim"
    baseline = _fill(emu, victim)
    store = ContentStore(victim)
    before = _truth(store)
    pull(store, str(remote), dataset=DS)
    pull(store, str(remote))
    store.close()
    _assert_unpoisoned(emu, victim, before, baseline)
    # a later reindex (the index rebuilt from the shard files) brings nothing back
    store = ContentStore(victim)
    mt.reindex(store)
    assert _truth(store)["refs"] == before["refs"]
    assert _truth(store)["cards"] == before["cards"]
    store.close()


def test_verify_detects_refs_and_cards_that_contradict_their_content(
        emu: Emulator, source: dict, tmp_path: Path) -> None:
    """A cache poisoned before the fix (or by hand): verify names each contradiction."""
    cache = tmp_path / "poisoned"
    shutil.copytree(source["cache"], cache)
    store = ContentStore(cache)
    s = _settings(emu, cache)
    assert mt.verify(store).ok
    cards = store.cards(DS)
    a, b = DS_IDS[0], DS_IDS[1]
    store.put(refs=[(manifest_ref(s, OTHER), store.ref(manifest_ref(s, DS)))],
              cards=[CardRecord(DS, a, cards[b]["raw_key"], "ok"),
                     CardRecord(DS, b, cards[a]["raw_key"], "ok")])
    report = mt.verify(store)
    assert not report.ok
    text = str(report)
    assert manifest_ref(s, OTHER) in text, text
    assert f"{DS}/{a}" in text and f"{DS}/{b}" in text, text
    assert "future_timestamp" not in report.counts
    # the campaign's pin: a record stamped year 3000 beats every refresh; verify names it
    name, rel, nbytes = shard_io.write_shard(cache, [], [
        {"type": "ref", "name": manifest_ref(s, DS), "key": store.ref(manifest_ref(s, DS)),
         "ts": YEAR_3000}])
    store.index_shard_file(name, rel)
    report = mt.verify(store)
    assert report.counts.get("future_timestamp") == 1, report.counts
    assert "3000-01-01" in str(report)

    # --repair undoes all of it, and a reindex from the shard files does not bring it back
    def resolver(name: str) -> CachedDataset:
        return CachedDataset(name, settings=s, store=store, progress=False)

    fixed = mt.verify(store, repair=True, dataset_resolver=resolver, grace_seconds=0.0)
    assert fixed.ok, str(fixed)
    src = ContentStore(source["cache"])
    want = {c: v["raw_key"] for c, v in src.cards(DS).items()}
    other_manifest = src.ref(manifest_ref(s, OTHER))
    src.close()
    for _ in range(2):
        assert {c: v["raw_key"] for c, v in store.cards(DS).items()} == want
        assert store.ref(manifest_ref(s, OTHER)) == other_manifest
        assert store.index.query("SELECT MAX(updated) FROM refs")[0][0] < YEAR_3000 / 2
        assert store.index.query("SELECT MAX(updated) FROM cards")[0][0] < YEAR_3000 / 2
        assert mt.verify(store).ok
        mt.reindex(store)
    store.close()


# ---------------------------------------------------------------------------- defect 5
def _h5_bundle(tmp_path: Path, arr: np.ndarray, **dataset_kw) -> Path:
    """A bundle whose one shard holds ``arr`` as a raw item (with its correct digest)."""
    bundle = tmp_path / "bomb"
    data = arr.tobytes()
    key = sha256_bytes(data)
    name = shard_io.new_shard_name()
    rel = shard_io.shard_relpath(name)
    path = bundle / rel
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as f:
        g = f.create_group(shard_io.BLOBS_GROUP)
        ds = g.create_dataset(key, data=np.frombuffer(data, dtype=np.uint8), **dataset_kw)
        ds.attrs["kind"] = "bytes"
        recs = [{"type": "item", "key": key, "layer": "raw", "blob": key, "meta": {},
                 "ts": 1.0}]
        f.create_dataset(shard_io.RECORDS_DATASET,
                         data=np.frombuffer(json.dumps(recs).encode(), dtype=np.uint8))
    (bundle / "bundle.json").write_text(json.dumps({
        "format": sharing.BUNDLE_FORMAT, "version": sharing.FORMAT_VERSION, "dataset": DS,
        "files": [{"path": rel, "sha256": file_sha256(path), "bytes": path.stat().st_size}]}))
    return bundle


def test_a_compression_bomb_item_is_refused_before_it_is_read(tmp_path: Path) -> None:
    zeros = np.zeros(64 << 20, dtype=np.uint8)  # 64 MiB that gzip stores in ~64 KB
    bundle = _h5_bundle(tmp_path, zeros, chunks=(1 << 20,), compression="gzip")
    assert sum(p.stat().st_size for p in bundle.rglob("*.h5")) < 2 << 20
    store = ContentStore(tmp_path / "c")
    with pytest.raises(IntegrityError, match="compress"):
        import_bundle(store, bundle)
    assert store.index.query("SELECT COUNT(*) FROM items")[0][0] == 0


def test_an_item_over_the_per_item_limit_is_refused(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sharing.limits, "MAX_IMPORT_ITEM_BYTES", 1 << 20)
    rng = np.random.default_rng(0)
    bundle = _h5_bundle(tmp_path, rng.integers(0, 255, 2 << 20, dtype=np.uint8))
    with pytest.raises(IntegrityError, match="per-item limit"):
        import_bundle(ContentStore(tmp_path / "c"), bundle)


def test_an_oversized_bundle_json_is_refused_before_it_is_read(tmp_path: Path) -> None:
    bundle = tmp_path / "big_json"
    bundle.mkdir()
    (bundle / "bundle.json").write_bytes(b" " * (sharing.limits.MAX_BUNDLE_JSON_BYTES + 1))
    with pytest.raises(IntegrityError, match="over the limit"):
        import_bundle(ContentStore(tmp_path / "c"), bundle)


def _tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]], path: Path,
              mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_tar_limits_are_checked_while_streaming_before_writing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ContentStore(tmp_path / "c")
    tmp = store.root / "tmp"

    # too many members: refused at the limit, nothing extracted
    monkeypatch.setattr(sharing.limits, "MAX_TAR_MEMBERS", 20)
    members = []
    for i in range(200):
        name = shard_io.new_shard_name()[:-4] + f"{i:04x}"
        info = tarfile.TarInfo(shard_io.shard_relpath(name))
        info.size = 1
        members.append((info, b"x"))
    with pytest.raises(IntegrityError, match="more than 20 members"):
        import_bundle(store, _tar_with(members, tmp_path / "many.tar"))
    assert not list(tmp.rglob("*.h5")) if tmp.exists() else True

    # a member declaring far more than the archive could hold when compressed: a bomb
    big = tarfile.TarInfo(shard_io.shard_relpath(shard_io.new_shard_name()))
    payload = bytes(64 << 20)  # 64 MiB of zeros gzip to ~64 KB
    big.size = len(payload)
    bomb = _tar_with([(big, payload)], tmp_path / "bomb.tar.gz", "w:gz")
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(IntegrityError, match="compress"):
        import_bundle(store, bomb)
    assert not (tmp.exists() and any(p.is_file() for p in tmp.rglob("*")))

    # a member whose declared size is over the per-member limit is refused unread
    monkeypatch.setattr(sharing.limits, "MAX_TAR_MEMBER_BYTES", 1 << 20)
    huge = tarfile.TarInfo(shard_io.shard_relpath(shard_io.new_shard_name()))
    huge.size = 2 << 20
    with pytest.raises(IntegrityError, match="declares"):
        import_bundle(store, _tar_with([(huge, bytes(2 << 20))], tmp_path / "huge.tar"))
    assert store.index.query("SELECT COUNT(*) FROM items")[0][0] == 0


# ---------------------------------------------------------------------------- defect 12
@pytest.mark.parametrize("where", ["entry object", "legacy index.json"])
@pytest.mark.parametrize("entry", ["oops", ["a"], {"datasets": 5}, {"datasets": [1, 2]},
                                   {"sha256": 7}, {"bytes": "many"}, None])
def test_a_remote_index_with_wrongly_typed_entries_is_a_clear_error(
        source: dict, tmp_path: Path, entry, where: str) -> None:
    src = ContentStore(source["cache"])
    remote = tmp_path / "remote"
    push(src, str(remote))
    index = remote_index(str(remote))
    victim_entry = sorted(index)[0]
    if where == "entry object":  # a second, malformed entry object beside the good one
        bad = remote / "index" / victim_entry[:6] / f"{victim_entry}.{'0' * 16}.json"
        bad.write_text(json.dumps(entry))
    else:  # remotes written before entry objects existed kept one index.json
        index[victim_entry] = entry
        (remote / "index.json").write_text(json.dumps(
            {"format": sharing.REMOTE_FORMAT, "version": 1, "shards": index}))
    other = ContentStore(tmp_path / "other")
    for op in (lambda: pull(other, str(remote), dataset=DS), lambda: pull(other, str(remote)),
               lambda: push(src, str(remote))):
        with pytest.raises(IntegrityError) as err:
            op()
        assert str(remote) in str(err.value) and victim_entry in str(err.value), err.value
    assert not list((other.root / "tmp").glob("*.partial")) if (other.root / "tmp").exists() \
        else True
    assert not list((remote / "tmp").glob("*.partial")) if (remote / "tmp").exists() else True
    assert other.index.query("SELECT COUNT(*) FROM shards")[0][0] == 0
    src.close()


# ---------------------------------------------------------------------------- defect 13
def test_the_next_export_cleans_a_killed_exports_partials(source: dict,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead_dir = out / ".b1.0123abcd.partial"  # a killed directory export
    (dead_dir / "shards").mkdir(parents=True)
    (dead_dir / "shards" / "x.h5").write_bytes(b"half")
    dead_tar = out / ".b2.tar.89abcdef.partial"  # a killed tar export
    dead_tar.write_bytes(b"half a tar")
    live = out / ".b3.tar.fedcba98.partial"  # an export still running (holds its lock)
    live.write_bytes(b"being written")
    mine = out / ".notes.txt.partial"  # not an export's name: never touched
    mine.write_text("mine")
    src = ContentStore(source["cache"])
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        export_bundle(src, DS, layers="raw", out=out / "b4.tar")
    assert not dead_dir.exists() and not dead_tar.exists()
    assert live.exists() and mine.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [live.name, mine.name, "b4.tar"])
    src.close()
