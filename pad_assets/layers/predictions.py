"""Layer 4: predictions cached by (image content, preprocessing, tensor spec, model, context).

Lookup is top-down: prediction keys are derived from raw keys by hashing alone, so a warm
run is one index query and no inference. Missing predictions are computed chunk by chunk
(bounded memory), building only the layers below that are missing too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..hashing import chain_key
from ..models.base import STATUS_FAILED, ModelAdapter, PredictionRecord
from ..preprocessing.base import PreprocessingPipeline
from ..provenance import stamp
from ..store import ContentStore, NewItem
from .derived import DerivedLayers

PREDICT_CHUNK = 256


def prediction_key_for(tensor_key: str, signature: str, context: dict[str, Any]) -> str:
    return chain_key("prediction", tensor_key, signature, context)


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
        model_desc = None
        for start in range(0, len(todo), PREDICT_CHUNK):
            chunk = todo[start:start + PREDICT_CHUNK]
            chain = self.derived.ensure([raw_keys[i] for i in chunk], pipeline, spec,
                                        recompute=not use_cache)
            ok = [j for j in range(len(chunk)) if j not in chain.failed]
            for j, reason in chain.failed.items():
                i = chunk[j]
                out[i] = CardPrediction(raw_keys[i], None, None, None,
                                        PredictionRecord(None, status=STATUS_FAILED,
                                                         detail=reason,
                                                         label_type=model.label_type()),
                                        False, cached=False)
            if model_desc is None and ok:
                model_desc = model.describe()
            new_items: list[NewItem] = []
            tkeys = [chain.tensors[j] for j in ok]
            for b in range(0, len(ok), batch_size):
                part = ok[b:b + batch_size]
                batch_keys = tkeys[b:b + batch_size]
                loaded = self.store.get_many(batch_keys)
                tensors = spec.to_model(np.stack([np.asarray(loaded[k]) for k in batch_keys]))
                ctx = [contexts[chunk[j]] for j in part]
                t0 = time.perf_counter()
                records = model.predict_batch(tensors, ctx)
                dt = (time.perf_counter() - t0) / max(1, len(part))
                if len(records) != len(part):
                    raise RuntimeError(f"{model.name}.predict_batch returned {len(records)} "
                                       f"records for {len(part)} inputs")
                for j, rec in zip(part, records, strict=False):
                    i = chunk[j]
                    trunc = chain.truncated[j]
                    out[i] = CardPrediction(raw_keys[i], pre_keys[i], ten_keys[i],
                                            pred_keys[i], rec, trunc, cached=False)
                    if pred_keys[i] not in cached:
                        new_items.append(NewItem(pred_keys[i], "prediction", None, stamp(
                            record=rec.as_dict(), raw_key=raw_keys[i],
                            preprocessed_key=pre_keys[i], tensor_key=ten_keys[i],
                            model=model_desc, pipeline=pipeline.describe(),
                            spec=spec.as_dict(), context=contexts[i], truncated=trunc,
                            inference_seconds=dt)))
                if on_progress:
                    on_progress(len(part))
            if new_items:
                existing = self.store.has([it.key for it in new_items])
                fresh = [it for it in new_items if it.key not in existing]
                if fresh:
                    self.store.put(fresh)
        return [o for o in out if o is not None]
