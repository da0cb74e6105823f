"""The one backfill driver (``orchestration/backfill.py``): batching, resume and the report.

A real Dagster instance in a temp folder runs a small partitioned job with the same job and
partitions names as a dataset's images job, whose step fails for one card until a marker
file exists: batching, the skip of finished batches, the rerun of a failed one and the
report are the driver's, not the image step's (its own tests live elsewhere; the real images
job and SIGKILL resume are in ``test_lab_scale.py``, parallel runs on dask in
``deployment/test_scaleout.py``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from pad_assets.errors import InvalidInputError
from pad_assets.orchestration.asset_keys import partitions_for
from pad_assets.orchestration.backfill import (
    BACKFILL_TAG,
    BATCH_TAG,
    backfill,
    contiguous_batches,
    main,
)
from pad_assets.orchestration.definitions import images_job_name
from pad_assets.project_config import DatasetConfig, ProjectConfig

DS = DatasetConfig("Batch-DS")


def test_batches_are_contiguous_in_the_instance_order() -> None:
    ordered = [str(i) for i in range(10)]
    assert contiguous_batches(ordered, ["0", "1", "2", "3", "4"], 2) == [
        ["0", "1"], ["2", "3"], ["4"]]
    # a gap (a card not wanted) ends a batch: each batch is one partition range
    assert contiguous_batches(ordered, ["1", "2", "4", "5", "6"], 5) == [
        ["1", "2"], ["4", "5", "6"]]
    with pytest.raises(InvalidInputError, match="batch size"):
        contiguous_batches(ordered, ["1"], 0)


def _defs(fixed: Path, seen: list[tuple[str, ...]]) -> dg.Definitions:
    parts = partitions_for(DS)

    @dg.asset(name="layer", key_prefix=[DS.key], partitions_def=parts,
              backfill_policy=dg.BackfillPolicy.multi_run(100))
    def layer(context):  # noqa: ANN001, ANN202 - Dagster reads the annotation, strings fail
        keys = tuple(context.partition_keys)
        seen.append(keys)
        if "13" in keys and not fixed.exists():
            raise RuntimeError("card 13 is bad until fixed")
        return {k: int(k) for k in keys}

    job = dg.define_asset_job(images_job_name(DS.key), selection=[layer])
    return dg.Definitions(assets=[layer], jobs=[job],
                          resources={"io_manager": dg.mem_io_manager})


def test_a_failed_batch_is_reported_and_only_it_runs_again(tmp_path: Path) -> None:
    fixed = tmp_path / "fixed"
    seen: list[tuple[str, ...]] = []
    defs = _defs(fixed, seen)
    project = ProjectConfig((DS,), batch_cards=4)
    lines: list[str] = []
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        first = backfill(DS, project=project, defs=defs, instance=instance,
                         card_ids=range(10, 20), progress=lines.append)
        # 10 cards in batches of 4: 10-13 (fails), 14-17, 18-19; the failure does not stop
        # the others, and the report says which batch failed
        assert seen == [("10", "11", "12", "13"), ("14", "15", "16", "17"), ("18", "19")]
        assert [(r.index, r.success) for r in first.runs] == [(1, False), (2, True),
                                                               (3, True)]
        assert not first.ok and first.cards == 6 and first.skipped == []
        assert "FAILED batches: 1/3" in str(first)
        failed = [line for line in lines if line.startswith("batch 1/3 FAILED: cards 10..13")]
        assert len(failed) == 1 and failed[0].endswith(
            "; error: RuntimeError: card 13 is bad until fixed"), lines  # the cause, shown
        assert first.runs[0].error == "RuntimeError: card 13 is bad until fixed"
        assert instance.get_dynamic_partitions(partitions_for(DS).name) == [
            str(c) for c in range(10, 20)]

        fixed.touch()
        seen.clear()
        again = backfill(DS, project=project, defs=defs, instance=instance,
                         card_ids=range(10, 20))
        assert seen == [("10", "11", "12", "13")]  # finished batches are skipped
        assert again.ok and again.skipped == [2, 3] and again.ran == [1]
        assert again.backfill_id == first.backfill_id
        ok = instance.get_runs(dg.RunsFilter(tags={BACKFILL_TAG: first.backfill_id},
                                             statuses=[dg.DagsterRunStatus.SUCCESS]))
        assert Counter(r.tags[BATCH_TAG] for r in ok) == {"1/3": 1, "2/3": 1, "3/3": 1}

        done = backfill(DS, project=project, defs=defs, instance=instance,
                        card_ids=range(10, 20))
        assert done.ok and done.runs == [] and done.skipped == [1, 2, 3]

        seen.clear()  # resume=False: a new backfill id, every batch runs
        fresh = backfill(DS, project=project, defs=defs, instance=instance,
                         card_ids=range(10, 20), resume=False)
        assert fresh.ok and fresh.ran == [1, 2, 3] and len(seen) == 3
        assert fresh.backfill_id != first.backfill_id

        # a different batch size is a different backfill (its batches differ)
        other = backfill(DS, project=project, defs=defs, instance=instance,
                         card_ids=range(10, 20), batch_cards=5)
        assert other.backfill_id != first.backfill_id and other.ran == [1, 2]


def test_wrong_arguments_are_refused_naming_them(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    project = ProjectConfig((DS,), batch_cards=4)
    defs = _defs(tmp_path / "fixed", [])
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        with pytest.raises(InvalidInputError, match="'Nope' is not in the project config"):
            backfill("Nope", project=project, defs=defs, instance=instance)
        with pytest.raises(InvalidInputError, match="parallel 0"):
            backfill(DS, project=project, defs=defs, instance=instance, parallel=0)
        with pytest.raises(InvalidInputError, match="code location's executor"):
            backfill(DS, project=project, defs=defs, instance=instance, parallel=2)
    for bad in (["X", "--parallel", "0"], ["X", "--batch-cards", "many"]):
        with pytest.raises(SystemExit) as exc:
            main(bad)
        assert exc.value.code == 2
        assert "expected a positive integer" in capsys.readouterr().err
    assert main(["X", "--cards", "1,b"]) == 2
    assert "--cards '1,b': expected comma-separated card ids" in capsys.readouterr().err
