"""Checking shards that come from elsewhere (bundles, remotes) before anything is indexed.

Why a module of its own: this is the trust boundary shared by import and pull. Sizes are
checked from HDF5 metadata before payloads are read; every record's form, every payload's
digest and every key against its content or recorded chain.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import IntegrityError, InvalidInputError
from ..hashing import md5_bytes
from ..maintenance import (
    CONTENT_KEYED_LAYERS,
    KNOWN_LAYERS,
    blob_row,
    is_hex_key,
    is_shard_name,
    key_problem,
    read_blob_checked,
)
from ..sources.urls import validate_name
from ..store import shards as shard_io
from . import limits


@dataclass
class _Inspected:
    name: str
    path: Path
    records: list[dict[str, Any]]
    blobs: dict[str, dict[str, Any]]  # blob id -> blob row
    problems: list[str]
    md5: dict[str, str] = field(default_factory=dict)  # bytes blob id -> md5 of the bytes


def _check_record(r: Any, where: str) -> str | None:
    if not isinstance(r, dict):
        return f"{where}: a record is {type(r).__name__}, expected an object"
    t = r.get("type")
    ts = r.get("ts")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
        return f"{where}: record {str(r)[:80]} has no finite 'ts'"
    if t == "item":
        if not is_hex_key(r.get("key")):
            return f"{where}: item key {r.get('key')!r} is not a 64-hex content key"
        if r.get("layer") not in KNOWN_LAYERS:
            return f"{where}: item {r['key']} has layer {r.get('layer')!r}, expected one of " \
                   f"{sorted(KNOWN_LAYERS)}"
        if r.get("blob") is not None and not is_hex_key(r.get("blob")):
            return f"{where}: item {r['key']} names payload {r.get('blob')!r}, not a digest"
        if not isinstance(r.get("meta", {}), dict):
            return f"{where}: item {r['key']} metadata is not an object"
        return None
    if t == "ref":
        name = r.get("name")
        if not isinstance(name, str) or not name or len(name) > 2048 or "\x00" in name:
            return f"{where}: ref name {name!r} is not a plain string"
        if not is_hex_key(r.get("key")):
            return f"{where}: ref {name} points at {r.get('key')!r}, not a content key"
        return None
    if t == "card":
        try:
            validate_name(r.get("dataset"))  # type: ignore[arg-type]
        except InvalidInputError as exc:
            return f"{where}: {exc}"
        cid = r.get("card_id")
        if not isinstance(cid, int) or isinstance(cid, bool):
            return f"{where}: card id {cid!r} is not an integer"
        if r.get("raw_key") is not None and not is_hex_key(r.get("raw_key")):
            return f"{where}: card {cid} raw key {r.get('raw_key')!r} is not a content key"
        if not isinstance(r.get("status"), str) or not isinstance(r.get("detail", ""), str):
            return f"{where}: card {cid} status/detail are not strings"
        return None
    return f"{where}: record type {t!r}, expected item, ref or card"


def _size_problem(what: str, ds: Any, limit: int) -> str | None:
    """Why an HDF5 dataset may not be read: it declares more than ``limit`` bytes, or far
    more than it stores (a compression bomb). Checked from metadata, before reading."""
    declared = int(ds.size) * int(ds.dtype.itemsize)
    if declared > limit:
        return f"{what} declares {declared} bytes, over the per-item limit of {limit}"
    stored = int(ds.id.get_storage_size())
    if declared > limits.COMPRESSION_EXEMPT_BYTES and declared > limits.MAX_ITEM_COMPRESSION * stored:
        return (f"{what} declares {declared} bytes but stores {stored} (compression over "
                f"{limits.MAX_ITEM_COMPRESSION}:1, a decompression bomb); refused unread")
    return None


def _inspect_shard(name: str, path: Path) -> _Inspected:
    """Read a foreign shard and check everything it says about itself (no index needed).

    Sizes are checked from the HDF5 metadata before any payload is read, so a small file
    that expands to gigabytes is refused without allocating them."""
    import h5py

    out = _Inspected(name, path, [], {}, [])
    try:
        with h5py.File(path, "r", locking=False) as f:
            rec = f.get(shard_io.RECORDS_DATASET)
            if rec is None or not isinstance(rec, h5py.Dataset) or rec.dtype != np.uint8:
                out.problems.append(f"shard {name}: /records is missing or not a JSON byte "
                                    "array")
                return out
            why = _size_problem(f"shard {name}: /records", rec, limits.MAX_JSON_BYTES)
            if why:
                out.problems.append(why)
                return out
            records = json.loads(bytes(rec[()]).decode("utf-8"))
            if not isinstance(records, list):
                out.problems.append(f"shard {name}: /records is not a JSON list")
                return out
            group = f.get(shard_io.BLOBS_GROUP)
            names = list(group.keys()) if isinstance(group, h5py.Group) else []
            for b in names:
                if not is_hex_key(b):
                    out.problems.append(f"shard {name}: payload name {b!r} is not a digest")
                    continue
                ds = group.get(b)
                why = _size_problem(f"shard {name}: payload {b}", ds,
                                    limits.MAX_IMPORT_ITEM_BYTES) if isinstance(ds, h5py.Dataset) \
                    else None
                if why:
                    out.problems.append(why)
                    continue
                try:
                    arr, kind = read_blob_checked(f, b)
                except IntegrityError as exc:
                    out.problems.append(f"shard {name}: {exc}")
                    continue
                out.blobs[b] = blob_row(b, arr, kind)
                if kind == "bytes":
                    out.md5[b] = md5_bytes(arr.tobytes())
                del arr
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        out.problems.append(f"shard {name}: cannot be read ({type(exc).__name__}: {exc})")
        return out
    for r in records:
        why = _check_record(r, f"shard {name}")
        if why:
            out.problems.append(why)
        else:
            out.records.append(r)
    return out


def _check_items(shards: Sequence[_Inspected], local_blobs: set[str],
                 require_payloads: bool = True) -> list[str]:
    """Every item's key matches its content / chain, and (``require_payloads``) its payload
    is in these shards or the cache. A pulled shard may point at payloads in other remote
    shards, so pull checks keys only."""
    problems = []
    blobs = {b for s in shards for b in s.blobs}
    for s in shards:
        for r in s.records:
            if r["type"] != "item":
                continue
            b = r.get("blob")
            if (require_payloads and b is not None and b not in blobs
                    and b not in local_blobs):
                problems.append(f"shard {s.name}: item {r['key']} needs payload {b}, which "
                                "neither the shards nor this cache hold")
            if r["layer"] in CONTENT_KEYED_LAYERS and b is None:
                problems.append(f"shard {s.name}: {r['layer']} item {r['key']} has no payload")
                continue
            why = key_problem(r["key"], r["layer"], b, r.get("meta") or {})
            if why:
                problems.append(f"shard {s.name}: item {r['key']}: {why}")
            elif r["layer"] == "raw":
                why = _raw_meta_problem(r, s.md5.get(b or ""))
                if why:
                    problems.append(f"shard {s.name}: raw item {r['key']}: {why}")
    return problems


def _raw_meta_problem(r: dict[str, Any], md5: str | None) -> str | None:
    """A raw item's metadata may not lie about its bytes: downloads reuse a cached image
    for any card whose manifest md5 equals the image's recorded md5."""
    meta = r.get("meta") or {}
    if meta.get("sha256") not in (None, r["key"]):
        return f"metadata says sha256 {meta.get('sha256')!r}, the bytes hash to {r['key']}"
    if md5 is not None and meta.get("md5") not in (None, md5):
        return f"metadata says md5 {meta.get('md5')!r}, the bytes have md5 {md5}"
    return None


def _bundle_rel_ok(rel: Any) -> str | None:
    """The shard name of a bundle-relative path, if it has exactly the expected form."""
    if not isinstance(rel, str):
        return None
    p = PurePosixPath(rel)
    if len(p.parts) != 3 or p.parts[0] != "shards" or not p.name.endswith(shard_io.SHARD_SUFFIX):
        return None
    name = p.name[: -len(shard_io.SHARD_SUFFIX)]
    if not is_shard_name(name) or p.parts[1] != name[:6]:
        return None
    return name


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > limits.MAX_JSON_BYTES:
        raise IntegrityError(f"{what} is {len(data)} bytes, over the limit of {limits.MAX_JSON_BYTES}")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise IntegrityError(f"{what} is a JSON {type(obj).__name__}, expected an object")
    return obj

