"""Layer 4: predictions cached by (image content, preprocessing, tensor spec, model, context).

Lookup is top-down: prediction keys are derived from raw keys by hashing alone, so a warm
run is one index query and no inference. Missing predictions are computed chunk by chunk
(bounded memory), building only the layers below that are missing too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..hashing import canonical_json, chain_key, chain_keys
from ..models.base import STATUS_FAILED, ModelAdapter, PredictionRecord
from ..preprocessing.base import PreprocessingPipeline
from ..provenance import stamp
from ..store import ContentStore, NewItem
from .derived import ChainResult, DerivedLayers

PREDICT_CHUNK = 64  # small enough to overlap preparation and inference early


def prediction_key_for(tensor_key: str, signature: str, context: dict[str, Any]) -> str:
    return chain_key("prediction", tensor_key, signature, context)


def prediction_keys_for(tensor_keys: Sequence[str], signature: str,
                        contexts: Sequence[dict[str, Any]]) -> list[str]:
    """Prediction keys of a batch; cards with equal contexts share one serialisation."""
    out: list[str | None] = [None] * len(tensor_keys)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(contexts):
        groups.setdefault(canonical_json(c), []).append(i)
    for idx in groups.values():
        keys = chain_keys("prediction", [tensor_keys[i] for i in idx], signature,
                          contexts[idx[0]])
        for i, k in zip(idx, keys, strict=True):
            out[i] = k
    return out  # type: ignore[return-value]


@dataclass
class CardPrediction:
    """One card's prediction with every key of its chain (for tables and lineage)."""

    raw_key: str
    preprocessed_key: str | None
    tensor_key: str | None
    prediction_key: str | None
    record: PredictionRecord
    truncated: bool
    cached: bool


@dataclass
class _PredictJob:
    """One ``predict`` call's inputs and outputs, shared by its chunks."""

    raw_keys: Sequence[str]
    contexts: Sequence[dict[str, Any]]
    pre_keys: list[str]
    ten_keys: list[str]
    pred_keys: list[str]
    cached: dict[str, Any]
    model: ModelAdapter
    pipeline: PreprocessingPipeline
    spec: Any
    batch_size: int
    out: list[CardPrediction | None]
    on_progress: Callable[[int], None] | None
    model_desc: dict[str, Any] | None = None


class PredictionLayer:
    def __init__(self, store: ContentStore, derived: DerivedLayers) -> None:
        self.store = store
        self.derived = derived

    def predict(self, raw_keys: Sequence[str], contexts: Sequence[dict[str, Any]],
                model: ModelAdapter, pipeline: PreprocessingPipeline, batch_size: int = 32,
                use_cache: bool = True, on_progress: Callable[[int], None] | None = None,
                ) -> list[CardPrediction]:
        spec = model.get_tensor_spec()
        signature = model.get_cache_signature()
        pre_keys, ten_keys = self.derived.keys_for(raw_keys, pipeline, spec)
        assert ten_keys is not None
        pred_keys = [prediction_key_for(t, signature, c) for t, c in zip(ten_keys, contexts, strict=False)]
        cached = (self.store.index.json_fields(pred_keys, "$.record", "$.truncated")
                  if use_cache else {})
        out: list[CardPrediction | None] = [None] * len(raw_keys)
        todo = []
        for i, k in enumerate(pred_keys):
            hit = cached.get(k)
            if hit is not None:
                record, truncated = hit
                out[i] = CardPrediction(raw_keys[i], pre_keys[i], ten_keys[i], k,
                                        PredictionRecord.from_dict(json.loads(record or "{}")),
                                        bool(truncated), cached=True)
            else:
                todo.append(i)
        if len(raw_keys) - len(todo):
            self.store.index.touch([k for k in pred_keys if k in cached])  # LRU sees hits
            if on_progress:
                on_progress(len(raw_keys) - len(todo))
        job = _PredictJob(raw_keys, contexts, pre_keys, ten_keys, pred_keys, cached, model,
                          pipeline, spec, batch_size, out, on_progress)
        chunks = [todo[s:s + PREDICT_CHUNK] for s in range(0, len(todo), PREDICT_CHUNK)]

        def prepare(chunk: list[int]) -> ChainResult:
            return self.derived.ensure([raw_keys[i] for i in chunk], pipeline, spec,
                                       recompute=not use_cache)

        # Two stages: while the model runs on one chunk, one background thread decodes and
        # preprocesses the next, so neither core idles during serial parts (shard writes,
        # verified reads). At most one chunk is prepared ahead: memory stays bounded.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pad-prepare") as stage:
            ahead: Future[ChainResult] | None = stage.submit(prepare, chunks[0]) if chunks else None
            for n, chunk in enumerate(chunks):
                assert ahead is not None
                chain = ahead.result()
                ahead = stage.submit(prepare, chunks[n + 1]) if n + 1 < len(chunks) else None
                self._predict_chunk(job, chunk, chain)
        return [o for o in out if o is not None]

    def _predict_chunk(self, job: _PredictJob, chunk: list[int], chain: ChainResult) -> None:
        """Run the model on one prepared chunk and store its new predictions (one shard)."""
        ok = [j for j in range(len(chunk)) if j not in chain.failed]
        for j, reason in chain.failed.items():
            i = chunk[j]
            failed = PredictionRecord(None, status=STATUS_FAILED, detail=reason,
                                      label_type=job.model.label_type())
            job.out[i] = CardPrediction(job.raw_keys[i], None, None, None, failed, False,
                                        cached=False)
        if job.model_desc is None and ok:
            job.model_desc = job.model.describe()
        new_items: list[NewItem] = []
        tkeys = [chain.tensors[j] for j in ok]
        for b in range(0, len(ok), job.batch_size):
            part = ok[b:b + job.batch_size]
            batch_keys = tkeys[b:b + job.batch_size]
            loaded = self.store.get_many(batch_keys)
            tensors = np.stack([np.asarray(loaded[k]) for k in batch_keys])
            if not job.model.accepts_storage_dtype:
                tensors = job.spec.to_model(tensors)
            ctx = [job.contexts[chunk[j]] for j in part]
            t0 = time.perf_counter()
            records = job.model.predict_batch(tensors, ctx)
            dt = (time.perf_counter() - t0) / max(1, len(part))
            if len(records) != len(part):
                raise RuntimeError(f"{job.model.name}.predict_batch returned {len(records)} "
                                   f"records for {len(part)} inputs")
            for j, rec in zip(part, records, strict=False):
                i = chunk[j]
                trunc = chain.truncated[j]
                job.out[i] = CardPrediction(job.raw_keys[i], job.pre_keys[i], job.ten_keys[i],
                                            job.pred_keys[i], rec, trunc, cached=False)
                if job.pred_keys[i] not in job.cached:
                    new_items.append(NewItem(job.pred_keys[i], "prediction", None, stamp(
                        record=rec.as_dict(), raw_key=job.raw_keys[i],
                        preprocessed_key=job.pre_keys[i], tensor_key=job.ten_keys[i],
                        model=job.model_desc, pipeline=job.pipeline.describe(),
                        spec=job.spec.as_dict(), context=job.contexts[i], truncated=trunc,
                        inference_seconds=dt)))
            if job.on_progress:
                job.on_progress(len(part))
        if new_items:
            existing = self.store.has([it.key for it in new_items])
            fresh = [it for it in new_items if it.key not in existing]
            if fresh:
                self.store.put(fresh)

