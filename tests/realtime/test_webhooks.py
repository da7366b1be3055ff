"""Events both ways over real HTTP: what the other side shows afterwards."""

from __future__ import annotations

from crmsync.model import Change
from crmsync.testing.memory import store

from .conftest import FIELDS, crm_event, esp_unsubscribe, eventually


def test_esp_unsubscribe_webhook_opts_the_contact_out_in_the_crm(serve_pair) -> None:
    rt = serve_pair()
    assert rt.esp_list("ann@example.com") == "subscribed"
    response = rt.post_esp(esp_unsubscribe("ann@example.com", event_id="u-1"))
    assert response.status_code == 200 and response.text == "OK"
    eventually(lambda: rt.crm_record("ann@example.com")["fields"]["OptOut"] == "true")
    eventually(rt.idle)
    entries = [e for e in rt.journal("ann@example.com") if e["list_id"] == "1"
               and e["new_status"] == "unsubscribed"]
    assert len(entries) == 1 and entries[0]["applied_to"] == "crm"
    assert entries[0]["event_id"] == "u-1" and entries[0]["source"] == "esp:memory-esp"
    assert rt.state.inbox_counts() == {"done": 1}


def test_crm_change_event_reaches_the_esp(serve_pair) -> None:
    rt = serve_pair()
    bob = rt.crm.by_email("bob@example.com")
    response = rt.post_crm(crm_event("bob@example.com", ids={"memory": bob}, event_id="c-1",
                                     fields=dict(FIELDS, FirstName="Bob", LastName="Brown",
                                                 OptOut="true")))
    assert response.status_code == 200
    eventually(lambda: rt.esp_list("bob@example.com") == "unsubscribed")
    with rt.esp.lock:
        record = rt.esp.records[rt.esp.by_email("bob@example.com")]
        assert record["fields"]["surname"] == "Brown"
    # a contact the ESP has never seen arrives with its fields and lists
    rt.post_crm(crm_event("cyd@example.com", event_id="c-2",
                          fields=dict(FIELDS, FirstName="Cyd", Interests="tech"),
                          memberships={"campaign:7": "Sent"}))
    eventually(lambda: rt.esp_list("cyd@example.com", "2") == "pending")
    assert rt.esp_list("cyd@example.com", "1") == "subscribed"


def test_own_writes_do_not_come_back_as_changes(serve_pair) -> None:
    rt = serve_pair(server='poll = "always"')
    rt.post_esp(esp_unsubscribe("ann@example.com", event_id="u-echo"))
    eventually(lambda: rt.crm_record("ann@example.com")["fields"]["OptOut"] == "true")
    eventually(rt.idle)
    esp_before = dict(rt.esp.records[rt.esp.by_email("ann@example.com")])
    rt.service.worker.poll_once()  # reads crmsync's own CRM write back
    # the CRM's own notification of that write, too
    rt.post_crm(crm_event("ann@example.com", event_id="echo",
                          ids={"memory": rt.crm.by_email("ann@example.com")},
                          fields=dict(rt.crm_record("ann@example.com")["fields"]),
                          memberships={"campaign:7": "Responded"}))
    eventually(rt.idle)
    assert rt.esp.records[rt.esp.by_email("ann@example.com")]["modified"] == \
        esp_before["modified"]
    assert not [e for e in rt.journal("ann@example.com") if e["applied_to"] == "esp"
                and e["new_status"] == "unsubscribed"]


def test_post_operations_run_in_real_time(serve_pair) -> None:
    rt = serve_pair(extra="""
[[post_operations]]
on = "unsubscribe"
from_list = 1
unsubscribe_from = ["2"]
""")
    assert rt.esp_list("ann@example.com", "2") == "subscribed"
    rt.post_esp(esp_unsubscribe("ann@example.com", event_id="u-cascade"))
    eventually(lambda: rt.crm_record("ann@example.com")["memberships"]["campaign:7"]
               == "Opted Out")
    eventually(lambda: rt.esp_list("ann@example.com", "2") == "unsubscribed")
    assert rt.crm_record("ann@example.com")["fields"]["OptOut"] == "true"


def test_a_crm_opt_out_runs_the_cascade_in_real_time(serve_pair) -> None:
    rt = serve_pair(extra="""
[[post_operations]]
on = "unsubscribe"
from_list = 1
unsubscribe_from = ["2"]
""")
    assert rt.esp_list("ann@example.com", "2") == "subscribed"
    ann = rt.crm.by_email("ann@example.com")
    rt.crm.update(ann, fields={"OptOut": "true"})  # a CRM user opts Ann out of list 1
    rt.post_crm(crm_event("ann@example.com", ids={"memory": ann}, event_id="opt-out-1",
                          fields=dict(FIELDS, Interests="news", OptOut="true"),
                          memberships={"campaign:7": "Responded"}))
    eventually(lambda: rt.esp_list("ann@example.com", "2") == "unsubscribed")
    assert rt.esp_list("ann@example.com", "1") == "unsubscribed"
    eventually(lambda: rt.crm_record("ann@example.com")["memberships"]["campaign:7"]
               == "Opted Out")
    assert ("2", "post_operation") in {(e["list_id"], e["source"]) for e in rt.journal(
        "ann@example.com") if e["new_status"] == "unsubscribed"}


def test_a_partial_crm_notification_is_read_back_in_full(serve_pair) -> None:
    rt = serve_pair()
    bob = rt.crm.by_email("bob@example.com")
    rt.crm.update(bob, memberships={"campaign:7": "Responded"}, fields={"LastName": "Bloggs"})
    # the notification names the membership only: the record is read back for the rest
    rt.post_crm(crm_event("bob@example.com", ids={"memory": bob}, event_id="m-1",
                          memberships={"campaign:7": "Responded"}))
    eventually(lambda: rt.esp_list("bob@example.com", "2") == "subscribed")
    with rt.esp.lock:
        fields = rt.esp.records[rt.esp.by_email("bob@example.com")]["fields"]
    assert fields == {"name": "Bob", "surname": "Bloggs"}


def test_an_event_for_an_unmapped_list_is_acknowledged_and_ignored(serve_pair) -> None:
    rt = serve_pair()
    response = rt.post_esp(esp_unsubscribe("ann@example.com", "3", event_id="other-list"))
    assert response.status_code == 200
    eventually(rt.idle)
    assert rt.crm_record("ann@example.com")["fields"]["OptOut"] == "false"
    assert rt.state.inbox_counts() == {"done": 1}


def test_both_ways_on_each_state_store(db_url, serve_pair) -> None:
    rt = serve_pair(state=db_url)
    rt.post_esp(esp_unsubscribe("ann@example.com", event_id="pg-1"))
    bob = rt.crm.by_email("bob@example.com")
    rt.post_crm(crm_event("bob@example.com", ids={"memory": bob}, event_id="pg-2",
                          fields=dict(FIELDS, FirstName="Bob", OptOut="true")))
    eventually(lambda: rt.crm_record("ann@example.com")["fields"]["OptOut"] == "true")
    eventually(lambda: rt.esp_list("bob@example.com") == "unsubscribed")
    eventually(rt.idle)
    assert rt.state.inbox_counts() == {"done": 2}


def test_event_received_hook_sees_stored_events_and_cannot_refuse_them(tmp_path) -> None:
    from crmsync.config import load_config
    from crmsync.hooks import Hooks, build_plugin_manager, hookimpl
    from crmsync.runtime import open_side, open_store
    from crmsync.server import RealtimeService, ServerThread

    from .conftest import ESP_SECRET, write_config

    seen: list[tuple[str, list[str]]] = []

    class Recorder:
        @hookimpl
        def crmsync_event_received(self, endpoint, changes):
            seen.append((endpoint, [c.email for c in changes]))
            raise RuntimeError("a broken plugin")

    config = load_config(write_config(tmp_path))
    state = open_store(config)
    service = RealtimeService(config, open_side(config, "crm"), open_side(config, "esp"), state,
                              hooks=Hooks(build_plugin_manager([Recorder()],
                                                               load_entry_points=False)),
                              environ={"CRMSYNC_HOOK_SECRET_ESP": ESP_SECRET}, worker=False)
    import httpx

    with ServerThread(service) as server:
        url = f"{server.url}/hooks/esp/{ESP_SECRET}"
        body = esp_unsubscribe("ann@example.com", event_id="hooked")
        assert httpx.post(url, json=body).status_code == 200
        assert httpx.post(url, json=body).status_code == 200  # a duplicate: no second call
    service.close()
    assert seen == [("esp", ["ann@example.com"])]
    assert len(state.inbox_events()) == 1
    state.close()


def test_post_operation_plugins_are_told_it_is_real_time(tmp_path) -> None:
    from crmsync.config import load_config
    from crmsync.engine.postops import PostOperationRules
    from crmsync.hooks import Hooks, build_plugin_manager, hookimpl
    from crmsync.runtime import open_side, open_store
    from crmsync.server import RealtimeService

    from .conftest import write_config

    modes: list[str] = []

    class Watcher:
        @hookimpl
        def crmsync_post_operation(self, change, context):
            modes.append(context.mode)
            return []

    config = load_config(write_config(tmp_path, extra="""
[[post_operations]]
on = "unsubscribe"
from_list = 1
unsubscribe_from = ["2"]
"""))
    crm_store = store(path=tmp_path / "crm.json")
    crm_store.add("ann@example.com", fields=dict(FIELDS), memberships={"campaign:7": "Responded"})
    state = open_store(config)
    hooks = Hooks(build_plugin_manager([PostOperationRules(config.post_operations), Watcher()],
                                       load_entry_points=False))
    service = RealtimeService(config, open_side(config, "crm"), open_side(config, "esp"), state,
                              hooks=hooks, environ={})
    service.worker.poll_once()
    state.inbox_put("esp", "k", [Change.model_validate(
        esp_unsubscribe("ann@example.com")["changes"][0])])
    service.worker.drain(timeout=10)
    service.close()
    state.close()
    assert modes and set(modes) == {"realtime"}
    assert crm_store.records[crm_store.by_email("ann@example.com")]["memberships"] == {
        "campaign:7": "Opted Out"}
