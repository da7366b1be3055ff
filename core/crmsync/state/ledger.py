"""The consent ledger: the journal's hash chain, pseudonyms, suppressions and erasure.

GDPR Art. 7(1) asks the controller to be able to demonstrate consent; Art. 17 asks it
to erase a person on request. Both hold here because every journal entry is sealed
over its **pseudonymised form**, in which the address is replaced by a keyed hash
(:func:`pseudonym`): erasing a person rewrites their entries into exactly that form,
so the chain still verifies, and the entries still prove what happened to whoever
brings the address (``crmsync proof EMAIL``).

- The engine appends journal rows on its hot path and never waits for this module: a
  **seal** pass (:func:`seal`), in id order over the entries not sealed yet, writes one
  row of ``crmsync_journal_seals`` per entry: the digest of its pseudonymised form,
  the previous seal's hash, and ``HMAC(key, previous hash, id, digest)``. It runs at
  the end of each run (a built-in plugin on ``crmsync_run_finished``) and before
  :func:`verify` and :func:`proof`.
- :func:`verify` recomputes every digest and link and names each entry that was edited,
  deleted or moved. The link is keyed: who can write to the database but does not hold
  the key cannot re-seal what they changed.
- :func:`erase` removes a person's identities, snapshots, fields and queued payloads,
  pseudonymises their journal entries and keeps a suppression (a keyed hash of the
  address): :func:`drop_suppressed` keeps such an address from being sent to the ESP
  again, until :func:`lift_on_opt_in` sees the person opt in anew at the ESP.

The key is ``CRMSYNC_LEDGER_KEY`` (environment or secrets file), else a key file that
is created on first use (:func:`ledger_key`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from ..errors import ConfigError, StateBusy
from ..hooks import hookimpl
from ..model import Status
from . import schema as t

if TYPE_CHECKING:
    from ..config import Config
    from ..model import Change
    from .store import StateStore

__all__ = [
    "GENESIS",
    "KEY_SECRET",
    "PSEUDONYM_PREFIX",
    "Erasure",
    "LedgerHooks",
    "Person",
    "Verification",
    "drop_suppressed",
    "erase",
    "find_person",
    "ledger_key",
    "lift_on_opt_in",
    "proof",
    "pseudonym",
    "seal",
    "suppress",
    "verify",
]

log = logging.getLogger(__name__)

KEY_SECRET = "CRMSYNC_LEDGER_KEY"  # noqa: S105 (the name of the secret, not its value)
PSEUDONYM_PREFIX = "hmac:"
GENESIS = "0" * 64
_PAGE = 5000

_Row = TypeVar("_Row")


# -- the key and pseudonyms ---------------------------------------------------------------
def ledger_key(config: Config, *, create: bool = True) -> bytes:
    """The ledger's key: ``CRMSYNC_LEDGER_KEY`` if set, else the key file (``[ledger]
    key_file``), written with 32 random bytes on first use when ``create``."""
    value = config.secrets().get(KEY_SECRET)
    if value:
        return value.encode()
    path = config.path(config.ledger.key_file)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the ledger key file {path}: {exc}: fix its "
                          f"permissions, or set {KEY_SECRET}") from None
    if text:
        return text.encode()
    if not create:
        raise ConfigError(f"no ledger key: set {KEY_SECRET} or restore {path} (the key that "
                          "sealed the journal and hashed the erased addresses)")
    return _create_key(path)


def _create_key(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile: use theirs
        return path.read_text(encoding="ascii").strip().encode()
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(text + "\n")
    log.info("created the ledger key %s: keep it (and back it up) with the state "
                "store; without it the journal cannot be verified", path)
    return text.encode()


def pseudonym(key: bytes, email: str) -> str:
    """The keyed hash that stands for an address in the sealed journal, in erased
    entries and in suppressions. An address already pseudonymised is returned as is."""
    if email.startswith(PSEUDONYM_PREFIX):
        return email
    return PSEUDONYM_PREFIX + hmac.digest(key, email.strip().lower().encode(), "sha256").hex()


def _scrub(text: str | None, email: str, alias: str) -> str | None:
    if text is None or email == alias or not email:
        return text
    return re.sub(re.escape(email), alias, text, flags=re.IGNORECASE)


def _time(value: datetime) -> str:
    # the same text whether the database gave the time naive (SQLite) or aware (PostgreSQL)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds") + "Z"


# one encoder, built once: json.dumps with options builds a new one per call
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def pseudonymised(row: Any, key: bytes) -> dict[str, Any]:
    """A journal row as it is sealed (and as erasure leaves it): the address, and any
    mention of it in ``reason`` / ``event_id``, replaced by its pseudonym."""
    alias = pseudonym(key, row.email)
    return {"email": alias, "reason": _scrub(row.reason, row.email, alias),
            "event_id": _scrub(row.event_id, row.email, alias)}


# What a seal covers, in this order (positional: a Row's attributes cost more than the
# hashing on the sealing pass's hot path).
_SEALED = ("id", "at", "run_id", "contact_key", "email", "list_id", "old_status",
           "new_status", "applied_to", "source", "reason", "event_id")
_SEALED_COLUMNS = tuple(t.journal.c[name] for name in _SEALED)


def _digest(row: Any, key: bytes) -> str:
    """The digest of a journal row given as the values of :data:`_SEALED`, in order."""
    (_, at, run_id, contact_key, email, list_id, old_status, new_status, applied_to,
     source, reason, event_id) = row
    alias = pseudonym(key, email)
    if reason is not None:
        reason = _scrub(reason, email, alias)
    if event_id is not None:
        event_id = _scrub(event_id, email, alias)
    material = [_time(at), run_id, contact_key, alias, list_id, old_status, new_status,
                applied_to, source, reason, event_id]
    return hashlib.sha256(_encode(material).encode()).hexdigest()


def _link(key: bytes, prev: str, journal_id: int, digest: str) -> str:
    return hmac.digest(key, f"{prev}:{journal_id}:{digest}".encode(), "sha256").hex()


# -- sealing ------------------------------------------------------------------------------
def _pages(conn: Connection, query: Any, id_column: Any) -> Iterator[Sequence[Any]]:
    last = -1
    while True:
        rows = conn.execute(query.where(id_column > last).order_by(id_column)
                            .limit(_PAGE)).all()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def seal(store: StateStore, key: bytes, *, wait_s: float = 60.0) -> int:
    """Seal the journal entries not sealed yet, in id order; return how many.

    Done while holding the state store's ``batch`` lock, the one every writer of the
    journal holds, so that no entry with a smaller id can be committed after a larger
    one was sealed. Returns -1 without sealing when a writer held it past ``wait_s``."""
    try:
        with store.exclusive("batch", wait_s=wait_s):
            return _seal(store, key)
    except StateBusy:
        log.info("journal not sealed now: a run holds the state store (it is sealed at "
                 "that run's end)")
        return -1


def _seal(store: StateStore, key: bytes) -> int:
    s, j = t.journal_seals, t.journal
    sealed = 0
    with store.begin() as conn:
        head = conn.execute(select(s.c.journal_id, s.c.hash).order_by(s.c.journal_id.desc())
                            .limit(1)).first()
        after, prev = (int(head[0]), str(head[1])) if head else (-1, GENESIS)
        now = store.db_time(datetime.now(UTC))
        for rows in _pages(conn, select(*_SEALED_COLUMNS).where(j.c.id > after), j.c.id):
            seals = []
            for row in rows:
                digest = _digest(row, key)
                link = _link(key, prev, row[0], digest)
                seals.append((row[0], digest, prev, link, now))
                prev = link
            store._sql.many(conn, "seals", seals)  # plain tuples, one statement per page
            sealed += len(seals)
    if sealed:
        log.info("sealed %d journal entr%s", sealed, "y" if sealed == 1 else "ies")
    return sealed


@dataclass
class Verification:
    """What ``crmsync journal verify`` found."""

    entries: int = 0
    head: str = GENESIS
    unsealed: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "head": self.head,
                "unsealed": self.unsealed, "problems": self.problems}


def verify(store: StateStore, key: bytes, *, wait_s: float = 10.0) -> Verification:
    """Seal what is new, then check every sealed entry against its seal and every seal
    against the one before it."""
    seal(store, key, wait_s=wait_s)
    s, j = t.journal_seals, t.journal
    result = Verification()
    prev = GENESIS
    joined = (select(s.c.journal_id, s.c.digest, s.c.prev_hash, s.c.hash, *_SEALED_COLUMNS)
              .select_from(s.outerjoin(j, j.c.id == s.c.journal_id)))
    with store.begin() as conn:
        for rows in _pages(conn, joined, s.c.journal_id):
            for row in rows:
                number, sealed_digest, prev_hash, link = row[0], row[1], row[2], row[3]
                result.entries += 1
                if prev_hash != prev:
                    result.problems.append({"entry": number, "problem": "deleted", "detail": (
                        f"the chain breaks before entry {number}: an entry before it was "
                        "deleted (with its seal)")})
                if link != _link(key, prev_hash, number, sealed_digest):
                    result.problems.append({"entry": number, "problem": "seal altered",
                                            "detail": f"the seal of entry {number} was altered"})
                if row[4] is None:
                    result.problems.append({"entry": number, "problem": "deleted",
                                            "detail": f"entry {number} was deleted"})
                else:
                    digest = _digest(row[4:], key)
                    if digest != sealed_digest:
                        result.problems.append(_changed(conn, number, digest))
                prev = str(link)
        result.head = prev
        last = conn.execute(select(func.max(s.c.journal_id))).scalar()
        if last is not None:
            stray = conn.execute(
                select(j.c.id).select_from(j.outerjoin(s, s.c.journal_id == j.c.id))
                .where(and_(s.c.journal_id.is_(None), j.c.id <= last)).order_by(j.c.id)
                .limit(100)).scalars().all()
            for number in stray:
                result.problems.append({"entry": int(number), "problem": "inserted",
                                        "detail": f"entry {number} was inserted among "
                                                  "entries already sealed"})
        result.unsealed = int(conn.execute(
            select(func.count()).select_from(j).where(j.c.id > (last or -1))).scalar() or 0)
    result.problems.sort(key=lambda item: int(item["entry"]))
    return result


def _changed(conn: Connection, number: int, digest: str) -> dict[str, Any]:
    s = t.journal_seals
    other = conn.execute(select(s.c.journal_id).where(and_(
        s.c.digest == digest, s.c.journal_id != number)).limit(1)).scalar()
    if other is not None:
        return {"entry": number, "problem": "reordered",
                "detail": f"entry {number} holds what was sealed as entry {other}: "
                          "entries were reordered"}
    return {"entry": number, "problem": "edited",
            "detail": f"entry {number} was edited after it was sealed"}


# -- one person ---------------------------------------------------------------------------
@dataclass
class Person:
    """What the state store holds about one address: contact keys and record ids."""

    email: str
    alias: str
    keys: set[str] = field(default_factory=set)
    record_ids: dict[str, list[str]] = field(default_factory=dict)  # system -> ids

    @property
    def known(self) -> bool:
        return bool(self.keys)


def find_person(store: StateStore, key: bytes, email: str) -> Person:
    """The contact keys that ever held ``email`` (now, or in the journal, erased or
    not) and their record ids per system."""
    alias = pseudonym(key, email)
    person = Person(email=email, alias=alias)
    with store.begin() as conn:
        person.keys.update(conn.execute(select(t.contacts.c.key)
                                        .where(t.contacts.c.email == email)).scalars())
        person.keys.update(conn.execute(select(t.journal.c.contact_key).distinct().where(
            t.journal.c.email.in_([email, alias]))).scalars())
        for chunk in _chunks(sorted(person.keys)):
            for system, record_id in conn.execute(
                    select(t.id_map.c.system, t.id_map.c.record_id)
                    .where(t.id_map.c.contact_key.in_(chunk))):
                person.record_ids.setdefault(system, []).append(record_id)
    return person


def _chunks(items: Sequence[_Row], size: int = 500) -> Iterator[Sequence[_Row]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@dataclass
class Erasure:
    """What :func:`erase` removed or pseudonymised, by table."""

    pseudonym: str
    counts: dict[str, int] = field(default_factory=dict)


def erase(store: StateStore, key: bytes, person: Person) -> Erasure:
    """Erase ``person`` from the state store in one transaction: identities, snapshots,
    fields, queued writes, inbox events and dead letters carrying the address are
    deleted; journal entries are pseudonymised; a suppression is kept."""
    done = Erasure(pseudonym=person.alias)
    counts = done.counts
    keys = sorted(person.keys)
    email = person.email
    with store.begin() as conn:
        j = t.journal
        owned = or_(j.c.email == email, j.c.contact_key.in_(keys)) if keys else (
            j.c.email == email)
        entries = conn.execute(select(j.c.id, j.c.email, j.c.reason, j.c.event_id)
                               .where(owned)).all()
        for row in entries:
            conn.execute(update(j).where(j.c.id == row.id).values(**pseudonymised(row, key)))
        counts["journal entries pseudonymised"] = len(entries)
        counts["snapshots"] = counts["identities"] = counts["contacts"] = 0
        counts["queued writes"] = 0
        for chunk in _chunks(keys):
            counts["snapshots"] += conn.execute(
                delete(t.snapshots).where(t.snapshots.c.contact_key.in_(chunk))).rowcount
            counts["identities"] += conn.execute(
                delete(t.id_map).where(t.id_map.c.contact_key.in_(chunk))).rowcount
            counts["contacts"] += conn.execute(
                delete(t.contacts).where(t.contacts.c.key.in_(chunk))).rowcount
            counts["queued writes"] += conn.execute(
                delete(t.outbox).where(t.outbox.c.contact_key.in_(chunk))).rowcount
        counts["queued writes"] += _delete_mentions(conn, t.outbox, email,
                                                    t.outbox.c.contact_key == "")
        counts["inbox events"] = conn.execute(
            delete(t.inbox).where(t.inbox.c.contact == email)).rowcount
        counts["inbox events"] += _delete_mentions(conn, t.inbox, email, None)
        counts["dead letters"] = _delete_mentions(conn, t.dead_letters, email, None)
        counts["run summaries scrubbed"] = _scrub_runs(conn, email, person.alias)
        counts["suppression kept"] = _suppress(conn, person.alias)
    return done


def _delete_mentions(conn: Connection, table: Any, email: str, where: Any) -> int:
    """Delete the rows of ``table`` whose JSON payload mentions ``email``."""
    query = select(table.c.id, table.c.payload)
    if where is not None:
        query = query.where(where)
    needle = email.lower()
    doomed = [row.id for row in conn.execute(query)
              if needle in json.dumps(row.payload, default=str).lower()]
    for chunk in _chunks(doomed):
        conn.execute(delete(table).where(table.c.id.in_(chunk)))
    return len(doomed)


def _scrub_runs(conn: Connection, email: str, alias: str) -> int:
    """Replace the address by its pseudonym in the run summaries that mention it (an
    error message of a run that stopped may name the record it stopped on)."""
    runs = t.runs
    needle = email.lower()
    scrubbed = 0
    for row in conn.execute(select(runs.c.id, runs.c.stats)):
        raw = json.dumps(row.stats, default=str)
        if needle in raw.lower():
            text = _scrub(raw, email, alias)
            conn.execute(update(runs).where(runs.c.id == row.id).values(
                stats=json.loads(text or "{}")))
            scrubbed += 1
    return scrubbed


def _suppress(conn: Connection, alias: str) -> int:
    s = t.suppressions
    if conn.execute(select(s.c.address_hash).where(s.c.address_hash == alias)).first():
        return 1
    conn.execute(insert(s).values(address_hash=alias, created_at=datetime.now(UTC),
                                  reason="erased"))
    return 1


def suppress(store: StateStore, key: bytes, email: str) -> None:
    """Keep ``email`` (as its keyed hash) from being sent to the ESP again."""
    with store.begin() as conn:
        _suppress(conn, pseudonym(key, email))


def _suppressed(store: StateStore, conn: Connection | None = None) -> set[str]:
    query = select(t.suppressions.c.address_hash)
    if conn is not None:
        return set(conn.execute(query).scalars())
    with store.begin() as own:
        return set(own.execute(query).scalars())


def drop_suppressed(store: StateStore, config: Config, records: list[_Row], *,
                    conn: Connection | None = None) -> list[_Row]:
    """``records`` (CRM contacts) less those whose address was erased (a suppression):
    the engine calls this before anything of a CRM record is planned or stored.
    ``conn``: the transaction to read in (a dry run's, which is rolled back)."""
    hashes = _suppressed(store, conn)
    if not hashes:
        return records
    key = ledger_key(config, create=False)
    kept = [r for r in records if pseudonym(key, r.email) not in hashes]  # type: ignore[attr-defined]
    if len(kept) != len(records):
        log.info("%d erased address(es) not sent to the ESP (suppressed by crmsync forget)",
                 len(records) - len(kept))
    return kept


def lift_on_opt_in(store: StateStore, config: Config, changes: Iterable[Change]) -> int:
    """Lift the suppression of each address the ESP reports as subscribed (the person
    opted in anew through the ESP's own confirmation flow); return how many."""
    subscribed = [c.email for c in changes
                  if any(sub.status is Status.SUBSCRIBED for sub in c.subscriptions.values())]
    if not subscribed:
        return 0
    hashes = _suppressed(store)
    if not hashes:
        return 0
    key = ledger_key(config, create=False)
    lifted = {pseudonym(key, email) for email in subscribed} & hashes
    if lifted:
        with store.begin() as conn:
            conn.execute(delete(t.suppressions).where(
                t.suppressions.c.address_hash.in_(sorted(lifted))))
        log.info("%d erased address(es) opted in again at the ESP: no longer suppressed",
                 len(lifted))
    return len(lifted)


# -- proof ----------------------------------------------------------------------------------
def proof(store: StateStore, key: bytes, email: str) -> dict[str, Any]:
    """The consent history of ``email`` per list, each entry with its seal, and the
    chain's verification: what ``crmsync proof EMAIL`` exports."""
    checked = verify(store, key)
    person = find_person(store, key, email)
    j, s = t.journal, t.journal_seals
    keys = sorted(person.keys)
    owned = or_(j.c.email.in_([email, person.alias]), j.c.contact_key.in_(keys)) if keys \
        else j.c.email.in_([email, person.alias])
    lists: dict[str, list[dict[str, Any]]] = {}
    with store.begin() as conn:
        rows = conn.execute(select(j, s.c.digest, s.c.prev_hash, s.c.hash)
                            .select_from(j.outerjoin(s, s.c.journal_id == j.c.id))
                            .where(owned).order_by(j.c.id)).all()
        suppressed = conn.execute(select(t.suppressions.c.created_at).where(
            t.suppressions.c.address_hash == person.alias)).scalar()
    for row in rows:
        form = pseudonymised(row, key)
        lists.setdefault(row.list_id, []).append({
            "entry": int(row.id), "at": _time(row.at), "from": row.source,
            "applied_to": row.applied_to, "old_status": row.old_status,
            "new_status": row.new_status, "reason": form["reason"],
            "event_id": form["event_id"], "run_id": row.run_id,
            "address": "erased" if row.email.startswith(PSEUDONYM_PREFIX) else "as given",
            "digest": row.digest, "prev_hash": row.prev_hash, "hash": row.hash})
    return {"email": email, "pseudonym": person.alias,
            "suppressed_since": _time(suppressed) if suppressed else None,
            "lists": lists, "chain": checked.as_dict()}


# -- the built-in plugin --------------------------------------------------------------------
class LedgerHooks:
    """Seals the journal at the end of each run (batch, and the real-time worker's
    period) and lifts a suppression when the ESP reports the person subscribed again.

    The real-time worker has no hook after each batch of events: what it journals is
    sealed when it stops, by the next batch run, or by ``journal verify`` / ``proof``.
    """

    def __init__(self, config: Config, store: StateStore | None = None) -> None:
        self.config = config
        self._store = store

    def _open(self) -> StateStore:
        if self._store is None:
            from .store import StateStore

            self._store = StateStore(self.config.state_url(), schema=self.config.state_schema())
        return self._store

    @hookimpl
    def crmsync_run_finished(self, run_id: str, stats: dict[str, Any]) -> None:
        if stats.get("dry_run"):
            return  # a dry run wrote nothing to seal (and must write nothing)
        try:
            store = self._open()
            if _unsealed(store):
                # briefly: a server stopping must not wait for another process's run
                seal(store, ledger_key(self.config), wait_s=5.0)
        except Exception:  # sealing must never turn a finished run into a failed one
            log.exception("sealing the journal failed; `crmsync journal verify` seals it")

    @hookimpl
    def crmsync_event_received(self, endpoint: str, changes: list[Change]) -> None:
        if endpoint != "esp":
            return
        try:
            lift_on_opt_in(self._open(), self.config, changes)
        except Exception:
            log.exception("checking the suppressions of an ESP event failed")


def _unsealed(store: StateStore) -> bool:
    with store.begin() as conn:
        last_entry = conn.execute(select(func.max(t.journal.c.id))).scalar()
        last_seal = conn.execute(select(func.max(t.journal_seals.c.journal_id))).scalar()
    return last_entry is not None and (last_seal is None or last_entry > last_seal)
