"""Decoding MailUp webhooks: SUBSCRIBE, UNSUBSCRIBE, CHANGEPROFILE and DELETE.

MailUp calls the customer's URL by GET or POST with parameters whose *names* the
customer chose, each mapped in the console to a placeholder (``[Email]``, ``[IdList]``,
``[EventDate]``, ``[Reason]``, ``[Groups]``, ``[FieldNN]``...). ``webhook_params``
maps those names back. With "encryption" on, the whole query string is RC4-encrypted
with the shared key, Base64-encoded, and sent as a single parameter *name*. There is
no signature: with a key configured, a plain (unencrypted) call is refused as forged.
An email change arrives as UNSUBSCRIBE (old address) then SUBSCRIBE (new address):
each is decoded on its own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from urllib.parse import parse_qsl, unquote
from zoneinfo import ZoneInfo

from crmsync.errors import EventRejected
from crmsync.model import Change, InboundRequest, Op, Status, Subscription, normalize_email

from .files import optout_reason
from .settings import PLACEHOLDERS, MailUpSettings

__all__ = ["EVENTS", "JOOMLA_PARAMS", "WebhookDecoder", "encrypt_payload", "rc4"]

EVENTS = ("SUBSCRIBE", "UNSUBSCRIBE", "CHANGEPROFILE", "DELETE")
#: MailUp's Joomla preset, used when no ``webhook_params`` are configured.
JOOMLA_PARAMS = {"evt": "EventType", "evd": "EventDate", "eml": "Email", "idl": "IdList",
                 "idn": "IdNL", "gru": "Groups"}
_OFFSET_HOURS = re.compile(r"([+-]\d{2})$")
_MAX_BODY = 64 * 1024


def rc4(key: bytes, data: bytes) -> bytes:
    """RC4 (encrypting and decrypting are the same): MailUp's webhook "encryption"."""
    if not key:
        raise ValueError("RC4 needs a non-empty key")
    state = list(range(256))
    j = 0
    for i in range(256):
        j = (j + state[i] + key[i % len(key)]) % 256
        state[i], state[j] = state[j], state[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + state[i]) % 256
        state[i], state[j] = state[j], state[i]
        out.append(byte ^ state[(state[i] + state[j]) % 256])
    return bytes(out)


def encrypt_payload(query: str, key: str) -> str:
    """What MailUp sends for an encrypted webhook: Base64(RC4(key, query))."""
    return base64.b64encode(rc4(key.encode(), query.encode())).decode("ascii")


class WebhookDecoder:
    """Turns one webhook call into changes, or raises :class:`EventRejected`."""

    def __init__(self, settings: MailUpSettings,
                 group_name: Callable[[str, str], str] | None = None) -> None:
        self.settings = settings
        self.group_name = group_name

    def decode(self, request: InboundRequest) -> list[Change]:
        pairs, raw = self._pairs(request)
        key = self.settings.webhook_key
        if key is not None and key.get_secret_value():
            pairs = self._decrypt(raw, key.get_secret_value())
        values = self._placeholders(pairs)
        event = (values.get("EventType") or self.settings.webhook_events.get(request.path)
                 or self.settings.webhook_default_event or "").upper()
        if event not in EVENTS:
            raise EventRejected(
                f"MailUp webhook on {request.path}: cannot tell the event ({event or 'none'}): "
                "map a parameter to [EventType] or the path in webhook_events")
        raw_email = values.get("Email", "")
        try:
            email = normalize_email(raw_email)
        except ValueError:
            raise EventRejected(f"MailUp {event} webhook without a valid [Email] "
                                f"(got {raw_email[:60]!r}): check webhook_params") from None
        # Without [EventDate] the event has no trustworthy date: its subscriptions carry
        # none (so it can never win a consent conflict); the change itself is stamped now.
        dated = self._date(values.get("EventDate"))
        when = dated or datetime.now(UTC)
        event_id = "mailup:" + hashlib.sha256(
            repr(sorted(pairs)).encode()).hexdigest()[:32]
        if event == "DELETE":
            return [Change(email=email, op=Op.DELETE, occurred_at=when, source="mailup",
                           event_id=event_id)]
        names = self.settings.field_names()
        fields: dict[str, str | None] = {}
        for placeholder, value in values.items():
            if placeholder.startswith("Field") and int(placeholder[5:]) in names:
                fields[names[int(placeholder[5:])]] = value
        list_id = values.get("IdList", "").strip()
        subscriptions = {}
        if event in ("SUBSCRIBE", "UNSUBSCRIBE") and not list_id.isdigit():
            raise EventRejected(f"MailUp {event} webhook without a list ([IdList] "
                                f"{list_id!r}): map a parameter to [IdList]")
        groups = frozenset(self._group(list_id, g.strip())
                           for g in values.get("Groups", "").split(",") if g.strip())
        reason = None
        if event == "UNSUBSCRIBE":
            reason = optout_reason(values.get("Reason") or None)
            subscriptions[list_id] = Subscription(
                list_id=list_id, status=Status.UNSUBSCRIBED, groups=groups, changed_at=when,
                reason=reason, source="mailup")  # an unsubscribe wins whatever its date
        elif event == "SUBSCRIBE":
            subscriptions[list_id] = Subscription(
                list_id=list_id, status=Status.SUBSCRIBED, groups=groups, changed_at=dated,
                source="mailup",
                explicit=values.get("EventSource", "").upper() == "RECIPIENT")
        elif list_id.isdigit() and "Groups" in values:
            # A profile change carries groups but no status; a non-explicit "subscribed"
            # can never lift an unsubscribe under crmsync's consent rules.
            subscriptions[list_id] = Subscription(
                list_id=list_id, status=Status.SUBSCRIBED, groups=groups, changed_at=dated,
                source="mailup")
        return [Change(email=email, fields=fields, subscriptions=subscriptions,
                       occurred_at=when, source="mailup", reason=reason, event_id=event_id)]

    # -- parsing ----------------------------------------------------------------------------
    def _pairs(self, request: InboundRequest) -> tuple[list[tuple[str, str]], list[str]]:
        """Decoded ``(name, value)`` pairs, and the raw tokens an encrypted payload needs."""
        pairs = list(request.query)
        # Query pairs arrive decoded ('+' read as a space): undo that for Base64.
        raw = [(n if not v else f"{n}={v}").replace(" ", "+") for n, v in request.query]
        if request.body:
            if len(request.body) > _MAX_BODY:
                raise EventRejected("MailUp webhook body too large to be a webhook")
            try:
                text = request.body.decode("utf-8")
            except UnicodeDecodeError:
                raise EventRejected("MailUp webhook body is not form-encoded text") from None
            if any(ord(ch) < 32 and ch not in "\r\n\t" for ch in text):
                raise EventRejected("MailUp webhook body holds control characters: not a "
                                    "form-encoded MailUp call")
            text = text.strip()
            pairs += parse_qsl(text, keep_blank_values=True)
            raw += [unquote(token) for token in text.split("&") if token]
        if not pairs and not raw:
            raise EventRejected("MailUp webhook without parameters")
        return pairs, raw

    def _placeholders(self, pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
        mapping = self.settings.webhook_params or JOOMLA_PARAMS
        by_lower = {name.lower(): placeholder for name, placeholder in mapping.items()}
        plain = {p.lower(): p for p in PLACEHOLDERS}
        values: dict[str, str] = {}
        for name, value in pairs:
            bare = name.strip().strip("[]")
            placeholder = mapping.get(name) or by_lower.get(name.lower()) or plain.get(
                bare.lower())
            if placeholder:
                values[placeholder] = value.strip()
        return values

    def _decrypt(self, raw: Sequence[str], key: str) -> list[tuple[str, str]]:
        tokens = [t.strip() for t in raw]
        # A form may add "=" for a blank value after the Base64 padding.
        tokens += [t[:-1] for t in tokens if t.endswith("=")]
        for token in tokens:
            if len(token) % 4:
                continue  # Base64 comes in blocks of 4: a cut payload is refused
            try:
                cipher = base64.b64decode(token.replace("-", "+").replace("_", "/"),
                                          validate=True)
            except (binascii.Error, ValueError):
                continue
            if not cipher:
                continue
            try:
                text = rc4(key.encode(), cipher).decode("utf-8")
            except UnicodeDecodeError:
                continue
            if "=" not in text or any(ord(ch) < 32 for ch in text):
                continue
            decoded = parse_qsl(text, keep_blank_values=True)
            if decoded:
                return decoded
        raise EventRejected(
            "MailUp webhook could not be decrypted with webhook_key (wrong key, a truncated "
            "or garbled payload, or an unencrypted call to an encrypted hook): check the "
            "key set in MailUp's webhook against CRMSYNC_MAILUP_WEBHOOK_KEY", status=401)

    def _date(self, value: str | None) -> datetime | None:
        if not value:
            return None
        text = value.strip().replace(" ", "+")
        text = _OFFSET_HOURS.sub(r"\1:00", text)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise EventRejected(f"MailUp webhook [EventDate] {value!r} is not an ISO 8601 "
                                "date") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=ZoneInfo(self.settings.webhook_timezone))
        return parsed.astimezone(UTC)

    def _group(self, list_id: str, group_id: str) -> str:
        # A failed lookup raises (RemoteError): crmsync serve then answers 503 and MailUp
        # delivers again later, rather than storing ids where names are expected.
        if self.group_name is None or not list_id:
            return group_id
        return self.group_name(list_id, group_id)
