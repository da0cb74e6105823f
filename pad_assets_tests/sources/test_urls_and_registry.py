"""URL policy and manifest parsing (no network: a local registry folder)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pad_assets.errors import InvalidInputError, ManifestError, UnknownDatasetError
from pad_assets.settings import Settings
from pad_assets.sources.http import HttpClient
from pad_assets.sources.registry import RegistryClient, parse_split_csv
from pad_assets.sources.urls import normalize_url, validate_name

API = "http://127.0.0.1:8123"
IMG = "/var/www/html/images/padimages/processed/10000/19208_processed.png"


@pytest.mark.parametrize("form", [
    f"https://pad.crc.nd.edu/{IMG}",  # the double-slash form real registry files keep
    f"https://pad.crc.nd.edu{IMG}",
    IMG,
    f"{API}/{IMG}",
])
def test_image_url_forms_normalise_to_one_url(form: str) -> None:
    assert normalize_url(form, API) == f"{API}{IMG}"


@pytest.mark.parametrize("bad, why", [
    ("file:///etc/passwd", "scheme"),
    ("ftp://pad.crc.nd.edu/x.png", "scheme"),
    ("https://evil.example.com/x.png", "not a configured"),
    (f"{API}/images/../../etc/passwd", "'..'"),
    ("", "empty"),
])
def test_bad_urls_are_refused_with_the_reason(bad: str, why: str) -> None:
    with pytest.raises(InvalidInputError, match=why):
        normalize_url(bad, API)


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "", "x" * 200, "a\\b", ".hidden"])
def test_dataset_names_that_could_escape_are_refused(name: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid dataset name"):
        validate_name(name)


CURRENT = ("id,sample_id,sample_name,quantity,camera_type_1,url,hashlib_md5,image_name\n"
           f"1,11,amoxicillin,100,Pixel,https://pad.crc.nd.edu/{IMG},{'a' * 32},x.png\n")
LEGACY = ("id,sample_name,quantity,processed_file_location,md5_hash\n"
          f"2,ceftriaxone,50,{IMG},{'b' * 32}\n")


def test_both_csv_formats_parse_to_the_same_columns() -> None:
    cur = parse_split_csv(CURRENT.encode(), "cur.csv", "dev")
    leg = parse_split_csv(LEGACY.encode(), "leg.csv", "test")
    assert list(cur.columns) == list(leg.columns)
    assert cur.iloc[0]["md5"] == "a" * 32 and leg.iloc[0]["image_url"] == IMG
    assert leg.iloc[0]["split"] == "test"


@pytest.mark.parametrize("text, match", [
    ("", "empty file"),
    ("foo,bar\n1,2\n", "neither the current columns"),
    (CURRENT + "3,12,x,100,P,/a.png\n", "line 3: 6 fields"),
    (CURRENT.replace("1,11", "one,11"), "not an integer"),
    (CURRENT.replace("a" * 32, "zz"), "not 32 hex digits"),
])
def test_malformed_csv_names_file_and_line(text: str, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        parse_split_csv(text.encode(), "bad.csv", "dev")


def _registry(tmp_path: Path, stale: bool) -> Settings:
    d = tmp_path / "reg" / "DS1"
    d.mkdir(parents=True)
    (d / "metadata_dev.csv").write_text(CURRENT)
    sha = hashlib.sha256(CURRENT.encode()).hexdigest()
    (d / "croissant.jsonld").write_text(json.dumps({"distribution": [
        {"contentUrl": "https://x/DS1/metadata_dev.csv", "sha256": "0" * 64 if stale else sha}]}))
    return Settings(cache_dir=tmp_path / "cache", registry_url=str(tmp_path / "reg"))


def test_local_registry_folder_and_croissant_check(tmp_path: Path) -> None:
    settings = _registry(tmp_path, stale=False)
    m = RegistryClient(settings, HttpClient(offline=True)).load("DS1")
    assert m.card_ids == [1] and m.warnings == []
    assert m.files["metadata_dev.csv"]["croissant_ok"] is True


def test_stale_croissant_hash_is_reported_not_fatal(tmp_path: Path) -> None:
    settings = _registry(tmp_path, stale=True)
    m = RegistryClient(settings, HttpClient(offline=True)).load("DS1")
    assert m.card_ids == [1]
    assert any("stale" in w for w in m.warnings)


def test_unknown_dataset_is_a_clear_error(tmp_path: Path) -> None:
    settings = _registry(tmp_path, stale=False)
    with pytest.raises(UnknownDatasetError, match="'NOPE' not found"):
        RegistryClient(settings, HttpClient(offline=True)).load("NOPE")
