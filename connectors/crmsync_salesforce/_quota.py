"""The daily API budget, read from ``Sforce-Limit-Info`` on every response.

Salesforce counts the org's calls itself and reports the count on every answer, so
each process learns what all of them spent from its own next call: the guard holds
across ``crmsync worker`` processes (each may make one call past the line) with no
count kept by crmsync.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping

from crmsync.errors import QuotaExhausted

__all__ = ["QuotaTracker"]

_USAGE = re.compile(r"(?:^|[;,\s])api-usage=(\d+)/(\d+)")


class QuotaTracker:
    """Remembers the last usage seen; refuses further calls past ``share`` of the limit.

    The response that crosses the line is still used (its data is good); the next call
    raises :class:`QuotaExhausted`, so a read stops after a page whose cursor is safe.
    ``recheck_s`` after that, one call is let through again (a long-lived worker keeps
    its connector for days; the 24-hour window moves on): its ``Sforce-Limit-Info``
    says whether the org has room again.
    """

    def __init__(self, share: float, *, recheck_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.share = share
        self.recheck_s = recheck_s
        self.used: int | None = None
        self.limit: int | None = None
        self.reason: str | None = None
        self._since = 0.0
        self._clock = clock

    def observe(self, headers: Mapping[str, str]) -> None:
        match = _USAGE.search(headers.get("sforce-limit-info", ""))
        if not match:
            return
        self.used, self.limit = int(match.group(1)), int(match.group(2))
        if self.limit and self.used >= self.share * self.limit:
            self.reason = (f"{self.used} of {self.limit} daily API calls used "
                           f"(quota_share={self.share})")
            self._since = self._clock()
        else:
            self.reason = None  # the org's own count: room again

    def spent(self, message: str) -> None:
        """Salesforce said REQUEST_LIMIT_EXCEEDED."""
        self.reason = f"Salesforce refused the call: {message}"
        self._since = self._clock()

    def guard(self) -> None:
        if self.reason and self._clock() - self._since < self.recheck_s:
            raise QuotaExhausted(
                f"Salesforce API budget used up: {self.reason}. The run stopped with its "
                "cursor kept: resume it once the 24-hour usage window has room, or raise "
                "quota_share / the org's API allocation", code="REQUEST_LIMIT_EXCEEDED",
                status=403)

    def describe(self) -> str:
        if self.used is None:
            return "API usage unknown"
        return f"API usage {self.used}/{self.limit}"
