"""The whole PAD dataset registry at its published size, with SYNTHETIC pixels.

``fixtures/registry_full.csv.gz`` holds, for every dataset of the registry whose files could
be read (commit 23b6ece; FHI2022's CSV is not in the repository), every published row of
every split file in published order (repeats and cross-split cards kept): card id, sample
id, drug, quantity, camera. Nothing else: URLs and md5s are the emulator's own. Build it
again from a registry checkout with ``python -m pad_assets.devtools.emulator.full_registry
<registry>/datasets`` (source and licence: ``fixtures/registry/SOURCE.md``).

Each dataset is served under its real name as one "current"-shape CSV per published split
file. ``md5=False`` (the default for the whole registry) leaves the md5 column empty, so a
manifest of 10,000 cards is served without rendering 10,000 images first (rows are
``unverified``; the raw layer then trusts the first bytes it gets); ``md5=True`` renders
them (as ``--full-fhi2020`` does).
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .catalog import DatasetSpec, EmulatorConfig
from .synthetic import CardAttributes

FIXTURE = Path(__file__).parent / "fixtures" / "registry_full.csv.gz"
COLUMNS = ("dataset", "file", "id", "sample_id", "sample_name", "quantity", "camera_type_1")
SERVED_HEADER = ("id", "sample_id", "sample_name", "quantity", "camera_type_1", "url",
                 "hashlib_md5", "image_name")


def full_registry_datasets(md5: bool = False, only: set[str] | None = None,
                           limit: int | None = None) -> list[DatasetSpec]:
    """Every dataset of the fixture (or those named in ``only``) as a served spec;
    ``limit``: only the first rows of each dataset (a small version of the same world)."""
    rows_by: dict[str, dict[str, list[tuple[str, ...]]]] = defaultdict(dict)
    attrs_by: dict[str, dict[int, CardAttributes]] = defaultdict(dict)
    with gzip.open(FIXTURE, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        if tuple(next(reader)) != COLUMNS:
            raise ValueError(f"{FIXTURE}: unexpected header; rebuild it (module docstring)")
        for ds, fname, cid, sample, drug, qty, camera in reader:
            if only is not None and ds not in only:
                continue
            if limit is not None and sum(map(len, rows_by[ds].values())) >= limit:
                continue
            rows_by[ds].setdefault(fname, []).append(
                (cid, sample, drug, qty, camera, "", "", f"{cid}.png"))
            card = int(cid)
            if card not in attrs_by[ds]:
                attrs_by[ds][card] = CardAttributes(
                    drug=drug.strip().lower() or "unknown", quantity=_quantity(qty),
                    camera=camera or "iPad", sample_id=int(sample) if sample.isdigit() else card)
    specs = []
    for ds, files in rows_by.items():
        counts = ", ".join(f"{f}: {len(r)}" for f, r in files.items())
        specs.append(DatasetSpec(
            ds, list(attrs_by[ds]), attributes=attrs_by[ds], publish_md5=md5,
            published={f: (SERVED_HEADER, tuple(r)) for f, r in files.items()},
            description=f"Registry dataset {ds} at its published size ({counts} rows; ids, "
                        "splits and labels as published, SYNTHETIC images)"))
    return specs


def full_registry_config(md5: bool = False, only: Iterable[str] | None = None,
                         limit: int | None = None, **kwargs: Any) -> EmulatorConfig:
    """An emulator world of every registry dataset at its published size: 55,317 rows in 11
    datasets (ids, splits, repeats and labels as published; SYNTHETIC images). ``md5=True``
    publishes md5s (renders every card once); ``only`` serves just the datasets named;
    ``limit`` keeps the first rows of each."""
    return EmulatorConfig(datasets=full_registry_datasets(md5, set(only) if only else None,
                                                          limit), **kwargs)


def _quantity(text: str) -> int:
    try:
        return int(round(float(text)))
    except ValueError:
        return 100


def build_fixture(datasets_dir: Path, out: Path = FIXTURE) -> dict[str, int]:
    """Read every dataset folder of a registry checkout; write the fixture; rows per dataset."""
    from ...sources.registry import SUMMARY_FILES, parse_csv_shape, split_of_file

    counts: dict[str, int] = {}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for folder in sorted(p for p in datasets_dir.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.csv")):
            if path.name in SUMMARY_FILES or split_of_file(path.name) is None:
                continue
            frame, _shape = parse_csv_shape(path.read_bytes(), path.name,
                                            split_of_file(path.name) or "test")
            for r in frame.itertuples(index=False):
                writer.writerow((folder.name, path.name, int(r.card_id), r.sample_id or "",
                                 r.drug or "", "" if r.quantity is None else r.quantity,
                                 r.camera or ""))
            counts[folder.name] = counts.get(folder.name, 0) + len(frame)
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as fh:
        fh.write(buf.getvalue())
    return counts


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m pad_assets.devtools.emulator.full_registry "
                         "<registry checkout>/datasets")
    for name, n in build_fixture(Path(sys.argv[1])).items():
        print(f"{n:>7} rows  {name}")
