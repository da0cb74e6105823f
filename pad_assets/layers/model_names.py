"""A model's display name, per signature and current.

A cached prediction records the model description it was made with, name included; the
name is not part of the signature (renaming must not recompute anything). So the name a
user sees is looked up here: ``<cache>/model_names.json`` maps each signature to the name
it was last used under. ``apply_model`` rewrites the file only when that name changes;
audit, lineage, ``cache stats`` and ``cache rm -m`` read it, so a rename shows at once
(``audit -m new_name`` finds the predictions made under the old name).

A file beside the shards, not an item in them: a name is a local label, not content. A
warm ``apply_model`` adds nothing to the store, and a colleague's cache (push, pull,
bundles) keeps its own labels while the signatures, which identify the models, agree.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from ..store import ContentStore
from ..store.fs import atomic_write_json

FILE_NAME = "model_names.json"
_LOCK = threading.Lock()


def _path(store: ContentStore) -> Path:
    return Path(store.root) / FILE_NAME


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # a damaged label file costs labels only: the recorded names apply
    return data if isinstance(data, dict) else {}


def record_name(store: ContentStore, signature: str, name: str) -> None:
    """Make ``name`` the current name of ``signature`` (a small write, only on change)."""
    path = _path(store)
    with _LOCK:
        data = _read(path)
        if (data.get(signature) or {}).get("name") == name:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        data[signature] = {"name": name, "named_at": time.time()}
        atomic_write_json(path, data)


def forget(store: ContentStore, signatures: set[str]) -> None:
    """Drop the names of these signatures (``cache rm --model``)."""
    path = _path(store)
    with _LOCK:
        data = _read(path)
        if signatures & set(data):
            atomic_write_json(path, {k: v for k, v in data.items() if k not in signatures})


def current_names(store: ContentStore) -> dict[str, str]:
    """signature -> current name, for every model that has one recorded."""
    return {sig: str(v["name"]) for sig, v in _read(_path(store)).items()
            if isinstance(v, dict) and v.get("name")}
