"""Build the ``Definitions`` from a project config (datasets x models), so a lab adds a
dataset by editing YAML; ``pad_assets.definitions`` exposes the default one."""


from typing import Any

import dagster as dg

from ..project_config import ProjectConfig, load_config
from ..settings import Settings
from .assets import DatasetAssetKeys, build_dataset_assets
from .io_manager import PadStoreIOManager
from .resources import PadResource
from .sync import build_comparison_sensor, build_new_cards_sensor, build_schedules

#: the code location's name when loaded with ``dagster dev -m pad_assets.definitions`` or the
#: project's workspace.yaml; runs tagged with it are listed under the location in the UI.
LOCATION_NAME = "pad_assets.definitions"
REPOSITORY_LABEL = f"__repository__@{LOCATION_NAME}"


def location_tags() -> dict[str, str]:
    """The tag the UI's job pages filter runs by (see ``file_run_under_location``)."""
    return {".dagster/repository": REPOSITORY_LABEL}


def file_run_under_location(instance: dg.DagsterInstance, run_id: str) -> None:
    """File an in-process run (the demo's) under this code location, as Dagster's own
    ``dagster run migrate-repository`` does: an in-process run has no job origin, and the
    UI's Overview timeline and job pages leave such runs out ("No runs")."""
    from dagster._core.remote_origin import (
        RegisteredCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )

    run = instance.get_run_by_id(run_id)
    if run is None or run.remote_job_origin is not None:
        return
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin(LOCATION_NAME),
                                                    "__repository__"), run.job_name)
    instance.run_storage.replace_job_origin(run, origin)


def images_job_name(ds_key: str) -> str:
    return f"{ds_key}_images_job"


def sync_job_name(ds_key: str) -> str:
    return f"{ds_key}_sync_job"


def comparison_job_name(ds_key: str) -> str:
    return f"{ds_key}_comparison_job"


def build_definitions(project: ProjectConfig | None = None,
                      resources: dict[str, Any] | None = None) -> dg.Definitions:
    project = project or load_config()
    settings = Settings.from_env()
    assets: list[Any] = []
    jobs: list[Any] = []
    sensors: list[Any] = []
    manifest_keys = []
    for ds in project.datasets:
        keys = DatasetAssetKeys(ds, project.models)
        assets += build_dataset_assets(ds, project, settings)
        manifest_keys.append(keys.manifest)
        images_job = dg.define_asset_job(
            images_job_name(ds.key), selection=dg.AssetSelection.assets(*keys.image_keys),
            description=f"Raw, preprocessed, tensor and prediction layers of {ds.name}'s "
                        "cards, with their checks (one run per batch of partitions).")
        sync_job = dg.define_asset_job(
            sync_job_name(ds.key),
            selection=dg.AssetSelection.assets(keys.manifest, *keys.image_keys),
            description=f"The manifest of {ds.name} and the image layers of its new cards "
                        "(launched by the new-cards sensor), with their checks.")
        comparison_job = dg.define_asset_job(
            comparison_job_name(ds.key), selection=dg.AssetSelection.assets(keys.comparison),
            description=f"Model comparison of {ds.name} and its check.")
        jobs += [images_job, sync_job, comparison_job]
        sensors.append(build_new_cards_sensor(ds, project, sync_job))
        sensors.append(build_comparison_sensor(
            ds, project, comparison_job, [images_job.name, sync_job.name]))
    manifest_job = dg.define_asset_job("refresh_manifests_job",
                                       selection=dg.AssetSelection.assets(*manifest_keys),
                                       description="Refresh every dataset's manifest.")
    jobs.append(manifest_job)
    pad = PadResource()
    res = {"pad": pad, "pad_io_manager": PadStoreIOManager(pad=pad)}
    if resources:
        res.update(resources)
    from ..deployment.executor import executor_from_env  # PAD_ASSETS_DASK: image steps on dask

    return dg.Definitions(assets=assets, jobs=jobs, sensors=sensors,
                          schedules=build_schedules(project, manifest_job), resources=res,
                          executor=executor_from_env())
