"""vTiger Cloud "Webhook" workflow deliveries, turned into changes.

Open-source vTiger has no webhook task (poll with ``sync`` instead); vTiger Cloud's
workflow action POSTs (or GETs / PUTs) the fields the admin maps, as a form, JSON or
query parameters. Name the parameters after the vTiger fields (``id``, ``email``,
``emailoptout``, ``modifiedtime``...).

``crmsync serve`` authenticates the endpoint before the connector sees anything (its
secret in the URL ``/hooks/crm/<secret>`` or the ``X-Crmsync-Secret`` header). When
``webhook_secret`` is set, the connector also wants it in the delivery (a parameter
``crmsync_secret`` or a header ``X-Vtiger-Secret``), for set-ups that put another proxy
in front.
"""

from __future__ import annotations

import contextlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from pydantic import SecretStr

from crmsync.errors import EventRejected
from crmsync.model import Change, InboundRequest

from ._values import FieldCodec, WsId

__all__ = ["SECRET_HEADER", "SECRET_PARAM", "decode_webhook"]

SECRET_HEADER = "X-Vtiger-Secret"  # noqa: S105 - a header name
SECRET_PARAM = "crmsync_secret"  # noqa: S105 - a parameter name
_ID_KEYS = ("id", "record_id", "recordId", "crmid")


def _params(request: InboundRequest) -> dict[str, str]:
    values: dict[str, Any] = dict(request.query)
    body = request.body.strip()
    if body:
        kind = request.header("content-type").split(";")[0].strip().lower()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise EventRejected("the delivery is not UTF-8 text: not a vTiger webhook") from None
        if kind == "application/json" or text.startswith("{"):
            try:
                data = json.loads(text)
            except ValueError:
                raise EventRejected("the delivery's JSON body does not parse") from None
            if not isinstance(data, dict):
                raise EventRejected("the delivery's JSON body is not an object")
            for nested in ("data", "record"):
                if isinstance(data.get(nested), dict):
                    data = {**data, **data.pop(nested)}
            values.update(data)
        elif kind in ("application/x-www-form-urlencoded", "") and "=" in text:
            values.update(parse_qsl(text, keep_blank_values=True))
        else:
            raise EventRejected(f"unexpected content type {kind!r}: send the webhook as a "
                                "form, JSON or query parameters")
    return {str(k): "" if v is None else str(v) for k, v in values.items()}


def decode_webhook(request: InboundRequest, *, secret: SecretStr | None, name: str,
                   codec: Callable[[], FieldCodec]) -> list[Change]:
    """One delivery -> one change, or :class:`EventRejected` (401 forged, 400 garbled)."""
    params = _params(request)
    given = request.header(SECRET_HEADER) or params.get(SECRET_PARAM, "")
    params.pop(SECRET_PARAM, None)
    if secret is not None and secret.get_secret_value() and not hmac.compare_digest(
            given.encode(), secret.get_secret_value().encode()):
        raise EventRejected(f"vTiger webhook without the right {SECRET_PARAM} parameter or "
                            f"{SECRET_HEADER} header (webhook_secret)", status=401)
    raw_id = next((params.pop(k) for k in _ID_KEYS if params.get(k)), "")
    email = params.get("email", "").strip()
    if not raw_id or not email:
        raise EventRejected("the vTiger webhook must map at least id and email "
                            f"(got {sorted(params)})")
    fields_codec = codec()
    try:
        ws_id = str(WsId.coerce(raw_id, fields_codec.id_prefix))
    except ValueError as exc:
        raise EventRejected(f"the webhook's id: {exc}") from None
    fields = {k: fields_codec.to_neutral(k, v) for k, v in params.items()}
    occurred = datetime.now(UTC)
    stamp = params.get("modifiedtime", "")
    if stamp:
        # the workflow may map a user-formatted date: arrival time will do then
        with contextlib.suppress(ValueError):
            occurred = fields_codec.parse_time(stamp)
    try:
        return [Change(email=email, ids={name: ws_id}, fields=fields, occurred_at=occurred,
                       source=name, reason="vTiger webhook",
                       event_id=f"{ws_id}@{stamp}" if stamp else None)]
    except ValueError as exc:
        raise EventRejected(f"the webhook's email {email!r} is not an address ({exc})") from None
