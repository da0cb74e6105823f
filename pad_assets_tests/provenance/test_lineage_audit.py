"""Provenance: ``card_lineage`` / ``pad-assets lineage`` and the audit export (CSV + PROV-JSON).

Everything runs against the local emulator with tiny models (a 5-class TF Lite file and a
small PLS coefficient file), so the chain is real: HTTP download, md5 check, preprocessing,
tensor, inference, and the metadata each layer recorded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pad_assets.cli import main as cli_main
from pad_assets.dataset import CachedDataset, manifest_ref
from pad_assets.devtools.emulator import DRUGS, DatasetSpec, EdgeCases, Emulator, ModelArtifact
from pad_assets.errors import InvalidInputError
from pad_assets.keys import verify_link
from pad_assets.models import PADTensorFlowAdapter, PLSModelAdapter
from pad_assets.provenance.audit import (
    CSV_COLUMNS,
    export_audit,
)
from pad_assets.provenance.chain import dagster_run_records
from pad_assets.provenance.lineage import (
    card_id_of,
    card_lineage,
    format_lineage,
)
from pad_assets.provenance.model_spec import resolve_model_spec
from pad_assets.settings import Settings
from pad_assets.store import ContentStore
from pad_assets_tests.conftest import make_config, point_env_at
from pad_assets_tests.model_fixtures import TINY_DRUG_LABELS

pytest_plugins = ["pad_assets_tests.model_fixtures"]

DATASET = "lineage_ds"
CARDS = [52000, 52001, 52002, 52003, 52004, 52005]
FAILED_CARD = EdgeCases.MISSING_IMAGE  # the emulator answers 404 for its image
NOT_IN_PLS = "hydroxychloroquine"  # card 52005's drug: an explicit unknown_drug record
TFLITE_ID, PLS_ID = 77, 78
KEY_COLUMNS = ["card_id", "prediction", "probability", "energy", "status", "raw_key",
               "preprocessed_key", "tensor_key", "prediction_key", "model_signature"]


def write_pls_csv(path: Path, drugs: list[str]) -> Path:
    """A small, valid PLS coefficient file (quoted, hyphenated names) for ``drugs``."""
    lines = []
    for i, drug in enumerate(drugs):
        coefs = [((i + 1) * (j % 7 - 3)) / 1000.0 for j in range(360)]
        lines.append(",".join([f'"{drug}"', f'"{10.0 + i}"', *(f'"{c}"' for c in coefs)]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def pls_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pls_csv(tmp_path_factory.mktemp("pls") / "tiny_pls.csv",
                         [d for d in DRUGS if d != NOT_IN_PLS])


@pytest.fixture(scope="module")
def emu(tiny_tflite_path: Path, pls_path: Path) -> Iterator[Emulator]:
    """Emulator with the lineage dataset and two served models (a TF Lite and a PLS)."""
    models = [
        ModelArtifact({"id": TFLITE_ID, "name": "tiny_nn", "type": "tf_lite",
                       "labels": TINY_DRUG_LABELS}, "tiny.tflite", tiny_tflite_path.read_bytes()),
        ModelArtifact({"id": PLS_ID, "name": "tiny_pls", "type": "pls",
                       "labels": ["0", "20", "50", "80", "100"]}, "tiny_pls.csv",
                      pls_path.read_bytes()),
    ]
    with Emulator(make_config([DatasetSpec(DATASET, [*CARDS, FAILED_CARD])],
                              models=models)) as e:
        yield e


def _settings(emu: Emulator, cache: Path, **kw: Any) -> Settings:
    return Settings(cache_dir=cache, api_url=emu.base_url, registry_url=emu.registry_url,
                    http_retries=1, **kw)


@pytest.fixture(scope="module")
def warm(emu: Emulator, tmp_path_factory: pytest.TempPathFactory, tiny_tflite_path: Path,
         pls_path: Path) -> dict[str, Any]:
    """A cache with the dataset downloaded and both models applied (not to be mutated)."""
    cache = tmp_path_factory.mktemp("warm") / "cache"
    ds = CachedDataset(DATASET, settings=_settings(emu, cache), progress=False)
    nn = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    pls = PLSModelAdapter(coefficients_path=pls_path)
    results = {"nn": ds.apply_model(nn), "pls": ds.apply_model(pls)}
    ds.close()
    return {"cache": cache, "nn": nn, "pls": pls, "results": results}


@pytest.fixture
def ds(emu: Emulator, warm: dict[str, Any]) -> Iterator[CachedDataset]:
    d = CachedDataset(DATASET, settings=_settings(emu, warm["cache"]), progress=False)
    yield d
    d.close()


def _copy_cache(warm: dict[str, Any], tmp_path: Path) -> Path:
    dst = tmp_path / "cache"
    shutil.copytree(warm["cache"], dst)
    return dst


# ---------------------------------------------------------------------------- lineage
def test_lineage_reports_every_link_of_the_chain(ds: CachedDataset, emu: Emulator,
                                                 warm: dict[str, Any],
                                                 tiny_tflite_path: Path) -> None:
    nn = warm["nn"]
    row = warm["results"]["nn"].set_index("card_id").loc[52001]
    lin = card_lineage(ds, 52001, nn, verify=True)

    man = lin["manifest"]
    assert man["status"] == "present"
    assert man["key"] == ds.store.ref(manifest_ref(ds.settings, DATASET))
    assert man["row"]["drug"] == "ceftriaxone" and man["row"]["split"] in ("dev", "test")
    assert datetime.fromisoformat(man["fetched_at"].replace("Z", "+00:00"))

    served = emu.catalog.image_bytes(52001)
    raw = lin["raw"]
    assert raw["status"] == "present" and raw["key"] == row["raw_key"]
    assert raw["sha256"] == raw["key"] == hashlib.sha256(served).hexdigest()
    assert raw["md5"] == raw["md5_manifest"] == hashlib.md5(served).hexdigest()
    assert raw["md5_matches_manifest"] is True
    assert raw["source_url"].startswith(emu.base_url) and "52001_processed.png" in raw["source_url"]
    assert raw["bytes"] == len(served) and raw["truncated"] is False
    assert raw["key_check"] == "ok" and raw["verified"] == "ok"

    pre, ten, pred = lin["preprocessed"], lin["tensor"], lin["prediction"]
    assert pre["key"] == row["preprocessed_key"] and pre["status"] == "present"
    assert pre["pipeline"]["name"] == "pad_nn"
    assert pre["pipeline"]["parameters"]["crop_box"] == [71, 359, 707, 849]
    assert pre["pipeline"]["code_version"]
    assert ten["key"] == row["tensor_key"] and ten["spec"]["shape"] == [454, 454, 3]
    assert pred["key"] == row["prediction_key"]
    for section in (pre, ten, pred):
        assert section["key_check"] == "ok", section
    assert pre["verified"] == ten["verified"] == "ok"
    assert pred["record"]["prediction"] == row["prediction"]
    assert pred["record"]["probability"] == row["probability"]
    assert pred["record"]["energy"] == row["energy"] and pred["record"]["status"] == "ok"
    assert pred["model_signature"] == nn.get_cache_signature() == lin["model"]["signature"]
    assert pred["model"]["weights_sha256"] == hashlib.sha256(
        tiny_tflite_path.read_bytes()).hexdigest()
    assert pred["signature_matches_model"] is True
    assert {"pad_assets", "numpy", "python"} <= set(pred["libraries"])
    assert pred["host"] == socket.gethostname()
    assert datetime.fromisoformat(pred["created_at"].replace("Z", "+00:00"))
    assert json.loads(json.dumps(lin)) == lin  # plain JSON all the way down

    assert ds.lineage(52001, nn) == card_lineage(ds, 52001, nn)  # the facade delegates


def test_lineage_without_model_lists_cached_predictions_of_every_model(
        ds: CachedDataset, warm: dict[str, Any]) -> None:
    lin = card_lineage(ds, 52002)
    sigs = {p["model"]["signature"] for p in lin["cached_predictions"]}
    assert sigs == {warm["nn"].get_cache_signature(), warm["pls"].get_cache_signature()}
    assert all(p["key_check"] == "ok" for p in lin["cached_predictions"])
    assert "preprocessed" not in lin and lin["raw"]["status"] == "present"


def test_pls_lineage_carries_the_drug_context_and_unknown_drug(ds: CachedDataset,
                                                              warm: dict[str, Any]) -> None:
    pls = warm["pls"]
    ok = card_lineage(ds, 52002, pls)["prediction"]
    assert ok["context"] == {"drug": "sulfamethoxazole"} and ok["record"]["status"] == "ok"
    unknown = card_lineage(ds, 52005, pls)["prediction"]
    assert unknown["record"]["status"] == "unknown_drug"
    assert NOT_IN_PLS in unknown["record"]["detail"]


def test_missing_layers_are_reported_not_raised(emu: Emulator, tmp_path: Path,
                                                pls_path: Path, warm: dict[str, Any]) -> None:
    cache = tmp_path / "cache"
    fresh = CachedDataset(DATASET, settings=_settings(emu, cache), progress=False)
    nothing = card_lineage(fresh, 52000, warm["nn"])  # nothing cached at all
    assert nothing["manifest"]["status"] == "missing" and nothing["raw"]["status"] == "missing"
    assert nothing["prediction"]["status"] == "missing"

    fresh.download_and_cache()
    pls = PLSModelAdapter(coefficients_path=pls_path)
    lin = card_lineage(fresh, 52000, pls)
    assert lin["raw"]["status"] == "present"
    for layer in ("preprocessed", "tensor", "prediction"):
        assert lin[layer]["status"] == "missing" and lin[layer]["reason"], lin[layer]
        assert len(lin[layer]["key"]) == 64  # the key it would have
    assert lin["preprocessed"]["pipeline"]["name"] == "pad_pls"

    failed = card_lineage(fresh, FAILED_CARD, pls)
    assert failed["raw"]["status"] == "failed"
    assert "404" in failed["raw"]["reason"] and f"{FAILED_CARD}_processed.png" in failed[
        "raw"]["reason"]
    assert failed["prediction"]["status"] == "missing"

    unknown = card_lineage(fresh, 123)
    assert unknown["status"] == "unknown card"
    assert unknown["manifest"]["status"] == "card not in manifest"
    text = format_lineage(failed)
    assert "RAW [failed]" in text and "PREDICTION [missing]" in text
    fresh.close()


def test_lineage_survives_a_collected_parent_layer(emu: Emulator, warm: dict[str, Any],
                                                  tmp_path: Path) -> None:
    """A GC'd tensor leaves the prediction's lineage readable, with the gap named."""
    cache = _copy_cache(warm, tmp_path)
    d = CachedDataset(DATASET, settings=_settings(emu, cache), progress=False)
    tkey = warm["results"]["nn"].set_index("card_id").loc[52003, "tensor_key"]
    with d.store.index.transaction() as con:  # what a GC of that layer would leave
        con.execute("DELETE FROM items WHERE key=?", (tkey,))
    lin = card_lineage(d, 52003, warm["nn"])
    assert lin["tensor"]["status"] == "missing" and lin["tensor"]["key"] == tkey
    assert lin["prediction"]["status"] == "present" and lin["prediction"]["key_check"] == "ok"
    out = export_audit(d, tmp_path / "audit")
    rows = _read_csv(out["csv"])
    gap = [r for r in rows if r["card_id"] == "52003" and r["model_name"] == warm["nn"].name]
    assert gap[0]["layers_missing"] == "tensor" and gap[0]["chain_check"] == "ok"
    d.close()


def test_lineage_names_the_dagster_partition_and_run(emu: Emulator, warm: dict[str, Any],
                                                     tmp_path: Path) -> None:
    cache = _copy_cache(warm, tmp_path)
    d = CachedDataset(DATASET, settings=_settings(emu, cache), progress=False)
    pkey = warm["results"]["nn"].set_index("card_id").loc[52004, "prediction_key"]
    rkey = warm["results"]["nn"].set_index("card_id").loc[52004, "raw_key"]
    asset = "lineage_ds/prediction_nn_drug"
    items, run_refs = dagster_run_records(asset, ["52004"], "run-1234")
    before = datetime.now(timezone.utc)
    d.store.put(items, refs=[(f"asset/{asset}/52004", pkey),
                             ("asset/lineage_ds/raw_image/52004", rkey),
                             (f"asset/{asset}/52000", pkey),  # another partition: not this card
                             *run_refs])
    after = datetime.now(timezone.utc)
    lin = card_lineage(d, 52004, warm["nn"])
    [entry] = lin["prediction"]["dagster"]
    recorded_at = datetime.fromisoformat(entry.pop("recorded_at"))
    # The time the ref was written, as UTC, not any other timestamp of the chain.
    assert recorded_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= recorded_at <= after + timedelta(seconds=1)
    assert entry == {"asset_key": asset, "partition": "52004", "run_id": "run-1234"}
    assert lin["prediction"]["run_id"] == "run-1234"
    assert lin["raw"]["dagster"][0]["asset_key"] == "lineage_ds/raw_image"
    assert lin["raw"]["dagster"][0]["run_id"] is None
    from pad_assets.maintenance import verify

    report = verify(d.store)  # the run records are real items: no dangling ref
    assert report.ok, str(report)
    d.close()


def test_verify_link_detects_metadata_that_does_not_hash_to_its_key(
        ds: CachedDataset, warm: dict[str, Any]) -> None:
    row = warm["results"]["nn"].set_index("card_id").loc[52000]
    keys = {"raw": row["raw_key"], "preprocessed": row["preprocessed_key"],
            "tensor": row["tensor_key"], "prediction": row["prediction_key"]}
    metas = ds.store.metas(list(keys.values()))
    for layer, key in keys.items():
        assert verify_link(layer, key, metas[key]) == "ok"
    pre = json.loads(json.dumps(metas[keys["preprocessed"]]))
    pre["pipeline"]["parameters"]["size"] = [224, 224]  # a lie about the parameters
    assert verify_link("preprocessed", keys["preprocessed"], pre).startswith("mismatch")
    pred = json.loads(json.dumps(metas[keys["prediction"]]))
    pred["model"]["signature"] = "0" * 64
    assert verify_link("prediction", keys["prediction"], pred).startswith("mismatch")
    assert verify_link("tensor", keys["tensor"], {}).startswith("unverifiable")


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "12; rm", "-3", 1.5, True, None])
def test_card_ids_must_be_integers(bad: Any) -> None:
    with pytest.raises(InvalidInputError, match="card id"):
        card_id_of(bad)


# ---------------------------------------------------------------------------- CLI
def _env(monkeypatch: pytest.MonkeyPatch, emu: Emulator, cache: Path) -> None:
    point_env_at(emu, cache, monkeypatch)


def test_lineage_cli_json_and_text(emu: Emulator, warm: dict[str, Any],
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str],
                                   tiny_tflite_path: Path, ds: CachedDataset) -> None:
    _env(monkeypatch, emu, Path("/nonexistent-not-used"))
    # labels are not passed: they are found from cached predictions of the same weights
    assert cli_main(["lineage", DATASET, "52001", "--model", f"tflite:{tiny_tflite_path}",
                     "--json", "--cache-dir", str(warm["cache"])]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(card_lineage(ds, 52001, warm["nn"])))

    # the full chain with --verify, a short tree by default
    assert cli_main(["lineage", DATASET, "52001", "--verify", "--cache-dir",
                     str(warm["cache"])]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"card 52001 of dataset {DATASET}")
    assert "MANIFEST [present]" in text and "RAW [present]" in text
    assert "CACHED PREDICTIONS [2]" in text
    assert cli_main(["--cache-dir", str(warm["cache"]), "lineage", DATASET, "52001"]) == 0
    tree = capsys.readouterr().out
    assert tree.startswith(f"card 52001 of {DATASET}") and len(tree.splitlines()) <= 12
    assert "cached predictions [2]" in tree
    for name in (warm["nn"].name, warm["pls"].name):
        assert name in tree


def test_model_specs_resolve_to_the_right_adapter(emu: Emulator, warm: dict[str, Any],
                                                  tmp_path: Path, pls_path: Path,
                                                  tiny_tflite_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(emu, tmp_path / "cache")
    store = ContentStore(settings.cache_dir)
    by_id = resolve_model_spec(str(TFLITE_ID), settings, store)
    assert isinstance(by_id, PADTensorFlowAdapter)
    assert by_id.get_cache_signature() == warm["nn"].get_cache_signature()  # same bytes
    assert isinstance(resolve_model_spec(str(PLS_ID), settings, store), PLSModelAdapter)
    assert isinstance(resolve_model_spec(f"pls:{PLS_ID}", settings, store), PLSModelAdapter)
    assert isinstance(resolve_model_spec(f"pls:{pls_path}", settings, store), PLSModelAdapter)
    with_labels = resolve_model_spec(f"tflite:{tiny_tflite_path}", settings, store,
                                     labels=TINY_DRUG_LABELS)
    assert with_labels.get_cache_signature() == warm["nn"].get_cache_signature()
    with pytest.raises(InvalidInputError, match="--labels"):  # empty cache: labels unknown
        resolve_model_spec(f"tflite:{tiny_tflite_path}", settings, store)
    config = tmp_path / "cfg.yaml"
    config.write_text(f"datasets: [{DATASET}]\nmodels:\n  - name: my_pls\n    adapter: pls\n"
                      f"    path: {pls_path}\n")
    monkeypatch.setenv("PAD_ASSETS_CONFIG", str(config))
    assert isinstance(resolve_model_spec("my_pls", settings, store), PLSModelAdapter)
    with pytest.raises(InvalidInputError, match="not understood"):
        resolve_model_spec("no_such_model", settings, store)
    store.close()


# ---------------------------------------------------------------------------- audit
def _read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def _prov_ids(doc: dict[str, Any]) -> set[str]:
    return set(doc.get("entity", {})) | set(doc.get("activity", {})) | set(doc.get("agent", {}))


def test_audit_csv_has_one_row_per_card_and_model_with_its_chain(
        ds: CachedDataset, warm: dict[str, Any], tmp_path: Path, emu: Emulator) -> None:
    paths = export_audit(ds, tmp_path / "out")
    rows = _read_csv(paths["csv"])
    assert list(rows[0]) == CSV_COLUMNS
    with_images = len(CARDS)  # FAILED_CARD has no image, hence no prediction
    assert len(rows) == 2 * with_images
    order = [(int(r["card_id"]), r["model_name"]) for r in rows]
    assert order == sorted(order)
    for name, frame in (("nn", warm["results"]["nn"]), ("pls", warm["results"]["pls"])):
        model = warm[name]
        mine = {int(r["card_id"]): r for r in rows if r["model_signature"] ==
                model.get_cache_signature()}
        ok = frame[frame["prediction_key"].notna()].set_index("card_id")
        assert set(mine) == set(ok.index)
        for cid, r in mine.items():
            for col in ("raw_key", "preprocessed_key", "tensor_key", "prediction_key"):
                assert r[col] == ok.loc[cid, col]
            assert r["status"] == ok.loc[cid, "status"]
            if ok.loc[cid, "probability"] is not None and pd.notna(ok.loc[cid, "probability"]):
                assert float(r["probability"]) == ok.loc[cid, "probability"]  # repr round-trip
    for r in rows:
        assert r["chain_check"] == "ok" and r["layers_missing"] == ""
        assert r["sha256"] == r["raw_key"] and r["md5"] == r["md5_manifest"]
        assert r["md5_matches_manifest"] == "true" and r["dataset"] == DATASET
        assert r["source_url"].startswith(emu.base_url)
        assert json.loads(r["libraries"])["pad_assets"] and r["host"] == socket.gethostname()
        assert r["created_at"].endswith("Z") and r["fetched_at"].endswith("Z")
        assert json.loads(r["tensor_spec"])["shape"]
        pipeline = (warm["pls"] if r["model_name"] == warm["pls"].name
                    else warm["nn"]).get_required_preprocessing()
        assert r["pipeline"] == pipeline.name
        assert r["pipeline_code_version"] == pipeline.code_version
        assert json.loads(r["pipeline_parameters"]) == pipeline.get_parameters()  # PLS: {}
    pls_rows = [r for r in rows if r["model_name"] == warm["pls"].name]
    assert {r["status"] for r in pls_rows} == {"ok", "unknown_drug"}
    assert all(json.loads(r["context"])["drug"] for r in pls_rows)


def test_audit_prov_json_is_a_consistent_prov_document(ds: CachedDataset,
                                                       warm: dict[str, Any],
                                                       tmp_path: Path) -> None:
    paths = export_audit(ds, tmp_path / "out")
    doc = json.loads(paths["prov"].read_text())
    assert set(doc) == {"prefix", "entity", "activity", "agent", "wasGeneratedBy", "used",
                        "wasDerivedFrom", "wasAssociatedWith"}
    assert doc["prefix"]["pad"].startswith("urn:")
    ids = _prov_ids(doc)
    kinds = {i.split(":", 1)[1].split("/", 1)[0] for i in ids}
    assert {"raw", "preprocessed", "tensor", "prediction", "weights", "manifest", "download",
            "preprocess", "build_tensor", "predict", "agent"} <= kinds
    frame = warm["results"]["nn"]
    for key in frame["raw_key"].dropna():
        assert f"pad:raw/{key}" in doc["entity"]
        assert doc["entity"][f"pad:raw/{key}"]["pad:sha256"] == key
    endpoints = {"prov:entity", "prov:activity", "prov:agent", "prov:generatedEntity",
                 "prov:usedEntity", "prov:plan"}
    for rel in ("wasGeneratedBy", "used", "wasDerivedFrom", "wasAssociatedWith"):
        for rid, body in doc[rel].items():
            assert rid.startswith("_:")
            for k, v in body.items():
                if k in endpoints:
                    assert v in ids, f"{rel} {rid} points at undefined {v}"
    # every prediction: generated by a predict activity that used its tensor and weights
    gen = {b["prov:entity"]: b["prov:activity"] for b in doc["wasGeneratedBy"].values()}
    used: dict[str, set[str]] = {}
    for b in doc["used"].values():
        used.setdefault(b["prov:activity"], set()).add(b["prov:entity"])
    assoc = {b["prov:activity"]: b["prov:agent"] for b in doc["wasAssociatedWith"].values()}
    preds = [e for e in doc["entity"] if e.startswith("pad:prediction/")]
    assert len(preds) == 2 * len(CARDS)
    for e in preds:
        act = gen[e]
        assert act.startswith("pad:predict/")
        assert any(u.startswith("pad:tensor/") for u in used[act])
        assert any(u.startswith("pad:weights/") for u in used[act])
        agent = doc["agent"][assoc[act]]
        assert json.loads(agent["pad:libraries"])["numpy"] and agent["pad:host"]
    # a PROV tool loads it (the reference Python implementation, a core dependency)
    from prov.model import ProvDocument

    loaded = ProvDocument.deserialize(str(paths["prov"]), format="json")
    assert len(list(loaded.get_records())) > len(preds)


def test_audit_output_is_deterministic_and_filterable(ds: CachedDataset, warm: dict[str, Any],
                                                      tmp_path: Path) -> None:
    a = export_audit(ds, tmp_path / "a")
    b = export_audit(ds, tmp_path / "b")
    assert a["csv"].read_bytes() == b["csv"].read_bytes()
    assert a["prov"].read_bytes() == b["prov"].read_bytes()
    only_nn = _read_csv(export_audit(ds, tmp_path / "c", models=[warm["nn"]])["csv"])
    assert {r["model_name"] for r in only_nn} == {warm["nn"].name} and len(only_nn) == len(CARDS)
    by_name = _read_csv(export_audit(ds, tmp_path / "d", models=[warm["pls"].name])["csv"])
    assert {r["model_name"] for r in by_name} == {warm["pls"].name}
    prefix = warm["pls"].get_cache_signature()[:10]
    assert _read_csv(export_audit(ds, tmp_path / "e", models=[prefix])["csv"]) == by_name
    with pytest.raises(InvalidInputError, match="no cached prediction"):
        export_audit(ds, tmp_path / "f", models=["never_ran"])


def test_audit_cli_defaults_to_every_cached_model(emu: Emulator, warm: dict[str, Any],
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _env(monkeypatch, emu, warm["cache"])
    assert cli_main(["audit", DATASET, "--output", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert f"{2 * len(CARDS)} prediction(s) exported" in out
    rows = _read_csv(tmp_path / "cli" / f"{DATASET}_audit.csv")
    assert len({r["model_signature"] for r in rows}) == 2
    assert cli_main(["audit", DATASET, "-o", str(tmp_path / "cli2"), "-m", warm["nn"].name,
                     "--cache-dir", str(warm["cache"])]) == 0
    rows = _read_csv(tmp_path / "cli2" / f"{DATASET}_audit.csv")
    assert {r["model_name"] for r in rows} == {warm["nn"].name}


def test_audit_of_an_empty_cache_writes_valid_empty_files(emu: Emulator, tmp_path: Path) -> None:
    d = CachedDataset(DATASET, settings=_settings(emu, tmp_path / "cache"), progress=False)
    paths = export_audit(d, tmp_path / "out")
    assert _read_csv(paths["csv"]) == []
    assert json.loads(paths["prov"].read_text())["prefix"]["pad"]
    d.close()
