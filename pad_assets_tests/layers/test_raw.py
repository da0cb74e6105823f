"""Issue 2 acceptance: the raw layer against the real emulator over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from pad_assets.dataset import CachedDataset
from pad_assets.devtools.emulator import DatasetSpec, EdgeCases, Emulator, EmulatorConfig
from pad_assets.errors import InvalidInputError, ManifestError, OfflineError, UnknownDatasetError
from pad_assets.settings import Settings
from pad_assets.store import ContentStore


def _settings(emu: Emulator, cache: Path, **kw) -> Settings:
    return Settings(cache_dir=cache, api_url=emu.base_url, registry_url=emu.registry_url,
                    http_retries=3, **kw)


@pytest.fixture(scope="module")
def shared_emulator():
    config = EmulatorConfig(datasets=[
        DatasetSpec("A60", range(20000, 20060)),
        DatasetSpec("B_shares_20", [*range(20040, 20060), *range(30000, 30030)]),
        DatasetSpec("K64", range(40000, 40064)),
    ], models_provider=lambda: [])
    with Emulator(config) as emu:
        yield emu


def test_download_summary_reads_as_printed() -> None:
    """The summary ``download_and_cache`` returns and the CLI prints: counts, MB (10^6
    bytes), then one line per failed card, the truncated and unverified cards, warnings."""
    from pad_assets.layers.raw import DownloadSummary

    s = DownloadSummary("FHI2020", total=5, downloaded=[1, 2, 3], reused=[4],
                        failed={9: "HTTP 404", 5: "md5 mismatch"}, truncated=[3],
                        unverified=[2], bytes_downloaded=1_250_001, seconds=2.04,
                        warnings=["registry lists card 7 twice"])
    assert str(s) == (
        "FHI2020: 5 cards, 3 downloaded (1.3 MB), 1 already cached, 2 failed, 1 truncated "
        "[2.0 s]\n"
        "  failed card 5: md5 mismatch\n"
        "  failed card 9: HTTP 404\n"
        "  truncated PNGs (decoded with tolerance, flagged): [3]\n"
        "  unverified (no md5 published; first download's sha256 is the reference): 1 card(s)\n"
        "  warning: registry lists card 7 twice")
    assert not s.ok
    assert str(DownloadSummary("X")) == (
        "X: 0 cards, 0 downloaded (0.0 MB), 0 already cached, 0 failed, 0 truncated [0.0 s]")


def test_download_once_then_zero_requests_and_shared_cards_fetched_once(
        shared_emulator: Emulator, tmp_path: Path) -> None:
    emu = shared_emulator
    emu.reset_stats()
    a = CachedDataset("A60", settings=_settings(emu, tmp_path), progress=False)
    s1 = a.download_and_cache()
    assert len(s1.downloaded) == 60 and not s1.failed
    assert emu.stats()["image"] == 60

    emu.reset_stats()
    s2 = a.download_and_cache()
    assert emu.stats()["image"] == 0
    assert len(s2.reused) == 60 and not s2.downloaded

    emu.reset_stats()
    b = CachedDataset("B_shares_20", settings=_settings(emu, tmp_path), progress=False)
    s3 = b.download_and_cache()
    assert emu.stats()["image"] == 30  # only the cards A did not have
    assert len(s3.downloaded) == 30 and len(s3.reused) == 20
    raw_items = a.store.index.query("SELECT COUNT(*) FROM items WHERE layer='raw'")[0][0]
    assert raw_items == 90  # the 20 shared cards are stored once


def test_offline_lists_missing_and_makes_no_request(shared_emulator: Emulator,
                                                    tmp_path: Path) -> None:
    emu = shared_emulator
    online = CachedDataset("A60", settings=_settings(emu, tmp_path), progress=False)
    online.manifest()  # manifest cached, images not
    emu.reset_stats()
    off = CachedDataset("A60", settings=_settings(emu, tmp_path, offline=True), progress=False)
    with pytest.raises(OfflineError) as err:
        off.download_and_cache()
    assert len(err.value.missing) == 60 and "card 20000" in str(err.value)
    assert emu.stats()["total"] == 0


@pytest.fixture
def edge_emulator():
    with Emulator(EmulatorConfig(slow_seconds=0.3, models_provider=lambda: [])) as emu:
        yield emu


def test_edge_cases_give_specific_outcomes_and_keep_the_cache(edge_emulator: Emulator,
                                                             tmp_path: Path) -> None:
    emu = edge_emulator
    ds = CachedDataset(EdgeCases.DATASET, settings=_settings(emu, tmp_path), progress=False)
    s = ds.download_and_cache()
    assert "md5 mismatch" in s.failed[EdgeCases.MD5_MISMATCH]
    assert "404" in s.failed[EdgeCases.MISSING_IMAGE]
    assert EdgeCases.TRUNCATED_PNG in s.downloaded and EdgeCases.TRUNCATED_PNG in s.truncated
    assert EdgeCases.FLAKY in s.downloaded  # a 500 that succeeds on retry
    assert EdgeCases.SLOW in s.downloaded
    assert set(s.failed) == {EdgeCases.MD5_MISMATCH, EdgeCases.MISSING_IMAGE}
    cards = ds.cards().set_index("card_id")
    assert cards.loc[EdgeCases.MD5_MISMATCH, "cache_status"] == "failed"
    assert pd.isna(cards.loc[EdgeCases.MD5_MISMATCH, "raw_key"])  # nothing cached from it
    raw_items = ds.store.index.query("SELECT COUNT(*) FROM items WHERE layer='raw'")[0][0]
    assert raw_items == len(s.downloaded)
    trunc_key = cards.loc[EdgeCases.TRUNCATED_PNG, "raw_key"]
    assert ds.store.metas([trunc_key])[trunc_key]["truncated"] is True
    before = set(ds.store.index.query("SELECT key FROM items"))
    again = ds.download_and_cache()  # failures retried, successes kept
    assert set(again.failed) == set(s.failed)
    assert before <= set(ds.store.index.query("SELECT key FROM items"))
    assert "md5 mismatch" in str(again)


def test_bad_dataset_names_and_unknown_datasets(edge_emulator: Emulator, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="invalid dataset name"):
        CachedDataset("../x", settings=_settings(edge_emulator, tmp_path))
    ds = CachedDataset("no_such_dataset", settings=_settings(edge_emulator, tmp_path),
                       progress=False)
    with pytest.raises(UnknownDatasetError, match="no_such_dataset"):
        ds.download_and_cache()


def _local_registry(tmp_path: Path, emu: Emulator, rows: list[str]) -> Settings:
    d = tmp_path / "registry" / "LOCAL"
    d.mkdir(parents=True)
    header = "id,sample_id,sample_name,quantity,camera_type_1,url,hashlib_md5,image_name"
    (d / "metadata_dev.csv").write_text("\n".join([header, *rows]) + "\n")
    return Settings(cache_dir=tmp_path / "cache", api_url=emu.base_url,
                    registry_url=str(tmp_path / "registry"))


def test_off_host_and_non_http_urls_in_a_manifest_are_refused(edge_emulator: Emulator,
                                                              tmp_path: Path) -> None:
    good = edge_emulator.image_url(EdgeCases.NORMAL[0])
    settings = _local_registry(tmp_path, edge_emulator, [
        f"1,1,amoxicillin,100,P,{good},,a.png",
        "2,2,amoxicillin,100,P,https://evil.example.com/x.png,,b.png",
        "3,3,amoxicillin,100,P,file:///etc/passwd,,c.png",
    ])
    edge_emulator.reset_stats()
    s = CachedDataset("LOCAL", settings=settings, progress=False).download_and_cache()
    assert s.downloaded == [1]
    assert "not a configured PAD or registry host" in s.failed[2]
    assert "only http and https" in s.failed[3]
    assert edge_emulator.stats()["image"] == 1


def test_malformed_manifest_is_a_clear_error_and_caches_nothing(edge_emulator: Emulator,
                                                                tmp_path: Path) -> None:
    settings = _local_registry(tmp_path, edge_emulator, ["1,1,amoxicillin,100"])
    ds = CachedDataset("LOCAL", settings=settings, progress=False)
    with pytest.raises(ManifestError, match="line 2: 4 fields"):
        ds.download_and_cache()
    assert ds.store.index.query("SELECT COUNT(*) FROM items")[0][0] == 0


KILLED = textwrap.dedent("""
    import sys
    from pad_assets.dataset import CachedDataset
    from pad_assets.settings import Settings
    s = Settings(cache_dir=sys.argv[1], api_url=sys.argv[2], registry_url=sys.argv[3],
                 download_workers=2)
    print(CachedDataset("K64", settings=s, progress=False).download_and_cache(), flush=True)
""")


def _shards(cache: Path) -> int:
    return len(list((cache / "shards").glob("*/*.h5"))) if (cache / "shards").exists() else 0


@pytest.mark.parametrize("kill_at_shard", [1, 3])
def test_sigkill_mid_download_loses_nothing_and_rerun_completes(
        shared_emulator: Emulator, tmp_path: Path, kill_at_shard: int) -> None:
    emu = shared_emulator
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(cache), emu.base_url,
                             emu.registry_url], stdout=subprocess.DEVNULL)
    deadline = time.time() + 60
    # shard 1 is the manifest; later shards are image batches: kill while images flow
    while _shards(cache) < 1 + kill_at_shard and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = ContentStore(cache)
    cards = store.cards("K64")
    ok = {c: v["raw_key"] for c, v in cards.items() if v["status"] == "ok"}
    assert store.has(list(ok.values())) == set(ok.values())  # no half-indexed item
    for key in ok.values():
        store.get(key)  # every committed item verifies
    assert 0 < len(ok) < 64  # killed in the middle, after some batches committed
    ds = CachedDataset("K64", settings=_settings(emu, cache), progress=False)
    emu.wait_idle()  # the killed client's last requests are still being answered
    emu.reset_stats()
    s = ds.download_and_cache()
    assert not s.failed and len(s.reused) == len(ok) and len(s.downloaded) == 64 - len(ok)
    assert emu.stats()["image"] == 64 - len(ok) + ds.api.http.stats.retries
