"""Issue 14 acceptance: what the Dagster UI shows after the demo and a sync, read through
the real webserver's GraphQL (the same API the UI's pages use)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from pad_assets.devtools.demo_models import demo_model_artifacts
from pad_assets.devtools.emulator import DatasetSpec, Emulator, EmulatorConfig
from pad_assets.orchestration.assets import DatasetAssetKeys
from pad_assets.orchestration.definitions import (
    build_definitions,
    comparison_job_name,
    location_tags,
    sync_job_name,
)
from pad_assets.orchestration.resources import PadResource
from pad_assets.project_config import load_config
from pad_assets.settings import Settings

DS = "UI_DS"
FIRST = 70000
N_FIRST, N_NEW = 10, 4
CONFIG = f"""\
datasets:
  - name: {DS}
models:
  - {{name: nn_drug, adapter: pad_tflite, model_id: 16}}
  - {{name: nn_conc, adapter: pad_tflite, model_id: 17}}
  - {{name: pls_conc, adapter: pls, model_id: 18}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Webserver:
    """``dagster-webserver -m pad_assets.definitions`` on 127.0.0.1, queried over GraphQL."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dagster_webserver", "-m", "pad_assets.definitions",
             "-h", "127.0.0.1", "-p", str(self.port)], env=env, cwd=env["DAGSTER_HOME"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 240
        while time.time() < deadline:
            assert self.proc.poll() is None, "dagster-webserver exited"
            try:
                if self.query("{ assetNodes { id } }")["assetNodes"]:
                    return
            except (OSError, KeyError, TypeError, AssertionError):
                pass
            time.sleep(1)
        raise AssertionError("dagster-webserver did not serve the asset graph in 240 s")

    def query(self, q: str, variables: dict[str, Any] | None = None) -> Any:
        body = json.dumps({"query": q, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            doc = json.loads(resp.read())
        assert not doc.get("errors"), doc.get("errors")
        return doc["data"]

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def world(demo_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The demo, then a sensor tick with new cards and the sync chain it starts."""
    root = tmp_path_factory.mktemp("ui")
    config = EmulatorConfig(datasets=[DatasetSpec(DS, range(FIRST, FIRST + N_FIRST))],
                            models_provider=lambda: demo_model_artifacts(demo_cache_dir))
    saved = dict(os.environ)
    with Emulator(config) as emu:
        (root / "config.yaml").write_text(CONFIG)
        os.environ.update({"PAD_API_URL": emu.base_url, "PAD_REGISTRY_URL": emu.registry_url,
                           "PAD_CACHE_DIR": str(root / "cache"), "DAGSTER_DISABLE_TELEMETRY": "1",
                           "PAD_ASSETS_CONFIG": str(root / "config.yaml")})
        os.environ.pop("PAD_OFFLINE", None)
        try:
            from pad_assets.devtools import demo

            home = root / "dagster_home"
            with open(os.devnull, "w") as devnull:
                first = demo.run(DS, 0, True, 0, home, out=devnull)
                second = demo.run(DS, 0, True, 0, home, out=devnull)
            assert "DAGSTER_HOME" not in os.environ or os.environ["DAGSTER_HOME"] != str(
                home.resolve()), "demo.run must give the caller its environment back"
            os.environ["DAGSTER_HOME"] = str(home.resolve())  # the daemon's instance below
            sync = _sensor_tick_and_chain(emu)
            yield {"emu": emu, "home": home, "root": root, "first": first, "second": second,
                   "sync": sync, "env": dict(os.environ)}
        finally:
            os.environ.clear()
            os.environ.update(saved)


def _sensor_tick_and_chain(emu: Emulator) -> dict[str, Any]:
    """What the daemon does: tick the new-cards sensor, run its request, then the
    run-status sensor on that run's success, then the comparison run it requests."""
    project = load_config()
    ds = project.datasets[0]
    defs = build_definitions(project)
    emu.add_cards(DS, list(range(FIRST + 100, FIRST + 100 + N_NEW)))
    with dg.DagsterInstance.get() as instance:
        sensor = defs.resolve_sensor_def(f"{ds.key}_new_cards")
        tick = sensor(dg.build_sensor_context(instance=instance,
                                              resources={"pad": PadResource()}))
        (add,) = tick.dynamic_partitions_requests
        instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
        (req,) = tick.run_requests
        sync = defs.resolve_job_def(sync_job_name(ds.key)).execute_in_process(
            instance=instance, tags={**req.tags, **location_tags()},
            asset_selection=req.asset_selection)
        assert sync.success
        success = instance.get_records_for_run(
            sync.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS).records[0]
        after = defs.resolve_sensor_def(f"{ds.key}_comparison_after_images")
        ctx = dg.build_run_status_sensor_context(
            sensor_name=after.name, dagster_instance=instance,
            dagster_run=instance.get_run_by_id(sync.run_id),
            dagster_event=success.event_log_entry.dagster_event)
        request = after(ctx)
        assert isinstance(request, dg.RunRequest), request
        comparison = defs.resolve_job_def(comparison_job_name(ds.key)).execute_in_process(
            instance=instance, tags={**request.tags, **location_tags()})
        return {"new": list(add.partition_keys), "sync_run": sync.run_id,
                "materialized": [(e.asset_key.to_user_string(), e.partition)
                                 for e in sync.get_asset_materialization_events()],
                "comparison": comparison.asset_value(
                    DatasetAssetKeys(ds, project.models).comparison.path)}


CHECKS_Q = """{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks {
  checks { name executionForLatestMaterialization { status runId } } } } } }"""


def test_every_check_passed_or_failed_none_skipped_and_comparison_is_current(world) -> None:
    ws = Webserver(world["env"])
    try:
        nodes = ws.query(CHECKS_Q)["assetNodes"]
        statuses = {}
        for n in nodes:
            for c in n["assetChecksOrError"].get("checks", []):
                ex = c["executionForLatestMaterialization"]
                statuses["/".join(n["assetKey"]["path"]) + ":" + c["name"]] = (
                    ex and ex["status"])
        assert len(statuses) == 8, statuses
        assert all(s in ("SUCCEEDED", "FAILED") for s in statuses.values()), statuses
        # the sync run itself materialized the manifest and exactly the new cards' partitions
        sync = world["sync"]
        assert (f"{DS}/manifest", None) in sync["materialized"]
        parts = {p for _, p in sync["materialized"] if p}
        assert parts == set(sync["new"])
        assert len(sync["materialized"]) == 1 + N_NEW * 8
        # the comparison considered every published card of the new manifest
        value = sync["comparison"]
        assert value["published_cards"] == N_FIRST + N_NEW
        assert 0 < value["items_compared"] <= value["published_cards"]
        assert all(st == {"FRESH"} for st in _stale_by_partition(ws).values())
        # the demo's runs are filed under the code location (Overview lists them)
        runs = ws.query("{ runsOrError { ... on Runs { results { pipelineName "
                        "repositoryOrigin { repositoryLocationName } } } } }")
        origins = {r["pipelineName"]: r["repositoryOrigin"]
                   for r in runs["runsOrError"]["results"]}
        assert origins[f"{DS}_images_job"]["repositoryLocationName"] == \
            "pad_assets.definitions"
    finally:
        ws.stop()


def _stale_by_partition(ws: Webserver) -> dict[str, set[str]]:
    """Each image asset's set of per-partition stale statuses, over the first cards."""
    project = load_config()
    keys = DatasetAssetKeys(project.datasets[0], project.models)
    q = """query($k: [AssetKeyInput!], $p: [String!]!) { assetNodes(assetKeys: $k) {
             assetKey { path } staleStatusByPartition(partitions: $p) } }"""
    nodes = ws.query(q, {"k": [{"path": k.path} for k in keys.image_keys],
                         "p": [str(FIRST + i) for i in range(N_FIRST)]})["assetNodes"]
    assert len(nodes) == len(keys.image_keys)
    return {n["assetKey"]["path"][-1]: set(n["staleStatusByPartition"]) for n in nodes}


def test_second_demo_run_records_no_image_materialization(world) -> None:
    assert world["first"]["image_materializations"] == N_FIRST * 8
    assert world["second"]["image_materializations"] == 0
    assert world["second"]["downloaded"] is None or world["second"]["downloaded"] == 0


def _link_targets(md: str) -> list[tuple[list[str], str | None]]:
    out = []
    for url in re.findall(r"\]\((/assets/[^)]+)\)", md):
        parsed = urllib.parse.urlsplit(url)
        path = [urllib.parse.unquote(p) for p in parsed.path.split("/")[2:]]
        part = urllib.parse.parse_qs(parsed.query).get("partition", [None])[0]
        out.append((path, part))
    return out


MAT_Q = """query($path: [String!]!, $parts: [String!]) {
  assetOrError(assetKey: {path: $path}) { ... on Asset { key { path }
    assetMaterializations(partitions: $parts, limit: 1) { partition
      metadataEntries { label ... on MarkdownMetadataEntry { mdStr }
                        ... on TextMetadataEntry { text } ... on UrlMetadataEntry { url } } } } } }"""


OBS_Q = """query($path: [String!]!) { assetOrError(assetKey: {path: $path}) { ... on Asset {
  assetObservations(limit: 20) { runId partition metadataEntries { label } } } } }"""


def test_prediction_partition_links_resolve_to_the_same_card_in_every_layer(world) -> None:
    ws = Webserver(world["env"])
    try:
        card = str(FIRST + 3)
        data = ws.query(MAT_Q, {"path": [DS, "prediction_nn_drug"], "parts": [card]})
        (mat,) = data["assetOrError"]["assetMaterializations"]
        entries = {e["label"]: e for e in mat["metadataEntries"]}
        assert entries["source_url"]["url"].startswith("http://127.0.0.1")
        targets = _link_targets(entries["chain"]["mdStr"])
        layers = {p[-1] for p, part in targets if part}
        assert {"raw_image", "preprocessed_pad_nn", "preprocessed_pad_pls", "tensor_pad_nn",
                "tensor_pad_pls", "prediction_nn_drug", "prediction_nn_conc",
                "prediction_pls_conc"} <= layers
        raw_md5 = None
        for path, part in targets:
            got = ws.query(MAT_Q, {"path": path, "parts": [part] if part else None})
            asset = got["assetOrError"]
            assert asset and asset.get("key", {}).get("path") == path, (path, got)
            mats = asset["assetMaterializations"]
            assert mats, f"link to {path} {part} leads to no materialization"
            if part:
                assert mats[0]["partition"] == card
                meta = {e["label"]: e for e in mats[0]["metadataEntries"]}
                assert meta["card_id"]["text"] == card
                if path[-1] == "raw_image":
                    raw_md5 = meta["md5"]["text"]
                    assert meta["preview"]["mdStr"].startswith("![card")
        assert raw_md5 and raw_md5 == entries["raw_md5"]["text"]
        # what every card shares (model record, libraries, pipeline) is one click away: the
        # run's "shared facts" observation of the asset (design of issue 19: not per card)
        run_id = re.search(r"\]\(/runs/([^)]+)\)", entries["shared_facts"]["mdStr"]).group(1)
        obs = ws.query(OBS_Q, {"path": [DS, "prediction_nn_drug"]})
        labels = [{e["label"] for e in o["metadataEntries"]}
                  for o in obs["assetOrError"]["assetObservations"]
                  if o["runId"] == run_id and not o["partition"]]
        assert labels and {"model_record", "model_signature", "libraries",
                           "pipeline_parameters"} <= labels[0]
    finally:
        ws.stop()


def test_new_weights_and_a_new_manifest_mark_exactly_the_affected_assets_unsynced(
        world) -> None:
    """A re-uploaded model 16 (new weights, picked up by the lab) makes only
    prediction_nn_drug's partitions unsynced; a manifest with one more card makes the
    comparison unsynced and no image partition."""
    from pad_assets.models.tflite import PADTensorFlowAdapter

    emu: Emulator = world["emu"]
    cat = emu.catalog
    i = next(i for i, a in enumerate(cat._models) if int(a.record.get("id", -1)) == 16)
    old = cat._models[i]
    cat._models[i] = replace(old, data=old.data + b"\0" * 8,
                             record={**old.record, "version": "1.1"})
    try:
        PADTensorFlowAdapter(model_id=16, settings=Settings.from_env(), refresh=True)
    finally:
        cat._models[i] = old
    emu.add_cards(DS, [FIRST + 500])
    project = load_config()
    with dg.DagsterInstance.get() as instance:
        assert build_definitions(project).resolve_job_def(
            "refresh_manifests_job").execute_in_process(instance=instance).success
    ws = Webserver(world["env"])
    try:
        by = _stale_by_partition(ws)
        assert by["prediction_nn_drug"] == {"STALE"}, by
        for name, st in by.items():
            if name != "prediction_nn_drug":
                assert st == {"FRESH"}, (name, st)
        q = "{ assetNodes { assetKey { path } staleStatus staleCauses { reason key { path } } } }"
        nodes = {n["assetKey"]["path"][-1]: n for n in ws.query(q)["assetNodes"]}
        comp = nodes["model_comparison"]
        assert comp["staleStatus"] == "STALE", comp
        # the root cause Dagster names: the manifest has a new data version
        assert [c["key"]["path"][-1] for c in comp["staleCauses"]] == ["manifest"], comp
    finally:
        ws.stop()
        # The world is shared by this module's tests, in any order (pytest -p randomly):
        # pin the served weights again so the image partitions are FRESH for the others.
        PADTensorFlowAdapter(model_id=16, settings=Settings.from_env(), refresh=True)
