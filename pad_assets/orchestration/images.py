"""The image step: build a batch of cards through the shared core, then record each changed
(asset, card) with that card's full chain, then run the selected checks.

Work first, events after, chunk by chunk: ``apply_model`` builds each model's whole chain
with preprocessing overlapping inference, so the per-layer passes below only look keys up
(building layer by layer left one core idle: 1,000 cards, 130 s -> 118 s in B6). A chunk's
events are recorded while the core builds the next chunk in a background thread
(``CHUNK_CARDS``). Events go out layer by layer (raw, preprocessed, tensor, prediction) so
each layer's provenance can point at its parent's stored event.

Checks use the evidence the step already has: images it downloaded were verified as they
arrived, so ``raw_integrity`` re-reads and decodes only images cached before the step
(``checks.raw_integrity``). Raw previews are loaded by the browser from the source URL
when a page is opened (``audit_page.preview_markdown``), not rendered per card.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from ..errors import PadAssetsError
from ..layers.stamp import library_versions
from ..models.kinds import make_pipeline
from ..project_config import DatasetConfig
from . import checks, versions
from .asset_keys import DatasetAssetKeys, manifest_version, small_record
from .audit_page import asset_url, chain_markdown, preview_markdown
from .events import ChangeRecorder
from .io_manager import PadStoreIOManager
from .resources import PadResource


@dataclass
class Batch:
    """One batch of cards as the core built it: keys of every layer, per card."""

    ds: DatasetConfig
    keys: DatasetAssetKeys
    dataset: Any
    manifest: Any
    manifest_version: str
    rows: dict[int, dict[str, Any]]
    raw: dict[int, str]
    raw_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    ok_ids: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    #: cards this step downloaded -> the truncated flag the download's check found
    downloaded: dict[int, bool] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    adapters: dict[str, Any] = field(default_factory=dict)
    pipelines: dict[str, Any] = field(default_factory=dict)
    pre: dict[str, dict[int, tuple[str, bool]]] = field(default_factory=dict)
    tensors: dict[dg.AssetKey, dict[int, str]] = field(default_factory=dict)
    predictions: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)

    @property
    def store(self) -> Any:
        return self.dataset.store

    def chain(self, c: int) -> dg.MetadataValue:
        """The card's links to itself in every layer (every event of the card shows it)."""
        keys = self.keys
        layers = [("raw image", keys.raw, self.raw.get(c))]
        layers += [(f"preprocessed ({p})", keys.preprocessed(p),
                    self.pre.get(p, {}).get(c, (None,))[0]) for p in keys.pipelines]
        layers += [(f"tensor ({m.tensor_group})", tk, self.tensors.get(tk, {}).get(c))
                   for tk, m in keys.tensor_models.items()]
        layers += [(f"prediction {m.name}", keys.prediction(m),
                    (self.predictions.get(m.name, {}).get(c) or {}).get("prediction_key"))
                   for m in keys.models]
        return chain_markdown(c, layers, keys.manifest, keys.comparison)

    def raw_facts(self, c: int) -> dict[str, Any]:
        meta = self.raw_meta.get(self.raw[c], {})
        row = self.rows[c]
        return {
            "card_id": c, "dataset": self.ds.name, "raw_key": self.raw[c],
            "md5": meta.get("md5"), "sha256": self.raw[c],
            "source_url": meta.get("source_url") or row["image_url"],
            "fetched_at": meta.get("fetched_at"), "bytes": meta.get("nbytes"),
            "truncated": bool(meta.get("truncated")), "drug": row.get("drug"),
            "quantity": row.get("quantity"), "split": row.get("split"),
            "manifest_version": self.manifest_version,
            "manifest_url": asset_url(self.keys.manifest),
        }


#: Cards per chunk of the image step. The core builds chunk n+1 in a background thread
#: while this thread records chunk n's events, so Dagster's bookkeeping (~2 ms per event
#: on an idle machine, pure Python) runs beside the core's work instead of after it: the
#: core leaves a core idle while its download/preprocess/inference pipeline fills and
#: drains. Small first chunk: events start early; later chunks amortise per-call costs.
FIRST_CHUNK_CARDS = 32
CHUNK_CARDS = 128


def materialize_images(context: dg.AssetExecutionContext, pad: PadResource, ds: DatasetConfig,
                       keys: DatasetAssetKeys, card_ids: Sequence[int]) -> Iterator[Any]:
    """The image step: fetch, build every selected layer, record what changed, check.

    Chunk by chunk (``CHUNK_CARDS``), the core's work one chunk ahead of the events.
    Everything Dagster sees (events, logs, checks) is yielded from this thread.
    """
    t0 = time.time()
    selected = set(context.selected_asset_keys)
    selected_checks = {(ck.asset_key, ck.name) for ck in context.selected_asset_check_keys}
    dataset = pad.dataset(ds.name)
    recorder = ChangeRecorder(context.instance, context.run.run_id)
    integrity = _IntegrityEvidence()
    n_ok = 0
    with contextlib.ExitStack() as stack:
        stack.callback(dataset.close)  # after the background thread is done (closing below)
        plan = _plan(dataset, ds, keys, card_ids, selected)
        built = stack.enter_context(contextlib.closing(_built_ahead(plan, _chunks(card_ids))))
        for batch in built:
            for msg in batch.warnings:
                context.log.warning(msg)
            for c, why in batch.failed.items():
                yield dg.AssetObservation(asset_key=keys.raw, partition=str(c),
                                          metadata={"status": "download failed",
                                                    "reason": why or "unknown"})
            if (keys.raw, checks.RAW_INTEGRITY) in selected_checks:
                integrity.add(batch, recorder)  # before this chunk's raw events
            yield from _events(batch, recorder, selected)
            for ak, mapping in _refs(keys, selected, batch.raw, batch.ok_ids, batch.pre,
                                     batch.tensors, batch.predictions).items():
                PadStoreIOManager.record_partitions(batch.store, ak, mapping,
                                                    run_id=context.run.run_id)
            n_ok += len(batch.ok_ids)
        context.log.info(recorder.summary())
        check_results = []
        if (keys.raw, checks.RAW_INTEGRITY) in selected_checks:
            check_results.append(integrity.result(dataset.store, keys.raw))
        check_results += _store_checks(plan, selected_checks)
        yield from check_results
        context.log.info(f"{ds.name}: {len(card_ids)} cards, {n_ok} with images, "
                         f"{len(selected)} assets, {len(check_results)} checks in "
                         f"{time.time() - t0:.1f} s")


@dataclass
class _Plan:
    """What every chunk of a step shares: the manifest, models and pipelines."""

    ds: DatasetConfig
    keys: DatasetAssetKeys
    dataset: Any
    manifest: Any
    manifest_version: str
    rows: dict[int, dict[str, Any]]
    selected: set[dg.AssetKey]
    adapters: dict[str, Any]
    pipelines: dict[str, Any]


def _plan(dataset: Any, ds: DatasetConfig, keys: DatasetAssetKeys, card_ids: Sequence[int],
          selected: set[dg.AssetKey]) -> _Plan:
    """The manifest (refreshed when a partition is not in it: new cards from a sensor
    tick), and the selected models built once for the whole step."""
    manifest = dataset.manifest()
    if not set(card_ids) <= set(manifest.card_ids) and not dataset.settings.offline:
        manifest = dataset.manifest(refresh=True)
    rows = {int(r["card_id"]): r for r in manifest.rows.to_dict("records")}
    unknown = [c for c in card_ids if c not in rows]
    if unknown:
        raise PadAssetsError(f"partitions {unknown[:10]} are not cards of {ds.name}'s "
                             "manifest (refresh the manifest asset first)")
    adapters = {m.name: m.build(dataset.settings) for m in keys.models
                if keys.tensor(m) in selected or keys.prediction(m) in selected}
    return _Plan(ds, keys, dataset, manifest, manifest_version(manifest), rows, selected,
                 adapters, {p: make_pipeline(p) for p in keys.pipelines})


def _chunks(card_ids: Sequence[int]) -> list[list[int]]:
    ids = list(card_ids)
    bounds = [0, min(len(ids), FIRST_CHUNK_CARDS)]
    while bounds[-1] < len(ids):
        bounds.append(min(len(ids), bounds[-1] + CHUNK_CARDS))
    return [ids[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def _built_ahead(plan: _Plan, chunks: Sequence[list[int]]) -> Iterator[Batch]:
    """Each chunk built by the core in one background thread, one chunk ahead of the
    caller (at most two chunks in memory). Its errors are raised here, in the step."""
    def work(chunk: list[int]) -> Batch:
        batch = _fetch(plan, chunk)
        _build(batch, plan)
        return batch

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pad-image-step")
    try:
        ahead = pool.submit(work, chunks[0]) if chunks else None
        for n in range(len(chunks)):
            assert ahead is not None
            batch = ahead.result()
            ahead = pool.submit(work, chunks[n + 1]) if n + 1 < len(chunks) else None
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _fetch(plan: _Plan, card_ids: Sequence[int]) -> Batch:
    """The chunk's raw images, downloaded if missing."""
    dataset, ds = plan.dataset, plan.ds
    summary = dataset.download_and_cache(card_ids=card_ids, refresh_manifest=False)
    raw = dataset.raw.raw_keys(ds.name, card_ids)
    cards = dataset.store.cards(ds.name, [c for c in card_ids if c not in raw])
    batch = Batch(ds, plan.keys, dataset, plan.manifest, plan.manifest_version, plan.rows, raw)
    batch.failed = {c: summary.failed.get(c) or cards.get(c, {}).get("detail", "")
                    for c in card_ids if c not in raw}
    truncated = set(summary.truncated)
    batch.downloaded = {c: c in truncated for c in summary.downloaded if c in raw}
    batch.ok_ids = [c for c in card_ids if c in raw]
    batch.raw_meta = dataset.store.metas([raw[c] for c in batch.ok_ids])
    return batch


def _build(batch: Batch, plan: _Plan) -> None:
    """The core builds every selected layer; ``apply_model`` first, so preprocessing overlaps
    inference, then the per-layer passes only look keys up. Runs in the background thread:
    warnings are kept on the batch for the step to log."""
    keys, dataset, ok_ids, raw, selected = (batch.keys, batch.dataset, batch.ok_ids, batch.raw,
                                           plan.selected)
    batch.adapters = plan.adapters
    results = {m.name: dataset.apply_model(batch.adapters[m.name], card_ids=ok_ids)
               for m in keys.models if keys.prediction(m) in selected}
    batch.pipelines = plan.pipelines
    for pname, pipe in batch.pipelines.items():
        if keys.preprocessed(pname) in selected or any(
                m.pipeline == pname and (keys.tensor(m) in selected
                                         or keys.prediction(m) in selected)
                for m in keys.models):
            chain = dataset.derived.ensure([raw[c] for c in ok_ids], pipe)
            batch.pre[pname] = {c: (chain.preprocessed[i], chain.truncated[i])
                                for i, c in enumerate(ok_ids) if i not in chain.failed}
            for i, why in chain.failed.items():
                batch.warnings.append(f"card {ok_ids[i]}: {pname} failed ({why})")
    for tk, m in keys.tensor_models.items():
        if tk not in selected:
            continue
        ids = [c for c in ok_ids if c in batch.pre.get(m.pipeline, {})]
        spec = batch.adapters[m.name].get_tensor_spec()
        chain = dataset.derived.ensure([raw[c] for c in ids], batch.pipelines[m.pipeline], spec)
        batch.tensors[tk] = {c: chain.tensors[i] for i, c in enumerate(ids)
                             if i not in chain.failed and chain.tensors[i] is not None}
    for name, res in results.items():
        batch.predictions[name] = {}
        # One partition per card: a card published in several rows is one image.
        for r in res.drop_duplicates("card_id").to_dict("records"):
            if r["prediction_key"]:
                batch.predictions[name][int(r["card_id"])] = r
            else:
                batch.warnings.append(f"card {r['card_id']}: {name} failed ({r['detail']})")


@dataclass
class _IntegrityEvidence:
    """The raw-integrity check's inputs, gathered chunk by chunk; judged once at the end."""

    content: dict[int, str] = field(default_factory=dict)
    md5: dict[int, str | None] = field(default_factory=dict)
    unchanged: set[int] = field(default_factory=set)
    downloaded: dict[int, bool] = field(default_factory=dict)

    def add(self, batch: Batch, recorder: ChangeRecorder) -> None:
        content = {c: batch.raw[c] for c in batch.ok_ids}
        self.content.update(content)
        self.md5.update({c: batch.rows[c].get("md5") for c in batch.ok_ids})
        self.unchanged |= recorder.unchanged_cards(batch.keys.raw, content)
        self.downloaded.update(_downloaded_and_decoded(batch))

    def result(self, store: Any, key: dg.AssetKey) -> dg.AssetCheckResult:
        return checks.raw_integrity(store, key, self.content, self.md5,
                                    verified_before=self.unchanged, downloaded=self.downloaded)


def _downloaded_and_decoded(batch: Batch) -> dict[int, bool]:
    """Cards whose integrity evidence the step already has: downloaded (and checked) by
    it, with a preprocessed item from every pipeline it built (new bytes have new keys, so
    those were computed from these bytes). A card a pipeline failed on is left out: the
    check reads and decodes it and names the error."""
    built = [by_card for by_card in batch.pre.values()]
    return {c: t for c, t in batch.downloaded.items() if all(c in b for b in built)}


def _events(batch: Batch, recorder: ChangeRecorder, selected: set[dg.AssetKey]
            ) -> Iterator[dg.AssetMaterialization | dg.AssetObservation]:
    """One materialization per changed (asset, card), layer by layer, each with the card's
    own facts and whole chain; what every card shares goes once per asset and run on the
    recorder's "shared facts" observation."""
    keys, raw = batch.keys, batch.raw
    if keys.raw in selected:
        yield from recorder.layer(keys.raw, versions.RAW_CODE_VERSION, [
            (c, raw[c], _bind(lambda c: _raw_event_facts(batch, c), c), {})
            for c in batch.ok_ids], shared=lambda: _dataset_facts(batch))
    describes = {p: pipe.describe() for p, pipe in batch.pipelines.items()}
    for pname in keys.pipelines:
        ak = keys.preprocessed(pname)
        if ak not in selected or pname not in batch.pre:
            continue
        d = describes[pname]
        yield from recorder.layer(ak, versions.pipeline_version_of(d), [
            (c, pk, _bind(lambda c, pk=pk, trunc=trunc: {
                "card_id": c, "preprocessed_key": pk, "raw_key": raw[c],
                "raw_md5": batch.raw_facts(c)["md5"], "truncated": trunc,
                "chain": batch.chain(c)}, c), {keys.raw: raw[c]})
            for c, (pk, trunc) in batch.pre[pname].items()],
            shared=lambda d=d: _pipeline_facts(d))
    for tk, m in keys.tensor_models.items():
        if tk not in batch.tensors:
            continue
        spec = batch.adapters[m.name].get_tensor_spec().as_dict()
        d = describes[m.pipeline]
        pre = batch.pre[m.pipeline]
        yield from recorder.layer(tk, versions.tensor_version_of(d, spec), [
            (c, key, _bind(lambda c, key=key, pre=pre: {
                "card_id": c, "tensor_key": key, "preprocessed_key": pre[c][0],
                "raw_key": raw[c], "raw_md5": batch.raw_facts(c)["md5"],
                "chain": batch.chain(c)}, c),
             {keys.preprocessed(m.pipeline): pre[c][0]})
            for c, key in batch.tensors[tk].items()],
            shared=lambda d=d, spec=spec: {**_pipeline_facts(d), "tensor_spec": spec})
    yield from _prediction_events(batch, recorder, selected, describes)


def _dataset_facts(batch: Batch) -> dict[str, Any]:
    return {"dataset": batch.ds.name, "manifest_version": batch.manifest_version,
            "manifest_url": asset_url(batch.keys.manifest)}


def _pipeline_facts(d: Mapping[str, Any]) -> dict[str, Any]:
    return {"pipeline": d["name"], "pipeline_parameters": d["parameters"],
            "pipeline_code_version": d["code_version"]}


def _raw_event_facts(batch: Batch, c: int) -> dict[str, Any]:
    facts = {k: v for k, v in batch.raw_facts(c).items() if k not in _dataset_facts(batch)}
    return {**facts, "chain": batch.chain(c),
            "preview": preview_markdown(facts["source_url"], c)}


def _prediction_events(batch: Batch, recorder: ChangeRecorder, selected: set[dg.AssetKey],
                       describes: Mapping[str, Mapping[str, Any]]
                       ) -> Iterator[dg.AssetMaterialization | dg.AssetObservation]:
    keys = batch.keys
    for m in keys.models:
        pk_ = keys.prediction(m)
        if pk_ not in selected:
            continue
        adapter = batch.adapters[m.name]
        signature = adapter.get_cache_signature()

        def shared(adapter: Any = adapter, m: Any = m, signature: str = signature
                   ) -> dict[str, Any]:
            desc = small_record(adapter.describe())
            return {**_dataset_facts(batch), **_pipeline_facts(describes[m.pipeline]),
                    "tensor_spec": adapter.get_tensor_spec().as_dict(), "model": m.name,
                    "model_signature": signature, "model_record": desc,
                    "weights_url": desc.get("weights_url"), "libraries": library_versions()}

        yield from recorder.layer(pk_, versions.prediction_version_of(signature), [
            (c, r["prediction_key"],
             _bind(lambda c, r=r, adapter=adapter: _prediction_facts(
                 c, r, adapter, batch.rows[c], batch.raw_facts(c), batch.chain(c)), c),
             {keys.tensor(m): r["tensor_key"]})
            for c, r in batch.predictions[m.name].items()], shared=shared)


def _store_checks(plan: _Plan, selected_checks: set[tuple[dg.AssetKey, str]]
                  ) -> list[dg.AssetCheckResult]:
    """The checks read from what the store now holds (after the step's writes)."""
    keys, store = plan.keys, plan.dataset.store
    manifest_ids = list(plan.manifest.card_ids)
    cards = store.cards(plan.ds.name)
    out = []
    if (keys.raw, checks.RAW_DOWNLOADED) in selected_checks:
        out.append(checks.raw_downloaded(keys.raw, manifest_ids, cards))
    for tk, m in keys.tensor_models.items():
        if (tk, checks.TENSOR_SPEC) in selected_checks:
            out.append(checks.tensor_specs(store, tk, versions.static_tensor_spec(m)))
    for m in keys.models:
        if (keys.prediction(m), checks.PREDICTION_STATUS) in selected_checks:
            out.append(checks.prediction_status(store, keys.prediction(m), manifest_ids, cards))
    return out


def _bind(fn: Callable[[int], Mapping[str, Any]], c: int) -> Callable[[], Mapping[str, Any]]:
    """A metadata builder for card ``c``, called only if the partition changed."""
    return lambda: fn(c)


def _prediction_facts(c: int, r: Mapping[str, Any], adapter: Any, row: Mapping[str, Any],
                      raw: Mapping[str, Any], chain: dg.MetadataValue) -> dict[str, Any]:
    """What is this card's own on its prediction page (the model, pipeline and libraries
    are on the run's shared facts)."""
    context = adapter.prediction_context(dict(row))
    facts = {
        "card_id": c, "status": r["status"], "prediction": r["prediction"],
        "probability": r["probability"], "energy": r["energy"], "detail": r["detail"],
        "actual": r["actual"], "label_type": r["label_type"],
        "chain": chain,
        "prediction_key": r["prediction_key"], "tensor_key": r["tensor_key"],
        "preprocessed_key": r["preprocessed_key"], "raw_key": r["raw_key"],
        "raw_md5": raw["md5"], "raw_sha256": r["raw_key"], "source_url": raw["source_url"],
        "fetched_at": raw["fetched_at"], "truncated": bool(r["truncated"]),
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
