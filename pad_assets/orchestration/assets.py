"""Per-dataset asset groups: manifest, image layers (partitioned by card), comparison.

Shape (see docs/architecture.md in shared docs): every dataset gets its own
``DynamicPartitionsDefinition`` whose keys are card ids, so there is no dataset x image
cartesian product. The image layers of a batch are materialized by ONE step (a subsettable
multi-asset; a backfill runs ``batch_cards`` cards per run, ``BackfillPolicy.multi_run``), which
emits one ``AssetMaterialization`` per asset and changed partition carrying that card's own
lineage (``images.py``). Its checks are ``check_specs`` of the same step, so they run after
every image run (``checks.py``). The comparison asset loads every prediction partition
through the IO manager and runs its own check in its step.

Why per-partition events rather than ``Output``s through the IO manager: an auditor opens
one card's partition page and must find that card's chain there (keys, checksums, source,
parameters, model); an ``Output`` gives every partition of a run the same metadata
(dagster-io/dagster#18123).
"""


from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import pandas as pd

from ..project_config import DatasetConfig, ProjectConfig
from ..settings import Settings
from . import versions
from .asset_keys import DatasetAssetKeys, manifest_version, partitions_for
from .checks import (
    COMPARISON_COVERAGE,
    DESCRIPTIONS,
    PREDICTION_STATUS,
    RAW_DOWNLOADED,
    RAW_INTEGRITY,
    TENSOR_SPEC,
)
from .resources import PadResource

OWNERS = ["team:pad-lab"]


def _tags(ds: DatasetConfig, layer: str) -> dict[str, str]:
    return {"dataset": ds.key, "layer": layer}


def _check(key: dg.AssetKey, name: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name, asset=key, description=DESCRIPTIONS[name])


def image_specs(ds: DatasetConfig, project: ProjectConfig, settings: Settings
                ) -> tuple[list[dg.AssetSpec], list[dg.AssetCheckSpec]]:
    """The image layers' specs (versions derived from what determines them) and checks."""
    keys = DatasetAssetKeys(ds, project.models)
    parts = partitions_for(ds)
    common = {"partitions_def": parts, "skippable": True, "group_name": ds.key,
              "owners": OWNERS, "kinds": {"hdf5"}}
    specs = [dg.AssetSpec(
        keys.raw, code_version=versions.RAW_CODE_VERSION, tags=_tags(ds, "raw"), **common,
        description=f"Original image bytes of each {ds.name} card listed by the manifest: "
                    "content key = sha256 of the bytes, md5 checked against the manifest. "
                    "Each partition page shows the source URL, checksums, a preview and "
                    "links to the same card in every layer.")]
    checks = [_check(keys.raw, RAW_INTEGRITY), _check(keys.raw, RAW_DOWNLOADED)]
    for p in keys.pipelines:
        specs.append(dg.AssetSpec(
            keys.preprocessed(p), deps=[keys.raw], tags=_tags(ds, "preprocessed"), **common,
            code_version=versions.preprocessed_code_version(p),
            description=f"Each card preprocessed by pipeline {p} (code version = hash of the "
                        "pipeline's name, parameters and code version)."))
    for tk, m in keys.tensor_models.items():
        specs.append(dg.AssetSpec(
            tk, deps=[keys.preprocessed(m.pipeline)], tags=_tags(ds, "tensor"), **common,
            code_version=versions.tensor_code_version(m, settings),
            description=f"Model-ready tensor of each card for {m.tensor_group} (code version = "
                        "hash of the pipeline and the tensor spec)."))
        checks.append(_check(tk, TENSOR_SPEC))
    for m in project.models:
        ident = f"PAD model id {m.model_id}" if m.model_id is not None else f"file {m.path}"
        specs.append(dg.AssetSpec(
            keys.prediction(m), deps=[keys.tensor(m)], tags=_tags(ds, "prediction"), **common,
            code_version=versions.prediction_code_version(m, settings),
            description=f"Prediction of model {m.name} ({m.adapter}, {ident}) for each card, "
                        "with status (ok / unknown_drug / failed). Code version = the model's "
                        "cache signature (weights, runtime, labels): new weights mark exactly "
                        "this asset's partitions unsynced."))
        checks.append(_check(keys.prediction(m), PREDICTION_STATUS))
    return specs, checks


def build_dataset_assets(ds: DatasetConfig, project: ProjectConfig,
                         settings: Settings | None = None) -> list[Any]:
    from .images import materialize_images

    settings = settings or Settings.from_env()
    keys = DatasetAssetKeys(ds, project.models)
    parts = partitions_for(ds)
    group = ds.key

    @dg.asset(key=keys.manifest, group_name=group, code_version=versions.MANIFEST_CODE_VERSION,
              io_manager_key="pad_io_manager", kinds={"pad"}, owners=OWNERS,
              tags=_tags(ds, "manifest"),
              description=f"The published card list of registry dataset {ds.name} (all "
                          "splits): card ids, drug, quantity, image URL and md5, refreshed "
                          "from the registry with its croissant checksums checked. Its data "
                          "version is the hash of the manifest: a change marks the comparison "
                          "unsynced.")
    def manifest(context: dg.AssetExecutionContext, pad: PadResource) -> dg.Output[pd.DataFrame]:
        dataset = pad.dataset(ds.name)
        try:
            m = dataset.manifest(refresh=not dataset.settings.offline)
            cached = dataset.store.cards(ds.name)
        finally:
            dataset.close()
        rows = m.rows
        counts = rows["split"].value_counts().to_dict()
        per_class = (rows.groupby(["drug", "split"]).size().unstack(fill_value=0)
                     .reset_index())
        failed = pd.DataFrame([{"card_id": c, "reason": v["detail"]}
                               for c, v in sorted(cached.items()) if v["status"] != "ok"],
                              columns=["card_id", "reason"])
        return dg.Output(rows, metadata={
            "splits": dg.MetadataValue.json(counts),
            "cards_per_drug_and_split": _table(per_class),
            "cached_images": sum(1 for v in cached.values() if v["status"] == "ok"),
            "failed_images": _table(failed),
            "registry_url": dg.MetadataValue.url(m.source) if str(m.source).startswith("http")
            else m.source,
            "warnings": dg.MetadataValue.json(m.warnings),
            "files": dg.MetadataValue.json(m.files),
            "published_rows": len(rows), "unique_cards": len(m.card_ids),
            "leakage": m.leakage["count"],
            "leakage_card_ids": dg.MetadataValue.json(m.leakage["card_ids"]),
            "manifest_version": manifest_version(m),
            "dagster/row_count": len(rows),
        }, data_version=dg.DataVersion(manifest_version(m)))

    specs, check_specs = image_specs(ds, project, settings)

    @dg.multi_asset(name=f"{ds.key}_images", specs=specs, check_specs=check_specs,
                    can_subset=True, partitions_def=parts,
                    backfill_policy=dg.BackfillPolicy.multi_run(project.batch_cards),
                    op_tags={"pad/dataset": ds.name},
                    description=f"All image layers of a batch of {ds.name} cards in one step, "
                                "then their checks.")
    def images(context: dg.AssetExecutionContext, pad: PadResource) -> Iterator[Any]:
        from ..deployment.tier_sync import tier_batch  # no-op without a tier (PAD_TIER_URL)

        card_ids = [int(k) for k in context.partition_keys]
        with tier_batch(pad.settings().cache_dir, pad.tier(), ds.name, context.log):
            yield from materialize_images(context, pad, ds, keys, card_ids)

    ins = {f"pred_{m.name}": dg.AssetIn(keys.prediction(m), input_manager_key="pad_io_manager")
           for m in project.models}

    @dg.asset(key=keys.comparison, group_name=group,
              code_version=versions.COMPARISON_CODE_VERSION, owners=OWNERS,
              tags=_tags(ds, "comparison"),
              ins={"manifest_rows": dg.AssetIn(keys.manifest), **ins},
              check_specs=[_check(keys.comparison, COMPARISON_COVERAGE)],
              io_manager_key="pad_io_manager", kinds={"pad"},
              description="Every model scored on the identical set of cards: metrics with "
                          "confidence intervals, paired tests, per-class tables and figures, "
                          "inline in the 'report' entry. Says how many published rows (cards) "
                          "it scored. Unsynced whenever the manifest or a prediction partition "
                          "changed since it ran.")
    def model_comparison(context: dg.AssetExecutionContext, pad: PadResource,
                         manifest_rows: pd.DataFrame, **predictions: dict[str, Any]
                         ) -> Iterator[Any]:
        yield from compare_from_partitions(context, pad, ds, project, manifest_rows,
                                           predictions)

    return [manifest, images, model_comparison]


def partition_results(pad: PadResource, project: ProjectConfig, manifest_rows: pd.DataFrame,
                      predictions: Mapping[str, Mapping[str, Any]]) -> dict[str, pd.DataFrame]:
    """Each model's results table, one row per published row, built by the core's
    ``result_row`` (as ``apply_model`` builds it) from the prediction partitions' records;
    ``actual`` and ``label_type`` come from the model's adapter."""
    from ..dataset import result_row

    settings = pad.settings()
    frames = {}
    for m in project.models:
        adapter = m.build(settings)
        parts = predictions.get(f"pred_{m.name}", {})
        rows = []
        for r in manifest_rows.to_dict("records"):
            meta = parts.get(str(int(r["card_id"])))
            found = None if meta is None else {
                **(meta.get("record") or {}), "truncated": meta.get("truncated"),
                "raw_key": meta.get("raw_key"), "preprocessed_key": meta.get("preprocessed_key"),
                "tensor_key": meta.get("tensor_key"), "cached": True}
            signature = ((meta or {}).get("model") or {}).get("signature")
            rows.append(result_row(r, adapter, m.pipeline, signature, found, "not materialized"))
        frames[m.name] = pd.DataFrame(rows)
    return frames


def compare_from_partitions(context: dg.AssetExecutionContext, pad: PadResource,
                            ds: DatasetConfig, project: ProjectConfig,
                            manifest_rows: pd.DataFrame, predictions: dict[str, dict[str, Any]]
                            ) -> Iterator[Any]:
    """Each model's result table from its prediction partitions, compared, checked."""
    from ..comparison import compare_results
    from .checks import comparison_coverage
    from .report_md import report_markdown

    frames = partition_results(pad, project, manifest_rows, predictions)
    from ..sources.registry import leakage_of

    report = compare_results(frames, dataset=ds.name, leakage=leakage_of(manifest_rows))
    settings = pad.settings()
    out_dir = settings.cache_dir / "reports" / ds.name / context.run.run_id
    path = report.write(out_dir)
    published = len(manifest_rows)  # published rows: a card listed twice is scored twice
    unique_cards = int(manifest_rows["card_id"].nunique())
    scored = set(int(c) for c in report.card_ids)
    excluded = []
    for name, df in frames.items():
        for r in df.to_dict("records"):
            if r["card_id"] not in scored:
                why = r["status"] if r["status"] != "ok" else "not scorable"
                detail = f" ({r['detail']})" if r.get("detail") else ""
                excluded.append({"card_id": r["card_id"], "model": name,
                                 "reason": f"{why}{detail}"[:120]})
    summary = report.summary
    meta: dict[str, Any] = {
        "scored": f"{report.n_items} of {published} published rows ({unique_cards} cards)",
        "published_rows": published,
        "published_cards": unique_cards,
        "items_compared": int(report.n_items),
        "leakage": int(report.leakage.get("count", 0)),
        "report": dg.MetadataValue.md(report_markdown(report)),
        "summary": _table(summary),
        "exclusions": _table(report.exclusions),
        "item_set_hash": dg.MetadataValue.text(report.item_set_hash),
        "report_dir": dg.MetadataValue.path(str(out_dir)),
    }
    if len(report.pairwise):
        meta["pairwise"] = _table(report.pairwise)
    for name, per_class in report.per_class.items():
        meta[f"per_class_{name}"] = _table(per_class.reset_index())
    yield dg.Output(
        {"summary": summary.to_dict(orient="records"),
         "pairwise": report.pairwise.to_dict(orient="records"),
         "item_set_hash": report.item_set_hash, "report_path": str(path),
         "published_rows": published, "published_cards": unique_cards,
         "items_compared": int(report.n_items)},
        metadata=meta)
    if any(ck.name == COMPARISON_COVERAGE for ck in context.selected_asset_check_keys):
        yield comparison_coverage(DatasetAssetKeys(ds, project.models).comparison, published,
                                  int(report.n_items), excluded)


def _table(df: pd.DataFrame) -> dg.MetadataValue:
    """A DataFrame as a Dagster table (numbers rounded, NaN shown empty)."""
    records = []
    for row in df.to_dict(orient="records"):
        clean = {}
        for k, v in row.items():
            if isinstance(v, float):
                clean[str(k)] = None if v != v else round(v, 4)
            elif isinstance(v, (int, bool, str)) or v is None:
                clean[str(k)] = v
            else:
                clean[str(k)] = str(v)
        records.append(dg.TableRecord(clean))
    kinds = {"i": "int", "u": "int", "f": "float", "b": "bool"}
    schema = dg.TableSchema(columns=[dg.TableColumn(str(c), kinds.get(df[c].dtype.kind, "string"))
                                     for c in df.columns])
    return dg.MetadataValue.table(records, schema=schema)
