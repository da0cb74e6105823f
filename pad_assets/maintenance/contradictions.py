"""``verify``: refs and card records that contradict the content they point at.

Items cannot lie (their key is their content's digest or chain), but pointers can: a
manifest ref naming another dataset's manifest, a model-record ref whose record is for
another model, a card whose raw image does not have the md5 its dataset's manifest lists.
Imports and pulls now refuse such proposals (``pad_assets.sharing.proposals``); this check
finds the ones that got in before, or by hand, and the refs and cards stamped in the future
that pinned them.

Repair (``verify --repair``) drops the contradicting records from the index and clamps
future stamps to now, then rewrites the shards that held them (``rewrite_shards`` rebuilds
records from the index), so a later reindex cannot bring them back; with a dataset
resolver the dropped cards and manifests are asked of their source again.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from ..errors import PadAssetsError
from ..hashing import md5_bytes
from ..store import ContentStore
from ..store import refs as refnames
from ..store.index_admin import drop_pointers
from ..store.queries import Above, NotNull, select

REF_KIND = "ref_contradicts_content"
CARD_KIND = "card_contradicts_manifest"
FUTURE_KIND = "future_timestamp"
#: Clock skew between machines that is still believable.
FUTURE_SLACK_SECONDS = 86400.0
HELP = {
    FUTURE_KIND: "a ref or card record stamped in the future: it would beat every later "
                 "refresh (\"newest wins\"); such records came from a machine whose clock "
                 "was ahead",
    REF_KIND: "a manifest or model-record ref whose target is for another dataset or model",
    CARD_KIND: "a card whose raw image does not have the md5 its dataset's manifest lists",
}
_CHUNK = 128


def _when(ts: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        return f"{ts:.0f} s after 1970"


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
    limit = time.time() + FUTURE_SLACK_SECONDS
    for name, updated in select(index, "refs", "name", "updated", updated=Above(limit)):
        out.append((FUTURE_KIND, name, f"ref stamped {_when(updated)}"))
    for ds, cid, updated in select(index, "cards", "dataset", "card_id", "updated",
                                   updated=Above(limit)):
        out.append((FUTURE_KIND, f"{ds}/{cid}", f"card record stamped {_when(updated)}"))
    md5s: dict[str, list[dict[int, str]]] = defaultdict(list)
    refs = [*index.refs(refnames.MANIFEST).items(), *index.refs(refnames.MODEL_RECORD).items()]
    entries = index.items([k for _, k in refs])
    for name, key in refs:
        e = entries.get(key)
        if e is None or key in skip:
            continue  # dangling or damaged: reported by the main check
        tail = name.rsplit("/", 1)[-1]
        want = "manifest" if name.startswith(refnames.MANIFEST) else "model_record"
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
        for cid, raw in select(index, "cards", "card_id", "raw_key", dataset=ds, status="ok",
                               raw_key=NotNull()):
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


def repair_contradictions(store: ContentStore, findings: list[Any],
                          resolver: Callable[[str], Any] | None
                          ) -> tuple[list[str], list[str]]:
    """Undo what ``find_contradictions`` found (``findings``: verify's ``Finding`` list);
    returns (what was repaired, what could not be)."""
    from .rewrite import rewrite_shards

    index = store.index
    now = time.time()
    refs = sorted({f.subject for f in findings if f.kind == REF_KIND})
    cards = sorted({tuple(f.subject.rsplit("/", 1)) for f in findings if f.kind == CARD_KIND})
    repaired: list[str] = []
    unrepaired: list[str] = []
    if not refs and not cards and not any(f.kind == FUTURE_KIND for f in findings):
        return repaired, unrepaired
    limit = now + FUTURE_SLACK_SECONDS
    shards, future = drop_pointers(index, refs, cards, now, limit)
    for s in sorted(shards & set(index.shard_paths())):
        try:
            rewrite_shards(store, [s], disposition="delete",
                           reason="verify --repair: refs/cards contradicting content or "
                                  "stamped in the future")
        except (PadAssetsError, OSError) as exc:
            unrepaired.append(f"shard {s}: could not rewrite it without the dropped records "
                              f"({exc}); a reindex would bring them back")
    if future:
        repaired.append(f"re-stamped {future} refs/card records dated in the future to now")
    if refs:
        repaired.append(f"dropped {len(refs)} refs contradicting their target: {refs[:5]}")
    if cards:
        repaired.append(f"dropped {len(cards)} card records contradicting their manifest")
    by_ds: dict[str, list[int]] = defaultdict(list)
    for ds, cid in cards:
        by_ds[ds].append(int(cid))
    for name in refs:
        if name.startswith(refnames.MANIFEST):
            by_ds.setdefault(name.rsplit("/", 1)[-1], [])
        else:
            repaired.append(f"ref {name}: the model's record is fetched again the next time "
                            "the model is resolved")
    for ds, ids in sorted(by_ds.items()):
        if resolver is None:
            unrepaired.append(f"{ds}: run `pad-assets download {ds}` to fetch its manifest "
                              f"and {len(ids)} dropped cards again")
            continue
        try:
            dataset = resolver(ds)
            dataset.manifest(refresh=True)
            if ids:
                dataset.download_and_cache(card_ids=ids, refresh_manifest=False)
            repaired.append(f"{ds}: fetched its manifest" + (f" and {len(ids)} cards" if ids
                                                              else "") + " from the source")
        except PadAssetsError as exc:
            unrepaired.append(f"{ds}: re-fetch failed ({exc}); run `pad-assets download {ds}`")
    return repaired, unrepaired
