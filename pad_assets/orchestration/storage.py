"""Dagster's SQLite event log, with the per-event cost of a lab-scale backfill taken out.

Why: a card has one partition in each of 4-8 image assets, and Dagster's default SQLite
event log spends ~20 ms of wall time per (asset, partition) on an idle 2-core machine (47 ms
under load): for every event it creates a SQLAlchemy engine, opens the run's shard and the
index shard, commits each with an fsync, and closes them, and closing the last connection of
a WAL database checkpoints it (more fsyncs). Every asset partition pays that twice: a
``ASSET_MATERIALIZATION_PLANNED`` event when the run is created and the materialization.
At 8,001 cards x 8 assets that is ~21 minutes of bookkeeping per full run.

What this class changes, nothing else (same files, same schema, same queries; the UI, the
daemon and ``dagster`` CLI read it as the stock storage):

* **One engine per shard, kept open** (a small LRU of run shards plus the index): no engine
  construction, no open/close and no checkpoint per event. After a write to a run shard the
  shard file's mtime is touched, because the webserver's live run log watches that file
  (with the connection kept open, writes land in its ``-wal`` file).
* **``synchronous=NORMAL``** on those WAL connections: a commit is durable against a killed
  process (``kill -9`` loses nothing committed) and the database stays consistent on power
  loss, which may roll back the last few events. The pad cache itself stays fully fsynced;
  a lost event is re-recorded by the next run (``events.ChangeRecorder`` compares content
  keys, not event ids).
* **One planned event per asset and run** (a partitions subset) instead of one per partition,
  Dagster's own ``DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS`` mode, on by default here
  (``planned_event_subsets: false`` turns it off). Dagster's caveat: partitions of a run that
  fails are not shown as failed; they stay missing (the next run fills them).
* **Materializations written in batches** (``MATERIALIZATION_BATCH`` events): the image
  step yields one materialization per (asset, card), which Dagster stores one by one
  (``DAGSTER_EVENT_BATCH_SIZE`` batches only partitioned ``Output``s). They are held and
  written together: one transaction per shard, one insert per event, one upsert of the
  asset's latest-materialization row per asset (the stock storage rewrites that row, with
  the whole event serialized again, for every event: ~40 % of its cost per event). Held
  events are written before anything else is stored or read through this storage
  (``_connect``), so this process and the run log see them in order; another process (the
  webserver) sees them up to one batch late. A killed process loses the held events, like
  the power-cut case above: the next run re-records those partitions. ``store_event_batch``
  (``DAGSTER_EVENT_BATCH_SIZE`` > 0) takes the same path.

Configured in ``dagster.yaml`` (the demo writes it; see README, Dagster)::

    event_log_storage:
      module: pad_assets.orchestration.storage
      class: PadSqliteEventLogStorage
      config: {base_dir: /path/to/dagster_home/history/runs}
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as db
from dagster._config import BoolSource, StringSource
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from sqlalchemy.pool import StaticPool

#: run shards kept open at once (a webserver watching many runs re-opens older ones)
OPEN_RUN_SHARDS = 4
#: materializations held and written in one transaction (B6: 4 assets x 1,000 cards)
MATERIALIZATION_BATCH = 64


class PadSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` with kept-open connections and per-run planned events."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None,
                 planned_event_subsets: bool = True) -> None:
        self._engines: OrderedDict[str, db.engine.Engine] = OrderedDict()
        self._planned_event_subsets = planned_event_subsets
        self._tables: set[str] = set()
        self._held: list[EventLogEntry] = []
        self._held_lock = threading.RLock()  # taken before Dagster's _db_lock, never after
        self._index_cols: bool | None = None
        super().__init__(base_dir, inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"base_dir": StringSource, "planned_event_subsets": db_optional(BoolSource)}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None,  # type: ignore[override]
                          config_value: dict[str, Any]) -> PadSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    @property
    def supports_partition_subset_in_asset_materialization_planned_events(self) -> bool:
        return self._planned_event_subsets

    def has_table(self, table_name: str) -> bool:
        """Asked on every asset event (which optional tables exist); tables are only ever
        added, so a True answer is remembered instead of a new engine per question."""
        if table_name in self._tables:
            return True
        found = super().has_table(table_name)  # its own short-lived engine: no lock held
        if found:
            self._tables.add(table_name)
        return found

    def _engine(self, shard: str) -> db.engine.Engine:
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = db.create_engine(
            self.conn_string_for_shard(shard), poolclass=StaticPool,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False})
        db.event.listen(engine, "connect", _tune_connection)
        if shard not in self._initialized_dbs:
            self._initdb(engine, for_index_shard=shard == INDEX_SHARD_NAME)
            self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        run_shards = [s for s in self._engines if s != INDEX_SHARD_NAME]
        for old in run_shards[:-OPEN_RUN_SHARDS]:
            self._engines.pop(old).dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[db.engine.Connection]:  # type: ignore[override]
        if self._held:  # every read and write sees the held events first
            self.flush()
        with self._db_lock:
            engine = self._engine(shard)
            with engine.connect() as conn, conn.begin():
                yield conn
        if shard != INDEX_SHARD_NAME:
            _touch(self.path_for_shard(shard))

    def store_event(self, event: EventLogEntry) -> None:
        if _is_materialization(event):
            with self._held_lock:
                if self._held and self._held[0].run_id != event.run_id:
                    self.flush()
                self._held.append(event)
                if len(self._held) >= MATERIALIZATION_BATCH:
                    self.flush()
            return
        self.flush()  # storage ids follow the order events happened in
        super().store_event(event)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Batched events (Dagster batches partitioned ``Output``s' events when
        ``DAGSTER_EVENT_BATCH_SIZE`` > 0): materializations take the held path."""
        for event in events:
            self.store_event(event)

    def flush(self) -> None:
        """Write the held materializations (one transaction per shard)."""
        with self._held_lock:
            held, self._held = self._held, []
            if held:
                self._write_materializations(held)

    def _write_materializations(self, events: Sequence[EventLogEntry]) -> None:
        """What the stock ``store_event`` writes for each, with the asset row once per asset:
        the row holds the latest materialization, so the last event per asset decides it."""
        rows = [self._event_to_row(e) for e in events]
        insert = SqlEventLogStorageTable.insert()
        with self.run_connection(events[0].run_id) as conn:
            conn.execute(insert, rows)
        with self.index_transaction() as conn:
            ids = [conn.execute(insert, row).inserted_primary_key[0] for row in rows]
            self._store_asset_event_tags(conn, list(events), ids)
            latest: dict[str, tuple[EventLogEntry, int]] = {}
            for event, event_id in zip(events, ids, strict=True):
                latest[event.dagster_event.asset_key.to_string()] = (  # type: ignore[union-attr]
                    event, event_id)
            for event, event_id in latest.values():
                self._store_asset_event(conn, event, event_id)

    def _has_asset_key_index_cols_on_connection(self, conn: db.engine.Connection) -> bool:
        """Asked per asset event (a schema inspection each time); columns are only added."""
        if not self._index_cols:
            self._index_cols = super()._has_asset_key_index_cols_on_connection(conn)
        return self._index_cols

    def _dispose_engines(self) -> None:
        self.flush()
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def delete_events(self, run_id: str) -> None:
        self._dispose_engines()
        super().delete_events(run_id)

    def wipe(self) -> None:
        self._dispose_engines()
        super().wipe()

    def upgrade(self) -> None:
        self._dispose_engines()
        super().upgrade()

    def dispose(self) -> None:
        self._dispose_engines()
        super().dispose()


def instance_overrides(dagster_home: str | os.PathLike[str]) -> dict[str, Any]:
    """``dagster.yaml`` settings (or ``DagsterInstance.local_temp(overrides=...)``) that put
    this storage under ``dagster_home`` where the stock one keeps its files."""
    runs = os.path.join(os.path.abspath(dagster_home), "history", "runs")
    return {"event_log_storage": {"module": __name__, "class": "PadSqliteEventLogStorage",
                                  "config": {"base_dir": runs}}}


def dagster_yaml_block(dagster_home: str | os.PathLike[str]) -> str:
    """The same settings as ``dagster.yaml`` text."""
    cfg = instance_overrides(dagster_home)["event_log_storage"]
    return ("# Dagster's SQLite event log with kept-open connections and one planned event per\n"
            "# asset and run (pad_assets.orchestration.storage explains why).\n"
            "event_log_storage:\n"
            f"  module: {cfg['module']}\n  class: {cfg['class']}\n"
            f"  config:\n    base_dir: {json.dumps(cfg['config']['base_dir'])}\n")


def db_optional(source: Any) -> Any:
    from dagster import Field

    return Field(source, is_required=False, default_value=True)


def _is_materialization(event: EventLogEntry) -> bool:
    return bool(event.is_dagster_event and event.dagster_event
                and event.dagster_event.event_type_value
                == DagsterEventType.ASSET_MATERIALIZATION.value
                and event.dagster_event.asset_key)


def _tune_connection(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


def _touch(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # a deleted shard: nothing watches it
        os.utime(path)
