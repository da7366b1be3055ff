"""An unsubscriber export that the ESP is still writing is never read in part, and a
file that grew after it was read is not archived but read again: nothing is lost."""

from __future__ import annotations

import threading
import time

from crmsync.files import FileSpace

from ..core.conftest import Pair, write_config


def _pair(tmp_path, stable_s: float) -> Pair:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("stable_s = 0", f"stable_s = {stable_s}", 1))
    pair = Pair(tmp_path, path)
    for name in ("ann", "bob", "cy"):
        pair.crm.add(f"{name}@example.com", fields={"FirstName": name, "OptOut": "false"})
    assert pair.sync().status == "succeeded"
    pair.esp_import()
    return pair


def _opted_out(pair: Pair) -> list[str]:
    pair.crm._load()
    return sorted(r["email"] for r in pair.crm.records.values()
                  if r["fields"]["OptOut"] == "true")


def test_an_export_that_grows_after_it_was_read_is_read_again(tmp_path, monkeypatch) -> None:
    pair = _pair(tmp_path, 0)
    with pair.esp_connector() as esp:
        esp.unsubscribe("ann@example.com", "1")
        first = esp.export_unsubscribed()
        esp.unsubscribe("bob@example.com", "1")
        whole = esp.export_unsubscribed()
    export = pair.space / "out" / "unsubscribed-1.csv"
    export.parent.mkdir(exist_ok=True)
    export.write_bytes(first)
    rest = whole[len(first):] if whole.startswith(first) else whole.split(b"\n", 1)[1]
    read = FileSpace.open_read

    def read_then_the_esp_appends(self, folder, name):  # the ESP writes on after the read
        handle = read(self, folder, name)
        with export.open("ab") as out:
            out.write(rest)
        return handle

    monkeypatch.setattr(FileSpace, "open_read", read_then_the_esp_appends)
    stats = pair.sync()
    monkeypatch.setattr(FileSpace, "open_read", read)
    assert stats.files_archived == []  # what was read is not all there is
    assert export.exists() and _opted_out(pair) == ["ann@example.com"]
    stats = pair.sync()
    assert stats.files_archived == ["unsubscribed-1.csv"]
    assert _opted_out(pair) == ["ann@example.com", "bob@example.com"]


def test_an_export_still_growing_is_left_for_the_next_run(tmp_path) -> None:
    pair = _pair(tmp_path, 1)
    with pair.esp_connector() as esp:
        for name in ("ann", "bob", "cy"):
            esp.unsubscribe(f"{name}@example.com", "1")
        data = esp.export_unsubscribed()
    export = pair.space / "out" / "unsubscribed-1.csv"
    export.parent.mkdir(exist_ok=True)
    lines = data.splitlines(keepends=True)

    def write_slowly() -> None:
        with export.open("wb") as out:
            for line in lines:
                out.write(line)
                out.flush()
                time.sleep(0.5)

    export.write_bytes(b"")
    writer = threading.Thread(target=write_slowly)
    writer.start()
    during = pair.sync()
    still_writing = writer.is_alive()
    writer.join()
    assert still_writing
    assert during.esp_unsubscribes_read == 0 and during.files_archived == []
    after = pair.sync()
    assert after.esp_unsubscribes_read == 3 and after.files_archived == ["unsubscribed-1.csv"]
    assert _opted_out(pair) == ["ann@example.com", "bob@example.com", "cy@example.com"]


def test_an_export_that_changes_while_it_is_read_is_left_whole(tmp_path, monkeypatch) -> None:
    pair = _pair(tmp_path, 0)
    with pair.esp_connector() as esp:
        esp.unsubscribe("ann@example.com", "1")
        esp.unsubscribe("bob@example.com", "1")
        data = esp.export_unsubscribed()
    export = pair.space / "out" / "unsubscribed-1.csv"
    export.parent.mkdir(exist_ok=True)
    head, _, tail = data.rstrip(b"\n").rpartition(b"\n")  # the last row comes later
    export.write_bytes(head + b"\n")
    stamp = FileSpace.stamp
    calls = [0]

    def stamp_then_the_esp_writes(self, folder, name):  # the ESP writes during the read
        calls[0] += 1
        result = stamp(self, folder, name)
        if calls[0] == 1:
            with export.open("ab") as out:
                out.write(tail + b"\n")
        return result

    monkeypatch.setattr(FileSpace, "stamp", stamp_then_the_esp_writes)
    stats = pair.sync()
    monkeypatch.setattr(FileSpace, "stamp", stamp)
    assert stats.status == "succeeded"
    assert stats.esp_unsubscribes_read == 0 and stats.files_archived == []
    stats = pair.sync()
    assert stats.esp_unsubscribes_read == 2 and stats.files_archived == ["unsubscribed-1.csv"]
    assert _opted_out(pair) == ["ann@example.com", "bob@example.com"]
