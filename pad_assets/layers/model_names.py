"""A model's display name, per signature and current.

A cached prediction records the model description it was made with, name included; the
name is not part of the signature (renaming must not recompute anything). So the name a
user sees is looked up here: a small content-keyed item ``{"signature", "name"}`` and a
ref ``model-name/<signature>`` that points at the latest one. ``apply_model`` writes it
only when the name changed, audit/lineage/stats read it, and a rename is visible at once
(``audit -m new_name`` finds the predictions made under the old name).
"""

from __future__ import annotations

import json
import time

from ..hashing import sha256_bytes
from ..store import ContentStore, NewItem

PREFIX = "model-name/"


def name_ref(signature: str) -> str:
    return f"{PREFIX}{signature}"


def record_name(store: ContentStore, signature: str, name: str) -> None:
    """Make ``name`` the current name of ``signature`` (one tiny shard, only on change)."""
    data = json.dumps({"signature": signature, "name": name}, sort_keys=True).encode()
    key = sha256_bytes(data)
    if store.ref(name_ref(signature)) == key:
        return
    store.put([NewItem(key, "model_name", data, {"signature": signature, "name": name,
                                                 "named_at": time.time()})],
              refs=[(name_ref(signature), key)])


def current_names(store: ContentStore) -> dict[str, str]:
    """signature -> current name, for every model that has one recorded."""
    rows = store.index.query(
        "SELECT r.name, json_extract(i.meta, '$.name') FROM refs r JOIN items i "
        "ON i.key = r.key WHERE r.name LIKE 'model-name/%'")
    return {ref[len(PREFIX):]: str(n) for ref, n in rows if n}
