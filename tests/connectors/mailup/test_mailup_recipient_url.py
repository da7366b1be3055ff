"""MailUp's recipient page for the console's "Open in the ESP" (issue 17 point 7):
``console_recipient_url`` filled with the idRecipient MailUp gave, looked up over the
emulator when crmsync does not hold it."""

from __future__ import annotations

import pytest
from mailup_testbed import PREFIX, requests_of

from crmsync.errors import ConfigError
from crmsync.model import Change, Status, Subscription

PAGE = "https://console.example/recipients/{id}?address={email}"


def test_the_page_of_a_recipient_by_the_id_mailup_gave(make_connector, control) -> None:
    connector = make_connector(console_recipient_url=PAGE)
    [written] = connector.write([Change(email="ann+x@example.com", subscriptions={
        "1": Subscription(list_id="1", status=Status.SUBSCRIBED)})])
    assert written.ok and written.record_id
    control.delete("/requests")
    # crmsync holds the id: no call at all
    assert connector.recipient_url("ann+x@example.com", written.record_id) == (
        f"https://console.example/recipients/{written.record_id}?address=ann%2Bx@example.com")
    assert requests_of(control) == {}
    # it does not: looked up by address in EmailOptins, as the connector's writes do
    assert connector.recipient_url("Ann+X@Example.com") == (
        f"https://console.example/recipients/{written.record_id}?address=Ann%2BX@Example.com")
    calls = set(requests_of(control))
    assert f"GET {PREFIX}/List/{{id}}/Recipients/EmailOptins" in calls
    assert calls <= {f"GET {PREFIX}/List/{{id}}/Recipients/EmailOptins", f"GET {PREFIX}/List"}
    assert connector.recipient_url("nobody@example.com") is None  # no page to guess


def test_no_template_no_link_and_a_bad_one_is_refused(make_connector) -> None:
    assert make_connector().recipient_url("ann@example.com", "5") is None
    with pytest.raises(ConfigError, match=r"unknown placeholder \{recipient\}"):
        make_connector(console_recipient_url="https://console.example/{recipient}")
    with pytest.raises(ConfigError, match="not an http"):
        make_connector(console_recipient_url="javascript:alert(1)//{id}")
