"""The HTTP client every connector gets (crmsync.http) against a real socket server on
127.0.0.1 that answers each connection as scripted: dropped connections, 429 with
Retry-After, 5xx; what the client retries, what it gives up on, what it never repeats."""

from __future__ import annotations

import gzip
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from crmsync.http import Pacer, RetryPolicy, build_client, mark_streamed, retry_after_seconds


class ScriptedServer:
    """One behaviour per connection, in order (then ``ok``); records each request line."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.requests: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head.split(b"\r\n")[0].decode())
                action = self.script.pop(0) if self.script else "ok"
                if action == "drop":  # the request arrived; the connection dies unanswered
                    conn.shutdown(socket.SHUT_RDWR)
                    continue
                if action == "cut":  # the answer starts, then the connection dies
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 100\r\n\r\n{\"ok\": tr")
                    conn.shutdown(socket.SHUT_RDWR)
                    continue
                status, extra = {"ok": ("200 OK", ""), "500": ("500 Oops", ""),
                                 "gzip": ("200 OK", "Content-Encoding: gzip\r\n"),
                                 "429": ("429 Too Many Requests", "Retry-After: 0\r\n")}[action]
                payload = b'{"ok": true}' if action in ("ok", "gzip") else b"{}"
                if action == "gzip":
                    payload = gzip.compress(payload)
                conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(payload)}\r\nConnection: close\r\n{extra}"
                             "\r\n".encode() + payload)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[type[ScriptedServer]]:
    made: list[ScriptedServer] = []

    def make(script: list[str]) -> ScriptedServer:
        made.append(ScriptedServer(script))
        return made[-1]

    yield make  # type: ignore[misc]
    for one in made:
        one.close()


def client(url: str, *, attempts: int = 4, retry_posts: bool = False,
           sleeps: list[float] | None = None) -> httpx.Client:
    return build_client(base_url=url, timeout=5,
                        policy=RetryPolicy(attempts=attempts, backoff=0.01,
                                           retry_non_idempotent=retry_posts),
                        sleep=(sleeps.append if sleeps is not None else lambda _s: None))


def test_a_dropped_connection_is_retried_for_a_read(server) -> None:
    srv = server(["drop", "drop"])
    with client(srv.url) as http:
        assert http.get("/contacts").json() == {"ok": True}
    assert srv.requests == ["GET /contacts HTTP/1.1"] * 3


def test_an_answer_cut_short_is_retried_for_a_read(server) -> None:
    """The body is read inside the retrying transport: a connection that dies mid-answer
    is a dropped connection like any other, not an error after the retries."""
    srv = server(["cut", "cut"])
    with client(srv.url) as http:
        assert http.get("/contacts").json() == {"ok": True}
    assert len(srv.requests) == 3


def test_a_buffered_answer_still_looks_unbuffered_to_the_caller(server) -> None:
    srv = server(["ok"])
    with client(srv.url) as http:
        response = http.get("/x")
        assert response.json() == {"ok": True} and response.elapsed.total_seconds() >= 0
        assert response.headers["content-length"] == str(len(response.content))


def test_a_gzipped_answer_is_decoded_once(server) -> None:
    srv = server(["gzip"])
    with client(srv.url) as http:
        assert http.get("/x").json() == {"ok": True}


def test_an_answer_made_in_memory_passes_through() -> None:
    with build_client(transport=httpx.MockTransport(
            lambda request: httpx.Response(200, json={"ok": True}))) as http:
        assert http.get("https://vendor.invalid/x").json() == {"ok": True}


def test_a_post_whose_answer_is_cut_short_is_not_sent_again(server) -> None:
    srv = server(["cut"])
    with client(srv.url) as http, pytest.raises(httpx.TransportError):
        http.post("/send", json={})
    assert len(srv.requests) == 1


def test_a_streamed_answer_is_left_to_the_caller(server) -> None:
    """A request marked streamed returns at the headers: its body is never held in memory
    by the transport (a cut in it surfaces to the caller reading it)."""
    srv = server(["cut"])
    with client(srv.url) as http:
        response = http.send(mark_streamed(http.build_request("GET", "/big")), stream=True)
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()
    assert len(srv.requests) == 1


def test_a_dropped_post_is_not_sent_again(server) -> None:
    """The server may have acted on it: a non-idempotent write is never repeated."""
    srv = server(["drop"])
    with client(srv.url) as http, pytest.raises(httpx.TransportError):
        http.post("/send", json={"to": "ann@example.com"})
    assert srv.requests == ["POST /send HTTP/1.1"]


def test_an_idempotent_upsert_post_is_retried_when_the_vendor_says_so(server) -> None:
    srv = server(["drop", "500"])
    with client(srv.url, retry_posts=True) as http:
        assert http.post("/upsert", json={}).status_code == 200
    assert len(srv.requests) == 3


def test_429_is_retried_even_for_a_post_and_honours_retry_after(server) -> None:
    srv = server(["429", "429"])
    sleeps: list[float] = []
    with client(srv.url, sleeps=sleeps) as http:
        assert http.post("/send", json={}).status_code == 200
    assert len(srv.requests) == 3
    assert sleeps == [0.0, 0.0], "Retry-After: 0 means no back-off"


def test_5xx_on_a_post_is_returned_not_retried(server) -> None:
    srv = server(["500"])
    with client(srv.url) as http:
        assert http.post("/send", json={}).status_code == 500
    assert len(srv.requests) == 1


def test_gives_up_after_the_attempts_with_the_last_answer(server) -> None:
    srv = server(["500"] * 10)
    with client(srv.url, attempts=3) as http:
        assert http.get("/x").status_code == 500
    assert len(srv.requests) == 3


def test_gives_up_on_a_connection_that_keeps_dropping(server) -> None:
    srv = server(["drop"] * 10)
    with client(srv.url, attempts=3) as http, pytest.raises(httpx.TransportError):
        http.get("/x")
    assert len(srv.requests) == 3


def test_a_refused_connection_is_retried_then_raised() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    sleeps: list[float] = []
    with client(f"http://127.0.0.1:{port}", attempts=3, sleeps=sleeps) as http, \
            pytest.raises(httpx.ConnectError):
        http.post("/send", json={})  # never left: safe to retry even a POST
    assert len(sleeps) == 2


def test_retry_after_as_seconds_or_http_date() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 28, 8, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Sat, 28 Nov 2026 08:00:30 GMT", now=now) == 30.0
    assert retry_after_seconds("garbage") is None and retry_after_seconds(None) is None


def test_pacer_spaces_calls_to_the_rate() -> None:
    clock = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    pacer = Pacer(4, clock=lambda: clock[0], sleep=sleep)
    for _ in range(5):
        pacer.wait()
    assert slept == [0.25, 0.25, 0.25, 0.25]
    pacer.penalise(2.0)
    pacer.wait()
    assert slept[-1] == pytest.approx(2.0)
