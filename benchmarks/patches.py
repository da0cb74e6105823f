"""Proposed core fixes, applied by monkeypatching so their effect can be measured here.

The benchmarks own no core code: each patch below stands for the change proposed for the
file named in its docstring (exact diffs in RESULTS.md). ``applied(names)`` installs them in
the current process and restores the originals on exit; the memory worker (a subprocess)
uses ``apply``. Every patch keeps cache keys and stored bytes identical, so patched and
unpatched runs can share a cache.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

import numpy as np

#: The set measured as "patched" in RESULTS.md.
ALL = ("bounded_map_parallel", "verify_not_decode", "invoke_batch_4", "record_only_lookup",
       "fast_chain_keys", "fused_input_cast", "hash_once")
#: What the full run of 2026-11-24 05:04 measured as "patched" (P1-P5; P6, P7 came later).
FIRST_RUN = ALL[:5]


# ---------------------------------------------------------------------------- P1
def bounded_map_parallel(self: Any, fn: Callable[[Any], Any], items: Iterable[Any],
                         workers: int | None = None) -> Iterable[tuple[Any, Any]]:
    """P1, pad_assets/sources/http.py ``HttpClient.map_parallel``: at most 2 x workers tasks
    in flight, and no reference kept to a future once its result is handed over.

    Today every item is submitted up front and the ``futures`` dict keeps every finished
    future, i.e. every downloaded image (1.5 MB each), alive until the whole download ends:
    peak memory grows with the dataset. With a window, a consumer that stops early
    (OfflineError, Ctrl-C) also waits for 2 x workers downloads, not for all of them.
    """
    items = list(items)
    if not items:
        return
    n = min(workers or self.workers, len(items))
    source = iter(items)
    with ThreadPoolExecutor(max_workers=n) as pool:
        pending: dict[Any, Any] = {}

        def submit_next() -> None:
            for item in source:
                pending[pool.submit(fn, item)] = item
                return

        for _ in range(2 * n):
            submit_next()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                item = pending.pop(fut)
                try:
                    result: Any = fut.result()
                except BaseException as exc:  # returned to the caller, who records it
                    result = exc
                submit_next()
                yield item, result


# ---------------------------------------------------------------------------- P2
def verify_then_decode(data: bytes, source: str = "image") -> Any:
    """P2, pad_assets/layers/raw.py ``RawLayer._fetch_one``: check a download with Pillow's
    ``verify()`` (chunk structure and CRCs, no decompression: ~0.5 ms) instead of a full
    decode (~13 ms of CPU for a 730x1220 card that preprocessing decodes again anyway).
    Only a file that fails ``verify()`` takes the full decode, which still decides
    "truncated (decoded with tolerance)" vs "undecodable", exactly as today.
    """
    from pad_assets.preprocessing.decode import DecodedImage, _open_checked, decode_image

    img = _open_checked(data, source)  # header, size limit: ImageDecodeError as today
    try:
        img.verify()
    except Exception:
        return decode_image(data, source)
    return DecodedImage(img, truncated=False)


# ---------------------------------------------------------------------------- P4
def _record_only_metas(store: Any, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """P4: what ``PredictionLayer.predict`` needs of a cached prediction (record, truncated),
    extracted by SQLite instead of ``json.loads`` of the whole ~3 kB meta per card."""
    out: dict[str, dict[str, Any]] = {}
    con = store.index._connect()
    uniq = list(dict.fromkeys(keys))
    for i in range(0, len(uniq), 500):
        part = uniq[i:i + 500]
        marks = ",".join("?" * len(part))
        for key, rec, trunc in con.execute(
                "SELECT key, json_extract(meta, '$.record'), json_extract(meta, '$.truncated') "
                f"FROM items WHERE key IN ({marks})", part):
            out[key] = {"record": json.loads(rec) if rec else {}, "truncated": bool(trunc)}
    return out


@contextlib.contextmanager
def _patch_record_only() -> Iterator[None]:
    from pad_assets.layers import predictions

    original = predictions.PredictionLayer.predict

    def predict(self: Any, *args: Any, **kwargs: Any) -> Any:
        store = self.store
        store.metas = lambda keys: _record_only_metas(store, keys)  # instance attribute
        try:
            return original(self, *args, **kwargs)
        finally:
            del store.metas

    predictions.PredictionLayer.predict = predict  # type: ignore[method-assign]
    try:
        yield
    finally:
        predictions.PredictionLayer.predict = original  # type: ignore[method-assign]


# ---------------------------------------------------------------------------- P5
@contextlib.contextmanager
def _patch_fast_keys() -> Iterator[None]:
    """P5, pad_assets/hashing.py + layers: serialise the constant parts of a chain key once
    per batch instead of ``canonical_json`` of the whole list per card. Byte-identical keys
    (checked below), ~4x less CPU for the 3 keys per card of a warm lookup."""
    from pad_assets import hashing
    from pad_assets.layers import derived, predictions

    def many(kind: str, firsts: Sequence[str], *rest: Any) -> list[str]:
        tail = hashing.canonical_json(list(rest))[1:-1]
        head = '["' + kind + '",'
        suffix = ("," + tail if tail else "") + "]"
        return [hashing.sha256_bytes((head + json.dumps(f) + suffix).encode()) for f in firsts]

    orig_keys_for = derived.DerivedLayers.keys_for
    orig_pred = predictions.prediction_key_for

    def keys_for(raw_keys: Sequence[str], pipeline: Any, spec: Any) -> Any:
        pre = many("preprocessed", raw_keys, pipeline.get_cache_key())
        if spec is None:
            return pre, None
        return pre, many("tensor", pre, spec.as_dict())

    def prediction_key_for(tensor_key: str, signature: str, context: dict[str, Any]) -> str:
        return many("prediction", [tensor_key], signature, context)[0]

    # Identity check against the originals before installing anything.
    from pad_assets.models.tflite import PAD_NN_TENSOR_SPEC
    from pad_assets.preprocessing.nn import PADNeuralNetworkPipeline

    sample = ["0" * 64, "f" * 64]
    pipe = PADNeuralNetworkPipeline()
    if keys_for(sample, pipe, PAD_NN_TENSOR_SPEC) != orig_keys_for(sample, pipe,
                                                                   PAD_NN_TENSOR_SPEC):
        raise AssertionError("fast_chain_keys would change keys")
    if prediction_key_for("a" * 64, "b" * 64, {"drug": "x"}) != orig_pred("a" * 64, "b" * 64,
                                                                         {"drug": "x"}):
        raise AssertionError("fast_chain_keys would change prediction keys")
    derived.DerivedLayers.keys_for = staticmethod(keys_for)  # type: ignore[assignment]
    predictions.prediction_key_for = prediction_key_for
    try:
        yield
    finally:
        derived.DerivedLayers.keys_for = staticmethod(orig_keys_for)  # type: ignore[assignment]
        predictions.prediction_key_for = orig_pred


# ---------------------------------------------------------------------------- P6
@contextlib.contextmanager
def _patch_fused_cast() -> Iterator[None]:
    """P6: uint8 tensors go from the store to the interpreter's input buffer in one pass.

    pad_assets/layers/predictions.py casts every stored batch to float32 (``spec.to_model``:
    32 x 2.5 MB), the adapter's per-chunk cast is then a no-op, and ``set_tensor`` copies the
    float32 chunk once more. Proposed: predictions.py hands the stacked storage-dtype batch to
    adapters that declare ``accepts_storage_dtype``; ``PADTensorFlowAdapter.predict_logits``
    passes it on; ``TFLiteRunner._invoke`` casts while copying into the input tensor
    (``np.copyto(interpreter.tensor(i)(), chunk, casting="unsafe")``).
    """
    from pad_assets.layers import predictions
    from pad_assets.models import runtime, tflite

    orig_invoke = runtime.TFLiteRunner._invoke
    orig_logits = tflite.PADTensorFlowAdapter.predict_logits
    orig_predict = predictions.PredictionLayer.predict

    def _invoke(self: Any, chunk: np.ndarray) -> np.ndarray:
        dtype = self._input["dtype"]
        scale, _ = self._input.get("quantization", (0.0, 0))
        if np.issubdtype(dtype, np.integer) and scale:
            return orig_invoke(self, chunk)
        index = self._input["index"]
        n = chunk.shape[0]
        if n != self._current_batch:
            self.interpreter.resize_tensor_input(index, [n, *chunk.shape[1:]])
            self.interpreter.allocate_tensors()
            self._current_batch = n
        view = self.interpreter.tensor(index)()
        np.copyto(view, chunk, casting="unsafe")
        del view  # no outstanding reference to the buffer during invoke
        self.interpreter.invoke()
        self.invocations += 1
        return self._from_output(self.interpreter.get_tensor(self._output_index))

    def predict_logits(self: Any, preprocessed_images: np.ndarray) -> np.ndarray:
        stored = np.asarray(preprocessed_images)
        if stored.ndim == 3:
            stored = stored[None]
        runner = self.runner
        step = runtime.MAX_INVOKE_BATCH
        return np.concatenate([runner.run(stored[i:i + step])
                               for i in range(0, len(stored), step)])

    class _StorageSpec:
        """The adapter's spec, except ``to_model`` keeps the storage dtype."""

        def __init__(self, spec: Any) -> None:
            self._spec = spec

        def __getattr__(self, name: str) -> Any:
            return getattr(self._spec, name)

        def to_model(self, stored_batch: np.ndarray) -> np.ndarray:
            return stored_batch

    class _Model:
        def __init__(self, model: Any) -> None:
            self._model = model

        def __getattr__(self, name: str) -> Any:
            return getattr(self._model, name)

        def get_tensor_spec(self) -> Any:
            return _StorageSpec(self._model.get_tensor_spec())

    def predict(self: Any, raw_keys: Any, contexts: Any, model: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(model, tflite.PADTensorFlowAdapter):
            model = _Model(model)
        return orig_predict(self, raw_keys, contexts, model, *args, **kw)

    runtime.TFLiteRunner._invoke = _invoke
    tflite.PADTensorFlowAdapter.predict_logits = predict_logits
    predictions.PredictionLayer.predict = predict
    try:
        yield
    finally:
        runtime.TFLiteRunner._invoke = orig_invoke
        tflite.PADTensorFlowAdapter.predict_logits = orig_logits
        predictions.PredictionLayer.predict = orig_predict


# ---------------------------------------------------------------------------- P7
@contextlib.contextmanager
def _patch_hash_once() -> Iterator[None]:
    """P7, pad_assets/layers/raw.py + store/store.py: hash each downloaded image once.

    Today a card's 1.5 MB is hashed five times: md5 in ``_fetch_one`` (worker thread), then
    sha256 and md5 again in the single consumer thread of ``_download``, then sha256 a third
    time in ``payload_blob`` when the batch is written: ~4 ms of serial work per card in the
    one thread every download waits on. Proposed: ``_fetch_one`` computes md5 and sha256 in
    the worker and returns them; ``_download`` uses them; ``NewItem`` carries the blob digest
    so ``payload_blob`` does not recompute it. Measured here with an identity-checked memo
    (the same bytes object, the last 48 digests) that has the same effect.
    """
    import collections
    import hashlib
    import threading

    from pad_assets.layers import raw
    from pad_assets.store import store as st

    memo: collections.OrderedDict[tuple[str, int], tuple[bytes, str]] = collections.OrderedDict()
    lock = threading.Lock()
    local = threading.local()  # only digests computed inside _fetch_one are remembered

    def digest(kind: str, data: Any) -> str:
        if type(data) is not bytes or len(data) < 65536:
            return hashlib.new(kind, data).hexdigest()
        key = (kind, id(data))
        with lock:
            hit = memo.get(key)
            if hit is not None and hit[0] is data:
                return hit[1]
        value = hashlib.new(kind, data).hexdigest()
        if getattr(local, "record", False):
            with lock:
                memo[key] = (data, value)
                while len(memo) > 48:
                    memo.popitem(last=False)
        return value

    def md5(data: Any) -> str:
        return digest("md5", data)

    def sha256(data: Any) -> str:
        return digest("sha256", data)

    orig_fetch = raw.RawLayer._fetch_one

    def fetch(self: Any, row: Any) -> Any:
        local.record = True
        try:
            out = orig_fetch(self, row)
            sha256(out[0])  # in the worker thread, not in the consumer
        finally:
            local.record = False
        return out

    with contextlib.ExitStack() as stack:
        stack.enter_context(_setattr(raw, "md5_bytes", md5))
        stack.enter_context(_setattr(raw, "sha256_bytes", sha256))
        stack.enter_context(_setattr(st, "sha256_bytes", sha256))
        stack.enter_context(_setattr(raw.RawLayer, "_fetch_one", fetch))
        yield


# ---------------------------------------------------------------------------- P8
@contextlib.contextmanager
def prebuild_in_dagster(project: Any) -> Iterator[None]:
    """P8, pad_assets/orchestration/assets.py ``materialize_images``: build the batch's
    layers with ``apply_model`` FIRST (where preprocessing overlaps inference), so the
    per-layer ``ensure`` calls that follow only look keys up. Today the step preprocesses
    every card, then builds every tensor, then runs the model: no overlap, and tensors are
    read back twice. Measured here by making the step's ``download_and_cache(card_ids=...)``
    run ``apply_model`` for the project's models right after downloading.
    """
    from pad_assets.orchestration.resources import PadResource

    original = PadResource.dataset

    def dataset(self: Any, name: str) -> Any:
        d = original(self, name)
        download = d.download_and_cache

        def download_and_cache(*args: Any, **kwargs: Any) -> Any:
            summary = download(*args, **kwargs)
            ids = kwargs.get("card_ids")
            if ids is not None:
                raw = d.raw.raw_keys(d.name, ids)
                ok = [c for c in ids if c in raw]
                for m in project.models:
                    d.apply_model(m.build(d.settings), card_ids=ok)
            return summary

        d.download_and_cache = download_and_cache
        return d

    PadResource.dataset = dataset  # type: ignore[method-assign]
    try:
        yield
    finally:
        PadResource.dataset = original  # type: ignore[method-assign]


# ---------------------------------------------------------------------------- registry
@contextlib.contextmanager
def _setattr(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def in_core() -> list[str]:
    """Patches whose change the core already has (they are then not installed)."""
    import inspect

    from pad_assets.layers import raw
    from pad_assets.models import runtime
    from pad_assets.sources import http
    from pad_assets.store import index, store

    found = []
    if "FIRST_COMPLETED" in inspect.getsource(http.HttpClient.map_parallel):
        found.append("bounded_map_parallel")
    if not hasattr(raw, "decode_image"):
        found.append("verify_not_decode")
    if runtime.MAX_INVOKE_BATCH <= 4:
        found.append("invoke_batch_4")
    if hasattr(index.Index, "json_fields"):
        found.append("record_only_lookup")
    if "blob_id" in getattr(store.NewItem, "__dataclass_fields__", {}):
        found.append("hash_once")
    from pad_assets.models import tflite

    if getattr(tflite.PADTensorFlowAdapter, "accepts_storage_dtype", False):
        found.append("fused_input_cast")
    return found


@contextlib.contextmanager
def _patch(name: str) -> Iterator[None]:
    if name in in_core():
        yield  # the core already has this change: nothing to install
    elif name == "bounded_map_parallel":
        from pad_assets.sources import http

        with _setattr(http.HttpClient, "map_parallel", bounded_map_parallel):
            yield
    elif name == "verify_not_decode":
        from pad_assets.layers import raw

        with _setattr(raw, "decode_image", verify_then_decode):
            yield
    elif name == "invoke_batch_4":
        # P3, pad_assets/models/runtime.py: MAX_INVOKE_BATCH = 16 -> 4 (the interpreter
        # arena of a 454x454 MobileNetV2 is ~480 MB at batch 16, ~110 MB at 4).
        from pad_assets.models import runtime, tflite

        with _setattr(runtime, "MAX_INVOKE_BATCH", 4), _setattr(tflite, "MAX_INVOKE_BATCH", 4):
            yield
    elif name == "record_only_lookup":
        with _patch_record_only():
            yield
    elif name == "fast_chain_keys":
        with _patch_fast_keys():
            yield
    elif name == "fused_input_cast":
        with _patch_fused_cast():
            yield
    elif name == "hash_once":
        with _patch_hash_once():
            yield
    else:
        raise SystemExit(f"unknown patch {name!r}; known: {ALL}")


def effective(names: Sequence[str]) -> list[str]:
    """The patches of ``names`` that would really be installed on this core."""
    core = set(in_core())
    return [n for n in names if n not in core]


@contextlib.contextmanager
def applied(names: Sequence[str]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for n in names:
            stack.enter_context(_patch(n))
        yield


_KEEP: list[Any] = []


def apply(name: str) -> None:
    """Install one patch for the rest of the process (the memory worker)."""
    cm = _patch(name)
    cm.__enter__()
    _KEEP.append(cm)
