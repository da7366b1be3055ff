"""The batch run end to end on the in-memory connectors and a local file space."""

from __future__ import annotations

import csv
import io
import json

import pytest

from crmsync.model import Contact

from .conftest import Pair, _seeded_pair, write_config

CASCADE_1_TO_2 = """
[[post_operations]]
on = "unsubscribe"
from_list = 1
unsubscribe_from = [2]
"""


def rows_uploaded(pair: Pair) -> list[dict[str, str]]:
    rows = []
    paths = [*(pair.space / "in").glob("import-*.csv"),
             *(pair.space / "in" / "done").glob("import-*.csv")]
    for path in sorted(paths, key=lambda p: p.name):  # run ids sort by time
        rows += list(csv.DictReader(io.StringIO(path.read_text()), delimiter=";"))
    return rows


def test_full_export_writes_file_and_manifest(pair: Pair) -> None:
    stats = pair.sync()
    assert stats.status == "succeeded" and stats.full
    assert stats.crm_read == 4
    files = sorted(p.name for p in (pair.space / "in").iterdir())
    data_files = [f for f in files if f.endswith(".csv")]
    assert len(data_files) == 1 and f"{data_files[0]}.manifest.json" in files
    manifest = json.loads((pair.space / "in" / f"{data_files[0]}.manifest.json").read_text())
    body = (pair.space / "in" / data_files[0]).read_bytes()
    import hashlib

    assert manifest["sha256"] == hashlib.sha256(body).hexdigest()
    assert manifest["rows"] == len(body.decode().strip().splitlines()) - 1
    pair.esp_import()
    assert pair.esp_status("ann@example.com", "1") == "subscribed"
    assert pair.esp_status("ann@example.com", "2") == "subscribed"
    assert pair.esp_status("cyd@example.com", "1") == "unsubscribed"  # opted out at arrival
    assert pair.esp_status("dee@example.com", "2") == "pending"
    assert pair.esp_status("bob@example.com", "2") is None  # not in the campaign
    groups = {r["email"]: r["groups"] for r in rows_uploaded(pair) if r["list"] == "1"}
    assert groups["ann@example.com"] == "news,tech"


def test_diff_sends_only_mapped_changes(pair: Pair) -> None:
    pair.sync()
    pair.esp_import()
    record_id = pair.crm.by_email("bob@example.com")
    pair.crm.update(record_id, fields={"Phone": "123"})  # not mapped: not re-sent
    stats = pair.sync()
    assert not stats.full and stats.esp_written == 0 and stats.skipped_unchanged >= 1
    pair.crm.update(record_id, fields={"LastName": "Brown"})
    stats = pair.sync()
    assert stats.esp_written == 1
    pair.esp_import()
    pair.esp._load()
    assert pair.esp.records[pair.esp.by_email("bob@example.com")]["fields"]["surname"] == "Brown"


def test_esp_unsubscribe_reaches_crm_and_is_journaled_once(pair: Pair) -> None:
    pair.sync()
    pair.esp_import()
    pair.esp_unsubscribe("ann@example.com")
    stats = pair.sync()
    assert stats.esp_unsubscribes_read >= 1 and stats.crm_written == 1
    assert pair.crm_record("ann@example.com")["fields"]["OptOut"] == "true"
    assert (pair.space / "archive" / "unsubscribed-1.csv").exists()
    assert not (pair.space / "out" / "unsubscribed-1.csv").exists()
    pair.sync()  # nothing new: nothing journaled twice, no echo back to the ESP
    entries = [e for e in pair.journal("ann@example.com")
               if e["list_id"] == "1" and e["new_status"] == "unsubscribed"]
    assert len(entries) == 1 and entries[0]["applied_to"] == "crm"
    assert entries[0]["source"].startswith("esp:")


def test_stale_crm_data_never_resubscribes(pair: Pair) -> None:
    pair.sync()
    pair.esp_import()
    pair.esp_unsubscribe("bob@example.com")
    # the CRM write-back fails, so the CRM still says "subscribed" and is edited later
    pair.config = pair.config.model_copy(update={"crm": pair.config.crm.model_copy(
        update={"settings": {**pair.config.crm.settings, "fail_emails": ["bob@example.com"]}})})
    pair.sync()
    pair.crm.update(pair.crm.by_email("bob@example.com"), fields={"LastName": "Later"})
    pair.sync()
    pair.esp_import()
    assert pair.esp_status("bob@example.com", "1") == "unsubscribed"
    sent = [r for r in rows_uploaded(pair) if r["email"] == "bob@example.com" and r["list"] == "1"]
    assert sent[-1]["status"] == "unsubscribed"


def test_explicit_crm_opt_in_goes_through_confirmation(tmp_path) -> None:
    pair = Pair(tmp_path, write_config(tmp_path, resubscribe="explicit_newer"))
    record_id = pair.crm.add("eve@example.com", fields={"OptOut": "true"})
    pair.sync()
    pair.esp_import()
    assert pair.esp_status("eve@example.com") == "unsubscribed"
    pair.crm.update(record_id, fields={"OptOut": "false"})  # a user opts her back in
    pair.sync()
    pair.esp_import()
    assert pair.esp_status("eve@example.com") == "pending"


def test_never_policy_keeps_unsubscribe_even_on_crm_opt_in(pair: Pair) -> None:
    pair.sync()
    pair.esp_import()
    record_id = pair.crm.by_email("cyd@example.com")
    pair.crm.update(record_id, fields={"OptOut": "false"})
    stats = pair.sync()
    pair.esp_import()
    assert pair.esp_status("cyd@example.com") == "unsubscribed"
    assert stats.consent_kept == 1


def test_post_operation_cascades_to_other_lists(tmp_path) -> None:
    pair = Pair(tmp_path, write_config(tmp_path, extra=CASCADE_1_TO_2))
    pair.crm.add("ann@example.com", fields={"OptOut": "false"},
                 memberships={"campaign:7": "Responded"})
    pair.sync()
    pair.esp_import()
    pair.esp_unsubscribe("ann@example.com")
    stats = pair.sync()
    assert stats.post_operations == 1
    record = pair.crm_record("ann@example.com")
    assert record["fields"]["OptOut"] == "true"
    assert record["memberships"]["campaign:7"] == "Opted Out"
    pair.esp_import()
    assert pair.esp_status("ann@example.com", "2") == "unsubscribed"
    sources = {(e["list_id"], e["source"]) for e in pair.journal("ann@example.com")
               if e["new_status"] == "unsubscribed"}
    assert ("2", "post_operation") in sources


@pytest.mark.parametrize("mode", ["files", "api"])
def test_crm_side_opt_out_runs_the_cascade_in_the_same_run(tmp_path, mode) -> None:
    """Post-operations follow a status change whichever side made it: an opt-out made in
    the CRM unsubscribes list 2 too, at the ESP and in the CRM, in the run that sends it."""
    pair = Pair(tmp_path, write_config(tmp_path, mode=mode, extra=CASCADE_1_TO_2))
    ann = pair.crm.add("ann@example.com", fields={"OptOut": "false"},
                       memberships={"campaign:7": "Responded"})
    pair.crm.add("bob@example.com", fields={"OptOut": "false"},
                 memberships={"campaign:7": "Responded"})
    pair.sync()
    pair.esp_import()
    assert pair.esp_status("ann@example.com", "2") == "subscribed"
    pair.crm.update(ann, fields={"OptOut": "true"})  # a CRM user opts Ann out
    stats = pair.sync()
    pair.esp_import()
    assert stats.post_operations == 1
    assert pair.esp_status("ann@example.com", "1") == "unsubscribed"
    assert pair.esp_status("ann@example.com", "2") == "unsubscribed"
    assert pair.crm_record("ann@example.com")["memberships"]["campaign:7"] == "Opted Out"
    assert pair.esp_status("bob@example.com", "2") == "subscribed"
    changes = {(e["list_id"], e["old_status"], e["new_status"], e["source"])
               for e in pair.journal("ann@example.com")}
    assert ("1", "subscribed", "unsubscribed", "crm:memory") in changes
    assert ("2", "subscribed", "unsubscribed", "post_operation") in changes
    # nothing left over for the next run, and the cascade is not done twice
    again = pair.sync()
    pair.esp_import()
    assert again.post_operations == 0 and again.esp_written == 0
    assert len([e for e in pair.journal("ann@example.com")
                if e["source"] == "post_operation"]) == 1


@pytest.mark.parametrize("mode", ["files", "api"])
def test_an_esp_unsubscribe_the_crm_does_not_hold_is_journaled_once(tmp_path, mode) -> None:
    """A journal entry is a status change, once: an address unsubscribed at the ESP and
    absent from the CRM is recorded in the state store the first time, and not again on
    every later run that reads the same unsubscribe."""
    pair = Pair(tmp_path, write_config(tmp_path, mode=mode))
    pair.crm.add("ann@example.com", fields={"OptOut": "false"})
    pair.esp.add("zed@example.com", lists={"1": "subscribed"})
    pair.sync()
    pair.esp_import()
    for run in range(3):
        if mode == "files" or run == 0:
            pair.esp_unsubscribe("zed@example.com") if run == 0 else pair.esp_export(
                f"unsubscribed-{run + 1}.csv")
        stats = pair.sync(full=True)
        assert stats.failed == 0
    entries = [(e["list_id"], e["old_status"], e["new_status"], e["applied_to"])
               for e in pair.journal("zed@example.com")]
    assert entries == [("1", None, "unsubscribed", "state")]


def test_dry_run_writes_nothing(pair: Pair) -> None:
    stats = pair.sync(dry_run=True)
    assert stats.dry_run and stats.crm_read == 4
    assert stats.plan["1"]["esp"]["add"] == 4
    assert not (pair.space / "in").exists()
    assert pair.journal() == []
    assert pair.sync().full  # the dry run left no cursor behind


def test_api_mode_writes_through_the_esp(tmp_path) -> None:
    pair = Pair(tmp_path, write_config(tmp_path, mode="api"))
    pair.crm.add("ann@example.com", fields={"OptOut": "false"})
    stats = pair.sync()
    assert stats.esp_written == 1 and stats.esp_mode == "api"
    assert pair.esp_status("ann@example.com") == "subscribed"
    pair.esp_unsubscribe("ann@example.com", export=None)
    stats = pair.sync()
    assert pair.crm_record("ann@example.com")["fields"]["OptOut"] == "true"


def test_failed_records_are_reported(tmp_path) -> None:
    pair = Pair(tmp_path, write_config(tmp_path, mode="api"))
    pair.config = pair.config.model_copy(update={"esp": pair.config.esp.model_copy(
        update={"settings": {**pair.config.esp.settings, "fail_emails": ["bad@example.com"]}})})
    pair.crm.add("bad@example.com", fields={"OptOut": "false"})
    pair.crm.add("good@example.com", fields={"OptOut": "false"})
    stats = pair.sync()
    assert stats.failed == 1 and stats.status == "partial"
    report = list(csv.DictReader(open(stats.report)))
    assert report[0]["email"] == "bad@example.com" and "rejected" in report[0]["reason"]
    assert pair.esp_status("good@example.com") == "subscribed"
    stats = pair.sync()  # the failed one is tried again: its snapshot was not committed
    assert stats.failed == 1


def test_unknown_list_in_export_is_reported_not_dropped(pair: Pair) -> None:
    pair.sync()
    (pair.space / "out").mkdir(exist_ok=True)
    (pair.space / "out" / "unsubscribed-9.csv").write_text(
        "email;list;date;reason\nann@example.com;9;2026-01-01T00:00:00+00:00;link\n"
        "broken-row\n")
    stats = pair.sync()
    reasons = [f.reason for f in []]
    assert stats.failed == 2, reasons
    report = open(stats.report).read()
    assert "unknown ESP list id '9'" in report and "unsubscribed-9.csv:3" in report


@pytest.mark.parametrize("crash_at", ["upload", "commit_spool"])
def test_crash_between_upload_and_commit_resumes_without_resending(pair: Pair, crash_at,
                                                                   monkeypatch) -> None:
    from crmsync.files import FileSpace
    from crmsync.state import StateStore

    owner = FileSpace if crash_at == "upload" else StateStore
    original = getattr(owner, crash_at)
    calls = {"n": 0}

    def crash(self, *args, **kwargs):
        if crash_at == "upload":
            original(self, *args, **kwargs)  # the file is up; the process dies before commit
        calls["n"] += 1
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(owner, crash_at, crash)
    with pytest.raises(KeyboardInterrupt):
        pair.sync()
    monkeypatch.setattr(owner, crash_at, original)
    stats = pair.sync()
    assert stats.recovered == 1
    uploads = list((pair.space / "in").glob("import-*.csv"))
    assert len(uploads) == 1, "the change set was uploaded exactly once"
    assert pair.sync().esp_written == 0
    pair.esp_import()
    assert pair.esp_status("ann@example.com") == "subscribed"
    journal = [e for e in pair.journal() if e["applied_to"] == "esp"]
    assert len(journal) == len({(e["email"], e["list_id"]) for e in journal})


def test_first_run_applies_unsubscriptions_of_contacts_not_yet_read(pair: Pair) -> None:
    """The ESP's export arrives before crmsync ever read the CRM: the opt-out still lands."""
    (pair.space / "out").mkdir(parents=True)
    (pair.space / "out" / "unsubscribed-0.csv").write_text(
        "email;list;date;reason\nbob@example.com;1;2026-01-01T00:00:00+00:00;link\n")
    stats = pair.sync()
    assert stats.status == "succeeded"
    assert pair.crm_record("bob@example.com")["fields"]["OptOut"] == "true"
    pair.esp_import()
    assert pair.esp_status("bob@example.com", "1") == "unsubscribed"
    entries = [(e["applied_to"], e["new_status"]) for e in pair.journal("bob@example.com")
               if e["list_id"] == "1"]
    assert entries == [("state", "unsubscribed"), ("crm", "unsubscribed")]


def test_post_operation_calls_the_customer_url_signed(tmp_path, monkeypatch) -> None:
    """A real HTTP server receives the call; the signature verifies with the shared key."""
    import hashlib
    import hmac

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from crmsync.emulator import EmulatorServer

    received = []

    async def hook(request):
        received.append((dict(request.headers), await request.body()))
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/unsubscribed", hook, methods=["POST"])])
    monkeypatch.setenv("CRMSYNC_HOOK_SECRET", "shared-key")
    with EmulatorServer(app) as server:
        pair = Pair(tmp_path, write_config(tmp_path, extra=f"""
[[post_operations]]
on = "unsubscribe"
call_url = "{server.url}/unsubscribed"
secret_env = "CRMSYNC_HOOK_SECRET"
"""))
        pair.crm.add("ann@example.com", fields={"OptOut": "false", "FirstName": "Ann"})
        pair.sync()
        pair.esp_import()
        pair.esp_unsubscribe("ann@example.com")
        stats = pair.sync()
    assert stats.post_operations == 1 and len(received) == 1
    headers, body = received[0]
    expected = "sha256=" + hmac.new(b"shared-key", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-crmsync-signature"], expected)
    payload = json.loads(body)
    assert payload["email"] == "ann@example.com" and payload["list"] == "1"
    assert payload["status"] == "unsubscribed"
    assert headers["x-crmsync-delivery"] == payload["delivery_id"]
    [entry] = [e for e in pair.journal("ann@example.com") if e["applied_to"] == "url"]
    assert entry["source"] == "post_operation" and "200" in entry["reason"]


def test_a_url_call_repeated_after_a_crash_carries_the_same_delivery_id(tmp_path,
                                                                       monkeypatch) -> None:
    """Killed after calling the customer's URL, before recording it: the next run calls
    again (at least once), with the delivery id of the first call, so the receiver can
    drop the repeat. A different unsubscribe gets a different id."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from crmsync.emulator import EmulatorServer
    from crmsync.engine.apply import Pipeline

    received = []

    async def hook(request):
        received.append(json.loads(await request.body()))
        return PlainTextResponse("ok")

    original = Pipeline.post_operations

    def killed_after_the_call(self, applied):
        original(self, applied)
        raise KeyboardInterrupt("killed before the queue row was marked done")

    app = Starlette(routes=[Route("/unsubscribed", hook, methods=["POST"])])
    with EmulatorServer(app) as server:
        pair = Pair(tmp_path, write_config(tmp_path, extra=f"""
[[post_operations]]
on = "unsubscribe"
call_url = "{server.url}/unsubscribed"
"""))
        pair.crm.add("ann@example.com", fields={"OptOut": "false"})
        pair.crm.add("bob@example.com", fields={"OptOut": "false"})
        pair.sync()
        pair.esp_import()
        pair.esp_unsubscribe("ann@example.com")
        monkeypatch.setattr(Pipeline, "post_operations", killed_after_the_call)
        with pytest.raises(KeyboardInterrupt):
            pair.sync()
        monkeypatch.setattr(Pipeline, "post_operations", original)
        pair.sync()  # the queued post-operation runs again
        pair.esp_unsubscribe("bob@example.com", export="unsubscribed-2.csv")
        pair.sync()
    ann = [r for r in received if r["email"] == "ann@example.com"]
    [bob] = [r for r in received if r["email"] == "bob@example.com"]
    assert len(ann) == 2 and ann[0]["delivery_id"] == ann[1]["delivery_id"]
    assert bob["delivery_id"] != ann[0]["delivery_id"]


def test_post_operation_without_its_secret_is_a_config_error(tmp_path, monkeypatch) -> None:
    from crmsync.errors import ConfigError

    monkeypatch.delenv("CRMSYNC_HOOK_SECRET", raising=False)
    pair = Pair(tmp_path, write_config(tmp_path, extra="""
[[post_operations]]
on = "unsubscribe"
call_url = "https://crm.example.com/hook"
secret_env = "CRMSYNC_HOOK_SECRET"
"""))
    with pytest.raises(ConfigError, match="CRMSYNC_HOOK_SECRET"):
        pair.sync()


def test_crash_before_post_operations_still_cascades(tmp_path, monkeypatch) -> None:
    """The cascade is queued in the same transaction as the unsubscribe it follows."""
    from crmsync.engine.apply import Pipeline

    pair = Pair(tmp_path, write_config(tmp_path, extra=CASCADE_1_TO_2))
    pair.crm.add("ann@example.com", fields={"OptOut": "false"},
                 memberships={"campaign:7": "Responded"})
    pair.sync()
    pair.esp_import()
    pair.esp_unsubscribe("ann@example.com")
    original = Pipeline.run_post_operations
    calls = {"n": 0}

    def killed(self):
        calls["n"] += 1
        if calls["n"] == 2:  # the first call is the run's own start-up check
            raise KeyboardInterrupt("killed after the unsubscribe was committed")
        return original(self)

    monkeypatch.setattr(Pipeline, "run_post_operations", killed)
    with pytest.raises(KeyboardInterrupt):
        pair.sync()
    monkeypatch.setattr(Pipeline, "run_post_operations", original)
    assert pair.crm_record("ann@example.com")["fields"]["OptOut"] == "true"
    assert pair.crm_record("ann@example.com")["memberships"]["campaign:7"] == "Responded"
    pair.sync()
    assert pair.crm_record("ann@example.com")["memberships"]["campaign:7"] == "Opted Out"
    pair.esp_import()
    assert pair.esp_status("ann@example.com", "2") == "unsubscribed"
    cascades = [e for e in pair.journal("ann@example.com") if e["source"] == "post_operation"]
    assert len(cascades) == 1


def test_api_mode_first_run_learns_existing_esp_unsubscribes(tmp_path) -> None:
    """Unsubscribes older than crmsync are read on the first run, before anything is sent."""
    pair = Pair(tmp_path, write_config(tmp_path, mode="api"))
    pair.crm.add("old@example.com", fields={"OptOut": "false"})
    pair.esp.add("old@example.com", lists={"1": "unsubscribed"})
    stats = pair.sync()
    assert stats.esp_unsubscribes_read == 1
    assert pair.crm_record("old@example.com")["fields"]["OptOut"] == "true"
    assert pair.esp_status("old@example.com") == "unsubscribed"


def test_esp_profile_change_reaches_the_crm_without_an_echo(tmp_path) -> None:
    """A recipient edits their name at the ESP: the CRM gets it; the next sync sends
    nothing back (the values are the ones the ESP already has)."""
    from crmsync.model import Change
    from crmsync.runtime import build_batch, open_side, open_store

    pair = Pair(tmp_path, write_config(tmp_path, mode="api"))
    pair.crm.add("ann@example.com", fields={"FirstName": "Ann", "LastName": "Old",
                                            "OptOut": "false"})
    pair.sync()
    state = open_store(pair.config)
    try:
        with open_side(pair.config, "crm") as crm, open_side(pair.config, "esp") as esp:
            failures = build_batch(pair.config, crm, esp, state).apply_esp_changes(
                [Change(email="ann@example.com", fields={"surname": "New"},
                        source="esp:memory-esp")])
    finally:
        state.close()
    assert failures == []
    assert pair.crm_record("ann@example.com")["fields"]["LastName"] == "New"
    stats = pair.sync()
    assert stats.crm_read == 1 and stats.esp_written == 0, "the CRM's copy was echoed back"


@pytest.mark.parametrize("mode", ["files", "api"])
def test_resend_repairs_an_esp_that_lost_its_data_without_undoing_an_unsubscribe(
        tmp_path, mode) -> None:
    """The ESP is restored from an old backup. --resend brings back every subscription
    and every unsubscribe crmsync knows: ESP unsubscribes, CRM opt-outs, contacts since
    deleted in the CRM or never in it; pending ones are not re-sent (crmsync cannot know
    whether the person confirmed since); nothing is journaled."""
    pair = _seeded_pair(tmp_path, "sqlite:///state.db", mode=mode)
    pair.sync()
    if mode == "files":
        pair.esp_import()
    pair.esp_unsubscribe("ann@example.com", export="unsubscribed-1.csv" if mode == "files"
                         else None)
    with pair.esp_connector() as esp:  # a recipient the CRM never had, unsubscribed
        esp.subscribe(Contact(email="eve@example.com"), ["1"])
        esp.unsubscribe("eve@example.com", "1")
    if mode == "files":
        pair.esp_export("unsubscribed-2.csv")
    pair.sync()
    pair.crm.update(pair.crm.by_email("bob@example.com"), deleted=True)  # deleted in the CRM
    pair.crm.add("fay@example.com", fields={"FirstName": "Fay", "OptOut": "false"})
    pair.sync()
    if mode == "files":
        pair.esp_import()
    journal_before = pair.journal()
    backup = {"ann@example.com": {"1": "subscribed"}, "bob@example.com": {"1": "subscribed"},
              "eve@example.com": {"1": "subscribed"}}
    pair.esp._load()
    pair.esp.records.clear()
    for email, lists in backup.items():
        pair.esp.add(email, lists=lists)

    stats = pair.sync(resend=True)
    assert stats.full and stats.resend and stats.status == "succeeded", stats.failed
    if mode == "files":
        pair.esp_import()
    assert pair.esp_status("ann@example.com") == "unsubscribed"  # from the ESP
    assert pair.esp_status("ann@example.com", "2") == "subscribed"
    assert pair.esp_status("bob@example.com") == "unsubscribed"  # deleted in the CRM
    assert pair.esp_status("cyd@example.com") == "unsubscribed"  # opted out in the CRM
    assert pair.esp_status("eve@example.com") == "unsubscribed"  # never in the CRM
    assert pair.esp_status("dee@example.com") == "subscribed"
    assert pair.esp_status("dee@example.com", "2") is None  # pending: not re-sent
    assert pair.esp_status("fay@example.com") == "subscribed"
    pair.esp._load()
    assert pair.esp.records[pair.esp.by_email("fay@example.com")]["fields"]["name"] == "Fay"
    assert pair.journal() == journal_before, "a resend changes no status: nothing to journal"
    assert pair.sync().esp_written == 0


def test_contacts_on_no_list_are_not_sent_to_the_esp(tmp_path) -> None:
    """A CRM contact on no mapped list: the ESP gets none of their data, by a plain run
    or a resend; once they join a list, they go with their fields."""
    pair = Pair(tmp_path, write_config(tmp_path, mode="api"))
    pair.crm.add("ann@example.com", fields={"FirstName": "Ann", "OptOut": "false"})
    pair.sync()
    config = (tmp_path / "crmsync.toml").read_text().replace('members = "all"',
                                                              'members = "field:Plan=gold"')
    (tmp_path / "crmsync.toml").write_text(config)
    pair = Pair(tmp_path, tmp_path / "crmsync.toml")
    gus = pair.crm.add("gus@example.com", fields={"FirstName": "Gus", "Plan": "silver"})
    for stats in (pair.sync(), pair.sync(resend=True)):
        assert stats.status == "succeeded"
        pair.esp._load()
        assert pair.esp.by_email("gus@example.com") is None, "a contact on no list was sent"
    pair.crm.update(gus, fields={"FirstName": "Gus", "Plan": "gold"})
    pair.sync()
    assert pair.esp_status("gus@example.com") == "subscribed"
    pair.esp._load()
    assert pair.esp.records[pair.esp.by_email("gus@example.com")]["fields"]["name"] == "Gus"


def test_resend_dry_run_plans_every_contact_and_writes_nothing(pair: Pair) -> None:
    pair.sync()
    uploads = sorted((pair.space / "in").glob("import-*"))
    stats = pair.sync(resend=True, dry_run=True)
    # list 1: ann, bob, dee subscribed, cyd's opt-out; list 2: ann (dee is pending)
    assert stats.plan["1"]["esp"]["resend"] == 4 and stats.plan["2"]["esp"]["resend"] == 1
    assert sorted((pair.space / "in").glob("import-*")) == uploads


def test_a_field_value_over_the_csv_cell_cap_commits_and_keeps_runs_going(pair: Pair) -> None:
    """A mapped field of 30,000 accented letters is a 180 KB JSON cell in the commit
    spool (over csv's default 128 KiB): committed, not re-sent, unsubscribes still flow."""
    pair.sync()
    pair.esp_import()
    pair.crm.update(pair.crm.by_email("bob@example.com"), fields={"FirstName": "\u00e9" * 30000})
    assert pair.sync().esp_written == 1
    assert pair.sync().esp_written == 0, "the big value's fields hash was not committed"
    pair.esp_import()
    pair.esp_unsubscribe("ann@example.com")
    assert pair.sync().status == "succeeded"
    assert pair.crm_record("ann@example.com")["fields"]["OptOut"] == "true"


def test_an_unreadable_commit_spool_is_a_clear_error(pair: Pair, monkeypatch) -> None:
    from crmsync.errors import StateError

    _killed_after_the_upload(pair, monkeypatch)
    [spool] = (pair.tmp / ".crmsync-spool").glob("*.commit")
    spool.write_bytes(spool.read_bytes()[:-7])  # a frame cut short (a damaged disk)
    with pytest.raises(StateError) as failed:
        pair.sync()
    assert str(spool) in str(failed.value) and "delete the spool" in str(failed.value)
    spool.unlink()  # what the message says to do
    assert pair.sync().status == "succeeded"
    assert [r["status"] for r in pair_runs(pair)][:3] == ["succeeded", "failed", "interrupted"]


def test_a_group_name_with_a_comma_is_not_re_sent_every_run(pair: Pair) -> None:
    pair.crm.update(pair.crm.by_email("bob@example.com"),
                    fields={"Interests": "Sales, EMEA;[beta];news"})
    pair.sync()
    groups = {r["email"]: r["groups"] for r in rows_uploaded(pair) if r["list"] == "1"}
    assert set(groups["bob@example.com"].split(",")) >= {"news"}
    assert pair.sync().esp_written == 0


def _killed_after_the_upload(pair: Pair, monkeypatch) -> None:
    """A sync killed once its import file is up, before it committed: the spool stays."""
    from crmsync.files import FileSpace

    original = FileSpace.upload

    def killed(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt("killed after the upload")

    monkeypatch.setattr(FileSpace, "upload", killed)
    with pytest.raises(KeyboardInterrupt):
        pair.sync()
    monkeypatch.setattr(FileSpace, "upload", original)


def pair_runs(pair: Pair) -> list[dict]:
    from crmsync.runtime import open_store

    state = open_store(pair.config)
    try:
        return state.runs()
    finally:
        state.close()


@pytest.mark.parametrize("mode", ["files", "api"])
def test_a_deletion_reaches_the_esp_and_is_journaled_once(tmp_path, mode) -> None:
    """deletes = "delete": the CRM's deleted record is deleted at the ESP once; later
    full reads and resends of the same deleted record do nothing more."""
    pair = Pair(tmp_path, write_config(tmp_path, mode=mode, extra='deletes = "delete"'))
    pair.crm.add("ann@example.com", fields={"FirstName": "Ann", "OptOut": "false"})
    pair.crm.add("bob@example.com", fields={"FirstName": "Bob", "OptOut": "false"})
    pair.sync()
    if mode == "files":
        pair.esp_import()
    pair.crm.update(pair.crm.by_email("ann@example.com"), deleted=True)
    first = pair.sync()
    assert first.status == "succeeded" and first.plan["1"]["esp"] == {"delete": 1}
    for again in (pair.sync(full=True), pair.sync(resend=True), pair.sync(full=True)):
        assert again.status == "succeeded" and again.failed == 0, again.stopped_reason
        assert "delete" not in again.plan.get("1", {}).get("esp", {})
    deleted = [e for e in pair.journal("ann@example.com") if e["new_status"] == "deleted"]
    assert len(deleted) == 1, deleted


@pytest.mark.parametrize("mode", ["files", "api"])
@pytest.mark.parametrize("deletes", ["unsubscribe", "delete"])
def test_a_deletion_reported_without_its_address_reaches_the_person(tmp_path, mode,
                                                                    deletes) -> None:
    """A CRM that reports a deletion by id only (vTiger: a stand-in address) must still
    unsubscribe / delete the person crmsync knows, never a junk recipient."""
    pair = Pair(tmp_path, write_config(tmp_path, mode=mode, extra=f'deletes = "{deletes}"',
                                       crm_settings='deleted_address = "placeholder"'))
    ann = pair.crm.add("ann@example.com", fields={"FirstName": "Ann", "OptOut": "false"})
    pair.crm.add("bob@example.com", fields={"FirstName": "Bob", "OptOut": "false"})
    pair.sync()
    pair.esp_import()
    pair.crm.update(ann, deleted=True)
    for _ in range(3):  # later runs neither repeat it nor create anyone
        stats = pair.sync(full=True)
        pair.esp_import()
        assert stats.status == "succeeded" and stats.failed == 0, stats.stopped_reason
    pair.esp._load()
    assert sorted(r["email"] for r in pair.esp.records.values()) == [
        "ann@example.com", "bob@example.com"]
    if deletes == "delete" and mode == "api":
        assert pair.esp.by_email("ann@example.com") is None  # deleted at the ESP
    else:  # an import file cannot delete: opted out of every list instead
        assert pair.esp_status("ann@example.com") == "unsubscribed"
    assert pair.esp_status("bob@example.com") == "subscribed"
    journal = pair.journal()
    assert not [e for e in journal if e["email"].endswith(".invalid")]
    gone = [e for e in journal if e["email"] == "ann@example.com"
            and e["reason"] == "deleted in the CRM"]
    assert len(gone) == 1, gone


@pytest.mark.parametrize("mode", ["files", "api"])
def test_a_contact_removed_from_a_campaign_is_unsubscribed_from_its_list(tmp_path,
                                                                          mode) -> None:
    """A removal from a campaign that the contact's own record does not show (a CRM
    that deletes the membership row without touching the contact) still reaches the
    ESP on the next diff run: the list's members are reconciled; nobody else moves."""
    pair = Pair(tmp_path, write_config(tmp_path, mode=mode))
    ann = pair.crm.add("ann@example.com", fields={"OptOut": "false"},
                       memberships={"campaign:7": "Responded"})
    pair.crm.add("bob@example.com", fields={"OptOut": "false"},
                 memberships={"campaign:7": "Responded"})
    pair.sync()
    pair.esp_import()
    assert pair.esp_status("ann@example.com", "2") == "subscribed"
    # the membership goes, the contact's record is not modified
    pair.crm._load()
    del pair.crm.records[ann]["memberships"]["campaign:7"]
    pair.crm.save()
    stats = pair.sync()
    pair.esp_import()
    assert stats.status == "succeeded" and stats.failed == 0
    assert pair.esp_status("ann@example.com", "2") == "unsubscribed"
    assert pair.esp_status("ann@example.com", "1") == "subscribed"
    assert pair.esp_status("bob@example.com", "2") == "subscribed"
    [entry] = [e for e in pair.journal("ann@example.com") if e["list_id"] == "2"
               and e["new_status"] == "unsubscribed"]
    assert entry["source"] == "crm:memory" and "campaign:7" in entry["reason"]
    again = pair.sync()  # done once: nothing more to send or journal
    assert again.esp_written == 0
    assert len([e for e in pair.journal("ann@example.com") if e["list_id"] == "2"]) == 2


def test_a_crm_record_with_an_invalid_address_is_reported_not_sent(tmp_path) -> None:
    """Issue 12.7: an address that is no address (markup, a 390-character local part)
    never reaches the ESP, and the run says which record it is: a failed record in the
    report (exit 1), not a silent skip."""
    import csv as csv_module

    pair = Pair(tmp_path, write_config(tmp_path, mode="api"))
    pair.crm.add("ann@example.com", fields={"OptOut": "false"})
    bad = pair.crm.add("bob@example.com", fields={"OptOut": "false"})
    pair.crm.records[bad]["email"] = "<script>alert(1)</script>@example.com"
    pair.crm.save()
    stats = pair.sync()
    assert stats.status == "partial" and stats.failed == 1
    assert pair.esp_status("ann@example.com") == "subscribed"
    pair.esp._load()
    assert [r["email"] for r in pair.esp.records.values()] == ["ann@example.com"]
    with open(stats.report, newline="", encoding="utf-8") as report:
        [row] = list(csv_module.DictReader(report))
    assert row["side"] == "crm" and row["code"] == "invalid_address"
    assert row["email"] == "<script>alert(1)</script>@example.com"
    assert bad in row["where"] and "not an email address" in row["reason"]


@pytest.mark.parametrize("mode", ["files", "api"])
def test_a_resend_of_one_list_restores_that_list_only_and_keeps_the_cursor(tmp_path,
                                                                           mode) -> None:
    """`sync --resend --list 2` after the ESP lost everything: list 2 comes back, list 1
    is left alone, and the CRM cursor stays where it was (a one-list run must not move
    the read past the other lists' changes); the ESP's unsubscriptions of every list
    are still read first."""
    from crmsync.runtime import open_store

    pair = _seeded_pair(tmp_path, "sqlite:///state.db", mode=mode)
    pair.sync()
    if mode == "files":
        pair.esp_import()
    state = open_store(pair.config)
    before = state.get_cursor("crm")
    state.close()
    pair.esp._load()
    pair.esp.records.clear()
    pair.esp.save()
    stats = pair.sync(resend=True, lists=["2"])
    assert stats.status == "succeeded", stats
    if mode == "files":
        pair.esp_import()
    assert pair.esp_status("ann@example.com", "2") == "subscribed"
    assert pair.esp_status("ann@example.com", "1") is None
    assert set(stats.plan) == {"2"}, stats.plan
    state = open_store(pair.config)
    assert state.get_cursor("crm") == before
    state.close()
    pair.sync(resend=True)
    if mode == "files":
        pair.esp_import()
    assert pair.esp_status("ann@example.com", "1") == "subscribed"
