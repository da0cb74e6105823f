"""Dataset manifests from the PAD dataset registry (a URL or a local folder).

A dataset folder holds ``metadata_dev.csv``, ``metadata_test.csv``, optionally
``metadata_val.csv`` (current columns, or the older ``processed_file_location`` /
``md5_hash`` ones) and ``croissant.jsonld`` whose sha256 of each CSV is checked; a stale
hash is reported in ``Manifest.warnings``, never fatal (some published ones are stale).
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
MANIFEST_MAX_BYTES = 64 * 1024 * 1024
MAX_ROWS = 1_000_000
COLUMNS = ["card_id", "sample_id", "drug", "quantity", "camera", "image_url", "md5", "split",
           "image_name"]
_CURRENT = {"id", "sample_name", "url", "hashlib_md5"}
_LEGACY = {"id", "sample_name", "processed_file_location", "md5_hash"}


@dataclass
class Manifest:
    """One dataset's rows (one per card) plus what was checked while loading it."""

    dataset: str
    rows: pd.DataFrame
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    croissant: dict[str, Any] | None = None
    source: str = ""

    @property
    def card_ids(self) -> list[int]:
        return [int(x) for x in self.rows["card_id"]]

    def to_json_bytes(self) -> bytes:
        """Canonical serialisation, so an unchanged manifest has an unchanged content key."""
        doc = {
            "dataset": self.dataset,
            "source": self.source,
            "files": self.files,
            "warnings": self.warnings,
            "rows": json.loads(self.rows[COLUMNS].to_json(orient="records")),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json_bytes(cls, data: bytes) -> Manifest:
        doc = json.loads(data)
        rows = pd.DataFrame(doc["rows"], columns=COLUMNS)
        rows = _typed(rows)
        return cls(doc["dataset"], rows, doc.get("files", {}), doc.get("warnings", []),
                   None, doc.get("source", ""))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["card_id"] = df["card_id"].astype("int64")
    df["quantity"] = pd.to_numeric(df["quantity"], errors="coerce").astype("float64")
    for col in ("sample_id", "drug", "camera", "image_url", "md5", "split", "image_name"):
        df[col] = df[col].astype("object").where(df[col].notna(), None)
    return df


def parse_split_csv(data: bytes, name: str, split: str) -> pd.DataFrame:
    """Rows of one split file in either registry format, as ``COLUMNS``."""
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
    cols = set(header)
    if cols >= _CURRENT:
        url_col, md5_col = "url", "hashlib_md5"
    elif cols >= _LEGACY:
        url_col, md5_col = "processed_file_location", "md5_hash"
    else:
        raise ManifestError(
            f"{name}: header {header} has neither the current columns {sorted(_CURRENT)} nor "
            f"the older ones {sorted(_LEGACY)}")
    pos = {h: i for i, h in enumerate(header)}
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

            def get(col: str, row: list[str] = row) -> str | None:
                i = pos.get(col)
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
            out.append({
                "card_id": card_id, "sample_id": get("sample_id"), "drug": get("sample_name"),
                "quantity": get("quantity"), "camera": get("camera_type_1"), "image_url": url,
                "md5": md5.lower() if md5 else None, "split": split,
                "image_name": get("image_name"),
            })
    except csv.Error as exc:
        raise ManifestError(f"{name}: malformed CSV ({exc})") from exc
    return pd.DataFrame(out, columns=COLUMNS)


class RegistryClient:
    """Reads dataset folders from ``settings.registry_url`` (http(s) or a local path)."""

    def __init__(self, settings: Settings, http: HttpClient) -> None:
        self.settings = settings
        self.http = http
        self.base = settings.registry_url

    @property
    def is_local(self) -> bool:
        return not self.base.startswith(("http://", "https://"))

    def _read(self, dataset: str, filename: str) -> bytes | None:
        """File bytes, or None if the registry has no such file."""
        if self.is_local:
            path = Path(self.base).expanduser() / dataset / filename
            if not path.is_file():
                return None
            if path.stat().st_size > MANIFEST_MAX_BYTES:
                raise ManifestError(f"{path}: {path.stat().st_size} bytes, over the manifest "
                                    f"limit of {MANIFEST_MAX_BYTES}")
            return path.read_bytes()
        url = f"{self.base}/{dataset}/{filename}"
        try:
            return self.http.get_bytes(url, MANIFEST_MAX_BYTES, what=f"registry file {filename}")
        except NotFoundError:
            return None
        except FetchError as exc:
            if exc.status is not None and "limit" in exc.reason:
                raise ManifestError(f"{url}: {exc.reason}") from exc
            raise

    def load(self, dataset: str) -> Manifest:
        validate_name(dataset)
        frames, files, warnings = [], {}, []
        for split, filename in SPLIT_FILES.items():
            data = self._read(dataset, filename)
            if data is None:
                continue
            files[filename] = {"sha256": sha256_bytes(data), "size": len(data)}
            frames.append(parse_split_csv(data, f"{dataset}/{filename}", split))
        if not frames:
            raise UnknownDatasetError(
                f"dataset {dataset!r} not found in the registry at {self.base}: none of "
                f"{sorted(SPLIT_FILES.values())} exists")
        rows = pd.concat(frames, ignore_index=True)
        dupes = rows[rows.duplicated("card_id", keep=False)]
        if len(dupes):
            # A card listed in two splits would leak test data into training: keep the first,
            # and say so.
            warnings.append(f"{dupes['card_id'].nunique()} card id(s) appear in more than one "
                            f"split: {sorted(set(dupes['card_id']))[:10]}; first kept")
            rows = rows.drop_duplicates("card_id", keep="first").reset_index(drop=True)
        croissant = None
        cdata = self._read(dataset, "croissant.jsonld")
        if cdata is None:
            warnings.append("no croissant.jsonld: CSV checksums could not be checked")
        else:
            try:
                croissant = json.loads(cdata)
            except ValueError as exc:
                warnings.append(f"croissant.jsonld is not valid JSON ({exc}); checksums unchecked")
            else:
                warnings += check_croissant(croissant, files)
        return Manifest(dataset, _typed(rows), files, warnings, croissant,
                        source=f"{self.base}/{dataset}")


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
