"""Asset checks: integrity between layers, on everything the store holds for a dataset.

- raw integrity: every cached image reads back with its checksum, matches the manifest's
  md5, decodes, and is flagged truncated exactly when it needed truncated-image tolerance;
- tensor shape/dtype: every model-ready tensor matches its spec (from the index alone);
- prediction completeness: every manifest card is predicted or has a recorded reason.
"""


from typing import Any

import dagster as dg

from ..errors import CacheCorruptionError, ImageDecodeError
from ..hashing import md5_bytes
from .assets import DatasetAssetKeys
from .config import DatasetConfig, ProjectConfig
from .resources import PadResource

MAX_LISTED = 20


def _result(key: dg.AssetKey, ok: int, problems: dict[str, str], **extra: Any
            ) -> dg.AssetCheckResult:
    listed = dict(sorted(problems.items())[:MAX_LISTED])
    return dg.AssetCheckResult(asset_key=key, passed=not problems, metadata={
        "checked": ok + len(problems), "failures": len(problems),
        "failures_listed": dg.MetadataValue.json(listed), **extra})


def raw_integrity(pad: PadResource, ds: DatasetConfig, key: dg.AssetKey) -> dg.AssetCheckResult:
    from ..preprocessing.decode import decode_image

    dataset = pad.dataset(ds.name)
    try:
        manifest = {int(r["card_id"]): r for r in dataset.manifest().rows.to_dict("records")}
        cards = dataset.store.cards(ds.name)
        problems: dict[str, str] = {}
        ok = truncated = 0
        metas = dataset.store.metas([c["raw_key"] for c in cards.values() if c["raw_key"]])
        for cid, c in sorted(cards.items()):
            if c["status"] != "ok" or not c["raw_key"]:
                continue
            try:
                data = dataset.store.get(c["raw_key"])
                want = manifest.get(cid, {}).get("md5")
                if want and md5_bytes(data) != want:
                    raise ValueError(f"md5 {md5_bytes(data)} != manifest {want}")
                decoded = decode_image(data, f"card {cid}")
                flagged = bool(metas.get(c["raw_key"], {}).get("truncated"))
                if decoded.truncated != flagged:
                    raise ValueError(f"truncated={decoded.truncated} but flagged={flagged}")
                truncated += decoded.truncated
                ok += 1
            except (CacheCorruptionError, ImageDecodeError, ValueError) as exc:
                problems[str(cid)] = str(exc)[:300]
        return _result(key, ok, problems, truncated_flagged=truncated)
    finally:
        dataset.close()


def tensor_specs(pad: PadResource, key: dg.AssetKey, model_cfg: Any) -> dg.AssetCheckResult:
    store = pad.store()
    try:
        adapter_spec = _static_spec(model_cfg)
        refs = store.index.refs(f"asset/{key.to_user_string()}/")
        entries = store.entries(list(set(refs.values())))
        problems, ok = {}, 0
        for name, ckey in refs.items():
            part = name.rsplit("/", 1)[-1]
            e = entries.get(ckey)
            if e is None:
                problems[part] = "tensor item missing from the store"
                continue
            spec = e["meta"].get("spec") or {}
            shape, dtype = tuple(e["shape"] or ()), e["dtype"]
            want_shape = tuple(spec.get("shape") or adapter_spec.get("shape") or ())
            want_dtype = spec.get("storage_dtype") or adapter_spec.get("storage_dtype")
            import numpy as np

            if shape != want_shape or np.dtype(dtype) != np.dtype(want_dtype):
                problems[part] = f"shape {shape} dtype {dtype}, expected {want_shape} {want_dtype}"
            else:
                ok += 1
        return _result(key, ok, problems)
    finally:
        store.close()


def _static_spec(model_cfg: Any) -> dict[str, Any]:
    if model_cfg.adapter == "pad_tflite":
        return {"shape": (454, 454, 3), "storage_dtype": "uint8"}
    if model_cfg.adapter == "pls":
        return {"shape": (360,)}
    return {}


def prediction_completeness(pad: PadResource, ds: DatasetConfig, key: dg.AssetKey
                            ) -> dg.AssetCheckResult:
    dataset = pad.dataset(ds.name)
    try:
        ids = dataset.manifest().card_ids
        refs = dataset.store.index.refs(f"asset/{key.to_user_string()}/")
        done = {name.rsplit("/", 1)[-1] for name in refs}
        cards = dataset.store.cards(ds.name)
        problems, explained = {}, {}
        for cid in ids:
            if str(cid) in done:
                continue
            c = cards.get(cid)
            if c and c["status"] != "ok":
                explained[str(cid)] = c["detail"] or c["status"]
            else:
                problems[str(cid)] = "no prediction and no recorded reason"
        return _result(key, len(done) + len(explained), problems,
                       predicted=len(done), explained=len(explained),
                       explanations=dg.MetadataValue.json(dict(sorted(explained.items())[:50])))
    finally:
        dataset.close()


def build_dataset_checks(ds: DatasetConfig, project: ProjectConfig) -> list[Any]:
    keys = DatasetAssetKeys(ds, project.models)
    checks = []

    @dg.asset_check(asset=keys.raw, name="raw_integrity", blocking=False,
                    description="md5, checksum, decodable, truncated flagged")
    def _raw(pad: PadResource) -> dg.AssetCheckResult:
        return raw_integrity(pad, ds, keys.raw)

    checks.append(_raw)
    seen = set()
    for m in project.models:
        tk = keys.tensor(m)
        if tk not in seen:
            seen.add(tk)

            def _make_tensor_check(tk: dg.AssetKey = tk, m: Any = m) -> Any:
                @dg.asset_check(asset=tk, name="tensor_shape_dtype", blocking=False,
                                description="every tensor matches its spec")
                def _tensor(pad: PadResource) -> dg.AssetCheckResult:
                    return tensor_specs(pad, tk, m)

                return _tensor

            checks.append(_make_tensor_check())

        def _make_pred_check(pk: dg.AssetKey) -> Any:
            @dg.asset_check(asset=pk, name="prediction_completeness", blocking=False,
                            description="every manifest card predicted or explained")
            def _pred(pad: PadResource) -> dg.AssetCheckResult:
                return prediction_completeness(pad, ds, pk)

            return _pred

        checks.append(_make_pred_check(keys.prediction(m)))
    return checks
