"""Incremental sync: a cursor sensor per dataset that turns new manifest cards into new
partitions and requests one batched run for exactly those; a schedule refreshes manifests.

(Partitioned schedules refuse dynamic partitions, hence a sensor.)
"""


import json
from collections.abc import Sequence
from typing import Any

import dagster as dg

from .assets import DatasetAssetKeys, partitions_for
from .config import DatasetConfig, ProjectConfig
from .resources import PadResource

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def range_tags(keys: Sequence[str]) -> dict[str, str]:
    """Run tags for a contiguous range of dynamic partitions (new ones are appended)."""
    return {RANGE_START: keys[0], RANGE_END: keys[-1]}


def new_card_keys(instance: dg.DagsterInstance, ds: DatasetConfig, card_ids: Sequence[int]
                  ) -> list[str]:
    """New card ids as partition keys, in card-id order (the UI lists partitions in the
    order they were added; new ones are appended, so they form one contiguous range)."""
    existing = set(instance.get_dynamic_partitions(partitions_for(ds).name))
    return [str(c) for c in sorted(set(int(c) for c in card_ids)) if str(c) not in existing]


def build_new_cards_sensor(ds: DatasetConfig, project: ProjectConfig,
                           job: Any) -> dg.SensorDefinition:
    keys = DatasetAssetKeys(ds, project.models)
    parts = partitions_for(ds)

    @dg.sensor(name=f"{ds.key}_new_cards", job=job, minimum_interval_seconds=600,
               default_status=dg.DefaultSensorStatus.STOPPED,
               description=f"Adds new cards of {ds.name}'s manifest as partitions and "
                           "requests one run for exactly those.")
    def new_cards(context: dg.SensorEvaluationContext, pad: PadResource) -> dg.SensorResult:
        dataset = pad.dataset(ds.name)
        try:
            manifest = dataset.manifest(refresh=not dataset.settings.offline)
        finally:
            dataset.close()
        version = manifest.files and json.dumps(manifest.files, sort_keys=True)
        cursor = json.loads(context.cursor) if context.cursor else {}
        new = new_card_keys(context.instance, ds, manifest.card_ids)
        next_cursor = json.dumps({"manifest_files": version,
                                  "known": len(manifest.card_ids)})
        if not new:
            return dg.SensorResult(skip_reason=f"no new cards in {ds.name} "
                                   f"({len(manifest.card_ids)} known; previous cursor "
                                   f"{cursor.get('known', 0)})", cursor=next_cursor)
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"{ds.key}:{new[0]}-{new[-1]}:{len(new)}",
                                        asset_selection=keys.image_keys,
                                        tags={**range_tags(new), "pad/new_cards": str(len(new))})],
            dynamic_partitions_requests=[parts.build_add_request(new)],
            cursor=next_cursor)

    return new_cards


def build_schedules(project: ProjectConfig, manifest_job: Any) -> list[dg.ScheduleDefinition]:
    return [dg.ScheduleDefinition(name="refresh_manifests", job=manifest_job,
                                  cron_schedule="0 2 * * *",
                                  default_status=dg.DefaultScheduleStatus.STOPPED,
                                  description="Nightly refresh of every dataset manifest.")]
