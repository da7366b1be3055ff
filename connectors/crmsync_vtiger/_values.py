"""vTiger values: every field arrives as a string, typed only by ``describe``.

Booleans are ``"0"`` / ``"1"``, datetimes ``"YYYY-MM-DD HH:MM:SS"`` in the server's time
zone, references are webservice ids (``19x1``), multi-select picklists are joined with
``" |##| "``. crmsync's neutral form is ``"true"`` / ``"false"``, ISO-8601 UTC, the ws id
(``None`` when empty) and ``;``-joined values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["FieldCodec", "WsId", "parse_bool"]

_WS_ID = re.compile(r"^(\d+)x(\d+)$")
_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_MULTI = " |##| "
_TRUE = frozenset({"1", "true", "on", "yes", "y"})
_FALSE = frozenset({"0", "false", "off", "no", "n", ""})


def parse_bool(value: Any) -> bool:
    """vTiger's ``"1"`` / ``"0"`` (and the ``on`` / ``yes`` spellings forms use)."""
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"not a vTiger boolean: {value!r} (expected 1 or 0)")


@dataclass(frozen=True)
class WsId:
    """A webservice id ``<module prefix>x<crmid>``; the prefix differs per install."""

    prefix: str
    crmid: int

    @classmethod
    def parse(cls, text: str) -> WsId:
        match = _WS_ID.match(text.strip())
        if not match:
            raise ValueError(f"not a vTiger webservice id: {text!r} (expected like 12x345)")
        return cls(match.group(1), int(match.group(2)))

    @classmethod
    def coerce(cls, text: str, prefix: str) -> WsId:
        """``"345"`` or ``"12x345"`` as an id of the module whose prefix is ``prefix``."""
        text = text.strip()
        if text.isdigit():
            return cls(prefix, int(text))
        ws = cls.parse(text)
        if ws.prefix != prefix:
            raise ValueError(f"{text!r} is not an id of this module (its ids start {prefix}x)")
        return ws

    def __str__(self) -> str:
        return f"{self.prefix}x{self.crmid}"


@lru_cache(maxsize=4096)  # records share stamps (bulk imports, same-second saves)
def _parse_time(raw: str, tz: ZoneInfo) -> datetime:
    if not _STAMP.match(raw):
        raise ValueError(f"not a vTiger datetime: {raw!r} (expected YYYY-MM-DD HH:MM:SS)")
    return datetime.fromisoformat(raw).replace(tzinfo=tz).astimezone(UTC)


class FieldCodec:
    """Converts one module's values between vTiger strings and crmsync's neutral strings."""

    def __init__(self, describe: Mapping[str, Any], timezone: str) -> None:
        self.module = str(describe.get("name", ""))
        self.id_prefix = str(describe["idPrefix"])
        self.types: dict[str, str] = {
            str(f["name"]): str((f.get("type") or {}).get("name", "string"))
            for f in describe.get("fields", [])
        }
        self.mandatory = [str(f["name"]) for f in describe.get("fields", [])
                          if f.get("mandatory")]
        self.editable = frozenset(str(f["name"]) for f in describe.get("fields", [])
                                  if f.get("editable", True))
        self.tz = ZoneInfo(timezone)

    def parse_time(self, raw: str) -> datetime:
        """A server datetime string as an aware UTC datetime."""
        return _parse_time(raw.strip(), self.tz)

    def format_time(self, moment: datetime) -> str:
        """An aware datetime as the server's ``YYYY-MM-DD HH:MM:SS``."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S")

    def to_neutral(self, name: str, raw: Any) -> str | None:
        if raw is None:
            return None
        text = str(raw)
        kind = self.types.get(name, "string")
        if kind == "boolean":
            try:
                return "true" if parse_bool(text) else "false"
            except ValueError:
                return text
        if kind == "datetime":
            if not text.strip():
                return None
            try:
                return self.parse_time(text).isoformat().replace("+00:00", "Z")
            except ValueError:
                return text
        if kind in ("reference", "owner"):
            return text or None
        if kind == "multipicklist":
            return ";".join(part.strip() for part in text.split("|##|") if part.strip())
        return text

    def to_vtiger(self, name: str, value: str | None) -> str:
        if value is None:
            return ""
        kind = self.types.get(name, "string")
        if kind == "boolean":
            return "1" if parse_bool(value) else "0"
        if kind == "datetime" and value.strip():
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            return self.format_time(moment)
        if kind == "multipicklist":
            return _MULTI.join(part.strip() for part in value.split(";") if part.strip())
        return value

    def neutral_fields(self, row: Mapping[str, Any]) -> dict[str, str | None]:
        return {name: self.to_neutral(name, value) for name, value in row.items()
                if name != "id"}
