"""Cursors, runs and exchanged files: where each read resumes and how far each run and file got."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    select,
    update,
)

from ..model import Cursor
from . import schema as t
from .base import StoreBase
from .rows import _aware, _now


class Runs(StoreBase):
    """Cursors, runs and the files table."""

    # -- cursors --------------------------------------------------------------------------
    def get_cursor(self, name: str) -> Cursor | None:
        with self.begin() as conn:
            row = conn.execute(select(t.cursors).where(t.cursors.c.name == name)).first()
        if row is None:
            return None
        return Cursor(at=_aware(row.at), tie_id=row.tie_id, data=row.data or {})

    def set_cursor(self, conn: Connection, name: str, cursor: Cursor) -> None:
        stmt = self._insert(t.cursors).values(
            name=name, at=cursor.at, tie_id=cursor.tie_id, data=dict(cursor.data),
            updated_at=_now())
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={"at": cursor.at, "tie_id": cursor.tie_id, "data": dict(cursor.data),
                  "updated_at": _now()}))

    def clear_cursor(self, conn: Connection, name: str) -> None:
        conn.execute(t.cursors.delete().where(t.cursors.c.name == name))

    def cursors(self) -> dict[str, Cursor]:
        with self.begin() as conn:
            rows = conn.execute(select(t.cursors)).all()
        return {row.name: Cursor(at=_aware(row.at), tie_id=row.tie_id, data=row.data or {})
                for row in rows}


    # -- runs -----------------------------------------------------------------------------
    @staticmethod
    def new_run_id() -> str:
        """A run id: its start time (sortable), and four random hex digits."""
        return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f") + "-" + uuid.uuid4().hex[:4]

    def start_run(self, mode: str, *, full: bool, dry_run: bool) -> str:
        run_id = self.new_run_id()
        with self.begin() as conn:
            conn.execute(t.runs.insert().values(id=run_id, mode=mode, full=full, dry_run=dry_run,
                                                started_at=_now(), status="running", stats={}))
        return run_id

    def finish_run(self, run_id: str, status: str, stats: dict[str, Any]) -> None:
        with self.begin() as conn:
            plain = json.loads(json.dumps(stats, default=str))
            conn.execute(update(t.runs).where(t.runs.c.id == run_id).values(
                finished_at=_now(), status=status, stats=plain))

    def runs(self, limit: int = 10) -> list[dict[str, Any]]:
        with self.begin() as conn:
            rows = conn.execute(select(t.runs).order_by(t.runs.c.started_at.desc())
                                .limit(limit)).all()
        return [dict(row._mapping) for row in rows]


    # -- files ----------------------------------------------------------------------------
    def file(self, name: str) -> dict[str, Any] | None:
        with self.begin() as conn:
            row = conn.execute(select(t.files).where(t.files.c.name == name)).first()
        return dict(row._mapping) if row else None

    def files_in(self, direction: str, statuses: Sequence[str]) -> list[dict[str, Any]]:
        with self.begin() as conn:
            rows = conn.execute(select(t.files).where(and_(
                t.files.c.direction == direction, t.files.c.status.in_(statuses)))
                .order_by(t.files.c.updated_at)).all()
        return [dict(row._mapping) for row in rows]

    def set_file(self, conn: Connection, name: str, *, direction: str, run_id: str,
                 status: str, rows: int = 0, sha256: str = "",
                 info: dict[str, Any] | None = None) -> None:
        values = {"direction": direction, "run_id": run_id, "status": status, "rows": rows,
                  "sha256": sha256, "info": info or {}, "updated_at": _now()}
        stmt = self._insert(t.files).values(name=name, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=values))

