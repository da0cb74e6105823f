"""Sharing caches: dataset bundles (export/import) and a remote shard tier (push/pull).

Acceptance: a bundle imported into an empty cache serves ``CachedDataset(offline=True)``
with zero network requests (predictions of a PAD model included); a bundle with one byte
changed imports nothing; two caches exchange shards through a local-directory remote.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import h5py
import pytest

from pad_assets import maintenance as mt
from pad_assets.dataset import CachedDataset
from pad_assets.devtools.emulator import DatasetSpec, Emulator, ModelArtifact
from pad_assets.errors import IntegrityError, InvalidInputError
from pad_assets.settings import Settings
from pad_assets.sharing import export_bundle, import_bundle, pull, push
from pad_assets.sharing.remote import remote_index
from pad_assets.store import ContentStore
from pad_assets.store.fs import file_sha256
from pad_assets_tests.conftest import make_config
from pad_assets_tests.model_fixtures import TINY_DRUG_LABELS

pytest_plugins = ["pad_assets_tests.model_fixtures"]

DS, OTHER = "shareA", "shareB"
DS_IDS = list(range(52000, 52006))
OTHER_IDS = list(range(52100, 52104))
MODEL_ID = 931


@pytest.fixture(scope="module")
def emu(tiny_tflite_path: Path) -> Emulator:
    model = ModelArtifact(
        record={"id": MODEL_ID, "name": "tiny_share", "type": "tf_lite",
                "labels": TINY_DRUG_LABELS, "version": "1"},
        filename="tiny_share.tflite", data=Path(tiny_tflite_path).read_bytes())
    config = make_config([DatasetSpec(DS, DS_IDS), DatasetSpec(OTHER, OTHER_IDS)],
                         models=[model])
    with Emulator(config) as e:
        yield e


def _settings(emu: Emulator, cache: Path, offline: bool = False) -> Settings:
    return Settings(cache_dir=cache, api_url=emu.base_url, registry_url=emu.registry_url,
                    offline=offline, http_retries=1)


def _adapter(settings: Settings):
    from pad_assets.models.tflite import PADTensorFlowAdapter

    return PADTensorFlowAdapter(model_id=MODEL_ID, settings=settings)


@pytest.fixture(scope="module")
def source(emu: Emulator, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A cache with DS fully computed (raw -> prediction by a PAD model) and OTHER raw."""
    cache = tmp_path_factory.mktemp("share_src") / "cache"
    s = _settings(emu, cache)
    ds = CachedDataset(DS, settings=s, progress=False)
    ds.download_and_cache()
    results = ds.apply_model(_adapter(s))
    CachedDataset(OTHER, settings=s, store=ds.store, progress=False).download_and_cache()
    ds.close()
    return {"cache": cache, "results": results}


def _layer_counts(store: ContentStore) -> dict[str, int]:
    return dict(store.index.query("SELECT layer, COUNT(*) FROM items GROUP BY layer"))


def test_export_import_serves_an_offline_dataset_with_zero_requests(
        emu: Emulator, source: dict, tmp_path: Path) -> None:
    src = ContentStore(source["cache"])
    report = export_bundle(src, DS, out=tmp_path / "bundle")
    assert report.items == {"raw": 6, "tensor": 6, "prediction": 6, "manifest": 1,
                            "model_record": 1, "weights": 1}
    assert report.cards == len(DS_IDS)
    manifest = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert manifest["dataset"] == DS and manifest["files"]
    for f in manifest["files"]:
        assert file_sha256(tmp_path / "bundle" / f["path"]) == f["sha256"]
    assert not any(k.startswith(str(OTHER)) for k in manifest["contents"]["refs"])

    dest = tmp_path / "fresh"
    imported = import_bundle(ContentStore(dest), tmp_path / "bundle")
    assert imported.items["raw"] == len(DS_IDS) and imported.already_cached == 0
    assert imported.ignored == [], "an honest bundle's refs and cards all verify"
    emu.reset_stats()
    offline = _settings(emu, dest, offline=True)
    ds = CachedDataset(DS, settings=offline, progress=False)
    assert ds.cards()["cache_status"].eq("ok").all()
    results = ds.apply_model(_adapter(offline))
    assert results["cached"].all()
    assert results["prediction"].tolist() == source["results"]["prediction"].tolist()
    assert results["prediction_key"].tolist() == source["results"]["prediction_key"].tolist()
    assert emu.stats()["total"] == 0, emu.stats()["by_path"]
    assert OTHER not in {d for (d,) in ds.store.index.query("SELECT DISTINCT dataset FROM cards")}
    assert mt.verify(ds.store).ok
    ds.close()

    # importing again adds records nobody needs: nothing new is written for items
    again = import_bundle(ContentStore(dest), tmp_path / "bundle")
    assert again.already_cached == sum(again.items.values())


def test_tar_bundle_roundtrip_and_layer_choice(source: dict, tmp_path: Path) -> None:
    src = ContentStore(source["cache"])
    report = export_bundle(src, DS, layers="raw,preprocessed", out=tmp_path / "b.tar")
    assert set(report.items) == {"raw", "preprocessed", "manifest"}
    with pytest.raises(InvalidInputError, match="already exists"):
        export_bundle(src, DS, out=tmp_path / "b.tar")
    with pytest.raises(InvalidInputError, match="'pixels'"):
        export_bundle(src, DS, layers="raw,pixels", out=tmp_path / "c")
    with pytest.raises(InvalidInputError, match="no cards"):
        export_bundle(src, "notCached", out=tmp_path / "d")
    dest = ContentStore(tmp_path / "dest")
    out = import_bundle(dest, tmp_path / "b.tar")
    assert out.items == {"raw": 6, "preprocessed": 6, "manifest": 1}
    assert _layer_counts(dest) == {"raw": 6, "preprocessed": 6, "manifest": 1}
    assert not list((dest.root / "tmp").glob("import-*")), "extraction leftovers removed"


def _tamper_payload(path: Path) -> None:
    with h5py.File(path, "r+", locking=False) as f:
        name = sorted(f["blobs"].keys())[0]
        data = f["blobs"][name][()]
        data.reshape(-1)[0] ^= 0x01
        f["blobs"][name][...] = data


def _empty_after_refusal(store: ContentStore) -> None:
    assert store.index.query("SELECT COUNT(*) FROM items")[0][0] == 0
    assert store.index.query("SELECT COUNT(*) FROM shards")[0][0] == 0
    assert not list((store.root / "shards").rglob("*.h5"))


def test_tampered_bundles_are_refused_and_import_nothing(source: dict, tmp_path: Path) -> None:
    src = ContentStore(source["cache"])
    good = tmp_path / "good"
    export_bundle(src, DS, layers="raw,tensors", out=good)
    files = json.loads((good / "bundle.json").read_text())["files"]

    # one byte changed in a shard file: its sha256 no longer matches bundle.json
    one = tmp_path / "one_byte"
    shutil.copytree(good, one)
    victim = one / files[0]["path"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    store = ContentStore(tmp_path / "t1")
    with pytest.raises(IntegrityError, match="refused, nothing was imported.*sha256"):
        import_bundle(store, one)
    _empty_after_refusal(store)

    # a payload changed and bundle.json "fixed" to match: the payload digest catches it
    forged = tmp_path / "forged"
    shutil.copytree(good, forged)
    _tamper_payload(forged / files[0]["path"])
    manifest = json.loads((forged / "bundle.json").read_text())
    manifest["files"][0]["sha256"] = file_sha256(forged / files[0]["path"])
    (forged / "bundle.json").write_text(json.dumps(manifest))
    store = ContentStore(tmp_path / "t2")
    with pytest.raises(IntegrityError, match="failed its checksum"):
        import_bundle(store, forged)
    _empty_after_refusal(store)

    # an unlisted extra shard, and a tar with a path that escapes
    extra = tmp_path / "extra"
    shutil.copytree(good, extra)
    rel = Path(files[0]["path"])
    shutil.copy(extra / rel, extra / rel.parent / "20200101T000000-0123456789abcdef.h5")
    store = ContentStore(tmp_path / "t3")
    with pytest.raises(IntegrityError, match="not listed"):
        import_bundle(store, extra)
    _empty_after_refusal(store)
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        tar.add(good / "bundle.json", arcname="bundle.json")
        tar.add(good / files[0]["path"], arcname="../escape.h5")
    with pytest.raises(IntegrityError, match="unexpected member"):
        import_bundle(store, evil)
    _empty_after_refusal(store)
    assert not (tmp_path / "escape.h5").exists()
    with pytest.raises(InvalidInputError, match="does not exist"):
        import_bundle(store, tmp_path / "nope")


def test_push_pull_between_two_caches_through_a_local_directory(
        emu: Emulator, source: dict, tmp_path: Path) -> None:
    src = ContentStore(source["cache"])
    remote = tmp_path / "remote"
    first = push(src, f"file://{remote}")
    assert first.pushed and not first.skipped
    index = remote_index(str(remote))
    assert set(index) == set(first.pushed)
    assert any(DS in e["datasets"] for e in index.values())
    assert not (remote / "index.json").exists()  # one immutable entry object per shard
    assert not list((remote / "tmp").glob("*.partial"))
    assert push(src, str(remote)).pushed == []  # immutable names: nothing to do twice

    # a second cache pulls only DS, verifies it, and works offline with zero requests
    other = ContentStore(tmp_path / "other")
    got = pull(other, str(remote), dataset=DS)
    assert got.pulled and not got.failed and not got.missing_payloads and not got.ignored
    assert mt.verify(other).ok
    emu.reset_stats()
    offline = _settings(emu, other.root, offline=True)
    ds = CachedDataset(DS, settings=offline, store=other, progress=False)
    assert ds.apply_model(_adapter(offline))["cached"].all()
    assert emu.stats()["total"] == 0
    assert other.cards(OTHER) == {} and len(got.pulled) < len(first.pushed)

    # the second cache adds a dataset of its own and pushes; a third cache pulls it all
    online = _settings(emu, other.root)
    CachedDataset(OTHER, settings=online, store=other, progress=False).download_and_cache()
    back = push(other, str(remote))
    assert back.pushed
    third = ContentStore(tmp_path / "third")
    full = pull(third, f"file://{remote}")
    # OTHER was downloaded by both caches: the second copy's shards hold the same items,
    # refs and cards, so they are verified and left out rather than stored twice
    assert full.already_here and not full.failed and not full.ignored
    assert len(full.pulled) + full.already_here == len(remote_index(str(remote)))
    assert set(third.cards(OTHER)) == set(OTHER_IDS) and set(third.cards(DS)) == set(DS_IDS)
    # content, whichever of two equal shards came first: every item, card and ref that the
    # two pushing caches hold, and every payload reads back verified
    def content(store: ContentStore) -> tuple[set, set, set]:
        q = store.index.query
        return ({r for (r,) in q("SELECT key FROM items")},
                {(d, c, k, st) for d, c, k, st in q(
                    "SELECT dataset, card_id, raw_key, status FROM cards")},
                {(n, k) for n, k in q("SELECT name, key FROM refs")})
    src_c, other_c, third_c = content(src), content(other), content(third)
    assert third_c[0] == src_c[0] | other_c[0]
    assert third_c[1] == src_c[1] | other_c[1]
    assert third_c[2] == src_c[2] | other_c[2]
    assert len(third.get_many(sorted(third_c[0]))) == len(
        {k for (k,) in third.index.query("SELECT key FROM items WHERE blob IS NOT NULL")})
    assert pull(third, str(remote)).pulled == []

    with pytest.raises(InvalidInputError, match="no shards for dataset"):
        pull(third, str(remote), dataset="nothingHere")
    with pytest.raises(InvalidInputError, match="holds no pad_assets shards"):
        pull(third, str(tmp_path / "empty_remote"))


def test_pull_refuses_a_damaged_remote_shard(source: dict, tmp_path: Path) -> None:
    src = ContentStore(source["cache"])
    remote = tmp_path / "remote"
    pushed = push(src, str(remote)).pushed
    index = remote_index(str(remote))
    biggest = max(pushed, key=lambda n: index[n]["bytes"])
    _tamper_payload(remote / index[biggest]["path"])
    other = ContentStore(tmp_path / "other")
    with pytest.raises(IntegrityError, match=f"{biggest}.*sha256"):
        pull(other, str(remote))
    assert biggest not in other.index.shard_paths()
    assert not (other.root / index[biggest]["path"]).exists()
    report = pull(other, str(remote), strict=False)  # the good ones are already here
    assert report.already_here == len(pushed) - 1 and report.failed
    counts = mt.verify(other).counts
    assert "corrupt_blob" not in counts and "unreadable_shard" not in counts


def test_pull_skips_remote_shards_whose_content_this_cache_already_holds(
        tmp_path: Path) -> None:
    """After a local gc merged small shards, their originals on the remote bring nothing new:
    pull verifies them and leaves them out instead of storing the same content twice."""
    from pad_assets.hashing import sha256_bytes
    from pad_assets.store import CardRecord, NewItem

    store = ContentStore(tmp_path / "c")
    for i in range(mt.MERGE_MIN_SHARDS):
        data = f"payload {i}".encode() * 100
        store.put([NewItem(sha256_bytes(data), "raw", data, {})],
                  cards=[CardRecord("small", i, sha256_bytes(data), "ok")])
    remote = tmp_path / "remote"
    assert len(push(store, str(remote)).pushed) == mt.MERGE_MIN_SHARDS
    merged = mt.gc(store, grace_seconds=0.0)
    assert len(merged.compacted) == mt.MERGE_MIN_SHARDS and len(merged.new_shards) == 1
    shards_before = set(store.index.shard_paths())
    back = pull(store, str(remote))
    assert back.pulled == [] and back.already_here == mt.MERGE_MIN_SHARDS
    assert set(store.index.shard_paths()) == shards_before
    assert mt.verify(store).ok and mt.stats(store).dead_bytes == 0
