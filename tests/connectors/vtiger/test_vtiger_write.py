"""Writing to the emulator: revise (never update), lookups by address, campaign membership."""

from __future__ import annotations

import json

from crmsync.model import Change
from crmsync_vtiger._api import VERBS


def state_of(server, email):
    [found] = [c for c in server.emulator.state()["contacts"]
               if c["email"].lower() == email and not c["deleted"]]
    return found


def operations(server):
    return [c["operation"] for c in server.emulator.calls]


def test_an_opt_out_changes_that_field_only(vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=12)
    connector = vtiger_connector(server)
    before = state_of(server, "contact0-1@example.com")
    connector.check()  # log in and describe before counting
    server.emulator.calls.clear()
    [result] = connector.write([Change(email="contact0-1@example.com",
                                       fields={"emailoptout": "true"})])
    assert result.ok and result.record_id == before["ids"]["vtiger"]
    after = state_of(server, "contact0-1@example.com")
    assert after["opted_out"] is True
    unchanged = {k: v for k, v in after["fields"].items() if k not in ("emailoptout",
                                                                     "modifiedtime")}
    assert unchanged == {k: v for k, v in before["fields"].items()
                         if k not in ("emailoptout", "modifiedtime")}
    assert operations(server) == ["query", "revise"]
    [revise] = [c for c in server.emulator.calls if c["operation"] == "revise"]
    assert json.loads(revise["form"]["element"]) == {"id": result.record_id, "emailoptout": "1"}


def test_update_would_have_blanked_the_record_so_it_is_never_sent(vtiger_server,
                                                                  vtiger_connector):
    server = vtiger_server(contacts=5)
    connector = vtiger_connector(server)
    contact = state_of(server, "contact0-2@example.com")
    results = connector.write([
        Change(email="contact0-2@example.com", ids={"vtiger": contact["ids"]["vtiger"]},
               fields={"title": "Editor"}),
        Change(email="contact0-3@example.com", fields={"cf_901": "news;tech"}),
    ])
    assert all(r.ok for r in results)
    assert "update" not in operations(server)
    after = state_of(server, "contact0-2@example.com")
    assert after["fields"]["title"] == "Editor"
    assert after["fields"]["firstname"] == "First2"
    assert after["fields"]["email"] == "contact0-2@example.com"
    assert state_of(server, "contact0-3@example.com")["fields"]["cf_901"] == "news |##| tech"


def test_addresses_are_looked_up_99_at_a_time_and_no_ops_skipped(vtiger_server,
                                                                  vtiger_connector):
    server = vtiger_server(contacts=250)
    connector = vtiger_connector(server)
    connector.codec()  # describe once, outside the counted calls
    server.emulator.calls.clear()
    changes = [Change(email=f"contact0-{n}@example.com", fields={"emailoptout": "true"})
               for n in range(250)]
    results = connector.write(changes)
    assert all(r.ok for r in results)
    already = sum(1 for n in range(250) if n % 7 == 6)
    ops = operations(server)
    assert ops.count("query") == 3
    assert ops.count("revise") == 250 - already
    assert all(c["opted_out"] for c in server.emulator.state()["contacts"])


def test_every_parameter_travels_in_the_verb_its_operation_reads(vtiger_server,
                                                                 vtiger_connector):
    server = vtiger_server(contacts=20)
    connector = vtiger_connector(server)
    campaign = f"campaign:1x{server.emulator.campaign_id}"
    list(connector.read(None))
    connector.write([
        Change(email="fresh@example.com", fields={"firstname": "Fresh"},
               memberships={campaign: "Sent"}),
        Change(email="contact0-1@example.com", fields={"emailoptout": "true"}),
        Change(email="contact0-2@example.com", op="delete"),
    ])
    connector.close()
    seen = set()
    for call in server.emulator.calls:
        seen.add(call["operation"])
        if VERBS[call["operation"]] == "GET":
            assert call["http"] == "GET" and call["form"] == {}, call
        else:
            assert call["http"] == "POST" and call["query"] == {}, call
    assert {"getchallenge", "login", "describe", "query", "retrieve_related", "create",
            "add_related", "revise", "delete", "logout"} <= seen


def test_create_fills_what_vtiger_requires(vtiger_server, vtiger_connector):
    server = vtiger_server()
    connector = vtiger_connector(server, owner_id="19x5")
    [result] = connector.write([Change(email="New.Person@Example.com",
                                       fields={"emailoptout": "false"})])
    assert result.ok
    created = state_of(server, "new.person@example.com")
    assert created["fields"]["lastname"] == "new.person"
    assert created["fields"]["assigned_user_id"] == "19x5"
    assert created["opted_out"] is False


def test_every_record_sharing_an_address_gets_the_opt_out(vtiger_server, vtiger_connector):
    server = vtiger_server()
    emulator = server.emulator
    for name in ("One", "Two"):
        emulator._insert("Contacts", {"lastname": name, "email": "twin@example.com",
                                      "assigned_user_id": "19x1"}, emulator.now())
    connector = vtiger_connector(server)
    [result] = connector.write([Change(email="twin@example.com",
                                       fields={"emailoptout": "true"})])
    assert result.ok
    twins = [c for c in emulator.state()["contacts"] if c["email"] == "twin@example.com"]
    assert [c["opted_out"] for c in twins] == [True, True]


def test_campaign_membership_is_added_once_and_removal_is_refused(vtiger_server,
                                                                 vtiger_connector):
    server = vtiger_server(contacts=6)
    emulator = server.emulator
    connector = vtiger_connector(server)
    key = f"campaign:{emulator.campaign_id}"  # a bare crmid is accepted too
    full = f"campaign:1x{emulator.campaign_id}"
    [added] = connector.write([Change(email="contact0-1@example.com", memberships={key: ""})])
    assert added.ok
    assert full in state_of(server, "contact0-1@example.com")["lists"]
    emulator.calls.clear()
    [again] = connector.write([Change(email="contact0-1@example.com",
                                      memberships={full: "Responded"})])
    assert again.ok and "add_related" not in operations(server)
    [removed] = connector.write([Change(email="contact0-1@example.com",
                                        memberships={full: None})])
    assert not removed.ok and removed.code == "UNSUPPORTED"
    assert "cannot remove" in removed.error


def test_partial_failures_are_results_not_exceptions(vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=4)
    connector = vtiger_connector(server)
    results = connector.write([
        Change(email="contact0-0@example.com", fields={"lastname": ""}),
        Change(email="contact0-1@example.com", fields={"emailoptout": "maybe"}),
        Change(email="contact0-2@example.com", fields={"title": "fine"}),
        Change(email="nobody@example.com", op="delete"),
    ])
    assert [r.ok for r in results] == [False, False, True, False]
    assert results[0].code == "MANDATORY_FIELDS_MISSING" and "lastname" in results[0].error
    assert results[1].code == "INVALID_VALUE"
    assert results[3].code == "RECORD_NOT_FOUND"
    assert state_of(server, "contact0-0@example.com")["fields"]["lastname"] == "Last0"


def test_a_stale_id_falls_back_to_the_address(vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=3)
    connector = vtiger_connector(server)
    [result] = connector.write([Change(email="contact0-1@example.com", ids={"vtiger": "12x9999"},
                                       fields={"title": "found"})])
    assert result.ok and result.record_id == "12x3"
    assert state_of(server, "contact0-1@example.com")["fields"]["title"] == "found"


def test_an_address_change_keeps_the_record(vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=3)
    connector = vtiger_connector(server)
    [result] = connector.write([Change(email="renamed@example.com",
                                       previous_email="contact0-1@example.com")])
    assert result.ok and result.record_id == "12x3"
    assert state_of(server, "renamed@example.com")["ids"] == {"vtiger": "12x3"}


def test_unknown_and_read_only_fields_are_refused_before_any_write(vtiger_server,
                                                                   vtiger_connector):
    server = vtiger_server(contacts=3)
    connector = vtiger_connector(server)
    results = connector.write([
        Change(email="contact0-1@example.com", fields={"HasOptedOutOfEmail": "true"}),
        Change(email="contact0-1@example.com", fields={"modifiedtime": "2020-01-01T00:00:00Z"}),
    ])
    assert [(r.ok, r.code) for r in results] == [(False, "UNKNOWN_FIELD"),
                                                 (False, "READ_ONLY_FIELD")]
    assert "describe" in results[0].error
    assert "revise" not in operations(server)


def test_two_changes_for_a_new_address_in_one_batch_make_one_contact(vtiger_server,
                                                                     vtiger_connector):
    server = vtiger_server()
    connector = vtiger_connector(server)
    results = connector.write([
        Change(email="once@example.com", fields={"firstname": "Once"}),
        Change(email="once@example.com", fields={"emailoptout": "true"}),
        Change(email="once@example.com", fields={"emailoptout": "true"}),  # nothing left to do
    ])
    assert [r.ok for r in results] == [True, True, True]
    assert len({r.record_id for r in results}) == 1
    made = [c for c in server.emulator.state()["contacts"] if c["email"] == "once@example.com"]
    assert len(made) == 1 and made[0]["opted_out"] and made[0]["fields"]["firstname"] == "Once"
    assert operations(server).count("revise") == 1
