"""Batch files: the import CSV we write, the unsubscriber export we read, and the round
trip through the emulator's file space (manifest, import, export)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailup_testbed import contact

from crmsync.errors import ConfigError, DataError
from crmsync.model import Change, Status, Subscription
from crmsync_mailup import MailUpSettings
from crmsync_mailup.files import MailUpFiles, neutralise


def files(**values) -> MailUpFiles:
    return MailUpFiles(MailUpSettings(**{"field_ids": {"name": 1, "surname": 2}, **values}))


def change(email: str, list_id: str, status: Status, groups=(), **fields) -> Change:
    return Change(email=email, fields=fields, subscriptions={list_id: Subscription(
        list_id=list_id, status=status, groups=frozenset(groups))})


def written(exchange: MailUpFiles, changes) -> tuple[int, bytes]:
    out = io.BytesIO()
    rows = exchange.write_import_file(out, changes)
    return rows, out.getvalue()


def upload(space: Path, name: str, data: bytes, rows: int) -> None:
    """What the batch engine does: the file, then its manifest (so it is complete)."""
    inbox = space / "in"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / name).write_bytes(data)
    (inbox / f"{name}.manifest.json").write_text(json.dumps(
        {"file": name, "rows": rows, "sha256": hashlib.sha256(data).hexdigest()}))


# -- the import file ------------------------------------------------------------------------------
def test_header_and_rows():
    rows, data = written(files(), [
        change("a@example.com", "1", Status.SUBSCRIBED, ["news", "7"], name="Ann"),
        change("b@example.com", "2", Status.UNSUBSCRIBED),
        change("c@example.com", "1", Status.PENDING, surname="Cole"),
    ])
    assert rows == 3
    assert data.decode().splitlines() == [
        "111|1|2|idList|ExternalGroupName|Status",
        "a@example.com|Ann||1|7,news|OPTIN",
        "b@example.com|||2||OPTOUT",
        "c@example.com||Cole|1||PENDING",
    ]


def test_group_ids_column_when_configured():
    exchange = files(file_group_column="IdGroup")
    _, data = written(exchange, [change("a@example.com", "1", Status.SUBSCRIBED, ["12", "7"])])
    assert data.decode().splitlines() == ["111|1|2|idList|IdGroup|Status",
                                          "a@example.com|||1|7,12|OPTIN"]
    with pytest.raises(DataError, match="names, not MailUp group ids"):
        written(exchange, [change("b@example.com", "1", Status.SUBSCRIBED, ["news"])])


def test_a_group_named_like_a_number_reaches_mailup_by_name(emulator):
    # Issue 14.7: one group column per row; a group *named* "2024" is a name, not an id.
    rows, data = written(files(), [change("y@example.com", "1", Status.SUBSCRIBED,
                                          ["2024", "news"])])
    upload(emulator.files_dir, "crmsync-import-y.csv", data, rows)
    report = emulator.import_files()
    assert report["imported"][0]["errors"] == []
    assert contact(emulator, "y@example.com")["lists"]["1"]["groups"] == ["2024", "news"]


@pytest.mark.parametrize("value", ["=SUM(A1)", "+1", "-2", "@cmd", "\tx", "\rx"])
def test_formula_injection_is_neutralised(value):
    _, data = written(files(file_separator=";"), [change("a@example.com", "1",
                                                         Status.SUBSCRIBED, name=value)])
    row = data.decode().split("\r\n")[1]
    assert f"'{value}" in row or f"\"'{value}\"" in row
    assert neutralise("plain") == "plain"


def test_separator_quoting_and_encodings():
    rows, data = written(files(file_separator=",", file_quoting="all", file_quotechar="'",
                               file_encoding="cp1252"),
                         [change("z@example.com", "1", Status.SUBSCRIBED, name="Zoë, Jr")])
    assert rows == 1
    assert data.splitlines()[1] == "'z@example.com','Zoë, Jr','','1','','OPTIN'".encode(
        "cp1252")
    _, bom = written(files(file_encoding="utf-8-sig"), [])
    assert bom.startswith(b"\xef\xbb\xbf111|")


def test_a_delete_becomes_opt_out_rows_on_the_configured_lists():
    from crmsync.model import Op

    rows, data = written(files(lists=["1", "2"]),
                         [Change(email="gone@example.com", op=Op.DELETE)])
    assert rows == 2
    assert data.decode().splitlines()[1:] == ["gone@example.com|||1||OPTOUT",
                                              "gone@example.com|||2||OPTOUT"]
    assert written(files(), [Change(email="gone@example.com", op=Op.DELETE)])[0] == 0


def test_unencodable_value_reports_its_line():
    with pytest.raises(DataError) as info:
        written(files(file_encoding="cp1252"), [
            change("ok@example.com", "1", Status.SUBSCRIBED, name="fine"),
            change("emoji@example.com", "1", Status.SUBSCRIBED, name="hi 🙂")])
    assert info.value.line == 3 and "emoji@example.com" in str(info.value)


def test_unknown_field_is_a_config_error():
    with pytest.raises(ConfigError, match="field_ids"):
        written(files(), [change("a@example.com", "1", Status.SUBSCRIBED, city="Rome")])


def test_writer_streams():
    """Rows reach the output in bounded chunks while changes are still being read."""
    exchange = files()
    out = io.BytesIO()
    seen = []

    def changes():
        for n in range(2000):
            seen.append(len(out.getvalue()))
            yield change(f"s{n}@example.com", "1", Status.SUBSCRIBED)

    assert exchange.write_import_file(out, changes()) == 2000
    # never more than 500 rows held back: the output grows at least every 500 changes
    assert all(seen[n + 501] > seen[n] for n in range(0, 1499)), "rows must not pile up"
    assert out.getvalue().count(b"\r\n") == 2001


def test_writer_reports_the_row_its_encoding_cannot_hold():
    exchange = files(file_encoding="cp1252")
    rows = [change(f"s{n}@example.com", "1", Status.SUBSCRIBED) for n in range(700)]
    rows[612] = change("s612@example.com", "1", Status.SUBSCRIBED, name="中文")
    with pytest.raises(DataError) as caught:
        exchange.write_import_file(io.BytesIO(), rows)
    assert "s612@example.com" in str(caught.value) and caught.value.line == 614


def test_import_file_name_is_safe():
    assert files().import_file_name("2026-11-28T06:00/../x") == \
        "crmsync-import-2026-11-28T06-00-..-x.csv"
    assert "/" not in files().import_file_name("../../etc/passwd")


# -- the export file ------------------------------------------------------------------------------
EXPORT = ("email{s}idList{s}OptOut_Date{s}optout_nl{s}optout_type{s}optout_subtype\r\n"
          "ann@example.com{s}1{s}20210122T111244{s}12{s}2{s}21\r\n"
          "j\u00fcrgen@example.com{s}2{s}20210123T080000{s}{s}16{s}161\r\n")


@pytest.mark.parametrize("separator", [";", ",", "|"])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252"])
def test_export_dialects(separator, encoding):
    data = EXPORT.format(s=separator).encode(encoding)
    results = list(files().read_export_file(io.BytesIO(data), "unsubscribers-1.csv"))
    assert all(isinstance(r, Change) for r in results), results
    first, second = results
    assert first.email == "ann@example.com"
    sub = first.subscriptions["1"]
    assert sub.status is Status.UNSUBSCRIBED
    # read in export_timezone, Europe/Rome by default (+01 in January)
    assert sub.changed_at.isoformat() == "2021-01-22T10:12:44+00:00"
    assert first.reason == "unsubscribe link (2/21)"
    assert sub.reason == "unsubscribe link (2/21), message 12"
    assert second.email == "jürgen@example.com"
    assert second.subscriptions["2"].reason == "spam complaint (16/161)"


def test_export_single_quotes_and_headerless():
    # the separator inside a quoted cell (an address cannot hold ';' unquoted: RFC 5322)
    quoted = ("'email';'idList';'OptOut_Date';'optout_nl'\n"
              "'a.b@example.com';'1';'20210122T111244';'x;y'\n")
    [result] = files().read_export_file(io.BytesIO(quoted.encode()), "x.csv")
    assert isinstance(result, Change) and result.email == "a.b@example.com"
    headerless = "ann@example.com;1;20210122T111244;;2;21\n"
    [result] = files().read_export_file(io.BytesIO(headerless.encode()), "y.csv")
    assert isinstance(result, Change) and result.subscriptions["1"].reason


def test_export_timezone_setting():
    data = b"email;idList;OptOut_Date\na@example.com;1;20210122T111244\n"
    [result] = files(export_timezone="UTC").read_export_file(io.BytesIO(data), "z")
    assert result.occurred_at.isoformat() == "2021-01-22T11:12:44+00:00"
    [result] = files().read_export_file(io.BytesIO(data), "z")
    assert result.occurred_at.isoformat() == "2021-01-22T10:12:44+00:00"  # Europe/Rome


def test_a_time_zone_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match="not an IANA time zone"):
        files(export_timezone="Rome")


def test_every_bad_row_is_reported_with_its_line():
    data = "\n".join([
        "email;idList;OptOut_Date;optout_nl;optout_type;optout_subtype",
        "good@example.com;1;20210122T111244;;2;21",       # 2 ok
        "not-an-email;1;20210122T111244;;2;21",           # 3 bad email
        "x@example.com;one;20210122T111244;;2;21",        # 4 bad list
        "y@example.com;1;22/01/2021;;2;21",               # 5 bad date
        "z@example.com;1;20210122T111244;;two;21",        # 6 bad type
        "w@example.com;1;20210122T111244",                # 7 too few columns
        "",                                               # 8 blank: skipped
        "good@example.com;1;20210125T000000;;2;21",       # 9 duplicate of line 2
        "good@example.com;2;20210125T000000;;4;41",       # 10 ok (other list)
    ]).encode()
    results = list(files().read_export_file(io.BytesIO(data), "u.csv"))
    errors = {r.line: r.reason for r in results if isinstance(r, DataError)}
    changes = [r for r in results if isinstance(r, Change)]
    assert sorted(errors) == [3, 4, 5, 6, 7, 9]
    assert "not an email" in errors[3] and "idList" in errors[4]
    assert "20210122T111244" in errors[5] and "optout_type" in errors[6]
    assert "columns" in errors[7] and "duplicate of line 2" in errors[9]
    assert [(c.email, *c.subscriptions) for c in changes] == [
        ("good@example.com", "1"), ("good@example.com", "2")]
    assert all("u.csv, line" in str(r) for r in results if isinstance(r, DataError))


def test_export_without_the_needed_columns_or_empty():
    [error] = files().read_export_file(io.BytesIO(b"name;city\nx;y\n"), "bad.csv")
    assert isinstance(error, DataError) and error.line == 1
    [empty] = files().read_export_file(io.BytesIO(b""), "empty.csv")
    assert isinstance(empty, DataError)


# -- the round trip through the emulator's file space --------------------------------------------
def test_round_trip_through_the_file_space(connector, emulator, control):
    space = emulator.files_dir
    connector.write([Change(email="was-out@example.com", subscriptions={"1": Subscription(
        list_id="1", status=Status.SUBSCRIBED)})])
    control.post("/unsubscribe", json={"email": "was-out@example.com", "list": "1"})
    control.post("/export")  # the export starts after this one
    name = connector.import_file_name("run-1")
    rows, data = written(connector.files, [
        change("new@example.com", "1", Status.SUBSCRIBED, ["news", "fresh"], name="New"),
        change("pend@example.com", "2", Status.PENDING),
        change("was-out@example.com", "1", Status.SUBSCRIBED, name="Back?"),
        change("leaver@example.com", "2", Status.UNSUBSCRIBED, ["vip"]),
        change("formula@example.com", "1", Status.SUBSCRIBED, name="=1+1"),
    ])
    upload(space, name, data, rows)
    (space / "in" / "half-written.csv.tmp").write_bytes(b"111\n")
    (space / "in" / "no-manifest.csv").write_bytes(b"111|idList\nq@example.com|1\n")
    report = control.post("/import").json()
    [imported] = report["imported"]
    assert imported == {"file": name, "rows": 5, "applied": 5, "errors": []}
    assert {s["file"] for s in report["skipped"]} == {"no-manifest.csv"}
    assert (space / "in" / "done" / name).exists() and not (space / "in" / name).exists()

    assert contact(emulator, "new@example.com")["lists"]["1"] == {
        "status": "subscribed", "groups": ["fresh", "news"]}
    assert contact(emulator, "new@example.com")["fields"]["name"] == "New"
    assert contact(emulator, "pend@example.com")["lists"]["2"]["status"] == "pending"
    assert contact(emulator, "was-out@example.com")["lists"]["1"]["status"] == "unsubscribed"
    assert contact(emulator, "leaver@example.com")["lists"]["2"] == {
        "status": "unsubscribed", "groups": ["vip"]}
    assert contact(emulator, "formula@example.com")["fields"]["name"] == "'=1+1"

    control.post("/unsubscribe", json={"email": "new@example.com", "list": "1"})
    exported = control.post("/export").json()
    assert exported["rows"] == 2
    out = space / "out" / exported["file"]
    assert out.match(connector.export_file_pattern())
    with out.open("rb") as handle:
        results = list(connector.read_export_file(handle, out.name))
    summary = {(r.email, *r.subscriptions, r.reason) for r in results}
    assert summary == {("leaver@example.com", "2", "imported as opt-out (4/41)"),
                       ("new@example.com", "1", "unsubscribe link (2/21)")}


def test_incomplete_or_mismatched_uploads_are_not_imported(emulator, control):
    space = emulator.files_dir
    data = b"111|idList|Status\r\nq@example.com|1|OPTIN\r\n"
    upload(space, "a.csv", data, 1)
    (space / "in" / "a.csv").write_bytes(data + b"r@example.com|1|OPTIN\r\n")  # changed since
    report = control.post("/import").json()
    assert report["imported"] == []
    assert report["skipped"] == [{"file": "a.csv", "why": "manifest does not match"}]
    assert contact(emulator, "q@example.com") is None


def test_bad_rows_in_an_import_are_reported_by_the_emulator(emulator, control):
    data = (b"111|idList|Status\r\nok@example.com|1|OPTIN\r\nbad|1|OPTIN\r\n"
            b"x@example.com|42|OPTIN\r\ny@example.com|1\r\n")
    upload(emulator.files_dir, "b.csv", data, 4)
    [imported] = control.post("/import").json()["imported"]
    assert imported["applied"] == 1
    assert [e.split(":")[0] for e in imported["errors"]] == ["line 3", "line 4", "line 5"]


def test_zipped_upload_is_imported(emulator, control):
    import zipfile

    data = b"111|idList|Status\r\nzip@example.com|1|OPTIN\r\n"
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("z.csv", data)
    inbox = emulator.files_dir / "in"
    inbox.mkdir(parents=True)
    (inbox / "z.csv.zip").write_bytes(packed.getvalue())
    (inbox / "z.csv.zip.manifest.json").write_text(json.dumps(
        {"file": "z.csv.zip", "rows": 1, "sha256": hashlib.sha256(data).hexdigest(),
         "run_id": "r1"}))
    [imported] = control.post("/import").json()["imported"]
    assert imported["applied"] == 1
    assert contact(emulator, "zip@example.com")["lists"]["1"]["status"] == "subscribed"


# -- properties: whatever the values, a row reads back as written -------------------------------
_values = st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                         blacklist_characters="\x00"), max_size=40)


@settings(max_examples=60, deadline=None)
@given(name=_values, surname=_values, separator=st.sampled_from([";", ",", "|", "\t"]),
       quotechar=st.sampled_from(['"', "'"]), quoting=st.sampled_from(["minimal", "all"]))
def test_import_rows_read_back_as_written(name, surname, separator, quotechar, quoting):
    import csv

    exchange = files(file_separator=separator, file_quotechar=quotechar, file_quoting=quoting)
    _, data = written(exchange, [change("p@example.com", "1", Status.SUBSCRIBED, ["g"],
                                        name=name, surname=surname)])
    reader = csv.reader(io.StringIO(data.decode(), newline=""), delimiter=separator,
                        quotechar=quotechar)
    header, row = list(reader)
    assert header == exchange.header()
    assert row == ["p@example.com", neutralise(name), neutralise(surname), "1", "g", "OPTIN"]


@settings(max_examples=40, deadline=None)
@given(locals_=st.lists(st.from_regex(r"[a-z0-9_%+-]{1,6}(\.[a-z0-9_%+-]{1,5})?",
                                      fullmatch=True),  # RFC 5322 dot-atoms
                        min_size=1, max_size=8, unique=True),
       separator=st.sampled_from([";", ",", "|"]),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "cp1252"]))
def test_export_rows_all_come_back(locals_, separator, encoding):
    lines = [separator.join(["email", "idList", "OptOut_Date", "optout_type"])]
    lines += [separator.join([f"{local}@example.com", "1", "20210122T111244", "2"])
              for local in locals_]
    data = ("\r\n".join(lines) + "\r\n").encode(encoding)
    results = list(files().read_export_file(io.BytesIO(data), "p.csv"))
    assert [r.email for r in results if isinstance(r, Change)] == [
        f"{local}@example.com" for local in locals_]
