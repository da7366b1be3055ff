"""The emulator's batch file space: complete uploads in ``in/`` (their manifest present
and matching) are imported; the unsubscribers since the last export are written to
``out/`` in MailUp's export format."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from crmsync.files import large_csv_fields

from .store import MailUpError, MailUpStore, now

__all__ = ["BatchSpace"]


class BatchSpace:
    """The file space of one emulator (a local folder an FTP server may also serve)."""

    def __init__(self, store: MailUpStore, files_dir: Path | None, *, status_column: str,
                 separator: str, encoding: str, zone: str = "UTC") -> None:
        self.store = store
        self.zone = ZoneInfo(zone)  # OptOut_Date is written in the console's zone
        self.files_dir = files_dir
        self.status_column = status_column
        self.separator = separator
        self.encoding = encoding

    def _space(self, sub: str) -> Path:
        if self.files_dir is None:
            raise ValueError("the emulator has no file space: start it with files_dir=<folder>")
        folder = self.files_dir / sub
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def import_files(self) -> dict[str, Any]:
        """Import every complete file in ``in/`` (its manifest present and matching)."""
        inbox = self._space("in")
        done = self._space("in/done")
        report: dict[str, Any] = {"imported": [], "skipped": []}
        for path in sorted(inbox.iterdir()):
            name = path.name
            if (not path.is_file() or name.startswith(".") or name.endswith(
                    (".manifest.json", ".tmp", ".part", ".partial"))):
                continue
            manifest_path = inbox / f"{name}.manifest.json"
            if not manifest_path.exists():
                report["skipped"].append({"file": name, "why": "no manifest yet"})
                continue
            data = path.read_bytes()
            if name.endswith(".zip"):
                # crmsync zips on request; the manifest's hash is the CSV's inside.
                try:
                    with zipfile.ZipFile(io.BytesIO(data)) as archive:
                        data = archive.read(archive.namelist()[0])
                except (zipfile.BadZipFile, IndexError):
                    report["skipped"].append({"file": name, "why": "not a readable zip"})
                    continue
            try:
                manifest = json.loads(manifest_path.read_text())
                complete = (manifest.get("file") == name and manifest.get("sha256")
                            == hashlib.sha256(data).hexdigest())
            except ValueError:
                complete = False
            if not complete:
                report["skipped"].append({"file": name, "why": "manifest does not match"})
                continue
            result = self._import_csv(data)
            result["file"] = name
            if result["rows"] != manifest.get("rows"):
                result["errors"].append(f"manifest says {manifest.get('rows')} rows, "
                                        f"file has {result['rows']}")
            report["imported"].append(result)
            shutil.move(str(path), str(done / name))
            shutil.move(str(manifest_path), str(done / manifest_path.name))
        return report

    def _import_csv(self, data: bytes) -> dict[str, Any]:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = data.decode("cp1252")
        first = text.split("\n", 1)[0]
        delimiter = max(";,|\t", key=first.count)
        quote_char = "'" if first.startswith("'") else '"'
        with large_csv_fields():  # a long text field is one cell
            reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                                quotechar=quote_char)
            header = [h.strip() for h in next(reader, [])]
            lowered = [h.lower() for h in header]
            errors: list[str] = []
            rows = applied = 0
            if "111" not in header:
                return {"rows": 0, "applied": 0, "errors": ["header lacks 111 (email)"]}
            status_col = self.status_column.lower()
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                rows += 1
                line = reader.line_num
                if len(row) != len(header):
                    errors.append(f"line {line}: {len(row)} columns, header has {len(header)}")
                    continue
                cells = dict(zip(lowered, row, strict=True))
                list_id = cells.get("idlist", "").strip()
                if list_id not in self.store.lists:
                    errors.append(f"line {line}: unknown list {list_id!r}")
                    continue
                status = cells.get(status_col, "OPTIN").strip().upper() or "OPTIN"
                fields = [{"Id": int(h), "Value": cells[h.lower()]} for h in header
                          if h.isdigit() and int(h) in self.store.fields]
                try:
                    rec = self.store.upsert({"Email": cells["111"], "Fields": fields}, list_id,
                                       confirm=status == "PENDING", optout=status == "OPTOUT")
                    if status == "PENDING" and rec["lists"][list_id]["status"] == "subscribed":
                        pass  # a file never demotes a subscribed recipient to pending
                    groups = [g for g in re.split(r"[,;]", cells.get("idgroup", "")) if g.strip()]
                    names = [g for g in re.split(r"[,;]", cells.get("externalgroupname", ""))
                             if g.strip()]
                    if groups and names:
                        # The file format takes IdGroup *or* ExternalGroupName per row.
                        raise ValueError("both IdGroup and ExternalGroupName are set: a row "
                                         "names its groups one way only")
                    if "idgroup" in cells or "externalgroupname" in cells:
                        self.store.replace_groups(rec, list_id, groups, names)
                except (MailUpError, ValueError) as exc:
                    errors.append(f"line {line}: {exc}")
                    continue
                applied += 1
            return {"rows": rows, "applied": applied, "errors": errors}

    def export_unsubscribers(self, *, row_delay_s: float = 0.0) -> dict[str, Any]:
        """Write the unsubscribers since the last export to ``out/``: atomically (a
        temporary name, then a rename), or, with ``row_delay_s``, in place a row at a
        time, ``row_delay_s`` seconds apart. Nothing in MailUp's documentation says its
        exports appear atomically, so a reader must cope with a file still being written.
        """
        out = self._space("out")
        rows = self.store.optouts[self.store.exported:]
        stamp = now().strftime("%Y%m%dT%H%M%S")
        name = f"unsubscribers-{stamp}-{len(self.store.optouts)}.csv"
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=self.separator, lineterminator="\r\n")
        writer.writerow(["email", "idList", "OptOut_Date", "optout_nl", "optout_type",
                         "optout_subtype"])
        for item in rows:
            at = item["at"].astimezone(self.zone)
            writer.writerow([item["email"], item["list"], at.strftime("%Y%m%dT%H%M%S"),
                             item["nl"] or "", item["type"],
                             "" if item["subtype"] is None else item["subtype"]])
        if row_delay_s > 0:
            with (out / name).open("wb") as slow:
                for line in buffer.getvalue().splitlines(keepends=True):
                    slow.write(line.encode(self.encoding))
                    slow.flush()
                    time.sleep(row_delay_s)
        else:
            tmp = out / f".{name}.tmp"
            tmp.write_bytes(buffer.getvalue().encode(self.encoding))
            tmp.replace(out / name)
        self.store.exported = len(self.store.optouts)
        return {"file": name, "rows": len(rows)}
