"""What every repository of the state store shares: the engine and its transactions."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    any_,
    bindparam,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError

from ..errors import StateError
from .rows import _CHUNK, BulkSql, _chunks


class StoreBase:
    """The engine, a transaction, the dialect's insert, the raw-row time format."""

    url: str
    engine: Engine
    dialect: str
    _sql: BulkSql
    _last_time: tuple[object, str]
    #: this thread's transaction that every :meth:`begin` joins (see
    #: :meth:`StateStore.contact_locks`' ``one_transaction``), if any
    _joined: threading.local

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        try:
            joined = getattr(self._joined, "conn", None)
            if joined is not None:
                yield joined  # committed (or rolled back) with the transaction it joins
                return
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise StateError(f"the state store failed: {str(exc).splitlines()[0]}") from None

    def _among(self, column: Any, values: Sequence[Any]) -> Any:
        """``column IN values``. On PostgreSQL one array parameter (``= ANY(%s)``): one
        statement text and one plan whatever the count, where an ``IN`` list is a
        statement per length, planned with the statistics of when it was prepared."""
        if self.dialect == "postgresql":
            return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
        return column.in_(values)

    @contextlib.contextmanager
    def _by_index(self, conn: Connection, rows: int) -> Iterator[None]:
        """PostgreSQL: plan the statements of the block, about ``rows`` rows, to look
        their rows up by index.

        A page's lookups (and the UPDATE of its contacts) name a few thousand rows of
        tables that grow to millions; with its default costs the planner reads the
        whole table for them (a sequential scan, a hash join) once they are a few
        percent of it, so a first full export slowed down as its tables grew. A few
        rows (a real-time event's) are looked up by index anyway: no settings then."""
        if self.dialect != "postgresql" or rows < 100:
            yield
            return
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; "
                             "SET LOCAL enable_mergejoin = off")
        yield  # (SET LOCAL: a failed block rolls back, and the settings with it)
        conn.exec_driver_sql("RESET enable_seqscan; RESET enable_hashjoin; "
                             "RESET enable_mergejoin")

    def _batches(self, values: Sequence[Any]) -> Iterator[Sequence[Any]]:
        """``values`` in chunks for :meth:`_among`: 500 on SQLite (its bound-parameter
        limit), 10,000 on PostgreSQL (one array each)."""
        return _chunks(values, _CHUNK if self.dialect != "postgresql" else 10_000)

    def _insert(self, table: Any) -> Any:
        return (pg_insert if self.dialect == "postgresql" else sqlite_insert)(table)

    def db_time(self, value: datetime) -> str:
        """``value`` as text the state store takes in a raw row (and JSON can hold)."""
        last = self._last_time  # a snapshot and its journal entry share one datetime
        if last[0] is value:
            return last[1]
        text = self._sql.time(value)
        self._last_time = (value, text)
        return text
