"""Conformance with the real PAD dataset registry: every dataset folder loads as published.

Usage (a local copy of PaperAnalyticalDeviceND/pad_dataset_registry, e.g. extracted with
``git --git-dir=... archive HEAD | tar -x -C /tmp/registry``)::

    python benchmarks/registry_conformance.py /tmp/registry/datasets [--json out.json]

For every dataset folder that holds CSV files, the manifest is loaded through
``RegistryClient`` (the local-folder registry, no network) and compared with an independent
count of the published CSVs (Python's ``csv`` module, one data row per record):

* total rows = the sum of the published rows of every manifest CSV;
* rows per split = the rows of that split's file (``metadata_<split>.csv``; an API dump
  ``*_dataset.csv`` counts as ``test``, as pad-analytics maps it);
* every published (split, position, card id) appears exactly once.

It prints one line per dataset (rows, splits, unique cards, leakage count, warnings) and
exits 1 if any folder with CSVs fails to load or disagrees. The same check runs in the test
suite when ``PAD_REGISTRY_COPY`` names such a folder (``sources/test_registry_shapes.py``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from pad_assets.settings import Settings
from pad_assets.sources.pad_api import http_client_for
from pad_assets.sources.registry import SUMMARY_FILES, RegistryClient, split_of_file


def published_counts(folder: Path) -> dict[str, int]:
    """Rows per split of the manifest CSVs in ``folder``, counted independently."""
    counts: dict[str, int] = {}
    files = sorted(folder.glob("*.csv"))
    has_split_files = any(f.name.startswith("metadata_") for f in files)
    for f in files:
        if f.name in SUMMARY_FILES or f.name in ("labels.csv", "projects.csv"):
            continue
        split = split_of_file(f.name)
        if split is None or (f.name.endswith("_dataset.csv") and has_split_files):
            continue
        reader = csv.reader(io.StringIO(f.read_text(encoding="utf-8-sig")))
        next(reader)
        n = sum(1 for row in reader if row and any(c.strip() for c in row))
        counts[split] = counts.get(split, 0) + n
    return counts


def check(registry: Path) -> list[dict[str, Any]]:
    settings = Settings(cache_dir=Path("/nonexistent-unused"), registry_url=str(registry),
                        offline=True)
    client = RegistryClient(settings, http_client_for(settings))
    out = []
    for folder in sorted(p for p in registry.iterdir() if p.is_dir()):
        csvs = [p.name for p in folder.glob("*.csv")]
        entry: dict[str, Any] = {"dataset": folder.name, "csv_files": sorted(csvs)}
        if not csvs:
            entry.update(status="skipped", reason="no CSV file in the folder (not published "
                         "here or absent from this copy)")
            out.append(entry)
            continue
        want = published_counts(folder)
        try:
            m = client.load(folder.name)
        except Exception as exc:  # noqa: BLE001 - reported per dataset, exit status 1
            entry.update(status="FAILED", reason=f"{type(exc).__name__}: {exc}",
                         published=want)
            out.append(entry)
            continue
        got = m.split_counts
        keys = list(zip(m.rows["split"], m.rows["position"], strict=True))
        problems = []
        if got != want:
            problems.append(f"split counts {got} != published {want}")
        if len(set(keys)) != len(keys):
            problems.append("a (split, position) appears twice")
        entry.update(status="ok" if not problems else "MISMATCH", problems=problems,
                     rows=len(m.rows), published_rows=sum(want.values()), splits=got,
                     unique_cards=len(m.card_ids), leakage=m.leakage["count"],
                     repeated_within_split=m.duplicates, extra_columns=m.extra_columns,
                     labels=len(m.meta.get("labels", [])), projects=m.meta.get("projects"),
                     version=m.meta.get("version"), license=m.meta.get("license"),
                     shapes=sorted({f["shape"] for f in m.files.values() if "shape" in f}),
                     warnings=m.warnings)
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("registry", type=Path, help="the registry copy's datasets/ folder")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if not args.registry.is_dir():
        print(f"{args.registry}: not a folder; expected the registry's datasets/ folder",
              file=sys.stderr)
        return 2
    results = check(args.registry)
    bad = 0
    for r in results:
        if r["status"] == "skipped":
            print(f"- {r['dataset']}: skipped ({r['reason']})")
            continue
        if r["status"] == "FAILED":
            bad += 1
            print(f"- {r['dataset']}: FAILED {r['reason']}")
            continue
        bad += r["status"] != "ok"
        print(f"- {r['dataset']}: {r['status']} rows {r['rows']} (published "
              f"{r['published_rows']}), splits {r['splits']}, {r['unique_cards']} unique "
              f"cards, leakage {r['leakage']}, repeated {r['repeated_within_split'] or 0}, "
              f"shape {'/'.join(r['shapes'])}, extra columns {len(r['extra_columns'])}, "
              f"{len(r['warnings'])} warning(s)")
        for p in r["problems"]:
            print(f"    PROBLEM: {p}")
        for w in r["warnings"]:
            print(f"    warning: {w[:160]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"{len(results)} folders, {sum(r['status'] == 'ok' for r in results)} ok, "
          f"{sum(r['status'] == 'skipped' for r in results)} skipped, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
