"""One retry policy per request: MailUp's token grant answered 429 is sent ``retries``
times in all, not the grant loop's retries times the transport's."""

from __future__ import annotations

import pytest
from mailup_testbed import requests_of

from crmsync.errors import RateLimited


def test_a_token_grant_answered_429_is_sent_retries_times(make_connector, control):
    connector = make_connector(retries=3)
    control.delete("/requests").raise_for_status()
    control.post("/faults", json={"error_status": 429, "error_count": 1000}).raise_for_status()
    with pytest.raises(RateLimited):
        connector.api.lists()  # the first call logs in: the grant is what is refused
    received = requests_of(control)
    assert sum(received.values()) == 3, received  # was 9: 3 in the transport x 3 above it

