"""Reads of the index for the code around the core, without SQL at the call site.

``select`` covers the plain reads (columns of one table, equality and a few typed filters,
one ``IN`` list chunked); the reads that need a join or a sub-query have a name of their
own. Column names are checked against the schema, so a typo is an error here rather than a
silently empty result; ``meta.<path>`` reads one field of an item's JSON metadata.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .fs import chunks

if TYPE_CHECKING:
    from .index import Index

#: Columns of each table (``store/index.py``'s SCHEMA and the retired-shards table).
COLUMNS = {
    "shards": ("shard", "path", "nbytes", "created"),
    "blobs": ("blob", "shard", "kind", "dtype", "shape", "nbytes"),
    "items": ("key", "layer", "blob", "shard", "meta", "created", "last_used"),
    "refs": ("name", "key", "updated", "shard"),
    "cards": ("dataset", "card_id", "raw_key", "status", "detail", "updated", "shard"),
    "retired_shards": ("shard", "path", "disposition", "retired_at", "reason"),
}
_TABLE_NAMES = {"retired_shards": "ops_retired_shards"}
_JSON_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class NotNull:
    """Filter: the column holds a value."""


@dataclass(frozen=True)
class Above:
    """Filter: the column is greater than ``value``."""

    value: float


@dataclass(frozen=True)
class Prefix:
    """Filter: a text column starts with ``value``, exactly and case-sensitively (a range
    on binary order, not ``LIKE``, whose ``_``/``%`` are wildcards)."""

    value: str


@dataclass(frozen=True)
class OneOf:
    """Filter: the column is one of ``values`` (queried in chunks of ``SQL_IN_CHUNK``)."""

    values: Sequence[Any]


def table_name(table: str) -> str:
    if table not in COLUMNS:
        raise ValueError(f"unknown index table {table!r}; expected one of {sorted(COLUMNS)}")
    return _TABLE_NAMES.get(table, table)


def _expr(table: str, column: str) -> str:
    if column.startswith("meta.") and table == "items":
        path = column[len("meta."):]
        if not _JSON_PATH.match(path):
            raise ValueError(f"bad metadata path {path!r}")
        return f"json_extract(meta, '$.{path}')"
    if column == "len(meta)" and table == "items":
        return "length(meta)"
    if column not in COLUMNS[table]:
        raise ValueError(f"table {table!r} has no column {column!r}")
    return column


def _where(table: str, where: Mapping[str, Any]) -> tuple[list[str], list[Any], str | None,
                                                          Sequence[Any]]:
    parts: list[str] = []
    params: list[Any] = []
    in_expr: str | None = None
    in_values: Sequence[Any] = ()
    for column, cond in where.items():
        expr = _expr(table, column)
        if isinstance(cond, NotNull):
            parts.append(f"{expr} IS NOT NULL")
        elif isinstance(cond, Above):
            parts.append(f"{expr} > ?")
            params.append(cond.value)
        elif isinstance(cond, Prefix):
            parts.append(f"{expr} >= ? AND {expr} < ?")
            params.extend((cond.value, cond.value + "\U0010ffff"))
        elif isinstance(cond, OneOf):
            if in_expr is not None:
                raise ValueError("select takes one OneOf filter")
            in_expr, in_values = expr, list(dict.fromkeys(cond.values))
        else:
            parts.append(f"{expr} = ?")
            params.append(cond)
    return parts, params, in_expr, in_values


def select(index: Index, table: str, *columns: str, distinct: bool = False,
           limit: int | None = None, **where: Any) -> list[tuple]:
    """Rows of ``columns`` from ``table`` whose columns match ``where`` (a value for
    equality, or ``NotNull()``/``Above(x)``/``Prefix(s)``/``OneOf(values)``)."""
    cols = ", ".join(_expr(table, c) for c in columns)
    parts, params, in_expr, in_values = _where(table, where)
    head = f"SELECT {'DISTINCT ' if distinct else ''}{cols} FROM {table_name(table)}"
    tail = f" LIMIT {int(limit)}" if limit is not None else ""
    if in_expr is None:
        sql = head + (" WHERE " + " AND ".join(parts) if parts else "") + tail
        return index.query(sql, params)
    out: list[tuple] = []
    for part in chunks(in_values):
        cond = [*parts, f"{in_expr} IN ({','.join('?' * len(part))})"]
        out += index.query(head + " WHERE " + " AND ".join(cond) + tail, [*params, *part])
    return out


def has_table(index: Index, table: str) -> bool:
    return bool(index.query("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                            (table_name(table),)))


def count(index: Index, table: str) -> int:
    return int(index.query(f"SELECT COUNT(*) FROM {table_name(table)}")[0][0])


# ---------------------------------------------------------------------------------------
# reads that join or nest
def orphan_blobs(index: Index) -> list[str]:
    """Blobs no item references."""
    return [b for (b,) in index.query("SELECT blob FROM blobs WHERE blob NOT IN "
                                      "(SELECT blob FROM items WHERE blob IS NOT NULL)")]


def items_without_blob(index: Index) -> list[str]:
    """Items whose payload row is missing (their blob is in no indexed shard)."""
    return [k for (k,) in index.query("SELECT key FROM items WHERE blob IS NOT NULL AND blob "
                                      "NOT IN (SELECT blob FROM blobs)")]


def item_payload_bytes(index: Index, keys: Sequence[str]) -> dict[str, int]:
    """key -> payload size of each item of ``keys`` that has a payload."""
    out: dict[str, int] = {}
    for part in chunks(list(dict.fromkeys(keys))):
        out.update(index.query(
            "SELECT i.key, b.nbytes FROM items i JOIN blobs b ON b.blob = i.blob "
            f"WHERE i.key IN ({','.join('?' * len(part))})", part))
    return out


def items_with_payload_in(index: Index, shards: Sequence[str]) -> list[str]:
    """Keys of the items whose payload is stored in one of ``shards``."""
    out: list[str] = []
    for part in chunks(list(dict.fromkeys(shards))):
        out += [k for (k,) in index.query(
            "SELECT i.key FROM items i JOIN blobs b ON b.blob = i.blob "
            f"WHERE b.shard IN ({','.join('?' * len(part))})", part)]
    return out


def rows_in_shard(index: Index, shard: str) -> int:
    """How many blob, item, ref and card rows still point at ``shard``."""
    return int(index.query(
        "SELECT (SELECT COUNT(*) FROM blobs WHERE shard=?) + (SELECT COUNT(*) FROM items "
        "WHERE shard=?) + (SELECT COUNT(*) FROM refs WHERE shard=?) + (SELECT COUNT(*) "
        "FROM cards WHERE shard=?)", (shard,) * 4)[0][0])


def each(rows: Sequence[tuple]) -> Iterator[Any]:
    """The single column of one-column rows."""
    return (r[0] for r in rows)
