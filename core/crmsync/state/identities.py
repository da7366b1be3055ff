"""Identities: contact keys, record ids per system, the address, the fields last sent."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    delete,
    select,
    update,
)

from . import schema as t
from .base import StoreBase
from .rows import _now, new_contact_key


class Identities(StoreBase):
    """Who is who: contacts, their record ids per system, their fields as last sent."""

    # -- identities -----------------------------------------------------------------------
    def resolve(self, conn: Connection, items: Sequence[tuple[str, str | None, str]], *,
                hashes: dict[str, str | None] | None = None,
                deleted: set[str] | None = None,
                create: bool = True, move: bool = True
                ) -> list[tuple[str, bool, str | None]]:
        """Contact keys for ``(system, record_id, email)`` items: by id, then by email.

        Returns ``(key, created, previous_email)`` per item. A known id whose email
        changed keeps its key and the email is updated (``previous_email`` says what it
        was): an email change is never a new contact. ``hashes``, when given, receives
        each contact's recorded fields hash (the mapped fields last sent), read in the
        same queries; ``deleted`` receives the keys whose deletion was sent to
        the ESP (:meth:`mark_deleted`). ``create=False`` (a dry run) writes nothing:
        new contacts get keys that are not stored, and no address moves; ``move=False``
        (a run for some lists only) reports a changed address without recording it,
        so the next run for every list sends it again.
        """
        by_id: dict[tuple[str, str], str] = {}
        current: dict[str, str | None] = {}
        found_hashes: dict[str, str | None] = {} if hashes is None else hashes
        pairs = [(s, r) for s, r, _ in items if r]
        with self._by_index(conn, len(items)):  # the page's rows, not whole tables
            for chunk in self._batches(pairs):
                systems = sorted({s for s, _ in chunk})
                ids = sorted({r for _, r in chunk})
                query = (select(t.id_map.c.system, t.id_map.c.record_id, t.id_map.c.contact_key,
                                t.contacts.c.email, t.contacts.c.fields_hash, t.contacts.c.deleted)
                         .select_from(t.id_map.outerjoin(
                             t.contacts, t.contacts.c.key == t.id_map.c.contact_key))
                         .where(and_(self._among(t.id_map.c.system, systems),
                                     self._among(t.id_map.c.record_id, ids))))
                for system, record_id, key, email, fields_hash, gone in conn.execute(query):
                    by_id[(system, record_id)] = key
                    current[key] = email
                    found_hashes[key] = fields_hash
                    if gone and deleted is not None:
                        deleted.add(key)
            # Only records not known by id are looked up by email.
            emails = {e for s, r, e in items if not r or (s, r) not in by_id}
            by_email: dict[str, str] = {}
            for chunk in self._batches(sorted(emails)):
                for key, email, fields_hash, gone in conn.execute(
                        select(t.contacts.c.key, t.contacts.c.email, t.contacts.c.fields_hash,
                               t.contacts.c.deleted)
                        .where(self._among(t.contacts.c.email, chunk))
                        .order_by(t.contacts.c.updated_at)):
                    by_email[email] = key
                    found_hashes[key] = fields_hash
                    if gone and deleted is not None:
                        deleted.add(key)
        out: list[tuple[str, bool, str | None]] = []
        new_contacts: dict[str, str] = {}
        new_ids: dict[tuple[str, str], str] = {}
        moved: dict[str, str] = {}
        now = _now()
        for system, record_id, email in items:
            key = by_id.get((system, record_id)) if record_id else None
            created = False
            if key is not None:
                was = current.get(key)
                if was is not None and was != email:
                    moved.setdefault(key, was)
                    current[key] = email
            else:
                key = by_email.get(email)
                if key is None:
                    key = new_contact_key()
                    created = True
                    new_contacts[key] = email
                    by_email[email] = key
                if record_id:
                    by_id[(system, record_id)] = key
                    new_ids[(system, record_id)] = key
                    # a later item of this call with this id and another email is a move
                    current.setdefault(key, email)
            out.append((key, created, None))
        moved = {key: was for key, was in moved.items() if current[key] != was}
        if create:
            if new_contacts:
                stamp = self.db_time(now)
                self._sql.many(conn, "contacts", [(key, email, False, stamp)
                                                  for key, email in new_contacts.items()])
            if new_ids:
                self._sql.many(conn, "id_map", [(s, r, k) for (s, r), k in new_ids.items()])
            for key in moved if move else ():
                conn.execute(update(t.contacts).where(t.contacts.c.key == key)
                             .values(email=current[key], updated_at=now))
        if moved:
            out = [(key, created, moved.get(key)) for key, created, _ in out]
        return out

    def known(self, conn: Connection, items: Sequence[tuple[str, str | None, str]]
              ) -> list[tuple[str, str, bool] | None]:
        """The contact each deleted ``(system, record_id, email)`` record was, as ``(key,
        email crmsync holds, deletion sent)``, or ``None``: a read that never creates a
        contact nor moves an address (some CRMs report a deletion with a stand-in
        address, which is no email change).

        A record with an id is matched by that id only: a record crmsync never mapped
        is nobody it knows, whatever its address. When the contact is held by other
        records of the same system too (duplicates, a merge), the deleted record's id is
        unmapped and ``None`` returned: the person lives on in the others."""
        out: list[tuple[str, str, bool] | None] = []
        for system, record_id, email in items:
            if not record_id:
                row = conn.execute(select(t.contacts.c.key, t.contacts.c.email,
                                          t.contacts.c.deleted)
                                   .where(t.contacts.c.email == email)).first()
                out.append((row[0], row[1], bool(row[2])) if row is not None else None)
                continue
            row = conn.execute(
                select(t.id_map.c.contact_key, t.contacts.c.email, t.contacts.c.deleted)
                .select_from(t.id_map.join(t.contacts,
                                           t.contacts.c.key == t.id_map.c.contact_key))
                .where(and_(t.id_map.c.system == system,
                            t.id_map.c.record_id == record_id))).first()
            if row is None:
                out.append(None)
                continue
            others = conn.execute(select(t.id_map.c.record_id).where(and_(
                t.id_map.c.system == system, t.id_map.c.contact_key == row[0],
                t.id_map.c.record_id != record_id)).limit(1)).first()
            if others is not None:
                conn.execute(delete(t.id_map).where(and_(t.id_map.c.system == system,
                                                         t.id_map.c.record_id == record_id)))
                out.append(None)
                continue
            out.append((row[0], row[1], bool(row[2])))
        return out

    def emails(self, conn: Connection, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk in self._batches(list(keys)):
            for row in conn.execute(select(t.contacts.c.key, t.contacts.c.email)
                                    .where(self._among(t.contacts.c.key, chunk))):
                found[row.key] = row.email
        return found

    def record_ids(self, conn: Connection, system: str, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk in self._batches(list(keys)):
            for row in conn.execute(select(t.id_map.c.contact_key, t.id_map.c.record_id)
                                    .where(and_(t.id_map.c.system == system,
                                                self._among(t.id_map.c.contact_key, chunk)))):
                found[row.contact_key] = row.record_id
        return found

    def set_fields_hashes(self, conn: Connection, hashes: dict[str, str],
                          views: dict[str, dict[str, str | None]] | None = None) -> None:
        """Record the mapped fields last sent per contact: their hash, and the values."""
        views = views or {}
        self.set_fields_rows(conn, [
            (h, None if views.get(k) is None else json.dumps(views[k]), k)
            for k, h in hashes.items()])

    def set_fields_rows(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """``(fields_hash, fields_json as JSON text or None, contact key)`` per contact
        (a contact whose fields were sent is not deleted at the ESP)."""
        if rows:
            now = self.db_time(_now())
            with self._by_index(conn, len(rows)):
                self._sql.many(conn, "fields", [(h, v, now, False, k) for h, v, k in rows])

    def mark_deleted(self, conn: Connection, keys: Sequence[str]) -> None:
        """Record that these contacts' deletion reached the ESP (``deletes = "delete"``):
        a later full read of the deleted CRM record does not delete and journal again."""
        for chunk in self._batches(list(keys)):
            conn.execute(update(t.contacts).where(self._among(t.contacts.c.key, chunk))
                         .values(deleted=True, updated_at=_now()))

    def fields_views(self, conn: Connection, keys: Sequence[str]
                     ) -> dict[str, dict[str, str | None]]:
        """The mapped fields last sent per contact (only where they were recorded)."""
        found: dict[str, dict[str, str | None]] = {}
        for chunk in self._batches(list(keys)):
            for row in conn.execute(select(t.contacts.c.key, t.contacts.c.fields_json)
                                    .where(self._among(t.contacts.c.key, chunk))):
                if row.fields_json is not None:
                    found[row.key] = dict(row.fields_json)
        return found

