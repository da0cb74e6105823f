"""The local PAD API emulator over real HTTP: routes, shapes, bytes, edge cases, knobs, CLI."""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image, ImageFile

import pad_assets
from pad_assets.devtools.emulator import (
    CURRENT_COLUMNS,
    DEFAULT_DATASET,
    DRUGS,
    LEGACY_COLUMNS,
    QUANTITIES,
    SYNTHETIC_COMMENT,
    CardAttributes,
    DatasetSpec,
    EdgeCases,
    Emulator,
    EmulatorConfig,
    ModelArtifact,
    card_attributes,
    card_png,
    render_card,
    synthetic,
)
from pad_assets.devtools.emulator.catalog import registry_extracts

from ..conftest import SHARED_A, SHARED_B, make_config, shared_cards_config

CARD_FIELDS = {
    "id", "sample_name", "test_name", "user_name", "date_of_creation", "raw_file_location",
    "processed_file_location", "processing_date", "camera_type_1", "notes", "sample_id",
    "quantity", "deleted", "project", "issue",
}
PROJECT_FIELDS = {
    "id", "project_name", "annotation", "test_name", "sample_names", "neutral_filler",
    "qpc20", "qpc50", "qpc80", "qpc100", "user_name", "notes",
}


def get(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def get_json(url: str) -> tuple[int, Any]:
    status, _, body = get(url)
    return status, json.loads(body)


def manifest(emu: Emulator, dataset: str, split: str = "dev") -> list[dict[str, str]]:
    status, _, body = get(f"{emu.registry_url}/{dataset}/metadata_{split}.csv")
    assert status == 200
    return list(csv.DictReader(io.StringIO(body.decode("utf-8"))))


def all_rows(emu: Emulator, dataset: str) -> dict[int, dict[str, str]]:
    rows = manifest(emu, dataset, "dev") + manifest(emu, dataset, "test")
    return {int(r["id"]): r for r in rows}


def fake_models() -> list[ModelArtifact]:
    rng = np.random.default_rng(0)
    common = {
        "architecture": "MobileNetV2", "image_size": "454,454", "drugs": list(DRUGS),
        "drugs_size": len(DRUGS), "lanes_excluded": "", "test": "12LanePADKenya2015",
        "training_set": DEFAULT_DATASET, "brightness": 0, "image_mean": "",
        "description": "test double",
    }
    return [
        ModelArtifact(
            {**common, "id": 16, "name": "24fhiNN1classifyAPI", "type": "tf_lite",
             "labels": list(DRUGS), "version": "1.0", "weights": "classify.tflite"},
            "classify.tflite", b"TFL3" + rng.bytes(5000),
        ),
        ModelArtifact(
            {**common, "id": 19, "name": "24 fhi NN1 API concentration", "type": "tf_lite",
             "labels": ["0", "100", "20", "50", "80"], "version": "2.1", "weights": "conc.tflite"},
            "conc.tflite", b"TFL3" + rng.bytes(3000),
        ),
        ModelArtifact(
            {**common, "id": 18, "name": "24fhiPLS1conc", "type": "pls", "labels": [],
             "version": "1.0", "weights": "pls.csv"},
            "pls.csv", b"amoxicillin,1.0," + b",".join([b"0.01"] * 360) + b"\n",
        ),
    ]


# ----------------------------------------------------------------------------- API routes
def test_projects_routes_and_shapes(session_emulator: Emulator) -> None:
    api = session_emulator.api_url
    status, projects = get_json(f"{api}/projects")
    assert status == 200 and isinstance(projects, list) and projects
    project = projects[0]
    assert set(project) >= PROJECT_FIELDS
    assert isinstance(project["sample_names"], dict)
    assert "Ferrous Sulfate" in project["sample_names"]["sample_names"]
    assert get_json(f"{api}/projects/{project['id']}") == (200, project)
    assert get_json(f"{api}/projects/999") == (404, {"detail": "Not Found"})
    assert get_json(f"{api}/projects/abc") == (404, {"detail": "Not Found"})  # id is a string
    assert get_json(f"{api}/projects/999/cards") == (404, {"detail": "Not Found"})
    assert get_json(f"{api}/nope") == (404, {"detail": "Not Found"})


def test_project_cards_are_not_paginated_and_cards_are(emulator_factory) -> None:
    emu = emulator_factory(make_config([DatasetSpec("big", range(10000, 10130))], models=[]))
    status, cards = get_json(f"{emu.api_url}/projects/1/cards")
    assert status == 200 and [c["id"] for c in cards] == list(range(10000, 10130))

    status, page = get_json(f"{emu.api_url}/cards")
    assert status == 200 and isinstance(page, list) and len(page) == 100  # default limit
    assert [c["id"] for c in page] == list(range(10000, 10100))
    _, page2 = get_json(f"{emu.api_url}/cards?skip=100&limit=100")
    assert [c["id"] for c in page2] == list(range(10100, 10130))
    _, page3 = get_json(f"{emu.api_url}/cards?skip=5&limit=3")
    assert [c["id"] for c in page3] == [10005, 10006, 10007]
    assert get_json(f"{emu.api_url}/cards?skip=500") == (200, [])

    status, err = get_json(f"{emu.api_url}/cards?skip=abc&limit=x")
    assert status == 422
    assert [e["loc"] for e in err["detail"]] == [["query", "skip"], ["query", "limit"]]
    assert all({"loc", "msg", "type"} <= set(e) for e in err["detail"])


def test_card_record_fields_and_lookup(session_emulator: Emulator) -> None:
    api = session_emulator.api_url
    status, card = get_json(f"{api}/cards/10000")
    assert status == 200 and set(card) == CARD_FIELDS
    attrs = card_attributes(10000)
    assert (card["sample_name"], card["quantity"], card["camera_type_1"], card["sample_id"]) == (
        attrs.drug, attrs.quantity, attrs.camera, attrs.sample_id)
    assert card["processed_file_location"] == (
        "/var/www/html/images/padimages/processed/10000/10000_processed.png")
    assert card["issue"] is None and card["deleted"] is False
    assert set(card["project"]) >= PROJECT_FIELDS
    status, err = get_json(f"{api}/cards/abc")
    assert status == 422 and err["detail"][0]["loc"] == ["path", "id"]
    assert {"loc", "msg", "type"} <= set(err["detail"][0])
    assert get_json(f"{api}/cards/12345678") == (404, {"detail": "Not Found"})


def test_card_issues(session_emulator: Emulator) -> None:
    status, issues = get_json(f"{session_emulator.api_url}/cards/issues")
    assert status == 200
    assert [(i["id"], i["name"]) for i in issues] == [(2, "Leak"), (3, "Stuck"), (4, "Rectification")]
    assert all(isinstance(i["description"], str) for i in issues)


# ----------------------------------------------------------------------------- images
def test_three_image_url_forms_serve_identical_bytes_matching_the_manifest(
    session_emulator: Emulator,
) -> None:
    emu = session_emulator
    rows = manifest(emu, DEFAULT_DATASET)
    assert list(rows[0]) == list(CURRENT_COLUMNS)
    row = rows[0]
    cid = int(row["id"])
    folder = (cid // 10000) * 10000
    assert row["url"] == f"{emu.base_url}//var/www/html/images/padimages/processed/{folder}/{cid}_processed.png"
    assert row["image_name"] == f"{cid}__{row['sample_id']}__{row['sample_name']}__{row['quantity']}.png"
    bodies = []
    for path in (
        f"//var/www/html/images/padimages/processed/{folder}/{cid}_processed.png",
        f"/var/www/html/images/padimages/processed/{folder}/{cid}_processed.png",
        f"/images/padimages/processed/{folder}/{cid}_processed.png",
    ):
        status, headers, body = get(emu.base_url + path)
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert int(headers["Content-Length"]) == len(body)
        bodies.append(body)
    assert bodies[0] == bodies[1] == bodies[2]
    assert hashlib.md5(bodies[0]).hexdigest() == row["hashlib_md5"]
    # wrong folder, unknown card
    assert get(f"{emu.base_url}/images/padimages/processed/20000/{cid}_processed.png")[0] == 404
    assert get(f"{emu.base_url}/images/padimages/processed/90000/98765_processed.png")[0] == 404


def test_cards_are_realistic_synthetic_pngs(session_emulator: Emulator) -> None:
    status, headers, body = get(session_emulator.image_url(10003))
    assert status == 200 and len(body) >= 1_000_000
    img = Image.open(io.BytesIO(body))
    assert img.format == "PNG" and img.mode == "RGB" and img.size == (730, 1220)
    assert img.info.get("Comment") == SYNTHETIC_COMMENT and "SYNTHETIC" in img.info["Comment"]
    img.load()  # decodes strictly
    arr = np.asarray(img)
    assert np.array_equal(arr, render_card(10003))
    # HEAD gives the size without the body
    status, head_headers, head_body = get(session_emulator.image_url(10003), method="HEAD")
    assert status == 200 and head_body == b"" and int(head_headers["Content-Length"]) == len(body)


def test_same_card_same_bytes_across_instances_and_processes(
    session_emulator: Emulator, emulator_factory
) -> None:
    other = emulator_factory(make_config(models=[]))
    a = get(session_emulator.image_url(10007))[2]
    b = get(other.image_url(10007))[2]
    assert a == b
    md5_a = {cid: r["hashlib_md5"] for cid, r in all_rows(session_emulator, DEFAULT_DATASET).items()}
    md5_b = {cid: r["hashlib_md5"] for cid, r in all_rows(other, DEFAULT_DATASET).items()}
    assert md5_a == md5_b
    code = (
        "import hashlib; from pad_assets.devtools.emulator.synthetic import card_png;"
        "print(hashlib.md5(card_png(10007)).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_subprocess_env()
    )
    assert out.stdout.strip() == hashlib.md5(a).hexdigest() == md5_a[10007]


# ----------------------------------------------------------------------------- registry
def test_registry_files_croissant_hashes_and_synthetic_labels(session_emulator: Emulator) -> None:
    emu = session_emulator
    folder = f"{emu.registry_url}/{DEFAULT_DATASET}"
    status, _, raw = get(f"{folder}/croissant.jsonld")
    assert status == 200
    doc = json.loads(raw)
    assert "SYNTHETIC" in doc["description"] and doc["name"] == DEFAULT_DATASET
    by_name = {d["name"]: d for d in doc["distribution"]}
    assert set(by_name) == {"metadata_dev.csv", "metadata_test.csv"}
    total = 0
    for name, entry in by_name.items():
        status, _, body = get(entry["contentUrl"])
        assert status == 200 and entry["contentUrl"] == f"{folder}/{name}"
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
        assert entry["contentSize"] == f"{len(body)} bytes"
        total += body.decode().count("\n") - 1
    splits = {s["name"]: s["recordCount"] for s in doc["dataSplits"]}
    assert sum(splits.values()) == total == doc["recordCount"] == 48
    assert set(splits) == {"train", "test"} and splits["test"] > 0

    status, _, readme = get(f"{folder}/README.md")
    assert status == 200 and b"SYNTHETIC" in readme
    status, _, labels = get(f"{folder}/labels.csv")
    rows = all_rows(emu, DEFAULT_DATASET)
    assert labels.decode().strip().split(",") == sorted({r["sample_name"] for r in rows.values()})
    assert get(f"{emu.registry_url}/no_such_dataset/metadata_dev.csv")[0] == 404
    assert get(f"{folder}/metadata_val.csv")[0] == 404


def test_full_fhi2020_shape_and_default_dataset_shape() -> None:
    spec = EmulatorConfig.full_fhi2020().datasets[0]
    splits = spec.split_ids()
    assert spec.name == DEFAULT_DATASET
    assert (len(splits["dev"]), len(splits["test"])) == (5923, 2078)
    default = EmulatorConfig().datasets
    assert [d.name for d in default][:2] == [DEFAULT_DATASET, EdgeCases.DATASET]
    assert all(d.name.endswith("_extract") and d.published for d in default[2:])
    assert list(default[0].card_ids)[0] == 10000 and len(default[0].card_ids) == 48


def test_legacy_format_columns(emulator_factory) -> None:
    emu = emulator_factory(make_config([DatasetSpec("old", range(10000, 10006), legacy_format=True)], models=[]))
    rows = list(all_rows(emu, "old").values())
    assert tuple(rows[0]) == LEGACY_COLUMNS
    for r in rows:
        cid = int(r["id"])
        assert r["processed_file_location"] == f"/var/www/html/images/padimages/processed/10000/{cid}_processed.png"
        body = get(emu.base_url + "/" + r["processed_file_location"])[2]
        assert hashlib.md5(body).hexdigest() == r["md5_hash"]


def test_add_cards_shows_in_the_manifest_without_moving_existing_cards(emulator_factory) -> None:
    emu = emulator_factory(make_config([DatasetSpec("grow", range(10000, 10004))], models=[]))
    before = all_rows(emu, "grow")
    split_before = {cid: cid in {int(r["id"]) for r in manifest(emu, "grow", "test")} for cid in before}
    new_ids = list(range(10500, 10510))
    assert emu.add_cards("grow", new_ids) == new_ids
    assert emu.add_cards("grow", new_ids) == []  # idempotent
    after = all_rows(emu, "grow")
    assert set(after) == set(before) | set(new_ids)
    test_ids = {int(r["id"]) for r in manifest(emu, "grow", "test")}
    assert all((cid in test_ids) == was_test for cid, was_test in split_before.items())
    assert get_json(f"{emu.api_url}/cards/10505")[0] == 200
    assert get(emu.image_url(10505))[0] == 200


def test_two_datasets_sharing_cards_agree_on_them(emulator_factory) -> None:
    emu = emulator_factory(shared_cards_config(shared=6, only_a=2, only_b=2, models=[]))
    a, b = all_rows(emu, SHARED_A), all_rows(emu, SHARED_B)
    common = set(a) & set(b)
    assert len(common) == 6
    assert all(a[c] == b[c] for c in common)


def test_real_images_dir_serves_files(emulator_factory, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for cid in (10001, 77777):  # one card of the world, one unknown to it
        Image.fromarray(rng.integers(0, 255, (1220, 730, 3), dtype=np.uint8)).save(
            tmp_path / f"{cid}_processed.png")
    real_labels = CardAttributes("ceftriaxone", 50, "Google Pixel 3a", 12345)
    emu = emulator_factory(make_config([DatasetSpec("mix", range(10000, 10003))], models=[],
                                       real_images_dir=tmp_path,
                                       card_overrides={10001: real_labels}))
    rows = all_rows(emu, "mix")
    real = (tmp_path / "10001_processed.png").read_bytes()
    assert get(emu.image_url(10001))[2] == real
    assert rows[10001]["hashlib_md5"] == hashlib.md5(real).hexdigest()
    assert (rows[10001]["sample_name"], rows[10001]["quantity"], rows[10001]["sample_id"]) == (
        "ceftriaxone", "50", "12345")
    assert get(emu.image_url(77777))[2] == (tmp_path / "77777_processed.png").read_bytes()
    synthetic_body = get(emu.image_url(10002))[2]
    assert Image.open(io.BytesIO(synthetic_body)).info["Comment"] == SYNTHETIC_COMMENT


# ----------------------------------------------------------------------------- edge cases
def test_edge_cases(emulator_factory) -> None:
    emu = emulator_factory(make_config(models=[], slow_seconds=0.6))
    rows = all_rows(emu, EdgeCases.DATASET)
    assert set(EdgeCases.ALL) <= set(rows)
    assert {int(r["id"]) for r in manifest(emu, EdgeCases.DATASET, "dev")} == set(EdgeCases.ALL)

    # truncated PNG: manifest md5 is of the (short) served bytes; decodes only with tolerance
    body = get(emu.image_url(EdgeCases.TRUNCATED_PNG))[2]
    assert hashlib.md5(body).hexdigest() == rows[EdgeCases.TRUNCATED_PNG]["hashlib_md5"]
    with pytest.raises(OSError):
        Image.open(io.BytesIO(body)).load()
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        img = Image.open(io.BytesIO(body))
        img.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    assert img.size == (730, 1220)

    assert get(emu.image_url(EdgeCases.MISSING_IMAGE))[:1] == (404,)
    assert get_json(f"{emu.api_url}/cards/{EdgeCases.MISSING_IMAGE}")[0] == 200

    _, card = get_json(f"{emu.api_url}/cards/{EdgeCases.WITH_ISSUE}")
    assert card["issue"]["id"] == 2 and card["issue"]["name"] == "Leak"
    _, card = get_json(f"{emu.api_url}/cards/{EdgeCases.DELETED}")
    assert card["deleted"] is True
    _, card = get_json(f"{emu.api_url}/cards/{EdgeCases.UNKNOWN_DRUG}")
    assert card["sample_name"] == EdgeCases.UNKNOWN_DRUG_NAME == rows[EdgeCases.UNKNOWN_DRUG]["sample_name"]

    body = get(emu.image_url(EdgeCases.MD5_MISMATCH))[2]
    assert hashlib.md5(body).hexdigest() != rows[EdgeCases.MD5_MISMATCH]["hashlib_md5"]
    Image.open(io.BytesIO(body)).load()  # the image itself is fine

    t0 = time.monotonic()
    assert get(emu.image_url(EdgeCases.SLOW))[0] == 200
    assert time.monotonic() - t0 >= 0.55

    first = get(emu.image_url(EdgeCases.FLAKY))
    assert first[0] == 500 and "detail" in json.loads(first[2])
    second = get(emu.image_url(EdgeCases.FLAKY))
    assert second[0] == 200 and hashlib.md5(second[2]).hexdigest() == rows[EdgeCases.FLAKY]["hashlib_md5"]
    emu.reset_stats()  # re-arms the one-shot failure
    assert get(emu.image_url(EdgeCases.FLAKY))[0] == 500


# ----------------------------------------------------------------------------- knobs and stats
def test_error_rate_one_answers_500_and_is_counted(emulator_factory) -> None:
    emu = emulator_factory(error_rate=1.0, models=[])
    for url in (f"{emu.api_url}/cards", emu.image_url(10000), f"{emu.registry_url}/x/y.csv"):
        status, _, body = get(url)
        assert status == 500 and "detail" in json.loads(body)
    stats = emu.stats()
    assert stats["total"] == 3 and stats["errors_5xx"] == 3
    assert (stats["api"], stats["image"], stats["registry"]) == (1, 1, 1)


def test_error_rate_is_deterministic_by_seed(emulator_factory) -> None:
    def pattern(seed: int) -> list[int]:
        emu = emulator_factory(error_rate=0.5, seed=seed, models=[])
        return [get(f"{emu.api_url}/cards/issues")[0] for _ in range(12)]

    first = pattern(3)
    assert first == pattern(3) and {200, 500} == set(first)


def test_truncate_rate_cuts_image_and_weights_bodies_only(emulator_factory) -> None:
    emu = emulator_factory(truncate_rate=1.0, models=fake_models())
    url = urlsplit(emu.image_url(10000))

    def raw_get(path: str) -> tuple[int, int, bytes]:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        conn.request("GET", path)
        resp = conn.getresponse()
        claimed = int(resp.getheader("Content-Length"))
        try:
            body = resp.read()
        except http.client.IncompleteRead as exc:
            body = exc.partial
        conn.close()
        return resp.status, claimed, body

    status, claimed, body = raw_get(url.path)
    assert status == 200 and claimed > 1_000_000 and len(body) < claimed
    _, records = get_json(f"{emu.api_url}/neural-networks")
    status, claimed, body = raw_get(urlsplit(records[0]["weights_url"]).path)
    assert status == 200 and len(body) < claimed
    status, claimed, body = raw_get("/api/v2/cards/issues")
    assert status == 200 and len(body) == claimed
    assert emu.stats()["truncated"] == 2


def test_latency_knob(emulator_factory) -> None:
    emu = emulator_factory(latency=0.25, models=[])
    t0 = time.monotonic()
    assert get(f"{emu.api_url}/cards/issues")[0] == 200
    assert time.monotonic() - t0 >= 0.25


def test_stats_count_kinds_and_reset(emulator_factory) -> None:
    emu = emulator_factory(make_config([DatasetSpec("s", [10000])], models=fake_models()))
    get(f"{emu.api_url}/cards")
    get(f"{emu.api_url}/cards/abc")  # 422 still counted
    get(emu.image_url(10000))
    get(emu.image_url(10001))  # 404 image
    get(f"{emu.registry_url}/s/metadata_dev.csv")
    _, records = get_json(f"{emu.api_url}/neural-networks")
    get(records[0]["weights_url"])
    get(f"{emu.base_url}/favicon.ico")
    stats = get_json(f"{emu.base_url}/emulator/stats")[1]
    assert {k: stats[k] for k in ("api", "image", "weights", "registry", "other", "total")} == {
        "api": 3, "image": 2, "weights": 1, "registry": 1, "other": 1, "total": 8}
    assert stats["by_status"]["404"] == 2 and stats["by_status"]["422"] == 1
    assert stats["errors_5xx"] == 0 and stats["by_path"]["/api/v2/cards"] == 1
    assert emu.stats()["total"] == 8  # /emulator/* is not counted
    assert get(f"{emu.base_url}/emulator/reset-stats", method="POST", data=b"")[0] == 200
    assert emu.stats()["total"] == 0
    get(f"{emu.api_url}/cards")
    assert get_json(f"{emu.base_url}/emulator/reset-stats")[0] == 200
    assert emu.stats()["total"] == 0
    assert get(f"{emu.api_url}/cards", method="POST", data=b"{}")[0] == 405


# ----------------------------------------------------------------------------- models
def test_models_records_weights_and_wrong_sha(emulator_factory) -> None:
    calls = []

    def provider() -> list[ModelArtifact]:
        calls.append(1)
        return fake_models()

    emu = emulator_factory(make_config(models_provider=provider))
    get(f"{emu.api_url}/cards/issues")
    assert calls == []  # lazy
    status, records = get_json(f"{emu.api_url}/neural-networks")
    assert status == 200 and [r["id"] for r in records] == [16, 19, 18]
    for rec, art in zip(records, fake_models(), strict=True):
        assert rec["weights_url"].startswith(f"{emu.base_url}/neuralnetworks/{rec['type']}/")
        status, _, data = get(rec["weights_url"])
        assert status == 200 and data == art.data
        assert rec["SHA256"] == hashlib.sha256(data).hexdigest()
    assert "24%20fhi%20NN1%20API%20concentration/2.1/conc.tflite" in records[1]["weights_url"]
    assert get_json(f"{emu.api_url}/neural-networks/18")[1]["type"] == "pls"
    assert get_json(f"{emu.api_url}/neural-networks/99") == (404, {"detail": "Not Found"})
    assert get_json(f"{emu.api_url}/neural-networks/x")[0] == 422
    assert get(f"{emu.base_url}/neuralnetworks/tf_lite/nope/1.0/x.tflite")[0] == 404
    get(f"{emu.api_url}/neural-networks?limit=1")
    assert len(calls) == 1  # cached

    bad = ModelArtifact({"id": 77, "name": "broken", "type": "tf_lite", "labels": ["a"]},
                        "broken.tflite", b"TFL3 weights").with_wrong_sha256()
    emu.add_model(bad)
    _, rec = get_json(f"{emu.api_url}/neural-networks/77")
    data = get(rec["weights_url"])[2]
    assert data == b"TFL3 weights" and rec["SHA256"] != hashlib.sha256(data).hexdigest()


def test_failing_models_provider_is_a_visible_500(emulator_factory) -> None:
    def provider() -> list[ModelArtifact]:
        raise RuntimeError("training failed")

    emu = emulator_factory(make_config(models_provider=provider))
    status, body = get_json(f"{emu.api_url}/neural-networks")
    assert status == 500 and "training failed" in body["detail"]


# ----------------------------------------------------------------------------- lifecycle, env, CLI
def test_stop_closes_keep_alive_connections() -> None:
    emu = Emulator(make_config(models=[]))
    base = urlsplit(emu.start())
    conn = http.client.HTTPConnection(base.hostname, base.port, timeout=5)
    conn.request("GET", "/api/v2/cards/issues")
    assert conn.getresponse().read()
    emu.stop()
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("GET", "/api/v2/cards/issues")
        conn.getresponse().read()
    conn.close()
    assert not emu.running


def test_pad_env_points_settings_at_the_emulator(pad_env: Emulator, tmp_path: Path) -> None:
    from pad_assets.settings import Settings

    s = Settings.from_env()
    assert s.api_url == pad_env.base_url and s.registry_url == pad_env.registry_url
    assert s.cache_dir == tmp_path / "pad_cache" and s.api_base == pad_env.api_url
    assert pad_env.base_url.startswith("http://127.0.0.1:")


def _subprocess_env() -> dict[str, str]:
    root = str(Path(pad_assets.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_cli_prints_exports_and_serves_until_terminated() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pad_assets.devtools.emulator", "--port", "0", "--cards", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_subprocess_env(),
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(3)]
        base = lines[0]
        assert base.startswith("http://127.0.0.1:")
        assert lines[1] == f"export PAD_API_URL={base}"
        assert lines[2] == f"export PAD_REGISTRY_URL={base}/registry/datasets"
        status, issues = get_json(f"{base}/api/v2/cards/issues")
        assert status == 200 and len(issues) == 3
        extracts = {c for d in registry_extracts() for c in d.card_ids}  # real registry rows
        assert len(get_json(f"{base}/api/v2/cards")[1]) == (5 + len(EdgeCases.ALL) + len(EdgeCases.NORMAL)
                                                            + len(extracts))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0


# ----------------------------------------------------------------------------- synthetic cards
def test_card_attributes_are_deterministic_and_consistent() -> None:
    seen = [card_attributes(c) for c in range(10000, 10300)]
    assert seen == [card_attributes(c) for c in range(10000, 10300)]
    assert {a.drug for a in seen} <= set(DRUGS) and len({a.drug for a in seen}) >= 18
    for a in seen:
        assert a.quantity in QUANTITIES and a.camera in synthetic.CAMERAS
        if a.drug in ("blank", "swiped-but-not-run"):
            assert a.quantity == 0
        elif a.drug == "lactose":
            assert a.quantity == 100
        else:
            assert a.quantity in (20, 50, 80, 100)
    # photos of one PAD share sample id, drug and quantity
    same = [a for a in seen if a.sample_id == seen[3].sample_id]
    assert len(same) == synthetic.PHOTOS_PER_SAMPLE
    assert len({(a.drug, a.quantity) for a in same}) == 1
    assert len(DRUGS) == 23 and isinstance(seen[0], CardAttributes)


def _lane_means(img: np.ndarray) -> np.ndarray:
    """Mean RGB per lane over the colour band (the PLS lane columns)."""
    band = img[synthetic.BAND_TOP : synthetic.BAND_BOTTOM].astype(np.float64)
    return np.stack([band[:, 29 + 53 * k : 58 + 53 * k].mean(axis=(0, 1)) for k in range(1, 13)])


def test_drug_signatures_are_distinct_and_colours_follow_quantity() -> None:
    sigs = {d: _lane_means(render_card(10000, drug=d, quantity=100)).ravel() for d in DRUGS}
    names = list(sigs)
    dists = [np.linalg.norm(sigs[a] - sigs[b]) for i, a in enumerate(names) for b in names[i + 1 :]]
    assert min(dists) > 30  # well apart in the 36-d lane-colour space

    paper = _lane_means(render_card(10000, drug="blank", quantity=0))
    for drug in ("amoxicillin", "rifampicin", "ciprofloxacin"):
        dev = [np.abs(_lane_means(render_card(10010, drug=drug, quantity=q)) - paper).sum()
               for q in (20, 50, 80, 100)]
        assert dev == sorted(dev) and dev[-1] > 2 * dev[0]


def test_card_generation_is_deterministic() -> None:
    """Speed is measured in benchmarks/bench_card_render.py, not here."""
    pngs = [card_png(c) for c in range(10020, 10023)]
    assert pngs[0] == card_png(10020) and len(set(pngs)) == 3
    assert render_card(10020).shape == (1220, 730, 3) and render_card(10020).dtype == np.uint8


def test_md5_disk_cache_makes_later_manifests_render_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pad_assets.devtools.emulator import catalog

    config = make_config([DatasetSpec("memo", range(10040, 10043))], models=[], md5_cache_dir=tmp_path)
    with Emulator(config) as emu:
        emu.warm()
        expected = all_rows(emu, "memo")
    assert list(tmp_path.glob("emulator-md5-*.json"))
    monkeypatch.setattr(catalog, "_MD5_MEMO", {})

    def no_render(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("rendered a card although its md5 was on disk")

    monkeypatch.setattr(catalog.synthetic, "card_png", no_render)
    monkeypatch.setattr(catalog, "_synthetic_png", no_render)
    with Emulator(config) as emu:
        rows = all_rows(emu, "memo")
    assert {c: r["hashlib_md5"] for c, r in rows.items()} == {
        c: r["hashlib_md5"] for c, r in expected.items()}
