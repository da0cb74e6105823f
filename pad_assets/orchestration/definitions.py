"""Build the ``Definitions`` from a project config (datasets x models), so a lab adds a
dataset by editing YAML; ``pad_assets.definitions`` exposes the default one."""

from __future__ import annotations

from typing import Any

import dagster as dg

from .assets import DatasetAssetKeys, build_dataset_assets
from .checks import build_dataset_checks
from .config import ProjectConfig, load_config
from .io_manager import PadStoreIOManager
from .resources import PadResource
from .sync import build_new_cards_sensor, build_schedules


def images_job_name(ds_key: str) -> str:
    return f"{ds_key}_images_job"


def comparison_job_name(ds_key: str) -> str:
    return f"{ds_key}_comparison_job"


def build_definitions(project: ProjectConfig | None = None,
                      resources: dict[str, Any] | None = None) -> dg.Definitions:
    project = project or load_config()
    assets: list[Any] = []
    checks: list[Any] = []
    jobs: list[Any] = []
    sensors: list[Any] = []
    manifest_keys = []
    for ds in project.datasets:
        keys = DatasetAssetKeys(ds, project.models)
        assets += build_dataset_assets(ds, project)
        checks += build_dataset_checks(ds, project)
        manifest_keys.append(keys.manifest)
        images_job = dg.define_asset_job(
            images_job_name(ds.key), selection=dg.AssetSelection.assets(*keys.image_keys),
            description=f"Raw, preprocessed, tensor and prediction layers of {ds.name}'s cards.")
        comparison_job = dg.define_asset_job(
            comparison_job_name(ds.key),
            selection=dg.AssetSelection.assets(keys.comparison)
            | dg.AssetSelection.checks_for_assets(*keys.image_keys),
            description=f"Model comparison and integrity checks of {ds.name}.")
        jobs += [images_job, comparison_job]
        sensors.append(build_new_cards_sensor(ds, project, images_job))
    manifest_job = dg.define_asset_job("refresh_manifests_job",
                                       selection=dg.AssetSelection.assets(*manifest_keys))
    jobs.append(manifest_job)
    pad = PadResource()
    res = {"pad": pad, "pad_io_manager": PadStoreIOManager(pad=pad)}
    if resources:
        res.update(resources)
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=jobs, sensors=sensors,
                          schedules=build_schedules(project, manifest_job), resources=res)
