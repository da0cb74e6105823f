"""The emulator's world as plain data: datasets, cards, projects, images, models.

The HTTP server (``server.py``) only routes; everything it answers comes from here, so
tests can also inspect the world directly (which card is where, which md5 a manifest
will publish) without going through HTTP.

Design points:

* Everything is deterministic: card attributes and pixels follow from the card id, the
  dev/test split from the card id, and the publishing of md5/sha256 values from the very
  bytes the server sends. Two emulators with the same config serve identical bytes.
* Nothing is computed before it is asked for: a manifest needs the md5 of every card's
  PNG, so it is built on the first registry request (in parallel) and memoised, in
  memory for the process and optionally on disk (``md5_cache_dir``) across runs.
* Edge cases are real cards with fixed ids (``EdgeCases``) so that the failure paths of
  pad_assets (truncated files, 404s, stale md5s, flaky and slow servers, unknown drugs)
  are exercised through the same code as the happy path.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import logging
import os
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ...store.fs import atomic_open
from . import synthetic
from .synthetic import CardAttributes

log = logging.getLogger(__name__)

IMAGE_ROOT = "/var/www/html/images/padimages/processed"
RAW_ROOT = "/var/www/html/images/padimages/raw"
CURRENT_COLUMNS = (
    "id",
    "sample_id",
    "sample_name",
    "quantity",
    "camera_type_1",
    "url",
    "hashlib_md5",
    "image_name",
)
LEGACY_COLUMNS = (
    "id",
    "sample_id",
    "sample_name",
    "quantity",
    "camera_type_1",
    "processed_file_location",
    "md5_hash",
    "image_name",
)
DEFAULT_DATASET = "FHI2020_Stratified_Sampling"
DEFAULT_FIRST_CARD = 10000
DEFAULT_CARDS = 48
FHI2020_DEV = 5923
FHI2020_TEST = 2078
TEST_NAME = "12LanePADKenya2015"
USER_NAME = "api-SYNTHETIC-EMULATOR"
CARD_NOTES = "SYNTHETIC card served by the pad_assets emulator (not a real PAD photo)"

CARD_ISSUES: tuple[dict[str, Any], ...] = (
    {"id": 2, "name": "Leak", "description": "Reagents or sample leaked across the wax lines"},
    {"id": 3, "name": "Stuck", "description": "Flow stopped before the lanes developed"},
    {"id": 4, "name": "Rectification", "description": "The processed image is badly rectified"},
)

_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class EdgeCases:
    """Cards that misbehave on purpose; all are in the ``edge_cases`` dataset (dev split).

    Each id is a real card of the emulator's world (listed by the API and the project) so a
    client meets the problem exactly where it would meet it in production.
    """

    DATASET = "edge_cases"
    #: PNG cut short (like real card 19208): the manifest md5 is the md5 of the cut bytes,
    #: Pillow decodes it only with ``ImageFile.LOAD_TRUNCATED_IMAGES``.
    TRUNCATED_PNG = 99001
    TRUNCATED_KEEP_FRACTION = 0.8
    #: Listed everywhere, but the image URL answers 404.
    MISSING_IMAGE = 99002
    #: Card record carries ``issue = {"id": 2, "name": "Leak", ...}``.
    WITH_ISSUE = 99003
    #: Card record has ``deleted: true`` (its image is still served).
    DELETED = 99004
    #: Drug absent from every PLS coefficient file.
    UNKNOWN_DRUG = 99005
    UNKNOWN_DRUG_NAME = "unobtainium"
    #: Manifest md5 does not match the served bytes (a stale registry entry).
    MD5_MISMATCH = 99006
    #: Image answers after ``EmulatorConfig.slow_seconds`` (1.5 s by default).
    SLOW = 99007
    #: First image request answers 500, every later one 200 (re-armed by reset-stats).
    FLAKY = 99008
    #: Ordinary cards that make up the edge_cases test split.
    NORMAL = (99101, 99102, 99103, 99104)

    ALL = (
        TRUNCATED_PNG,
        MISSING_IMAGE,
        WITH_ISSUE,
        DELETED,
        UNKNOWN_DRUG,
        MD5_MISMATCH,
        SLOW,
        FLAKY,
    )


def folder_of(card_id: int) -> int:
    """Folder of a processed image on the PAD server: ids grouped by ten thousand."""
    return (int(card_id) // 10000) * 10000


def processed_file_location(card_id: int) -> str:
    """Path of a card's processed image as the PAD API reports it."""
    return f"{IMAGE_ROOT}/{folder_of(card_id)}/{int(card_id)}_processed.png"


def image_url(base_url: str, card_id: int) -> str:
    """Image URL as the real registry writes it: base + '/' + location (double slash)."""
    return f"{base_url.rstrip('/')}/{processed_file_location(card_id)}"


_DISPLAY_NAMES = {"ripe": "RIPE", "swiped-but-not-run": "Swiped but not run"}


def display_name(drug: str) -> str:
    """Project sample names are human-readable ('Ferrous Sulfate'), unlike card names."""
    if drug in _DISPLAY_NAMES:
        return _DISPLAY_NAMES[drug]
    return " ".join(w.capitalize() for w in drug.replace("-", " ").split())


def _unit(*parts: object) -> float:
    text = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") / 2.0**64


def split_unit(card_id: int) -> float:
    """Uniform number in [0, 1) fixed by the card id; a card's split is decided by it.

    It depends on the card id only (not on the dataset or its size), so adding cards never
    moves existing ones between splits and datasets that share cards agree on them.
    """
    return _unit("split", int(card_id))


@dataclass
class DatasetSpec:
    """A registry dataset: which cards, how they split, which CSV format it uses.

    A card goes to test if ``split_unit(id) < test_fraction``, to val if it falls in the
    next ``val_fraction``, else to dev; ``splits`` pins chosen cards to a split explicitly.
    """

    name: str
    card_ids: Sequence[int]
    test_fraction: float = 0.25
    legacy_format: bool = False
    val_fraction: float = 0.0
    splits: Mapping[int, str] | None = None
    description: str = ""
    #: Published files served as given (a real registry extract): file name -> (header,
    #: rows). Rows keep their order, repeats and cross-split cards; the emulator rewrites
    #: only the image URL and md5 columns to what it serves.
    published: Mapping[str, tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]] | None = None
    #: Other files served verbatim (``labels.csv``, ``projects.csv``).
    extra_files: Mapping[str, bytes] | None = None
    #: The real croissant whose facts (version, licence, dates, citation) are served.
    croissant_facts: Mapping[str, Any] | None = None
    #: Labels of the cards of ``published`` (drug, quantity, camera as published).
    attributes: Mapping[int, CardAttributes] | None = None
    #: Publish each row's md5 (renders every card once to compute it). False: the md5
    #: column is left empty (rows ``unverified``), for registry-sized manifests served
    #: without rendering tens of thousands of images (``full_registry``).
    publish_md5: bool = True

    def __post_init__(self) -> None:
        if not _DATASET_NAME.match(self.name):
            raise ValueError(f"dataset name {self.name!r} must match {_DATASET_NAME.pattern}")
        if not (0.0 <= self.test_fraction <= 1.0 and 0.0 <= self.val_fraction <= 1.0):
            raise ValueError("test_fraction and val_fraction must be within [0, 1]")
        if self.test_fraction + self.val_fraction > 1.0:
            raise ValueError("test_fraction + val_fraction must not exceed 1")
        self.card_ids = [int(c) for c in dict.fromkeys(int(c) for c in self.card_ids)]
        for cid, split in (self.splits or {}).items():
            if split not in ("dev", "test", "val"):
                raise ValueError(f"card {cid}: split must be dev, test or val, not {split!r}")

    def split_of(self, card_id: int) -> str:
        if self.splits and int(card_id) in self.splits:
            return self.splits[int(card_id)]
        u = split_unit(card_id)
        if u < self.test_fraction:
            return "test"
        if u < self.test_fraction + self.val_fraction:
            return "val"
        return "dev"

    def split_ids(self) -> dict[str, list[int]]:
        """Card ids per split, in card order; 'val' only when the dataset has one.

        For ``published`` datasets: the ids of each split file's rows, as published."""
        if self.published:
            from ...sources.registry import split_of_file

            pub: dict[str, list[int]] = {}
            for fname, (header, rows) in self.published.items():
                split = split_of_file(fname) or "test"
                i = list(header).index("id")
                pub.setdefault(split, []).extend(int(r[i]) for r in rows)
            return pub
        out: dict[str, list[int]] = {"dev": [], "test": []}
        if self.val_fraction > 0 or (self.splits and "val" in self.splits.values()):
            out["val"] = []
        for cid in self.card_ids:
            out.setdefault(self.split_of(cid), []).append(cid)
        return out


@dataclass(frozen=True)
class ModelArtifact:
    """A model the emulator publishes: its API record and its weights file.

    The emulator fills ``weights_url`` and ``SHA256`` (sha256 of ``data``) in the record it
    serves; ``declared_sha256`` replaces the latter, to publish a wrong checksum on purpose.
    """

    record: dict[str, Any]
    filename: str
    data: bytes
    declared_sha256: str | None = None

    def with_wrong_sha256(self) -> ModelArtifact:
        """The same artifact with a record SHA256 that cannot match its bytes."""
        return replace(self, declared_sha256=hashlib.sha256(b"not " + self.data).hexdigest())


ModelsProvider = Callable[[], list[ModelArtifact]]


def default_datasets(n_cards: int = DEFAULT_CARDS) -> list[DatasetSpec]:
    """The registry of a default emulator: a small FHI2020_Stratified_Sampling + edge cases."""
    return [
        DatasetSpec(
            DEFAULT_DATASET,
            range(DEFAULT_FIRST_CARD, DEFAULT_FIRST_CARD + n_cards),
            description=f"SYNTHETIC stand-in for FHI2020_Stratified_Sampling ({n_cards} cards)",
        ),
        edge_case_dataset(),
        *registry_extracts(),
    ]


def edge_case_dataset() -> DatasetSpec:
    return DatasetSpec(
        EdgeCases.DATASET,
        [*EdgeCases.ALL, *EdgeCases.NORMAL],
        splits={**{c: "dev" for c in EdgeCases.ALL}, **{c: "test" for c in EdgeCases.NORMAL}},
        description="SYNTHETIC cards that misbehave on purpose (see EdgeCases)",
    )


FIXTURES = Path(__file__).parent / "fixtures" / "registry"
EXTRACT_SUFFIX = "_extract"


def registry_extracts() -> list[DatasetSpec]:
    """Small datasets made of real registry rows (``fixtures/registry``, Apache-2.0; see its
    SOURCE.md), one per published shape: v1.x with a val split, cards repeated within a
    split and cards in two splits; an API dump; extra columns; no camera column. Each is
    served under its real name + ``_extract``, with SYNTHETIC images."""
    return [registry_extract(p.name) for p in sorted(FIXTURES.iterdir()) if p.is_dir()]


def registry_extract(name: str, folder: Path | None = None) -> DatasetSpec:
    """One real registry folder (an extract) as a ``DatasetSpec`` served as published."""
    from ...sources.registry import SUMMARY_FILES, split_of_file

    folder = folder or FIXTURES / name
    published: dict[str, tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]] = {}
    attrs: dict[int, CardAttributes] = {}
    for path in sorted(folder.glob("*.csv")):
        if path.name in SUMMARY_FILES or split_of_file(path.name) is None:
            continue
        table = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
        header = tuple(table[0])
        rows = tuple(tuple(r) for r in table[1:] if r)
        # An API dump is named after its folder (FHI2021/FHI2021_dataset.csv): keep that rule.
        served = (f"{name}{EXTRACT_SUFFIX}_dataset.csv" if path.name.endswith("_dataset.csv")
                  else path.name)
        published[served] = (header, rows)
        col = {h: i for i, h in enumerate(header)}
        for r in rows:
            cid = int(r[col["id"]])
            if cid in attrs:
                continue
            try:
                qty = int(round(float(r[col["quantity"]])))
            except (KeyError, ValueError):
                qty = 100
            camera = r[col["camera_type_1"]] if "camera_type_1" in col else "iPad"
            sample = r[col["sample_id"]] if "sample_id" in col else ""
            attrs[cid] = CardAttributes(drug=r[col["sample_name"]].strip().lower(),
                                        quantity=qty, camera=camera or "iPad",
                                        sample_id=int(sample) if sample.isdigit() else cid)
    extra = {f: (folder / f).read_bytes() for f in ("labels.csv", "projects.csv")
             if (folder / f).is_file()}
    crois = folder / "croissant.jsonld"
    facts = json.loads(crois.read_bytes()) if crois.is_file() else None
    return DatasetSpec(f"{name}{EXTRACT_SUFFIX}", list(attrs), published=published,
                       extra_files=extra, croissant_facts=facts, attributes=attrs,
                       description=f"Real rows of registry dataset {name} (extract; "
                                   "SYNTHETIC images)")


@dataclass
class EmulatorConfig:
    """Everything that shapes one emulator: its world and the faults it injects.

    ``error_rate`` and ``truncate_rate`` are drawn from a RNG seeded with ``seed``, so a
    fault sequence is repeatable for a given order of requests.
    ``models_provider=None`` serves the trained demo models when
    ``pad_assets.devtools.demo_models`` is importable, else no models.
    """

    datasets: list[DatasetSpec] = field(default_factory=default_datasets)
    latency: float = 0.0
    error_rate: float = 0.0
    truncate_rate: float = 0.0
    seed: int = 0
    real_images_dir: Path | str | None = None
    models_provider: ModelsProvider | None = None
    #: Attributes to use instead of the synthetic ones (e.g. real labels of real files).
    card_overrides: Mapping[int, CardAttributes] = field(default_factory=dict)
    slow_seconds: float = 1.5
    #: Folder that memoises md5s of generated images across runs (big configs start fast).
    md5_cache_dir: Path | str | None = None
    #: Threads that render cards when a manifest is built.
    workers: int = field(default_factory=lambda: max(1, min(8, os.cpu_count() or 1)))
    #: Request path -> ``Location`` answered with a 302 (a hostile or moved file host).
    redirects: dict[str, str] = field(default_factory=dict)
    #: Image and weights bodies sent at this many bytes per second (0: at once): a server
    #: that trickles keeps every socket read under the timeout but never finishes.
    trickle_bytes_per_s: float = 0.0
    #: Seconds sent in ``Retry-After`` with every emulated 500/503 (None: no header).
    retry_after: float | None = None

    def __post_init__(self) -> None:
        for name in ("error_rate", "truncate_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.latency < 0:
            raise ValueError("latency must be >= 0")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")

    @classmethod
    def with_cards(cls, n_cards: int, **kwargs: Any) -> EmulatorConfig:
        """Default world with ``n_cards`` cards in FHI2020_Stratified_Sampling."""
        return cls(datasets=default_datasets(n_cards), **kwargs)

    @classmethod
    def full_fhi2020(cls, **kwargs: Any) -> EmulatorConfig:
        """The real dataset's shape: 8,001 cards, exactly 5,923 dev + 2,078 test.

        The split rule stays per card (``split_unit < threshold``); the threshold is put
        between the 2,078th and 2,079th smallest values so the counts match exactly.
        """
        ids = list(range(DEFAULT_FIRST_CARD, DEFAULT_FIRST_CARD + FHI2020_DEV + FHI2020_TEST))
        units = sorted(split_unit(c) for c in ids)
        threshold = (units[FHI2020_TEST - 1] + units[FHI2020_TEST]) / 2.0
        spec = DatasetSpec(
            DEFAULT_DATASET,
            ids,
            test_fraction=threshold,
            description="SYNTHETIC stand-in for FHI2020_Stratified_Sampling (full size)",
        )
        return cls(datasets=[spec, edge_case_dataset()], **kwargs)


# --------------------------------------------------------------------------------------
# Image bytes (process-wide caches: several emulators in one test session share them)

_MD5_MEMO: dict[tuple[Any, ...], str] = {}
_MD5_LOCK = threading.Lock()


@lru_cache(maxsize=48)
def _synthetic_png(card_id: int, drug: str, quantity: int, camera: str) -> bytes:
    return synthetic.card_png(card_id, drug=drug, quantity=quantity, camera=camera)


def _truncate(data: bytes) -> bytes:
    return data[: int(len(data) * EdgeCases.TRUNCATED_KEEP_FRACTION)]


def _md5_disk_file(folder: Path) -> Path:
    # Pixels depend on numpy's RNG streams, compressed bytes on the zlib build.
    tag = f"{synthetic.RENDERER_VERSION}-np{np.__version__}-zlib{zlib.ZLIB_RUNTIME_VERSION}"
    return folder / f"emulator-md5-{tag}.json"


class Catalog:
    """The emulator's state: datasets (mutable via ``add_cards``), faults, models."""

    def __init__(self, config: EmulatorConfig | None = None):
        self.config = config or EmulatorConfig()
        self._lock = threading.RLock()
        self._datasets: dict[str, DatasetSpec] = {
            d.name: replace(d, card_ids=list(d.card_ids)) for d in self.config.datasets
        }
        self._card_ids: list[int] = []
        self._card_set: set[int] = set()
        self._rebuild_card_index()
        self._registry_cache: dict[tuple[str, str], dict[str, bytes]] = {}
        self._flaky_armed: set[int] = {EdgeCases.FLAKY}
        self._models: list[ModelArtifact] | None = None
        self._extra_models: list[ModelArtifact] = []
        self._models_lock = threading.Lock()
        self._real_dir = Path(self.config.real_images_dir) if self.config.real_images_dir else None
        self._disk_md5: dict[str, str] | None = None

    # ---------------------------------------------------------------- cards
    def _rebuild_card_index(self) -> None:
        ids: set[int] = set()
        for spec in self._datasets.values():
            ids.update(spec.card_ids)
        self._card_set = ids
        self._card_ids = sorted(ids)

    def card_ids(self) -> list[int]:
        """Every card of the world (union of all datasets), in id order."""
        return list(self._card_ids)

    def dataset(self, name: str) -> DatasetSpec | None:
        return self._datasets.get(name)

    def add_cards(self, dataset_name: str, card_ids: Iterable[int]) -> list[int]:
        """Append cards to a dataset (created if new); returns the ids actually added.

        Existing cards keep their split; manifests of that dataset are rebuilt on the
        next request.
        """
        new = [int(c) for c in card_ids]
        with self._lock:
            spec = self._datasets.get(dataset_name)
            if spec is None:
                spec = DatasetSpec(dataset_name, [], description="SYNTHETIC dataset")
                self._datasets[dataset_name] = spec
            present = set(spec.card_ids)
            added = [c for c in dict.fromkeys(new) if c not in present]
            spec.card_ids = [*spec.card_ids, *added]
            if spec.published and added:
                self._publish_rows(spec, added)
            self._rebuild_card_index()
            self._registry_cache = {
                k: v for k, v in self._registry_cache.items() if k[0] != dataset_name
            }
        return added

    def _publish_rows(self, spec: DatasetSpec, card_ids: Sequence[int]) -> None:
        """New cards of a dataset served as published: rows appended to its last split
        file (labels synthetic; URL and md5 columns are filled when served)."""
        fname = list(spec.published or {})[-1]
        header, rows = (spec.published or {})[fname]
        extra = []
        for cid in card_ids:
            a = synthetic.card_attributes(cid)
            values = {"id": str(cid), "sample_id": str(a.sample_id), "sample_name": a.drug,
                      "quantity": str(a.quantity), "camera_type_1": a.camera,
                      "image_name": f"{cid}.png"}
            extra.append(tuple(values.get(h, "") for h in header))
        spec.published = {**(spec.published or {}), fname: (header, (*rows, *extra))}

    def attributes(self, card_id: int) -> CardAttributes:
        """Labels of a card: explicit overrides, then edge-case specifics, then synthetic."""
        cid = int(card_id)
        if cid in self.config.card_overrides:
            return self.config.card_overrides[cid]
        for spec in self._datasets.values():
            if spec.attributes and cid in spec.attributes:
                return spec.attributes[cid]
        attrs = synthetic.card_attributes(cid)
        if cid == EdgeCases.UNKNOWN_DRUG:
            return replace(attrs, drug=EdgeCases.UNKNOWN_DRUG_NAME, quantity=50)
        if cid == EdgeCases.TRUNCATED_PNG:
            return replace(attrs, drug="ceftriaxone", quantity=50)
        return attrs

    def project_record(self) -> dict[str, Any]:
        return {
            "id": 1,
            "user_name": "SYNTHETIC (pad_assets emulator)",
            "project_name": "FHI2020",
            "annotation": "FHI20",
            "test_name": TEST_NAME,
            "sample_names": {"sample_names": [display_name(d) for d in synthetic.DRUGS]},
            "neutral_filler": "Lactose",
            "qpc20": 1,
            "qpc50": 1,
            "qpc80": 1,
            "qpc100": 1,
            "notes": "SYNTHETIC project of the pad_assets emulator; every emulated card is in it.",
        }

    def projects(self) -> list[dict[str, Any]]:
        return [self.project_record()]

    def project(self, project_id: str | int) -> dict[str, Any] | None:
        return self.project_record() if str(project_id) == "1" else None

    def project_cards(self, project_id: str | int) -> list[dict[str, Any]] | None:
        if self.project(project_id) is None:
            return None
        return [self.card_record(c) for c in self._card_ids]

    def card_record(self, card_id: int) -> dict[str, Any] | None:
        """The card as ``GET /api/v2/cards/{id}`` returns it (None if not in the world)."""
        cid = int(card_id)
        if cid not in self._card_set:
            return None
        attrs = self.attributes(cid)
        created = datetime(2020, 1, 1) + timedelta(seconds=397 * (cid % 100000))
        issue = dict(CARD_ISSUES[0]) if cid == EdgeCases.WITH_ISSUE else None
        return {
            "id": cid,
            "sample_name": attrs.drug,
            "test_name": TEST_NAME,
            "user_name": USER_NAME,
            "date_of_creation": created.isoformat(),
            "raw_file_location": f"{RAW_ROOT}/{folder_of(cid)}/{cid}_raw.png",
            "processed_file_location": processed_file_location(cid),
            "processing_date": (created + timedelta(seconds=37)).isoformat(),
            "camera_type_1": attrs.camera,
            "notes": CARD_NOTES,
            "sample_id": attrs.sample_id,
            "quantity": attrs.quantity,
            "deleted": cid == EdgeCases.DELETED,
            "project": self.project_record(),
            "issue": issue,
        }

    def cards_page(self, skip: int, limit: int) -> list[dict[str, Any]]:
        ids = self._card_ids[max(skip, 0) : max(skip, 0) + max(limit, 0)]
        return [r for r in (self.card_record(c) for c in ids) if r is not None]

    @staticmethod
    def issues() -> list[dict[str, Any]]:
        return [dict(i) for i in CARD_ISSUES]

    # ---------------------------------------------------------------- images
    def _real_file(self, card_id: int) -> Path | None:
        if self._real_dir is None:
            return None
        path = self._real_dir / f"{int(card_id)}_processed.png"
        return path if path.is_file() else None

    def _image_key(self, card_id: int) -> tuple[Any, ...]:
        """What the served bytes depend on (for memoising their md5)."""
        cid = int(card_id)
        real = self._real_file(cid)
        if real is not None:
            st = real.stat()
            return ("file", str(real), st.st_size, st.st_mtime_ns)
        a = self.attributes(cid)
        variant = "truncated" if cid == EdgeCases.TRUNCATED_PNG else "full"
        return ("synthetic", synthetic.RENDERER_VERSION, cid, a.drug, a.quantity, a.camera, variant)

    def _bytes_of(self, card_id: int) -> bytes:
        cid = int(card_id)
        real = self._real_file(cid)
        if real is not None:
            return real.read_bytes()
        a = self.attributes(cid)
        data = _synthetic_png(cid, a.drug, a.quantity, a.camera)
        if cid == EdgeCases.TRUNCATED_PNG:
            data = _truncate(data)
        return data

    def image_bytes(self, card_id: int) -> bytes | None:
        """Bytes served at the card's image URL, or None for a 404.

        Real files in ``real_images_dir`` are served for any id; synthetic images only for
        cards of the world (never for ``EdgeCases.MISSING_IMAGE``).
        """
        cid = int(card_id)
        if self._real_file(cid) is not None:
            return self._bytes_of(cid)
        if cid not in self._card_set or cid == EdgeCases.MISSING_IMAGE:
            return None
        return self._bytes_of(cid)

    def image_md5(self, card_id: int) -> str:
        """md5 of the bytes served for a card (for a 404 card: of the bytes it once had)."""
        key = self._image_key(card_id)
        with _MD5_LOCK:
            hit = _MD5_MEMO.get(key)
        if hit is None and key[0] == "synthetic":
            hit = self._disk_md5_get(key)
        if hit is not None:
            return hit
        digest = hashlib.md5(self._bytes_of(card_id)).hexdigest()
        with _MD5_LOCK:
            _MD5_MEMO[key] = digest
        return digest

    def manifest_md5(self, card_id: int) -> str:
        """md5 the registry publishes; wrong on purpose for ``EdgeCases.MD5_MISMATCH``."""
        digest = self.image_md5(card_id)
        if int(card_id) == EdgeCases.MD5_MISMATCH:
            return hashlib.md5(b"stale registry entry " + digest.encode()).hexdigest()
        return digest

    def image_delay(self, card_id: int) -> float:
        return self.config.slow_seconds if int(card_id) == EdgeCases.SLOW else 0.0

    def take_flaky_failure(self, card_id: int) -> bool:
        """True exactly once per arming for ``EdgeCases.FLAKY``: answer that request 500."""
        with self._lock:
            if int(card_id) in self._flaky_armed:
                self._flaky_armed.discard(int(card_id))
                return True
        return False

    def rearm_faults(self) -> None:
        with self._lock:
            self._flaky_armed = {EdgeCases.FLAKY}

    def precompute_md5s(
        self,
        card_ids: Iterable[int] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Render cards whose md5 is unknown, in parallel threads (numpy and zlib release
        the GIL), then persist the memo when ``md5_cache_dir`` is set."""
        ids = list(self._card_ids if card_ids is None else card_ids)
        todo = [c for c in ids if not self._md5_known(c)]
        total = len(todo)
        if total:
            done = 0
            workers = max(1, int(self.config.workers))
            if workers == 1 or total == 1:
                for c in todo:
                    self.image_md5(c)
                    done += 1
                    if progress:
                        progress(done, total)
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    for _ in pool.map(self._md5_uncached, todo):
                        done += 1
                        if progress:
                            progress(done, total)
        self._disk_md5_save()

    def _md5_known(self, card_id: int) -> bool:
        key = self._image_key(card_id)
        with _MD5_LOCK:
            if key in _MD5_MEMO:
                return True
        return key[0] == "synthetic" and self._disk_md5_get(key) is not None

    def _md5_uncached(self, card_id: int) -> str:
        # Bypass the PNG LRU: a bulk manifest build would only evict useful entries.
        key = self._image_key(card_id)
        cid = int(card_id)
        if key[0] == "synthetic":
            a = self.attributes(cid)
            data = synthetic.card_png(cid, drug=a.drug, quantity=a.quantity, camera=a.camera)
            if cid == EdgeCases.TRUNCATED_PNG:
                data = _truncate(data)
        else:
            data = self._bytes_of(cid)
        digest = hashlib.md5(data).hexdigest()
        with _MD5_LOCK:
            _MD5_MEMO[key] = digest
        return digest

    def _disk_md5_get(self, key: tuple[Any, ...]) -> str | None:
        folder = self.config.md5_cache_dir
        if folder is None:
            return None
        with _MD5_LOCK:
            if self._disk_md5 is None:
                path = _md5_disk_file(Path(folder))
                try:
                    self._disk_md5 = json.loads(path.read_text())
                except (OSError, ValueError):
                    self._disk_md5 = {}
            hit = self._disk_md5.get(json.dumps(list(key)))
            if hit is not None:
                _MD5_MEMO[key] = hit
            return hit

    def _disk_md5_save(self) -> None:
        folder = self.config.md5_cache_dir
        if folder is None:
            return
        path = _md5_disk_file(Path(folder))
        with _MD5_LOCK:
            merged = dict(self._disk_md5 or {})
            merged.update(
                {json.dumps(list(k)): v for k, v in _MD5_MEMO.items() if k[0] == "synthetic"}
            )
            self._disk_md5 = merged
        with atomic_open(path, "w") as fh:
            json.dump(merged, fh)

    # ---------------------------------------------------------------- registry
    def registry_file(self, dataset_name: str, filename: str, base_url: str) -> bytes | None:
        """A file of the registry folder of a dataset, or None if there is no such file."""
        if dataset_name not in self._datasets:
            return None
        key = (dataset_name, base_url.rstrip("/"))
        with self._lock:
            files = self._registry_cache.get(key)
        if files is None:
            files = self._build_registry(dataset_name, base_url.rstrip("/"))
            with self._lock:
                if self._datasets.get(dataset_name) is not None:
                    self._registry_cache[key] = files
        return files.get(filename)

    def _build_registry(self, name: str, base_url: str) -> dict[str, bytes]:
        with self._lock:
            spec = replace(self._datasets[name], card_ids=list(self._datasets[name].card_ids))
        if spec.publish_md5:
            self.precompute_md5s(spec.card_ids)
        if spec.published:
            return self._build_published(spec, base_url)
        files: dict[str, bytes] = {}
        splits = spec.split_ids()
        for split, ids in splits.items():
            files[f"metadata_{split}.csv"] = self._manifest_csv(spec, ids, base_url)
        drugs = sorted({self.attributes(c).drug for c in spec.card_ids})
        files["labels.csv"] = (",".join(drugs) + "\n").encode("utf-8")
        files["README.md"] = self._readme(spec, splits).encode("utf-8")
        files["croissant.jsonld"] = self._croissant(spec, splits, files, base_url)
        return files

    def _build_published(self, spec: DatasetSpec, base_url: str) -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        for fname, (header, rows) in (spec.published or {}).items():
            files[fname] = self._published_csv(header, rows, base_url, spec.publish_md5)
        files.update(spec.extra_files or {})
        splits = spec.split_ids()
        counts = ", ".join(f"{k}: {len(v)} rows" for k, v in splits.items())
        files["README.md"] = (
            f"# `{spec.name}` (real rows, SYNTHETIC images)\n\n{spec.description}.\n\n"
            f"Rows: {counts}. Source and licence: pad_assets/devtools/emulator/fixtures/registry/"
            "SOURCE.md.\n").encode()
        files["croissant.jsonld"] = self._published_croissant(spec, files, base_url)
        return files

    def _published_csv(self, header: tuple[str, ...], rows: Iterable[tuple[str, ...]],
                       base_url: str, publish_md5: bool = True) -> bytes:
        """A real CSV with its image URL and md5 columns rewritten to what is served."""
        col = {h: i for i, h in enumerate(header)}
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        for r in rows:
            out = list(r)
            cid = int(r[col["id"]])
            if "url" in col:  # current: registry's double-slash form
                out[col["url"]] = image_url(base_url, cid)
            elif "md5_hash" in col:  # v1.x: host + path
                out[col["processed_file_location"]] = (
                    f"{base_url.rstrip('/')}{processed_file_location(cid)}")
            else:  # API dump: server paths
                out[col["processed_file_location"]] = processed_file_location(cid)
                if "raw_file_location" in col:
                    out[col["raw_file_location"]] = (
                        f"{RAW_ROOT}/{folder_of(cid)}/{cid}_raw.png")
            for md5_col in ("hashlib_md5", "md5_hash"):
                if md5_col in col:
                    out[col[md5_col]] = self.manifest_md5(cid) if publish_md5 else ""
            writer.writerow(out)
        return buf.getvalue().encode("utf-8")

    def _published_croissant(self, spec: DatasetSpec, files: dict[str, bytes],
                             base_url: str) -> bytes:
        """The real croissant with this folder's URLs and the served files' sha256."""
        doc = json.loads(json.dumps(spec.croissant_facts or {}))
        folder_url = f"{base_url}/registry/datasets/{spec.name}"
        doc.update({"@id": folder_url, "name": spec.name, "url": folder_url})
        doc.pop("sameAs", None)
        real = doc.get("distribution") or []
        listed = {str(e.get("name")) for e in real if isinstance(e, dict)}
        dist = []
        for entry in real:
            if not isinstance(entry, dict):
                continue
            fname = str(entry.get("name"))
            if fname not in files:
                continue
            dist.append({**entry, "@id": f"datasets/{spec.name}/{fname}",
                         "contentUrl": f"{folder_url}/{fname}",
                         "sha256": hashlib.sha256(files[fname]).hexdigest(),
                         "contentSize": f"{len(files[fname])} bytes"})
        if real:  # a croissant that lists files lists them all (an empty one stays empty)
            for fname in spec.published or {}:
                if fname not in listed:
                    dist.append({"@type": ["cr:FileObject", "schema:DataDownload"],
                                 "name": fname, "contentUrl": f"{folder_url}/{fname}",
                                 "encodingFormat": "text/csv",
                                 "sha256": hashlib.sha256(files[fname]).hexdigest()})
        doc["distribution"] = dist
        return json.dumps(doc, indent=2).encode("utf-8")

    def catalog_json(self) -> bytes:
        """The registry's catalog (``docs/api/catalog.json``): one entry per dataset."""
        out = []
        with self._lock:
            specs = list(self._datasets.values())
        for spec in specs:
            facts = spec.croissant_facts or {}
            rows = sum(len(v) for v in spec.split_ids().values())
            out.append({"name": spec.name, "version": facts.get("version", "1.0"),
                        "license": facts.get("license",
                                             "https://www.apache.org/licenses/LICENSE-2.0"),
                        "description": spec.description, "recordCount": rows,
                        "url": f"/datasets/{spec.name}"})
        return json.dumps(out, indent=2).encode("utf-8")

    def _manifest_csv(self, spec: DatasetSpec, ids: list[int], base_url: str) -> bytes:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(LEGACY_COLUMNS if spec.legacy_format else CURRENT_COLUMNS)
        for cid in ids:
            a = self.attributes(cid)
            where = processed_file_location(cid) if spec.legacy_format else image_url(base_url, cid)
            writer.writerow(
                [
                    cid,
                    a.sample_id,
                    a.drug,
                    a.quantity,
                    a.camera,
                    where,
                    self.manifest_md5(cid) if spec.publish_md5 else "",
                    f"{cid}__{a.sample_id}__{a.drug}__{a.quantity}.png",
                ]
            )
        return buf.getvalue().encode("utf-8")

    @staticmethod
    def _readme(spec: DatasetSpec, splits: dict[str, list[int]]) -> str:
        counts = ", ".join(f"{k}: {len(v)}" for k, v in splits.items())
        return (
            f"# `{spec.name}` Dataset (SYNTHETIC)\n\n"
            "**SYNTHETIC data served by the pad_assets local PAD API emulator.** The images are\n"
            "generated cards, not photos of real Paper Analytical Devices; do not use them for\n"
            "scientific conclusions.\n\n"
            f"{spec.description or 'Synthetic dataset.'}\n\n"
            f"Cards: {len(spec.card_ids)} ({counts}).\n\n"
            "Files: metadata_dev.csv, metadata_test.csv"
            + (", metadata_val.csv" if "val" in splits else "")
            + ", labels.csv, croissant.jsonld.\n"
        )

    def _croissant(
        self,
        spec: DatasetSpec,
        splits: dict[str, list[int]],
        files: dict[str, bytes],
        base_url: str,
    ) -> bytes:
        folder_url = f"{base_url}/registry/datasets/{spec.name}"
        columns = LEGACY_COLUMNS if spec.legacy_format else CURRENT_COLUMNS
        int_columns = {"id", "sample_id", "quantity"}
        split_names = {"dev": "train", "test": "test", "val": "validation"}
        split_text = {"dev": "Train", "test": "Test", "val": "Validation"}
        distribution = []
        for split in splits:
            fname = f"metadata_{split}.csv"
            data = files[fname]
            distribution.append(
                {
                    "@type": ["cr:FileObject", "schema:MediaObject", "schema:DataDownload"],
                    "@id": f"datasets/{spec.name}/{fname}",
                    "name": fname,
                    "description": f"{split_text[split]} dataset for {spec.name} (SYNTHETIC)",
                    "contentUrl": f"{folder_url}/{fname}",
                    "encodingFormat": "text/csv",
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "dateModified": "2025-03-24T15:15:14Z",
                    "contentSize": f"{len(data)} bytes",
                    "inLanguage": "en",
                }
            )
        doc = {
            "@context": {
                "@language": "en",
                "cr": "http://mlcommons.org/croissant/",
                "schema": "http://schema.org/",
                "dct": "http://purl.org/dc/terms/",
                "xsd": "http://www.w3.org/2001/XMLSchema#",
                "@vocab": "http://mlcommons.org/croissant/",
                "name": "schema:name",
                "description": "schema:description",
                "version": "schema:version",
                "datePublished": {"@id": "schema:datePublished", "@type": "xsd:dateTime"},
                "license": {"@id": "schema:license", "@type": "@id"},
                "creator": "schema:creator",
                "recordCount": {"@id": "cr:recordCount", "@type": "xsd:integer"},
                "fileCount": {"@id": "cr:fileCount", "@type": "xsd:integer"},
                "distribution": "schema:distribution",
                "contentUrl": {"@id": "schema:contentUrl", "@type": "@id"},
                "encodingFormat": "schema:encodingFormat",
                "sha256": "cr:sha256",
            },
            "@id": folder_url,
            "@type": ["cr:Dataset", "schema:Dataset"],
            "name": spec.name,
            "description": (
                f"SYNTHETIC dataset served by the pad_assets PAD API emulator. "
                f"{spec.description}".strip()
            ),
            "version": "1.0",
            "datePublished": "2025-03-24T15:15:09Z",
            "license": "https://www.apache.org/licenses/LICENSE-2.0",
            "creator": {"@type": "schema:Person", "name": "pad_assets emulator (SYNTHETIC)"},
            "publisher": {"@type": "schema:Organization", "name": "pad_assets emulator"},
            "url": folder_url,
            "isAccessibleForFree": True,
            "keywords": ["SYNTHETIC", "machine learning", "computer vision", "dataset"],
            "citations": [],
            "distribution": distribution,
            "recordCount": len(spec.card_ids),
            "fileCount": len(distribution),
            "datasetSchema": {
                "@type": "cr:TableSchema",
                "columns": [
                    {
                        "@type": "xsd:integer" if c in int_columns else "xsd:string",
                        "name": c,
                        "description": f"Column: {c}",
                        "dataType": "integer" if c in int_columns else "string",
                    }
                    for c in columns
                ],
            },
            "dataSplits": [
                {
                    "@type": "cr:DataSplit",
                    "name": split_names[split],
                    "description": f"{split_text[split]} data split",
                    "recordCount": len(ids),
                    "splits": [
                        {
                            "@type": "schema:PropertyValue",
                            "propertyID": split_names[split],
                            "value": split_names[split],
                        }
                    ],
                }
                for split, ids in splits.items()
            ],
        }
        return json.dumps(doc, indent=2).encode("utf-8")

    # ---------------------------------------------------------------- models
    def add_model(self, artifact: ModelArtifact) -> None:
        """Publish one more model (tests use it for e.g. a wrong SHA256)."""
        with self._models_lock:
            self._extra_models.append(artifact)

    def _artifacts(self) -> list[ModelArtifact]:
        with self._models_lock:
            if self._models is None:
                provider = self.config.models_provider or _default_provider()
                self._models = list(provider()) if provider is not None else []
            return [*self._models, *self._extra_models]

    def model_records(self, base_url: str) -> list[dict[str, Any]]:
        """Records as ``/api/v2/neural-networks`` serves them (weights_url, SHA256 filled)."""
        out = []
        used = set()
        for art in self._artifacts():
            rec = dict(art.record)
            if "id" not in rec:
                rec["id"] = max(used | {0}) + 1
            used.add(int(rec["id"]))
            rec.setdefault("weights", art.filename)
            rec.setdefault("drugs", [])
            rec.setdefault("drugs_size", len(rec.get("drugs") or []))
            rec.setdefault("lanes_excluded", "")
            rec.setdefault("description", "SYNTHETIC model served by the pad_assets emulator")
            rec.setdefault("test", TEST_NAME)
            rec.setdefault("version", "1.0")
            rec["weights_url"] = weights_url(base_url, rec, art.filename)
            rec["SHA256"] = art.declared_sha256 or hashlib.sha256(art.data).hexdigest()
            out.append(rec)
        return out

    def weights(self, mtype: str, name: str, version: str, filename: str) -> bytes | None:
        for art in self._artifacts():
            rec = art.record
            if (
                str(rec.get("type")) == mtype
                and str(rec.get("name")) == name
                and str(rec.get("version", "1.0")) == version
                and art.filename == filename
            ):
                return art.data
        return None


def weights_url(base_url: str, record: Mapping[str, Any], filename: str) -> str:
    """Where a model's weights live: ``{base}/neuralnetworks/{type}/{name}/{version}/{file}``."""
    parts = (
        record.get("type", "tf_lite"),
        record.get("name", ""),
        record.get("version", "1.0"),
        filename,
    )
    return f"{base_url.rstrip('/')}/neuralnetworks/" + "/".join(
        quote(str(p), safe="") for p in parts
    )


def _default_provider() -> ModelsProvider | None:
    """The trained demo models if their module exists; a broken module is not hidden."""
    module = "pad_assets.devtools.demo_models"
    try:
        demo = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name not in (module, "pad_assets.models", "pad_assets"):
            raise
        log.info("no demo models: %s is not importable", module)
        return None
    return demo.demo_model_artifacts
