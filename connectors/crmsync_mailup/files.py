"""MailUp's batch files: the import CSV we write and the unsubscriber export we read.

Import (written, streamed row by row): a header of field ids -- ``111`` email, the
configured ``1..39`` field ids -- then ``idList``, one group column (``file_group_column``:
``ExternalGroupName``, group names, or ``IdGroup``, group ids -- MailUp's file format
takes one or the other per row) and a status column (``Status`` by default:
``OPTIN`` / ``PENDING`` / ``OPTOUT``), one row per contact and list. Unsubscribes are
rows with ``OPTOUT``, which MailUp records as "imported as opt-out" (type 4); an
``OPTIN`` row never lifts an existing unsubscribe (MailUp's default import keeps an
existing status). A delete cannot travel in an import: it becomes ``OPTOUT`` rows for
its lists (or the configured ``lists``). A cell starting with ``= + - @``, a tab or a CR
is prefixed with ``'`` so a spreadsheet never runs it as a formula.

Export (read): ``email`` first, ``idList``, ``OptOut_Date`` (``20210122T111244``),
``optout_nl``, ``optout_type``, ``optout_subtype`` and optional extra columns;
separator ``;``, ``,`` or ``|`` (sniffed), quote ``"`` or ``'``, UTF-8 or ANSI
(cp1252), with or without a BOM. Every malformed row is reported as a
:class:`DataError` with its line number; a repeated ``(email, idList)`` is reported
too, never silently dropped.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import IO, Any
from zoneinfo import ZoneInfo

from crmsync.errors import ConfigError, DataError
from crmsync.model import Change, Op, Status, Subscription, normalize_email

from .settings import MailUpSettings

__all__ = ["EXPORT_COLUMNS", "OPTOUT_TYPES", "MailUpFiles", "neutralise", "optout_reason"]

#: Unsubscribe-type codes (the export's ``optout_type`` and the webhook ``[Reason]``).
OPTOUT_TYPES = {
    0: "admin", 1: "admin", 2: "unsubscribe link", 4: "imported as opt-out", 8: "bounce",
    16: "spam complaint", 32: "List-Unsubscribe http", 64: "List-Unsubscribe mailto",
    128: "inactive", 256: "blocked", 512: "repeated soft bounces",
    1024: "right to be forgotten",
}
EXPORT_COLUMNS = ("email", "idList", "OptOut_Date", "optout_nl", "optout_type",
                  "optout_subtype")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_BOM = b"\xef\xbb\xbf"
_SAFE_RUN = re.compile(r"[^A-Za-z0-9_.-]+")
log = logging.getLogger(__name__)


def neutralise(value: str) -> str:
    """Prefix ``'`` to a cell a spreadsheet would run as a formula."""
    return "'" + value if value.startswith(_FORMULA) else value


def optout_reason(kind: Any, subtype: Any = None) -> str | None:
    """``"unsubscribe link (2/21)"`` from MailUp's type and subtype codes."""
    if kind in (None, ""):
        return None
    try:
        code = int(str(kind))
    except ValueError:
        return str(kind)
    label = OPTOUT_TYPES.get(code, "unknown")
    sub = "" if subtype in (None, "") else f"/{subtype}"
    return f"{label} ({code}{sub})"


class MailUpFiles:
    """The import writer and export parser, configured by :class:`MailUpSettings`."""

    def __init__(self, settings: MailUpSettings) -> None:
        self.settings = settings

    # -- import ------------------------------------------------------------------------------
    def import_file_name(self, run_id: str) -> str:
        safe = _SAFE_RUN.sub("-", run_id).strip("-") or "run"
        return self.settings.import_file_template.format(run_id=safe)

    def header(self) -> list[str]:
        ids = sorted(self.settings.field_ids.values())
        return ["111", *(str(i) for i in ids), "idList", self.settings.file_group_column,
                self.settings.file_status_column]

    def write_import_file(self, out: IO[bytes], changes: Iterable[Change]) -> int:
        s = self.settings
        ids = sorted(s.field_ids.values())
        by_id = {ident: name for name, ident in s.field_ids.items()}
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=s.file_separator, quotechar=s.file_quotechar,
                            quoting=csv.QUOTE_ALL if s.file_quoting == "all"
                            else csv.QUOTE_MINIMAL, lineterminator="\r\n")
        encoding = "utf-8" if s.file_encoding == "utf-8-sig" else s.file_encoding
        if s.file_encoding == "utf-8-sig":
            out.write(_BOM)
        rows = 0
        # Rows are encoded and written a few hundred at a time: one write per row cost
        # more than the CSV formatting. Who is on which line is kept until the flush so
        # that a character the encoding cannot hold is still reported with its row.
        held: list[tuple[int, str, int]] = []  # line, email, where its row ends

        def flush() -> None:
            text = buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            try:
                out.write(text.encode(encoding))
            except UnicodeEncodeError:
                start = 0
                for line, email, end in held:
                    row, start = text[start:end], end
                    try:
                        row.encode(encoding)
                    except UnicodeEncodeError as exc:
                        raise DataError(
                            f"{email}: {exc.object[exc.start:exc.end]!r} cannot be written in "
                            f"{encoding}: set file_encoding = \"utf-8\"", line=line) from None
                raise
            held.clear()

        def emit(cells: list[str], line: int, email: str) -> None:
            writer.writerow(cells)
            held.append((line, email, buffer.tell()))
            if len(held) >= 500:
                flush()

        emit(self.header(), 1, "header")
        known = s.field_ids.keys()
        for change in changes:
            if not change.fields.keys() <= known:
                unknown = sorted(change.fields.keys() - known)
                raise ConfigError(f"ESP field(s) {', '.join(unknown)} have no MailUp field id: "
                                  "add them to field_ids in [esp.settings]")
            values = [neutralise(str(change.fields.get(by_id[i]) or "")) for i in ids]
            subscriptions = dict(change.subscriptions)
            if change.op is Op.DELETE:
                # An import cannot delete: the closest it can do is opt the address out
                # of every list (those named, else the configured ones).
                for list_id in list(subscriptions) or (s.lists or []):
                    subscriptions[list_id] = Subscription(list_id=list_id,
                                                          status=Status.UNSUBSCRIBED)
                if not subscriptions:
                    log.warning("delete of %s cannot travel in an import file: set `lists` "
                                "to opt it out of them instead", change.email)
            for list_id, sub in subscriptions.items():
                if not list_id.isdigit():
                    raise DataError(f"{change.email}: MailUp list ids are numbers, got "
                                    f"{list_id!r}", line=rows + 2)
                if s.file_group_column == "IdGroup":
                    names = sorted(g for g in sub.groups if not g.isdigit())
                    if names:
                        raise DataError(
                            f"{change.email}: group(s) {', '.join(names)} are names, not "
                            "MailUp group ids: set file_group_column = \"ExternalGroupName\"",
                            line=rows + 2)
                    groups = sorted(sub.groups, key=int)
                else:
                    groups = sorted(neutralise(g) for g in sub.groups)
                emit([change.email, *values, list_id, s.file_group_separator.join(groups),
                      s.file_status_values[sub.status.value]], rows + 2, change.email)
                rows += 1
        flush()
        return rows

    # -- export ------------------------------------------------------------------------------
    def export_file_pattern(self) -> str:
        return self.settings.export_file_glob

    def read_export_file(self, data: IO[bytes], name: str) -> Iterator[Change | DataError]:
        lines = self._decoded_lines(data)
        first = next(lines, None)
        if first is None or not first.strip():
            yield DataError("empty file: expected a header starting with email", line=1,
                            source=name)
            return
        delimiter = max(";,|", key=first.count)
        quote = "'" if first.lstrip().startswith("'") else '"'

        def all_lines() -> Iterator[str]:
            yield first
            yield from lines

        reader = csv.reader(all_lines(), delimiter=delimiter, quotechar=quote)
        head = next(reader)
        if "@" in head[0]:
            columns = list(EXPORT_COLUMNS[:len(head)])  # a headerless file
            rows: Iterable[list[str]] = _chain([head], reader)
        else:
            columns = [c.strip() for c in head]
            rows = reader
        lowered = [c.lower() for c in columns]
        missing = [c for c in ("email", "idlist", "optout_date") if c not in lowered]
        if missing:
            yield DataError(f"header {columns} lacks {', '.join(missing)}: is this MailUp's "
                            "unsubscriber export?", line=1, source=name)
            return
        index = {c: lowered.index(c) for c in lowered}
        zone = ZoneInfo(self.settings.export_timezone)
        seen: dict[tuple[str, str], int] = {}
        for row in rows:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            try:
                change, key = self._row(row, columns, index, zone)
            except ValueError as exc:
                yield DataError(str(exc), line=line, source=name)
                continue
            if key in seen:
                yield DataError(f"duplicate of line {seen[key]} ({key[0]} in list {key[1]}): "
                                "the first one is applied; check the export", line=line,
                                source=name)
                continue
            seen[key] = line
            yield change

    def _row(self, row: list[str], columns: list[str], index: dict[str, int],
             zone: ZoneInfo) -> tuple[Change, tuple[str, str]]:
        if len(row) != len(columns):
            raise ValueError(f"{len(row)} columns where the header has {len(columns)}")

        def cell(key: str) -> str:
            return row[index[key]].strip() if key in index else ""

        try:
            email = normalize_email(cell("email"))
        except ValueError:
            raise ValueError(f"{cell('email')!r} is not an email address") from None
        list_id = cell("idlist")
        if not list_id.isdigit():
            raise ValueError(f"idList {list_id!r} is not a list number")
        raw_date = cell("optout_date")
        try:
            at = datetime.strptime(raw_date, "%Y%m%dT%H%M%S").replace(tzinfo=zone)
        except ValueError:
            raise ValueError(f"OptOut_Date {raw_date!r} is not like 20210122T111244") from None
        kind, subtype = cell("optout_type"), cell("optout_subtype")
        for label, value in (("optout_type", kind), ("optout_subtype", subtype)):
            if value and not value.isdigit():
                raise ValueError(f"{label} {value!r} is not a MailUp code")
        reason = optout_reason(kind or None, subtype or None)
        message = cell("optout_nl") or None
        change = Change(
            email=email, source="mailup", reason=reason, occurred_at=at,
            event_id=f"export:{list_id}:{email}:{raw_date}",
            subscriptions={list_id: Subscription(
                list_id=list_id, status=Status.UNSUBSCRIBED, changed_at=at,
                reason=reason if message is None else f"{reason}, message {message}",
                source="mailup")})
        return change, (email, list_id)

    def _decoded_lines(self, data: IO[bytes]) -> Iterator[str]:
        # Decoding line by line keeps memory flat and lets "auto" take a UTF-8 file
        # and an ANSI one alike (a cp1252 byte sequence is almost never valid UTF-8).
        forced = self.settings.export_encoding
        first = True
        for raw in data:
            if first:
                first = False
                if raw.startswith(_BOM):
                    raw = raw[len(_BOM):]
            if forced == "cp1252":
                yield raw.decode("cp1252", errors="replace")
                continue
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                if forced == "utf-8":
                    yield raw.decode("utf-8", errors="replace")
                else:
                    yield raw.decode("cp1252", errors="replace")


def _chain(head: list[list[str]], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield from head
    yield from rest
