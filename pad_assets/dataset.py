"""``CachedDataset``: the notebook-facing facade over the four cached layers.

    dataset = CachedDataset("FHI2020_Stratified_Sampling")
    dataset.download_and_cache()
    results = dataset.apply_model(PADTensorFlowAdapter(model_id=16))

Everything here is also what the Dagster assets call, so a notebook and the Dagster UI
share one cache: what one computed, the other finds.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import InvalidInputError, OfflineError, PreprocessingFailureWarning
from .hashing import sha256_bytes
from .layers.derived import DerivedLayers
from .layers.model_names import record_name
from .layers.predictions import CardPrediction, PredictionLayer
from .layers.raw import DownloadSummary, RawLayer, RawPayload
from .models.base import STATUS_FAILED, ModelAdapter
from .preprocessing.base import PreprocessingPipeline
from .settings import Settings
from .sources.http import HttpClient
from .sources.listing import list_datasets as _list_datasets
from .sources.listing import manifest_ref
from .sources.pad_api import PadApiClient, http_client_for
from .sources.registry import Manifest, RegistryClient, leakage_of
from .sources.urls import card_id_of, validate_name
from .store import ContentStore, NewItem
from .store import refs as refnames

if TYPE_CHECKING:
    from .comparison import ComparisonReport


Split = str | Sequence[str] | None


@dataclass
class PreprocessedBatch:
    """One batch from ``get_preprocessed_batch``: arrays in card order, plus their ids."""

    arrays: np.ndarray
    card_ids: list[int]
    keys: list[str]
    truncated: list[bool]

    def __iter__(self) -> Iterator[Any]:  # ``for arrays, ids in dataset.get_preprocessed_batch``
        return iter((self.arrays, self.card_ids))


class CachedDataset:
    """One registry dataset, cached in four content-addressed layers."""

    def __init__(self, dataset_name: str, cache_dir: str | Path | None = None, *,
                 offline: bool | None = None, api_url: str | None = None,
                 registry_url: str | None = None, workers: int | None = None,
                 progress: bool = True, settings: Settings | None = None,
                 store: ContentStore | None = None) -> None:
        self.name = validate_name(dataset_name)
        if settings is None:
            settings = Settings.from_env(cache_dir=cache_dir, offline=offline, api_url=api_url,
                                         registry_url=registry_url)
        self.settings = settings
        self.progress = progress
        self._owns_store = store is None  # a store passed in belongs to the caller
        self.store = store or ContentStore(settings.cache_dir)
        self._http: HttpClient = http_client_for(settings)
        self.api = PadApiClient(settings, self._http)
        self.raw = RawLayer(self.store, settings, self.api)
        self.derived = DerivedLayers(self.store, workers)
        self.predictions = PredictionLayer(self.store, self.derived)
        #: card id -> reason, for the cards the last ``get_preprocessed_batch`` left out
        self.preprocessing_failures: dict[int, str] = {}
        self._manifest: Manifest | None = None

    def __repr__(self) -> str:
        return f"CachedDataset({self.name!r}, cache_dir={str(self.settings.cache_dir)!r})"

    def close(self) -> None:
        """Stop the preprocessing worker pool and close the store's open shard files and
        index connection (only a store this dataset opened itself). Idempotent; the
        dataset reopens what it needs if used again."""
        self.derived.close()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> CachedDataset:
        """``with CachedDataset(name) as ds:`` closes pools and files on leaving."""
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- manifest and raw layer --------------------------------------------------------
    def manifest(self, refresh: bool = False) -> Manifest:
        """The dataset's manifest: cached copy, or fetched from the registry when absent.

        Cached under the registry's identity (no port), so an emulator on a new port or a
        mirror finds it. Offline, when this registry has none cached, the newest cached
        manifest of a dataset of this name is served (with a warning naming its registry).
        """
        if self._manifest is not None and not refresh:
            return self._manifest
        ref = manifest_ref(self.settings, self.name)
        key = self.store.ref(ref)
        if key and (not refresh or self.settings.offline):
            self._manifest = Manifest.from_json_bytes(self.store.get(key))
            return self._manifest
        if self.settings.offline:
            other = self._newest_cached_manifest_ref()
            if other is None:
                raise OfflineError(f"dataset {self.name}",
                                   [f"manifest {self.settings.registry_url}/{self.name}"])
            self._manifest = Manifest.from_json_bytes(self.store.get(other[1]))
            self._manifest.warnings.append(
                f"offline: served the cached manifest of {other[0]!r}; the configured "
                f"registry {self.settings.registry_url} has none cached")
            return self._manifest
        manifest = RegistryClient(self.settings, self._http).load(self.name)
        data = manifest.to_json_bytes()
        mkey = sha256_bytes(data)
        self.store.put([NewItem(mkey, "manifest", data, {
            "dataset": self.name, "fetched_at": time.time(), "source": manifest.source,
            "rows": len(manifest.rows), "cards": len(manifest.card_ids),
            "splits": manifest.split_counts, "leakage": manifest.leakage["count"],
            "warnings": manifest.warnings, "files": manifest.files,
        })], refs=[(ref, mkey)])
        self._manifest = manifest
        return manifest

    def _newest_cached_manifest_ref(self) -> tuple[str, str] | None:
        for name, key in refnames.newest_for(self.store.index, refnames.MANIFEST, self.name):
            if self.store.has([key]):
                return name, key
        return None

    @classmethod
    def list_datasets(cls, cache_dir: str | Path | None = None, *, offline: bool | None = None,
                      registry_url: str | None = None, refresh: bool = True,
                      settings: Settings | None = None) -> pd.DataFrame:
        """Datasets of the registry (its folders, or its catalog for a URL registry).

        Columns: name, version, license, records, description, source. Offline, the last
        cached listing is served; a local folder registry is always read directly.
        """
        if settings is None:
            settings = Settings.from_env(cache_dir=cache_dir, offline=offline,
                                         registry_url=registry_url)
        store = ContentStore(settings.cache_dir)
        try:
            return _list_datasets(settings, http_client_for(settings), store, refresh=refresh)
        finally:
            store.close()

    def download_and_cache(self, force_refresh: bool = False,
                           card_ids: Sequence[int] | None = None,
                           refresh_manifest: bool = True) -> DownloadSummary:
        """Fetch the manifest and every missing image (in parallel), verify, store once.

        Incremental: cached cards are skipped (``force_refresh`` re-downloads them).
        Offline: no network call; anything missing is listed in one ``OfflineError``.
        ``card_ids`` limits the work to those cards (Dagster partitions use this). A card
        published in several rows or splits is downloaded once.
        """
        manifest = self.manifest(refresh=refresh_manifest and not self.settings.offline)
        rows = _unique_cards(self._select(manifest.rows, None, card_ids))
        summary = self.raw.sync(self.name, rows, force_refresh, self.progress)
        summary.warnings = list(manifest.warnings) + summary.warnings
        return summary

    def cards(self, split: Split = None) -> pd.DataFrame:
        """Published manifest rows with each card's raw key and cache status."""
        rows = self._select(self.manifest().rows, split, None)
        status = self.store.cards(self.name)
        rows = rows.copy()
        rows["raw_key"] = [status.get(int(c), {}).get("raw_key") for c in rows["card_id"]]
        rows["cache_status"] = [status.get(int(c), {}).get("status", "missing")
                                for c in rows["card_id"]]
        rows["cache_detail"] = [status.get(int(c), {}).get("detail", "")
                                for c in rows["card_id"]]
        return rows.reset_index(drop=True)

    def leakage(self, split: Split = None) -> dict[str, Any]:
        """Cards published in more than one of the selected splits (count, ids, pairs)."""
        return leakage_of(self._select(self.manifest().rows, split, None))

    def _select(self, rows: pd.DataFrame, split: Split,
                card_ids: Sequence[int] | None) -> pd.DataFrame:
        """Published rows of ``split`` (a name or a list of names), in published order;
        with ``card_ids``, every row of those cards in the order of ``card_ids``."""
        if split is not None:
            names = [split] if isinstance(split, str) else list(split)
            known = list(dict.fromkeys(str(s) for s in rows["split"]))
            bad = [s for s in names if s not in known]
            if bad or not names:
                raise InvalidInputError(
                    f"split {split!r} of {self.name!r}: expected one or more of {known}")
            rows = rows[rows["split"].isin(names)]
        if card_ids is not None:
            wanted = list(dict.fromkeys(card_id_of(c) for c in card_ids))
            unknown = sorted(set(wanted) - set(int(c) for c in rows["card_id"]))
            if unknown:
                raise InvalidInputError(
                    f"card id(s) {unknown[:20]} are not in the manifest of {self.name!r}"
                    + (f" (split {split!r})" if split else ""))
            order = {c: i for i, c in enumerate(wanted)}
            rows = rows[rows["card_id"].isin(wanted)]
            rows = rows.iloc[np.argsort([order[int(c)] for c in rows["card_id"]], kind="stable")]
        return rows.reset_index(drop=True)

    def _rows_with_raw(self, split: Split = None, card_ids: Sequence[int] | None = None
                       ) -> tuple[pd.DataFrame, dict[int, str]]:
        """Manifest rows and their raw keys, downloading what is missing first."""
        rows = self._select(self.manifest().rows, split, card_ids)
        raw = self.raw.raw_keys(self.name, rows["card_id"])
        missing = _unique_cards(rows[~rows["card_id"].isin(list(raw))])
        if len(missing):
            self.raw.sync(self.name, missing, progress=self.progress)
            raw = self.raw.raw_keys(self.name, rows["card_id"])
        return rows, raw

    # ---- preprocessed layer ------------------------------------------------------------
    def get_preprocessed_batch(self, preprocessing_pipeline: PreprocessingPipeline,
                               batch_size: int = 32, split: Split = None,
                               card_ids: Sequence[int] | None = None,
                               ) -> Iterator[PreprocessedBatch]:
        """Stream preprocessed arrays in manifest order, ``batch_size`` cards at a time.

        Each card once (its first published row), whatever the number of rows listing it.
        ``card_ids`` (ints, decimal strings or a pandas column of ids) streams only those
        cards, in the order given, as ``apply_model(card_ids=)`` selects them; an id that
        is not in the manifest (of ``split``, if given) is an ``InvalidInputError`` naming
        it, raised before any download or computation.
        Computes only what is missing; peak memory is a few batches whatever the dataset
        size. Cards whose image could not be fetched are skipped (``cards()`` says why);
        cards the pipeline failed on are skipped too, named with their reasons in a
        ``PreprocessingFailureWarning`` (once per window of cards) and kept in
        ``self.preprocessing_failures``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size}: expected a positive integer")
        rows, raw = self._rows_with_raw(split, card_ids)
        ids = [int(c) for c in _unique_cards(rows)["card_id"] if int(c) in raw]
        self.preprocessing_failures = {}
        window = max(batch_size, 64)
        for start in range(0, len(ids), window):
            part = ids[start:start + window]
            chain = self._ensure_window(rows, part, raw, preprocessing_pipeline)
            keep = [j for j in range(len(part)) if j not in chain.failed]
            for b in range(0, len(keep), batch_size):
                sel = keep[b:b + batch_size]
                got = self._read_or_recompute(rows, part, sel, raw, chain,
                                              preprocessing_pipeline)
                for j in sel:
                    if chain.preprocessed[j] not in got and j not in chain.failed:
                        chain.failed[j] = "evicted by a concurrent gc while it was read"
                sel = [j for j in sel if chain.preprocessed[j] in got]
                if sel:
                    keys = [chain.preprocessed[j] for j in sel]
                    yield PreprocessedBatch(np.stack([np.asarray(got[k]) for k in keys]),
                                            [part[j] for j in sel], keys,  # type: ignore[misc]
                                            [chain.truncated[j] for j in sel])
            self._report_failures(preprocessing_pipeline, part, chain.failed)

    def _report_failures(self, pipeline: PreprocessingPipeline, part: list[int],
                         failed: dict[int, str]) -> None:
        """Name the cards of a window that the stream left out, and why (never silently)."""
        if not failed:
            return
        new = {part[j]: reason for j, reason in sorted(failed.items())}
        self.preprocessing_failures.update(new)
        shown = "; ".join(f"card {c}: {r}" for c, r in list(new.items())[:5])
        more = f" (and {len(new) - 5} more)" if len(new) > 5 else ""
        warnings.warn(f"{pipeline.name}: {len(new)} card(s) of dataset {self.name!r} left out "
                      f"of the batches: {shown}{more}; all of them are in "
                      "preprocessing_failures", PreprocessingFailureWarning, stacklevel=3)

    #: How often a window is recomputed when a concurrent ``gc`` evicts what it just
    #: resolved (each round re-fetches or recomputes only what vanished).
    _GC_RACE_ROUNDS = 3

    def _restore_raw(self, rows: pd.DataFrame, card_ids: list[int],
                     raw: dict[int, str]) -> None:
        """Download again the cards whose raw image vanished (a concurrent gc evicted it)."""
        gone = [c for c in card_ids if raw.get(c) not in self.store.has([raw[c]])]
        if gone:
            self.raw.sync(self.name, rows[rows["card_id"].isin(gone)], progress=False)
            raw.update(self.raw.raw_keys(self.name, gone))

    def _ensure_window(self, rows: pd.DataFrame, part: list[int], raw: dict[int, str],
                       pipeline: PreprocessingPipeline) -> Any:
        """``derived.ensure`` for a window; a raw image evicted since it was looked up is
        fetched again instead of the card being dropped silently."""
        chain = self.derived.ensure([raw[c] for c in part], pipeline)
        for _round in range(self._GC_RACE_ROUNDS):
            lost = [part[j] for j in chain.failed
                    if raw[part[j]] not in self.store.has([raw[part[j]]])]
            if not lost:
                break
            self._restore_raw(rows, lost, raw)
            chain = self.derived.ensure([raw[c] for c in part], pipeline)
        return chain

    def _read_or_recompute(self, rows: pd.DataFrame, part: list[int], sel: list[int],
                           raw: dict[int, str], chain: Any,
                           pipeline: PreprocessingPipeline) -> dict[str, Any]:
        """The payloads of ``sel``; what a concurrent gc evicted between resolving and
        reading is recomputed (re-fetching its raw image first if that went too), so a
        reader never sees an item vanish mid-iteration."""
        keys = [chain.preprocessed[j] for j in sel]
        got = self.store.get_many(keys)
        for _round in range(self._GC_RACE_ROUNDS):
            missing = [j for j in sel if chain.preprocessed[j] not in got]
            if not missing:
                break
            cards = [part[j] for j in missing]
            self._restore_raw(rows, cards, raw)
            redo = self.derived.ensure([raw[c] for c in cards], pipeline)
            for n, j in enumerate(missing):
                if n in redo.failed:
                    chain.failed[j] = redo.failed[n]
                    continue
                chain.preprocessed[j] = redo.preprocessed[n]
                chain.truncated[j] = redo.truncated[n]
            got.update(self.store.get_many([chain.preprocessed[j] for j in missing
                                            if j not in chain.failed]))
        return got

    # ---- predictions -------------------------------------------------------------------
    def apply_model(self, model_adapter: ModelAdapter,
                    preprocessing: PreprocessingPipeline | None = None, use_cache: bool = True,
                    batch_size: int = 32, split: Split = None,
                    card_ids: Sequence[int] | None = None) -> pd.DataFrame:
        """Predictions for every published row of the selected split(s).

        Returns one row per published manifest row (a card listed twice is two rows, a
        card in ``dev`` and ``test`` is in both): ids, split, position, actual label,
        prediction, probability, energy, status (``ok``, ``unknown_drug``, ``failed``:
        never a magic number), truncated flag, and the key of every layer (the lineage
        chain). The work is done once per card and per-card context. ``split`` is a
        split name or a list of them. ``use_cache=False`` recomputes preprocessing, tensors
        and predictions from the raw images; it adds missing items but replaces nothing.

        Images not cached yet are downloaded chunk by chunk inside the prediction pipeline,
        while the model runs on the previous chunk, so a cold call needs no
        ``download_and_cache()`` first (and is faster without it). Offline, anything
        missing is listed in one ``OfflineError`` before any work starts.
        """
        pipeline = preprocessing or model_adapter.get_required_preprocessing()
        rows = self._select(self.manifest().rows, split, card_ids)
        # the name audit, lineage and stats show for this signature: the latest one used
        record_name(self.store, model_adapter.get_cache_signature(), model_adapter.name)
        all_rows = rows.to_dict("records")
        # One unit of work per (card, context): a card listed twice is predicted once.
        contexts_all = [model_adapter.prediction_context(c) for c in all_rows]
        unit_of: list[int] = []
        units: dict[tuple[int, str], int] = {}
        cards: list[dict[str, Any]] = []
        contexts: list[dict[str, Any]] = []
        for r, ctx in zip(all_rows, contexts_all, strict=True):
            k = (int(r["card_id"]), json.dumps(ctx, sort_keys=True, default=str))
            if k not in units:
                units[k] = len(cards)
                cards.append(r)
                contexts.append(ctx)
            unit_of.append(units[k])
        unique = _unique_cards(rows)
        raw = self.raw.raw_keys(self.name, unique["card_id"])
        missing = unique[~unique["card_id"].isin(list(raw))]
        # Cards whose image gc evicted keep their raw key: their cached predictions are
        # served from keys alone, and only cards without one need the image again.
        gone = self.raw.evicted_raw_keys(self.name, missing["card_id"]) if use_cache else {}
        evicted = [gone.get(int(c["card_id"])) for c in cards]
        if len(missing) and self.settings.offline:
            pos = [i for i, k in enumerate(evicted) if k]
            served = self.predictions.cached([evicted[i] for i in pos],  # type: ignore[misc]
                                             [contexts[i] for i in pos], model_adapter,
                                             pipeline)
            ok = {int(cards[pos[j]]["card_id"]) for j in served}
            needed = missing[~missing["card_id"].isin(list(ok))]
            if len(needed):
                self.raw.sync(self.name, needed)  # raises one OfflineError listing them all

        def fetch(positions: list[int]) -> tuple[dict[int, str | None], dict[str, RawPayload]]:
            """Download these cards now (inside the prediction pipeline): their raw keys,
            and the verified bytes just downloaded (preprocessed without a read back)."""
            ids = [int(c["card_id"]) for c in (cards[i] for i in positions)]
            fresh: dict[str, RawPayload] = {}
            self.raw.sync(self.name, _unique_cards(pd.DataFrame([cards[i] for i in positions])),
                          keep=fresh)
            got = self.raw.raw_keys(self.name, ids)
            return {i: got.get(c) for i, c in zip(positions, ids, strict=True)}, fresh

        from tqdm.auto import tqdm

        with tqdm(total=len(cards), desc=f"{model_adapter.name} on {self.name}", unit="card",
                  disable=not self.progress, leave=False) as bar:
            preds = self.predictions.predict([raw.get(int(c["card_id"])) for c in cards],
                                             contexts, model_adapter, pipeline, batch_size,
                                             use_cache, on_progress=bar.update, fetch=fetch,
                                             evicted=evicted)
        status = self.store.cards(self.name)
        return self._results_frame(all_rows, [preds[u] for u in unit_of], status,
                                   model_adapter, pipeline)

    def _results_frame(self, cards: Sequence[dict[str, Any]],
                       preds: Sequence[CardPrediction | None],
                       status: dict[int, dict[str, Any]], model: ModelAdapter,
                       pipeline: PreprocessingPipeline) -> pd.DataFrame:
        signature = model.get_cache_signature()
        out = []
        for c, p in zip(cards, preds, strict=True):
            if p is None:
                why = status.get(int(c["card_id"]), {}).get("detail") or "image not cached"
                out.append(result_row(c, model, pipeline.name, signature, None,
                                      f"no raw image: {why}"))
            else:
                r = p.record
                out.append(result_row(c, model, pipeline.name, signature, {
                    "prediction": r.prediction, "probability": r.probability,
                    "energy": r.energy, "label_type": r.label_type, "status": r.status,
                    "detail": r.detail, "truncated": p.truncated, "raw_key": p.raw_key,
                    "preprocessed_key": p.preprocessed_key, "tensor_key": p.tensor_key,
                    "prediction_key": p.prediction_key, "cached": p.cached}))
        return pd.DataFrame(out)

    def compare_models(self, model_adapters_list: Sequence[ModelAdapter],
                       output_dir: str | Path | None = None, split: Split = None,
                       n_bootstrap: int = 2000, seed: int = 0) -> ComparisonReport:
        """Score every model on the identical set of published rows and write a report.

        One scored item per published row of the selected split(s); cards published in
        more than one of them are reported as leakage (count and ids).
        """
        from .comparison import compare_results

        names = [m.name for m in model_adapters_list]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidInputError(f"two models are named {dupes}: give each adapter a unique "
                                    "name (name=...) so its results are not overwritten")
        results = {m.name: self.apply_model(m, split=split) for m in model_adapters_list}
        report = compare_results(results, dataset=self.name, n_bootstrap=n_bootstrap, seed=seed,
                                 leakage=self.leakage(split))
        if output_dir is not None:
            report.write(Path(output_dir))
        return report

    # ---- introspection -----------------------------------------------------------------
    def lineage(self, card_id: int, model_adapter: ModelAdapter | None = None
                ) -> dict[str, Any]:
        """The chain of one card: raw bytes and source, and (with a model) its prediction."""
        from .provenance.lineage import card_lineage

        return card_lineage(self, card_id_of(card_id), model_adapter)

    @staticmethod
    def to_json(obj: Any) -> str:
        return json.dumps(obj, indent=2, sort_keys=True, default=str)


def result_row(card: Mapping[str, Any], model: ModelAdapter, pipeline: str, signature: str,
               found: Mapping[str, Any] | None, missing_detail: str = "") -> dict[str, Any]:
    """One row of a model's results table: the card's published labels, what the model
    makes of them (``actual``, ``label_type``: the adapter's, never guessed), and the
    prediction ``found`` (None: the card has none; ``missing_detail`` says why). The one
    place this row is built: ``apply_model`` and the Dagster comparison both use it."""
    row: dict[str, Any] = {
        "card_id": int(card["card_id"]), "split": card.get("split"),
        "position": card.get("position"), "drug": card.get("drug"),
        "quantity": card.get("quantity"), "actual": model.actual_label(card),
        "model": model.name, "pipeline": pipeline,
    }
    if found is None:
        row.update(prediction=None, probability=None, energy=None,
                   label_type=model.label_type(), status=STATUS_FAILED, detail=missing_detail,
                   truncated=False, raw_key=None, preprocessed_key=None, tensor_key=None,
                   prediction_key=None, cached=False)
    else:
        row.update(prediction=found.get("prediction"), probability=found.get("probability"),
                   energy=found.get("energy"),
                   label_type=found.get("label_type") or model.label_type(),
                   status=found.get("status"), detail=found.get("detail"),
                   truncated=bool(found.get("truncated")), raw_key=found.get("raw_key"),
                   preprocessed_key=found.get("preprocessed_key"),
                   tensor_key=found.get("tensor_key"), prediction_key=found.get("prediction_key"),
                   cached=bool(found.get("cached")))
    row["model_signature"] = signature
    return row


def _unique_cards(rows: pd.DataFrame) -> pd.DataFrame:
    """The first published row of each card: the unit of download and preprocessing."""
    return rows.drop_duplicates("card_id", keep="first").reset_index(drop=True)
