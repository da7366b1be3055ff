"""Subscribing and sending from an application: the library calls behind
``crmsync subscribe``, ``crmsync send``, the subscription form and ``POST /send``.

::

    from crmsync.actions import send, subscribe

    subscribe(esp, "ann@example.com", ["1", "2"])          # pending until she confirms
    send(esp, "42", to="ann@example.com")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from .config import Config
from .contract import Connector, MessageSender, MultiListSubscriber
from .errors import ConfigError, DataError
from .model import Contact, SendResult, Status, WriteResult, normalize_email
from .state import JournalEntry, Snapshot, StateStore, status_hash

__all__ = ["ConsentRefused", "send", "subscribe"]


class ConsentRefused(DataError):
    """A send to an address that withdrew its consent, without ``transactional``."""


def subscribe(esp: Connector, email: str, lists: Sequence[str], *,
              groups: Sequence[str] = (), confirm: bool = True,
              fields: Mapping[str, str | None] | None = None, config: Config | None = None,
              store: StateStore | None = None, source: str = "subscribe") -> list[WriteResult]:
    """Subscribe ``email`` to every list in ``lists`` at once; one result per list.

    With ``confirm`` (the default) the ESP sends its confirmation email and the contact
    is *pending* until they click it. With ``config``, each list must be one of its
    ``[[lists]]``; with ``store``, each accepted subscription is journaled (from the
    status crmsync knew) and the consent rule applies: a list the address unsubscribed
    from is refused without ``confirm`` (a non-retryable failed result, nothing sent).
    """
    if not isinstance(esp, MultiListSubscriber):
        raise ConfigError(f"the ESP connector {esp.name!r} cannot subscribe a contact to "
                          "several lists (no multi_list_subscribe capability)")
    try:
        address = normalize_email(email)
    except ValueError:
        raise DataError(f"{email!r} is not an email address: give name@domain") from None
    wanted = [str(item) for item in dict.fromkeys(lists)]
    if not wanted:
        raise ConfigError("say which list(s) to subscribe to: --list ID (repeatable)")
    if config is not None:
        unknown = [item for item in wanted if item not in config.list_ids()]
        if unknown:
            configured = ", ".join(config.list_ids()) or "none"
            raise ConfigError(f"list(s) {', '.join(unknown)} are not configured "
                              f"(configured [[lists]] esp_list: {configured})")
    status = Status.PENDING if confirm else Status.SUBSCRIBED
    known: dict[str, Snapshot] = {}
    if store is not None:
        with store.begin() as conn:
            [(key, _, _)] = store.resolve(conn, [(esp.name, None, address)])
            known = {list_id: snap for (_, list_id), snap in
                     store.snapshots(conn, [key]).items()}
    # The consent rules: an unsubscribed address is re-subscribed only through the ESP's
    # confirmation email, never by a forced opt-in; and a pending one becomes subscribed
    # only by the person's own click (which an earlier confirmation request asked for).
    refused = {list_id: WriteResult(ok=False, retryable=False, error=(
        f"{address} {_state_words(known[list_id])} list {list_id} "
        f"({known[list_id].source}, {known[list_id].changed_at:%Y-%m-%d %H:%M} UTC): "
        "only the person's click on the ESP's confirmation email subscribes them now; "
        "subscribe with confirmation (without --no-confirm) so the person confirms"))
        for list_id in wanted if not confirm and list_id in known
        and known[list_id].status in (Status.UNSUBSCRIBED, Status.PENDING)}
    allowed = [list_id for list_id in wanted if list_id not in refused]
    sent = iter(esp.subscribe(Contact(email=address, fields=dict(fields or {})), allowed,
                              groups=list(groups), confirm=confirm) if allowed else [])
    results = [refused.get(list_id) or next(sent) for list_id in wanted]
    if store is not None:
        _record(store, key, address, status, frozenset(groups), source, confirm,
                [(list_id, known.get(list_id)) for list_id, result in
                 zip(wanted, results, strict=True) if result.ok])
    return results


def _state_words(snap: Snapshot) -> str:
    return ("unsubscribed from" if snap.status == Status.UNSUBSCRIBED
            else "awaits the confirmation of")


def _record(store: StateStore, key: str, address: str, status: Status,
            groups: frozenset[str], source: str, confirm: bool,
            done: Sequence[tuple[str, Snapshot | None]]) -> None:
    """Journal what the ESP was asked to do, from what crmsync knew before, and keep the
    snapshot in step so a later sync neither repeats nor contradicts it."""
    now = datetime.now(UTC)
    snapshots: list[Snapshot] = []
    entries: list[JournalEntry] = []
    for list_id, snap in done:
        old = snap.status if snap else None
        if old == status or (old == Status.SUBSCRIBED and status == Status.PENDING):
            continue  # no status change: already there (subscribed is never downgraded)
        merged = groups | (snap.groups if snap else frozenset())
        snapshots.append(Snapshot(
            contact_key=key, list_id=list_id, status=status, groups=merged,
            crm_status=snap.crm_status if snap else None, hash=status_hash(status, merged),
            changed_at=now, source=source))
        entries.append(JournalEntry(
            contact_key=key, email=address, list_id=list_id,
            old_status=old.value if old else None, new_status=status.value,
            applied_to="esp", source=source, at=now,
            reason="opt-in, confirmation email sent" if confirm else "opt-in"))
    if entries:
        with store.begin() as conn:
            store.put_snapshots(conn, snapshots)
            store.append_journal(conn, entries)


def send(esp: Connector, message_id: str, *, to: str | None = None, list_id: str | None = None,
         group_id: str | None = None, transactional: bool = False, config: Config | None = None,
         store: StateStore | None = None, source: str = "send") -> SendResult:
    """Send the ESP's message ``message_id`` to one address, or to a list (or one of
    its groups).

    With ``store``, an address crmsync knows as unsubscribed from every list it is on is
    refused (:class:`ConsentRefused`) unless ``transactional`` says the message is one
    the person needs whatever their marketing consent (a receipt, a password reset);
    such a send is journaled, status unchanged. With ``config``, ``list_id`` must be
    one of its ``[[lists]]``.
    """
    if not isinstance(esp, MessageSender):
        raise ConfigError(f"the ESP connector {esp.name!r} cannot send messages "
                          "(no send_message capability)")
    message_id = str(message_id).strip()
    if not message_id:
        raise ConfigError("say which message to send: --message ID")
    if len(message_id) > _MAX_ID or not message_id.isprintable():
        raise ConfigError(f"message id {message_id[:20]!r}...: not an ESP message id "
                          f"(at most {_MAX_ID} printable characters)")
    if (to is None) == (list_id is None):
        raise ConfigError("give exactly one of --to EMAIL or --list ID")
    if group_id is not None and list_id is None:
        raise ConfigError("--group needs --list: a group belongs to a list")
    if config is not None and list_id is not None and str(list_id) not in config.list_ids():
        known = ", ".join(config.list_ids()) or "none"
        raise ConfigError(f"list {list_id} is not configured (configured [[lists]] "
                          f"esp_list: {known})")
    unsubscribed: list[str] = []
    if to is not None:
        try:
            to = normalize_email(to)
        except ValueError:
            raise DataError(f"{to[:80]!r} is not an email address: give name@domain") from None
        if store is not None:
            unsubscribed = _unsubscribed_everywhere(store, to)
            if unsubscribed and not transactional:
                raise ConsentRefused(
                    f"{to} is unsubscribed from every list (list(s) "
                    f"{', '.join(unsubscribed)}): not sent. Only a transactional message "
                    "(a receipt, a password reset) may go to them: pass --transactional "
                    '(POST /send: "transactional": true); it is journaled')
    result = esp.send(message_id, to=to, list_id=list_id, group_id=group_id)
    if result.ok and unsubscribed and store is not None and to is not None:
        with store.begin() as conn:
            [(key, _, _)] = store.resolve(conn, [(esp.name, None, to)])
            store.append_journal(conn, [JournalEntry(
                contact_key=key, email=to, list_id=item, old_status=Status.UNSUBSCRIBED.value,
                new_status=Status.UNSUBSCRIBED.value, applied_to="esp", source=source,
                reason=f"transactional message {message_id} sent; status unchanged")
                for item in unsubscribed])
    return result


_MAX_ID = 64  # ESP message ids are short numbers or tokens


def _unsubscribed_everywhere(store: StateStore, email: str) -> list[str]:
    """The lists ``email`` is unsubscribed from, when it is on no list otherwise."""
    from sqlalchemy import select

    from .state import schema as t

    query = (select(t.snapshots.c.list_id, t.snapshots.c.status)
             .join(t.contacts, t.contacts.c.key == t.snapshots.c.contact_key)
             .where(t.contacts.c.email == email))
    with store.begin() as conn:
        statuses = {list_id: status for list_id, status in conn.execute(query)}
    if statuses and all(s == Status.UNSUBSCRIBED.value for s in statuses.values()):
        return sorted(statuses)
    return []
