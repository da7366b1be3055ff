"""Post-operations: what follows a status change.

The configured ``[[post_operations]]`` rules are a built-in plugin registered through
the same hook as third-party code (``crmsync_post_operation``):

- ``unsubscribe_from = ["2", "3"]`` (or ``"all"``): an unsubscribe from ``from_list``
  unsubscribes the contact from those lists too; the follow-ups go through the consent
  policy and the journal like any change, on both sides;
- ``call_url``: the contact's data is POSTed (or GET) to the customer's URL, signed with
  HMAC-SHA256 over the body (header ``X-Crmsync-Signature: sha256=<hex>``) when
  ``secret_env`` is set, retried by the transport's one retry policy (5xx, 429 after its
  ``Retry-After``, a dropped connection: ``retries`` times); each call is recorded in the context so
  the engine journals it. Delivery is at least once; a repeat carries the same
  ``X-Crmsync-Delivery`` header (and ``delivery_id`` in the body) for the receiver to
  drop.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from ..config import PostOperation
from ..errors import CrmsyncError
from ..hooks import PostOpContext, hookimpl
from ..http import RetryPolicy, build_client, idempotent
from ..model import Change, Status, Subscription

__all__ = ["PostOperationRules", "sign"]

log = logging.getLogger(__name__)


def sign(secret: str, body: bytes) -> str:
    """The signature header value for ``body``: ``sha256=<hex HMAC>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class PostOperationRules:
    """The configured rules, as a plugin."""

    def __init__(self, rules: Sequence[PostOperation], *, http: httpx.Client | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 secrets: Mapping[str, str] | None = None) -> None:
        self.rules = list(rules)
        self._secrets = secrets  # Config.secrets(): the environment, then the secrets file
        self._http = http  # a client to use as it is (tests); else one per retry setting
        self._clients: dict[tuple[int, float], httpx.Client] = {}
        self._sleep = sleep
        for rule in self.rules:
            rule.secret(self._secrets)  # fail at start-up, not at the first unsubscribe

    def _client(self, rule: PostOperation) -> httpx.Client:
        """One client per retry setting, shared by every call of the rules with it."""
        key = (rule.retries, rule.timeout_s)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = build_client(
                timeout=rule.timeout_s, sleep=self._sleep,
                policy=RetryPolicy(attempts=rule.retries + 1, max_backoff=30.0))
        return client

    @hookimpl
    def crmsync_post_operation(self, change: Change, context: PostOpContext) -> list[Change]:
        follow: dict[str, Subscription] = {}
        for list_id, sub in change.subscriptions.items():
            event = {Status.UNSUBSCRIBED: "unsubscribe", Status.SUBSCRIBED: "subscribe"}.get(
                sub.status)
            for rule in self.rules:
                if rule.on != event or (rule.from_list not in (None, list_id)):
                    continue
                if rule.unsubscribe_from is not None:
                    targets = (context.all_lists if rule.unsubscribe_from == "all"
                               else rule.unsubscribe_from)
                    for target in targets:
                        if target != list_id and target not in change.subscriptions:
                            follow[target] = Subscription(
                                list_id=target, status=Status.UNSUBSCRIBED,
                                changed_at=sub.changed_at or datetime.now(UTC),
                                reason=f"post-operation: unsubscribed from list {list_id}",
                                source="post_operation")
                elif rule.call_url and context.extra.get("dry_run"):
                    context.extra.setdefault("calls", []).append(
                        {"url": rule.call_url, "list": list_id, "ok": True, "dry_run": True})
                elif rule.call_url:
                    context.extra.setdefault("calls", []).append(
                        self._call(rule, change, list_id, sub))
        if not follow:
            return []
        return [Change(email=change.email, ids=change.ids, subscriptions=follow,
                       source="post_operation", occurred_at=change.occurred_at,
                       reason=f"post-operation after {change.source or 'a change'}")]

    def _call(self, rule: PostOperation, change: Change, list_id: str,
              sub: Subscription) -> dict[str, Any]:
        assert rule.call_url is not None
        at = (sub.changed_at or change.occurred_at).isoformat()
        # The same call again (a retry, or a run that crashed after the call and before
        # recording it) carries the same delivery id, so the receiver can drop repeats:
        # delivery is at least once, and this makes it effectively once for a receiver
        # that remembers the ids it processed.
        delivery = hashlib.sha256("\x1f".join(
            (rule.call_url, change.email, list_id, sub.status.value, at)).encode()
        ).hexdigest()[:32]
        payload = {"email": change.email, "list": list_id, "status": sub.status.value,
                   "reason": sub.reason or change.reason, "source": change.source,
                   "at": at, "fields": dict(change.fields), "delivery_id": delivery}
        body = json.dumps(payload, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "X-Crmsync-Delivery": delivery}
        secret = rule.secret(self._secrets)
        if secret is not None:
            headers["X-Crmsync-Signature"] = sign(secret.get_secret_value(), body)
        client = self._http or self._client(rule)
        outcome: dict[str, Any] = {"url": rule.call_url, "list": list_id, "ok": False}
        # The transport's one retry policy (5xx, 429 with its Retry-After, a dropped
        # connection), resending the POST too: the delivery id makes a repeat harmless.
        try:
            if rule.method == "GET":
                query = {k: str(v or "") for k, v in payload.items() if k != "fields"}
                response = client.get(rule.call_url, params=query, headers=headers,
                                      timeout=rule.timeout_s)
            else:
                response = client.post(rule.call_url, content=body, headers=headers,
                                       timeout=rule.timeout_s, extensions=idempotent())
            outcome["status"] = response.status_code
            outcome["ok"] = response.is_success
        except (httpx.HTTPError, CrmsyncError) as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        if not outcome["ok"]:
            log.warning("post-operation call to %s for %s failed: %s", rule.call_url,
                        change.email, outcome.get("error") or outcome.get("status"))
        return outcome
