"""Where a sync writes, apart from where it keeps its books.

A `Sink` takes one entity's staged delta (this run's, in Postgres: usersync.load.stage) to the target and
returns the figures of the write. `PostgresSink` is the write into the staging database's own tables
(usersync.load.upsert). Another target (Grist) is another Sink over the same staged delta.

`Bookkeeping` is the Postgres schema holding a sync's runs (sync_runs: reports, watermarks, failures) and its
quarantine: the target's own database and schema for a Postgres sync, any other for a sync whose target is
not Postgres.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from usersync import load
from usersync.db import TargetDb
from usersync.entity import Entity


@dataclass(frozen=True)
class Run:
    """What one run's write needs to know (see usersync.load.upsert for each)."""

    run_id: str
    full_refresh: bool = False  # the delta holds everything: apply the entity's deletion policy to the rest
    dry_run: bool = False
    max_delete_share: float = 0.10
    fetch_started: float | None = None  # epoch seconds
    moves_watermark: bool = True
    watermark_upto: Any = None


class Sink(Protocol):
    def write(self, entity: Entity, run: Run) -> dict[str, Any]:
        """Apply the entity's staged delta of `run` to the target; the figures (inserted, updated, ...)."""
        ...


class PostgresSink:
    """The entity's table in the staging database: the set-based, changed-only upsert of usersync.load."""

    def __init__(self, db: TargetDb):
        self.db = db

    def write(self, entity: Entity, run: Run) -> dict[str, Any]:
        return load.upsert(self.db, entity, **dataclasses.asdict(run))  # Run names upsert's arguments


class Bookkeeping(TargetDb):
    """A Postgres connection and schema holding sync_runs and quarantine (include/sql/common), which may
    differ from the target's: what report.publish, RunFailed and the watermark read and write."""

    def __init__(self, conn_id: str, schema: str):
        super().__init__(conn_id, schema, sync="common")

    @classmethod
    def of(cls, db: TargetDb) -> Bookkeeping:
        """The books of a sync staging in `db`: its `books` schema (by default, its own schema)."""
        return cls(db.conn_id, db.books)

    def last_watermark(self, dag_id: str) -> dict[str, Any]:
        """The watermark of the DAG's last run that stored one, and when its last full read started."""
        return self.query("last_watermark", {"dag_id": dag_id})
