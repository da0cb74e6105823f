"""What the raw layer records about each card, as the lab's auditor reads it.

Every raw item carries where its bytes came from and how they were checked (md5 published
by the registry, or, for API dumps that publish none, the sha256 of the card's first
download), and every card of a dataset has a record saying whether its image is cached,
and if not, why. These tests read those records after real downloads from the emulator
over HTTP: the exact fields, failures that come alone, and an API-dump card whose image
gc evicted and whose server then sends other bytes. (Written for survivors of the layers
mutation run: ``_download`` had 52.)
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from pad_assets import maintenance as mt
from pad_assets.dataset import CachedDataset
from pad_assets.devtools.emulator import EdgeCases, Emulator, EmulatorConfig
from pad_assets.devtools.emulator.catalog import registry_extracts
from pad_assets.hashing import md5_bytes, sha256_bytes
from pad_assets.settings import Settings

FIRST = "unverified: first download, its sha256 is the reference"


def _settings(emu: Emulator, cache: Path) -> Settings:
    return Settings(cache_dir=cache, api_url=emu.base_url, registry_url=emu.registry_url,
                    http_retries=1)


@pytest.fixture(scope="module")
def edge_emulator():
    with Emulator(EmulatorConfig(slow_seconds=0.0, models_provider=list)) as emu:
        yield emu


def test_each_raw_item_records_its_source_and_how_it_was_checked(edge_emulator: Emulator,
                                                                  tmp_path: Path) -> None:
    ds = CachedDataset(EdgeCases.DATASET, settings=_settings(edge_emulator, tmp_path),
                       progress=False)
    t0 = time.time()
    summary = ds.download_and_cache()
    t1 = time.time()
    assert summary.unverified == []  # the registry publishes an md5 for every card
    assert summary.bytes_downloaded == sum(
        len(ds.store.get(k)) for k in ds.cards().drop_duplicates("card_id")["raw_key"].dropna())
    cards = ds.cards().set_index("card_id")
    cid = EdgeCases.SLOW
    key = cards.loc[cid, "raw_key"]
    data = ds.store.get(key)
    meta = ds.store.metas([key])[key]
    assert {k: meta[k] for k in ("sha256", "md5", "nbytes", "verified_by", "truncated",
                                 "first_card_id", "first_dataset")} == {
        "sha256": sha256_bytes(data), "md5": md5_bytes(data), "nbytes": len(data),
        "verified_by": "md5", "truncated": False, "first_card_id": cid,
        "first_dataset": EdgeCases.DATASET}
    assert key == meta["sha256"]
    assert t0 <= meta["fetched_at"] <= t1
    assert meta["source_url"].startswith(edge_emulator.base_url + "/")
    assert meta["source_url"].endswith(f"/{cid}_processed.png")
    # the record of a card that failed says why, in the summary's words, and holds no key
    records = ds.store.cards(EdgeCases.DATASET)
    for bad in (EdgeCases.MD5_MISMATCH, EdgeCases.MISSING_IMAGE):
        assert (records[bad]["status"], records[bad]["raw_key"], records[bad]["detail"]) == (
            "failed", None, summary.failed[bad])
    assert records[EdgeCases.TRUNCATED_PNG]["detail"] == "truncated PNG: decoded with tolerance"
    assert records[cid]["detail"] == ""
    # the next call downloads nothing and still flags the truncated card, from its record
    again = ds.download_and_cache()
    assert again.downloaded == [] and again.bytes_downloaded == 0
    assert again.truncated == [EdgeCases.TRUNCATED_PNG]
    ds.close()


def test_a_download_is_written_in_batches_of_sixteen_images(tmp_path: Path) -> None:
    """Each write batch is one shard, indexed with its cards in one transaction: a kill
    loses at most the batch in flight (``test_raw.py`` kills one; here the batches)."""
    from pad_assets.devtools.emulator import DatasetSpec
    from pad_assets.layers.raw import WRITE_BATCH_ITEMS
    from pad_assets_tests.conftest import make_config

    with Emulator(make_config([DatasetSpec("batches", range(71000, 71060))], models=[])) as emu:
        ds = CachedDataset("batches", settings=_settings(emu, tmp_path), progress=False)
        ids = sorted(int(c) for c in ds.cards()["card_id"])[:2 * WRITE_BATCH_ITEMS + 2]
        summary = ds.download_and_cache(card_ids=ids)
        assert sorted(summary.downloaded) == ids
        keys = [ds.store.cards("batches")[c]["raw_key"] for c in ids]
        shards = [e["shard"] for e in ds.store.index.items(keys).values()]
        assert sorted(Counter(shards).values()) == [2, WRITE_BATCH_ITEMS, WRITE_BATCH_ITEMS]
        ds.close()


def test_a_download_where_every_card_fails_still_records_each_failure(
        edge_emulator: Emulator, tmp_path: Path) -> None:
    ds = CachedDataset(EdgeCases.DATASET, settings=_settings(edge_emulator, tmp_path),
                       progress=False)
    bad = sorted([EdgeCases.MD5_MISMATCH, EdgeCases.MISSING_IMAGE])
    summary = ds.download_and_cache(card_ids=bad)
    assert sorted(summary.failed) == bad and summary.downloaded == []
    records = ds.store.cards(EdgeCases.DATASET)
    assert {c: (r["status"], r["detail"]) for c, r in records.items()} == {
        c: ("failed", summary.failed[c]) for c in bad}
    cards = ds.cards().set_index("card_id")
    assert list(cards.loc[bad, "cache_status"]) == ["failed", "failed"]
    ds.close()


def test_an_api_dump_card_keeps_its_reference_through_eviction_and_a_bad_download(
        tmp_path: Path) -> None:
    """A card without a published md5: its first download's sha256 is the reference. gc
    evicts the image; the server then sends other bytes: refused, and the card's record
    keeps the reference (so the next download is still checked against it) and says why.
    Once the server sends the right bytes again they are cached, checked by that sha256."""
    served = tmp_path / "served"
    served.mkdir()
    spec = next(d for d in registry_extracts() if d.name == "FHI2021_extract")
    cid, other = (int(c) for c in spec.card_ids[:2])
    with Emulator(EmulatorConfig(datasets=[spec], models_provider=list,
                                 real_images_dir=served)) as emu:
        ds = CachedDataset(spec.name, settings=_settings(emu, tmp_path / "c"), progress=False)
        first = ds.download_and_cache(card_ids=[cid, other])
        assert sorted(first.unverified) == sorted([cid, other]) and first.ok
        key = ds.raw.raw_keys(spec.name, [cid])[cid]
        assert ds.store.metas([key])[key]["verified_by"] == FIRST
        wrong = ds.store.get(ds.raw.raw_keys(spec.name, [other])[other])

        # while the image is cached, a bad download is reported and changes nothing
        (served / f"{cid}_processed.png").write_bytes(wrong)
        refused = ds.download_and_cache(force_refresh=True, card_ids=[cid])
        assert "sha256 mismatch" in refused.failed[cid]
        assert ds.store.cards(spec.name)[cid] == {**ds.store.cards(spec.name)[cid],
                                                  "raw_key": key, "status": "ok"}
        (served / f"{cid}_processed.png").unlink()
        # a first download of bytes that are no image at all: refused, naming the card and
        # where the bytes came from
        third = int(spec.card_ids[2])
        (served / f"{third}_processed.png").write_bytes(b"<html>Service Unavailable</html>")
        junk = ds.download_and_cache(card_ids=[third])
        assert junk.failed[third].startswith(
            f"card {third} ({emu.base_url}/var/www/html/images/padimages/processed/30000/"
            f"{third}_processed.png): not a PNG or JPEG image")
        assert ds.store.cards(spec.name)[third]["status"] == "failed"
        (served / f"{third}_processed.png").unlink()

        rep = mt.gc(ds.store, older_than=0, grace_seconds=0)
        assert rep.evicted.get("raw") == 2 and rep.cards_marked_evicted == 2
        assert ds.store.cards(spec.name)[cid]["status"] == "evicted"

        (served / f"{cid}_processed.png").write_bytes(wrong)
        bad = ds.download_and_cache(card_ids=[cid])
        assert "sha256 mismatch" in bad.failed[cid] and key in bad.failed[cid]
        record = ds.store.cards(spec.name)[cid]
        assert (record["status"], record["raw_key"], record["detail"]) == (
            "failed", key, bad.failed[cid])
        assert ds.store.has([key, sha256_bytes(wrong)]) == set()  # nothing cached from it

        (served / f"{cid}_processed.png").unlink()
        good = ds.download_and_cache(card_ids=[cid])
        assert good.ok and good.downloaded == [cid] and good.unverified == [cid]
        assert ds.raw.raw_keys(spec.name, [cid]) == {cid: key}
        assert ds.store.metas([key])[key]["verified_by"] == "sha256 reference"
        ds.close()
    shutil.rmtree(served)
