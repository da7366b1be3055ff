"""What every repository of the state store shares: the engine and its transactions."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError

from ..errors import StateError
from .rows import BulkSql


class StoreBase:
    """The engine, a transaction, the dialect's insert, the raw-row time format."""

    url: str
    engine: Engine
    dialect: str
    _sql: BulkSql
    _last_time: tuple[object, str]

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise StateError(f"the state store failed: {str(exc).splitlines()[0]}") from None

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
