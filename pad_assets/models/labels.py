"""Where a custom model's class labels come from, found the way researchers ship them.

A classifier's outputs mean nothing without the list of class names in output order, and
researchers keep that list in one of a few places. ``resolve_labels`` looks, in this order
of precedence, and the first place that has labels wins:

1. ``labels=`` passed explicitly (always wins; nothing else is read);
2. the PAD model record, when the adapter is built from one (its ``labels`` field);
3. the model file's own metadata:

   - ONNX: ``metadata_props`` entry ``labels`` (or ``class_names``, ``classes``, ``names``);
   - TorchScript: an extra file ``labels.json`` / ``labels.txt``
     (``torch.jit.save(m, path, _extra_files={"labels.txt": ...})``);
   - Keras ``.keras``: a ``labels`` (or ``class_names``) entry in the archive's
     ``metadata.json`` or ``config.json``;
   - TF Lite: an associated ``labels.txt`` / ``labelmap.txt`` / ``labels.json`` packed in the
     file (what TF Lite Metadata writers produce);

4. a sidecar file next to the weights: ``<stem>.labels.json``, then ``<stem>.labels.txt``,
   then the folder's ``labels.txt`` (``<stem>`` is the file name without its extension:
   ``my_pytorch_model.labels.txt`` for ``my_pytorch_model.pth``). The first that exists is
   read; a folder-wide ``labels.txt`` is ignored when a model-specific sidecar exists.

If two automatic places (2-4) both have labels and they disagree, that is an error naming
both: one of them is stale, and guessing would mislabel every prediction. If none has
labels, predictions are class indices and ``UnlabelledModelWarning`` says how to fix it.

Text files hold one label per line (blank lines ignored). JSON holds a list, an object with
a ``labels``/``class_names``/``classes``/``names`` list, or an ``{"0": name, "1": ...}`` map.

Nothing here imports a model framework or loads a model: files are read as zip archives,
JSON, text, or (ONNX) by walking the top level of the protobuf, skipping the graph.
Every source records its kind, a machine-independent name (a metadata key, a sidecar
pattern such as ``{stem}.labels.txt``) and a sha256 of its content: the adapter puts those in
its signature (a changed sidecar changes the signature; moving the folder does not) and the
absolute path as well in lineage.
"""

from __future__ import annotations

import ast
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import ModelError
from ..hashing import canonical_json, sha256_bytes
from .base import standardize_label

__all__ = [
    "LABEL_KEYS",
    "LabelSource",
    "UnlabelledModelWarning",
    "embedded_labels",
    "how_to_give_labels",
    "parse_label_data",
    "resolve_labels",
    "SIDECAR_PATTERNS",
    "sidecar_candidates",
    "sidecar_labels",
]

#: Keys under which metadata dictionaries hold the label list (first present wins).
LABEL_KEYS: tuple[str, ...] = ("labels", "class_names", "classes", "names")
#: Names of label files inside a TorchScript archive's ``extra/`` folder.
TORCHSCRIPT_EXTRA_FILES: tuple[str, ...] = ("labels.json", "labels.txt")
#: Names of associated label files inside a TF Lite file (TF Lite Metadata).
TFLITE_ASSOCIATED_FILES: tuple[str, ...] = ("labels.json", "labels.txt", "labelmap.txt")
#: Label files larger than this are refused (a list of class names is a few KB).
MAX_LABEL_BYTES = 4 * 1024 * 1024

def how_to_give_labels(path: Path) -> str:
    """The three ways to label a model (and ``labels=``), with this file's sidecar names."""
    stem = path.stem
    return (
        "give labels in output order in one of three ways: (1) in the model file's own "
        "metadata (ONNX metadata_props['labels'], TorchScript "
        "_extra_files={'labels.txt': ...}, a Keras archive's metadata.json 'labels'); "
        f"(2) a sidecar file next to the weights: '{stem}.labels.txt' or 'labels.txt' (one "
        f"label per line) or '{stem}.labels.json' (a JSON list); (3) a PAD model record "
        "(CustomModelAdapter.from_pad_model(model_id)); or pass labels=[...] explicitly"
    )


class UnlabelledModelWarning(UserWarning):
    """A classifier has no labels anywhere; its predictions are class indices."""


@dataclass(frozen=True)
class LabelSource:
    """Labels (as found, before standardisation) and where they came from.

    ``kind`` is ``explicit``, ``pad_record``, ``embedded``, ``sidecar``, ``class_index``
    (none found) or ``not_applicable`` (regression). ``where`` is machine-independent (a
    file name relative to the model's folder, a metadata key): it enters the signature, so
    the same model and labels hash the same on every machine. ``path`` is the absolute
    location for lineage. ``sha256`` hashes the source's content (a sidecar's bytes).
    """

    labels: tuple[str, ...] | None
    kind: str
    where: str
    sha256: str
    path: str | None = None

    def signature_part(self) -> list[str]:
        return [self.kind, self.where, self.sha256]

    def lineage(self) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where, "path": self.path,
                "sha256": self.sha256}


# -------------------------------------------------------------------------------- parsing
def _from_json_value(value: Any, where: str) -> list[str]:
    if isinstance(value, Mapping):
        for key in LABEL_KEYS:
            if key in value:
                return _from_json_value(value[key], f"{where}[{key!r}]")
        try:
            indexed = {int(k): v for k, v in value.items()}
        except (TypeError, ValueError):
            raise ModelError(
                f"{where}: expected a list of labels, an object with one of {list(LABEL_KEYS)}, "
                f"or an index -> label map, got an object with keys {list(value)[:5]}"
            ) from None
        if sorted(indexed) != list(range(len(indexed))):
            raise ModelError(
                f"{where}: an index -> label map must have the indices 0..{len(indexed) - 1} "
                f"exactly once, got {sorted(indexed)[:10]}"
            )
        value = [indexed[i] for i in range(len(indexed))]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ModelError(f"{where}: expected a list of labels, got {type(value).__name__}")
    bad = [v for v in value if not isinstance(v, (str, int)) or isinstance(v, bool)]
    if bad:
        raise ModelError(f"{where}: labels must be strings (or integers), got {bad[:3]!r}")
    return [str(v) for v in value]


def parse_label_data(data: bytes | str, where: str, fmt: str = "auto") -> list[str]:
    """Labels from a file's or metadata value's content.

    ``fmt``: ``json``, ``text`` (one label per line) or ``auto`` (metadata values: JSON, then
    a Python literal as some exporters write dicts, then lines, then comma-separated).
    ``ast.literal_eval`` evaluates literals only, never code.
    """
    if isinstance(data, bytes):
        if len(data) > MAX_LABEL_BYTES:
            raise ModelError(f"{where}: {len(data)} bytes is too large for a label list")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ModelError(f"{where}: labels must be UTF-8 text ({exc})") from exc
    else:
        text = data
    labels: list[str]
    if fmt == "json":
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ModelError(f"{where}: not valid JSON ({exc})") from exc
        labels = _from_json_value(value, where)
    elif fmt == "text":
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        stripped = text.strip()
        value: Any = None
        if stripped[:1] in "[{":
            try:
                value = json.loads(stripped)
            except ValueError:
                try:
                    value = ast.literal_eval(stripped)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    value = None
        if value is not None:
            labels = _from_json_value(value, where)
        elif "\n" in stripped:
            labels = [line.strip() for line in stripped.splitlines() if line.strip()]
        else:
            labels = [part.strip() for part in stripped.split(",") if part.strip()]
    if not labels:
        raise ModelError(f"{where}: holds no labels (expected one label per class)")
    empty = [i for i, x in enumerate(labels) if not str(x).strip()]
    if empty:
        raise ModelError(f"{where}: labels at positions {empty[:5]} are empty")
    return labels


# -------------------------------------------------------------------------------- ONNX
def _varint(fh: IO[bytes]) -> int | None:
    shift = result = 0
    while True:
        b = fh.read(1)
        if not b:
            return None if shift == 0 else -1
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            return -1


def _string_fields(buf: bytes) -> dict[int, bytes]:
    """Length-delimited fields of a small message (a StringStringEntryProto)."""
    import io

    out: dict[int, bytes] = {}
    fh = io.BytesIO(buf)
    while (tag := _varint(fh)) is not None:
        if tag < 0:
            break
        field, wire = tag >> 3, tag & 7
        if wire == 2:
            n = _varint(fh)
            if n is None or n < 0:
                break
            out[field] = fh.read(n)
        elif wire == 0:
            _varint(fh)
        elif wire in (1, 5):
            fh.read(8 if wire == 1 else 4)
        else:
            break
    return out


def onnx_metadata(path: Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file, read from the protobuf's top level.

    ModelProto field 14 is ``repeated StringStringEntryProto metadata_props`` (key = 1,
    value = 2). Other fields, the graph included, are skipped by seeking, so a large model
    is not read into memory. A file that is not a well-formed protobuf gives ``{}`` (the
    loader reports it properly when the model is run).
    """
    props: dict[str, str] = {}
    size = path.stat().st_size
    with open(path, "rb") as fh:
        while (tag := _varint(fh)) is not None:
            if tag <= 0:
                return {}
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                if _varint(fh) is None:
                    return {}
            elif wire == 1:
                fh.seek(8, 1)
            elif wire == 5:
                fh.seek(4, 1)
            elif wire == 2:
                n = _varint(fh)
                if n is None or n < 0 or fh.tell() + n > size:
                    return {}
                if field == 14 and n <= MAX_LABEL_BYTES:
                    entry = _string_fields(fh.read(n))
                    try:
                        props[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
                    except UnicodeDecodeError:
                        continue
                else:
                    fh.seek(n, 1)
            else:
                return {}
    return props


# -------------------------------------------------------------------------------- embedded
def _zip_read(path: Path, member: str) -> bytes:
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
        if info.file_size > MAX_LABEL_BYTES:
            raise ModelError(f"{path}!{member}: {info.file_size} bytes is too large for labels")
        return zf.read(member)


def _source(labels: list[str], kind: str, where: str, content: bytes, path: Path
            ) -> LabelSource:
    return LabelSource(tuple(labels), kind, where, sha256_bytes(content), str(path.resolve()))


def _first_key(mapping: Any) -> str | None:
    if isinstance(mapping, Mapping):
        for key in LABEL_KEYS:
            if key in mapping:
                return key
    return None


def embedded_labels(path: Path, kind: str) -> LabelSource | None:
    """Labels stored inside the model file itself, or None."""
    name = path.name
    if kind == "onnx":
        props = onnx_metadata(path)
        key = _first_key(props)
        if key is None:
            return None
        where = f"metadata_props[{key!r}]"
        value = props[key].encode("utf-8")
        labels = parse_label_data(value, f"{name} {where}")
        return _source(labels, "embedded", where, value, path)
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as zf:
        members = zf.namelist()
    if kind == "torch":
        for extra in TORCHSCRIPT_EXTRA_FILES:
            hits = [m for m in members if m.endswith(f"/extra/{extra}")]
            if hits:
                data = _zip_read(path, hits[0])
                where = f"extra/{extra}"
                fmt = "json" if extra.endswith(".json") else "text"
                labels = parse_label_data(data, f"{name} {where}", fmt)
                return _source(labels, "embedded", where, data, path)
        return None
    if kind == "tflite":
        for assoc in TFLITE_ASSOCIATED_FILES:
            if assoc in members:
                data = _zip_read(path, assoc)
                where = f"associated file {assoc}"
                fmt = "json" if assoc.endswith(".json") else "text"
                labels = parse_label_data(data, f"{name} {where}", fmt)
                return _source(labels, "embedded", where, data, path)
        return None
    if kind == "keras":
        for member in ("metadata.json", "config.json"):
            if member not in members:
                continue
            with zipfile.ZipFile(path) as zf:
                data = zf.read(member)  # config.json is the architecture: no label-size cap
            try:
                doc = json.loads(data)
            except ValueError:
                continue
            inner = doc.get("config") if isinstance(doc, Mapping) else None
            for scope, obj in (("", doc), ("config.", inner)):
                key = _first_key(obj)
                if key is not None:
                    where = f"{member} {scope}{key}"
                    value = canonical_json(obj[key]).encode("utf-8")  # type: ignore[index]
                    labels = _from_json_value(obj[key], f"{name} {where}")  # type: ignore[index]
                    return _source(labels, "embedded", where, value, path)
        return None
    return None


# -------------------------------------------------------------------------------- sidecars
#: Sidecar file names, in the order they are tried; ``{stem}`` is the model file's stem.
SIDECAR_PATTERNS: tuple[str, ...] = ("{stem}.labels.json", "{stem}.labels.txt", "labels.txt")


def sidecar_candidates(path: Path) -> list[tuple[str, Path]]:
    """(pattern, file) of every sidecar label file for ``path``, in the order tried."""
    return [(pattern, path.with_name(pattern.format(stem=path.stem)))
            for pattern in SIDECAR_PATTERNS]


def sidecar_labels(path: Path) -> LabelSource | None:
    """Labels from the first sidecar file that exists next to ``path``, or None."""
    for pattern, candidate in sidecar_candidates(path):
        if not candidate.is_file():
            continue
        if candidate.stat().st_size > MAX_LABEL_BYTES:
            raise ModelError(f"{candidate}: too large for a label list")
        data = candidate.read_bytes()
        fmt = "json" if candidate.suffix == ".json" else "text"
        labels = parse_label_data(data, str(candidate), fmt)
        # The pattern, not the file name, enters the signature: renaming a model together
        # with its sidecar keeps the signature; the content hash tracks what matters.
        return _source(labels, "sidecar", pattern, data, candidate)
    return None


# -------------------------------------------------------------------------------- resolution
def _record_source(record: Mapping[str, Any]) -> LabelSource | None:
    raw = record.get("labels")
    if not raw:
        return None
    ident = record.get("id", record.get("name", "?"))
    where = f"PAD model record {ident}"
    labels = _from_json_value(raw, where)
    return LabelSource(tuple(labels), "pad_record", where,
                       sha256_bytes(canonical_json(labels).encode("utf-8")), None)


def resolve_labels(path: Path, kind: str, explicit: Sequence[Any] | None = None,
                   record: Mapping[str, Any] | None = None) -> LabelSource:
    """The label source that applies to a classifier file (see the module docstring)."""
    if explicit is not None:
        labels = [str(x) for x in explicit]
        if not labels:
            raise ModelError(f"{path}: labels= is empty; pass the class names in output order "
                             "or leave labels out to have them found")
        return LabelSource(tuple(labels), "explicit", "labels=",
                           sha256_bytes(canonical_json(labels).encode("utf-8")), None)
    found = [s for s in (
        _record_source(record) if record else None,
        embedded_labels(path, kind),
        sidecar_labels(path),
    ) if s is not None]
    if not found:
        return LabelSource(None, "class_index", "none", sha256_bytes(b""), None)
    chosen = found[0]
    mine = [standardize_label(x) for x in chosen.labels or ()]
    for other in found[1:]:
        theirs = [standardize_label(x) for x in other.labels or ()]
        if theirs != mine:
            raise ModelError(
                f"{path}: labels from {describe_source(chosen)} ({len(mine)}: {mine[:4]}...) "
                f"disagree with {describe_source(other)} ({len(theirs)}: {theirs[:4]}...); one of "
                "them is stale: fix or remove it, or pass labels= explicitly"
            )
    return chosen


def describe_source(source: LabelSource) -> str:
    """Where labels came from, in words for messages."""
    if source.kind == "embedded":
        return f"the model file's {source.where}"
    if source.kind == "sidecar":
        return f"sidecar {source.path}"
    if source.kind == "explicit":
        return "the labels= argument"
    return source.where
