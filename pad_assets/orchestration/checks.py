"""Asset checks, evaluated inside the steps that materialize their assets.

Checks declared as separate ``@asset_check`` ops depend on the image step's outputs, and
that step yields per-partition events instead of outputs, so Dagster skipped every check
after every image run. Declared as ``check_specs`` of the image multi-asset and of the
comparison asset, they run in the same step, after the values they check, whichever job,
sensor, backfill or UI button materializes the asset. Each function below returns the
result; the step decides which are selected.

Severity: ERROR for what is wrong (corrupt bytes, a tensor off its spec, a card with no
prediction although its image is cached); WARN, with counts and card ids, for what is known and
explained but not usable (failed downloads, ``unknown_drug`` or failed predictions, cards a
comparison could not score).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from typing import Any

import dagster as dg
import numpy as np

from ..errors import CacheCorruptionError, ImageDecodeError
from ..hashing import md5_bytes
from ..store import refs as refnames

MAX_LISTED = 50
WARN = dg.AssetCheckSeverity.WARN
ERROR = dg.AssetCheckSeverity.ERROR

RAW_INTEGRITY = "raw_integrity"
RAW_DOWNLOADED = "raw_downloaded"
TENSOR_SPEC = "tensor_shape_dtype"
PREDICTION_STATUS = "prediction_status"
COMPARISON_COVERAGE = "scored_published_cards"

DESCRIPTIONS = {
    RAW_INTEGRITY: "Every card image of the run has its sha256 as content key, matches the "
                   "manifest's md5, decodes, and is flagged truncated exactly when it needed "
                   "truncated-image tolerance. Images the run downloaded were checked as they "
                   "arrived (md5, sha256, PNG chunks and CRCs, a full decode of any that fail "
                   "that) and their index record is compared here; the others are read back "
                   "(sha256) and decoded. ERROR on any mismatch.",
    RAW_DOWNLOADED: "Every card of the manifest has a cached image. WARN lists the cards "
                    "whose download failed, with the reason.",
    TENSOR_SPEC: "Every stored tensor matches its spec (shape and storage dtype), read from "
                 "the index. ERROR on any mismatch.",
    PREDICTION_STATUS: "Every card of the manifest has a prediction with status ok. WARN "
                       "lists unknown_drug and failed predictions and cards without an image; "
                       "ERROR for a card whose image is cached but has no prediction.",
    COMPARISON_COVERAGE: "How many of the published (manifest) rows the comparison scored "
                         "(a card listed twice is scored twice). WARN lists the cards "
                         "excluded, per model and reason.",
}


def _listed(problems: Mapping[str, str]) -> dg.MetadataValue:
    return dg.MetadataValue.json(dict(sorted(problems.items(), key=_num)[:MAX_LISTED]))


def _num(item: tuple[str, Any]) -> tuple[int, str]:
    k = item[0]
    return (int(k), k) if k.isdigit() else (0, k)


def _summary(n: int, what: str, problems: Mapping[str, str]) -> str:
    """``6 warning(s): cards 1, 2, ... (card 1: unknown_drug: ...)``: the one line the UI's
    check list and the demo show, so the first reason is readable without opening the
    metadata (which lists every card's reason)."""
    first = sorted(problems.items(), key=_num)
    ids = ", ".join(k for k, _ in first[:10]) + (", ..." if n > 10 else "")
    reason = " ".join(str(first[0][1]).split()).rstrip("; ")
    reason = reason if len(reason) <= 80 else reason[:77] + "..."
    return f"{n} {what}: cards {ids} (card {first[0][0]}: {reason})"


def result(key: dg.AssetKey, name: str, checked: int, errors: Mapping[str, str],
           warnings: Mapping[str, str] | None = None, **extra: Any) -> dg.AssetCheckResult:
    """Passed when nothing was found; ERROR severity if any error, else WARN."""
    warnings = warnings or {}
    meta: dict[str, Any] = {"checked": checked, "errors": len(errors),
                            "warnings": len(warnings), **extra}
    if errors:
        meta["error_cards"] = _listed(errors)
    if warnings:
        meta["warning_cards"] = _listed(warnings)
        meta["warning_card_ids"] = ", ".join(sorted(warnings, key=lambda k: _num((k, 0))))
    what = [_summary(len(errors), "error(s)", errors) if errors else "",
            _summary(len(warnings), "warning(s)", warnings) if warnings else ""]
    what = [w for w in what if w]
    return dg.AssetCheckResult(
        asset_key=key, check_name=name, passed=not errors and not warnings,
        severity=ERROR if errors else WARN, metadata=meta,
        description="; ".join(what) or f"all {checked} checked passed")


def raw_integrity(store: Any, key: dg.AssetKey, raw_keys: Mapping[int, str],
                  manifest_md5: Mapping[int, str | None],
                  verified_before: Set[int] = frozenset(),
                  downloaded: Mapping[int, bool] | None = None) -> dg.AssetCheckResult:
    """The evidence for every image of the batch, gathered where it is cheapest.

    - ``downloaded`` (card -> truncated flag the download found): images this step
      downloaded. The download checked them moments ago (md5 against the manifest, sha256
      = the content key, PNG chunks and CRCs, and a full decode of a file that fails that,
      which decides truncated) and preprocessing decoded them since; reading, hashing and
      decoding 1.5 MB again cost ~20 ms per card, more than the rest of the Dagster step
      (B6). Here their index record is compared with the manifest and with what the
      download found: md5, sha256 and truncated flag.
    - ``verified_before``: cards whose partition already records this exact content key
      passed the full check when it was recorded: read back (sha256 on every read), not
      decoded again (a rerun over 8,001 unchanged cards re-hashes them, no decode).
    - every other card (cached before this step, e.g. by a notebook): read back, md5
      against the manifest, full decode, truncated flag compared.
    """
    from ..preprocessing.decode import decode_image

    downloaded = downloaded or {}
    errors: dict[str, str] = {}
    metas = store.metas(list(raw_keys.values()))
    truncated = decoded = at_download = read_back = 0
    for cid, rk in sorted(raw_keys.items()):
        want = manifest_md5.get(cid)
        flagged = bool(metas.get(rk, {}).get("truncated"))
        try:
            if cid in downloaded and cid not in verified_before:
                meta = metas.get(rk)
                if meta is None:
                    raise ValueError(f"raw item {rk} is not in the store's index")
                if meta.get("sha256") != rk:
                    raise ValueError(f"indexed sha256 {meta.get('sha256')} != content key {rk}")
                if want and meta.get("md5") != want:
                    raise ValueError(f"indexed md5 {meta.get('md5')} != manifest {want}")
                if downloaded[cid] != flagged:
                    raise ValueError(f"download found truncated={downloaded[cid]} but the "
                                     f"index flags truncated={flagged}")
                at_download += 1
                truncated += flagged
                continue
            data = store.get(rk)  # verifies the sha256 content key
            read_back += 1
            if cid in verified_before:
                continue
            if want and md5_bytes(data) != want:
                raise ValueError(f"md5 {md5_bytes(data)} != manifest {want}")
            image = decode_image(data, f"card {cid}")
            decoded += 1
            if image.truncated != flagged:
                raise ValueError(f"truncated={image.truncated} but flagged={flagged}")
            truncated += image.truncated
        except (CacheCorruptionError, ImageDecodeError, ValueError) as exc:
            errors[str(cid)] = str(exc)[:300]
    return result(key, RAW_INTEGRITY, len(raw_keys), errors, truncated_flagged=truncated,
                  decoded=decoded, verified_at_download=at_download,
                  read_back=read_back)


def raw_downloaded(key: dg.AssetKey, manifest_ids: Sequence[int],
                   cards: Mapping[int, Mapping[str, Any]]) -> dg.AssetCheckResult:
    warnings: dict[str, str] = {}
    errors: dict[str, str] = {}
    ok = 0
    for cid in manifest_ids:
        c = cards.get(cid)
        if c and c["status"] == "ok" and c["raw_key"]:
            ok += 1
        elif c:
            warnings[str(cid)] = f"{c['status']}: {c['detail'] or 'no detail recorded'}"
        else:
            errors[str(cid)] = "never attempted: not in the store's card table"
    if not ok and manifest_ids:
        errors.update(warnings)
        warnings = {}
    return result(key, RAW_DOWNLOADED, len(manifest_ids), errors, warnings,
                  published_cards=len(manifest_ids), cached_cards=ok)


def tensor_specs(store: Any, key: dg.AssetKey, spec: Mapping[str, Any] | None
                 ) -> dg.AssetCheckResult:
    refs = store.index.refs(refnames.asset(key.to_user_string(), ""))
    entries = store.entries(list(set(refs.values())))
    errors: dict[str, str] = {}
    for name, ckey in refs.items():
        part = name.rsplit("/", 1)[-1]
        e = entries.get(ckey)
        if e is None:
            errors[part] = "tensor item missing from the store"
            continue
        want = e["meta"].get("spec") or dict(spec or {})
        shape, dtype = tuple(e["shape"] or ()), e["dtype"]
        want_shape = tuple(want.get("shape") or ())
        want_dtype = want.get("storage_dtype")
        if shape != want_shape or (want_dtype and np.dtype(dtype) != np.dtype(want_dtype)):
            errors[part] = f"shape {shape} dtype {dtype}, expected {want_shape} {want_dtype}"
    return result(key, TENSOR_SPEC, len(refs), errors)


def prediction_status(store: Any, key: dg.AssetKey, manifest_ids: Sequence[int],
                      cards: Mapping[int, Mapping[str, Any]]) -> dg.AssetCheckResult:
    """Status of every manifest card's prediction, from the partition refs the step wrote."""
    refs = store.index.refs(refnames.asset(key.to_user_string(), ""))
    by_card = {name.rsplit("/", 1)[-1]: ck for name, ck in refs.items()}
    entries = store.entries(list(set(by_card.values())))
    errors: dict[str, str] = {}
    warnings: dict[str, str] = {}
    counts = {"ok": 0, "unknown_drug": 0, "failed": 0, "no_image": 0}
    for cid in manifest_ids:
        ck = by_card.get(str(cid))
        if ck is None:
            c = cards.get(cid)
            if c and c["status"] != "ok":
                counts["no_image"] += 1
                warnings[str(cid)] = f"no image ({c['status']}: {c['detail']})"
            else:
                errors[str(cid)] = ("no prediction recorded although the image is cached (the "
                                    "images run's log names the failing step)")
            continue
        rec = ((entries.get(ck) or {}).get("meta") or {}).get("record") or {}
        status = rec.get("status", "ok")
        if status == "ok":
            counts["ok"] += 1
            continue
        counts["unknown_drug" if status == "unknown_drug" else "failed"] += 1
        warnings[str(cid)] = f"{status}: {rec.get('detail') or ''}"[:300]
    return result(key, PREDICTION_STATUS, len(manifest_ids), errors, warnings,
                  status_counts=dg.MetadataValue.json(counts))


def comparison_coverage(key: dg.AssetKey, published: int, scored: int,
                        exclusions: Sequence[Mapping[str, Any]]) -> dg.AssetCheckResult:
    """``published``/``scored``: published rows and rows scored; ``exclusions``: rows
    (card_id, model, reason) of cards a model could not be scored on."""
    warnings: dict[str, str] = {}
    for r in exclusions:
        cid = str(r.get("card_id"))
        warnings[cid] = (warnings.get(cid, "") + f"{r.get('model')}: {r.get('reason')}; ")[:300]
    return result(key, COMPARISON_COVERAGE, published, {}, warnings, published_rows=published,
                  scored_rows=scored,
                  scored_of_published=f"{scored} of {published} published rows scored")
