"""The image step: build a batch of cards through the shared core, then record each changed
(asset, card) with that card's full chain, then run the selected checks.

Work first, events after: ``apply_model`` builds each model's whole chain with preprocessing
overlapping inference, so the per-layer passes below only look keys up (building layer by
layer left one core idle: 1,000 cards, 130 s -> 118 s in B6). Events go out layer by layer
(raw, preprocessed, tensor, prediction) so each layer's provenance can point at its parent's
stored event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import dagster as dg

from ..errors import PadAssetsError
from ..layers.stamp import library_versions
from ..models.kinds import make_pipeline
from . import checks, versions
from .asset_keys import DatasetAssetKeys, manifest_version, small_record
from .audit_page import asset_url, chain_markdown
from .config import DatasetConfig
from .events import ChangeRecorder
from .io_manager import PadStoreIOManager
from .resources import PadResource


def materialize_images(context: dg.AssetExecutionContext, pad: PadResource, ds: DatasetConfig,
                       keys: DatasetAssetKeys, card_ids: Sequence[int]) -> Iterator[Any]:
    t0 = time.time()
    selected = set(context.selected_asset_keys)
    selected_checks = {(ck.asset_key, ck.name) for ck in context.selected_asset_check_keys}
    dataset = pad.dataset(ds.name)
    store = dataset.store
    recorder = ChangeRecorder(context.instance)
    try:
        manifest = dataset.manifest()
        if not set(card_ids) <= set(manifest.card_ids) and not dataset.settings.offline:
            manifest = dataset.manifest(refresh=True)  # new cards from a sensor tick
        version = manifest_version(manifest)
        rows = {int(r["card_id"]): r for r in manifest.rows.to_dict("records")}
        unknown = [c for c in card_ids if c not in rows]
        if unknown:
            raise PadAssetsError(f"partitions {unknown[:10]} are not cards of {ds.name}'s "
                                 "manifest (refresh the manifest asset first)")
        summary = dataset.download_and_cache(card_ids=card_ids, refresh_manifest=False)
        raw = dataset.raw.raw_keys(ds.name, card_ids)
        cards = store.cards(ds.name)
        failed = {c: summary.failed.get(c) or cards.get(c, {}).get("detail", "")
                  for c in card_ids if c not in raw}
        for c, why in failed.items():
            context.log.warning(f"card {c}: no raw image ({why})")
            yield dg.AssetObservation(asset_key=keys.raw, partition=str(c),
                                      metadata={"status": "download failed",
                                                "reason": why or "unknown"})
        ok_ids = [c for c in card_ids if c in raw]
        raw_meta = store.metas([raw[c] for c in ok_ids])

        # ---- work: the core builds every selected layer --------------------------------
        adapters = {m.name: m.build(dataset.settings) for m in keys.models
                    if keys.tensor(m) in selected or keys.prediction(m) in selected}
        results = {m.name: dataset.apply_model(adapters[m.name], card_ids=ok_ids)
                   for m in keys.models if keys.prediction(m) in selected}
        pipelines = {p: make_pipeline(p) for p in keys.pipelines}
        pre: dict[str, dict[int, tuple[str, bool]]] = {}
        for pname, pipe in pipelines.items():
            if keys.preprocessed(pname) in selected or any(
                    m.pipeline == pname and (keys.tensor(m) in selected
                                             or keys.prediction(m) in selected)
                    for m in keys.models):
                chain = dataset.derived.ensure([raw[c] for c in ok_ids], pipe)
                pre[pname] = {c: (chain.preprocessed[i], chain.truncated[i])
                              for i, c in enumerate(ok_ids) if i not in chain.failed}
                for i, why in chain.failed.items():
                    context.log.warning(f"card {ok_ids[i]}: {pname} failed ({why})")
        tensors: dict[dg.AssetKey, dict[int, str]] = {}
        for tk, m in keys.tensor_models.items():
            if tk not in selected:
                continue
            ids = [c for c in ok_ids if c in pre.get(m.pipeline, {})]
            spec = adapters[m.name].get_tensor_spec()
            chain = dataset.derived.ensure([raw[c] for c in ids], pipelines[m.pipeline], spec)
            tensors[tk] = {c: chain.tensors[i] for i, c in enumerate(ids)
                           if i not in chain.failed and chain.tensors[i] is not None}
        predictions: dict[str, dict[int, dict[str, Any]]] = {}
        for name, res in results.items():
            predictions[name] = {}
            # One partition per card: a card published in several rows is one image.
            for r in res.drop_duplicates("card_id").to_dict("records"):
                if r["prediction_key"]:
                    predictions[name][int(r["card_id"])] = r
                else:
                    context.log.warning(f"card {r['card_id']}: {name} failed ({r['detail']})")

        # ---- checks of the raw layer (the decode also draws each card's preview) ---------
        previews: dict[int, Any] = {}
        check_results = []
        if keys.raw in selected or (keys.raw, checks.RAW_INTEGRITY) in selected_checks:
            md5 = {c: rows[c].get("md5") for c in ok_ids}
            integrity = checks.raw_integrity(store, keys.raw, {c: raw[c] for c in ok_ids},
                                             md5, previews)
            if (keys.raw, checks.RAW_INTEGRITY) in selected_checks:
                check_results.append(integrity)

        # ---- events: one per changed (asset, card), each with the card's whole chain -----
        def chain(c: int) -> dg.MetadataValue:
            layers = [("raw image", keys.raw, raw.get(c))]
            layers += [(f"preprocessed ({p})", keys.preprocessed(p),
                        pre.get(p, {}).get(c, (None,))[0]) for p in keys.pipelines]
            layers += [(f"tensor ({m.tensor_group})", tk, tensors.get(tk, {}).get(c))
                       for tk, m in keys.tensor_models.items()]
            layers += [(f"prediction {m.name}", keys.prediction(m),
                        (predictions.get(m.name, {}).get(c) or {}).get("prediction_key"))
                       for m in keys.models]
            return chain_markdown(c, layers, keys.manifest, keys.comparison)

        def raw_facts(c: int) -> dict[str, Any]:
            meta = raw_meta.get(raw[c], {})
            return {
                "card_id": c, "dataset": ds.name, "raw_key": raw[c], "md5": meta.get("md5"),
                "sha256": raw[c],
                "source_url": meta.get("source_url") or rows[c]["image_url"],
                "fetched_at": meta.get("fetched_at"), "bytes": meta.get("nbytes"),
                "truncated": bool(meta.get("truncated")), "drug": rows[c].get("drug"),
                "quantity": rows[c].get("quantity"), "split": rows[c].get("split"),
                "manifest_version": version,
                "manifest_url": asset_url(keys.manifest),
            }

        if keys.raw in selected:
            yield from recorder.layer(keys.raw, versions.RAW_CODE_VERSION, [
                (c, raw[c], _bind(lambda c: {**raw_facts(c), "chain": chain(c),
                                             **({"preview": previews[c]} if c in previews
                                                else {})}, c), {})
                for c in ok_ids])

        describes = {p: pipe.describe() for p, pipe in pipelines.items()}
        for pname in keys.pipelines:
            ak = keys.preprocessed(pname)
            if ak not in selected or pname not in pre:
                continue
            d = describes[pname]
            yield from recorder.layer(ak, versions.pipeline_version_of(d), [
                (c, pk, _bind(lambda c, pk=pk, trunc=trunc, d=d: {
                    "card_id": c, "preprocessed_key": pk, "raw_key": raw[c],
                    "raw_md5": raw_facts(c)["md5"], "pipeline": d["name"],
                    "pipeline_parameters": d["parameters"],
                    "pipeline_code_version": d["code_version"], "truncated": trunc,
                    "chain": chain(c)}, c), {keys.raw: raw[c]})
                for c, (pk, trunc) in pre[pname].items()])

        for tk, m in keys.tensor_models.items():
            if tk not in tensors:
                continue
            spec = adapters[m.name].get_tensor_spec().as_dict()
            d = describes[m.pipeline]
            yield from recorder.layer(tk, versions.tensor_version_of(d, spec), [
                (c, key, _bind(lambda c, key=key, spec=spec, d=d, m=m: {
                    "card_id": c, "tensor_key": key,
                    "preprocessed_key": pre[m.pipeline][c][0], "raw_key": raw[c],
                    "raw_md5": raw_facts(c)["md5"], "tensor_spec": spec,
                    "pipeline": d["name"], "pipeline_parameters": d["parameters"],
                    "chain": chain(c)}, c),
                 {keys.preprocessed(m.pipeline): pre[m.pipeline][c][0]})
                for c, key in tensors[tk].items()])

        libs = library_versions()
        for m in keys.models:
            pk_ = keys.prediction(m)
            if pk_ not in selected:
                continue
            adapter = adapters[m.name]
            desc = small_record(adapter.describe())
            d = describes[m.pipeline]
            spec = adapter.get_tensor_spec().as_dict()
            version = versions.prediction_version_of(adapter.get_cache_signature())
            yield from recorder.layer(pk_, version, [
                (c, r["prediction_key"],
                 _bind(lambda c, r=r, adapter=adapter, desc=desc, d=d, spec=spec, m=m:
                       _prediction_facts(c, r, adapter, desc, d, spec, m.name, rows[c],
                                         raw_facts(c), libs, chain(c)), c),
                 {keys.tensor(m): r["tensor_key"]})
                for c, r in predictions[m.name].items()])

        for ak, mapping in _refs(keys, selected, raw, ok_ids, pre, tensors, predictions).items():
            PadStoreIOManager.record_partitions(store, ak, mapping, run_id=context.run.run_id)
        context.log.info(recorder.summary())

        # ---- the remaining checks, on what the store now holds -----------------------------
        manifest_ids = list(manifest.card_ids)
        cards = store.cards(ds.name)
        if (keys.raw, checks.RAW_DOWNLOADED) in selected_checks:
            check_results.append(checks.raw_downloaded(keys.raw, manifest_ids, cards))
        for tk, m in keys.tensor_models.items():
            if (tk, checks.TENSOR_SPEC) in selected_checks:
                spec = versions.static_tensor_spec(m)
                check_results.append(checks.tensor_specs(store, tk, spec))
        for m in keys.models:
            if (keys.prediction(m), checks.PREDICTION_STATUS) in selected_checks:
                check_results.append(checks.prediction_status(store, keys.prediction(m),
                                                              manifest_ids, cards))
        yield from check_results
        context.log.info(f"{ds.name}: {len(card_ids)} cards, {len(ok_ids)} with images, "
                         f"{len(selected)} assets, {len(check_results)} checks in "
                         f"{time.time() - t0:.1f} s")
    finally:
        dataset.close()


def _bind(fn: Callable[[int], Mapping[str, Any]], c: int) -> Callable[[], Mapping[str, Any]]:
    """A metadata builder for card ``c``, called only if the partition changed."""
    return lambda: fn(c)


def _prediction_facts(c: int, r: Mapping[str, Any], adapter: Any, desc: Mapping[str, Any],
                      pipeline: Mapping[str, Any], spec: Mapping[str, Any], model: str,
                      row: Mapping[str, Any], raw: Mapping[str, Any], libs: Any,
                      chain: dg.MetadataValue) -> dict[str, Any]:
    context = adapter.prediction_context(dict(row))
    facts = {
        "card_id": c, "status": r["status"], "prediction": r["prediction"],
        "probability": r["probability"], "energy": r["energy"], "detail": r["detail"],
        "actual": r["actual"], "label_type": r["label_type"],
        "chain": chain,
        "prediction_key": r["prediction_key"], "tensor_key": r["tensor_key"],
        "preprocessed_key": r["preprocessed_key"], "raw_key": r["raw_key"],
        "raw_md5": raw["md5"], "raw_sha256": r["raw_key"], "source_url": raw["source_url"],
        "fetched_at": raw["fetched_at"], "manifest_version": raw["manifest_version"],
        "pipeline": pipeline["name"], "pipeline_parameters": pipeline["parameters"],
        "pipeline_code_version": pipeline["code_version"], "tensor_spec": spec,
        "model": model, "model_signature": r["model_signature"], "model_record": desc,
        "weights_url": desc.get("weights_url"), "libraries": libs,
        "truncated": bool(r["truncated"]),
    }
    if context:
        facts["model_context"] = dict(context)  # e.g. PLS: the drug that chose coefficients
    return facts


def _refs(keys: DatasetAssetKeys, selected: set[dg.AssetKey], raw: Mapping[int, str],
          ok_ids: Sequence[int], pre: Mapping[str, Mapping[int, tuple[str, bool]]],
          tensors: Mapping[dg.AssetKey, Mapping[int, str]],
          predictions: Mapping[str, Mapping[int, Mapping[str, Any]]]
          ) -> dict[dg.AssetKey, dict[str, str]]:
    """partition -> content key for every asset the step built (the IO manager's refs)."""
    refs: dict[dg.AssetKey, dict[str, str]] = {}
    if keys.raw in selected:
        refs[keys.raw] = {str(c): raw[c] for c in ok_ids}
    for p, by_card in pre.items():
        if keys.preprocessed(p) in selected:
            refs[keys.preprocessed(p)] = {str(c): k for c, (k, _) in by_card.items()}
    for tk, by_card in tensors.items():
        refs[tk] = {str(c): k for c, k in by_card.items()}
    for m in keys.models:
        if m.name in predictions:
            refs[keys.prediction(m)] = {str(c): r["prediction_key"]
                                        for c, r in predictions[m.name].items()}
    return refs
