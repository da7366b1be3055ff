"""Subscribing and sending from an application: the library calls behind
``crmsync subscribe``, ``crmsync send``, the subscription form and ``POST /send``.

::

    from crmsync.actions import send, subscribe

    subscribe(esp, "ann@example.com", ["1", "2"])          # pending until she confirms
    send(esp, "42", to="ann@example.com")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .config import Config
from .contract import Connector, MessageSender, MultiListSubscriber
from .errors import ConfigError, DataError
from .model import Contact, SendResult, Status, WriteResult, normalize_email
from .state import JournalEntry, StateStore

__all__ = ["send", "subscribe"]


def subscribe(esp: Connector, email: str, lists: Sequence[str], *,
              groups: Sequence[str] = (), confirm: bool = True,
              fields: Mapping[str, str | None] | None = None, config: Config | None = None,
              store: StateStore | None = None, source: str = "subscribe") -> list[WriteResult]:
    """Subscribe ``email`` to every list in ``lists`` at once; one result per list.

    With ``confirm`` (the default) the ESP sends its confirmation email and the contact
    is *pending* until they click it. With ``config``, each list must be one of its
    ``[[lists]]``; with ``store``, each accepted subscription is journaled.
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
            known = ", ".join(config.list_ids()) or "none"
            raise ConfigError(f"list(s) {', '.join(unknown)} are not configured "
                              f"(configured [[lists]] esp_list: {known})")
    results = esp.subscribe(Contact(email=address, fields=dict(fields or {})), wanted,
                            groups=list(groups), confirm=confirm)
    if store is not None:
        status = Status.PENDING if confirm else Status.SUBSCRIBED
        with store.begin() as conn:
            [(key, _, _)] = store.resolve(conn, [(esp.name, None, address)])
            store.append_journal(conn, [JournalEntry(
                contact_key=key, email=address, list_id=list_id, old_status=None,
                new_status=status.value, applied_to="esp", source=source,
                reason="opt-in, confirmation email sent" if confirm else "opt-in")
                for list_id, result in zip(wanted, results, strict=False) if result.ok])
    return results


def send(esp: Connector, message_id: str, *, to: str | None = None, list_id: str | None = None,
         group_id: str | None = None) -> SendResult:
    """Send the ESP's message ``message_id`` to one address, or to a list (or one of
    its groups)."""
    if not isinstance(esp, MessageSender):
        raise ConfigError(f"the ESP connector {esp.name!r} cannot send messages "
                          "(no send_message capability)")
    if not str(message_id).strip():
        raise ConfigError("say which message to send: --message ID")
    if (to is None) == (list_id is None):
        raise ConfigError("give exactly one of --to EMAIL or --list ID")
    if group_id is not None and list_id is None:
        raise ConfigError("--group needs --list: a group belongs to a list")
    if to is not None:
        try:
            to = normalize_email(to)
        except ValueError:
            raise DataError(f"{to!r} is not an email address: give name@domain") from None
    return esp.send(str(message_id), to=to, list_id=list_id, group_id=group_id)
