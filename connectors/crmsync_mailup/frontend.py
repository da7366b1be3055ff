"""MailUp's legacy HTTP ("frontend") API, for the one-call multi-list subscribe.

``xmlSubscribe.aspx`` subscribes one address to several lists and groups in a single
call (``List=1,2``, ``Group=3,4``, ``Confirm`` for double opt-in, fields as
``csvFldNames=campo1;campo2`` / ``csvFldValues=...``). It needs no credentials: MailUp
accepts it only from IP addresses registered under *Web Services > FrontEnd*, and
answers a plain-text integer (with ``retCode=1``). Unlike REST calls, it fires webhooks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import httpx

from crmsync.errors import DataError, RemoteError

__all__ = ["SUBSCRIBE_CODES", "FrontendSubscriber"]

SUBSCRIBE_CODES = {
    "0": "subscribed",
    "1": "generic error",
    "2": "invalid email or mobile number",
    "3": "already subscribed",
    "-1011": "this machine's IP address is not registered for the FrontEnd web service",
}


class FrontendSubscriber:
    """``xmlSubscribe.aspx`` on the console host (``frontend_url`` ends in ``/frontend``)."""

    def __init__(self, frontend_url: str, http: httpx.Client) -> None:
        self.url = frontend_url.rstrip("/") + "/xmlSubscribe.aspx"
        self.http = http

    def subscribe(self, email: str, lists: Sequence[str], groups: Sequence[str],
                  fields: Mapping[int, str], *, confirm: bool) -> str:
        """One call for every list and group; returns MailUp's code (``"0"`` or ``"3"``)."""
        for value in fields.values():
            # The page splits values on ';' and refuses '--' (as XmlUpdSubscriber does).
            if ";" in value or "--" in value:
                raise DataError(f"field value {value!r} holds ';' or '--', which "
                                "xmlSubscribe.aspx cannot carry")
        form = {"Email": email, "List": ",".join(lists), "Group": ",".join(groups),
                "Confirm": "1" if confirm else "0", "retCode": "1"}
        if fields:
            form["csvFldNames"] = ";".join(f"campo{i}" for i in fields)
            form["csvFldValues"] = ";".join(fields.values())
        try:
            response = self.http.post(self.url, data=form)
        except httpx.HTTPError as exc:
            raise RemoteError(f"MailUp frontend {self.url} unreachable ({type(exc).__name__}):"
                              " check frontend_url", retryable=True) from None
        code = response.text.strip()
        if response.status_code >= 300 or code not in ("0", "3"):
            meaning = SUBSCRIBE_CODES.get(code, f"HTTP {response.status_code}")
            hint = (": register it in the console (Settings > Web Services > FrontEnd)"
                    if code == "-1011" else "")
            raise RemoteError(f"MailUp xmlSubscribe.aspx answered {code or 'nothing'} "
                              f"({meaning}){hint}", status=response.status_code, code=code,
                              retryable=response.status_code >= 500)
        return code
