"""Writing: opt-outs that keep the other addresses, memberships, batching, failures."""

from __future__ import annotations

import pytest
from sugarcrm_support import FLAVOURS, calls, control, requests_made, reset_requests, state

from crmsync.model import Change, Op
from crmsync_sugarcrm.emulator import EVENTS_LIST_ID

LIST_KEY = f"target_list:{EVENTS_LIST_ID}"
TWO_ADDRESSES = "contact0-0@example.com"  # the seed gives every fifth contact a work address


def addresses(server, email):
    return {a["email"]: (a["opt_out"], a["primary"]) for a in state(server)[email]["addresses"]}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_opt_out_keeps_the_records_other_addresses(serve, connect, flavour):
    """A PUT of the email array replaces the whole set: the connector must send every
    address back, or Sugar unlinks the work address."""
    server = serve(flavour, contacts=3)
    connector = connect(server)
    assert addresses(server, TWO_ADDRESSES) == {
        "contact0-0@example.com": (False, True), "contact0-0@work.example.org": (False, False)}
    [result] = connector.write([Change(email=TWO_ADDRESSES,
                                       fields={"email_opt_out": "true"})])
    assert result.ok, result.error
    assert addresses(server, TWO_ADDRESSES) == {
        "contact0-0@example.com": (True, True), "contact0-0@work.example.org": (False, False)}
    assert state(server)[TWO_ADDRESSES]["opted_out"] is True
    [result] = connector.write([Change(email=TWO_ADDRESSES, fields={"email_opt_out": "false"})])
    assert result.ok
    assert addresses(server, TWO_ADDRESSES)["contact0-0@example.com"] == (False, True)
    assert len(addresses(server, TWO_ADDRESSES)) == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_fields_and_email_change_keep_id_and_other_addresses(serve, connect, flavour):
    server = serve(flavour, contacts=3)
    connector = connect(server)
    record_id = state(server)[TWO_ADDRESSES]["ids"]["sugarcrm"]
    [result] = connector.write([Change(email="renamed@example.com",
                                       previous_email=TWO_ADDRESSES,
                                       ids={"sugarcrm": record_id},
                                       fields={"last_name": "Renamed"})])
    assert result.ok and result.record_id == record_id
    after = state(server)["renamed@example.com"]
    assert after["ids"]["sugarcrm"] == record_id
    assert after["fields"]["last_name"] == "Renamed"
    assert {a["email"] for a in after["addresses"]} == {
        "renamed@example.com", "contact0-0@work.example.org"}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_create_with_opt_out_and_membership_then_remove_and_delete(serve, connect, flavour):
    server = serve(flavour, contacts=2)
    connector = connect(server)
    [created] = connector.write([Change(email="new@example.com",
                                        fields={"first_name": "New", "email_opt_out": "true"},
                                        memberships={LIST_KEY: ""})])
    assert created.ok, created.error
    seen = state(server)["new@example.com"]
    assert seen["ids"]["sugarcrm"] == created.record_id
    assert seen["opted_out"] is True and LIST_KEY in seen["lists"]
    [removed] = connector.write([Change(email="new@example.com", memberships={LIST_KEY: None})])
    assert removed.ok and LIST_KEY not in state(server)["new@example.com"]["lists"]
    [deleted] = connector.write([Change(email="new@example.com", op=Op.DELETE,
                                        ids={"sugarcrm": created.record_id})])
    assert deleted.ok and state(server)["new@example.com"]["deleted"] is True


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_updates_a_lead_found_by_id(serve, connect, flavour):
    server = serve(flavour)
    with server.emulator.lock:
        lead = server.emulator.store.create("Leads", {"last_name": "Lead"})
        server.emulator.store.set_email1(lead, "lead@example.com")
    connector = connect(server, modules=["Contacts", "Leads"])
    [result] = connector.write([Change(email="lead@example.com", ids={"sugarcrm": lead.id},
                                       fields={"last_name": "Updated"})])
    assert result.ok
    after = state(server)["lead@example.com"]
    assert after["module"] == "Leads" and after["fields"]["last_name"] == "Updated"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_one_result_per_change_with_a_missing_record(serve, connect, flavour):
    server = serve(flavour, contacts=2)
    connector = connect(server)
    results = connector.write([
        Change(email="contact0-1@example.com", fields={"last_name": "Ok"}),
        Change(email="nobody@example.com", op=Op.DELETE),
        Change(email="contact0-1@example.com", fields={"email_opt_out": "maybe"}),
        Change(email="contact0-1@example.com", memberships={"campaign:1": "Sent"}),
    ])
    assert [r.ok for r in results] == [True, False, False, False]
    assert [r.code for r in results[1:]] == ["not_found", "invalid_parameter",
                                             "unsupported_membership"]
    assert state(server)["contact0-1@example.com"]["fields"]["last_name"] == "Ok"


def test_rest_batches_opt_outs_and_links_through_bulk(serve, connect):
    server = serve("rest", contacts=120)
    connector = connect(server, batch_size=100)
    emails = [f"contact0-{n}@example.com" for n in range(120)]
    reset_requests(server)
    results = connector.write([Change(email=e, fields={"email_opt_out": "true"},
                                      memberships={LIST_KEY: ""}) for e in emails])
    assert all(r.ok for r in results)
    after = state(server)
    assert all(after[e]["opted_out"] and LIST_KEY in after[e]["lists"] for e in emails)
    # per chunk of 100: one lookup, one bulk of PUTs, one bulk with one link call
    assert requests_made(server) == {"POST /rest/{version}/oauth2/token": 1,
                                     "POST /rest/{version}/{module}/filter": 2,
                                     "POST /rest/{version}/bulk": 4}


def test_v4_1_batches_opt_outs_on_the_email_address_rows(serve, connect):
    server = serve("v4_1", contacts=120)
    connector = connect(server, batch_size=100)
    emails = [f"contact0-{n}@example.com" for n in range(120)]
    before = {e: s["date_modified"] for e, s in state(server).items()}
    reset_requests(server)
    results = connector.write([Change(email=e, fields={"email_opt_out": "true"}) for e in emails])
    assert all(r.ok for r in results)
    after = state(server)
    assert all(after[e]["opted_out"] for e in emails)
    # the opt-out lives on EmailAddresses: the contacts themselves were not saved
    assert all(after[e]["date_modified"] == before[e] for e in emails)
    # login, then per chunk: find, EmailAddresses lookup, one set_entries
    assert calls(server) == 1 + 2 * 3


def test_rest_edit_conflict_is_retried_once_then_reported(serve, connect):
    server = serve("rest", contacts=3)
    connector = connect(server)
    control(server, "conflicts", {"count": 1})
    [result] = connector.write([Change(email="contact0-1@example.com",
                                       fields={"last_name": "After409"})])
    assert result.ok
    assert state(server)["contact0-1@example.com"]["fields"]["last_name"] == "After409"
    control(server, "conflicts", {"count": 4})
    results = connector.write([Change(email=f"contact0-{n}@example.com",
                                      fields={"last_name": "Busy"}) for n in range(3)])
    assert [r.ok for r in results] == [False, True, True]
    assert results[0].code == "edit_conflict" and results[0].retryable


def test_rest_maintenance_on_write_is_a_retryable_result(serve, connect):
    server = serve("rest", contacts=2)
    connector = connect(server)
    assert connector.check().ok
    control(server, "faults", {"error_status": 503, "error_count": 1})
    # the lookup is a read and is retried; the bulk write then succeeds
    [result] = connector.write([Change(email="contact0-1@example.com",
                                       fields={"last_name": "AfterMaintenance"})])
    assert result.ok
    control(server, "faults", {"error_status": 503, "error_count": 10})
    [result] = connector.write([Change(email="contact0-1@example.com",
                                       fields={"last_name": "Never"})])
    assert not result.ok and result.retryable and result.code == "maintenance"
    assert state(server)["contact0-1@example.com"]["fields"]["last_name"] == "AfterMaintenance"


def test_rest_injected_409_on_the_whole_request_is_retried(serve, connect):
    server = serve("rest", contacts=2)
    connector = connect(server)
    assert connector.check().ok
    control(server, "faults", {"error_status": 409, "error_count": 1})
    [result] = connector.write([Change(email="contact0-1@example.com",
                                       fields={"last_name": "AfterConflict"})])
    assert result.ok, result.error
    assert state(server)["contact0-1@example.com"]["fields"]["last_name"] == "AfterConflict"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_new_record_on_an_opted_out_address_does_not_opt_it_back_in(serve, connect, flavour):
    server = serve(flavour)
    with server.emulator.lock:
        lead = server.emulator.store.create("Leads", {"last_name": "Lead"})
        server.emulator.store.set_email1(lead, "shared@example.com")
        server.emulator.store.address("shared@example.com").opt_out = True
    connector = connect(server)  # Contacts only: the Lead is not found, a Contact is made
    [result] = connector.write([Change(email="shared@example.com",
                                       fields={"last_name": "Contact"})])
    assert result.ok
    holders = [c for c in server.emulator.state()["contacts"]
               if c["email"] == "shared@example.com"]
    assert sorted(c["module"] for c in holders) == ["Contacts", "Leads"]
    assert all(c["opted_out"] for c in holders)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_two_changes_to_one_record_in_a_batch_apply_in_order(serve, connect, flavour):
    server = serve(flavour, contacts=1)
    connector = connect(server)
    record_id = state(server)["contact0-0@example.com"]["ids"]["sugarcrm"]
    results = connector.write([
        Change(email="twice@example.com", fields={"first_name": "Ann"}),
        Change(email="twice@example.com", fields={"email_opt_out": "true"}),
        Change(email="renamed0@example.com", previous_email="contact0-0@example.com",
               ids={"sugarcrm": record_id}, fields={"last_name": "R"}),
        Change(email="renamed0@example.com", ids={"sugarcrm": record_id},
               fields={"email_opt_out": "true"}),
    ])
    assert all(r.ok for r in results), [r.error for r in results]
    holders = [c for c in server.emulator.state()["contacts"]
               if c["email"] == "twice@example.com"]
    assert len(holders) == 1 and holders[0]["opted_out"]
    assert holders[0]["fields"]["first_name"] == "Ann"
    renamed = state(server)["renamed0@example.com"]
    assert renamed["opted_out"] and renamed["fields"]["last_name"] == "R"
    assert {a["email"] for a in renamed["addresses"]} == {
        "renamed0@example.com", "contact0-0@work.example.org"}
