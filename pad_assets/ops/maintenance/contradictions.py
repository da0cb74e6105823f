"""``verify``: refs and card records that contradict the content they point at.

Items cannot lie (their key is their content's digest or chain), but pointers can: a
manifest ref naming another dataset's manifest, a model-record ref whose record is for
another model, a card whose raw image does not have the md5 its dataset's manifest lists.
Imports and pulls now refuse such proposals (``pad_assets.ops.proposals``); this check
finds the ones that got in before, or by hand. Fixing them means asking the source again:
``pad-assets download DATASET --force-refresh`` for cards and manifests, resolving the
model with ``refresh=True`` for a model record.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from ...errors import PadAssetsError
from ...hashing import md5_bytes
from ...store import ContentStore

REF_KIND = "ref_contradicts_content"
CARD_KIND = "card_contradicts_manifest"
HELP = {
    REF_KIND: "a manifest or model-record ref whose target is for another dataset or model",
    CARD_KIND: "a card whose raw image does not have the md5 its dataset's manifest lists "
               "(`pad-assets download DATASET --force-refresh` fetches it again)",
}
_CHUNK = 128


def _json(store: ContentStore, key: str) -> Any:
    try:
        data = store.get_many([key], touch=False).get(key)
        return json.loads(bytes(data).decode("utf-8")) if isinstance(data, bytes) else None
    except (PadAssetsError, UnicodeDecodeError, ValueError):
        return None


def find_contradictions(store: ContentStore, skip: set[str]) -> list[tuple[str, str, str]]:
    """``(kind, subject, detail)`` for every contradicting ref or card; items in ``skip``
    (already reported as damaged) are not read."""
    index = store.index
    out: list[tuple[str, str, str]] = []
    md5s: dict[str, list[dict[int, str]]] = defaultdict(list)
    refs = index.query("SELECT name, key FROM refs WHERE name LIKE 'manifest/%' "
                       "OR name LIKE 'model-record/%'")
    entries = index.items([k for _, k in refs])
    for name, key in refs:
        e = entries.get(key)
        if e is None or key in skip:
            continue  # dangling or damaged: reported by the main check
        tail = name.rsplit("/", 1)[-1]
        want = "manifest" if name.startswith("manifest/") else "model_record"
        if e["layer"] != want:
            out.append((REF_KIND, name, f"points at {key}, a {e['layer']} item, not a "
                                        f"{want.replace('_', ' ')}"))
            continue
        doc = _json(store, key)
        if not isinstance(doc, dict):
            out.append((REF_KIND, name, f"its target {key} is not a JSON object"))
        elif want == "manifest":
            if doc.get("dataset") != tail:
                out.append((REF_KIND, name, f"points at the manifest of dataset "
                                            f"{doc.get('dataset')!r}, not {tail!r}"))
                continue
            table = {}
            for row in doc.get("rows") or []:
                if isinstance(row, dict) and row.get("md5"):
                    try:
                        table[int(row["card_id"])] = str(row["md5"])
                    except (KeyError, TypeError, ValueError):
                        continue
            md5s[tail].append(table)
        else:
            rid = doc.get("id")
            mid = (e["meta"] or {}).get("model_id")
            if (rid is not None and str(rid) != tail) or (mid is not None and str(mid) != tail):
                out.append((REF_KIND, name, f"points at the record of model "
                                            f"{rid if rid is not None else mid!r}, not {tail}"))
    # cards: the raw image's md5, computed from its bytes, against every manifest naming it
    todo: list[tuple[str, int, str, set[str]]] = []
    for ds, tables in md5s.items():
        for cid, raw in index.query("SELECT card_id, raw_key FROM cards WHERE dataset=? AND "
                                    "status='ok' AND raw_key IS NOT NULL", (ds,)):
            listed = {t[int(cid)] for t in tables if int(cid) in t}
            if listed and raw not in skip:
                todo.append((ds, int(cid), raw, listed))
    for i in range(0, len(todo), _CHUNK):
        part = todo[i:i + _CHUNK]
        try:
            got = store.get_many(sorted({r for _, _, r, _ in part}), touch=False)
        except PadAssetsError:
            continue  # a damaged payload: reported by the main check
        for ds, cid, raw, listed in part:
            data = got.get(raw)
            if not isinstance(data, bytes):
                continue
            md5 = md5_bytes(data)
            if md5 not in listed:
                out.append((CARD_KIND, f"{ds}/{cid}", f"raw image {raw} has md5 {md5}, the "
                                                      f"manifest lists {sorted(listed)[0]}"))
    return out
