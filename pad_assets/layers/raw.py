"""Layer 1: original image bytes, downloaded once, verified, stored once per content.

A card's raw key is the sha256 of its bytes. A card the registry publishes without an md5
(an API dump) is "unverified": its first download's sha256, kept in its card record, is the
reference every later download of it is checked against. Before downloading, a card is matched by the
manifest's md5 (or its normalised URL) against raw items any dataset already holds, so a
card shared by two datasets is fetched and stored once. Each write batch is one shard plus
the card memberships it proves, indexed in one transaction: a SIGKILL loses at most the
batch in flight and never leaves a half-indexed item.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..errors import FetchError, ImageDecodeError, InvalidInputError, OfflineError
from ..hashing import md5_bytes, sha256_bytes
from ..preprocessing.decode import check_image
from ..settings import Settings
from ..sources.pad_api import PadApiClient
from ..store import CardRecord, ContentStore, NewItem
from ..store.queries import OneOf, select
from .stamp import stamp

WRITE_BATCH_ITEMS = 16
WRITE_BATCH_BYTES = 48 * 1024 * 1024


_HTML_ROWS = 50  # failures listed in a notebook; the rest are counted


@dataclass(frozen=True)
class RawPayload:
    """Bytes just downloaded and verified (md5, and sha256 = their raw key), with the
    truncated flag the download's check found: handed to preprocessing in the same run
    so that a cold card is not read back from its shard and hashed a second time."""

    data: bytes
    truncated: bool


@dataclass
class DownloadSummary:
    """What one ``download_and_cache`` did, card by card where it matters."""

    dataset: str
    total: int = 0
    downloaded: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    truncated: list[int] = field(default_factory=list)
    #: Downloaded cards the registry gives no md5 for (checked against their first sha256).
    unverified: list[int] = field(default_factory=list)
    bytes_downloaded: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        lines = [f"{self.dataset}: {self.total} cards, {len(self.downloaded)} downloaded "
                 f"({self.bytes_downloaded / 1e6:.1f} MB), {len(self.reused)} already cached, "
                 f"{len(self.failed)} failed, {len(self.truncated)} truncated "
                 f"[{self.seconds:.1f} s]"]
        lines += [f"  failed card {c}: {r}" for c, r in sorted(self.failed.items())]
        if self.truncated:
            lines.append(f"  truncated PNGs (decoded with tolerance, flagged): "
                         f"{sorted(self.truncated)}")
        if self.unverified:
            lines.append(f"  unverified (no md5 published; first download's sha256 is the "
                         f"reference): {len(self.unverified)} card(s)")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """Notebook view: the counts as a table, then failures (card, reason) and warnings."""
        e = html.escape
        status = "ok" if self.ok else f"{len(self.failed)} failed"
        counts = [("cards", self.total), ("downloaded", f"{len(self.downloaded)} "
                  f"({self.bytes_downloaded / 1e6:.1f} MB)"),
                  ("already cached", len(self.reused)), ("failed", len(self.failed)),
                  ("truncated PNGs", len(self.truncated)), ("seconds", f"{self.seconds:.1f}")]
        parts = [f"<div><b>{e(self.dataset)}</b>: download {e(status)}",
                 "<table><tr>" + "".join(f"<th>{e(k)}</th>" for k, _ in counts) + "</tr><tr>"
                 + "".join(f"<td>{e(str(v))}</td>" for _, v in counts) + "</tr></table>"]
        if self.failed:
            shown = sorted(self.failed.items())[:_HTML_ROWS]
            parts.append("<table><tr><th>failed card</th><th>reason</th></tr>" + "".join(
                f"<tr><td>{c}</td><td>{e(r)}</td></tr>" for c, r in shown) + "</table>")
            if len(self.failed) > _HTML_ROWS:
                parts.append(f"<p>... and {len(self.failed) - _HTML_ROWS} more</p>")
        if self.truncated:
            parts.append("<p>truncated PNGs (decoded with tolerance, flagged): "
                          f"{e(str(sorted(self.truncated)))}</p>")
        if self.warnings:
            parts.append("<ul>" + "".join(f"<li>warning: {e(w)}</li>" for w in self.warnings)
                         + "</ul>")
        return "\n".join(parts) + "</div>"


class RawLayer:
    def __init__(self, store: ContentStore, settings: Settings,
                 api: PadApiClient | None = None) -> None:
        self.store = store
        self.settings = settings
        self._api = api

    @property
    def api(self) -> PadApiClient:
        if self._api is None:
            self._api = PadApiClient(self.settings)
        return self._api

    # ---- lookups -----------------------------------------------------------------------
    def known_raw_by_md5(self, md5s: Sequence[str] | None = None) -> dict[str, str]:
        """md5 -> raw key of the raw items any dataset holds (only these ``md5s`` if given)."""
        where = {} if md5s is None else {"meta.md5": OneOf(md5s)}
        rows = select(self.store.index, "items", "key", "meta.md5", layer="raw", **where)
        return {md5: key for key, md5 in rows if md5}

    def raw_keys(self, dataset: str, card_ids: Iterable[int]) -> dict[int, str]:
        """card id -> raw key, for the cards of ``dataset`` already cached."""
        wanted = [int(c) for c in card_ids]
        cards = self.store.cards(dataset, wanted)
        keys = {c: cards[c]["raw_key"] for c in wanted
                if c in cards and cards[c]["status"] == "ok" and cards[c]["raw_key"]}
        present = self.store.has(list(keys.values()))
        return {c: k for c, k in keys.items() if k in present}

    def evicted_raw_keys(self, dataset: str, card_ids: Iterable[int]) -> dict[int, str]:
        """card id -> raw key, for cards whose image ``gc`` evicted.

        The key is still the card's content address: every key below it (preprocessed,
        tensor, prediction) is a hash of it, so results cached for the card stay reachable
        without the image bytes (``apply_model`` serves them and downloads nothing).
        """
        wanted = [int(c) for c in card_ids]
        cards = self.store.cards(dataset, wanted)
        return {c: cards[c]["raw_key"] for c in wanted
                if c in cards and cards[c]["status"] == "evicted" and cards[c]["raw_key"]}

    # ---- sync --------------------------------------------------------------------------
    def sync(self, dataset: str, rows: pd.DataFrame, force_refresh: bool = False,
             progress: bool = False, keep: dict[str, RawPayload] | None = None
             ) -> DownloadSummary:
        """Make every row's image present in the cache; download only what is missing.

        ``keep``, when given, receives each downloaded image's verified bytes by raw key.
        """
        t0 = time.time()
        # A card listed in several published rows is one image: work once per card.
        rows = rows.drop_duplicates("card_id", keep="first")
        summary = DownloadSummary(dataset, total=len(rows))
        # Only these rows' records: apply_model syncs a large dataset chunk by chunk.
        existing = self.store.cards(dataset, [int(c) for c in rows["card_id"]])
        present_raw = self.store.metas([v["raw_key"] for v in existing.values() if v["raw_key"]])
        by_md5 = self.known_raw_by_md5([str(m) for m in rows.get("md5", []) if m])
        reuse: list[CardRecord] = []
        todo: list[dict[str, Any]] = []
        for row in rows.to_dict("records"):
            cid = int(row["card_id"])
            cur = existing.get(cid)
            md5 = row.get("md5")
            if not force_refresh:
                if (cur and cur["status"] == "ok" and cur["raw_key"] in present_raw
                        and (md5 is None or present_raw[cur["raw_key"]].get("md5") in (md5, None))):
                    summary.reused.append(cid)
                    continue
                if md5 and md5 in by_md5:
                    reuse.append(CardRecord(dataset, cid, by_md5[md5], "ok", "shared content"))
                    summary.reused.append(cid)
                    continue
            if not md5 and cur and cur.get("raw_key"):
                # No md5 published: the first download's sha256 is the reference.
                row = {**row, "sha256_reference": cur["raw_key"],
                       "reference_ok": cur["status"] == "ok"}
            todo.append(row)
        if reuse:
            self.store.put(cards=reuse)
        if todo and self.settings.offline:
            raise OfflineError(f"dataset {dataset}",
                               [f"card {r['card_id']} ({r['image_url']})" for r in todo])
        if todo:
            self._download(dataset, todo, summary, progress, keep)
        for cid in summary.reused:
            meta = existing.get(cid)
            if meta and "truncated" in (meta.get("detail") or ""):
                summary.truncated.append(cid)
        summary.seconds = time.time() - t0
        return summary

    def _fetch_one(self, row: dict[str, Any]) -> tuple[bytes, str, bool, str, str]:
        """Download, check md5, check the PNG structure, hash: all in the worker thread
        (the single consumer thread only writes), each digest computed once."""
        fetched = self.api.image(str(row["image_url"]))
        data, url = fetched.body, fetched.url  # the source is where the bytes came from
        got_md5 = md5_bytes(data)
        want = row.get("md5")
        if want and got_md5 != want:
            raise ValueError(f"md5 mismatch for {url}: manifest says {want}, downloaded bytes "
                             f"have {got_md5}; not cached")
        sha = sha256_bytes(data)
        ref = row.get("sha256_reference")
        if not want and ref and sha != ref:
            raise ValueError(f"sha256 mismatch for {url}: the registry publishes no md5 for card "
                             f"{row['card_id']}, and its first download had sha256 {ref}; these "
                             f"bytes have {sha}; not cached")
        truncated = check_image(data, source=f"card {row['card_id']} ({url})")
        return data, url, truncated, got_md5, sha

    def _download(self, dataset: str, todo: list[dict[str, Any]], summary: DownloadSummary,
                  progress: bool, keep: dict[str, RawPayload] | None = None) -> None:
        pending_items: list[NewItem] = []
        pending_cards: list[CardRecord] = []
        pending_bytes = 0

        def flush() -> None:
            nonlocal pending_items, pending_cards, pending_bytes
            if pending_items or pending_cards:
                # Written around the page cache: this run preprocesses the bytes it holds
                # and reads none of them back (shards.write_shard, ~1 ms/card less CPU).
                self.store.put(pending_items, cards=pending_cards, page_cache=False)
            pending_items, pending_cards, pending_bytes = [], [], 0

        bar = _progress(len(todo), f"download {dataset}", progress)
        try:
            for row, result in self.api.http.map_parallel(self._fetch_one, todo,
                                                          self.settings.download_workers):
                cid = int(row["card_id"])
                bar.update(1)
                if isinstance(result, BaseException):
                    if isinstance(result, OfflineError):
                        raise result
                    if not isinstance(result, (FetchError, ImageDecodeError, ValueError,
                                               InvalidInputError)):
                        raise result
                    reason = str(result)
                    summary.failed[cid] = reason
                    if row.get("sha256_reference") and row.get("reference_ok"):
                        continue  # the verified first download stays; the reference too
                    pending_cards.append(CardRecord(dataset, cid, row.get("sha256_reference"),
                                                    "failed", reason))
                    continue
                data, url, truncated, md5, key = result
                verified = ("md5" if row.get("md5") else
                            "sha256 reference" if row.get("sha256_reference") else
                            "unverified: first download, its sha256 is the reference")
                if not row.get("md5"):
                    summary.unverified.append(cid)
                meta = stamp(md5=md5, sha256=key, source_url=url, verified_by=verified,
                             nbytes=len(data), truncated=truncated, first_card_id=cid,
                             first_dataset=dataset, fetched_at=time.time())
                pending_items.append(NewItem(key, "raw", data, meta, blob_id=key))
                if keep is not None:
                    keep[key] = RawPayload(data, truncated)
                detail = "truncated PNG: decoded with tolerance" if truncated else ""
                pending_cards.append(CardRecord(dataset, cid, key, "ok", detail))
                summary.downloaded.append(cid)
                summary.bytes_downloaded += len(data)
                if truncated:
                    summary.truncated.append(cid)
                pending_bytes += len(data)
                if len(pending_items) >= WRITE_BATCH_ITEMS or pending_bytes >= WRITE_BATCH_BYTES:
                    flush()
        finally:
            # Commit what was verified before any error (or Ctrl-C); a SIGKILL loses only
            # the uncommitted batch, never an indexed item.
            flush()
            bar.close()


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or total == 0,
                leave=False)
