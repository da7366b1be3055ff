"""Forged, replayed, oversized and malformed calls: refused, nothing stored or applied."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from .conftest import CRM_SECRET, ESP_SECRET, esp_unsubscribe, eventually


def _nothing_happened(rt) -> None:
    assert rt.state.inbox_events() == []
    assert rt.crm_record("ann@example.com")["fields"]["OptOut"] == "false"


def test_wrong_or_missing_secret_is_refused(serve_pair) -> None:
    rt = serve_pair()
    body = esp_unsubscribe("ann@example.com", event_id="forged")
    assert rt.http.post("/hooks/esp/not-the-secret", json=body).status_code == 401
    assert rt.http.post("/hooks/esp", json=body).status_code == 401
    assert rt.http.post("/hooks/esp", json=body,
                        headers={"X-Crmsync-Secret": ESP_SECRET + "x"}).status_code == 401
    # the CRM's secret does not open the ESP's endpoint
    assert rt.http.post(f"/hooks/esp/{CRM_SECRET}", json=body).status_code == 401
    assert rt.http.post("/hooks/mailup/x", json=body).status_code == 404
    _nothing_happened(rt)
    metrics = rt.http.get("/metrics").text
    assert 'crmsync_events_rejected_total{endpoint="esp",status="401"} 4.0' in metrics


def test_an_endpoint_without_a_secret_does_not_exist(serve_pair) -> None:
    rt = serve_pair(env={"CRMSYNC_HOOK_SECRET_CRM": ""})
    response = rt.http.post("/hooks/crm/anything", json={"changes": []})
    assert response.status_code == 404 and "CRMSYNC_HOOK_SECRET_CRM" in response.text


def _signed(key: str, body: bytes) -> str:
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def test_signature_is_required_when_a_signing_key_is_set(serve_pair) -> None:
    rt = serve_pair(env={"CRMSYNC_HOOK_SIGNING_KEY_ESP": "sign-key"})
    body = json.dumps(esp_unsubscribe("ann@example.com", event_id="s-1")).encode()
    url = f"/hooks/esp/{ESP_SECRET}"
    assert rt.http.post(url, content=body).status_code == 401
    assert rt.http.post(url, content=body, headers={
        "X-Crmsync-Signature": _signed("other-key", body)}).status_code == 401
    tampered = body.replace(b"ann@", b"bob@")
    assert rt.http.post(url, content=tampered, headers={
        "X-Crmsync-Signature": _signed("sign-key", body)}).status_code == 401
    _nothing_happened(rt)
    assert rt.http.post(url, content=body, headers={
        "X-Crmsync-Signature": _signed("sign-key", body)}).status_code == 200
    eventually(lambda: rt.crm_record("ann@example.com")["fields"]["OptOut"] == "true")


def test_a_source_address_outside_the_allow_list_is_refused(serve_pair) -> None:
    rt = serve_pair(server='allow_ips = ["10.0.0.0/8"]')
    body = esp_unsubscribe("ann@example.com", event_id="ip-1")
    assert rt.post_esp(body).status_code == 401
    # a forwarded address is not believed from a proxy that is not trusted
    assert rt.post_esp(body, headers={"X-Forwarded-For": "10.1.2.3"}).status_code == 401
    _nothing_happened(rt)


def test_forwarded_address_from_a_trusted_proxy(serve_pair) -> None:
    rt = serve_pair(server='allow_ips = ["203.0.113.0/24"]\ntrusted_proxies = ["127.0.0.1"]')
    body = esp_unsubscribe("ann@example.com", event_id="ip-2")
    assert rt.post_esp(body, headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 401
    assert rt.post_esp(body, headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}
                       ).status_code == 200


def test_a_redelivered_event_is_acknowledged_but_stored_and_applied_once(serve_pair) -> None:
    rt = serve_pair()
    body = esp_unsubscribe("ann@example.com", event_id="same-id")
    assert rt.post_esp(body).status_code == 200
    assert rt.post_esp(body).status_code == 200
    # the same event id in a different body is the same event
    body["changes"][0]["reason"] = "resent"
    assert rt.post_esp(body).status_code == 200
    eventually(lambda: rt.crm_record("ann@example.com")["fields"]["OptOut"] == "true")
    eventually(rt.idle)
    assert len(rt.state.inbox_events()) == 1
    assert len([e for e in rt.journal("ann@example.com") if e["applied_to"] == "crm"]) == 1
    assert 'crmsync_events_duplicate_total{endpoint="esp"} 2.0' in rt.http.get("/metrics").text


def test_events_without_ids_are_deduplicated_by_their_bytes(serve_pair) -> None:
    rt = serve_pair(worker=False)
    body = json.dumps(esp_unsubscribe("ann@example.com")).encode()
    for _ in range(3):
        assert rt.http.post(f"/hooks/esp/{ESP_SECRET}", content=body).status_code == 200
    other = json.dumps(esp_unsubscribe("bob@example.com")).encode()
    assert rt.http.post(f"/hooks/esp/{ESP_SECRET}", content=other).status_code == 200
    assert [e["contact"] for e in rt.state.inbox_events()] == ["ann@example.com",
                                                              "bob@example.com"]


def test_an_oversized_body_is_refused(serve_pair) -> None:
    rt = serve_pair(server="max_body_bytes = 2000")
    big = esp_unsubscribe("ann@example.com", event_id="big")
    big["changes"][0]["reason"] = "x" * 5000
    assert rt.post_esp(big).status_code == 413

    def chunks():  # no Content-Length: the cap holds while reading
        yield json.dumps(big).encode()[:1500]
        yield json.dumps(big).encode()[1500:]

    response = rt.http.post(f"/hooks/esp/{ESP_SECRET}", content=chunks())
    assert response.status_code == 413
    _nothing_happened(rt)


@pytest.mark.parametrize("body", [
    b"{not json", b'{"changes": [{"email": "not-an-address"}]}', b'{"other": 1}',
    b"\xff\xfe\x00garbage",
])
def test_a_malformed_event_is_refused(serve_pair, body: bytes) -> None:
    rt = serve_pair()
    response = rt.http.post(f"/hooks/esp/{ESP_SECRET}", content=body)
    assert response.status_code == 400
    assert ESP_SECRET not in response.text
    _nothing_happened(rt)


def test_unsupported_method_and_malformed_length(serve_pair) -> None:
    rt = serve_pair()
    assert rt.http.put(f"/hooks/esp/{ESP_SECRET}", content=b"{}").status_code == 405
    _nothing_happened(rt)


def test_the_connectors_own_check_refuses_with_its_status(serve_pair, tmp_path) -> None:
    from crmsync.errors import EventRejected
    from crmsync.testing.memory import MemoryConnector, MemorySettings

    class SigningCrm(MemoryConnector):
        """A CRM whose notifications carry the organisation they come from."""

        def decode_event(self, request):
            if request.header("X-Org") != "00D-ours":
                raise EventRejected("notification from another organisation", status=401)
            return super().decode_event(request)

    rt = serve_pair(crm=SigningCrm(MemorySettings(path=tmp_path / "crm.json")))
    event = {"changes": [{"email": "bob@example.com", "event_id": "org-1",
                          "fields": {"OptOut": "true"}}]}
    refused = rt.post_crm(event, headers={"X-Org": "00D-theirs"})
    assert refused.status_code == 401 and "another organisation" in refused.text
    assert rt.state.inbox_events() == []
    assert rt.post_crm(event, headers={"X-Org": "00D-ours"}).status_code == 200
    assert len(rt.state.inbox_events()) == 1
