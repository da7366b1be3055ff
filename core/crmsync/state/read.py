"""The operator's read side of the state store: every query the web console and
``crmsync contact`` ask, read-only, in SQLAlchemy Core over :mod:`.schema`.

Nothing here writes. Each function takes the :class:`~crmsync.state.StateStore` (for its
engine) and returns plain JSON-able dicts and lists: datetimes as ISO 8601 text in UTC,
groups as sorted lists. The console renders them as HTML, ``crmsync contact --json``
prints them as they are.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select

from ..model import utc
from . import schema as t

if TYPE_CHECKING:
    from .store import StateStore

__all__ = [
    "STORY_KEYS",
    "contact_story",
    "dead_letters",
    "failed_writes",
    "find_contacts",
    "health_facts",
    "iso",
    "run_counts",
    "runs",
]

# The keys of one contact's story, in the order the console and the command show them.
STORY_KEYS = ("contact", "identities", "lists", "fields", "journal", "inbox",
              "dead_letters", "failed_writes")

_REPORT_RUNS = 30  # how many recent runs' failed-records reports a story looks through


def iso(value: datetime | None) -> str | None:
    """A stored time as ISO 8601 in UTC (SQLite hands back naive datetimes)."""
    return None if value is None else utc(value).isoformat()


def _groups(value: Any) -> list[str]:
    """A snapshot's groups, sorted: stored as a JSON list, or (before that) as text,
    comma-separated or a marker character and a JSON array."""
    if isinstance(value, list):
        return sorted(str(name) for name in value)
    text = str(value or "")
    if text.startswith("\x1e"):
        return sorted(json.loads(text[1:]))
    return sorted(filter(None, text.split(",")))


def find_contacts(store: StateStore, query: str, *, systems: Sequence[str] = (),
                  limit: int = 20) -> list[dict[str, Any]]:
    """The contacts an operator means by ``query``: an address (current or former, any
    case), or a record id in any system (a CRM id, an ESP id), or a contact key.
    ``systems``: the connectors' names, so that an id is looked up on the id map's
    primary key (without them, in every system).

    Each as ``{"key", "email", "matched"}`` (``matched``: how it was found), the most
    recently changed first.
    """
    text = query.strip()
    if not text:
        return []
    c, m, j = t.contacts, t.id_map, t.journal
    found: dict[str, str] = {}
    with store.engine.connect() as conn:
        if "@" in text:
            address = text.lower()
            for (key,) in conn.execute(select(c.c.key).where(c.c.email == address)
                                       .order_by(c.c.updated_at.desc()).limit(limit)):
                found.setdefault(key, "email")
            if not found:
                # the journal's address column has no index: read only for an address
                # nobody holds now (a former one)
                for (key,) in conn.execute(select(j.c.contact_key).where(j.c.email == address)
                                           .group_by(j.c.contact_key).limit(limit)):
                    found.setdefault(key, "former email")
        else:
            by_id = select(m.c.system, m.c.contact_key).where(m.c.record_id == text)
            if systems:
                by_id = by_id.where(m.c.system.in_(list(systems)))
            for system, key in conn.execute(by_id.limit(limit)):
                found.setdefault(key, f"{system} id")
            if conn.execute(select(c.c.key).where(c.c.key == text)).first() is not None:
                found.setdefault(text, "contact key")
        if not found:
            return []
        rows = conn.execute(select(c.c.key, c.c.email, c.c.updated_at)
                            .where(c.c.key.in_(list(found)))
                            .order_by(c.c.updated_at.desc())).all()
    return [{"key": row.key, "email": row.email, "matched": found[row.key]} for row in rows]


def contact_story(store: StateStore, key: str, *, report_dir: Path | None = None,
                  limit: int = 1000) -> dict[str, Any] | None:
    """Everything crmsync holds about one contact (``None``: no such contact).

    ``contact``: key, current email, deleted at the ESP, last change; ``identities``:
    the record id per system; ``lists``: the status crmsync holds per list with its
    groups, what the CRM last said, when and from which source; ``fields``: the mapped
    fields last sent to the ESP; ``journal``: every status change with its source and
    reason, oldest first; ``inbox``: the real-time events received for any of the
    contact's addresses; ``dead_letters``: those of its events and writes that failed
    every attempt; ``failed_writes``: its writes refused by a side (the outbox) and its
    rows in the failed-records reports of the last runs (``report_dir``).
    """
    c, m, s, j = t.contacts, t.id_map, t.snapshots, t.journal
    with store.engine.connect() as conn:
        row = conn.execute(select(c).where(c.c.key == key)).first()
        if row is None:
            return None
        identities = [{"system": system, "record_id": record_id}
                      for system, record_id in conn.execute(
                          select(m.c.system, m.c.record_id).where(m.c.contact_key == key)
                          .order_by(m.c.system, m.c.record_id))]
        lists = [{"list_id": snap.list_id, "status": snap.status,
                  "groups": _groups(snap.groups), "crm_status": snap.crm_status,
                  "changed_at": iso(snap.changed_at), "source": snap.source}
                 for snap in conn.execute(select(s).where(s.c.contact_key == key)
                                          .order_by(s.c.list_id))]
        journal = [_journal(entry) for entry in conn.execute(
            select(j).where(j.c.contact_key == key).order_by(j.c.id).limit(limit))]
        addresses = sorted({row.email, *(entry["email"] for entry in journal)})
        inbox_rows = conn.execute(select(t.inbox).where(t.inbox.c.contact.in_(addresses))
                                  .order_by(t.inbox.c.id).limit(limit)).all()
        inbox = [_inbox(event) for event in inbox_rows]
        d, o = t.dead_letters, t.outbox
        # from the (small) dead letters to the outbox by its primary key: the outbox has
        # no index on the contact
        dead_writes = select(d.c.id).join(o, o.c.id == d.c.origin_id).where(and_(
            d.c.origin == "outbox", o.c.contact_key == key))
        dead = [_dead(letter) for letter in conn.execute(select(d).where(or_(
            and_(d.c.origin == "inbox", d.c.origin_id.in_([e["id"] for e in inbox] or [-1])),
            d.c.id.in_(dead_writes))).order_by(d.c.id))]
        failed = [_outbox(r) for r in conn.execute(
            select(t.outbox).where(and_(t.outbox.c.contact_key == key,
                                        t.outbox.c.status.in_(("failed", "dead"))))
            .order_by(t.outbox.c.id))]
        reports = [str(r.stats["report"]) for r in conn.execute(
            select(t.runs.c.stats).order_by(t.runs.c.started_at.desc()).limit(_REPORT_RUNS))
            if isinstance(r.stats, dict) and r.stats.get("report")]
    failed += _report_rows(reports, set(addresses), report_dir)
    return {
        "contact": {"key": row.key, "email": row.email, "deleted": bool(row.deleted),
                    "updated_at": iso(row.updated_at), "former_emails": [
                        a for a in addresses if a != row.email]},
        "identities": identities,
        "lists": lists,
        "fields": dict(row.fields_json) if row.fields_json else {},
        "journal": journal,
        "inbox": inbox,
        "dead_letters": dead,
        "failed_writes": failed,
    }


def _journal(row: Any) -> dict[str, Any]:
    return {"id": row.id, "at": iso(row.at), "run_id": row.run_id, "email": row.email,
            "list_id": row.list_id, "old_status": row.old_status,
            "new_status": row.new_status, "applied_to": row.applied_to,
            "source": row.source, "reason": row.reason, "event_id": row.event_id}


def _inbox(row: Any) -> dict[str, Any]:
    return {"id": row.id, "endpoint": row.endpoint, "received_at": iso(row.received_at),
            "status": row.status, "attempts": row.attempts, "last_error": row.last_error,
            "changes": row.payload}


def _dead(row: Any) -> dict[str, Any]:
    return {"id": row.id, "origin": row.origin, "origin_id": row.origin_id,
            "endpoint": row.endpoint, "error": row.error, "attempts": row.attempts,
            "died_at": iso(row.died_at), "replayed": bool(row.replayed),
            "payload": row.payload, "contact": _payload_email(row.payload)}


def _outbox(row: Any) -> dict[str, Any]:
    return {"source": "outbox", "id": row.id, "side": row.target, "run_id": row.run_id,
            "status": row.status, "attempts": row.attempts, "error": row.last_error,
            "created_at": iso(row.created_at), "email": _payload_email(row.payload),
            "list_id": None}


def _payload_email(payload: Any) -> str:
    """The address a stored event or write is about (a change, or a list of them)."""
    for item in payload if isinstance(payload, list) else [payload]:
        email = item.get("email") if isinstance(item, dict) else None
        if isinstance(email, str) and email:
            return email
    return ""


def _report_rows(reports: Iterable[str], addresses: set[str], report_dir: Path | None
                 ) -> list[dict[str, Any]]:
    """The contact's rows in the runs' failed-records CSV reports still on disk."""
    out: list[dict[str, Any]] = []
    for name in reports:
        path = Path(name)
        if not path.is_absolute() and report_dir is not None:
            path = report_dir / path
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                for record in csv.DictReader(handle):
                    if (record.get("email") or "").lower() in addresses:
                        out.append({"source": "report", "report": str(path),
                                    "run_id": path.stem.removeprefix("failed-"),
                                    "side": record.get("side"), "status": "failed",
                                    "email": record.get("email"),
                                    "list_id": record.get("list") or None,
                                    "error": record.get("reason"), "code": record.get("code")})
        except (OSError, UnicodeDecodeError, csv.Error):
            continue  # a report moved away or rotated: the state store still has the rest
    return out


def runs(store: StateStore, limit: int = 30) -> list[dict[str, Any]]:
    """The latest runs, newest first: id, mode, status, times, duration and counts."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.runs).order_by(t.runs.c.started_at.desc())
                            .limit(limit)).all()
    out = []
    for row in rows:
        stats = row.stats if isinstance(row.stats, dict) else {}
        started, finished = row.started_at, row.finished_at
        duration = stats.get("duration_s")
        if duration is None and finished is not None:
            duration = (utc(finished) - utc(started)).total_seconds()
        out.append({"id": row.id, "mode": row.mode, "full": bool(row.full),
                    "dry_run": bool(row.dry_run), "status": row.status,
                    "started_at": iso(started), "finished_at": iso(finished),
                    "duration_s": duration, **run_counts(stats),
                    "stats": stats, "plan": stats.get("plan") or {},
                    "report": stats.get("report")})
    return out


def run_counts(stats: dict[str, Any]) -> dict[str, int]:
    """A run's ``records`` (read, or events applied) and ``failures`` (records failed,
    events dead), whichever mode's counters it has."""
    return {"records": sum(int(stats.get(k) or 0) for k in (
                "crm_read", "esp_unsubscribes_read", "applied")),
            "failures": int(stats.get("failed") or 0) + int(stats.get("dead") or 0)}


def dead_letters(store: StateStore, *, include_replayed: bool = False,
                 origin: str | None = None, text: str = "", limit: int = 500
                 ) -> list[dict[str, Any]]:
    """Dead letters, newest first, filtered by origin (``inbox`` / ``outbox``) and by a
    piece of text in their error or endpoint."""
    d = t.dead_letters
    query = select(d).order_by(d.c.id.desc()).limit(limit)
    if not include_replayed:
        query = query.where(d.c.replayed.is_(False))
    if origin:
        query = query.where(d.c.origin == origin)
    if text:
        like = f"%{text}%"
        query = query.where(or_(d.c.error.ilike(like), d.c.endpoint.ilike(like)))
    with store.engine.connect() as conn:
        return [_dead(row) for row in conn.execute(query)]


def failed_writes(store: StateStore, *, limit: int = 500) -> list[dict[str, Any]]:
    """Writes a side refused for good (the outbox's ``failed`` rows), newest first."""
    o = t.outbox
    with store.engine.connect() as conn:
        return [_outbox(row) for row in conn.execute(
            select(o).where(o.c.status == "failed").order_by(o.c.id.desc()).limit(limit))]


def health_facts(store: StateStore, *, now: datetime | None = None) -> dict[str, Any]:
    """What the Health page shows from the state store: the cursors and how far behind
    each is, the inbox by status and its oldest pending event's age, pending writes,
    dead letters, and the last successful run per mode."""
    now = now or datetime.now(UTC)
    i, o, r = t.inbox, t.outbox, t.runs
    with store.engine.connect() as conn:
        cursors = [{"name": row.name, "at": iso(row.at), "tie_id": row.tie_id,
                    "updated_at": iso(row.updated_at),
                    "lag_s": round((now - utc(row.at)).total_seconds(), 1)}
                   for row in conn.execute(select(t.cursors).order_by(t.cursors.c.name))]
        inbox = {status: count for status, count in conn.execute(
            select(i.c.status, func.count()).group_by(i.c.status))}
        oldest = conn.execute(select(func.min(i.c.received_at))
                              .where(i.c.status == "pending")).scalar()
        pending = {target: count for target, count in conn.execute(
            select(o.c.target, func.count()).where(o.c.status == "pending")
            .group_by(o.c.target))}
        dead = conn.execute(select(func.count()).select_from(t.dead_letters)
                            .where(t.dead_letters.c.replayed.is_(False))).scalar()
        last_ok = {mode: iso(at) for mode, at in conn.execute(
            select(r.c.mode, func.max(r.c.finished_at))
            .where(and_(r.c.status == "succeeded", r.c.dry_run.is_(False)))
            .group_by(r.c.mode))}
    return {"cursors": cursors, "inbox": inbox,
            "inbox_oldest_pending_s": None if oldest is None else round(
                (now - utc(oldest)).total_seconds(), 1),
            "pending_writes": pending, "dead_letters": int(dead or 0),
            "last_success": last_ok}

