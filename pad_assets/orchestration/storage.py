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
* **``store_event_batch``** in one transaction per shard (Dagster calls it for batched
  events when ``DAGSTER_EVENT_BATCH_SIZE`` > 0; the stock SQLite storage loops).

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
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as db
from dagster._config import BoolSource, StringSource
from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from sqlalchemy.pool import StaticPool

#: run shards kept open at once (a webserver watching many runs re-opens older ones)
OPEN_RUN_SHARDS = 4


class PadSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` with kept-open connections and per-run planned events."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None,
                 planned_event_subsets: bool = True) -> None:
        self._engines: OrderedDict[str, db.engine.Engine] = OrderedDict()
        self._planned_event_subsets = planned_event_subsets
        self._tables: set[str] = set()
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
        with self._db_lock:
            engine = self._engine(shard)
            with engine.connect() as conn, conn.begin():
                yield conn
        if shard != INDEX_SHARD_NAME:
            _touch(self.path_for_shard(shard))

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Batched asset events (Dagster only batches asset events) in one transaction per
        shard; anything else goes event by event."""
        if not events or any(
                not e.is_dagster_event or e.dagster_event_type not in ASSET_EVENTS
                or e.dagster_event_type in ASSET_CHECK_EVENTS
                or not e.dagster_event.asset_key  # type: ignore[union-attr]
                for e in events) or len({e.run_id for e in events}) != 1:
            super().store_event_batch(events)
            return
        statements = [self.prepare_insert_event(e) for e in events]
        with self.run_connection(events[0].run_id) as conn:
            for stmt in statements:
                conn.execute(stmt)
        with self.index_transaction() as conn:
            ids = [conn.execute(stmt).inserted_primary_key[0] for stmt in statements]
            self._store_asset_event_tags(conn, list(events), ids)
            for event, event_id in zip(events, ids, strict=True):
                self._store_asset_event(conn, event, event_id)

    def _dispose_engines(self) -> None:
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


def _tune_connection(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


def _touch(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # a deleted shard: nothing watches it
        os.utime(path)
