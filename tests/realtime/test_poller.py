"""Polling a CRM that cannot push, and keeping the inbox from growing forever."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from crmsync.errors import RemoteError
from crmsync.testing.memory import MemoryConnector, MemorySettings

from .conftest import esp_unsubscribe, eventually
from .test_worker import flaky


class PollOnlyCrm(MemoryConnector):
    """The in-memory CRM without notifications: it can only be read."""

    capabilities = MemoryConnector.capabilities.model_copy(update={"push_events": False})


def test_a_crm_that_cannot_push_is_polled(serve_pair, tmp_path) -> None:
    crm = PollOnlyCrm(MemorySettings(path=tmp_path / "crm.json"))
    rt = serve_pair(crm=crm, server='poll = "auto"\npoll_interval_s = 0.1',
                    env={"CRMSYNC_HOOK_SECRET_CRM": ""})
    assert rt.service.worker.poll_enabled
    before = rt.state.get_cursor("crm")
    rt.crm.update(rt.crm.by_email("bob@example.com"), fields={"OptOut": "true"})
    eventually(lambda: rt.esp_list("bob@example.com") == "unsubscribed")
    rt.crm.add("new@example.com", fields={"FirstName": "New", "OptOut": "false"})
    eventually(lambda: rt.esp_list("new@example.com") == "subscribed")
    # the cursor moves once the ESP took the page
    new_id = rt.crm.by_email("new@example.com")
    eventually(lambda: (rt.state.get_cursor("crm") or before).tie_id == new_id)


def test_the_poll_cursor_waits_for_an_esp_outage(serve_pair, tmp_path) -> None:
    esp = flaky(tmp_path)
    rt = serve_pair(esp=esp, server='poll = "always"\npoll_interval_s = 0.1')
    before = rt.state.get_cursor("crm")
    esp.down_for = {"bob@example.com"}
    bob = rt.crm.by_email("bob@example.com")
    rt.crm.update(bob, fields={"LastName": "Later"})
    eventually(lambda: sum(c.email == "bob@example.com" for _, cs in esp.calls for c in cs) >= 2)
    assert rt.state.get_cursor("crm") == before  # not past a record the ESP did not take
    esp.down_for = set()
    eventually(lambda: rt.esp.records[rt.esp.by_email("bob@example.com")]["fields"].get(
        "surname") == "Later")
    eventually(lambda: rt.state.get_cursor("crm").tie_id == bob)


def test_poll_errors_do_not_stop_the_worker(serve_pair, tmp_path) -> None:
    esp = flaky(tmp_path)
    rt = serve_pair(esp=esp, server='poll = "always"\npoll_interval_s = 0.1')
    esp.outage = [RemoteError("503", status=503, retryable=True)] * 3
    rt.crm.update(rt.crm.by_email("bob@example.com"), fields={"OptOut": "true"})
    eventually(lambda: rt.esp_list("bob@example.com") == "unsubscribed")
    rt.post_esp(esp_unsubscribe("ann@example.com", event_id="after-poll-errors"))
    eventually(lambda: rt.crm_record("ann@example.com")["fields"]["OptOut"] == "true")


def test_old_applied_events_are_pruned(serve_pair) -> None:
    rt = serve_pair()
    rt.post_esp(esp_unsubscribe("ann@example.com", event_id="old"))
    eventually(rt.idle)
    assert rt.state.inbox_prune(datetime.now(UTC) - timedelta(days=1)) == 0
    assert rt.state.inbox_prune(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert rt.state.inbox_events() == []


def test_a_crm_whose_endpoint_is_off_is_polled(serve_pair) -> None:
    rt = serve_pair(server='poll = "auto"\npoll_interval_s = 0.1',
                    env={"CRMSYNC_HOOK_SECRET_CRM": ""})
    assert rt.service.worker.poll_enabled  # the memory CRM could push, but nothing listens
    rt.crm.update(rt.crm.by_email("bob@example.com"), fields={"OptOut": "true"})
    eventually(lambda: rt.esp_list("bob@example.com") == "unsubscribed")


def test_a_crm_that_pushes_to_an_open_endpoint_is_not_polled(serve_pair) -> None:
    rt = serve_pair(server='poll = "auto"')
    assert not rt.service.worker.poll_enabled
