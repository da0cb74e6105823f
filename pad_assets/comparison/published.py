"""Items per *published* row: a card listed twice (or in two splits) is scored twice.

``CachedDataset.apply_model`` returns one row per published manifest row; a card listed
twice in ``dev``, or in ``dev`` and ``test``, has several rows told apart by (``split``,
``position``). The scoring code keys items by card id, so those rows are numbered in
published order before scoring (``card_id`` temporarily holds the item number) and the card
ids are put back into the report afterwards. Frames without repeated cards pass unchanged.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .report import ComparisonReport
from .scoring import item_set_hash

PublishedRows = list[tuple[str, int, int]]


def number_published_rows(results: Any) -> tuple[Any, PublishedRows | None]:
    """``results`` with one item number per published row, and what each number stands for
    (``(split, position, card_id)``), or ``(results, None)`` when no card repeats."""
    if not isinstance(results, dict) or not results or not all(
            isinstance(df, pd.DataFrame) and {"card_id", "split", "position"} <= set(df.columns)
            for df in results.values()):
        return results, None
    if not any(df["card_id"].duplicated().any() for df in results.values()):
        return results, None
    order: dict[tuple[str, int, int], int] = {}
    for df in results.values():
        for sp, pos, cid in zip(df["split"], df["position"], df["card_id"], strict=True):
            order.setdefault((str(sp), int(pos), int(cid)), len(order))
    out = {}
    for name, df in results.items():
        df = df.copy()
        df["card_id"] = [order[(str(sp), int(pos), int(cid))] for sp, pos, cid
                         in zip(df["split"], df["position"], df["card_id"], strict=True)]
        out[name] = df
    return out, list(order)


def restore_card_ids(report: ComparisonReport, published: PublishedRows) -> None:
    """Put the card ids back; ``items`` gains each item's split and position."""
    items = [published[i] for i in report.card_ids]
    report.card_ids = [cid for _, _, cid in items]
    keys = list(report.items["raw_key"])
    report.items = pd.DataFrame({"card_id": report.card_ids, "raw_key": keys,
                                 "split": [sp for sp, _, _ in items],
                                 "position": [pos for _, pos, _ in items]})
    report.item_set_hash = item_set_hash(zip(report.card_ids, keys, strict=True))
