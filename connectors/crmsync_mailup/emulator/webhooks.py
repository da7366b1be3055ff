"""Webhooks as MailUp's console configures and delivers them: per event, GET or POST,
customer-named parameters mapped to placeholders, optional RC4+Base64 "encryption"
(the payload sent as one parameter name), and retries until a 2xx."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from ..webhooks import encrypt_payload
from .store import now

__all__ = ["WebhookDispatcher"]

# MailUp retries over 25 h: 3x5 min, 3x15 min, 3x2 h, 3x6 h.
MAILUP_RETRIES = [300.0] * 3 + [900.0] * 3 + [7200.0] * 3 + [21600.0] * 3


def event_date(value: Any) -> str:
    # MailUp's form: 2012-09-12T11:18:37.664+02 (milliseconds, an hours-only offset).
    return str(value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+00")


class WebhookDispatcher:
    """The configured webhooks and every delivery attempt."""

    def __init__(self, lock: threading.RLock, retry_delays: list[float] | None = None) -> None:
        self.lock = lock
        self.retry_delays = list(MAILUP_RETRIES if retry_delays is None else retry_delays)
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's, once it serves
        self.hooks: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = 0

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def clear(self) -> None:
        self.hooks.clear()
        self.deliveries.clear()

    def add_webhook(self, *, url: str, event: str, method: str = "POST",
                    encrypted: bool = False, key: str = "", params: dict[str, str] | None = None,
                    list: str | None = None, sources: list[str] | None = None
                    ) -> dict[str, Any]:
        """Configure a webhook as the console's Developer's Corner would."""
        event = event.upper()
        if event not in ("SUBSCRIBE", "UNSUBSCRIBE", "CHANGEPROFILE", "DELETE"):
            raise ValueError(f"unknown event {event}")
        if encrypted and not key:
            raise ValueError("an encrypted webhook needs a key")
        with self.lock:
            hook = {"id": self._next_id(), "url": url, "event": event,
                    "method": method.upper(), "encrypted": bool(encrypted), "key": key,
                    "params": dict(params or {"email": "[Email]", "list": "[IdList]",
                                              "date": "[EventDate]", "type": "[EventType]",
                                              "reason": "[Reason]", "groups": "[Groups]"}),
                    "list": None if list is None else str(list), "sources": sources}
            self.hooks.append(hook)
        return hook

    def fire(self, event: str, rec: dict[str, Any], list_id: str | None, source: str, *,
              reason: str = "", email: str | None = None) -> None:
        member = rec["lists"].get(list_id or "", {})
        values = {
            "EventDate": event_date(now()),
            "IdConsole": "12345", "IdList": list_id or "", "IdNL": "", "EventType": event,
            "EventSource": source, "Reason": reason, "Email": email or rec["email"],
            "Prefix": rec["mobile_prefix"], "Number": rec["mobile_number"],
            "Groups": ",".join(sorted(member.get("groups", set()), key=int)),
            "Channel": "1",
            **{f"Field{fid:02d}": value for fid, value in rec["fields"].items()},
        }
        for hook in self.hooks:
            if hook["event"] != event or (hook.get("list") and hook["list"] != list_id):
                continue
            if hook.get("sources") and source not in hook["sources"]:
                continue
            pairs = [(name, values.get(placeholder.strip("[]"), ""))
                     for name, placeholder in hook["params"].items()]
            query = urlencode(pairs)
            if hook.get("encrypted"):
                query = quote(encrypt_payload(query, hook["key"]), safe="")
            delivery = {"hook": hook["id"], "event": event, "email": values["Email"],
                        "list": list_id, "attempts": 0, "status": None, "delivered": False,
                        "payload": query}
            self.deliveries.append(delivery)
            self._schedule(hook, delivery)

    def _schedule(self, hook: dict[str, Any], delivery: dict[str, Any]) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = self.loop  # called from another thread: hand over to the server's loop
        if loop is not None and loop.is_running():
            def start() -> None:
                task = loop.create_task(self._deliver_async(hook, delivery))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            loop.call_soon_threadsafe(start)
            return
        threading.Thread(target=self._deliver_sync, args=(hook, delivery), daemon=True).start()

    def _request_args(self, hook: dict[str, Any], delivery: dict[str, Any]) -> dict[str, Any]:
        if hook["method"] == "GET":
            sep = "&" if "?" in hook["url"] else "?"
            return {"method": "GET", "url": f"{hook['url']}{sep}{delivery['payload']}"}
        return {"method": "POST", "url": hook["url"], "content": delivery["payload"].encode(),
                "headers": {"Content-Type": "application/x-www-form-urlencoded"}}

    async def _deliver_async(self, hook: dict[str, Any], delivery: dict[str, Any]) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            for delay in [0.0, *self.retry_delays]:
                await asyncio.sleep(delay)
                try:
                    response = await client.request(**self._request_args(hook, delivery))
                    status: int | None = response.status_code
                except httpx.HTTPError:
                    status = None
                if self._record(delivery, status):
                    return

    def _deliver_sync(self, hook: dict[str, Any], delivery: dict[str, Any]) -> None:
        with httpx.Client(timeout=5) as client:
            for delay in [0.0, *self.retry_delays]:
                time.sleep(delay)
                try:
                    status: int | None = client.request(
                        **self._request_args(hook, delivery)).status_code
                except httpx.HTTPError:
                    status = None
                if self._record(delivery, status):
                    return

    def _record(self, delivery: dict[str, Any], status: int | None) -> bool:
        with self.lock:
            delivery["attempts"] += 1
            delivery["status"] = status
            # What MailUp counts as a "successful handshake" is UNCONFIRMED: any 2xx.
            delivery["delivered"] = status is not None and 200 <= status < 300
            return bool(delivery["delivered"])
