"""The sync chain: new cards -> manifest + their image partitions -> comparison.

1. A cursor sensor per dataset (``<dataset>_new_cards``) reads the registry; when it lists
   cards that are not partitions yet, it adds exactly those as dynamic partitions and
   requests ONE run of the sync job for them: the ``manifest`` asset (so the manifest the
   comparison reads is the new one) and the image layers of the new cards, with their checks.
   (Partitioned schedules refuse dynamic partitions, hence a sensor.)
2. A run-status sensor (``<dataset>_comparison_after_images``) requests the comparison job
   (comparison + its check) after every successful run that materialized the dataset's
   manifest or prediction partitions, whoever launched it (the sensor, a backfill, a UI
   button).

Why a run-status sensor and not an automation condition: ``AutomationCondition.eager()`` on
the comparison waits while any upstream partition is missing, and a card whose download
failed stays missing for good, so the comparison would never run again; a custom condition
would be evaluated over every prediction partition on every tick. The run-status sensor
fires once per finished run, exactly when the inputs changed, and is testable in-process.
The comparison cannot simply share the images run: the image step yields per-partition
events, not outputs, so a downstream step in the same run would be skipped.
"""

import base64
import json
import zlib
from collections.abc import Sequence
from typing import Any

import dagster as dg

from ..project_config import DatasetConfig, ProjectConfig
from .assets import DatasetAssetKeys, partitions_for
from .resources import PadResource

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def range_tags(keys: Sequence[str]) -> dict[str, str]:
    """Run tags for a contiguous range of dynamic partitions (new ones are appended)."""
    return {RANGE_START: keys[0], RANGE_END: keys[-1]}


def new_card_keys(instance: dg.DagsterInstance, ds: DatasetConfig, card_ids: Sequence[int]
                  ) -> list[str]:
    """New card ids as partition keys, in card-id order (the UI lists partitions in the
    order they were added; new ones are appended, so they form one contiguous range).
    Reads every partition key once: for a first sync; a sensor tick uses ``CardSetCursor``."""
    existing = set(instance.get_dynamic_partitions(partitions_for(ds).name))
    return [str(c) for c in sorted(set(int(c) for c in card_ids)) if str(c) not in existing]


class CardSetCursor:
    """The card ids a sensor has already seen, carried in its cursor (sorted, delta-coded,
    zlib, base64: 8,001 cards are ~6 kB), so a tick compares the manifest with the cursor in
    memory and asks the instance about the candidates only, never about every partition."""

    def __init__(self, text: str | None) -> None:
        doc = json.loads(text) if text else {}
        self.manifest_files: str | None = doc.get("manifest_files")
        self.known: int = int(doc.get("known", 0))
        self.cards: set[int] | None = (set(_decode_ids(doc["cards"])) if doc.get("cards")
                                       else None)

    @staticmethod
    def dump(manifest_files: str | None, card_ids: Sequence[int]) -> str:
        ids = sorted(set(int(c) for c in card_ids))
        return json.dumps({"manifest_files": manifest_files, "known": len(ids),
                           "cards": _encode_ids(ids)})


def _encode_ids(ids: Sequence[int]) -> str:
    deltas = [b - a for a, b in zip([0, *ids[:-1]], ids, strict=True)]
    return base64.b64encode(zlib.compress(",".join(map(str, deltas)).encode(), 9)).decode()


def _decode_ids(text: str) -> list[int]:
    raw = zlib.decompress(base64.b64decode(text)).decode()
    out, total = [], 0
    for d in raw.split(","):
        total += int(d)
        out.append(total)
    return out


def new_cards_since(instance: dg.DagsterInstance, ds: DatasetConfig, cursor: CardSetCursor,
                    card_ids: Sequence[int]) -> list[str]:
    """Cards of the manifest not yet partitions: the manifest minus the cursor's set, each
    candidate confirmed with one indexed lookup (O(new cards)); without a cursor set (the
    first tick) one read of the partition keys."""
    if cursor.cards is None:
        return new_card_keys(instance, ds, card_ids)
    name = partitions_for(ds).name
    candidates = sorted(set(int(c) for c in card_ids) - cursor.cards)
    return [str(c) for c in candidates if not instance.has_dynamic_partition(name, str(c))]


def build_new_cards_sensor(ds: DatasetConfig, project: ProjectConfig,
                           job: Any) -> dg.SensorDefinition:
    keys = DatasetAssetKeys(ds, project.models)
    parts = partitions_for(ds)

    @dg.sensor(name=f"{ds.key}_new_cards", job=job, minimum_interval_seconds=600,
               default_status=dg.DefaultSensorStatus.STOPPED,
               description=f"Adds new cards of {ds.name}'s manifest as partitions and "
                           "requests one run: the manifest asset plus the image layers of "
                           "exactly those cards, with their checks. The comparison follows "
                           "through the run-status sensor. A tick compares the manifest with "
                           "the card set in its cursor (no scan of the partitions).")
    def new_cards(context: dg.SensorEvaluationContext, pad: PadResource) -> dg.SensorResult:
        dataset = pad.dataset(ds.name)
        try:
            manifest = dataset.manifest(refresh=not dataset.settings.offline)
        finally:
            dataset.close()
        version = manifest.files and json.dumps(manifest.files, sort_keys=True)
        cursor = CardSetCursor(context.cursor)
        if cursor.cards is not None and version and version == cursor.manifest_files:
            return dg.SensorResult(skip_reason=f"{ds.name}: manifest unchanged "
                                   f"({cursor.known} cards)", cursor=context.cursor)
        new = new_cards_since(context.instance, ds, cursor, manifest.card_ids)
        next_cursor = CardSetCursor.dump(version, manifest.card_ids)
        if not new:
            return dg.SensorResult(skip_reason=f"no new cards in {ds.name} "
                                   f"({len(manifest.card_ids)} known; previous cursor "
                                   f"{cursor.known})", cursor=next_cursor)
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"{ds.key}:{new[0]}-{new[-1]}:{len(new)}",
                                        asset_selection=[keys.manifest, *keys.image_keys],
                                        tags={**range_tags(new), "pad/new_cards": str(len(new))})],
            dynamic_partitions_requests=[parts.build_add_request(new)],
            cursor=next_cursor)

    return new_cards


def comparison_inputs_changed(run: dg.DagsterRun, keys: DatasetAssetKeys,
                              images_job_names: Sequence[str]) -> bool:
    """Did this run (possibly) materialize the comparison's inputs?"""
    inputs = {keys.manifest, *(keys.prediction(m) for m in keys.models)}
    if run.asset_selection is not None:
        return bool(set(run.asset_selection) & inputs)
    return run.job_name in images_job_names


def build_comparison_sensor(ds: DatasetConfig, project: ProjectConfig, comparison_job: Any,
                            images_job_names: Sequence[str]) -> dg.SensorDefinition:
    keys = DatasetAssetKeys(ds, project.models)

    @dg.run_status_sensor(
        name=f"{ds.key}_comparison_after_images", run_status=dg.DagsterRunStatus.SUCCESS,
        request_job=comparison_job, minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"After a successful run that materialized {ds.name}'s manifest or "
                    "prediction partitions, re-runs the model comparison and its check.")
    def comparison_after_images(context: dg.RunStatusSensorContext) -> Any:
        run = context.dagster_run
        if run.job_name == comparison_job.name:
            return dg.SkipReason("a comparison run")
        if not comparison_inputs_changed(run, keys, images_job_names):
            return dg.SkipReason(f"run {run.run_id[:8]} did not touch {ds.name}'s inputs")
        return dg.RunRequest(run_key=f"comparison-after-{run.run_id}",
                             tags={"pad/after_run": run.run_id})

    return comparison_after_images


def build_schedules(project: ProjectConfig, manifest_job: Any) -> list[dg.ScheduleDefinition]:
    return [dg.ScheduleDefinition(name="refresh_manifests", job=manifest_job,
                                  cron_schedule="0 2 * * *",
                                  default_status=dg.DefaultScheduleStatus.STOPPED,
                                  description="Nightly refresh of every dataset manifest.")]
