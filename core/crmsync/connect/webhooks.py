"""Checking a webhook's signature: an HMAC over a message built from the request."""

from __future__ import annotations

import base64
import hmac
import time
from collections.abc import Callable

from pydantic import SecretStr

from ..errors import EventRejected
from ..model import InboundRequest

__all__ = ["verify_hmac"]


def verify_hmac(request: InboundRequest, secret: str | SecretStr, *,
                template: str = "{body}", header: str = "X-Signature",
                encoding: str = "hex", max_age_s: float | None = None,
                timestamp_header: str | None = None, prefix: str = "",
                digest: str = "sha256", now: Callable[[], float] = time.time) -> None:
    """Raise :class:`EventRejected` (401) unless ``request`` carries in ``header`` the HMAC
    of ``template`` under ``secret``.

    ``template`` names the parts signed: ``{method}``, ``{url}`` (the public URL as the
    sender called it, :attr:`InboundRequest.url`), ``{path}``, ``{body}`` and
    ``{timestamp}`` (the value of ``timestamp_header``). ``encoding`` is ``hex`` or
    ``base64``; ``prefix`` is what the header puts before the digest (``sha256=``).
    With ``max_age_s``, a timestamp (seconds or milliseconds since the epoch) older or
    further ahead than that is refused too: a captured request cannot be replayed.
    """
    key = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if not key:
        raise EventRejected("no signing secret is configured for this endpoint: set it in "
                            "the environment or the secrets file", status=401)
    stamp = request.header(timestamp_header) if timestamp_header else ""
    if max_age_s is not None:
        try:
            sent = float(stamp)
        except ValueError:
            raise EventRejected(f"missing or malformed {timestamp_header} timestamp",
                                status=401) from None
        if sent > 1e11:  # milliseconds
            sent /= 1000
        if abs(now() - sent) > max_age_s:
            raise EventRejected(f"{timestamp_header} is more than {max_age_s:g} s away from "
                                "now: a replayed or delayed request", status=401)
    parts = {"method": request.method.encode(), "url": request.url.encode(),
             "path": request.path.encode(), "body": request.body, "timestamp": stamp.encode()}
    message = _render(template, parts)
    mac = hmac.new(key.encode(), message, digest).digest()
    expected = (base64.b64encode(mac).decode() if encoding == "base64" else mac.hex())
    given = request.header(header).strip()
    if prefix and given.lower().startswith(prefix.lower()):
        given = given[len(prefix):]
    elif prefix:
        given = ""
    if encoding != "base64":
        given = given.lower()
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise EventRejected(f"missing or wrong {header} signature", status=401)


def _render(template: str, parts: dict[str, bytes]) -> bytes:
    out = b""
    rest = template
    while rest:
        start = rest.find("{")
        if start < 0:
            out += rest.encode()
            break
        end = rest.find("}", start)
        name = rest[start + 1:end] if end > start else ""
        if name not in parts:
            raise ValueError(f"signature template {template!r}: unknown part {{{name}}} "
                             f"(use {', '.join('{' + p + '}' for p in parts)})")
        out += rest[:start].encode() + parts[name]
        rest = rest[end + 1:]
    return out
