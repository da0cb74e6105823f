"""``PadStoreIOManager``: asset values in the content store's immutable HDF5 shards.

Each asset partition (or unpartitioned asset) is a ref ``asset/<key>/<partition>`` to a
content-addressed item, so a value written once is never rewritten and any range of
partitions loads with one index query. Image-layer assets are materialized by the batch
step, which records their partition refs through ``record_partitions``; dataset-level
assets (manifest, comparison) go through ``handle_output``. Values are stored as
JSON, bytes or arrays, never pickled: caches are shared between people.
"""


import io
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from ..errors import InvalidInputError
from ..hashing import sha256_bytes
from ..store import ContentStore, NewItem
from ..store import refs as refnames
from .resources import PadResource

UNPARTITIONED = "__all__"


def asset_ref(asset_key: dg.AssetKey, partition: str | None) -> str:
    return refnames.asset(asset_key.to_user_string(), partition or UNPARTITIONED)


def encode_value(value: Any) -> tuple[bytes | np.ndarray, str]:
    """(payload, format): DataFrames as JSON table, mappings as JSON, arrays as arrays."""
    if isinstance(value, pd.DataFrame):
        return value.to_json(orient="table", index=False, date_format="iso").encode(), "dataframe"
    if isinstance(value, np.ndarray):
        return value, "ndarray"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), "bytes"
    if isinstance(value, (dict, list, str, int, float, bool)) or value is None:
        return json.dumps(value, sort_keys=True, default=str).encode(), "json"
    raise InvalidInputError(
        f"PadStoreIOManager cannot store a {type(value).__name__}: expected a DataFrame, "
        "ndarray, bytes or JSON-like value (values are never pickled)")


def decode_value(payload: Any, fmt: str, meta: Mapping[str, Any]) -> Any:
    if fmt == "dataframe":
        return pd.read_json(io.BytesIO(payload), orient="table")
    if fmt == "json":
        return json.loads(payload)
    if fmt == "meta":  # meta-only items (predictions): the metadata is the value
        return dict(meta)
    return payload


class PadStoreIOManager(dg.ConfigurableIOManager):
    """Writes and loads asset values through the shared content store."""

    pad: dg.ResourceDependency[PadResource]

    def _store(self) -> ContentStore:
        return self.pad.store()

    # ---- writes --------------------------------------------------------------------------
    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        key = context.asset_key
        partitions = context.asset_partition_keys if context.has_asset_partitions else [None]
        if len(partitions) != 1:
            raise InvalidInputError(
                f"{key.to_user_string()}: one value for {len(partitions)} partitions; image "
                "layers record one value per partition with record_partitions")
        payload, fmt = encode_value(obj)
        ckey = sha256_bytes(payload) if isinstance(payload, bytes) else None
        store = self._store()
        try:
            if ckey is None:
                from ..hashing import array_digest

                ckey = array_digest(payload)
            store.put([NewItem(ckey, "asset_value", payload,
                               {"format": fmt, "asset": key.to_user_string(),
                                "run_id": context.run_id, "written_at": time.time()})],
                      refs=[(asset_ref(key, partitions[0]), ckey)])
        finally:
            store.close()
        context.add_output_metadata({"pad/content_key": ckey, "pad/format": fmt})

    @staticmethod
    def record_partitions(store: ContentStore, asset_key: dg.AssetKey,
                          content_keys: Mapping[str, str], run_id: str | None = None) -> None:
        """Point each partition of an image-layer asset at its content key, and (with
        ``run_id``) at the run that materialized it, in one shard."""
        if not content_keys:
            return
        refs = [(asset_ref(asset_key, p), k) for p, k in content_keys.items()]
        items: list[NewItem] = []
        if run_id:
            from ..provenance.chain import dagster_run_records

            items, run_refs = dagster_run_records(asset_key.to_user_string(), content_keys,
                                                  run_id)
            refs += run_refs
        store.put(items, refs=refs)

    # ---- reads ---------------------------------------------------------------------------
    def load_input(self, context: dg.InputContext) -> Any:
        key = context.asset_key
        store = self._store()
        try:
            if context.has_asset_partitions:
                return self.load_partitions(store, key, context.asset_partition_keys,
                                            log=context.log)
            return self.load_partitions(store, key, [None], log=context.log)[UNPARTITIONED]
        finally:
            store.close()

    @staticmethod
    def load_partitions(store: ContentStore, key: dg.AssetKey,
                        partitions: Sequence[str | None], log: Any = None
                        ) -> dict[str, Any]:
        """partition -> value for every partition that has one (a range in one query)."""
        names = {asset_ref(key, p): (p or UNPARTITIONED) for p in partitions}
        rows = store.index.refs_for(list(names))
        entries = store.entries(list(set(rows.values())))
        out: dict[str, Any] = {}
        missing = [names[r] for r in names if r not in rows]
        for ref, ckey in rows.items():
            e = entries.get(ckey)
            if e is None:
                missing.append(names[ref])
                continue
            fmt = e["meta"].get("format") or ("meta" if e["blob"] is None else e["kind"])
            payload = store.get(ckey) if e["blob"] is not None else None
            out[names[ref]] = decode_value(payload, fmt, e["meta"])
        if missing:
            if UNPARTITIONED in missing and len(partitions) == 1 and partitions[0] is None:
                raise InvalidInputError(f"asset {key.to_user_string()} has not been "
                                        "materialized into the pad_assets store")
            if log is not None:
                log.warning(f"{key.to_user_string()}: {len(missing)} partition(s) have no value "
                            f"in the store, e.g. {sorted(missing)[:5]}")
        return out
