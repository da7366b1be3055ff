"""InboundRequest.url: the public URL a webhook sender called, as `crmsync serve` saw it."""

from __future__ import annotations

from typing import Any

from crmsync.model import InboundRequest
from crmsync.server.security import IpGuard

from .conftest import ESP_SECRET, esp_unsubscribe, eventually


def _recording(rt: Any) -> list[InboundRequest]:
    seen: list[InboundRequest] = []
    connector = rt.service.endpoints["esp"].connector
    decode = connector.decode_event

    def record(request: InboundRequest) -> Any:
        seen.append(request)
        return decode(request)
    connector.decode_event = record
    return seen


def test_the_connector_sees_the_url_the_sender_called(serve_pair) -> None:
    rt = serve_pair()
    seen = _recording(rt)
    response = rt.http.post(f"/hooks/esp/{ESP_SECRET}/unsub?list=1",
                            json=esp_unsubscribe("ann@example.com", event_id="u-url"),
                            headers={"X-Forwarded-Proto": "https",
                                     "X-Forwarded-Host": "evil.example.com"})
    assert response.status_code == 200
    eventually(lambda: seen)
    # no trusted proxy configured: the forwarded headers are not believed
    assert seen[0].url == f"{rt.url}/hooks/esp/{ESP_SECRET}/unsub?list=1"
    assert seen[0].path == "/hooks/esp/unsub"  # the secret stays out of the path
    assert ESP_SECRET not in repr(seen[0])


def test_forwarded_scheme_and_host_are_believed_from_a_trusted_proxy(serve_pair) -> None:
    rt = serve_pair(server='trusted_proxies = ["127.0.0.1"]')
    seen = _recording(rt)
    rt.http.post(f"/hooks/esp/{ESP_SECRET}?a=1", json=esp_unsubscribe("ann@example.com"),
                 headers={"X-Forwarded-Proto": "https",
                          "X-Forwarded-Host": "hooks.example.com"})
    eventually(lambda: seen)
    assert seen[0].url == f"https://hooks.example.com/hooks/esp/{ESP_SECRET}?a=1"


def test_a_forged_host_header_value_is_ignored() -> None:
    guard = IpGuard([], ["10.0.0.0/8"])
    url = "http://127.0.0.1:8080/hooks/crm?x=1"
    assert guard.public_url("10.1.2.3", url, {"X-Forwarded-Host": "a b/c"}) == url
    assert guard.public_url("10.1.2.3", url, {"x-forwarded-proto": "https"}) == \
        "https://127.0.0.1:8080/hooks/crm?x=1"
    assert guard.public_url("192.0.2.1", url, {"x-forwarded-proto": "https"}) == url
