"""Constants and small helpers every maintenance operation shares (keys, digests, sizes).

Also used by ``pad_assets.sharing``, which checks shards the same way on import.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from ..errors import IntegrityError, InvalidInputError
from ..hashing import array_digest, sha256_bytes
from ..keys import CONTENT_KEYED_LAYERS, DERIVED_LAYERS, expected_key
from ..store import shards as shard_io
from ..store.fs import fsync_dir  # noqa: F401  (maintenance's users import it from here)
from ..store.index_admin import retired_shards  # noqa: F401  (maintenance's users import it here)

#: Shards whose live payload falls below this fraction of their indexed payload are
#: rewritten by ``gc``. 0.5 bounds the dead space at the size of the live data while
#: rewriting each byte at most ~once per halving (the classic log-structured-store choice).
DEFAULT_COMPACT_THRESHOLD = 0.5
#: How long a retired shard file stays on disk after the index stopped pointing at it. A
#: reader resolves a key to a path and opens the file within microseconds; seconds cover
#: any reader that is not stopped outright.
DEFAULT_GRACE_SECONDS = 2.0
#: ``*.partial`` files younger than this may belong to a live writer and are never removed.
DEFAULT_PARTIAL_MAX_AGE = 3600.0
#: Unindexed shard files younger than this are probably being indexed by their writer.
RECENT_ORPHAN_SECONDS = 60.0
#: Record-only and tiny shards are merged when at least this many are below SMALL_SHARD_BYTES.
SMALL_SHARD_BYTES = 1 << 20
MERGE_MIN_SHARDS = 8
#: Payload bytes per rewritten shard (bounds the size of one compaction output file).
MAX_REWRITE_BYTES = 256 << 20  # built in memory (store.shards): bounds RAM too
#: Estimates for what a shard file holds besides payloads (JSON per record, HDF5 metadata).
RECORD_OVERHEAD = 200
SHARD_OVERHEAD = 64 << 10
#: Largest payload a shard may declare for one blob before it is refused unread.
MAX_BLOB_BYTES = 4 << 30
EXAMPLES = 10

#: Meta-only bookkeeping of the Dagster IO manager (``lineage.dagster_run_records``): keyed
#: by the run id, so a shard holding one can travel (its asset refs are what the comparison
#: step of another machine reads).
RECORD_LAYERS = frozenset({"dagster_run"})
KNOWN_LAYERS = CONTENT_KEYED_LAYERS | frozenset(DERIVED_LAYERS) | RECORD_LAYERS
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SHARD_NAME = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{16}$")


# ---------------------------------------------------------------------------------------
# small shared helpers (also used by pad_assets.sharing)
def is_hex_key(value: Any) -> bool:
    return isinstance(value, str) and bool(_HEX64.match(value))


def is_shard_name(value: Any) -> bool:
    """Names ``write_shard`` produces; anything else is refused as a path component."""
    return isinstance(value, str) and bool(_SHARD_NAME.match(value))


def payload_digest(value: np.ndarray, kind: str) -> str:
    """The blob id a payload must have: sha256 of bytes, or ``array_digest`` of an array."""
    if kind == "bytes":
        return sha256_bytes(np.ascontiguousarray(value).tobytes())
    return array_digest(value)


def key_problem(key: str, layer: str, blob: str | None, meta: dict[str, Any]) -> str | None:
    """Why an item's key does not match its content or recorded chain (None when it does)."""
    if layer in CONTENT_KEYED_LAYERS and blob is None:
        return f"{layer} item has no payload (expected the payload whose digest is its key)"
    want = expected_key(layer, blob, meta)
    if want is not None and want != key:
        how = "payload digest" if layer in CONTENT_KEYED_LAYERS else "recorded chain"
        return f"{layer} key does not match its {how} (expected {want})"
    return None


def read_blob_checked(f: Any, blob_id: str) -> tuple[np.ndarray, str]:
    """Read ``/blobs/<blob_id>`` from an open shard, refusing anything but a plain numeric
    dataset whose digest equals its name; raises ``IntegrityError`` naming what failed."""
    import h5py

    group = f.get(shard_io.BLOBS_GROUP)
    if group is None:
        raise IntegrityError(f"blob {blob_id}: the shard has no /{shard_io.BLOBS_GROUP} group")
    link = group.get(blob_id, getlink=True)
    if link is None:
        raise IntegrityError(f"blob {blob_id} is not in the shard")
    if not isinstance(link, h5py.HardLink):
        raise IntegrityError(f"blob {blob_id} is a {type(link).__name__}, expected a dataset "
                             "stored in the shard itself")
    ds = group[blob_id]
    if not isinstance(ds, h5py.Dataset):
        raise IntegrityError(f"blob {blob_id} is not a dataset")
    if ds.is_virtual or ds.external:
        raise IntegrityError(f"blob {blob_id} reads its data from outside the shard")
    if ds.dtype.kind not in "biufc":
        raise IntegrityError(f"blob {blob_id} has dtype {ds.dtype}, expected a numeric array")
    if int(ds.size) * int(ds.dtype.itemsize) > MAX_BLOB_BYTES:
        raise IntegrityError(f"blob {blob_id} declares {ds.size} elements, over the limit")
    kind = ds.attrs.get("kind", "array")
    if isinstance(kind, bytes):
        kind = kind.decode("utf-8", "replace")
    if kind not in ("array", "bytes"):
        raise IntegrityError(f"blob {blob_id} has kind {kind!r}, expected 'array' or 'bytes'")
    try:
        arr = shard_io.read_dataset(ds)  # decoded from its storage codec, if any
    except Exception as exc:  # h5py raises OSError/RuntimeError/ValueError on damaged chunks
        raise IntegrityError(f"blob {blob_id} cannot be read ({type(exc).__name__}: {exc})"
                             ) from exc
    arr = np.asarray(arr)
    if kind == "bytes" and (arr.dtype != np.uint8 or arr.ndim != 1):
        raise IntegrityError(f"blob {blob_id} of kind 'bytes' is {arr.dtype} {arr.shape}, "
                             "expected 1-D uint8")
    digest = payload_digest(arr, kind)
    if digest != blob_id:
        raise IntegrityError(f"blob {blob_id} failed its checksum (payload digest {digest})")
    return arr, kind


def blob_row(blob_id: str, arr: np.ndarray, kind: str) -> dict[str, Any]:
    return {"blob": blob_id, "kind": kind, "dtype": arr.dtype.str, "shape": list(arr.shape),
            "nbytes": int(arr.nbytes)}


def human_bytes(n: float) -> str:
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
               "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
               "tib": 2**40, "p": 10**15, "pb": 10**15, "pib": 2**50, "ki": 2**10,
               "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str | int | float) -> int:
    """"10GB" -> 10**10 bytes ("GB" is decimal like disk vendors and ``du --si``; "GiB" is
    binary); a bare number is bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0 or not math.isfinite(text):
            raise InvalidInputError(f"size {text!r}: expected a non-negative number of bytes")
        return int(text)
    m = _SIZE.match(str(text))
    unit = (m.group(2) or "").lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise InvalidInputError(f"size {text!r}: expected a number with an optional unit, "
                                "e.g. 500MB, 10GB, 1.5GiB")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str | int | float) -> float:
    """"30d" -> seconds (units s, m, h, d, w; a bare number is seconds)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0 or not math.isfinite(text):
            raise InvalidInputError(f"duration {text!r}: expected a non-negative number of "
                                    "seconds")
        return float(text)
    m = _DURATION.match(str(text))
    if not m:
        raise InvalidInputError(f"duration {text!r}: expected a number with a unit s, m, h, d "
                                "or w, e.g. 30d, 12h")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
