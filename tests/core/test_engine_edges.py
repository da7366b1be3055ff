"""Edge cases a review of the engine found: duplicate records and deletions, short
membership answers, confirmations only requested, short full reads in file mode, the
follow-ups file's order, and kills at the new commit points."""
from __future__ import annotations

import pytest

from crmsync.testing.memory import MemoryConnector

from .conftest import Pair, write_config


@pytest.mark.parametrize("mode", ["files", "api"])
def test_deleting_one_of_two_duplicate_records_keeps_the_person(tmp_path, mode) -> None:
    """A CRM merge (Salesforce: loser deleted, survivor kept, same address) must not
    unsubscribe the person the survivor still holds."""
    pair = Pair(tmp_path, write_config(tmp_path, mode=mode))
    loser = pair.crm.add("ann@example.com", fields={"OptOut": "false"},
                         memberships={"campaign:7": "Responded"})
    pair.crm.add("ann@example.com", fields={"OptOut": "false"},
                 memberships={"campaign:7": "Responded"})
    pair.sync()
    pair.esp_import()
    assert pair.esp_status("ann@example.com", "1") == "subscribed"
    pair.crm.update(loser, deleted=True)  # the merge deletes the loser
    pair.sync()
    pair.esp_import()
    assert pair.esp_status("ann@example.com", "1") == "subscribed"
    assert pair.esp_status("ann@example.com", "2") == "subscribed"


@pytest.mark.parametrize("mode", ["files", "api"])
def test_a_short_members_answer_does_not_unsubscribe_a_list(tmp_path, mode,
                                                            monkeypatch) -> None:
    """members() answering short once (offset paging that shifts, an empty page, a
    permission glitch) must not unsubscribe every holder, stickily."""
    pair = Pair(tmp_path, write_config(tmp_path, mode=mode))
    for name in ("ann", "bob", "cid"):
        pair.crm.add(f"{name}@example.com", fields={"OptOut": "false"},
                     memberships={"campaign:7": "Responded"})
    pair.sync()
    pair.esp_import()
    monkeypatch.setattr(MemoryConnector, "members", lambda self, key: [])
    pair.sync()
    pair.esp_import()
    monkeypatch.undo()
    pair.sync(full=True)  # the CRM still has all three in the campaign
    pair.esp_import()
    assert [pair.esp_status(f"{n}@example.com", "2") for n in ("ann", "bob", "cid")] == [
        "subscribed"] * 3


CASCADE_2_TO_1 = """
[[post_operations]]
on = "unsubscribe"
from_list = 2
unsubscribe_from = [1]
"""


def test_a_crm_side_cascade_is_not_undone_by_its_own_import_file(tmp_path) -> None:
    """Ann leaves campaign 7 (list 2) and, in the same edit, her interests (list 1's
    groups) change: the cascade unsubscribes list 1, in the .followups file; the main
    file carries list 1 "subscribed" (a groups update). The ESP imports in name order
    (as this suite's esp_import does): the follow-ups file must come after the main file
    (it was named '<run>-followups', and '-' sorts before '.', so the main file came
    last and, at an ESP that applies statuses as given, re-subscribed list 1)."""
    pair = Pair(tmp_path, write_config(tmp_path, mode="files", extra=CASCADE_2_TO_1))
    ann = pair.crm.add("ann@example.com", fields={"OptOut": "false", "Interests": "a"},
                       memberships={"campaign:7": "Responded"})
    pair.sync()
    pair.esp_import()
    pair.crm.update(ann, fields={"Interests": "a;b"},
                    memberships={"campaign:7": "Opted Out"})
    stats = pair.sync()
    names = sorted(p.name for p in (pair.space / "in").glob("*.csv"))
    assert len(names) == 2 and "followups" in names[-1], names  # imported after the main
    pair.esp_import()
    assert stats.post_operations == 1
    assert pair.esp_status("ann@example.com", "2") == "unsubscribed"
    assert pair.esp_status("ann@example.com", "1") == "unsubscribed"


CASCADE_1_TO_2 = """
[[post_operations]]
on = "unsubscribe"
from_list = 1
unsubscribe_from = [2]
"""


def _cascade_pair(tmp_path, mode):
    pair = Pair(tmp_path, write_config(tmp_path, mode=mode, extra=CASCADE_1_TO_2))
    ann = pair.crm.add("ann@example.com", fields={"OptOut": "false"},
                       memberships={"campaign:7": "Responded"})
    pair.crm.add("bob@example.com", fields={"OptOut": "false"},
                 memberships={"campaign:7": "Responded"})
    pair.sync()
    pair.esp_import()
    pair.crm.update(ann, fields={"OptOut": "true"})
    return pair


def _check_cascade_end_state(pair):
    assert pair.esp_status("ann@example.com", "1") == "unsubscribed"
    assert pair.esp_status("ann@example.com", "2") == "unsubscribed"
    assert pair.crm_record("ann@example.com")["memberships"]["campaign:7"] == "Opted Out"
    assert pair.esp_status("bob@example.com", "2") == "subscribed"
    entries = [(e["list_id"], e["new_status"], e["source"]) for e in pair.journal("ann@example.com")
               if e["new_status"] == "unsubscribed"]
    assert sorted(entries) == [("1", "unsubscribed", "crm:memory"),
                               ("2", "unsubscribed", "post_operation")], entries


@pytest.mark.parametrize("mode", ["files", "api"])
def test_killed_after_the_main_commit_before_the_post_operations(tmp_path, mode,
                                                                  monkeypatch) -> None:
    from crmsync.engine.apply import Pipeline
    pair = _cascade_pair(tmp_path, mode)
    calls = []
    real = Pipeline.run_post_operations

    def dying(self):
        calls.append(1)
        if len(calls) == 2:  # the one after the outbound half
            raise KeyboardInterrupt
        return real(self)
    monkeypatch.setattr(Pipeline, "run_post_operations", dying)
    with pytest.raises(KeyboardInterrupt):
        pair.sync()
    monkeypatch.undo()
    pair.esp_import()
    pair.sync()
    pair.esp_import()
    pair.sync()
    pair.esp_import()
    _check_cascade_end_state(pair)


def test_killed_after_the_followups_upload_before_its_commit(tmp_path, monkeypatch) -> None:
    from crmsync.state import StateStore
    pair = _cascade_pair(tmp_path, "files")
    real = StateStore.commit_spool

    def dying(self, conn, path, **kwargs):
        if "followups" in str(path):
            raise KeyboardInterrupt
        return real(self, conn, path, **kwargs)
    monkeypatch.setattr(StateStore, "commit_spool", dying)
    with pytest.raises(KeyboardInterrupt):
        pair.sync()
    monkeypatch.undo()
    pair.esp_import()
    stats = pair.sync()
    assert stats.recovered == 1
    pair.esp_import()
    again = pair.sync()
    assert again.esp_written == 0
    _check_cascade_end_state(pair)


@pytest.mark.parametrize("mode", ["files", "api"])
def test_killed_mid_reconciliation(tmp_path, mode, monkeypatch) -> None:
    from crmsync.engine import apply
    pair = Pair(tmp_path, write_config(
        tmp_path, mode=mode, extra="[sync]\nbatch_size = 2\nmax_removal_share = 1.0"))
    ids = [pair.crm.add(f"p{n}@example.com", fields={"OptOut": "false"},
                        memberships={"campaign:7": "Responded"}) for n in range(5)]
    pair.sync()
    pair.esp_import()
    pair.crm._load()
    for record_id in ids[:4]:
        del pair.crm.records[record_id]["memberships"]["campaign:7"]
    pair.crm.save()
    real = apply.plan_removal
    seen = []

    def dying(*args):
        seen.append(1)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(*args)
    monkeypatch.setattr(apply, "plan_removal", dying)
    with pytest.raises(KeyboardInterrupt):
        pair.sync()
    monkeypatch.undo()
    pair.esp_import()
    pair.sync()
    pair.esp_import()
    assert [pair.esp_status(f"p{n}@example.com", "2") for n in range(5)] == [
        "unsubscribed"] * 4 + ["subscribed"]
    gone = [e for e in pair.journal() if e["list_id"] == "2"
            and e["new_status"] == "unsubscribed"]
    assert len(gone) == 4, gone


def test_a_deleted_record_crmsync_never_saw_does_not_unsubscribe_by_address(tmp_path) -> None:
    """A duplicate created and deleted between two runs (never mapped) shares Ann's
    address: `known` falls back to the address and unsubscribes the live Ann."""
    pair = Pair(tmp_path, write_config(tmp_path, mode="api"))
    pair.crm.add("ann@example.com", fields={"OptOut": "false"})
    pair.sync()
    dup = pair.crm.add("ann@example.com", fields={"OptOut": "false"})
    pair.crm.update(dup, deleted=True)
    pair.sync()
    assert pair.esp_status("ann@example.com", "1") == "subscribed"


def test_no_confirm_is_refused_after_a_confirmation_was_only_requested(tmp_path) -> None:
    """Ann unsubscribed. `subscribe --confirm` asks the ESP to send its confirmation
    email (fine) and records her as *pending*; a following `--no-confirm` is then no
    longer refused: she is forced back to "subscribed" without ever confirming."""
    from crmsync.actions import subscribe
    from crmsync.runtime import open_side, open_store
    pair = Pair(tmp_path, write_config(tmp_path, mode="api"))
    pair.crm.add("ann@example.com", fields={"OptOut": "false"})
    pair.sync()
    pair.esp_unsubscribe("ann@example.com", export=None)
    pair.sync()
    state = open_store(pair.config)
    try:
        with open_side(pair.config, "esp") as esp:
            [refused] = subscribe(esp, "ann@example.com", ["1"], confirm=False,
                                  config=pair.config, store=state)
            assert not refused.ok  # refused, as designed
            [asked] = subscribe(esp, "ann@example.com", ["1"], confirm=True,
                                config=pair.config, store=state)
            assert asked.ok
            [forced] = subscribe(esp, "ann@example.com", ["1"], confirm=False,
                                 config=pair.config, store=state)
    finally:
        state.close()
    assert not forced.ok, "forced opt-in over an unconfirmed re-subscription"


def test_a_short_full_read_in_file_mode_still_delivers_what_was_read(tmp_path) -> None:
    """IncompleteRead says "what was read was synced"; in file mode the import file
    is abandoned instead, so a CRM opt-out read in that run never reaches the ESP while
    full reads keep coming up short."""
    from crmsync.engine.completeness import IncompleteRead

    from .test_full_read_count import _losing
    pair = Pair(tmp_path, write_config(tmp_path, mode="files"))
    ann = pair.crm.add("ann@example.com", fields={"OptOut": "false"})
    pair.crm.add("bob@example.com", fields={"OptOut": "false"})
    pair.sync()
    pair.esp_import()
    pair.crm.update(ann, fields={"OptOut": "true"})
    _losing(pair, ["bob@example.com"])
    for _ in range(2):
        with pytest.raises(IncompleteRead):
            pair.sync(full=True)
        pair.esp_import()
    assert pair.esp_status("ann@example.com", "1") == "unsubscribed"


def test_a_url_post_operation_honours_retry_after_through_the_one_retry_policy() -> None:
    """A customer's URL answered 429 with ``Retry-After: 3`` and then 200: the call is
    made again after the 3 s it asked for (the transport's retry policy), not after the
    old private loop's own 0.5 s, and lands once."""
    from datetime import UTC, datetime

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from crmsync.config import PostOperation
    from crmsync.emulator import EmulatorServer
    from crmsync.engine.postops import PostOperationRules
    from crmsync.hooks import PostOpContext
    from crmsync.model import Change, Status, Subscription

    answers = [PlainTextResponse("slow down", 429, headers={"Retry-After": "3"}),
               PlainTextResponse("ok")]
    received = []

    async def hook(request):
        received.append(await request.body())
        return answers.pop(0)

    slept: list[float] = []
    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    with EmulatorServer(app) as server:
        rules = PostOperationRules([PostOperation.model_validate(
            {"on": "unsubscribe", "call_url": f"{server.url}/hook", "retries": 2})],
            sleep=slept.append)
        context = PostOpContext(applied_to="crm", mode="batch", run_id="r", all_lists=("1",))
        rules.crmsync_post_operation(Change(
            email="ann@example.com", source="esp:x", subscriptions={"1": Subscription(
                list_id="1", status=Status.UNSUBSCRIBED,
                changed_at=datetime(2026, 1, 1, tzinfo=UTC))}), context)
    [call] = context.extra["calls"]
    assert call["ok"] and call["status"] == 200, call
    assert len(received) == 2 and received[0] == received[1]
    assert slept == [3.0]
