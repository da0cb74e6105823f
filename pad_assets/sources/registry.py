"""Dataset manifests from the PAD dataset registry (a URL or a local folder), as published.

The real registry (``PaperAnalyticalDeviceND/pad_dataset_registry``) publishes three shapes:

* current: ``metadata_{dev,test,val}.csv`` with ``url`` + ``hashlib_md5``, sometimes extra
  columns (``camera_bucket``, ``lighting``, ``background``, ``status``, ``missing_card``,
  ``project.id``);
* v1.x: the same files with ``processed_file_location`` (a full URL) + ``md5_hash``;
* API dumps (``FHI2021/FHI2021_dataset.csv``): one file, no split files, no md5, server
  paths (``/var/www/html/...``) and ~30 API columns. pad-analytics' own model/dataset
  mapping lists such a file as the dataset's "Test Dataset", so its rows are split
  ``test`` here too. With no md5 the rows are ``unverified``: the raw layer takes the first
  download's sha256 as the reference and checks later downloads against it.

A dataset's files are found from its ``croissant.jsonld`` ``distribution`` where that lists
CSVs (only the file name is used: the croissant's URLs point at other commits), else by the
known names. ``labels.csv`` and ``projects.csv`` are read as facts. The croissant's sha256
of each CSV is checked; a stale hash is a warning, never fatal (several published ones are).

Rows are kept exactly as published: a card listed twice in ``dev`` is two rows, a card in
``dev`` and ``test`` is in both (and reported as leakage). Each row carries its ``split``
and ``position`` (0-based row index within its file); every extra column is kept by name.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import FetchError, ManifestError, NotFoundError, UnknownDatasetError
from ..hashing import sha256_bytes
from ..settings import Settings
from .http import HttpClient
from .urls import validate_name

SPLIT_FILES = {"dev": "metadata_dev.csv", "test": "metadata_test.csv", "val": "metadata_val.csv"}
FACT_FILES = ("labels.csv", "projects.csv")
#: CSVs a dataset folder may hold that are summaries, not rows (``class_distribution.csv``).
SUMMARY_FILES = frozenset({"class_distribution.csv"})
DUMP_SPLIT = "test"
MANIFEST_MAX_BYTES = 64 * 1024 * 1024
#: A croissant or a labels/projects file is metadata: real ones are a few kB.
METADATA_MAX_BYTES = 4 * 1024 * 1024
MAX_ROWS = 1_000_000
FORMAT = 2
COLUMNS = ["card_id", "sample_id", "drug", "quantity", "camera", "image_url", "md5", "split",
           "image_name"]
#: Columns of every manifest row, in order; extra published columns follow them.
ROW_COLUMNS = [*COLUMNS, "position"]
_CURRENT = {"id", "sample_name", "url", "hashlib_md5"}
_LEGACY = {"id", "sample_name", "processed_file_location", "md5_hash"}
_DUMP = {"id", "sample_name", "processed_file_location"}
_CONSUMED = {"id", "sample_id", "sample_name", "quantity", "camera_type_1", "url",
             "hashlib_md5", "processed_file_location", "md5_hash", "image_name"}
CANONICAL_PAD_SERVER = "https://pad.crc.nd.edu"


@dataclass
class Manifest:
    """One dataset's published rows plus what was checked and learnt while loading it.

    ``rows``: one row per published CSV row (``ROW_COLUMNS`` then the extra columns).
    ``meta``: the croissant's name, version, licence, citation; ``labels`` and
    ``projects`` from their CSVs; the shape of each file.
    """

    dataset: str
    rows: pd.DataFrame
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    croissant: dict[str, Any] | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def card_ids(self) -> list[int]:
        """Unique card ids in first-published order: the unit of work (one image each)."""
        return list(dict.fromkeys(int(x) for x in self.rows["card_id"]))

    @property
    def extra_columns(self) -> list[str]:
        return [c for c in self.rows.columns if c not in ROW_COLUMNS]

    @property
    def split_counts(self) -> dict[str, int]:
        """Published rows per split, in file order."""
        return {str(k): int(v) for k, v in self.rows["split"].value_counts(sort=False).items()}

    @property
    def leakage(self) -> dict[str, Any]:
        """Cards published in more than one split: ``{"count", "card_ids", "pairs"}``."""
        return leakage_of(self.rows)

    @property
    def duplicates(self) -> dict[str, int]:
        """Per split: rows beyond the first of a card listed more than once in that split."""
        out = {}
        for split, grp in self.rows.groupby("split", sort=False):
            n = int(grp["card_id"].duplicated().sum())
            if n:
                out[str(split)] = n
        return out

    def summary(self) -> str:
        """Rows, splits, unique cards, leakage and warnings, for people."""
        leak = self.leakage
        splits = ", ".join(f"{k} {v}" for k, v in self.split_counts.items())
        lines = [f"{self.dataset}: {len(self.rows)} published rows ({splits}), "
                 f"{len(self.card_ids)} unique cards",
                 f"  leakage: {leak['count']} card(s) in more than one split"
                 + (f": {leak['card_ids'][:20]}" if leak["count"] else "")]
        if self.duplicates:
            lines.append("  repeated within a split: " + ", ".join(
                f"{k} {v} extra row(s)" for k, v in self.duplicates.items()))
        for key in ("name", "version", "license", "citation"):
            if self.meta.get(key):
                lines.append(f"  {key}: {self.meta[key]}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_json_bytes(self) -> bytes:
        """Canonical serialisation, so an unchanged manifest has an unchanged content key."""
        cols = [*ROW_COLUMNS, *self.extra_columns]
        doc = {
            "format": FORMAT,
            "dataset": self.dataset,
            "source": self.source,
            "files": self.files,
            "warnings": self.warnings,
            "meta": self.meta,
            "columns": cols,
            "rows": json.loads(self.rows[cols].to_json(orient="records")),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json_bytes(cls, data: bytes) -> Manifest:
        doc = json.loads(data)
        cols = doc.get("columns") or COLUMNS
        rows = pd.DataFrame(doc["rows"], columns=cols)
        if "position" not in rows:  # a manifest cached before rows were kept as published
            rows["position"] = rows.groupby("split", sort=False).cumcount()
        return cls(doc["dataset"], _typed(rows), doc.get("files", {}), doc.get("warnings", []),
                   None, doc.get("source", ""), doc.get("meta", {}))


def leakage_of(rows: pd.DataFrame) -> dict[str, Any]:
    """Cards that appear in more than one split of ``rows`` (count, ids, per split pair)."""
    per = rows.groupby("card_id")["split"].nunique()
    ids = sorted(int(c) for c in per[per > 1].index)
    pairs: dict[str, int] = {}
    if ids:
        sub = rows[rows["card_id"].isin(ids)]
        for _cid, grp in sub.groupby("card_id"):
            names = sorted(set(grp["split"]))
            for i in range(len(names)):
                for j in range(i + 1, len(names)):
                    key = f"{names[i]}/{names[j]}"
                    pairs[key] = pairs.get(key, 0) + 1
    return {"count": len(ids), "card_ids": ids, "pairs": pairs}


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["card_id"] = df["card_id"].astype("int64")
    df["position"] = df["position"].astype("int64")
    df["quantity"] = pd.to_numeric(df["quantity"], errors="coerce").astype("float64")
    for col in [c for c in df.columns if c not in ("card_id", "position", "quantity")]:
        df[col] = df[col].astype("object").where(df[col].notna(), None)
    return df.reset_index(drop=True)


def _shape_of(cols: set[str]) -> tuple[str, str, str | None]:
    """(shape, url column, md5 column) of a header, or ManifestError's message parts."""
    if cols >= _CURRENT:
        return "current", "url", "hashlib_md5"
    if cols >= _LEGACY:
        return "v1.x", "processed_file_location", "md5_hash"
    if cols >= _DUMP:
        return "api-dump", "processed_file_location", None
    return "", "", None


def parse_split_csv(data: bytes, name: str, split: str) -> pd.DataFrame:
    """Rows of one published CSV in any registry shape: ``ROW_COLUMNS`` + extra columns.

    The shape is read from the header; ``parse_csv_shape`` also returns it.
    """
    return parse_csv_shape(data, name, split)[0]


def parse_csv_shape(data: bytes, name: str, split: str) -> tuple[pd.DataFrame, str]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{name}: not UTF-8 text ({exc})") from exc
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise ManifestError(f"{name}: empty file; expected a CSV header row") from None
    except csv.Error as exc:
        raise ManifestError(f"{name}: malformed CSV header ({exc})") from exc
    header = [h.strip() for h in header]
    shape, url_col, md5_col = _shape_of(set(header))
    if not shape:
        raise ManifestError(
            f"{name}: header {header} has neither the current columns {sorted(_CURRENT)}, "
            f"the v1.x ones {sorted(_LEGACY)} nor an API dump's {sorted(_DUMP)}")
    pos = {h: i for i, h in enumerate(header)}
    extras = [h for h in header if h not in _CONSUMED and h]
    extra_names = {h: (f"published.{h}" if h in ROW_COLUMNS else h) for h in extras}
    out: list[dict[str, Any]] = []
    try:
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise ManifestError(f"{name} line {lineno}: {len(row)} fields, expected "
                                    f"{len(header)} like the header")
            if len(out) >= MAX_ROWS:
                raise ManifestError(f"{name}: more than {MAX_ROWS} rows; refusing an oversized "
                                    "manifest")

            def get(col: str | None, row: list[str] = row) -> str | None:
                i = pos.get(col) if col else None
                v = row[i].strip() if i is not None else ""
                return v or None

            if any("\x00" in c for c in row):
                raise ManifestError(f"{name} line {lineno}: a field contains a NUL character")
            try:
                card_id = int(get("id") or "")
            except ValueError:
                raise ManifestError(f"{name} line {lineno}: id {get('id')!r} is not an integer"
                                    ) from None
            if not 0 <= card_id < 2**63:
                raise ManifestError(f"{name} line {lineno}: id {card_id} out of range; expected "
                                    "a non-negative 64-bit card id")
            md5 = get(md5_col)
            if md5 is not None and (len(md5) != 32 or any(c not in "0123456789abcdefABCDEF"
                                                          for c in md5)):
                raise ManifestError(f"{name} line {lineno}: md5 {md5!r} is not 32 hex digits")
            url = get(url_col)
            if url is None:
                raise ManifestError(f"{name} line {lineno}: card {card_id} has no image URL "
                                    f"(column {url_col!r})")
            if shape == "api-dump" and url.startswith("/") and not url.startswith("//"):
                # A server path: the image is on the PAD server (rebased onto the configured
                # one when fetched, like every canonical-host URL).
                url = CANONICAL_PAD_SERVER + url
            rec: dict[str, Any] = {
                "card_id": card_id, "sample_id": get("sample_id"), "drug": get("sample_name"),
                "quantity": get("quantity"), "camera": get("camera_type_1"), "image_url": url,
                "md5": md5.lower() if md5 else None, "split": split,
                "image_name": get("image_name"), "position": len(out),
            }
            for h in extras:
                i = pos[h]
                rec[extra_names[h]] = row[i] if row[i] != "" else None
            out.append(rec)
    except csv.Error as exc:
        raise ManifestError(f"{name}: malformed CSV ({exc})") from exc
    cols = [*ROW_COLUMNS, *extra_names.values()]
    return pd.DataFrame(out, columns=cols), shape


def parse_facts(data: bytes, name: str) -> list[str]:
    """Values of ``labels.csv`` (one comma-separated row) or ``projects.csv`` (one a line)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{name}: not UTF-8 text ({exc})") from exc
    try:
        return [v.strip() for row in csv.reader(io.StringIO(text)) for v in row if v.strip()]
    except csv.Error as exc:
        raise ManifestError(f"{name}: malformed CSV ({exc})") from exc


def croissant_facts(doc: dict[str, Any]) -> dict[str, Any]:
    """The croissant's name, version, licence, citation, date and description."""
    citation = doc.get("citeAs") or doc.get("citation") or doc.get("citations") or None
    if isinstance(citation, list):
        citation = "; ".join(str(c) for c in citation) or None
    out = {"name": doc.get("name"), "version": doc.get("version"),
           "license": doc.get("license"), "citation": citation,
           "date_published": doc.get("datePublished"), "description": doc.get("description"),
           "url": doc.get("url")}
    return {k: (str(v) if v is not None and not isinstance(v, str) else v)
            for k, v in out.items()}


def _distribution_names(doc: dict[str, Any] | None) -> list[str]:
    if not doc:
        return []
    dist = doc.get("distribution") or []
    if not isinstance(dist, list):
        return []
    names = []
    for entry in dist:
        if isinstance(entry, dict):
            url = str(entry.get("contentUrl") or entry.get("name") or "")
            fname = url.rsplit("/", 1)[-1]
            if fname.endswith(".csv"):
                names.append(fname)
    return names


def split_of_file(filename: str) -> str | None:
    """``metadata_dev.csv`` -> ``dev``; ``*_dataset.csv`` (an API dump) -> ``test``."""
    for split, fname in SPLIT_FILES.items():
        if filename == fname:
            return split
    if filename.endswith("_dataset.csv"):
        return DUMP_SPLIT
    return None


class RegistryClient:
    """Reads dataset folders from ``settings.registry_url`` (http(s) or a local path)."""

    def __init__(self, settings: Settings, http: HttpClient) -> None:
        self.settings = settings
        self.http = http
        self.base = settings.registry_url

    @property
    def is_local(self) -> bool:
        return not self.base.startswith(("http://", "https://"))

    def _read(self, dataset: str, filename: str, limit: int | None = None) -> bytes | None:
        """File bytes, or None if the registry has no such file."""
        limit = MANIFEST_MAX_BYTES if limit is None else limit
        if self.is_local:
            path = Path(self.base).expanduser() / dataset / filename
            if not path.is_file():
                return None
            if path.stat().st_size > limit:
                raise ManifestError(f"{path}: {path.stat().st_size} bytes, over the manifest "
                                    f"limit of {limit}")
            return path.read_bytes()
        url = f"{self.base}/{dataset}/{filename}"
        try:
            return self.http.get_bytes(url, limit, what=f"registry file {filename}")
        except NotFoundError:
            return None
        except FetchError as exc:
            if exc.status is not None and "limit" in exc.reason:
                raise ManifestError(f"{url}: {exc.reason}") from exc
            raise

    def _candidates(self, dataset: str, listed: list[str]) -> list[str]:
        """CSV names to read: the croissant's, then the known names it does not list."""
        known = [*SPLIT_FILES.values()]
        if self.is_local:
            folder = Path(self.base).expanduser() / dataset
            if folder.is_dir():
                known += sorted(p.name for p in folder.glob("*_dataset.csv"))
        else:
            known.append(f"{dataset}_dataset.csv")
        out = [n for n in listed if split_of_file(n) is not None]
        out += [n for n in known if n not in out]
        return out

    def load(self, dataset: str) -> Manifest:
        validate_name(dataset)
        warnings: list[str] = []
        files: dict[str, dict[str, Any]] = {}
        croissant: dict[str, Any] | None = None
        cdata = self._read(dataset, "croissant.jsonld", METADATA_MAX_BYTES)
        if cdata is not None:
            try:
                croissant = json.loads(cdata)
                if not isinstance(croissant, dict):
                    raise ValueError(f"a JSON {type(croissant).__name__}, not an object")
            except ValueError as exc:
                warnings.append(f"croissant.jsonld is not valid JSON-LD ({exc}); checksums "
                                "unchecked")
                croissant = None
        listed = _distribution_names(croissant)
        frames: list[pd.DataFrame] = []
        found_splits: set[str] = set()
        for filename in self._candidates(dataset, listed):
            split = split_of_file(filename)
            if split is None or (filename.endswith("_dataset.csv") and found_splits):
                continue  # an API dump only stands in when there are no split files
            data = self._read(dataset, filename)
            if data is None:
                if filename in listed:
                    warnings.append(f"croissant lists {filename}, which the registry does not "
                                    "have")
                continue
            frame, shape = parse_csv_shape(data, f"{dataset}/{filename}", split)
            files[filename] = {"sha256": sha256_bytes(data), "size": len(data), "split": split,
                               "shape": shape, "rows": len(frame),
                               "md5": "published" if shape != "api-dump" else "unverified"}
            if shape == "api-dump":
                files[filename]["split_rule"] = (
                    "API dump without split files: split 'test', as pad-analytics' "
                    "model_dataset_mapping lists it as the Test Dataset")
                warnings.append(f"{filename}: API dump without md5: images are unverified; the "
                                "first download's sha256 becomes the reference")
            if listed and filename not in listed:
                warnings.append(f"{filename} is published but not listed in the croissant")
            frames.append(frame)
            found_splits.add(split)
        if not frames:
            raise UnknownDatasetError(
                f"dataset {dataset!r} not found in the registry at {self.base}: none of "
                f"{sorted(SPLIT_FILES.values())} or {dataset}_dataset.csv exists")
        rows = pd.concat(frames, ignore_index=True)
        extra_cols = [c for f in frames for c in f.columns if c not in ROW_COLUMNS]
        rows = rows[[*ROW_COLUMNS, *dict.fromkeys(extra_cols)]]
        meta: dict[str, Any] = {"format": FORMAT}
        for fname in FACT_FILES:
            data = self._read(dataset, fname, METADATA_MAX_BYTES)
            if data is not None:
                files[fname] = {"sha256": sha256_bytes(data), "size": len(data)}
                meta[fname.removesuffix(".csv")] = parse_facts(data, f"{dataset}/{fname}")
        leak = leakage_of(rows)
        meta["leakage"] = leak
        if leak["count"]:
            warnings.append(f"leakage: {leak['count']} card id(s) are published in more than "
                            f"one split ({leak['pairs']}): {leak['card_ids'][:10]}"
                            + (" ..." if leak["count"] > 10 else ""))
        for split, grp in rows.groupby("split", sort=False):
            n = int(grp["card_id"].duplicated().sum())
            if n:
                warnings.append(f"split {split}: {n} row(s) repeat a card already listed in "
                                "it; kept as published")
        if croissant is None:
            if cdata is None:
                warnings.append("no croissant.jsonld: CSV checksums could not be checked")
        else:
            meta.update(croissant_facts(croissant))
            warnings += check_croissant(croissant, files)
        return Manifest(dataset, _typed(rows), files, warnings, croissant,
                        source=f"{self.base}/{dataset}", meta=meta)


def check_croissant(doc: dict[str, Any], files: dict[str, dict[str, Any]]) -> list[str]:
    """Compare the croissant's sha256 of each CSV with the bytes actually read."""
    out = []
    dist = doc.get("distribution") or []
    if not isinstance(dist, list):
        return ["croissant.jsonld: 'distribution' is not a list; checksums unchecked"]
    for entry in dist:
        if not isinstance(entry, dict):
            continue
        url = str(entry.get("contentUrl") or entry.get("name") or "")
        fname = url.rsplit("/", 1)[-1]
        want = entry.get("sha256")
        if fname in files:
            files[fname]["croissant_sha256"] = want
            if want and want != files[fname]["sha256"]:
                out.append(f"croissant sha256 of {fname} is stale: croissant says {want}, the "
                           f"file read has {files[fname]['sha256']}")
            files[fname]["croissant_ok"] = bool(want) and want == files[fname]["sha256"]
    return out
