"""Layers 2 and 3: preprocessed arrays and model-ready tensors, computed only when missing.

Keys chain from the raw key (see ``pad_assets.hashing``), so lookups need no I/O beyond
one index query: for each card we find the deepest layer already cached and compute only
the layers below it, in bounded chunks (memory stays flat however large the dataset) and
in parallel. Measured on 2 cores (64 synthetic cards): the NN pipeline takes 18.9 ms/card
serially, 9.8 in two threads and 15.2 in two spawned processes (+3.8 s start-up), because
Pillow and OpenCV release the GIL and processes pay for shipping 1.5 MB images both ways.
So built-in pipelines use threads; large batches of researcher pipelines (which may hold
the GIL in Python code) use processes when picklable.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import warnings
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..keys import preprocessed_keys, tensor_keys
from ..models.base import TensorSpec
from ..preprocessing.base import PreprocessingPipeline
from ..store import ContentStore, NewItem
from .raw import RawPayload
from .stamp import stamp

CHUNK = 64


def _run_pipeline(pipeline: PreprocessingPipeline, data: bytes, source: str,
                  truncated: bool | None = None) -> tuple[np.ndarray, bool]:
    return pipeline.run(data, source, truncated)


def _raw_truncated(entry: dict[str, Any] | None) -> bool | None:
    """The raw layer's truncated flag (set at download), or None when it is not recorded."""
    flag = (entry or {}).get("meta", {}).get("truncated")
    return flag if isinstance(flag, bool) else None


@dataclass
class ChainResult:
    """Keys per input raw key (aligned with the input), and what had to be computed."""

    preprocessed: list[str | None] = field(default_factory=list)
    tensors: list[str | None] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # position -> reason
    computed_preprocessed: int = 0
    computed_tensors: int = 0
    #: Stored tensors computed by this call, by tensor key (only with ``keep_arrays``):
    #: the model can use them without reading them back from the shard just written.
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class DerivedLayers:
    """Builds preprocessed items and model-ready tensors from raw items in the store."""

    def __init__(self, store: ContentStore, workers: int | None = None,
                 executor: str = "auto") -> None:
        if executor not in ("auto", "thread", "process"):
            raise ValueError(f"executor {executor!r}: expected 'auto', 'thread' or 'process'")
        self.store = store
        self.workers = workers or max(1, os.cpu_count() or 1)
        self.executor = executor
        self._pool: Executor | None = None
        self._pool_kind = ""

    # ---- parallelism -------------------------------------------------------------------
    def _executor_for(self, pipeline: PreprocessingPipeline, n: int) -> Executor:
        kind = self.executor
        if kind == "auto":
            # Built-in pipelines spend their time in C code that releases the GIL, where
            # threads are as fast as processes without the spawn cost.
            builtin = type(pipeline).__module__.startswith("pad_assets.preprocessing")
            kind = "thread" if builtin or n < 4 * CHUNK else "process"
        if kind == "process":
            try:
                pickle.dumps(pipeline)
            except Exception:
                kind = "thread"  # unpicklable pipelines (lambdas, closures) stay in-process
        if self._pool is None or self._pool_kind != kind:
            self.close()
            if kind == "process":
                ctx = multiprocessing.get_context("spawn")  # never fork a TF-loaded process
                self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx)
            else:
                self._pool = ThreadPoolExecutor(self.workers)
            self._pool_kind = kind
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _run_from_store(self, pipeline: PreprocessingPipeline, raw_key: str,
                        truncated: bool | None = None) -> tuple[np.ndarray, bool]:
        # touch=False: the chunk's raw keys are touched once (one index write, not one per card)
        data = self.store.get_many([raw_key], touch=False)[raw_key]
        return _run_pipeline(pipeline, data, f"raw {raw_key}", truncated)  # type: ignore[arg-type]

    # ---- keys --------------------------------------------------------------------------
    @staticmethod
    def keys_for(raw_keys: Sequence[str], pipeline: PreprocessingPipeline,
                 spec: TensorSpec | None) -> tuple[list[str], list[str] | None]:
        pre = preprocessed_keys(raw_keys, pipeline.get_cache_key())
        if spec is None:
            return pre, None
        return pre, tensor_keys(pre, spec.as_dict())

    # ---- building ----------------------------------------------------------------------
    def ensure(self, raw_keys: Sequence[str], pipeline: PreprocessingPipeline,
               spec: TensorSpec | None = None, recompute: bool = False,
               on_chunk: Callable[[int], None] | None = None,
               payloads: MutableMapping[str, RawPayload] | None = None,
               keep_arrays: bool = False) -> ChainResult:
        """Make preprocessed items (and tensors, if ``spec``) exist for every raw key.

        ``payloads``: raw images just downloaded in this run (verified bytes by raw key),
        used instead of reading them back; each is removed from the mapping once taken,
        so memory is released as the chunk goes. ``keep_arrays``: return the stored
        tensors computed here in ``ChainResult.arrays``.
        """
        pre_keys, ten_keys = self.keys_for(raw_keys, pipeline, spec)
        result = ChainResult(preprocessed=list(pre_keys),
                             tensors=list(ten_keys) if ten_keys else [],
                             truncated=[False] * len(raw_keys))
        want = list(ten_keys) if ten_keys is not None else list(pre_keys)
        entries = self.store.entries(want + pre_keys)
        todo = [i for i, k in enumerate(want) if recompute or k not in entries]
        for i, k in enumerate(want):
            if k in entries:
                result.truncated[i] = bool(entries[k]["meta"].get("truncated", False))
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            self._build_chunk(chunk, raw_keys, pre_keys, ten_keys, pipeline, spec, entries,
                              recompute, result, payloads, keep_arrays)
            if on_chunk:
                on_chunk(len(chunk))
        for pos in result.failed:
            result.preprocessed[pos] = None
            if result.tensors:
                result.tensors[pos] = None
        return result

    def _build_chunk(self, chunk: list[int], raw_keys: Sequence[str], pre_keys: list[str],
                     ten_keys: list[str] | None, pipeline: PreprocessingPipeline,
                     spec: TensorSpec | None, entries: dict[str, Any], recompute: bool,
                     result: ChainResult, payloads: MutableMapping[str, RawPayload] | None = None,
                     keep_arrays: bool = False) -> None:
        arrays: dict[int, np.ndarray] = {}
        new_items: list[NewItem] = []
        have_pre = [i for i in chunk if pre_keys[i] in entries and not recompute]
        need_pre = [i for i in chunk if i not in set(have_pre)]
        gone: list[int] = []
        if have_pre:
            loaded = self.store.get_many([pre_keys[i] for i in have_pre])
            # evicted by a concurrent gc since ``entries`` was read: recompute them
            gone = [i for i in have_pre if pre_keys[i] not in loaded]
            have_pre = [i for i in have_pre if pre_keys[i] in loaded]
            need_pre += gone
            for i in have_pre:
                arrays[i] = np.asarray(loaded[pre_keys[i]])
                result.truncated[i] = bool(entries[pre_keys[i]]["meta"].get("truncated", False))
        if need_pre:
            desc = pipeline.describe()
            for i, arr, truncated in self._preprocess(need_pre, raw_keys, pipeline, payloads,
                                                      result):
                arrays[i] = arr
                result.truncated[i] = truncated
                result.computed_preprocessed += 1
                if pre_keys[i] not in entries or i in gone:
                    new_items.append(NewItem(pre_keys[i], "preprocessed", arr, stamp(
                        raw_key=raw_keys[i], pipeline=desc, truncated=truncated,
                        shape=list(arr.shape), dtype=arr.dtype.str)))
        if spec is not None and ten_keys is not None:
            sd = spec.as_dict()
            for i in chunk:
                if i not in arrays:
                    continue
                try:
                    stored = spec.to_storage(arrays[i])
                except ValueError as exc:
                    result.failed[i] = f"tensor spec mismatch: {exc}"
                    continue
                result.computed_tensors += 1
                if keep_arrays:
                    result.arrays[ten_keys[i]] = stored
                if ten_keys[i] not in entries:
                    new_items.append(NewItem(ten_keys[i], "tensor", stored, stamp(
                        preprocessed_key=pre_keys[i], raw_key=raw_keys[i], spec=sd,
                        truncated=result.truncated[i])))
        if new_items:
            self.store.put(new_items)

    def _preprocess(self, need: list[int], raw_keys: Sequence[str],
                    pipeline: PreprocessingPipeline,
                    payloads: MutableMapping[str, RawPayload] | None, result: ChainResult
                    ) -> Iterator[tuple[int, np.ndarray, bool]]:
        """``pipeline`` on the raw images of positions ``need``: (position, array, truncated)
        in order; failures go to ``result.failed``.

        Bytes downloaded in this run (``payloads``) are used as they are and removed from
        the mapping when taken; others are read (and verified) by the worker thread. At
        most 2 x workers images are in flight, whatever their source.
        """
        pool = self._executor_for(pipeline, len(need))
        fresh = payloads if payloads is not None else {}
        # One index query for presence and the raw layer's truncated flags (set at
        # download: with it a pipeline may decode only the rows it reads).
        raw_entries = self.store.entries([raw_keys[i] for i in need if raw_keys[i] not in fresh])
        in_process = not isinstance(pool, ProcessPoolExecutor)
        jobs = []
        for i in need:
            key = raw_keys[i]
            if key not in fresh and (key not in raw_entries or raw_entries[key]["blob"] is None):
                result.failed[i] = f"raw item {key} is not in the cache"
                continue
            jobs.append(i)
        self.store.index.touch([raw_keys[i] for i in jobs])  # LRU sees the reads

        def submit(i: int) -> Future[tuple[np.ndarray, bool]]:
            key = raw_keys[i]
            taken = fresh.pop(key, None)
            if taken is not None:  # just downloaded: its verified bytes, no read back
                return pool.submit(_run_pipeline, pipeline, taken.data, f"raw {key}",
                                   taken.truncated)
            truncated = _raw_truncated(raw_entries.get(key))
            if in_process:  # each thread reads its own image
                return pool.submit(self._run_from_store, pipeline, key, truncated)
            data = self.store.get_many([key], touch=False)[key]
            return pool.submit(_run_pipeline, pipeline, data, f"raw {key}", truncated)

        queue = list(jobs)
        futures = {i: submit(i) for i in queue[:2 * max(1, self.workers)]}
        del queue[:len(futures)]
        for i in jobs:
            fut = futures.pop(i)
            if queue:
                j = queue.pop(0)
                futures[j] = submit(j)
            try:
                try:
                    arr, truncated = fut.result()
                except BrokenProcessPool:
                    # e.g. a script without an ``if __name__ == "__main__"`` guard cannot
                    # host spawned workers: continue in threads, and say so.
                    warnings.warn("process pool unavailable (BrokenProcessPool); "
                                  f"running {pipeline.name} in threads instead",
                                  RuntimeWarning, stacklevel=2)
                    self.executor = "thread"
                    self.close()
                    pool = self._executor_for(pipeline, len(need))
                    in_process = True
                    arr, truncated = self._run_from_store(
                        pipeline, raw_keys[i], _raw_truncated(raw_entries.get(raw_keys[i])))
            except Exception as exc:  # a pipeline bug or an undecodable image, per card
                result.failed[i] = f"{pipeline.name} failed: {type(exc).__name__}: {exc}"
                continue
            yield i, arr, truncated

    # ---- reading -----------------------------------------------------------------------
    def iter_arrays(self, keys: Sequence[str], batch_size: int) -> Iterator[np.ndarray]:
        """Stacked arrays of ``keys`` in order, ``batch_size`` at a time (verified reads)."""
        for start in range(0, len(keys), batch_size):
            part = list(keys[start:start + batch_size])
            got = self.store.get_many(part)
            yield np.stack([np.asarray(got[k]) for k in part])
