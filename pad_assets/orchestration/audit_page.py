"""What an auditor sees on one card's partition page in the Dagster UI.

Every image-layer materialization of a card carries the same ``chain`` entry: a Markdown
table linking that card's partition page in every layer (raw, preprocessed, tensor, each
prediction) and the dataset's manifest and comparison, so any layer is one click from any
other. Values are typed (``MetadataValue.url`` for sources, ``timestamp`` for fetch times,
``text`` for ids, so the UI neither plots card ids nor prints epoch floats). The raw layer
also carries a preview: the card's image, which the browser loads from its source URL when
the page is opened (``preview_markdown`` says why not inline).

Links are relative to the UI's root (``/assets/...``); set ``PAD_DAGSTER_UI_URL`` when the
UI is served under a path prefix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import dagster as dg

from ..settings import dagster_ui_url


def ui_base() -> str:
    return dagster_ui_url()


def asset_url(key: dg.AssetKey, partition: str | None = None) -> str:
    """The asset's page in the Dagster UI, on ``partition`` when given."""
    path = "/".join(quote(p, safe="") for p in key.path)
    url = f"{ui_base()}/assets/{path}"
    return f"{url}?view=partitions&partition={quote(partition, safe='')}" if partition else url


def run_url(run_id: str) -> str:
    return f"{ui_base()}/runs/{quote(run_id, safe='')}"


def shared_facts_link(run_id: str, code_version: str) -> dg.MetadataValue:
    """Where the facts shared by every card of the run are: the run's "shared facts"
    observation of this asset (its page lists it; so does the asset's Events tab)."""
    return dg.MetadataValue.md(
        f"[run {run_id[:8]}]({run_url(run_id)}): observation \"shared facts\" of this asset "
        f"(code version `{code_version}`)")


def chain_markdown(card_id: int, layers: Iterable[tuple[str, dg.AssetKey, str | None]],
                   manifest: dg.AssetKey, comparison: dg.AssetKey) -> dg.MetadataValue:
    """Links to this card in every layer; ``layers`` is (label, asset key, content key)."""
    rows = ["| layer | content key | page |", "|---|---|---|"]
    for label, key, content in layers:
        shown = f"`{content[:16]}`" if content else "not materialized"
        rows.append(f"| {label} | {shown} | [card {card_id}]({asset_url(key, str(card_id))}) |")
    rows.append(f"| manifest | dataset | [manifest]({asset_url(manifest)}) |")
    rows.append(f"| model comparison | dataset | [comparison]({asset_url(comparison)}) |")
    return dg.MetadataValue.md("\n".join(rows))


def preview_markdown(source_url: str | None, card_id: int) -> dg.MetadataValue:
    """The card as an image the browser loads from its source when the page is opened.

    Why not inline: a data-URI thumbnail needs the whole 730x1220 PNG decoded (~13 ms)
    plus a resize and a JPEG encode per card, about a quarter of the image step's cost
    beyond ``CachedDataset`` (B6), and ~4 KB in every raw event, for a page most cards
    never have opened. What the lab used is the bytes whose sha256 is ``raw_key`` (the
    md5 on the same page matches the manifest); the preview is for looking at the card.
    """
    if not source_url:
        return dg.MetadataValue.md(f"card {card_id}: no source URL recorded")
    url = quote(source_url, safe=":/?&=%#@+,;~")  # no spaces or parentheses to break it
    return dg.MetadataValue.md(f"![card {card_id}]({url})\n\n"
                               "(loaded from the source when this page is opened; the "
                               "cached bytes are the ones with sha256 = `raw_key`)")


def typed(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values into Dagster metadata of the right type.

    Keys ending in ``_url`` become links, ``*_at`` timestamps, ids and keys text (never
    plotted), mappings/lists JSON; NaN and None show as empty text.
    """
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, dg.MetadataValue):
            out[k] = v
        elif v is None or (isinstance(v, float) and math.isnan(v)):
            out[k] = dg.MetadataValue.text("")
        elif k.endswith("_url") and isinstance(v, str) and v:
            out[k] = dg.MetadataValue.url(v)
        elif k.endswith("_at") and isinstance(v, (int, float)):
            out[k] = dg.MetadataValue.timestamp(float(v))
        elif isinstance(v, (dict, list, tuple)):
            out[k] = dg.MetadataValue.json(list(v) if isinstance(v, tuple) else v)
        elif k in ("card_id", "run_id") or k.endswith("_key") or k.endswith("version"):
            out[k] = dg.MetadataValue.text(str(v))
        elif isinstance(v, bool):
            out[k] = dg.MetadataValue.bool(v)
        else:
            out[k] = v
    return out
