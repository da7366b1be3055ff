"""The daily API budget, read from ``Sforce-Limit-Info`` on every response."""

from __future__ import annotations

import re
from collections.abc import Mapping

from crmsync.errors import QuotaExhausted

__all__ = ["QuotaTracker"]

_USAGE = re.compile(r"(?:^|[;,\s])api-usage=(\d+)/(\d+)")


class QuotaTracker:
    """Remembers the last usage seen; refuses further calls past ``share`` of the limit.

    The response that crosses the line is still used (its data is good); the next call
    raises :class:`QuotaExhausted`, so a read stops after a page whose cursor is safe.
    """

    def __init__(self, share: float) -> None:
        self.share = share
        self.used: int | None = None
        self.limit: int | None = None
        self.reason: str | None = None

    def observe(self, headers: Mapping[str, str]) -> None:
        match = _USAGE.search(headers.get("sforce-limit-info", ""))
        if not match:
            return
        self.used, self.limit = int(match.group(1)), int(match.group(2))
        if self.limit and self.used >= self.share * self.limit:
            self.reason = (f"{self.used} of {self.limit} daily API calls used "
                           f"(quota_share={self.share})")

    def spent(self, message: str) -> None:
        """Salesforce said REQUEST_LIMIT_EXCEEDED."""
        self.reason = f"Salesforce refused the call: {message}"

    def guard(self) -> None:
        if self.reason:
            raise QuotaExhausted(
                f"Salesforce API budget used up: {self.reason}. The run stopped with its "
                "cursor kept: resume it once the 24-hour usage window has room, or raise "
                "quota_share / the org's API allocation", code="REQUEST_LIMIT_EXCEEDED",
                status=403)

    def describe(self) -> str:
        if self.used is None:
            return "API usage unknown"
        return f"API usage {self.used}/{self.limit}"
