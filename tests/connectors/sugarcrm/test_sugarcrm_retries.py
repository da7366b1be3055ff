"""One retry policy per request: a read the server keeps refusing with 429 is sent
``retries`` times in all (the transport's policy), never retries x retries."""

from __future__ import annotations

import httpx
import pytest
from sugarcrm_support import FLAVOURS, control

from crmsync.errors import RateLimited


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_read_answered_429_is_sent_retries_times_and_ends_rate_limited(serve, connect,
                                                                         flavour):
    server = serve(flavour, contacts=3)
    connector = connect(server, retries=4)
    assert connector.check().ok  # logged in: what follows is the read alone
    httpx.delete(f"{server.url}/_emulator/requests").raise_for_status()
    control(server, "faults", {"error_status": 429, "error_count": 1000})
    with pytest.raises(RateLimited) as caught:
        for _page in connector.read(None):
            pass
    received = control(server, "requests")
    assert sum(received.values()) == 4, received  # was 16: 4 in the transport x 4 above it
    assert caught.value.retry_after == 0  # the emulator's Retry-After: 0
