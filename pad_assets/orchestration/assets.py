"""Per-dataset asset groups: manifest -> image layers (partitioned by card) -> comparison.

Shape (see docs/architecture.md in shared docs): every dataset gets its own
``DynamicPartitionsDefinition`` whose keys are card ids, so there is no dataset x image
cartesian product. The four image layers of a batch are materialized by ONE step (a
subsettable multi-asset with a single-run backfill policy: 1,000 images is one run, not
1,000), which emits one ``AssetMaterialization`` per asset and partition carrying that
image's own lineage and ``data_version`` = its content key. Dagster would otherwise give
every partition of a run the same metadata (dagster-io/dagster#18123). The comparison
asset then loads every prediction partition through the IO manager (a partition range).
"""


import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd

from ..errors import PadAssetsError
from ..provenance import library_versions
from .config import DatasetConfig, ModelConfig, ProjectConfig
from .io_manager import PadStoreIOManager
from .resources import PadResource

CODE_VERSION = "1"
_PIPELINE_CLASSES = {
    "pad_nn": ("pad_assets.preprocessing.nn", "PADNeuralNetworkPipeline"),
    "pad_pls": ("pad_assets.preprocessing.pls", "PADPLSPipeline"),
}


def make_pipeline(name: str) -> Any:
    import importlib

    if name in _PIPELINE_CLASSES:
        module, cls = _PIPELINE_CLASSES[name]
    else:
        module, _, cls = name.rpartition(".")
    return getattr(importlib.import_module(module), cls)()


@dataclass(frozen=True)
class DatasetAssetKeys:
    """Every asset key of one dataset's group, derived from the config alone."""

    ds: DatasetConfig
    models: tuple[ModelConfig, ...]

    @property
    def manifest(self) -> dg.AssetKey:
        return dg.AssetKey([self.ds.key, "manifest"])

    @property
    def raw(self) -> dg.AssetKey:
        return dg.AssetKey([self.ds.key, "raw_image"])

    def preprocessed(self, pipeline: str) -> dg.AssetKey:
        return dg.AssetKey([self.ds.key, f"preprocessed_{pipeline.rsplit('.', 1)[-1]}"])

    def tensor(self, m: ModelConfig) -> dg.AssetKey:
        return dg.AssetKey([self.ds.key, f"tensor_{m.tensor_group.rsplit('.', 1)[-1]}"])

    def prediction(self, m: ModelConfig) -> dg.AssetKey:
        return dg.AssetKey([self.ds.key, f"prediction_{m.name}"])

    @property
    def comparison(self) -> dg.AssetKey:
        return dg.AssetKey([self.ds.key, "model_comparison"])

    @property
    def pipelines(self) -> list[str]:
        return list(dict.fromkeys(m.pipeline for m in self.models))

    @property
    def image_keys(self) -> list[dg.AssetKey]:
        keys = [self.raw] + [self.preprocessed(p) for p in self.pipelines]
        keys += list(dict.fromkeys(self.tensor(m) for m in self.models))
        return keys + [self.prediction(m) for m in self.models]


def partitions_for(ds: DatasetConfig) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"{ds.key}_cards")


def _md(meta: dict[str, Any]) -> dict[str, Any]:
    """Dagster metadata: plain values, JSON for nested ones."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, (dict, list)):
            out[k] = dg.MetadataValue.json(v)
        elif v is None:
            out[k] = dg.MetadataValue.text("")
        else:
            out[k] = v
    return out


def build_dataset_assets(ds: DatasetConfig, project: ProjectConfig) -> list[Any]:
    keys = DatasetAssetKeys(ds, project.models)
    parts = partitions_for(ds)
    group = ds.key

    @dg.asset(key=keys.manifest, group_name=group, code_version=CODE_VERSION,
              io_manager_key="pad_io_manager", kinds={"pad"},
              description=f"Manifest of registry dataset {ds.name} (all splits), refreshed "
                          "from the registry; croissant checksums checked.")
    def manifest(context: dg.AssetExecutionContext, pad: PadResource) -> dg.Output[pd.DataFrame]:
        dataset = pad.dataset(ds.name)
        m = dataset.manifest(refresh=not dataset.settings.offline)
        rows = m.rows
        counts = rows["split"].value_counts().to_dict()
        per_class = (rows.groupby(["drug", "split"]).size().unstack(fill_value=0)
                     .reset_index())
        cached = dataset.store.cards(ds.name)
        failed = pd.DataFrame([{"card_id": c, "reason": v["detail"]}
                               for c, v in sorted(cached.items()) if v["status"] != "ok"],
                              columns=["card_id", "reason"])
        return dg.Output(rows, metadata={
            "rows": len(rows), "splits": dg.MetadataValue.json(counts),
            "cards_per_drug_and_split": _table(per_class),
            "cached_images": sum(1 for v in cached.values() if v["status"] == "ok"),
            "failed_images": _table(failed),
            "registry": m.source, "warnings": dg.MetadataValue.json(m.warnings),
            "files": dg.MetadataValue.json(m.files),
            "published_rows": len(rows), "unique_cards": len(m.card_ids),
            "leakage": m.leakage["count"],
            "leakage_card_ids": dg.MetadataValue.json(m.leakage["card_ids"]),
            "dagster/row_count": len(rows),
        }, data_version=dg.DataVersion(_manifest_version(m)))

    specs = [dg.AssetSpec(keys.raw, partitions_def=parts, skippable=True, group_name=group,
                          deps=[keys.manifest], code_version=CODE_VERSION, kinds={"hdf5"},
                          description="Original card image bytes (sha256-keyed, md5-checked).")]
    for p in keys.pipelines:
        specs.append(dg.AssetSpec(keys.preprocessed(p), partitions_def=parts, skippable=True,
                                  group_name=group, deps=[keys.raw], code_version=CODE_VERSION,
                                  kinds={"hdf5"}, description=f"Card preprocessed by {p}."))
    seen = set()
    for m in project.models:
        tk = keys.tensor(m)
        if tk in seen:
            continue
        seen.add(tk)
        specs.append(dg.AssetSpec(tk, partitions_def=parts, skippable=True, group_name=group,
                                  deps=[keys.preprocessed(m.pipeline)], code_version=CODE_VERSION,
                                  kinds={"hdf5"},
                                  description=f"Model-ready tensor for {m.tensor_group}."))
    for m in project.models:
        specs.append(dg.AssetSpec(keys.prediction(m), partitions_def=parts, skippable=True,
                                  group_name=group, deps=[keys.tensor(m)],
                                  code_version=CODE_VERSION, kinds={"hdf5"},
                                  description=f"Prediction of model {m.name} ({m.adapter}"
                                              f"{', id ' + str(m.model_id) if m.model_id else ''})."))

    @dg.multi_asset(name=f"{ds.key}_images", specs=specs, can_subset=True,
                    partitions_def=parts, backfill_policy=dg.BackfillPolicy.single_run(),
                    op_tags={"pad/dataset": ds.name})
    def images(context: dg.AssetExecutionContext, pad: PadResource) -> Iterator[Any]:
        card_ids = [int(k) for k in context.partition_keys]
        yield from materialize_images(context, pad, ds, keys, card_ids)

    ins = {f"pred_{m.name}": dg.AssetIn(keys.prediction(m), input_manager_key="pad_io_manager")
           for m in project.models}

    @dg.asset(key=keys.comparison, group_name=group, code_version=CODE_VERSION, ins={
        "manifest_rows": dg.AssetIn(keys.manifest), **ins},
        io_manager_key="pad_io_manager", kinds={"pad"},
        description="Every model scored on the identical set of cards: metrics, paired "
                    "tests, confusion matrices and a report.")
    def model_comparison(context: dg.AssetExecutionContext, pad: PadResource,
                         manifest_rows: pd.DataFrame, **predictions: dict[str, Any]
                         ) -> dg.Output[dict[str, Any]]:
        return compare_from_partitions(context, pad, ds, project, manifest_rows, predictions)

    return [manifest, images, model_comparison]


def _manifest_version(m: Any) -> str:
    from ..hashing import sha256_bytes

    return sha256_bytes(m.to_json_bytes())[:16]


def materialize_images(context: dg.AssetExecutionContext, pad: PadResource, ds: DatasetConfig,
                       keys: DatasetAssetKeys, card_ids: Sequence[int]) -> Iterator[Any]:
    """Build the selected image layers for these cards through the shared core, then emit
    one materialization per (asset, card) with that card's own lineage."""
    t0 = time.time()
    selected = set(context.selected_asset_keys)
    dataset = pad.dataset(ds.name)
    store = dataset.store
    try:
        manifest = dataset.manifest()
        known = set(manifest.card_ids)
        if not set(card_ids) <= known and not dataset.settings.offline:
            manifest = dataset.manifest(refresh=True)  # new cards from a sensor tick
        rows = {int(r["card_id"]): r for r in manifest.rows.to_dict("records")}
        unknown = [c for c in card_ids if c not in rows]
        if unknown:
            raise PadAssetsError(f"partitions {unknown[:10]} are not cards of {ds.name}'s manifest")
        summary = dataset.download_and_cache(card_ids=card_ids, refresh_manifest=False)
        raw = dataset.raw.raw_keys(ds.name, card_ids)
        failed = {c: summary.failed.get(c) or store.cards(ds.name).get(c, {}).get("detail", "")
                  for c in card_ids if c not in raw}
        for c, why in failed.items():
            context.log.warning(f"card {c}: no raw image ({why})")
            yield dg.AssetObservation(asset_key=keys.raw, partition=str(c),
                                      metadata={"status": "failed", "reason": why or "unknown"})
        if failed and len(failed) == len(card_ids):
            raise PadAssetsError(f"no image of the {len(card_ids)} requested cards could be "
                                 f"cached; first failure: {next(iter(failed.values()))}")
        ok_ids = [c for c in card_ids if c in raw]
        libs = library_versions()
        raw_meta = store.metas([raw[c] for c in ok_ids])
        raw_events = {}
        for c in ok_ids:
            rk = raw[c]
            meta = raw_meta.get(rk, {})
            raw_events[c] = {
                "card_id": c, "dataset": ds.name, "raw_key": rk, "md5": meta.get("md5"),
                "sha256": rk, "source_url": meta.get("source_url") or rows[c]["image_url"],
                "fetched_at": meta.get("fetched_at"), "bytes": meta.get("nbytes"),
                "truncated": bool(meta.get("truncated")), "drug": rows[c].get("drug"),
                "quantity": rows[c].get("quantity"), "split": rows[c].get("split"),
            }
        refs: dict[dg.AssetKey, dict[str, str]] = {}
        if keys.raw in selected:
            refs[keys.raw] = {str(c): raw[c] for c in ok_ids}
            for c in ok_ids:
                yield _event(keys.raw, c, raw[c], raw_events[c])

        # Predictions first: apply_model builds each model's whole chain with preprocessing
        # overlapping inference, so the per-layer passes below only look keys up (building
        # layer by layer instead left one core idle: 1,000 cards, 130 s -> 118 s in B6).
        adapters = {m.name: m.build(dataset.settings) for m in keys.models
                    if keys.tensor(m) in selected or keys.prediction(m) in selected}
        results = {m.name: dataset.apply_model(adapters[m.name], card_ids=ok_ids)
                   for m in keys.models if keys.prediction(m) in selected}

        pipelines = {p: make_pipeline(p) for p in keys.pipelines}
        pre_info: dict[str, dict[int, tuple[str, bool]]] = {}
        for pname, pipe in pipelines.items():
            ak = keys.preprocessed(pname)
            needed = ak in selected or any(
                m.pipeline == pname and (keys.tensor(m) in selected or keys.prediction(m)
                                         in selected) for m in keys.models)
            if not needed:
                continue
            chain = dataset.derived.ensure([raw[c] for c in ok_ids], pipe)
            pre_info[pname] = {c: (chain.preprocessed[i], chain.truncated[i])
                               for i, c in enumerate(ok_ids) if i not in chain.failed}
            for i, why in chain.failed.items():
                context.log.warning(f"card {ok_ids[i]}: {pname} failed ({why})")
            if ak in selected:
                desc = pipe.describe()
                refs[ak] = {str(c): k for c, (k, _) in pre_info[pname].items()}
                for c, (pk, trunc) in pre_info[pname].items():
                    yield _event(ak, c, pk, {
                        "card_id": c, "preprocessed_key": pk, "raw_key": raw[c],
                        "raw_md5": raw_events[c]["md5"], "pipeline": desc["name"],
                        "pipeline_parameters": desc["parameters"],
                        "pipeline_code_version": desc["code_version"], "truncated": trunc})

        for m in keys.models:
            tk, pk_ = keys.tensor(m), keys.prediction(m)
            if tk not in selected and pk_ not in selected:
                continue
            adapter = adapters[m.name]
            spec = adapter.get_tensor_spec()
            pipe = pipelines[m.pipeline]
            ids = [c for c in ok_ids if c in pre_info.get(m.pipeline, {})]
            if tk in selected and tk not in refs:
                chain = dataset.derived.ensure([raw[c] for c in ids], pipe, spec)
                refs[tk] = {}
                for i, c in enumerate(ids):
                    if i in chain.failed or chain.tensors[i] is None:
                        continue
                    refs[tk][str(c)] = chain.tensors[i]
                    yield _event(tk, c, chain.tensors[i], {
                        "card_id": c, "tensor_key": chain.tensors[i],
                        "preprocessed_key": chain.preprocessed[i], "raw_key": raw[c],
                        "raw_md5": raw_events[c]["md5"], "tensor_spec": spec.as_dict(),
                        "truncated": chain.truncated[i]})
            if pk_ in selected:
                desc = adapter.describe()
                refs[pk_] = {}
                # One partition per card: a card published in several rows is one image.
                for r in results[m.name].drop_duplicates("card_id").to_dict("records"):
                    c = int(r["card_id"])
                    if not r["prediction_key"]:
                        context.log.warning(f"card {c}: {m.name} failed ({r['detail']})")
                        continue
                    refs[pk_][str(c)] = r["prediction_key"]
                    yield _event(pk_, c, r["prediction_key"], {
                        "card_id": c, "prediction": r["prediction"],
                        "probability": r["probability"], "energy": r["energy"],
                        "status": r["status"], "detail": r["detail"],
                        "actual": r["actual"], "label_type": r["label_type"],
                        "prediction_key": r["prediction_key"], "tensor_key": r["tensor_key"],
                        "preprocessed_key": r["preprocessed_key"], "raw_key": r["raw_key"],
                        "raw_md5": raw_events[c]["md5"], "source_url": raw_events[c]["source_url"],
                        "model": m.name, "model_signature": r["model_signature"],
                        "model_record": _small_record(desc), "pipeline": m.pipeline,
                        "libraries": libs, "truncated": bool(r["truncated"]),
                        "run_id": context.run.run_id})
        for ak, mapping in refs.items():
            PadStoreIOManager.record_partitions(store, ak, mapping, run_id=context.run.run_id)
        context.log.info(f"{ds.name}: {len(card_ids)} cards, {len(ok_ids)} with images, "
                         f"{len(selected)} assets in {time.time() - t0:.1f} s")
    finally:
        dataset.close()


def _small_record(desc: dict[str, Any]) -> dict[str, Any]:
    """The model facts an auditor needs on every prediction partition (labels omitted)."""
    keep = ("name", "class", "signature", "model_id", "record_name", "version",
            "weights_sha256", "weights_url", "coefficients_sha256", "path", "file_sha256",
            "runtime", "label_type")
    return {k: desc[k] for k in keep if k in desc and desc[k] is not None}


def _event(key: dg.AssetKey, card_id: int, content_key: str, meta: dict[str, Any]
           ) -> dg.AssetMaterialization:
    return dg.AssetMaterialization(asset_key=key, partition=str(card_id), metadata=_md(meta),
                                   tags={"dagster/data_version": content_key})


def compare_from_partitions(context: dg.AssetExecutionContext, pad: PadResource,
                            ds: DatasetConfig, project: ProjectConfig,
                            manifest_rows: pd.DataFrame, predictions: dict[str, dict[str, Any]]
                            ) -> dg.Output[dict[str, Any]]:
    """Rebuild each model's result table from its prediction partitions, then compare."""
    from ..comparison import compare_results

    frames = {}
    for m in project.models:
        parts = predictions.get(f"pred_{m.name}", {})
        rows = []
        for r in manifest_rows.to_dict("records"):
            meta = parts.get(str(int(r["card_id"])))
            rec = (meta or {}).get("record") or {}
            rows.append({
                "card_id": int(r["card_id"]), "split": r["split"],
                "position": r.get("position"), "drug": r["drug"],
                "quantity": r["quantity"], "model": m.name,
                "actual": _actual(rec.get("label_type"), r, m),
                "prediction": rec.get("prediction"), "probability": rec.get("probability"),
                "energy": rec.get("energy"),
                "label_type": rec.get("label_type") or ("concentration" if m.adapter == "pls"
                                                        else "drug"),
                "status": rec.get("status", "failed") if meta else "failed",
                "detail": rec.get("detail", "") if meta else "not materialized",
                "truncated": bool((meta or {}).get("truncated")),
                "raw_key": (meta or {}).get("raw_key"),
                "preprocessed_key": (meta or {}).get("preprocessed_key"),
                "tensor_key": (meta or {}).get("tensor_key"),
                "prediction_key": None,
                "model_signature": ((meta or {}).get("model") or {}).get("signature"),
            })
        frames[m.name] = pd.DataFrame(rows)
    from ..sources.registry import leakage_of

    report = compare_results(frames, dataset=ds.name, leakage=leakage_of(manifest_rows))
    settings = pad.settings()
    out_dir = settings.cache_dir / "reports" / ds.name / context.run.run_id
    path = report.write(out_dir)
    summary = report.summary
    meta: dict[str, Any] = {
        "report": dg.MetadataValue.md(report.to_markdown()),
        "report_path": dg.MetadataValue.path(str(path)),
        "report_html": dg.MetadataValue.path(str(out_dir / "report.html")),
        "item_set_hash": report.item_set_hash,
        "items_compared": int(report.n_items),
        "leakage": int(report.leakage.get("count", 0)),
        "summary": _table(summary),
        "exclusions": _table(report.exclusions),
    }
    if len(report.pairwise):
        meta["pairwise"] = _table(report.pairwise)
    for name, per_class in report.per_class.items():
        meta[f"per_class_{name}"] = _table(per_class.reset_index())
    # Plots inline: Dagster renders Markdown images, and data URIs keep them self-contained.
    import base64

    plots = "\n\n".join(
        f"**{fname}**\n\n![{fname}](data:image/png;base64,{base64.b64encode(png).decode()})"
        for fname, png in report.figures.items())
    meta["plots"] = dg.MetadataValue.md(plots)
    return dg.Output(
        {"summary": summary.to_dict(orient="records"),
         "pairwise": report.pairwise.to_dict(orient="records"),
         "item_set_hash": report.item_set_hash, "report_path": str(path)},
        metadata=meta)


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


def _actual(label_type: str | None, row: dict[str, Any], m: ModelConfig) -> Any:
    from ..models.base import standardize_label

    lt = label_type or ("concentration" if m.adapter == "pls" else "drug")
    if lt == "concentration":
        q = row.get("quantity")
        return None if q is None or pd.isna(q) else float(q)
    return standardize_label(row["drug"]) if row.get("drug") else None
