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

from ..keys import prediction_keys
from ..models.base import STATUS_FAILED, ModelAdapter, PredictionRecord
from ..preprocessing.base import PreprocessingPipeline
from ..store import ContentStore, NewItem
from .derived import ChainResult, DerivedLayers
from .raw import RawPayload
from .stamp import stamp

PREDICT_CHUNK = 64  # cards prepared ahead of the model: bounds memory
FIRST_CHUNK = 16  # the model starts after 16 cards are ready, not 64


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


#: Raw keys for positions whose image is not cached yet (``None`` where it failed), and
#: the verified bytes of the images it downloaded, by raw key (preprocessed without a
#: read back from the shard they were just written to).
Fetch = Callable[[list[int]], tuple[dict[int, str | None], dict[str, RawPayload]]]


@dataclass
class _PredictJob:
    """One ``predict`` call's inputs and outputs, shared by its chunks.

    The key lists are filled in as raw images arrive: position ``i`` has keys once its raw
    key is known. The prepare stage writes positions the model stage is not reading.
    """

    raw_keys: list[str | None]
    contexts: Sequence[dict[str, Any]]
    pre_keys: list[str | None]
    ten_keys: list[str | None]
    pred_keys: list[str | None]
    model: ModelAdapter
    pipeline: PreprocessingPipeline
    spec: Any
    signature: str
    batch_size: int
    use_cache: bool
    out: list[CardPrediction | None]
    on_progress: Callable[[int], None] | None
    model_desc: dict[str, Any] | None = None


@dataclass
class _Prepared:
    """A chunk ready for the model: positions, their chain, their tensors (by key)."""

    chunk: list[int]
    chain: ChainResult
    tensors: dict[str, Any]


class PredictionLayer:
    def __init__(self, store: ContentStore, derived: DerivedLayers) -> None:
        self.store = store
        self.derived = derived

    def predict(self, raw_keys: Sequence[str | None], contexts: Sequence[dict[str, Any]],
                model: ModelAdapter, pipeline: PreprocessingPipeline, batch_size: int = 32,
                use_cache: bool = True, on_progress: Callable[[int], None] | None = None,
                fetch: Fetch | None = None, evicted: Sequence[str | None] | None = None
                ) -> list[CardPrediction | None]:
        """Predictions aligned with ``raw_keys``; ``None`` where no image could be had.

        ``raw_keys[i] is None`` means card ``i`` is not cached yet: ``fetch`` downloads such
        cards chunk by chunk inside the preparation stage, so a cold run downloads chunk
        n+1 while the model runs on chunk n instead of downloading everything first.
        ``evicted[i]``, when given, is the raw key of card ``i``'s image that ``gc``
        evicted: a prediction cached for it is served from its key alone (keys are hashes
        of the raw key, no payload is read); only cards without one are fetched.
        """
        if fetch is None and any(k is None for k in raw_keys):
            raise ValueError("predict: some raw keys are None and no fetch was given")
        spec = model.get_tensor_spec()
        job = _PredictJob(list(raw_keys), contexts, [None] * len(raw_keys),
                          [None] * len(raw_keys), [None] * len(raw_keys), model, pipeline,
                          spec, model.get_cache_signature(), batch_size, use_cache,
                          [None] * len(raw_keys), on_progress)
        known = [i for i, k in enumerate(raw_keys) if k is not None]
        todo = self._lookup(job, known)
        if evicted is not None and use_cache:
            gone = [i for i, k in enumerate(raw_keys) if k is None and evicted[i]]
            for i in gone:
                job.raw_keys[i] = evicted[i]
            for i in self._lookup(job, gone):  # no cached prediction: the image is needed
                job.raw_keys[i] = job.pre_keys[i] = job.ten_keys[i] = job.pred_keys[i] = None
        # cached raw first (ready now), then the cards that must be downloaded
        todo += [i for i, k in enumerate(job.raw_keys) if k is None]
        # a small first chunk gets the model busy early; later chunks amortise shard writes
        bounds = [0, min(len(todo), FIRST_CHUNK)]
        while bounds[-1] < len(todo):
            bounds.append(min(len(todo), bounds[-1] + PREDICT_CHUNK))
        chunks = [todo[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]

        def prepare(chunk: list[int]) -> _Prepared:
            return self._prepare(job, chunk, fetch)

        # Two stages: while the model runs on one chunk, one background thread downloads,
        # decodes and preprocesses the next, so neither core idles during serial parts
        # (HTTP, shard writes, verified reads). At most one chunk is prepared ahead:
        # memory stays bounded.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pad-prepare") as stage:
            ahead: Future[_Prepared] | None = (
                stage.submit(prepare, chunks[0]) if chunks else None)
            if chunks:
                job.model.warm_up()  # e.g. the interpreter, built while chunk 0 is prepared
            for n in range(len(chunks)):
                assert ahead is not None
                prepared = ahead.result()
                ahead = stage.submit(prepare, chunks[n + 1]) if n + 1 < len(chunks) else None
                self._predict_chunk(job, prepared)
        return job.out

    def cached(self, raw_keys: Sequence[str], contexts: Sequence[dict[str, Any]],
               model: ModelAdapter, pipeline: PreprocessingPipeline) -> set[int]:
        """Positions whose prediction is cached: hashing plus one index query, no payload
        read (so it answers for cards whose image and tensors were evicted)."""
        if not raw_keys:
            return set()
        _, ten = self.derived.keys_for(list(raw_keys), pipeline, model.get_tensor_spec())
        assert ten is not None
        preds = prediction_keys(ten, model.get_cache_signature(), contexts)
        have = self.store.has(preds)
        return {i for i, k in enumerate(preds) if k in have}

    def _lookup(self, job: _PredictJob, positions: list[int]) -> list[int]:
        """Fill keys for ``positions`` (raw keys known); return those not cached."""
        if not positions:
            return []
        raws = [job.raw_keys[i] for i in positions]
        pre, ten = self.derived.keys_for(raws, job.pipeline, job.spec)  # type: ignore[arg-type]
        assert ten is not None
        preds = prediction_keys(ten, job.signature, [job.contexts[i] for i in positions])
        for i, a, b, c in zip(positions, pre, ten, preds, strict=True):
            job.pre_keys[i], job.ten_keys[i], job.pred_keys[i] = a, b, c
        cached = (self.store.index.json_fields(preds, "$.record", "$.truncated")
                  if job.use_cache else {})
        todo = []
        for i in positions:
            k = job.pred_keys[i]
            hit = cached.get(k)  # type: ignore[arg-type]
            if hit is None:
                todo.append(i)
                continue
            record, truncated = hit
            job.out[i] = CardPrediction(job.raw_keys[i], job.pre_keys[i], job.ten_keys[i], k,  # type: ignore[arg-type]
                                        PredictionRecord.from_dict(json.loads(record or "{}")),
                                        bool(truncated), cached=True)
        hits = len(positions) - len(todo)
        if hits:
            self.store.index.touch([k for k in preds if k in cached])  # LRU sees hits
            if job.on_progress:
                job.on_progress(hits)
        return todo

    def _prepare(self, job: _PredictJob, chunk: list[int], fetch: Fetch | None) -> _Prepared:
        """Download what the chunk lacks, build its missing preprocessed/tensor items, and
        read its cached tensors (verified reads: ~1 ms/card that the model's thread need not
        wait for). A cold card goes download -> decode -> tensor in memory: its bytes and
        tensor are not read back from the shards they were just written to."""
        need = [i for i in chunk if job.raw_keys[i] is None]
        payloads: dict[str, RawPayload] = {}
        if need:
            assert fetch is not None
            got, payloads = fetch(need)
            arrived = [i for i in need if got.get(i)]
            for i in arrived:
                job.raw_keys[i] = got[i]
            # content already predicted under another card or dataset: no work
            still = set(self._lookup(job, arrived))
            chunk = [i for i in chunk if i not in need or i in still]
        chain = self.derived.ensure([job.raw_keys[i] for i in chunk], job.pipeline,  # type: ignore[misc]
                                    job.spec, recompute=not job.use_cache, payloads=payloads,
                                    keep_arrays=True)
        payloads.clear()
        keys = [chain.tensors[j] for j in range(len(chunk)) if j not in chain.failed]
        # Tensors computed just now are used as computed (their digest was taken when they
        # were written); only tensors that were already cached are read, and verified.
        tensors: dict[str, Any] = {k: chain.arrays[k] for k in keys if k in chain.arrays}
        tensors.update(self.store.get_many([k for k in keys if k not in tensors]))  # type: ignore[misc]
        chain.arrays.clear()
        return _Prepared(chunk, chain, tensors)

    def _predict_chunk(self, job: _PredictJob, prepared: _Prepared) -> None:
        """Run the model on one prepared chunk and store its new predictions (one shard)."""
        chunk, chain = prepared.chunk, prepared.chain
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
            tensors = np.stack([np.asarray(prepared.tensors[k]) for k in batch_keys])
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

