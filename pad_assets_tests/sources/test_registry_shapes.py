"""Every shape of the real PAD dataset registry, loaded as published.

The fixtures are real registry files (``pad_assets/devtools/emulator/fixtures/registry``, copied
from PaperAnalyticalDeviceND/pad_dataset_registry, Apache-2.0; see SOURCE.md): a v1.x
dataset with a val split, cards repeated within ``dev`` and cards in two splits; an API
dump without split files or md5; current columns with extra columns; no camera column.
They are read directly (local-folder registry) and through the emulator, which serves the
same rows with its own images. Expected counts come from reading the CSVs independently
(Python's ``csv``), never from the loader.

``PAD_REGISTRY_COPY`` (a local copy of the whole registry's ``datasets/`` folder) turns on
the full conformance check of every dataset folder.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pad_assets.comparison import compare_results
from pad_assets.dataset import CachedDataset
from pad_assets.devtools.emulator import Emulator, EmulatorConfig, ModelArtifact
from pad_assets.devtools.emulator.catalog import FIXTURES, registry_extracts
from pad_assets.errors import InvalidInputError, OfflineError
from pad_assets.models import PADTensorFlowAdapter
from pad_assets.settings import Settings
from pad_assets.sources.pad_api import http_client_for
from pad_assets.sources.registry import RegistryClient
from pad_assets.store import ContentStore
from pad_assets_tests.dataset.test_offline_and_hostile import NetGuard, net_guard  # noqa: F401
from pad_assets_tests.model_fixtures import TINY_DRUG_LABELS

pytest_plugins = ["pad_assets_tests.model_fixtures"]

BALANCED = "FHI360_FHI360-FHI2020_BalancedData_v1.0"
DUMP = "FHI2021"
ANNOTATED = "Leiberman-Lab_ChemoPADPLStraining2026_Annotated_v1.0"
TFDA = "TFDA_MSH-Tanzania_v2.0"
EXTRACT = "_extract"
MODEL_ID = 91


def published(folder: Path) -> dict[str, list[dict[str, str]]]:
    """Rows of each manifest CSV of a registry folder, read with the csv module."""
    out = {}
    for f in sorted(folder.glob("*.csv")):
        if f.name in ("labels.csv", "projects.csv", "class_distribution.csv"):
            continue
        split = {"metadata_dev.csv": "dev", "metadata_test.csv": "test",
                 "metadata_val.csv": "val"}.get(f.name, "test")
        out[split] = list(csv.DictReader(io.StringIO(f.read_text(encoding="utf-8-sig"))))
    return out


def local_client(folder: Path, tmp_path: Path) -> RegistryClient:
    s = Settings(cache_dir=tmp_path / "unused", registry_url=str(folder), offline=True)
    return RegistryClient(s, http_client_for(s))


# ---------------------------------------------------------------------- real files, directly
@pytest.mark.parametrize("name", [BALANCED, DUMP, ANNOTATED, TFDA])
def test_real_extract_loads_every_published_row_in_order(name: str, tmp_path: Path) -> None:
    want = published(FIXTURES / name)
    m = local_client(FIXTURES, tmp_path).load(name)
    assert m.split_counts == {k: len(v) for k, v in want.items()}
    for split, rows in want.items():
        got = m.rows[m.rows["split"] == split]
        assert list(got["card_id"]) == [int(r["id"]) for r in rows]
        assert list(got["position"]) == list(range(len(rows)))
        assert list(got["drug"]) == [r["sample_name"] for r in rows]


def test_v1x_repeats_and_cross_split_cards_are_kept_and_reported(tmp_path: Path) -> None:
    m = local_client(FIXTURES, tmp_path).load(BALANCED)
    dev = m.rows[m.rows["split"] == "dev"]
    assert list(dev["card_id"]).count(16844) == 2 and list(dev["card_id"]).count(16606) == 2
    assert m.duplicates == {"dev": 2}
    assert m.leakage["count"] == 4
    assert m.leakage["card_ids"] == [16822, 20781, 22166, 25254]
    assert m.leakage["pairs"] == {"dev/test": 2, "dev/val": 2}
    assert len(m.card_ids) == len(set(m.card_ids)) == 13
    assert any("leakage: 4 card id(s)" in w for w in m.warnings)
    assert m.files["metadata_dev.csv"]["shape"] == "v1.x"
    # Real v1.x URLs (single slash after the host) and md5s as published.
    row = m.rows.iloc[0]
    assert row["image_url"].startswith("https://pad.crc.nd.edu/var/www/html/images/")
    assert row["md5"] == "972b3dc915ec21bbe0ffd4a2559451aa"
    # labels.csv / projects.csv facts and the croissant's facts.
    assert m.meta["labels"][:2] == ["Albendazole", "Amoxicillin"] and len(m.meta["labels"]) == 21
    assert m.meta["projects"] == ["FHI2020", "FHI360"]
    assert m.meta["version"] == "ec795cc"
    assert m.meta["license"] == "https://www.apache.org/licenses/LICENSE-2.0"
    assert m.meta["name"] == BALANCED
    # The extracts are not the files the croissant hashed: stale, a warning, not a crash.
    assert any("croissant sha256 of metadata_dev.csv is stale" in w for w in m.warnings)


def test_api_dump_rows_are_unverified_test_rows_with_server_paths_as_urls(
        tmp_path: Path) -> None:
    m = local_client(FIXTURES, tmp_path).load(DUMP)
    assert m.files["FHI2021_dataset.csv"]["shape"] == "api-dump"
    assert m.files["FHI2021_dataset.csv"]["md5"] == "unverified"
    assert set(m.rows["split"]) == {"test"}
    assert m.rows["md5"].isna().all()
    assert all(u.startswith("https://pad.crc.nd.edu/var/www/html/images/padimages/processed/")
               for u in m.rows["image_url"])
    # The API's columns are kept by name (project.*, notes, deleted, issue.*).
    for col in ("project.project_name", "notes", "deleted", "issue.name", "raw_file_location"):
        assert col in m.extra_columns
    assert m.rows.iloc[0]["project.project_name"] == "FHI360_2021_blinded"
    assert m.meta["version"] == "b26340e" and m.croissant["distribution"] == []


def test_extra_columns_are_kept_and_survive_the_cache_round_trip(tmp_path: Path) -> None:
    m = local_client(FIXTURES, tmp_path).load(ANNOTATED)
    assert m.extra_columns == ["camera_bucket", "lighting", "background", "status",
                               "missing_card"]
    want = published(FIXTURES / ANNOTATED)["dev"]
    dev = m.rows[m.rows["split"] == "dev"]
    assert list(dev["lighting"]) == [r["lighting"] for r in want]
    assert list(dev["quantity"]) == [float(r["quantity"]) for r in want]
    back = type(m).from_json_bytes(m.to_json_bytes())
    pd.testing.assert_frame_equal(back.rows, m.rows)
    assert back.meta == m.meta
    tfda = local_client(FIXTURES, tmp_path).load(TFDA)
    assert tfda.rows["camera"].isna().all() and tfda.extra_columns == ["project.id"]


def test_local_folder_listing_and_the_datasets_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import json

    from pad_assets.cli import main as cli_main

    s = Settings(cache_dir=tmp_path / "c", registry_url=str(FIXTURES), offline=True)
    df = CachedDataset.list_datasets(settings=s)
    folders = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
    assert list(df["name"]) == folders
    assert dict(zip(df["name"], df["version"], strict=True))[BALANCED] == "ec795cc"
    monkeypatch.setenv("PAD_REGISTRY_URL", str(FIXTURES))
    assert cli_main(["--cache-dir", str(tmp_path / "c"), "datasets", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in out] == folders
    assert cli_main(["datasets", "--cache-dir", str(tmp_path / "c"), "--offline"]) == 0
    text = capsys.readouterr().out
    assert BALANCED in text and f"{len(folders)} dataset(s)" in text


def test_conformance_check_on_a_registry_copy_or_the_shipped_extracts() -> None:
    """``benchmarks/registry_conformance.py`` on ``PAD_REGISTRY_COPY`` (a local copy of the
    whole registry's ``datasets/`` folder) when given, else on the shipped real extracts."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.registry_conformance import check

    root = Path(os.environ.get("PAD_REGISTRY_COPY") or FIXTURES)
    results = check(root)
    loaded = [r for r in results if r["status"] != "skipped"]
    assert loaded, f"{root} has no dataset folder with CSV files"
    bad = [(r["dataset"], r.get("reason") or r.get("problems")) for r in loaded
           if r["status"] != "ok"]
    assert not bad
    if root == FIXTURES:
        by = {r["dataset"]: r for r in loaded}
        assert by[BALANCED]["rows"] == 19 and by[BALANCED]["leakage"] == 4
        assert by[BALANCED]["splits"] == {"dev": 11, "val": 4, "test": 4}
        assert by[DUMP]["shapes"] == ["api-dump"] and by[DUMP]["splits"] == {"test": 6}


# ---------------------------------------------------------------------- through the emulator
def _artifact(data: bytes) -> ModelArtifact:
    return ModelArtifact({"id": MODEL_ID, "name": "tiny_nn", "type": "tf_lite",
                          "labels": TINY_DRUG_LABELS}, "tiny.tflite", data)


@pytest.fixture(scope="module")
def shapes_emulator(tiny_tflite_path: Path) -> Any:
    data = tiny_tflite_path.read_bytes()
    config = EmulatorConfig(datasets=registry_extracts(), models_provider=lambda: [_artifact(data)])
    with Emulator(config) as emu:
        yield emu


def _counting(model: Any) -> list[int]:
    calls: list[int] = []
    original = model.predict_batch

    def predict_batch(x: Any, contexts: Any = None) -> Any:
        calls.append(len(x))
        return original(x, contexts)

    model.predict_batch = predict_batch
    return calls


def test_emulator_serves_every_shape_as_published(shapes_emulator: Emulator,
                                                  tmp_path: Path) -> None:
    s = Settings(cache_dir=tmp_path / "c", api_url=shapes_emulator.base_url,
                 registry_url=shapes_emulator.registry_url)
    for name in (BALANCED, DUMP, ANNOTATED, TFDA):
        want = {k: len(v) for k, v in published(FIXTURES / name).items()}
        ds = CachedDataset(name + EXTRACT, settings=s, progress=False)
        m = ds.manifest()
        assert m.split_counts == want, name
        summary = ds.download_and_cache()
        assert summary.ok and summary.total == len(m.card_ids), (name, str(summary))
        if name == DUMP:
            assert sorted(summary.unverified) == sorted(m.card_ids)
            assert m.files[f"{DUMP}{EXTRACT}_dataset.csv"]["shape"] == "api-dump"
        else:
            assert not summary.unverified
            assert not any("stale" in w for w in m.warnings), m.warnings
        ds.close()
    listing = CachedDataset.list_datasets(settings=s)
    assert set(listing["name"]) == {n + EXTRACT for n in (BALANCED, DUMP, ANNOTATED, TFDA)}
    assert dict(zip(listing["name"], listing["records"], strict=True))[BALANCED + EXTRACT] == 19


def test_apply_and_compare_score_one_row_per_published_row(shapes_emulator: Emulator,
                                                           tmp_path: Path) -> None:
    s = Settings(cache_dir=tmp_path / "c", api_url=shapes_emulator.base_url,
                 registry_url=shapes_emulator.registry_url)
    ds = CachedDataset(BALANCED + EXTRACT, settings=s, progress=False)
    model = PADTensorFlowAdapter(model_id=MODEL_ID, settings=s)
    calls = _counting(model)
    before = shapes_emulator.stats()["image"]
    res = ds.apply_model(model)
    assert shapes_emulator.stats()["image"] - before == 13  # one download per card
    assert sum(calls) == 13  # one inference per card, 19 published rows
    m = ds.manifest()
    assert len(res) == 19
    assert list(zip(res["split"], res["position"], res["card_id"], strict=True)) == list(
        zip(m.rows["split"], m.rows["position"], m.rows["card_id"], strict=True))
    twice = res[res["card_id"] == 16844]
    assert len(twice) == 2 and twice["prediction_key"].nunique() == 1
    # Selected splits, by name or list.
    assert len(ds.apply_model(model, split="test")) == 4
    both = ds.apply_model(model, split=["dev", "test"])
    assert len(both) == 15 and set(both["split"]) == {"dev", "test"}
    with pytest.raises(InvalidInputError, match="split 'train'"):
        ds.apply_model(model, split="train")
    assert ds.leakage(["dev", "test"])["card_ids"] == [16822, 22166]
    # The comparison scores every published row and reports the leakage.
    other = PADTensorFlowAdapter(model_id=MODEL_ID, settings=s, name="tiny_again")
    report = ds.compare_models([model, other], split=["dev", "test"], n_bootstrap=0)
    scored = both[both["status"] == "ok"]
    assert report.n_items == len(scored) == 15
    assert sorted(report.card_ids) == sorted(scored["card_id"])
    assert report.leakage["count"] == 2
    assert "Leakage: 2 card(s) published in more than one compared split: 16822, 22166" \
        in str(report)
    assert "Leakage: 2 card(s)" in report.to_markdown()
    assert list(report.items.columns) == ["card_id", "raw_key", "split", "position"]
    # A frame that repeats a card without published positions is still refused.
    with pytest.raises(InvalidInputError, match="duplicated card id"):
        compare_results({"a": both.drop(columns=["position"])}, dataset="x", n_bootstrap=0)
    ds.close()


def test_unverified_card_is_checked_against_its_first_download(tmp_path: Path) -> None:
    """An API-dump card has no md5: its first sha256 is the reference; a later download
    with other bytes is refused and the cached image stays."""
    images = tmp_path / "served"
    images.mkdir()
    spec = next(d for d in registry_extracts() if d.name == DUMP + EXTRACT)
    cid = int(spec.card_ids[0])
    with Emulator(EmulatorConfig(datasets=[spec], models_provider=list,
                                 real_images_dir=images)) as emu:
        s = Settings(cache_dir=tmp_path / "c", api_url=emu.base_url,
                     registry_url=emu.registry_url, http_retries=1)
        ds = CachedDataset(spec.name, settings=s, progress=False)
        first = ds.download_and_cache()
        assert cid in first.unverified and first.ok
        key = ds.raw.raw_keys(spec.name, [cid])[cid]
        meta = ds.store.metas([key])[key]
        assert meta["verified_by"].startswith("unverified: first download")
        # The server now sends other (valid PNG) bytes for that card.
        other = next(c for c in spec.card_ids if int(c) != cid)
        shutil.copy(_png_of(ds, int(other)), images / f"{cid}_processed.png")
        again = ds.download_and_cache(force_refresh=True, card_ids=[cid])
        assert cid in again.failed and "sha256 mismatch" in again.failed[cid]
        assert ds.raw.raw_keys(spec.name, [cid]) == {cid: key}  # the verified copy stays
        (images / f"{cid}_processed.png").unlink()
        same = ds.download_and_cache(force_refresh=True, card_ids=[cid])
        assert same.ok and cid in same.downloaded
        ds.close()


def _png_of(ds: CachedDataset, card_id: int) -> Path:
    key = ds.raw.raw_keys(ds.name, [card_id])[card_id]
    path = ds.settings.cache_dir / f"other_{card_id}.png"
    path.write_bytes(ds.store.get(key))
    return path


def test_offline_after_a_port_change_serves_every_cached_prediction_with_zero_network(
        tiny_tflite_path: Path, tmp_path: Path, net_guard: NetGuard,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_tflite_path.read_bytes()
    config = EmulatorConfig(datasets=registry_extracts(),
                            models_provider=lambda: [_artifact(data)])
    cache = tmp_path / "cache"
    reference: dict[str, pd.DataFrame] = {}
    with Emulator(config) as emu:  # port A
        net_guard.allow(emu.base_url)
        s = Settings(cache_dir=cache, api_url=emu.base_url, registry_url=emu.registry_url)
        for name in (BALANCED, DUMP):
            ds = CachedDataset(name + EXTRACT, settings=s, progress=False)
            reference[name] = ds.apply_model(PADTensorFlowAdapter(model_id=MODEL_ID, settings=s))
            ds.close()
        CachedDataset.list_datasets(settings=s)
        port_a = emu.port
    net_guard.allowed.clear()
    attempts = len(net_guard.attempts)
    other = f"http://127.0.0.1:{port_a + 1 if port_a < 65000 else port_a - 1}"
    monkeypatch.setenv("PAD_OFFLINE", "1")
    monkeypatch.setenv("PAD_API_URL", other)
    monkeypatch.setenv("PAD_REGISTRY_URL", f"{other}/registry/datasets")
    monkeypatch.setenv("PAD_CACHE_DIR", str(cache))
    cols = ["split", "position", "card_id", "prediction", "probability", "status",
            "prediction_key"]
    for name, ref in reference.items():
        ds = CachedDataset(name + EXTRACT, progress=False)
        model = PADTensorFlowAdapter(model_id=MODEL_ID)
        calls = _counting(model)
        got = ds.apply_model(model)
        assert calls == []  # no inference
        assert got["cached"].all()
        pd.testing.assert_frame_equal(got[cols], ref[cols])
        ds.close()
    listing = CachedDataset.list_datasets()
    assert BALANCED + EXTRACT in set(listing["name"])
    assert len(net_guard.attempts) == attempts  # zero network
    # A dataset never cached is still refused offline, naming it.
    with pytest.raises(OfflineError, match=TFDA):
        CachedDataset(TFDA + EXTRACT, progress=False).manifest()
    store = ContentStore(cache)
    try:
        names = sorted(store.index.refs("manifest/"))
    finally:
        store.close()
    assert all(f":{port_a}" not in n for n in names), names


def test_dagster_partitions_stay_unique_cards_and_report_published_rows_and_leakage(
        demo_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The v1.x extract through the Dagster graph: 13 card partitions for 19 published rows,
    leakage in the manifest and comparison metadata, every published row compared."""
    import dagster as dg

    from pad_assets.devtools.demo_models import demo_model_artifacts
    from pad_assets.orchestration.assets import DatasetAssetKeys, partitions_for
    from pad_assets.orchestration.definitions import build_definitions
    from pad_assets.orchestration.io_manager import PadStoreIOManager
    from pad_assets.orchestration.resources import PadResource
    from pad_assets.orchestration.sync import range_tags
    from pad_assets.project_config import DatasetConfig, load_config
    from pad_assets_tests.conftest import point_env_at

    spec = next(d for d in registry_extracts() if d.name == BALANCED + EXTRACT)
    # Built before the emulator starts: a slow build must not time out a model request.
    artifacts = demo_model_artifacts(demo_cache_dir)
    config = EmulatorConfig(datasets=[spec], models_provider=lambda: list(artifacts))
    with Emulator(config) as emu, dg.instance_for_test() as instance:
        point_env_at(emu, tmp_path / "cache", monkeypatch)
        base = load_config()
        ds = DatasetConfig(spec.name)
        project = type(base)((ds,), base.models)
        defs = build_definitions(project)
        keys = DatasetAssetKeys(ds, project.models)
        assets = list(defs.assets or []) + list(defs.asset_checks or [])
        pad = PadResource()
        resources = {"pad": pad, "pad_io_manager": PadStoreIOManager(pad=pad)}
        dg.materialize(assets, instance=instance, resources=resources,
                       selection=[keys.manifest])
        meta = instance.get_latest_materialization_event(keys.manifest) \
            .asset_materialization.metadata
        assert meta["published_rows"].value == 19 and meta["unique_cards"].value == 13
        assert meta["leakage"].value == 4
        assert meta["leakage_card_ids"].value == [16822, 20781, 22166, 25254]
        ids = CachedDataset(spec.name, settings=Settings.from_env(),
                            progress=False).manifest().card_ids
        parts = [str(c) for c in ids]
        assert len(parts) == len(set(parts)) == 13
        instance.add_dynamic_partitions(partitions_for(ds).name, parts)
        res = dg.materialize(assets, instance=instance, resources=resources,
                             selection=keys.image_keys, tags=range_tags(parts))
        assert res.success
        comp = dg.materialize(assets, instance=instance, resources=resources,
                              selection=[keys.comparison])
        assert comp.success
        cmeta = instance.get_latest_materialization_event(keys.comparison) \
            .asset_materialization.metadata
        assert cmeta["leakage"].value == 4
        # Every compared card counts once per published row (16844 and 16606: twice).
        items = pd.read_csv(Path(comp.asset_value(keys.comparison)["report_path"]).parent
                            / "items.csv")
        assert cmeta["items_compared"].value == len(items) > 13
        rows = CachedDataset(spec.name, settings=Settings.from_env(),
                             progress=False).manifest().rows
        per_card = rows["card_id"].value_counts()
        assert all(n == per_card[c] for c, n in items["card_id"].value_counts().items())
